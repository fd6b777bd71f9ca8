//! Which KMS key wraps a data key: what a database header records and a provider resolves.

/// A provider-qualified key URI and the key version that wrapped a DEK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRef {
    /// `local:<key-id>`, `kmsd:<key-id>`, `openbao+https://host:port/mount/key`, ...
    pub uri: String,
    /// Version of the key's material that produced the wrapped DEK.
    pub version: u32,
}

impl KeyRef {
    /// The provider part of the URI (before the first `:`).
    pub fn provider(&self) -> &str {
        self.uri.split(':').next().unwrap_or("")
    }
    /// The key id: the part after `provider:` for key-id providers (`local:<id>`), or the
    /// whole URI for URL-addressed keys (`openbao+https://host/mount/key`).
    pub fn key_id(&self) -> &str {
        match self.uri.split_once(':') {
            Some((_, rest)) if !rest.starts_with("//") => rest,
            _ => &self.uri,
        }
    }
}

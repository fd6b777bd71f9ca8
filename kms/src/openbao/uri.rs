//! Key URIs of the transit provider: `openbao+http(s)://HOST:PORT/MOUNT/KEY`.
//!
//! The URI is what the database header records (`KeyRef.uri`): transit ciphertext
//! (`vault:vN:...`) names neither the server, the mount nor the key, so without it a wrapped
//! DEK could not be routed back to the key that can unwrap it.

use std::fmt;

use crate::KmsError;

/// Provider name (and URI scheme) of a transit key reached over plain HTTP.
pub const PROVIDER_HTTP: &str = "openbao+http";
/// Provider name (and URI scheme) of a transit key reached over HTTPS.
pub const PROVIDER_HTTPS: &str = "openbao+https";
/// Port used when a URI names none (OpenBao's and Vault's default listener port).
pub const DEFAULT_PORT: u16 = 8200;
/// Longest key reference the header can store (FORMAT.md §1).
const KEY_REF_MAX: usize = 256;

/// A parsed, canonical transit key URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitKeyUri {
    tls: bool,
    /// Host name, IPv4 address, or IPv6 address without brackets.
    host: String,
    port: u16,
    /// Mount path of the transit engine, without leading or trailing `/` (may be nested).
    mount: String,
    key: String,
}

/// Is `s` a URI of this provider (by scheme only)?
pub fn is_openbao_uri(s: &str) -> bool {
    s.starts_with("openbao+http://") || s.starts_with("openbao+https://")
}

fn invalid(uri: &str, why: &str) -> KmsError {
    KmsError::InvalidRequest(format!(
        "invalid OpenBao key URI '{uri}': {why} (expected openbao+http://HOST:PORT/MOUNT/KEY or openbao+https://...)"
    ))
}

/// Transit key names: `\w(([\w-.]+)?\w)?` in the server's router.
pub(crate) fn valid_key_name(name: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    !name.is_empty()
        && name.len() <= 128
        && name.starts_with(word)
        && name.ends_with(word)
        && name.chars().all(|c| word(c) || c == '-' || c == '.')
}

pub(crate) fn valid_mount_segment(seg: &str) -> bool {
    !seg.is_empty() && seg != "." && seg != ".." && seg.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
}

fn valid_host(host: &str) -> bool {
    !host.is_empty() && host.len() <= 253 && host.chars().all(|c| c.is_ascii_alphanumeric() || "-.".contains(c))
}

impl TransitKeyUri {
    /// Parse `openbao+http(s)://HOST[:PORT]/MOUNT/KEY`. `MOUNT` may have several segments
    /// (`secrets/transit`); `KEY` is the last segment. Credentials, queries and fragments are
    /// rejected: the URI is stored in every database header, so it must never carry a secret.
    pub fn parse(uri: &str) -> Result<TransitKeyUri, KmsError> {
        let (tls, rest) = if let Some(r) = uri.strip_prefix("openbao+https://") {
            (true, r)
        } else if let Some(r) = uri.strip_prefix("openbao+http://") {
            (false, r)
        } else {
            return Err(invalid(uri, "unknown scheme"));
        };
        if rest.contains(['?', '#']) {
            return Err(invalid(uri, "queries and fragments are not allowed"));
        }
        let (authority, path) = rest.split_once('/').ok_or_else(|| invalid(uri, "missing /MOUNT/KEY"))?;
        if authority.contains('@') {
            return Err(invalid(
                uri,
                "credentials do not belong in the URI (it is stored in every database header); use BAO_TOKEN, a token file or AppRole",
            ));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| invalid(uri, "unterminated IPv6 address"))?;
            if h.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(invalid(uri, "bad IPv6 address"));
            }
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| invalid(uri, "garbage after IPv6 address"))?),
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (authority.to_string(), None),
            }
        };
        if !host.contains(':') && !valid_host(&host) {
            return Err(invalid(uri, "bad host name"));
        }
        let port = match port {
            None => DEFAULT_PORT,
            Some(p) => p.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(|| invalid(uri, "bad port"))?,
        };
        let path = path.trim_end_matches('/');
        let (mount, key) = path.rsplit_once('/').ok_or_else(|| invalid(uri, "missing the mount or the key name"))?;
        if !mount.split('/').all(valid_mount_segment) {
            return Err(invalid(uri, "bad mount path"));
        }
        if !valid_key_name(key) {
            return Err(invalid(
                uri,
                "bad key name (letters, digits, _ - . ; starting and ending with a letter, digit or _)",
            ));
        }
        let parsed = TransitKeyUri {
            tls,
            host: host.to_ascii_lowercase(),
            port,
            mount: mount.to_string(),
            key: key.to_string(),
        };
        let canonical = parsed.to_string();
        if canonical.len() > KEY_REF_MAX {
            return Err(invalid(uri, &format!("longer than the {KEY_REF_MAX} bytes a database header can record")));
        }
        Ok(parsed)
    }

    /// `openbao+http` or `openbao+https`.
    pub fn provider(&self) -> &'static str {
        if self.tls {
            PROVIDER_HTTPS
        } else {
            PROVIDER_HTTP
        }
    }

    /// Whether the server is reached over TLS.
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// Is the server on this host's loopback interface (`localhost`, 127.0.0.0/8, `::1`)? Only
    /// there may plain `http` carry tokens and data keys without an explicit opt-in.
    pub fn is_loopback(&self) -> bool {
        self.host.eq_ignore_ascii_case("localhost")
            || self.host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }

    /// Transit mount path (no leading or trailing `/`).
    pub fn mount(&self) -> &str {
        &self.mount
    }

    /// Transit key name.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// `http(s)://HOST:PORT`, the base of every API URL.
    pub fn base_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.authority())
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Same server, another mount and key.
    pub fn with_mount_and_key(&self, mount: &str, key: &str) -> TransitKeyUri {
        TransitKeyUri { mount: mount.to_string(), key: key.to_string(), ..self.clone() }
    }

    /// Same server and mount, another key (`key` must be a valid name).
    pub fn with_key(&self, key: &str) -> TransitKeyUri {
        self.with_mount_and_key(&self.mount.clone(), key)
    }

    /// `NAME` (a key of this mount) or `MOUNT/NAME` on the same server; `None` if invalid.
    pub(crate) fn relative(&self, spec: &str) -> Option<TransitKeyUri> {
        let (mount, key) = match spec.rsplit_once('/') {
            Some((m, k)) => (m, k),
            None => (self.mount.as_str(), spec),
        };
        let ok = mount.split('/').all(valid_mount_segment) && valid_key_name(key);
        let u = self.with_mount_and_key(mount, key);
        (ok && u.to_string().len() <= KEY_REF_MAX).then_some(u)
    }

    /// Do both URIs name the same server (scheme, host and port)?
    pub fn same_server(&self, other: &TransitKeyUri) -> bool {
        self.tls == other.tls && self.host == other.host && self.port == other.port
    }

    /// API path (below `/v1/`) of a per-key transit operation: `MOUNT/OP/KEY`.
    pub(crate) fn op_path(&self, op: &str) -> String {
        format!("{}/{op}/{}", self.mount, self.key)
    }
}

impl fmt::Display for TransitKeyUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}/{}/{}", self.provider(), self.authority(), self.mount, self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_canonicalises() {
        let u = TransitKeyUri::parse("openbao+http://127.0.0.1:8200/transit/app-db").unwrap();
        assert_eq!((u.tls(), u.mount(), u.key()), (false, "transit", "app-db"));
        assert_eq!(u.base_url(), "http://127.0.0.1:8200");
        assert_eq!(u.op_path("decrypt"), "transit/decrypt/app-db");
        assert_eq!(u.to_string(), "openbao+http://127.0.0.1:8200/transit/app-db");

        let u = TransitKeyUri::parse("openbao+https://KMS.example.com/secrets/transit/k_1/").unwrap();
        assert_eq!(u.to_string(), "openbao+https://kms.example.com:8200/secrets/transit/k_1");
        assert_eq!(u.provider(), PROVIDER_HTTPS);
        assert_eq!(u.mount(), "secrets/transit");

        let u = TransitKeyUri::parse("openbao+https://[::1]:8300/transit/k").unwrap();
        assert_eq!(u.base_url(), "https://[::1]:8300");
        assert_eq!(TransitKeyUri::parse(&u.to_string()).unwrap(), u);
    }

    #[test]
    fn rejects_bad_uris() {
        for bad in [
            "openbao://h:1/transit/k",
            "http://h:1/transit/k",
            "openbao+http://h:1/k",
            "openbao+http://h:1",
            "openbao+http://user:pw@h:1/transit/k",
            "openbao+http://h:1/transit/k?token=x",
            "openbao+http://h:0/transit/k",
            "openbao+http://h:99999/transit/k",
            "openbao+http://h:1/transit/-k",
            "openbao+http://h:1/../k",
            "openbao+http://h:1//k",
            "openbao+http://h h:1/transit/k",
        ] {
            assert!(TransitKeyUri::parse(bad).is_err(), "{bad} accepted");
        }
        let long = format!("openbao+http://h:1/transit/{}", "k".repeat(120));
        assert!(TransitKeyUri::parse(&long).is_ok());
        let too_long = format!("openbao+http://{}:1/transit/k", "h".repeat(240));
        assert!(TransitKeyUri::parse(&too_long).is_err());
    }

    #[test]
    fn key_names() {
        assert!(valid_key_name("a"));
        assert!(valid_key_name("app.db-1_x"));
        assert!(!valid_key_name("a-"));
        assert!(!valid_key_name(".a"));
        assert!(!valid_key_name("a/b"));
        assert!(!valid_key_name(""));
    }
}

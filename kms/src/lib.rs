//! sqlite-tde-kms. Key management: the KMS abstraction the VFS uses for envelope encryption, and its
//! providers. The embedded local KMS is the default; other providers implement [`Kms`].
//!
//! The sqlite-tde KMS itself (docs/ARCHITECTURE.md, "The KMS"): the CMK model
//! ([`model`]), key policies and roles ([`policy`]), the hash-chained audit log ([`audit`]),
//! an injectable clock ([`clock`]), the request API shared by every front end ([`api`]),
//! the keystore-backed service ([`local`]), the daemon and its client ([`daemon`]), PKCS#11
//! keys ([`hsm`]) and versioned secrets ([`secrets`]).
#![deny(unsafe_code)]

pub mod api;
pub mod audit;
pub mod clock;
mod context;
#[cfg(feature = "daemon")]
pub mod daemon;
pub mod events;
pub mod hsm;
mod keyref;
pub mod local;
pub mod model;
#[cfg(feature = "openbao")]
pub mod openbao;
mod plaintext;
pub mod policy;
mod sealed_file;
pub mod secrets;
mod spec;

pub use context::EncryptionContext;
pub use keyref::KeyRef;
pub use plaintext::{PlaintextDataKey, DATA_KEY_LEN};
pub use spec::{KmsSpec, ENV_KMS};

/// Test hook shared with the rotation engine: `SQLITE_TDE_TEST_CRASH_AT=kms:<step>` aborts the
/// process at a named step of a keystore write (crash tests).
pub const ENV_CRASH_AT: &str = "SQLITE_TDE_TEST_CRASH_AT";

/// Alias of the service-managed default key, created on first use.
pub const DEFAULT_KEY_ALIAS: &str = "alias/sqlite-tde/default";

/// Environment variable naming the caller's principal for the embedded KMS (default: the
/// OS user). The daemon ignores it: it takes principals from peer credentials or tokens.
pub const ENV_PRINCIPAL: &str = "SQLITE_TDE_PRINCIPAL";

/// A fresh data key: the plaintext for local use and the wrapped form to store.
pub struct GeneratedDataKey {
    /// Plaintext DEK; wiped when dropped.
    pub plaintext: PlaintextDataKey,
    /// The DEK encrypted under the CMK (opaque, self-describing blob).
    pub wrapped: Vec<u8>,
    /// Which key and version wrapped it.
    pub key: KeyRef,
}

/// Errors of the KMS layer. Messages name keys, never key material. Non-exhaustive: a new
/// provider may add failure kinds; match the ones you handle and keep a catch-all.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KmsError {
    #[error("KMS key not found: {0}")]
    NotFound(String),
    #[error("KMS key {0} is disabled")]
    Disabled(String),
    #[error("KMS key {0} is pending deletion")]
    PendingDeletion(String),
    #[error("KMS key {0} has been deleted; data encrypted under it can no longer be decrypted")]
    Deleted(String),
    #[error("KMS key {0} has no key material (pending import): import its material first")]
    PendingImport(String),
    #[error("KMS key {key} is not usable: {reason}")]
    NotUsable { key: String, reason: String },
    #[error("access denied: principal {principal} may not {action} on {key}")]
    AccessDenied { principal: String, action: String, key: String },
    #[error("the wrapped data key does not decrypt under {key}: wrong key, wrong database (encryption context), or tampered")]
    InvalidCiphertext { key: String },
    #[error("KMS unavailable: {0}")]
    Unavailable(String),
    #[error("wrong root key or passphrase for keystore {0}")]
    WrongRootKey(String),
    #[error("keystore error: {0}")]
    Keystore(String),
    /// The keystore directory holds no keystore yet (missing or empty), or a brand-new one
    /// without the key: the usual sign of a mistyped keystore path. Nothing was created.
    #[error("{}", no_keystore_message(dir, key.as_deref()))]
    NoKeystore { dir: String, key: Option<String> },
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("audit log unavailable, request refused: {0}")]
    Audit(String),
    /// The audit log does not match the head `keystore.json` records (records cut, log
    /// deleted or put back, keystore put back): every request is refused until
    /// `sqlite-tde kms audit --acknowledge-gap`.
    #[error("audit trail broken, KMS closed: {0}")]
    AuditIntegrity(String),
    #[error("random number generator failed: {0}")]
    Random(String),
    #[error("a data key of {got} bytes, expected {expected}")]
    DataKeyLength { got: usize, expected: usize },
}

fn no_keystore_message(dir: &str, key: Option<&str>) -> String {
    const WHICH: &str = "is this the right keystore? see --keystore / SQLITE_TDE_KEYSTORE";
    match key {
        Some(k) => format!("key {k} not found in keystore {dir} (the keystore is empty/new: {WHICH})"),
        None => format!(
            "no keystore in {dir} (the directory is missing or empty: {WHICH}; a keystore is created by the first \
             `kms create-key`, `secrets put` or new database)"
        ),
    }
}

/// What the VFS needs from a key management service. CMK material never crosses this
/// interface: only data keys, in plaintext for local use or wrapped for storage.
pub trait Kms: Send + Sync {
    /// Provider name recorded in key references (`local`, `kmsd`, `openbao+https`, ...).
    fn provider(&self) -> &str;

    /// GenerateDataKey: a new 64-byte DEK under `key` (key id or `alias/NAME`), bound to
    /// `context`.
    fn generate_data_key(&self, key: &str, context: &EncryptionContext) -> Result<GeneratedDataKey, KmsError>;

    /// Decrypt a wrapped DEK recorded with `key_ref`. The context must equal the one used at
    /// generation.
    fn decrypt_data_key(
        &self,
        key_ref: &KeyRef,
        wrapped: &[u8],
        context: &EncryptionContext,
    ) -> Result<PlaintextDataKey, KmsError>;

    /// ReEncrypt: wrap the same DEK under `target` (key id or alias), or under the newest
    /// version of its current key when `target` is `None`. The plaintext DEK is not returned
    /// to the caller (a remote KMS never sends it).
    fn rewrap_data_key(
        &self,
        key_ref: &KeyRef,
        wrapped: &[u8],
        context: &EncryptionContext,
        target: Option<&str>,
    ) -> Result<(Vec<u8>, KeyRef), KmsError>;

    /// The newest version of the CMK a header references (`key_uri` as recorded), when this
    /// KMS holds that key and the caller may read its metadata: fleet rewrap reports which
    /// files still reference older versions against it. `None`: unknown here.
    fn newest_version(&self, key_uri: &str) -> Option<u32> {
        let _ = key_uri;
        None
    }

    /// The key URI a header records for `key` (key id, alias or URI), as this KMS resolves it
    /// now: how a caller's named key is compared with the key an existing database is under.
    /// `Ok(None)`: this provider cannot resolve names (only identical URIs then match).
    fn resolve_key_uri(&self, key: &str) -> Result<Option<String>, KmsError> {
        let _ = key;
        Ok(None)
    }
}

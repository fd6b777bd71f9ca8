//! Encryption context: non-secret key-value pairs bound into every wrap as associated data.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

/// Key of the context entry that names the database a DEK belongs to.
pub const DB_CONTEXT_KEY: &str = "sqlite-tde:db";

/// Key-value pairs that must match exactly at decrypt time (cloud-KMS semantics).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncryptionContext(BTreeMap<String, String>);

impl EncryptionContext {
    /// The context of a database's DEK: its UUID.
    pub fn for_database(db_uuid: &[u8; 16]) -> EncryptionContext {
        let mut m = BTreeMap::new();
        m.insert(DB_CONTEXT_KEY.to_string(), uuid::Uuid::from_bytes(*db_uuid).to_string());
        EncryptionContext(m)
    }

    /// Build from arbitrary pairs.
    pub fn from_pairs<I: IntoIterator<Item = (String, String)>>(pairs: I) -> EncryptionContext {
        EncryptionContext(pairs.into_iter().collect())
    }

    /// The pairs, sorted by key.
    pub fn pairs(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    /// SHA-256 over a canonical, length-prefixed encoding (used as AAD and in audit records).
    pub fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        for (k, v) in &self.0 {
            h.update((k.len() as u32).to_le_bytes());
            h.update(k.as_bytes());
            h.update((v.len() as u32).to_le_bytes());
            h.update(v.as_bytes());
        }
        h.finalize().into()
    }
}

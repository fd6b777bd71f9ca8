//! The keystore file: CMK metadata and root-key-encrypted material, one JSON document with a
//! magic line and a SHA-256 trailer, replaced atomically under an exclusive lock file.
//!
//! ```text
//! sqlite-tde-keystore 1\n
//! { ...json... }\n
//! sha256:<64 hex>\n        (over the two lines above)
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::rootkey::PassphraseParams;
use crate::kms::KmsError;

const MAGIC_LINE: &str = "sqlite-tde-keystore 1\n";

/// How the root key is obtained, and its check value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RootConfig {
    pub kind: String,
    pub check: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passphrase: Option<PassphraseParams>,
}

/// Lifecycle state of a CMK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    Enabled,
    Disabled,
}

/// One version of a CMK's material, encrypted under the root key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyVersionRecord {
    pub version: u32,
    pub created: u64,
    /// Hex of a sealed blob (see `wrap`) holding the 32-byte material.
    pub material: String,
}

/// A customer master key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyRecord {
    pub key_id: String,
    #[serde(default)]
    pub description: String,
    pub created: u64,
    pub state: KeyState,
    /// `customer` or `service` (the default key).
    pub manager: String,
    pub origin: String,
    pub protection: String,
    pub primary_version: u32,
    pub versions: Vec<KeyVersionRecord>,
}

/// The whole keystore document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeystoreData {
    pub root: RootConfig,
    #[serde(default)]
    pub keys: BTreeMap<String, KeyRecord>,
    /// `alias/NAME` -> key id.
    #[serde(default)]
    pub aliases: BTreeMap<String, String>,
}

impl KeystoreData {
    /// Find a key by id or alias.
    pub fn resolve(&self, key: &str) -> Result<&KeyRecord, KmsError> {
        let id = if key.starts_with("alias/") {
            self.aliases.get(key).ok_or_else(|| KmsError::NotFound(key.to_string()))?
        } else {
            key
        };
        self.keys.get(id).ok_or_else(|| KmsError::NotFound(key.to_string()))
    }

    /// Aliases pointing at a key id.
    pub fn aliases_of(&self, key_id: &str) -> Vec<String> {
        self.aliases.iter().filter(|(_, v)| v.as_str() == key_id).map(|(k, _)| k.clone()).collect()
    }
}

/// Paths of a keystore directory.
#[derive(Debug, Clone)]
pub struct KeystorePaths {
    pub dir: PathBuf,
}

impl KeystorePaths {
    pub fn file(&self) -> PathBuf {
        self.dir.join("keystore.json")
    }
    pub fn lock(&self) -> PathBuf {
        self.dir.join("keystore.lock")
    }
}

/// Serialise with magic and checksum.
pub fn encode(data: &KeystoreData) -> Vec<u8> {
    let json = serde_json::to_string_pretty(data).expect("keystore serialises");
    let mut body = String::with_capacity(json.len() + 100);
    body.push_str(MAGIC_LINE);
    body.push_str(&json);
    body.push('\n');
    let sum = hex::encode(Sha256::digest(body.as_bytes()));
    body.push_str("sha256:");
    body.push_str(&sum);
    body.push('\n');
    body.into_bytes()
}

/// Parse and verify.
pub fn decode(bytes: &[u8], path: &Path) -> Result<KeystoreData, KmsError> {
    let corrupt = |why: &str| KmsError::Keystore(format!("keystore {} is corrupt: {why}", path.display()));
    let text = std::str::from_utf8(bytes).map_err(|_| corrupt("not UTF-8"))?;
    let body = text.strip_prefix(MAGIC_LINE).ok_or_else(|| corrupt("bad magic line"))?;
    let idx = body.rfind("sha256:").ok_or_else(|| corrupt("missing checksum"))?;
    let (json, trailer) = body.split_at(idx);
    let want = trailer.trim_start_matches("sha256:").trim();
    let covered = &text[..MAGIC_LINE.len() + json.len()];
    if hex::encode(Sha256::digest(covered.as_bytes())) != want {
        return Err(corrupt("checksum mismatch"));
    }
    serde_json::from_str(json).map_err(|e| corrupt(&e.to_string()))
}

/// Read the keystore; `None` when it does not exist yet.
pub fn load(paths: &KeystorePaths) -> Result<Option<KeystoreData>, KmsError> {
    let file = paths.file();
    match std::fs::read(&file) {
        Ok(b) => decode(&b, &file).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(KmsError::Keystore(format!("cannot read {}: {e}", file.display()))),
    }
}

/// Replace the keystore atomically. Callers hold the lock file.
pub fn store(paths: &KeystorePaths, data: &KeystoreData) -> Result<(), KmsError> {
    crate::fsutil::write_atomic(&paths.file(), &encode(data), 0o600)
        .map_err(|e| KmsError::Keystore(format!("cannot write {}: {e}", paths.file().display())))
}

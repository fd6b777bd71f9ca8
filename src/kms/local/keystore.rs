//! The keystore file: CMK metadata, key policies and root-key-encrypted material, one JSON
//! document with a magic line and a SHA-256 trailer, replaced atomically under an exclusive
//! lock file (docs/FORMAT.md §4).
//!
//! ```text
//! sqlite-tde-keystore 2\n
//! { ...json... }\n
//! sha256:<64 hex>\n        (over the two lines above)
//! ```
//!
//! Version 1 files (no policies, states enabled/disabled only) are read and migrated in
//! memory; the next write stores version 2.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::rootkey::PassphraseParams;
use crate::kms::clock::DAY;
use crate::kms::model::{limits, KeyManager, KeyState, Origin, Protection};
use crate::kms::policy::KeyPolicy;
use crate::kms::KmsError;

/// Current keystore format version.
pub const KEYSTORE_VERSION: u32 = 2;
const MAGIC_PREFIX: &str = "sqlite-tde-keystore ";

/// How the root key is obtained, and its check value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RootConfig {
    pub kind: String,
    pub check: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passphrase: Option<PassphraseParams>,
}

/// One version of a CMK's material.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyVersionRecord {
    pub version: u32,
    pub created: u64,
    /// Hex of a sealed blob (see `wrap`) holding the 32-byte material under the root key
    /// (software protection). `None` once destroyed, or for HSM keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub material: Option<String>,
    /// CKA_LABEL of the token object holding this version (HSM protection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hsm_label: Option<String>,
}

impl KeyVersionRecord {
    /// Does this version still have material?
    pub fn available(&self) -> bool {
        self.material.is_some() || self.hsm_label.is_some()
    }
}

/// Automatic rotation settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RotationRecord {
    pub period_days: u32,
    pub next_rotation: u64,
}

/// Which PKCS#11 token holds an HSM key's versions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HsmRef {
    pub module: String,
    pub token_label: String,
}

/// An outstanding GetParametersForImport answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingImportParams {
    /// Hex of a root-key-sealed PKCS#8 DER RSA private key.
    pub wrapping_key: String,
    /// SHA-256 (hex) of the import token.
    pub token_sha256: String,
    pub valid_to: u64,
}

/// BYOK state of an external-origin key.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImportRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<PendingImportParams>,
    /// HMAC-SHA256(root-derived key, key id || material) of the first material imported:
    /// later imports must carry the same material.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imported_at: Option<u64>,
}

/// A customer master key (or the tombstone of a deleted one).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyRecord {
    pub key_id: String,
    #[serde(default)]
    pub description: String,
    pub created: u64,
    pub state: KeyState,
    pub manager: KeyManager,
    #[serde(default)]
    pub origin: Origin,
    #[serde(default)]
    pub protection: Protection,
    /// 0 while the key has no material (external origin before the first import).
    pub primary_version: u32,
    pub versions: Vec<KeyVersionRecord>,
    /// `None` only transiently for version-1 keys (migrated on load).
    #[serde(default)]
    pub policy: Option<KeyPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<RotationRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_date: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hsm: Option<HsmRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import: Option<ImportRecord>,
}

impl KeyRecord {
    pub fn version(&self, v: u32) -> Option<&KeyVersionRecord> {
        self.versions.iter().find(|r| r.version == v)
    }
    pub fn next_version(&self) -> u32 {
        self.versions.iter().map(|v| v.version).max().unwrap_or(0) + 1
    }
    pub fn has_material(&self) -> bool {
        self.versions.iter().any(KeyVersionRecord::available)
    }
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
        let id = self.resolve_id(key)?;
        self.keys.get(&id).ok_or_else(|| KmsError::NotFound(key.to_string()))
    }

    /// Key id of a key id or alias.
    pub fn resolve_id(&self, key: &str) -> Result<String, KmsError> {
        if key.starts_with("alias/") {
            return self.aliases.get(key).cloned().ok_or_else(|| KmsError::NotFound(key.to_string()));
        }
        if self.keys.contains_key(key) {
            Ok(key.to_string())
        } else {
            Err(KmsError::NotFound(key.to_string()))
        }
    }

    /// Aliases pointing at a key id.
    pub fn aliases_of(&self, key_id: &str) -> Vec<String> {
        self.aliases.iter().filter(|(_, v)| v.as_str() == key_id).map(|(k, _)| k.clone()).collect()
    }

    /// Bring a version-1 document to version 2: every key gets a policy that keeps version
    /// 1's behaviour (anyone who can reach the keystore may do anything; `kms lint` flags
    /// it), the default key its yearly rotation.
    fn migrate_v1(&mut self) {
        for rec in self.keys.values_mut() {
            if rec.policy.is_none() {
                rec.policy = Some(match rec.manager {
                    KeyManager::Service => KeyPolicy::service_default(),
                    KeyManager::Customer => KeyPolicy::with_roles(&["*".to_string()], &["*".to_string()]),
                });
            }
            if rec.manager == KeyManager::Service && rec.rotation.is_none() {
                let period = limits::DEFAULT_KEY_ROTATION_DAYS;
                rec.rotation =
                    Some(RotationRecord { period_days: period, next_rotation: rec.created + period as u64 * DAY });
            }
        }
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
    body.push_str(MAGIC_PREFIX);
    body.push_str(&KEYSTORE_VERSION.to_string());
    body.push('\n');
    body.push_str(&json);
    body.push('\n');
    let sum = hex::encode(Sha256::digest(body.as_bytes()));
    body.push_str("sha256:");
    body.push_str(&sum);
    body.push('\n');
    body.into_bytes()
}

/// Parse and verify (versions 1 and 2; version 1 is migrated).
pub fn decode(bytes: &[u8], path: &Path) -> Result<KeystoreData, KmsError> {
    let corrupt = |why: &str| KmsError::Keystore(format!("keystore {} is corrupt: {why}", path.display()));
    let text = std::str::from_utf8(bytes).map_err(|_| corrupt("not UTF-8"))?;
    let (magic, body) = text.split_once('\n').ok_or_else(|| corrupt("bad magic line"))?;
    let version: u32 =
        magic.strip_prefix(MAGIC_PREFIX).and_then(|v| v.parse().ok()).ok_or_else(|| corrupt("bad magic line"))?;
    if version > KEYSTORE_VERSION {
        return Err(KmsError::Keystore(format!(
            "keystore {} has format version {version}; this build reads versions 1 to {KEYSTORE_VERSION}",
            path.display()
        )));
    }
    let idx = body.rfind("sha256:").ok_or_else(|| corrupt("missing checksum"))?;
    let (json, trailer) = body.split_at(idx);
    let want = trailer.trim_start_matches("sha256:").trim();
    let covered = &text[..magic.len() + 1 + json.len()];
    if hex::encode(Sha256::digest(covered.as_bytes())) != want {
        return Err(corrupt("checksum mismatch"));
    }
    let mut data: KeystoreData = serde_json::from_str(json).map_err(|e| corrupt(&e.to_string()))?;
    if version == 1 {
        data.migrate_v1();
    }
    Ok(data)
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

/// Write the first keystore file: fails rather than replaces an existing one.
pub fn store_new(paths: &KeystorePaths, data: &KeystoreData) -> Result<(), KmsError> {
    crate::fsutil::write_new(&paths.file(), &encode(data), 0o600)
        .map_err(|e| KmsError::Keystore(format!("cannot create {}: {e}", paths.file().display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_1_is_migrated() {
        let v1_json = r#"{
  "root": {"kind": "keystore-file", "check": "00"},
  "keys": {
    "k1": {"key_id": "k1", "description": "", "created": 100, "state": "disabled", "manager": "customer",
           "origin": "internal", "protection": "software", "primary_version": 1,
           "versions": [{"version": 1, "created": 100, "material": "abcd"}]},
    "k2": {"key_id": "k2", "description": "", "created": 100, "state": "enabled", "manager": "service",
           "origin": "internal", "protection": "software", "primary_version": 1,
           "versions": [{"version": 1, "created": 100, "material": "abcd"}]}
  },
  "aliases": {"alias/sqlite-tde/default": "k2"}
}"#;
        let mut body = format!("sqlite-tde-keystore 1\n{v1_json}\n");
        let sum = hex::encode(Sha256::digest(body.as_bytes()));
        body.push_str(&format!("sha256:{sum}\n"));
        let d = decode(body.as_bytes(), Path::new("x")).unwrap();
        let k1 = &d.keys["k1"];
        assert_eq!(k1.state, KeyState::Disabled);
        assert!(k1.policy.as_ref().unwrap().allows("anyone", "kms:Decrypt"));
        assert_eq!(k1.versions[0].material.as_deref(), Some("abcd"));
        assert_eq!(d.keys["k2"].rotation.as_ref().unwrap().period_days, 365);
        let re = decode(&encode(&d), Path::new("x")).unwrap();
        assert!(encode(&d).starts_with(b"sqlite-tde-keystore 2\n"));
        assert_eq!(re.keys.len(), 2);
    }
}

//! The keystore file: CMK metadata, key policies, root-key-encrypted material and the audit
//! head, one document replaced atomically under an exclusive lock file and authenticated
//! under a key derived from the root key (docs/FORMAT.md §4).
//!
//! ```text
//! sqlite-tde-keystore 3\n
//! { ...json... }\n
//! audit: {"head":{"seq":N,"digest":"<64 hex>"},"pending":[records]}\n
//! hmac-sha256:<64 hex>\n    (HMAC-SHA256(K_keystore, every byte above))
//! ```
//!
//! Versions 1 and 2 (no MAC: a SHA-256 trailer that only catches accidents) are read and
//! migrated in memory; the next write stores version 3. Whether such a file may still be
//! trusted (it may be a downgrade) is decided by the caller, which knows the audit log.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::rootkey::{PassphraseParams, RootKey};
use crate::audit::AuditState;
use crate::clock::DAY;
use crate::model::{limits, KeyManager, KeyState, Origin, Protection};
use crate::policy::KeyPolicy;
use crate::KmsError;

/// Current keystore format version.
pub const KEYSTORE_VERSION: u32 = 3;
/// The first version that carries a MAC (and the audit head).
pub const MAC_VERSION: u32 = 3;
const MAGIC_PREFIX: &str = "sqlite-tde-keystore ";
const AUDIT_LINE: &str = "audit: ";
const MAC_LINE: &str = "hmac-sha256:";
const MAC_LABEL: &[u8] = b"sqlite-tde/keystore-mac/v1";

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
    /// pending_deletion: the boot-clock checkpoint that keeps a wall-clock jump from deleting
    /// early (`super::deletion`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_clock: Option<super::deletion::DeletionClock>,
    /// pending_deletion: the last due deletion failed to destroy the HSM objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_failure: Option<super::deletion::DeletionFailure>,
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
    /// The newest `kmsd.json` generation written (FORMAT §7): a file with an older one was
    /// put back (a revoked token would work again), and a missing file was deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kmsd_generation: Option<u64>,
    /// The audit head and the last commit's records (format 3: its own line, under the MAC).
    #[serde(skip)]
    pub audit: AuditState,
    /// The format the file was read in (`KEYSTORE_VERSION` once written by this build).
    #[serde(skip)]
    pub format: u32,
}

impl KeystoreData {
    /// Is `key` the root key this document was made under? (The check value's label
    /// changed with format 3: a MAC'd keystore never holds the value a format-1/2 file needs,
    /// so such a file cannot be forged from it.)
    pub fn root_matches(&self, key: &RootKey) -> bool {
        key.check_value_for(self.format) == self.root.check
    }

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

fn mac_key(root: &RootKey) -> zeroize::Zeroizing<[u8; 32]> {
    root.derive(MAC_LABEL)
}

fn mac(root: &RootKey, covered: &[u8]) -> hmac::Hmac<Sha256> {
    let mut m = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(&mac_key(root)[..]).expect("any length");
    m.update(covered);
    m
}

/// Serialise as format 3, authenticated under `root` (the root check value is the format-3 one).
pub fn encode(data: &KeystoreData, root: &RootKey) -> Vec<u8> {
    let mut doc = data.clone();
    doc.root.check = root.check_value_for(KEYSTORE_VERSION);
    let json = serde_json::to_string_pretty(&doc).expect("keystore serialises");
    let audit = serde_json::to_string(&data.audit).expect("audit state serialises");
    let mut body = String::with_capacity(json.len() + audit.len() + 120);
    body.push_str(MAGIC_PREFIX);
    body.push_str(&KEYSTORE_VERSION.to_string());
    body.push('\n');
    body.push_str(&json);
    body.push('\n');
    body.push_str(AUDIT_LINE);
    body.push_str(&audit);
    body.push('\n');
    let tag = hex::encode(mac(root, body.as_bytes()).finalize().into_bytes());
    body.push_str(MAC_LINE);
    body.push_str(&tag);
    body.push('\n');
    body.into_bytes()
}

/// A parsed keystore file whose MAC (format 3) is not checked yet: the root key it names
/// must be loaded first.
#[derive(Debug)]
pub struct Loaded {
    pub data: KeystoreData,
    /// Format 3: the covered bytes and the MAC.
    seal: Option<(Vec<u8>, Vec<u8>)>,
    path: PathBuf,
}

impl Loaded {
    /// Check the MAC under `root` (a matching root key: see [`KeystoreData::root_matches`]).
    /// Format 1/2 files have none: the caller decides whether to trust them.
    pub fn verify(self, root: &RootKey) -> Result<KeystoreData, KmsError> {
        if let Some((covered, tag)) = &self.seal {
            if mac(root, covered).verify_slice(tag).is_err() {
                return Err(KmsError::Keystore(format!(
                    "keystore {} was modified without the root key (or is corrupt): its MAC does not verify; nothing \
                     was changed. Restore keystore.json from a backup (`sqlite-tde kms restore BACKUP`)",
                    self.path.display()
                )));
            }
        }
        Ok(self.data)
    }
}

/// The part of a keystore file that changes only with the keys (not with each audit record):
/// what key caches watch to notice revocations.
pub fn keys_section(bytes: &[u8]) -> &[u8] {
    let needle = format!("\n{AUDIT_LINE}");
    match bytes.windows(needle.len()).rposition(|w| w == needle.as_bytes()) {
        Some(i) => &bytes[..i],
        None => bytes,
    }
}

/// Parse (versions 1 to 3; 1 and 2 are checked against their checksum and migrated).
pub fn decode(bytes: &[u8], path: &Path) -> Result<Loaded, KmsError> {
    let corrupt = |why: &str| KmsError::Keystore(format!("keystore {} is corrupt: {why}", path.display()));
    let text = std::str::from_utf8(bytes).map_err(|_| corrupt("not UTF-8"))?;
    let (magic, body) = text.split_once('\n').ok_or_else(|| corrupt("bad magic line"))?;
    let version: u32 =
        magic.strip_prefix(MAGIC_PREFIX).and_then(|v| v.parse().ok()).ok_or_else(|| corrupt("bad magic line"))?;
    if version == 0 || version > KEYSTORE_VERSION {
        return Err(KmsError::Keystore(format!(
            "keystore {} has format version {version}; this build reads versions 1 to {KEYSTORE_VERSION}",
            path.display()
        )));
    }
    if version >= MAC_VERSION {
        let idx = body.rfind(&format!("\n{MAC_LINE}")).ok_or_else(|| corrupt("missing MAC"))? + 1;
        let tag_hex = body[idx + MAC_LINE.len()..].strip_suffix('\n').ok_or_else(|| corrupt("bad MAC line"))?;
        let tag = hex::decode(tag_hex).ok().filter(|t| t.len() == 32).ok_or_else(|| corrupt("bad MAC line"))?;
        let covered = &text[..magic.len() + 1 + idx];
        let inner = &body[..idx - 1];
        let a = inner.rfind(&format!("\n{AUDIT_LINE}")).ok_or_else(|| corrupt("missing audit line"))?;
        let json = &inner[..a];
        let audit = &inner[a + 1 + AUDIT_LINE.len()..];
        let mut data: KeystoreData = serde_json::from_str(json).map_err(|e| corrupt(&e.to_string()))?;
        data.audit = serde_json::from_str(audit).map_err(|e| corrupt(&format!("audit line: {e}")))?;
        data.format = version;
        return Ok(Loaded { data, seal: Some((covered.as_bytes().to_vec(), tag)), path: path.to_path_buf() });
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
    data.format = version;
    Ok(Loaded { data, seal: None, path: path.to_path_buf() })
}

/// Read the keystore (MAC not yet checked); `None` when it does not exist yet.
pub fn load(paths: &KeystorePaths) -> Result<Option<Loaded>, KmsError> {
    let file = paths.file();
    match std::fs::read(&file) {
        Ok(b) => decode(&b, &file).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(KmsError::Keystore(format!("cannot read {}: {e}", file.display()))),
    }
}

/// Replace the keystore atomically. Callers hold the lock file.
pub fn store(paths: &KeystorePaths, data: &KeystoreData, root: &RootKey) -> Result<(), KmsError> {
    sqlite_tde_fsutil::write_atomic(&paths.file(), &encode(data, root), 0o600)
        .map_err(|e| KmsError::Keystore(format!("cannot write {}: {e}", paths.file().display())))
}

/// Write the first keystore file: fails rather than replaces an existing one.
pub fn store_new(paths: &KeystorePaths, data: &KeystoreData, root: &RootKey) -> Result<(), KmsError> {
    sqlite_tde_fsutil::write_new(&paths.file(), &encode(data, root), 0o600)
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
        let d = decode(body.as_bytes(), Path::new("x")).unwrap().data;
        let k1 = &d.keys["k1"];
        assert_eq!(k1.state, KeyState::Disabled);
        assert!(k1.policy.as_ref().unwrap().allows("anyone", "kms:Decrypt"));
        assert_eq!(k1.versions[0].material.as_deref(), Some("abcd"));
        assert_eq!(d.keys["k2"].rotation.as_ref().unwrap().period_days, 365);
        let root = RootKey::from_bytes_for_tests([9; 32]);
        let bytes = encode(&d, &root);
        assert!(bytes.starts_with(b"sqlite-tde-keystore 3\n"));
        let re = decode(&bytes, Path::new("x")).unwrap().verify(&root).unwrap();
        assert_eq!(re.keys.len(), 2);
        assert!(re.root_matches(&root) && re.format == 3);
        // Any edit, and any other root key, fails the MAC.
        assert!(decode(&bytes, Path::new("x")).unwrap().verify(&RootKey::from_bytes_for_tests([8; 32])).is_err());
        let edited = String::from_utf8(bytes).unwrap().replace("\"disabled\"", "\"enabled\"");
        assert!(decode(edited.as_bytes(), Path::new("x")).unwrap().verify(&root).is_err());
    }
}

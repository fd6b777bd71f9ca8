//! Small versioned secrets (an API token, a database password) encrypted under a CMK, so no
//! credential has to live in code or a configuration file.
//!
//! Each version is a KMS Encrypt blob under the secret's CMK with the encryption context
//! `{"sqlite-tde:secret": NAME, "sqlite-tde:secret-version": VERSION-ID}`: reading a secret is
//! a Decrypt, so the CMK's key policy decides who may read (kms:Decrypt) and write
//! (kms:Encrypt) it, and every access is in the audit log. Staging labels: the newest version
//! is `current`, the one before it `previous`.
//!
//! Stored in `secrets.json` in the keystore directory (magic line, JSON, SHA-256 trailer,
//! replaced atomically under `secrets.lock`; docs/FORMAT.md §6). Secret names and metadata are
//! not secret; values are.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::api::b64_secret;
use super::local::LocalKms;
use super::model::limits;
use super::{EncryptionContext, KmsError, DEFAULT_KEY_ALIAS};

const MAGIC_LINE: &str = "sqlite-tde-secrets 1\n";
pub const STAGE_CURRENT: &str = "current";
pub const STAGE_PREVIOUS: &str = "previous";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct SecretsData {
    #[serde(default)]
    secrets: BTreeMap<String, SecretRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SecretRecord {
    name: String,
    key_id: String,
    #[serde(default)]
    description: String,
    created: u64,
    versions: Vec<SecretVersionRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SecretVersionRecord {
    version_id: String,
    created: u64,
    #[serde(default)]
    stages: Vec<String>,
    /// Base64 of the KMS ciphertext blob.
    ciphertext: String,
}

/// A secret in a listing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretInfo {
    pub name: String,
    pub key_id: String,
    pub description: String,
    pub created: u64,
    pub current_version: Option<String>,
    pub versions: usize,
}

/// One version of a secret (no value).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretVersionInfo {
    pub name: String,
    pub version_id: String,
    pub created: u64,
    pub stages: Vec<String>,
    pub key_id: String,
}

/// A secret's value.
#[derive(Debug, Serialize, Deserialize)]
pub struct SecretValue {
    pub name: String,
    pub version_id: String,
    pub stages: Vec<String>,
    #[serde(with = "b64_secret")]
    pub value: Zeroizing<Vec<u8>>,
}

fn validate_name(name: &str) -> Result<(), KmsError> {
    if name.is_empty() || name.len() > 256 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "/_+=.@-".contains(c))
    {
        return Err(KmsError::InvalidRequest(format!(
            "invalid secret name {name:?}: use letters, digits and /_+=.@- (1-256)"
        )));
    }
    Ok(())
}

fn context(name: &str, version_id: &str) -> EncryptionContext {
    EncryptionContext::from_pairs([
        ("sqlite-tde:secret".to_string(), name.to_string()),
        ("sqlite-tde:secret-version".to_string(), version_id.to_string()),
    ])
}

struct Store {
    file: PathBuf,
    lock: PathBuf,
}

impl Store {
    fn of(dir: &Path) -> Store {
        Store { file: dir.join("secrets.json"), lock: dir.join("secrets.lock") }
    }

    fn load(&self) -> Result<SecretsData, KmsError> {
        let bytes = match std::fs::read(&self.file) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(SecretsData::default()),
            Err(e) => return Err(KmsError::Keystore(format!("cannot read {}: {e}", self.file.display()))),
        };
        let corrupt = |why: &str| KmsError::Keystore(format!("{} is corrupt: {why}", self.file.display()));
        let text = std::str::from_utf8(&bytes).map_err(|_| corrupt("not UTF-8"))?;
        let body = text.strip_prefix(MAGIC_LINE).ok_or_else(|| corrupt("bad magic line"))?;
        let idx = body.rfind("sha256:").ok_or_else(|| corrupt("missing checksum"))?;
        let (json, trailer) = body.split_at(idx);
        let covered = &text[..MAGIC_LINE.len() + json.len()];
        if hex::encode(Sha256::digest(covered.as_bytes())) != trailer.trim_start_matches("sha256:").trim() {
            return Err(corrupt("checksum mismatch"));
        }
        serde_json::from_str(json).map_err(|e| corrupt(&e.to_string()))
    }

    fn store(&self, data: &SecretsData) -> Result<(), KmsError> {
        let mut body = String::from(MAGIC_LINE);
        body.push_str(&serde_json::to_string_pretty(data).map_err(|e| KmsError::Keystore(e.to_string()))?);
        body.push('\n');
        let sum = hex::encode(Sha256::digest(body.as_bytes()));
        body.push_str(&format!("sha256:{sum}\n"));
        crate::fsutil::write_atomic(&self.file, body.as_bytes(), 0o600)
            .map_err(|e| KmsError::Keystore(format!("cannot write {}: {e}", self.file.display())))
    }

    fn locked(&self) -> Result<std::fs::File, KmsError> {
        crate::fsutil::lock_exclusive(&self.lock).map_err(|e| KmsError::Keystore(format!("cannot lock secrets: {e}")))
    }
}

/// Encrypt `value` as a new version of `name` and make it `current`.
fn add_version(
    kms: &LocalKms,
    principal: &str,
    op: &str,
    name: &str,
    value: &[u8],
    key: Option<&str>,
    description: Option<&str>,
) -> Result<SecretVersionInfo, KmsError> {
    validate_name(name)?;
    if value.len() > limits::MAX_PLAINTEXT {
        return Err(KmsError::InvalidRequest(format!("secret values are at most {} bytes", limits::MAX_PLAINTEXT)));
    }
    let store = Store::of(kms.dir());
    crate::fsutil::create_private_dir(kms.dir()).map_err(|e| KmsError::Keystore(e.to_string()))?;
    let _lock = store.locked()?;
    // Only writers holding secrets.lock make these temp files: any left is a killed writer's.
    let _ = crate::fsutil::remove_stale_temps(kms.dir(), &crate::fsutil::temp_prefix(&store.file));
    let mut data = store.load()?;
    let existing = data.secrets.get(name).cloned();
    let key = match (&existing, key) {
        (Some(s), Some(k)) if !k.starts_with("alias/") && k != s.key_id => {
            return Err(KmsError::InvalidRequest(format!(
                "secret {name} is encrypted under key {}; it cannot change keys",
                s.key_id
            )))
        }
        // An alias is resolved by the seal and checked against the secret's key below: a put
        // naming its key must never end up under another key (secret squatting: someone
        // pre-creates the name under a key they can read).
        (Some(_), Some(k)) => k.to_string(),
        (Some(s), None) => s.key_id.clone(),
        (None, Some(k)) => k.to_string(),
        (None, None) => DEFAULT_KEY_ALIAS.to_string(),
    };
    let version_id = uuid::Uuid::new_v4().to_string();
    let sealed = kms.crypto_seal(principal, op, &key, value, &context(name, &version_id))?;
    if let Some(s) = &existing {
        if sealed.key_id != s.key_id {
            return Err(KmsError::InvalidRequest(format!(
                "secret {name} is encrypted under key {}; it cannot change keys",
                s.key_id
            )));
        }
    }
    let now = kms.now_secs();
    let rec = data.secrets.entry(name.to_string()).or_insert_with(|| SecretRecord {
        name: name.to_string(),
        key_id: sealed.key_id.clone(),
        description: description.unwrap_or_default().to_string(),
        created: now,
        versions: Vec::new(),
    });
    if let Some(d) = description.filter(|d| !d.is_empty()) {
        rec.description = d.to_string();
    }
    for v in rec.versions.iter_mut() {
        let was_current = v.stages.iter().any(|s| s == STAGE_CURRENT);
        v.stages.clear();
        if was_current {
            v.stages.push(STAGE_PREVIOUS.to_string());
        }
    }
    rec.versions.push(SecretVersionRecord {
        version_id: version_id.clone(),
        created: now,
        stages: vec![STAGE_CURRENT.to_string()],
        ciphertext: base64::engine::general_purpose::STANDARD.encode(&sealed.ciphertext),
    });
    let info = SecretVersionInfo {
        name: name.to_string(),
        version_id,
        created: now,
        stages: vec![STAGE_CURRENT.to_string()],
        key_id: rec.key_id.clone(),
    };
    if let Err(e) = store.store(&data) {
        return kms.record_only(principal, op, Some(&sealed.key_id), Err(e));
    }
    Ok(info)
}

/// `secrets put`: a new version of `name` (created if missing, under `key` or the default key).
pub fn put(
    kms: &LocalKms,
    principal: &str,
    name: &str,
    value: &[u8],
    key: Option<&str>,
    description: &str,
) -> Result<SecretVersionInfo, KmsError> {
    add_version(kms, principal, "secrets:PutSecretValue", name, value, key, Some(description))
}

/// `secrets rotate`: a new version, with the given value or 32 random bytes as 64 hex digits.
pub fn rotate(
    kms: &LocalKms,
    principal: &str,
    name: &str,
    value: Option<&Zeroizing<Vec<u8>>>,
) -> Result<SecretVersionInfo, KmsError> {
    let store = Store::of(kms.dir());
    if !store.load()?.secrets.contains_key(name) {
        return kms.record_only(
            principal,
            "secrets:RotateSecret",
            None,
            Err(KmsError::NotFound(format!("secret {name}"))),
        );
    }
    let generated;
    let value: &[u8] = match value {
        Some(v) => v,
        None => {
            let raw = Zeroizing::new(crate::crypto::random_array::<32>()?);
            generated = Zeroizing::new(hex::encode(&raw[..]).into_bytes());
            &generated
        }
    };
    add_version(kms, principal, "secrets:RotateSecret", name, value, None, None)
}

/// `secrets get`: a version by id or staging label (default `current`).
pub fn get(
    kms: &LocalKms,
    principal: &str,
    name: &str,
    version: Option<&str>,
    stage: Option<&str>,
) -> Result<SecretValue, KmsError> {
    let data = Store::of(kms.dir()).load()?;
    let found = data.secrets.get(name).and_then(|s| {
        s.versions.iter().find(|v| match version {
            Some(id) => v.version_id == id,
            None => v.stages.iter().any(|st| st == stage.unwrap_or(STAGE_CURRENT)),
        })
    });
    let Some(v) = found else {
        let what = match (version, stage) {
            (Some(id), _) => format!("secret {name} version {id}"),
            (None, st) => format!("secret {name} ({})", st.unwrap_or(STAGE_CURRENT)),
        };
        return kms.record_only(principal, "secrets:GetSecretValue", None, Err(KmsError::NotFound(what)));
    };
    let blob = base64::engine::general_purpose::STANDARD
        .decode(&v.ciphertext)
        .map_err(|_| KmsError::Keystore(format!("secret {name} has a damaged ciphertext")))?;
    let value = kms.crypto_open(principal, "secrets:GetSecretValue", &blob, &context(name, &v.version_id))?;
    Ok(SecretValue { name: name.to_string(), version_id: v.version_id.clone(), stages: v.stages.clone(), value })
}

/// `secrets list`.
pub fn list(kms: &LocalKms, principal: &str) -> Result<Vec<SecretInfo>, KmsError> {
    let r = Store::of(kms.dir()).load().map(|d| {
        d.secrets
            .values()
            .map(|s| SecretInfo {
                name: s.name.clone(),
                key_id: s.key_id.clone(),
                description: s.description.clone(),
                created: s.created,
                current_version: s
                    .versions
                    .iter()
                    .find(|v| v.stages.iter().any(|x| x == STAGE_CURRENT))
                    .map(|v| v.version_id.clone()),
                versions: s.versions.len(),
            })
            .collect()
    });
    kms.record_only(principal, "secrets:ListSecrets", None, r)
}

/// `secrets versions NAME`.
pub fn versions(kms: &LocalKms, principal: &str, name: &str) -> Result<Vec<SecretVersionInfo>, KmsError> {
    let data = Store::of(kms.dir()).load()?;
    let r = match data.secrets.get(name) {
        Some(s) => Ok(s
            .versions
            .iter()
            .map(|v| SecretVersionInfo {
                name: name.to_string(),
                version_id: v.version_id.clone(),
                created: v.created,
                stages: v.stages.clone(),
                key_id: s.key_id.clone(),
            })
            .collect()),
        None => Err(KmsError::NotFound(format!("secret {name}"))),
    };
    let key = data.secrets.get(name).map(|s| s.key_id.clone());
    kms.record_only(principal, "secrets:ListSecretVersionIds", key.as_deref(), r)
}

//! Small versioned secrets (an API token, a database password) encrypted under a CMK, so no
//! credential has to live in code or a configuration file.
//!
//! Each version is a KMS Encrypt blob under the secret's CMK with the encryption context
//! `{"sqlite-tde:secret": NAME, "sqlite-tde:secret-version": VERSION-ID}`, and every access
//! is in the audit log. Who may read or write a secret is decided twice: by the secret's own
//! policy ([`access`]) and by its CMK's key policy (kms:Decrypt to read, kms:Encrypt to
//! write). Staging labels: the newest version is `current`, the one before it `previous`.
//!
//! Stored in `secrets.json` in the keystore directory ([`store`]; docs/FORMAT.md §6). Secret
//! names and metadata are not secret; values are.

mod access;
mod store;

pub use access::{actions, owner_policy, SECRET_ACTIONS};

use std::collections::BTreeMap;

use base64::Engine;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use self::access::key_action_for;
use self::store::Store;
use super::api::b64_secret;
use super::local::{LocalKms, SERVICE_PRINCIPAL};
use super::model::limits;
use super::policy::KeyPolicy;
use super::{EncryptionContext, KmsError, DEFAULT_KEY_ALIAS};

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
    /// The creating principal (empty for secrets made before policies existed).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    owner: String,
    /// The secret's resource policy; `None` (secrets from format-1 files): its key's policy
    /// decides, action by action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    policy: Option<KeyPolicy>,
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
    #[serde(default)]
    pub owner: String,
    pub current_version: Option<String>,
    pub versions: usize,
}

/// A secret's policy (`secrets get-policy`): `policy: None` means the secret predates secret
/// policies and its key's policy decides.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretPolicyInfo {
    pub name: String,
    pub key_id: String,
    #[serde(default)]
    pub owner: String,
    pub policy: Option<KeyPolicy>,
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

/// May `principal` perform `action` on `rec`? A refusal is recorded (as `op`) and returned.
fn authorize(kms: &LocalKms, principal: &str, op: &str, rec: &SecretRecord, action: &str) -> Result<(), KmsError> {
    let allowed = match &rec.policy {
        Some(p) => p.allows(principal, action),
        None => kms.key_policy_allows(principal, &rec.key_id, key_action_for(action))?,
    };
    if allowed {
        return Ok(());
    }
    kms.record_only(
        principal,
        op,
        Some(&rec.key_id),
        Err(KmsError::AccessDenied {
            principal: principal.to_string(),
            action: action.to_string(),
            key: format!("secret {}", rec.name),
        }),
    )
}

/// Write `data` (caller holds `secrets.lock`); a file older than format 2 is upgraded, and
/// the upgrade is recorded first, so that from then on an unMAC'd file is a downgrade.
fn save(kms: &LocalKms, store: &Store, from: u32, data: &SecretsData) -> Result<(), KmsError> {
    if from < store::FORMAT {
        kms.record_detail(
            SERVICE_PRINCIPAL,
            store::UPGRADE_OP,
            None,
            format!(
                "secrets.json format {from} -> {}: authenticated under a key derived from the root key",
                store::FORMAT
            ),
            Ok(()),
        )?;
    }
    store.store(kms, data)
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
    sqlite_tde_fsutil::create_private_dir(kms.dir()).map_err(|e| KmsError::Keystore(e.to_string()))?;
    let _lock = store.locked()?;
    // Only writers holding secrets.lock make these temp files: any left is a killed writer's.
    let _ = sqlite_tde_fsutil::remove_stale_temps(kms.dir(), &sqlite_tde_fsutil::temp_prefix(store.file()));
    let loaded = store.load(kms)?;
    let mut data = loaded.data;
    let existing = data.secrets.get(name).cloned();
    if let Some(s) = &existing {
        let action = if op == "secrets:RotateSecret" { actions::ROTATE_SECRET } else { actions::PUT_SECRET_VALUE };
        authorize(kms, principal, op, s, action)?;
    }
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
        owner: principal.to_string(),
        policy: Some(owner_policy(principal)),
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
    if let Err(e) = save(kms, &store, loaded.format, &data) {
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
    const OP: &str = "secrets:RotateSecret";
    match Store::of(kms.dir()).load(kms)?.data.secrets.get(name) {
        None => return kms.record_only(principal, OP, None, Err(KmsError::NotFound(format!("secret {name}")))),
        // Refused before a value is generated; checked again under the lock.
        Some(s) => authorize(kms, principal, OP, s, actions::ROTATE_SECRET)?,
    }
    let generated;
    let value: &[u8] = match value {
        Some(v) => v,
        None => {
            let raw = Zeroizing::new(crate::plaintext::random_array::<32>()?);
            generated = Zeroizing::new(hex::encode(&raw[..]).into_bytes());
            &generated
        }
    };
    add_version(kms, principal, OP, name, value, None, None)
}

/// `secrets get`: a version by id or staging label (default `current`).
pub fn get(
    kms: &LocalKms,
    principal: &str,
    name: &str,
    version: Option<&str>,
    stage: Option<&str>,
) -> Result<SecretValue, KmsError> {
    const OP: &str = "secrets:GetSecretValue";
    let data = Store::of(kms.dir()).load(kms)?.data;
    let Some(rec) = data.secrets.get(name) else {
        return kms.record_only(principal, OP, None, Err(KmsError::NotFound(format!("secret {name}"))));
    };
    // Before the version lookup: which versions exist is not for the unauthorised either.
    authorize(kms, principal, OP, rec, actions::GET_SECRET_VALUE)?;
    let found = rec.versions.iter().find(|v| match version {
        Some(id) => v.version_id == id,
        None => v.stages.iter().any(|st| st == stage.unwrap_or(STAGE_CURRENT)),
    });
    let Some(v) = found else {
        let what = match (version, stage) {
            (Some(id), _) => format!("secret {name} version {id}"),
            (None, st) => format!("secret {name} ({})", st.unwrap_or(STAGE_CURRENT)),
        };
        return kms.record_only(principal, OP, Some(&rec.key_id), Err(KmsError::NotFound(what)));
    };
    let blob = base64::engine::general_purpose::STANDARD
        .decode(&v.ciphertext)
        .map_err(|_| KmsError::Keystore(format!("secret {name} has a damaged ciphertext")))?;
    let value = kms.crypto_open(principal, OP, &blob, &context(name, &v.version_id))?;
    Ok(SecretValue { name: name.to_string(), version_id: v.version_id.clone(), stages: v.stages.clone(), value })
}

fn may(kms: &LocalKms, principal: &str, rec: &SecretRecord, action: &str) -> Result<bool, KmsError> {
    match &rec.policy {
        Some(p) => Ok(p.allows(principal, action)),
        None => kms.key_policy_allows(principal, &rec.key_id, key_action_for(action)),
    }
}

/// `secrets list`: every secret for a keystore operator; for anyone else the secrets it may
/// describe (the namespace is shared, what is in it is not).
pub fn list(kms: &LocalKms, principal: &str) -> Result<Vec<SecretInfo>, KmsError> {
    let r = (|| {
        let data = Store::of(kms.dir()).load(kms)?.data;
        let everything = kms.is_operator(principal);
        let mut out = Vec::new();
        for s in data.secrets.values() {
            if !everything && !may(kms, principal, s, actions::DESCRIBE_SECRET)? {
                continue;
            }
            out.push(SecretInfo {
                name: s.name.clone(),
                key_id: s.key_id.clone(),
                description: s.description.clone(),
                created: s.created,
                owner: s.owner.clone(),
                current_version: s
                    .versions
                    .iter()
                    .find(|v| v.stages.iter().any(|x| x == STAGE_CURRENT))
                    .map(|v| v.version_id.clone()),
                versions: s.versions.len(),
            });
        }
        Ok(out)
    })();
    kms.record_only(principal, "secrets:ListSecrets", None, r)
}

/// `secrets versions NAME`.
pub fn versions(kms: &LocalKms, principal: &str, name: &str) -> Result<Vec<SecretVersionInfo>, KmsError> {
    const OP: &str = "secrets:ListSecretVersionIds";
    let data = Store::of(kms.dir()).load(kms)?.data;
    let Some(s) = data.secrets.get(name) else {
        return kms.record_only(principal, OP, None, Err(KmsError::NotFound(format!("secret {name}"))));
    };
    authorize(kms, principal, OP, s, actions::LIST_SECRET_VERSION_IDS)?;
    let r = s
        .versions
        .iter()
        .map(|v| SecretVersionInfo {
            name: name.to_string(),
            version_id: v.version_id.clone(),
            created: v.created,
            stages: v.stages.clone(),
            key_id: s.key_id.clone(),
        })
        .collect();
    kms.record_only(principal, OP, Some(&s.key_id), Ok(r))
}

/// `secrets get-policy NAME`.
pub fn get_policy(kms: &LocalKms, principal: &str, name: &str) -> Result<SecretPolicyInfo, KmsError> {
    const OP: &str = "secrets:GetSecretPolicy";
    let data = Store::of(kms.dir()).load(kms)?.data;
    let Some(s) = data.secrets.get(name) else {
        return kms.record_only(principal, OP, None, Err(KmsError::NotFound(format!("secret {name}"))));
    };
    authorize(kms, principal, OP, s, actions::GET_SECRET_POLICY)?;
    let info = SecretPolicyInfo {
        name: s.name.clone(),
        key_id: s.key_id.clone(),
        owner: s.owner.clone(),
        policy: s.policy.clone(),
    };
    kms.record_only(principal, OP, Some(&s.key_id), Ok(info))
}

/// `secrets put-policy NAME`: replace the secret's policy (recorded with the new policy's
/// digest before the file changes).
pub fn put_policy(
    kms: &LocalKms,
    principal: &str,
    name: &str,
    policy: &KeyPolicy,
) -> Result<SecretPolicyInfo, KmsError> {
    const OP: &str = "secrets:PutSecretPolicy";
    let store = Store::of(kms.dir());
    let _lock = store.locked()?;
    let loaded = store.load(kms)?;
    let mut data = loaded.data;
    let Some(rec) = data.secrets.get_mut(name) else {
        return kms.record_only(principal, OP, None, Err(KmsError::NotFound(format!("secret {name}"))));
    };
    authorize(kms, principal, OP, rec, actions::PUT_SECRET_POLICY)?;
    if let Err(why) = access::validate(policy) {
        return kms.record_only(
            principal,
            OP,
            Some(&rec.key_id),
            Err(KmsError::InvalidRequest(format!("secret policy: {why}"))),
        );
    }
    rec.policy = Some(policy.clone());
    let info = SecretPolicyInfo {
        name: rec.name.clone(),
        key_id: rec.key_id.clone(),
        owner: rec.owner.clone(),
        policy: rec.policy.clone(),
    };
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        serde_json::to_vec(policy).map_err(|e| KmsError::InvalidRequest(e.to_string()))?,
    ));
    kms.record_detail(principal, OP, Some(&info.key_id), format!("secret {name}: policy sha256 {digest}"), Ok(()))?;
    save(kms, &store, loaded.format, &data)?;
    Ok(info)
}

//! The embedded local KMS: CMKs in a keystore directory, material encrypted under a root key,
//! every operation in-process. Other processes see changes at their next operation (the
//! keystore is re-read per operation; the key cache avoids doing that per page or per open).

mod keystore;
mod rootkey;
mod wrap;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

pub use keystore::{KeyRecord, KeyState, KeyVersionRecord, KeystoreData};
pub use rootkey::{RootKey, RootSource, ENV_PASSPHRASE, ENV_ROOT_KEY_FILE};

use keystore::{KeystorePaths, RootConfig};
use rootkey::PassphraseParams;
use zeroize::Zeroizing;

use super::{EncryptionContext, GeneratedDataKey, Kms, KmsError, DEFAULT_KEY_ALIAS};
use crate::crypto::{random_array, DataKey};
use crate::format::KeyRef;

/// Environment variable naming the keystore directory.
pub const ENV_KEYSTORE: &str = "SQLITE_TDE_KEYSTORE";
/// Provider name in key references.
pub const PROVIDER: &str = "local";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The default keystore directory: `$SQLITE_TDE_KEYSTORE`, else `$XDG_DATA_HOME/sqlite-tde`,
/// else `~/.local/share/sqlite-tde`.
pub fn default_keystore_dir() -> PathBuf {
    if let Some(p) = std::env::var_os(ENV_KEYSTORE) {
        return PathBuf::from(p);
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("sqlite-tde");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/sqlite-tde")
}

/// Summary of a key for listings.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyInfo {
    pub key_id: String,
    pub aliases: Vec<String>,
    pub description: String,
    pub state: KeyState,
    pub manager: String,
    pub origin: String,
    pub protection: String,
    pub primary_version: u32,
    pub versions: Vec<u32>,
    pub created: u64,
}

/// The embedded KMS over one keystore directory.
pub struct LocalKms {
    paths: KeystorePaths,
    root: Mutex<Option<Arc<RootKey>>>,
}

impl std::fmt::Debug for LocalKms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalKms").field("dir", &self.paths.dir).finish_non_exhaustive()
    }
}

impl LocalKms {
    /// A KMS over `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> LocalKms {
        LocalKms { paths: KeystorePaths { dir: dir.into() }, root: Mutex::new(None) }
    }

    /// The keystore directory.
    pub fn dir(&self) -> &Path {
        &self.paths.dir
    }

    fn lock(&self) -> Result<std::fs::File, KmsError> {
        crate::fsutil::create_private_dir(&self.paths.dir)
            .map_err(|e| KmsError::Keystore(format!("cannot create {}: {e}", self.paths.dir.display())))?;
        crate::fsutil::lock_exclusive(&self.paths.lock())
            .map_err(|e| KmsError::Keystore(format!("cannot lock keystore: {e}")))
    }

    /// Load the root key per the environment and check it against the keystore.
    fn root_key(&self, data: &KeystoreData) -> Result<Arc<RootKey>, KmsError> {
        let mut slot = self.root.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = slot.as_ref() {
            return Ok(k.clone());
        }
        let key = match RootSource::from_env(&self.paths.dir) {
            RootSource::KeystoreFile(p) | RootSource::OperatorFile(p) => RootKey::load_file(&p)?,
            RootSource::Passphrase => {
                let params = data.root.passphrase.as_ref().ok_or_else(|| {
                    KmsError::WrongRootKey(format!(
                        "{} (it was not created with a passphrase; unset {ENV_PASSPHRASE})",
                        self.paths.dir.display()
                    ))
                })?;
                let pass = Zeroizing::new(std::env::var(ENV_PASSPHRASE).unwrap_or_default());
                RootKey::from_passphrase(pass.as_bytes(), params)?
            }
        };
        if key.check_value() != data.root.check {
            return Err(KmsError::WrongRootKey(self.paths.dir.display().to_string()));
        }
        let key = Arc::new(key);
        *slot = Some(key.clone());
        Ok(key)
    }

    /// Read the keystore, creating it (and the root key) on first use.
    fn load_or_init(&self) -> Result<KeystoreData, KmsError> {
        if let Some(d) = keystore::load(&self.paths)? {
            return Ok(d);
        }
        let _lock = self.lock()?;
        if let Some(d) = keystore::load(&self.paths)? {
            return Ok(d);
        }
        let source = RootSource::from_env(&self.paths.dir);
        let (key, passphrase) = match &source {
            RootSource::KeystoreFile(p) => (RootKey::generate_file(p)?, None),
            RootSource::OperatorFile(p) => (RootKey::load_file(p)?, None),
            RootSource::Passphrase => {
                let params = PassphraseParams::generate()?;
                let pass = Zeroizing::new(std::env::var(ENV_PASSPHRASE).unwrap_or_default());
                if pass.is_empty() {
                    return Err(KmsError::InvalidRequest(format!("{ENV_PASSPHRASE} is empty")));
                }
                (RootKey::from_passphrase(pass.as_bytes(), &params)?, Some(params))
            }
        };
        let data = KeystoreData {
            root: RootConfig { kind: source.kind().into(), check: key.check_value(), passphrase },
            keys: Default::default(),
            aliases: Default::default(),
        };
        keystore::store(&self.paths, &data)?;
        *self.root.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(key));
        Ok(data)
    }

    /// Run a read-modify-write of the keystore under the lock.
    fn mutate<T>(&self, f: impl FnOnce(&mut KeystoreData, &RootKey) -> Result<T, KmsError>) -> Result<T, KmsError> {
        self.load_or_init()?;
        let _lock = self.lock()?;
        let mut data = keystore::load(&self.paths)?.ok_or_else(|| KmsError::Keystore("keystore vanished".into()))?;
        let root = self.root_key(&data)?;
        let out = f(&mut data, &root)?;
        keystore::store(&self.paths, &data)?;
        Ok(out)
    }

    fn new_version(root: &RootKey, key_id: &str, version: u32) -> Result<KeyVersionRecord, KmsError> {
        let material = Zeroizing::new(random_array::<32>()?);
        let sealed = wrap::seal(root.expose(), key_id, version, &material[..], &material_context(key_id, version))?;
        Ok(KeyVersionRecord { version, created: now(), material: hex::encode(sealed) })
    }

    fn insert_key(data: &mut KeystoreData, root: &RootKey, alias: Option<&str>, description: &str, manager: &str) -> Result<KeyInfo, KmsError> {
        if let Some(a) = alias {
            validate_alias(a)?;
            if data.aliases.contains_key(a) {
                return Err(KmsError::InvalidRequest(format!("alias {a} already exists")));
            }
        }
        let key_id = uuid::Uuid::new_v4().to_string();
        let rec = KeyRecord {
            key_id: key_id.clone(),
            description: description.to_string(),
            created: now(),
            state: KeyState::Enabled,
            manager: manager.into(),
            origin: "internal".into(),
            protection: "software".into(),
            primary_version: 1,
            versions: vec![Self::new_version(root, &key_id, 1)?],
        };
        data.keys.insert(key_id.clone(), rec);
        if let Some(a) = alias {
            data.aliases.insert(a.to_string(), key_id.clone());
        }
        Ok(info(data, &data.keys[&key_id]))
    }

    /// CreateKey: a new customer-managed CMK, optionally with an alias.
    pub fn create_key(&self, alias: Option<&str>, description: &str) -> Result<KeyInfo, KmsError> {
        if alias == Some(DEFAULT_KEY_ALIAS) {
            return Err(KmsError::InvalidRequest(format!("{DEFAULT_KEY_ALIAS} is reserved for the service-managed default key")));
        }
        self.mutate(|data, root| Self::insert_key(data, root, alias, description, "customer"))
    }

    /// DescribeKey.
    pub fn describe_key(&self, key: &str) -> Result<KeyInfo, KmsError> {
        let data = self.load_or_init()?;
        let rec = data.resolve(key)?;
        Ok(info(&data, rec))
    }

    /// ListKeys.
    pub fn list_keys(&self) -> Result<Vec<KeyInfo>, KmsError> {
        let data = self.load_or_init()?;
        Ok(data.keys.values().map(|r| info(&data, r)).collect())
    }

    /// Make sure the default key exists; returns its id.
    fn ensure_default_key(&self) -> Result<(), KmsError> {
        let data = self.load_or_init()?;
        if data.aliases.contains_key(DEFAULT_KEY_ALIAS) {
            return Ok(());
        }
        self.mutate(|data, root| {
            if !data.aliases.contains_key(DEFAULT_KEY_ALIAS) {
                Self::insert_key(data, root, Some(DEFAULT_KEY_ALIAS), "service-managed default key", "service")?;
            }
            Ok(())
        })
    }

    /// Decrypt the material of one key version.
    fn material(&self, data: &KeystoreData, rec: &KeyRecord, version: u32) -> Result<Zeroizing<[u8; 32]>, KmsError> {
        let v = rec.versions.iter().find(|v| v.version == version).ok_or_else(|| KmsError::NotUsable {
            key: rec.key_id.clone(),
            reason: format!("version {version} does not exist"),
        })?;
        let root = self.root_key(data)?;
        let sealed = hex::decode(&v.material).map_err(|_| KmsError::Keystore("bad material encoding".into()))?;
        let plain = wrap::open(root.expose(), &sealed, &material_context(&rec.key_id, version))
            .map_err(|_| KmsError::Keystore(format!("material of key {} v{version} does not decrypt under the root key", rec.key_id)))?;
        let mut out = Zeroizing::new([0u8; 32]);
        if plain.len() != 32 {
            return Err(KmsError::Keystore("bad material length".into()));
        }
        out.copy_from_slice(&plain);
        Ok(out)
    }

    fn usable<'a>(data: &'a KeystoreData, key: &str) -> Result<&'a KeyRecord, KmsError> {
        let rec = data.resolve(key)?;
        match rec.state {
            KeyState::Enabled => Ok(rec),
            KeyState::Disabled => Err(KmsError::Disabled(rec.key_id.clone())),
        }
    }
}

fn material_context(key_id: &str, version: u32) -> EncryptionContext {
    EncryptionContext::from_pairs([
        ("sqlite-tde:cmk".to_string(), key_id.to_string()),
        ("sqlite-tde:cmk-version".to_string(), version.to_string()),
    ])
}

fn validate_alias(a: &str) -> Result<(), KmsError> {
    let name = a.strip_prefix("alias/").ok_or_else(|| KmsError::InvalidRequest(format!("alias must start with alias/: {a}")))?;
    if name.is_empty() || name.len() > 200 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "/_-.".contains(c)) {
        return Err(KmsError::InvalidRequest(format!("invalid alias {a}: use letters, digits, / _ - .")));
    }
    Ok(())
}

fn info(data: &KeystoreData, r: &KeyRecord) -> KeyInfo {
    KeyInfo {
        key_id: r.key_id.clone(),
        aliases: data.aliases_of(&r.key_id),
        description: r.description.clone(),
        state: r.state,
        manager: r.manager.clone(),
        origin: r.origin.clone(),
        protection: r.protection.clone(),
        primary_version: r.primary_version,
        versions: r.versions.iter().map(|v| v.version).collect(),
        created: r.created,
    }
}

impl Kms for LocalKms {
    fn provider(&self) -> &str {
        PROVIDER
    }

    fn generate_data_key(&self, key: &str, context: &EncryptionContext) -> Result<GeneratedDataKey, KmsError> {
        if key == DEFAULT_KEY_ALIAS {
            self.ensure_default_key()?;
        }
        let data = self.load_or_init()?;
        let rec = Self::usable(&data, key)?;
        let version = rec.primary_version;
        let material = self.material(&data, rec, version)?;
        let dek = DataKey::generate()?;
        let wrapped = wrap::seal(&material, &rec.key_id, version, dek.expose(), context)?;
        Ok(GeneratedDataKey {
            plaintext: dek,
            wrapped,
            key: KeyRef { uri: format!("{PROVIDER}:{}", rec.key_id), version },
        })
    }

    fn decrypt_data_key(&self, key_ref: &KeyRef, wrapped: &[u8], context: &EncryptionContext) -> Result<DataKey, KmsError> {
        let (hdr, _) = wrap::parse(wrapped)?;
        if key_ref.provider() != PROVIDER {
            return Err(KmsError::InvalidRequest(format!(
                "the database key is held by provider '{}', but this process uses the local KMS",
                key_ref.provider()
            )));
        }
        let data = self.load_or_init()?;
        let rec = Self::usable(&data, &hdr.key_id)?;
        let material = self.material(&data, rec, hdr.key_version)?;
        let plain = wrap::open(&material, wrapped, context)?;
        Ok(DataKey::from_slice(&plain)?)
    }

    fn rewrap_data_key(
        &self,
        key_ref: &KeyRef,
        wrapped: &[u8],
        context: &EncryptionContext,
        target: Option<&str>,
    ) -> Result<(Vec<u8>, KeyRef), KmsError> {
        let dek = self.decrypt_data_key(key_ref, wrapped, context)?;
        let (hdr, _) = wrap::parse(wrapped)?;
        let target = target.map(str::to_string).unwrap_or(hdr.key_id);
        let data = self.load_or_init()?;
        let rec = Self::usable(&data, &target)?;
        let version = rec.primary_version;
        let material = self.material(&data, rec, version)?;
        let rewrapped = wrap::seal(&material, &rec.key_id, version, dek.expose(), context)?;
        Ok((rewrapped, KeyRef { uri: format!("{PROVIDER}:{}", rec.key_id), version }))
    }
}

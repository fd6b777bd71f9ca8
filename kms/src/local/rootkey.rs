//! The keystore's root key: encrypts CMK material at rest.
//!
//! Sources, in order: `SQLITE_TDE_ROOT_KEY_FILE` (a file the operator provides, e.g. from a
//! secrets manager or removable media), `SQLITE_TDE_PASSPHRASE` (Argon2id), else `root.key`
//! generated in the keystore directory with mode 0600. The last protects CMKs against other
//! OS users and against a copy of `keystore.json` alone; it does not protect against root, the
//! same user, or a backup that copies the whole keystore directory.

use std::path::{Path, PathBuf};

use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::plaintext::random_array;
use crate::KmsError;

/// `root.key` file magic.
pub const ROOT_KEY_MAGIC: [u8; 8] = *b"SQLTDERK";
const ROOT_KEY_FILE_LEN: usize = 8 + 2 + 6 + 32 + 32;

/// Environment variable naming a root key file.
pub const ENV_ROOT_KEY_FILE: &str = "SQLITE_TDE_ROOT_KEY_FILE";
/// Environment variable holding a passphrase.
pub const ENV_PASSPHRASE: &str = "SQLITE_TDE_PASSPHRASE";

/// 256-bit root key, wiped on drop.
pub struct RootKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for RootKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RootKey([REDACTED])")
    }
}

/// Where the root key comes from (recorded in the keystore as `root.kind`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootSource {
    KeystoreFile(PathBuf),
    OperatorFile(PathBuf),
    Passphrase,
}

impl RootSource {
    /// Pick the source from the environment.
    pub fn from_env(keystore_dir: &Path) -> RootSource {
        if let Some(p) = std::env::var_os(ENV_ROOT_KEY_FILE) {
            RootSource::OperatorFile(PathBuf::from(p))
        } else if std::env::var_os(ENV_PASSPHRASE).is_some() {
            RootSource::Passphrase
        } else {
            RootSource::KeystoreFile(keystore_dir.join("root.key"))
        }
    }
    /// Name stored in the keystore.
    pub fn kind(&self) -> &'static str {
        match self {
            RootSource::KeystoreFile(_) => "keystore-file",
            RootSource::OperatorFile(_) => "operator-file",
            RootSource::Passphrase => "passphrase",
        }
    }
}

/// Argon2id parameters for passphrase-derived root keys (OWASP minimum, ~30 ms here).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct PassphraseParams {
    pub salt: String,
    pub m_cost_kib: u32,
    pub t_cost: u32,
    pub p_cost: u32,
}

impl PassphraseParams {
    pub fn generate() -> Result<PassphraseParams, KmsError> {
        Ok(PassphraseParams { salt: hex::encode(random_array::<16>()?), m_cost_kib: 19 * 1024, t_cost: 2, p_cost: 1 })
    }
}

impl RootKey {
    /// Bytes for AEAD setup.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    /// A value stored in the keystore that proves a root key is the right one (the label of
    /// keystore formats 1 and 2; compares two keys).
    pub fn check_value(&self) -> String {
        self.check_value_for(1)
    }

    /// The check value a keystore of `format` stores. Format 3 (MAC'd) uses its own label,
    /// so the value an unMAC'd format-1/2 file needs never appears in a MAC'd keystore and a
    /// downgraded file cannot be forged from one.
    pub fn check_value_for(&self, format: u32) -> String {
        let label: &[u8] = if format >= 3 { b"sqlite-tde/root-check/v3" } else { b"sqlite-tde/root-check/v1" };
        let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(&self.0[..]).expect("any length");
        mac.update(label);
        hex::encode(mac.finalize().into_bytes())
    }

    #[cfg(test)]
    pub(crate) fn from_bytes_for_tests(b: [u8; 32]) -> RootKey {
        RootKey(Zeroizing::new(b))
    }

    /// A subkey for one purpose (e.g. the audit log's MAC key): HMAC-SHA256(root, label).
    pub fn derive(&self, label: &[u8]) -> Zeroizing<[u8; 32]> {
        let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(&self.0[..]).expect("any length");
        mac.update(label);
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(&mac.finalize().into_bytes());
        out
    }

    /// Derive from a passphrase.
    pub fn from_passphrase(pass: &[u8], params: &PassphraseParams) -> Result<RootKey, KmsError> {
        let salt = hex::decode(&params.salt).map_err(|_| KmsError::Keystore("bad passphrase salt".into()))?;
        let p = argon2::Params::new(params.m_cost_kib, params.t_cost, params.p_cost, Some(32))
            .map_err(|e| KmsError::Keystore(format!("bad Argon2 parameters: {e}")))?;
        let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, p);
        let mut out = Zeroizing::new([0u8; 32]);
        a.hash_password_into(pass, &salt, &mut out[..])
            .map_err(|e| KmsError::Keystore(format!("Argon2 failed: {e}")))?;
        Ok(RootKey(out))
    }

    /// Load a root key file: our 80-byte format, 32 raw bytes, or 64 hex characters.
    pub fn load_file(path: &Path) -> Result<RootKey, KmsError> {
        let bytes = Zeroizing::new(
            std::fs::read(path)
                .map_err(|e| KmsError::Keystore(format!("cannot read root key file {}: {e}", path.display())))?,
        );
        let mut key = Zeroizing::new([0u8; 32]);
        if bytes.len() == ROOT_KEY_FILE_LEN && bytes[..8] == ROOT_KEY_MAGIC {
            let sum = Sha256::digest(&bytes[..48]);
            if sum.as_slice() != &bytes[48..] || u16::from_le_bytes([bytes[8], bytes[9]]) != 1 {
                return Err(KmsError::Keystore(format!("root key file {} is corrupt", path.display())));
            }
            key.copy_from_slice(&bytes[16..48]);
        } else if bytes.len() == 32 {
            key.copy_from_slice(&bytes);
        } else {
            let text = std::str::from_utf8(&bytes).unwrap_or("").trim();
            let decoded = Zeroizing::new(hex::decode(text).unwrap_or_default());
            if decoded.len() != 32 {
                return Err(KmsError::Keystore(format!(
                    "root key file {} must hold 32 bytes (raw, 64 hex characters, or sqlite-tde format)",
                    path.display()
                )));
            }
            key.copy_from_slice(&decoded);
        }
        Ok(RootKey(key))
    }

    /// Generate a new root key and write it to `path` (mode 0600), which must not exist: an
    /// existing root key is never replaced (it may be the only way into a keystore's keys).
    pub fn generate_file(path: &Path) -> Result<RootKey, KmsError> {
        let key = RootKey(Zeroizing::new(random_array::<32>()?));
        key.write_new_file(path)?;
        Ok(key)
    }

    /// Write this key to `path` in the sqlite-tde format (mode 0600), which must not exist.
    pub fn write_new_file(&self, path: &Path) -> Result<(), KmsError> {
        let mut file = Zeroizing::new(vec![0u8; ROOT_KEY_FILE_LEN]);
        file[..8].copy_from_slice(&ROOT_KEY_MAGIC);
        file[8..10].copy_from_slice(&1u16.to_le_bytes());
        file[16..48].copy_from_slice(&self.0[..]);
        let sum = Sha256::digest(&file[..48]);
        file[48..].copy_from_slice(&sum);
        sqlite_tde_fsutil::write_new(path, &file, 0o600).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                KmsError::Keystore(format!("{} already exists: a root key is never replaced", path.display()))
            } else {
                KmsError::Keystore(format!("cannot write {}: {e}", path.display()))
            }
        })
    }
}

//! `kmsd.json` in the keystore directory: how the daemon names its callers.
//!
//! ```json
//! { "uid_principals": { "1000": "app" },
//!   "operators": [ "ops" ],
//!   "tokens": [ { "principal": "ops", "sha256": "<hex digest of the token>", "created": 1700000000 } ] }
//! ```
//! Tokens themselves are never stored; `sqlite-tde kms token create PRINCIPAL` prints one
//! once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::kms::KmsError;

/// One bearer token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenEntry {
    pub principal: String,
    pub sha256: String,
    #[serde(default)]
    pub created: u64,
}

/// The daemon's caller mapping.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DaemonConfig {
    #[serde(default)]
    pub uid_principals: BTreeMap<u32, String>,
    #[serde(default)]
    pub tokens: Vec<TokenEntry>,
    /// Principals that see the whole keystore (`LocalKms::is_operator`), read when the
    /// daemon starts, together with `kms serve --operator`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operators: Vec<String>,
}

impl DaemonConfig {
    pub fn path(keystore: &Path) -> PathBuf {
        keystore.join("kmsd.json")
    }

    /// Read `kmsd.json` (empty when absent).
    pub fn load(keystore: &Path) -> Result<DaemonConfig, KmsError> {
        let p = Self::path(keystore);
        match std::fs::read(&p) {
            Ok(b) => {
                serde_json::from_slice(&b).map_err(|e| KmsError::Keystore(format!("{} is invalid: {e}", p.display())))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DaemonConfig::default()),
            Err(e) => Err(KmsError::Keystore(format!("cannot read {}: {e}", p.display()))),
        }
    }

    /// Write `kmsd.json` atomically (mode 0600).
    pub fn store(&self, keystore: &Path) -> Result<(), KmsError> {
        crate::fsutil::create_private_dir(keystore).map_err(|e| KmsError::Keystore(e.to_string()))?;
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| KmsError::Keystore(e.to_string()))?;
        crate::fsutil::write_atomic(&Self::path(keystore), &bytes, 0o600)
            .map_err(|e| KmsError::Keystore(format!("cannot write kmsd.json: {e}")))
    }

    /// The principal a bearer token names.
    pub fn principal_of_token(&self, token: &str) -> Option<&str> {
        let digest = hex::encode(Sha256::digest(token.as_bytes()));
        self.tokens.iter().find(|t| t.sha256 == digest).map(|t| t.principal.as_str())
    }

    /// Add a fresh token for `principal`; returns the token (shown once).
    pub fn add_token(&mut self, principal: &str, now: u64) -> Result<String, KmsError> {
        let raw = crate::crypto::random_array::<32>()?;
        let token = format!("tdekms_{}", hex::encode(raw));
        self.tokens.push(TokenEntry {
            principal: principal.to_string(),
            sha256: hex::encode(Sha256::digest(token.as_bytes())),
            created: now,
        });
        Ok(token)
    }
}

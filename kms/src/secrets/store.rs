//! `secrets.json`: the secrets' records, replaced atomically under `secrets.lock`.
//!
//! The records decide who may read and write each secret (its policy and owner), so the file
//! is state that makes the KMS act: format 2 is authenticated with HMAC-SHA256 under a key
//! derived from the keystore's root key, which nobody holding only the files' write access
//! has when the root key is kept apart (operator file, passphrase) or when the files belong
//! to the daemon. Format 1 (SHA-256 checksum, no policies) is still read; the first write
//! upgrades it after recording `secrets:UpgradeSecretsFormat` in the audit log, and once
//! that record exists an unMAC'd file is a downgrade and refused (docs/FORMAT.md §6).

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::SecretsData;
use crate::audit::Outcome;
use crate::local::LocalKms;
use crate::sealed_file::{self, Refused};
use crate::KmsError;

const MAGIC_V1: &str = "sqlite-tde-secrets 1\n";
const MAGIC_V2: &str = "sqlite-tde-secrets 2\n";
/// The format this build writes.
pub(super) const FORMAT: u32 = 2;
/// Label of the MAC key (HMAC-SHA256 of the root key over it).
pub(crate) const MAC_LABEL: &[u8] = b"sqlite-tde/secrets-mac/v1";
/// The audit operation written before the first format-2 file: from then on a format-1
/// file in this directory is a downgrade.
pub(super) const UPGRADE_OP: &str = "secrets:UpgradeSecretsFormat";
/// Operations only a real format-1 writer recorded: a format-1 file in a directory whose log
/// has none of them was not written by sqlite-tde.
const LEGACY_WRITES: [&str; 2] = ["secrets:PutSecretValue", "secrets:RotateSecret"];

/// The records and the format they were read in (0: no file yet).
pub(super) struct Loaded {
    pub data: SecretsData,
    pub format: u32,
}

pub(super) struct Store {
    file: PathBuf,
    lock: PathBuf,
}

impl Store {
    pub fn of(dir: &Path) -> Store {
        Store { file: dir.join("secrets.json"), lock: dir.join("secrets.lock") }
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    fn corrupt(&self, why: &str) -> KmsError {
        KmsError::Keystore(format!("{} is corrupt: {why}", self.file.display()))
    }

    pub fn load(&self, kms: &LocalKms) -> Result<Loaded, KmsError> {
        let bytes = match std::fs::read(&self.file) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Loaded { data: SecretsData::default(), format: 0 })
            }
            Err(e) => return Err(KmsError::Keystore(format!("cannot read {}: {e}", self.file.display()))),
        };
        let text = std::str::from_utf8(&bytes).map_err(|_| self.corrupt("not UTF-8"))?;
        if text.starts_with(MAGIC_V2) {
            let json = match sealed_file::open(text, MAGIC_V2, &*kms.derived_key(MAC_LABEL)?) {
                Ok(json) => json,
                Err(Refused::MissingMac) => return Err(self.corrupt("missing MAC")),
                Err(Refused::BadMac) => {
                    return Err(KmsError::Keystore(format!(
                        "{} was modified without the root key (or is corrupt): its MAC does not verify; nothing \
                         was changed. Restore it from a backup (`sqlite-tde kms restore BACKUP`)",
                        self.file.display()
                    )))
                }
            };
            let data = serde_json::from_str(json).map_err(|e| self.corrupt(&e.to_string()))?;
            return Ok(Loaded { data, format: FORMAT });
        }
        let body = text.strip_prefix(MAGIC_V1).ok_or_else(|| self.corrupt("bad magic line"))?;
        let idx = body.rfind("sha256:").ok_or_else(|| self.corrupt("missing checksum"))?;
        let (json, trailer) = body.split_at(idx);
        let covered = &text[..MAGIC_V1.len() + json.len()];
        if hex::encode(Sha256::digest(covered.as_bytes())) != trailer.trim_start_matches("sha256:").trim() {
            return Err(self.corrupt("checksum mismatch"));
        }
        self.check_legacy(kms)?;
        let data: SecretsData = serde_json::from_str(json).map_err(|e| self.corrupt(&e.to_string()))?;
        Ok(Loaded { data, format: 1 })
    }

    /// A format-1 file is trusted only while the audit log shows it could be genuine: written
    /// by an earlier build (a secret was put) and never upgraded.
    fn check_legacy(&self, kms: &LocalKms) -> Result<(), KmsError> {
        let records = kms.audit_log().read()?;
        let refuse = |why: &str| {
            Err(KmsError::Keystore(format!(
                "{} is format 1 (no MAC), but {why}: it was replaced by an older or forged file (downgrade); \
                 nothing was changed. Restore it from a backup (`sqlite-tde kms restore BACKUP`)",
                self.file.display()
            )))
        };
        if records.iter().any(|r| r.operation == UPGRADE_OP) {
            return refuse("the audit log shows it was upgraded to the authenticated format");
        }
        // Only a write that happened counts: a refused attempt is something any principal can
        // leave in the log.
        if !records.iter().any(|r| r.outcome == Outcome::Allowed && LEGACY_WRITES.contains(&r.operation.as_str())) {
            return refuse("the audit log records no secret ever written");
        }
        Ok(())
    }

    /// Write `data` as format 2. The caller holds `secrets.lock` and, when `from` is older
    /// than format 2, has recorded [`UPGRADE_OP`] first.
    pub fn store(&self, kms: &LocalKms, data: &SecretsData) -> Result<(), KmsError> {
        let json = serde_json::to_string_pretty(data).map_err(|e| KmsError::Keystore(e.to_string()))?;
        let body = sealed_file::seal(MAGIC_V2, &json, &*kms.derived_key(MAC_LABEL)?);
        sqlite_tde_fsutil::write_atomic(&self.file, body.as_bytes(), 0o600)
            .map_err(|e| KmsError::Keystore(format!("cannot write {}: {e}", self.file.display())))
    }

    pub fn locked(&self) -> Result<std::fs::File, KmsError> {
        sqlite_tde_fsutil::lock_exclusive(&self.lock)
            .map_err(|e| KmsError::Keystore(format!("cannot lock secrets: {e}")))
    }
}

//! `kmsd.json` in the keystore directory: how the daemon names its callers and who its
//! operators are.
//!
//! ```text
//! sqlite-tde-kmsd 2
//! { "uid_principals": { "1000": "app" },
//!   "operators": [ "ops" ],
//!   "tokens": [ { "principal": "ops", "sha256": "<hex digest of the token>", "created": 1700000000 } ] }
//! hmac-sha256:<hex>
//! ```
//!
//! The file decides who a caller *is*, so it is state that makes the KMS act: format 2 is
//! authenticated with HMAC-SHA256 under a key derived from the root key (docs/FORMAT.md §7),
//! and anyone with only write access to the directory cannot add a token or map their uid to
//! another principal. The plain-JSON files of earlier builds are refused until an operator has
//! looked at them and run `sqlite-tde kms daemon-config upgrade`: nothing in the keystore
//! tells a genuine old file from a planted one. Tokens themselves are never stored;
//! `sqlite-tde kms token create PRINCIPAL` prints one once. Changes are made under
//! `secrets.lock` (the outermost keystore lock, which `kms backup`/`restore` also hold) and
//! recorded in the audit log.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::local::LocalKms;
use crate::sealed_file::{self, Refused};
use crate::KmsError;

const MAGIC: &str = "sqlite-tde-kmsd 2\n";
/// Label of the MAC key (derived from the root key).
const MAC_LABEL: &[u8] = b"sqlite-tde/kmsd-mac/v1";

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
    /// Counts the changes; keystore.json records the newest, so an older genuine file put
    /// back (a revoked token alive again) is refused.
    #[serde(default)]
    pub generation: u64,
}

/// A principal name the daemon may give a caller (a token's, a uid mapping's, an
/// operator's): not empty, at most 256 bytes, no control characters (which would forge lines
/// of `kms audit` output), and not the KMS's own service principal, whose records and
/// operator rights belong to the service alone.
pub fn check_principal_name(p: &str) -> Result<(), KmsError> {
    let bad = |why: &str| Err(KmsError::InvalidRequest(format!("principal {p:?} {why}")));
    if p.is_empty() || p.len() > 256 {
        return bad("must be 1 to 256 bytes long");
    }
    if p.chars().any(char::is_control) {
        return bad("contains control characters");
    }
    if p == crate::local::SERVICE_PRINCIPAL {
        return bad("is the KMS's own service principal and cannot be given to a caller");
    }
    Ok(())
}

/// What [`DaemonConfig::read`] found.
enum Found {
    Missing,
    Authenticated(DaemonConfig),
    /// A plain-JSON file of an earlier build (or a planted one).
    Legacy(DaemonConfig),
}

/// A read of `kmsd.json` and the keystore state it is checked against.
struct Read {
    found: Found,
    key: zeroize::Zeroizing<[u8; 32]>,
    recorded: u64,
}

impl DaemonConfig {
    pub fn path(keystore: &Path) -> PathBuf {
        keystore.join("kmsd.json")
    }

    fn read(kms: &LocalKms) -> Result<Read, KmsError> {
        let p = Self::path(kms.dir());
        let (key, recorded) = kms.kmsd_anchor(MAC_LABEL)?;
        let rolled_back = |what: String| {
            KmsError::Keystore(format!(
                "{} {what}, but the keystore records generation {recorded}: it was deleted or an older copy was put \
                 back (revoked tokens would work again). Restore the keystore directory from a backup \
                 (`sqlite-tde kms restore BACKUP`)",
                p.display()
            ))
        };
        let bytes = match std::fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && recorded > 0 => {
                return Err(rolled_back("is missing".into()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Read { found: Found::Missing, key, recorded })
            }
            Err(e) => return Err(KmsError::Keystore(format!("cannot read {}: {e}", p.display()))),
        };
        let corrupt = |why: String| KmsError::Keystore(format!("{} is invalid: {why}", p.display()));
        let text = std::str::from_utf8(&bytes).map_err(|_| corrupt("not UTF-8".into()))?;
        if !text.starts_with(MAGIC) {
            if recorded > 0 {
                return Err(rolled_back("is plain JSON (an earlier format)".into()));
            }
            let legacy = serde_json::from_str(text).map_err(|e| corrupt(e.to_string()))?;
            return Ok(Read { found: Found::Legacy(legacy), key, recorded });
        }
        let json = match sealed_file::open(text, MAGIC, &key) {
            Ok(json) => json,
            Err(Refused::MissingMac) => return Err(corrupt("missing MAC".into())),
            Err(Refused::BadMac) => {
                return Err(KmsError::Keystore(format!(
                    "{} was modified without the root key (or is corrupt): its MAC does not verify, so the daemon \
                     cannot tell who its callers are. Restore it from a backup (`sqlite-tde kms restore BACKUP`) \
                     or remove it and issue tokens again",
                    p.display()
                )))
            }
        };
        let cfg: DaemonConfig = serde_json::from_str(json).map_err(|e| corrupt(e.to_string()))?;
        if cfg.generation < recorded {
            return Err(rolled_back(format!("is generation {}", cfg.generation)));
        }
        Ok(Read { found: Found::Authenticated(cfg), key, recorded })
    }

    /// The configuration to act on: an unauthenticated file is refused.
    fn trusted(kms: &LocalKms, found: Found) -> Result<DaemonConfig, KmsError> {
        match found {
            Found::Missing => Ok(DaemonConfig::default()),
            Found::Authenticated(c) => Ok(c),
            Found::Legacy(_) => Err(KmsError::Keystore(format!(
                "{} has no MAC: it was written by an earlier version of sqlite-tde, or by someone who can write the \
                 keystore directory. Check what it says (`sqlite-tde kms daemon-config show --unauthenticated`) and \
                 authenticate it with `sqlite-tde kms daemon-config upgrade`, or remove it",
                Self::path(kms.dir()).display()
            ))),
        }
    }

    /// Read `kmsd.json` (empty when absent); an unauthenticated or forged file is an error.
    pub fn load(kms: &LocalKms) -> Result<DaemonConfig, KmsError> {
        Self::trusted(kms, Self::read(kms)?.found)
    }

    /// The contents of a plain-JSON (format 1) `kmsd.json`, for an operator to inspect.
    pub fn load_unauthenticated(kms: &LocalKms) -> Result<Option<DaemonConfig>, KmsError> {
        Ok(match Self::read(kms)?.found {
            Found::Legacy(c) => Some(c),
            _ => None,
        })
    }

    fn store(&self, kms: &LocalKms, key: &[u8; 32]) -> Result<(), KmsError> {
        let json = serde_json::to_string_pretty(self).map_err(|e| KmsError::Keystore(e.to_string()))?;
        sqlite_tde_fsutil::write_atomic(&Self::path(kms.dir()), sealed_file::seal(MAGIC, &json, key).as_bytes(), 0o600)
            .map_err(|e| KmsError::Keystore(format!("cannot write kmsd.json: {e}")))
    }

    /// Change `kmsd.json` under the keystore's outermost lock and record the change (`op`,
    /// with what `f` returns as the record's detail) in the audit log. `upgrade` accepts a
    /// plain-JSON file as the starting point (the operator's explicit decision).
    pub fn update<T>(
        kms: &LocalKms,
        principal: &str,
        op: &str,
        upgrade: bool,
        f: impl FnOnce(&mut DaemonConfig) -> Result<(T, String), KmsError>,
    ) -> Result<T, KmsError> {
        let _lock = sqlite_tde_fsutil::lock_exclusive(&kms.dir().join("secrets.lock"))
            .map_err(|e| KmsError::Keystore(format!("cannot lock the keystore: {e}")))?;
        let Read { found, key, recorded } = Self::read(kms)?;
        let mut cfg = match (found, upgrade) {
            (Found::Legacy(c), true) => c,
            (Found::Authenticated(_), true) => {
                return Err(KmsError::InvalidRequest("kmsd.json is already authenticated".into()))
            }
            (Found::Missing, true) => return Err(KmsError::InvalidRequest("there is no kmsd.json to upgrade".into())),
            (found, false) => Self::trusted(kms, found)?,
        };
        let (out, detail) = f(&mut cfg)?;
        cfg.generation = cfg.generation.max(recorded) + 1;
        // The file first, then its generation with the audit record in one keystore commit:
        // a crash in between leaves a newer file than recorded, which is accepted (only the
        // root key's holder can MAC one), never an older one.
        cfg.store(kms, &key)?;
        kms.record_kmsd_generation(principal, op, format!("{detail} (generation {})", cfg.generation), cfg.generation)?;
        Ok(out)
    }

    /// The principal a bearer token names.
    pub fn principal_of_token(&self, token: &str) -> Option<&str> {
        let digest = hex::encode(Sha256::digest(token.as_bytes()));
        self.tokens.iter().find(|t| t.sha256 == digest).map(|t| t.principal.as_str())
    }

    /// Add a fresh token for `principal`; returns the token (shown once).
    pub fn add_token(&mut self, principal: &str, now: u64) -> Result<zeroize::Zeroizing<String>, KmsError> {
        check_principal_name(principal)?;
        let raw = zeroize::Zeroizing::new(crate::plaintext::random_array::<32>()?);
        let token = zeroize::Zeroizing::new(format!("tdekms_{}", hex::encode(*raw)));
        self.tokens.push(TokenEntry {
            principal: principal.to_string(),
            sha256: hex::encode(Sha256::digest(token.as_bytes())),
            created: now,
        });
        Ok(token)
    }
}

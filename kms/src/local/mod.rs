//! The embedded KMS: CMKs in a keystore directory, material encrypted under a root key (or
//! held in a PKCS#11 token), every operation in-process, checked against the key's policy
//! and recorded in the audit log before its result is released.
//!
//! Other processes see changes at their next operation: the keystore is re-read per
//! operation (the VFS's key cache avoids doing that per page or per open). Mutations run
//! under `keystore.lock` and replace the keystore atomically; the audit record of a mutation
//! is durable before the keystore is replaced, and a request whose record cannot be written
//! is refused (fail closed).

pub mod deletion;
pub mod import;
mod init;
mod keystore;
mod rootkey;
pub mod snapshot;
pub(crate) mod wrap;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use keystore::{
    keys_section, HsmRef, ImportRecord, KeyRecord, KeyVersionRecord, KeystoreData, RotationRecord, KEYSTORE_VERSION,
};
pub use rootkey::{RootKey, RootSource, ENV_PASSPHRASE, ENV_ROOT_KEY_FILE};

use keystore::{KeystorePaths, MAC_VERSION};
use zeroize::Zeroizing;

use super::api::{
    CreateKeyParams, DataKeyResponse, DecryptResponse, EncryptResponse, Identity, KeyLint, KmsClient, KmsService,
    MaintenanceReport, ReEncryptResponse, Request,
};
use super::audit::{self, Anchor, AuditEvent, AuditHead, AuditLog, AuditRecord, AuditState, Outcome, VerifyReport};
use super::clock::{BootReading, Clock, DAY};
use super::model::{
    limits, normalize_alias, validate_alias, AliasInfo, KeyInfo, KeyManager, KeyState, Origin, Protection, VersionInfo,
};
use super::policy::{actions, default_principal, principal_of_uid, KeyPolicy};
use super::{EncryptionContext, GeneratedDataKey, Kms, KmsError, DEFAULT_KEY_ALIAS};
use crate::plaintext::random_array;
use crate::KeyRef;
use crate::PlaintextDataKey as DataKey;

/// Environment variable naming the keystore directory.
pub const ENV_KEYSTORE: &str = "SQLITE_TDE_KEYSTORE";
/// Provider name in key references (the daemon serves the same keys under the same name).
pub const PROVIDER: &str = "local";
/// The principal automatic actions (scheduled rotation and deletion, import expiry, creation
/// of the default key) are recorded under.
pub const SERVICE_PRINCIPAL: &str = "sqlite-tde-kms";

const AUDIT_KEY_LABEL: &[u8] = b"sqlite-tde/audit-mac/v1";

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

/// The embedded KMS over one keystore directory, acting for one principal (the daemon acts
/// for each request's principal through [`LocalKms::handle`]).
pub struct LocalKms {
    paths: KeystorePaths,
    root: Mutex<Option<Arc<RootKey>>>,
    principal: String,
    clock: Arc<dyn Clock>,
    audit: AuditLog,
    mode: &'static str,
    /// Who sees the whole keystore; `None`: the directory's owner and root.
    operators: Option<Vec<String>>,
}

impl std::fmt::Debug for LocalKms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalKms")
            .field("dir", &self.paths.dir)
            .field("principal", &self.principal)
            .finish_non_exhaustive()
    }
}

/// Whether a request may create a missing keystore: only requests that make new keys or new
/// ciphertext under the default key (CreateKey; GenerateDataKey for a new database, Encrypt
/// and secrets put, under the default key) do. Everything else needs an existing keystore (`Some(key)`: the key it looks for, named
/// in the error).
#[derive(Debug, Clone, Copy)]
enum Use<'a> {
    Create,
    Existing(Option<&'a str>),
}

impl<'a> Use<'a> {
    /// New ciphertext under `key`: only the default key comes into being on first use, so
    /// only it may create the keystore; a named key must already be in an existing one.
    fn new_ciphertext(key: &'a str) -> Use<'a> {
        if key == DEFAULT_KEY_ALIAS {
            Use::Create
        } else {
            Use::Existing(Some(key))
        }
    }
}

/// Per-request bookkeeping for the audit record.
struct OpCtx<'a> {
    principal: &'a str,
    operation: String,
    request_id: String,
    /// Keys the request touched, with the version used (the first is the record's key;
    /// ReEncrypt adds its destination).
    keys: Vec<(String, Option<u32>)>,
    context: Option<[u8; 32]>,
    denied: bool,
    /// Free text for the record (administrative operations).
    detail: Option<String>,
}

impl<'a> OpCtx<'a> {
    fn new(principal: &'a str, operation: &str) -> OpCtx<'a> {
        OpCtx {
            principal,
            operation: operation.to_string(),
            request_id: uuid::Uuid::new_v4().to_string(),
            keys: Vec::new(),
            context: None,
            denied: false,
            detail: None,
        }
    }
    fn key(&mut self, id: &str) {
        if self.keys.is_empty() {
            self.keys.push((id.to_string(), None));
        } else {
            self.keys[0] = (id.to_string(), self.keys[0].1);
        }
    }
    fn version(&mut self, v: u32) {
        if let Some(k) = self.keys.first_mut() {
            k.1 = Some(v);
        }
    }
    fn deny(&mut self, e: KmsError) -> KmsError {
        self.denied = true;
        e
    }
}

/// A mutation in progress: a working copy of the keystore.
struct Txn<'a> {
    data: KeystoreData,
    root: &'a RootKey,
    now: u64,
    /// Key URIs whose cached data keys must be dropped after commit.
    revoked: Vec<String>,
    /// Commit `data` even when the operation fails (set once a failure must still consume
    /// something, like a spent import token).
    keep_on_error: bool,
}

fn key_uri(key_id: &str) -> String {
    format!("{PROVIDER}:{key_id}")
}

fn material_context(key_id: &str, version: u32) -> EncryptionContext {
    EncryptionContext::from_pairs([
        ("sqlite-tde:cmk".to_string(), key_id.to_string()),
        ("sqlite-tde:cmk-version".to_string(), version.to_string()),
    ])
}

fn is_default_alias(a: &str) -> bool {
    a == DEFAULT_KEY_ALIAS
}

/// Cryptographic use requires Enabled.
fn check_usable(rec: &KeyRecord) -> Result<(), KmsError> {
    match rec.state {
        KeyState::Enabled => Ok(()),
        KeyState::Disabled => Err(KmsError::Disabled(rec.key_id.clone())),
        KeyState::PendingDeletion => Err(KmsError::PendingDeletion(rec.key_id.clone())),
        KeyState::PendingImport => Err(KmsError::PendingImport(rec.key_id.clone())),
        KeyState::Deleted => Err(KmsError::Deleted(rec.key_id.clone())),
    }
}

/// Actions a service-managed key allows (whatever a policy says).
fn service_key_allows(action: &str) -> bool {
    matches!(
        action,
        actions::ENCRYPT
            | actions::DECRYPT
            | actions::GENERATE_DATA_KEY
            | actions::GENERATE_DATA_KEY_WITHOUT_PLAINTEXT
            | actions::RE_ENCRYPT_FROM
            | actions::RE_ENCRYPT_TO
            | actions::DESCRIBE_KEY
            | actions::GET_KEY_POLICY
    )
}

/// May `ctx.principal` perform `action` on `rec`?
fn authorize(ctx: &mut OpCtx<'_>, rec: &KeyRecord, action: &str) -> Result<(), KmsError> {
    if rec.state == KeyState::Deleted && action != actions::DESCRIBE_KEY {
        return Err(KmsError::Deleted(rec.key_id.clone()));
    }
    if rec.manager == KeyManager::Service {
        if !service_key_allows(action) {
            return Err(ctx.deny(KmsError::InvalidRequest(format!(
                "{DEFAULT_KEY_ALIAS} ({}) is service-managed: it cannot be disabled, deleted, rotated on demand or re-policied ({action})",
                rec.key_id
            ))));
        }
        return Ok(());
    }
    let allowed = match &rec.policy {
        Some(p) => p.allows(ctx.principal, action),
        None => true,
    };
    if allowed {
        Ok(())
    } else {
        Err(ctx.deny(KmsError::AccessDenied {
            principal: ctx.principal.to_string(),
            action: action.to_string(),
            key: rec.key_id.clone(),
        }))
    }
}

/// Does `rec`'s policy allow `principal` `action` (no record: for filtering listings)?
fn may(principal: &str, rec: &KeyRecord, action: &str) -> bool {
    authorize(&mut OpCtx::new(principal, action), rec, action).is_ok()
}

/// Is `rec` in a non-operator's listings: a live key its policy grants it anything on.
/// (Deleted keys lose their policy, which would read as "open to all".)
fn visible_to(principal: &str, rec: &KeyRecord) -> bool {
    rec.state != KeyState::Deleted && crate::policy::ALL_ACTIONS.iter().any(|a| may(principal, rec, a))
}

fn info(data: &KeystoreData, r: &KeyRecord) -> KeyInfo {
    KeyInfo {
        key_id: r.key_id.clone(),
        aliases: data.aliases_of(&r.key_id),
        description: r.description.clone(),
        state: r.state,
        manager: r.manager,
        origin: r.origin,
        protection: r.protection,
        primary_version: r.primary_version,
        versions: r.versions.iter().map(|v| v.version).collect(),
        version_details: r
            .versions
            .iter()
            .map(|v| VersionInfo { version: v.version, created: v.created, available: v.available() })
            .collect(),
        created: r.created,
        rotation_period_days: r.rotation.as_ref().map(|x| x.period_days),
        next_rotation: r.rotation.as_ref().map(|x| x.next_rotation),
        deletion_date: r.deletion_date,
        deletion_error: r.deletion_failure.as_ref().map(|f| f.error.clone()),
        deleted_at: r.deleted_at,
        import_expires: r.import.as_ref().and_then(|i| i.expires),
    }
}

fn context_of(c: &super::api::Context) -> EncryptionContext {
    EncryptionContext::from_pairs(c.iter().map(|(k, v)| (k.clone(), v.clone())))
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<Zeroizing<Vec<u8>>, KmsError> {
    serde_json::to_vec(v).map(Zeroizing::new).map_err(|e| KmsError::InvalidRequest(e.to_string()))
}

impl LocalKms {
    /// A KMS over `dir` (created on first write), acting for `$SQLITE_TDE_PRINCIPAL` or the
    /// OS user, on the system clock ([`super::clock::process_clock`]).
    pub fn new(dir: impl Into<PathBuf>) -> LocalKms {
        let dir = dir.into();
        LocalKms {
            audit: AuditLog::new(&dir),
            paths: KeystorePaths { dir },
            root: Mutex::new(None),
            principal: default_principal(),
            clock: super::clock::process_clock(),
            mode: "embedded",
            operators: None,
        }
    }

    /// Act for another principal.
    pub fn with_principal(mut self, principal: impl Into<String>) -> LocalKms {
        self.principal = principal.into();
        self
    }

    /// Use another clock (tests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> LocalKms {
        self.clock = clock;
        self
    }

    /// Mark as serving a daemon (reported by WhoAmI).
    pub fn for_daemon(mut self) -> LocalKms {
        self.mode = "daemon";
        self
    }

    /// The keystore directory.
    pub fn dir(&self) -> &Path {
        &self.paths.dir
    }

    /// The principal this instance acts for.
    pub fn principal(&self) -> &str {
        &self.principal
    }

    /// The audit log.
    pub fn audit_log(&self) -> &AuditLog {
        &self.audit
    }

    /// Typed access through the request API (as the CLI uses it).
    pub fn client(self) -> KmsClient {
        KmsClient::new(Arc::new(self))
    }

    fn now(&self) -> u64 {
        self.clock.now()
    }

    /// The service's clock (for sibling modules).
    pub(crate) fn now_secs(&self) -> u64 {
        self.clock.now()
    }

    /// Take `keystore.lock` (the directory exists: only creation makes it).
    fn lock(&self) -> Result<std::fs::File, KmsError> {
        sqlite_tde_fsutil::lock_exclusive(&self.paths.lock())
            .map_err(|e| KmsError::Keystore(format!("cannot lock keystore {}: {e}", self.paths.dir.display())))
    }

    /// Load the root key per the environment and check it against the keystore.
    fn root_key(&self, data: &KeystoreData) -> Result<Arc<RootKey>, KmsError> {
        let mut slot = self.root.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = slot.as_ref() {
            return Ok(k.clone());
        }
        let key = Arc::new(init::load_root(&self.paths.dir, data)?);
        *slot = Some(key.clone());
        Ok(key)
    }

    /// Read the keystore. Only a creating use (`Use::Create`) creates a missing one; any
    /// other use of a missing or new keystore is told so and leaves the directory as it was
    /// (not even creating it).
    fn load(&self, u: Use<'_>) -> Result<KeystoreData, KmsError> {
        self.finish_pending_restore()?;
        if let Some(l) = keystore::load(&self.paths)? {
            return self.verified(l, true);
        }
        init::check_absent(&self.paths.dir)?;
        match u {
            Use::Existing(key) => Err(self.no_keystore(key)),
            Use::Create => self.create(),
        }
    }

    /// Open the keystore, creating it if the directory is missing or empty (a creating use:
    /// `kms serve`, which must be able to answer CreateKey), and check the root key.
    pub fn open_or_create(&self) -> Result<(), KmsError> {
        self.load(Use::Create).map(drop)
    }

    /// Check a keystore file before anything acts on it: its root key, then its MAC (format
    /// 3). A format-1/2 file has no MAC: it is trusted only while nothing shows that a MAC'd
    /// keystore was here (see [`Self::legacy_audit_state`]). `strict: false` (acknowledging
    /// a gap) accepts a legacy audit log that does not verify.
    fn verified(&self, l: keystore::Loaded, strict: bool) -> Result<KeystoreData, KmsError> {
        let root = self.root_key(&l.data)?;
        // Also with a cached root key: the file may have changed since it was cached.
        if !l.data.root_matches(&root) {
            return Err(KmsError::WrongRootKey(format!(
                "{} (keystore.json's root check value does not match the root key in use)",
                self.paths.dir.display()
            )));
        }
        let legacy = l.data.format < MAC_VERSION;
        let mut data = l.verify(&root)?;
        if legacy {
            data.audit = self.legacy_audit_state(&data, &root, strict)?;
        }
        Ok(data)
    }

    /// The audit state of a format-1/2 keystore, from its log and `audit.head` (read once:
    /// the next commit stores format 3). Refused when the log shows that a MAC'd keystore
    /// was here (a record this build wrote): keystore.json was replaced by an older or forged
    /// unMAC'd file.
    fn legacy_audit_state(&self, data: &KeystoreData, root: &RootKey, strict: bool) -> Result<AuditState, KmsError> {
        let key = root.derive(AUDIT_KEY_LABEL);
        let records = self.audit.read()?;
        if records.iter().any(|r| r.v >= audit::RECORD_VERSION) {
            return Err(KmsError::Keystore(format!(
                "keystore {} is format {} (no MAC), but its audit log was written by a build that MACs                  keystore.json: keystore.json was replaced by an older or forged file (downgrade); nothing was                  changed. Restore keystore.json from a backup (`sqlite-tde kms restore BACKUP`)",
                self.paths.dir.display(),
                data.format
            )));
        }
        let head = records.last().map(AuditHead::of).unwrap_or_default();
        if !strict {
            return Ok(AuditState { head, pending: Vec::new() });
        }
        let report = self.audit.verify(Some(&key), Some(Anchor::LegacyHeadFile))?;
        // A torn last line is an append a crash cut short: the next commit cuts it.
        let problems: Vec<&String> = report.problems.iter().filter(|p| !p.contains("incomplete")).collect();
        if !problems.is_empty() {
            return Err(audit::integrity_error(&format!(
                "the audit log of format-{} keystore.json does not verify: {}",
                data.format,
                problems.iter().map(|p| p.as_str()).collect::<Vec<_>>().join("; ")
            )));
        }
        if records.is_empty() && data.format >= 2 && !data.keys.is_empty() {
            return Err(audit::integrity_error(&format!(
                "keystore.json (format {}) holds keys but audit.log is missing",
                data.format
            )));
        }
        Ok(AuditState { head, pending: Vec::new() })
    }

    /// Under `keystore.lock`: the keystore, checked, and its root key.
    fn load_locked(&self, strict: bool) -> Result<(KeystoreData, Arc<RootKey>), KmsError> {
        let l = keystore::load(&self.paths)?.ok_or_else(|| KmsError::Keystore("keystore vanished".into()))?;
        let data = self.verified(l, strict)?;
        let root = self.root_key(&data)?;
        Ok((data, root))
    }

    fn no_keystore(&self, key: Option<&str>) -> KmsError {
        KmsError::NoKeystore { dir: self.paths.dir.display().to_string(), key: key.map(str::to_string) }
    }

    /// Create the keystore (first creating use): under `keystore.lock`, so that processes
    /// starting at once agree on one root key; the loser of the race reads the winner's.
    fn create(&self) -> Result<KeystoreData, KmsError> {
        sqlite_tde_fsutil::create_private_dir(&self.paths.dir)
            .map_err(|e| KmsError::Keystore(format!("cannot create {}: {e}", self.paths.dir.display())))?;
        let _lock = self.lock()?;
        if let Some(l) = keystore::load(&self.paths)? {
            return self.verified(l, true);
        }
        let absent = init::check_absent(&self.paths.dir)?;
        let (data, key, ev) = init::create(&self.paths, absent)?;
        *self.root.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(key));
        super::events::notify_keystore_created(&ev);
        Ok(data)
    }

    /// A NotFound from an empty or new keystore: most likely the wrong keystore.
    fn explain_not_found(&self, data: &KeystoreData, e: KmsError) -> KmsError {
        match e {
            KmsError::NotFound(k) if data.keys.values().all(|r| r.manager == KeyManager::Service) => {
                self.no_keystore(Some(&k))
            }
            other => other,
        }
    }

    // ----- audit -----

    /// The records of one request (one per key it touched).
    fn events(&self, ctx: &OpCtx<'_>, outcome: Outcome, error: Option<String>) -> Vec<AuditEvent> {
        let mut keys = ctx.keys.clone();
        if keys.is_empty() {
            keys.push((String::new(), None));
        }
        keys.iter()
            .enumerate()
            .map(|(i, (id, version))| AuditEvent {
                request_id: ctx.request_id.clone(),
                principal: ctx.principal.to_string(),
                operation: if i == 0 { ctx.operation.clone() } else { format!("{}:destination", ctx.operation) },
                key_id: (!id.is_empty()).then(|| id.clone()),
                key_version: *version,
                context_digest: ctx.context,
                outcome,
                error: error.clone(),
                detail: if i == 0 { ctx.detail.clone() } else { None },
            })
            .collect()
    }

    fn outcome_of(ctx: &OpCtx<'_>, e: &KmsError) -> (Outcome, Option<String>) {
        if ctx.denied || matches!(e, KmsError::AccessDenied { .. }) {
            (Outcome::Denied, Some(e.to_string()))
        } else {
            (Outcome::Failed, Some(e.to_string()))
        }
    }

    /// Commit `events` with `data` (caller holds `keystore.lock`): the log must be in step
    /// with `data`'s audit head (pending records a crash kept out are appended first), else
    /// the request fails closed. Then `data` is stored naming the new records as head and
    /// pending — the commit point, which makes a mutation and its record durable at once —
    /// and the records are appended to the log.
    fn commit(&self, root: &RootKey, data: &mut KeystoreData, mut events: Vec<AuditEvent>) -> Result<(), KmsError> {
        self.audit.reconcile(&data.audit)?;
        if data.format < KEYSTORE_VERSION {
            let mut ctx = OpCtx::new(SERVICE_PRINCIPAL, "UpgradeKeystoreFormat");
            ctx.detail = Some(format!(
                "keystore.json format {} -> {KEYSTORE_VERSION}: authenticated under a key derived from the root key; \
                 the audit head moved from audit.head into keystore.json; unMAC'd keystore files are refused from now on",
                data.format
            ));
            let mut up = self.events(&ctx, Outcome::Allowed, None);
            up.append(&mut events);
            events = up;
        }
        let key = root.derive(AUDIT_KEY_LABEL);
        let recs = audit::seal(&key, &data.audit.head, self.now(), &events);
        if let Some(last) = recs.last() {
            data.audit.head = AuditHead::of(last);
        }
        data.audit.pending = recs;
        self.store_committed(root, data)?;
        crash_point("committed");
        // The records are durable in keystore.json: if this append fails, the next commit
        // appends them (or fails closed).
        let _ = self.audit.append(&data.audit.pending);
        Ok(())
    }

    /// Store `data` as format 3; a format-1/2 keystore's `audit.head` is dropped (its
    /// content now lives in keystore.json).
    fn store_committed(&self, root: &RootKey, data: &mut KeystoreData) -> Result<(), KmsError> {
        keystore::store(&self.paths, data, root)?;
        if data.format < KEYSTORE_VERSION {
            super::events::notify_keystore_upgraded(&super::events::KeystoreUpgraded {
                dir: self.paths.dir.clone(),
                from: data.format,
                to: KEYSTORE_VERSION,
            });
            data.format = KEYSTORE_VERSION;
            data.root.check = root.check_value_for(KEYSTORE_VERSION);
            if std::fs::remove_file(self.paths.dir.join(audit::HEAD_FILE)).is_ok() {
                let _ = sqlite_tde_fsutil::sync_dir(&self.paths.dir);
            }
        }
        Ok(())
    }

    /// Record a request that did not change the keystore: a commit of its records alone.
    fn record(&self, ctx: &OpCtx<'_>, outcome: Outcome, error: Option<String>) -> Result<(), KmsError> {
        let _lock = self.lock()?;
        let (mut data, root) = self.load_locked(true)?;
        self.commit(&root, &mut data, self.events(ctx, outcome, error))
    }

    /// Record the outcome of a request; an allowed request whose record cannot be written
    /// fails (its result, e.g. a plaintext key, is dropped and wiped). A broken audit trail
    /// is reported over the request's own error: the KMS is closed.
    fn finish<T>(&self, ctx: &OpCtx<'_>, r: Result<T, KmsError>) -> Result<T, KmsError> {
        let (outcome, error) = match &r {
            Ok(_) => (Outcome::Allowed, None),
            Err(e) => Self::outcome_of(ctx, e),
        };
        match self.record(ctx, outcome, error) {
            Ok(()) => r,
            Err(audit_err) => match r {
                Ok(_) => Err(audit_err),
                Err(_) if matches!(audit_err, KmsError::AuditIntegrity(_)) => Err(audit_err),
                Err(e) => Err(e),
            },
        }
    }

    /// `kms audit --acknowledge-gap` (an administrator holding the keystore directory and
    /// its root key): record, chained after the log's last record, that the log did not
    /// match `keystore.json` and how; requests work again, and every verification reports
    /// the gap. Refused when there is no gap.
    pub fn acknowledge_audit_gap(&self, principal: &str) -> Result<AuditRecord, KmsError> {
        self.finish_pending_restore()?;
        if keystore::load(&self.paths)?.is_none() {
            return Err(self.no_keystore(None));
        }
        let _lock = self.lock()?;
        let (mut data, root) = self.load_locked(false)?;
        let key = root.derive(AUDIT_KEY_LABEL);
        let rec = self.audit.acknowledge(&key, &data.audit, self.now(), principal)?;
        data.audit = AuditState { head: AuditHead::of(&rec), pending: vec![rec.clone()] };
        self.store_committed(&root, &mut data)?;
        self.audit.append(&data.audit.pending)?;
        Ok(rec)
    }

    /// A request that reads the keystore (cryptographic operations, describe, list): run due
    /// maintenance first, then the operation, then its audit record.
    fn read_op<T>(
        &self,
        principal: &str,
        operation: &str,
        u: Use<'_>,
        f: impl FnOnce(&mut OpCtx<'_>, &KeystoreData, &RootKey) -> Result<T, KmsError>,
    ) -> Result<T, KmsError> {
        let mut data = self.load(u)?;
        if Self::due(&data, self.now(), self.clock.boot().as_ref(), false) {
            self.maintain(false)?;
            data = self.load(u)?;
        }
        let root = self.root_key(&data)?;
        let mut ctx = OpCtx::new(principal, operation);
        let r = f(&mut ctx, &data, &root).map_err(|e| self.explain_not_found(&data, e));
        self.finish(&ctx, r)
    }

    /// A request that changes the keystore: under the lock, on a working copy; the audit
    /// record is made durable before the keystore is replaced.
    fn write_op<T>(
        &self,
        principal: &str,
        operation: &str,
        u: Use<'_>,
        f: impl FnOnce(&mut OpCtx<'_>, &mut Txn<'_>) -> Result<T, KmsError>,
    ) -> Result<T, KmsError> {
        self.load(u)?;
        let _lock = self.lock()?;
        let (mut data, root) = self.load_locked(true)?;
        // Fail closed before anything is decided.
        self.audit.reconcile(&data.audit)?;
        init::remove_stale(&self.paths)?;
        let now = self.now();
        let mut revoked = Vec::new();
        let mut events = Vec::new();
        let _ = self.maintain_locked(&mut data, &root, now, false, &mut revoked, &mut events);
        let mut ctx = OpCtx::new(principal, operation);
        let mut txn = Txn { data: data.clone(), root: &root, now, revoked: Vec::new(), keep_on_error: false };
        let r = f(&mut ctx, &mut txn).map_err(|e| self.explain_not_found(&data, e));
        let r = match r {
            Ok(v) => {
                events.extend(self.events(&ctx, Outcome::Allowed, None));
                self.commit(&root, &mut txn.data, events)?;
                revoked.append(&mut txn.revoked);
                Ok(v)
            }
            Err(e) => {
                let (outcome, error) = Self::outcome_of(&ctx, &e);
                events.extend(self.events(&ctx, outcome, error));
                let data = if txn.keep_on_error { &mut txn.data } else { &mut data };
                match self.commit(&root, data, events) {
                    Err(a @ KmsError::AuditIntegrity(_)) => Err(a),
                    _ => Err(e),
                }
            }
        };
        for uri in revoked {
            super::events::notify_revoked(&uri);
        }
        r
    }

    // ----- maintenance: scheduled deletion, automatic rotation, import expiry -----

    /// Is the scheduled deletion of `k` due: the deadline passed on the wall clock, and the
    /// waiting period confirmed by the boot clock (`deletion`)?
    fn deletion_due(k: &KeyRecord, now: u64, boot: Option<&BootReading>) -> bool {
        k.state == KeyState::PendingDeletion
            && k.deletion_date.is_some_and(|d| d <= now)
            && k.deletion_clock.as_ref().is_none_or(|c| c.elapsed(now, boot))
    }

    /// Should this run attempt `k`'s due deletion? After a failure, on-use maintenance waits
    /// [`deletion::RETRY_SECS`] so that processes without the token do not retry on every use.
    fn deletion_attempt(k: &KeyRecord, now: u64, boot: Option<&BootReading>, explicit: bool) -> bool {
        Self::deletion_due(k, now, boot)
            && (explicit
                || k.deletion_failure.as_ref().is_none_or(|f| f.at.saturating_add(deletion::RETRY_SECS) <= now))
    }

    fn due(data: &KeystoreData, now: u64, boot: Option<&BootReading>, explicit: bool) -> bool {
        data.keys.values().any(|k| {
            Self::deletion_attempt(k, now, boot, explicit)
                || (k.state == KeyState::PendingDeletion && k.deletion_clock.as_ref().is_some_and(|c| c.stale(boot)))
                || (k.state == KeyState::Enabled && k.rotation.as_ref().is_some_and(|r| r.next_rotation <= now))
                || (k.import.as_ref().and_then(|i| i.expires).is_some_and(|e| e <= now) && k.has_material())
        })
    }

    /// Perform what is due (checked on every use, and by `kms rotate-due`).
    fn maintain(&self, explicit: bool) -> Result<MaintenanceReport, KmsError> {
        // An unchecked look decides only whether to take the lock.
        let Some(peek) = keystore::load(&self.paths)? else { return Ok(MaintenanceReport::default()) };
        if !Self::due(&peek.data, self.now(), self.clock.boot().as_ref(), explicit) {
            return Ok(MaintenanceReport::default());
        }
        let _lock = self.lock()?;
        let (mut data, root) = self.load_locked(true)?;
        init::remove_stale(&self.paths)?;
        let mut revoked = Vec::new();
        let mut events = Vec::new();
        let (report, err) = self.maintain_locked(&mut data, &root, self.now(), explicit, &mut revoked, &mut events);
        // A renewed deletion checkpoint is bookkeeping without an audit event: stored all the same.
        if !events.is_empty() || report.checkpointed {
            self.commit(&root, &mut data, events)?;
        }
        for uri in revoked {
            super::events::notify_revoked(&uri);
        }
        match err {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    fn maintain_locked(
        &self,
        data: &mut KeystoreData,
        root: &RootKey,
        now: u64,
        explicit: bool,
        revoked: &mut Vec<String>,
        events: &mut Vec<AuditEvent>,
    ) -> (MaintenanceReport, Option<KmsError>) {
        let mut report = MaintenanceReport::default();
        let mut failed = None;
        let boot = self.clock.boot();
        let ids: Vec<String> = data.keys.keys().cloned().collect();
        for id in ids {
            let rec = data.keys[&id].clone();
            if Self::deletion_due(&rec, now, boot.as_ref()) {
                if !Self::deletion_attempt(&rec, now, boot.as_ref(), explicit) {
                    continue;
                }
                let mut ctx = OpCtx::new(SERVICE_PRINCIPAL, "DeleteKey:scheduled");
                ctx.key(&id);
                match self.destroy_material(data, &id) {
                    Ok(()) => {
                        events.extend(self.events(&ctx, Outcome::Allowed, None));
                        report.deleted.push(id.clone());
                        revoked.push(key_uri(&id));
                    }
                    Err(error) => {
                        // The token still holds material: the key stays pending deletion,
                        // the failure is recorded, audited and retried.
                        events.extend(self.events(&ctx, Outcome::Failed, Some(error.clone())));
                        let r = data.keys.get_mut(&id).expect("key exists");
                        r.deletion_failure = Some(deletion::DeletionFailure { at: now, error: error.clone() });
                        report.deletion_failed.push(id.clone());
                        if explicit && failed.is_none() {
                            failed = Some(KmsError::Unavailable(format!("deletion of key {id} failed: {error}")));
                        }
                    }
                }
                continue;
            }
            if let (Some(b), Some(c)) = (boot.as_ref(), rec.deletion_clock.as_ref()) {
                if rec.state == KeyState::PendingDeletion && c.stale(Some(b)) {
                    let c = data.keys.get_mut(&id).and_then(|r| r.deletion_clock.as_mut()).expect("checked");
                    c.checkpoint(now, b);
                    report.checkpointed = true;
                }
            }
            if rec.import.as_ref().and_then(|i| i.expires).is_some_and(|e| e <= now) && rec.has_material() {
                let mut ctx = OpCtx::new(SERVICE_PRINCIPAL, "ImportedKeyMaterialExpired");
                ctx.key(&id);
                events.extend(self.events(&ctx, Outcome::Allowed, None));
                import::remove_material(data.keys.get_mut(&id).expect("key exists"));
                report.import_expired.push(id.clone());
                revoked.push(key_uri(&id));
                continue;
            }
            if rec.state == KeyState::Enabled && rec.rotation.as_ref().is_some_and(|r| r.next_rotation <= now) {
                // HSM rotations need the token; outside `rotate-due` a missing token must not
                // block the use of other keys, so they wait for an explicit run.
                if rec.protection == Protection::Hsm && !explicit && super::hsm::config_from_env().is_none() {
                    continue;
                }
                let mut ctx = OpCtx::new(SERVICE_PRINCIPAL, "RotateKey:scheduled");
                ctx.key(&id);
                let mut work = data.clone();
                match self.rotate_in(&mut work, root, &id, now) {
                    Ok(v) => {
                        ctx.version(v);
                        events.extend(self.events(&ctx, Outcome::Allowed, None));
                        *data = work;
                        report.rotated.push((id.clone(), v));
                    }
                    Err(e) => {
                        events.extend(self.events(&ctx, Outcome::Failed, Some(e.to_string())));
                        if explicit {
                            return (report, Some(e));
                        }
                    }
                }
            }
        }
        (report, failed)
    }

    /// Destroy every version's material and leave a tombstone. An HSM key is only marked
    /// deleted once every token object is destroyed: otherwise the error text is returned, the
    /// record keeps the labels still in the token (those destroyed are dropped) and stays
    /// pending deletion, so the deletion is retried.
    fn destroy_material(&self, data: &mut KeystoreData, id: &str) -> Result<(), String> {
        let now = self.now();
        let rec = data.keys.get_mut(id).expect("key exists");
        if let Some(h) = rec.hsm.clone() {
            let mut err = None;
            for v in rec.versions.iter_mut() {
                if let Some(label) = v.hsm_label.clone() {
                    match super::hsm::destroy(&h, &label) {
                        Ok(()) => v.hsm_label = None,
                        Err(e) => err = Some(format!("HSM object {label} not destroyed: {e}")),
                    }
                }
            }
            if let Some(e) = err {
                return Err(e);
            }
        }
        for v in rec.versions.iter_mut() {
            v.material = None;
            v.hsm_label = None;
        }
        rec.state = KeyState::Deleted;
        rec.deleted_at = Some(now);
        rec.deletion_date = None;
        rec.deletion_clock = None;
        rec.rotation = None;
        rec.policy = None;
        if let Some(i) = rec.import.as_mut() {
            i.params = None;
        }
        rec.deletion_failure = None;
        data.aliases.retain(|_, v| v != id);
        Ok(())
    }

    // ----- material -----

    fn new_software_version(
        root: &RootKey,
        key_id: &str,
        version: u32,
        now: u64,
    ) -> Result<KeyVersionRecord, KmsError> {
        let material = Zeroizing::new(random_array::<32>()?);
        let sealed = wrap::seal(root.expose(), key_id, version, &material[..], &material_context(key_id, version))?;
        Ok(KeyVersionRecord { version, created: now, material: Some(hex::encode(sealed)), hsm_label: None })
    }

    fn new_version(rec: &KeyRecord, root: &RootKey, version: u32, now: u64) -> Result<KeyVersionRecord, KmsError> {
        match rec.protection {
            Protection::Software => Self::new_software_version(root, &rec.key_id, version, now),
            Protection::Hsm => {
                let h = rec
                    .hsm
                    .as_ref()
                    .ok_or_else(|| KmsError::Keystore(format!("HSM key {} names no token", rec.key_id)))?;
                let label = super::hsm::generate(h, &rec.key_id, version)?;
                Ok(KeyVersionRecord { version, created: now, material: None, hsm_label: Some(label) })
            }
        }
    }

    /// Decrypt the software material of one key version.
    fn software_material(
        root: &RootKey,
        rec: &KeyRecord,
        v: &KeyVersionRecord,
    ) -> Result<Zeroizing<[u8; 32]>, KmsError> {
        let hexed = v.material.as_ref().ok_or_else(|| KmsError::NotUsable {
            key: rec.key_id.clone(),
            reason: format!("the material of version {} is not available", v.version),
        })?;
        let sealed = hex::decode(hexed).map_err(|_| KmsError::Keystore("bad material encoding".into()))?;
        let plain = wrap::open(root.expose(), &sealed, &material_context(&rec.key_id, v.version)).map_err(|_| {
            KmsError::Keystore(format!(
                "material of key {} v{} does not decrypt under the root key",
                rec.key_id, v.version
            ))
        })?;
        if plain.len() != 32 {
            return Err(KmsError::Keystore("bad material length".into()));
        }
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(&plain);
        Ok(out)
    }

    fn version_of(rec: &KeyRecord, version: u32) -> Result<&KeyVersionRecord, KmsError> {
        let v = rec.version(version).ok_or_else(|| KmsError::NotUsable {
            key: rec.key_id.clone(),
            reason: format!("version {version} does not exist"),
        })?;
        if !v.available() {
            return Err(match rec.state {
                KeyState::Deleted => KmsError::Deleted(rec.key_id.clone()),
                KeyState::PendingImport => KmsError::PendingImport(rec.key_id.clone()),
                _ => KmsError::NotUsable {
                    key: rec.key_id.clone(),
                    reason: format!("the material of version {version} is not available"),
                },
            });
        }
        Ok(v)
    }

    /// Encrypt under one version of a key (in the token for HSM keys).
    fn seal(
        root: &RootKey,
        rec: &KeyRecord,
        version: u32,
        plaintext: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<Vec<u8>, KmsError> {
        let v = Self::version_of(rec, version)?;
        match rec.protection {
            Protection::Software => {
                let m = Self::software_material(root, rec, v)?;
                wrap::seal(&m, &rec.key_id, version, plaintext, ctx)
            }
            Protection::Hsm => {
                let h = rec
                    .hsm
                    .as_ref()
                    .ok_or_else(|| KmsError::Keystore(format!("HSM key {} names no token", rec.key_id)))?;
                let label = v.hsm_label.as_deref().unwrap_or_default();
                let header = wrap::header(&rec.key_id, version)?;
                let nonce = random_array::<12>()?;
                let ct = super::hsm::encrypt(h, label, &nonce, &wrap::aad(&header, ctx), plaintext)?;
                let mut out = header;
                out.extend_from_slice(&nonce);
                out.extend_from_slice(&ct);
                Ok(out)
            }
        }
    }

    /// Decrypt a blob under the version it names.
    fn open(
        root: &RootKey,
        rec: &KeyRecord,
        blob: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let (hdr, header, nonce, ct) = wrap::split(blob)?;
        let v = Self::version_of(rec, hdr.key_version)?;
        match rec.protection {
            Protection::Software => {
                let m = Self::software_material(root, rec, v)?;
                wrap::open(&m, blob, ctx)
            }
            Protection::Hsm => {
                let h = rec
                    .hsm
                    .as_ref()
                    .ok_or_else(|| KmsError::Keystore(format!("HSM key {} names no token", rec.key_id)))?;
                let label = v.hsm_label.as_deref().unwrap_or_default();
                super::hsm::decrypt(h, label, &nonce, &wrap::aad(header, ctx), ct).map_err(|e| match e {
                    KmsError::InvalidCiphertext { .. } => KmsError::InvalidCiphertext { key: rec.key_id.clone() },
                    other => other,
                })
            }
        }
    }

    fn rotate_in(&self, data: &mut KeystoreData, root: &RootKey, id: &str, now: u64) -> Result<u32, KmsError> {
        let rec = data.keys.get_mut(id).ok_or_else(|| KmsError::NotFound(id.to_string()))?;
        let version = rec.next_version();
        let v = Self::new_version(rec, root, version, now)?;
        rec.versions.push(v);
        rec.primary_version = version;
        if let Some(r) = rec.rotation.as_mut() {
            r.next_rotation = now + r.period_days as u64 * DAY;
        }
        Ok(version)
    }

    // ----- operations -----

    /// Dispatch one request for `principal` (the daemon calls this with each peer's
    /// principal; the embedded front end with its own).
    pub fn handle(&self, principal: &str, req: &Request) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        match req {
            Request::CreateKey(p) => to_json(&self.op_create_key(principal, p)?),
            Request::DescribeKey { key } => to_json(&self.op_describe(principal, key)?),
            Request::ListKeys => to_json(&self.op_list_keys(principal)?),
            Request::ListAliases => to_json(&self.op_list_aliases(principal)?),
            Request::CreateAlias { alias, key } => {
                to_json(&self.op_alias(principal, "CreateAlias", alias, Some(key))?)
            }
            Request::UpdateAlias { alias, key } => {
                to_json(&self.op_alias(principal, "UpdateAlias", alias, Some(key))?)
            }
            Request::DeleteAlias { alias } => to_json(&self.op_alias(principal, "DeleteAlias", alias, None)?),
            Request::EnableKey { key } => to_json(&self.op_enable(principal, key)?),
            Request::DisableKey { key } => to_json(&self.op_disable(principal, key)?),
            Request::ScheduleKeyDeletion { key, days } => to_json(&self.op_schedule_deletion(principal, key, *days)?),
            Request::CancelKeyDeletion { key } => to_json(&self.op_cancel_deletion(principal, key)?),
            Request::EnableKeyRotation { key, days } => to_json(&self.op_rotation(principal, key, Some(*days))?),
            Request::DisableKeyRotation { key } => to_json(&self.op_rotation(principal, key, None)?),
            Request::RotateKeyOnDemand { key } => to_json(&self.op_rotate(principal, key)?),
            Request::RotateDue => to_json(&self.op_rotate_due(principal)?),
            Request::GenerateDataKey { key, context, bytes } => {
                to_json(&self.op_generate_data_key(principal, key, &context_of(context), *bytes, true)?)
            }
            Request::GenerateDataKeyWithoutPlaintext { key, context, bytes } => {
                to_json(&self.op_generate_data_key(principal, key, &context_of(context), *bytes, false)?)
            }
            Request::Encrypt { key, plaintext, context } => {
                to_json(&self.op_encrypt(principal, key, plaintext, &context_of(context))?)
            }
            Request::Decrypt { ciphertext, context, key } => {
                to_json(&self.op_decrypt(principal, ciphertext, &context_of(context), key.as_deref())?)
            }
            Request::ReEncrypt { ciphertext, source_context, destination_key, destination_context } => {
                to_json(&self.op_re_encrypt(
                    principal,
                    ciphertext,
                    &context_of(source_context),
                    destination_key.as_deref(),
                    destination_context.as_ref().map(context_of).as_ref(),
                )?)
            }
            Request::GetImportParameters { key } => to_json(&self.op_get_import_parameters(principal, key)?),
            Request::ImportKeyMaterial { key, import_token, encrypted_material, expires } => {
                to_json(&self.op_import(principal, key, import_token, encrypted_material, *expires)?)
            }
            Request::DeleteImportedKeyMaterial { key } => to_json(&self.op_delete_imported(principal, key)?),
            Request::GetKeyPolicy { key } => to_json(&self.op_get_policy(principal, key)?),
            Request::PutKeyPolicy { key, policy } => to_json(&self.op_put_policy(principal, key, policy)?),
            Request::Lint => to_json(&self.op_lint(principal)?),
            Request::ReadAudit { key, since } => to_json(&self.op_read_audit(principal, key.as_deref(), *since)?),
            Request::VerifyAudit => to_json(&self.op_verify_audit(principal)?),
            Request::WhoAmI => to_json(&Identity { principal: principal.to_string(), mode: self.mode.to_string() }),
            Request::PutSecret { name, value, key, description } => {
                to_json(&super::secrets::put(self, principal, name, value, key.as_deref(), description)?)
            }
            Request::GetSecret { name, version, stage } => {
                to_json(&super::secrets::get(self, principal, name, version.as_deref(), stage.as_deref())?)
            }
            Request::RotateSecret { name, value } => {
                to_json(&super::secrets::rotate(self, principal, name, value.as_ref())?)
            }
            Request::ListSecrets => to_json(&super::secrets::list(self, principal)?),
            Request::ListSecretVersions { name } => to_json(&super::secrets::versions(self, principal, name)?),
            Request::GetSecretPolicy { name } => to_json(&super::secrets::get_policy(self, principal, name)?),
            Request::PutSecretPolicy { name, policy } => {
                to_json(&super::secrets::put_policy(self, principal, name, policy)?)
            }
        }
    }

    /// CreateKey.
    pub fn op_create_key(&self, principal: &str, p: &CreateKeyParams) -> Result<KeyInfo, KmsError> {
        let alias = p.alias.as_deref().map(normalize_alias);
        self.write_op(principal, "CreateKey", Use::Create, |ctx, txn| {
            if let Some(a) = &alias {
                validate_alias(a)?;
                if is_default_alias(a) {
                    return Err(KmsError::InvalidRequest(format!(
                        "{DEFAULT_KEY_ALIAS} is reserved for the service-managed default key"
                    )));
                }
                if txn.data.aliases.contains_key(a) {
                    return Err(KmsError::InvalidRequest(format!("alias {a} already exists")));
                }
            }
            if p.origin == Origin::External && p.protection == Protection::Hsm {
                return Err(KmsError::InvalidRequest(
                    "imported key material is supported with software protection only".into(),
                ));
            }
            if p.origin == Origin::External && p.rotation_days.is_some() {
                return Err(KmsError::InvalidRequest(
                    "keys with imported material cannot be rotated automatically".into(),
                ));
            }
            if let Some(d) = p.rotation_days {
                check_rotation_days(d)?;
            }
            let policy = KeyPolicy::for_new_key(principal, &p.admins, &p.users);
            policy.validate().map_err(KmsError::InvalidRequest)?;
            let key_id = uuid::Uuid::new_v4().to_string();
            ctx.key(&key_id);
            let hsm = match p.protection {
                Protection::Hsm => Some(super::hsm::config_from_env().ok_or_else(|| {
                    KmsError::InvalidRequest(format!(
                        "--protection hsm needs a PKCS#11 token: set {} (and {}, {})",
                        super::hsm::ENV_HSM_TOKEN,
                        super::hsm::ENV_HSM_PIN,
                        super::hsm::ENV_HSM_MODULE
                    ))
                })?),
                Protection::Software => None,
            };
            let mut rec = KeyRecord {
                key_id: key_id.clone(),
                description: p.description.clone(),
                created: txn.now,
                state: KeyState::Enabled,
                manager: KeyManager::Customer,
                origin: p.origin,
                protection: p.protection,
                primary_version: 0,
                versions: Vec::new(),
                policy: Some(policy),
                rotation: p
                    .rotation_days
                    .map(|d| RotationRecord { period_days: d, next_rotation: txn.now + d as u64 * DAY }),
                deletion_date: None,
                deletion_clock: None,
                deletion_failure: None,
                deleted_at: None,
                hsm,
                import: None,
            };
            match p.origin {
                Origin::Internal => {
                    let v = Self::new_version(&rec, txn.root, 1, txn.now)?;
                    rec.versions.push(v);
                    rec.primary_version = 1;
                    ctx.version(1);
                }
                Origin::External => {
                    rec.state = KeyState::PendingImport;
                    rec.import = Some(ImportRecord::default());
                }
            }
            txn.data.keys.insert(key_id.clone(), rec);
            if let Some(a) = &alias {
                txn.data.aliases.insert(a.clone(), key_id.clone());
            }
            Ok(info(&txn.data, &txn.data.keys[&key_id]))
        })
    }

    /// Make sure the service-managed default key exists.
    fn ensure_default_key(&self, u: Use<'_>) -> Result<(), KmsError> {
        let data = self.load(u)?;
        if data.aliases.contains_key(DEFAULT_KEY_ALIAS) {
            return Ok(());
        }
        self.write_op(SERVICE_PRINCIPAL, "CreateKey:default", u, |ctx, txn| {
            if let Some(id) = txn.data.aliases.get(DEFAULT_KEY_ALIAS) {
                ctx.key(&id.clone());
                return Ok(());
            }
            let key_id = uuid::Uuid::new_v4().to_string();
            ctx.key(&key_id);
            ctx.version(1);
            let period = limits::DEFAULT_KEY_ROTATION_DAYS;
            let v = Self::new_software_version(txn.root, &key_id, 1, txn.now)?;
            txn.data.keys.insert(
                key_id.clone(),
                KeyRecord {
                    key_id: key_id.clone(),
                    description: "service-managed default key".into(),
                    created: txn.now,
                    state: KeyState::Enabled,
                    manager: KeyManager::Service,
                    origin: Origin::Internal,
                    protection: Protection::Software,
                    primary_version: 1,
                    versions: vec![v],
                    policy: Some(KeyPolicy::service_default()),
                    rotation: Some(RotationRecord {
                        period_days: period,
                        next_rotation: txn.now + period as u64 * DAY,
                    }),
                    deletion_date: None,
                    deletion_clock: None,
                    deletion_failure: None,
                    deleted_at: None,
                    hsm: None,
                    import: None,
                },
            );
            txn.data.aliases.insert(DEFAULT_KEY_ALIAS.to_string(), key_id);
            Ok(())
        })
    }

    /// DescribeKey.
    pub fn op_describe(&self, principal: &str, key: &str) -> Result<KeyInfo, KmsError> {
        if key == DEFAULT_KEY_ALIAS {
            self.ensure_default_key(Use::Existing(Some(key)))?;
        }
        self.read_op(principal, "DescribeKey", Use::Existing(Some(key)), |ctx, data, _| {
            let rec = data.resolve(key)?;
            ctx.key(&rec.key_id);
            authorize(ctx, rec, actions::DESCRIBE_KEY)?;
            Ok(info(data, rec))
        })
    }

    /// ListKeys: every key, tombstones included, for an operator ([`Self::is_operator`]);
    /// for anyone else the keys its policy lets it use or manage.
    pub fn op_list_keys(&self, principal: &str) -> Result<Vec<KeyInfo>, KmsError> {
        let everything = self.is_operator(principal);
        self.read_op(principal, "ListKeys", Use::Existing(None), |_, data, _| {
            Ok(data.keys.values().filter(|r| everything || visible_to(principal, r)).map(|r| info(data, r)).collect())
        })
    }

    /// ListAliases: every alias for an operator; for anyone else the aliases of the keys
    /// [`Self::op_list_keys`] shows it.
    pub fn op_list_aliases(&self, principal: &str) -> Result<Vec<AliasInfo>, KmsError> {
        let everything = self.is_operator(principal);
        self.read_op(principal, "ListAliases", Use::Existing(None), |_, data, _| {
            Ok(data
                .aliases
                .iter()
                .filter(|(_, k)| everything || data.keys.get(*k).is_some_and(|r| visible_to(principal, r)))
                .map(|(a, k)| AliasInfo { alias: a.clone(), key_id: k.clone() })
                .collect())
        })
    }

    /// CreateAlias / UpdateAlias (`op`, with a target) and DeleteAlias.
    pub fn op_alias(
        &self,
        principal: &str,
        op: &str,
        alias: &str,
        target: Option<&str>,
    ) -> Result<AliasInfo, KmsError> {
        let alias = normalize_alias(alias);
        self.write_op(principal, op, Use::Existing(target.or(Some(&alias))), |ctx, txn| {
            validate_alias(&alias)?;
            if is_default_alias(&alias) {
                return Err(
                    ctx.deny(KmsError::InvalidRequest(format!("{DEFAULT_KEY_ALIAS} is managed by the service")))
                );
            }
            let existing = txn.data.aliases.get(&alias).cloned();
            match (op, target) {
                ("CreateAlias", Some(t)) => {
                    if existing.is_some() {
                        return Err(KmsError::InvalidRequest(format!("alias {alias} already exists")));
                    }
                    let rec = txn.data.resolve(t)?;
                    ctx.key(&rec.key_id);
                    authorize(ctx, rec, actions::CREATE_ALIAS)?;
                    if rec.state == KeyState::Deleted {
                        return Err(KmsError::Deleted(rec.key_id.clone()));
                    }
                    let id = rec.key_id.clone();
                    txn.data.aliases.insert(alias.clone(), id.clone());
                    Ok(AliasInfo { alias: alias.clone(), key_id: id })
                }
                ("UpdateAlias", Some(t)) => {
                    let old = existing.ok_or_else(|| KmsError::NotFound(alias.clone()))?;
                    let old_rec = txn.data.resolve(&old)?.clone();
                    let rec = txn.data.resolve(t)?;
                    // Recorded on both keys: the one the alias leaves (whose administrators
                    // must see it go) and its new target.
                    ctx.key(&old_rec.key_id);
                    ctx.keys.push((rec.key_id.clone(), None));
                    authorize(ctx, &old_rec, actions::UPDATE_ALIAS)?;
                    authorize(ctx, rec, actions::UPDATE_ALIAS)?;
                    if rec.state == KeyState::Deleted {
                        return Err(KmsError::Deleted(rec.key_id.clone()));
                    }
                    // Moving an alias the applications use to a key the caller may use is the
                    // self-grant by another route (their next data keys would be the caller's
                    // to decrypt): the same rule as for PutKeyPolicy.
                    let gained: Vec<&str> = crate::policy::SELF_GRANT_GUARDED
                        .iter()
                        .copied()
                        .filter(|a| *a != actions::GRANT_SELF)
                        .filter(|a| may(ctx.principal, rec, a) && !may(ctx.principal, &old_rec, a))
                        .collect();
                    if !gained.is_empty() && !may(ctx.principal, &old_rec, actions::GRANT_SELF) {
                        return Err(ctx.deny(KmsError::AccessDenied {
                            principal: ctx.principal.to_string(),
                            action: format!(
                                "{} (move {alias} to a key it may use with {} but not with the key the alias names; \
                                 new data keys under the alias would be its own to decrypt)",
                                actions::GRANT_SELF,
                                gained.join(", ")
                            ),
                            key: old_rec.key_id.clone(),
                        }));
                    }
                    let id = rec.key_id.clone();
                    txn.data.aliases.insert(alias.clone(), id.clone());
                    Ok(AliasInfo { alias: alias.clone(), key_id: id })
                }
                _ => {
                    let id = existing.ok_or_else(|| KmsError::NotFound(alias.clone()))?;
                    let rec = txn.data.resolve(&id)?;
                    ctx.key(&rec.key_id);
                    authorize(ctx, rec, actions::DELETE_ALIAS)?;
                    txn.data.aliases.remove(&alias);
                    Ok(AliasInfo { alias: alias.clone(), key_id: id })
                }
            }
        })
    }

    /// Resolve a key inside a mutation, checking `action`.
    fn txn_key(ctx: &mut OpCtx<'_>, txn: &Txn<'_>, key: &str, action: &str) -> Result<String, KmsError> {
        let rec = txn.data.resolve(key)?;
        ctx.key(&rec.key_id);
        authorize(ctx, rec, action)?;
        Ok(rec.key_id.clone())
    }

    /// EnableKey.
    pub fn op_enable(&self, principal: &str, key: &str) -> Result<KeyInfo, KmsError> {
        self.write_op(principal, "EnableKey", Use::Existing(Some(key)), |ctx, txn| {
            let id = Self::txn_key(ctx, txn, key, actions::ENABLE_KEY)?;
            let rec = txn.data.keys.get_mut(&id).expect("resolved");
            match rec.state {
                KeyState::Enabled | KeyState::Disabled => rec.state = KeyState::Enabled,
                KeyState::PendingDeletion => {
                    return Err(KmsError::InvalidRequest(format!(
                        "key {id} is pending deletion: cancel the deletion first"
                    )))
                }
                KeyState::PendingImport => {
                    return Err(KmsError::InvalidRequest(format!("key {id} has no key material: import it first")))
                }
                KeyState::Deleted => return Err(KmsError::Deleted(id)),
            }
            Ok(info(&txn.data, &txn.data.keys[&id]))
        })
    }

    /// DisableKey: every cryptographic operation with the key fails from now on, and this
    /// process's key caches drop data keys unwrapped under it.
    pub fn op_disable(&self, principal: &str, key: &str) -> Result<KeyInfo, KmsError> {
        self.write_op(principal, "DisableKey", Use::Existing(Some(key)), |ctx, txn| {
            let id = Self::txn_key(ctx, txn, key, actions::DISABLE_KEY)?;
            let rec = txn.data.keys.get_mut(&id).expect("resolved");
            match rec.state {
                KeyState::Enabled | KeyState::Disabled => rec.state = KeyState::Disabled,
                KeyState::PendingDeletion => return Err(KmsError::PendingDeletion(id)),
                KeyState::PendingImport => return Err(KmsError::PendingImport(id)),
                KeyState::Deleted => return Err(KmsError::Deleted(id)),
            }
            txn.revoked.push(key_uri(&id));
            Ok(info(&txn.data, &txn.data.keys[&id]))
        })
    }

    /// ScheduleKeyDeletion (7 to 30 days, default 30).
    pub fn op_schedule_deletion(&self, principal: &str, key: &str, days: Option<u32>) -> Result<KeyInfo, KmsError> {
        let boot = self.clock.boot();
        self.write_op(principal, "ScheduleKeyDeletion", Use::Existing(Some(key)), |ctx, txn| {
            let id = Self::txn_key(ctx, txn, key, actions::SCHEDULE_KEY_DELETION)?;
            let days = days.unwrap_or(limits::DEFAULT_DELETION_DAYS);
            if !(limits::MIN_DELETION_DAYS..=limits::MAX_DELETION_DAYS).contains(&days) {
                return Err(KmsError::InvalidRequest(format!(
                    "the deletion waiting period must be {} to {} days (got {days})",
                    limits::MIN_DELETION_DAYS,
                    limits::MAX_DELETION_DAYS
                )));
            }
            let now = txn.now;
            let rec = txn.data.keys.get_mut(&id).expect("resolved");
            match rec.state {
                KeyState::Enabled | KeyState::Disabled | KeyState::PendingImport => {
                    rec.state = KeyState::PendingDeletion;
                    rec.deletion_date = Some(now + days as u64 * DAY);
                    rec.deletion_clock =
                        boot.as_ref().map(|b| deletion::DeletionClock::start(days as u64 * DAY, now, b));
                }
                KeyState::PendingDeletion => return Err(KmsError::PendingDeletion(id)),
                KeyState::Deleted => return Err(KmsError::Deleted(id)),
            }
            txn.revoked.push(key_uri(&id));
            Ok(info(&txn.data, &txn.data.keys[&id]))
        })
    }

    /// CancelKeyDeletion: the key returns Disabled (PendingImport if it has no material).
    pub fn op_cancel_deletion(&self, principal: &str, key: &str) -> Result<KeyInfo, KmsError> {
        self.write_op(principal, "CancelKeyDeletion", Use::Existing(Some(key)), |ctx, txn| {
            let id = Self::txn_key(ctx, txn, key, actions::CANCEL_KEY_DELETION)?;
            let rec = txn.data.keys.get_mut(&id).expect("resolved");
            if rec.state != KeyState::PendingDeletion {
                return Err(KmsError::InvalidRequest(format!(
                    "key {id} is not pending deletion (state {})",
                    rec.state.as_str()
                )));
            }
            rec.state = if rec.has_material() { KeyState::Disabled } else { KeyState::PendingImport };
            rec.deletion_date = None;
            rec.deletion_clock = None;
            rec.deletion_failure = None;
            Ok(info(&txn.data, &txn.data.keys[&id]))
        })
    }

    /// EnableKeyRotation (with a period) / DisableKeyRotation (`None`).
    pub fn op_rotation(&self, principal: &str, key: &str, days: Option<u32>) -> Result<KeyInfo, KmsError> {
        let (op, action) = match days {
            Some(_) => ("EnableKeyRotation", actions::ENABLE_KEY_ROTATION),
            None => ("DisableKeyRotation", actions::DISABLE_KEY_ROTATION),
        };
        self.write_op(principal, op, Use::Existing(Some(key)), |ctx, txn| {
            let id = Self::txn_key(ctx, txn, key, action)?;
            let now = txn.now;
            let rec = txn.data.keys.get_mut(&id).expect("resolved");
            if rec.origin == Origin::External {
                return Err(KmsError::InvalidRequest(
                    "keys with imported material cannot be rotated automatically".into(),
                ));
            }
            if matches!(rec.state, KeyState::PendingDeletion | KeyState::Deleted) {
                return Err(KmsError::InvalidRequest(format!("key {id} is {}", rec.state.as_str())));
            }
            match days {
                Some(d) => {
                    check_rotation_days(d)?;
                    rec.rotation = Some(RotationRecord { period_days: d, next_rotation: now + d as u64 * DAY });
                }
                None => rec.rotation = None,
            }
            Ok(info(&txn.data, &txn.data.keys[&id]))
        })
    }

    /// RotateKeyOnDemand: new material under the same key id; new wraps use it, old
    /// ciphertext keeps decrypting.
    pub fn op_rotate(&self, principal: &str, key: &str) -> Result<KeyInfo, KmsError> {
        self.write_op(principal, "RotateKeyOnDemand", Use::Existing(Some(key)), |ctx, txn| {
            let id = Self::txn_key(ctx, txn, key, actions::ROTATE_KEY)?;
            let rec = &txn.data.keys[&id];
            if rec.origin == Origin::External {
                return Err(KmsError::InvalidRequest("keys with imported material cannot be rotated".into()));
            }
            check_usable(rec)?;
            let v = self.rotate_in(&mut txn.data, txn.root, &id, txn.now)?;
            ctx.version(v);
            Ok(info(&txn.data, &txn.data.keys[&id]))
        })
    }

    /// `kms rotate-due`: perform every due rotation, deletion and expiry now.
    pub fn op_rotate_due(&self, principal: &str) -> Result<MaintenanceReport, KmsError> {
        let report = self.maintain(true)?;
        self.load(Use::Existing(None))?;
        let ctx = OpCtx::new(principal, "RotateDue");
        self.finish(&ctx, Ok(report))
    }

    fn check_blob_key(rec: &KeyRecord, key: Option<&str>, data: &KeystoreData) -> Result<(), KmsError> {
        if let Some(k) = key {
            let want = data.resolve_id(k)?;
            if want != rec.key_id {
                return Err(KmsError::InvalidRequest(format!(
                    "the ciphertext was encrypted under key {}, not {k}",
                    rec.key_id
                )));
            }
        }
        Ok(())
    }

    /// GenerateDataKey / GenerateDataKeyWithoutPlaintext.
    pub fn op_generate_data_key(
        &self,
        principal: &str,
        key: &str,
        context: &EncryptionContext,
        bytes: Option<usize>,
        with_plaintext: bool,
    ) -> Result<DataKeyResponse, KmsError> {
        if key == DEFAULT_KEY_ALIAS {
            self.ensure_default_key(Use::Create)?;
        }
        let (op, action) = if with_plaintext {
            ("GenerateDataKey", actions::GENERATE_DATA_KEY)
        } else {
            ("GenerateDataKeyWithoutPlaintext", actions::GENERATE_DATA_KEY_WITHOUT_PLAINTEXT)
        };
        self.read_op(principal, op, Use::new_ciphertext(key), |ctx, data, root| {
            ctx.context = Some(context.digest());
            let rec = data.resolve(key)?;
            ctx.key(&rec.key_id);
            authorize(ctx, rec, action)?;
            check_usable(rec)?;
            let n = bytes.unwrap_or(limits::DATA_KEY_BYTES);
            if n == 0 || n > limits::MAX_DATA_KEY_BYTES {
                return Err(KmsError::InvalidRequest(format!(
                    "data keys are 1 to {} bytes",
                    limits::MAX_DATA_KEY_BYTES
                )));
            }
            let mut plain = Zeroizing::new(vec![0u8; n]);
            crate::plaintext::fill_random(&mut plain)?;
            let version = rec.primary_version;
            ctx.version(version);
            let ciphertext = Self::seal(root, rec, version, &plain, context)?;
            Ok(DataKeyResponse {
                key_id: rec.key_id.clone(),
                key_version: version,
                ciphertext,
                plaintext: with_plaintext.then_some(plain),
            })
        })
    }

    /// Encrypt (payloads up to 4 KiB).
    pub fn op_encrypt(
        &self,
        principal: &str,
        key: &str,
        plaintext: &[u8],
        context: &EncryptionContext,
    ) -> Result<EncryptResponse, KmsError> {
        if key == DEFAULT_KEY_ALIAS {
            self.ensure_default_key(Use::Create)?;
        }
        self.read_op(principal, "Encrypt", Use::new_ciphertext(key), |ctx, data, root| {
            ctx.context = Some(context.digest());
            let rec = data.resolve(key)?;
            ctx.key(&rec.key_id);
            authorize(ctx, rec, actions::ENCRYPT)?;
            check_usable(rec)?;
            if plaintext.len() > limits::MAX_PLAINTEXT {
                return Err(KmsError::InvalidRequest(format!("Encrypt takes at most {} bytes", limits::MAX_PLAINTEXT)));
            }
            let version = rec.primary_version;
            ctx.version(version);
            let ciphertext = Self::seal(root, rec, version, plaintext, context)?;
            Ok(EncryptResponse { key_id: rec.key_id.clone(), key_version: version, ciphertext })
        })
    }

    /// Decrypt: the blob names its key and version; the context must match exactly.
    pub fn op_decrypt(
        &self,
        principal: &str,
        blob: &[u8],
        context: &EncryptionContext,
        key: Option<&str>,
    ) -> Result<DecryptResponse, KmsError> {
        let named = wrap::parse(blob).map(|(h, _)| h.key_id).ok();
        self.read_op(principal, "Decrypt", Use::Existing(named.as_deref()), |ctx, data, root| {
            ctx.context = Some(context.digest());
            let (hdr, _) = wrap::parse(blob)?;
            ctx.key(&hdr.key_id);
            ctx.version(hdr.key_version);
            let rec = data.resolve(&hdr.key_id)?;
            Self::check_blob_key(rec, key, data)?;
            authorize(ctx, rec, actions::DECRYPT)?;
            check_usable(rec)?;
            let plaintext = Self::open(root, rec, blob, context)?;
            Ok(DecryptResponse { key_id: rec.key_id.clone(), key_version: hdr.key_version, plaintext })
        })
    }

    /// ReEncrypt: decrypt and encrypt again inside the KMS (to another key, or to the
    /// newest version of the same key); the plaintext never leaves.
    pub fn op_re_encrypt(
        &self,
        principal: &str,
        blob: &[u8],
        source_context: &EncryptionContext,
        destination_key: Option<&str>,
        destination_context: Option<&EncryptionContext>,
    ) -> Result<ReEncryptResponse, KmsError> {
        let named = wrap::parse(blob).map(|(h, _)| h.key_id).ok();
        if destination_key == Some(DEFAULT_KEY_ALIAS) {
            self.ensure_default_key(Use::Existing(named.as_deref()))?;
        }
        self.read_op(principal, "ReEncrypt", Use::Existing(named.as_deref()), |ctx, data, root| {
            ctx.context = Some(source_context.digest());
            let (hdr, _) = wrap::parse(blob)?;
            ctx.key(&hdr.key_id);
            ctx.version(hdr.key_version);
            let src = data.resolve(&hdr.key_id)?;
            authorize(ctx, src, actions::RE_ENCRYPT_FROM)?;
            check_usable(src)?;
            let dst = match destination_key {
                Some(k) => data.resolve(k)?,
                None => src,
            };
            ctx.keys.push((dst.key_id.clone(), Some(dst.primary_version)));
            authorize(ctx, dst, actions::RE_ENCRYPT_TO)?;
            check_usable(dst)?;
            let plain = Self::open(root, src, blob, source_context)?;
            let dctx = destination_context.unwrap_or(source_context);
            let ciphertext = Self::seal(root, dst, dst.primary_version, &plain, dctx)?;
            Ok(ReEncryptResponse {
                source_key_id: src.key_id.clone(),
                source_key_version: hdr.key_version,
                key_id: dst.key_id.clone(),
                key_version: dst.primary_version,
                ciphertext,
            })
        })
    }

    /// GetKeyPolicy.
    pub fn op_get_policy(&self, principal: &str, key: &str) -> Result<KeyPolicy, KmsError> {
        self.read_op(principal, "GetKeyPolicy", Use::Existing(Some(key)), |ctx, data, _| {
            let rec = data.resolve(key)?;
            ctx.key(&rec.key_id);
            authorize(ctx, rec, actions::GET_KEY_POLICY)?;
            Ok(match rec.manager {
                KeyManager::Service => KeyPolicy::service_default(),
                KeyManager::Customer => {
                    rec.policy.clone().unwrap_or_else(|| KeyPolicy::with_roles(&["*".into()], &["*".into()]))
                }
            })
        })
    }

    /// PutKeyPolicy.
    pub fn op_put_policy(&self, principal: &str, key: &str, policy: &KeyPolicy) -> Result<KeyPolicy, KmsError> {
        self.write_op(principal, "PutKeyPolicy", Use::Existing(Some(key)), |ctx, txn| {
            let id = Self::txn_key(ctx, txn, key, actions::PUT_KEY_POLICY)?;
            policy.validate().map_err(KmsError::InvalidRequest)?;
            if !policy.principals().iter().any(|p| policy.allows(p, actions::PUT_KEY_POLICY)) {
                return Err(KmsError::InvalidRequest(format!(
                    "the policy grants {} to nobody: the key could never be re-policied",
                    actions::PUT_KEY_POLICY
                )));
            }
            let rec = txn.data.keys.get_mut(&id).expect("resolved");
            if rec.state == KeyState::Deleted {
                return Err(KmsError::Deleted(id));
            }
            // Checked against the policy in force, so a two-step edit (first grant
            // kms:GrantSelf, then kms:Decrypt) fails at its first step.
            let grants = rec.policy.as_ref().map(|old| old.self_grants(policy, ctx.principal)).unwrap_or_default();
            if !grants.is_empty() {
                return Err(ctx.deny(KmsError::AccessDenied {
                    principal: ctx.principal.to_string(),
                    action: format!(
                        "{} (give itself {}; a key administrator cannot make itself a key user unless the current policy grants it {})",
                        actions::GRANT_SELF,
                        grants.join(", "),
                        actions::GRANT_SELF
                    ),
                    key: id,
                }));
            }
            rec.policy = Some(policy.clone());
            // A principal may have lost access: cached keys must be re-authorised.
            txn.revoked.push(key_uri(&id));
            Ok(policy.clone())
        })
    }

    /// `kms lint`: separation-of-duties findings for every customer-managed key (an
    /// operator), or for the keys whose policy the caller may read (anyone else).
    pub fn op_lint(&self, principal: &str) -> Result<Vec<KeyLint>, KmsError> {
        let everything = self.is_operator(principal);
        self.read_op(principal, "Lint", Use::Existing(None), |_, data, _| {
            Ok(data
                .keys
                .values()
                .filter(|r| r.manager == KeyManager::Customer && r.state != KeyState::Deleted)
                .filter(|r| everything || may(principal, r, actions::GET_KEY_POLICY))
                .filter_map(|r| {
                    let findings = r.policy.as_ref().map(KeyPolicy::lint).unwrap_or_default();
                    (!findings.is_empty()).then(|| KeyLint {
                        key_id: r.key_id.clone(),
                        aliases: data.aliases_of(&r.key_id),
                        findings,
                    })
                })
                .collect())
        })
    }

    /// Audit records, optionally of one key (id or alias) and since a time. An operator reads
    /// every record; anyone else the records of keys whose policy grants it `kms:ReadAudit`
    /// and of its own requests (asking for one key needs `kms:ReadAudit` on it).
    pub fn op_read_audit(
        &self,
        principal: &str,
        key: Option<&str>,
        since: Option<u64>,
    ) -> Result<Vec<AuditRecord>, KmsError> {
        let everything = self.is_operator(principal);
        self.read_op(principal, "ReadAudit", Use::Existing(key), |ctx, data, _| {
            let id = match key {
                Some(k) if k.starts_with("alias/") => Some(data.resolve_id(k)?),
                Some(k) => Some(k.to_string()),
                None => None,
            };
            if let Some(i) = &id {
                ctx.key(i);
                if !everything {
                    authorize(ctx, data.resolve(i)?, actions::READ_AUDIT)?;
                }
            }
            let readable = |r: &AuditRecord| {
                everything
                    || r.principal == principal
                    || r.key_id
                        .as_ref()
                        .and_then(|k| data.keys.get(k))
                        .is_some_and(|k| may(principal, k, actions::READ_AUDIT))
            };
            let mut recs = self.audit.read()?;
            recs.retain(|r| {
                id.as_ref().is_none_or(|i| r.key_id.as_ref() == Some(i))
                    && since.is_none_or(|s| r.time >= s)
                    && readable(r)
            });
            Ok(recs)
        })
    }

    /// Verify the audit chain (with record MACs: this service holds the root key).
    pub fn op_verify_audit(&self, principal: &str) -> Result<VerifyReport, KmsError> {
        self.load(Use::Existing(None))?;
        if !self.is_operator(principal) {
            let mut ctx = OpCtx::new(principal, "VerifyAudit");
            let e = ctx.deny(KmsError::AccessDenied {
                principal: principal.to_string(),
                action: crate::policy::account::VERIFY_AUDIT.to_string(),
                key: "the audit log (keystore operators only)".into(),
            });
            return self.finish(&ctx, Err(e));
        }
        let (report, broken) = {
            let _lock = self.lock()?;
            let (data, root) = self.load_locked(true)?;
            let report = self.audit.verify(Some(&root.derive(AUDIT_KEY_LABEL)), Some(Anchor::Keystore(&data.audit)))?;
            (report, self.audit.inspect(&data.audit)?.is_some())
        };
        // With the trail broken the KMS is closed and the verification cannot be recorded:
        // its report is what the administrator needs.
        if broken {
            return Ok(report);
        }
        let ctx = OpCtx::new(principal, "VerifyAudit");
        self.finish(&ctx, Ok(report))
    }

    /// Run `f` on the record of `key` inside a mutation after checking `action` (for
    /// sibling modules).
    pub(crate) fn crypto_seal(
        &self,
        principal: &str,
        op: &str,
        key: &str,
        plaintext: &[u8],
        context: &EncryptionContext,
    ) -> Result<EncryptResponse, KmsError> {
        if key == DEFAULT_KEY_ALIAS {
            self.ensure_default_key(Use::Create)?;
        }
        self.read_op(principal, op, Use::new_ciphertext(key), |ctx, data, root| {
            ctx.context = Some(context.digest());
            let rec = data.resolve(key)?;
            ctx.key(&rec.key_id);
            authorize(ctx, rec, actions::ENCRYPT)?;
            check_usable(rec)?;
            let version = rec.primary_version;
            ctx.version(version);
            Ok(EncryptResponse {
                key_id: rec.key_id.clone(),
                key_version: version,
                ciphertext: Self::seal(root, rec, version, plaintext, context)?,
            })
        })
    }

    /// Decrypt for a sibling module, recorded under its own operation name.
    pub(crate) fn crypto_open(
        &self,
        principal: &str,
        op: &str,
        blob: &[u8],
        context: &EncryptionContext,
    ) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let named = wrap::parse(blob).map(|(h, _)| h.key_id).ok();
        self.read_op(principal, op, Use::Existing(named.as_deref()), |ctx, data, root| {
            ctx.context = Some(context.digest());
            let (hdr, _) = wrap::parse(blob)?;
            ctx.key(&hdr.key_id);
            ctx.version(hdr.key_version);
            let rec = data.resolve(&hdr.key_id)?;
            authorize(ctx, rec, actions::DECRYPT)?;
            check_usable(rec)?;
            Self::open(root, rec, blob, context)
        })
    }

    /// Record a request of a sibling module that touches no key material (listings).
    pub(crate) fn record_only<T>(
        &self,
        principal: &str,
        op: &str,
        key: Option<&str>,
        r: Result<T, KmsError>,
    ) -> Result<T, KmsError> {
        self.record_with(principal, op, key, None, r)
    }

    /// [`Self::record_only`] with a detail for the record (what a sibling module changed).
    pub(crate) fn record_detail<T>(
        &self,
        principal: &str,
        op: &str,
        key: Option<&str>,
        detail: String,
        r: Result<T, KmsError>,
    ) -> Result<T, KmsError> {
        self.record_with(principal, op, key, Some(detail), r)
    }

    fn record_with<T>(
        &self,
        principal: &str,
        op: &str,
        key: Option<&str>,
        detail: Option<String>,
        r: Result<T, KmsError>,
    ) -> Result<T, KmsError> {
        self.load(Use::Existing(key))?;
        let mut ctx = OpCtx::new(principal, op);
        if let Some(k) = key {
            ctx.key(k);
        }
        ctx.detail = detail;
        self.finish(&ctx, r)
    }

    /// Record that `kmsd.json` generation `generation` was written, with the request's audit
    /// record (`op`, `detail`), in one keystore commit.
    #[cfg(feature = "daemon")]
    pub(crate) fn record_kmsd_generation(
        &self,
        principal: &str,
        op: &str,
        detail: String,
        generation: u64,
    ) -> Result<(), KmsError> {
        self.write_op(principal, op, Use::Existing(None), |ctx, txn| {
            ctx.detail = Some(detail);
            txn.data.kmsd_generation = Some(txn.data.kmsd_generation.unwrap_or(0).max(generation));
            Ok(())
        })
    }

    /// From one read of the keystore: the key derived from its root key under `label`, and the
    /// newest `kmsd.json` generation it records (0: none yet). The daemon asks on every request.
    #[cfg(feature = "daemon")]
    pub(crate) fn kmsd_anchor(&self, label: &[u8]) -> Result<(Zeroizing<[u8; 32]>, u64), KmsError> {
        let data = self.load(Use::Existing(None))?;
        Ok((self.root_key(&data)?.derive(label), data.kmsd_generation.unwrap_or(0)))
    }

    /// A key derived from this keystore's root key (for sibling modules' MACs).
    pub(crate) fn derived_key(&self, label: &[u8]) -> Result<Zeroizing<[u8; 32]>, KmsError> {
        let data = self.load(Use::Existing(None))?;
        Ok(self.root_key(&data)?.derive(label))
    }

    /// Does `key`'s policy allow `principal` `action`? (No record: the caller records its own
    /// operation.)
    pub(crate) fn key_policy_allows(&self, principal: &str, key: &str, action: &str) -> Result<bool, KmsError> {
        let data = self.load(Use::Existing(Some(key)))?;
        let Ok(rec) = data.resolve(key) else { return Ok(false) };
        Ok(may(principal, rec, action))
    }

    /// May `principal` see the whole keystore (every key, alias, secret and audit record)?
    /// The configured operators (daemon: `operators` in kmsd.json or `kms serve --operator`),
    /// else the owner of the keystore directory and root: they can read its files anyway.
    pub fn is_operator(&self, principal: &str) -> bool {
        if principal == SERVICE_PRINCIPAL {
            return true;
        }
        if let Some(ops) = &self.operators {
            return ops.iter().any(|o| o == principal);
        }
        use std::os::unix::fs::MetadataExt;
        let owner =
            std::fs::metadata(&self.paths.dir).map(|m| m.uid()).unwrap_or_else(|_| nix::unistd::geteuid().as_raw());
        principal == principal_of_uid(owner) || principal == principal_of_uid(0)
    }

    /// Set who may see the whole keystore ([`Self::is_operator`]).
    pub fn with_operators(mut self, operators: Vec<String>) -> LocalKms {
        self.operators = Some(operators);
        self
    }

    // ----- convenience for the acting principal -----

    /// CreateKey with an alias and description (other settings default).
    pub fn create_key(&self, alias: Option<&str>, description: &str) -> Result<KeyInfo, KmsError> {
        self.op_create_key(
            &self.principal,
            &CreateKeyParams {
                alias: alias.map(str::to_string),
                description: description.into(),
                ..Default::default()
            },
        )
    }

    /// DescribeKey.
    pub fn describe_key(&self, key: &str) -> Result<KeyInfo, KmsError> {
        self.op_describe(&self.principal, key)
    }

    /// ListKeys.
    pub fn list_keys(&self) -> Result<Vec<KeyInfo>, KmsError> {
        self.op_list_keys(&self.principal)
    }

    /// Read the keystore document (tests, diagnostics). No material is decrypted and the MAC
    /// is not checked (no root key is needed).
    pub fn read_keystore(&self) -> Result<Option<KeystoreData>, KmsError> {
        Ok(keystore::load(&self.paths)?.map(|l| l.data))
    }
}

/// Debug builds: `SQLITE_TDE_TEST_CRASH_AT=kms:STEP` aborts the process there (crash tests;
/// `committed`: keystore.json replaced, the records not yet appended to audit.log).
fn crash_point(step: &str) {
    if cfg!(debug_assertions) && std::env::var(crate::ENV_CRASH_AT).is_ok_and(|v| v.strip_prefix("kms:") == Some(step))
    {
        eprintln!("sqlite-tde: test crash injection: kms:{step}");
        std::process::abort();
    }
}

fn check_rotation_days(d: u32) -> Result<(), KmsError> {
    if !(limits::MIN_ROTATION_DAYS..=limits::MAX_ROTATION_DAYS).contains(&d) {
        return Err(KmsError::InvalidRequest(format!(
            "the rotation period must be {} to {} days (got {d})",
            limits::MIN_ROTATION_DAYS,
            limits::MAX_ROTATION_DAYS
        )));
    }
    Ok(())
}

impl KmsService for LocalKms {
    fn call(&self, req: &Request) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        self.handle(&self.principal, req)
    }
    fn endpoint(&self) -> String {
        format!("local:{}", self.paths.dir.display())
    }
}

impl Kms for LocalKms {
    fn provider(&self) -> &str {
        PROVIDER
    }

    fn generate_data_key(&self, key: &str, context: &EncryptionContext) -> Result<GeneratedDataKey, KmsError> {
        self.op_generate_data_key(&self.principal, key, context, None, true)?.into_generated()
    }

    fn newest_version(&self, key_uri: &str) -> Option<u32> {
        let id = key_uri.strip_prefix("local:")?;
        self.describe_key(id).ok().map(|k| k.primary_version)
    }

    fn resolve_key_uri(&self, key: &str) -> Result<Option<String>, KmsError> {
        let id = key.strip_prefix("local:").unwrap_or(key);
        self.describe_key(id).map(|k| Some(key_uri(&k.key_id)))
    }

    fn decrypt_data_key(
        &self,
        key_ref: &KeyRef,
        wrapped: &[u8],
        context: &EncryptionContext,
    ) -> Result<DataKey, KmsError> {
        check_provider(key_ref)?;
        self.op_decrypt(&self.principal, wrapped, context, None)?.into_data_key()
    }

    fn rewrap_data_key(
        &self,
        key_ref: &KeyRef,
        wrapped: &[u8],
        context: &EncryptionContext,
        target: Option<&str>,
    ) -> Result<(Vec<u8>, KeyRef), KmsError> {
        check_provider(key_ref)?;
        Ok(self.op_re_encrypt(&self.principal, wrapped, context, target, None)?.into_rewrapped())
    }
}

/// The database's key must be one of ours.
pub(crate) fn check_provider(key_ref: &KeyRef) -> Result<(), KmsError> {
    if key_ref.provider() != PROVIDER {
        return Err(KmsError::InvalidRequest(format!(
            "the database key is held by provider '{}', but this process uses the sqlite-tde KMS",
            key_ref.provider()
        )));
    }
    Ok(())
}

/// Key URI of a key id, as recorded in database headers.
pub fn uri_of(key_id: &str) -> String {
    key_uri(key_id)
}

//! One open file of the encrypting VFS.

use std::sync::Arc;
use std::time::Duration;

use sqlite_vfs::{
    BaseFile, DeviceCharacteristics, FileControl, FileControlOutcome, FileKind, LockLevel, OpenRequest, PragmaOutcome,
    ReadStatus, ShimFile, VfsResult,
};

use super::blockio::{EncryptedIo, WriteCache};
use super::database::{self, Database, OpenPolicy, Opened};
use super::lineage::{Registration, Reported};
use super::rotation::protocol::{to_text, RotationArgs};
use super::{TdeContext, URI_KEY_PARAM};
use crate::crypto::{DataKey, Domain, XtsCipher};
use crate::error::{set_last_open_error, Error, Result};
use crate::format::HEADER_REGION_LEN;

/// URI parameter (internal) that lets the main database be a plain SQLite file, for the
/// in-place encryption (`sqlite-tde encrypt --in-place`). Its journal and WAL cannot be
/// opened (no key yet), so such a connection cannot write SQL.
pub const URI_CONVERT_PARAM: &str = "tde_convert";
/// URI parameter (`tde_trust_format_1=1`): finish an interrupted rekey or in-place
/// encryption whose state is format 1 (not authenticated). Set by `--trust-format-1`.
pub const URI_TRUST_FORMAT_1_PARAM: &str = "tde_trust_format_1";

/// How a file's bytes are stored.
enum Storage {
    /// AES-256-XTS blocks after `data_offset` bytes.
    Encrypted { cipher: Arc<XtsCipher>, domain: Domain, data_offset: u64 },
    /// The super-journal only: a list of file names, written in the clear by design. Also a
    /// plain main database opened for in-place encryption (read only by SQLite).
    Plain,
    /// A main database whose header (and so the key) is not loaded yet: the file was empty
    /// at open (the header is created when this connection first takes a write lock, or
    /// loaded when another connection has created it meanwhile), or a rekey was in progress
    /// under another connection's lock (loaded when SQLite first locks the file). Until then
    /// reads see an empty file; nothing can be written.
    PendingMain {
        /// CMK for the header: `PRAGMA tde_key`, else the URI `key=`, else `SQLITE_TDE_KEY`,
        /// else the key of the connection that creates it (`lineage`), else the VFS default.
        key: String,
    },
}

/// A file opened through `tde`.
pub struct TdeFile {
    base: BaseFile,
    kind: FileKind,
    storage: Storage,
    /// Set for main databases and for the journal / WAL linked to one.
    db: Option<Arc<Database>>,
    /// Generation of the cipher in `storage` (see [`Database::generation`]).
    generation: u64,
    ctx: Arc<TdeContext>,
    path: String,
    scratch: Vec<u8>,
    /// SQLite's lock level on this file (main databases).
    lock: LockLevel,
    read_only: bool,
    /// Opened for in-place encryption (plain main database allowed).
    convert: bool,
    /// What this handle's own writes taught it (journal and WAL; see [`TdeFile::io_for_write`]).
    write_cache: WriteCache,
    /// The connection's lock epoch and cipher generation `write_cache` belongs to.
    cache_epoch: Option<(u64, u64)>,
    /// The key the caller named (URI `key=`, `SQLITE_TDE_KEY`, `PRAGMA tde_key`): an existing
    /// database must be under it (`pinning`).
    pinned: Option<String>,
    /// The caller trusts format 1 (unauthenticated) rotation state: [`URI_TRUST_FORMAT_1_PARAM`].
    trust_format_1: bool,
    /// The host SQLite's functions (its error log).
    api: sqlite_vfs::api::SqliteApi,
    /// This main database is its connection's origin of key inheritance (`lineage`).
    origin: Option<Registration>,
    /// Why the last attempt to load or create the header failed (`PRAGMA tde_status`).
    last_error: Option<String>,
}

/// Tell the application's error log (`sqlite3_log`, SQLITE_NOTICE) what an open finished on
/// its own: an interrupted rekey or in-place encryption, or format-1 side files renamed.
/// `PRAGMA tde_status` reports the same as `recovered`.
fn log_recovery(api: &sqlite_vfs::api::SqliteApi, path: &str, db: &Database) {
    const SQLITE_NOTICE: i32 = 27;
    if let Some(what) = db.recovered() {
        api.log(SQLITE_NOTICE, &format!("tde: {path}: the open finished an interrupted operation: {what}"));
    }
}

/// The encrypted view of `base` for `storage` (`None`: stored as is, or not yet created).
fn encrypted_io<'a>(
    storage: &'a Storage,
    base: &'a mut BaseFile,
    scratch: &'a mut Vec<u8>,
    cache: Option<&'a mut WriteCache>,
) -> Option<EncryptedIo<'a, BaseFile>> {
    match storage {
        Storage::Encrypted { cipher, domain, data_offset } => {
            Some(EncryptedIo { raw: base, cipher, domain: *domain, data_offset: *data_offset, scratch, cache })
        }
        Storage::Plain | Storage::PendingMain { .. } => None,
    }
}

impl TdeFile {
    /// The database this file belongs to, if any.
    pub fn database(&self) -> Option<&Arc<Database>> {
        self.db.as_ref()
    }

    fn io(&mut self) -> Option<EncryptedIo<'_, BaseFile>> {
        encrypted_io(&self.storage, &mut self.base, &mut self.scratch, None)
    }

    /// [`TdeFile::io`] for writes and truncations of the database, its journal or its WAL,
    /// with the knowledge kept from this handle's previous writes ([`WriteCache`]). Only this
    /// connection writes these files while it holds the locks that writing needs (RESERVED or
    /// EXCLUSIVE on the database in rollback mode; the WAL write lock, or the checkpoint lock
    /// for the database file, in the shared memory in WAL mode), and it must take such a lock
    /// again after anyone else may have written: so the cache is dropped whenever the
    /// connection's lock epoch moved, and when the data key changed (a rekey).
    fn io_for_write(&mut self) -> Option<EncryptedIo<'_, BaseFile>> {
        let epoch = match (&self.db, self.kind) {
            (Some(db), FileKind::MainDb | FileKind::Wal | FileKind::MainJournal) => {
                Some((db.lock_epoch(), self.generation))
            }
            _ => None,
        };
        if epoch != self.cache_epoch {
            self.write_cache = WriteCache::default();
            self.cache_epoch = epoch;
        }
        let cache = if epoch.is_some() { Some(&mut self.write_cache) } else { None };
        encrypted_io(&self.storage, &mut self.base, &mut self.scratch, cache)
    }

    fn adopt(&mut self, db: Database) {
        let db = Arc::new(db);
        let (generation, cipher) = db.cipher();
        self.storage = Storage::Encrypted { cipher, domain: Domain::Database, data_offset: HEADER_REGION_LEN as u64 };
        self.generation = generation;
        if let Some(origin) = &self.origin {
            origin.update(db.header().key.key_id());
        }
        self.db = Some(db);
    }

    /// `SQLITE_FCNTL_PDB`: the connection `conn` opened this main database. The first one a
    /// connection reports is its origin; a later one that is still to be created and names no
    /// key of its own (`VACUUM INTO`, `ATTACH` of a new file) takes the origin's key.
    fn report_connection(&mut self, conn: sqlite_vfs::ConnectionId) {
        let key = match (&self.storage, &self.db) {
            (Storage::PendingMain { key }, _) => key.clone(),
            (_, Some(db)) => db.header().key.key_id().to_string(),
            _ => return, // a plain file opened for in-place encryption
        };
        match self.ctx.lineage.report(conn, &key) {
            Reported::Origin(r) => self.origin = Some(r),
            Reported::Inherit(inherited) => {
                if let (Storage::PendingMain { key }, None) = (&mut self.storage, &self.pinned) {
                    *key = inherited;
                }
            }
        }
    }

    /// Leave the pending state: load the header another connection wrote (finishing an
    /// interrupted rekey if needed), or (when `create` and the file is still empty) create
    /// it. Creation only happens while SQLite holds at least RESERVED on this file, which
    /// serialises creators across processes.
    fn settle(&mut self, create: bool) -> std::result::Result<(), Error> {
        let Storage::PendingMain { key } = &self.storage else { return Ok(()) };
        let key = key.clone();
        let path = self.path.clone();
        let size = self.base.file_size()?;
        let db = if size > 0 {
            let policy = OpenPolicy { pinned: self.pinned.as_deref(), trust_format_1_state: self.trust_format_1 };
            match database::open_existing_or_wait(&self.ctx, &path, &mut self.base, self.read_only, false, policy)? {
                Opened::Ready(db) => {
                    log_recovery(&self.api, &path, &db);
                    db
                }
                Opened::Deferred => return Err(Error::RekeyInProgress { path }),
                Opened::Empty if create && !self.read_only => database::create(&self.ctx, &path, &key, &mut self.base)?,
                Opened::Empty => return Ok(()),
            }
        } else if create {
            database::create(&self.ctx, &path, &key, &mut self.base)?
        } else {
            return Ok(());
        };
        self.adopt(db);
        Ok(())
    }

    /// `PRAGMA tde_create`: create the header of a pending database now, outside a write
    /// transaction (the page size stays changeable until SQLite writes page 1).
    fn create_now(&mut self) -> std::result::Result<(), Error> {
        self.settle(false)?;
        let Storage::PendingMain { key } = &self.storage else { return Ok(()) };
        let key = key.clone();
        let path = self.path.clone();
        if let Some(db) = database::create_locked(&self.ctx, &path, &key, &mut self.base)? {
            self.adopt(db);
            Ok(())
        } else {
            self.settle(false)
        }
    }

    /// `settle`, reporting failures to SQLite (and the detailed error to this thread). The
    /// message is also kept for `PRAGMA tde_status` (`last_error`): a stock client shows only
    /// SQLite's fixed text for the result code ("authorization denied" for a key the KMS does
    /// not have, say), and this is where any client can read the reason.
    fn settle_vfs(&mut self, create: bool) -> VfsResult<()> {
        self.settle(create).map_err(|e| {
            self.last_error = Some(e.to_string());
            report(e)
        })
    }

    /// Before page I/O of a file linked to a database: the periodic header/key check (which
    /// refuses I/O once the key is revoked), and the switch to a replaced cipher.
    fn sync_key(&mut self) -> VfsResult<()> {
        // Runs before every page I/O: borrows only (no reference-count traffic).
        let Some(db) = self.db.as_deref() else { return Ok(()) };
        let base = if self.kind == FileKind::MainDb { Some(&mut self.base) } else { None };
        db.check(&self.ctx, base)?;
        let generation = db.generation();
        if generation != self.generation {
            let (g, c) = db.cipher();
            if let Storage::Encrypted { cipher, .. } = &mut self.storage {
                *cipher = c;
            }
            self.generation = g;
        }
        Ok(())
    }

    /// The main database is read by SQLite without any lock (the page-size probe right after
    /// open): re-read the header first, since a rekey may have finished since. `false`: the
    /// header is mid-rekey (a rekey is running); the caller returns an empty read.
    fn refresh_unlocked(&mut self) -> VfsResult<bool> {
        let Some(db) = self.db.clone() else { return Ok(true) };
        match db.refresh_header(&self.ctx, &mut self.base) {
            Ok(_) => Ok(true),
            Err(Error::RekeyInProgress { .. }) => Ok(false),
            Err(e) => Err(report(e)),
        }
    }

    /// SQLite just took SHARED from no lock: the header may have changed (rollback mode:
    /// rewrap or rekey by another connection since our last transaction). Finish an
    /// interrupted rekey if needed (under EXCLUSIVE, released again to SHARED).
    fn refresh_locked(&mut self) -> VfsResult<()> {
        let Some(db) = self.db.clone() else { return Ok(()) };
        for _ in 0..3 {
            match db.refresh_header(&self.ctx, &mut self.base) {
                Ok(_) => return self.sync_key(),
                Err(Error::RekeyInProgress { .. }) => {
                    if self.read_only {
                        return Err(report(Error::Config(format!(
                            "{}: a rekey was interrupted; a read-only connection cannot finish it",
                            self.path
                        ))));
                    }
                    let policy =
                        OpenPolicy { pinned: self.pinned.as_deref(), trust_format_1_state: self.trust_format_1 };
                    let done = super::rotation::recover_locked(
                        &self.ctx,
                        &self.path,
                        &mut self.base,
                        policy,
                        Duration::from_millis(100),
                    )
                    .map_err(report)?;
                    if !done {
                        return Err(report(Error::RekeyInProgress { path: self.path.clone() }));
                    }
                }
                Err(e) => return Err(report(e)),
            }
        }
        Err(report(Error::RekeyInProgress { path: self.path.clone() }))
    }

    /// `PRAGMA tde_key[=KEY]`: choose the CMK of a database this connection creates. The key
    /// of an existing database is named by its header (change it with `sqlite-tde rewrap`),
    /// so on an existing database this only reports the key in use.
    fn pragma_key(&mut self, value: Option<&str>) -> PragmaOutcome {
        if self.kind != FileKind::MainDb {
            return PragmaOutcome::NotFound;
        }
        if let Err(e) = self.settle(false) {
            return PragmaOutcome::Failed(e.to_string());
        }
        let value = value.map(|v| v.trim_matches(|c| c == '\'' || c == '"'));
        if value == Some("") {
            return PragmaOutcome::Failed("tde_key: empty key".into());
        }
        match (&mut self.storage, value) {
            (Storage::PendingMain { key }, Some(v)) => {
                *key = v.to_string();
                self.pinned = Some(v.to_string());
                if let Some(origin) = &self.origin {
                    origin.update(v);
                }
                PragmaOutcome::Handled(Some(format!("pending:{v}")))
            }
            (Storage::PendingMain { key }, None) => PragmaOutcome::Handled(Some(format!("pending:{key}"))),
            (_, value) => {
                let Some(key) = self.db.as_ref().map(|d| d.header().key) else { return PragmaOutcome::NotFound };
                if let Some(v) = value {
                    // Naming a key on an existing database pins it: under another key it is refused.
                    if let Err(e) = super::pinning::check(&self.ctx, &self.path, &key, v) {
                        return json_outcome(Err(e));
                    }
                    self.pinned = Some(v.to_string());
                }
                PragmaOutcome::Handled(Some(key.uri))
            }
        }
    }

    fn status_json(&mut self) -> String {
        if self.kind == FileKind::MainDb {
            // Show the header as it is on disk now (e.g. after a rewrap by another process).
            let _ = self.refresh_unlocked();
        }
        let cfg = self.ctx.cache.config();
        let mut v = serde_json::json!({
            "vfs": self.ctx.vfs_name,
            "file_kind": self.kind.as_str(),
            "cipher": "aes-256-xts",
            "lock": format!("{:?}", self.lock).to_ascii_lowercase(),
            "cache": self.ctx.cache.metrics(),
            "cache_config": {
                "max_entries": cfg.max_entries,
                "ttl_ms": cfg.ttl.as_millis() as u64,
                "revalidate_after_ms": cfg.revalidate_after.as_millis() as u64,
                "check_interval_ms": cfg.check_interval.as_millis() as u64,
                "kms_timeout_ms": cfg.kms_timeout.as_millis() as u64,
            },
            "cache_ttl_secs": cfg.ttl.as_secs(),
        });
        match &self.storage {
            Storage::PendingMain { key } if self.base.file_size().map(|s| s > 0).unwrap_or(false) => {
                v["state"] = "pending-load".into();
                v["pending_key"] = key.clone().into();
            }
            Storage::PendingMain { key } => {
                v["state"] = "pending-create".into();
                v["pending_key"] = key.clone().into();
            }
            Storage::Plain if self.kind == FileKind::MainDb => v["state"] = "plain".into(),
            _ => {}
        }
        if let (Some(e), None) = (&self.last_error, &self.db) {
            v["last_error"] = e.clone().into();
        }
        if let Some(db) = &self.db {
            v["state"] = "open".into();
            let h = db.header();
            v["db_uuid"] = uuid::Uuid::from_bytes(h.db_uuid).to_string().into();
            v["key"] = h.key.uri.clone().into();
            v["key_version"] = h.key.version.into();
            v["header_sequence"] = h.sequence.into();
            v["dek_created"] = h.dek_created.into();
            v["cipher_generation"] = db.generation().into();
            if let Some(op) = db.recovered() {
                v["recovered"] = op.into();
            }
            if let Some(b) = db.blocked() {
                v["state"] = "blocked".into();
                v["blocked"] = b.message.into();
            }
        }
        v.to_string()
    }

    /// The main database's `Database`, or a pragma failure. A header deferred at open (a
    /// rekey was running under another connection's lock) is loaded now, so the failure says
    /// what is going on (a rekey in progress) rather than that there is no header.
    fn main_database(&mut self, pragma: &str) -> std::result::Result<Arc<Database>, PragmaOutcome> {
        if self.kind != FileKind::MainDb {
            return Err(PragmaOutcome::NotFound);
        }
        if self.db.is_none() {
            if let Err(e) = self.settle(false) {
                return Err(json_outcome(Err(e)));
            }
        }
        self.db
            .clone()
            .ok_or_else(|| PragmaOutcome::Failed(format!("{pragma}: the database has no encryption header yet")))
    }

    fn pragma_rewrap(&mut self, value: Option<&str>) -> PragmaOutcome {
        let db = match self.main_database("tde_rewrap") {
            Ok(db) => db,
            Err(o) => return o,
        };
        // `PRAGMA tde_rewrap[=TARGET]` or `='{"key":TARGET,"busy_ms":N}'`.
        let args = match RotationArgs::parse("tde_rewrap", value) {
            Ok(a) => a,
            Err(e) => return json_outcome(Err(e)),
        };
        let r = super::rotation::rewrap::pragma(
            &self.ctx,
            &self.path,
            &mut self.base,
            &db,
            self.lock,
            self.read_only,
            &args,
        )
        .map(|r| to_text(&r));
        text_outcome(r)
    }

    fn pragma_rekey(&mut self, value: Option<&str>) -> PragmaOutcome {
        let db = match self.main_database("tde_rekey") {
            Ok(db) => db,
            Err(o) => return o,
        };
        let r = RotationArgs::parse("tde_rekey", value).and_then(|args| {
            super::rotation::rekey::pragma(&self.ctx, &self.path, &mut self.base, &db, self.lock, self.read_only, &args)
        });
        let out = text_outcome(r.map(|r| to_text(&r)));
        let _ = self.sync_key();
        out
    }

    fn pragma_encrypt(&mut self, value: Option<&str>) -> PragmaOutcome {
        if self.kind != FileKind::MainDb || !self.convert {
            return PragmaOutcome::Failed(
                "tde_encrypt_in_place: only on a connection opened for in-place encryption".into(),
            );
        }
        if !matches!(self.storage, Storage::Plain) {
            return PragmaOutcome::Failed("tde_encrypt_in_place: the database is already encrypted".into());
        }
        let r = RotationArgs::parse("tde_encrypt_in_place", value).and_then(|args| {
            super::rotation::convert::pragma(&self.ctx, &self.path, &mut self.base, self.lock, self.read_only, &args)
        });
        match r {
            Ok((result, Some(db))) => {
                self.adopt(db);
                PragmaOutcome::Handled(Some(to_text(&result)))
            }
            Ok((result, None)) => PragmaOutcome::Handled(Some(to_text(&result))),
            Err(e) => {
                let msg = e.to_string();
                set_last_open_error(e);
                PragmaOutcome::Failed(msg)
            }
        }
    }

    /// `PRAGMA tde_kms_check`: ask the KMS to unwrap this database's DEK now, bypassing the
    /// key cache (a permission check, audited by the KMS, before a plaintext export).
    fn pragma_kms_check(&mut self) -> PragmaOutcome {
        let db = match self.main_database("tde_kms_check") {
            Ok(db) => db,
            Err(o) => return o,
        };
        let h = db.header();
        let context = crate::kms::EncryptionContext::for_database(&h.db_uuid);
        let (k, w) = (h.key.clone(), h.wrapped_dek.clone());
        self.ctx.cache.note_kms_call();
        let r = database::kms_call(&self.ctx, &self.path, move |kms| kms.decrypt_data_key(&k, &w, &context)).and_then(
            |dek| {
                if crate::crypto::verified_cipher(&dek, &h.db_uuid, &h.kcv).is_some() {
                    Ok(serde_json::json!({"status": "ok", "key_uri": h.key.uri, "key_version": h.key.version}))
                } else {
                    Err(Error::WrongKey { path: self.path.clone() })
                }
            },
        );
        json_outcome(r)
    }

    /// `PRAGMA tde_check`: run the header/key check now (instead of waiting for the check
    /// interval) and report the status.
    fn pragma_check(&mut self) -> PragmaOutcome {
        if let Some(db) = &self.db {
            db.check_soon();
        }
        match self.sync_key() {
            Ok(()) => PragmaOutcome::Handled(Some(self.status_json())),
            Err(e) => PragmaOutcome::Failed(e.message),
        }
    }
}

fn report(e: Error) -> sqlite_vfs::VfsError {
    let v = e.to_vfs();
    set_last_open_error(e);
    v
}

fn json_outcome(r: Result<serde_json::Value>) -> PragmaOutcome {
    text_outcome(r.map(|v| v.to_string()))
}

/// A pragma's result text, or its failure (also kept for `take_last_open_error`).
fn text_outcome(r: Result<String>) -> PragmaOutcome {
    match r {
        Ok(v) => PragmaOutcome::Handled(Some(v)),
        Err(e) => {
            let msg = e.to_string();
            set_last_open_error(e);
            PragmaOutcome::Failed(msg)
        }
    }
}

/// Open hook: classify, link, verify keys, and build the file.
pub fn open(
    ctx: &Arc<TdeContext>,
    req: &OpenRequest<'_>,
    mut base: BaseFile,
    main_db: Option<&TdeFile>,
) -> Result<TdeFile> {
    let path = req.path.unwrap_or("(anonymous)").to_string();
    let read_only = req.flags.read_only();
    let mut convert = false;
    let mut pinned = None;
    let mut trust_format_1 = false;
    let (storage, db) = match req.kind {
        FileKind::MainDb => {
            convert = req.uri_parameter(URI_CONVERT_PARAM).is_some();
            trust_format_1 = req.uri_parameter(URI_TRUST_FORMAT_1_PARAM).is_some_and(|v| v == "1");
            pinned = req.uri_parameter(URI_KEY_PARAM).or_else(|| ctx.named_key.clone());
            let pending = || Storage::PendingMain { key: pinned.clone().unwrap_or_else(|| ctx.default_key.clone()) };
            if base.file_size()? == 0 {
                (pending(), None)
            } else if convert && super::rotation::convert::is_plain_sqlite(&mut base)? {
                (Storage::Plain, None)
            } else {
                let policy = OpenPolicy { pinned: pinned.as_deref(), trust_format_1_state: trust_format_1 };
                match database::open_existing_or_wait(ctx, &path, &mut base, read_only, true, policy)? {
                    Opened::Ready(db) => {
                        log_recovery(&req.api(), &path, &db);
                        let db = Arc::new(db);
                        let (_, cipher) = db.cipher();
                        (
                            Storage::Encrypted {
                                cipher,
                                domain: Domain::Database,
                                data_offset: HEADER_REGION_LEN as u64,
                            },
                            Some(db),
                        )
                    }
                    Opened::Deferred | Opened::Empty => (pending(), None),
                }
            }
        }
        FileKind::MainJournal | FileKind::Wal => {
            // Journals must be readable by any connection to the database (hot-journal and WAL
            // recovery), so they use the database's DEK. Without a link we cannot know the key:
            // refuse rather than write anything unencrypted.
            let db = main_db.and_then(|m| m.db.clone()).ok_or_else(|| {
                Error::Vfs(super::misuse(format!(
                    "{path}: cannot link this {} to an encrypted main database",
                    req.kind.as_str()
                )))
            })?;
            if let Some(b) = db.blocked() {
                return Err(Error::Vfs(b));
            }
            let domain = if req.kind == FileKind::Wal { Domain::Wal } else { Domain::Journal };
            let (_, cipher) = db.cipher();
            (Storage::Encrypted { cipher, domain, data_offset: 0 }, Some(db))
        }
        FileKind::SuperJournal => (Storage::Plain, None),
        FileKind::SubJournal | FileKind::TempDb | FileKind::TempJournal | FileKind::TransientDb => {
            // Never outlives this connection: a random key that is never stored.
            let key = DataKey::generate().map_err(|e| Error::Config(e.to_string()))?;
            (
                Storage::Encrypted {
                    cipher: Arc::new(XtsCipher::new(&key)),
                    domain: Domain::Temporary,
                    data_offset: 0,
                },
                None,
            )
        }
    };
    let generation = db.as_ref().map(|d| d.generation()).unwrap_or(0);
    Ok(TdeFile {
        base,
        kind: req.kind,
        storage,
        db,
        generation,
        ctx: ctx.clone(),
        path,
        scratch: Vec::new(),
        lock: LockLevel::None,
        read_only,
        convert,
        write_cache: WriteCache::default(),
        cache_epoch: None,
        pinned,
        trust_format_1,
        api: req.api(),
        origin: None,
        last_error: None,
    })
}

impl ShimFile for TdeFile {
    fn base(&mut self) -> &mut BaseFile {
        &mut self.base
    }

    /// With `forget_on_last_close`, the main database's handle gives up its references to the
    /// cipher (its journal and WAL handles closed before it) and drops the cached key if no
    /// other connection holds it.
    fn close(&mut self) -> VfsResult<()> {
        if self.kind == FileKind::MainDb && self.ctx.cache.config().forget_on_last_close {
            if let Some(db) = self.db.take() {
                let key = db.cache_key();
                self.storage = Storage::Plain;
                drop(db);
                self.ctx.cache.forget_if_unused(&key);
            }
        }
        Ok(())
    }

    fn read(&mut self, buf: &mut [u8], offset: u64) -> VfsResult<ReadStatus> {
        if let Storage::PendingMain { .. } = self.storage {
            if self.lock > LockLevel::None {
                self.settle_vfs(false)?;
            }
            if let Storage::PendingMain { .. } = self.storage {
                buf.fill(0);
                return Ok(ReadStatus::Short);
            }
        }
        if self.kind == FileKind::MainDb && self.lock == LockLevel::None && !self.refresh_unlocked()? {
            buf.fill(0);
            return Ok(ReadStatus::Short);
        }
        self.sync_key()?;
        match self.io() {
            Some(mut io) => io.read(buf, offset),
            None => self.base.read(buf, offset),
        }
    }

    fn write(&mut self, buf: &[u8], offset: u64) -> VfsResult<()> {
        self.settle_vfs(true)?;
        self.sync_key()?;
        match self.io_for_write() {
            Some(mut io) => io.write(buf, offset),
            None => {
                if self.kind == FileKind::MainDb && self.convert {
                    return Err(sqlite_vfs::VfsError::new(
                        sqlite_vfs::ErrorCode::ReadOnly,
                        "a connection opened for in-place encryption does not write SQL",
                    ));
                }
                self.base.write(buf, offset)
            }
        }
    }

    fn truncate(&mut self, size: u64) -> VfsResult<()> {
        self.settle_vfs(size > 0)?;
        if let Storage::PendingMain { .. } = self.storage {
            return Ok(()); // still empty: truncating to 0 changes nothing
        }
        self.sync_key()?;
        match self.io_for_write() {
            Some(mut io) => io.truncate(size),
            None => self.base.truncate(size),
        }
    }

    fn file_size(&mut self) -> VfsResult<u64> {
        if let Storage::PendingMain { .. } = self.storage {
            if self.lock > LockLevel::None || self.base.file_size()? == 0 {
                self.settle_vfs(false)?;
            }
            if let Storage::PendingMain { .. } = self.storage {
                return Ok(0);
            }
        }
        match self.io() {
            Some(mut io) => io.logical_size(),
            None => self.base.file_size(),
        }
    }

    fn after_shm_lock(&mut self) {
        // WAL mode: writing the WAL needs its write lock, taken here (see `io_for_write`).
        if let Some(db) = &self.db {
            db.bump_lock_epoch();
        }
    }

    fn after_lock_change(&mut self, level: LockLevel) -> VfsResult<()> {
        // Rollback mode: writing the journal or the database needs RESERVED (see
        // `io_for_write`). Only a change that starts or ends an unbroken hold of RESERVED or
        // above lets another connection write in between; RESERVED -> PENDING -> EXCLUSIVE
        // keeps what this connection's writes taught its handles (no fstat and read-back of
        // the journal's edge block after the upgrade).
        let previous = self.lock;
        if previous < LockLevel::Reserved || level < LockLevel::Reserved {
            if let Some(db) = &self.db {
                db.bump_lock_epoch();
            }
        }
        self.lock = level;
        if self.kind != FileKind::MainDb || level <= previous {
            return Ok(());
        }
        let r = if let Storage::PendingMain { .. } = self.storage {
            // A writer creates the header as soon as it holds RESERVED, before SQLite opens the
            // journal or WAL, which must find the database's key.
            self.settle_vfs(level >= LockLevel::Reserved)
        } else if previous == LockLevel::None && self.db.is_some() {
            self.refresh_locked()
        } else {
            Ok(())
        };
        if r.is_err() {
            // The binding releases the new lock again.
            self.lock = previous;
        }
        r
    }

    /// On a powersafe file system (a torn write damages only the bytes written) the damage of
    /// a torn tde write stays inside the 16-byte blocks it rewrites, and a 16-byte block never
    /// crosses a 512-byte boundary: so 512-byte sectors describe it exactly, and SQLite pads
    /// journal headers and WAL commits to 512 bytes, as it does for plain files (the base's
    /// 4096 would triple each small transaction's journal). Below a file system that tears
    /// whole sectors the base's sector size stands.
    fn sector_size(&mut self) -> u32 {
        let base = self.base.sector_size();
        let encrypted = !(matches!(self.storage, Storage::Plain) && self.kind != FileKind::MainDb);
        if encrypted && self.base.device_characteristics().contains(DeviceCharacteristics::POWERSAFE_OVERWRITE) {
            base.min(512)
        } else {
            base
        }
    }

    fn device_characteristics(&mut self) -> DeviceCharacteristics {
        let base = self.base.device_characteristics();
        if matches!(self.storage, Storage::Plain) && self.kind != FileKind::MainDb {
            return base;
        }
        // Edge blocks of a write are re-encrypted whole (read-modify-write of up to 15 bytes
        // around the requested range), so "a crash changes only the bytes written" no longer
        // holds below 16-byte granularity, and multi-sector atomic writes are not ours to
        // promise. SQLite then pads and aligns its journals to the sector size.
        base.without(
            DeviceCharacteristics::POWERSAFE_OVERWRITE
                | DeviceCharacteristics::ATOMIC_ANY
                | DeviceCharacteristics::SAFE_APPEND,
        )
    }

    fn file_control(&mut self, op: FileControl) -> FileControlOutcome {
        match op {
            // Both make the base VFS grow the raw file to sizes computed in logical bytes,
            // which would desynchronise the length encoding; they are only hints.
            FileControl::SizeHint(_) | FileControl::ChunkSize(_) => FileControlOutcome::NotFound,
            FileControl::Connection(conn) => {
                if self.kind == FileKind::MainDb {
                    self.report_connection(conn);
                }
                FileControlOutcome::Forward
            }
            _ => FileControlOutcome::Forward,
        }
    }

    fn pragma(&mut self, name: &str, value: Option<&str>) -> PragmaOutcome {
        match name.to_ascii_lowercase().as_str() {
            "tde_status" => PragmaOutcome::Handled(Some(self.status_json())),
            "tde_check" => self.pragma_check(),
            "tde_key" => self.pragma_key(value),
            "tde_create" => match self.create_now() {
                Ok(()) => self.pragma_key(None),
                Err(e) => {
                    let msg = e.to_string();
                    set_last_open_error(e);
                    PragmaOutcome::Failed(msg)
                }
            },
            "tde_rewrap" => self.pragma_rewrap(value),
            "tde_rekey" => self.pragma_rekey(value),
            "tde_kms_check" => self.pragma_kms_check(),
            "tde_encrypt_in_place" => self.pragma_encrypt(value),
            n if n.starts_with("tde_") => PragmaOutcome::Failed(format!("unknown pragma {n}")),
            _ => PragmaOutcome::NotFound,
        }
    }
}

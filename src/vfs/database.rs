//! Per-database state behind a main-db handle: the header, and the prepared cipher its DEK
//! unwraps to. Opening verifies the key before SQLite performs any I/O, so a wrong key can
//! never trigger hot-journal or WAL recovery.
//!
//! The header can change under an open connection (another connection or process rewraps or
//! rekeys the database). Every change is made under a lock that excludes this connection's
//! use of the affected state (see docs/ARCHITECTURE.md, "Key rotation"); the connection
//! notices it by re-reading the header region, through its own handle:
//!
//! - whenever SQLite takes SHARED from no lock (rollback mode: every transaction);
//! - for reads SQLite makes without any lock (the page-size probe at open);
//! - at most every `check_interval` on page I/O, together with the key-state revalidation
//!   (WAL mode, where SHARED is held for the connection's life);
//! - on `PRAGMA tde_status`.
//!
//! A changed header with the same DEK (rewrap) only replaces the header copy; a new DEK
//! (rekey) replaces the cipher, which the journal and WAL handles pick up through
//! [`Database::generation`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sqlite_vfs::{BaseFile, ErrorCode, LockLevel, ReadStatus, SyncFlags, VfsError};

use super::TdeContext;
use crate::crypto::{
    kcv_matches, new_cipher, random_array, scrub_stack, verified_cipher, with_scrubbed_stack, Domain, MetaKey,
    XtsCipher, KCV_LEN,
};
use crate::error::{Error, Result};
use crate::format::{
    authenticate, choose_slot, legacy_side_path, side_path, Header, HeaderError, KeyRef, SideFile, FORMAT_VERSION,
    HEADER_REGION_LEN, SLOT_LEN,
};
use crate::keycache::{is_transient, CacheKey};
use crate::kms::{EncryptionContext, Kms, KmsError};

/// State shared by a main database handle and its journal / WAL handles.
pub struct Database {
    pub path: String,
    state: Mutex<DbState>,
    generation: AtomicU64,
    /// Milliseconds since `epoch_instant()` at which the next key/header check is due.
    next_check_ms: AtomicU64,
    /// The interrupted operation this connection's open finished, if any (`rekey`,
    /// `in-place encryption`), for `PRAGMA tde_status`.
    recovered: Mutex<Option<&'static str>>,
    /// Whether `DbState::blocked` may be set: lets every page I/O skip the state lock in the
    /// common case. Written under the state lock, with it.
    maybe_blocked: AtomicBool,
    /// Moves whenever this connection takes a lock on the database (file lock or shared-memory
    /// lock): the journal and WAL handles drop what they know about their files then.
    lock_epoch: AtomicU64,
}

/// The mutable part of a [`Database`].
pub struct DbState {
    /// Newest valid header slot.
    pub header: Header,
    /// Index of the slot `header` came from (0 = A, 1 = B).
    pub slot: usize,
    /// The raw header region as last read (change detection).
    pub region: Vec<u8>,
    /// Cipher of the header's DEK.
    pub cipher: Arc<XtsCipher>,
    /// Set while page I/O must fail: the key was revoked (Auth), or a rekey of this
    /// connection was interrupted and the file is between two keys (Busy).
    pub blocked: Option<VfsError>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database").field("path", &self.path).finish_non_exhaustive()
    }
}

fn epoch_instant() -> Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *START.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch_instant().elapsed().as_millis() as u64
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Database {
    pub(crate) fn new(path: &str, header: Header, slot: usize, region: Vec<u8>, cipher: Arc<XtsCipher>) -> Database {
        Database {
            path: path.to_string(),
            state: Mutex::new(DbState { header, slot, region, cipher, blocked: None }),
            generation: AtomicU64::new(1),
            next_check_ms: AtomicU64::new(0),
            recovered: Mutex::new(None),
            maybe_blocked: AtomicBool::new(false),
            lock_epoch: AtomicU64::new(0),
        }
    }

    /// The interrupted operation the open of this connection finished, if any.
    pub fn recovered(&self) -> Option<&'static str> {
        *self.recovered.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lock the mutable state.
    pub fn state(&self) -> MutexGuard<'_, DbState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of the current header.
    pub fn header(&self) -> Header {
        self.state().header.clone()
    }

    /// Changes whenever the cipher is replaced (rekey).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The current cipher and its generation.
    pub fn cipher(&self) -> (u64, Arc<XtsCipher>) {
        let st = self.state();
        (self.generation(), st.cipher.clone())
    }

    /// The cache key of the current header's wrapped DEK.
    pub fn cache_key(&self) -> CacheKey {
        cache_key_of(&self.state().header)
    }

    /// Replace header and cipher (end of a rekey run by this connection).
    pub(crate) fn replace(&self, header: Header, slot: usize, region: Vec<u8>, cipher: Arc<XtsCipher>) {
        let mut st = self.state();
        st.header = header;
        st.slot = slot;
        st.region = region;
        st.cipher = cipher;
        st.blocked = None;
        self.maybe_blocked.store(false, Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Refuse page I/O until the connection is closed (or the state is replaced).
    pub(crate) fn block(&self, e: VfsError) {
        let mut st = self.state();
        st.blocked = Some(e);
        self.maybe_blocked.store(true, Ordering::Release);
    }

    /// The connection's lock epoch (see the field).
    pub fn lock_epoch(&self) -> u64 {
        self.lock_epoch.load(Ordering::Acquire)
    }

    /// This connection took a lock: files may have been changed by others since.
    pub fn bump_lock_epoch(&self) {
        self.lock_epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// The error page I/O must fail with, if any.
    pub fn blocked(&self) -> Option<VfsError> {
        if !self.maybe_blocked.load(Ordering::Acquire) {
            return None;
        }
        self.state().blocked.clone()
    }

    fn schedule_check(&self, after: Duration) {
        self.next_check_ms.store(now_ms() + after.as_millis() as u64, Ordering::Relaxed);
    }

    /// Is the periodic check due? (One clock read and an atomic load.)
    pub fn check_due(&self) -> bool {
        now_ms() >= self.next_check_ms.load(Ordering::Relaxed)
    }

    /// Force the next I/O to run the check.
    pub fn check_soon(&self) {
        self.next_check_ms.store(0, Ordering::Relaxed);
    }

    /// Re-read the header region through `base` and adopt a changed header. A header that
    /// announces a rekey in progress is not adopted here: `Err(RekeyInProgress)` tells the
    /// caller to recover (under EXCLUSIVE) or to wait.
    pub fn refresh_header(&self, ctx: &TdeContext, base: &mut BaseFile) -> Result<bool> {
        if self.header_unchanged(base)? {
            return Ok(false);
        }
        let region = read_region(base)?;
        {
            let st = self.state();
            if st.region == region {
                return Ok(false);
            }
        }
        let (header, slot) =
            choose_slot(&region).map_err(|source| Error::Header { path: self.path.clone(), source })?;
        let current = self.header();
        if header.db_uuid != current.db_uuid {
            return Err(Error::Header {
                path: self.path.clone(),
                source: HeaderError::Corrupt("the database file was replaced by another database while open".into()),
            });
        }
        if header.rekey.is_some() {
            return Err(Error::RekeyInProgress { path: self.path.clone() });
        }
        if header == current {
            // Only the other slot changed (e.g. the second write of a rewrap): same state.
            let mut st = self.state();
            st.region = region;
            st.slot = slot;
            return Ok(false);
        }
        if header.format < current.format {
            return Err(Error::Header {
                path: self.path.clone(),
                source: HeaderError::Corrupt(
                    "the header went back to format 1 while open (a downgrade: tampering)".into(),
                ),
            });
        }
        if kcv_matches(&header.kcv, &current.kcv) {
            // Same DEK, rewrapped: keep the cipher (after checking the new slot was written
            // by a holder of it); make the new wrapped form a cache alias of the old one (the
            // next revalidation asks the KMS about the new one).
            let cipher = self.state().cipher.clone();
            authenticated(&self.path, &region, slot, cipher.meta())?;
            ctx.cache.alias(&cache_key_of(&current), cache_key_of(&header), &header.key.uri, header.key.version);
            let mut st = self.state();
            st.header = header;
            st.slot = slot;
            st.region = region;
            return Ok(true);
        }
        // A new DEK (rekey finished by another connection): unwrap and verify it.
        let cipher = unlock(ctx, &self.path, &header)?;
        authenticated(&self.path, &region, slot, cipher.meta())?;
        verify_content_key(&self.path, base, &cipher)?;
        self.replace(header, slot, region, cipher);
        Ok(true)
    }

    /// Cheap test run at every SHARED lock (rollback mode takes one per transaction): the first
    /// bytes (magic, flags, sequence, database UUID) of the slot *not* holding the newest
    /// header are as last seen. Every header write goes to the slot not holding the newest
    /// header, with a higher sequence number, so the first write after our last look always
    /// changes exactly these bytes; anything unexpected goes to the full comparison.
    fn header_unchanged(&self, base: &mut BaseFile) -> Result<bool> {
        let st = self.state();
        let at = (1 - st.slot) * SLOT_LEN;
        let mut probe = [0u8; SLOT_PROBE_LEN];
        Ok(base.read(&mut probe, at as u64)? == ReadStatus::Full
            && st.region.get(at..at + SLOT_PROBE_LEN) == Some(&probe[..]))
    }

    /// The periodic check: re-read the header (when `base` is the main-db handle) and ask the
    /// key cache whether the key may still be used (which revalidates with the KMS when
    /// due). Sets or clears the revocation block. Cheap when not due.
    pub fn check(&self, ctx: &TdeContext, base: Option<&mut BaseFile>) -> std::result::Result<(), VfsError> {
        if !self.check_due() {
            return match self.blocked() {
                Some(e) => Err(e),
                None => Ok(()),
            };
        }
        let interval = ctx.cache.config().check_interval;
        self.schedule_check(interval);
        if let Some(base) = base {
            match self.refresh_header(ctx, base) {
                Ok(_) => {}
                Err(Error::RekeyInProgress { .. }) => {} // only visible while unlocked; SQLite's next lock handles it
                Err(e) if key_refusal(&e) => return Err(self.revoke(e)),
                Err(e) => return Err(e.to_vfs()),
            }
        }
        let header = self.header();
        if let Some(e) = self.state().blocked.clone() {
            if e.code == ErrorCode::Busy {
                return Err(e); // an interrupted rekey of this connection: no key to check
            }
        }
        match unlock(ctx, &self.path, &header) {
            Ok(_) => {
                let mut st = self.state();
                if st.blocked.as_ref().is_some_and(|b| b.code != ErrorCode::Busy) {
                    st.blocked = None;
                    self.maybe_blocked.store(false, Ordering::Release);
                }
                Ok(())
            }
            Err(e) => {
                // A refusal, or an outage past the TTL. A journal/WAL handle cannot re-read
                // the header, which may be stale (rewrapped meanwhile): recheck soon from the
                // main-db handle.
                self.check_soon();
                Err(self.revoke(e))
            }
        }
    }

    fn revoke(&self, e: Error) -> VfsError {
        let code = match &e {
            Error::Kms { source: KmsError::Unavailable(_) | KmsError::Keystore(_), .. } => ErrorCode::Auth,
            other => other.vfs_code(),
        };
        let v = VfsError::new(
            code,
            format!("{e} (page I/O refused: the data key may no longer be used; see PRAGMA tde_status)"),
        );
        {
            let mut st = self.state();
            st.blocked = Some(v.clone());
            self.maybe_blocked.store(true, Ordering::Release);
        }
        crate::error::set_last_open_error(e);
        v
    }
}

/// Check the MAC of header slot `slot` under the metadata key of the DEK it names (see
/// `format::authenticate`). `Ok(false)`: a format 1 slot, which has none.
pub fn authenticated(path: &str, region: &[u8], slot: usize, meta: &MetaKey) -> Result<bool> {
    authenticate(region, slot, meta).map_err(|source| Error::Header { path: path.to_string(), source })
}

/// Does this error say the key may not be used (as opposed to an I/O or format problem)?
fn key_refusal(e: &Error) -> bool {
    matches!(e, Error::Kms { .. } | Error::WrongKey { .. })
}

/// Cache key of a header's wrapped DEK.
pub fn cache_key_of(h: &Header) -> CacheKey {
    CacheKey::new(h.db_uuid, &h.wrapped_dek)
}

/// Read the header region through the handle SQLite opened (never a second descriptor:
/// closing one would drop this process's POSIX locks on the file).
pub fn read_region(base: &mut BaseFile) -> Result<Vec<u8>> {
    let size = base.file_size()?;
    let want = (size as usize).min(HEADER_REGION_LEN);
    let mut region = vec![0u8; want];
    if want > 0 {
        // The file size said these bytes exist: a short read here is an I/O failure below us
        // (a file truncated under our feet, a faulty disk), never zeros to parse as a header.
        if base.read(&mut region, 0)? == ReadStatus::Short {
            return Err(Error::Vfs(VfsError::new(
                ErrorCode::Read,
                format!("short read of the {want}-byte header region of a {size}-byte file"),
            )));
        }
    }
    Ok(region)
}

/// Run one KMS call on a helper thread and wait at most the configured timeout, so an
/// unreachable remote KMS makes an open fail ("KMS unavailable") instead of hanging. A call
/// that answers late is dropped (a late data key is wiped by its destructor).
pub fn kms_call<T, F>(ctx: &TdeContext, path: &str, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(&dyn Kms) -> std::result::Result<T, KmsError> + Send + 'static,
{
    let timeout = ctx.cache.config().kms_timeout;
    let kms = ctx.kms.clone();
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let spawned = std::thread::Builder::new().name("tde-kms-call".into()).spawn(move || {
        let r = f(&*kms);
        // This thread's stack is kept for reuse by the allocator after it ends: no copy of a
        // data key may stay in it.
        scrub_stack();
        let _ = tx.send(r);
    });
    if let Err(e) = spawned {
        return Err(Error::Kms {
            path: path.to_string(),
            source: KmsError::Unavailable(format!("cannot start a KMS call: {e}")),
        });
    }
    match rx.recv_timeout(timeout) {
        Ok(r) => r.map_err(|source| Error::Kms { path: path.to_string(), source }),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(Error::Kms {
            path: path.to_string(),
            source: KmsError::Unavailable(format!("no answer from the KMS within {} ms", timeout.as_millis())),
        }),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(Error::Kms {
            path: path.to_string(),
            source: KmsError::Unavailable("the KMS call failed without an answer".into()),
        }),
    }
}

/// Unwrap (through the key cache) and verify one wrapped DEK of database `db_uuid`.
pub fn unwrap_key(
    ctx: &TdeContext,
    path: &str,
    db_uuid: &[u8; 16],
    key: &KeyRef,
    wrapped: &[u8],
    kcv: &[u8; KCV_LEN],
) -> Result<Arc<XtsCipher>> {
    let cache_key = CacheKey::new(*db_uuid, wrapped);
    ctx.cache.get_or_unwrap_versioned(cache_key, &key.uri, key.version, || {
        // The unwrap, the key check and the key expansion leave key copies in their frames
        // (a cache hit handles no key material and skips this).
        with_scrubbed_stack(|| {
            let context = EncryptionContext::for_database(db_uuid);
            let (k, w) = (key.clone(), wrapped.to_vec());
            let dek = kms_call(ctx, path, move |kms| kms.decrypt_data_key(&k, &w, &context))?;
            verified_cipher(&dek, db_uuid, kcv).ok_or_else(|| Error::WrongKey { path: path.to_string() })
        })
    })
}

/// Unwrap and verify the DEK of `header` (which must not be mid-rekey), through the cache.
pub fn unlock(ctx: &TdeContext, path: &str, header: &Header) -> Result<Arc<XtsCipher>> {
    if header.rekey.is_some() {
        return Err(Error::RekeyInProgress { path: path.to_string() });
    }
    unwrap_key(ctx, path, &header.db_uuid, &header.key, &header.wrapped_dek, &header.kcv)
}

/// What the caller of an open decided about trusting the file.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenPolicy<'a> {
    /// The key the caller named (`key=`, `PRAGMA tde_key`, ...): a database under another
    /// CMK is refused before anything acts on its header.
    pub pinned: Option<&'a str>,
    /// Finish an interrupted rekey or in-place encryption whose state is format 1 (not
    /// authenticated). Only on an explicit request (`--trust-format-1`): anyone who can
    /// write the file can forge such a state.
    pub trust_format_1_state: bool,
}

/// Outcome of opening an existing file (short-lived: unpacked at once by the caller).
#[allow(clippy::large_enum_variant)]
pub enum Opened {
    /// Ready: key verified.
    Ready(Database),
    /// A rekey (or in-place encryption) is in progress and someone else holds the lock (it
    /// may be running right now): load the header when SQLite first locks the file.
    Deferred,
    /// The header's creation was interrupted (power loss before it was durable) and nothing
    /// was ever committed: the file is a new, empty database again (truncated to 0 bytes
    /// unless opened read-only).
    Empty,
}

/// Bytes of each header slot compared by [`Database::header_unchanged`]: through the database
/// UUID (docs/FORMAT.md).
const SLOT_PROBE_LEN: usize = 48;

/// How long an open waits for the lock it needs to finish an interrupted rekey before
/// deferring to SQLite's own lock (and busy handler).
const RECOVERY_LOCK_WAIT: Duration = Duration::from_millis(200);

/// Open an existing encrypted database file. An interrupted rekey or in-place encryption is
/// finished first (under EXCLUSIVE, taken through `base`) unless `may_defer` and the lock is
/// busy.
pub fn open_existing(
    ctx: &TdeContext,
    path: &str,
    base: &mut BaseFile,
    read_only: bool,
    may_defer: bool,
    policy: OpenPolicy<'_>,
) -> Result<Opened> {
    let mut attempts = 0;
    let mut recovered = None;
    loop {
        attempts += 1;
        let region = read_region(base)?;
        if super::rotation::convert::is_converting(&region) {
            recovered = Some("in-place encryption");
            if read_only {
                return Err(Error::Config(format!(
                    "{path}: an in-place encryption was interrupted; open it read-write (or run `sqlite-tde encrypt --in-place --resume {path}`) to finish it"
                )));
            }
            match super::rotation::recover_locked(ctx, path, base, policy, RECOVERY_LOCK_WAIT)? {
                true => continue,
                false if may_defer => return Ok(Opened::Deferred),
                false => return Err(Error::RekeyInProgress { path: path.to_string() }),
            }
        }
        let (header, slot) = match choose_slot(&region) {
            Ok(x) => x,
            Err(source) => {
                // Power loss while an in-place encryption wrote the header region: its state
                // file says what to write.
                if !matches!(source, HeaderError::PlainSqlite)
                    && !read_only
                    && super::rotation::convert::state_file_valid(path)
                {
                    recovered = Some("in-place encryption");
                    match super::rotation::recover_locked(ctx, path, base, policy, RECOVERY_LOCK_WAIT)? {
                        true if attempts < 3 => continue,
                        true => {}
                        false if may_defer => return Ok(Opened::Deferred),
                        false => return Err(Error::RekeyInProgress { path: path.to_string() }),
                    }
                }
                return Err(Error::Header { path: path.to_string(), source });
            }
        };
        // Before anything acts on the header (recovery, unwrap): a database under another key
        // than the one the caller named is refused as it is.
        if let Some(k) = policy.pinned {
            super::pinning::check(ctx, path, &header.key, k)?;
        }
        if header.rekey.is_some() {
            if header.format < FORMAT_VERSION && !policy.trust_format_1_state {
                return Err(Error::Header { path: path.to_string(), source: HeaderError::UnauthenticatedRekey });
            }
            if read_only {
                return Err(Error::Config(format!(
                    "{path}: a rekey was interrupted; a read-only connection cannot finish it: open it read-write once, or run `sqlite-tde rekey --resume {path}`"
                )));
            }
            recovered = Some("rekey");
            match super::rotation::recover_locked(ctx, path, base, policy, RECOVERY_LOCK_WAIT)? {
                true => continue,
                false if may_defer => return Ok(Opened::Deferred),
                false => return Err(Error::RekeyInProgress { path: path.to_string() }),
            }
        }
        let cipher = unlock(ctx, path, &header)?;
        // Nothing of the slot was acted on yet (the unwrap only read its key reference).
        authenticated(path, &region, slot, cipher.meta())?;
        match verify_content_key(path, base, &cipher) {
            Ok(()) => {
                // Before SQLite looks for a hot journal or WAL, so it finds a format-1 one.
                if !super::sidefiles::adopt_legacy(path)?.is_empty() && recovered.is_none() {
                    recovered = Some("side files renamed from SQLite's names (format 1)");
                }
                let db = Database::new(path, header, slot, region, cipher);
                // The key was verified just now: the first periodic check is one interval away.
                db.schedule_check(ctx.cache.config().check_interval);
                *db.recovered.lock().unwrap_or_else(|p| p.into_inner()) = recovered;
                return Ok(Opened::Ready(db));
            }
            // Read without a lock: a rekey may have rewritten the header meanwhile. Retry
            // with the newer header before calling the key wrong.
            Err(e) if attempts < 3 && read_region(base)? != region => {
                let _ = e;
                continue;
            }
            Err(e) => return Err(e),
        }
    }
}

const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";
const JOURNAL_MAGIC: [u8; 8] = [0xd9, 0xd5, 0x05, 0xf9, 0x20, 0xa1, 0x63, 0xd7];

/// The key-check value proves the DEK matches the header; this proves the header matches the
/// pages (a header restored from, or swapped with, another database has a consistent but
/// wrong DEK). Page 1 must decrypt to SQLite's magic. A database whose page 1 was never
/// completely written (power loss during its first transaction) is accepted when its hot
/// journal or WAL decrypts to a valid magic instead, so SQLite can recover it. Runs before
/// SQLite reads anything, so a wrong key never reaches recovery.
pub fn verify_content_key(path: &str, base: &mut BaseFile, cipher: &XtsCipher) -> Result<()> {
    let size = base.file_size()?;
    if size < (HEADER_REGION_LEN + 16) as u64 {
        return Ok(()); // no page written yet
    }
    let mut block = [0u8; 16];
    base.read(&mut block, HEADER_REGION_LEN as u64)?;
    if block != [0u8; 16] {
        cipher.decrypt(Domain::Database, 0, &mut block);
        if &block == SQLITE_MAGIC {
            return Ok(());
        }
    }
    // Journals are not locked by SQLite, so reading them through a second descriptor cannot
    // drop any lock.
    // Under its physical name, or its format-1 name (not adopted before the key is proven).
    let probe = |kind: SideFile, domain: Domain, ok: &dyn Fn(&[u8; 16]) -> bool| -> bool {
        [side_path(path, kind), legacy_side_path(path, kind)].iter().any(|p| {
            let Ok(mut f) = std::fs::File::open(p) else { return false };
            let mut b = [0u8; 16];
            if std::io::Read::read_exact(&mut f, &mut b).is_err() {
                return false;
            }
            cipher.decrypt(domain, 0, &mut b);
            ok(&b)
        })
    };
    if probe(SideFile::Journal, Domain::Journal, &|b| b[..8] == JOURNAL_MAGIC)
        || probe(SideFile::Wal, Domain::Wal, &|b| b[..3] == [0x37, 0x7f, 0x06] && (b[3] & 0xfe) == 0x82)
    {
        return Ok(());
    }
    Err(Error::WrongKey { path: path.to_string() })
}

/// Is this the (decrypted) first block of a rollback journal header?
pub(crate) fn is_journal_magic(b: &[u8]) -> bool {
    b.len() >= 8 && b[..8] == JOURNAL_MAGIC
}

/// Encode both slots of a new header region (A = `header`, B = the same with sequence 0).
pub(crate) fn initial_region(path: &str, header: &Header, meta: &MetaKey) -> Result<Vec<u8>> {
    let slot_a = header.encode(meta).map_err(|source| Error::Header { path: path.to_string(), source })?;
    let mut older = header.clone();
    older.sequence = 0;
    let slot_b = older.encode(meta).map_err(|source| Error::Header { path: path.to_string(), source })?;
    let mut region = Vec::with_capacity(HEADER_REGION_LEN);
    region.extend_from_slice(&slot_a);
    region.extend_from_slice(&slot_b);
    debug_assert_eq!(region.len(), 2 * SLOT_LEN);
    Ok(region)
}

/// Create the header of a new, empty database file under `key` and make it durable.
pub fn create(ctx: &TdeContext, path: &str, key: &str, base: &mut BaseFile) -> Result<Database> {
    let (header, cipher) = new_data_key(ctx, path, key)?;
    let region = initial_region(path, &header, cipher.meta())?;
    // Slot B first, then slot A, each made durable before the next: a crash tearing the first
    // write leaves slot A all zero (recognisably an interrupted creation, see
    // `interrupted_creation`), a crash tearing the second leaves slot B valid.
    base.write(&region[SLOT_LEN..], SLOT_LEN as u64)?;
    base.sync(SyncFlags::FULL)?;
    base.write(&region[..SLOT_LEN], 0)?;
    base.sync(SyncFlags::FULL)?;
    let cipher = ctx.cache.insert(cache_key_of(&header), &header.key.uri, header.key.version, cipher);
    let db = Database::new(path, header, 0, region, cipher);
    db.schedule_check(ctx.cache.config().check_interval);
    Ok(db)
}

/// A new DEK from the KMS under `key`, for a new database: its first header (sequence 1, new
/// UUID) and the cipher. The plaintext DEK, and the stack that handled it, are wiped before
/// this returns.
pub(crate) fn new_data_key(ctx: &TdeContext, path: &str, key: &str) -> Result<(Header, Arc<XtsCipher>)> {
    with_scrubbed_stack(|| new_data_key_unscrubbed(ctx, path, key))
}

fn new_data_key_unscrubbed(ctx: &TdeContext, path: &str, key: &str) -> Result<(Header, Arc<XtsCipher>)> {
    let db_uuid = random_array::<16>().map_err(|e| Error::Config(e.to_string()))?;
    let context = EncryptionContext::for_database(&db_uuid);
    let key_owned = key.to_string();
    ctx.cache.note_kms_call();
    let generated = kms_call(ctx, path, move |kms| kms.generate_data_key(&key_owned, &context))?;
    let (cipher, kcv) = new_cipher(&generated.plaintext, &db_uuid).map_err(|e| Error::Config(e.to_string()))?;
    let header = Header {
        format: FORMAT_VERSION,
        sequence: 1,
        db_uuid,
        dek_created: unix_now(),
        key: generated.key.clone(),
        wrapped_dek: generated.wrapped.clone(),
        kcv,
        rekey: None,
    };
    drop(generated); // wipes the plaintext DEK
    let cipher = Arc::new(cipher);
    Ok((header, cipher))
}

/// Open an existing database. A header still being written by a creator in another process
/// (it holds RESERVED while we may hold SHARED) can be seen half-written: retry briefly before
/// calling it corrupt.
pub fn open_existing_or_wait(
    ctx: &TdeContext,
    path: &str,
    base: &mut BaseFile,
    read_only: bool,
    may_defer: bool,
    policy: OpenPolicy<'_>,
) -> Result<Opened> {
    let mut tries = 0;
    loop {
        match open_existing(ctx, path, base, read_only, may_defer, policy) {
            Err(Error::Header {
                source: HeaderError::Truncated | HeaderError::Corrupt(_) | HeaderError::NotEncrypted,
                ..
            }) if tries < 20 && base.file_size()? <= HEADER_REGION_LEN as u64 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e @ Error::Header { .. }) if interrupted_creation(path, &read_region(base)?) => {
                match discard_interrupted_creation(path, base, read_only, may_defer) {
                    Ok(opened) => return Ok(opened),
                    Err(Some(other)) => return Err(other),
                    // Someone finished the header meanwhile: open it.
                    Err(None) if tries < 40 => tries += 1,
                    Err(None) => return Err(e),
                }
            }
            other => return other,
        }
    }
}

/// A header region that can only be a creation cut short by a crash: at most one region long,
/// slot A (written last) still all zero, and no journal or WAL that could hold committed data.
/// A creator syncs slot B before it writes slot A, and SQLite writes nothing before the header
/// is durable, so nothing was ever committed to such a file.
fn interrupted_creation(path: &str, region: &[u8]) -> bool {
    region.len() <= HEADER_REGION_LEN
        && region.iter().take(SLOT_LEN).all(|&b| b == 0)
        && choose_slot(region).is_err()
        && !super::sidefiles::has_data(path, SideFile::Journal)
        && !super::sidefiles::has_data(path, SideFile::Wal)
        && !super::rotation::convert::state_file_valid(path)
}

/// Turn an interrupted creation back into an empty file, under EXCLUSIVE so a creator that is
/// still writing (another process, holding RESERVED) is never cut short. `Err(None)`: the
/// file is not (or no longer) an interrupted creation; open it normally.
fn discard_interrupted_creation(
    path: &str,
    base: &mut BaseFile,
    read_only: bool,
    may_defer: bool,
) -> std::result::Result<Opened, Option<Error>> {
    if read_only {
        return Ok(Opened::Empty);
    }
    match acquire(base, LockLevel::Exclusive, RECOVERY_LOCK_WAIT) {
        Ok(()) => {}
        Err(e) if e.code == ErrorCode::Busy && may_defer => return Ok(Opened::Deferred),
        Err(e) => return Err(Some(e.into())),
    }
    let result = (|| {
        let region = read_region(base)?;
        if !interrupted_creation(path, &region) {
            return Ok(false);
        }
        base.truncate(0)?;
        base.sync(SyncFlags::FULL)?;
        Ok::<_, Error>(true)
    })();
    release(base);
    match result {
        Ok(true) => Ok(Opened::Empty),
        Ok(false) => Err(None),
        Err(e) => Err(Some(e)),
    }
}

/// Take `level` (at least SHARED) on the base file with SQLite's lock protocol, retrying a
/// busy lock until `wait` has passed; then fails with `Busy`. Between attempts, and on
/// failure, locks go back to what SQLite itself holds on this handle.
pub fn acquire(base: &mut BaseFile, level: LockLevel, wait: Duration) -> std::result::Result<(), VfsError> {
    let deadline = Instant::now() + wait;
    // Short, constant pauses: in rollback mode busy writers hold RESERVED most of the time,
    // and a long back-off would rarely find the gaps between their transactions.
    let pause = Duration::from_millis(1);
    loop {
        let r =
            base.lock(LockLevel::Shared)
                .and_then(|()| if level > LockLevel::Shared { base.lock(level) } else { Ok(()) });
        match r {
            Ok(()) => return Ok(()),
            Err(e) if e.code == ErrorCode::Busy && Instant::now() < deadline => {
                // Back off completely (to SQLite's own level), as SQLite's busy handling does:
                // holding SHARED while waiting for RESERVED or EXCLUSIVE could deadlock with a
                // writer that holds RESERVED and waits for readers to leave.
                let _ = base.unlock(LockLevel::None);
                std::thread::sleep(pause);
            }
            Err(e) => {
                let _ = base.unlock(LockLevel::None);
                return Err(if e.code == ErrorCode::Busy {
                    VfsError::new(
                        ErrorCode::Busy,
                        format!("database is locked (waited {} ms for {level:?})", wait.as_millis()),
                    )
                } else {
                    e
                });
            }
        }
    }
}

/// Release what [`acquire`] took (never below SQLite's own level).
pub fn release(base: &mut BaseFile) {
    let _ = base.unlock(LockLevel::None);
}

/// Create the header of a still-empty database outside a SQLite transaction (for
/// `PRAGMA tde_create`, so an application learns about a bad key at open time). SQLite's
/// EXCLUSIVE lock, taken through the base handle, keeps other creators out meanwhile.
pub fn create_locked(ctx: &TdeContext, path: &str, key: &str, base: &mut BaseFile) -> Result<Option<Database>> {
    acquire(base, LockLevel::Exclusive, Duration::from_secs(5))?;
    let result = match base.file_size() {
        Ok(0) => create(ctx, path, key, base).map(Some),
        Ok(_) => Ok(None), // another connection created it meanwhile
        Err(e) => Err(e.into()),
    };
    release(base);
    result
}

/// Is this error a KMS outage (as opposed to a refusal)?
pub fn is_outage(e: &Error) -> bool {
    is_transient(e)
}

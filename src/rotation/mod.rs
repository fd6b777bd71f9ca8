//! Key rotation and conversions: rewrap (CMK rotation: a new wrapped form of the same DEK,
//! no page touched), rekey (DEK rotation: every page re-encrypted, crash-safe and resumable),
//! and conversions between plain and encrypted databases. Design: docs/ARCHITECTURE.md,
//! "Key rotation"; on-disk structures: docs/FORMAT.md §1 (rekey state, conversion marker),
//! §8 (rekey journal) and §9 (in-place encryption state).
//!
//! Every header write happens inside the VFS, on the main-db handle SQLite opened (the
//! `tde_rewrap` / `tde_rekey` / `tde_encrypt_in_place` pragmas and the recovery at open), under
//! SQLite's own file locks. The functions here open a connection and drive those pragmas.

pub mod convert;
pub mod engine;
pub mod journal;
pub mod rekey;
pub mod reserve;
pub mod rewrap;
mod rewrap_header;

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::ops::ControlFlow;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlite_vfs::{BaseFile, ErrorCode, LockLevel, ReadStatus, SyncFlags, VfsError};

pub use engine::{Outcome, Step};
pub use rekey::{rekey, RekeyOptions, RekeyReport};
pub use rewrap::{rewrap, RewrapOptions, RewrapReport};
pub use rewrap_header::rewrap_header;

use crate::error::{Error, Result};
use crate::format::choose_slot;
use crate::vfs::database::{acquire, read_region, release, OpenPolicy};
use crate::vfs::TdeContext;

/// Suffix of the rekey journal next to the database.
pub const REKEY_JOURNAL_SUFFIX: &str = "-tderekey";
/// Suffix of the in-place encryption state file next to the database.
pub const CONVERT_JOURNAL_SUFFIX: &str = "-tdeconvert";

/// Environment variable of the crash-injection hook (debug builds only):
/// `OPERATION:STEP[@N]`, e.g. `rekey:progress-synced@2` aborts the process the third time
/// (counting from 0) a rekey passes that step. Operations: `rekey`, `recover`, `encrypt`.
/// The KMS crate reads the same variable for its `kms:STEP` points.
pub use crate::kms::ENV_CRASH_AT;

/// Environment variable of the fault-injection hook (debug builds only), same syntax as
/// [`ENV_CRASH_AT`]: instead of aborting, the step fails with "no space left on device", as
/// if a write there had hit a full disk (the process goes on and handles the error).
pub const ENV_FAIL_AT: &str = "SQLITE_TDE_TEST_FAIL_AT";

/// Path of a side file of `db`.
pub fn side_path(db: &str, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{db}{suffix}"))
}

/// Progress of a long operation, reported to the thread's observer.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// `rekey`, `recover` (finishing an interrupted rekey at open), `encrypt` (in place),
    /// `encrypt-recover`.
    pub operation: &'static str,
    /// Bytes done.
    pub done: u64,
    /// Bytes in all.
    pub total: u64,
}

type Observer = Box<dyn FnMut(&Progress) -> ControlFlow<()>>;

thread_local! {
    static OBSERVER: RefCell<Option<Observer>> = const { RefCell::new(None) };
}

/// Run `f` with `observer` receiving the progress of every rekey, recovery or in-place
/// encryption this thread performs (also those run by the VFS while opening a database).
/// Returning `Break` stops the operation cleanly between two chunks; it stays resumable.
pub fn with_progress<R>(observer: impl FnMut(&Progress) -> ControlFlow<()> + 'static, f: impl FnOnce() -> R) -> R {
    let previous = OBSERVER.with(|o| o.borrow_mut().replace(Box::new(observer)));
    struct Restore(Option<Observer>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let prev = self.0.take();
            OBSERVER.with(|o| *o.borrow_mut() = prev);
        }
    }
    let _restore = Restore(previous);
    f()
}

fn observe(p: &Progress) -> ControlFlow<()> {
    // Take the observer out while it runs, so it may itself do anything (even I/O).
    let taken = OBSERVER.with(|o| o.borrow_mut().take());
    match taken {
        Some(mut obs) => {
            let r = obs(p);
            OBSERVER.with(|o| {
                let mut slot = o.borrow_mut();
                if slot.is_none() {
                    *slot = Some(obs);
                }
            });
            r
        }
        None => ControlFlow::Continue(()),
    }
}

/// The production hook: progress to the thread's observer; in debug builds, the crash
/// injection of [`ENV_CRASH_AT`].
pub(crate) struct VfsHook {
    operation: &'static str,
    crash_at: Option<(Step, u64)>,
    fail_at: Option<(Step, u64)>,
    counts: HashMap<Step, u64>,
}

impl VfsHook {
    pub(crate) fn new(operation: &'static str) -> VfsHook {
        let crash_at = Self::injection(ENV_CRASH_AT, operation);
        let fail_at = Self::injection(ENV_FAIL_AT, operation);
        VfsHook { operation, crash_at, fail_at, counts: HashMap::new() }
    }

    /// A test injection point `OPERATION:STEP[@N]` from `var`, for this operation.
    fn injection(var: &str, operation: &str) -> Option<(Step, u64)> {
        if cfg!(debug_assertions) {
            std::env::var(var).ok().and_then(|v| {
                let (op, rest) = v.split_once(':')?;
                if op != operation {
                    return None;
                }
                let (name, n) = match rest.split_once('@') {
                    Some((s, n)) => (s, n.parse().ok()?),
                    None => (rest, 0),
                };
                Some((Step::from_name(name)?, n))
            })
        } else {
            None
        }
    }
}

impl engine::Hook for VfsHook {
    fn step(&mut self, step: Step) -> Result<()> {
        let n = self.counts.entry(step).or_insert(0);
        let seen = *n;
        *n += 1;
        if self.crash_at == Some((step, seen)) {
            eprintln!("sqlite-tde: test crash injection: {}:{}@{seen}", self.operation, step.name());
            std::process::abort();
        }
        if self.fail_at == Some((step, seen)) {
            return Err(Error::Io(std::io::Error::new(
                ErrorKind::StorageFull,
                format!("test fault injection: {}:{}@{seen}: no space left on device", self.operation, step.name()),
            )));
        }
        Ok(())
    }
    fn progress(&mut self, done: u64, total: u64) -> ControlFlow<()> {
        observe(&Progress { operation: self.operation, done, total })
    }
}

/// The main database through SQLite's own handle.
pub(crate) struct BaseDb<'a>(pub &'a mut BaseFile);

/// Largest single read or write passed to the base VFS: the unix VFS masks the length of
/// one `pread`/`pwrite` with 0x1ffff (SQLite itself never moves more than a 64 KiB page at
/// once), so larger transfers are split.
const BASE_IO_MAX: usize = 64 << 10;

impl engine::RawDb for BaseDb<'_> {
    fn read_exact_at(&mut self, buf: &mut [u8], off: u64) -> Result<()> {
        let mut at = off;
        for piece in buf.chunks_mut(BASE_IO_MAX) {
            if self.0.read(piece, at)? == ReadStatus::Short {
                return Err(Error::Vfs(VfsError::new(ErrorCode::Corrupt, "database file shorter than expected")));
            }
            at += piece.len() as u64;
        }
        Ok(())
    }
    fn write_at(&mut self, buf: &[u8], off: u64) -> Result<()> {
        let mut at = off;
        for piece in buf.chunks(BASE_IO_MAX) {
            self.0.write(piece, at)?;
            at += piece.len() as u64;
        }
        Ok(())
    }
    fn sync(&mut self) -> Result<()> {
        Ok(self.0.sync(SyncFlags::FULL)?)
    }
    fn len(&mut self) -> Result<u64> {
        Ok(self.0.file_size()?)
    }
    fn set_len(&mut self, len: u64) -> Result<()> {
        Ok(self.0.truncate(len)?)
    }
}

/// A side file (journal) in the file system. Not a database file: SQLite never locks it, so
/// opening and closing descriptors on it cannot drop any lock.
pub(crate) struct FsSide {
    path: PathBuf,
    file: Option<File>,
    created: bool,
}

impl FsSide {
    pub(crate) fn new(path: PathBuf) -> FsSide {
        FsSide { path, file: None, created: false }
    }

    fn ctx(&self, e: std::io::Error) -> Error {
        Error::Io(std::io::Error::new(e.kind(), format!("{}: {e}", self.path.display())))
    }

    fn dir(&self) -> &Path {
        self.path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
    }

    fn open(&mut self) -> Result<&File> {
        if self.file.is_none() {
            let existed = self.path.exists();
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&self.path)
                .map_err(|e| self.ctx(e))?;
            self.created |= !existed;
            self.file = Some(f);
        }
        Ok(self.file.as_ref().unwrap())
    }

    fn what(&self) -> &'static str {
        if self.path.to_string_lossy().ends_with(REKEY_JOURNAL_SUFFIX) {
            "rekey journal"
        } else {
            "in-place encryption state file"
        }
    }
}

impl engine::SideFile for FsSide {
    fn load(&mut self) -> Result<Option<Vec<u8>>> {
        match std::fs::read(&self.path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.ctx(e)),
        }
    }
    fn write_at(&mut self, bytes: &[u8], off: u64) -> Result<()> {
        let f = self.open()?;
        f.write_all_at(bytes, off).map_err(|e| self.ctx(e))
    }
    fn reserve(&mut self, len: u64) -> Result<()> {
        let r = self.open().and_then(|f| reserve::reserve(f, len).map_err(Error::Io));
        match r {
            Ok(()) => self.sync(),
            Err(Error::Io(e)) if reserve::is_no_space(&e) => {
                Err(Error::NoSpace { path: self.path.display().to_string(), what: self.what(), needed: len, source: e })
            }
            Err(Error::Io(e)) => Err(self.ctx(e)),
            Err(e) => Err(e),
        }
    }
    fn release_after(&mut self, len: u64) -> Result<()> {
        if let Some(f) = &self.file {
            if f.metadata().map_err(|e| self.ctx(e))?.len() > len {
                f.set_len(len).map_err(|e| self.ctx(e))?;
                f.sync_all().map_err(|e| self.ctx(e))?;
            }
        }
        Ok(())
    }
    fn sync(&mut self) -> Result<()> {
        if let Some(f) = &self.file {
            f.sync_data().map_err(|e| self.ctx(e))?;
        }
        if self.created {
            crate::fsutil::sync_dir(self.dir()).map_err(|e| self.ctx(e))?;
            self.created = false;
        }
        Ok(())
    }
    fn remove(&mut self) -> Result<()> {
        self.file = None;
        match std::fs::remove_file(&self.path) {
            Ok(()) => crate::fsutil::sync_dir(self.dir()).map_err(|e| self.ctx(e)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.ctx(e)),
        }
    }
}

/// Finish an interrupted rekey or in-place encryption of the file behind `base`, under an
/// EXCLUSIVE lock taken through `base` (waiting at most `wait`). `Ok(false)`: the lock is
/// busy (another connection holds it: possibly the operation itself, still running).
/// `Ok(true)`: nothing (more) to do. Locks go back to SQLite's own level afterwards.
pub fn recover_locked(
    ctx: &TdeContext,
    path: &str,
    base: &mut BaseFile,
    policy: OpenPolicy<'_>,
    wait: Duration,
) -> Result<bool> {
    match acquire(base, LockLevel::Exclusive, wait) {
        Ok(()) => {}
        Err(e) if e.code == ErrorCode::Busy => return Ok(false),
        Err(e) => return Err(e.into()),
    }
    let r = (|| -> Result<()> {
        let region = read_region(base)?;
        let parsed = choose_slot(&region);
        let torn_final = matches!(&parsed, Err(e) if *e != crate::format::HeaderError::PlainSqlite)
            && convert::state_file_valid(path);
        if convert::is_converting(&region) || torn_final {
            return match convert::recover(ctx, path, base, policy)? {
                Outcome::Done => Ok(()),
                Outcome::Interrupted => Err(Error::RekeyInProgress { path: path.to_string() }),
            };
        }
        let (h, slot) = parsed.map_err(|source| Error::Header { path: path.to_string(), source })?;
        if h.rekey.is_some() {
            return match rekey::recover(ctx, path, base, h, slot, &region, policy)? {
                Outcome::Done => Ok(()),
                Outcome::Interrupted => Err(Error::RekeyInProgress { path: path.to_string() }),
            };
        }
        Ok(())
    })();
    release(base);
    r.map(|()| true)
}

/// Parse the JSON a rotation pragma returned.
pub(crate) fn parse_json(s: &str) -> Result<serde_json::Value> {
    serde_json::from_str(s).map_err(|e| Error::Config(format!("unexpected pragma result {s:?}: {e}")))
}

/// Refuse files the caller may not rewrite: missing, not regular, or read-only (mode bits,
/// also for root).
pub(crate) fn check_writable(path: &Path, what: &str) -> Result<()> {
    let shown = path.display();
    let md = std::fs::metadata(path).map_err(|e| Error::Io(std::io::Error::new(e.kind(), format!("{shown}: {e}"))))?;
    if !md.is_file() {
        return Err(Error::Config(format!("{shown}: not a regular file")));
    }
    if md.permissions().readonly() {
        return Err(Error::Config(format!(
            "{shown}: the file is read-only; {what} rewrites it in place and needs write permission"
        )));
    }
    Ok(())
}

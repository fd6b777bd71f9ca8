//! How the binding treats a shim's answers: panics, errors, rejected locks, pragmas, mmap,
//! URI parameters.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::{one, open, passthrough, rows};
use rusqlite::{Connection, ErrorCode as SqlErr};
use sqlite_vfs::passthrough::{PassThrough, PassThroughConfig, PassThroughFile};
use sqlite_vfs::{
    register_static, BaseFile, ErrorCode, FileKind, LockLevel, OpenRequest, ReadStatus, RegisterOptions, Shim,
    ShimFile, SyncFlags, VfsError, VfsResult,
};

/// `(kind, uri_parameter("key"), uri_parameter_bytes("bin"))` of one open.
type UriSeen = (FileKind, Option<String>, Option<Vec<u8>>);

/// Faults to inject, shared by every file of one [`Faulty`] shim.
#[derive(Default)]
struct Faults {
    panic_in_read: AtomicBool,
    reject_shared_lock: AtomicBool,
    /// What every open saw.
    uri_seen: Mutex<Vec<UriSeen>>,
    main_db_linked: AtomicUsize,
}

/// A pass-through that panics or fails on request.
struct Faulty {
    inner: PassThrough,
    faults: Arc<Faults>,
}

struct FaultyFile {
    inner: PassThroughFile,
    faults: Arc<Faults>,
}

impl Shim for Faulty {
    type File = FaultyFile;

    fn open(&self, req: &OpenRequest<'_>, base: BaseFile, main_db: Option<&FaultyFile>) -> VfsResult<FaultyFile> {
        let path = req.path.unwrap_or("");
        if path.contains("panic-open") {
            panic!("injected panic in open");
        }
        if path.contains("fail-open") {
            return Err(VfsError::new(ErrorCode::Auth, "injected open failure"));
        }
        self.faults.uri_seen.lock().unwrap().push((req.kind, req.uri_parameter("key"), req.uri_parameter_bytes("bin")));
        if main_db.is_some() {
            self.faults.main_db_linked.fetch_add(1, Ordering::SeqCst);
        }
        let inner = self.inner.open(req, base, main_db.map(|m| &m.inner))?;
        Ok(FaultyFile { inner, faults: Arc::clone(&self.faults) })
    }
}

impl ShimFile for FaultyFile {
    fn base(&mut self) -> &mut BaseFile {
        self.inner.base()
    }
    fn read(&mut self, buf: &mut [u8], offset: u64) -> VfsResult<ReadStatus> {
        if self.faults.panic_in_read.load(Ordering::SeqCst) {
            panic!("injected panic in read");
        }
        self.inner.read(buf, offset)
    }
    fn write(&mut self, buf: &[u8], offset: u64) -> VfsResult<()> {
        self.inner.write(buf, offset)
    }
    fn truncate(&mut self, size: u64) -> VfsResult<()> {
        self.inner.truncate(size)
    }
    fn file_size(&mut self) -> VfsResult<u64> {
        self.inner.file_size()
    }
    fn sync(&mut self, flags: SyncFlags) -> VfsResult<()> {
        self.inner.sync(flags)
    }
    fn after_lock_change(&mut self, level: LockLevel) -> VfsResult<()> {
        if level == LockLevel::Shared && self.faults.reject_shared_lock.load(Ordering::SeqCst) {
            return Err(VfsError::new(ErrorCode::Auth, "injected lock rejection"));
        }
        self.inner.after_lock_change(level)
    }
    fn close(&mut self) -> VfsResult<()> {
        self.inner.close()
    }
}

fn faulty(tag: &str) -> (String, Arc<Faults>, Arc<Mutex<sqlite_vfs::passthrough::Stats>>) {
    let faults = Arc::new(Faults::default());
    let inner = PassThrough::default();
    let stats = inner.stats();
    let name = format!("faulty-{tag}");
    register_static(&name, Faulty { inner, faults: Arc::clone(&faults) }, RegisterOptions::default()).unwrap();
    (name, faults, stats)
}

fn sqlite_code(e: &rusqlite::Error) -> Option<(SqlErr, i32)> {
    match e {
        rusqlite::Error::SqliteFailure(f, _) => Some((f.code, f.extended_code)),
        _ => None,
    }
}

fn try_open(path: &std::path::Path, vfs: &str) -> rusqlite::Result<Connection> {
    Connection::open_with_flags_and_vfs(path, common::flags(), vfs)
}

#[test]
fn panic_or_error_in_open_fails_the_open_only() {
    let (vfs, _faults, stats) = faulty("open");
    let dir = common::tempdir();

    let err = try_open(&dir.path().join("panic-open.db"), &vfs).unwrap_err();
    assert_eq!(sqlite_code(&err).map(|c| c.0), Some(SqlErr::CannotOpen), "{err}");

    let err = try_open(&dir.path().join("fail-open.db"), &vfs).unwrap_err();
    assert_eq!(
        sqlite_code(&err).map(|c| c.1),
        Some(rusqlite::ffi::SQLITE_AUTH),
        "the shim's code reaches the caller: {err}"
    );

    // The VFS still works, and nothing that failed to open is ever closed.
    let conn = open(&dir.path().join("fine.db"), Some(&vfs));
    conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);").unwrap();
    drop(conn);
    let s = stats.lock().unwrap();
    assert_eq!(s.closes, s.opens.values().sum::<u64>(), "{}", s.summary());
}

#[test]
fn panic_in_read_becomes_an_error_and_poisons_the_file() {
    let (vfs, faults, _) = faulty("read");
    let dir = common::tempdir();
    let path = dir.path().join("main.db");
    let conn = open(&path, Some(&vfs));
    conn.execute_batch(&common::fill_sql("t", 300)).unwrap();
    drop(conn);

    let conn = open(&path, Some(&vfs));
    faults.panic_in_read.store(true, Ordering::SeqCst);
    let err = conn.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0)).unwrap_err();
    let (code, _) = sqlite_code(&err).unwrap_or_else(|| panic!("{err}"));
    assert_eq!(code, SqlErr::SystemIoFailure, "{err}");
    faults.panic_in_read.store(false, Ordering::SeqCst);
    // The file that panicked stays failed: its shim state can no longer be trusted.
    assert!(conn.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0)).is_err());
    drop(conn); // closing a poisoned file still closes the base file and releases locks

    let conn = open(&path, Some(&vfs));
    assert_eq!(one::<i64>(&conn, "SELECT count(*) FROM t"), 300);
    assert_eq!(one::<String>(&conn, "PRAGMA integrity_check"), "ok");
    // A writer through plain SQLite is not blocked by a leftover lock.
    let plain = open(&path, None);
    plain.execute_batch("PRAGMA busy_timeout=0; BEGIN EXCLUSIVE; COMMIT;").unwrap();
}

#[test]
fn rejected_shared_lock_is_released() {
    let (vfs, faults, _) = faulty("lock");
    let dir = common::tempdir();
    let path = dir.path().join("main.db");
    let conn = open(&path, Some(&vfs));
    conn.execute_batch(&common::fill_sql("t", 100)).unwrap();

    faults.reject_shared_lock.store(true, Ordering::SeqCst);
    let err = conn.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0)).unwrap_err();
    assert_eq!(sqlite_code(&err).map(|c| c.1), Some(rusqlite::ffi::SQLITE_AUTH), "{err}");
    // The binding unlocked the base file again: an exclusive lock is free at once.
    let plain = open(&path, None);
    plain.execute_batch("PRAGMA busy_timeout=0; BEGIN EXCLUSIVE; COMMIT;").unwrap();

    faults.reject_shared_lock.store(false, Ordering::SeqCst);
    assert_eq!(one::<i64>(&conn, "SELECT count(*) FROM t"), 100);
}

#[test]
fn pragmas_reach_the_shim() {
    let vfs = passthrough("pragma", PassThroughConfig::default());
    let dir = common::tempdir();
    let conn = open(&dir.path().join("main.db"), Some(vfs.name()));
    conn.execute_batch("CREATE TABLE t(x);").unwrap();

    let summary: String = one(&conn, "PRAGMA passthrough_stats");
    assert!(summary.contains("open.main-db=1"), "{summary}");
    // Pragma names are case-insensitive; a schema prefix selects the file.
    let summary: String = one(&conn, "PRAGMA main.PassThrough_Stats");
    assert!(summary.contains("writes="), "{summary}");

    let err = conn.execute_batch("PRAGMA passthrough_fail = 'no key for you'").unwrap_err();
    assert!(err.to_string().contains("no key for you"), "{err}");

    // Built-in and unknown pragmas are untouched.
    assert_eq!(one::<String>(&conn, "PRAGMA journal_mode"), "delete");
    assert!(rows(&conn, "PRAGMA no_such_pragma").is_empty());
}

#[test]
fn mmap_is_declined_unless_allowed() {
    for allow in [false, true] {
        let vfs = passthrough(&format!("mmap-{allow}"), PassThroughConfig { allow_mmap: allow, record_io: false });
        let dir = common::tempdir();
        let path = dir.path().join("main.db");
        let conn = open(&path, Some(vfs.name()));
        conn.execute_batch(&common::fill_sql("t", 2000)).unwrap();
        drop(conn);

        let conn = open(&path, Some(vfs.name()));
        let size: i64 = one(&conn, "PRAGMA mmap_size = 268435456");
        let reads_before = vfs.stats().reads;
        assert_eq!(one::<i64>(&conn, "SELECT count(*) FROM t WHERE length(payload) > 0"), 2000);
        let reads = vfs.stats().reads - reads_before;
        if allow {
            assert_eq!(size, 268_435_456);
            assert!(reads < 10, "pages come from the mapping: {reads} reads");
        } else {
            assert_eq!(size, 0, "mmap reported off");
            assert!(reads > 50, "every page goes through read: {reads} reads");
        }
    }
}

#[test]
fn uri_parameters_and_main_db_links() {
    let (vfs, faults, _) = faulty("uri");
    let dir = common::tempdir();
    let path = dir.path().join("main.db");
    // Selecting the VFS through the URI works as well as through the open call.
    let uri = format!("file:{}?key=s3cr%65t&bin=%ff%00x&vfs={vfs}", path.display());
    let conn = Connection::open_with_flags(&uri, common::flags()).unwrap();
    conn.execute_batch("PRAGMA journal_mode=DELETE; CREATE TABLE t(x); INSERT INTO t VALUES (1);").unwrap();
    drop(conn);

    let seen = faults.uri_seen.lock().unwrap().clone();
    let main: Vec<_> = seen.iter().filter(|s| s.0 == FileKind::MainDb).collect();
    assert_eq!(main.len(), 1, "{seen:?}");
    assert_eq!(main[0].1.as_deref(), Some("s3cret"));
    // A value that is not UTF-8 is only available as bytes (SQLite stops at the NUL).
    let bin = &main[0].2;
    assert_eq!(bin.as_deref(), Some(&[0xff][..]), "{seen:?}");
    let journals: Vec<_> = seen.iter().filter(|s| s.0 == FileKind::MainJournal).collect();
    assert!(!journals.is_empty(), "{seen:?}");
    assert!(journals.iter().all(|j| j.1.is_none() && j.2.is_none()), "{seen:?}");
    assert_eq!(faults.main_db_linked.load(Ordering::SeqCst), journals.len());
}

#[test]
fn vfs_name_lists_the_stack() {
    let vfs = passthrough("vfsname", PassThroughConfig::default());
    let dir = common::tempdir();
    let conn = open(&dir.path().join("main.db"), Some(vfs.name()));
    conn.execute_batch("CREATE TABLE t(x);").unwrap();
    let mut name: *mut std::ffi::c_char = std::ptr::null_mut();
    // SAFETY: SQLITE_FCNTL_VFSNAME takes a `char **` that receives an sqlite3_malloc'ed string
    // (or stays null); the handle is alive for the call.
    let text = unsafe {
        let rc = rusqlite::ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            rusqlite::ffi::SQLITE_FCNTL_VFSNAME,
            (&raw mut name).cast(),
        );
        assert_eq!(rc, rusqlite::ffi::SQLITE_OK);
        assert!(!name.is_null());
        let text = std::ffi::CStr::from_ptr(name).to_str().unwrap().to_owned();
        rusqlite::ffi::sqlite3_free(name.cast());
        text
    };
    assert_eq!(text, format!("{}/{}", vfs.name(), vfs.reg.base_name()));
}

/// Shared state of a [`Probe`] shim.
#[derive(Default)]
struct ProbeState {
    /// Base files the shim kept after `close` (safe code can do that; it must stay harmless).
    kept: Mutex<Vec<BaseFile>>,
    /// In `after_lock_change(Shared)`, take RESERVED on the base and then unlock to NONE.
    relock_on_shared: AtomicBool,
}

/// A minimal pass-through that misuses its `BaseFile` in legal ways.
struct Probe(Arc<ProbeState>);

struct ProbeFile {
    base: Option<BaseFile>,
    state: Arc<ProbeState>,
}

impl ProbeFile {
    fn b(&mut self) -> &mut BaseFile {
        self.base.as_mut().expect("base file used after close")
    }
}

impl Shim for Probe {
    type File = ProbeFile;
    fn open(&self, _req: &OpenRequest<'_>, base: BaseFile, _main_db: Option<&ProbeFile>) -> VfsResult<ProbeFile> {
        Ok(ProbeFile { base: Some(base), state: Arc::clone(&self.0) })
    }
}

impl ShimFile for ProbeFile {
    fn base(&mut self) -> &mut BaseFile {
        self.b()
    }
    fn read(&mut self, buf: &mut [u8], offset: u64) -> VfsResult<ReadStatus> {
        self.b().read(buf, offset)
    }
    fn write(&mut self, buf: &[u8], offset: u64) -> VfsResult<()> {
        self.b().write(buf, offset)
    }
    fn truncate(&mut self, size: u64) -> VfsResult<()> {
        self.b().truncate(size)
    }
    fn file_size(&mut self) -> VfsResult<u64> {
        self.b().file_size()
    }
    fn after_lock_change(&mut self, level: LockLevel) -> VfsResult<()> {
        if level == LockLevel::Shared && self.state.relock_on_shared.load(Ordering::SeqCst) {
            self.b().lock(LockLevel::Reserved)?;
            // Must not release the SHARED lock SQLite has just been granted.
            self.b().unlock(LockLevel::None)?;
        }
        Ok(())
    }
    fn close(&mut self) -> VfsResult<()> {
        if let Some(b) = self.base.take() {
            self.state.kept.lock().unwrap().push(b);
        }
        Ok(())
    }
}

fn probe(name: &str) -> Arc<ProbeState> {
    let state = Arc::new(ProbeState::default());
    register_static(name, Probe(Arc::clone(&state)), RegisterOptions::default()).unwrap();
    state
}

#[test]
fn base_file_kept_past_close_fails_cleanly() {
    let state = probe("probe-kept");
    let dir = common::tempdir();
    let conn = open(&dir.path().join("main.db"), Some("probe-kept"));
    conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);").unwrap();
    drop(conn);
    let mut kept = state.kept.lock().unwrap();
    assert!(!kept.is_empty());
    for b in kept.iter_mut() {
        let mut buf = [0u8; 16];
        let err = b.read(&mut buf, 0).unwrap_err();
        assert_eq!(err.code, ErrorCode::Io, "{err}");
        assert!(b.write(&buf, 0).is_err());
        assert!(b.file_size().is_err());
        assert!(b.lock(LockLevel::Shared).is_err());
        assert_eq!(b.sector_size(), 4096);
    }
    // Moving a closed BaseFile to another thread is fine too.
    let b = kept.pop().unwrap();
    std::thread::spawn(move || {
        let mut b = b;
        assert!(b.sync(SyncFlags::NORMAL).is_err());
    })
    .join()
    .unwrap();
}

#[test]
fn shim_unlock_never_drops_sqlites_lock() {
    let state = probe("probe-relock");
    state.relock_on_shared.store(true, Ordering::SeqCst);
    let dir = common::tempdir();
    let path = dir.path().join("main.db");
    let conn = open(&path, Some("probe-relock"));
    conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);").unwrap();
    // A read transaction holds SHARED; the shim's unlock(None) inside after_lock_change must
    // have stopped at SHARED, so a writer elsewhere cannot take EXCLUSIVE.
    conn.execute_batch("BEGIN; SELECT * FROM t;").unwrap();
    let plain = open(&path, None);
    let err = plain.execute_batch("PRAGMA busy_timeout=0; BEGIN EXCLUSIVE;").unwrap_err();
    assert_eq!(sqlite_code(&err).map(|c| c.0), Some(SqlErr::DatabaseBusy), "{err}");
    conn.execute_batch("COMMIT;").unwrap();
    plain.execute_batch("BEGIN EXCLUSIVE; COMMIT;").unwrap();
}

//! Other VFS shims stacked *above* tde (tracing, statistics, checksums, SQLite's multiplex):
//! journals and WAL must find their database's key through them, never fall back to plaintext,
//! and never crash. The shim here passes its own copy of every journal and WAL name on, as
//! SQLite's `test_multiplex.c` does; before the binding linked journals by its own registry,
//! tde handed such a copy to `sqlite3_database_file_object` (defined only for the pager's own
//! names: it walks backwards through foreign memory) or refused the open (`SQLITE_CANTOPEN`).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};

use sqlite_vfs::passthrough::{PassThrough, PassThroughConfig, PassThroughFile};
use sqlite_vfs::{BaseFile, FileKind, OpenRequest, RegisterOptions, Shim, VfsResult};

/// A pass-through shim that gives the VFS below a fresh copy of each side-file name.
struct CopyingShim {
    inner: PassThrough,
    copies: &'static AtomicUsize,
}

impl Shim for CopyingShim {
    type File = PassThroughFile;

    fn open(&self, req: &OpenRequest<'_>, base: BaseFile, main_db: Option<&PassThroughFile>) -> VfsResult<Self::File> {
        self.inner.open(req, base, main_db)
    }

    fn physical_path(&self, path: &str, kind: Option<FileKind>) -> VfsResult<Option<String>> {
        // Main databases keep SQLite's name (their URI parameters live behind it).
        if kind == Some(FileKind::MainDb) {
            return Ok(None);
        }
        self.copies.fetch_add(1, Ordering::SeqCst);
        Ok(Some(path.to_owned()))
    }
}

fn stacked(mode: &str, copies: &'static AtomicUsize) {
    let env = common::Env::new();
    let top = format!("{}-copying-above", env.tde.vfs_name());
    sqlite_vfs::register_static(
        &top,
        CopyingShim { inner: PassThrough::new(PassThroughConfig::default()), copies },
        RegisterOptions { base: Some(env.tde.vfs_name().to_string()), make_default: false },
    )
    .unwrap();
    let db = env.path(&format!("stacked-{mode}.db"));
    let marker = format!("stacked-marker-{mode}");
    let c = rusqlite::Connection::open_with_flags_and_vfs(
        &db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_CREATE,
        top.as_str(),
    )
    .unwrap();
    c.execute_batch(&format!(
        "PRAGMA journal_mode={mode}; PRAGMA cache_size=5; PRAGMA wal_autocheckpoint=0;
         CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);"
    ))
    .unwrap();
    for i in 0..20 {
        c.execute_batch(&format!(
            "BEGIN; INSERT INTO t(v) SELECT '{marker}-{i}-' || hex(randomblob(200)) FROM (WITH RECURSIVE n(k) AS (SELECT 1 UNION ALL SELECT k+1 FROM n WHERE k<20) SELECT k FROM n); COMMIT;"
        ))
        .unwrap();
    }
    let n: i64 = c.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 400);
    assert!(copies.load(Ordering::SeqCst) > 0, "the shim above never copied a name");
    // Through the shim, tde still kept its own side-file names and encrypted everything.
    for (path, bytes) in common::files_under(env.dir.path()) {
        assert!(!common::contains(&bytes, marker.as_bytes()), "plaintext in {}", path.display());
    }
    if mode == "WAL" {
        assert!(env.path(&format!("stacked-{mode}.db-tdewal")).exists());
    }
    drop(c);
    // And tde alone reads what went through the stack.
    let c = env.tde.open(&db).unwrap();
    let n: i64 = c.query_row("SELECT count(*) FROM t WHERE v LIKE ?1", [format!("{marker}-%")], |r| r.get(0)).unwrap();
    assert_eq!(n, 400);
    let ok: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(ok, "ok");
}

#[test]
fn name_copying_shim_above_tde_rollback_mode() {
    static COPIES: AtomicUsize = AtomicUsize::new(0);
    stacked("DELETE", &COPIES);
}

#[test]
fn name_copying_shim_above_tde_wal_mode() {
    static COPIES: AtomicUsize = AtomicUsize::new(0);
    stacked("WAL", &COPIES);
}

const ROLE_KS: &str = "SQLITE_TDE_TEST_STACKED_KS";
const ROLE_DB: &str = "SQLITE_TDE_TEST_STACKED_DB";
const TX_ROWS: i64 = 20;

/// tde over `ks` with the copying shim registered above it; returns the shim's VFS name.
fn stack_for(ks: &std::path::Path, copies: &'static AtomicUsize) -> (sqlite_tde::Tde, String) {
    let tde = common::child::tde_for("tde-stacked", ks);
    let top = format!("{}-copying-above", tde.vfs_name());
    sqlite_vfs::register_static(
        &top,
        CopyingShim { inner: PassThrough::new(PassThroughConfig::default()), copies },
        RegisterOptions { base: Some(tde.vfs_name().to_string()), make_default: false },
    )
    .unwrap();
    (tde, top)
}

fn open_through(db: &std::path::Path, vfs: &str) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags_and_vfs(
        db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_CREATE,
        vfs,
    )
    .unwrap()
}

/// Child process: transactions of `TX_ROWS` rows through the shim above tde, each
/// acknowledged after COMMIT returned, until killed.
#[test]
fn stacked_child_entry() {
    let Ok(mode) = std::env::var(common::child::ROLE_VAR) else { return };
    static COPIES: AtomicUsize = AtomicUsize::new(0);
    let ks = std::path::PathBuf::from(std::env::var_os(ROLE_KS).unwrap());
    let db = std::path::PathBuf::from(std::env::var_os(ROLE_DB).unwrap());
    let (_tde, top) = stack_for(&ks, &COPIES);
    let c = open_through(&db, &top);
    c.execute_batch(&format!(
        "PRAGMA journal_mode={mode}; PRAGMA synchronous=FULL; PRAGMA cache_size=5;
         CREATE TABLE IF NOT EXISTS t(tx INTEGER, i INTEGER, v TEXT);"
    ))
    .unwrap();
    let start: i64 = c.query_row("SELECT coalesce(max(tx), 0) FROM t", [], |r| r.get(0)).unwrap();
    for tx in start + 1.. {
        c.execute_batch(&format!(
            "BEGIN; INSERT INTO t SELECT {tx}, k, 'stacked-kill-marker-' || hex(randomblob(150)) FROM (WITH RECURSIVE n(k) AS (SELECT 1 UNION ALL SELECT k+1 FROM n WHERE k<{TX_ROWS}) SELECT k FROM n); COMMIT;"
        ))
        .unwrap();
        println!("ack {tx}");
    }
}

/// Issue 15.2: a writer going through a shim above tde is killed (SIGKILL) mid-stream, three
/// times, in WAL and rollback mode. Each reopen through the same stack must recover every
/// acknowledged transaction whole (no partial one), with `integrity_check = ok`, and no byte of
/// plaintext may reach the disk.
fn killed_through_the_stack(mode: &str) {
    static COPIES: AtomicUsize = AtomicUsize::new(0);
    let dir = tempfile::tempdir().unwrap();
    let ks = dir.path().join("keystore");
    let db = dir.path().join(format!("killed-{mode}.db"));
    let mut acked = 0i64;
    let mut stack = None;
    for round in 0..3 {
        let (mut c, mut out) = common::child::spawn("stacked_child_entry", mode, &[(ROLE_KS, &ks), (ROLE_DB, &db)]);
        // Far enough in that WAL frames, checkpoints or journal spills are in play, then a
        // kill at a moment that varies between rounds.
        for _ in 0..40 + round * 17 {
            let l = common::child::wait_for(&mut out, "ack ").expect("child died on its own");
            acked = l[4..].parse().unwrap();
        }
        std::thread::sleep(std::time::Duration::from_micros(700 * (round as u64 + 1)));
        c.kill().unwrap();
        c.wait().unwrap();
        while let Some(l) = common::child::wait_for(&mut out, "ack ") {
            acked = l[4..].parse().unwrap();
        }
        // Registered after the first child created the keystore, once (names are global).
        let (_, top) = stack.get_or_insert_with(|| stack_for(&ks, &COPIES));
        let conn = open_through(&db, top);
        let ok: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
        assert_eq!(ok, "ok", "{mode} round {round}");
        let (max, partial): (i64, i64) = conn
            .query_row(
                &format!("SELECT coalesce(max(tx), 0), (SELECT count(*) FROM (SELECT tx FROM t GROUP BY tx HAVING count(*) != {TX_ROWS})) FROM t"),
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert!(max >= acked, "{mode} round {round}: {acked} acknowledged, only {max} recovered");
        assert_eq!(partial, 0, "{mode} round {round}: a partial transaction survived");
        let distinct: i64 = conn.query_row("SELECT count(DISTINCT tx) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(distinct, max, "{mode} round {round}: a transaction is missing");
        drop(conn);
        acked = max;
        eprintln!("{mode} round {round}: killed after {acked} acknowledged; recovered {max}, whole");
    }
    assert!(COPIES.load(Ordering::SeqCst) > 0, "the shim above never copied a name");
    for (path, bytes) in common::files_under(dir.path()) {
        assert!(!common::contains(&bytes, b"stacked-kill-marker"), "plaintext in {}", path.display());
    }
}

#[test]
fn killed_writer_through_a_shim_above_tde_wal_mode() {
    killed_through_the_stack("WAL");
}

#[test]
fn killed_writer_through_a_shim_above_tde_rollback_mode() {
    killed_through_the_stack("DELETE");
}

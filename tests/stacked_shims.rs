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

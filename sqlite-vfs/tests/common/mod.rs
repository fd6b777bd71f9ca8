//! Helpers shared by the integration tests: registering a pass-through VFS, opening
//! connections through it or through plain SQLite, deterministic data, and result dumps.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags};
use sqlite_vfs::passthrough::{PassThrough, PassThroughConfig, Stats};
use sqlite_vfs::{register_static, RegisterOptions, RegisteredVfs};

/// A freshly registered pass-through VFS with its own statistics.
pub struct Vfs {
    pub reg: RegisteredVfs,
    pub stats: Arc<Mutex<Stats>>,
}

impl Vfs {
    pub fn name(&self) -> &str {
        self.reg.name()
    }
    pub fn stats(&self) -> MutexGuard<'_, Stats> {
        self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Register a pass-through VFS under a unique name (registrations live for the process, so
/// every test gets its own to keep its statistics apart).
pub fn passthrough(tag: &str, config: PassThroughConfig) -> Vfs {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let name = format!("pt-{tag}-{}", NEXT.fetch_add(1, Ordering::Relaxed));
    let shim = PassThrough::new(config);
    let stats = shim.stats();
    let reg = register_static(&name, shim, RegisterOptions::default()).expect("register");
    Vfs { reg, stats }
}

/// A fresh empty directory. On Linux it lives in /dev/shm when available: every commit fsyncs,
/// and on a disk shared with busy builds fsync alone can take seconds; tmpfs supports all that
/// SQLite needs (POSIX locks, shared memory, mmap) and still sees every sync call.
pub fn tempdir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::Builder::new().prefix("sqlite-vfs-").tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().expect("temporary directory")
}

pub fn flags() -> OpenFlags {
    OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
}

/// Open `path` through `vfs` (`None` = SQLite's default VFS).
pub fn open(path: &Path, vfs: Option<&str>) -> Connection {
    match vfs {
        Some(v) => Connection::open_with_flags_and_vfs(path, flags(), v),
        None => Connection::open_with_flags(path, flags()),
    }
    .unwrap_or_else(|e| panic!("open {} via {vfs:?}: {e}", path.display()))
}

pub type Rows = Vec<Vec<Value>>;

/// All rows of a query.
pub fn rows(conn: &Connection, sql: &str) -> Rows {
    let mut stmt = conn.prepare(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    let n = stmt.column_count();
    let mut out = Vec::new();
    let mut rs = stmt.query([]).unwrap();
    while let Some(r) = rs.next().unwrap() {
        out.push((0..n).map(|i| r.get::<_, Value>(i).unwrap()).collect());
    }
    out
}

/// A single value.
pub fn one<T: rusqlite::types::FromSql>(conn: &Connection, sql: &str) -> T {
    conn.query_row(sql, [], |r| r.get(0)).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Every row of every table of schema `db`, in a stable order, plus an integrity check.
pub fn dump(conn: &Connection, db: &str) -> Vec<(String, Rows)> {
    let mut out = vec![("integrity".to_owned(), rows(conn, &format!("PRAGMA {db}.integrity_check")))];
    let tables: Vec<String> =
        rows(conn, &format!("SELECT name FROM {db}.sqlite_schema WHERE type='table' ORDER BY name"))
            .into_iter()
            .map(|r| match &r[0] {
                Value::Text(t) => t.clone(),
                v => panic!("{v:?}"),
            })
            .collect();
    for t in tables {
        let r = rows(conn, &format!("SELECT * FROM {db}.\"{t}\" ORDER BY 1, 2"));
        out.push((t, r));
    }
    out
}

/// SQL that fills table `name` with `n` deterministic rows of roughly 150-350 bytes.
pub fn fill_sql(name: &str, n: u32) -> String {
    format!(
        "CREATE TABLE {name}(id INTEGER PRIMARY KEY, grp INTEGER, k TEXT, payload BLOB);
         WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {n})
         INSERT INTO {name}
           SELECT x, (x * 7919) % 97,
                  printf('key-%07d-%s', (x * 104729) % 1000003, substr('abcdefghijklmnopqrstuvwxyz', 1 + x % 26)),
                  CAST(printf('%.*c', 100 + (x * 31) % 200, char(65 + x % 26)) AS BLOB)
           FROM c;"
    )
}

/// Run `workload` once through `vfs` and once through plain SQLite, each in its own empty
/// directory, and require identical results. Then reopen the pass-through database with plain
/// SQLite: a pass-through must leave files byte-compatible.
pub fn compare<F>(vfs: &Vfs, workload: F)
where
    F: Fn(&Path, Option<&str>) -> Vec<Rows>,
{
    let a = tempdir();
    let b = tempdir();
    let via_shim = workload(a.path(), Some(vfs.name()));
    let plain = workload(b.path(), None);
    assert_eq!(via_shim.len(), plain.len());
    for (i, (x, y)) in via_shim.iter().zip(&plain).enumerate() {
        assert_eq!(x.len(), y.len(), "result {i}: row count differs");
        for (j, (rx, ry)) in x.iter().zip(y).enumerate() {
            assert_eq!(rx, ry, "result {i}, row {j} differs");
        }
    }
    let db = a.path().join("main.db");
    if db.exists() {
        let reopened = dump(&open(&db, None), "main");
        let original = dump(&open(&b.path().join("main.db"), None), "main");
        assert_eq!(reopened, original, "pass-through file differs when read by plain SQLite");
    }
}

/// Statistics invariants every workload must satisfy: each journal/WAL open was linked to its
/// main database, and every opened file was closed.
pub fn assert_links(stats: &Stats) {
    let linkable = stats.opens_of(sqlite_vfs::FileKind::MainJournal) + stats.opens_of(sqlite_vfs::FileKind::Wal);
    assert_eq!(stats.unlinked_opens, 0, "{}", stats.summary());
    assert_eq!(stats.mismatched_links, 0, "{}", stats.summary());
    assert_eq!(stats.linked_opens, linkable, "{}", stats.summary());
}

pub fn assert_all_closed(stats: &Stats) {
    let opened: u64 = stats.opens.values().sum();
    assert_eq!(stats.closes, opened, "{}", stats.summary());
}

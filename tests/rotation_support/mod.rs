//! Helpers shared by the rotation tests: one VFS per keystore path (parent and child
//! processes agree on it), template databases, content snapshots.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use rusqlite::Connection;
use sqlite_tde::{OpenOptions, Tde};

pub const KS: &str = "SQLITE_TDE_TEST_KEYSTORE";
pub const DB: &str = "SQLITE_TDE_TEST_DB";

/// The VFS over `keystore`, registered once per process under a name derived from the path.
pub fn tde_for(keystore: &Path) -> Tde {
    let name = format!("tde-rot-{:x}", {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        keystore.hash(&mut h);
        h.finish()
    });
    Tde::builder().keystore(keystore).vfs_name(name).register().unwrap()
}

pub fn open(tde: &Tde, db: &Path) -> Connection {
    let c = tde.open_with(db, &OpenOptions { key: None, read_only: false, must_exist: true }).unwrap();
    c.busy_timeout(std::time::Duration::from_secs(20)).unwrap();
    c
}

/// Deterministic content of ~`rows` rows over several tables and an index.
pub fn populate(c: &Connection, rows: usize) {
    c.execute_batch(
        "CREATE TABLE IF NOT EXISTS items(id INTEGER PRIMARY KEY, name TEXT, payload BLOB);
         CREATE INDEX IF NOT EXISTS items_name ON items(name);
         CREATE TABLE IF NOT EXISTS kv(k TEXT PRIMARY KEY, v TEXT) WITHOUT ROWID;",
    )
    .unwrap();
    let tx = c.unchecked_transaction().unwrap();
    for i in 0..rows {
        let blob: Vec<u8> = (0..(100 + (i * 37) % 900)).map(|j| ((i * 31 + j * 7) % 251) as u8).collect();
        tx.execute(
            "INSERT INTO items(name, payload) VALUES(?1, ?2)",
            rusqlite::params![format!("name-{:06}", (i * 7919) % rows), blob],
        )
        .unwrap();
        tx.execute(
            "INSERT INTO kv(k, v) VALUES(?1, ?2)",
            rusqlite::params![format!("key-{i}"), format!("value-{}", i * i)],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

/// A digest of the whole logical content plus integrity_check.
pub fn snapshot(c: &Connection) -> Vec<String> {
    let q = |sql: &str| -> String { c.query_row(sql, [], |r| r.get::<_, String>(0)).unwrap() };
    vec![
        q("SELECT count(*) || ':' || total(length(payload)) || ':' || total(id) FROM items"),
        q("SELECT hex(group_concat(hex(substr(payload, 1, 8)) || name, ',')) FROM (SELECT * FROM items ORDER BY id)"),
        q("SELECT group_concat(k || '=' || v, ',') FROM (SELECT * FROM kv ORDER BY k)"),
        q("SELECT group_concat(name, ',') FROM (SELECT name FROM items INDEXED BY items_name ORDER BY name LIMIT 200)"),
        q("PRAGMA integrity_check"),
    ]
}

/// Copy `db` and its side files (`-tdewal`, `-tdejournal`) into `dir`.
pub fn copy_db(src: &Path, dir: &Path) -> PathBuf {
    let name = src.file_name().unwrap();
    let dst = dir.join(name);
    std::fs::copy(src, &dst).unwrap();
    for suffix in ["-tdewal", "-tdejournal"] {
        let s = PathBuf::from(format!("{}{suffix}", src.display()));
        if s.exists() {
            std::fs::copy(&s, PathBuf::from(format!("{}{suffix}", dst.display()))).unwrap();
        }
    }
    dst
}

pub fn side(db: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}{suffix}", db.display()))
}

/// `PRAGMA tde_status` as JSON.
pub fn status(c: &Connection) -> serde_json::Value {
    let s: String = c.query_row("PRAGMA tde_status", [], |r| r.get(0)).unwrap();
    serde_json::from_str(&s).unwrap()
}

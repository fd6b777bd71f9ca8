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
    let c = tde
        .open_with(db, &OpenOptions { key: None, read_only: false, must_exist: true, ..Default::default() })
        .unwrap();
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

/// SHA-256 of a whole file (byte-identity checks).
pub fn file_hash(path: &Path) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(std::fs::read(path).unwrap()).into()
}

/// A size-limited tmpfs mounted on a fresh directory (needs root), unmounted on drop: a real
/// file system that runs out of space.
pub struct SmallFs {
    pub dir: PathBuf,
    filler: PathBuf,
}

impl SmallFs {
    /// Mount `kib` KiB of tmpfs under `parent`, or `None` after printing why the test is
    /// skipped. Under CI (`SQLITE_TDE_CI=1`) an impossible mount fails the test instead.
    pub fn mount(test: &str, parent: &Path, kib: u64) -> Option<SmallFs> {
        let dir = parent.join("smallfs");
        std::fs::create_dir_all(&dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k,mode=0700"), "tmpfs"])
            .arg(&dir)
            .output();
        let why = match out {
            Ok(o) if o.status.success() => None,
            Ok(o) => Some(format!("mount -t tmpfs failed: {}", String::from_utf8_lossy(&o.stderr).trim())),
            Err(e) => Some(format!("cannot run mount: {e}")),
        };
        if let Some(why) = why {
            let msg = format!("{why} (a size-limited tmpfs needs root)");
            if std::env::var("SQLITE_TDE_CI").as_deref() == Ok("1") {
                panic!("{test}: {msg}");
            }
            eprintln!("SKIPPED {test}: {msg}");
            return None;
        }
        let filler = dir.join("filler");
        Some(SmallFs { dir, filler })
    }

    /// Fill the file system until a write fails with ENOSPC, then give back `leave` bytes:
    /// about that much stays free.
    pub fn fill_leaving(&self, leave: u64) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&self.filler).unwrap();
        let block = vec![0xa5u8; 64 << 10];
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break,
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
        let len = f.metadata().unwrap().len();
        assert!(len > leave, "the tmpfs is too small to leave {leave} bytes");
        f.set_len(len - leave).unwrap();
    }

    /// Free bytes of the file system.
    pub fn free_bytes(&self) -> u64 {
        let st = nix::sys::statvfs::statvfs(&self.dir).unwrap();
        st.blocks_available() as u64 * st.fragment_size() as u64
    }

    /// Remove the filler: the space is back.
    pub fn free(&self) {
        let _ = std::fs::remove_file(&self.filler);
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        // Lazy: a connection of a failing test may still hold a file in it.
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

//! The same workloads through plain SQLite and through the encrypting VFS, compared row by
//! row; every byte `tde` writes is scanned for plaintext markers (a recording VFS sits below
//! it), and so is every file left in the database directory.

mod common;

use std::sync::atomic::Ordering;

use common::recorder::{self, BYTES_SCANNED, HITS, WRITES_SCANNED};
use common::workload::{mutate, populate, rows, snapshot, temp_heavy};
use rusqlite::Connection;
use sqlite_tde::Tde;

struct Pair {
    env: common::Env,
    tde: Tde,
}

fn pair() -> Pair {
    recorder::ensure_registered();
    let env = common::Env::new();
    let name = format!("{}-rec", env.tde.vfs_name());
    let tde = Tde::builder()
        .keystore(env.dir.path().join("keystore"))
        .vfs_name(name)
        .base_vfs(recorder::RECORDER_VFS)
        .register()
        .unwrap();
    Pair { env, tde }
}

fn assert_no_leaks(dir: &std::path::Path, marker: &str) {
    let mut files = 0;
    let mut bytes = 0;
    for (p, b) in common::files_under(dir) {
        files += 1;
        bytes += b.len();
        assert!(!common::contains(&b, marker.as_bytes()), "plaintext marker in {}", p.display());
        assert!(!common::contains(&b, recorder::MARKER_CORE), "plaintext marker core in {}", p.display());
    }
    eprintln!("file kinds seen below tde: {:?}", recorder::KINDS.lock().unwrap());
    let hits = HITS.lock().unwrap();
    assert!(hits.is_empty(), "plaintext written below the VFS: {hits:?}");
    eprintln!(
        "leak scan: {files} files / {bytes} bytes on disk; {} writes / {} bytes below the VFS (process total) — 0 hits",
        WRITES_SCANNED.load(Ordering::Relaxed),
        BYTES_SCANNED.load(Ordering::Relaxed)
    );
}

fn run_mode(mode: &str, page_size: u32) {
    let marker = format!("XYZZY{}{page_size}", mode.to_lowercase());
    let p = pair();
    let plain_path = p.env.path("plain.db");
    let enc_path = p.env.path("enc.db");
    let plain = Connection::open(&plain_path).unwrap();
    let enc = p.tde.open(&enc_path).unwrap();
    let mut results = Vec::new();
    for c in [&plain, &enc] {
        c.execute_batch(&format!("PRAGMA page_size={page_size}; PRAGMA journal_mode={mode}; PRAGMA cache_size=50;"))
            .unwrap();
        populate(c, &marker, 1500);
        mutate(c, &marker);
        let mut s = snapshot(c, &marker);
        s.extend(temp_heavy(c, &marker));
        s.extend(rows(c, "PRAGMA page_size"));
        results.push(s);
    }
    assert_eq!(results[0], results[1], "plain and encrypted results differ ({mode}, {page_size})");
    drop(enc);
    // Reopen and compare again: everything made it to disk and back.
    let enc = p.tde.open(&enc_path).unwrap();
    assert_eq!(snapshot(&plain, &marker), snapshot(&enc, &marker));
    drop(enc);
    drop(plain);
    std::fs::remove_file(&plain_path).unwrap();
    for ext in ["-wal", "-shm", "-journal"] {
        // The plain database's side files: SQLite's names.
        let _ = std::fs::remove_file(format!("{}{ext}", plain_path.display()));
    }
    assert_no_leaks(p.env.dir.path(), &marker);
    let kinds = recorder::KINDS.lock().unwrap().clone();
    // (MEMORY journal mode keeps statement journals in memory by design.)
    let expected: &[&str] = if mode == "MEMORY" {
        &["main-db", "temp-db", "transient-db"]
    } else {
        &["main-db", "statement-journal", "temp-db", "transient-db"]
    };
    for k in expected {
        assert!(kinds.contains(k), "workload never opened a {k}: {kinds:?}");
    }
}

#[test]
fn journal_mode_delete() {
    run_mode("DELETE", 4096);
}
#[test]
fn journal_mode_truncate() {
    run_mode("TRUNCATE", 4096);
}
#[test]
fn journal_mode_persist() {
    run_mode("PERSIST", 4096);
}
#[test]
fn journal_mode_wal() {
    run_mode("WAL", 4096);
}
#[test]
fn journal_mode_memory() {
    run_mode("MEMORY", 4096);
}
#[test]
fn page_size_512() {
    run_mode("DELETE", 512);
    run_mode("WAL", 512);
}
#[test]
fn page_size_65536() {
    run_mode("DELETE", 65536);
    run_mode("WAL", 65536);
}

#[test]
fn vacuum_page_size_change_and_vacuum_into() {
    let marker = "XYZZYvacuum";
    let p = pair();
    let db = p.env.path("v.db");
    let c = p.tde.open(&db).unwrap();
    populate(&c, marker, 800);
    let before = snapshot(&c, marker);
    c.execute_batch("DELETE FROM items WHERE id % 2 = 0; VACUUM;").unwrap();
    // Page size change: rollback mode + VACUUM rewrites every page at the new size.
    c.execute_batch("PRAGMA page_size=8192; VACUUM;").unwrap();
    assert_eq!(rows(&c, "PRAGMA page_size"), vec![vec!["8192".to_string()]]);
    assert_eq!(rows(&c, "PRAGMA integrity_check"), vec![vec!["ok".to_string()]]);
    let after = snapshot(&c, marker);
    assert_ne!(before, after);
    // VACUUM INTO creates a new database through the same VFS: encrypted, under the default key.
    let into = p.env.path("into.db");
    c.execute(&format!("VACUUM INTO '{}'", into.display()), []).unwrap();
    drop(c);
    let c2 = p.tde.open(&into).unwrap();
    assert_eq!(snapshot(&c2, marker), after);
    drop(c2);
    // Reopen the original after the page-size change.
    let c = p.tde.open(&db).unwrap();
    assert_eq!(snapshot(&c, marker), after);
    drop(c);
    assert!(Connection::open(&into)
        .unwrap()
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get::<_, i64>(0))
        .is_err());
    assert_no_leaks(p.env.dir.path(), marker);
}

#[test]
fn backup_api_both_directions() {
    let marker = "XYZZYbackup";
    let p = pair();
    let plain = Connection::open(p.env.path("plain.db")).unwrap();
    populate(&plain, marker, 600);
    let want = snapshot(&plain, marker);
    // plain -> encrypted
    let mut enc = p.tde.open(p.env.path("enc.db")).unwrap();
    {
        let b = rusqlite::backup::Backup::new(&plain, &mut enc).unwrap();
        b.run_to_completion(64, std::time::Duration::ZERO, None).unwrap();
    }
    assert_eq!(snapshot(&enc, marker), want);
    // encrypted -> encrypted
    let mut enc2 = p.tde.open(p.env.path("enc2.db")).unwrap();
    {
        let b = rusqlite::backup::Backup::new(&enc, &mut enc2).unwrap();
        b.run_to_completion(64, std::time::Duration::ZERO, None).unwrap();
    }
    assert_eq!(snapshot(&enc2, marker), want);
    drop((plain, enc, enc2));
    std::fs::remove_file(p.env.path("plain.db")).unwrap();
    assert_no_leaks(p.env.dir.path(), marker);
}

#[test]
fn attach_and_cross_database_transaction() {
    let marker = "XYZZYattach";
    let p = pair();
    let main = p.tde.open(p.env.path("main.db")).unwrap();
    let other = p.env.path("other.db");
    drop(p.tde.open(&other).unwrap());
    main.execute_batch(&format!(
        "PRAGMA journal_mode=DELETE; ATTACH '{}' AS o; PRAGMA o.journal_mode=DELETE;
         CREATE TABLE a(x TEXT); CREATE TABLE o.b(y TEXT);
         BEGIN; INSERT INTO a VALUES('{marker}-a'); INSERT INTO o.b VALUES('{marker}-b'); COMMIT;",
        other.display()
    ))
    .unwrap();
    assert_eq!(
        rows(&main, "SELECT (SELECT x FROM a) || (SELECT y FROM o.b)"),
        vec![vec![format!("{marker}-a{marker}-b")]]
    );
    drop(main);
    let o = p.tde.open(&other).unwrap();
    assert_eq!(rows(&o, "SELECT y FROM b"), vec![vec![format!("{marker}-b")]]);
    drop(o);
    assert!(
        recorder::KINDS.lock().unwrap().contains(&"super-journal"),
        "a multi-database commit writes a super-journal"
    );
    assert_no_leaks(p.env.dir.path(), marker);
}

#[test]
fn two_connections_interleaved_and_mmap_declined() {
    let marker = "XYZZYtwo";
    let p = pair();
    let db = p.env.path("two.db");
    for mode in ["WAL", "DELETE"] {
        let _ = std::fs::remove_file(&db);
        let a = p.tde.open(&db).unwrap();
        a.execute_batch(&format!("PRAGMA journal_mode={mode}; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);"))
            .unwrap();
        let b = p.tde.open(&db).unwrap();
        b.execute_batch("PRAGMA mmap_size=268435456;").unwrap();
        b.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
        for i in 0..200 {
            let (w, r) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
            w.execute("INSERT INTO t(v) VALUES(?1)", [format!("{marker}-{i}")]).unwrap();
            let n: i64 = r.query_row("SELECT count(*) FROM t", [], |x| x.get(0)).unwrap();
            assert_eq!(n, i + 1);
        }
        assert_eq!(rows(&b, "PRAGMA integrity_check"), vec![vec!["ok".to_string()]]);
    }
    assert_no_leaks(p.env.dir.path(), marker);
}

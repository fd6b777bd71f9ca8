//! Process crashes: kill -9 in the middle of write transactions, and opens with a wrong key
//! while a hot journal or hot WAL is present.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::child::{self, ROLE_VAR};
use sqlite_tde::{Error, Tde};

const KS: &str = "SQLITE_TDE_TEST_KEYSTORE";
const DB: &str = "SQLITE_TDE_TEST_DB";

fn tde_for(keystore: &Path) -> Tde {
    child::tde_for("tde-crash", keystore)
}

/// Entry point of the child processes (does nothing in a normal test run).
#[test]
fn child_entry() {
    let Ok(role) = std::env::var(ROLE_VAR) else { return };
    let ks = PathBuf::from(std::env::var_os(KS).unwrap());
    let db = PathBuf::from(std::env::var_os(DB).unwrap());
    let tde = tde_for(&ks);
    let c = tde.open(&db).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    let out = std::io::stdout();
    match role.as_str() {
        "writer-wal" | "writer-delete" => {
            let mode = if role == "writer-wal" { "WAL" } else { "DELETE" };
            c.execute_batch(&format!(
                "PRAGMA journal_mode={mode}; PRAGMA synchronous=FULL; PRAGMA cache_size=20;
                 CREATE TABLE IF NOT EXISTS acks(n INTEGER PRIMARY KEY, filler BLOB);"
            ))
            .unwrap();
            let start: i64 = c.query_row("SELECT coalesce(max(n), 0) FROM acks", [], |r| r.get(0)).unwrap();
            for n in start + 1.. {
                let tx = c.unchecked_transaction().unwrap();
                tx.execute("INSERT INTO acks VALUES(?1, randomblob(3000))", [n]).unwrap();
                // Touch many pages so commits span several pages and spill the cache.
                tx.execute("UPDATE acks SET filler = randomblob(3000) WHERE n % 7 = ?1 % 7 AND n > ?1 - 60", [n])
                    .unwrap();
                tx.commit().unwrap();
                writeln!(out.lock(), "ack {n}").unwrap();
            }
        }
        "hot-journal" | "hot-wal" => {
            let wal = role == "hot-wal";
            c.execute_batch(&format!(
                "PRAGMA journal_mode={}; PRAGMA cache_size=10; PRAGMA wal_autocheckpoint=0;
                 CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);
                 INSERT INTO t(v) SELECT randomblob(1000) FROM (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i<200) SELECT i FROM n);",
                if wal { "WAL" } else { "DELETE" }
            ))
            .unwrap();
            if !wal {
                // An open transaction that spills its cache: the database file is modified and
                // the journal is hot when the process dies.
                c.execute_batch(
                    "BEGIN; UPDATE t SET v = randomblob(1200); INSERT INTO t(v) SELECT randomblob(900) FROM t;",
                )
                .unwrap();
            }
            writeln!(out.lock(), "ready").unwrap();
            std::thread::sleep(Duration::from_secs(60));
        }
        other => panic!("unknown role {other}"),
    }
}

fn integrity(c: &rusqlite::Connection) -> String {
    c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap()
}

fn kill_loop(mode: &str) {
    let env = common::Env::new();
    let ks = env.dir.path().join("crash-ks");
    let db = env.path("crash.db");
    let mut last_ack = 0i64;
    let mut kills = 0;
    let started = Instant::now();
    for round in 0..6 {
        let (mut ch, mut out) = child::spawn("child_entry", &format!("writer-{mode}"), &[(KS, &ks), (DB, &db)]);
        // Let it commit for a while, then SIGKILL it mid-stream.
        let deadline = Instant::now() + Duration::from_millis(150 + 97 * round);
        while Instant::now() < deadline {
            match child::wait_for(&mut out, "ack ") {
                Some(l) => last_ack = l[4..].parse().unwrap(),
                None => break,
            }
        }
        ch.kill().unwrap();
        ch.wait().unwrap();
        kills += 1;
        // Drain acknowledgements printed before the kill landed.
        while let Some(l) = child::wait_for(&mut out, "ack ") {
            last_ack = l[4..].parse().unwrap();
        }
        let tde = tde_for(&ks);
        let c = tde.open(&db).unwrap();
        assert_eq!(integrity(&c), "ok", "integrity after kill {kills} ({mode})");
        let (n, max): (i64, i64) =
            c.query_row("SELECT count(*), coalesce(max(n),0) FROM acks", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
        assert!(max >= last_ack, "acknowledged commit {last_ack} lost (max {max}) after kill {kills} ({mode})");
        assert_eq!(n, max, "gap in committed rows ({mode})");
    }
    eprintln!(
        "kill -9 {mode}: {kills} kills, {last_ack} acknowledged commits, 0 lost, integrity ok ({:?})",
        started.elapsed()
    );
    assert!(last_ack > 0, "child never committed");
}

#[test]
fn kill9_during_writes_wal() {
    kill_loop("wal");
}

#[test]
fn kill9_during_writes_delete() {
    kill_loop("delete");
}

fn snapshot_files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    common::files_under(dir).into_iter().filter(|(p, _)| !p.to_string_lossy().contains("ks")).collect()
}

fn wrong_key_with_hot(role: &str, hot_suffix: &str) {
    let env = common::Env::new();
    let dbdir = env.dir.path().join("db");
    std::fs::create_dir(&dbdir).unwrap();
    let ks = env.dir.path().join("ks-right");
    let db = dbdir.join("hot.db");
    let (mut ch, mut out) = child::spawn("child_entry", role, &[(KS, &ks), (DB, &db)]);
    assert_eq!(child::wait_for(&mut out, "ready").as_deref(), Some("ready"));
    ch.kill().unwrap();
    ch.wait().unwrap();
    let hot = PathBuf::from(format!("{}{hot_suffix}", db.display()));
    assert!(std::fs::metadata(&hot).map(|m| m.len() > 0).unwrap_or(false), "no hot {hot_suffix}");
    let before = snapshot_files(&dbdir);

    // 1. A keystore that does not hold the database's CMK.
    let other = tde_for(&env.dir.path().join("ks-other"));
    match other.open(&db) {
        Err(Error::Kms { source, .. }) => assert!(source.to_string().contains("not found"), "{source}"),
        other => panic!("expected a KMS error, got {other:?}"),
    }
    assert_eq!(snapshot_files(&dbdir), before, "files changed by a failed open (unknown key)");

    // 2. A consistent header from another database (its own DEK, KCV and UUID) pasted over ours.
    let right = tde_for(&ks);
    let donor = env.dir.path().join("donor.db");
    right.open(&donor).unwrap().execute_batch("CREATE TABLE x(y)").unwrap();
    let donor_bytes = std::fs::read(&donor).unwrap();
    let original = std::fs::read(&db).unwrap();
    let mut swapped = original.clone();
    swapped[..8192].copy_from_slice(&donor_bytes[..8192]);
    std::fs::write(&db, &swapped).unwrap();
    let before_swap = snapshot_files(&dbdir);
    match right.open(&db) {
        Err(Error::WrongKey { .. }) => {}
        other => panic!("expected WrongKey, got {other:?}"),
    }
    assert_eq!(snapshot_files(&dbdir), before_swap, "files changed by a failed open (swapped header)");
    std::fs::write(&db, &original).unwrap();

    // 3. The right key recovers: committed data present, the interrupted transaction gone.
    let c = right.open(&db).unwrap();
    assert_eq!(integrity(&c), "ok");
    let n: i64 = c.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 200);
}

#[test]
fn wrong_key_with_hot_journal_changes_nothing() {
    wrong_key_with_hot("hot-journal", "-tdejournal");
}

#[test]
fn wrong_key_with_hot_wal_changes_nothing() {
    wrong_key_with_hot("hot-wal", "-tdewal");
}

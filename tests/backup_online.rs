//! `sqlite-tde backup` while another process writes continuously, in WAL and in rollback
//! (DELETE) mode: every backup opens, verifies, and holds exactly the rows of a prefix of the
//! writer's transactions (a consistent snapshot), under a fresh data key.
//!
//! The writer is this test binary re-executed with a role; each of its transactions inserts
//! `ROWS` deterministic rows tagged with the transaction number and sets `meta.n` to it, so a
//! consistent snapshot is recognisable: `meta.n = m` and exactly the rows of transactions
//! `1..=m`, each with its expected value.

mod common;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use assert_cmd::Command;
use common::child::{self, ROLE_VAR};
use rusqlite::Connection;
use sqlite_tde::inspect::read_header;
use sqlite_tde::{OpenOptions, Tde};

const KS: &str = "SQLITE_TDE_TEST_KEYSTORE";
const DB: &str = "SQLITE_TDE_TEST_DB";
const STOP: &str = "SQLITE_TDE_TEST_STOP";
const ROWS: i64 = 8;
/// Transactions written before the writer starts (about 1.5 MB: several backup steps).
const INITIAL: i64 = 700;

fn tde_for(keystore: &Path) -> Tde {
    let name = format!("tde-bak-{:x}", {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        keystore.hash(&mut h);
        h.finish()
    });
    Tde::builder().keystore(keystore).vfs_name(name).register().unwrap()
}

/// The rows of transaction `n`, as SQL over `n`.
const VALUE: &str = "printf('txn-%d-row-%d-', ?1, ?2) || replace(hex(zeroblob(100)), '00', 'ab')";
const VALUE_CHECK: &str = "printf('txn-%d-row-%d-', txn, j) || replace(hex(zeroblob(100)), '00', 'ab')";

fn write_txn(c: &Connection, n: i64) {
    let tx = c.unchecked_transaction().unwrap();
    for j in 0..ROWS {
        tx.execute(&format!("INSERT INTO t(txn, j, v) VALUES(?1, ?2, {VALUE})"), [n, j]).unwrap();
    }
    // Touch older rows too, so pages all over the file change.
    tx.execute("UPDATE t SET touched = touched + 1 WHERE txn = ?1 / 2", [n]).unwrap();
    tx.execute("UPDATE meta SET n = ?1", [n]).unwrap();
    tx.commit().unwrap();
}

/// Entry point of the writer process (does nothing in a normal test run).
#[test]
fn child_entry() {
    let Ok(role) = std::env::var(ROLE_VAR) else { return };
    assert_eq!(role, "writer");
    let ks = PathBuf::from(std::env::var_os(KS).unwrap());
    let db = PathBuf::from(std::env::var_os(DB).unwrap());
    let stop = PathBuf::from(std::env::var_os(STOP).unwrap());
    let c = tde_for(&ks).open_with(&db, &OpenOptions { must_exist: true, ..Default::default() }).unwrap();
    // Long enough to outlast a backup holding its read lock in rollback mode.
    c.busy_timeout(Duration::from_secs(60)).unwrap();
    let mut n: i64 = c.query_row("SELECT n FROM meta", [], |r| r.get(0)).unwrap();
    let started = Instant::now();
    while !stop.exists() && started.elapsed() < Duration::from_secs(120) {
        n += 1;
        write_txn(&c, n);
        if n % 5 == 0 || n == INITIAL + 1 {
            println!("committed {n}");
        }
        // A short pause between transactions, as an application has: without it, readers in
        // rollback mode starve (they can only take their lock between two commits).
        std::thread::sleep(Duration::from_millis(2));
    }
    println!("stopped {n}");
}

fn committed(db: &Path, tde: &Tde) -> i64 {
    let c = tde.open_with(db, &OpenOptions { read_only: true, must_exist: true, ..Default::default() }).unwrap();
    c.busy_timeout(Duration::from_secs(60)).unwrap();
    c.query_row("SELECT n FROM meta", [], |r| r.get(0)).unwrap()
}

/// Check that `backup` is a consistent snapshot; returns its transaction count.
fn check_snapshot(tde: &Tde, backup: &Path) -> i64 {
    let c = tde.open_with(backup, &OpenOptions { read_only: true, must_exist: true, ..Default::default() }).unwrap();
    let ok: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(ok, "ok");
    let m: i64 = c.query_row("SELECT n FROM meta", [], |r| r.get(0)).unwrap();
    let (count, txns, lo, hi): (i64, i64, i64, i64) = c
        .query_row("SELECT count(*), count(DISTINCT txn), min(txn), max(txn) FROM t", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .unwrap();
    assert_eq!((count, txns, lo, hi), (m * ROWS, m, 1, m), "not the rows of transactions 1..={m}");
    let wrong: i64 = c
        .query_row(
            &format!("SELECT count(*) FROM t WHERE v IS NOT {VALUE_CHECK} OR j NOT BETWEEN 0 AND {}", ROWS - 1),
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(wrong, 0);
    // `touched` counts the later transactions that updated each row: n/2 = txn for n in
    // 1..=m, i.e. n in {2*txn, 2*txn+1} ∩ [1, m].
    let bad_touch: i64 = c
        .query_row("SELECT count(*) FROM t WHERE touched != (2 * txn <= ?1) + (2 * txn + 1 <= ?1)", [m], |r| r.get(0))
        .unwrap();
    assert_eq!(bad_touch, 0, "a row misses updates of transactions in the snapshot");
    m
}

fn cli(keystore: &Path) -> Command {
    let mut c = Command::cargo_bin("sqlite-tde").unwrap();
    for v in ["SQLITE_TDE_KEYSTORE", "SQLITE_TDE_KMS", "SQLITE_TDE_ROOT_KEY_FILE", "SQLITE_TDE_PASSPHRASE"] {
        c.env_remove(v);
    }
    c.arg("--keystore").arg(keystore);
    c
}

fn online_backup(mode: &str) {
    let dir = tempfile::tempdir().unwrap();
    let ks = dir.path().join("keystore");
    let db = dir.path().join("live.db");
    let stop = dir.path().join("stop");
    let tde = tde_for(&ks);
    {
        let c = tde.open(&db).unwrap();
        c.execute_batch(&format!(
            "PRAGMA journal_mode={mode};
             CREATE TABLE t(id INTEGER PRIMARY KEY, txn INTEGER NOT NULL, j INTEGER NOT NULL, v TEXT, touched INTEGER NOT NULL DEFAULT 0);
             CREATE INDEX t_txn ON t(txn);
             CREATE TABLE meta(n INTEGER NOT NULL); INSERT INTO meta VALUES(0);"
        ))
        .unwrap();
        c.execute_batch("PRAGMA synchronous=OFF").unwrap();
        for n in 1..=INITIAL {
            write_txn(&c, n);
        }
    }
    // A separate CMK for one of the backups.
    cli(&ks).args(["kms", "create-key", "--alias", "alias/backup"]).assert().success();

    let (mut writer, mut out) =
        child::spawn("child_entry", "writer", &[(KS, ks.as_path()), (DB, db.as_path()), (STOP, stop.as_path())]);
    assert!(child::wait_for(&mut out, "committed").is_some(), "the writer did not start");

    let t0 = Instant::now();
    let mut backups = Vec::new();
    for (i, key) in [None, Some("alias/backup"), None].into_iter().enumerate() {
        let before = committed(&db, &tde);
        let dest = dir.path().join(format!("backup-{i}.db"));
        let mut cmd = cli(&ks);
        cmd.arg("--json").arg("backup").arg(&db).arg(&dest).arg("--verify");
        if let Some(k) = key {
            cmd.args(["--key", k]);
        }
        let assert = cmd.assert().success();
        let summary: serde_json::Value = serde_json::from_slice(&assert.get_output().stdout).unwrap();
        assert_eq!(summary["verify"]["ok"], true, "{summary}");
        assert!(summary["pages"].as_u64().unwrap() > 300, "{summary}");
        let after = committed(&db, &tde);
        backups.push((dest, before, after, key));
    }
    eprintln!("{mode}: backups took {:?}", t0.elapsed());
    let progressed = committed(&db, &tde);
    std::fs::write(&stop, b"").unwrap();
    let mut last = String::new();
    for line in (&mut out).lines() {
        let line = line.unwrap();
        if let Some(at) = line.find("stopped ") {
            last = line[at + 8..].trim().to_string();
        }
    }
    assert!(writer.wait().unwrap().success(), "the writer failed");
    let final_n: i64 = last.parse().expect("writer's final count");
    assert!(final_n > INITIAL + 3, "the writer made no progress: {final_n}");

    let (src_header, _) = read_header(&db).unwrap();
    let backup_key = String::from_utf8(
        cli(&ks).args(["kms", "describe", "alias/backup", "--json"]).assert().success().get_output().stdout.clone(),
    )
    .unwrap();
    let backup_key: serde_json::Value = serde_json::from_str(&backup_key).unwrap();
    for (dest, before, after, key) in &backups {
        let m = check_snapshot(&tde, dest);
        assert!(*before <= m && m <= *after, "snapshot {m} outside the backup's window {before}..={after}");
        let (h, _) = read_header(dest).unwrap();
        assert_ne!(h.db_uuid, src_header.db_uuid, "a backup is a new database");
        assert_ne!(h.wrapped_dek, src_header.wrapped_dek, "a backup has a fresh data key");
        match key {
            None => assert_eq!(h.key.uri, src_header.key.uri),
            Some(_) => assert_eq!(h.key.key_id(), backup_key["key_id"].as_str().unwrap()),
        }
        cli(&ks).arg("verify").arg(dest).assert().success();
    }
    if mode == "WAL" {
        // Readers do not block the writer in WAL mode: it committed while backups ran.
        assert!(backups.iter().any(|(_, before, after, _)| after > before), "{backups:?}");
    }
    assert!(progressed >= backups.last().unwrap().2);
    // The source is intact.
    cli(&ks).arg("verify").arg(&db).assert().success();
    assert!(check_snapshot(&tde, &db) >= final_n);
}

#[test]
fn backup_while_writing_wal() {
    if std::env::var(ROLE_VAR).is_ok() {
        return;
    }
    online_backup("WAL");
}

#[test]
fn backup_while_writing_delete() {
    if std::env::var(ROLE_VAR).is_ok() {
        return;
    }
    online_backup("DELETE");
}

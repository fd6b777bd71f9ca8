//! No plain SQLite can destroy a tde database (docs/RELIABILITY.md, "Seams"): a tde writer is
//! killed mid-transaction in every journal mode, with committed data in its WAL or a hot
//! rollback journal on disk; then stock SQLite clients that know nothing of tde — SQLite linked
//! into this test (default VFS), Debian's `sqlite3` shell, `/usr/bin/python3`'s `sqlite3`
//! module — read, write, check, back up and vacuum the file, while the writer is still alive
//! and again after it died. Every file must stay byte-identical, and the next tde open must
//! recover every committed row with `integrity_check = ok`.
//!
//! Before side files got names of their own, the plain client's close deleted the WAL
//! (committed transactions lost) and its read deleted the hot journal (a half-updated
//! database).

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::child::{self, ROLE_VAR};
use sqlite_tde::Tde;

const KS: &str = "SQLITE_TDE_TEST_KEYSTORE";
const DB: &str = "SQLITE_TDE_TEST_DB";
const SHELL: &str = "/usr/bin/sqlite3";
const PYTHON: &str = "/usr/bin/python3";
/// Committed transactions before the interrupted one; each inserts `ROWS_PER_TX` rows.
const COMMITS: i64 = 100;
const ROWS_PER_TX: i64 = 20;

fn tde_for(keystore: &Path) -> Tde {
    child::tde_for("tde-stock", keystore)
}

/// Child: commit `COMMITS` transactions in journal mode ROLE, then start one more that spills
/// its changes to the database file (rollback modes: the journal is hot) or to the WAL
/// (uncommitted frames after committed ones), say "mid", and wait to be killed.
#[test]
fn child_entry() {
    let Ok(mode) = std::env::var(ROLE_VAR) else { return };
    let ks = PathBuf::from(std::env::var_os(KS).unwrap());
    let db = PathBuf::from(std::env::var_os(DB).unwrap());
    let c = tde_for(&ks).open(&db).unwrap();
    c.execute_batch(&format!(
        "PRAGMA journal_mode={mode}; PRAGMA synchronous=FULL; PRAGMA cache_size=8; PRAGMA wal_autocheckpoint=0;
         CREATE TABLE acks(n INTEGER PRIMARY KEY, v TEXT NOT NULL);"
    ))
    .unwrap();
    for tx in 0..COMMITS {
        let t = c.unchecked_transaction().unwrap();
        for i in 0..ROWS_PER_TX {
            let n = tx * ROWS_PER_TX + i + 1;
            t.execute("INSERT INTO acks VALUES(?1, 'row-' || ?1 || '-' || hex(randomblob(40)))", [n]).unwrap();
        }
        t.commit().unwrap();
    }
    c.execute_batch(
        "BEGIN; UPDATE acks SET v = 'uncommitted'; INSERT INTO acks(v) SELECT 'uncommitted' FROM acks LIMIT 500;",
    )
    .unwrap();
    writeln!(std::io::stdout().lock(), "mid").unwrap();
    std::thread::sleep(Duration::from_secs(120));
}

/// Every file in `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    common::files_under(dir)
        .into_iter()
        .filter(|(p, _)| !p.starts_with(dir.join("ks")))
        .map(|(p, b)| (p.strip_prefix(dir).unwrap().display().to_string(), b))
        .collect()
}

fn assert_unchanged(dir: &Path, before: &BTreeMap<String, Vec<u8>>, client: &str) {
    let after = snapshot(dir);
    let names = |m: &BTreeMap<String, Vec<u8>>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&after), names(before), "{client} created or deleted files");
    for (name, bytes) in before {
        assert!(after[name] == *bytes, "{client} changed {name}");
    }
}

/// What a careless operator or a connection without `vfs=tde` does to the file.
const STATEMENTS: &[&str] = &[
    "SELECT count(*) FROM sqlite_master",
    "PRAGMA integrity_check",
    "PRAGMA journal_mode",
    "PRAGMA journal_mode=DELETE",
    "PRAGMA journal_mode=WAL",
    "CREATE TABLE IF NOT EXISTS intruder(x)",
    "INSERT INTO acks VALUES(999999, 'plain')",
    "VACUUM",
    "PRAGMA wal_checkpoint(TRUNCATE)",
];

/// SQLite linked into this test, default (unix) VFS: each statement on a fresh connection, plus
/// an online backup out of it.
fn linked_sqlite(db: &Path, out: &Path) {
    for sql in STATEMENTS {
        let c = rusqlite::Connection::open(db).unwrap();
        let r = c.execute_batch(sql);
        assert!(r.is_err(), "plain SQLite ran {sql:?} on a tde database");
        drop(c);
    }
    let src = rusqlite::Connection::open(db).unwrap();
    let mut dst = rusqlite::Connection::open(out.join("linked-backup.db")).unwrap();
    let backup = rusqlite::backup::Backup::new(&src, &mut dst).unwrap();
    // Busy while the writer holds its lock; an error once it is gone; never done.
    let step = backup.step(-1);
    assert!(!matches!(step, Ok(rusqlite::backup::StepResult::Done)), "plain SQLite backed up a tde database");
}

fn have(client: &str) -> bool {
    if Path::new(client).exists() {
        return true;
    }
    if std::env::var("SQLITE_TDE_CI").is_ok_and(|v| v == "1") {
        panic!("{client} is required with SQLITE_TDE_CI=1 (run .ci/setup.d/extension.sh)");
    }
    eprintln!("SKIPPED: {client} not installed (run .ci/setup.d/extension.sh)");
    false
}

/// Debian's sqlite3 shell: the dot-commands an operator types, one process each.
fn shell(db: &Path, out: &Path) {
    let backup = format!(".backup {}", out.join("shell-backup.db").display());
    let commands: Vec<String> = [".tables", ".schema", ".dbinfo", ".dump", &backup, ".recover"]
        .iter()
        .map(|s| s.to_string())
        .chain(STATEMENTS.iter().map(|s| format!("{s};")))
        .collect();
    for cmd in commands {
        let o = Command::new(SHELL).arg(db).arg(&cmd).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert!(!text.contains("row-"), "sqlite3 {cmd:?} printed plaintext rows: {text}");
    }
}

/// `/usr/bin/python3`'s sqlite3 module, as a script that forgot the extension would use it.
fn python(db: &Path) {
    let script = r#"
import sqlite3, sys
for sql in sys.argv[2:]:
    try:
        c = sqlite3.connect(sys.argv[1], timeout=0)
        c.execute(sql).fetchall()
        c.commit()
        print("UNEXPECTED SUCCESS:", sql)
    except sqlite3.DatabaseError as e:
        pass
    finally:
        c.close()
"#;
    let o = Command::new(PYTHON).arg("-c").arg(script).arg(db).args(STATEMENTS).output().unwrap();
    assert!(o.status.success(), "python failed: {}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(!stdout.contains("UNEXPECTED"), "{stdout}");
}

fn every_client(dir: &Path, db: &Path, out: &Path, when: &str) {
    let before = snapshot(dir);
    assert!(!before.is_empty());
    linked_sqlite(db, out);
    assert_unchanged(dir, &before, &format!("linked SQLite ({when})"));
    if have(SHELL) {
        shell(db, out);
        assert_unchanged(dir, &before, &format!("sqlite3 shell ({when})"));
    }
    if have(PYTHON) {
        python(db);
        assert_unchanged(dir, &before, &format!("python3 sqlite3 ({when})"));
    }
}

fn crash_then_stock_clients(mode: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let ks = dir.path().join("ks");
    let db = dir.path().join("app.db");
    let (mut ch, mut stdout) = child::spawn("child_entry", mode, &[(KS, &ks), (DB, &db)]);
    assert_eq!(child::wait_for(&mut stdout, "mid").as_deref(), Some("mid"), "writer did not get going ({mode})");
    every_client(dir.path(), &db, out.path(), "writer alive");
    ch.kill().unwrap();
    ch.wait().unwrap();
    every_client(dir.path(), &db, out.path(), "after kill -9");

    let c = tde_for(&ks).open(&db).unwrap();
    let integrity: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(integrity, "ok", "{mode}");
    let (count, max, bad): (i64, i64, i64) = c
        .query_row("SELECT count(*), max(n), sum(v NOT LIKE 'row-' || n || '-%') FROM acks", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!((count, max, bad), (COMMITS * ROWS_PER_TX, COMMITS * ROWS_PER_TX, 0), "{mode}: committed rows");
}

#[test]
fn wal_mode_survives_stock_clients() {
    crash_then_stock_clients("WAL");
}

#[test]
fn delete_mode_survives_stock_clients() {
    crash_then_stock_clients("DELETE");
}

#[test]
fn truncate_mode_survives_stock_clients() {
    crash_then_stock_clients("TRUNCATE");
}

#[test]
fn persist_mode_survives_stock_clients() {
    crash_then_stock_clients("PERSIST");
}

//! Rewrap (CMK rotation without touching pages): while other processes read and write in
//! WAL and rollback modes, they keep working and see the new header without reopening; the
//! header is only ever replaced by one that opens; `rewrap --all` reports which files still
//! reference older CMK versions; `info` shows the new key.

mod common;
mod rotation_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::child::{self, ROLE_VAR};
use rotation_support::{open, status, tde_for, DB, KS};
use sqlite_tde::inspect::read_header;
use sqlite_tde::kms::local::LocalKms;
use sqlite_tde::rotation::{self, RewrapOptions};

const SECONDS_VAR: &str = "SQLITE_TDE_TEST_SECONDS";

#[test]
fn child_entry() {
    let Ok(role) = std::env::var(ROLE_VAR) else { return };
    let ks = PathBuf::from(std::env::var_os(KS).unwrap());
    let db = PathBuf::from(std::env::var_os(DB).unwrap());
    let tde = tde_for(&ks);
    match role.as_str() {
        "worker" => {
            let secs: u64 = std::env::var(SECONDS_VAR).unwrap().parse().unwrap();
            let c = open(&tde, &db);
            let deadline = Instant::now() + Duration::from_secs(secs);
            let mut committed = 0u64;
            let mut keys = std::collections::BTreeSet::new();
            let mut i = std::process::id() as i64;
            let mut last_sample = Instant::now();
            while Instant::now() < deadline {
                i += 1;
                let r = (|| -> rusqlite::Result<()> {
                    let tx = c.unchecked_transaction()?;
                    let total: i64 = tx.query_row("SELECT sum(balance) FROM accounts", [], |r| r.get(0))?;
                    if total != 100_000 {
                        println!("worker BAD total {total}");
                        std::process::exit(2);
                    }
                    tx.execute("UPDATE accounts SET balance = balance - 3 WHERE id = ?1", [i % 100])?;
                    tx.execute("UPDATE accounts SET balance = balance + 3 WHERE id = ?1", [(i * 13) % 100])?;
                    tx.execute("INSERT INTO log(who, pad) VALUES(?1, randomblob(100))", [std::process::id()])?;
                    tx.commit()
                })();
                match r {
                    Ok(()) => committed += 1,
                    Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) => {}
                    Err(e) => {
                        println!("worker BAD error {e}");
                        std::process::exit(2);
                    }
                }
                if last_sample.elapsed() >= Duration::from_millis(100) {
                    keys.insert(status(&c)["key"].as_str().unwrap().to_string());
                    last_sample = Instant::now();
                }
                // A little think time between transactions (writers in a zero-delay loop
                // starve every other writer, SQLite's own included).
                std::thread::sleep(Duration::from_micros(500));
            }
            let key = status(&c)["key"].as_str().unwrap().to_string();
            println!("worker ok {committed} {} {key}", keys.len());
        }
        other => panic!("unknown role {other}"),
    }
}

fn accounts_db(dir: &Path, ks: &Path, mode: &str, key: &str) -> PathBuf {
    let tde = tde_for(ks);
    let db = dir.join(format!("accounts-{mode}.db"));
    let c = tde.open_with(&db, &sqlite_tde::OpenOptions { key: Some(key.into()), ..Default::default() }).unwrap();
    c.execute_batch(&format!(
        "PRAGMA journal_mode={mode};
         CREATE TABLE accounts(id INTEGER PRIMARY KEY, balance INTEGER NOT NULL);
         CREATE TABLE log(n INTEGER PRIMARY KEY, who INTEGER, pad BLOB);
         WITH RECURSIVE r(i) AS (SELECT 0 UNION ALL SELECT i+1 FROM r WHERE i<99) INSERT INTO accounts SELECT i, 1000 FROM r;"
    ))
    .unwrap();
    db
}

fn rewrap_under_load(mode: &str) {
    let env = common::Env::new();
    let ks = env.dir.path().join("ks");
    let local = LocalKms::new(&ks);
    let a = local.create_key(Some("alias/a"), "a").unwrap().key_id;
    let b = local.create_key(Some("alias/b"), "b").unwrap().key_id;
    let db = accounts_db(env.dir.path(), &ks, mode, "alias/a");
    let workers: Vec<_> = (0..2)
        .map(|_| child::spawn("child_entry", "worker", &[(KS, &ks), (DB, &db), (SECONDS_VAR, Path::new("8"))]))
        .collect();
    let tde = tde_for(&ks);
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(400));
    let mut rewraps = 0;
    for target in ["alias/b", "alias/a", "alias/b", "alias/a", "alias/b"] {
        let r = rotation::rewrap(
            &tde,
            &db,
            &RewrapOptions { key: Some(target.into()), busy_timeout: Duration::from_secs(10) },
        )
        .unwrap();
        assert_eq!(r.status, "rewrapped");
        let want = if target == "alias/a" { &a } else { &b };
        assert_eq!(r.key_uri, format!("local:{want}"));
        let (h, _) = read_header(&db).unwrap();
        assert_eq!(h.key.uri, format!("local:{want}"));
        rewraps += 1;
        std::thread::sleep(Duration::from_millis(400));
    }
    // The workers check their key once more at the end: the last rewrap must be before that.
    assert!(started.elapsed() < Duration::from_millis(7500), "rewraps took {:?} under load", started.elapsed());
    let mut total = 0;
    for (mut ch, mut out) in workers {
        let line = child::wait_for(&mut out, "worker ").unwrap();
        ch.wait().unwrap();
        let p: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(p[1], "ok", "{line}");
        // Without reopening, the worker's connection shows the final key, and saw both.
        assert_eq!(p[4], format!("local:{b}"), "{line}");
        assert!(p[3].parse::<u32>().unwrap() >= 2, "{line}");
        total += p[2].parse::<u64>().unwrap();
    }
    let c = open(&tde, &db);
    let (sum, logged): (i64, i64) = c
        .query_row("SELECT (SELECT sum(balance) FROM accounts), (SELECT count(*) FROM log)", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(sum, 100_000);
    assert_eq!(logged as u64, total);
    let ic: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(ic, "ok");
    eprintln!("{mode}: {rewraps} rewraps while 2 processes committed {total} transactions");
}

#[test]
fn rewrap_while_other_processes_read_and_write_wal() {
    rewrap_under_load("wal");
}

#[test]
fn rewrap_while_other_processes_read_and_write_delete() {
    rewrap_under_load("delete");
}

/// The same process: an open connection keeps working and reports the new key.
#[test]
fn open_connection_sees_the_new_header() {
    let env = common::Env::new();
    let ks = env.dir.path().join("ks");
    let local = LocalKms::new(&ks);
    local.create_key(Some("alias/a"), "").unwrap();
    let b = local.create_key(Some("alias/b"), "").unwrap().key_id;
    let tde = tde_for(&ks);
    let db = accounts_db(env.dir.path(), &ks, "wal", "alias/a");
    let conn = open(&tde, &db);
    let gen0 = status(&conn)["cipher_generation"].clone();
    rotation::rewrap(&tde, &db, &RewrapOptions { key: Some("alias/b".into()), ..Default::default() }).unwrap();
    let st = status(&conn);
    assert_eq!(st["key"], format!("local:{b}"));
    assert_eq!(st["cipher_generation"], gen0, "same DEK: the cipher is kept");
    conn.execute("UPDATE accounts SET balance = balance WHERE id = 1", []).unwrap();
    let sum: i64 = conn.query_row("SELECT sum(balance) FROM accounts", [], |r| r.get(0)).unwrap();
    assert_eq!(sum, 100_000);
    // Both slots were rewritten: nothing references the old CMK any more.
    let bytes = std::fs::read(&db).unwrap();
    for slot in [0, 1] {
        match sqlite_tde::format::Header::decode(&bytes[slot * 4096..(slot + 1) * 4096]) {
            sqlite_tde::format::SlotStatus::Valid(h) => assert_eq!(h.key.uri, format!("local:{b}")),
            other => panic!("slot {slot}: {other:?}"),
        }
    }
}

fn cli(ks: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sqlite-tde"));
    for v in ["SQLITE_TDE_KEYSTORE", "SQLITE_TDE_KMS", "SQLITE_TDE_ROOT_KEY_FILE", "SQLITE_TDE_PASSPHRASE"] {
        c.env_remove(v);
    }
    c.arg("--keystore").arg(ks);
    c
}

fn run(c: &mut Command) -> (bool, String, String) {
    let o = c.output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn cli_rewrap_and_info() {
    let env = common::Env::new();
    let ks = env.dir.path().join("ks");
    let db = env.path("c.db");
    let (ok, _, err) = run(cli(&ks).args(["sql"]).arg(&db).args(["CREATE TABLE t(x)", "INSERT INTO t VALUES(42)"]));
    assert!(ok, "{err}");
    let (ok, id, _) = run(cli(&ks).args(["kms", "create-key", "--alias", "alias/other"]));
    assert!(ok);
    let id = id.trim().to_string();
    let (ok, out, err) = run(cli(&ks).args(["rewrap"]).arg(&db).args(["--key", "alias/other"]));
    assert!(ok, "{err}");
    assert!(out.starts_with("rewrapped"), "{out}");
    let (_, info, _) = run(cli(&ks).args(["--json", "info"]).arg(&db));
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(v["key_id"], id);
    assert_eq!(v["key_version"], 1);
    let (ok, out, _) = run(cli(&ks).args(["rewrap"]).arg(&db));
    assert!(ok);
    assert!(out.starts_with("unchanged"), "{out}");
    let (ok, out, _) = run(cli(&ks).args(["sql"]).arg(&db).arg("SELECT x FROM t"));
    assert!(ok);
    assert_eq!(out.trim(), "42");
    // A key the keystore does not have: a clear error, the header unchanged.
    let before = std::fs::read(&db).unwrap()[..8192].to_vec();
    let (ok, _, err) = run(cli(&ks).args(["rewrap"]).arg(&db).args(["--key", "alias/missing"]));
    assert!(!ok);
    assert!(err.contains("not found"), "{err}");
    assert_eq!(std::fs::read(&db).unwrap()[..8192], before[..]);
}

/// `rewrap --all` over a directory tree: every database is rotated, non-databases are
/// skipped, and the summary names what still references an older version of a CMK. With a
/// keystore that can rotate CMKs (`kms rotate`), the version bookkeeping is checked too.
#[test]
fn cli_rewrap_all_reports_references() {
    let env = common::Env::new();
    let ks = env.dir.path().join("ks");
    let root = env.dir.path().join("fleet");
    std::fs::create_dir_all(root.join("nested")).unwrap();
    let (ok, _, _) = run(cli(&ks).args(["kms", "create-key", "--alias", "alias/fleet"]));
    assert!(ok);
    let dbs: Vec<PathBuf> = ["a.db", "b.db", "nested/c.db"].iter().map(|n| root.join(n)).collect();
    for d in &dbs {
        let (ok, _, err) = run(cli(&ks).args(["sql", "--key", "alias/fleet"]).arg(d).arg("CREATE TABLE t(x)"));
        assert!(ok, "{err}");
    }
    std::fs::write(root.join("notes.txt"), b"not a database").unwrap();
    let rotatable = run(cli(&ks).args(["kms", "rotate", "alias/fleet"])).0;
    let (ok, out, err) = run(cli(&ks).args(["rewrap", "--all"]).arg(&root));
    assert!(ok, "{out}{err}");
    assert_eq!(out.lines().filter(|l| l.starts_with("rewrapped") || l.starts_with("unchanged")).count(), 3, "{out}");
    assert!(!out.contains("notes.txt"));
    assert!(out.contains("no file references an older key version"), "{out}");
    if rotatable {
        assert!(out.contains("v1 -> "), "{out}");
        assert!(out.contains("newest v2"), "{out}");
        // Rotate again; one file is busy (a writer holds it longer than the busy timeout):
        // its rewrap fails and the summary names it as still on v2.
        assert!(run(cli(&ks).args(["kms", "rotate", "alias/fleet"])).0);
        let tde = tde_for(&ks);
        let holder = open(&tde, &dbs[2]);
        holder.execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES(1);").unwrap();
        let (ok, out, _) = run(cli(&ks).args(["--json", "rewrap", "--all", "--busy-timeout", "300"]).arg(&root));
        holder.execute_batch("COMMIT").unwrap();
        assert!(!ok, "a failed file fails the command");
        let summary: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        assert_eq!(summary["event"], "summary");
        assert_eq!(summary["keys"][0]["newest_version"], 3, "{summary}");
        let stale = summary["older_version_references"].as_array().unwrap();
        assert_eq!(stale.len(), 1, "{summary}");
        assert_eq!(stale[0]["key_version"], 2);
        assert!(stale[0]["path"].as_str().unwrap().ends_with("nested/c.db"));
    } else {
        eprintln!("this keystore cannot rotate CMKs (no `kms rotate`): version bookkeeping not exercised");
    }
}

/// A KMS whose ReEncrypt answers with a different data key: the rewrap must refuse to write
/// that header (it would not open), leaving the file byte for byte as it was.
#[test]
fn rewrap_never_writes_a_header_that_does_not_open() {
    use sqlite_tde::format::KeyRef;
    use sqlite_tde::kms::{EncryptionContext, GeneratedDataKey, Kms, KmsError};

    struct Liar(LocalKms);
    impl Kms for Liar {
        fn provider(&self) -> &str {
            "local"
        }
        fn generate_data_key(&self, key: &str, c: &EncryptionContext) -> Result<GeneratedDataKey, KmsError> {
            self.0.generate_data_key(key, c)
        }
        fn decrypt_data_key(
            &self,
            k: &KeyRef,
            w: &[u8],
            c: &EncryptionContext,
        ) -> Result<sqlite_tde::kms::PlaintextDataKey, KmsError> {
            self.0.decrypt_data_key(k, w, c)
        }
        fn rewrap_data_key(
            &self,
            _k: &KeyRef,
            _w: &[u8],
            c: &EncryptionContext,
            t: Option<&str>,
        ) -> Result<(Vec<u8>, KeyRef), KmsError> {
            let g = self.0.generate_data_key(t.unwrap_or(sqlite_tde::kms::DEFAULT_KEY_ALIAS), c)?;
            Ok((g.wrapped, g.key))
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let tde = sqlite_tde::Tde::builder()
        .vfs_name(format!("tde-liar-{}", std::process::id()))
        .register_with_kms(std::sync::Arc::new(Liar(LocalKms::new(dir.path().join("ks")))))
        .unwrap();
    LocalKms::new(dir.path().join("ks")).create_key(Some("alias/x"), "").unwrap();
    let db = dir.path().join("l.db");
    tde.open(&db).unwrap().execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES(1);").unwrap();
    let before = std::fs::read(&db).unwrap();
    let e =
        rotation::rewrap(&tde, &db, &RewrapOptions { key: Some("alias/x".into()), ..Default::default() }).unwrap_err();
    assert!(e.to_string().contains("wrong key"), "{e}");
    assert_eq!(std::fs::read(&db).unwrap(), before);
}

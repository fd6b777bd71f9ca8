//! End-to-end tests of the `sqlite-tde` binary. Every test uses its own temporary keystore
//! (passed with `--keystore`) and database directory; the KMS environment is cleared so the
//! user's keystore is never touched.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use predicates::prelude::*;

struct Env {
    _tmp: tempfile::TempDir,
    keystore: PathBuf,
    dbdir: PathBuf,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let keystore = tmp.path().join("keystore");
        let dbdir = tmp.path().join("db");
        std::fs::create_dir(&dbdir).unwrap();
        Env { _tmp: tmp, keystore, dbdir }
    }

    fn db(&self, name: &str) -> PathBuf {
        self.dbdir.join(name)
    }

    /// The binary with this test's keystore and a clean KMS environment.
    fn cmd(&self) -> Command {
        cmd_with_keystore(&self.keystore)
    }

    fn sql(&self, db: &Path, sql: &[&str]) -> Command {
        let mut c = self.cmd();
        c.arg("sql").arg(db).args(sql);
        c
    }

    fn create_key(&self, alias: &str) -> String {
        let out =
            self.cmd().args(["kms", "create-key", "--alias", alias]).assert().success().get_output().stdout.clone();
        let id = String::from_utf8(out).unwrap();
        assert_eq!(id.lines().count(), 1, "{id:?}");
        id.trim().to_string()
    }
}

fn cmd_with_keystore(keystore: &Path) -> Command {
    let mut c = Command::cargo_bin("sqlite-tde").unwrap();
    for v in ["SQLITE_TDE_KEYSTORE", "SQLITE_TDE_KMS", "SQLITE_TDE_ROOT_KEY_FILE", "SQLITE_TDE_PASSPHRASE"] {
        c.env_remove(v);
    }
    c.arg("--keystore").arg(keystore);
    c
}

fn stdout_of(c: &mut Command) -> String {
    String::from_utf8(c.assert().success().get_output().stdout.clone()).unwrap()
}

fn info_json(env: &Env, db: &Path) -> serde_json::Value {
    let out = stdout_of(env.cmd().args(["info", "--json"]).arg(db));
    serde_json::from_str(&out).unwrap()
}

#[test]
fn create_key_alias_and_info() {
    let env = Env::new();
    let id = env.create_key("alias/x");
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");

    let described: serde_json::Value =
        serde_json::from_str(&stdout_of(env.cmd().args(["--json", "kms", "describe", "alias/x"]))).unwrap();
    assert_eq!(described["key_id"], id.as_str());
    assert_eq!(described["aliases"], serde_json::json!(["alias/x"]));
    let listed = stdout_of(env.cmd().args(["kms", "list"]));
    assert!(listed.lines().any(|l| l.starts_with(&id) && l.contains("alias/x")), "{listed}");

    let db = env.db("a.db");
    env.sql(&db, &["CREATE TABLE t(x)"]).arg("--key").arg("alias/x").assert().success().stdout("");
    let info = info_json(&env, &db);
    for k in ["format_version", "cipher", "db_uuid", "key_id", "key_version", "page_size"] {
        assert!(info.get(k).is_some(), "missing {k} in {info}");
    }
    assert_eq!(info["key_id"], id.as_str());
    assert_eq!(info["format_version"], 1);
    assert_eq!(info["cipher"], "aes-256-xts");
    assert_eq!(info["key_version"], 1);
    assert_eq!(info["page_size"], 4096);
    let uuid = info["db_uuid"].as_str().unwrap();
    assert_eq!(uuid::Uuid::parse_str(uuid).unwrap().hyphenated().to_string(), uuid);

    let text = stdout_of(env.cmd().arg("info").arg(&db));
    assert!(text.lines().any(|l| l == format!("key_id: {id}")), "{text}");
    assert!(text.lines().any(|l| l == "page_size: 4096"), "{text}");
}

#[test]
fn sql_prints_rows() {
    let env = Env::new();
    let db = env.db("rows.db");
    env.sql(
        &db,
        &[
            "PRAGMA journal_mode=WAL",
            "CREATE TABLE t(a, b, c); INSERT INTO t VALUES(1, 'a', NULL);",
            "INSERT INTO t VALUES(2.5, 'b', x'41'); SELECT * FROM t ORDER BY a; SELECT count(*) FROM t",
            "SELECT 1.0, 1e20, -7, 0.1",
        ],
    )
    .assert()
    .success()
    .stdout("wal\n1|a|\n2.5|b|A\n2\n1.0|1.0e+20|-7|0.1\n")
    .stderr("");

    // Dot-commands as arguments: headers, another mode, dump.
    let out = stdout_of(&mut env.sql(&db, &[".headers on", ".mode csv", "SELECT a, b FROM t ORDER BY a", ".dump"]));
    assert!(out.starts_with("a,b\r\n1,a\r\n2.5,b\r\n"), "{out}");
    assert!(out.contains("CREATE TABLE t(a, b, c);\nINSERT INTO \"t\" VALUES(1,'a',NULL);"), "{out}");

    let json = stdout_of(env.cmd().arg("--json").arg("sql").arg(&db).arg("SELECT a, c FROM t ORDER BY a"));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v, serde_json::json!([{"a": 1, "c": null}, {"a": 2.5, "c": "41"}]));
}

#[test]
fn sql_error_exits_1_with_message_on_stderr() {
    let env = Env::new();
    let db = env.db("err.db");
    env.sql(&db, &["SELEC 1"]).assert().code(1).stdout("").stderr(predicate::str::contains("syntax error"));
    // Statements before the failing one ran; none after it.
    env.sql(&db, &["CREATE TABLE t(x); INSERT INTO t VALUES(1); INSERT INTO nope VALUES(1); INSERT INTO t VALUES(2)"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("no such table: nope"));
    env.sql(&db, &["SELECT x FROM t"]).assert().success().stdout("1\n");
}

#[test]
fn sql_reads_stdin() {
    let env = Env::new();
    let db = env.db("stdin.db");
    env.sql(&db, &[])
        .write_stdin("CREATE TABLE t(x);\nINSERT INTO t\n  VALUES('q');\n-- comment\n.mode line\nSELECT x\nFROM t;\n")
        .assert()
        .success()
        .stdout("x = q\n");
}

#[test]
fn plain_sqlite_file_is_refused_with_exit_3() {
    let env = Env::new();
    let db = env.db("plain.db");
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES(1)").unwrap();
    }
    let before = std::fs::read(&db).unwrap();
    env.cmd()
        .arg("info")
        .arg(&db)
        .assert()
        .code(3)
        .stdout("")
        .stderr(predicate::str::contains("plain (unencrypted) SQLite database"));
    env.sql(&db, &["SELECT * FROM t"])
        .assert()
        .code(3)
        .stdout("")
        .stderr(predicate::str::contains("plain (unencrypted) SQLite database"));
    assert_eq!(std::fs::read(&db).unwrap(), before);
}

#[test]
fn other_keystore_fails_with_exit_3_and_leaves_file_alone() {
    let env = Env::new();
    let db = env.db("k.db");
    env.sql(&db, &["CREATE TABLE t(x); INSERT INTO t VALUES(42)"]).assert().success();
    let before = std::fs::read(&db).unwrap();

    let other = tempfile::tempdir().unwrap();
    cmd_with_keystore(&other.path().join("ks"))
        .arg("sql")
        .arg(&db)
        .arg("SELECT x FROM t")
        .assert()
        .code(3)
        .stdout("")
        .stderr(predicate::str::contains("KMS key not found"));
    assert_eq!(std::fs::read(&db).unwrap(), before, "the database file changed");

    // The header is still readable without the key; the page size is not.
    cmd_with_keystore(&other.path().join("ks"))
        .args(["info", "--json"])
        .arg(&db)
        .assert()
        .code(3)
        .stdout(predicate::str::contains("\"page_size\": null"))
        .stderr(predicate::str::contains("KMS key not found"));

    // A missing key for a new database leaves no empty file behind.
    let fresh = env.db("fresh.db");
    env.sql(&fresh, &["SELECT 1"]).arg("--key").arg("alias/none").assert().code(3);
    assert!(!fresh.exists());
}

#[test]
fn no_plaintext_on_disk() {
    let env = Env::new();
    const MARKER: &str = "PLAINTEXT-MARKER-7f3a";
    let wal = env.db("wal.db");
    let del = env.db("del.db");
    env.sql(
        &wal,
        &[
            "PRAGMA journal_mode=WAL",
            &format!(
                "CREATE TABLE t(x); WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 200) \
                 INSERT INTO t SELECT '{MARKER}' || i FROM s"
            ),
        ],
    )
    .assert()
    .success();
    env.sql(&del, &[&format!("CREATE TABLE t(x); INSERT INTO t VALUES('{MARKER}'); UPDATE t SET x = x || '2'")])
        .assert()
        .success();
    env.sql(&wal, &["SELECT count(*) FROM t WHERE x LIKE 'PLAINTEXT-MARKER%'"]).assert().success().stdout("200\n");
    let mut checked = 0;
    for entry in std::fs::read_dir(&env.dbdir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        assert!(!bytes.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()), "plaintext in {}", path.display());
        checked += 1;
    }
    assert!(checked >= 2);
}

#[test]
fn usage_errors_and_help() {
    let env = Env::new();
    env.cmd().arg("frobnicate").assert().code(2);
    env.cmd().arg("sql").assert().code(2);
    env.cmd()
        .arg("--help")
        .assert()
        .success()
        .stdout(predicate::str::contains("Exit codes:").and(predicate::str::contains("3  key, KMS or header error")));
}

/// `info` on a FIFO fails at once with a clear error (opening it used to block forever,
/// waiting for a writer).
#[test]
fn info_on_a_fifo_fails_at_once() {
    let env = Env::new();
    let fifo = env.db("pipe.db");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    env.cmd()
        .arg("info")
        .arg(&fifo)
        .timeout(std::time::Duration::from_secs(10))
        .assert()
        .code(1)
        .stdout("")
        .stderr(predicate::str::contains("not a regular file"));
}

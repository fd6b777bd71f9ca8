//! End-to-end tests of the `sqlite-tde` binary. Every test uses its own temporary keystore
//! (passed with `--keystore`) and database directory; the KMS environment is cleared so the
//! user's keystore is never touched.

mod common;
mod rotation_support;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use assert_cmd::Command;
use predicates::prelude::*;
use sqlite_tde::rotation::{self, RekeyOptions, ENV_CRASH_AT};

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
    assert_eq!(info["format_version"], sqlite_tde::format::FORMAT_VERSION);
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
    // The first use creates the keystore and says so, once; nothing else goes to stderr.
    .stderr(predicate::function(|e: &str| {
        e.lines().count() == 1 && e.starts_with("sqlite-tde: created a new keystore in")
    }));

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
        .stderr(predicate::str::contains("not found in keystore").and(predicate::str::contains("empty/new")));
    assert_eq!(std::fs::read(&db).unwrap(), before, "the database file changed");

    // The header is still readable without the key; the page size is not.
    cmd_with_keystore(&other.path().join("ks"))
        .args(["info", "--json"])
        .arg(&db)
        .assert()
        .code(3)
        .stdout(predicate::str::contains("\"page_size\": null"))
        .stderr(predicate::str::contains("not found in keystore").and(predicate::str::contains("empty/new")));

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

/// `info` and `verify` on a FIFO (or any non-regular file) fail at once with a clear error;
/// opening a FIFO for reading used to block until a writer came, so the command hung.
#[test]
fn info_and_verify_on_a_fifo_fail_at_once() {
    let env = Env::new();
    let fifo = env.db("pipe.db");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    for sub in ["info", "verify"] {
        let started = std::time::Instant::now();
        let out = env.cmd().arg(sub).arg(&fifo).timeout(std::time::Duration::from_secs(20)).output().unwrap();
        assert!(started.elapsed() < std::time::Duration::from_secs(15), "{sub} on a FIFO hung");
        assert!(!out.status.success(), "{sub} on a FIFO succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("not a regular file"), "{sub}: {stderr}");
    }
}

// ------------------------------------------------------------------------------------------
// Issue 12.5: errors name what is going on (a rekey or a conversion), with the documented
// exit code, and `info` reports what it can.
// ------------------------------------------------------------------------------------------

/// Crash injection only exists in debug builds: say so rather than pass.
fn crash_injection_available(test: &str) -> bool {
    if !cfg!(debug_assertions) {
        eprintln!("SKIPPED {test}: crash injection ({ENV_CRASH_AT}) needs a debug build");
    }
    cfg!(debug_assertions)
}

/// An encrypted database of `rows` rows under a new key `alias/e`, made by this process.
fn encrypted_db(env: &Env, name: &str, rows: usize) -> PathBuf {
    env.create_key("alias/e");
    let db = env.db(name);
    let tde = rotation_support::tde_for(&env.keystore);
    let c = tde.open_with(&db, &sqlite_tde::OpenOptions { key: Some("alias/e".into()), ..Default::default() }).unwrap();
    rotation_support::populate(&c, rows);
    db
}

/// (exit code, stdout, stderr) of a finished command.
fn outcome(c: &mut Command) -> (Option<i32>, String, String) {
    let o = c.timeout(Duration::from_secs(60)).output().unwrap();
    (o.status.code(), String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// A rekey of `db` run by this process that stops at its first chunk, with the rekey state in
/// the header and the EXCLUSIVE lock held, until the returned sender is dropped.
fn hold_running_rekey(env: &Env, db: &Path) -> (mpsc::Sender<()>, std::thread::JoinHandle<String>) {
    let (started_tx, started_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (ks, db) = (env.keystore.clone(), db.to_path_buf());
    let holder = std::thread::spawn(move || {
        let tde = rotation_support::tde_for(&ks);
        let mut first = true;
        let observer = move |_: &rotation::Progress| {
            if std::mem::take(&mut first) {
                started_tx.send(()).unwrap();
                let _ = release_rx.recv();
            }
            ControlFlow::Continue(())
        };
        let opts = RekeyOptions { chunk: Some(4096), ..RekeyOptions::default() };
        match rotation::with_progress(observer, || rotation::rekey(&tde, &db, &opts)) {
            Ok(r) => r.status,
            Err(e) => format!("error: {e}"),
        }
    });
    started_rx.recv_timeout(Duration::from_secs(60)).expect("the rekey did not start");
    (release_tx, holder)
}

/// While a rekey runs (another process holds the database), `rewrap` and `rekey` say that a
/// rekey is in progress, naming the database, and exit 3 as `--help` documents; `rewrap`
/// used to say "the database has no encryption header yet" (exit 1), `rekey` a bare
/// "database is locked" (exit 1). `info` prints the header with the rekey state of both
/// slots and says what it could not read (it used to exit 1 with a read-only message).
#[test]
fn rewrap_rekey_and_info_during_a_running_rekey_say_a_rekey_is_running() {
    let env = Env::new();
    let db = encrypted_db(&env, "busy.db", 400);
    let shown = db.display().to_string();
    let (release, holder) = hold_running_rekey(&env, &db);

    let (code, _, err) = outcome(env.cmd().args(["rewrap", "--busy-timeout", "300"]).arg(&db));
    assert!(err.contains("a rekey is in progress") && err.contains(&shown), "rewrap: {err}");
    assert!(!err.contains("no encryption header"), "rewrap: {err}");
    assert_eq!(code, Some(3), "rewrap: {err}");

    let (code, _, err) = outcome(env.cmd().args(["rekey", "--busy-timeout", "300"]).arg(&db));
    assert!(err.contains("a rekey is in progress") && err.contains(&shown), "rekey: {err}");
    assert_eq!(code, Some(3), "rekey: {err}");

    let (code, out, err) = outcome(env.cmd().args(["--json", "info"]).arg(&db));
    assert_eq!(code, Some(3), "info: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("info --json: {e}: {out}"));
    assert_eq!(v["rekey_in_progress"], true, "{v}");
    assert!(v["rekey_total"].as_u64().unwrap() > 0, "{v}");
    let slots = v["slots"].as_array().unwrap_or_else(|| panic!("no slots in {v}"));
    assert_eq!(slots.len(), 2, "{v}");
    assert!(slots.iter().all(|s| s["status"] == "valid"), "{v}");
    assert_eq!(slots.iter().filter(|s| s["rekey"].is_object()).count(), 1, "one slot holds the rekey state: {v}");
    assert_eq!(v["page_size"], serde_json::Value::Null, "{v}");
    assert!(v["unavailable"]["reason"].as_str().unwrap().contains("a rekey is in progress"), "{v}");
    assert!(
        err.contains("could not open the database to read page_size") && err.contains("a rekey is in progress"),
        "info: {err}"
    );

    drop(release);
    assert_eq!(holder.join().unwrap(), "done");
    let v = info_json(&env, &db);
    assert_eq!(v["rekey_in_progress"], false, "{v}");
    assert_eq!(v["page_size"], 4096, "{v}");
}

/// A rekey that cannot get the database (a write transaction of another process) names the
/// database and the wait, instead of SQLite's bare "database is locked".
#[test]
fn rekey_on_a_busy_database_names_it() {
    let env = Env::new();
    let db = encrypted_db(&env, "locked.db", 50);
    let before = std::fs::read(&db).unwrap();
    let tde = rotation_support::tde_for(&env.keystore);
    let writer = rotation_support::open(&tde, &db);
    writer.execute_batch("BEGIN EXCLUSIVE; INSERT INTO kv VALUES('held', 'x');").unwrap();

    let (code, _, err) = outcome(env.cmd().args(["rekey", "--busy-timeout", "200"]).arg(&db));
    assert!(err.contains(&db.display().to_string()) && err.contains("database is locked"), "{err}");
    assert!(err.contains("200 ms"), "{err}");
    assert_eq!(code, Some(1), "{err}");
    writer.execute_batch("ROLLBACK").unwrap();
    assert_eq!(std::fs::read(&db).unwrap(), before, "a refused rekey changed the file");
}

/// `info` on an interrupted rekey prints the header, both slots (one with the rekey state and
/// its progress) and what it could not read, and exits 3; the same for a disabled key.
#[test]
fn info_on_an_interrupted_rekey_or_a_disabled_key_prints_the_header() {
    if !crash_injection_available("info_on_an_interrupted_rekey_or_a_disabled_key_prints_the_header") {
        return;
    }
    let env = Env::new();
    let db = encrypted_db(&env, "cut.db", 400);
    let (code, _, err) = outcome(
        env.cmd().args(["rekey", "--chunk-size", "4096"]).arg(&db).env(ENV_CRASH_AT, "rekey:progress-synced@1"),
    );
    assert_ne!(code, Some(0), "the injected crash did not happen: {err}");

    let (code, out, err) = outcome(env.cmd().arg("info").arg(&db));
    assert_eq!(code, Some(3), "info: {err}");
    for line in ["rekey_in_progress: true", "slot_A: valid", "slot_B: valid", "unavailable: page_size"] {
        assert!(out.lines().any(|l| l.starts_with(line)), "no {line:?} in {out}");
    }
    assert!(out.contains("bytes re-encrypted)"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("rekey_progress: ")), "{out}");
    assert!(err.contains("could not open the database to read page_size") && err.contains("rekey --resume"), "{err}");
    assert!(!err.contains("read-only"), "{err}");

    // Finish it, then disable the key: the header is still shown, and what needs the key is not.
    env.cmd().args(["rekey", "--resume"]).arg(&db).assert().success();
    env.cmd().args(["kms", "disable", "alias/e"]).assert().success();
    let (code, out, err) = outcome(env.cmd().args(["--json", "info"]).arg(&db));
    assert_eq!(code, Some(3), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["key_state"], "disabled", "{v}");
    assert_eq!(v["rekey_in_progress"], false, "{v}");
    assert_eq!(v["slots"].as_array().map(Vec::len), Some(2), "{v}");
    assert_eq!(v["page_size"], serde_json::Value::Null, "{v}");
    assert!(v["unavailable"]["reason"].as_str().unwrap().contains("disabled"), "{v}");
    assert!(err.contains("could not open the database to read page_size") && err.contains("disabled"), "{err}");
}

/// `verify` and `info` on a file whose in-place encryption was interrupted name the
/// conversion and how to finish it, instead of reporting two damaged header slots.
#[test]
fn verify_and_info_name_an_interrupted_in_place_encryption() {
    if !crash_injection_available("verify_and_info_name_an_interrupted_in_place_encryption") {
        return;
    }
    let env = Env::new();
    let db = env.db("plain.db");
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        rotation_support::populate(&c, 600);
    }
    let (code, _, err) = outcome(
        env.cmd()
            .args(["encrypt", "--in-place", "--chunk-size", "65536"])
            .arg(&db)
            .env(ENV_CRASH_AT, "encrypt:convert-progress-synced@1"),
    );
    assert_ne!(code, Some(0), "the injected crash did not happen: {err}");

    let (code, out, err) = outcome(env.cmd().arg("verify").arg(&db));
    assert!(out.contains("in-place encryption") && out.contains("encrypt --in-place --resume"), "{out}");
    assert!(out.contains("bytes encrypted"), "{out}");
    assert!(!out.contains("slot A") && !out.contains("slot B"), "{out}");
    assert_eq!(code, Some(4), "{out}{err}");

    let (code, out, err) = outcome(env.cmd().arg("info").arg(&db));
    assert!(err.contains("in-place encryption") && err.contains(&db.display().to_string()), "{err}");
    assert_eq!(out, "");
    assert_eq!(code, Some(3), "{err}");

    env.cmd().args(["encrypt", "--in-place", "--resume"]).arg(&db).assert().success();
    env.cmd().arg("verify").arg(&db).assert().success();
}

/// Run the interactive shell (`sql DB` on a terminal: `script` provides a pseudo-terminal)
/// with `HOME` and `XDG_STATE_HOME` pointing into the test directory, type `line`, wait for
/// its output, end the session. `None`: no `script` here (skipped, and said so).
fn interactive_session(env: &Env, extra: &[&str], line: &str, expect: &str) -> Option<String> {
    use std::io::{Read, Write};
    use std::process::{Command as Std, Stdio};
    if Std::new("script").arg("--version").output().is_err() {
        eprintln!("SKIPPED: util-linux `script` is not installed; the interactive shell is not tested");
        return None;
    }
    let bin = assert_cmd::cargo::cargo_bin("sqlite-tde");
    let mut shell = format!("{} --keystore {} sql", bin.display(), env.keystore.display());
    for a in extra {
        shell.push(' ');
        shell.push_str(a);
    }
    shell.push_str(&format!(" {}", env.db("shell.db").display()));
    let home = env._tmp.path().join("home");
    let mut child = Std::new("script")
        .args(["-qec", &shell, "/dev/null"])
        .env("HOME", &home)
        .env("XDG_STATE_HOME", home.join("state"))
        .env_remove("SQLITE_TDE_KEYSTORE")
        .env_remove("SQLITE_TDE_KMS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut wait_for = |what: &str, seen: &mut Vec<u8>| {
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(seen).contains(what) {
            let n = stdout.read(&mut buf).unwrap();
            assert!(n > 0, "the shell ended before printing {what:?}:\n{}", String::from_utf8_lossy(seen));
            seen.extend_from_slice(&buf[..n]);
        }
    };
    // Typing before the prompt is up would be flushed by the line editor.
    wait_for("sqlite-tde> ", &mut seen);
    stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
    wait_for(expect, &mut seen);
    drop(stdin); // end of input: the shell saves what it keeps and exits
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).unwrap();
    seen.extend_from_slice(&rest);
    assert!(child.wait().unwrap().success());
    Some(String::from_utf8_lossy(&seen).into_owned())
}

/// Typed SQL never lands in plaintext on disk: no history by default (and none next to the
/// keystore's root key); `--history` keeps one under $XDG_STATE_HOME, owner-only, literals
/// redacted.
#[test]
fn shell_history_is_off_by_default_and_redacted_when_on() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let line =
        "CREATE TABLE IF NOT EXISTS t(x); INSERT INTO t VALUES('card-4111-1111'); SELECT count(*) || '-rows' FROM t;";
    let Some(out) = interactive_session(&env, &[], line, "1-rows") else { return };
    let leaks: Vec<_> = common::files_under(env._tmp.path())
        .into_iter()
        .filter(|(_, b)| common::contains(b, b"card-4111"))
        .map(|(p, _)| p)
        .collect();
    assert!(leaks.is_empty(), "typed SQL kept on disk: {leaks:?}");
    assert!(!env.keystore.join("shell_history").exists());
    assert!(out.contains("History is not saved"), "{out}");

    let Some(out) = interactive_session(&env, &["--history"], line, "2-rows") else { return };
    let hist = env._tmp.path().join("home/state/sqlite-tde/history");
    assert!(out.contains(&format!("History: {}", hist.display())), "{out}");
    let text = std::fs::read_to_string(&hist).unwrap();
    assert_eq!(text, "CREATE TABLE IF NOT EXISTS t(x); INSERT INTO t VALUES('?'); SELECT count(*) || '?' FROM t;\n");
    assert_eq!(std::fs::metadata(&hist).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(hist.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
    assert!(!env.keystore.join("shell_history").exists());
}

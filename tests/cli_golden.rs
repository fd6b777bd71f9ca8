//! Golden tests of the `sqlite-tde` command line: exact output (stdout, stderr) and exit code
//! of every command, successes and errors. Commands run in a temporary directory with relative
//! paths; UUIDs and times are replaced by placeholders, the directory by `[TMP]`.

use std::path::{Path, PathBuf};

use assert_cmd::Command;

struct Env {
    tmp: tempfile::TempDir,
}

/// The result of one command, normalised.
#[derive(Debug, PartialEq, Eq)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Replace every UUID (8-4-4-4-12 hex digits) with `[UUID]`.
fn mask_uuids(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    let is_uuid = |w: &[u8]| {
        w.len() == 36
            && w.iter()
                .enumerate()
                .all(|(k, c)| if [8, 13, 18, 23].contains(&k) { *c == b'-' } else { c.is_ascii_hexdigit() })
    };
    while i < b.len() {
        if i + 36 <= b.len() && is_uuid(&b[i..i + 36]) {
            out.push_str("[UUID]");
            i += 36;
        } else {
            let ch = s[i..].chars().next().unwrap();
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

impl Env {
    fn new() -> Env {
        Env { tmp: tempfile::tempdir().unwrap() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn cmd(&self) -> Command {
        self.cmd_with_keystore(&self.path("keystore"))
    }

    fn cmd_with_keystore(&self, ks: &Path) -> Command {
        let mut c = Command::cargo_bin("sqlite-tde").unwrap();
        for v in [
            "SQLITE_TDE_KEYSTORE",
            "SQLITE_TDE_KMS",
            "SQLITE_TDE_ROOT_KEY_FILE",
            "SQLITE_TDE_PASSPHRASE",
            "SQLITE_TDE_KEY",
        ] {
            c.env_remove(v);
        }
        c.current_dir(self.tmp.path()).arg("--keystore").arg(ks);
        c
    }

    fn normalize(&self, s: &[u8]) -> String {
        let s = String::from_utf8_lossy(s).replace(&self.tmp.path().display().to_string(), "[TMP]");
        let s = mask_uuids(&s);
        s.split('\n')
            .map(|l| match l.split_once(": ") {
                Some(("dek_created", _)) => "dek_created: [TIME]".to_string(),
                _ => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn run(&self, args: &[&str]) -> Out {
        self.run_cmd(self.cmd().args(args))
    }

    fn run_cmd(&self, c: &mut Command) -> Out {
        let o = c.output().unwrap();
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: self.normalize(&o.stdout),
            stderr: self.normalize(&o.stderr),
        }
    }

    /// A small encrypted database.
    fn db(&self, name: &str) {
        let o = self.run(&["sql", name, "CREATE TABLE t(a, b)", "INSERT INTO t VALUES(1, 'x'), (2, NULL)"]);
        assert_eq!(o.code, 0, "{o:?}");
    }
}

fn out(code: i32, stdout: &str, stderr: &str) -> Out {
    Out { code, stdout: stdout.to_string(), stderr: stderr.to_string() }
}

#[track_caller]
fn golden(got: Out, want: Out) {
    if got != want {
        panic!(
            "golden mismatch\n--- exit: got {} want {}\n--- stdout got:\n{}\n--- stdout want:\n{}\n--- stderr got:\n{}\n--- stderr want:\n{}",
            got.code, want.code, got.stdout, want.stdout, got.stderr, want.stderr
        );
    }
}

const CREATED_NOTICE: &str = "sqlite-tde: created a new keystore in [TMP]/keystore (root key [TMP]/keystore/root.key). \
Back up this directory (`sqlite-tde kms backup FILE`): databases encrypted under its keys cannot be opened without it\n";

const VERIFY_OK: &str = "\
database: a.db
format_version: 2
cipher: aes-256-xts
db_uuid: [UUID]
key_id: [UUID]
key_version: 1
header_slots: A valid (sequence 1, active), B valid (sequence 0)
key_check: ok
page_size: 4096
page_count: 2
pages_checked: 2
integrity_check: ok
result: ok
";

#[test]
fn help_documents_exit_codes() {
    let env = Env::new();
    let o = env.run(&["--help"]);
    assert_eq!(o.code, 0);
    assert!(
        o.stdout.contains(
            "Exit codes:
  0  success
  1  SQL or runtime error (syntax error, constraint violation, I/O error, missing file)
  2  usage error (bad command line)
  3  key, KMS or header error (wrong key, key not found or disabled, keystore unusable,
     not an sqlite-tde database, damaged header, rekey in progress (running or
     interrupted), interrupted in-place encryption); `info` exits 3 after printing the
     header when it could not use the key (the reason is on stderr)
  4  verify (and backup/restore --verify) found a problem: damaged header slot,
     page, WAL frame or journal, failed integrity_check; with only KMS problems
     (key not found, disabled, access denied) verify exits 3 instead
"
        ),
        "{}",
        o.stdout
    );
    for cmd in ["verify", "backup", "restore", "export", "info", "sql", "kms"] {
        assert!(o.stdout.contains(&format!("\n  {cmd} ")), "{cmd} missing from --help:\n{}", o.stdout);
        let h = env.run(&[cmd, "--help"]);
        assert_eq!((h.code, h.stderr.as_str()), (0, ""), "{cmd} --help");
        assert!(h.stdout.starts_with(char::is_uppercase) && h.stdout.contains("Usage: sqlite-tde"), "{}", h.stdout);
    }
    let o = env.run(&["verify"]);
    assert_eq!(o.code, 2);
    assert!(o.stderr.starts_with("error: the following required arguments were not provided:\n  <DB>"), "{}", o.stderr);
    golden(
        env.run(&["export", "a.db", "--format", "xml"]),
        out(
            2,
            "",
            "error: invalid value 'xml' for '--format <FORMAT>'\n  [possible values: sql, sqlite]\n\nFor more information, try '--help'.\n",
        ),
    );
}

#[test]
fn verify_golden() {
    let env = Env::new();
    env.db("a.db");
    golden(env.run(&["verify", "a.db"]), out(0, VERIFY_OK, ""));
    golden(env.run(&["verify", "--quick", "a.db"]), out(0, VERIFY_OK, ""));

    let o = env.run(&["--json", "verify", "a.db"]);
    assert_eq!((o.code, o.stderr.as_str()), (0, ""));
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    for (k, want) in [
        ("ok", serde_json::json!(true)),
        ("format_version", serde_json::json!(2)),
        ("cipher", serde_json::json!("aes-256-xts")),
        ("key_version", serde_json::json!(1)),
        ("active_slot", serde_json::json!("A")),
        ("key_check", serde_json::json!("ok")),
        ("page_size", serde_json::json!(4096)),
        ("page_count", serde_json::json!(2)),
        ("pages_checked", serde_json::json!(2)),
        ("integrity_check", serde_json::json!(["ok"])),
        ("problems", serde_json::json!([])),
        ("db_uuid", serde_json::json!("[UUID]")),
        ("key_id", serde_json::json!("[UUID]")),
        ("key_uri", serde_json::json!("local:[UUID]")),
    ] {
        assert_eq!(v[k], want, "{k} in {v}");
    }

    golden(
        env.run(&["verify", "missing.db"]),
        out(1, "", "sqlite-tde: missing.db: No such file or directory (os error 2)\n"),
    );

    // A plain SQLite file.
    rusqlite::Connection::open(env.path("plain.db")).unwrap().execute_batch("CREATE TABLE t(x)").unwrap();
    golden(
        env.run(&["verify", "plain.db"]),
        out(
            4,
            "database: plain.db
key_check: not checked
problem [header]: this is a plain (unencrypted) SQLite database, not an sqlite-tde database
result: 1 problem
",
            "sqlite-tde: plain.db: 1 problem found\n",
        ),
    );

    // Damaged slot B: the database still opens (slot A), the damage is reported.
    let mut bytes = std::fs::read(env.path("a.db")).unwrap();
    bytes[4096 + 100] ^= 1;
    std::fs::write(env.path("b.db"), &bytes).unwrap();
    golden(
        env.run(&["verify", "b.db"]),
        out(
            4,
            &VERIFY_OK
                .replace("database: a.db", "database: b.db")
                .replace("B valid (sequence 0)", "B invalid")
                .replace(
                "result: ok\n",
                "problem [header]: slot B: corrupt sqlite-tde header: header checksum mismatch\nresult: 1 problem\n",
            ),
            "sqlite-tde: b.db: 1 problem found\n",
        ),
    );

    // Another keystore: the key cannot be unwrapped (exit 3: key/KMS error, data unchecked).
    let o = env.run_cmd(env.cmd_with_keystore(&env.path("other")).args(["verify", "a.db"]));
    golden(
        o,
        out(
            3,
            "database: a.db
format_version: 2
cipher: aes-256-xts
db_uuid: [UUID]
key_id: [UUID]
key_version: 1
header_slots: A valid (sequence 1, active), B valid (sequence 0)
key_check: not checked
problem [kms]: cannot unwrap the data key: key [UUID] not found in keystore [TMP]/other (the keystore is empty/new: is this the right keystore? see --keystore / SQLITE_TDE_KEYSTORE)
result: 1 problem
",
            "sqlite-tde: a.db: 1 problem found\n",
        ),
    );
}

#[test]
fn backup_and_restore_golden() {
    let env = Env::new();
    env.db("a.db");
    golden(
        env.run(&["backup", "a.db", "b.db"]),
        out(
            0,
            "backup: 2 pages of 4096 bytes from a.db to b.db\ndb_uuid: [UUID]\nkey_id: [UUID]\nkey_version: 1\n",
            "",
        ),
    );
    golden(
        env.run(&["backup", "a.db", "b.db"]),
        out(1, "", "sqlite-tde: b.db already exists (use --force to replace it)\n"),
    );
    golden(env.run(&["backup", "a.db", "./a.db"]), out(2, "", "sqlite-tde: ./a.db is the source itself\n"));
    golden(env.run(&["backup", "nope.db", "x.db"]), out(1, "", "sqlite-tde: nope.db: no such file\n"));
    golden(
        env.run(&["backup", "a.db", "c.db", "--key", "alias/nope"]),
        out(
            3,
            "",
            "sqlite-tde: c.db: key alias/nope not found in keystore [TMP]/keystore (the keystore is empty/new: is this the right keystore? see --keystore / SQLITE_TDE_KEYSTORE)\n",
        ),
    );
    assert!(!env.path("c.db").exists());
    assert_eq!(std::fs::read_dir(env.tmp.path()).unwrap().count(), 3, "temporary files left behind");

    let mut verified = String::from(
        "backup: 2 pages of 4096 bytes from a.db to d.db\ndb_uuid: [UUID]\nkey_id: [UUID]\nkey_version: 1\n",
    );
    verified.push_str(&VERIFY_OK.replace("database: a.db", "database: d.db"));
    golden(env.run(&["backup", "--force", "a.db", "d.db", "--verify"]), out(0, &verified, ""));

    let o = env.run(&["--json", "backup", "a.db", "e.db"]);
    assert_eq!((o.code, o.stderr.as_str()), (0, ""));
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "operation": "backup", "source": "a.db", "destination": "e.db", "pages": 2, "page_size": 4096,
            "db_uuid": "[UUID]", "key_uri": "local:[UUID]", "key_id": "[UUID]", "key_version": 1
        })
    );

    // Plain sources are refused by backup (it backs up encrypted databases).
    rusqlite::Connection::open(env.path("plain.db")).unwrap().execute_batch("CREATE TABLE t(x)").unwrap();
    golden(
        env.run(&["backup", "plain.db", "p.db"]),
        out(3, "", "sqlite-tde: plain.db: this is a plain (unencrypted) SQLite database, not an sqlite-tde database\n"),
    );

    // Restore.
    golden(
        env.run(&["restore", "b.db", "r.db"]),
        out(
            0,
            "restore: 2 pages of 4096 bytes from b.db to r.db\ndb_uuid: [UUID]\nkey_id: [UUID]\nkey_version: 1\n",
            "",
        ),
    );
    golden(
        env.run(&["restore", "b.db", "a.db"]),
        out(1, "", "sqlite-tde: a.db already exists (use --force to overwrite its content)\n"),
    );
    golden(
        env.run(&["restore", "--force", "--key", "alias/x", "b.db", "a.db"]),
        out(2, "", "sqlite-tde: --key applies to a database the restore creates; a.db keeps its own key (rewrap it to change it)\n"),
    );
    golden(env.run(&["restore", "nope.db", "x.db"]), out(1, "", "sqlite-tde: nope.db: no such file\n"));
    env.run(&["sql", "a.db", "INSERT INTO t VALUES(3, 'lost')"]);
    let uuid_before = std::fs::read(env.path("a.db")).unwrap()[32..48].to_vec();
    let o = env.run(&["restore", "--force", "b.db", "a.db"]);
    assert_eq!(o.code, 0, "{o:?}");
    // In place: the database keeps its identity and key; its content is the backup's.
    assert_eq!(std::fs::read(env.path("a.db")).unwrap()[32..48].to_vec(), uuid_before);
    golden(env.run(&["sql", "a.db", "SELECT count(*) FROM t"]), out(0, "2\n", ""));
    // A plain SQLite file is imported into a new encrypted database.
    golden(
        env.run(&["restore", "plain.db", "imported.db", "--verify"]),
        out(
            0,
            &format!(
                "restore: 2 pages of 4096 bytes from plain.db to imported.db\ndb_uuid: [UUID]\nkey_id: [UUID]\nkey_version: 1\n{}",
                VERIFY_OK.replace("database: a.db", "database: imported.db")
            ),
            "",
        ),
    );
}

#[test]
fn export_golden() {
    let env = Env::new();
    env.db("a.db");
    let dump = "\
PRAGMA foreign_keys=OFF;
BEGIN TRANSACTION;
CREATE TABLE t(a, b);
INSERT INTO \"t\" VALUES(1,'x');
INSERT INTO \"t\" VALUES(2,NULL);
COMMIT;
";
    golden(env.run(&["export", "a.db"]), out(0, dump, ""));
    golden(env.run(&["export", "a.db", "--format", "sql", "-o", "-"]), out(0, dump, ""));
    golden(env.run(&["export", "a.db", "-o", "a.sql"]), out(0, "export: a.sql (sql, 137 bytes) from a.db\n", ""));
    assert_eq!(std::fs::read_to_string(env.path("a.sql")).unwrap(), dump);
    golden(
        env.run(&["export", "a.db", "-o", "a.sql"]),
        out(1, "", "sqlite-tde: a.sql already exists (use --force to replace it)\n"),
    );
    golden(
        env.run(&["export", "a.db", "--format", "sqlite"]),
        out(2, "", "sqlite-tde: --format sqlite needs an output file: -o OUT (or --raw to stream the image)\n"),
    );
    golden(env.run(&["export", "a.db", "--raw"]), out(2, "", "sqlite-tde: --raw applies to --format sqlite only\n"));
    golden(env.run(&["export", "nope.db"]), out(1, "", "sqlite-tde: nope.db: no such file\n"));
    golden(
        env.run_cmd(env.cmd_with_keystore(&env.path("other")).args(["export", "a.db"])),
        out(
            3,
            "",
            "sqlite-tde: [TMP]/a.db: key [UUID] not found in keystore [TMP]/other (the keystore is empty/new: is this the right keystore? see --keystore / SQLITE_TDE_KEYSTORE)\n",
        ),
    );

    golden(
        env.run(&["export", "a.db", "--format", "sqlite", "-o", "p.db"]),
        out(0, "export: p.db (sqlite, 8192 bytes) from a.db\n", ""),
    );
    golden(
        env.run(&["export", "a.db", "--format", "sqlite", "--raw", "-o", "r.db"]),
        out(0, "export: r.db (sqlite, 8192 bytes) from a.db\n", ""),
    );
    let o = env.run(&["--json", "export", "a.db", "--format", "sqlite", "--raw", "-o", "j.db"]);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"source": "a.db", "output": "j.db", "format": "sqlite", "pages": 2, "bytes": 8192, "reader": "built-in"})
    );
    // Plain outputs are private, and both are ordinary SQLite databases with the content.
    use std::os::unix::fs::PermissionsExt;
    for f in ["a.sql", "p.db", "r.db"] {
        assert_eq!(std::fs::metadata(env.path(f)).unwrap().permissions().mode() & 0o777, 0o600, "{f}");
    }
    for f in ["p.db", "r.db"] {
        let c = rusqlite::Connection::open(env.path(f)).unwrap();
        let rows: String =
            c.query_row("SELECT group_concat(a || ':' || ifnull(b, '-')) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(rows, "1:x,2:-");
    }
    // Streaming the raw image to a pipe.
    let o = env.cmd().args(["export", "a.db", "--format", "sqlite", "--raw"]).output().unwrap();
    assert!(o.status.success());
    assert_eq!(o.stdout, std::fs::read(env.path("r.db")).unwrap());
}

#[test]
fn info_sql_and_kms_golden() {
    let env = Env::new();
    let o = env.run(&["kms", "create-key", "--alias", "alias/app"]);
    // The first use creates the keystore and says so, once.
    golden(o, out(0, "[UUID]\n", CREATED_NOTICE));
    golden(
        env.run(&[
            "sql",
            "a.db",
            "--key",
            "alias/app",
            "CREATE TABLE t(x)",
            "INSERT INTO t VALUES(1),(2)",
            "SELECT * FROM t",
        ]),
        out(0, "1\n2\n", ""),
    );
    golden(
        env.run(&["sql", "a.db", "SELEC 1"]),
        out(1, "", "sqlite-tde: near \"SELEC\": syntax error\n  SELEC 1\n  ^--- error here\n"),
    );
    // The shell's dot-commands, from piped input (the interactive shell runs the same
    // processor with line editing and history).
    std::fs::write(env.path("more.sql"), "INSERT INTO t VALUES(3);\n.headers off\nSELECT max(x) FROM t;\n").unwrap();
    golden(
        env.run_cmd(env.cmd().args(["sql", "a.db"]).write_stdin(
            ".tables\n.schema\n.headers on\n.mode csv\nSELECT x FROM t;\n.mode line\nSELECT count(*) AS n FROM t;\n\
             .read more.sql\n.dump\n.quit\nSELECT 'not reached';\n",
        )),
        out(
            0,
            "t\nCREATE TABLE t(x);\nx\r\n1\r\n2\r\nn = 2\nmax(x) = 3\nPRAGMA foreign_keys=OFF;\nBEGIN TRANSACTION;\n\
             CREATE TABLE t(x);\nINSERT INTO \"t\" VALUES(1);\nINSERT INTO \"t\" VALUES(2);\nINSERT INTO \"t\" VALUES(3);\nCOMMIT;\n",
            "",
        ),
    );
    golden(
        env.run_cmd(env.cmd().args(["sql", "a.db"]).write_stdin(".frob\n")),
        out(1, "", "sqlite-tde: unknown command: .frob (see .help)\n"),
    );
    let o = env.run(&["info", "a.db"]);
    assert_eq!((o.code, o.stderr.as_str()), (0, ""), "{o:?}");
    // Lines this test owns; other lines may be added.
    for line in [
        "format_version: 2",
        "cipher: aes-256-xts",
        "db_uuid: [UUID]",
        "key_id: [UUID]",
        "key_uri: local:[UUID]",
        "key_version: 1",
        "dek_created: [TIME]",
        "active_slot: A",
        "rekey_in_progress: false",
        "key_aliases: [\"alias/app\"]",
        "key_state: enabled",
        "key_newest_version: 1",
        "key_version_is_newest: true",
        "page_size: 4096",
        "page_count: 2",
    ] {
        assert!(o.stdout.lines().any(|l| l == line), "missing {line:?} in\n{}", o.stdout);
    }
    let o = env.run(&["--json", "info", "a.db"]);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["key_aliases"], serde_json::json!(["alias/app"]));
    assert_eq!(v["key_version_is_newest"], true);
    assert_eq!(v["key_cache"]["ttl_secs"], 300);
    assert_eq!(v["key_cache"]["metrics"]["entries"], 1, "{v}");
    golden(env.run(&["info", "nope.db"]), out(1, "", "sqlite-tde: nope.db: No such file or directory (os error 2)\n"));
}

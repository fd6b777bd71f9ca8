//! The embedded keystore never destroys itself: a missing `keystore.json` or root key is
//! refused with what to restore (never re-created over), a mistyped keystore directory is
//! reported and left uncreated, concurrent first uses agree on one root key, killed
//! mutations leave no temp files for good, and `kms backup` / `kms restore` round-trip the
//! whole keystore (atomically, checked against the root key). Issue 12 item 2.

#[path = "common/child.rs"]
mod child;
mod kms_support;

use std::fs;
use std::path::{Path, PathBuf};

use kms_support::*;
use sqlite_tde::kms::local::{keys_section, LocalKms};
use sqlite_tde::kms::EncryptionContext;

/// Run and return (exit code, stdout, stderr).
fn run(c: &mut assert_cmd::Command) -> (i32, String, String) {
    let o = c.output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn ok(c: &mut assert_cmd::Command) -> String {
    let (code, out, err) = run(c);
    assert_eq!(code, 0, "command failed: {err}");
    out
}

/// A failure with exit code 3 (key/KMS error); returns stderr.
fn refused(c: &mut assert_cmd::Command) -> String {
    let (code, out, err) = run(c);
    assert_eq!(code, 3, "expected exit 3, got {code}: stdout {out:?} stderr {err:?}");
    err
}

fn make_db(ks: &Path, db: &Path) {
    ok(cli(ks).arg("sql").arg(db).args(["CREATE TABLE t(x)", "INSERT INTO t VALUES('hello')"]));
}

fn select(ks: &Path, db: &Path) -> assert_cmd::Command {
    let mut c = cli(ks);
    c.arg("sql").arg(db).arg("SELECT x FROM t");
    c
}

fn create_key(ks: &Path, alias: &str) -> assert_cmd::Command {
    let mut c = cli(ks);
    c.args(["kms", "create-key", "--alias", alias]);
    c
}

#[test]
fn deleted_keystore_json_then_select_is_a_clear_error_and_root_key_is_untouched() {
    let env = KmsEnv::new();
    let db = env.path("app.db");
    make_db(&env.ks, &db);
    let root = fs::read(env.ks.join("root.key")).unwrap();
    let saved = env.path("keystore.json.bak");
    fs::copy(env.ks.join("keystore.json"), &saved).unwrap();
    fs::remove_file(env.ks.join("keystore.json")).unwrap();
    let before = dir_files(&env.ks);

    // A read-only SELECT, and a creating use, are both refused: nothing is created.
    for mut c in [select(&env.ks, &db), create_key(&env.ks, "alias/new")] {
        let err = refused(&mut c);
        assert!(err.contains("keystore.json is missing") && err.contains("kms restore"), "{err}");
        assert_eq!(dir_files(&env.ks), before, "a refused request changed the keystore directory");
    }
    assert_eq!(fs::read(env.ks.join("root.key")).unwrap(), root, "root.key must never be replaced");

    // Restoring keystore.json from a backup brings every database back.
    fs::copy(&saved, env.ks.join("keystore.json")).unwrap();
    assert!(ok(&mut select(&env.ks, &db)).contains("hello"));
}

#[test]
fn mistyped_keystore_dir_is_a_clear_error_and_creates_nothing() {
    let env = KmsEnv::new();
    let db = env.path("app.db");
    make_db(&env.ks, &db);
    let typo = env.path("keystroe");

    let err = refused(&mut select(&typo, &db));
    assert!(err.contains("not found in keystore") && err.contains("empty/new"), "{err}");
    for args in [&["kms", "list"][..], &["kms", "describe", "alias/sqlite-tde/default"], &["kms", "audit", "--verify"]]
    {
        let err = refused(cli(&typo).args(args));
        assert!(err.contains(&typo.display().to_string()) && err.contains("right keystore"), "{args:?}: {err}");
    }
    // A new database under a named key needs that key: no keystore is created for it.
    let err = refused(cli(&typo).arg("sql").arg(env.path("new.db")).args(["--key", "alias/app", "SELECT 1"]));
    assert!(err.contains("key alias/app not found in keystore") && err.contains("empty/new"), "{err}");
    assert!(!typo.exists(), "a non-creating use created the keystore directory");

    // An empty directory is the same as a missing one.
    fs::create_dir(&typo).unwrap();
    let err = refused(&mut select(&typo, &db));
    assert!(err.contains("empty/new"), "{err}");
    assert!(dir_files(&typo).is_empty(), "{:?}", dir_files(&typo).keys());
}

#[test]
fn missing_root_key_with_keystore_present_is_a_clear_error_and_nothing_is_written() {
    let env = KmsEnv::new();
    let db = env.path("app.db");
    make_db(&env.ks, &db);
    let aside = env.path("root.key.bak");
    fs::rename(env.ks.join("root.key"), &aside).unwrap();
    let before = dir_files(&env.ks);

    for mut c in [select(&env.ks, &db), create_key(&env.ks, "alias/new"), {
        let mut c = cli(&env.ks);
        c.args(["kms", "list"]);
        c
    }] {
        let err = refused(&mut c);
        assert!(err.contains("root.key") && err.contains("is missing") && err.contains("Restore"), "{err}");
        assert_eq!(dir_files(&env.ks), before, "a refused request changed the keystore directory");
    }
    assert!(!env.ks.join("root.key").exists(), "the root key must never be re-created");
    fs::rename(&aside, env.ks.join("root.key")).unwrap();
    assert!(ok(&mut select(&env.ks, &db)).contains("hello"));
}

#[test]
fn separate_root_key_file_and_passphrase_are_checked_never_recreated() {
    // A root key file outside the keystore: the exists/missing checks apply to it.
    let env = KmsEnv::new();
    let db = env.path("app.db");
    let rk = env.path("operator.key");
    fs::write(&rk, hex::encode([7u8; 32])).unwrap();
    let with_rk = |mut c: assert_cmd::Command| {
        c.env("SQLITE_TDE_ROOT_KEY_FILE", &rk);
        c
    };
    ok(&mut with_rk({
        let mut c = cli(&env.ks);
        c.arg("sql").arg(&db).args(["CREATE TABLE t(x)", "INSERT INTO t VALUES('hello')"]);
        c
    }));
    assert!(!env.ks.join("root.key").exists());
    let aside = env.path("operator.key.bak");
    fs::rename(&rk, &aside).unwrap();
    let before = dir_files(&env.ks);
    let err = refused(&mut with_rk(select(&env.ks, &db)));
    assert!(err.contains("SQLITE_TDE_ROOT_KEY_FILE") && err.contains("is missing"), "{err}");
    assert_eq!(dir_files(&env.ks), before);
    fs::rename(&aside, &rk).unwrap();
    fs::remove_file(env.ks.join("keystore.json")).unwrap();
    let before = dir_files(&env.ks);
    for c in [select(&env.ks, &db), create_key(&env.ks, "alias/new")] {
        let err = refused(&mut with_rk(c));
        assert!(err.contains("keystore.json is missing"), "{err}");
        assert_eq!(dir_files(&env.ks), before);
    }

    // A passphrase: a wrong one fails clearly and re-creates nothing.
    let env = KmsEnv::new();
    let db = env.path("pp.db");
    let with_pass = |mut c: assert_cmd::Command, p: &str| {
        c.env("SQLITE_TDE_PASSPHRASE", p);
        c
    };
    ok(&mut with_pass(
        {
            let mut c = cli(&env.ks);
            c.arg("sql").arg(&db).args(["CREATE TABLE t(x)", "INSERT INTO t VALUES('hello')"]);
            c
        },
        "correct horse",
    ));
    let before = dir_files(&env.ks);
    assert!(!before.contains_key("root.key"));
    for c in [select(&env.ks, &db), create_key(&env.ks, "alias/new")] {
        let err = refused(&mut with_pass(c, "wrong horse"));
        assert!(err.contains("wrong passphrase"), "{err}");
        assert_eq!(dir_files(&env.ks), before);
    }
    let err = refused(&mut select(&env.ks, &db));
    assert!(err.contains("set SQLITE_TDE_PASSPHRASE"), "{err}");
    assert_eq!(dir_files(&env.ks), before, "no root.key may appear for a passphrase keystore");
    assert!(ok(&mut with_pass(select(&env.ks, &db), "correct horse")).contains("hello"));
}

#[test]
fn concurrent_first_uses_create_one_keystore_with_one_notice() {
    let env = KmsEnv::new();
    let n = 6;
    let kids: Vec<_> = (0..n)
        .map(|i| {
            let mut c = cli_std(&env.ks);
            c.args(["kms", "create-key", "--alias", &format!("alias/k{i}")])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            c.spawn().unwrap()
        })
        .collect();
    let mut notices = 0;
    for k in kids {
        let o = k.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{err}");
        if err.contains("created a new keystore") {
            assert!(err.contains(&env.ks.display().to_string()) && err.contains("Back up this directory"), "{err}");
            notices += 1;
        }
    }
    assert_eq!(notices, 1, "exactly one process creates the keystore and says so");
    let files = dir_files(&env.ks);
    assert_eq!(files.keys().filter(|n| n.contains("root")).count(), 1, "{:?}", files.keys());
    // Every process's key is in the one keystore and usable under its one root key.
    let list = ok(cli(&env.ks).args(["kms", "list"]));
    for i in 0..n {
        assert!(list.contains(&format!("alias/k{i}")), "{list}");
        let db = env.path(&format!("db{i}"));
        ok(cli(&env.ks)
            .arg("sql")
            .arg(&db)
            .args(["--key", &format!("alias/k{i}")])
            .args(["CREATE TABLE t(x)", "INSERT INTO t VALUES('hello')"]));
        assert!(ok(&mut select(&env.ks, &db)).contains("hello"));
    }
    // Later creating uses say nothing.
    let (_, _, err) = run(&mut create_key(&env.ks, "alias/later"));
    assert!(!err.contains("created a new keystore"), "{err}");
}

#[test]
fn creation_only_in_an_empty_directory_and_an_interrupted_one_resumes() {
    // A directory holding other things is not taken for a new keystore.
    let env = KmsEnv::new();
    fs::create_dir_all(&env.ks).unwrap();
    fs::write(env.ks.join("notes.txt"), b"not a keystore").unwrap();
    let before = dir_files(&env.ks);
    let err = refused(&mut create_key(&env.ks, "alias/a"));
    assert!(err.contains("not empty") && err.contains("notes.txt"), "{err}");
    assert_eq!(dir_files(&env.ks), before);

    // root.key alone (no creation marker): refused, root.key untouched.
    let env = KmsEnv::new();
    fs::create_dir_all(&env.ks).unwrap();
    fs::write(env.ks.join("root.key"), [9u8; 32]).unwrap();
    let before = dir_files(&env.ks);
    let err = refused(&mut create_key(&env.ks, "alias/a"));
    assert!(err.contains("keystore.json is missing but root.key is there"), "{err}");
    assert_eq!(dir_files(&env.ks), before);

    // A creation killed between root.key and keystore.json (marker left): the next creating
    // use finishes it with that root key.
    fs::write(env.ks.join("keystore.creating"), b"").unwrap();
    ok(&mut create_key(&env.ks, "alias/a"));
    assert_eq!(fs::read(env.ks.join("root.key")).unwrap(), [9u8; 32]);
    assert!(!env.ks.join("keystore.creating").exists());
    let db = env.path("a.db");
    ok(cli(&env.ks).arg("sql").arg(&db).args([
        "--key",
        "alias/a",
        "CREATE TABLE t(x)",
        "INSERT INTO t VALUES('hello')",
    ]));
    assert!(ok(&mut select(&env.ks, &db)).contains("hello"));
}

/// The newest audit record's sequence number.
fn last_seq(ks: &Path) -> u64 {
    sqlite_tde::kms::audit::AuditLog::new(ks).read().unwrap().last().unwrap().seq
}

#[test]
fn backup_restore_round_trip_with_audit_head_and_secrets() {
    let env = KmsEnv::new();
    let db = env.path("app.db");
    ok(&mut create_key(&env.ks, "alias/app"));
    ok(cli(&env.ks).args(["secrets", "put", "db-password", "--key", "alias/app"]).write_stdin("s3cret"));
    ok(cli(&env.ks).arg("sql").arg(&db).args([
        "--key",
        "alias/app",
        "CREATE TABLE t(x)",
        "INSERT INTO t VALUES('hello')",
    ]));
    let snap = env.path("ks.snapshot");
    let (code, out, err) = run(cli(&env.ks).args(["kms", "backup"]).arg(&snap));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("keystore.json") && out.contains("audit.log") && out.contains("secrets.json"), "{out}");
    assert!(err.contains("does not contain the root key"), "{err}");
    let root_file = fs::read(env.ks.join("root.key")).unwrap();
    let snap_bytes = fs::read(&snap).unwrap();
    assert!(!snap_bytes.windows(32).any(|w| w == &root_file[16..48]), "the snapshot must not hold the root key");
    let seq_at_backup = last_seq(&env.ks);

    // Disaster: everything but root.key is gone.
    for f in ["keystore.json", "audit.log", "secrets.json"] {
        fs::remove_file(env.ks.join(f)).unwrap();
    }
    refused(&mut select(&env.ks, &db));
    let out = ok(cli(&env.ks).args(["kms", "restore"]).arg(&snap));
    assert!(out.contains("restored"), "{out}");
    assert!(ok(&mut select(&env.ks, &db)).contains("hello"));
    assert_eq!(ok(cli(&env.ks).args(["secrets", "get", "db-password"])).trim(), "s3cret");
    assert!(ok(cli(&env.ks).args(["kms", "audit", "--verify"])).contains("audit log OK"));
    let audit = ok(cli(&env.ks).args(["kms", "audit"]));
    assert!(audit.contains("BackupKeystore") && audit.contains("RestoreKeystore"), "{audit}");
    assert_eq!(fs::read(env.ks.join("root.key")).unwrap(), root_file);
    assert!(last_seq(&env.ks) > seq_at_backup, "the restore is itself audited");
    assert!(audit.contains("restored") && !env.ks.join("audit.head").exists(), "{audit}");

    // A corrupted snapshot is refused before anything changes.
    let mut bad = snap_bytes.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 1;
    let bad_path = env.path("bad.snapshot");
    fs::write(&bad_path, &bad).unwrap();
    let before = dir_files(&env.ks);
    let err = refused_or_failed(cli(&env.ks).args(["kms", "restore"]).arg(&bad_path));
    assert!(err.contains("corrupt"), "{err}");
    assert_eq!(dir_files(&env.ks), before);

    // Another keystore's snapshot does not open under this root key.
    let other = KmsEnv::new();
    ok(&mut create_key(&other.ks, "alias/other"));
    let other_snap = other.path("other.snapshot");
    ok(cli(&other.ks).args(["kms", "backup"]).arg(&other_snap));
    let err = refused(cli(&env.ks).args(["kms", "restore"]).arg(&other_snap));
    assert!(err.contains("another root key"), "{err}");
    assert_eq!(dir_files(&env.ks), before);

    // An older snapshot would lose a key version: refused unless forced.
    ok(cli(&env.ks).args(["kms", "rotate", "alias/app"]));
    let before = dir_files(&env.ks);
    let err = refused(cli(&env.ks).args(["kms", "restore"]).arg(&snap));
    assert!(err.contains("lacks 1 key version") && err.contains("--force"), "{err}");
    assert_eq!(dir_files(&env.ks), before);
    ok(cli(&env.ks).args(["kms", "restore", "--force"]).arg(&snap));
    assert!(ok(&mut select(&env.ks, &db)).contains("hello"));

    // Total loss, root.key included: the snapshot plus the separately kept root key.
    let rk_copy = env.path("root.key.offsite");
    fs::write(&rk_copy, &root_file).unwrap();
    fs::remove_dir_all(&env.ks).unwrap();
    let out = ok(cli(&env.ks).args(["kms", "restore"]).arg(&snap).arg("--root-key").arg(&rk_copy));
    assert!(out.contains("installed the root key"), "{out}");
    assert_eq!(fs::read(env.ks.join("root.key")).unwrap(), root_file);
    assert!(ok(&mut select(&env.ks, &db)).contains("hello"));
    assert_eq!(ok(cli(&env.ks).args(["secrets", "get", "db-password"])).trim(), "s3cret");
}

/// A refusal with any non-zero exit (bad input may be a usage-class error); returns stderr.
fn refused_or_failed(c: &mut assert_cmd::Command) -> String {
    let (code, _, err) = run(c);
    assert_ne!(code, 0, "expected a refusal");
    err
}

// ----- kill -9 -----

const ROLE_KS: &str = "SQLITE_TDE_TEST_KEYSTORE_KS";
const ROLE_SNAPS: &str = "SQLITE_TDE_TEST_KEYSTORE_SNAPS";

/// Child process: `create-key` in a loop (role `create-loop`), or restore two snapshots in
/// turn (role `restore-loop`), acknowledging each completed operation.
#[test]
fn keystore_child_entry() {
    let Ok(role) = std::env::var(child::ROLE_VAR) else { return };
    let ks = PathBuf::from(std::env::var_os(ROLE_KS).unwrap());
    let kms = LocalKms::new(&ks).with_principal("ops");
    match role.as_str() {
        "create-loop" => {
            for i in 0.. {
                kms.create_key(None, &format!("loop {i}")).unwrap();
                println!("ack create");
            }
        }
        "restore-loop" => {
            let snaps = PathBuf::from(std::env::var_os(ROLE_SNAPS).unwrap());
            let opts = sqlite_tde::kms::local::snapshot::RestoreOptions { root_key: None, force: true };
            for i in 0.. {
                let which = if i % 2 == 0 { "a" } else { "b" };
                kms.restore("ops", &snaps.join(which), &opts).unwrap();
                println!("ack restore {which}");
            }
        }
        other => panic!("unknown role {other}"),
    }
}

#[test]
fn killed_mutations_leave_no_temp_files_after_the_next_mutation() {
    let env = KmsEnv::new();
    let kms = LocalKms::new(&env.ks).with_principal("ops");
    // Enough keys that each keystore.json write takes a while.
    for i in 0..120 {
        kms.create_key(None, &format!("filler {i}")).unwrap();
    }
    let mut kills = 0;
    let mut stale = Vec::new();
    // Killing after a random delay lands inside a write only by chance (a CI machine with a
    // fast filesystem missed 1,000 times). Instead watch the directory and kill the moment a
    // temp file shows up; the writer may still finish its rename before the signal lands, so
    // retry until a temp file survives the kill.
    while kills < 200 {
        let (mut c, mut out) = child::spawn("keystore_child_entry", "create-loop", &[(ROLE_KS, &env.ks)]);
        assert!(child::wait_for(&mut out, "ack ").is_some(), "child died on its own");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while temp_files(&env.ks).is_empty() && std::time::Instant::now() < deadline {}
        c.kill().unwrap();
        c.wait().unwrap();
        kills += 1;
        stale = temp_files(&env.ks);
        if !stale.is_empty() {
            break;
        }
    }
    assert!(!stale.is_empty(), "{kills} kills left no temp file: the test could not exercise the cleanup");
    eprintln!("{kills} kills; stale temp files before the next mutation: {stale:?}");
    // What builds before the fix left (`.tmp-` + 6 characters) goes too.
    fs::write(env.ks.join(".tmp-AbC123"), b"old sealed material").unwrap();
    kms.create_key(None, "next").unwrap();
    assert_eq!(temp_files(&env.ks), Vec::<String>::new(), "the next mutation under the lock removes them");
    // Every key is still there and usable.
    let data = kms.read_keystore().unwrap().unwrap();
    assert!(data.keys.len() > 40);
    let ctx = EncryptionContext::from_pairs([("sqlite-tde:db".to_string(), "x".to_string())]);
    for id in data.keys.keys() {
        kms.op_generate_data_key("ops", id, &ctx, None, true).unwrap();
    }
}

#[test]
fn restore_killed_midway_leaves_the_old_or_the_new_keystore() {
    let env = KmsEnv::new();
    let kms = LocalKms::new(&env.ks).with_principal("ops");
    let snaps = env.path("snaps");
    fs::create_dir(&snaps).unwrap();
    kms.create_key(Some("alias/a"), "in both").unwrap();
    kms.backup("ops", &snaps.join("a")).unwrap();
    let a_ks = fs::read(env.ks.join("keystore.json")).unwrap();
    for i in 0..20 {
        kms.create_key(None, &format!("only in b {i}")).unwrap();
    }
    sqlite_tde::kms::secrets::put(&kms, "ops", "s", b"v", Some("alias/a"), "").unwrap();
    kms.backup("ops", &snaps.join("b")).unwrap();
    let b_ks = fs::read(env.ks.join("keystore.json")).unwrap();
    let b_secrets = fs::read(env.ks.join("secrets.json")).unwrap();

    let mut journals = 0;
    let mut seen = std::collections::BTreeSet::new();
    for round in 0..40u64 {
        let (mut c, mut out) =
            child::spawn("keystore_child_entry", "restore-loop", &[(ROLE_KS, &env.ks), (ROLE_SNAPS, &snaps)]);
        for _ in 0..1 + round % 3 {
            assert!(child::wait_for(&mut out, "ack ").is_some(), "child died on its own");
        }
        if round % 2 == 0 {
            // Kill the moment a restore journal appears, so some kills land inside a restore
            // however fast the filesystem is; the odd rounds kill anywhere.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while !env.ks.join("restore.pending").exists() && std::time::Instant::now() < deadline {}
        } else {
            std::thread::sleep(std::time::Duration::from_micros((round * 1777) % 5000));
        }
        c.kill().unwrap();
        c.wait().unwrap();
        if env.ks.join("restore.pending").exists() {
            journals += 1;
        }
        // The next use finishes an interrupted restore; the state is one snapshot's, whole.
        let fresh = LocalKms::new(&env.ks).with_principal("ops").with_operators(vec!["ops".into()]);
        fresh.list_keys().unwrap();
        assert!(!env.ks.join("restore.pending").exists());
        // Keys compared without the audit head, which every request (this check's too) moves.
        let ks = fs::read(env.ks.join("keystore.json")).unwrap();
        let (ks, a_ks, b_ks) = (keys_section(&ks), keys_section(&a_ks), keys_section(&b_ks));
        let secrets = fs::read(env.ks.join("secrets.json")).ok();
        if ks == a_ks {
            assert_eq!(secrets, None, "round {round}: snapshot a's keystore with b's secrets");
            seen.insert("a");
        } else {
            assert_eq!(ks, b_ks, "round {round}: keystore.json is neither snapshot's");
            assert_eq!(secrets.as_ref(), Some(&b_secrets), "round {round}: snapshot b's keystore without its secrets");
            seen.insert("b");
        }
        let v = fresh.op_verify_audit("ops").unwrap();
        assert!(v.ok, "round {round}: audit log and head out of step: {:?}", v.problems);
        if journals >= 3 && round >= 10 {
            break;
        }
    }
    eprintln!("kills that left a restore journal to finish: {journals}; states seen: {seen:?}");
    assert!(journals > 0, "no kill landed inside a restore: the test exercised nothing");
    // Killed restores' temp files go with the next mutations under the locks.
    kms.create_key(None, "after").unwrap();
    sqlite_tde::kms::secrets::put(&kms, "ops", "s", b"w", None, "").unwrap();
    assert_eq!(temp_files(&env.ks), Vec::<String>::new());
}

// ----- keystore integrity: MAC under the root key, no downgrade -----

/// `keystore.json` with `f` applied to its text.
fn edit_keystore(ks: &Path, f: impl Fn(&str) -> String) {
    let p = ks.join("keystore.json");
    let text = fs::read_to_string(&p).unwrap();
    let edited = f(&text);
    assert_ne!(edited, text, "the edit changed nothing");
    fs::write(p, edited).unwrap();
}

/// Rewrite a format-3 file as format 2 (no MAC), with the checksum trailer recomputed the
/// way an attacker without the root key can.
fn as_format_2(text: &str) -> String {
    use sha2::Digest;
    let json_start = text.find('\n').unwrap() + 1;
    let json_end = text.rfind("\naudit: ").unwrap() + 1;
    let body = format!("sqlite-tde-keystore 2\n{}", &text[json_start..json_end]);
    let sum = hex::encode(sha2::Sha256::digest(body.as_bytes()));
    format!("{body}sha256:{sum}\n")
}

/// An attacker's edit of the keystore text.
type Edit = Box<dyn Fn(&str) -> String>;

#[test]
fn keystore_edited_without_the_root_key_is_refused() {
    let env = KmsEnv::new();
    let db = env.path("app.db");
    ok(&mut create_key(&env.ks, "alias/app"));
    ok(cli(&env.ks).arg("sql").arg(&db).args([
        "--key",
        "alias/app",
        "CREATE TABLE t(x)",
        "INSERT INTO t VALUES('hello')",
    ]));
    ok(cli(&env.ks).args(["kms", "disable", "alias/app"]));
    refused(&mut select(&env.ks, &db));
    let genuine = fs::read(env.ks.join("keystore.json")).unwrap();
    let reenable = |t: &str| t.replacen("\"state\": \"disabled\"", "\"state\": \"enabled\"", 1);
    let grant = |t: &str| t.replacen("\"principals\": [", "\"principals\": [\"mallory\", ", 1);
    let cases: [(&str, Edit, &str); 4] = [
        ("re-enable a disabled key", Box::new(reenable), "MAC does not verify"),
        ("grant a policy right", Box::new(grant), "MAC does not verify"),
        (
            "re-enable, as format 2 with a recomputed checksum",
            Box::new(move |t: &str| as_format_2(&reenable(t))),
            "wrong root key",
        ),
        (
            "grant, as format 2 with a recomputed checksum",
            Box::new(move |t: &str| as_format_2(&grant(t))),
            "wrong root key",
        ),
    ];
    for (what, f, want) in cases {
        fs::write(env.ks.join("keystore.json"), &genuine).unwrap();
        edit_keystore(&env.ks, f);
        let before = dir_files(&env.ks);
        let err = refused(&mut select(&env.ks, &db));
        assert!(err.contains(want), "{what}: {err}");
        let err = refused(cli(&env.ks).args(["kms", "list"]));
        assert!(err.contains(want), "{what}: {err}");
        assert_eq!(dir_files(&env.ks), before, "{what}: a refused request changed the keystore");
    }
    fs::write(env.ks.join("keystore.json"), &genuine).unwrap();
    assert!(ok(cli(&env.ks).args(["kms", "describe", "alias/app"])).contains("disabled"));
    assert!(ok(cli(&env.ks).args(["kms", "audit", "--verify"])).contains("audit log OK"));
}

#[test]
fn unmaced_keystore_keeps_loading_is_upgraded_and_cannot_come_back() {
    // A format-1 keystore (no MAC, no audit log) as an old build left it.
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/v1/keystore");
    let env = KmsEnv::new();
    fs::create_dir_all(&env.ks).unwrap();
    for f in ["keystore.json", "root.key"] {
        fs::copy(golden.join(f), env.ks.join(f)).unwrap();
    }
    let old = fs::read(env.ks.join("keystore.json")).unwrap();
    assert!(old.starts_with(b"sqlite-tde-keystore 1\n"));
    let (code, listed, err) = run(cli(&env.ks).args(["kms", "list"]));
    assert_eq!(code, 0, "{err}");
    assert!(!listed.is_empty());
    assert!(err.contains("upgraded keystore") && err.contains("from format 1 to 3"), "{err}");
    // Upgraded on that first commit, and the audit log says so.
    assert!(fs::read(env.ks.join("keystore.json")).unwrap().starts_with(b"sqlite-tde-keystore 3\n"));
    let audit = ok(cli(&env.ks).args(["kms", "audit"]));
    assert!(audit.contains("UpgradeKeystoreFormat"), "{audit}");
    // Putting the unMAC'd file back (a downgrade) is refused, whatever it says.
    let upgraded = fs::read(env.ks.join("keystore.json")).unwrap();
    fs::write(env.ks.join("keystore.json"), &old).unwrap();
    let before = dir_files(&env.ks);
    let err = refused(cli(&env.ks).args(["kms", "list"]));
    assert!(err.contains("downgrade"), "{err}");
    assert_eq!(dir_files(&env.ks), before);
    fs::write(env.ks.join("keystore.json"), &upgraded).unwrap();
    assert!(ok(cli(&env.ks).args(["kms", "audit", "--verify"])).contains("audit log OK"));
}

/// `secrets.json` as format 1: the same JSON under the old magic line and a bare SHA-256
/// checksum, which anyone who can write the file can compute.
fn secrets_as_format_1(text: &str) -> String {
    use sha2::Digest;
    let body = text.strip_prefix("sqlite-tde-secrets 2\n").expect("a format-2 secrets.json");
    let json = &body[..body.rfind("hmac-sha256:").expect("a MAC trailer")];
    let covered = format!("sqlite-tde-secrets 1\n{json}");
    format!("{covered}sha256:{}\n", hex::encode(sha2::Sha256::digest(covered.as_bytes())))
}

fn assert_refused_and_unchanged(env: &KmsEnv, file: &Path, needle: &str) {
    use sqlite_tde::kms::secrets;
    let before = fs::read(file).unwrap();
    for who in ["mallory", "victim"] {
        let kms = env.kms(who);
        let e = secrets::get(&kms, who, "prod/db-password", None, None).map(|_| ()).unwrap_err().to_string();
        assert!(e.contains(needle), "{who}: {e}");
        let e = secrets::put(&kms, who, "prod/db-password", b"new", None, "").map(|_| ()).unwrap_err().to_string();
        assert!(e.contains(needle), "{who}: {e}");
        assert!(secrets::list(&kms, who).is_err());
    }
    assert_eq!(fs::read(file).unwrap(), before, "a refused secrets.json was rewritten");
}

/// Issue 14: the secrets' owners and policies decide who reads them, so an attacker who can
/// write `secrets.json` must not be able to hand a secret to itself.
#[test]
fn secrets_json_edited_without_the_root_key_is_refused() {
    let env = KmsEnv::new();
    sqlite_tde::kms::secrets::put(&env.kms("victim"), "victim", "prod/db-password", b"s3cret", None, "").unwrap();
    let file = env.ks.join("secrets.json");
    let text = fs::read_to_string(&file).unwrap();
    assert!(text.starts_with("sqlite-tde-secrets 2\n") && text.contains("\"owner\": \"victim\""), "{text}");
    fs::write(&file, text.replace("\"victim\"", "\"mallory\"")).unwrap();
    assert_refused_and_unchanged(&env, &file, "MAC does not verify");
}

/// ... nor by putting back the unauthenticated format 1 (a downgrade) ...
#[test]
fn secrets_json_downgraded_to_format_1_is_refused() {
    let env = KmsEnv::new();
    sqlite_tde::kms::secrets::put(&env.kms("victim"), "victim", "prod/db-password", b"s3cret", None, "").unwrap();
    let file = env.ks.join("secrets.json");
    let text = fs::read_to_string(&file).unwrap();
    fs::write(&file, secrets_as_format_1(&text.replace("\"victim\"", "\"mallory\""))).unwrap();
    assert_refused_and_unchanged(&env, &file, "downgrade");
}

/// ... nor by planting a format-1 file in a keystore that never had secrets, after leaving a
/// *refused* secrets write in the audit log (only writes that happened make a format-1 file
/// plausible).
#[test]
fn a_planted_format_1_secrets_json_is_refused_even_after_a_refused_write() {
    use sqlite_tde::kms::api::CreateKeyParams;
    use sqlite_tde::kms::audit::Outcome;
    let env = KmsEnv::new();
    let ops = env.kms("ops");
    ops.op_create_key("ops", &CreateKeyParams { alias: Some("alias/ops".into()), ..Default::default() }).unwrap();
    assert!(sqlite_tde::kms::secrets::put(&env.kms("mallory"), "mallory", "x", b"v", Some("alias/ops"), "").is_err());
    let log = ops.op_read_audit("ops", None, None).unwrap();
    assert!(
        log.iter().any(|r| r.operation == "secrets:PutSecretValue" && r.outcome != Outcome::Allowed),
        "the refused write must be in the log for this test to mean anything"
    );
    assert!(!env.ks.join("secrets.json").exists());
    let planted = {
        use sha2::Digest;
        let covered = "sqlite-tde-secrets 1\n{\"secrets\": {}}\n".to_string();
        format!("{covered}sha256:{}\n", hex::encode(sha2::Sha256::digest(covered.as_bytes())))
    };
    let file = env.ks.join("secrets.json");
    fs::write(&file, planted).unwrap();
    assert_refused_and_unchanged(&env, &file, "no secret ever written");
}

/// Review of issue 14: `kms token create` validated nothing (the name of
/// the service, an empty name, control characters that forge lines of `kms audit` output).
#[test]
fn token_create_refuses_reserved_or_malformed_principals() {
    let env = KmsEnv::new();
    env.kms("op").create_key(Some("alias/x"), "").unwrap();
    for bad in ["sqlite-tde-kms", "", "ops\n1735689600\troot\tDisableKey"] {
        let out = cli(&env.ks).args(["kms", "token", "create", bad]).output().unwrap();
        assert!(!out.status.success(), "kms token create {bad:?} was accepted");
    }
}

/// Review of issue 14: kmsd.json had a MAC but no freshness, so whoever could write the
/// keystore directory and kept an earlier genuine copy put it back, and a revoked token worked
/// again (deleting the file dropped uid mappings and operators silently). keystore.json (MACed)
/// now records the newest generation: an older file, a deleted one, or a plain-JSON one after
/// that is refused, and nothing is rewritten.
#[test]
fn a_rolled_back_or_deleted_kmsd_json_is_refused() {
    use sqlite_tde::kms::daemon::DaemonConfig;
    let env = KmsEnv::new();
    let kms = env.kms("op").with_operators(vec!["op".into()]);
    kms.create_key(Some("alias/x"), "").unwrap();
    let token = DaemonConfig::update(&kms, "op", "kmsd:CreateToken", false, |c| {
        Ok((c.add_token("eve", T0)?, "token for eve".into()))
    })
    .unwrap();
    let path = DaemonConfig::path(&env.ks);
    let saved = fs::read(&path).unwrap();
    DaemonConfig::update(&kms, "op", "kmsd:RevokeTokens", false, |c| {
        c.tokens.retain(|t| t.principal != "eve");
        Ok(((), "revoked eve".into()))
    })
    .unwrap();
    assert_eq!(DaemonConfig::load(&kms).unwrap().principal_of_token(&token), None);
    let current = fs::read(&path).unwrap();
    for (what, put) in
        [("older copy", Some(saved)), ("plain JSON", Some(br#"{"tokens":[]}"#.to_vec())), ("deleted", None)]
    {
        match &put {
            Some(b) => fs::write(&path, b).unwrap(),
            None => fs::remove_file(&path).unwrap(),
        }
        let e = DaemonConfig::load(&kms).unwrap_err().to_string();
        assert!(e.contains("the keystore records generation 2"), "{what}: {e}");
        assert!(DaemonConfig::update(&kms, "op", "kmsd:CreateToken", false, |c| Ok((
            c.add_token("x", T0)?,
            "x".into()
        )))
        .is_err());
        assert_eq!(fs::read(&path).ok(), put, "{what}: the refused file was rewritten");
    }
    fs::write(&path, &current).unwrap();
    assert_eq!(DaemonConfig::load(&kms).unwrap().generation, 2);
}

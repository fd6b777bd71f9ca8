//! The `sqlite-tde kms` / `secrets` command line, embedded and through the daemon
//! (`kms serve`), including an application process that uses the daemon without access to
//! the keystore.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

mod kms_support;

use assert_cmd::Command;
use kms_support::start_daemon;
use predicates::prelude::*;

const T0: u64 = 1_735_689_600;

struct Env {
    tmp: tempfile::TempDir,
    ks: PathBuf,
}

fn clean(c: &mut Command) {
    for v in kms_support::KMS_ENV {
        c.env_remove(v);
    }
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let ks = tmp.path().join("keystore");
        Env { tmp, ks }
    }
    fn path(&self, n: &str) -> PathBuf {
        self.tmp.path().join(n)
    }
    /// The binary on this keystore, acting as `principal`, at time T0 + `days`.
    fn as_at(&self, principal: &str, days: u64) -> Command {
        let mut c = Command::cargo_bin("sqlite-tde").unwrap();
        clean(&mut c);
        c.env("SQLITE_TDE_TEST_NOW", (T0 + days * 86_400).to_string());
        c.arg("--keystore").arg(&self.ks).arg("--principal").arg(principal);
        c
    }
    fn as_(&self, principal: &str) -> Command {
        self.as_at(principal, 0)
    }
}

fn out(c: &mut Command) -> String {
    String::from_utf8(c.assert().success().get_output().stdout.clone()).unwrap()
}

fn json(c: &mut Command) -> serde_json::Value {
    serde_json::from_str(&out(c)).unwrap()
}

#[test]
fn lifecycle_policy_and_audit_from_the_command_line() {
    let env = Env::new();
    let id = out(env.as_("carol").args([
        "kms",
        "create-key",
        "--alias",
        "app",
        "--admin",
        "alice",
        "--user",
        "bob",
        "--rotation-days",
        "90",
    ]))
    .trim()
    .to_string();
    let d = json(env.as_("alice").args(["--json", "kms", "describe", "alias/app"]));
    for k in ["key_id", "state", "origin", "protection", "versions", "primary_version"] {
        assert!(d.get(k).is_some(), "describe --json lacks {k}: {d}");
    }
    assert_eq!(d["key_id"], id.as_str());
    assert_eq!(
        (d["state"].as_str(), d["origin"].as_str(), d["protection"].as_str()),
        (Some("enabled"), Some("internal"), Some("software"))
    );
    assert_eq!(d["versions"], serde_json::json!([1]));
    assert_eq!(d["rotation_period_days"], 90);

    // Databases: the key user creates one.
    let db = env.path("app.db");
    env.as_("bob")
        .args(["sql"])
        .arg(&db)
        .args(["--key", "alias/app", "CREATE TABLE t(x); INSERT INTO t VALUES(42)"])
        .assert()
        .success();
    env.as_("bob").arg("sql").arg(&db).arg("SELECT x FROM t").assert().success().stdout("42\n");
    // The admin cannot read it; the user cannot disable the key.
    env.as_("alice")
        .arg("sql")
        .arg(&db)
        .arg("SELECT x FROM t")
        .assert()
        .code(3)
        .stderr(predicate::str::contains("access denied: principal alice may not kms:Decrypt"));
    env.as_("bob")
        .args(["kms", "disable", "alias/app"])
        .assert()
        .code(3)
        .stderr(predicate::str::contains("kms:DisableKey"));
    env.as_("bob").args(["kms", "schedule-deletion", "alias/app", "--days", "7"]).assert().code(3);

    // Disable: the database cannot be opened; enable restores.
    env.as_("alice")
        .args(["kms", "disable", "alias/app"])
        .assert()
        .success()
        .stdout(predicate::str::contains("state: disabled"));
    env.as_("bob")
        .arg("sql")
        .arg(&db)
        .arg("SELECT x FROM t")
        .assert()
        .code(3)
        .stderr(predicate::str::contains("is disabled"));
    env.as_("alice").args(["kms", "enable", "alias/app"]).assert().success();
    env.as_("bob").arg("sql").arg(&db).arg("SELECT x FROM t").assert().success().stdout("42\n");

    // Rotation: new databases get version 2, the old one still opens.
    env.as_("alice")
        .args(["kms", "rotate", "alias/app"])
        .assert()
        .success()
        .stdout(predicate::str::contains("primary_version: 2"));
    let db2 = env.path("app2.db");
    env.as_("bob").arg("sql").arg(&db2).args(["--key", "alias/app", "CREATE TABLE t(x)"]).assert().success();
    let info = json(env.as_("bob").args(["info", "--json"]).arg(&db2));
    assert_eq!(info["key_version"], 2);
    env.as_("bob").arg("sql").arg(&db).arg("SELECT x FROM t").assert().success().stdout("42\n");
    env.as_("alice").args(["kms", "rotation", "alias/app", "--disable"]).assert().success();
    env.as_("alice").args(["kms", "rotation", "alias/app", "--enable"]).assert().code(2);
    env.as_("alice").args(["kms", "rotation", "alias/app", "--enable", "--days", "30"]).assert().success();

    // Aliases and listings.
    env.as_("alice").args(["kms", "alias", "create", "alias/app-v2", &id]).assert().success();
    let aliases = out(env.as_("alice").args(["kms", "alias", "list"]));
    assert!(aliases.contains(&format!("alias/app-v2\t{id}")), "{aliases}");
    let listed = out(env.as_("alice").args(["kms", "list"]));
    assert!(listed.lines().any(|l| l.starts_with(&id) && l.contains("\tenabled\t")), "{listed}");

    // Policy get/put and lint.
    let policy = out(env.as_("alice").args(["kms", "policy", "get", "alias/app"]));
    let mut p: serde_json::Value = serde_json::from_str(&policy).unwrap();
    // Lint as the key-admin: a principal's lint covers the keys whose policy it may read.
    env.as_("alice").args(["kms", "lint"]).assert().success().stdout("");
    // Granting bob the admin role as well is flagged by lint.
    p["statements"][0]["principals"] = serde_json::json!(["alice", "bob"]);
    env.as_("alice").args(["kms", "policy", "put", "alias/app"]).write_stdin(p.to_string()).assert().success();
    env.as_("alice")
        .args(["kms", "lint"])
        .assert()
        .code(1)
        .stdout(predicate::str::contains("principal bob holds kms:Decrypt"));
    let lint: serde_json::Value =
        serde_json::from_slice(&env.as_("alice").args(["--json", "kms", "lint"]).assert().code(1).get_output().stdout)
            .unwrap();
    assert_eq!(lint[0]["key_id"], id.as_str());

    // Deletion: too short a window is refused; after the window the database says "deleted".
    env.as_("alice")
        .args(["kms", "schedule-deletion", "alias/app", "--days", "6"])
        .assert()
        .code(3)
        .stderr(predicate::str::contains("7 to 30"));
    env.as_("alice")
        .args(["kms", "schedule-deletion", "alias/app", "--days", "7"])
        .assert()
        .success()
        .stdout(predicate::str::contains("pending deletion"));
    env.as_at("bob", 3)
        .arg("sql")
        .arg(&db)
        .arg("SELECT x FROM t")
        .assert()
        .code(3)
        .stderr(predicate::str::contains("pending deletion"));
    env.as_at("alice", 3)
        .args(["kms", "cancel-deletion", "alias/app"])
        .assert()
        .success()
        .stdout(predicate::str::contains("state: disabled"));
    env.as_at("alice", 3).args(["kms", "enable", "alias/app"]).assert().success();
    env.as_at("alice", 3).args(["kms", "schedule-deletion", &id, "--days", "7"]).assert().success();
    env.as_at("alice", 11)
        .args(["kms", "rotate-due"])
        .assert()
        .success()
        .stdout(predicate::str::contains(format!("deleted\t{id}")));
    for db in [&db, &db2] {
        env.as_at("bob", 12)
            .arg("sql")
            .arg(db)
            .arg("SELECT x FROM t")
            .assert()
            .code(3)
            .stderr(predicate::str::contains(format!("KMS key {id} has been deleted")));
    }
    let d = json(env.as_at("alice", 12).args(["--json", "kms", "describe", &id]));
    assert_eq!(d["state"], "deleted");

    // The audit log lists and verifies (as root, an operator of every keystore: the whole
    // trail is for operators); tampering is exit code 3.
    let recs = json(env.as_at("root", 12).args(["--json", "kms", "audit", "--key", &id]));
    let ops: Vec<&str> = recs.as_array().unwrap().iter().map(|r| r["operation"].as_str().unwrap()).collect();
    for op in [
        "CreateKey",
        "GenerateDataKey",
        "Decrypt",
        "DisableKey",
        "EnableKey",
        "RotateKeyOnDemand",
        "ScheduleKeyDeletion",
        "DeleteKey:scheduled",
    ] {
        assert!(ops.contains(&op), "{op} not in {ops:?}");
    }
    assert!(recs.as_array().unwrap().iter().any(|r| r["principal"] == "alice" && r["outcome"] == "denied"));
    let since = json(env.as_at("root", 12).args(["--json", "kms", "audit", "--since", "2025-01-05"]));
    assert!(since.as_array().unwrap().iter().all(|r| r["time"].as_u64().unwrap() >= T0 + 4 * 86_400));
    env.as_at("root", 12)
        .args(["kms", "audit", "--verify"])
        .assert()
        .success()
        .stdout(predicate::str::contains("audit log OK"));
    let log = env.ks.join("audit.log");
    let text = std::fs::read_to_string(&log).unwrap();
    std::fs::write(&log, text.replacen("\"principal\":\"bob\"", "\"principal\":\"eve\"", 1)).unwrap();
    env.as_at("root", 12)
        .args(["kms", "audit", "--verify"])
        .assert()
        .code(3)
        .stdout(predicate::str::contains("record edited"));
}

#[test]
fn byok_from_the_command_line() {
    let env = Env::new();
    let id =
        out(env.as_("ops").args(["kms", "create-key", "--alias", "byok", "--origin", "external"])).trim().to_string();
    let d = json(env.as_("ops").args(["--json", "kms", "describe", "alias/byok"]));
    assert_eq!((d["state"].as_str(), d["origin"].as_str()), (Some("pending_import"), Some("external")));
    let pk = env.path("wrapping.pem");
    let token = env.path("token.bin");
    env.as_("ops")
        .args(["kms", "get-import-params", "alias/byok", "--public-key-out"])
        .arg(&pk)
        .arg("--token-out")
        .arg(&token)
        .assert()
        .success();
    let material = env.path("material.bin");
    let wrapped = env.path("material.enc");
    let wrap = |seed: u8| {
        std::fs::write(&material, kms_support::test_material(seed)).unwrap();
        env.as_("ops")
            .args(["kms", "wrap-material", "--public-key"])
            .arg(&pk)
            .arg("--material")
            .arg(&material)
            .arg("--out")
            .arg(&wrapped)
            .assert()
            .success();
    };
    wrap(7);
    env.as_("ops")
        .args(["kms", "import", "alias/byok", "--material"])
        .arg(&wrapped)
        .arg("--token")
        .arg(&token)
        .args(["--expires", "2025-01-03"])
        .assert()
        .success()
        .stdout(predicate::str::contains("state: enabled"));
    let db = env.path("byok.db");
    env.as_("ops")
        .arg("sql")
        .arg(&db)
        .args(["--key", &id, "CREATE TABLE t(x); INSERT INTO t VALUES('imported')"])
        .assert()
        .success();
    env.as_at("ops", 1).arg("sql").arg(&db).arg("SELECT x FROM t").assert().success().stdout("imported\n");
    // Expired: pending import again.
    env.as_at("ops", 3)
        .arg("sql")
        .arg(&db)
        .arg("SELECT x FROM t")
        .assert()
        .code(3)
        .stderr(predicate::str::contains("pending import"));
    // Different material is refused, the same is accepted; at day 3, by key id.
    let params = || {
        env.as_at("ops", 3)
            .args(["kms", "get-import-params", &id, "--public-key-out"])
            .arg(&pk)
            .arg("--token-out")
            .arg(&token)
            .assert()
            .success();
    };
    let import = || {
        env.as_at("ops", 3).args(["kms", "import", &id, "--material"]).arg(&wrapped).arg("--token").arg(&token).assert()
    };
    params();
    wrap(8);
    import().code(3).stderr(predicate::str::contains("different key material"));
    // The failed attempt spent the token (no wrapping key decrypts twice): new parameters.
    import().code(3).stderr(predicate::str::contains("no import parameters"));
    params();
    wrap(7);
    import().success();
    env.as_at("ops", 3).arg("sql").arg(&db).arg("SELECT x FROM t").assert().success().stdout("imported\n");
    env.as_at("ops", 3)
        .args(["kms", "delete-imported-material", &id])
        .assert()
        .success()
        .stdout(predicate::str::contains("state: pending_import"));
    env.as_at("ops", 3).arg("sql").arg(&db).arg("SELECT x FROM t").assert().code(3);
}

#[test]
fn secrets_from_the_command_line() {
    let env = Env::new();
    out(env.as_("admin").args([
        "kms",
        "create-key",
        "--alias",
        "vault",
        "--admin",
        "admin",
        "--user",
        "app",
        "--user",
        "app2",
    ]));
    env.as_("app")
        .args(["secrets", "put", "api/token", "--key", "alias/vault"])
        .write_stdin("s3cr3t-value\n")
        .assert()
        .success();
    env.as_("app").args(["secrets", "get", "api/token"]).assert().success().stdout("s3cr3t-value");
    let rotated = out(env.as_("app").args(["secrets", "rotate", "api/token"]));
    assert!(rotated.contains("\tcurrent"), "{rotated}");
    env.as_("app")
        .args(["secrets", "get", "api/token", "--stage", "previous"])
        .assert()
        .success()
        .stdout("s3cr3t-value");
    let versions = out(env.as_("app").args(["secrets", "versions", "api/token"]));
    assert_eq!(versions.lines().count(), 2);
    assert!(versions.contains("previous") && versions.contains("current"), "{versions}");
    let list = json(env.as_("app").args(["--json", "secrets", "list"]));
    assert_eq!(list[0]["name"], "api/token");
    env.as_("admin")
        .args(["secrets", "get", "api/token"])
        .assert()
        .code(3)
        .stderr(predicate::str::contains("access denied"));
    let g = json(env.as_("app").args(["--json", "secrets", "get", "api/token", "--stage", "previous"]));
    assert_eq!(g["value"]["text"], "s3cr3t-value");
    assert!(!std::fs::read_to_string(env.ks.join("secrets.json")).unwrap().contains("s3cr3t"));

    // The secret is app's: app2 may use the key, yet reads and writes nothing until app grants it.
    let p = json(env.as_("app").args(["secrets", "get-policy", "api/token"]));
    assert_eq!(p["owner"], "app");
    for args in [&["secrets", "get", "api/token"][..], &["secrets", "put", "api/token"][..]] {
        env.as_("app2")
            .args(args)
            .write_stdin("x")
            .assert()
            .code(3)
            .stderr(predicate::str::contains("principal app2 may not secrets:"));
    }
    let mut policy = p["policy"].clone();
    policy["statements"].as_array_mut().unwrap().push(serde_json::json!({
        "sid": "reader", "effect": "allow", "principals": ["app2"], "actions": ["secrets:GetSecretValue"]
    }));
    env.as_("app2").args(["secrets", "put-policy", "api/token"]).write_stdin(policy.to_string()).assert().code(3);
    env.as_("app").args(["secrets", "put-policy", "api/token"]).write_stdin(policy.to_string()).assert().success();
    assert_eq!(
        out(env.as_("app2").args(["secrets", "get", "api/token"])),
        out(env.as_("app").args(["secrets", "get", "api/token"]))
    );
    env.as_("app2").args(["secrets", "rotate", "api/token"]).assert().code(3);
    // A policy nobody could change again is refused.
    env.as_("app")
        .args(["secrets", "put-policy", "api/token"])
        .write_stdin(r#"{"version":1,"statements":[{"effect":"allow","principals":["app"],"actions":["secrets:GetSecretValue"]}]}"#)
        .assert()
        .code(3)
        .stderr(predicate::str::contains("to nobody"));
}

// ----- daemon -----

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

const NOBODY: u32 = 65534;

#[test]
fn daemon_end_to_end_application_without_keystore_access() {
    let env = Env::new();
    // The keystore directory is 0700 root; the socket lives in a directory the application
    // can reach.
    let run = env.path("run");
    std::fs::create_dir(&run).unwrap();
    std::fs::set_permissions(env.tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = run.join("kms.sock");
    let app_uid = if is_root() { NOBODY } else { nix::unistd::geteuid().as_raw() };
    let me = nix::unistd::geteuid().as_raw();
    let mut extra = vec!["--map-uid".to_string(), format!("{app_uid}=app")];
    if is_root() {
        extra.extend(["--socket-mode".into(), "660".into(), "--socket-group".into(), NOBODY.to_string()]);
    } else {
        extra.clear();
        extra.extend(["--map-uid".into(), format!("{me}=app")]);
    }
    let extra_refs: Vec<&str> = extra.iter().map(String::as_str).collect();
    let daemon = start_daemon(&env.ks, &socket, &extra_refs);
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert!(mode == 0o600 || mode == 0o660, "socket mode {mode:o}");
    let kms_spec = format!("unix:{}", daemon.socket.display());

    // An operator token (the test runs as the app's uid when not root).
    let token = out(env.as_("-").args(["kms", "token", "create", "ops"])).trim().to_string();
    let ops = |c: &mut Command| {
        c.env("SQLITE_TDE_KMS_TOKEN", &token);
    };
    let mut create = env.as_("ignored");
    ops(&mut create);
    let id = out(create.args([
        "--kms",
        &kms_spec,
        "kms",
        "create-key",
        "--alias",
        "app",
        "--admin",
        "ops",
        "--user",
        "app",
    ]))
    .trim()
    .to_string();
    let mut who = env.as_("ignored");
    ops(&mut who);
    assert_eq!(out(who.args(["--kms", &kms_spec, "kms", "whoami"])).trim(), "ops\tdaemon");

    // The application process: no keystore, only the socket.
    let appdir = env.path("app");
    std::fs::create_dir(&appdir).unwrap();
    if is_root() {
        std::os::unix::fs::chown(&appdir, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let db = appdir.join("app.db");
    let app = |args: &[&str]| -> std::process::Output {
        let mut c = std::process::Command::new(assert_cmd::cargo::cargo_bin("sqlite-tde"));
        c.env_clear().env("PATH", "/usr/bin:/bin").env("HOME", &appdir).env("SQLITE_TDE_KMS", &kms_spec);
        if is_root() {
            c.uid(NOBODY).gid(NOBODY);
        }
        c.args(args).output().unwrap()
    };
    let dbs = db.to_str().unwrap();
    let o = app(&["sql", dbs, "--key", "alias/app", "CREATE TABLE t(x); INSERT INTO t VALUES('through the daemon')"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = app(&["sql", dbs, "SELECT x FROM t"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "through the daemon\n", "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&app(&["kms", "whoami"]).stdout).trim(), "app\tdaemon");
    // Separation of duties holds over the socket, and the app cannot assert another principal.
    let o = app(&["--principal", "ops", "kms", "disable", "alias/app"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("principal app may not kms:DisableKey"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // No local keystore was created for the application.
    assert!(!appdir.join(".local").exists());
    if is_root() {
        let o = app(&["kms", "--kms", "local:", "--keystore", env.ks.to_str().unwrap(), "list"]);
        assert!(!o.status.success(), "the application must not be able to open the keystore directly");
        let cat =
            std::process::Command::new("cat").arg(env.ks.join("root.key")).uid(NOBODY).gid(NOBODY).output().unwrap();
        assert!(!cat.status.success(), "the application can read the root key");
        let cat = std::process::Command::new("cat")
            .arg(env.ks.join("keystore.json"))
            .uid(NOBODY)
            .gid(NOBODY)
            .output()
            .unwrap();
        assert!(!cat.status.success(), "the application can read the keystore");
    } else {
        eprintln!("NOTE: not root: the application runs as the daemon's uid; keystore isolation not checked");
    }

    // Lifecycle through the daemon: disable blocks the application at once.
    let mut dis = env.as_("ignored");
    ops(&mut dis);
    dis.args(["--kms", &kms_spec, "kms", "disable", "alias/app"]).assert().success();
    let o = app(&["sql", dbs, "SELECT x FROM t"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&o.stderr).contains("is disabled"), "{}", String::from_utf8_lossy(&o.stderr));
    let mut en = env.as_("ignored");
    ops(&mut en);
    en.args(["--kms", &kms_spec, "kms", "enable", "alias/app"]).assert().success();
    assert!(app(&["sql", dbs, "SELECT x FROM t"]).status.success());

    // The audit log names the daemon-side principals.
    let mut audit = env.as_("ignored");
    ops(&mut audit);
    let recs = json(audit.args(["--json", "--kms", &kms_spec, "kms", "audit", "--key", &id]));
    let recs = recs.as_array().unwrap();
    assert!(recs
        .iter()
        .any(|r| r["principal"] == "app" && r["operation"] == "GenerateDataKey" && r["outcome"] == "allowed"));
    assert!(recs.iter().any(|r| r["principal"] == "app" && r["operation"] == "DisableKey" && r["outcome"] == "denied"));
    assert!(recs
        .iter()
        .any(|r| r["principal"] == "ops" && r["operation"] == "DisableKey" && r["outcome"] == "allowed"));
    // A bad token is refused.
    let o = {
        let mut c = std::process::Command::new(assert_cmd::cargo::cargo_bin("sqlite-tde"));
        c.env_clear()
            .env("SQLITE_TDE_KMS", &kms_spec)
            .env("SQLITE_TDE_KMS_TOKEN", "tdekms_bogus")
            .args(["kms", "list"]);
        c.output().unwrap()
    };
    assert_eq!(o.status.code(), Some(3));
    // The daemon refuses to start twice on the same socket.
    let mut second = env.as_("-");
    second
        .args(["kms", "serve", "--socket"])
        .arg(&socket)
        .assert()
        .code(3)
        .stderr(predicate::str::contains("already listening"));
    drop(daemon);
}

/// A broken audit trail closes the daemon's KMS too, and its clients are told why and what
/// to run; after `kms audit --acknowledge-gap` on the keystore they are served again.
#[test]
fn daemon_clients_see_a_broken_audit_trail_and_its_recovery_command() {
    let env = Env::new();
    let me = nix::unistd::geteuid().as_raw();
    let map = format!("{me}=ops");
    let daemon = start_daemon(&env.ks, &env.path("kms.sock"), &["--map-uid", &map, "--operator", "ops"]);
    let spec = format!("unix:{}", daemon.socket.display());
    let client = |args: &[&str]| {
        let mut c = env.as_("ignored");
        c.args(["--kms", &spec]).args(args);
        c
    };
    out(&mut client(&["kms", "create-key", "--alias", "d"]));
    out(&mut client(&["kms", "describe", "alias/d"]));
    let log = env.ks.join("audit.log");
    let text = std::fs::read_to_string(&log).unwrap();
    let kept: Vec<&str> = text.lines().take(1).collect();
    std::fs::write(&log, format!("{}\n", kept.join("\n"))).unwrap();

    let o = client(&["kms", "describe", "alias/d"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(
        err.contains("audit trail broken")
            && err.contains("record(s) missing")
            && err.contains("kms audit --acknowledge-gap"),
        "{err}"
    );
    // The administrator acknowledges on the keystore directory; the daemon serves again.
    let o = env.as_("admin").args(["kms", "audit", "--acknowledge-gap"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out(&mut client(&["kms", "describe", "alias/d"]));
    assert!(out(&mut client(&["kms", "audit", "--verify"])).contains("acknowledged gap"));
    drop(daemon);
}

/// A process bound at the daemon's socket path that is not the daemon (another user got there
/// first) must get neither the bearer token nor a request: the client checks the listener's
/// kernel credentials (SO_PEERCRED) first. The impostor is a real process under uid 65534
/// (`setpriv`); the same impostor run as this user is the control that the capture works.
#[test]
fn daemon_client_refuses_a_socket_held_by_another_user() {
    if !nix::unistd::geteuid().is_root() || std::process::Command::new("setpriv").arg("--version").output().is_err() {
        assert!(std::env::var("SQLITE_TDE_CI").as_deref() != Ok("1"), "needs root and setpriv (util-linux)");
        eprintln!("SKIPPED: needs root and setpriv to run an impostor under another uid");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    // Accept one connection, record everything received for a moment, then close.
    let impostor = r#"
import socket, sys, time
path, out = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX); s.bind(path); s.listen(1)
open(out + ".ready", "w").close()
c, _ = s.accept(); c.settimeout(1.0); got = b""
try:
    while True:
        b = c.recv(65536)
        if not b: break
        got += b
except socket.timeout:
    pass
open(out, "wb").write(got)
"#;
    for (who, uid) in [("impostor", Some(65534u32)), ("control", None)] {
        let sock = dir.path().join(format!("{who}.sock"));
        let out = dir.path().join(format!("{who}.bytes"));
        let mut cmd = match uid {
            Some(u) => {
                let mut c = std::process::Command::new("setpriv");
                c.args([
                    format!("--reuid={u}"),
                    format!("--regid={u}"),
                    "--clear-groups".into(),
                    "/usr/bin/python3".into(),
                ]);
                c
            }
            None => std::process::Command::new("/usr/bin/python3"),
        };
        let mut child = cmd.arg("-c").arg(impostor).arg(&sock).arg(&out).spawn().unwrap();
        let ready = PathBuf::from(format!("{}.ready", out.display()));
        let t0 = std::time::Instant::now();
        while !ready.exists() {
            assert!(t0.elapsed() < std::time::Duration::from_secs(10), "{who} did not start");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let kms = sqlite_tde::kms::daemon::UnixKms::new(&sock).with_token("tok-s3cr3t-bearer");
        let r = kms.client().describe_key("alias/app");
        child.wait().unwrap();
        let got = std::fs::read(&out).unwrap_or_default();
        let sent_token = got.windows(17).any(|w| w == b"tok-s3cr3t-bearer");
        match uid {
            Some(u) => {
                let e = r.expect_err("the client talked to an impostor").to_string();
                assert!(e.contains("refusing the KMS daemon") && e.contains(&format!("uid {u}")), "{e}");
                assert!(got.is_empty(), "{} bytes were sent to the impostor", got.len());
            }
            None => assert!(sent_token, "control: the capture saw no token ({} bytes)", got.len()),
        }
    }
}

/// Issue 14 (daemon listings): through the daemon any account used to list every key and
/// alias and read the whole audit trail. Now `kms serve --operator ops` names who sees
/// everything; another account sees its own keys and the records it may read, and cannot
/// verify the trail.
#[test]
fn daemon_accounts_see_only_their_own_keys_and_records() {
    let env = Env::new();
    let daemon = start_daemon(&env.ks, &env.path("kms.sock"), &["--operator", "ops"]);
    let spec = format!("unix:{}", daemon.socket.display());
    let token = |p: &str| out(env.as_("-").args(["kms", "token", "create", p])).trim().to_string();
    let (ops, eve) = (token("ops"), token("eve"));
    let with = |t: &str, args: &[&str]| {
        let mut c = env.as_("ignored");
        c.env("SQLITE_TDE_KMS_TOKEN", t).arg("--kms").arg(&spec).args(args);
        c
    };
    let app_key = out(&mut with(&ops, &["kms", "create-key", "--alias", "app", "--admin", "ops", "--user", "app"]))
        .trim()
        .to_string();
    let eve_key = out(&mut with(&eve, &["kms", "create-key", "--alias", "eve"])).trim().to_string();
    let listed = |t: &str| {
        json(&mut with(t, &["--json", "kms", "list"]))
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["key_id"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let all = listed(&ops);
    assert!(all.contains(&app_key) && all.contains(&eve_key), "{all:?}");
    let eves = listed(&eve);
    assert!(eves.contains(&eve_key) && !eves.contains(&app_key), "eve lists a key she holds no right on: {eves:?}");

    let audit = |t: &str, extra: &[&str]| {
        let mut args = vec!["--json", "kms", "audit"];
        args.extend_from_slice(extra);
        json(&mut with(t, &args)).as_array().unwrap().clone()
    };
    let eve_sees = audit(&eve, &[]);
    assert!(!eve_sees.is_empty() && eve_sees.iter().all(|r| r["principal"] == "eve"), "{eve_sees:?}");
    assert!(audit(&ops, &[]).iter().any(|r| r["principal"] == "eve"));
    with(&eve, &["kms", "audit", "--key", "alias/app"])
        .assert()
        .code(3)
        .stderr(predicate::str::contains("eve may not kms:ReadAudit"));
    with(&eve, &["kms", "audit", "--verify"]).assert().code(3).stderr(predicate::str::contains("kms:VerifyAudit"));
    with(&ops, &["kms", "audit", "--verify"]).assert().success();
    // Lint: eve's key (she holds both roles) is hers to see; app's is not.
    let lint = String::from_utf8(with(&eve, &["kms", "lint"]).assert().code(1).get_output().stdout.clone()).unwrap();
    assert!(lint.contains(&eve_key) && !lint.contains(&app_key), "{lint}");
    drop(daemon);
}

/// Issue 14 / brief ("authenticate what you trust"): `kmsd.json` says who a daemon caller is,
/// and it used to be plain JSON, so anyone who could write the keystore directory added a token
/// for a principal of their choice (here the key-admin `ops`) and was that principal. Now the
/// file is MACed under the root key: an edit, or a plain-JSON file, is refused with the reason
/// and the command that fixes it, and nothing is changed; an operator authenticates an old
/// file explicitly (`kms daemon-config upgrade`).
#[test]
fn kmsd_json_written_without_the_root_key_gives_nobody_an_identity() {
    use sha2::Digest;
    let env = Env::new();
    let daemon = start_daemon(&env.ks, &env.path("kms.sock"), &[]);
    let spec = format!("unix:{}", daemon.socket.display());
    let ops = out(env.as_("-").args(["kms", "token", "create", "ops"])).trim().to_string();
    let whoami = |t: &str| {
        let mut c = env.as_("ignored");
        c.env("SQLITE_TDE_KMS_TOKEN", t).args(["--kms", &spec, "kms", "whoami"]);
        c
    };
    assert_eq!(out(&mut whoami(&ops)).trim(), "ops\tdaemon");
    let kmsd = env.ks.join("kmsd.json");
    let genuine = std::fs::read_to_string(&kmsd).unwrap();
    assert!(genuine.starts_with("sqlite-tde-kmsd 2\n") && genuine.contains("hmac-sha256:"), "{genuine}");

    // The attacker's own token, added for `ops`: in place (the MAC no longer verifies), and
    // as a plain-JSON file like earlier builds wrote.
    let evil = "tdekms_attacker";
    let digest: String = sha2::Sha256::digest(evil.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    let entry = format!(r#"{{"principal":"ops","sha256":"{digest}","created":0}}"#);
    let edited = genuine.replacen(r#""tokens": ["#, &format!(r#""tokens": [{entry},"#), 1);
    assert_ne!(edited, genuine);
    let legacy = format!(r#"{{"uid_principals":{{}},"tokens":[{entry}]}}"#);
    for (what, forged, why) in [
        ("edited", edited, "modified without the root key"),
        ("plain JSON", legacy, "is plain JSON (an earlier format)"),
    ] {
        std::fs::write(&kmsd, &forged).unwrap();
        let o = whoami(evil).output().unwrap();
        assert_eq!(o.status.code(), Some(3), "{what}: the forged token was accepted");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(why), "{what}: {err}");
        // The genuine token is refused too (the file as a whole is untrusted) and nothing was
        // rewritten.
        assert_eq!(whoami(&ops).output().unwrap().status.code(), Some(3));
        assert_eq!(std::fs::read_to_string(&kmsd).unwrap(), forged);
        env.as_("-").args(["kms", "token", "create", "x"]).assert().code(3).stderr(predicate::str::contains(why));
        assert_eq!(std::fs::read_to_string(&kmsd).unwrap(), forged);
    }
    // The genuine file put back: served again.
    std::fs::write(&kmsd, &genuine).unwrap();
    assert_eq!(out(&mut whoami(&ops)).trim(), "ops\tdaemon");
    let recs = json(env.as_("root").args(["--json", "kms", "audit"]));
    assert!(recs.as_array().unwrap().iter().any(|r| r["operation"] == "kmsd:CreateToken"));
    // A plain-JSON file of an earlier build, in a keystore that never wrote format 2 (the
    // golden keystore of 7e7ab06), can be inspected and, by an operator's explicit decision,
    // authenticated as it is.
    let old = env.path("old");
    std::fs::create_dir(&old).unwrap();
    let golden = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/kms-v1/keystore");
    for e in std::fs::read_dir(&golden).unwrap().flatten() {
        std::fs::copy(e.path(), old.join(e.file_name())).unwrap();
    }
    let on_old = |args: &[&str]| {
        let mut c = Command::cargo_bin("sqlite-tde").unwrap();
        clean(&mut c);
        c.arg("--keystore").arg(&old).arg("--principal").arg("root").args(args);
        c
    };
    on_old(&["kms", "daemon-config", "show"]).assert().code(3).stderr(predicate::str::contains("has no MAC"));
    let shown = out(&mut on_old(&["kms", "daemon-config", "show", "--unauthenticated"]));
    assert!(shown.contains("token\tops"), "{shown}");
    out(&mut on_old(&["kms", "daemon-config", "upgrade"]));
    assert!(out(&mut on_old(&["kms", "daemon-config", "show"])).contains("token\tops"));
    let recs = json(&mut on_old(&["--json", "kms", "audit"]));
    assert!(recs.as_array().unwrap().iter().any(|r| r["operation"] == "kmsd:UpgradeDaemonConfig"));
    // Mappings and operators are set through the CLI, never by editing the file.
    let shown =
        out(env.as_("root").args(["kms", "daemon-config", "set", "--map-uid", "4242=app", "--add-operator", "ops"]));
    assert!(shown.contains("uid 4242\tapp") && shown.contains("operator\tops"), "{shown}");
    env.as_("root").args(["kms", "daemon-config", "set", "--map-uid", "nope"]).assert().code(2);
    let before = std::fs::read(&kmsd).unwrap();
    env.as_("root").args(["kms", "daemon-config", "set"]).assert().code(2);
    env.as_("root").args(["kms", "daemon-config", "set", "--add-operator", "sqlite-tde-kms"]).assert().code(2);
    assert_eq!(std::fs::read(&kmsd).unwrap(), before, "a refused change rewrote kmsd.json");
    drop(daemon);
}

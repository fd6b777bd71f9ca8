//! The OpenBao / Vault transit provider against a real `bao server -dev` on loopback: key
//! rotation and rewrap, retirement of old versions, separation of duties, token revocation,
//! the audit trail, an unreachable KMS, TLS with AppRole, and selection by `SQLITE_TDE_KMS`.
//!
//! Each test starts its own server (killed on drop) and registers its own VFS. Without the
//! `bao` binary the tests skip, except under CI (`SQLITE_TDE_CI=1`), where they fail.

mod openbao_support;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use openbao_support::{app_policy, keyadmin_policy, read_header, require_bao, rewrap_file, rewrap_policy, BaoServer};
use sqlite_tde::keycache::CacheConfig;
use sqlite_tde::kms::openbao::{Credentials, OpenBaoConfig, OpenBaoKms, Secret};
use sqlite_tde::kms::{EncryptionContext, Kms, KmsError};
use sqlite_tde::{Error, OpenOptions, Tde};

static N: AtomicUsize = AtomicUsize::new(0);

/// A VFS with a unique name over `kms`, caching keys for `ttl` (zero: every open asks the KMS).
fn vfs(kms: Arc<dyn Kms>, ttl: Duration) -> Tde {
    let name = format!("tde-bao-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
    Tde::builder()
        .vfs_name(name)
        .cache(CacheConfig { max_entries: 64, ttl, ..CacheConfig::default() })
        .register_with_kms(kms)
        .unwrap()
}

/// A provider for key `key` of `server` authenticating with `token`.
fn provider(server: &BaoServer, key: &str, token: &str) -> Arc<OpenBaoKms> {
    let mut cfg = OpenBaoConfig::new(&server.uri(key), Credentials::token(token))
        .unwrap()
        .with_timeout(Duration::from_millis(1000))
        .with_retries(2);
    if let Some(ca) = &server.ca_cert {
        cfg = cfg.with_ca_cert(ca);
    }
    Arc::new(OpenBaoKms::new(cfg).unwrap())
}

fn create(tde: &Tde, path: &Path, value: &str) {
    let c = tde.open(path).unwrap();
    c.execute_batch("CREATE TABLE t(v TEXT)").unwrap();
    c.execute("INSERT INTO t VALUES (?1)", [value]).unwrap();
}

fn existing(tde: &Tde, path: &Path) -> Result<String, Error> {
    let c = tde.open_with(path, &OpenOptions { must_exist: true, ..Default::default() })?;
    Ok(c.query_row("SELECT v FROM t", [], |r| r.get(0)).unwrap())
}

fn kms_error(r: Result<String, Error>) -> KmsError {
    match r {
        Err(Error::Kms { source, .. }) => source,
        other => panic!("expected a KMS error, got {other:?}"),
    }
}

/// Standard setup: key `app`, and tokens for the three duties.
struct Duties {
    app: String,
    rewrapper: String,
    keyadmin: String,
}

fn duties(server: &BaoServer) -> Duties {
    server.create_key("app");
    server.policy("app", &app_policy("app"));
    server.policy("rewrap", &rewrap_policy("app"));
    server.policy("keyadmin", &keyadmin_policy("app"));
    Duties {
        app: server.token("app-host-1", &["app"]).0,
        rewrapper: server.token("rewrapper", &["rewrap"]).0,
        keyadmin: server.token("key-admin", &["keyadmin"]).0,
    }
}

#[test]
fn rotate_rewrap_and_retire_versions() {
    let Some(bao) = require_bao("rotate_rewrap_and_retire_versions") else {
        return;
    };
    let t0 = Instant::now();
    let server = BaoServer::start(&bao, false);
    let d = duties(&server);
    let app_kms = provider(&server, "app", &d.app);
    let rewrapper = provider(&server, "app", &d.rewrapper);
    let keyadmin = provider(&server, "app", &d.keyadmin);
    // TTL zero: every open below is a cold open that asks the KMS.
    let tde = vfs(app_kms.clone(), Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
    create(&tde, &a, "alpha");
    create(&tde, &b, "beta");

    // The header records provider, address, mount and key, and the transit version.
    let (ha, _) = read_header(&a);
    assert_eq!(ha.key.uri, server.uri("app"));
    assert_eq!(ha.key.version, 1);
    assert!(ha.wrapped_dek.starts_with(b"vault:v1:"));

    // Rotation: new databases use v2, old ones still open with v1.
    assert_eq!(keyadmin.rotate_key("app").unwrap().latest_version, 2);
    assert_eq!(existing(&tde, &a).unwrap(), "alpha");
    assert_eq!(existing(&tde, &b).unwrap(), "beta");
    let c = dir.path().join("c.db");
    create(&tde, &c, "gamma");
    assert_eq!(read_header(&c).0.key.version, 2);

    // Fleet rewrap of a.db: same DEK and pages, header moves to v2 in the other slot.
    let before = std::fs::read(&a).unwrap();
    let (old, new) = rewrap_file(&a, rewrapper.as_ref(), None).unwrap();
    assert_eq!((old.key.version, new.key.version), (1, 2));
    assert_eq!(new.sequence, old.sequence + 1);
    assert_eq!(new.kcv, old.kcv);
    assert!(new.wrapped_dek.starts_with(b"vault:v2:"));
    let after = std::fs::read(&a).unwrap();
    assert_eq!(before[8192..], after[8192..], "rewrap must not touch pages");
    assert_eq!(read_header(&a).0, new);
    assert_eq!(existing(&tde, &a).unwrap(), "alpha");

    // Retire v1: a.db and c.db open, b.db (not rewrapped) fails clearly and stays untouched.
    keyadmin.set_min_decryption_version("app", 2).unwrap();
    assert_eq!(existing(&tde, &a).unwrap(), "alpha");
    assert_eq!(existing(&tde, &c).unwrap(), "gamma");
    let b_before = std::fs::read(&b).unwrap();
    let err = kms_error(existing(&tde, &b));
    eprintln!("retired version: {err}");
    assert!(matches!(err, KmsError::NotUsable { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("version 1 is retired") && msg.contains("min_decryption_version") && msg.contains("rewrap"),
        "{msg}"
    );
    assert_eq!(std::fs::read(&b).unwrap(), b_before);
    // Rewrap cannot read it either until the version is un-retired.
    assert!(matches!(rewrap_file(&b, rewrapper.as_ref(), None), Err(KmsError::NotUsable { .. })));

    // Recovery: lower, rewrap, raise again.
    keyadmin.set_min_decryption_version("app", 1).unwrap();
    rewrap_file(&b, rewrapper.as_ref(), None).unwrap();
    keyadmin.set_min_decryption_version("app", 2).unwrap();
    assert_eq!(existing(&tde, &b).unwrap(), "beta");

    // Rewrap to another key of the mount (e.g. splitting tenants onto their own CMKs).
    server.create_key("tenant2");
    server.policy(
        "rewrap2",
        &format!(
            "{}{}path \"transit/encrypt/tenant2\" {{ capabilities = [\"update\"] }}\n",
            rewrap_policy("app"),
            app_policy("tenant2")
        ),
    );
    let mover = provider(&server, "app", &server.token("mover", &["rewrap2"]).0);
    let (_, moved) = rewrap_file(&c, mover.as_ref(), Some("tenant2")).unwrap();
    assert_eq!((moved.key.uri.as_str(), moved.key.version), (server.uri("tenant2").as_str(), 1));
    let tenant_tde = vfs(provider(&server, "app", &server.token("app2", &["rewrap2"]).0), Duration::ZERO);
    assert_eq!(existing(&tenant_tde, &c).unwrap(), "gamma");

    // Key types that cannot bind a DEK to its database are refused with a clear reason.
    let root = provider(&server, "app", &server.root_token);
    server.root().post("transit/keys/rsa", serde_json::json!({ "type": "rsa-2048" })).unwrap();
    server.root().post("transit/keys/derived", serde_json::json!({ "type": "aes256-gcm96", "derived": true })).unwrap();
    let ctx = EncryptionContext::for_database(&[3; 16]);
    for key in ["rsa", "derived"] {
        let err = root.generate_data_key(key, &ctx).err().unwrap();
        eprintln!("{key} key: {err}");
        assert!(matches!(err, KmsError::NotUsable { .. }) && err.to_string().contains("aes256-gcm96"), "{err}");
    }
    assert!(matches!(root.generate_data_key("missing", &ctx), Err(KmsError::NotFound(_))));
    eprintln!("rotate_rewrap_and_retire_versions: {:.2?}", t0.elapsed());
}

#[test]
fn separation_of_duties_and_token_revocation() {
    let Some(bao) = require_bao("separation_of_duties_and_token_revocation") else {
        return;
    };
    let t0 = Instant::now();
    let server = BaoServer::start(&bao, false);
    let d = duties(&server);
    let app_kms = provider(&server, "app", &d.app);
    let keyadmin = provider(&server, "app", &d.keyadmin);
    let tde = vfs(app_kms.clone(), Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    create(&tde, &db, "payroll");

    // The application can wrap and unwrap, but not rotate, retire, read or create keys.
    for (what, r) in [
        ("rotate", app_kms.rotate_key("app").map(|_| ())),
        ("config", app_kms.set_min_decryption_version("app", 1).map(|_| ())),
        ("read", app_kms.key_info("app").map(|_| ())),
        ("create", app_kms.create_key("other").map(|_| ())),
    ] {
        match r {
            Err(KmsError::AccessDenied { principal, .. }) => {
                assert_eq!(principal, "token from the embedding application", "{what}")
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    // The key administrator can rotate but never obtains a DEK.
    assert_eq!(keyadmin.key_info("app").unwrap().latest_version, 1);
    let ctx = EncryptionContext::for_database(&[7; 16]);
    assert!(matches!(keyadmin.generate_data_key("app", &ctx), Err(KmsError::AccessDenied { .. })));
    let (h, _) = read_header(&db);
    let db_ctx = EncryptionContext::for_database(&h.db_uuid);
    let err = keyadmin.decrypt_data_key(&h.key, &h.wrapped_dek, &db_ctx).unwrap_err();
    assert!(matches!(err, KmsError::AccessDenied { .. }), "{err:?}");
    // A DEK is bound to its database: the right ciphertext with another database's context fails.
    assert!(matches!(app_kms.decrypt_data_key(&h.key, &h.wrapped_dek, &ctx), Err(KmsError::InvalidCiphertext { .. })));

    // Revocation takes effect at the next KMS call: no retry, no delay.
    assert_eq!(existing(&tde, &db).unwrap(), "payroll");
    server.revoke(&d.app);
    let t = Instant::now();
    let err = kms_error(existing(&tde, &db));
    let took = t.elapsed();
    eprintln!("revoked token ({took:.2?}): {err}");
    assert!(matches!(err, KmsError::AccessDenied { .. }), "{err:?}");
    assert!(err.to_string().contains("expired or was revoked"), "{err}");
    assert!(took < Duration::from_millis(500), "{took:?}");
    // New databases cannot be created either (whether the header is created at open or at
    // the first write).
    let created = tde
        .open(dir.path().join("new.db"))
        .map_err(|e| e.to_string())
        .and_then(|c| c.execute_batch("CREATE TABLE t(x)").map_err(|e| e.to_string()));
    assert!(created.as_ref().is_err_and(|e| e.contains("access denied")), "{created:?}");
    eprintln!("separation_of_duties_and_token_revocation: {:.2?}", t0.elapsed());
}

#[test]
fn audit_device_records_every_datakey_and_decrypt() {
    let Some(bao) = require_bao("audit_device_records_every_datakey_and_decrypt") else {
        return;
    };
    let t0 = Instant::now();
    let server = BaoServer::start(&bao, false);
    server.create_key("app");
    server.policy("app", &app_policy("app"));
    let (token, _) = server.token("host-a", &["app"]);
    let app_kms = provider(&server, "app", &token);
    let cold = vfs(app_kms.clone(), Duration::ZERO);
    let cached = vfs(app_kms.clone(), Duration::from_secs(600));
    let dir = tempfile::tempdir().unwrap();
    let dbs: Vec<_> = (0..3).map(|i| dir.path().join(format!("db{i}.db"))).collect();
    for db in &dbs {
        create(&cold, db, "x"); // 3 datakey
    }
    for _ in 0..2 {
        for db in &dbs {
            existing(&cold, db).unwrap(); // 6 decrypt
        }
    }
    for _ in 0..3 {
        for db in &dbs {
            existing(&cached, db).unwrap(); // 3 decrypt (first round), then cache hits
        }
    }
    assert_eq!(cached.context().cache.metrics().kms_calls, 3);
    // One more data key straight from the provider, to look for its bytes in the log.
    let generated = app_kms.generate_data_key("app", &EncryptionContext::for_database(&[9; 16])).unwrap();

    let entries = server.audit_entries();
    let requests = |path: &str| {
        entries.iter().filter(|e| e["type"] == "request" && e["request"]["path"] == path).collect::<Vec<_>>()
    };
    let datakeys = requests("transit/datakey/plaintext/app");
    let decrypts = requests("transit/decrypt/app");
    assert_eq!(datakeys.len(), 4, "datakey requests in the audit log");
    assert_eq!(decrypts.len(), 9, "decrypt requests in the audit log");
    for e in datakeys.iter().chain(&decrypts) {
        // Attributable to the host's token, and bound to a database (associated_data present).
        assert_eq!(e["auth"]["display_name"], "token-host-a", "{e}");
        assert!(e["request"]["data"]["associated_data"].as_str().is_some_and(|s| s.starts_with("hmac-sha256:")), "{e}");
    }
    let responses =
        entries.iter().filter(|e| e["type"] == "response" && e["request"]["path"] == "transit/decrypt/app").count();
    assert_eq!(responses, 9);
    // The audit log holds HMACs, never a DEK or the token.
    let log = std::fs::read_to_string(&server.audit_log).unwrap();
    let dek_b64 = base64::engine::general_purpose::STANDARD.encode(generated.plaintext.expose());
    assert!(!log.contains(&dek_b64));
    assert!(!log.contains(&token));
    eprintln!("audit_device_records_every_datakey_and_decrypt: {} entries, {:.2?}", entries.len(), t0.elapsed());
}

#[test]
fn server_down_cached_opens_until_ttl_then_fail_fast() {
    let Some(bao) = require_bao("server_down_cached_opens_until_ttl_then_fail_fast") else {
        return;
    };
    let t0 = Instant::now();
    let mut server = BaoServer::start(&bao, false);
    server.create_key("app");
    server.policy("app", &app_policy("app"));
    let token = server.token("host", &["app"]).0;
    let ttl = Duration::from_secs(3);
    let tde = vfs(provider(&server, "app", &token), ttl);
    let other = vfs(provider(&server, "app", &token), ttl);
    let dir = tempfile::tempdir().unwrap();
    let (warm, cold) = (dir.path().join("warm.db"), dir.path().join("cold.db"));
    create(&tde, &warm, "cached");
    let warmed = Instant::now();
    create(&other, &cold, "not cached here"); // in the other VFS's cache only

    server.stop();
    // Within the TTL a cached key opens without the KMS.
    assert_eq!(existing(&tde, &warm).unwrap(), "cached");
    // A cold open fails fast and says why.
    let t = Instant::now();
    let err = kms_error(existing(&tde, &cold));
    let took = t.elapsed();
    eprintln!("cold open with the server down ({took:.2?}): {err}");
    assert!(matches!(err, KmsError::Unavailable(_)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&format!("cannot reach OpenBao at http://127.0.0.1:{}", server.port)), "{msg}");
    assert!(msg.contains("connection refused") && msg.contains("3 attempt(s)"), "{msg}");
    assert!(took < Duration::from_millis(1500), "{took:?}");
    // After the TTL the cached key must be vouched for again, which fails the same way.
    assert_eq!(existing(&tde, &warm).unwrap(), "cached");
    std::thread::sleep((warmed + ttl + Duration::from_millis(100)).saturating_duration_since(Instant::now()));
    assert!(matches!(kms_error(existing(&tde, &warm)), KmsError::Unavailable(_)));
    eprintln!("server_down_cached_opens_until_ttl_then_fail_fast: {:.2?}", t0.elapsed());
}

/// AppRole on `server` for policy `app`: (role id, a secret id created with `secret_opts`).
fn approle(server: &BaoServer, secret_opts: serde_json::Value) -> (String, String) {
    let root = server.root();
    root.post("sys/auth/approle", serde_json::json!({ "type": "approle" })).unwrap();
    root.post("auth/approle/role/app", serde_json::json!({ "token_policies": ["app"], "token_ttl": "10m" })).unwrap();
    let role_id = root.get("auth/approle/role/app/role-id").unwrap()["data"]["role_id"].as_str().unwrap().to_string();
    let secret = root.post("auth/approle/role/app/secret-id", secret_opts).unwrap();
    (role_id, secret["data"]["secret_id"].as_str().unwrap().to_string())
}

#[test]
fn https_with_ca_bundle_and_approle() {
    let Some(bao) = require_bao("https_with_ca_bundle_and_approle") else {
        return;
    };
    let t0 = Instant::now();
    let server = BaoServer::start(&bao, true);
    server.create_key("app");
    server.policy("app", &app_policy("app"));
    let root = server.root();
    let (role_id, secret_id) = approle(&server, serde_json::json!({}));
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret-id");
    std::fs::write(&secret_file, format!("{secret_id}\n")).unwrap();
    let ca = server.ca_cert.clone().unwrap();

    let approle =
        |secret: Secret| Credentials::AppRole { mount: "approle".into(), role_id: role_id.clone(), secret_id: secret };
    let kms = OpenBaoKms::new(
        OpenBaoConfig::new(&server.uri("app"), approle(Secret::File(secret_file.clone()))).unwrap().with_ca_cert(&ca),
    )
    .unwrap();
    let tde = vfs(Arc::new(kms), Duration::ZERO);
    let db = dir.path().join("tls.db");
    create(&tde, &db, "over tls");
    assert!(read_header(&db).0.key.uri.starts_with("openbao+https://127.0.0.1:"));
    assert_eq!(existing(&tde, &db).unwrap(), "over tls");

    // The AppRole token is revoked (e.g. all logins of the role): the provider logs in again.
    root.post("sys/leases/revoke-prefix/auth/approle/login", serde_json::json!({})).unwrap();
    assert_eq!(existing(&tde, &db).unwrap(), "over tls");
    let logins = server
        .audit_entries()
        .iter()
        .filter(|e| e["type"] == "request" && e["request"]["path"] == "auth/approle/login")
        .count();
    assert_eq!(logins, 2, "one login, one re-login after the revocation");

    // Without the CA the server certificate is not trusted: clear error, no retries.
    let untrusted = vfs(
        Arc::new(
            OpenBaoKms::new(OpenBaoConfig::new(&server.uri("app"), approle(Secret::File(secret_file))).unwrap())
                .unwrap(),
        ),
        Duration::ZERO,
    );
    let t = Instant::now();
    let err = kms_error(existing(&untrusted, &db));
    eprintln!("untrusted certificate ({:.2?}): {err}", t.elapsed());
    assert!(matches!(err, KmsError::Unavailable(_)) && err.to_string().contains("BAO_CACERT"), "{err}");
    assert!(!err.to_string().contains("attempt(s)"), "TLS failures are not retried: {err}");

    // A wrong secret ID is an access error naming the role, not the secret.
    let wrong = vfs(
        Arc::new(
            OpenBaoKms::new(
                OpenBaoConfig::new(&server.uri("app"), approle(Secret::value("not-the-secret")))
                    .unwrap()
                    .with_ca_cert(&ca),
            )
            .unwrap(),
        ),
        Duration::ZERO,
    );
    let err = kms_error(existing(&wrong, &db));
    eprintln!("wrong secret ID: {err}");
    assert!(matches!(err, KmsError::AccessDenied { .. }) && err.to_string().contains("log in"), "{err}");
    assert!(!err.to_string().contains("not-the-secret"));
    eprintln!("https_with_ca_bundle_and_approle: {:.2?}", t0.elapsed());
}

const CHILD_ROLE: &str = "SQLITE_TDE_TEST_BAO_CHILD";

/// Child half of [`selected_by_sqlite_tde_kms`]: register through the environment only.
fn env_child(role: &str) {
    let db = std::path::PathBuf::from(std::env::var("SQLITE_TDE_TEST_DB").unwrap());
    let tde = Tde::builder().vfs_name(format!("tde-env-{}", std::process::id())).register().unwrap();
    match role {
        "create" => create(&tde, &db, "from env"),
        _ => println!("CHILD-READ {}", existing(&tde, &db).unwrap()),
    }
}

#[test]
fn selected_by_sqlite_tde_kms() {
    if let Ok(role) = std::env::var(CHILD_ROLE) {
        return env_child(&role);
    }
    let Some(bao) = require_bao("selected_by_sqlite_tde_kms") else {
        return;
    };
    let t0 = Instant::now();
    let server = BaoServer::start(&bao, false);
    server.create_key("app");
    server.policy("app", &app_policy("app"));
    let token = server.token("env-host", &["app"]).0;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("env.db");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &token).unwrap();
    let run = |role: &str, auth: (&str, &str)| {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "selected_by_sqlite_tde_kms", "--nocapture", "--test-threads", "1"])
            .env(CHILD_ROLE, role)
            .env("SQLITE_TDE_TEST_DB", &db)
            .env("SQLITE_TDE_KMS", server.uri("app"))
            .env("SQLITE_TDE_KMS_TIMEOUT_MS", "2000")
            .env_remove("BAO_TOKEN")
            .env_remove("VAULT_TOKEN")
            .env_remove("SQLITE_TDE_BAO_TOKEN_FILE")
            .env(auth.0, auth.1)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "child {role} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        stdout
    };
    run("create", ("BAO_TOKEN", &token));
    let (h, _) = read_header(&db);
    assert_eq!((h.key.uri.as_str(), h.key.version), (server.uri("app").as_str(), 1));
    let out = run("read", ("SQLITE_TDE_BAO_TOKEN_FILE", token_file.to_str().unwrap()));
    assert!(out.contains("CHILD-READ from env"), "{out}");
    let out = run("read", ("VAULT_TOKEN", &token));
    assert!(out.contains("CHILD-READ from env"), "{out}");
    eprintln!("selected_by_sqlite_tde_kms: {:.2?}", t0.elapsed());
}

/// The operator's command: `sqlite-tde --kms openbao+http://… rewrap --all DIR` with the token
/// in `BAO_TOKEN` moves every database of a fleet directory to the newest transit version
/// (pages untouched), reports that no file references an older version, and the
/// applications keep reading after the old version is retired.
#[test]
fn cli_rewrap_all_moves_a_fleet_to_the_new_version() {
    let Some(bao) = require_bao("cli_rewrap_all_moves_a_fleet_to_the_new_version") else {
        return;
    };
    let server = BaoServer::start(&bao, false);
    let d = duties(&server);
    let keyadmin = provider(&server, "app", &d.keyadmin);
    let tde = vfs(provider(&server, "app", &d.app), Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    let fleet = dir.path().join("fleet");
    std::fs::create_dir_all(fleet.join("tenant-b")).unwrap();
    let dbs = [fleet.join("a.db"), fleet.join("tenant-b/b.db")];
    for (i, db) in dbs.iter().enumerate() {
        create(&tde, db, &format!("row-{i}"));
    }
    assert_eq!(keyadmin.rotate_key("app").unwrap().latest_version, 2);
    let pages_before: Vec<Vec<u8>> = dbs.iter().map(|p| std::fs::read(p).unwrap()[8192..].to_vec()).collect();

    let cli = |token: &str, args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sqlite-tde"))
            .arg("--keystore")
            .arg(dir.path().join("unused-local-keystore"))
            .args(["--kms", &server.uri("app")])
            .args(args)
            .env_remove("VAULT_TOKEN")
            .env_remove("SQLITE_TDE_KMS")
            .env("BAO_TOKEN", token)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    // The application's token may not rewrap (no transit/encrypt): refused, files untouched.
    let (code, stdout, stderr) = cli(&d.app, &["rewrap", "--all", fleet.to_str().unwrap()]);
    assert_ne!(code, Some(0), "{stdout}{stderr}");
    for (db, before) in dbs.iter().zip(&pages_before) {
        assert_eq!(read_header(db).0.key.version, 1);
        assert_eq!(&std::fs::read(db).unwrap()[8192..], &before[..]);
    }
    // The rewrap duty's token: every file moves to v2.
    let (code, stdout, stderr) = cli(&d.rewrapper, &["rewrap", "--all", fleet.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("no file references an older key version"), "{stdout}");
    assert!(stdout.contains("newest v2; referenced: v2 (2 files)"), "{stdout}");
    eprintln!("rewrap --all:\n{stdout}");
    for (db, before) in dbs.iter().zip(&pages_before) {
        let (h, _) = read_header(db);
        assert_eq!((h.key.uri.as_str(), h.key.version), (server.uri("app").as_str(), 2), "{}", db.display());
        assert_eq!(&std::fs::read(db).unwrap()[8192..], &before[..], "rewrap must not touch pages");
    }
    // v1 retired: the applications still read every database.
    keyadmin.set_min_decryption_version("app", 2).unwrap();
    for (i, db) in dbs.iter().enumerate() {
        assert_eq!(existing(&tde, db).unwrap(), format!("row-{i}"));
    }
}

/// SQL (or a header) cannot send the plaintext DEK to a path of its choosing: a rewrap to
/// `cubbyhole/loot` (writable by every token) would post the data key to
/// `cubbyhole/encrypt/loot` in the clear. Keys outside the configured mount and the
/// application's allow-list are refused before any request (issue 14).
#[test]
fn sql_cannot_send_the_data_key_outside_the_allowed_transit_mounts() {
    let Some(bao) = require_bao("sql_cannot_send_the_data_key_outside_the_allowed_transit_mounts") else {
        return;
    };
    let server = BaoServer::start(&bao, false);
    let d = duties(&server);
    let app_kms = provider(&server, "app", &d.app);
    let tde = vfs(app_kms.clone(), Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("victim.db");
    create(&tde, &db, "victim data");
    let before = std::fs::read(&db).unwrap();

    let c = tde.open(&db).unwrap();
    for target in ["cubbyhole/loot", "openbao+http://{addr}/cubbyhole/loot"] {
        let target = target.replace("{addr}", &server.addr().replace("http://", ""));
        let r: Result<String, _> = c.query_row(&format!("PRAGMA tde_rewrap='{target}'"), [], |r| r.get(0));
        let e = r.expect_err("a rewrap to a non-transit path was accepted").to_string();
        assert!(e.contains("outside this application's allowed transit mounts"), "{target}: {e}");
    }
    drop(c);
    // Nothing reached the server's cubbyhole, and the database is unchanged.
    let api = server.api(&d.app);
    assert!(api.get("cubbyhole/encrypt/loot").is_err(), "the data key was written to the cubbyhole");
    assert_eq!(std::fs::read(&db).unwrap(), before);
    assert_eq!(existing(&tde, &db).unwrap(), "victim data");

    // A key the server does not have: "not found" names OpenBao, the mount and the key.
    let root = provider(&server, "app", &server.root_token);
    let ctx = EncryptionContext::for_database(&[7; 16]);
    match root.generate_data_key("missing", &ctx) {
        Err(KmsError::NotFound(m)) => {
            assert!(m.contains("OpenBao at") && m.contains("'missing'") && m.contains("'transit'"), "{m}");
            assert!(!m.contains("keystore"), "{m}");
        }
        other => panic!("expected not found, got {:?}", other.map(|_| ())),
    }
}

/// A 403 on a path the AppRole token may not use is not a reason to log in again: each login
/// spends a use of the secret ID, so crafted opens (headers naming a key the role may not use)
/// used to lock the application out (issue 14).
#[test]
fn approle_denials_do_not_spend_secret_id_uses() {
    let Some(bao) = require_bao("approle_denials_do_not_spend_secret_id_uses") else {
        return;
    };
    let server = BaoServer::start(&bao, false);
    server.create_key("app");
    server.create_key("other");
    server.policy("app", &app_policy("app"));
    let (role_id, secret_id) = approle(&server, serde_json::json!({ "num_uses": 4 }));
    let creds = Credentials::AppRole { mount: "approle".into(), role_id, secret_id: Secret::value(&secret_id) };
    let kms = Arc::new(OpenBaoKms::new(OpenBaoConfig::new(&server.uri("app"), creds).unwrap()).unwrap());
    let tde = vfs(kms.clone(), Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    create(&tde, &db, "legit");
    let ctx = EncryptionContext::for_database(&[9; 16]);
    for i in 0..6 {
        let r = kms.generate_data_key("other", &ctx);
        assert!(matches!(r, Err(KmsError::AccessDenied { .. })), "crafted request {i}: {:?}", r.map(|_| ()));
    }
    assert_eq!(existing(&tde, &db).unwrap(), "legit", "crafted denials locked the application out");
    let logins = server
        .audit_entries()
        .iter()
        .filter(|e| e["type"] == "request" && e["request"]["path"] == "auth/approle/login")
        .count();
    assert_eq!(logins, 1, "a permission denial made the provider log in again");
}

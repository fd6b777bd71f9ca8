//! Key pinning: whoever can replace a database file must not be able to hand the application a
//! database under a key the attacker can also read. When the caller names a key (URI `key=`,
//! `PRAGMA tde_key`, `OpenOptions::key`, the CLI's `--key`), an existing database under any
//! other CMK is refused — before anything acts on it — with an error naming both keys; aliases,
//! key ids and key URIs all name the same key. Without a named key, the open follows the header.

mod common;

use std::path::Path;

use sqlite_tde::kms::local::LocalKms;
use sqlite_tde::{Error, OpenOptions};

fn named(key: &str) -> OpenOptions {
    OpenOptions { key: Some(key.into()), ..Default::default() }
}

fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

struct Fixture {
    env: common::Env,
    victim: std::path::PathBuf,
    key_id: String,
}

/// The victim's database under `alias/app`, then replaced by an attacker's copy under the
/// service default key (which the attacker's principal can use too).
fn replaced() -> Fixture {
    let env = common::Env::new();
    let kms = LocalKms::new(env.dir.path().join("keystore"));
    let key_id = kms.create_key(Some("alias/app"), "victim key").unwrap().key_id;
    let victim = env.path("victim.db");
    let c = env.tde.open_with(&victim, &named("alias/app")).unwrap();
    c.execute_batch("CREATE TABLE secrets(v); INSERT INTO secrets VALUES('victim data')").unwrap();
    drop(c);
    let forged = env.path("forged.db");
    let c = env.tde.open(&forged).unwrap();
    c.execute_batch("CREATE TABLE secrets(v)").unwrap();
    drop(c);
    std::fs::copy(&forged, &victim).unwrap();
    Fixture { env, victim, key_id }
}

fn assert_mismatch(r: sqlite_tde::Result<rusqlite::Connection>, what: &str) {
    match r {
        Err(Error::KeyMismatch { database_key, requested, .. }) => {
            assert!(requested.contains("alias/app") || requested.contains("local:"), "{what}: {requested}");
            assert!(database_key.starts_with("local:"), "{what}: {database_key}");
        }
        Err(other) => panic!("{what}: expected a key mismatch, got {other}"),
        Ok(_) => panic!("{what}: a database under another key was opened"),
    }
}

#[test]
fn replaced_database_is_refused_when_the_key_is_named() {
    let f = replaced();
    let before = bytes(&f.victim);
    for name in ["alias/app", f.key_id.as_str(), &format!("local:{}", f.key_id)] {
        assert_mismatch(f.env.tde.open_with(&f.victim, &named(name)), name);
        let ro = OpenOptions { key: Some(name.into()), read_only: true, must_exist: true, ..Default::default() };
        assert_mismatch(f.env.tde.open_with(&f.victim, &ro), name);
    }
    assert!(bytes(&f.victim) == before, "a refused open changed the file");
    // Without a named key the open follows the header (documented trust).
    let c = f.env.tde.open(&f.victim).unwrap();
    let n: i64 = c.query_row("SELECT count(*) FROM secrets", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 0);
}

#[test]
fn pragma_tde_key_on_an_existing_database_is_enforced() {
    let f = replaced();
    let uri = format!("file:{}?vfs={}", f.victim.display(), f.env.tde.vfs_name());
    let c = rusqlite::Connection::open_with_flags(
        &uri,
        rusqlite::OpenFlags::SQLITE_OPEN_URI | rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE,
    )
    .unwrap();
    let r: rusqlite::Result<String> = c.query_row("PRAGMA tde_key = 'alias/app'", [], |r| r.get(0));
    let e = r.expect_err("PRAGMA tde_key accepted a database under another key");
    assert!(e.to_string().contains("not the requested alias/app"), "{e}");
    // The URI form too.
    let pinned = format!("{uri}&key=alias%2Fapp");
    let r = rusqlite::Connection::open_with_flags(
        &pinned,
        rusqlite::OpenFlags::SQLITE_OPEN_URI | rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE,
    )
    .and_then(|c| c.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get::<_, i64>(0)));
    assert!(r.is_err(), "URI key= accepted a database under another key");
}

#[test]
fn the_right_key_opens_under_every_name() {
    let env = common::Env::new();
    let kms = LocalKms::new(env.dir.path().join("keystore"));
    let id = kms.create_key(Some("alias/app"), "").unwrap().key_id;
    let db = env.path("ok.db");
    env.tde.open_with(&db, &named("alias/app")).unwrap().execute_batch("CREATE TABLE t(x)").unwrap();
    for name in ["alias/app", id.as_str(), &format!("local:{id}")] {
        let c = env.tde.open_with(&db, &named(name)).unwrap();
        let v: String = c.query_row("PRAGMA tde_key = 'alias/app'", [], |r| r.get(0)).unwrap();
        assert_eq!(v, format!("local:{id}"));
    }
}

#[test]
fn cli_key_flag_is_enforced_with_exit_3() {
    let f = replaced();
    let ks = f.env.dir.path().join("keystore");
    let before = bytes(&f.victim);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sqlite-tde"))
        .arg("--keystore")
        .arg(&ks)
        .args(["sql"])
        .arg(&f.victim)
        .args(["--key", "alias/app", "SELECT count(*) FROM secrets"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "stderr: {stderr}");
    assert!(stderr.contains("not the requested alias/app"), "{stderr}");
    assert!(bytes(&f.victim) == before);
}

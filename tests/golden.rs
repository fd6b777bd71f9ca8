//! Golden files of every released on-disk format (pitfall: a hot journal or WAL written by one
//! version that another cannot recover). `tests/golden/v1/` and `tests/golden/v2/` each hold,
//! made by that format version:
//! a keystore (with its generated root key), a database in rollback mode with a hot journal
//! (a transaction was in flight, its cache spilled), and a database in WAL mode with committed
//! frames that were never checkpointed. Each must open, recover, and hold exactly the committed
//! rows. Generate only for a new format version, never over an old one:
//! `cargo test --test golden -- --ignored generate` writes `tests/golden/v{FORMAT_VERSION}`
//! (with tde's current side-file names; the v1 files have SQLite's, as format 1 did).

mod common;

use std::path::{Path, PathBuf};

use sqlite_tde::Tde;

fn golden_dir() -> PathBuf {
    version_dir(1)
}

fn version_dir(v: u16) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/golden/v{v}"))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

fn count(c: &rusqlite::Connection, sql: &str) -> i64 {
    c.query_row(sql, [], |r| r.get(0)).unwrap()
}

#[test]
fn v1_files_open_and_recover() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&golden_dir(), tmp.path());
    assert!(tmp.path().join("rollback.db-journal").exists(), "golden hot journal missing");
    assert!(tmp.path().join("wal.db-wal").exists(), "golden hot WAL missing");
    let tde = Tde::builder().keystore(tmp.path().join("keystore")).vfs_name("tde-golden-v1").register().unwrap();

    let c = tde.open(tmp.path().join("rollback.db")).unwrap();
    assert_eq!(c.query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0)).unwrap(), "ok");
    assert_eq!(count(&c, "SELECT count(*) FROM t"), 300, "the in-flight transaction must be rolled back");
    assert_eq!(count(&c, "SELECT count(*) FROM t WHERE v LIKE 'golden-committed-%'"), 300);
    drop(c);
    // Format 1 kept SQLite's side-file names; the open adopted the journal under tde's name.
    assert!(!tmp.path().join("rollback.db-journal").exists(), "legacy journal not adopted");
    assert!(
        !tmp.path().join("rollback.db-tdejournal").exists()
            || std::fs::metadata(tmp.path().join("rollback.db-tdejournal")).unwrap().len() == 0
    );

    let c = tde.open(tmp.path().join("wal.db")).unwrap();
    assert!(!tmp.path().join("wal.db-wal").exists(), "legacy WAL not adopted");
    assert!(tmp.path().join("wal.db-tdewal").exists(), "legacy WAL not adopted");
    assert_eq!(c.query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0)).unwrap(), "ok");
    assert_eq!(count(&c, "SELECT count(*) FROM t"), 60, "every committed WAL frame must be recovered");
    assert_eq!(count(&c, "SELECT max(id) FROM t"), 60);
    // While it is open, a plain SQLite finds no WAL to "recover" and delete.
    let plain = rusqlite::Connection::open(tmp.path().join("wal.db")).unwrap();
    assert!(plain.execute_batch("SELECT * FROM sqlite_master").is_err());
    drop(plain);
    drop(c);
    let c = tde.open(tmp.path().join("wal.db")).unwrap();
    assert_eq!(count(&c, "SELECT count(*) FROM t"), 60);
}

/// A side file under both names (a format-1 build wrote next to this one): the open is refused
/// with an error naming both files, and nothing is renamed or deleted.
#[test]
fn v1_side_file_under_both_names_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&golden_dir(), tmp.path());
    std::fs::copy(tmp.path().join("wal.db-wal"), tmp.path().join("wal.db-tdewal")).unwrap();
    let before = common::files_under(tmp.path());
    let tde = Tde::builder().keystore(tmp.path().join("keystore")).vfs_name("tde-golden-v1-both").register().unwrap();
    match tde.open(tmp.path().join("wal.db")) {
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("wal.db-wal") && msg.contains("wal.db-tdewal"), "{msg}");
        }
        Ok(_) => panic!("opened a database whose WAL exists under two names"),
    }
    let mut after = common::files_under(tmp.path());
    let mut before = before;
    // The KMS appends to its audit log on the key unwrap; the database files must be untouched.
    let not_kms = |(p, _): &(PathBuf, Vec<u8>)| !p.starts_with(tmp.path().join("keystore"));
    before.retain(not_kms);
    after.retain(not_kms);
    before.sort();
    after.sort();
    assert!(before == after, "a refused open changed files");
}

/// Format 2 files (authenticated header slots) open and recover their hot journal and WAL, and
/// their header slots are format 2 and authenticate.
#[test]
fn v2_files_open_and_recover() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&version_dir(2), tmp.path());
    assert!(tmp.path().join("rollback.db-tdejournal").exists(), "golden hot journal missing");
    assert!(tmp.path().join("wal.db-tdewal").exists(), "golden hot WAL missing");
    for db in ["rollback.db", "wal.db"] {
        let bytes = std::fs::read(tmp.path().join(db)).unwrap();
        let (h, _) = sqlite_tde::format::choose_slot(&bytes[..sqlite_tde::format::HEADER_REGION_LEN]).unwrap();
        assert_eq!(h.format, 2, "{db}");
    }
    let tde = Tde::builder().keystore(tmp.path().join("keystore")).vfs_name("tde-golden-v2").register().unwrap();
    let c = tde.open(tmp.path().join("rollback.db")).unwrap();
    assert_eq!(c.query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0)).unwrap(), "ok");
    assert_eq!(count(&c, "SELECT count(*) FROM t"), 300, "the in-flight transaction must be rolled back");
    assert_eq!(count(&c, "SELECT count(*) FROM t WHERE v LIKE 'golden-committed-%'"), 300);
    drop(c);
    let c = tde.open(tmp.path().join("wal.db")).unwrap();
    assert_eq!(c.query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0)).unwrap(), "ok");
    assert_eq!(count(&c, "SELECT count(*) FROM t"), 60, "every committed WAL frame must be recovered");
    drop(c);
    // The offline reader authenticates the header too.
    let kms = sqlite_tde::kms::local::LocalKms::new(tmp.path().join("keystore"));
    let r = sqlite_tde::reader::Reader::open(tmp.path().join("wal.db"), &kms).unwrap();
    assert_eq!(r.page_size(), 1024);
}

/// Writes the golden files of the current format. Not part of the normal run.
#[test]
#[ignore]
fn generate() {
    let dir = version_dir(sqlite_tde::format::FORMAT_VERSION);
    assert!(!dir.join("rollback.db").exists(), "golden files exist: never overwrite a released format");
    std::fs::create_dir_all(&dir).unwrap();
    let work = tempfile::tempdir().unwrap();
    let tde = Tde::builder().keystore(dir.join("keystore")).vfs_name("tde-golden-gen").register().unwrap();

    // Rollback mode with a hot journal: copy the files while a transaction that spilled its
    // cache is open (exactly what a crash at that moment leaves on disk).
    let db = work.path().join("rollback.db");
    let c = tde.open(&db).unwrap();
    c.execute_batch(
        "PRAGMA page_size=1024; PRAGMA journal_mode=DELETE; PRAGMA cache_size=5; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
         INSERT INTO t(v) SELECT 'golden-committed-' || i || '-' || hex(randomblob(40)) FROM (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300) SELECT i FROM n);
         BEGIN; UPDATE t SET v = 'golden-uncommitted' || hex(randomblob(60)); INSERT INTO t(v) SELECT v FROM t;",
    )
    .unwrap();
    std::fs::copy(&db, dir.join("rollback.db")).unwrap();
    std::fs::copy(work.path().join("rollback.db-tdejournal"), dir.join("rollback.db-tdejournal")).unwrap();
    c.execute_batch("ROLLBACK").unwrap();
    drop(c);

    // WAL mode with committed, never-checkpointed frames.
    let db = work.path().join("wal.db");
    let c = tde.open(&db).unwrap();
    c.execute_batch(
        "PRAGMA page_size=1024; PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0; CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);",
    )
    .unwrap();
    for i in 1..=60 {
        c.execute("INSERT INTO t(v) VALUES(?1)", [format!("golden-wal-{i}")]).unwrap();
    }
    std::fs::copy(&db, dir.join("wal.db")).unwrap();
    std::fs::copy(work.path().join("wal.db-tdewal"), dir.join("wal.db-tdewal")).unwrap();
    drop(c);
    let _ = std::fs::remove_file(dir.join("keystore/keystore.lock"));
}

/// A keystore written by the last build before `secrets.json` format 2 and `kmsd.json` format 2
/// (commit 7e7ab06: `kms create-key --alias app --admin ops --user app`, two `secrets put` of
/// `prod/db-password` by `app` under alias/app, one `secrets put` of `shared/default-key` by
/// `anyone` under the default key, `kms token create ops`). Its secrets keep working under
/// their key's policy and are upgraded by the next write, after which the old file is refused;
/// its plain `kmsd.json` is refused until `kms daemon-config upgrade`.
#[test]
fn kms_v1_keystore_secrets_and_daemon_config_of_an_earlier_build() {
    use sqlite_tde::kms::daemon::DaemonConfig;
    use sqlite_tde::kms::local::LocalKms;
    use sqlite_tde::kms::secrets;
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&version_dir(1).with_file_name("kms-v1"), tmp.path());
    let ks = tmp.path().join("keystore");
    let old_secrets = std::fs::read(ks.join("secrets.json")).unwrap();
    assert!(old_secrets.starts_with(b"sqlite-tde-secrets 1\n"));
    let app = LocalKms::new(&ks).with_principal("app");
    let get = |p: &str, name: &str| secrets::get(&LocalKms::new(&ks).with_principal(p), p, name, None, None);

    // Read as format 1 (genuine: the log records the puts), judged by the key's policy.
    assert_eq!(&get("app", "prod/db-password").unwrap().value[..], b"golden-password-2");
    assert!(get("mallory", "prod/db-password").is_err(), "a principal without kms:Decrypt on alias/app read it");
    assert_eq!(&get("anyone", "shared/default-key").unwrap().value[..], b"shared-value");
    assert_eq!(std::fs::read(ks.join("secrets.json")).unwrap(), old_secrets, "a read rewrote secrets.json");

    // The next write upgrades the file; both versions survive; the old file is now a downgrade.
    secrets::put(&app, "app", "prod/db-password", b"golden-password-3", None, "").unwrap();
    assert!(std::fs::read(ks.join("secrets.json")).unwrap().starts_with(b"sqlite-tde-secrets 2\n"));
    assert_eq!(&get("app", "prod/db-password").unwrap().value[..], b"golden-password-3");
    assert_eq!(secrets::versions(&app, "app", "prod/db-password").unwrap().len(), 3);
    assert!(get("mallory", "prod/db-password").is_err());
    let upgraded = std::fs::read(ks.join("secrets.json")).unwrap();
    std::fs::write(ks.join("secrets.json"), &old_secrets).unwrap();
    let e = get("app", "prod/db-password").unwrap_err().to_string();
    assert!(e.contains("downgrade"), "{e}");
    std::fs::write(ks.join("secrets.json"), &upgraded).unwrap();

    // kmsd.json of that build: plain JSON, refused (it cannot be told from a planted file)
    // until an operator authenticates it; its token then names its principal again.
    let e = DaemonConfig::load(&app).unwrap_err().to_string();
    assert!(e.contains("has no MAC") && e.contains("daemon-config upgrade"), "{e}");
    let shown = DaemonConfig::load_unauthenticated(&app).unwrap().unwrap();
    let token = std::fs::read_to_string(tmp.path().join("ops.token")).unwrap();
    assert_eq!(shown.principal_of_token(token.trim()), Some("ops"));
    DaemonConfig::update(&app, "root", "kmsd:UpgradeDaemonConfig", true, |c| {
        Ok(((), format!("{} token(s)", c.tokens.len())))
    })
    .unwrap();
    assert_eq!(DaemonConfig::load(&app).unwrap().principal_of_token(token.trim()), Some("ops"));
}

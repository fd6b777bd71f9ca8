//! Conversions: encrypted copies of plain databases and plain copies of encrypted ones
//! through the backup API (the source may be in use), and the in-place encryption of a plain
//! database, killed at every step (DELETE and WAL sources, page sizes 1024, 4096, 65536) and
//! during its recovery: the next open through `tde` finishes it with identical content.

mod common;
mod rotation_support;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::child::{self, ROLE_VAR};
use rotation_support::{copy_db, open, populate, side, snapshot, tde_for, DB, KS};
use rusqlite::{Connection, OpenFlags};
use sqlite_tde::rotation::convert::{self, InPlaceOptions, CONVERT_MAGIC};
use sqlite_tde::rotation::{self, Step, ENV_CRASH_AT};

#[test]
fn child_entry() {
    let Ok(role) = std::env::var(ROLE_VAR) else { return };
    let ks = PathBuf::from(std::env::var_os(KS).unwrap());
    let db = PathBuf::from(std::env::var_os(DB).unwrap());
    let tde = tde_for(&ks);
    match role.as_str() {
        "encrypt" => {
            let r =
                convert::encrypt_in_place(&tde, &db, &InPlaceOptions { chunk: Some(256 << 10), ..Default::default() });
            println!("encrypt-done {r:?}");
        }
        "open" => {
            let c = open(&tde, &db);
            let n: i64 = c.query_row("SELECT count(*) FROM items", [], |r| r.get(0)).unwrap();
            println!("opened {n}");
        }
        other => panic!("unknown role {other}"),
    }
}

fn plain_template(dir: &Path, mode: &str, page_size: u32) -> (PathBuf, Vec<String>) {
    let d = dir.join(format!("plain-{mode}-{page_size}"));
    std::fs::create_dir_all(&d).unwrap();
    let db = d.join("p.db");
    let c = Connection::open(&db).unwrap();
    c.execute_batch(&format!("PRAGMA page_size={page_size}; PRAGMA journal_mode={mode};")).unwrap();
    populate(&c, 1500);
    let snap = snapshot(&c);
    drop(c);
    (db, snap)
}

fn plain_snapshot(db: &Path) -> rusqlite::Result<Vec<String>> {
    let c = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    c.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))?;
    Ok(snapshot(&c))
}

fn run_child(role: &str, ks: &Path, db: &Path, crash: &str) -> Option<i32> {
    let (mut ch, out) = child::spawn("child_entry", role, &[(KS, ks), (DB, db), (ENV_CRASH_AT, Path::new(crash))]);
    let _lines: Vec<String> = out.lines().map_while(|l| l.ok()).collect();
    ch.wait().unwrap().code()
}

fn pos(step: Step) -> usize {
    Step::CONVERT.iter().position(|s| *s == step).unwrap()
}

fn in_place_matrix(mode: &str) {
    let env = common::Env::new();
    let ks = env.dir.path().join("ks");
    let tde = tde_for(&ks);
    let mut cases = 0;
    for page_size in [1024u32, 4096, 65536] {
        let (tpl, snap) = plain_template(env.dir.path(), mode, page_size);
        for step in Step::CONVERT {
            let per_chunk = matches!(
                step,
                Step::ConvertChunkWritten
                    | Step::ConvertChunkSynced
                    | Step::ConvertDataHalfWritten
                    | Step::ConvertDataWritten
                    | Step::ConvertDataSynced
                    | Step::ConvertProgressWritten
                    | Step::ConvertProgressSynced
            );
            for n in if per_chunk { vec![0u64, 2] } else { vec![0] } {
                let dir = env.dir.path().join(format!("c-{mode}-{page_size}-{}-{n}", step.name()));
                std::fs::create_dir_all(&dir).unwrap();
                let db = copy_db(&tpl, &dir);
                let spec = format!("encrypt:{}@{n}", step.name());
                assert_eq!(run_child("encrypt", &ks, &db, &spec), None, "{spec}: the child should have died");
                let what = format!("{spec} ({mode}, page size {page_size})");
                let first = std::fs::read(&db).unwrap()[..16].to_vec();
                if pos(step) < pos(Step::ConvertMarked) {
                    // Nothing modified yet: still a plain database, and a new attempt works.
                    assert_eq!(&first, b"SQLite format 3\0", "{what}");
                    assert_eq!(plain_snapshot(&db).unwrap(), snap, "{what}");
                    let r = convert::encrypt_in_place(&tde, &db, &InPlaceOptions::default()).unwrap();
                    assert_eq!(r.status, "done");
                } else {
                    if first == CONVERT_MAGIC {
                        // Plain SQLite refuses the half-converted file.
                        let e = plain_snapshot(&db).unwrap_err();
                        assert_eq!(e.sqlite_error_code(), Some(rusqlite::ErrorCode::NotADatabase), "{what}: {e}");
                    }
                }
                let c = open(&tde, &db);
                assert_eq!(snapshot(&c), snap, "content after {what}");
                drop(c);
                assert!(
                    !side(&db, "-tdeconvert").exists() || pos(step) >= pos(Step::ConvertHeaderWritten),
                    "{what}: state file left"
                );
                cases += 1;
            }
        }
    }
    eprintln!("in-place encryption {mode}: {cases} crashes at every step, finished at open");
}

#[test]
fn in_place_encryption_killed_at_every_step_delete() {
    in_place_matrix("delete");
}

#[test]
fn in_place_encryption_killed_at_every_step_wal() {
    in_place_matrix("wal");
}

#[test]
fn in_place_recovery_killed_at_every_step() {
    let env = common::Env::new();
    let ks = env.dir.path().join("ks");
    let tde = tde_for(&ks);
    let (tpl, snap) = plain_template(env.dir.path(), "delete", 4096);
    let mut cases = 0;
    for step in Step::CONVERT {
        if pos(step) <= pos(Step::ConvertMarkSynced) {
            continue;
        }
        let dir = env.dir.path().join(format!("r-{}", step.name()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = copy_db(&tpl, &dir);
        assert_eq!(run_child("encrypt", &ks, &db, "encrypt:convert-data-half-written@1"), None);
        let spec = format!("encrypt-recover:{}@0", step.name());
        assert_eq!(run_child("open", &ks, &db, &spec), None, "{spec}: the recovering open should have died");
        let c = open(&tde, &db);
        assert_eq!(snapshot(&c), snap, "content after {spec}");
        cases += 1;
    }
    eprintln!("in-place encryption recovery crashes: {cases}");
}

#[test]
fn in_place_encryption_restores_wal_mode_and_refuses_encrypted_input() {
    let env = common::Env::new();
    let ks = env.dir.path().join("ks");
    let tde = tde_for(&ks);
    let (tpl, snap) = plain_template(env.dir.path(), "wal", 4096);
    let r = convert::encrypt_in_place(&tde, &tpl, &InPlaceOptions::default()).unwrap();
    assert_eq!(r.status, "done");
    let c = open(&tde, &tpl);
    assert_eq!(snapshot(&c), snap);
    let mode: String = c.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
    drop(c);
    let e = convert::encrypt_in_place(&tde, &tpl, &InPlaceOptions::default()).unwrap_err();
    assert!(e.to_string().contains("not a plain SQLite database"), "{e}");
}

/// An encrypted copy of a plain database that another connection keeps writing to (the
/// backup restarts when the source changes), and a plain copy back.
#[test]
fn encrypt_and_decrypt_copies_while_the_source_is_in_use() {
    let env = common::Env::new();
    let ks = env.dir.path().join("ks");
    let tde = tde_for(&ks);
    let (plain, _) = plain_template(env.dir.path(), "wal", 4096);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (plain, stop) = (plain.clone(), stop.clone());
        std::thread::spawn(move || {
            let c = Connection::open(&plain).unwrap();
            c.busy_timeout(Duration::from_secs(10)).unwrap();
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                c.execute("INSERT INTO kv(k, v) VALUES(?1, 'live')", [format!("live-{n}")]).unwrap();
                n += 1;
            }
            n
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    let enc = env.path("enc.db");
    let r = convert::encrypt_copy(&tde, &plain, &enc, None).unwrap();
    stop.store(true, Ordering::SeqCst);
    let written = writer.join().unwrap();
    assert_eq!(r.status, "done");
    let c = open(&tde, &enc);
    let ic: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(ic, "ok");
    let live: i64 = c.query_row("SELECT count(*) FROM kv WHERE v = 'live'", [], |r| r.get(0)).unwrap();
    assert!(live <= written, "a consistent snapshot ({live} of {written})");
    let snap_enc = snapshot(&c);
    drop(c);
    // No plaintext in the encrypted copy.
    let bytes = std::fs::read(&enc).unwrap();
    assert!(!common::contains(&bytes, b"value-1234"));
    // Back to plain.
    let back = env.path("back.db");
    let r = convert::decrypt_copy(&tde, &enc, &back, convert::Existing::Refuse).unwrap();
    assert_eq!(r.status, "done");
    assert_eq!(plain_snapshot(&back).unwrap(), snap_enc);
    // Existing targets are never overwritten.
    assert!(convert::decrypt_copy(&tde, &enc, &back, convert::Existing::Refuse)
        .unwrap_err()
        .to_string()
        .contains("already exists"));
    assert!(convert::encrypt_copy(&tde, &plain, &enc, None).unwrap_err().to_string().contains("already exists"));
}

fn cli(ks: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sqlite-tde"));
    for v in
        ["SQLITE_TDE_KEYSTORE", "SQLITE_TDE_KMS", "SQLITE_TDE_ROOT_KEY_FILE", "SQLITE_TDE_PASSPHRASE", ENV_CRASH_AT]
    {
        c.env_remove(v);
    }
    c.arg("--keystore").arg(ks);
    c
}

#[test]
fn cli_encrypt_decrypt_in_place_and_resume() {
    let env = common::Env::new();
    let ks = env.dir.path().join("ks");
    let (plain, snap) = plain_template(env.dir.path(), "delete", 4096);
    let enc = env.path("e.db");
    let o = cli(&ks).args(["encrypt"]).arg(&plain).arg(&enc).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("done"));
    let o = cli(&ks).args(["sql", "--json"]).arg(&enc).arg("SELECT count(*) AS n FROM items").output().unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("1500"), "{}", String::from_utf8_lossy(&o.stdout));
    let back = env.path("b.db");
    let o = cli(&ks).args(["decrypt"]).arg(&enc).arg(&back).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(plain_snapshot(&back).unwrap(), snap);

    // In place, interrupted (crash injection in the CLI process), then resumed.
    let o = cli(&ks)
        .args(["encrypt", "--in-place", "--chunk-size", "65536"])
        .arg(&plain)
        .env(ENV_CRASH_AT, "encrypt:convert-progress-synced@3")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert_eq!(&std::fs::read(&plain).unwrap()[..16], &CONVERT_MAGIC);
    let o = cli(&ks).args(["--json", "encrypt", "--in-place", "--resume"]).arg(&plain).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let last = String::from_utf8_lossy(&o.stdout).lines().last().unwrap().to_string();
    let v: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(v["status"], "resumed");
    let tde = tde_for(&ks);
    assert_eq!(snapshot(&open(&tde, &plain)), snap);
    let o = cli(&ks).args(["encrypt", "--in-place", "--resume"]).arg(&plain).output().unwrap();
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("nothing-to-resume"), "{}", String::from_utf8_lossy(&o.stdout));
    let o = cli(&ks).args(["encrypt", "--in-place"]).arg(&plain).output().unwrap();
    assert!(!o.status.success(), "an encrypted file is not a plain database");
}

/// `decrypt` writes plaintext: owner-only, never through a symbolic link planted at OUT, never
/// over an existing file unless `--force` (which replaces the link itself).
#[test]
fn cli_decrypt_output_is_private_and_never_follows_a_symlink() {
    use std::os::unix::fs::PermissionsExt;
    let env = common::Env::new();
    let ks = env.dir.path().join("ks");
    let (plain, snap) = plain_template(env.dir.path(), "delete", 4096);
    let enc = env.path("e.db");
    let o = cli(&ks).args(["encrypt"]).arg(&plain).arg(&enc).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let decrypt = |out: &Path, force: bool| {
        let mut c = cli(&ks);
        c.arg("decrypt").arg(&enc).arg(out);
        if force {
            c.arg("--force");
        }
        c.output().unwrap()
    };

    let out = env.path("out.db");
    let o = decrypt(&out, false);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(mode(&out), 0o600, "plaintext copy is owner-only");
    assert_eq!(plain_snapshot(&out).unwrap(), snap);

    // An existing file is refused, clearly, and left alone.
    std::fs::write(&out, b"keep").unwrap();
    let o = decrypt(&out, false);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists"), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(&out).unwrap(), b"keep");

    // A dangling symbolic link: nothing is created where it points.
    let victim = env.path("victim.db");
    let link = env.path("link.db");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let o = decrypt(&link, false);
    assert!(!o.status.success(), "a planted symlink is refused");
    assert!(victim.symlink_metadata().is_err(), "the link's target was created");

    // A link to an existing file: refused; with --force the link itself is replaced.
    std::fs::write(&victim, b"victim").unwrap();
    let o = decrypt(&link, false);
    assert!(!o.status.success());
    assert_eq!(std::fs::read(&victim).unwrap(), b"victim");
    let o = decrypt(&link, true);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(&victim).unwrap(), b"victim", "--force wrote through the link");
    assert!(link.symlink_metadata().unwrap().file_type().is_file());
    assert_eq!(mode(&link), 0o600);
    assert_eq!(plain_snapshot(&link).unwrap(), snap);
    // No temp files or journals left behind.
    let names: Vec<String> =
        std::fs::read_dir(env.dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
    assert!(!names.iter().any(|n| n.starts_with(".tmp-")), "{names:?}");
}

/// `decrypt` asks the KMS even when this process has the key cached: a disabled key (here: a
/// KMS that refuses) cannot be bypassed through the cache.
#[test]
fn decrypt_always_asks_the_kms() {
    use sqlite_tde::format::KeyRef;
    use sqlite_tde::kms::local::LocalKms;
    use sqlite_tde::kms::{EncryptionContext, GeneratedDataKey, Kms, KmsError};
    struct Gate(LocalKms, Arc<AtomicBool>);
    impl Kms for Gate {
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
            if self.1.load(Ordering::SeqCst) {
                return Err(KmsError::AccessDenied {
                    principal: "test".into(),
                    action: "kms:Decrypt".into(),
                    key: k.uri.clone(),
                });
            }
            self.0.decrypt_data_key(k, w, c)
        }
        fn rewrap_data_key(
            &self,
            k: &KeyRef,
            w: &[u8],
            c: &EncryptionContext,
            t: Option<&str>,
        ) -> Result<(Vec<u8>, KeyRef), KmsError> {
            self.0.rewrap_data_key(k, w, c, t)
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let deny = Arc::new(AtomicBool::new(false));
    let tde = sqlite_tde::Tde::builder()
        .vfs_name(format!("tde-gate-{}", std::process::id()))
        .register_with_kms(Arc::new(Gate(LocalKms::new(dir.path().join("ks")), deny.clone())))
        .unwrap();
    let db = dir.path().join("g.db");
    let c = tde.open(&db).unwrap();
    c.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES('secret');").unwrap();
    deny.store(true, Ordering::SeqCst);
    // The key is cached: the connection and new opens still work...
    assert!(tde.open(&db).is_ok());
    // ...but a plaintext export needs the KMS's permission now.
    let e = convert::decrypt_copy(&tde, &db, &dir.path().join("out.db"), convert::Existing::Refuse).unwrap_err();
    assert!(e.to_string().contains("access denied"), "{e}");
    assert!(!dir.path().join("out.db").exists());
}

/// A plain database file that a failed in-place encryption must leave alone: same bytes as
/// `before`, no state file, plain SQLite (a new connection and the already open `held`
/// one) reads `snap`.
fn assert_plain_untouched(db: &Path, before: &[u8; 32], snap: &[String], held: &Connection, what: &str) {
    assert_eq!(&rotation_support::file_hash(db), before, "{what}: the plain file changed");
    assert!(!side(db, "-tdeconvert").exists(), "{what}: state file left behind");
    assert_eq!(plain_snapshot(db).unwrap(), snap, "{what}: plain SQLite must still open it");
    assert_eq!(snapshot(held), snap, "{what}: already open connection");
    assert_eq!(&rotation_support::file_hash(db), before, "{what}: reading changed the file");
}

/// Issue 12.3: `encrypt --in-place` on a full disk fails with a clear "no space" error
/// before it marks the plain file, which stays byte-identical and readable by plain SQLite;
/// with space back, the conversion works.
#[test]
fn in_place_encryption_on_a_full_disk_fails_before_touching_the_file() {
    let env = common::Env::new();
    let ks = env.dir.path().join("ks");
    let tde = tde_for(&ks);
    let Some(fs) = rotation_support::SmallFs::mount(
        "in_place_encryption_on_a_full_disk_fails_before_touching_the_file",
        env.dir.path(),
        8192,
    ) else {
        return;
    };
    let db = fs.dir.join("p.db");
    {
        let c = Connection::open(&db).unwrap();
        c.execute_batch("PRAGMA journal_mode=DELETE").unwrap();
        populate(&c, 1500);
    }
    let held = Connection::open(&db).unwrap();
    let snap = snapshot(&held);
    let before = rotation_support::file_hash(&db);
    // The state file needs 8 KiB of state slots plus a copy of the whole (small) file.
    let len = std::fs::metadata(&db).unwrap().len();
    fs.fill_leaving(len / 2);
    assert!(fs.free_bytes() < len, "{} bytes free, the state file needs more than {len}", fs.free_bytes());

    let e = convert::encrypt_in_place(&tde, &db, &InPlaceOptions::default()).unwrap_err();
    assert!(matches!(e, sqlite_tde::Error::NoSpace { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("no space left on device") && msg.contains("nothing was changed"), "{msg}");
    assert_plain_untouched(&db, &before, &snap, &held, "full disk");

    fs.free();
    drop(held);
    let r = convert::encrypt_in_place(&tde, &db, &InPlaceOptions::default()).unwrap();
    assert_eq!(r.status, "done");
    sqlite_tde::inspect::read_header(&db).expect("an encrypted header after the conversion");
    assert_eq!(snapshot(&open(&tde, &db)), snap);
}

/// Issue 12.3: space runs out after the state file and the marker were written but before
/// the first chunk was committed (injected at each step in between, including half-way
/// through the first chunk's move): the conversion is rolled back and the plain file is byte
/// for byte as before. A failure once the first chunk's progress is being written is not
/// undone: the next open through tde finishes the conversion.
#[test]
fn in_place_encryption_failing_before_the_first_chunk_commits_is_rolled_back() {
    let env = common::Env::new();
    let ks = env.dir.path().join("ks");
    let tde = tde_for(&ks);
    let (tpl, snap) = plain_template(env.dir.path(), "delete", 4096);
    for step in [
        Step::ConvertStateWritten,
        Step::ConvertMarked,
        Step::ConvertMarkSynced,
        Step::ConvertChunkWritten,
        Step::ConvertChunkSynced,
        Step::ConvertDataHalfWritten,
        Step::ConvertDataSynced,
        Step::ConvertProgressWritten,
    ] {
        let dir = env.dir.path().join(format!("fail-{}", step.name()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = copy_db(&tpl, &dir);
        let held = Connection::open(&db).unwrap();
        let before = rotation_support::file_hash(&db);
        let spec = format!("encrypt:{}@0", step.name());
        let vars: Vec<(&str, &Path)> = vec![(KS, &ks), (DB, &db), (rotation::ENV_FAIL_AT, Path::new(&spec))];
        let (mut ch, out) = child::spawn("child_entry", "encrypt", &vars);
        let lines: Vec<String> = out.lines().map_while(|l| l.ok()).collect();
        assert_eq!(ch.wait().unwrap().code(), Some(0), "{spec}: {lines:?}");
        let line = lines.iter().find(|l| l.contains("encrypt-done")).unwrap_or_else(|| panic!("{spec}: {lines:?}"));
        assert!(line.contains("Err(") && line.contains("test fault injection"), "{spec}: {line}");
        if step == Step::ConvertProgressWritten {
            assert!(!line.contains("RolledBack"), "{spec}: a committed chunk is not undone: {line}");
            drop(held);
            assert_eq!(snapshot(&open(&tde, &db)), snap, "{spec}: the next open finishes the conversion");
            continue;
        }
        // Before the marker nothing of the file was written: nothing to roll back.
        assert!(line.contains("RolledBack") || step == Step::ConvertStateWritten, "{spec}: {line}");
        assert_plain_untouched(&db, &before, &snap, &held, &spec);
    }
}

/// The rollback of a failed in-place encryption is itself crash-safe: killed after each of
/// its steps, the file either still carries the marker (the next open through tde finishes
/// the conversion) or is the original plain file again, byte for byte.
#[test]
fn in_place_rollback_killed_at_every_step() {
    let env = common::Env::new();
    let ks = env.dir.path().join("ks");
    let tde = tde_for(&ks);
    let (tpl, snap) = plain_template(env.dir.path(), "delete", 4096);
    for crash in [Step::ConvertRollbackRestored, Step::ConvertRollbackTruncated, Step::ConvertRollbackUnmarked] {
        let dir = env.dir.path().join(format!("rb-{}", crash.name()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = copy_db(&tpl, &dir);
        let before = rotation_support::file_hash(&db);
        // After the whole first chunk moved: the file grew and its top chunk is overwritten.
        let fail = "encrypt:convert-data-synced@0";
        let spec = format!("encrypt:{}@0", crash.name());
        let vars: Vec<(&str, &Path)> =
            vec![(KS, &ks), (DB, &db), (rotation::ENV_FAIL_AT, Path::new(fail)), (ENV_CRASH_AT, Path::new(&spec))];
        let (mut ch, out) = child::spawn("child_entry", "encrypt", &vars);
        let lines: Vec<String> = out.lines().map_while(|l| l.ok()).collect();
        assert_eq!(ch.wait().unwrap().code(), None, "{spec}: the child should have died in the rollback: {lines:?}");
        let what = format!("{fail} then {spec}");
        if crash == Step::ConvertRollbackUnmarked {
            assert_eq!(rotation_support::file_hash(&db), before, "{what}: the plain file is back");
            assert_eq!(plain_snapshot(&db).unwrap(), snap, "{what}");
        } else {
            assert_eq!(std::fs::read(&db).unwrap()[..16], CONVERT_MAGIC, "{what}: the marker stays until the end");
            assert_eq!(snapshot(&open(&tde, &db)), snap, "{what}: the next open finishes the conversion");
        }
    }
}

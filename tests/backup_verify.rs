//! `verify` finds damage: a flipped byte in every field of either header slot (with and
//! without a recomputed checksum), a truncated database file, a torn or damaged WAL frame, a
//! wrong key; and reports a clean database, a crash-consistent WAL and a hot journal as such.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use assert_cmd::Command;
use common::{workload, Env};
use sha2::{Digest, Sha256};
use sqlite_tde::format::{HEADER_REGION_LEN, SLOT_LEN};
use sqlite_tde::kms::Kms;
use sqlite_tde::reader::verify::{verify, Area, Report};
use sqlite_tde::reader::wal_path;

fn kms(env: &Env) -> Arc<dyn Kms> {
    env.tde.context().kms.clone()
}

fn check(env: &Env, db: &Path) -> Report {
    verify(db, &*kms(env), |_, _| {}).unwrap()
}

fn copy_files(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap();
    for s in ["-tdewal", "-tdejournal"] {
        let f = PathBuf::from(format!("{}{s}", from.display()));
        let t = PathBuf::from(format!("{}{s}", to.display()));
        let _ = std::fs::remove_file(&t);
        if f.exists() {
            std::fs::copy(&f, &t).unwrap();
        }
    }
}

fn healthy(env: &Env, name: &str) -> PathBuf {
    let db = env.path(name);
    let c = env.tde.open(&db).unwrap();
    workload::populate(&c, "VFY", 120);
    db
}

fn cli(env: &Env) -> Command {
    let mut c = Command::cargo_bin("sqlite-tde").unwrap();
    for v in ["SQLITE_TDE_KEYSTORE", "SQLITE_TDE_KMS", "SQLITE_TDE_ROOT_KEY_FILE", "SQLITE_TDE_PASSPHRASE"] {
        c.env_remove(v);
    }
    c.arg("--keystore").arg(env.dir.path().join("keystore"));
    c
}

/// Header fields (FORMAT.md §1): name, offset in the slot.
const FIELDS: &[(&str, usize)] = &[
    ("magic", 0),
    ("format version", 8),
    ("covered length", 10),
    ("flags", 12),
    ("sequence", 16),
    ("cipher id", 24),
    ("data unit", 26),
    ("reserved 27", 27),
    ("data offset", 28),
    ("database uuid", 32),
    ("dek creation time", 48),
    ("cmk version", 56),
    ("key reference length", 60),
    ("wrapped key length", 62),
    ("key reference", 64),
    ("key reference padding", 300),
    ("wrapped dek", 320),
    ("wrapped dek padding", 800),
    ("key-check value", 832),
    ("rekey state", 864),
    ("rekey reserved", 866),
    ("rekey progress", 872),
    ("new cmk version", 880),
    ("new key reference length", 884),
    ("new wrapped key length", 886),
    ("new key reference", 888),
    ("new wrapped dek", 1144),
    ("new key-check value", 1656),
    ("reserved", 1688),
    ("checksum", 2016),
    ("beyond the checksum", 2048),
    ("last byte of the slot", 4095),
];

#[test]
fn flipped_byte_in_each_header_field_of_either_slot() {
    let env = Env::new();
    let db = healthy(&env, "h.db");
    let clean = check(&env, &db);
    assert!(clean.ok, "{:?}", clean.problems);
    assert_eq!(clean.integrity_check, None, "the library does not run SQLite");
    let original = std::fs::read(&db).unwrap();
    let bad = env.path("bad.db");
    for slot in 0..2 {
        let name = if slot == 0 { "slot A" } else { "slot B" };
        for &(field, off) in FIELDS {
            let mut bytes = original.clone();
            bytes[slot * SLOT_LEN + off] ^= 0x01;
            std::fs::write(&bad, &bytes).unwrap();
            let r = check(&env, &bad);
            assert!(!r.ok, "{name}: flipped {field} went unnoticed");
            assert!(
                r.problems.iter().any(|p| p.area == Area::Header && p.message.contains(name)),
                "{name} {field}: {:?}",
                r.problems
            );
            // The other slot still opens the database: pages were checked.
            assert!(r.pages_checked > 0, "{name} {field}");
        }
    }
}

/// A field changed and the slot's checksum recomputed (a deliberate edit, or damage in
/// memory before the write): what the semantic checks catch.
#[test]
fn edited_header_fields_with_valid_checksum() {
    let env = Env::new();
    let db = healthy(&env, "h.db");
    let original = std::fs::read(&db).unwrap();
    let bad = env.path("bad.db");
    // Slot A is the active one (sequence 1); B (sequence 0) holds the same key. Edit both.
    let edit = |off: usize, area: Area, what: &str| {
        let mut bytes = original.clone();
        for slot in 0..2 {
            let b = &mut bytes[slot * SLOT_LEN..(slot + 1) * SLOT_LEN];
            b[off] ^= 0x01;
            let sum = Sha256::digest(&b[..2016]);
            b[2016..2048].copy_from_slice(&sum);
        }
        std::fs::write(&bad, &bytes).unwrap();
        let r = check(&env, &bad);
        assert!(!r.ok, "{what}");
        assert!(r.problems.iter().any(|p| p.area == area), "{what}: {:?}", r.problems);
        r
    };
    edit(0, Area::Header, "magic");
    edit(8, Area::Header, "version");
    edit(24, Area::Header, "cipher");
    edit(27, Area::Header, "reserved byte");
    edit(12, Area::Header, "rekey flag");
    edit(1700, Area::Header, "reserved area");
    // The UUID is the encryption context of the wrapped key: the KMS refuses it.
    edit(40, Area::Key, "database uuid");
    edit(400, Area::Key, "wrapped dek");
    let r = edit(840, Area::Key, "key-check value");
    assert_eq!(r.key_check, "mismatch");
}

#[test]
fn truncated_files() {
    let env = Env::new();
    let db = healthy(&env, "h.db");
    let bytes = std::fs::read(&db).unwrap();
    let t = env.path("t.db");
    let len = bytes.len();
    // Inside the last page; whole pages off the end; inside the header; empty.
    for (cut, expect) in
        [(len - 1000, "truncated"), (len - 2 * 4096, "truncated"), (HEADER_REGION_LEN - 100, "truncated"), (0, "empty")]
    {
        std::fs::write(&t, &bytes[..cut]).unwrap();
        let r = check(&env, &t);
        assert!(!r.ok && r.problems.iter().any(|p| p.message.contains(expect)), "cut at {cut}: {:?}", r.problems);
        cli(&env).arg("verify").arg(&t).assert().code(4);
    }
}

#[test]
fn torn_and_damaged_wal_frames() {
    let env = Env::new();
    let db = env.path("w.db");
    let crashed = env.path("crashed.db");
    {
        let c = env.tde.open(&db).unwrap();
        c.execute_batch("PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;").unwrap();
        workload::populate(&c, "TORN", 200);
        for i in 0..6 {
            c.execute("UPDATE items SET score = score + 1 WHERE id % 6 = ?1", [i]).unwrap();
        }
        copy_files(&db, &crashed);
    }
    // The crash copy is healthy: every committed frame verifies.
    let r = check(&env, &crashed);
    assert!(r.ok, "{:?}", r.problems);
    let wal = r.wal.clone().unwrap();
    assert!(wal.commits >= 7 && r.pages_from_wal > 0, "{wal:?}");
    cli(&env).arg("verify").arg(&crashed).assert().success();

    let frame = 24 + 4096u64;
    let wal_bytes = std::fs::read(wal_path(&crashed)).unwrap();
    let t = env.path("t.db");

    // The WAL ends inside its last frame: what an append interrupted by a crash or ENOSPC
    // leaves. SQLite never acknowledged a commit whose frame is incomplete, so this is an
    // uncommitted tail (a warning), not damage (it was reported as a "torn frame", exit 4).
    copy_files(&crashed, &t);
    let cut = (32 + (wal.frames_in_file - 1) * frame + 24 + 2000) & !15;
    std::fs::write(wal_path(&t), &wal_bytes[..cut as usize]).unwrap();
    let r = check(&env, &t);
    assert!(r.ok, "{:?}", r.problems);
    assert!(
        r.warnings.iter().any(|w| w.contains("incomplete frame") && w.contains("uncommitted tail")),
        "{:?}",
        r.warnings
    );
    let out = cli(&env).arg("verify").arg(&t).assert().success().get_output().clone();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let tail = (cut - 32) % frame;
    assert!(stdout.contains(&format!("warning: the WAL ends with {tail} bytes of an incomplete frame")), "{stdout}");

    // Torn commit frame: the last frame complete in length but its page never written.
    copy_files(&crashed, &t);
    let mut b = wal_bytes.clone();
    let last = 32 + (wal.frames_in_file - 1) * frame;
    for x in &mut b[(last + 32) as usize..(last + 32 + 512) as usize] {
        *x = 0;
    }
    std::fs::write(wal_path(&t), &b).unwrap();
    let r = check(&env, &t);
    assert!(
        r.problems.iter().any(|p| p.area == Area::Wal && p.message.contains("torn commit frame")),
        "{:?}",
        r.problems
    );

    // Damaged in the middle: later committed transactions are lost.
    copy_files(&crashed, &t);
    let mut b = wal_bytes.clone();
    b[(32 + 3 * frame + 24 + 77) as usize] ^= 0x10;
    std::fs::write(wal_path(&t), &b).unwrap();
    let r = check(&env, &t);
    let p = r.problems.iter().find(|p| p.area == Area::Wal).expect("a WAL problem");
    assert!(
        p.message.contains("WAL frame 4") && p.message.contains("committed transactions are lost"),
        "{}",
        p.message
    );

    // A WAL under another key (or garbage): its header does not decrypt.
    copy_files(&crashed, &t);
    let mut b = wal_bytes.clone();
    b[5] ^= 0xff;
    std::fs::write(wal_path(&t), &b).unwrap();
    let r = check(&env, &t);
    assert!(r.problems.iter().any(|p| p.area == Area::Wal && p.message.contains("WAL header")), "{:?}", r.problems);
}

#[test]
fn wrong_keystore_is_a_kms_problem_and_hot_journal_is_handled() {
    let env = Env::new();
    let db = healthy(&env, "h.db");
    let other = Env::new();
    let r = check(&other, &db);
    assert!(r.problems.iter().all(|p| p.area == Area::Kms) && !r.problems.is_empty(), "{:?}", r.problems);
    // Only a KMS problem: exit 3, as for any other key error.
    let mut c = Command::cargo_bin("sqlite-tde").unwrap();
    c.env_remove("SQLITE_TDE_KEYSTORE").arg("--keystore").arg(other.dir.path().join("keystore"));
    c.arg("verify").arg(&db).assert().code(3);

    // A hot journal (an interrupted transaction) is not damage.
    let crashed = env.path("crashed.db");
    {
        let c = env.tde.open(&db).unwrap();
        c.execute_batch("PRAGMA cache_size=5; BEGIN; UPDATE items SET payload = randomblob(600);").unwrap();
        copy_files(&db, &crashed);
        c.execute_batch("ROLLBACK").unwrap();
    }
    let r = check(&env, &crashed);
    assert!(r.ok, "{:?}", r.problems);
    assert!(r.journal.as_ref().is_some_and(|j| j.hot));
    assert!(r.pages_from_journal > 0);
    assert!(r.warnings.iter().any(|w| w.contains("hot rollback journal")), "{:?}", r.warnings);
    let out = cli(&env).arg("--json").arg("verify").arg(&crashed).assert().success().get_output().stdout.clone();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["integrity_check"], serde_json::Value::Null);
    assert!(v["warnings"].to_string().contains("integrity_check skipped"), "{v}");

    // Backup and raw export of the crashed database both give the committed state (SQLite
    // rolls the journal back; the reader rolls it back in its image).
    let want = {
        let c = env.tde.open(&db).unwrap();
        workload::snapshot(&c, "VFY")
    };
    let raw = env.path("raw.db");
    cli(&env).args(["export", "--format", "sqlite", "--raw", "-o"]).arg(&raw).arg(&crashed).assert().success();
    assert_eq!(workload::snapshot(&rusqlite::Connection::open(&raw).unwrap(), "VFY"), want);
    let backup = env.path("backup.db");
    cli(&env).arg("backup").arg(&crashed).arg(&backup).arg("--verify").assert().success();
    let c = env.tde.open(&backup).unwrap();
    assert_eq!(workload::snapshot(&c, "VFY"), want);
}

#[test]
fn damaged_page_fails_integrity_check() {
    let env = Env::new();
    let db = healthy(&env, "h.db");
    let mut bytes = std::fs::read(&db).unwrap();
    // The root page of the first table (page 2): damage inside its b-tree header.
    bytes[HEADER_REGION_LEN + 4096 + 3] ^= 0x55;
    let bad = env.path("bad.db");
    std::fs::write(&bad, &bytes).unwrap();
    let out = cli(&env).arg("--json").arg("verify").arg(&bad).assert().code(4).get_output().stdout.clone();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert!(v["problems"].as_array().unwrap().iter().any(|p| p["area"] == "integrity"), "{v}");
    // Zeroed blocks (a wiped region) are reported by the page scan itself.
    let mut bytes = std::fs::read(&db).unwrap();
    let at = HEADER_REGION_LEN + 2 * 4096 + 512;
    bytes[at..at + 64].fill(0);
    std::fs::write(&bad, &bytes).unwrap();
    let r = check(&env, &bad);
    assert!(r.problems.iter().any(|p| p.message.contains("all zero")), "{:?}", r.problems);
}

/// A journal with a zero first byte is never hot (SQLite's hasHotJournal reads only that
/// byte): the journal of a transaction not yet synced (zero magic and record count, then the
/// nonce, sizes and records), and a header zeroed at commit (PERSIST mode). Neither is a
/// problem; both were reported as damage (exit 4) before.
#[test]
fn unsynced_and_zeroed_journal_headers_are_not_problems() {
    let env = Env::new();
    let db = healthy(&env, "h.db");
    let snap = env.path("snap.db");
    {
        let c = env.tde.open(&db).unwrap();
        // A small transaction: no cache spill, so the journal is never synced before commit.
        c.execute_batch("BEGIN; UPDATE items SET score = score + 1 WHERE id = 3;").unwrap();
        copy_files(&db, &snap);
        c.execute_batch("ROLLBACK").unwrap();
    }
    assert!(std::fs::metadata(PathBuf::from(format!("{}-tdejournal", snap.display()))).unwrap().len() > 0);
    let r = check(&env, &snap);
    let j = r.journal.clone().expect("a journal");
    assert!(!j.hot && j.state.contains("not synced"), "{j:?}");
    assert!(r.ok, "{:?}", r.problems);
    cli(&env).arg("verify").arg(&snap).assert().success();

    let persist = env.path("persist.db");
    {
        let c = env.tde.open(&persist).unwrap();
        c.execute_batch("PRAGMA journal_mode=PERSIST;").unwrap();
        workload::populate(&c, "VFY", 50);
    }
    let r = check(&env, &persist);
    let j = r.journal.clone().expect("a persisted journal");
    assert!(!j.hot && j.state.contains("zeroed header"), "{j:?}");
    assert!(r.ok, "{:?}", r.problems);
    cli(&env).arg("verify").arg(&persist).assert().success();
}

/// synchronous=FULL in WAL mode (the VFS does not claim powersafe overwrite): SQLite pads the
/// WAL after each commit to a sector boundary with copies of the commit frame. They are not
/// transactions: `commits` counts each transaction once.
#[test]
fn wal_commit_padding_frames_are_not_transactions() {
    let env = Env::new();
    let db = env.path("pad.db");
    let copy = env.path("copy.db");
    let transactions = 5;
    {
        let c = env.tde.open(&db).unwrap();
        workload::populate(&c, "PAD", 50);
        c.execute_batch("PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0; PRAGMA synchronous=FULL;").unwrap();
        for i in 0..transactions {
            c.execute("UPDATE items SET score = score + 1 WHERE id = ?1", [i + 1]).unwrap();
        }
        copy_files(&db, &copy);
    }
    let r = check(&env, &copy);
    assert!(r.ok, "{:?}", r.problems);
    let w = r.wal.clone().unwrap();
    // Padding did happen (more commit frames than transactions), or the test shows nothing.
    assert!(w.committed_frames > transactions as u64, "{w:?}");
    assert_eq!(w.commits, transactions as u64, "{w:?}");
}

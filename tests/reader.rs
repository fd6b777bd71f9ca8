//! The library reader (`sqlite_tde::reader`) against SQLite itself: the plain image it
//! produces must be exactly what SQLite reads through the VFS, with committed WAL frames
//! applied and a hot journal rolled back as SQLite's recovery would.
//!
//! Crash states are made by copying a database's files while a connection has a transaction
//! in flight (the copy is what a crash at that moment leaves on disk). The copies are only
//! ever opened after the connection that was copied is closed.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{workload, Env};
use rusqlite::backup::Backup;
use rusqlite::Connection;
use sqlite_tde::format::{physical_len, HEADER_REGION_LEN};
use sqlite_tde::kms::Kms;
use sqlite_tde::reader::{journal_path, wal_path, PageSource, Reader, ReaderOptions};
use sqlite_tde::{Error, OpenOptions};

fn kms(env: &Env) -> Arc<dyn Kms> {
    env.tde.context().kms.clone()
}

fn image(env: &Env, db: &Path) -> Vec<u8> {
    let r = Reader::open(db, &*kms(env)).unwrap();
    let mut out = Vec::new();
    r.image().read_to_end(&mut out).unwrap();
    assert_eq!(out.len() as u64, r.image_len());
    out
}

/// Copy a database and whichever of its journal and WAL exist (not the -shm).
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

/// Backup through the VFS (source) into `dest` (a plain file when `plain`, else a new
/// encrypted database).
fn backup_to(env: &Env, src: &Path, dest: &Path, plain: bool) {
    let s = env.tde.open_with(src, &OpenOptions { read_only: true, must_exist: true, ..Default::default() }).unwrap();
    let mut d = if plain { Connection::open(dest).unwrap() } else { env.tde.open(dest).unwrap() };
    Backup::new(&s, &mut d).unwrap().run_to_completion(100, std::time::Duration::ZERO, None).unwrap();
}

/// The state of a database as SQLite recovers it: open a copy through the VFS (hot journal
/// rolled back, WAL recovered), checkpoint, close; the database file alone then holds it.
fn recovered_copy(env: &Env, crashed: &Path, name: &str) -> PathBuf {
    let p = env.path(name);
    copy_files(crashed, &p);
    {
        let c = env.tde.open_with(&p, &OpenOptions { must_exist: true, ..Default::default() }).unwrap();
        let _: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
        let busy: i64 = c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0)).unwrap();
        assert_eq!(busy, 0);
    }
    assert!(std::fs::metadata(wal_path(&p)).map(|m| m.len() == 0).unwrap_or(true));
    assert!(!journal_path(&p).exists());
    p
}

fn plain_snapshot(image: &[u8], marker: &str) -> Vec<Vec<String>> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("plain.db");
    std::fs::write(&p, image).unwrap();
    let c = Connection::open(&p).unwrap();
    workload::snapshot(&c, marker)
}

#[test]
fn image_is_byte_identical_to_a_backup_through_the_vfs() {
    let env = Env::new();
    let src = env.path("src.db");
    {
        let c = env.tde.open(&src).unwrap();
        workload::populate(&c, "RDR", 400);
        workload::mutate(&c, "RDR");
    }
    // An encrypted backup (fresh key) and a plain backup of the same content, both through the
    // backup API and the VFS: the reader's image of the encrypted one is the plain one.
    let enc = env.path("enc.db");
    let plain = env.path("plain.db");
    backup_to(&env, &src, &enc, false);
    backup_to(&env, &src, &plain, true);
    let from_reader = image(&env, &enc);
    let want = std::fs::read(&plain).unwrap();
    assert_eq!(from_reader.len(), want.len());
    assert!(from_reader == want, "the reader's image differs from the plain backup");

    // The source itself: the same pages, except the page-1 fields the backup API rewrites in
    // its destination (change counter 24..28, schema cookie 40..44, version-valid-for and
    // SQLite version 92..100).
    let mut direct = image(&env, &src);
    assert_eq!(direct.len(), want.len());
    let diff: Vec<usize> = (0..want.len()).filter(|&i| direct[i] != want[i]).collect();
    assert!(diff.iter().all(|&i| (24..28).contains(&i) || (40..44).contains(&i) || (92..100).contains(&i)), "{diff:?}");
    for r in [24..28, 40..44, 92..100] {
        direct[r.clone()].copy_from_slice(&want[r]);
    }
    assert!(direct == want);

    let c = env.tde.open(&src).unwrap();
    assert_eq!(plain_snapshot(&from_reader, "RDR"), workload::snapshot(&c, "RDR"));
}

#[test]
fn wal_frames_are_applied_as_sqlite_recovers_them() {
    let env = Env::new();
    let db = env.path("wal.db");
    let crashed = env.path("crashed.db");
    {
        let c = env.tde.open(&db).unwrap();
        c.execute_batch("PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;").unwrap();
        workload::populate(&c, "WAL", 300);
        workload::mutate(&c, "WAL");
        // The same pages in several commits: the last committed version must win.
        for i in 0..5 {
            c.execute("UPDATE items SET score = score + ?1 WHERE id % 5 = ?1", [i]).unwrap();
        }
        // A shrinking commit (the database size in the last commit frame drops).
        c.execute_batch("DELETE FROM big; VACUUM;").unwrap();
        workload::populate(&c, "WAL2", 50);
        // A transaction in flight whose pages spill into the WAL without a commit frame.
        c.execute_batch(
            "PRAGMA cache_size=5; BEGIN; UPDATE items SET payload = randomblob(700);
             INSERT INTO items(name, payload) SELECT name, randomblob(900) FROM items;",
        )
        .unwrap();
        copy_files(&db, &crashed);
        c.execute_batch("ROLLBACK").unwrap();
    }
    let r = Reader::open(&crashed, &*kms(&env)).unwrap();
    let wal = r.wal().expect("a WAL").clone();
    assert!(wal.commits > 5, "{wal:?}");
    assert!(wal.ignored_frames > 0, "the open transaction spilled frames: {wal:?}");
    assert_eq!(wal.lost_commits, 0, "{wal:?}");
    assert!((1..=r.page_count()).any(|p| r.page_source(p) == PageSource::Wal));
    drop(r);
    let got = image(&env, &crashed);
    let recovered = recovered_copy(&env, &crashed, "recovered.db");
    assert!(got == image(&env, &recovered), "WAL decoding differs from SQLite's recovery");

    // Without the WAL the reader sees the older database file only.
    let no_wal =
        Reader::open_with(&crashed, &*kms(&env), ReaderOptions { apply_wal: false, apply_journal: true }).unwrap();
    assert!(no_wal.wal().is_none());
    assert_ne!(no_wal.image_len(), 0);

    // A torn last frame: the WAL cut inside it (at a 16-byte boundary, as a crash between two
    // sector writes leaves it). SQLite and the reader both fall back to an earlier commit.
    let torn = env.path("torn.db");
    copy_files(&crashed, &torn);
    let wal_len = std::fs::metadata(wal_path(&torn)).unwrap().len();
    let ps = 4096u64;
    let frame = 24 + ps;
    let last_commit_end = 32 + wal.committed_frames * frame;
    let cut = (last_commit_end - frame + 24 + 1000) & !15;
    assert!(cut < wal_len);
    std::fs::OpenOptions::new().write(true).open(wal_path(&torn)).unwrap().set_len(cut).unwrap();
    let r = Reader::open(&torn, &*kms(&env)).unwrap();
    let tw = r.wal().unwrap().clone();
    assert!(tw.committed_frames < wal.committed_frames, "{tw:?}");
    assert_eq!(tw.partial_tail_bytes, (cut - 32) % frame);
    drop(r);
    let got = image(&env, &torn);
    let recovered = recovered_copy(&env, &torn, "torn-recovered.db");
    assert!(got == image(&env, &recovered));

    // A damaged committed frame in the middle: the checksum chain breaks there and every later
    // frame is ignored, by SQLite and by the reader alike.
    let flipped = env.path("flipped.db");
    copy_files(&crashed, &flipped);
    let mid = wal.committed_frames / 2;
    let at = 32 + mid * frame + 24 + 100;
    let mut bytes = std::fs::read(wal_path(&flipped)).unwrap();
    bytes[at as usize] ^= 0x40;
    std::fs::write(wal_path(&flipped), &bytes).unwrap();
    let r = Reader::open(&flipped, &*kms(&env)).unwrap();
    let fw = r.wal().unwrap().clone();
    assert_eq!(fw.first_invalid.as_ref().map(|f| f.frame), Some(mid + 1), "{fw:?}");
    assert!(fw.lost_commits > 0);
    drop(r);
    let got = image(&env, &flipped);
    let recovered = recovered_copy(&env, &flipped, "flipped-recovered.db");
    assert!(got == image(&env, &recovered));
}

#[test]
fn hot_journal_is_rolled_back_as_sqlite_does() {
    let env = Env::new();
    let db = env.path("del.db");
    let crashed = env.path("crashed.db");
    let committed;
    {
        let c = env.tde.open(&db).unwrap();
        workload::populate(&c, "JRN", 300);
        committed = workload::snapshot(&c, "JRN");
        // The transaction spills its cache: pages of the database file are overwritten while
        // the journal holds their originals, and the file grows.
        c.execute_batch(
            "PRAGMA cache_size=5; BEGIN; UPDATE items SET payload = randomblob(700);
             INSERT INTO items(name, payload) SELECT name, randomblob(900) FROM items;",
        )
        .unwrap();
        copy_files(&db, &crashed);
        c.execute_batch("ROLLBACK").unwrap();
    }
    assert!(journal_path(&crashed).exists());
    let r = Reader::open(&crashed, &*kms(&env)).unwrap();
    let j = r.journal().expect("a journal").clone();
    assert!(j.hot && j.records > 0, "{j:?}");
    assert!(r.database_file().logical_len() > r.image_len(), "the crashed file grew past the original size");
    drop(r);
    let got = image(&env, &crashed);
    // Ignoring the journal gives the torn, half-written state.
    let torn =
        Reader::open_with(&crashed, &*kms(&env), ReaderOptions { apply_wal: true, apply_journal: false }).unwrap();
    let mut torn_image = Vec::new();
    torn.image().read_to_end(&mut torn_image).unwrap();
    assert!(torn_image != got);
    drop(torn);
    let recovered = recovered_copy(&env, &crashed, "recovered.db");
    assert!(got == image(&env, &recovered), "journal rollback differs from SQLite's");
    assert_eq!(plain_snapshot(&got, "JRN"), committed);
}

#[test]
fn pages_iterator_and_refusals() {
    let env = Env::new();
    let db = env.path("p.db");
    {
        let c = env.tde.open(&db).unwrap();
        c.execute_batch("PRAGMA page_size=1024; CREATE TABLE t(x); INSERT INTO t VALUES(zeroblob(5000));").unwrap();
    }
    let r = Reader::open(&db, &*kms(&env)).unwrap();
    assert_eq!(r.page_size(), 1024);
    let pages: Vec<Vec<u8>> = r.pages().collect::<Result<_, _>>().unwrap();
    assert_eq!(pages.len() as u32, r.page_count());
    assert!(pages[0].starts_with(b"SQLite format 3\0"));
    assert_eq!(pages.concat(), image(&env, &db));
    let mut buf = vec![0u8; 1024];
    assert!(r.read_page(0, &mut buf).is_err());
    assert!(r.read_page(r.page_count() + 1, &mut buf).is_err());
    drop(r);

    // Another keystore cannot unwrap the key: a KMS error, not garbage pages.
    let other = Env::new();
    assert!(matches!(Reader::open(&db, &*kms(&other)), Err(Error::Kms { .. })));
    // A plain SQLite file, a truncated header.
    let plain = env.path("plain.db");
    Connection::open(&plain).unwrap().execute_batch("CREATE TABLE t(x)").unwrap();
    assert!(matches!(Reader::open(&plain, &*kms(&env)), Err(Error::Header { .. })));
    let cut = env.path("cut.db");
    std::fs::write(&cut, &std::fs::read(&db).unwrap()[..5000]).unwrap();
    assert!(matches!(Reader::open(&cut, &*kms(&env)), Err(Error::Header { .. })));
    // Whole pages cut off the end: the header counts more pages than exist.
    let short = env.path("short.db");
    let bytes = std::fs::read(&db).unwrap();
    std::fs::write(&short, &bytes[..HEADER_REGION_LEN + physical_len(2048) as usize]).unwrap();
    let e = Reader::open(&short, &*kms(&env)).unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
}

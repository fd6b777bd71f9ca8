//! Harness 4: bad input and tampering. Every damaged or foreign file is opened through `tde`
//! and the outcome classified:
//!
//! - **clean error**: `tde` refuses the open (header, KMS, key-check or content-key error),
//!   before SQLite reads a page;
//! - **SQLite corruption error**: the open succeeds but a query or `PRAGMA integrity_check`
//!   reports corruption (SQLITE_CORRUPT / NOTADB / "malformed" / integrity errors);
//! - **silently accepted, intact**: opens, integrity ok, content identical to the undamaged
//!   database (e.g. the damaged slot's twin took over);
//! - **silently accepted, earlier committed state**: (WAL/journal truncation only) opens,
//!   integrity ok, content equals an earlier committed state — what plain SQLite does too;
//! - **silently accepted, altered**: opens, integrity ok, content differs. AES-XTS has no
//!   authentication: page-body tampering and page replay land here when the damaged bytes
//!   are row data. That is the documented limit of the design (pitfall 12).
//!
//! WAL and hot-journal truncations are also run on plain SQLite as a control.

mod common;
mod reliability_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use reliability_support::model::{digest, integrity, Rng};
use reliability_support::report;
use rusqlite::Connection;
use sha2::{Digest, Sha256};
use sqlite_tde::format::{choose_slot, Header, HEADER_REGION_LEN, SLOT_LEN};
use sqlite_tde::kms::local::LocalKms;
use sqlite_tde::kms::{EncryptionContext, Kms};
use sqlite_tde::Error;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    CleanError(String),
    SqliteCorruption,
    AcceptedIntact,
    AcceptedEarlierState,
    AcceptedAltered,
}

impl Outcome {
    fn bucket(&self) -> &'static str {
        match self {
            Outcome::CleanError(_) => "clean error",
            Outcome::SqliteCorruption => "SQLite corruption error",
            Outcome::AcceptedIntact => "silently accepted, intact",
            Outcome::AcceptedEarlierState => "silently accepted, earlier committed state",
            Outcome::AcceptedAltered => "silently accepted, ALTERED",
        }
    }
}

fn error_label(e: &Error) -> String {
    match e {
        Error::Header { source, .. } => format!("header: {source:?}").split('(').next().unwrap().to_string(),
        Error::Kms { source, .. } => format!("kms: {}", format!("{source:?}").split(['(', ' ', '{']).next().unwrap()),
        Error::WrongKey { .. } => "wrong key".into(),
        Error::RekeyInProgress { .. } => "rekey in progress".into(),
        Error::Sqlite(s) => format!("sqlite at open: {s}"),
        other => format!("{other}"),
    }
}

#[derive(Default)]
struct Tally {
    by_case: BTreeMap<String, BTreeMap<&'static str, u64>>,
    labels: BTreeMap<String, u64>,
}

impl Tally {
    fn add(&mut self, case: &str, o: &Outcome) {
        *self.by_case.entry(case.to_string()).or_default().entry(o.bucket()).or_default() += 1;
        if let Outcome::CleanError(l) = o {
            *self.labels.entry(l.clone()).or_default() += 1;
        }
    }
    fn count(&self, case: &str, bucket: &str) -> u64 {
        self.by_case.get(case).and_then(|m| m.get(bucket)).copied().unwrap_or(0)
    }
    fn print(&self, what: &str) {
        for (case, m) in &self.by_case {
            report("tamper", &format!("{what} {case}: {m:?}"));
        }
    }
}

/// Open `path` and classify against the expected digest (and earlier committed states).
fn classify(
    open: &dyn Fn(&Path) -> Result<Connection, Error>,
    path: &Path,
    expected: &str,
    earlier: &[String],
) -> Outcome {
    let c = match open(path) {
        Ok(c) => c,
        Err(e) => return Outcome::CleanError(error_label(&e)),
    };
    match integrity(&c) {
        Ok(s) if s == "ok" => {}
        _ => return Outcome::SqliteCorruption,
    }
    match digest(&c) {
        Ok(d) if d == expected => Outcome::AcceptedIntact,
        Ok(d) if earlier.contains(&d) => Outcome::AcceptedEarlierState,
        Ok(_) => Outcome::AcceptedAltered,
        Err(_) => Outcome::SqliteCorruption,
    }
}

/// The database, its journal and its WAL: tde's names, or SQLite's for a plain database.
fn files_of(db: &Path) -> Vec<(PathBuf, Option<Vec<u8>>)> {
    let side = |tde: &str, plain: &str| {
        if Path::new(&format!("{}{plain}", db.display())).exists() {
            plain.to_string()
        } else {
            tde.to_string()
        }
    };
    ["".to_string(), side("-tdejournal", "-journal"), side("-tdewal", "-wal")]
        .iter()
        .map(|s| {
            let p = PathBuf::from(format!("{}{s}", db.display()));
            let b = std::fs::read(&p).ok();
            (p, b)
        })
        .collect()
}

fn restore(files: &[(PathBuf, Option<Vec<u8>>)]) {
    for (p, b) in files {
        let _ = std::fs::remove_file(p);
        if let Some(b) = b {
            std::fs::write(p, b).unwrap();
        }
    }
    // A stale -shm of an earlier variant must not survive into the next.
    if let Some((p, _)) = files.first() {
        let _ = std::fs::remove_file(format!("{}-shm", p.display()));
    }
}

struct Fixture {
    env: common::Env,
    db: PathBuf,
    bytes: Vec<u8>,
    digest: String,
}

fn fixture(page: usize) -> Fixture {
    let env = common::Env::new();
    let db = env.path("victim.sqlite");
    {
        let c = env.tde.open(&db).unwrap();
        c.execute_batch(&format!(
            "PRAGMA page_size={page}; PRAGMA journal_mode=DELETE;
             CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, b BLOB); CREATE INDEX t_v ON t(v);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 300)
             INSERT INTO t(v, b) SELECT 'row-' || i || '-' || hex(randomblob(20)), randomblob(100 + i % 300) FROM n;"
        ))
        .unwrap();
    }
    let d = digest(&env.tde.open(&db).unwrap()).unwrap();
    let bytes = std::fs::read(&db).unwrap();
    Fixture { env, db, bytes, digest: d }
}

/// The header fields of FORMAT.md §1 (name, offset, length).
const FIELDS: &[(&str, usize, usize)] = &[
    ("magic", 0, 8),
    ("version", 8, 2),
    ("covered_len", 10, 2),
    ("flags", 12, 4),
    ("sequence", 16, 8),
    ("cipher_id", 24, 2),
    ("data_unit_log2", 26, 1),
    ("reserved27", 27, 1),
    ("data_offset", 28, 4),
    ("db_uuid", 32, 16),
    ("dek_created", 48, 8),
    ("cmk_version", 56, 4),
    ("key_ref_len", 60, 2),
    ("wrapped_len", 62, 2),
    ("key_ref", 64, 256),
    ("wrapped_dek", 320, 512),
    ("kcv", 832, 32),
    ("rekey_state", 864, 1),
    ("reserved865", 865, 7),
    ("rekey_progress", 872, 8),
    ("new_cmk_version", 880, 4),
    ("new_key_ref_len", 884, 2),
    ("new_wrapped_len", 886, 2),
    ("new_key_ref", 888, 256),
    ("new_wrapped_dek", 1144, 512),
    ("new_kcv", 1656, 32),
    ("reserved1688", 1688, 328),
    ("checksum", 2016, 32),
    ("unused_tail", 2048, 2048),
];

fn reseal(slot: &mut [u8]) {
    let sum = Sha256::digest(&slot[..2016]);
    slot[2016..2048].copy_from_slice(&sum);
}

#[test]
fn header_bit_flips_and_forgeries() {
    let f = fixture(4096);
    let open = |p: &Path| f.env.tde.open(p);
    let (_, active) = choose_slot(&f.bytes[..HEADER_REGION_LEN]).unwrap();
    let mut t = Tally::default();
    let mut unsafe_accepts = Vec::new();
    for &(name, off, len) in FIELDS {
        // Flip the low bit of the first byte and the high bit of the last byte of the field, in
        // the active slot, the other slot and both; then the same with the checksum recomputed
        // (a forger who knows the format: the checksum detects damage, not malice).
        for (bit_at, bit) in [(off, 0x01u8), (off + len - 1, 0x80u8)] {
            for slots in [vec![active], vec![1 - active], vec![0, 1]] {
                for forged in [false, true] {
                    if forged && name == "checksum" {
                        continue;
                    }
                    let mut b = f.bytes.clone();
                    for &s in &slots {
                        let slot = &mut b[s * SLOT_LEN..(s + 1) * SLOT_LEN];
                        slot[bit_at] ^= bit;
                        if forged {
                            reseal(slot);
                        }
                    }
                    std::fs::write(&f.db, &b).unwrap();
                    let o = classify(&open, &f.db, &f.digest, &[]);
                    let which = match slots.len() {
                        2 => "both slots",
                        _ if slots[0] == active => "active slot",
                        _ => "inactive slot",
                    };
                    let case =
                        format!("{} / {which}", if forged { "forged (checksum recomputed)" } else { "bit flip" });
                    if o == Outcome::AcceptedAltered || o == Outcome::SqliteCorruption {
                        unsafe_accepts.push(format!("{case} {name}@{bit_at}: {o:?}"));
                    }
                    // A failed open must not have touched the file.
                    if matches!(o, Outcome::CleanError(_)) {
                        assert_eq!(std::fs::read(&f.db).unwrap(), b, "{case} {name}: failed open changed the file");
                    }
                    t.add(&case, &o);
                }
            }
        }
    }
    std::fs::write(&f.db, &f.bytes).unwrap();
    t.print("header");
    report("tamper", &format!("header: clean-error reasons {:?}", t.labels));
    // Damage confined to one slot is always survivable; damage to both slots is always refused
    // unless it hit bytes the format does not use.
    for which in ["active slot", "inactive slot"] {
        let case = format!("bit flip / {which}");
        assert_eq!(
            t.count(&case, "clean error")
                + t.count(&case, "SQLite corruption error")
                + t.count(&case, "silently accepted, ALTERED"),
            0,
            "{case}"
        );
    }
    assert!(unsafe_accepts.is_empty(), "tampered headers that reached SQLite: {unsafe_accepts:#?}");
}

#[test]
fn truncation_at_every_512_byte_boundary() {
    let f = fixture(4096);
    let open = |p: &Path| f.env.tde.open(p);
    let mut t = Tally::default();
    let mut n = 0;
    for cut in (0..f.bytes.len()).step_by(512) {
        std::fs::write(&f.db, &f.bytes[..cut]).unwrap();
        let o = classify(&open, &f.db, &f.digest, &[]);
        // 0 bytes is a new empty database and a bare header region is an encrypted database
        // with no page yet: both open as empty databases, as a 0-byte file does in SQLite.
        let case = match cut {
            0 => "db cut to 0 bytes",
            HEADER_REGION_LEN => "db cut to the bare header region",
            c if c < HEADER_REGION_LEN => "db cut inside the header region",
            _ => "db cut inside the pages",
        };
        t.add(case, &o);
        n += 1;
        let _ = std::fs::remove_file(format!("{}-journal", f.db.display()));
        let _ = std::fs::remove_file(format!("{}-tdejournal", f.db.display()));
    }
    t.print("truncate");
    report("tamper", &format!("db truncations: {n} cut points of a {}-byte file", f.bytes.len()));
    assert_eq!(t.count("db cut inside the pages", "silently accepted, ALTERED"), 0);
    assert_eq!(t.count("db cut inside the header region", "clean error"), (HEADER_REGION_LEN / 512 - 1) as u64);
}

/// Build a database whose latest transactions live in a WAL (or a hot journal) and return
/// (files, digest of every committed state, index of the full state).
#[allow(clippy::type_complexity)]
fn live_scenario(
    open: &dyn Fn(&Path) -> Result<Connection, Error>,
    db: &Path,
    wal: bool,
) -> (Vec<(PathBuf, Option<Vec<u8>>)>, Vec<String>, String) {
    let c = open(db).unwrap();
    c.execute_batch(&format!(
        "PRAGMA page_size=4096; PRAGMA journal_mode={}; PRAGMA wal_autocheckpoint=0; PRAGMA cache_size=5;
         CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);",
        if wal { "WAL" } else { "DELETE" }
    ))
    .unwrap();
    let mut states = vec!["EMPTY".to_string(), digest(&c).unwrap()];
    let mut rng = Rng(42);
    for i in 0..8 {
        let b = hex::encode(rng.bytes(3000));
        c.execute_batch(&format!(
            "BEGIN; INSERT INTO t VALUES({i}, x'{b}'); UPDATE t SET v = v || x'00' WHERE id % 3 = {}; COMMIT;",
            i % 3
        ))
        .unwrap();
        states.push(digest(&c).unwrap());
    }
    if wal {
        let files = files_of(db);
        let full = states.last().unwrap().clone();
        drop(c);
        (files, states, full)
    } else {
        // A transaction that spills its cache: the db file is modified, the journal is hot.
        c.execute_batch("BEGIN; UPDATE t SET v = v || zeroblob(2000); INSERT INTO t SELECT id + 100, v FROM t;")
            .unwrap();
        let files = files_of(db);
        let full = states.last().unwrap().clone();
        std::mem::forget(c); // keep the journal hot: no rollback, no unlock cleanup in files_of's copy
        (files, states, full)
    }
}

fn truncate_live(
    label: &str,
    open: &dyn Fn(&Path) -> Result<Connection, Error>,
    dir: &Path,
    wal: bool,
    t: &mut Tally,
) -> u64 {
    let src = dir.join(format!("{label}-{}.sqlite", if wal { "wal" } else { "journal" }));
    let (files, states, full) = live_scenario(open, &src, wal);
    let target_idx = if wal { 2 } else { 1 };
    let victim = dir.join(format!("{label}-{}-victim.sqlite", if wal { "wal" } else { "journal" }));
    let victim_files: Vec<(PathBuf, Option<Vec<u8>>)> = files
        .iter()
        .map(|(p, b)| {
            let suffix = &p.to_string_lossy()[src.to_string_lossy().len()..];
            (PathBuf::from(format!("{}{suffix}", victim.display())), b.clone())
        })
        .collect();
    let len = victim_files[target_idx].1.as_ref().map(|b| b.len()).expect("scenario left no WAL/journal");
    let mut n = 0;
    for cut in (0..=len).step_by(512) {
        let mut v = victim_files.clone();
        v[target_idx].1.as_mut().unwrap().truncate(cut);
        restore(&v);
        let o = classify(open, &victim, &full, &states);
        t.add(&format!("{label} {} cut", if wal { "WAL" } else { "hot journal" }), &o);
        n += 1;
    }
    n
}

#[test]
fn wal_and_hot_journal_truncation_with_plain_sqlite_control() {
    let env = common::Env::new();
    let tde_open = |p: &Path| env.tde.open(p);
    let plain_open = |p: &Path| Connection::open(p).map_err(Error::Sqlite);
    let mut t = Tally::default();
    let mut n = 0;
    for wal in [true, false] {
        n += truncate_live("tde", &tde_open, env.dir.path(), wal, &mut t);
        n += truncate_live("plain", &plain_open, env.dir.path(), wal, &mut t);
    }
    t.print("truncate");
    report("tamper", &format!("WAL/journal truncations: {n} cut points (tde and plain SQLite)"));
    // A truncated WAL must always recover to a committed state, in tde as in SQLite; a
    // truncated hot journal is unrecoverable damage for both (SQLite then reports corruption,
    // or the cut fell after the last record).
    for who in ["tde", "plain"] {
        assert_eq!(t.count(&format!("{who} WAL cut"), "silently accepted, ALTERED"), 0, "{who}");
        assert_eq!(t.count(&format!("{who} WAL cut"), "SQLite corruption error"), 0, "{who}");
        assert_eq!(t.count(&format!("{who} hot journal cut"), "silently accepted, ALTERED"), 0, "{who}");
    }
}

#[test]
fn page_swaps_replays_and_body_bit_flips() {
    let mut t = Tally::default();
    let mut flips_total = 0u64;
    for page in [1024usize, 4096] {
        let f = fixture(page);
        let open = |p: &Path| f.env.tde.open(p);
        let pages = (f.bytes.len() - HEADER_REGION_LEN) / page;
        let at = |p: usize| HEADER_REGION_LEN + (p - 1) * page;
        let mut rng = Rng(page as u64);
        // Swap pages.
        for _ in 0..40 {
            let a = rng.range(1, pages as u64 + 1) as usize;
            let b = rng.range(1, pages as u64 + 1) as usize;
            if a == b {
                continue;
            }
            let mut v = f.bytes.clone();
            let pa = f.bytes[at(a)..at(a) + page].to_vec();
            v.copy_within(at(b)..at(b) + page, at(a));
            v[at(b)..at(b) + page].copy_from_slice(&pa);
            std::fs::write(&f.db, &v).unwrap();
            t.add(&format!("swap two pages (page size {page})"), &classify(&open, &f.db, &f.digest, &[]));
        }
        // Replay an older version of a page: snapshot, change rows, put one old page back.
        std::fs::write(&f.db, &f.bytes).unwrap();
        {
            let c = f.env.tde.open(&f.db).unwrap();
            c.execute_batch(
                "UPDATE t SET v = v || '+', b = b || x'01' WHERE id % 2 = 0; DELETE FROM t WHERE id % 9 = 0;",
            )
            .unwrap();
        }
        let newer = std::fs::read(&f.db).unwrap();
        let newer_digest = digest(&f.env.tde.open(&f.db).unwrap()).unwrap();
        let common_pages = (newer.len().min(f.bytes.len()) - HEADER_REGION_LEN) / page;
        for p in 1..=common_pages {
            if newer[at(p)..at(p) + page] == f.bytes[at(p)..at(p) + page] {
                continue;
            }
            let mut v = newer.clone();
            v[at(p)..at(p) + page].copy_from_slice(&f.bytes[at(p)..at(p) + page]);
            std::fs::write(&f.db, &v).unwrap();
            t.add(
                &format!("replay an older page (page size {page})"),
                &classify(&open, &f.db, &newer_digest, std::slice::from_ref(&f.digest)),
            );
        }
        // Flip one bit in page bodies: XTS turns it into 16 random plaintext bytes, undetected
        // by the cipher; SQLite notices only when the block holds structure.
        for _ in 0..150 {
            let pos = rng.range(HEADER_REGION_LEN as u64, f.bytes.len() as u64) as usize;
            let mut v = f.bytes.clone();
            v[pos] ^= 1 << rng.range(0, 8);
            std::fs::write(&f.db, &v).unwrap();
            t.add(&format!("flip one bit in a page body (page size {page})"), &classify(&open, &f.db, &f.digest, &[]));
            flips_total += 1;
        }
        std::fs::write(&f.db, &f.bytes).unwrap();
    }
    t.print("pages");
    let silent: u64 = t
        .by_case
        .iter()
        .filter(|(k, _)| k.starts_with("flip"))
        .map(|(_, m)| m.get("silently accepted, ALTERED").copied().unwrap_or(0))
        .sum();
    report(
        "tamper",
        &format!("page-body bit flips: {silent} of {flips_total} silently accepted with altered content — AES-XTS has no integrity protection; this is the documented limit"),
    );
}

#[test]
fn header_swap_and_replay_after_rewrap() {
    let env = common::Env::new();
    let a = env.path("a.sqlite");
    let b = env.path("b.sqlite");
    for (p, n) in [(&a, 10), (&b, 20)] {
        env.tde.open(p).unwrap().execute_batch(&format!("CREATE TABLE t(x); INSERT INTO t VALUES({n});")).unwrap();
    }
    let da = digest(&env.tde.open(&a).unwrap()).unwrap();
    let ab = std::fs::read(&a).unwrap();
    let bb = std::fs::read(&b).unwrap();
    let open = |p: &Path| env.tde.open(p);
    let mut t = Tally::default();
    // Swap headers between two databases (both slots, and one slot at a time).
    for range in [0..HEADER_REGION_LEN, 0..SLOT_LEN, SLOT_LEN..HEADER_REGION_LEN] {
        let mut v = ab.clone();
        v[range.clone()].copy_from_slice(&bb[range]);
        std::fs::write(&a, &v).unwrap();
        let o = classify(&open, &a, &da, &[]);
        t.add("header of another database", &o);
        if matches!(o, Outcome::CleanError(_)) {
            assert_eq!(std::fs::read(&a).unwrap(), v, "failed open changed the file");
        }
    }
    // Rewrap the DEK under a new CMK (what `rewrap` does), then replay the old header.
    std::fs::write(&a, &ab).unwrap();
    let kms = LocalKms::new(env.dir.path().join("keystore"));
    let new_key = kms.create_key(Some("alias/tamper-new"), "rewrap target").unwrap();
    let (old, slot) = choose_slot(&ab[..HEADER_REGION_LEN]).unwrap();
    let ctx = EncryptionContext::for_database(&old.db_uuid);
    let (wrapped, key) = kms.rewrap_data_key(&old.key, &old.wrapped_dek, &ctx, Some(&new_key.key_id)).unwrap();
    let newer = Header { sequence: old.sequence + 1, wrapped_dek: wrapped, key, ..old.clone() };
    let other = 1 - slot;
    // Written without the DEK (a KMS principal that may re-encrypt but holds no data key: the
    // slot's MAC cannot be right): refused.
    let mut v = ab.clone();
    let stranger = sqlite_tde::crypto::MetaKey::derive(&sqlite_tde::crypto::DataKey::generate().unwrap());
    v[other * SLOT_LEN..(other + 1) * SLOT_LEN].copy_from_slice(&newer.encode(&stranger).unwrap());
    std::fs::write(&a, &v).unwrap();
    let o = classify(&open, &a, &da, &[]);
    assert!(matches!(&o, Outcome::CleanError(m) if m.starts_with("header: Forged")), "{o:?}");
    assert_eq!(std::fs::read(&a).unwrap(), v, "a refused open changed the file");
    t.add("rewrapped header without the data key's MAC", &o);
    // By a holder of the DEK (what `rewrap` does): accepted.
    let dek = kms.decrypt_data_key(&old.key, &old.wrapped_dek, &ctx).unwrap();
    let meta = sqlite_tde::crypto::MetaKey::derive(&sqlite_tde::crypto::DataKey::try_from(&dek).unwrap());
    let mut v = ab.clone();
    v[other * SLOT_LEN..(other + 1) * SLOT_LEN].copy_from_slice(&newer.encode(&meta).unwrap());
    std::fs::write(&a, &v).unwrap();
    t.add("rewrapped header (control)", &classify(&open, &a, &da, &[]));
    std::fs::write(&a, &ab).unwrap();
    t.add("replay the pre-rewrap header (old CMK still enabled)", &classify(&open, &a, &da, &[]));
    t.print("headers");
    // Both slots or the active one replaced: refused. Only the inactive (older) slot replaced:
    // the active slot still wins, nothing changes.
    assert_eq!(t.count("header of another database", "clean error"), 2);
    assert_eq!(t.count("header of another database", "silently accepted, intact"), 1);
    assert_eq!(t.count("rewrapped header (control)", "silently accepted, intact"), 1);
}

#[test]
fn plain_sqlite_and_sqlcipher_like_files_are_refused_untouched() {
    let env = common::Env::new();
    let open = |p: &Path| env.tde.open(p);
    let mut t = Tally::default();
    // A plain SQLite database, with and without a hot journal.
    let plain = env.path("plain.sqlite");
    {
        let c = Connection::open(&plain).unwrap();
        c.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES('plain');").unwrap();
    }
    let before = std::fs::read(&plain).unwrap();
    let o = classify(&open, &plain, "", &[]);
    assert_eq!(std::fs::read(&plain).unwrap(), before, "opening a plain file through tde changed it");
    t.add("plain SQLite file", &o);
    // A file with SQLCipher's visible properties: a 16-byte random salt, then pages that look
    // random (SQLCipher 4 default: 4096-byte pages, HMAC-SHA512 reserve). We cannot build
    // SQLCipher here, so this is a synthetic stand-in, not a real SQLCipher database.
    let mut rng = Rng(99);
    for pages in [1usize, 2, 5] {
        let p = env.path(&format!("sqlcipher-like-{pages}.sqlite"));
        let bytes = rng.bytes(4096 * pages);
        std::fs::write(&p, &bytes).unwrap();
        let o = classify(&open, &p, "", &[]);
        assert_eq!(std::fs::read(&p).unwrap(), bytes, "opening a foreign file through tde changed it");
        t.add("SQLCipher-like file (synthetic: random salt + random pages)", &o);
    }
    // A real SQLCipher 4 database (default settings, made once by SQLCipher 4 through rusqlite's
    // bundled-sqlcipher build; see tests/reliability_support/fixtures/README.md).
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reliability_support/fixtures/sqlcipher4-default.sqlcipher");
    if let Ok(bytes) = std::fs::read(&fixture) {
        let p = env.path("real-sqlcipher.sqlite");
        std::fs::write(&p, &bytes).unwrap();
        let o = classify(&open, &p, "", &[]);
        assert_eq!(std::fs::read(&p).unwrap(), bytes, "opening a SQLCipher file through tde changed it");
        t.add("SQLCipher 4 database (real fixture)", &o);
    }
    // A 1-byte file: SQLite's unix VFS reports a 1-byte file as 0 bytes (ticket #3260), so
    // both SQLite and tde treat it as a new, empty database.
    let p = env.path("junk-1.sqlite");
    std::fs::write(&p, b"Z").unwrap();
    let o = classify(&open, &p, "EMPTY", &[]);
    report("tamper", &format!("foreign: 1-byte file (unix VFS reports size 0) -> {o:?}"));
    // Random junk of sizes around the header region.
    for n in [2usize, 100, 4095, 4096, 8191, 8192, 8193, 12288] {
        let p = env.path(&format!("junk-{n}.sqlite"));
        let bytes = rng.bytes(n);
        std::fs::write(&p, &bytes).unwrap();
        let o = classify(&open, &p, "", &[]);
        assert_eq!(std::fs::read(&p).unwrap(), bytes, "opening junk through tde changed it");
        if !matches!(o, Outcome::CleanError(_)) {
            eprintln!("random junk of {n} bytes: {o:?}");
        }
        t.add("random junk", &o);
    }
    t.print("foreign");
    report("tamper", &format!("foreign files: clean-error reasons {:?}", t.labels));
    for case in t.by_case.keys() {
        assert_eq!(
            t.count(case, "clean error"),
            t.by_case[case].values().sum::<u64>(),
            "{case}: {:?}",
            t.by_case[case]
        );
    }
}

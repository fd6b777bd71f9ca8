//! Harness 3: I/O error injection below the encrypting VFS.
//!
//! A pristine encrypted database is copied for every run; one transaction (updates over every
//! page, inserts through a sort, deletes, a temp table that spills to a temp file) runs while
//! the fault VFS below `tde` makes the k-th read / write / sync of one file kind fail with
//! IOERR_READ, SHORT_READ, IOERR_WRITE, FULL or IOERR_FSYNC, once (transient) or from then
//! on (persistent), for k = 1, 2, ... until the transaction runs without reaching the k-th
//! call. Then the database is reopened without faults and must pass `integrity_check` and
//! hold exactly the state before or the state after the transaction (after, if the
//! transaction reported success). No panic may happen anywhere in the VFS stack (the binding
//! would turn it into an error, so a panic hook counts them), and no write below `tde` may
//! contain the plaintext marker.

mod common;
mod reliability_support;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

use reliability_support::faultvfs::{self, Arm, Fault, Target, FAULT_VFS};
use reliability_support::model::{digest, integrity};
use reliability_support::{report, soak_from_env};
use sqlite_tde::Tde;

const MARKER: &str = "XYZZYfault";

thread_local! {
    static PANICS: Cell<u64> = const { Cell::new(0) };
}

/// Panics seen during SHORT_READ runs (asserted only by the ignored bug test).
static SHORT_READ_PANICS: AtomicU64 = AtomicU64::new(0);

fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.with(|p| p.set(p.get() + 1));
            prev(info);
        }));
    });
}

fn tde_over_faults(dir: &Path) -> Tde {
    faultvfs::ensure_registered();
    static N: AtomicU64 = AtomicU64::new(0);
    Tde::builder()
        .keystore(dir.join("keystore"))
        .vfs_name(format!("tde-faults-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst)))
        .base_vfs(FAULT_VFS)
        .register()
        .unwrap()
}

const TXN: &str = "BEGIN;
    UPDATE t SET v = v || '-u', b = b || x'0102' WHERE id % 3 = 0;
    CREATE TEMP TABLE scratch AS SELECT id, v, b FROM t WHERE id % 2 = 0 ORDER BY b DESC, v;
    INSERT INTO t(v, b) SELECT v || '-c', b FROM scratch WHERE id % 5 = 0 ORDER BY b DESC;
    DELETE FROM t WHERE id % 7 = 0;
    DROP TABLE scratch;
    COMMIT;";

fn setup_pragmas(c: &rusqlite::Connection, mode: &str) {
    c.execute_batch(&format!(
        "PRAGMA journal_mode={mode}; PRAGMA cache_size=10; PRAGMA temp_store=FILE; PRAGMA temp.cache_size=2; PRAGMA wal_autocheckpoint=20;"
    ))
    .unwrap();
}

#[derive(Default)]
struct Tally {
    runs: u64,
    injected: u64,
    stmt_errors: u64,
    stmt_ok_despite_fault: u64,
    before: u64,
    after: u64,
    failures: Vec<String>,
    failures_by_fault: BTreeMap<String, u64>,
    codes: BTreeMap<String, u64>,
    max_calls: BTreeMap<String, u64>,
}

/// The encrypting VFS over the fault VFS, or plain SQLite over it (the control).
enum Stack {
    Tde(Tde),
    Plain,
}

impl Stack {
    /// Open after a fault run: failing to open is a finding to report, not a harness crash.
    fn try_open(&self, db: &Path) -> Result<rusqlite::Connection, String> {
        match self {
            Stack::Tde(t) => t.open(db).map_err(|e| e.to_string()),
            Stack::Plain => Ok(self.open(db)),
        }
    }

    fn open(&self, db: &Path) -> rusqlite::Connection {
        match self {
            Stack::Tde(t) => t.open(db).unwrap(),
            Stack::Plain => rusqlite::Connection::open_with_flags(
                format!("file:{}?vfs={FAULT_VFS}", db.display()),
                rusqlite::OpenFlags::SQLITE_OPEN_URI
                    | rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
                    | rusqlite::OpenFlags::SQLITE_OPEN_CREATE,
            )
            .unwrap(),
        }
    }
}

/// Next k: every k at first, then sparser in the smoke version.
fn next_k(k: u64, soak: bool) -> u64 {
    if soak || k < 8 {
        k + 1
    } else {
        k + (k / 2).max(1)
    }
}

fn run(stack: &Stack, dir: &Path, mode: &str, faults: &[Fault], soak: bool) -> Tally {
    let src = dir.join("src.sqlite");
    {
        let c = stack.open(&src);
        setup_pragmas(&c, mode);
        c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, b BLOB); CREATE INDEX t_v ON t(v);").unwrap();
        c.execute_batch(&format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 400)
             INSERT INTO t(v, b) SELECT '{MARKER}-' || i || '-' || hex(randomblob(40)), randomblob(200 + i % 200) FROM n;"
        ))
        .unwrap();
    }
    let before = digest(&stack.open(&src)).unwrap();
    let pristine = std::fs::read(&src).unwrap();
    let after = {
        let p = dir.join("after.sqlite");
        std::fs::write(&p, &pristine).unwrap();
        let c = stack.open(&p);
        setup_pragmas(&c, mode);
        c.execute_batch(TXN).unwrap();
        digest(&c).unwrap()
    };
    assert_ne!(before, after);

    let targets: &[Target] = if mode == "WAL" {
        &[Target::MainDb, Target::Wal, Target::Temp]
    } else {
        &[Target::MainDb, Target::Journal, Target::Temp]
    };
    let mut t = Tally::default();
    let mut run = 0u64;
    for &target in targets {
        for &fault in faults {
            for persistent in [false, true] {
                let mut k = 1u64;
                loop {
                    run += 1;
                    let db = dir.join(format!("run-{run}.sqlite"));
                    std::fs::write(&db, &pristine).unwrap();
                    let c = stack.open(&db);
                    setup_pragmas(&c, mode);
                    faultvfs::arm(Arm { target, fault, k, persistent });
                    let res = c.execute_batch(TXN);
                    let (calls, injected) = faultvfs::disarm();
                    drop(c);
                    let e = t.max_calls.entry(format!("{target:?}/{fault:?}")).or_default();
                    *e = (*e).max(calls);
                    t.runs += 1;
                    t.injected += injected;
                    let what = format!(
                        "{mode} {target:?} {fault:?} {} k={k}",
                        if persistent { "persistent" } else { "transient" }
                    );
                    match &res {
                        Err(e) => {
                            t.stmt_errors += 1;
                            let code = match e {
                                rusqlite::Error::SqliteFailure(f, _) => format!("{:?}/{}", f.code, f.extended_code),
                                other => other.to_string(),
                            };
                            *t.codes.entry(code).or_default() += 1;
                        }
                        Ok(()) if injected > 0 => t.stmt_ok_despite_fault += 1,
                        Ok(()) => {}
                    }
                    // Reopen without faults.
                    let reopened = stack.try_open(&db).map(|c| (integrity(&c), digest(&c)));
                    let failure = match reopened {
                        Err(e) => Some(format!("{what}: does not reopen: {e} (statement: {res:?})")),
                        Ok((Ok(i), Ok(d))) if i == "ok" => {
                            if d == after {
                                t.after += 1;
                                None
                            } else if d == before {
                                t.before += 1;
                                res.is_ok().then(|| {
                                    format!("{what}: the transaction reported success but its changes are gone")
                                })
                            } else {
                                Some(format!(
                                    "{what}: content is neither the before nor the after state (statement: {res:?})"
                                ))
                            }
                        }
                        Ok((i, d)) => Some(format!("{what}: integrity {i:?}, digest {d:?} (statement: {res:?})")),
                    };
                    if let Some(f) = failure {
                        *t.failures_by_fault.entry(format!("{fault:?}")).or_default() += 1;
                        t.failures.push(f);
                    }
                    for suffix in ["", "-journal", "-wal", "-shm", "-tdejournal", "-tdewal"] {
                        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
                    }
                    if injected == 0 {
                        break; // the transaction ran untouched: every k has been tried
                    }
                    k = next_k(k, soak);
                }
            }
        }
    }
    t
}

fn line(label: &str, mode: &str, level: &str, t: &Tally, extra: &str) -> String {
    format!(
        "{label} journal_mode={mode} ({level}): runs {}, faults injected {}, transaction errors {}, transactions that succeeded despite a fault {}, \
         reopened as before-state {}, as after-state {}, integrity/content failures {} {:?}{extra}; error codes {:?}; matching calls per kind/fault {:?}",
        t.runs, t.injected, t.stmt_errors, t.stmt_ok_despite_fault, t.before, t.after, t.failures.len(), t.failures_by_fault, t.codes, t.max_calls
    )
}

fn run_mode(mode: &str, soak: bool) {
    count_panics();
    let env = common::Env::new();
    let level = if soak { "soak: every k" } else { "smoke: every k up to 8, then k += k/2" };
    let started = std::time::Instant::now();
    // The real faults: IOERR_READ, IOERR_WRITE, FULL, IOERR_FSYNC. Asserted.
    let asserted = [Fault::IoErrRead, Fault::IoErrWrite, Fault::Full, Fault::IoErrFsync];
    faultvfs::with_state(|s| s.marker = MARKER.as_bytes().to_vec());
    let tde = Stack::Tde(tde_over_faults(env.dir.path()));
    let d1 = env.dir.path().join("tde");
    std::fs::create_dir_all(&d1).unwrap();
    let t = run(&tde, &d1, mode, &asserted, soak);
    let panics = PANICS.with(|p| p.get());
    // SHORT_READ on a file that is long enough is a lie by the layer below (SQLite treats a
    // short read as "past the end, zero-filled"): no layer above can tell good zeros from
    // lost data. Counted for tde and for plain SQLite over the same fault VFS; not asserted.
    let d2 = env.dir.path().join("tde-short");
    std::fs::create_dir_all(&d2).unwrap();
    let ts = run(&tde, &d2, mode, &[Fault::ShortRead], soak);
    let short_panics = PANICS.with(|p| p.get()) - panics;
    let (hits, writes, bytes) = faultvfs::with_state(|s| (s.plaintext_hits.clone(), s.writes_scanned, s.bytes_scanned));
    faultvfs::with_state(|s| s.marker.clear());
    let d3 = env.dir.path().join("plain-short");
    std::fs::create_dir_all(&d3).unwrap();
    let tp = run(&Stack::Plain, &d3, mode, &[Fault::ShortRead], soak);
    report(
        "faults",
        &line(
            "tde",
            mode,
            level,
            &t,
            &format!(
                ", panics {panics}, plaintext writes below tde {} (of {writes} writes / {bytes} bytes scanned)",
                hits.len()
            ),
        ),
    );
    report(
        "faults",
        &line(
            "tde SHORT_READ (not asserted)",
            mode,
            level,
            &ts,
            &format!(", panics caught by the binding {short_panics}"),
        ),
    );
    report("faults", &line("plain SQLite SHORT_READ (control)", mode, level, &tp, ""));
    eprintln!("faults {mode}: {:.1}s", started.elapsed().as_secs_f64());
    SHORT_READ_PANICS.fetch_add(short_panics, Ordering::SeqCst);
    assert_eq!(panics, 0, "a panic happened inside the VFS stack");
    assert!(hits.is_empty(), "plaintext below tde: {hits:?}");
    assert!(
        t.failures.is_empty(),
        "{} failure(s):\n{}",
        t.failures.len(),
        t.failures.iter().take(40).cloned().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn io_faults_rollback_journal() {
    run_mode("DELETE", soak_from_env());
}

#[test]
fn io_faults_wal() {
    run_mode("WAL", soak_from_env());
}

/// A short read of the header region from the VFS below must be an error, not a panic.
///
/// BUG (src/vfs/database.rs `read_region`, reported to the lead): `debug_assert!(st ==
/// ReadStatus::Full || want < HEADER_REGION_LEN)` fires when the base VFS returns a short read
/// of the 8 KiB header region (the binding catches the panic and poisons the file; in release
/// builds the assertion is compiled out and the zero-filled tail is parsed as a header).
/// Return an I/O error instead.
#[test]
fn short_read_never_panics() {
    run_mode("DELETE", false);
    assert_eq!(SHORT_READ_PANICS.load(Ordering::SeqCst), 0, "panics during SHORT_READ faults");
}

#[test]
#[ignore = "soak: every k; run with --ignored"]
fn soak_io_faults() {
    run_mode("DELETE", true);
    run_mode("WAL", true);
}

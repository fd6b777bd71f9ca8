//! Benchmark: rekey of a 1 GiB database against `cp` of the same file, same machine, same
//! run (target: the rekey at no less than half the speed of cp). Ignored by default:
//!
//! ```text
//! cargo test --release --test rotation_bench -- --ignored --nocapture
//! SQLITE_TDE_BENCH_MB=256 cargo test --release --test rotation_bench -- --ignored --nocapture
//! ```
//!
//! Both start from the page cache (the database was just written and synced). `cp` does not
//! sync its copy; the rekey syncs three times per chunk and writes every byte twice (journal
//! and in place), so "cp + sync" is printed as well.

mod rotation_support;

use std::process::Command;
use std::time::{Duration, Instant};

use rotation_support::tde_for;
use sqlite_tde::rotation::{self, RekeyOptions};

#[test]
#[ignore = "benchmark (1 GiB): run with --release -- --ignored"]
fn rekey_1gib_vs_cp() {
    let mb: u64 = std::env::var("SQLITE_TDE_BENCH_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(1024);
    let dir = tempfile::tempdir_in(
        std::env::var("SQLITE_TDE_BENCH_DIR").unwrap_or_else(|_| std::env::temp_dir().display().to_string()),
    )
    .unwrap();
    let ks = dir.path().join("ks");
    let tde = tde_for(&ks);
    let db = dir.path().join("big.db");
    let t = Instant::now();
    {
        let c = tde.open(&db).unwrap();
        c.execute_batch("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; CREATE TABLE t(b BLOB);").unwrap();
        let rows = mb * 16; // 64000-byte blobs: ~16 per MiB
        c.execute(
            "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM r WHERE i < ?1) INSERT INTO t SELECT randomblob(64000) FROM r",
            [rows as i64],
        )
        .unwrap();
    }
    std::fs::File::open(&db).unwrap().sync_all().unwrap();
    let size = std::fs::metadata(&db).unwrap().len();
    eprintln!("database: {:.0} MiB, created in {:.1} s", size as f64 / 1048576.0, t.elapsed().as_secs_f64());

    let copy = dir.path().join("copy.db");
    let t = Instant::now();
    assert!(Command::new("cp").arg(&db).arg(&copy).status().unwrap().success());
    let cp = t.elapsed();
    std::fs::remove_file(&copy).unwrap();
    let t = Instant::now();
    assert!(Command::new("cp").arg(&db).arg(&copy).status().unwrap().success());
    std::fs::File::open(&copy).unwrap().sync_all().unwrap();
    let cp_sync = t.elapsed();
    std::fs::remove_file(&copy).unwrap();

    let t = Instant::now();
    let r = rotation::rekey(&tde, &db, &RekeyOptions { busy_timeout: Duration::from_secs(30), ..Default::default() })
        .unwrap();
    let rekey = t.elapsed();
    assert_eq!(r.status, "done");

    let mbs = |d: Duration| size as f64 / 1048576.0 / d.as_secs_f64();
    let ratio = cp.as_secs_f64() / rekey.as_secs_f64();
    eprintln!(
        "cp: {:.2} s ({:.0} MiB/s); cp + sync: {:.2} s ({:.0} MiB/s); rekey: {:.2} s ({:.0} MiB/s); rekey speed / cp speed = {:.2} (target >= 0.5); vs cp + sync = {:.2}",
        cp.as_secs_f64(),
        mbs(cp),
        cp_sync.as_secs_f64(),
        mbs(cp_sync),
        rekey.as_secs_f64(),
        mbs(rekey),
        ratio,
        cp_sync.as_secs_f64() / rekey.as_secs_f64()
    );
    let c = tde.open(&db).unwrap();
    let n: i64 = c.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
    assert_eq!(n as u64, mb * 16);
    assert!(ratio >= 0.5, "rekey at {ratio:.2} of cp's speed");
}

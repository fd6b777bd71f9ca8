//! The mixed workload: SQLite's own speed test (`test/speedtest1.c`) in miniature, statement
//! class by statement class, so a class that costs more under tde shows by name.
//!
//! Three tables as in speedtest1 (`t1` unindexed, `t2` with an index on `b`, `t3` keyed by
//! rowid with a text index), filled in one transaction each, then: updates and deletes of
//! individual rows in autocommit (one transaction per statement, where the per-transaction
//! costs of the VFS show), updates through an index in one transaction, deletes of numeric
//! ranges, a four-way join, an index scan, `integrity_check`; and the creation of a new
//! database (open, first table, close). `synchronous=OFF`, so what is measured is the CPU and
//! system-call cost, not the disk's flush latency (which is the same for both engines).

use std::path::Path;

use rusqlite::Connection;
use serde::Serialize;

use super::{open_engine, progress, remove_db, sqlerr, Engine, Options, Rng, Stats, Timer};
use crate::{Result, Tde};

/// One statement class in one journal mode.
#[derive(Debug, Clone, Serialize)]
pub struct MixedRow {
    pub journal_mode: String,
    pub class: String,
    /// Milliseconds per run (wall clock), plain and tde.
    pub plain_ms: Stats,
    pub tde_ms: Stats,
    /// plain time / tde time per round (as a throughput ratio: 1.0 = as fast as plain).
    pub ratio: Stats,
    /// The same by the thread's CPU time.
    pub ratio_cpu: Stats,
}

/// Statement classes, in the order they run.
const CLASSES: [&str; 10] = [
    "create database",
    "inserts, 3 tables (one txn each)",
    "updates of individual rows (autocommit)",
    "updates via index (one txn)",
    "deletes numeric BETWEEN (one txn)",
    "deletes of individual rows (autocommit)",
    "four-way join",
    "index scan",
    "integrity_check",
    "total",
];

/// One run: (wall s, cpu s) per class, total last.
fn run_once(engine: Engine, tde: &Tde, path: &Path, journal: &str, n: usize) -> Result<Vec<(f64, f64)>> {
    remove_db(path);
    let mut out = Vec::with_capacity(CLASSES.len());
    let t = Timer::start();
    let c = open_engine(engine, tde, path)?;
    c.execute_batch(&format!(
        "PRAGMA journal_mode={journal}; PRAGMA synchronous=OFF; PRAGMA cache_size=-2048;
         CREATE TABLE t1(a INTEGER, b INTEGER, c TEXT);"
    ))
    .map_err(sqlerr)?;
    drop(c);
    out.push(t.stop());
    let c = open_engine(engine, tde, path)?;
    c.execute_batch(&format!("PRAGMA synchronous=OFF; PRAGMA cache_size=-2048; PRAGMA journal_mode={journal};"))
        .map_err(sqlerr)?;
    let step = |out: &mut Vec<(f64, f64)>, f: &mut dyn FnMut(&Connection) -> rusqlite::Result<()>| -> Result<()> {
        let t = Timer::start();
        f(&c).map_err(sqlerr)?;
        out.push(t.stop());
        Ok(())
    };
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    step(&mut out, &mut |c| {
        c.execute_batch(
            "CREATE TABLE t2(a INTEGER, b INTEGER, c TEXT); CREATE INDEX t2b ON t2(b);
             CREATE TABLE t3(a INTEGER PRIMARY KEY, b INTEGER, c TEXT); CREATE INDEX t3c ON t3(c);",
        )?;
        for table in ["t1", "t2", "t3"] {
            c.execute_batch("BEGIN")?;
            let mut ins = c.prepare(&format!("INSERT INTO {table}(a, b, c) VALUES(?1, ?2, ?3)"))?;
            for i in 0..n as i64 {
                let r = rng.next() as i64 & 0x7fff_ffff;
                ins.execute(rusqlite::params![i + 1, r % (n as i64 * 2), format!("text {r} {}", r % 997)])?;
            }
            drop(ins);
            c.execute_batch("COMMIT")?;
        }
        Ok(())
    })?;
    let singles = (n / 20).max(10) as i64;
    step(&mut out, &mut |c| {
        let mut up = c.prepare("UPDATE t3 SET b = b + 1 WHERE a = ?1")?;
        for i in 0..singles {
            up.execute([(i * 7919) % n as i64 + 1])?;
        }
        Ok(())
    })?;
    step(&mut out, &mut |c| {
        c.execute_batch("BEGIN")?;
        let mut up = c.prepare("UPDATE t2 SET c = 'updated ' || ?1 WHERE b = ?2")?;
        for i in 0..n as i64 / 4 {
            up.execute([i, (i * 13) % (n as i64 * 2)])?;
        }
        drop(up);
        c.execute_batch("COMMIT")
    })?;
    step(&mut out, &mut |c| {
        c.execute_batch("BEGIN")?;
        let mut del = c.prepare("DELETE FROM t2 WHERE b BETWEEN ?1 AND ?1 + 10")?;
        for i in 0..n as i64 / 20 {
            del.execute([i * 40])?;
        }
        drop(del);
        c.execute_batch("COMMIT")
    })?;
    step(&mut out, &mut |c| {
        let mut del = c.prepare("DELETE FROM t3 WHERE a = ?1")?;
        for i in 0..singles {
            del.execute([(i * 104_729) % n as i64 + 1])?;
        }
        Ok(())
    })?;
    step(&mut out, &mut |c| {
        c.query_row(
            "SELECT count(*) FROM t1, t2, t3, t1 AS t4
             WHERE t1.a = t3.a AND t2.b = t1.b AND t4.a = t3.b % ?1 + 1 AND t3.b > 100",
            [n as i64],
            |_| Ok(()),
        )
    })?;
    step(&mut out, &mut |c| c.query_row("SELECT count(*), max(c) FROM t3 WHERE c > 'text 5'", [], |_| Ok(())))?;
    step(&mut out, &mut |c| {
        let ok: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        assert_eq!(ok, "ok", "benchmark database corrupt");
        Ok(())
    })?;
    drop(c);
    remove_db(path);
    let total = out.iter().fold((0.0, 0.0), |a, x| (a.0 + x.0, a.1 + x.1));
    out.push(total);
    Ok(out)
}

/// The mixed workload in both journal modes, engines interleaved per round.
pub fn section(opts: &Options, tde: &Tde, dir: &Path) -> Result<Vec<MixedRow>> {
    let n = match opts.rows {
        Some(r) => r.max(200),
        None if opts.quick => 5_000,
        None => 20_000,
    };
    let rounds = opts.rounds();
    let mut rows = Vec::new();
    for journal in ["DELETE", "WAL"] {
        let mut runs: [Vec<Vec<(f64, f64)>>; 2] = [Vec::new(), Vec::new()];
        for round in 0..rounds {
            progress(opts, &format!("mixed workload journal_mode={journal}, round {}/{rounds}", round + 1));
            let order = if round % 2 == 0 { [Engine::Plain, Engine::Tde] } else { [Engine::Tde, Engine::Plain] };
            for engine in order {
                let path = dir.join(if engine == Engine::Tde { "mixed-tde.db" } else { "mixed-plain.db" });
                runs[(engine == Engine::Tde) as usize].push(run_once(engine, tde, &path, journal, n)?);
            }
        }
        for (i, class) in CLASSES.iter().enumerate() {
            let col = |e: usize, cpu: bool| -> Vec<f64> {
                runs[e].iter().map(|r| if cpu { r[i].1 } else { r[i].0 }).collect()
            };
            let ratio = |cpu: bool| -> Vec<f64> { col(0, cpu).iter().zip(col(1, cpu)).map(|(p, t)| p / t).collect() };
            let ms = |v: Vec<f64>| v.into_iter().map(|s| s * 1e3).collect::<Vec<_>>();
            rows.push(MixedRow {
                journal_mode: journal.into(),
                class: class.to_string(),
                plain_ms: Stats::of(&ms(col(0, false))),
                tde_ms: Stats::of(&ms(col(1, false))),
                ratio: Stats::of(&ratio(false)),
                ratio_cpu: Stats::of(&ratio(true)),
            });
        }
    }
    Ok(rows)
}

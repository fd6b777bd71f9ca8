//! SQL workloads, encrypted (`tde`) vs plain SQLite, same binary and same SQLite:
//! 1,000-row insert transactions of 100-byte blobs, random point lookups by rowid, full scans;
//! WAL, `synchronous=OFF`, `cache_size` 2 MiB over a database larger than the cache.
//!
//! `cargo bench --bench sql` (`-- --quick` for a short run). The ratio table with rounds,
//! DELETE mode and `synchronous=FULL` is `sqlite-tde bench` / `cargo bench --bench report`.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rusqlite::Connection;
use sqlite_tde::Tde;

const ROWS: i64 = 50_000;

fn open(engine: &str, tde: &Tde, path: &Path) -> Connection {
    let c = if engine == "tde" { tde.open(path).unwrap() } else { Connection::open(path).unwrap() };
    c.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF; PRAGMA cache_size=-2048;").unwrap();
    c
}

fn blob(i: i64) -> [u8; 100] {
    let mut b = [0u8; 100];
    let mut x = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for c in b.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
    }
    b
}

fn insert_txn(c: &Connection, first: i64, n: i64) {
    c.execute_batch("BEGIN").unwrap();
    {
        let mut st = c.prepare_cached("INSERT INTO t(id, b) VALUES(?1, ?2)").unwrap();
        for id in first..first + n {
            st.execute(rusqlite::params![id, &blob(id)[..]]).unwrap();
        }
    }
    c.execute_batch("COMMIT").unwrap();
}

fn populated(engine: &str, tde: &Tde, path: &Path) -> Connection {
    let c = open(engine, tde, path);
    c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, b BLOB NOT NULL)").unwrap();
    for k in 0..ROWS / 1000 {
        insert_txn(&c, k * 1000 + 1, 1000);
    }
    c
}

fn sql(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let tde = Tde::builder().keystore(dir.path().join("ks")).vfs_name("tde-criterion-sql").register().unwrap();
    for engine in ["plain", "tde"] {
        // Inserts grow their own database; lookups and scans use one of exactly ROWS rows.
        let conn = populated(engine, &tde, &dir.path().join(format!("{engine}-insert.db")));
        let mut next = ROWS + 1;
        let mut g = c.benchmark_group("sql/insert_txn_1000_rows");
        g.throughput(Throughput::Elements(1000));
        g.bench_function(BenchmarkId::new(engine, "WAL"), |b| {
            b.iter(|| {
                insert_txn(&conn, next, 1000);
                next += 1000;
            })
        });
        g.finish();
        drop(conn);
        let conn = populated(engine, &tde, &dir.path().join(format!("{engine}-read.db")));

        let mut g = c.benchmark_group("sql/point_lookup");
        g.throughput(Throughput::Elements(1));
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut sel = conn.prepare("SELECT b FROM t WHERE id = ?1").unwrap();
        g.bench_function(BenchmarkId::new(engine, "WAL"), |b| {
            b.iter(|| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let id = (x % ROWS as u64) as i64 + 1;
                black_box(
                    sel.query_row([id], |r| r.get_ref(0).map(|v| v.as_blob().map(|b| b.len()).unwrap_or(0))).unwrap(),
                )
            })
        });
        drop(sel);
        g.finish();

        let mut g = c.benchmark_group("sql/full_scan");
        let n: i64 = conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::new(engine, "WAL"), |b| {
            b.iter(|| {
                let v: i64 = conn.query_row("SELECT sum(length(b)) FROM t", [], |r| r.get(0)).unwrap();
                black_box(v)
            })
        });
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    targets = sql
}
criterion_main!(benches);

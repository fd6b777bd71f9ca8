//! Open cost: open + first query, plain SQLite vs `tde` with a warm key cache and cold (key
//! cache cleared, so the embedded KMS unwraps the data key on every open).
//!
//! `cargo bench --bench open`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use rusqlite::Connection;
use sqlite_tde::Tde;

fn first_query(c: &Connection) -> i64 {
    c.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0)).unwrap()
}

fn open_cost(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let tde = Tde::builder().keystore(dir.path().join("ks")).vfs_name("tde-criterion-open").register().unwrap();
    let plain_path = dir.path().join("plain.db");
    let tde_path = dir.path().join("tde.db");
    Connection::open(&plain_path).unwrap().execute_batch("CREATE TABLE t(x)").unwrap();
    tde.open(&tde_path).unwrap().execute_batch("CREATE TABLE t(x)").unwrap();

    let mut g = c.benchmark_group("open_and_first_query");
    g.bench_function("plain", |b| b.iter(|| black_box(first_query(&Connection::open(&plain_path).unwrap()))));
    g.bench_function("tde-warm-key-cache", |b| b.iter(|| black_box(first_query(&tde.open(&tde_path).unwrap()))));
    g.bench_function("tde-cold-kms-unwrap", |b| {
        b.iter(|| {
            tde.context().cache.clear();
            black_box(first_query(&tde.open(&tde_path).unwrap()))
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = open_cost
}
criterion_main!(benches);

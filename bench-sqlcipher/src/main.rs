//! plain SQLite vs sqlite-tde vs SQLCipher, measured side by side in one run on one machine.
//!
//! ```text
//! cargo run --release --manifest-path bench-sqlcipher/Cargo.toml -- [--quick] [--json] [--rows N] [--rounds N]
//! ```
//!
//! - SQL workload (the one of `sqlite-tde bench`, same code: `sqlite_tde::bench::run_workload`)
//!   on three engines in rotating order per round; ratios per round against plain SQLite, by
//!   the thread's CPU time and by wall time. SQLCipher 4 defaults (4 KiB pages, AES-256-CBC,
//!   HMAC-SHA512 per page), keyed with a raw key so no KDF runs during the workload.
//! - Open + first query: plain, sqlite-tde with a warm key cache and cold (KMS unwrap),
//!   SQLCipher with a passphrase (its default PBKDF2-HMAC-SHA512, 256,000 iterations) and
//!   with a raw key.
//! - Page cipher: sqlite-tde's AES-256-XTS vs OpenSSL's EVP AES-256-XTS (one data unit per
//!   update, key schedule reused), in process; the ciphertexts are checked to be identical.
//!
//! All three engines run on the same SQLite library: this crate's feature makes
//! libsqlite3-sys build SQLCipher for the whole binary ("plain" = SQLCipher with no key).

use std::path::Path;
use std::time::Instant;

use openssl::cipher::Cipher;
use openssl::cipher_ctx::CipherCtx;
use rusqlite::Connection;
use sqlite_tde::bench::{remove_db, run_workload, thread_cpu_ns, time_opens, Stats, WorkloadRun, PAGE_SIZES};
use sqlite_tde::crypto::{DataKey, Domain, XtsCipher, DATA_UNIT};
use sqlite_tde::Tde;

const ENGINES: [&str; 3] = ["plain", "tde", "sqlcipher"];
const RAW_KEY: &str = "x'2DD29CA851E7B56E4697B0E1F08507293D761A05CE4D1B628663F411A8086D99'";

fn open(engine: &str, tde: &Tde, path: &Path) -> sqlite_tde::Result<Connection> {
    match engine {
        "tde" => tde.open(path),
        "sqlcipher" => {
            let c = Connection::open(path)?;
            c.execute_batch(&format!("PRAGMA key = \"{RAW_KEY}\";"))?;
            Ok(c)
        }
        _ => Ok(Connection::open(path)?),
    }
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let json = args.iter().any(|a| a == "--json");
    let rows: usize = arg(&args, "--rows").unwrap_or(if quick { 50_000 } else { 200_000 });
    let rounds: usize = arg(&args, "--rounds").unwrap_or(if quick { 3 } else { 5 }).max(1);
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("temporary directory");
    let tde = Tde::builder().keystore(dir.path().join("keystore")).vfs_name("tde-vs-sqlcipher").register().expect("register tde");
    let sqlcipher_version: String = Connection::open_in_memory()
        .and_then(|c| c.query_row("PRAGMA cipher_version", [], |r| r.get(0)))
        .unwrap_or_else(|_| "?".into());
    let sqlite_version = rusqlite::version();
    eprintln!("bench-sqlcipher: SQLite {sqlite_version}, SQLCipher {sqlcipher_version}, {}", openssl::version::version());

    // SQL workload.
    let configs = [("WAL", "OFF"), ("DELETE", "OFF"), ("WAL", "FULL"), ("DELETE", "FULL")];
    let mut sql = Vec::new();
    for (journal, sync) in configs {
        let mut runs: Vec<Vec<WorkloadRun>> = vec![Vec::new(); 3];
        for round in 0..rounds {
            eprintln!("bench-sqlcipher: journal_mode={journal} synchronous={sync} round {}/{rounds}", round + 1);
            for k in 0..3 {
                let e = (round + k) % 3;
                let path = dir.path().join(format!("{}.db", ENGINES[e]));
                let r = run_workload(&|p: &Path| open(ENGINES[e], &tde, p), &path, journal, sync, rows).expect("workload");
                runs[e].push(r);
            }
        }
        for (metric, get) in [
            ("insert", (|r: &WorkloadRun| r.insert) as fn(&WorkloadRun) -> (f64, f64)),
            ("lookup", |r: &WorkloadRun| r.lookup),
            ("scan", |r: &WorkloadRun| r.scan),
        ] {
            let ratio = |e: usize, cpu: bool| {
                let v: Vec<f64> = runs[0]
                    .iter()
                    .zip(&runs[e])
                    .map(|(p, x)| if cpu { get(x).1 / get(p).1 } else { get(x).0 / get(p).0 })
                    .collect();
                Stats::of(&v)
            };
            let plain: Vec<f64> = runs[0].iter().map(|r| get(r).0).collect();
            sql.push(serde_json::json!({
                "journal_mode": journal, "synchronous": sync, "metric": metric,
                "plain_per_s": Stats::of(&plain),
                "tde_vs_plain_cpu": ratio(1, true), "tde_vs_plain_wall": ratio(1, false),
                "sqlcipher_vs_plain_cpu": ratio(2, true), "sqlcipher_vs_plain_wall": ratio(2, false),
            }));
        }
    }

    // Open + first query.
    eprintln!("bench-sqlcipher: open cost");
    let n = if quick { 20 } else { 50 };
    let paths: Vec<_> = ENGINES.iter().map(|e| dir.path().join(format!("open-{e}.db"))).collect();
    for (e, p) in ENGINES.iter().zip(&paths) {
        remove_db(p);
        open(e, &tde, p).unwrap().execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES(1);").unwrap();
    }
    let passphrase_path = dir.path().join("open-sqlcipher-passphrase.db");
    let open_passphrase = || -> sqlite_tde::Result<Connection> {
        let c = Connection::open(&passphrase_path)?;
        c.execute_batch("PRAGMA key = 'correct horse battery staple';")?;
        Ok(c)
    };
    open_passphrase().unwrap().execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES(1);").unwrap();
    let plain_open = time_opens(&|| open("plain", &tde, &paths[0]), n, &mut || {}).unwrap();
    time_opens(&|| open("tde", &tde, &paths[1]), 1, &mut || {}).unwrap();
    let tde_warm = time_opens(&|| open("tde", &tde, &paths[1]), n, &mut || {}).unwrap();
    let tde_cold = time_opens(&|| open("tde", &tde, &paths[1]), n, &mut || tde.context().cache.clear()).unwrap();
    let sqlcipher_raw = time_opens(&|| open("sqlcipher", &tde, &paths[2]), n, &mut || {}).unwrap();
    let sqlcipher_kdf = time_opens(&open_passphrase, if quick { 5 } else { 10 }, &mut || {}).unwrap();

    // Page cipher vs OpenSSL.
    eprintln!("bench-sqlcipher: page cipher vs OpenSSL");
    let key_bytes: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37).wrapping_add(11)).collect();
    let ours = XtsCipher::new(&DataKey::from_slice(&key_bytes).unwrap());
    let mut cipher_rows = Vec::new();
    let samples = if quick { 7 } else { 15 };
    for &size in &PAGE_SIZES {
        let page = 3u64;
        let offset = page * size as u64;
        let src: Vec<u8> = (0..size).map(|i| (i * 7 + 1) as u8).collect();
        let mut out_ours = vec![0u8; size];
        let mut out_ossl = vec![0u8; size + 16];
        let mut enc = CipherCtx::new().unwrap();
        enc.encrypt_init(Some(Cipher::aes_256_xts()), Some(&key_bytes), None).unwrap();
        let mut dec = CipherCtx::new().unwrap();
        dec.decrypt_init(Some(Cipher::aes_256_xts()), Some(&key_bytes), None).unwrap();
        // One EVP update per 4 KiB data unit, its IV the tweak (FORMAT.md §2).
        let openssl_page = |ctx: &mut CipherCtx, encrypt: bool, input: &[u8], output: &mut [u8]| {
            for (u, chunk) in input.chunks(DATA_UNIT).enumerate() {
                let pos = offset + (u * DATA_UNIT) as u64;
                let iv = Domain::Database.tweak(pos / DATA_UNIT as u64).to_le_bytes();
                if encrypt {
                    ctx.encrypt_init(None, None, Some(&iv)).unwrap();
                } else {
                    ctx.decrypt_init(None, None, Some(&iv)).unwrap();
                }
                let o = u * DATA_UNIT;
                ctx.cipher_update(chunk, Some(&mut output[o..o + chunk.len() + 16])).unwrap();
            }
        };
        // Same ciphertext (sizes below 4 KiB: OpenSSL starts the unit at block 0, as we do
        // for a page at a unit boundary; pages of 512..2048 bytes at page 3 are not at one).
        ours.encrypt_to(Domain::Database, offset, &src, &mut out_ours);
        if offset % DATA_UNIT as u64 == 0 {
            openssl_page(&mut enc, true, &src, &mut out_ossl);
            assert_eq!(out_ours, out_ossl[..size], "sqlite-tde and OpenSSL disagree at {size} bytes");
        }
        let iters = (8 << 20) / size;
        let measure = |f: &mut dyn FnMut()| -> f64 {
            let c0 = thread_cpu_ns().unwrap_or(0);
            let t = Instant::now();
            for _ in 0..iters {
                f();
            }
            let secs = match (c0, thread_cpu_ns()) {
                (a, Some(b)) if b > a && a > 0 => (b - a) as f64 / 1e9,
                _ => t.elapsed().as_secs_f64(),
            };
            (iters * size) as f64 / secs / 1e9
        };
        let (mut oe, mut od, mut se, mut sd) = (vec![], vec![], vec![], vec![]);
        let ct = out_ours.clone();
        for _ in 0..samples {
            oe.push(measure(&mut || ours.encrypt_to(Domain::Database, offset, &src, &mut out_ours)));
            od.push(measure(&mut || ours.decrypt_to(Domain::Database, offset, &ct, &mut out_ours)));
            se.push(measure(&mut || openssl_page(&mut enc, true, &src, &mut out_ossl)));
            sd.push(measure(&mut || openssl_page(&mut dec, false, &ct, &mut out_ossl)));
        }
        let r = |a: &[f64], b: &[f64]| Stats::of(&a.iter().zip(b).map(|(x, y)| x / y).collect::<Vec<_>>());
        cipher_rows.push(serde_json::json!({
            "page_size": size,
            "tde_encrypt_gbps": Stats::of(&oe), "tde_decrypt_gbps": Stats::of(&od),
            "openssl_encrypt_gbps": Stats::of(&se), "openssl_decrypt_gbps": Stats::of(&sd),
            "encrypt_ratio": r(&oe, &se), "decrypt_ratio": r(&od, &sd),
        }));
    }

    let m = |v: &serde_json::Value, k: &str| v[k]["median"].as_f64().unwrap_or(0.0);
    let worst = |k: &str| {
        sql.iter().map(|r| m(r, k)).fold(f64::INFINITY, f64::min)
    };
    let by_metric = |metric: &str, k: &str| {
        sql.iter().filter(|r| r["metric"] == metric).map(|r| m(r, k)).fold(f64::INFINITY, f64::min)
    };
    let c4k = cipher_rows.iter().find(|r| r["page_size"] == 4096).cloned().unwrap_or_default();
    let summary = format!(
        "summary: worst tde/plain (cpu) {:.2} [insert {:.2} lookup {:.2} scan {:.2}]; worst sqlcipher/plain (cpu) {:.2} [insert {:.2} lookup {:.2} scan {:.2}]; open ms plain {:.3} tde warm {:.3} cold {:.3} sqlcipher raw key {:.3} passphrase {:.1}; cipher@4K tde/openssl enc {:.2}x dec {:.2}x",
        worst("tde_vs_plain_cpu"),
        by_metric("insert", "tde_vs_plain_cpu"),
        by_metric("lookup", "tde_vs_plain_cpu"),
        by_metric("scan", "tde_vs_plain_cpu"),
        worst("sqlcipher_vs_plain_cpu"),
        by_metric("insert", "sqlcipher_vs_plain_cpu"),
        by_metric("lookup", "sqlcipher_vs_plain_cpu"),
        by_metric("scan", "sqlcipher_vs_plain_cpu"),
        plain_open.median,
        tde_warm.median,
        tde_cold.median,
        sqlcipher_raw.median,
        sqlcipher_kdf.median,
        m(&c4k, "encrypt_ratio"),
        m(&c4k, "decrypt_ratio"),
    );
    let report = serde_json::json!({
        "sqlite_version": sqlite_version, "sqlcipher_version": sqlcipher_version,
        "openssl_version": openssl::version::version(), "tde_cipher_backend": ours.backend(),
        "rows": rows, "rounds": rounds, "sql": sql,
        "open_ms": {"plain": plain_open, "tde_warm": tde_warm, "tde_cold": tde_cold,
                    "sqlcipher_raw_key": sqlcipher_raw, "sqlcipher_passphrase": sqlcipher_kdf},
        "cipher": cipher_rows, "elapsed_secs": started.elapsed().as_secs_f64(), "summary": summary,
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&report).unwrap());
        return;
    }
    println!(
        "plain SQLite vs sqlite-tde vs SQLCipher {sqlcipher_version} (SQLite {sqlite_version}, {}), {rows} rows, {rounds} rounds; median [min-max] of per-round ratios",
        openssl::version::version()
    );
    println!("{:<7} {:<5} {:<7} {:>26} {:>20} {:>20} {:>20} {:>20}", "journal", "sync", "metric", "plain /s (wall)", "tde/plain cpu", "tde/plain wall", "sqlcipher/plain cpu", "sqlcipher/plain wall");
    for r in &sql {
        let f = |k: &str| -> String {
            let s: Stats = serde_json::from_value(r[k].clone()).unwrap_or(Stats::of(&[]));
            s.fmt(if k == "plain_per_s" { 0 } else { 2 })
        };
        println!(
            "{:<7} {:<5} {:<7} {:>26} {:>20} {:>20} {:>20} {:>20}",
            r["journal_mode"].as_str().unwrap(),
            r["synchronous"].as_str().unwrap(),
            r["metric"].as_str().unwrap(),
            f("plain_per_s"),
            f("tde_vs_plain_cpu"),
            f("tde_vs_plain_wall"),
            f("sqlcipher_vs_plain_cpu"),
            f("sqlcipher_vs_plain_wall")
        );
    }
    println!(
        "\nopen + first query, ms: plain {}; tde warm {}; tde cold (KMS) {}; sqlcipher raw key {}; sqlcipher passphrase (KDF) {}",
        plain_open.fmt(3),
        tde_warm.fmt(3),
        tde_cold.fmt(3),
        sqlcipher_raw.fmt(3),
        sqlcipher_kdf.fmt(1)
    );
    println!("\npage cipher, GB/s of thread CPU time: sqlite-tde ({}) vs OpenSSL EVP aes-256-xts", ours.backend());
    println!("{:>6} {:>20} {:>20} {:>20} {:>20} {:>9} {:>9}", "page", "tde encrypt", "tde decrypt", "openssl encrypt", "openssl decrypt", "enc x", "dec x");
    for r in &cipher_rows {
        let f = |k: &str| -> String {
            let s: Stats = serde_json::from_value(r[k].clone()).unwrap_or(Stats::of(&[]));
            s.fmt(2)
        };
        println!(
            "{:>6} {:>20} {:>20} {:>20} {:>20} {:>9.2} {:>9.2}",
            r["page_size"].to_string(),
            f("tde_encrypt_gbps"),
            f("tde_decrypt_gbps"),
            f("openssl_encrypt_gbps"),
            f("openssl_decrypt_gbps"),
            m(r, "encrypt_ratio"),
            m(r, "decrypt_ratio")
        );
    }
    println!("\nelapsed {:.1} s", started.elapsed().as_secs_f64());
    println!("{summary}");
}

//! `sqlite-tde bench`: what encryption costs on this machine, measured side by side in one run.
//!
//! Three sections, each reported as medians and ranges over interleaved rounds (the machines
//! this runs on are shared and noisy, so absolute numbers move; ratios measured in the same
//! round move much less):
//!
//! - **page cipher**: AES-256-XTS encrypt/decrypt throughput on one core for page sizes
//!   512 B .. 64 KiB, against raw AES-256 (the `aes` crate's multi-block call, and the same
//!   instructions without the XTS tweak work: the ceiling), and `openssl speed` when the
//!   `openssl` command is installed;
//! - **SQL workload**, encrypted (`tde`) vs plain SQLite, same binary and same SQLite:
//!   inserts of 100-byte blobs in 1,000-row transactions, random point lookups by rowid, one
//!   full scan, in WAL and DELETE journal modes with `synchronous=OFF` (CPU cost) and `FULL`,
//!   `cache_size` 2 MiB so reads miss SQLite's page cache; plus the peak RSS of each run;
//! - **mixed workload** ([`mixed`]): SQLite's speed test in miniature, per statement class
//!   (inserts, autocommit updates and deletes, indexed updates, range deletes, a join, an index
//!   scan, integrity_check, database creation), rollback and WAL mode;
//! - **open cost**: open + first query, plain, with a warm key cache, and cold (key cache
//!   cleared, so the embedded KMS unwraps the data key).
//!
//! [`run`] measures, [`Report::table`] renders the human table whose last line is
//! [`Report::summary`], [`Report::to_json`] the machine-readable form.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aes::cipher::{Array, BlockCipherEncrypt, KeyInit};
use rusqlite::{Connection, OpenFlags};
use serde::Serialize;

use crate::crypto::{DataKey, Domain, XtsCipher};
use crate::{Error, Result, Tde};

mod mixed;
pub use mixed::MixedRow;

/// Page sizes of the cipher section.
pub const PAGE_SIZES: [usize; 8] = [512, 1024, 2048, 4096, 8192, 16384, 32768, 65536];

/// What to measure and how long.
#[derive(Debug, Clone)]
pub struct Options {
    /// Short run (under a minute): fewer rows and rounds.
    pub quick: bool,
    /// Directory for databases and the keystore (default: a temporary directory, removed).
    pub dir: Option<PathBuf>,
    /// Print progress lines on stderr.
    pub progress: bool,
    /// Sections to run.
    pub cipher: bool,
    pub sql: bool,
    pub mixed: bool,
    pub open: bool,
    /// Run `openssl speed -evp aes-256-xts` (if installed) for the cipher comparison.
    pub openssl: bool,
    /// Override: rows inserted (and lookups) per SQL run.
    pub rows: Option<usize>,
    /// Override: rounds per measurement.
    pub rounds: Option<usize>,
}

impl Options {
    /// The full run (a few minutes).
    pub fn full() -> Options {
        Options {
            quick: false,
            dir: None,
            progress: false,
            cipher: true,
            sql: true,
            mixed: true,
            open: true,
            openssl: true,
            rows: None,
            rounds: None,
        }
    }

    /// The `--quick` run (under a minute).
    pub fn quick() -> Options {
        Options { quick: true, ..Options::full() }
    }

    fn rows(&self) -> usize {
        self.rows.unwrap_or(if self.quick { 50_000 } else { 200_000 })
    }
    fn rounds(&self) -> usize {
        self.rounds.unwrap_or(if self.quick { 3 } else { 5 }).max(1)
    }
}

/// Median and range of a set of samples.
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub samples: usize,
}

impl Stats {
    /// Statistics of `v` (empty: all zero).
    pub fn of(v: &[f64]) -> Stats {
        if v.is_empty() {
            return Stats { median: 0.0, min: 0.0, max: 0.0, samples: 0 };
        }
        let mut s = v.to_vec();
        s.sort_by(|a, b| a.total_cmp(b));
        let n = s.len();
        let median = if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 };
        Stats { median, min: s[0], max: s[n - 1], samples: n }
    }

    /// `median [min-max]` with `digits` decimals.
    pub fn fmt(&self, digits: usize) -> String {
        format!("{:.d$} [{:.d$}-{:.d$}]", self.median, self.min, self.max, d = digits)
    }
}

/// The machine and build.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub cipher_backend: String,
    pub load_average: String,
    pub sqlite_version: String,
    pub openssl_version: Option<String>,
}

/// Page cipher throughput at one page size, GB/s (10^9 bytes per second).
#[derive(Debug, Clone, Serialize)]
pub struct CipherRow {
    pub page_size: usize,
    pub encrypt: Stats,
    pub decrypt: Stats,
    /// The `aes` crate's `encrypt_blocks` over the page (AES-256, no tweaks).
    pub aes_crate_raw: Stats,
    /// Raw AES-256 with the instructions the XTS kernel uses, no tweak work: the ceiling.
    pub aes_ceiling: Stats,
    /// Per-round ratios.
    pub encrypt_vs_aes_crate: Stats,
    pub encrypt_vs_ceiling: Stats,
    pub decrypt_vs_ceiling: Stats,
    /// `openssl speed -evp aes-256-xts -bytes N`, GB/s, if run.
    pub openssl_encrypt: Option<f64>,
    pub openssl_decrypt: Option<f64>,
}

/// One SQL metric of one configuration: rates (higher is better) and the per-round ratio,
/// per wall-clock second and per second of the benchmark thread's CPU time (user + kernel;
/// steadier on a shared machine, but blind to time spent waiting for `fsync`).
#[derive(Debug, Clone, Serialize)]
pub struct SqlRow {
    pub journal_mode: String,
    pub synchronous: String,
    pub metric: String,
    pub unit: String,
    pub plain: Stats,
    pub tde: Stats,
    /// tde / plain, per round, wall clock.
    pub ratio: Stats,
    pub plain_cpu: Stats,
    pub tde_cpu: Stats,
    /// tde / plain, per round, CPU time.
    pub ratio_cpu: Stats,
}

/// Peak resident set size of the SQL runs (process VmHWM, reset before each run), MiB.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryRow {
    pub plain_peak_mib: Stats,
    pub tde_peak_mib: Stats,
    /// Growth of the peak over the RSS before the run, MiB.
    pub plain_growth_mib: Stats,
    pub tde_growth_mib: Stats,
    pub ratio: Stats,
}

/// Open + first query, milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct OpenCost {
    pub plain_ms: Stats,
    pub tde_warm_ms: Stats,
    pub tde_cold_ms: Stats,
    /// KMS calls during the warm and the cold opens (proof of what each measured).
    pub warm_kms_calls: u64,
    pub cold_kms_calls: u64,
    pub opens: usize,
}

/// Everything measured by one [`run`].
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub quick: bool,
    pub machine: Machine,
    pub rows: usize,
    pub rounds: usize,
    pub cipher: Vec<CipherRow>,
    pub sql: Vec<SqlRow>,
    pub memory: Option<MemoryRow>,
    pub mixed: Vec<MixedRow>,
    pub open: Option<OpenCost>,
    pub elapsed_secs: f64,
    pub summary: String,
}

fn progress(opts: &Options, msg: &str) {
    if opts.progress {
        eprintln!("bench: {msg}");
    }
}

/// Run the benchmark.
pub fn run(opts: &Options) -> Result<Report> {
    let started = Instant::now();
    let tmp;
    let dir = match &opts.dir {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(|e| Error::Config(format!("{}: {e}", d.display())))?;
            d.clone()
        }
        None => {
            tmp = tempfile::Builder::new()
                .prefix("sqlite-tde-bench")
                .tempdir()
                .map_err(|e| Error::Config(format!("temporary directory: {e}")))?;
            tmp.path().to_path_buf()
        }
    };
    let machine = machine_info(opts.openssl);
    let mut report = Report {
        quick: opts.quick,
        machine,
        rows: opts.rows(),
        rounds: opts.rounds(),
        cipher: Vec::new(),
        sql: Vec::new(),
        memory: None,
        mixed: Vec::new(),
        open: None,
        elapsed_secs: 0.0,
        summary: String::new(),
    };
    if opts.cipher {
        report.cipher = cipher_section(opts, report.machine.openssl_version.is_some());
    }
    if opts.sql || opts.mixed || opts.open {
        let tde = register(&dir)?;
        if opts.sql {
            let (rows, mem) = sql_section(opts, &tde, &dir)?;
            report.sql = rows;
            report.memory = mem;
        }
        if opts.mixed {
            report.mixed = mixed::section(opts, &tde, &dir)?;
        }
        if opts.open {
            report.open = Some(open_section(opts, &tde, &dir)?);
        }
    }
    report.elapsed_secs = started.elapsed().as_secs_f64();
    report.summary = report.make_summary();
    Ok(report)
}

/// A fresh registration per run: its own key cache, and the embedded KMS over a keystore of
/// its own (whatever `SQLITE_TDE_KMS` says: the user's keys are never touched).
fn register(dir: &Path) -> Result<Tde> {
    static N: AtomicUsize = AtomicUsize::new(0);
    let name = format!("tde-bench-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
    let kms = std::sync::Arc::new(crate::kms::local::LocalKms::new(dir.join("keystore")));
    Tde::builder().vfs_name(name).register_with_kms(kms)
}

fn machine_info(openssl: bool) -> Machine {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let openssl_version = if openssl {
        Command::new("openssl")
            .arg("version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    } else {
        None
    };
    Machine {
        cpu,
        cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        cipher_backend: XtsCipher::new(&bench_key()).backend().to_string(),
        load_average: std::fs::read_to_string("/proc/loadavg")
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default(),
        sqlite_version: rusqlite::version().to_string(),
        openssl_version,
    }
}

fn bench_key() -> DataKey {
    let bytes: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37).wrapping_add(11)).collect();
    DataKey::from_slice(&bytes).expect("distinct halves")
}

// ---------------------------------------------------------------------------------------------
// Timing

/// CPU time of the calling thread in nanoseconds (Linux `schedstat`: time on a CPU, user and
/// kernel). On a shared machine this is far steadier than wall time: other processes' time
/// slices are not counted. The kernel updates the counter of a running thread only at timer
/// ticks (4 ms) and context switches; the `sched_yield` makes it exact.
pub fn thread_cpu_ns() -> Option<u64> {
    std::thread::yield_now();
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// Wall-clock and thread CPU time of a section.
struct Timer {
    wall: Instant,
    cpu: Option<u64>,
}

impl Timer {
    fn start() -> Timer {
        let cpu = thread_cpu_ns();
        Timer { wall: Instant::now(), cpu }
    }
    /// (wall seconds, CPU seconds; the wall time if CPU time is unavailable).
    fn stop(&self) -> (f64, f64) {
        let wall = self.wall.elapsed().as_secs_f64();
        let cpu = match (self.cpu, thread_cpu_ns()) {
            (Some(a), Some(b)) if b > a => (b - a) as f64 / 1e9,
            _ => wall,
        };
        (wall, cpu)
    }
}

// ---------------------------------------------------------------------------------------------
// Page cipher

/// Iterations of `f` that take about `target`.
fn calibrate(target: Duration, mut f: impl FnMut()) -> usize {
    let mut n = 1usize;
    loop {
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        let e = t.elapsed();
        if e >= target / 4 || n >= 1 << 30 {
            let per = e.as_secs_f64() / n as f64;
            return ((target.as_secs_f64() / per.max(1e-12)) as usize).max(1);
        }
        n *= 4;
    }
}

/// Throughput of `iters` calls of `f` over `bytes` bytes, GB/s of thread CPU time.
fn gbps(bytes: usize, iters: usize, f: &mut dyn FnMut()) -> f64 {
    let t = Timer::start();
    for _ in 0..iters {
        f();
    }
    (bytes * iters) as f64 / t.stop().1 / 1e9
}

fn cipher_section(opts: &Options, have_openssl: bool) -> Vec<CipherRow> {
    let key = bench_key();
    let ours = XtsCipher::new(&key);
    let raw = aes::Aes256::new_from_slice(&key.expose()[..32]).expect("32 bytes");
    let rounds = if opts.quick { 5 } else { 11 };
    let target = Duration::from_millis(if opts.quick { 4 } else { 15 });
    let mut rows = Vec::new();
    for &size in &PAGE_SIZES {
        progress(opts, &format!("page cipher, {size}-byte pages"));
        let mut buf = vec![0x5au8; size];
        let mut out = vec![0u8; size];
        // Page 3 of a database: a realistic tweak.
        let off = 3 * size as u64;
        let iters = calibrate(target, || ours.encrypt(Domain::Database, off, std::hint::black_box(&mut buf)));
        let (mut enc, mut dec, mut craw, mut ceil) = (vec![], vec![], vec![], vec![]);
        let (mut r_enc_raw, mut r_enc_ceil, mut r_dec_ceil) = (vec![], vec![], vec![]);
        for _ in 0..rounds {
            let e = gbps(size, iters, &mut || ours.encrypt(Domain::Database, off, std::hint::black_box(&mut buf)));
            // Out of place, as the VFS reads pages (read buffer -> SQLite's buffer).
            let d = gbps(size, iters, &mut || {
                ours.decrypt_to(Domain::Database, off, std::hint::black_box(&buf), std::hint::black_box(&mut out))
            });
            let r = gbps(size, iters, &mut || {
                let (blocks, _) = Array::slice_as_chunks_mut(std::hint::black_box(&mut buf[..]));
                raw.encrypt_blocks(blocks);
            });
            let c = gbps(size, iters, &mut || ours.ecb_encrypt_for_benchmark(std::hint::black_box(&mut buf)));
            enc.push(e);
            dec.push(d);
            craw.push(r);
            ceil.push(c);
            r_enc_raw.push(e / r);
            r_enc_ceil.push(e / c);
            r_dec_ceil.push(d / c);
        }
        let run_openssl = have_openssl && opts.openssl && (!opts.quick || size == 4096);
        let (oe, od) = if run_openssl {
            (openssl_speed(size, false, opts.quick), openssl_speed(size, true, opts.quick))
        } else {
            (None, None)
        };
        rows.push(CipherRow {
            page_size: size,
            encrypt: Stats::of(&enc),
            decrypt: Stats::of(&dec),
            aes_crate_raw: Stats::of(&craw),
            aes_ceiling: Stats::of(&ceil),
            encrypt_vs_aes_crate: Stats::of(&r_enc_raw),
            encrypt_vs_ceiling: Stats::of(&r_enc_ceil),
            decrypt_vs_ceiling: Stats::of(&r_dec_ceil),
            openssl_encrypt: oe,
            openssl_decrypt: od,
        });
    }
    rows
}

/// `openssl speed -evp aes-256-xts -bytes N`, GB/s.
fn openssl_speed(size: usize, decrypt: bool, quick: bool) -> Option<f64> {
    let mut cmd = Command::new("openssl");
    cmd.args(["speed", "-evp", "aes-256-xts", "-bytes", &size.to_string(), "-seconds", if quick { "1" } else { "2" }]);
    if decrypt {
        cmd.arg("-decrypt");
    }
    let out = cmd.output().ok().filter(|o| o.status.success())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().rev().find(|l| l.to_ascii_uppercase().starts_with("AES-256-XTS"))?;
    let k: f64 = last.split_whitespace().nth(1)?.trim_end_matches('k').parse().ok()?;
    Some(k * 1000.0 / 1e9)
}

// ---------------------------------------------------------------------------------------------
// SQL workload

#[derive(Clone, Copy, PartialEq)]
enum Engine {
    Plain,
    Tde,
}

/// Rates of one run of the SQL workload, each as (per wall second, per CPU second of the
/// calling thread).
#[derive(Debug, Clone, Copy)]
pub struct WorkloadRun {
    /// Rows inserted per second.
    pub insert: (f64, f64),
    /// Point lookups per second.
    pub lookup: (f64, f64),
    /// Rows scanned per second.
    pub scan: (f64, f64),
    /// Peak RSS of the process during the run, MiB (Linux).
    pub peak_mib: Option<f64>,
    /// Peak RSS minus the RSS before the run, MiB.
    pub growth_mib: Option<f64>,
}

/// xorshift64*: deterministic, cheap, the same sequence for both engines.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn sqlerr(e: rusqlite::Error) -> Error {
    Error::Sqlite(e)
}

fn open_engine(engine: Engine, tde: &Tde, path: &Path) -> Result<Connection> {
    match engine {
        Engine::Tde => tde.open(path),
        Engine::Plain => Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_URI,
        )
        .map_err(sqlerr),
    }
}

/// VmRSS and VmHWM of this process in MiB (Linux).
fn rss_mib() -> Option<(f64, f64)> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<f64> {
        let l = s.lines().find(|l| l.starts_with(name))?;
        let kb: f64 = l.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Reset the peak RSS to the current RSS (Linux `clear_refs` 5).
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Remove a database and its journal, WAL and shared-memory files.
pub fn remove_db(path: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal", "-tdewal", "-tdejournal"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

fn rate(n: usize, (wall, cpu): (f64, f64)) -> (f64, f64) {
    (n as f64 / wall, n as f64 / cpu)
}

/// Run the SQL workload on a fresh database at `path` (removed before and after), opened by
/// `open`: `rows` inserts of 100-byte blobs in 1,000-row transactions, `rows` random point
/// lookups by rowid, one full scan; `journal_mode`, `synchronous` as given, `cache_size` 2 MiB.
/// The same code drives every engine (plain SQLite, `tde`, and others in `bench-sqlcipher/`).
pub fn run_workload(
    open: &dyn Fn(&Path) -> Result<Connection>,
    path: &Path,
    journal: &str,
    sync: &str,
    rows: usize,
) -> Result<WorkloadRun> {
    remove_db(path);
    let before = if reset_peak_rss() { rss_mib().map(|r| r.0) } else { None };
    let conn = open(path)?;
    conn.execute_batch(&format!(
        "PRAGMA journal_mode={journal}; PRAGMA synchronous={sync}; PRAGMA cache_size=-2048;
         CREATE TABLE t(id INTEGER PRIMARY KEY, b BLOB NOT NULL);"
    ))
    .map_err(sqlerr)?;

    // Inserts: 100-byte blobs, 1,000 rows per transaction.
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut blob = [0u8; 100];
    let t = Timer::start();
    {
        let mut ins = conn.prepare("INSERT INTO t(id, b) VALUES(?1, ?2)").map_err(sqlerr)?;
        let mut id = 0i64;
        while (id as usize) < rows {
            conn.execute_batch("BEGIN").map_err(sqlerr)?;
            for _ in 0..1000.min(rows - id as usize) {
                id += 1;
                for c in blob.chunks_mut(8) {
                    c.copy_from_slice(&rng.next().to_le_bytes()[..c.len()]);
                }
                ins.execute(rusqlite::params![id, &blob[..]]).map_err(sqlerr)?;
            }
            conn.execute_batch("COMMIT").map_err(sqlerr)?;
        }
    }
    let insert = rate(rows, t.stop());

    // Random point lookups by rowid.
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let mut check = 0usize;
    let t = Timer::start();
    {
        let mut sel = conn.prepare("SELECT b FROM t WHERE id = ?1").map_err(sqlerr)?;
        for _ in 0..rows {
            let id = (rng.next() % rows as u64) as i64 + 1;
            check += sel
                .query_row([id], |r| r.get_ref(0).map(|v| v.as_blob().map(|b| b.len()).unwrap_or(0)))
                .map_err(sqlerr)?;
        }
    }
    let lookup = rate(rows, t.stop());

    // One full scan.
    let t = Timer::start();
    let (n, total): (i64, i64) =
        conn.query_row("SELECT count(*), sum(length(b)) FROM t", [], |r| Ok((r.get(0)?, r.get(1)?))).map_err(sqlerr)?;
    let scan = rate(n as usize, t.stop());
    if n as usize != rows || total as usize != rows * 100 || check != rows * 100 {
        return Err(Error::Config(format!("benchmark workload returned wrong results ({n} rows, {total} bytes)")));
    }
    let after = rss_mib();
    drop(conn);
    remove_db(path);
    let peak = before.and(after.map(|r| r.1));
    Ok(WorkloadRun { insert, lookup, scan, peak_mib: peak, growth_mib: before.zip(peak).map(|(b, p)| p - b) })
}

fn sql_section(opts: &Options, tde: &Tde, dir: &Path) -> Result<(Vec<SqlRow>, Option<MemoryRow>)> {
    let rows = opts.rows();
    let rounds = opts.rounds();
    let configs = [("WAL", "OFF"), ("DELETE", "OFF"), ("WAL", "FULL"), ("DELETE", "FULL")];
    let mut out = Vec::new();
    let (mut mem_plain, mut mem_tde, mut grow_plain, mut grow_tde, mut mem_ratio) =
        (vec![], vec![], vec![], vec![], vec![]);
    for (journal, sync) in configs {
        let mut res: [Vec<WorkloadRun>; 2] = [Vec::new(), Vec::new()];
        for round in 0..rounds {
            progress(opts, &format!("SQL journal_mode={journal} synchronous={sync}, round {}/{rounds}", round + 1));
            // Alternate which engine goes first, so drift in machine load cancels out.
            let order = if round % 2 == 0 { [Engine::Plain, Engine::Tde] } else { [Engine::Tde, Engine::Plain] };
            for engine in order {
                let path = dir.join(if engine == Engine::Tde { "bench-tde.db" } else { "bench-plain.db" });
                let r = run_workload(&|p: &Path| open_engine(engine, tde, p), &path, journal, sync, rows)?;
                res[(engine == Engine::Tde) as usize].push(r);
            }
        }
        let [plain, enc] = &res;
        for (metric, unit, get) in [
            ("insert", "rows/s", (|r: &WorkloadRun| r.insert) as fn(&WorkloadRun) -> (f64, f64)),
            ("lookup", "lookups/s", |r: &WorkloadRun| r.lookup),
            ("scan", "rows/s", |r: &WorkloadRun| r.scan),
        ] {
            let p: Vec<(f64, f64)> = plain.iter().map(get).collect();
            let e: Vec<(f64, f64)> = enc.iter().map(get).collect();
            let col =
                |v: &[(f64, f64)], cpu: bool| -> Vec<f64> { v.iter().map(|x| if cpu { x.1 } else { x.0 }).collect() };
            let ratio = |cpu: bool| -> Vec<f64> { col(&p, cpu).iter().zip(col(&e, cpu)).map(|(p, e)| e / p).collect() };
            out.push(SqlRow {
                journal_mode: journal.into(),
                synchronous: sync.into(),
                metric: metric.into(),
                unit: unit.into(),
                plain: Stats::of(&col(&p, false)),
                tde: Stats::of(&col(&e, false)),
                ratio: Stats::of(&ratio(false)),
                plain_cpu: Stats::of(&col(&p, true)),
                tde_cpu: Stats::of(&col(&e, true)),
                ratio_cpu: Stats::of(&ratio(true)),
            });
        }
        for (p, e) in plain.iter().zip(enc) {
            if let (Some(pp), Some(ep), Some(pg), Some(eg)) = (p.peak_mib, e.peak_mib, p.growth_mib, e.growth_mib) {
                mem_plain.push(pp);
                mem_tde.push(ep);
                grow_plain.push(pg);
                grow_tde.push(eg);
                mem_ratio.push(ep / pp);
            }
        }
    }
    let memory = (!mem_ratio.is_empty()).then(|| MemoryRow {
        plain_peak_mib: Stats::of(&mem_plain),
        tde_peak_mib: Stats::of(&mem_tde),
        plain_growth_mib: Stats::of(&grow_plain),
        tde_growth_mib: Stats::of(&grow_tde),
        ratio: Stats::of(&mem_ratio),
    });
    Ok((out, memory))
}

// ---------------------------------------------------------------------------------------------
// Open cost

fn open_section(opts: &Options, tde: &Tde, dir: &Path) -> Result<OpenCost> {
    progress(opts, "open cost");
    let n = if opts.quick { 30 } else { 100 };
    let plain_path = dir.join("open-plain.db");
    let tde_path = dir.join("open-tde.db");
    for (engine, path) in [(Engine::Plain, &plain_path), (Engine::Tde, &tde_path)] {
        remove_db(path);
        let c = open_engine(engine, tde, path)?;
        c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, b BLOB); INSERT INTO t VALUES(1, x'00');")
            .map_err(sqlerr)?;
    }
    time_opens(&|| open_engine(Engine::Tde, tde, &tde_path), 1, &mut || {})?; // warms the key cache
    let plain = time_opens(&|| open_engine(Engine::Plain, tde, &plain_path), n, &mut || {})?;
    let calls = || tde.context().cache.metrics().kms_calls;
    let k0 = calls();
    let warm = time_opens(&|| open_engine(Engine::Tde, tde, &tde_path), n, &mut || {})?;
    let k1 = calls();
    let cold = time_opens(&|| open_engine(Engine::Tde, tde, &tde_path), n, &mut || tde.context().cache.clear())?;
    let k2 = calls();
    remove_db(&plain_path);
    remove_db(&tde_path);
    Ok(OpenCost {
        plain_ms: plain,
        tde_warm_ms: warm,
        tde_cold_ms: cold,
        warm_kms_calls: k1 - k0,
        cold_kms_calls: k2 - k1,
        opens: n,
    })
}

/// Time `n` opens, each followed by a first query (`SELECT count(*) FROM sqlite_schema`),
/// in milliseconds; `before` runs untimed before each open (e.g. to clear the key cache).
pub fn time_opens(open: &dyn Fn() -> Result<Connection>, n: usize, before: &mut dyn FnMut()) -> Result<Stats> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        before();
        let t = Instant::now();
        let c = open()?;
        let _: i64 = c.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0)).map_err(sqlerr)?;
        v.push(t.elapsed().as_secs_f64() * 1e3);
        drop(c);
    }
    Ok(Stats::of(&v))
}

// ---------------------------------------------------------------------------------------------
// Output

impl Report {
    fn cipher_row(&self, size: usize) -> Option<&CipherRow> {
        self.cipher.iter().find(|r| r.page_size == size)
    }

    /// Worst median ratio of each SQL metric over the configurations (CPU time or wall).
    fn worst_ratio(&self, metric: &str, cpu: bool) -> Option<(f64, String)> {
        self.sql
            .iter()
            .filter(|r| r.metric == metric)
            .map(|r| {
                (if cpu { r.ratio_cpu.median } else { r.ratio.median }, format!("{}/{}", r.journal_mode, r.synchronous))
            })
            .min_by(|a, b| a.0.total_cmp(&b.0))
    }

    fn make_summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(c) = self.cipher_row(4096) {
            let mut s = format!(
                "cipher@4K enc {:.2} dec {:.2} GB/s = {:.2}x/{:.2}x raw AES",
                c.encrypt.median, c.decrypt.median, c.encrypt_vs_ceiling.median, c.decrypt_vs_ceiling.median
            );
            if let (Some(oe), Some(od)) = (c.openssl_encrypt, c.openssl_decrypt) {
                s.push_str(&format!(", {:.2}x/{:.2}x openssl", c.encrypt.median / oe, c.decrypt.median / od));
            }
            parts.push(s);
        }
        if !self.sql.is_empty() {
            for cpu in [true, false] {
                let m: Vec<String> = ["insert", "lookup", "scan"]
                    .iter()
                    .filter_map(|m| self.worst_ratio(m, cpu).map(|(r, cfg)| format!("{m} {r:.2} ({cfg})")))
                    .collect();
                parts.push(format!("SQL tde/plain worst ({}): {}", if cpu { "cpu" } else { "wall" }, m.join(", ")));
            }
        }
        if self.mixed.len() > 1 {
            let totals: Vec<String> = self
                .mixed
                .iter()
                .filter(|r| r.class == "total")
                .map(|r| format!("{} {:.2}", r.journal_mode, r.ratio_cpu.median))
                .collect();
            let worst = self
                .mixed
                .iter()
                .filter(|r| r.class != "total")
                .min_by(|a, b| a.ratio_cpu.median.total_cmp(&b.ratio_cpu.median))
                .map(|r| format!("{} ({}) {:.2}", r.class, r.journal_mode, r.ratio_cpu.median))
                .unwrap_or_default();
            parts.push(format!("mixed tde/plain (cpu): {}, worst {worst}", totals.join(" ")));
        }
        if let Some(o) = &self.open {
            parts.push(format!("open warm {:.2} ms cold {:.2} ms", o.tde_warm_ms.median, o.tde_cold_ms.median));
        }
        if let Some(m) = &self.memory {
            parts.push(format!("peak RSS {:.2}x", m.ratio.median));
        }
        format!("summary: {}", parts.join("; "))
    }

    /// The human-readable report; its last line is [`Report::summary`].
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let m = &self.machine;
        let _ = writeln!(
            s,
            "sqlite-tde bench{}: {} ({} cores, load {}), cipher backend {}, SQLite {}{}",
            if self.quick { " --quick" } else { "" },
            m.cpu,
            m.cores,
            m.load_average,
            m.cipher_backend,
            m.sqlite_version,
            m.openssl_version.as_deref().map(|v| format!(", {v}")).unwrap_or_default()
        );
        let _ = writeln!(s, "values: median [min-max] over interleaved rounds; ratios are per round");
        if !self.cipher.is_empty() {
            let _ = writeln!(
                s,
                "\npage cipher AES-256-XTS, one core, GB/s of thread CPU time (decrypt out of place, as page reads)"
            );
            let _ = writeln!(
                s,
                "{:>6}  {:<20} {:<20} {:<20} {:<20} {:>8} {:>8} {:>8} {:>9}",
                "page",
                "encrypt",
                "decrypt",
                "raw AES (ceiling)",
                "aes crate raw",
                "enc/raw",
                "dec/raw",
                "enc/crate",
                "openssl e/d"
            );
            for c in &self.cipher {
                let ossl = match (c.openssl_encrypt, c.openssl_decrypt) {
                    (Some(e), Some(d)) => format!("{e:.2}/{d:.2}"),
                    _ => "-".into(),
                };
                let _ = writeln!(
                    s,
                    "{:>6}  {:<20} {:<20} {:<20} {:<20} {:>8.2} {:>8.2} {:>8.2} {:>9}",
                    c.page_size,
                    c.encrypt.fmt(2),
                    c.decrypt.fmt(2),
                    c.aes_ceiling.fmt(2),
                    c.aes_crate_raw.fmt(2),
                    c.encrypt_vs_ceiling.median,
                    c.decrypt_vs_ceiling.median,
                    c.encrypt_vs_aes_crate.median,
                    ossl
                );
            }
        }
        if !self.sql.is_empty() {
            let _ = writeln!(
                s,
                "\nSQL workload: {} rows of 100-byte blobs (1,000-row transactions), {} random lookups, 1 scan; cache_size 2 MiB; {} rounds",
                self.rows, self.rows, self.rounds
            );
            let _ = writeln!(
                s,
                "rates per wall second; tde/plain per round, by wall time and by the thread's CPU time (steadier when the machine is shared; excludes fsync waits)"
            );
            let _ = writeln!(
                s,
                "{:<8} {:<5} {:<7} {:>28} {:>28} {:>20} {:>20}",
                "journal", "sync", "metric", "plain", "tde", "tde/plain wall", "tde/plain cpu"
            );
            for r in &self.sql {
                let _ = writeln!(
                    s,
                    "{:<8} {:<5} {:<7} {:>28} {:>28} {:>20} {:>20}",
                    r.journal_mode,
                    r.synchronous,
                    r.metric,
                    format!("{} {}", r.plain.fmt(0), short_unit(&r.unit)),
                    format!("{} {}", r.tde.fmt(0), short_unit(&r.unit)),
                    r.ratio.fmt(3),
                    r.ratio_cpu.fmt(3)
                );
            }
        }
        if let Some(mm) = &self.memory {
            let _ = writeln!(
                s,
                "\npeak RSS of a SQL run, MiB: plain {} tde {} (growth over start: plain {} tde {}); tde/plain {}",
                mm.plain_peak_mib.fmt(1),
                mm.tde_peak_mib.fmt(1),
                mm.plain_growth_mib.fmt(1),
                mm.tde_growth_mib.fmt(1),
                mm.ratio.fmt(3)
            );
        }
        if !self.mixed.is_empty() {
            let _ = writeln!(
                s,
                "\nmixed workload (speedtest1 in miniature, synchronous=OFF), ms per run; tde throughput / plain per round"
            );
            let _ = writeln!(
                s,
                "{:<8} {:<42} {:>24} {:>24} {:>20} {:>20}",
                "journal", "class", "plain ms", "tde ms", "tde/plain wall", "tde/plain cpu"
            );
            for r in &self.mixed {
                let _ = writeln!(
                    s,
                    "{:<8} {:<42} {:>24} {:>24} {:>20} {:>20}",
                    r.journal_mode,
                    r.class,
                    r.plain_ms.fmt(1),
                    r.tde_ms.fmt(1),
                    r.ratio.fmt(3),
                    r.ratio_cpu.fmt(3)
                );
            }
        }
        if let Some(o) = &self.open {
            let _ = writeln!(
                s,
                "\nopen + first query, ms ({} opens each): plain {}; tde warm key cache {} ({} KMS calls); tde cold {} ({} KMS calls)",
                o.opens,
                o.plain_ms.fmt(3),
                o.tde_warm_ms.fmt(3),
                o.warm_kms_calls,
                o.tde_cold_ms.fmt(3),
                o.cold_kms_calls
            );
        }
        let _ = writeln!(s, "\nelapsed {:.1} s", self.elapsed_secs);
        s.push_str(&self.summary);
        s.push('\n');
        s
    }

    /// The machine-readable report.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

fn short_unit(u: &str) -> &str {
    match u {
        "lookups/s" => "/s",
        "rows/s" => "/s",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_median_and_range() {
        let s = Stats::of(&[3.0, 1.0, 2.0, 10.0]);
        assert_eq!((s.median, s.min, s.max, s.samples), (2.5, 1.0, 10.0, 4));
        assert_eq!(Stats::of(&[]).samples, 0);
    }

    /// A tiny run of every section (correctness of the workload, not speed).
    #[test]
    fn tiny_run_produces_a_report() {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            quick: true,
            dir: Some(dir.path().to_path_buf()),
            progress: false,
            cipher: false,
            sql: true,
            mixed: true,
            open: true,
            openssl: false,
            rows: Some(2_000),
            rounds: Some(1),
        };
        let r = run(&opts).unwrap();
        assert_eq!(r.sql.len(), 12);
        assert!(r.sql.iter().all(|r| r.ratio.median > 0.0 && r.ratio_cpu.median > 0.0));
        assert_eq!(r.mixed.len(), 20, "10 classes x 2 journal modes");
        assert!(r.mixed.iter().all(|r| r.ratio.median > 0.0 && r.ratio_cpu.median > 0.0));
        let o = r.open.as_ref().unwrap();
        assert!(o.cold_kms_calls as usize >= o.opens, "cold opens unwrap through the KMS");
        let table = r.table();
        assert!(table.trim_end().lines().last().unwrap().starts_with("summary: "));
        assert!(r.to_json()["sql"].is_array());
    }
}

//! The key cache through the VFS: hits without KMS calls, TTL, KMS outages (cached databases
//! keep opening until the TTL, cold opens fail fast, a hanging KMS never hangs an open),
//! revocation (new opens and page I/O of open connections fail within the documented
//! bound), metrics in `PRAGMA tde_status`, and the warm/cold open benchmark.
//!
//! The KMS is a test-only wrapper around the embedded one that can be switched to "disabled",
//! "unavailable" or "hanging". (The embedded KMS's own disable is exercised through the CLI
//! in tests/rotation_rewrap.rs when the keystore supports it.)

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlite_tde::format::KeyRef;
use sqlite_tde::keycache::{CacheConfig, EpochProbe};
use sqlite_tde::kms::local::LocalKms;
use sqlite_tde::kms::{EncryptionContext, GeneratedDataKey, Kms, KmsError};
use sqlite_tde::{Error, OpenOptions, Tde};

const OK: u8 = 0;
const DISABLED: u8 = 1;
const UNAVAILABLE: u8 = 2;
const HANGING: u8 = 3;

struct Switch {
    inner: LocalKms,
    mode: AtomicU8,
    calls: AtomicU64,
    epoch: AtomicU64,
}

/// A KMS that can be switched off.
#[derive(Clone)]
struct SwitchKms(Arc<Switch>);

impl SwitchKms {
    fn new(dir: &Path) -> SwitchKms {
        SwitchKms(Arc::new(Switch {
            inner: LocalKms::new(dir),
            mode: AtomicU8::new(OK),
            calls: AtomicU64::new(0),
            epoch: AtomicU64::new(1),
        }))
    }
    fn set(&self, mode: u8) {
        self.0.mode.store(mode, Ordering::SeqCst);
        // What the embedded KMS's keystore file change looks like to the epoch probe.
        self.0.epoch.fetch_add(1, Ordering::SeqCst);
    }
    fn calls(&self) -> u64 {
        self.0.calls.load(Ordering::SeqCst)
    }
    fn gate(&self, key: &str) -> Result<(), KmsError> {
        self.0.calls.fetch_add(1, Ordering::SeqCst);
        match self.0.mode.load(Ordering::SeqCst) {
            DISABLED => Err(KmsError::Disabled(key.to_string())),
            UNAVAILABLE => Err(KmsError::Unavailable("connection refused".into())),
            HANGING => {
                std::thread::sleep(Duration::from_secs(30));
                Err(KmsError::Unavailable("too late".into()))
            }
            _ => Ok(()),
        }
    }
}

impl Kms for SwitchKms {
    fn provider(&self) -> &str {
        "local"
    }
    fn generate_data_key(&self, key: &str, context: &EncryptionContext) -> Result<GeneratedDataKey, KmsError> {
        self.gate(key)?;
        self.0.inner.generate_data_key(key, context)
    }
    fn decrypt_data_key(
        &self,
        key_ref: &KeyRef,
        wrapped: &[u8],
        context: &EncryptionContext,
    ) -> Result<sqlite_tde::kms::PlaintextDataKey, KmsError> {
        self.gate(&key_ref.uri)?;
        self.0.inner.decrypt_data_key(key_ref, wrapped, context)
    }
    fn rewrap_data_key(
        &self,
        key_ref: &KeyRef,
        wrapped: &[u8],
        context: &EncryptionContext,
        target: Option<&str>,
    ) -> Result<(Vec<u8>, KeyRef), KmsError> {
        self.gate(&key_ref.uri)?;
        self.0.inner.rewrap_data_key(key_ref, wrapped, context, target)
    }
}

static N: AtomicU64 = AtomicU64::new(0);

struct Setup {
    dir: tempfile::TempDir,
    kms: SwitchKms,
    tde: Tde,
}

fn setup(cfg: CacheConfig, with_probe: bool) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let kms = SwitchKms::new(&dir.path().join("ks"));
    let mut b = Tde::builder()
        .vfs_name(format!("tde-cache-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst)))
        .cache(cfg);
    if with_probe {
        let k = kms.clone();
        b = b.epoch_probe(EpochProbe::new(move || k.0.epoch.load(Ordering::SeqCst)));
    }
    let tde = b.register_with_kms(Arc::new(kms.clone())).unwrap();
    Setup { dir, kms, tde }
}

fn existing() -> OpenOptions {
    OpenOptions { key: None, read_only: false, must_exist: true, ..Default::default() }
}

fn create(s: &Setup, name: &str) -> std::path::PathBuf {
    let p = s.dir.path().join(name);
    let c = s.tde.open(&p).unwrap();
    c.execute_batch("PRAGMA journal_mode=DELETE; CREATE TABLE t(x); INSERT INTO t VALUES(1),(2),(3);").unwrap();
    p
}

fn status(c: &rusqlite::Connection) -> serde_json::Value {
    let s: String = c.query_row("PRAGMA tde_status", [], |r| r.get(0)).unwrap();
    serde_json::from_str(&s).unwrap()
}

fn count(c: &rusqlite::Connection) -> rusqlite::Result<i64> {
    c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
}

#[test]
fn hits_need_no_kms_call_and_metrics_show_it() {
    let s = setup(CacheConfig::default(), true);
    let db = create(&s, "a.db");
    let before = s.kms.calls();
    let c = s.tde.open_with(&db, &existing()).unwrap();
    assert_eq!(count(&c).unwrap(), 3);
    assert_eq!(s.kms.calls(), before, "a cached key needs no KMS call");
    let st = status(&c);
    let m = &st["cache"];
    assert!(m["hits"].as_u64().unwrap() >= 1, "{st}");
    for k in ["hits", "misses", "evictions", "kms_calls", "revalidations", "stale_served", "revoked", "entries"] {
        assert!(m[k].is_u64(), "metric {k} missing: {st}");
    }
    assert_eq!(st["cache_config"]["ttl_ms"], 300_000);
    assert_eq!(st["cache_config"]["revalidate_after_ms"], 60_000);
}

#[test]
fn outage_cached_keep_opening_until_ttl_cold_fail_fast_never_hang() {
    let cfg = CacheConfig {
        ttl: Duration::from_millis(1500),
        revalidate_after: Duration::from_millis(200),
        check_interval: Duration::from_millis(50),
        kms_timeout: Duration::from_millis(400),
        outage_retry: Duration::from_millis(100),
        ..CacheConfig::default()
    };
    let s = setup(cfg, false);
    let warm = create(&s, "warm.db");
    let cold = create(&s, "cold.db");
    s.tde.context().cache.clear();
    let open_conn = s.tde.open_with(&warm, &existing()).unwrap(); // warms the cache again
    let warmed_at = Instant::now();
    s.kms.set(UNAVAILABLE);

    // Cold: fails at once with a clear error.
    let t = Instant::now();
    let e = s.tde.open_with(&cold, &existing()).unwrap_err();
    assert!(matches!(e, Error::Kms { source: KmsError::Unavailable(_), .. }), "{e}");
    assert!(e.to_string().contains("KMS unavailable"), "{e}");
    assert!(t.elapsed() < Duration::from_millis(300));

    // Cached: keeps opening (and the open connection keeps working) within the TTL.
    std::thread::sleep(Duration::from_millis(300));
    let c = s.tde.open_with(&warm, &existing()).unwrap();
    assert_eq!(count(&c).unwrap(), 3);
    assert_eq!(count(&open_conn).unwrap(), 3);
    assert!(status(&c)["cache"]["stale_served"].as_u64().unwrap() >= 1);
    drop(c);

    // Hanging KMS: a cold open gives up after kms_timeout.
    s.kms.set(HANGING);
    let t = Instant::now();
    let e = s.tde.open_with(&cold, &existing()).unwrap_err();
    let waited = t.elapsed();
    assert!(e.to_string().contains("no answer from the KMS within 400 ms"), "{e}");
    assert!(waited >= Duration::from_millis(350) && waited < Duration::from_millis(1500), "waited {waited:?}");

    // Past the TTL: cached keys are no longer served; opens and page I/O fail clearly.
    s.kms.set(UNAVAILABLE);
    while warmed_at.elapsed() < Duration::from_millis(1600) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let e = s.tde.open_with(&warm, &existing()).unwrap_err();
    assert!(e.to_string().contains("KMS unavailable"), "{e}");
    let e = count(&open_conn).unwrap_err();
    assert_eq!(e.sqlite_error().map(|x| x.extended_code), Some(23), "SQLITE_AUTH expected: {e}");
    let detail = sqlite_tde::error::take_last_open_error().map(|e| e.to_string()).unwrap_or_default();
    assert!(detail.contains("KMS unavailable"), "{detail}");

    // Back: everything works again without reopening.
    s.kms.set(OK);
    std::thread::sleep(Duration::from_millis(80));
    assert_eq!(count(&open_conn).unwrap(), 3);
    assert!(s.tde.open_with(&cold, &existing()).is_ok());
}

/// Revocation seen by a cache without a revocation epoch (a remote KMS): within
/// `revalidate_after` for new opens, `revalidate_after + check_interval` for page I/O.
#[test]
fn revocation_of_a_remote_kms_within_the_revalidation_interval() {
    let cfg = CacheConfig {
        revalidate_after: Duration::from_millis(600),
        check_interval: Duration::from_millis(100),
        ..CacheConfig::default()
    };
    let s = setup(cfg, false);
    let db = create(&s, "r.db");
    let conn = s.tde.open_with(&db, &existing()).unwrap();
    assert_eq!(count(&conn).unwrap(), 3);
    let t = Instant::now();
    s.kms.set(DISABLED);
    // Until the entry is due for revalidation, the cache alone answers.
    let mut failed_open = None;
    let mut failed_io = None;
    while t.elapsed() < Duration::from_secs(3) && (failed_open.is_none() || failed_io.is_none()) {
        if failed_open.is_none() && s.tde.open_with(&db, &existing()).is_err() {
            failed_open = Some(t.elapsed());
        }
        if failed_io.is_none() {
            if let Err(e) = count(&conn) {
                assert_eq!(e.sqlite_error().map(|x| x.extended_code), Some(23), "SQLITE_AUTH expected: {e}");
                failed_io = Some(t.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (fo, fi) = (failed_open.expect("new opens fail"), failed_io.expect("page I/O fails"));
    eprintln!("remote revocation: new opens fail after {fo:?}, page I/O after {fi:?} (bound 600 ms + 100 ms)");
    assert!(fo <= Duration::from_millis(800), "{fo:?}");
    assert!(fi <= Duration::from_millis(900), "{fi:?}");
    let st = status(&conn);
    assert_eq!(st["state"], "blocked", "{st}");
    assert!(st["blocked"].as_str().unwrap().contains("disabled"), "{st}");
}

/// Revocation with a revocation epoch (the embedded KMS: its keystore file changes): new
/// opens fail at once; page I/O of open connections within `check_interval`. The in-process
/// notification (`KeyCache::invalidate_key`, used by the KMS's key events) too.
#[test]
fn revocation_of_the_embedded_kms_at_once() {
    let cfg = CacheConfig { check_interval: Duration::from_millis(100), ..CacheConfig::default() };
    let s = setup(cfg, true);
    let db = create(&s, "e.db");
    let conn = s.tde.open_with(&db, &existing()).unwrap();
    assert_eq!(count(&conn).unwrap(), 3);
    s.kms.set(DISABLED);
    let t = Instant::now();
    let e = s.tde.open_with(&db, &existing()).unwrap_err();
    assert!(matches!(e, Error::Kms { source: KmsError::Disabled(_), .. }), "{e}");
    let mut failed = None;
    while t.elapsed() < Duration::from_secs(2) {
        if count(&conn).is_err() {
            failed = Some(t.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let f = failed.expect("page I/O fails");
    eprintln!("embedded revocation: new open failed at once, page I/O after {f:?} (bound 100 ms)");
    assert!(f <= Duration::from_millis(250), "{f:?}");
    // Re-enabled: works again.
    s.kms.set(OK);
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(count(&conn).unwrap(), 3);

    // In-process invalidation by key URI.
    let key = status(&conn)["key"].as_str().unwrap().to_string();
    assert_eq!(s.tde.context().cache.invalidate_key(&key), 1);
    s.kms.set(DISABLED);
    assert!(s.tde.open_with(&db, &existing()).is_err());
}

/// Benchmark: open + first query with a warm cache vs a cold one, and KMS calls per open.
#[test]
fn benchmark_warm_vs_cold_open() {
    let s = setup(CacheConfig::default(), true);
    let db = create(&s, "bench.db");
    let rounds = 40;
    let mut cold = Duration::ZERO;
    let calls0 = s.kms.calls();
    for _ in 0..rounds {
        s.tde.context().cache.clear();
        let t = Instant::now();
        let c = s.tde.open_with(&db, &existing()).unwrap();
        count(&c).unwrap();
        cold += t.elapsed();
    }
    let cold_calls = s.kms.calls() - calls0;
    let mut warm = Duration::ZERO;
    let calls1 = s.kms.calls();
    for _ in 0..rounds {
        let t = Instant::now();
        let c = s.tde.open_with(&db, &existing()).unwrap();
        count(&c).unwrap();
        warm += t.elapsed();
    }
    let warm_calls = s.kms.calls() - calls1;
    eprintln!(
        "open + first query: cold {:.3} ms ({:.1} KMS calls/open), warm {:.3} ms ({:.1} KMS calls/open)",
        cold.as_secs_f64() * 1000.0 / rounds as f64,
        cold_calls as f64 / rounds as f64,
        warm.as_secs_f64() * 1000.0 / rounds as f64,
        warm_calls as f64 / rounds as f64
    );
    assert_eq!(warm_calls, 0, "a cache hit makes no KMS call");
    assert_eq!(cold_calls, rounds as u64, "one KMS call per cold open");
}

/// The embedded KMS itself, across processes: `sqlite-tde kms disable` in another process
/// makes new opens here fail at once (the keystore file changed: revocation epoch) and page
/// I/O of an open connection within `check_interval`; `kms enable` undoes it. Skipped when the
/// CLI has no `kms disable`.
#[test]
fn embedded_kms_disable_from_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let ks = dir.path().join("ks");
    let cli = |args: &[&str]| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_sqlite-tde"));
        for v in ["SQLITE_TDE_KEYSTORE", "SQLITE_TDE_KMS", "SQLITE_TDE_ROOT_KEY_FILE", "SQLITE_TDE_PASSPHRASE"] {
            c.env_remove(v);
        }
        c.arg("--keystore").arg(&ks).args(args).output().unwrap()
    };
    assert!(cli(&["kms", "create-key", "--alias", "alias/rev"]).status.success());
    let cfg = CacheConfig { check_interval: Duration::from_millis(100), ..CacheConfig::default() };
    let tde = Tde::builder()
        .keystore(&ks)
        .vfs_name(format!("tde-cache-local-{}", std::process::id()))
        .cache(cfg)
        .register()
        .unwrap();
    let db = dir.path().join("l.db");
    let c = tde.open_with(&db, &OpenOptions { key: Some("alias/rev".into()), ..Default::default() }).unwrap();
    c.execute_batch("PRAGMA journal_mode=DELETE; CREATE TABLE t(x); INSERT INTO t VALUES(1),(2),(3);").unwrap();
    let out = cli(&["kms", "disable", "alias/rev"]);
    if !out.status.success() {
        eprintln!("no `kms disable` in this build: {}", String::from_utf8_lossy(&out.stderr));
        return;
    }
    let t = Instant::now();
    let e = tde.open_with(&db, &existing()).unwrap_err();
    assert!(e.to_string().contains("disabled"), "{e}");
    let mut failed = None;
    while t.elapsed() < Duration::from_secs(3) {
        if count(&c).is_err() {
            failed = Some(t.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let f = failed.expect("page I/O fails after the CMK is disabled");
    eprintln!("embedded KMS disabled by another process: new open failed at once, page I/O after {f:?}");
    assert!(f <= Duration::from_millis(400), "{f:?}");
    assert!(cli(&["kms", "enable", "alias/rev"]).status.success());
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(count(&c).unwrap(), 3);
    assert!(tde.open_with(&db, &existing()).is_ok());
}

/// More open databases than `max_entries`: entries in use by open connections are never
/// evicted, so reopening any of them costs no KMS call (before, the LRU thrashed: a KMS Decrypt
/// and an fsynced audit record per open, every pass).
#[test]
fn more_open_databases_than_cache_entries_do_not_thrash() {
    let cfg = CacheConfig { max_entries: 8, ..CacheConfig::default() };
    let s = setup(cfg, false);
    let paths: Vec<_> = (0..12).map(|i| create(&s, &format!("many-{i}.db"))).collect();
    let held: Vec<_> = paths.iter().map(|p| s.tde.open_with(p, &existing()).unwrap()).collect();
    let before = s.kms.calls();
    for _pass in 0..2 {
        for p in &paths {
            let c = s.tde.open_with(p, &existing()).unwrap();
            assert_eq!(count(&c).unwrap(), 3);
        }
    }
    assert_eq!(s.kms.calls() - before, 0, "reopening open databases went to the KMS");
    let m = s.tde.context().cache.metrics();
    assert!(m.entries >= 12, "entries in use were evicted: {m:?}");
    // Once they are closed, the limit applies again at the next insert.
    drop(held);
    create(&s, "one-more.db");
    let m = s.tde.context().cache.metrics();
    assert!(m.entries <= 8, "unused entries beyond max_entries were kept: {m:?}");
}

/// `forget_on_last_close`: the key leaves the cache (and memory) when the last connection to
/// its database closes, not at the TTL; the next open is cold (one KMS call). Without it
/// (control), the closed database's key stays warm.
#[test]
fn forget_on_last_close_drops_the_key_when_the_last_connection_closes() {
    for forget in [false, true] {
        let s = setup(CacheConfig { forget_on_last_close: forget, ..CacheConfig::default() }, false);
        let db = create(&s, "f.db");
        s.tde.context().cache.clear();
        let a = s.tde.open_with(&db, &existing()).unwrap();
        let b = s.tde.open_with(&db, &existing()).unwrap();
        assert_eq!((count(&a).unwrap(), count(&b).unwrap()), (3, 3));
        assert_eq!(s.tde.context().cache.metrics().entries, 1);
        drop(a);
        assert_eq!(s.tde.context().cache.metrics().entries, 1, "forget={forget}: dropped while still in use");
        drop(b);
        let left = s.tde.context().cache.metrics().entries;
        let before = s.kms.calls();
        let c = s.tde.open_with(&db, &existing()).unwrap();
        assert_eq!(count(&c).unwrap(), 3);
        if forget {
            assert_eq!(left, 0, "the key stayed cached after the last close");
            assert_eq!(s.kms.calls() - before, 1, "the reopen must be cold");
        } else {
            assert_eq!(left, 1, "control: the key is kept warm");
            assert_eq!(s.kms.calls() - before, 0, "control: the reopen is warm");
        }
    }
}

//! Shared helpers of the KMS tests (tests/kms_*.rs): a temporary keystore, the embedded KMS
//! on a manual clock acting for a chosen principal, and VFS registrations over it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use sqlite_tde::kms::clock::{ManualClock, DAY};
use sqlite_tde::kms::local::LocalKms;
use sqlite_tde::kms::KmsError;
use sqlite_tde::{Error, OpenOptions, Tde};

/// A fixed starting time (2025-01-01T00:00:00Z) so windows are easy to reason about.
pub const T0: u64 = 1_735_689_600;

pub struct KmsEnv {
    pub dir: tempfile::TempDir,
    pub ks: PathBuf,
    pub clock: Arc<ManualClock>,
}

static N: AtomicUsize = AtomicUsize::new(0);

impl KmsEnv {
    pub fn new() -> KmsEnv {
        let dir = tempfile::tempdir().unwrap();
        let ks = dir.path().join("keystore");
        KmsEnv { dir, ks, clock: Arc::new(ManualClock::new(T0)) }
    }

    /// The embedded KMS acting for `principal`, on this environment's clock.
    pub fn kms(&self, principal: &str) -> LocalKms {
        LocalKms::new(&self.ks).with_principal(principal).with_clock(self.clock.clone())
    }

    /// A VFS registration whose KMS acts for `principal`.
    pub fn tde(&self, principal: &str) -> Tde {
        let name = format!("tde-kms-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
        Tde::builder().vfs_name(name).register_with_kms(Arc::new(self.kms(principal))).unwrap()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn advance_days(&self, days: u64) {
        self.clock.advance(days * DAY);
    }
}

/// 32 bytes of BYOK key material, distinct per `seed`, that pass the KMS's weak-material
/// checks (SHA-256 of a label: a constant pattern would be refused).
pub fn test_material(seed: u8) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest([b"sqlite-tde test key material ".as_slice(), &[seed]].concat()).into()
}

/// Create a database under `key` with one row.
pub fn create_db(tde: &Tde, path: &Path, key: &str) {
    let c = tde.open_with(path, &OpenOptions { key: Some(key.into()), ..Default::default() }).unwrap();
    c.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES('hello');").unwrap();
}

/// Open and read the database's row.
pub fn read_db(tde: &Tde, path: &Path) -> Result<String, Error> {
    let c = tde.open_with(path, &OpenOptions { must_exist: true, ..Default::default() })?;
    Ok(c.query_row("SELECT x FROM t", [], |r| r.get(0))?)
}

/// The KMS error behind a failed open.
pub fn kms_error(e: Error) -> KmsError {
    match e {
        Error::Kms { source, .. } => source,
        other => panic!("expected a KMS error, got {other:?}"),
    }
}

/// Key version recorded in a database header.
pub fn header_version(path: &Path) -> (String, u32) {
    let bytes = std::fs::read(path).unwrap();
    let (h, _) = sqlite_tde::format::choose_slot(&bytes[..sqlite_tde::format::HEADER_REGION_LEN]).unwrap();
    (h.key.key_id().to_string(), h.key.version)
}

/// Is SoftHSM2 usable here? With SQLITE_TDE_CI=1 its absence is a failure.
pub fn softhsm_available() -> bool {
    let ok = Path::new(sqlite_tde::kms::hsm::DEFAULT_MODULE).exists()
        && std::process::Command::new("softhsm2-util")
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
    if !ok {
        if std::env::var("SQLITE_TDE_CI").as_deref() == Ok("1") {
            panic!("SoftHSM2 is not installed (run .ci/setup.d/softhsm.sh)");
        }
        eprintln!("SKIP: SoftHSM2 is not installed (apt-get install softhsm2); HSM test not run");
    }
    ok
}

/// The `sqlite-tde` binary on keystore `ks`, with none of the caller's KMS environment.
pub fn cli(ks: &Path) -> assert_cmd::Command {
    assert_cmd::Command::from_std(cli_std(ks))
}

/// The environment that selects a KMS, keystore, principal, key or clock: removed from every
/// CLI child, so the developer's own settings never leak into a test.
pub const KMS_ENV: &[&str] = &[
    "SQLITE_TDE_KEYSTORE",
    "SQLITE_TDE_KMS",
    "SQLITE_TDE_ROOT_KEY_FILE",
    "SQLITE_TDE_PASSPHRASE",
    "SQLITE_TDE_PRINCIPAL",
    "SQLITE_TDE_KMS_TOKEN",
    "SQLITE_TDE_TEST_NOW",
    "SQLITE_TDE_KEY",
];

/// [`cli`] as a plain `std::process::Command` (to run several at once).
pub fn cli_std(ks: &Path) -> std::process::Command {
    let mut c = std::process::Command::new(assert_cmd::cargo::cargo_bin("sqlite-tde"));
    for v in KMS_ENV {
        c.env_remove(v);
    }
    c.arg("--keystore").arg(ks);
    c
}

/// Every regular file directly in `dir`, by name, with its bytes (directory contents to
/// compare before and after an operation that must change nothing).
pub fn dir_files(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_file()).unwrap_or(false) {
                out.insert(e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap());
            }
        }
    }
    out
}

/// Temp files left in `dir` (`.tmp-*`).
/// Names only: killers poll this in a tight loop, so it must not read file contents.
pub fn temp_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.retain(|n| n.starts_with(".tmp-"));
    names.sort();
    names
}

/// A `sqlite-tde kms serve` process, killed when dropped.
pub struct Daemon {
    pub child: std::process::Child,
    pub socket: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `sqlite-tde kms serve` on keystore `ks` (with `extra` arguments) and wait until it listens.
pub fn start_daemon(ks: &Path, socket: &Path, extra: &[&str]) -> Daemon {
    let mut c = std::process::Command::new(assert_cmd::cargo::cargo_bin("sqlite-tde"));
    for v in ["SQLITE_TDE_KEYSTORE", "SQLITE_TDE_KMS", "SQLITE_TDE_PRINCIPAL", "SQLITE_TDE_TEST_NOW"] {
        c.env_remove(v);
    }
    c.arg("--keystore")
        .arg(ks)
        .args(["kms", "serve", "--socket"])
        .arg(socket)
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit());
    let mut child = c.spawn().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    assert!(line.starts_with("listening on unix:"), "daemon did not start: {line:?}");
    Daemon { child, socket: socket.to_path_buf() }
}

//! Shared pieces of the reliability harnesses (`tests/reliability_*.rs`): the power-loss
//! simulator, the I/O fault injector, deterministic workloads with a plain-SQLite model, and
//! the smoke/soak switch. See docs/RELIABILITY.md.
#![allow(dead_code)]

pub mod crashvfs;
pub mod faultvfs;
pub mod model;

/// Environment variable that turns every harness into its long ("soak") version.
pub const SOAK_VAR: &str = "SQLITE_TDE_SOAK";

/// Smoke (default `cargo test`) or soak (`SQLITE_TDE_SOAK=1`, or the `#[ignore]`d `soak_*`
/// tests).
pub fn soak_from_env() -> bool {
    std::env::var(SOAK_VAR).map(|v| !v.is_empty() && v != "0").unwrap_or(false)
}

/// Print a figure line to stderr (shown with `--nocapture`) and append it to
/// `$CARGO_TARGET_DIR/reliability-figures.txt` (or `target/`), so a run leaves its figures
/// behind for docs/RELIABILITY.md.
pub fn report(harness: &str, line: &str) {
    let full = format!("[{harness}] {line}");
    eprintln!("{full}");
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let _ = std::fs::create_dir_all(&dir);
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("reliability-figures.txt")) {
        use std::io::Write;
        let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let _ = writeln!(f, "{secs} {full}");
    }
}

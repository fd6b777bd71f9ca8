//! Supply chain: `cargo deny check licenses bans sources` against deny.toml (every dependency
//! under an allowed license, from crates.io only, no wildcard versions). Advisories need the
//! RustSec database from GitHub, out of CI's reach: deny.toml says how they are checked, and
//! records the one accepted advisory with its reason.

use std::path::PathBuf;
use std::process::Command;

fn cargo_deny() -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let local = root.join(".ci/tools/cargo-deny/bin/cargo-deny");
    if local.is_file() {
        return Some(local);
    }
    let on_path = Command::new("cargo-deny").arg("--version").output().is_ok_and(|o| o.status.success());
    on_path.then(|| PathBuf::from("cargo-deny"))
}

#[test]
fn dependencies_have_allowed_licenses_and_sources() {
    let Some(deny) = cargo_deny() else {
        if std::env::var("SQLITE_TDE_CI").as_deref() == Ok("1") {
            panic!("cargo-deny is required with SQLITE_TDE_CI=1 (run .ci/setup.d/cargo-deny.sh)");
        }
        eprintln!("SKIPPED: cargo-deny not installed; run .ci/setup.d/cargo-deny.sh");
        return;
    };
    let out = Command::new(deny)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["--color", "never", "check", "licenses", "bans", "sources"])
        .output()
        .expect("run cargo-deny");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "cargo deny failed:\n{text}");
}

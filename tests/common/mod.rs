//! Shared helpers for integration tests.
#![allow(dead_code)]

pub mod child;
pub mod recorder;
pub mod workload;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use sqlite_tde::Tde;

/// A fresh keystore and a VFS registered under a unique name for it.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub tde: Tde,
}

static N: AtomicUsize = AtomicUsize::new(0);

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let name = format!("tde-test-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
        let tde = Tde::builder().keystore(dir.path().join("keystore")).vfs_name(name).register().unwrap();
        Env { dir, tde }
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Every file under `dir` (recursively) with its bytes.
pub fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(b) = std::fs::read(&p) {
                out.push((p, b));
            }
        }
    }
    out
}

/// Does `hay` contain `needle`?
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

//! Key rotation and conversions: rewrap (CMK rotation: a new wrapped form of the same DEK,
//! no page touched), rekey (DEK rotation: every page re-encrypted, crash-safe and resumable),
//! and conversions between plain and encrypted databases. Design: docs/ARCHITECTURE.md,
//! "Key rotation"; on-disk structures: docs/FORMAT.md §1 (rekey state, conversion marker),
//! §8 (rekey journal) and §9 (in-place encryption state).
//!
//! Every header write happens inside the VFS, on the main-db handle SQLite opened (the
//! `tde_rewrap` / `tde_rekey` / `tde_encrypt_in_place` pragmas and the recovery at open), under
//! SQLite's own file locks: that half is [`crate::vfs::rotation`]. The functions here are the
//! drivers: they open a connection and issue those pragmas, with the typed arguments and
//! results of [`crate::vfs::rotation::protocol`]. Nothing in the VFS calls back into them.

pub mod convert;
mod rekey;
mod rewrap;
mod rewrap_header;

use std::path::Path;

pub use rekey::{rekey, RekeyOptions, RekeyReport};
pub use rewrap::{rewrap, RewrapOptions, RewrapReport};
pub use rewrap_header::rewrap_header;

// The VFS half (engines, journals, recovery), re-exported for the tools and tests that drive
// the engines over simulated disks.
pub use crate::vfs::rotation::{
    engine, journal, reserve, side_path, with_progress, Outcome, Progress, Step, CONVERT_JOURNAL_SUFFIX, ENV_CRASH_AT,
    ENV_FAIL_AT, REKEY_JOURNAL_SUFFIX,
};

use crate::error::{Error, Result};

/// Parse the JSON `PRAGMA tde_status` returned.
pub(crate) fn parse_json(s: &str) -> Result<serde_json::Value> {
    serde_json::from_str(s).map_err(|e| Error::Config(format!("unexpected pragma result {s:?}: {e}")))
}

/// Refuse files the caller may not rewrite: missing, not regular, or read-only (mode bits,
/// also for root).
pub(crate) fn check_writable(path: &Path, what: &str) -> Result<()> {
    let shown = path.display();
    let md = std::fs::metadata(path).map_err(|e| Error::Io(std::io::Error::new(e.kind(), format!("{shown}: {e}"))))?;
    if !md.is_file() {
        return Err(Error::Config(format!("{shown}: not a regular file")));
    }
    if md.permissions().readonly() {
        return Err(Error::Config(format!(
            "{shown}: the file is read-only; {what} rewrites it in place and needs write permission"
        )));
    }
    Ok(())
}

//! The VFS half of key rotation: everything that rewrites a database's header or pages runs
//! here, inside the VFS, on the main-db handle SQLite opened and under SQLite's own file
//! locks — the `tde_rewrap` / `tde_rekey` / `tde_encrypt_in_place` pragma handlers, the
//! recovery of an interrupted rekey or in-place encryption at open, and the crash-safe
//! engines both use. The drivers that open a connection and issue those pragmas live in
//! [`crate::rotation`]; they speak to this half only through the typed pragma arguments and
//! results of [`protocol`]. Design: docs/ARCHITECTURE.md, "Key rotation"; on-disk structures:
//! docs/FORMAT.md §1 (rekey state, conversion marker), §8 (rekey journal) and §9 (in-place
//! encryption state).

pub mod convert;
pub mod engine;
mod files;
mod hook;
pub mod journal;
pub mod protocol;
pub(crate) mod rekey;
pub mod reserve;
pub(crate) mod rewrap;

use std::path::PathBuf;
use std::time::Duration;

use sqlite_vfs::{BaseFile, ErrorCode, LockLevel};

pub use engine::{Outcome, Step};
pub(crate) use files::{BaseDb, FsSide};
pub(crate) use hook::{observe, VfsHook};
pub use hook::{with_progress, Progress, ENV_CRASH_AT, ENV_FAIL_AT};

use super::database::{acquire, read_region, release, OpenPolicy};
use super::TdeContext;
use crate::error::{Error, Result};
use crate::format::choose_slot;

/// Suffix of the rekey journal next to the database.
pub const REKEY_JOURNAL_SUFFIX: &str = "-tderekey";
/// Suffix of the in-place encryption state file next to the database.
pub const CONVERT_JOURNAL_SUFFIX: &str = "-tdeconvert";

/// Path of a side file of `db`.
pub fn side_path(db: &str, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{db}{suffix}"))
}

/// Finish an interrupted rekey or in-place encryption of the file behind `base`, under an
/// EXCLUSIVE lock taken through `base` (waiting at most `wait`). `Ok(false)`: the lock is
/// busy (another connection holds it: possibly the operation itself, still running).
/// `Ok(true)`: nothing (more) to do. Locks go back to SQLite's own level afterwards.
pub fn recover_locked(
    ctx: &TdeContext,
    path: &str,
    base: &mut BaseFile,
    policy: OpenPolicy<'_>,
    wait: Duration,
) -> Result<bool> {
    match acquire(base, LockLevel::Exclusive, wait) {
        Ok(()) => {}
        Err(e) if e.code == ErrorCode::Busy => return Ok(false),
        Err(e) => return Err(e.into()),
    }
    let r = (|| -> Result<()> {
        let region = read_region(base)?;
        let parsed = choose_slot(&region);
        let torn_final = matches!(&parsed, Err(e) if *e != crate::format::HeaderError::PlainSqlite)
            && convert::state_file_valid(path);
        if convert::is_converting(&region) || torn_final {
            return match convert::recover(ctx, path, base, policy)? {
                Outcome::Done => Ok(()),
                Outcome::Interrupted => Err(Error::RekeyInProgress { path: path.to_string() }),
            };
        }
        let (h, slot) = parsed.map_err(|source| Error::Header { path: path.to_string(), source })?;
        if h.rekey.is_some() {
            return match rekey::recover(ctx, path, base, h, slot, &region, policy)? {
                Outcome::Done => Ok(()),
                Outcome::Interrupted => Err(Error::RekeyInProgress { path: path.to_string() }),
            };
        }
        Ok(())
    })();
    release(base);
    r.map(|()| true)
}

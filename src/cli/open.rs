//! Registering the encrypting VFS over the chosen keystore and opening databases through it.

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;
use sqlite_vfs::{ErrorCode, VfsError};

use super::error::CliResult;
use super::Global;
use sqlite_tde::{Error, OpenOptions, Tde};

/// Register the VFS over the invocation's KMS (once per process; later calls return the
/// first registration, and the CLI only ever uses one KMS).
pub fn register(global: &Global) -> CliResult<Tde> {
    let mut b = Tde::builder().keystore(&global.keystore).kms(global.kms.clone());
    if let Some(p) = &global.principal {
        b = b.principal(p);
    }
    Ok(b.register()?)
}

/// Open `path` through the VFS. A database created by this call is created under `opts.key`.
///
/// When the open fails on a file that did not exist before (bad key, KMS refusal), SQLite has
/// already created it empty: remove it again so a failed attempt leaves nothing behind.
/// `keystore` is only named in the hint added to a "key not found" error.
pub fn open(tde: &Tde, keystore: &Path, path: &Path, opts: &OpenOptions) -> CliResult<Connection> {
    let existed = path.exists();
    match tde.open_with(path, opts) {
        Ok(conn) => Ok(conn),
        Err(e) => {
            if !existed && std::fs::metadata(path).map(|m| m.is_file() && m.len() == 0).unwrap_or(false) {
                let _ = std::fs::remove_file(path);
            }
            Err(super::progress::cli_error(e, keystore))
        }
    }
}

/// A lock that could not be had, as a full error: SQLite's own "database is locked" names
/// neither the file nor the cause. When the header says a rekey is in progress (another
/// process running one, or one interrupted whose finishing needs the lock), that is the
/// error (`Error::RekeyInProgress`, exit 3); otherwise the message names the path and how
/// long was waited. Other errors pass unchanged.
pub fn explain_busy(e: Error, path: &Path, waited: Duration) -> Error {
    let detail = match &e {
        Error::Sqlite(s) if matches!(s.sqlite_error_code(), Some(rusqlite::ErrorCode::DatabaseBusy)) => None,
        Error::Vfs(v) if v.code == ErrorCode::Busy => Some(v.message.clone()),
        _ => return e,
    };
    let shown = path.display().to_string();
    if sqlite_tde::inspect::read_header(path).is_ok_and(|(h, _)| h.rekey.is_some()) {
        return Error::RekeyInProgress { path: shown };
    }
    let message = match detail {
        Some(m) if m.starts_with(&shown) => return e,
        Some(m) => format!("{shown}: {m}"),
        None => format!(
            "{shown}: database is locked: another connection holds it (waited {} ms); retry when it is done, or \
             raise --busy-timeout",
            waited.as_millis()
        ),
    };
    Error::Vfs(VfsError::new(ErrorCode::Busy, message))
}

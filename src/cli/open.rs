//! Registering the encrypting VFS over the chosen keystore and opening databases through it.

use std::path::Path;

use rusqlite::Connection;

use super::error::{CliError, CliResult};
use crate::kms::KmsError;
use crate::{Error, OpenOptions, Tde};

/// Register the VFS over `keystore` (once per process; later calls return the first
/// registration, and the CLI only ever uses one keystore).
pub fn register(keystore: &Path) -> CliResult<Tde> {
    Ok(Tde::builder().keystore(keystore).register()?)
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
            Err(with_hint(e, keystore))
        }
    }
}

/// The commonest cause of "key not found" is pointing at another keystore than the one that
/// holds the database's key: say which keystore was used.
fn with_hint(e: Error, keystore: &Path) -> CliError {
    let not_found = matches!(&e, Error::Kms { source: KmsError::NotFound(_), .. });
    let mut err = CliError::from(e);
    if not_found {
        err.message.push_str(&format!(
            " (keystore {}; use --keystore or SQLITE_TDE_KEYSTORE for another one)",
            keystore.display()
        ));
    }
    err
}

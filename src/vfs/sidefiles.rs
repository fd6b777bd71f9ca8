//! A database's journal and WAL under names no SQLite derives (`format::names`): the
//! physical-name rule of the VFS, and the adoption of side files a format version 1 database
//! left under SQLite's own names.

use std::path::Path;

use sqlite_vfs::{FileKind, VfsResult};

use crate::error::{Error, Result};
use crate::format::{legacy_side_path, physical_name, side_path, SideFile};

/// [`sqlite_vfs::Shim::physical_path`] of the `tde` VFS. Journal and WAL opens *must* carry a
/// name SQLite derived (anything else is refused: we would not know where a plain SQLite could
/// find it). Child journals that SQLite opens as super-journals while it checks a
/// multi-database commit, and every `xDelete`/`xAccess`, follow the same name rule.
pub fn physical_path(path: &str, kind: Option<FileKind>) -> VfsResult<Option<String>> {
    match kind {
        Some(FileKind::MainJournal | FileKind::Wal) => physical_name(path).map(Some).ok_or_else(|| {
            super::misuse(format!(
                "{path}: a {} name must end in -journal or -wal (the name SQLite derives from the database name)",
                kind.map_or("side file", FileKind::as_str)
            ))
        }),
        Some(FileKind::SuperJournal) | None => Ok(physical_name(path)),
        Some(_) => Ok(None),
    }
}

/// The side files of `db` that a plain SQLite could find and "recover", for the open that is
/// about to use `db`: every legacy-named journal or WAL (written by format version 1, which
/// kept SQLite's names) is renamed to its physical name, so neither SQLite through `tde` nor a
/// plain SQLite ever works on it under the old name. Runs after the key was verified (a failed
/// open changes nothing) and before SQLite can look for a hot journal or WAL. Returns what was
/// adopted.
///
/// Both names present means two writers used two naming schemes (a format version 1 build
/// still running next to this one): nothing is touched and the open fails, since either file
/// may hold the committed data.
pub fn adopt_legacy(db: &str) -> Result<Vec<SideFile>> {
    let mut adopted = Vec::new();
    for kind in SideFile::ALL {
        let legacy = legacy_side_path(db, kind);
        if std::fs::symlink_metadata(&legacy).is_err() {
            continue;
        }
        let current = side_path(db, kind);
        if std::fs::symlink_metadata(&current).is_ok() {
            return Err(Error::SideFileConflict {
                path: db.to_string(),
                legacy: legacy.display().to_string(),
                current: current.display().to_string(),
            });
        }
        match std::fs::rename(&legacy, &current) {
            Ok(()) => adopted.push(kind),
            // Another connection adopted it first.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::Io(std::io::Error::new(
                    e.kind(),
                    format!("{db}: cannot rename {} to {}: {e}", legacy.display(), current.display()),
                )))
            }
        }
    }
    if !adopted.is_empty() {
        let dir = Path::new(db).parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        crate::fsutil::sync_dir(dir)?;
    }
    Ok(adopted)
}

/// Does `db` have a non-empty `kind` side file, under its physical or its legacy name?
pub fn has_data(db: &str, kind: SideFile) -> bool {
    let non_empty = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.len() > 0);
    non_empty(&side_path(db, kind)) || non_empty(&legacy_side_path(db, kind))
}

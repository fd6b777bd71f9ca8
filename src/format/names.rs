//! Where sqlite-tde keeps a database's rollback journal and WAL on disk.
//!
//! SQLite derives `<db>-journal` and `<db>-wal` from the database name, and so does *every*
//! SQLite: a stock `sqlite3` shell, Python's `sqlite3` module, or a connection that forgot
//! `vfs=tde`. Such a client cannot read our encrypted journal header or WAL header, takes the
//! file for an empty journal or WAL, and deletes or truncates it — committed transactions in
//! a WAL gone, a hot journal's rollback never done (docs/RELIABILITY.md, "Seams"). So the VFS
//! stores these files under names no SQLite derives, `<db>-tdejournal` and `<db>-tdewal`, and
//! maps SQLite's names to them in `xOpen`, `xDelete` and `xAccess`: a plain client finds no
//! side file, fails at page 1 ("file is not a database"), and has nothing to delete.
//!
//! Format version 1 databases kept SQLite's names (the *legacy* names); the VFS adopts such
//! files at open (`vfs::sidefiles`).

use std::path::{Path, PathBuf};

/// A database side file whose name SQLite derives from the database name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SideFile {
    /// The rollback journal.
    Journal,
    /// The write-ahead log.
    Wal,
}

impl SideFile {
    /// Both kinds.
    pub const ALL: [SideFile; 2] = [SideFile::Journal, SideFile::Wal];

    /// The suffix SQLite appends to the database name (and format version 1 stored under).
    pub fn sqlite_suffix(self) -> &'static str {
        match self {
            SideFile::Journal => "-journal",
            SideFile::Wal => "-wal",
        }
    }

    /// The suffix sqlite-tde stores the file under.
    pub fn suffix(self) -> &'static str {
        match self {
            SideFile::Journal => "-tdejournal",
            SideFile::Wal => "-tdewal",
        }
    }

    /// Human name, for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            SideFile::Journal => "rollback journal",
            SideFile::Wal => "WAL",
        }
    }
}

fn suffixed(db: &Path, suffix: &str) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// Where sqlite-tde keeps `kind` of the database at `db`.
pub fn side_path(db: impl AsRef<Path>, kind: SideFile) -> PathBuf {
    suffixed(db.as_ref(), kind.suffix())
}

/// SQLite's own name for `kind` of the database at `db`: where format version 1 kept it, and
/// where a plain SQLite looks.
pub fn legacy_side_path(db: impl AsRef<Path>, kind: SideFile) -> PathBuf {
    suffixed(db.as_ref(), kind.sqlite_suffix())
}

/// The physical name of a file SQLite calls `name`, when `name` is a journal or WAL name
/// SQLite derived: `<db>-journal` → `<db>-tdejournal`, `<db>-wal` → `<db>-tdewal`. A numeric
/// tail (`-journal001`, the chunk names of SQLite's multiplex shim) is kept. `None` for every
/// other name (databases, super-journals `<db>-mjXXXXXXXX`, names already physical).
pub fn physical_name(name: &str) -> Option<String> {
    let stem = name.trim_end_matches(|c: char| c.is_ascii_digit());
    let digits = &name[stem.len()..];
    SideFile::ALL.into_iter().find_map(|kind| {
        let db = stem.strip_suffix(kind.sqlite_suffix())?;
        (!db.is_empty()).then(|| format!("{db}{}{digits}", kind.suffix()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_sqlite_derived_names_only() {
        assert_eq!(physical_name("/d/app.db-journal").as_deref(), Some("/d/app.db-tdejournal"));
        assert_eq!(physical_name("/d/app.db-wal").as_deref(), Some("/d/app.db-tdewal"));
        assert_eq!(physical_name("/d/app.db-journal001").as_deref(), Some("/d/app.db-tdejournal001"));
        assert_eq!(physical_name("/d/app.db-wal7").as_deref(), Some("/d/app.db-tdewal7"));
        // Already physical, databases, super-journals and a bare suffix stay as they are.
        for name in ["/d/app.db-tdejournal", "/d/app.db-tdewal", "/d/app.db", "/d/app.db-mj0A1B2C3D", "-wal", "x-shm"] {
            assert_eq!(physical_name(name), None, "{name}");
        }
        // A database named like a side file still gets its own side files mapped.
        assert_eq!(physical_name("/d/x-wal-journal").as_deref(), Some("/d/x-wal-tdejournal"));
    }

    #[test]
    fn paths() {
        assert_eq!(side_path("/d/a.db", SideFile::Wal), PathBuf::from("/d/a.db-tdewal"));
        assert_eq!(legacy_side_path("/d/a.db", SideFile::Journal), PathBuf::from("/d/a.db-journal"));
    }
}

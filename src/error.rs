//! The crate's error type, and its one mapping to SQLite result codes.

use std::cell::RefCell;

use sqlite_vfs::{ErrorCode, VfsError};

use crate::format::HeaderError;
use crate::kms::KmsError;

/// Everything that can go wrong opening or operating an encrypted database.
/// Non-exhaustive: branch on [`Error::class`] (stable) rather than on variants.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The header region is missing, damaged or of another format.
    #[error("{path}: {source}")]
    Header { path: String, source: HeaderError },
    /// The KMS refused or failed.
    #[error("{path}: {source}")]
    Kms { path: String, source: KmsError },
    /// The KMS returned a key that does not match the header's key-check value.
    #[error("{path}: wrong key: the unwrapped data key does not match the header's key-check value")]
    WrongKey { path: String },
    /// A rekey is running under another connection's lock, or was interrupted and must be
    /// finished first.
    #[error("{path}: a rekey is in progress (still running, or interrupted: `sqlite-tde rekey --resume {path}` finishes it)")]
    RekeyInProgress { path: String },
    /// The caller named a key, and the existing database is under another CMK.
    #[error("{path}: database is under key {database_key}, not the requested {requested} (the file may have been replaced; if it was rewrapped to a new key on purpose, name that key)")]
    KeyMismatch { path: String, database_key: String, requested: String },
    /// A side file exists under both its legacy (format version 1) and its current name.
    #[error("{path}: both {legacy} and {current} exist: a format-1 build of sqlite-tde (which keeps SQLite's side-file names) wrote next to this one; stop it, and keep the file that holds the newer transactions under {current}")]
    SideFileConflict { path: String, legacy: String, current: String },
    /// An empty file opened read-only has no key yet.
    #[error("{path}: empty file opened read-only: there is no encrypted database to read yet")]
    EmptyReadOnly { path: String },
    /// An I/O or protocol error from the VFS layer.
    #[error("{0}")]
    Vfs(#[from] VfsError),
    /// SQLite reported an error.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// Operating-system I/O outside SQLite.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Invalid configuration or arguments.
    #[error("{0}")]
    Config(String),
    /// The side file of a rekey or an in-place encryption could not be allocated; the
    /// database was not touched.
    #[error(
        "{path}: no space left on device: the {what} needs {needed} bytes; nothing was changed, free space and retry ({source})"
    )]
    NoSpace { path: String, what: &'static str, needed: u64, source: std::io::Error },
    /// A rekey or an in-place encryption failed before its first chunk was committed, and
    /// was undone: the database file is byte for byte as before.
    #[error(
        "{path}: the {operation} failed before any data moved and was rolled back; the database is unchanged: {source}"
    )]
    RolledBack { path: String, operation: &'static str, source: Box<Error> },
}

/// What kind of failure an [`Error`] is, for callers that branch on it (retry, ask for
/// another key, report): stable across versions, unlike the variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorClass {
    /// A key, KMS or header problem: wrong key, key not found, disabled or denied, KMS
    /// unreachable, not an encrypted database, a damaged header, the file under another
    /// CMK than requested, a rekey in progress (the file is between two keys).
    Key,
    /// No space left on the device; nothing was changed.
    NoSpace,
    /// Another connection holds a lock the operation needs; retrying later may succeed.
    Busy,
    /// Invalid arguments, configuration or file state the caller can correct.
    Invalid,
    /// Everything else: SQL errors, I/O errors.
    Other,
}

impl Error {
    /// The kind of failure (see [`ErrorClass`]). An operation rolled back is classified by
    /// what made it fail.
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Header { .. }
            | Error::Kms { .. }
            | Error::WrongKey { .. }
            | Error::KeyMismatch { .. }
            | Error::RekeyInProgress { .. } => ErrorClass::Key,
            Error::NoSpace { .. } => ErrorClass::NoSpace,
            Error::RolledBack { source, .. } => source.class(),
            Error::Config(_) | Error::EmptyReadOnly { .. } | Error::SideFileConflict { .. } => ErrorClass::Invalid,
            Error::Vfs(v) => match v.code {
                ErrorCode::Busy => ErrorClass::Busy,
                ErrorCode::Full => ErrorClass::NoSpace,
                ErrorCode::NotADatabase | ErrorCode::Auth => ErrorClass::Key,
                _ => ErrorClass::Other,
            },
            Error::Sqlite(s) => match s.sqlite_error_code() {
                // Through this VFS, pages that do not decode as a database mean a key or
                // header problem, not an SQL one.
                Some(rusqlite::ErrorCode::NotADatabase)
                | Some(rusqlite::ErrorCode::AuthorizationForStatementDenied) => ErrorClass::Key,
                Some(rusqlite::ErrorCode::DatabaseBusy) | Some(rusqlite::ErrorCode::DatabaseLocked) => ErrorClass::Busy,
                Some(rusqlite::ErrorCode::DiskFull) => ErrorClass::NoSpace,
                _ => ErrorClass::Other,
            },
            Error::Io(e) if e.kind() == std::io::ErrorKind::StorageFull => ErrorClass::NoSpace,
            Error::Io(_) => ErrorClass::Other,
        }
    }

    /// A key, KMS or header problem ([`ErrorClass::Key`]).
    pub fn is_key_problem(&self) -> bool {
        self.class() == ErrorClass::Key
    }

    /// Retrying later may succeed ([`ErrorClass::Busy`]).
    pub fn is_busy(&self) -> bool {
        self.class() == ErrorClass::Busy
    }

    /// The SQLite result code an open failing with this error reports.
    pub fn vfs_code(&self) -> ErrorCode {
        match self {
            Error::Header { source, .. } => match source {
                HeaderError::Truncated | HeaderError::Corrupt(_) => ErrorCode::Corrupt,
                _ => ErrorCode::NotADatabase,
            },
            Error::Kms { source, .. } => match source {
                KmsError::Unavailable(_) | KmsError::Keystore(_) => ErrorCode::CantOpen,
                KmsError::InvalidCiphertext { .. } => ErrorCode::NotADatabase,
                _ => ErrorCode::Auth,
            },
            Error::WrongKey { .. } => ErrorCode::NotADatabase,
            Error::KeyMismatch { .. } => ErrorCode::Auth,
            Error::RekeyInProgress { .. } => ErrorCode::Busy,
            Error::EmptyReadOnly { .. } | Error::SideFileConflict { .. } => ErrorCode::CantOpen,
            Error::Vfs(v) => v.code,
            Error::Sqlite(_) | Error::Io(_) | Error::Config(_) => ErrorCode::Io,
            Error::NoSpace { .. } => ErrorCode::Full,
            Error::RolledBack { source, .. } => source.vfs_code(),
        }
    }

    /// Convert for the VFS boundary.
    pub fn to_vfs(&self) -> VfsError {
        match self {
            Error::Vfs(v) => v.clone(),
            other => VfsError::new(other.vfs_code(), other.to_string()),
        }
    }
}

thread_local! {
    static LAST_OPEN_ERROR: RefCell<Option<Error>> = const { RefCell::new(None) };
}

/// Remember why an open failed on this thread: SQLite only carries the result code, and the
/// Rust API turns the code back into this detailed error.
pub(crate) fn set_last_open_error(e: Error) {
    LAST_OPEN_ERROR.with(|c| *c.borrow_mut() = Some(e));
}

/// Take the detailed reason of this thread's last failed open, if any.
pub fn take_last_open_error() -> Option<Error> {
    LAST_OPEN_ERROR.with(|c| c.borrow_mut().take())
}

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_follow_the_cause_not_the_wrapper() {
        let path = "x.db".to_string();
        assert_eq!(Error::WrongKey { path: path.clone() }.class(), ErrorClass::Key);
        assert!(Error::RekeyInProgress { path: path.clone() }.is_key_problem());
        let busy = Error::Vfs(VfsError::new(ErrorCode::Busy, "locked"));
        assert!(busy.is_busy());
        let full = std::io::Error::new(std::io::ErrorKind::StorageFull, "full");
        let rolled = Error::RolledBack { path: path.clone(), operation: "rekey", source: Box::new(Error::Io(full)) };
        assert_eq!(rolled.class(), ErrorClass::NoSpace);
        assert_eq!(Error::Config("bad".into()).class(), ErrorClass::Invalid);
        let notadb = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(26), None);
        assert_eq!(Error::Sqlite(notadb).class(), ErrorClass::Key);
        let constraint = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(19), None);
        assert_eq!(Error::Sqlite(constraint).class(), ErrorClass::Other);
    }
}

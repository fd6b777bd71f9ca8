//! The binding's error type: what a shim returns, mapped once to an SQLite result code.

use libsqlite3_sys as ffi;

/// SQLite result codes a shim may report. Each maps to exactly one (extended) code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// `SQLITE_IOERR_READ`
    Read,
    /// `SQLITE_IOERR_WRITE`
    Write,
    /// `SQLITE_IOERR_FSYNC`
    Fsync,
    /// `SQLITE_IOERR_TRUNCATE`
    Truncate,
    /// `SQLITE_IOERR_FSTAT`
    Fstat,
    /// `SQLITE_IOERR_DELETE`
    Delete,
    /// `SQLITE_FULL`
    Full,
    /// `SQLITE_CANTOPEN`
    CantOpen,
    /// `SQLITE_NOTADB`: the file is not a database this VFS can read.
    NotADatabase,
    /// `SQLITE_CORRUPT`
    Corrupt,
    /// `SQLITE_AUTH`: the caller may not use the key.
    Auth,
    /// `SQLITE_PERM`
    Perm,
    /// `SQLITE_READONLY`
    ReadOnly,
    /// `SQLITE_BUSY`
    Busy,
    /// `SQLITE_NOMEM`
    NoMem,
    /// `SQLITE_MISUSE`
    Misuse,
    /// Plain `SQLITE_IOERR`.
    Io,
    /// Any other (extended) SQLite code, passed through as is (e.g. from the base VFS).
    Raw(i32),
}

impl ErrorCode {
    /// The SQLite (extended) result code.
    pub fn sqlite_code(self) -> i32 {
        match self {
            ErrorCode::Read => ffi::SQLITE_IOERR_READ,
            ErrorCode::Write => ffi::SQLITE_IOERR_WRITE,
            ErrorCode::Fsync => ffi::SQLITE_IOERR_FSYNC,
            ErrorCode::Truncate => ffi::SQLITE_IOERR_TRUNCATE,
            ErrorCode::Fstat => ffi::SQLITE_IOERR_FSTAT,
            ErrorCode::Delete => ffi::SQLITE_IOERR_DELETE,
            ErrorCode::Full => ffi::SQLITE_FULL,
            ErrorCode::CantOpen => ffi::SQLITE_CANTOPEN,
            ErrorCode::NotADatabase => ffi::SQLITE_NOTADB,
            ErrorCode::Corrupt => ffi::SQLITE_CORRUPT,
            ErrorCode::Auth => ffi::SQLITE_AUTH,
            ErrorCode::Perm => ffi::SQLITE_PERM,
            ErrorCode::ReadOnly => ffi::SQLITE_READONLY,
            ErrorCode::Busy => ffi::SQLITE_BUSY,
            ErrorCode::NoMem => ffi::SQLITE_NOMEM,
            ErrorCode::Misuse => ffi::SQLITE_MISUSE,
            ErrorCode::Io => ffi::SQLITE_IOERR,
            ErrorCode::Raw(c) => c,
        }
    }
}

/// An error a shim reports to SQLite: a code plus a message for `sqlite3_log`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message} (sqlite code {})", code.sqlite_code())]
pub struct VfsError {
    /// What SQLite is told.
    pub code: ErrorCode,
    /// What the log (`sqlite3_log`) is told.
    pub message: String,
}

impl VfsError {
    /// An error with this code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> VfsError {
        VfsError { code, message: message.into() }
    }
    /// An error that came from the base VFS with this raw code.
    pub fn from_base(code: i32, what: &str) -> VfsError {
        VfsError { code: ErrorCode::Raw(code), message: format!("base VFS {what} failed") }
    }
}

/// Result alias for shim callbacks.
pub type VfsResult<T> = Result<T, VfsError>;

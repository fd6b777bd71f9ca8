//! The CLI's error type and its mapping to process exit codes.
//!
//! The codes are part of the stable interface (scripts branch on them), so the classification
//! lives in one place: [`CliError::from`] for each error source.

use std::fmt;

use rusqlite::ErrorCode;

use sqlite_tde::kms::KmsError;
use sqlite_tde::{Error, ErrorClass};

/// Success.
pub const EXIT_OK: u8 = 0;
/// An SQL or runtime error (syntax error, constraint violation, I/O, missing file, ...).
pub const EXIT_FAILURE: u8 = 1;
/// A usage error: bad command line (what clap reports).
pub const EXIT_USAGE: u8 = 2;
/// A key, KMS or header error: wrong key, key not found or disabled, keystore unusable, not
/// an encrypted database, damaged header, rekey in progress.
pub const EXIT_KEY: u8 = 3;

/// An error to report on stderr, with the exit code it maps to.
#[derive(Debug)]
pub struct CliError {
    /// Process exit code (one of the `EXIT_*` constants).
    pub code: u8,
    /// What to print (without the program-name prefix).
    pub message: String,
    /// Report nothing: the condition was already reported, or needs no report (a closed
    /// stdout).
    pub quiet: bool,
}

impl CliError {
    /// A runtime failure (exit code 1).
    pub fn failure(message: impl Into<String>) -> CliError {
        CliError { code: EXIT_FAILURE, message: message.into(), quiet: false }
    }

    /// A key/KMS/header failure (exit code 3).
    pub fn key(message: impl Into<String>) -> CliError {
        CliError { code: EXIT_KEY, message: message.into(), quiet: false }
    }

    /// A usage error found after parsing (exit code 2).
    pub fn usage(message: impl Into<String>) -> CliError {
        CliError { code: EXIT_USAGE, message: message.into(), quiet: false }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Exit code of a crate error: its class ([`ErrorClass`]) decides.
pub fn exit_code_of(e: &Error) -> u8 {
    match e.class() {
        ErrorClass::Key => EXIT_KEY,
        _ => EXIT_FAILURE,
    }
}

/// `SQLITE_NOTADB` from a statement means pages did not decrypt to a database: through this
/// VFS that is a key or header problem, not an SQL one.
fn exit_code_of_sqlite(e: &rusqlite::Error) -> u8 {
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) => EXIT_KEY,
        _ => EXIT_FAILURE,
    }
}

impl From<Error> for CliError {
    fn from(e: Error) -> CliError {
        let message = match &e {
            Error::Sqlite(s) => sqlite_message(s),
            other => other.to_string(),
        };
        CliError { code: exit_code_of(&e), message, quiet: false }
    }
}

/// SQLite's message; for a parse error, followed by the offending line with a caret under
/// the token, as the sqlite3 shell shows it (rusqlite's own text runs the whole SQL inline).
pub fn sqlite_message(e: &rusqlite::Error) -> String {
    let rusqlite::Error::SqlInputError { msg, sql, offset, .. } = e else {
        return e.to_string();
    };
    match usize::try_from(*offset) {
        Ok(at) if at <= sql.len() && sql.is_char_boundary(at) => {
            let start = sql[..at].rfind('\n').map_or(0, |i| i + 1);
            let end = sql[at..].find('\n').map_or(sql.len(), |i| at + i);
            let column = sql[start..at].chars().count();
            format!("{msg}\n  {}\n  {}^--- error here", &sql[start..end], " ".repeat(column))
        }
        _ => msg.clone(),
    }
}

impl From<KmsError> for CliError {
    fn from(e: KmsError) -> CliError {
        CliError::key(e.to_string())
    }
}

impl From<rusqlite::Error> for CliError {
    fn from(e: rusqlite::Error) -> CliError {
        CliError { code: exit_code_of_sqlite(&e), message: sqlite_message(&e), quiet: false }
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> CliError {
        // A reader that went away (`... | head`) is not worth a message.
        let quiet = e.kind() == std::io::ErrorKind::BrokenPipe;
        CliError { code: EXIT_FAILURE, message: e.to_string(), quiet }
    }
}

impl From<serde_json::Error> for CliError {
    fn from(e: serde_json::Error) -> CliError {
        CliError::failure(e.to_string())
    }
}

/// Result alias of the CLI.
pub type CliResult<T = ()> = Result<T, CliError>;

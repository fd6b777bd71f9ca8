//! The library entry point [`rewrap`]: CMK rotation without touching pages, driven through
//! `PRAGMA tde_rewrap` (the header rewrite itself is [`crate::vfs::rotation`]'s).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{take_last_open_error, Error, Result};
use crate::vfs::rotation::protocol::{parse_result, RewrapResult, RewrapStatus, RotationArgs};
use crate::{OpenOptions, Tde};

/// Options of [`rewrap`].
#[derive(Debug, Clone)]
pub struct RewrapOptions {
    /// Another CMK (key id or alias); `None`: the newest version of the current CMK.
    pub key: Option<String>,
    /// How long to wait for a writer holding the lock.
    pub busy_timeout: Duration,
}

impl Default for RewrapOptions {
    fn default() -> Self {
        RewrapOptions { key: None, busy_timeout: Duration::from_secs(5) }
    }
}

/// What [`rewrap`] did to one file.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RewrapReport {
    pub path: PathBuf,
    /// `rewrapped` or `unchanged` (already wrapped under the newest version of the target).
    pub status: String,
    pub key_uri: String,
    pub key_version: u32,
    pub previous_key_uri: String,
    pub previous_key_version: u32,
    /// The header was format 1 and is now written in the current format.
    pub format_upgraded: bool,
}

/// Rewrap the DEK of the database at `path` (which other connections, in this process or
/// others, may be using meanwhile; they pick up the new header without reopening).
pub fn rewrap(tde: &Tde, path: &Path, opts: &RewrapOptions) -> Result<RewrapReport> {
    let take = |e: rusqlite::Error| take_last_open_error().unwrap_or(Error::Sqlite(e));
    let conn =
        tde.open_with(path, &OpenOptions { key: None, read_only: false, must_exist: true, ..Default::default() })?;
    conn.busy_timeout(opts.busy_timeout)?;
    let args = RotationArgs { key: opts.key.clone(), chunk: None, busy_ms: Some(opts.busy_timeout.as_millis() as u64) };
    let _ = take_last_open_error();
    let text: String = conn.query_row(&args.pragma_sql("tde_rewrap"), [], |r| r.get(0)).map_err(take)?;
    let r: RewrapResult = parse_result("tde_rewrap", &text)?;
    Ok(RewrapReport {
        path: path.to_path_buf(),
        status: match r.status {
            RewrapStatus::Rewrapped => "rewrapped",
            RewrapStatus::Unchanged => "unchanged",
        }
        .into(),
        key_uri: r.key_uri,
        key_version: r.key_version,
        previous_key_uri: r.previous_key_uri,
        previous_key_version: r.previous_key_version,
        format_upgraded: r.format_upgraded,
    })
}

//! The library entry point [`rekey`]: DEK rotation, driven through `PRAGMA tde_rekey` (the
//! work itself is [`crate::vfs::rotation`]'s).

use std::path::Path;
use std::time::{Duration, Instant};

use super::{check_writable, parse_json};
use crate::error::{take_last_open_error, Error, Result};
use crate::vfs::rotation::protocol::{parse_result, RekeyResult, RotationArgs};
use crate::{OpenOptions, Tde};

/// Options of [`rekey`].
#[derive(Debug, Clone)]
pub struct RekeyOptions {
    /// CMK for the new DEK (key id or alias); `None`: the database's current CMK.
    pub key: Option<String>,
    /// Hotzone size; `None`: [`crate::rotation::engine::DEFAULT_CHUNK`].
    pub chunk: Option<u64>,
    /// How long to wait for other connections (SQLite busy timeout and the VFS's own lock).
    pub busy_timeout: Duration,
    /// Only finish an interrupted rekey; do not start a new one.
    pub resume_only: bool,
    /// Finish an interrupted rekey whose state a format-1 build wrote (not authenticated):
    /// the operator's explicit decision (docs/FORMAT.md §11).
    pub trust_format_1: bool,
}

impl Default for RekeyOptions {
    fn default() -> Self {
        RekeyOptions {
            key: None,
            chunk: None,
            busy_timeout: Duration::from_secs(5),
            resume_only: false,
            trust_format_1: false,
        }
    }
}

/// What [`rekey`] did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RekeyReport {
    /// `done`, `resumed` (an interrupted rekey was finished; no new one started),
    /// `interrupted` (stopped by the progress observer; resumable), `nothing-to-resume`.
    pub status: String,
    pub bytes: u64,
    pub key_uri: String,
    pub key_version: u32,
    pub previous_key_uri: Option<String>,
    pub previous_key_version: Option<u32>,
    pub seconds: f64,
}

/// Rotate the DEK of the database at `path`: a new DEK from the KMS, every page re-encrypted
/// under it, the old one discarded. An interrupted earlier rekey is finished instead (the
/// open does that), and reported as `resumed`. Progress goes to the thread's observer
/// ([`super::with_progress`]).
pub fn rekey(tde: &Tde, path: &Path, opts: &RekeyOptions) -> Result<RekeyReport> {
    check_writable(path, "a rekey")?;
    let started = Instant::now();
    let take = |e: rusqlite::Error| take_last_open_error().unwrap_or(Error::Sqlite(e));
    // The open finishes an interrupted rekey. (No descriptor of our own on the database: the
    // caller may have connections to it, whose POSIX locks closing one would drop.)
    let conn = tde.open_with(
        path,
        &OpenOptions { key: None, read_only: false, must_exist: true, trust_format_1: opts.trust_format_1 },
    )?;
    let status: String = conn.query_row("PRAGMA tde_status", [], |r| r.get(0)).map_err(take)?;
    let status = parse_json(&status)?;
    let resumed = status["recovered"] == "rekey";
    if resumed || opts.resume_only {
        return Ok(RekeyReport {
            status: if resumed { "resumed" } else { "nothing-to-resume" }.into(),
            bytes: 0,
            key_uri: status["key"].as_str().unwrap_or_default().to_string(),
            key_version: status["key_version"].as_u64().unwrap_or(0) as u32,
            previous_key_uri: None,
            previous_key_version: None,
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    conn.busy_timeout(opts.busy_timeout)?;
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).map_err(take)?;
    if mode.eq_ignore_ascii_case("wal") {
        // Empty the WAL (its frames are under the old key). Busy readers are reported by the
        // pragma below (it needs every other connection closed in WAL mode anyway).
        let _: (i64, i64, i64) = conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(take)?;
    }
    // Rollback mode: SQLite's EXCLUSIVE lock (and any hot journal rolled back first).
    // WAL mode: the write lock; the pragma then takes EXCLUSIVE on the file itself.
    conn.execute_batch("BEGIN EXCLUSIVE").map_err(take)?;
    let args =
        RotationArgs { key: opts.key.clone(), chunk: opts.chunk, busy_ms: Some(opts.busy_timeout.as_millis() as u64) };
    let _ = take_last_open_error();
    let r: std::result::Result<String, _> = conn.query_row(&args.pragma_sql("tde_rekey"), [], |r| r.get(0));
    let detail = take_last_open_error();
    let end = conn.execute_batch("COMMIT");
    let text = match r {
        Ok(t) => t,
        Err(e) => return Err(detail.unwrap_or(Error::Sqlite(e))),
    };
    let result: RekeyResult = parse_result("tde_rekey", &text)?;
    drop(conn);
    let seconds = started.elapsed().as_secs_f64();
    Ok(match result {
        RekeyResult::Done { bytes, key_uri, key_version, previous_key_uri, previous_key_version, .. } => {
            end.map_err(take)?;
            RekeyReport {
                status: "done".into(),
                bytes,
                key_uri,
                key_version,
                previous_key_uri,
                previous_key_version,
                seconds,
            }
        }
        RekeyResult::Interrupted { bytes, .. } => RekeyReport {
            status: "interrupted".into(),
            bytes,
            key_uri: String::new(),
            key_version: 0,
            previous_key_uri: None,
            previous_key_version: None,
            seconds,
        },
    })
}

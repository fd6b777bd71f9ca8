//! Rewrap: CMK rotation without touching pages. The same DEK is wrapped again (KMS
//! ReEncrypt) under the newest version of its CMK or under another CMK, verified, and written
//! to both header slots (A/B, each synced), so the file no longer references the old CMK
//! version at all.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sqlite_vfs::{BaseFile, LockLevel};

use super::parse_json;
use crate::crypto::MetaKey;
use crate::error::{take_last_open_error, Error, Result};
use crate::format::{choose_slot, Header, FORMAT_VERSION, SLOT_LEN};
use crate::kms::EncryptionContext;
use crate::vfs::database::{acquire, authenticated, kms_call, read_region, release, unlock, unwrap_key, Database};
use crate::vfs::TdeContext;
use crate::{OpenOptions, Tde};

fn write_slot(path: &str, base: &mut BaseFile, h: &Header, slot: usize, meta: &MetaKey) -> Result<()> {
    let bytes = h.encode(meta).map_err(|source| Error::Header { path: path.to_string(), source })?;
    base.write(&bytes, (slot * SLOT_LEN) as u64)?;
    base.sync(sqlite_vfs::SyncFlags::FULL)?;
    Ok(())
}

/// `PRAGMA tde_rewrap[=TARGET]` on the main-db handle. Serialised with every other header
/// writer by the RESERVED lock (taken through `base` when SQLite holds less): rekeys and
/// recoveries need EXCLUSIVE, rewraps RESERVED, and in WAL mode nothing else takes RESERVED
/// on the database file. Readers may read the header meanwhile: a torn slot makes them use
/// the other one, which holds the same DEK.
#[allow(clippy::too_many_arguments)] // the pragma's whole context, passed through once
pub(crate) fn pragma(
    ctx: &TdeContext,
    path: &str,
    base: &mut BaseFile,
    db: &Arc<Database>,
    sqlite_lock: LockLevel,
    read_only: bool,
    target: Option<&str>,
    wait: Duration,
) -> Result<serde_json::Value> {
    if read_only {
        return Err(Error::Config(format!("{path}: opened read-only: a rewrap writes the header")));
    }
    let took = sqlite_lock < LockLevel::Reserved;
    if took {
        acquire(base, LockLevel::Reserved, wait)?;
    }
    let r = run_locked(ctx, path, base, db, target);
    if took {
        release(base);
    }
    r
}

fn run_locked(
    ctx: &TdeContext,
    path: &str,
    base: &mut BaseFile,
    db: &Arc<Database>,
    target: Option<&str>,
) -> Result<serde_json::Value> {
    let region = read_region(base)?;
    let (h, slot) = choose_slot(&region).map_err(|source| Error::Header { path: path.to_string(), source })?;
    if h.rekey.is_some() {
        return Err(Error::RekeyInProgress { path: path.to_string() });
    }
    // The header this rewrap copies must itself be authentic (the cipher comes from the
    // cache: the connection unwrapped this DEK at open).
    let current = unlock(ctx, path, &h)?;
    let upgrade = !authenticated(path, &region, slot, current.meta())?;
    let context = EncryptionContext::for_database(&h.db_uuid);
    let (key, wrapped, t) = (h.key.clone(), h.wrapped_dek.clone(), target.map(str::to_string));
    ctx.cache.note_kms_call();
    let (new_wrapped, new_ref) =
        kms_call(ctx, path, move |kms| kms.rewrap_data_key(&key, &wrapped, &context, t.as_deref()))?;
    let previous = h.key.clone();
    if new_ref == h.key && !upgrade {
        // Already wrapped under this key and version: nothing to rotate.
        return Ok(json!({"status": "unchanged", "key_uri": h.key.uri, "key_version": h.key.version,
            "previous_key_uri": previous.uri, "previous_key_version": previous.version, "header_sequence": h.sequence}));
    }
    // Never write a header that does not open: the new wrapped DEK must unwrap (a KMS
    // Decrypt) to the DEK the key-check value names. This also caches it.
    let cipher = unwrap_key(ctx, path, &h.db_uuid, &new_ref, &new_wrapped, &h.kcv)?;
    let mut new = h.clone();
    new.format = FORMAT_VERSION; // a format 1 header is upgraded by its first rewrite
    new.key = new_ref;
    new.wrapped_dek = new_wrapped;
    new.sequence = h.sequence + 1;
    write_slot(path, base, &new, 1 - slot, cipher.meta())?;
    // The old slot still references the old CMK version: overwrite it too.
    new.sequence = h.sequence + 2;
    write_slot(path, base, &new, slot, cipher.meta())?;
    let check = read_region(base)?;
    let (back, _) = choose_slot(&check).map_err(|source| Error::Header { path: path.to_string(), source })?;
    if back != new {
        return Err(Error::Config(format!("{path}: the rewritten header does not read back")));
    }
    db.refresh_header(ctx, base)?;
    Ok(json!({
        "status": "rewrapped",
        "key_uri": new.key.uri,
        "key_version": new.key.version,
        "previous_key_uri": previous.uri,
        "previous_key_version": previous.version,
        "header_sequence": new.sequence,
        "format_upgraded": upgrade,
    }))
}

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
    let arg = json!({"key": opts.key, "busy_ms": opts.busy_timeout.as_millis() as u64}).to_string();
    let _ = take_last_open_error();
    let text: String =
        conn.query_row(&format!("PRAGMA tde_rewrap='{}'", arg.replace('\'', "''")), [], |r| r.get(0)).map_err(take)?;
    let v = parse_json(&text)?;
    Ok(RewrapReport {
        path: path.to_path_buf(),
        status: v["status"].as_str().unwrap_or_default().to_string(),
        key_uri: v["key_uri"].as_str().unwrap_or_default().to_string(),
        key_version: v["key_version"].as_u64().unwrap_or(0) as u32,
        previous_key_uri: v["previous_key_uri"].as_str().unwrap_or_default().to_string(),
        previous_key_version: v["previous_key_version"].as_u64().unwrap_or(0) as u32,
        format_upgraded: v["format_upgraded"].as_bool().unwrap_or(false),
    })
}

//! Rekey, the VFS side: `PRAGMA tde_rekey` on the main-db handle, and the recovery of an
//! interrupted rekey at open. The driver is [`crate::rotation::rekey`].

use std::sync::Arc;
use std::time::Instant;

use sqlite_vfs::{BaseFile, LockLevel};

use super::engine::{Abort, Outcome, RekeyEngine, DEFAULT_CHUNK};
use super::protocol::{RekeyResult, RotationArgs};
use super::{side_path, BaseDb, FsSide, VfsHook, REKEY_JOURNAL_SUFFIX};
use crate::crypto::{new_cipher, Domain, XtsCipher};
use crate::error::{Error, Result};
use crate::format::{choose_slot, Header, HeaderError, RekeyState, FORMAT_VERSION};
use crate::kms::EncryptionContext;
use crate::vfs::database::{
    acquire, authenticated, cache_key_of, is_journal_magic, kms_call, read_region, release, unlock, unwrap_key,
    Database, OpenPolicy,
};
use crate::vfs::TdeContext;

/// Finish an interrupted rekey whose header slot `slot` of `region` is `header`. The caller
/// holds EXCLUSIVE on `base`. The rekey state is acted on only once the slot proved to be
/// written by a holder of the current DEK (format 2), or when the caller trusts format 1.
pub(crate) fn recover(
    ctx: &TdeContext,
    path: &str,
    base: &mut BaseFile,
    header: Header,
    slot: usize,
    region: &[u8],
    policy: OpenPolicy<'_>,
) -> Result<Outcome> {
    let r = header.rekey.clone().expect("rekey state");
    let old = unwrap_key(ctx, path, &header.db_uuid, &header.key, &header.wrapped_dek, &header.kcv)?;
    if !authenticated(path, region, slot, old.meta())? && !policy.trust_format_1_state {
        return Err(Error::Header { path: path.to_string(), source: HeaderError::UnauthenticatedRekey });
    }
    let new = unwrap_key(ctx, path, &header.db_uuid, &r.key, &r.wrapped_dek, &r.kcv)?;
    let legacy_journal = header.format < FORMAT_VERSION;
    let old_key = cache_key_of(&header);
    let mut db = BaseDb(base);
    let mut journal = FsSide::new(side_path(path, REKEY_JOURNAL_SUFFIX));
    let mut hook = VfsHook::new("recover");
    let mut engine = RekeyEngine::new(&mut db, &mut journal, &old, &new, header, slot, DEFAULT_CHUNK, &mut hook);
    let out = engine.recover(legacy_journal)?;
    if out == Outcome::Done {
        ctx.cache.remove(&old_key);
    }
    Ok(out)
}

/// Side files must hold nothing under the old key when the rekey starts: the WAL must be
/// empty (checkpointed with TRUNCATE), a rollback journal must not be hot. A persistent
/// journal whose header SQLite zeroed (journal_mode=PERSIST) is truncated: its stale records
/// are under the old key. The caller holds EXCLUSIVE, so no writer can be adding to either.
fn preflight_side_files(path: &str, old: &XtsCipher) -> Result<()> {
    let wal = crate::format::side_path(path, crate::format::SideFile::Wal);
    if let Ok(m) = std::fs::metadata(&wal) {
        if m.len() > 0 {
            return Err(Error::Vfs(sqlite_vfs::VfsError::new(
                sqlite_vfs::ErrorCode::Busy,
                format!("{path}: the WAL still holds {} bytes; checkpoint it with PRAGMA wal_checkpoint(TRUNCATE) first (another connection may have written meanwhile)", m.len()),
            )));
        }
    }
    let jpath = crate::format::side_path(path, crate::format::SideFile::Journal);
    if let Ok(bytes) = std::fs::read(&jpath) {
        if !bytes.is_empty() {
            let mut first = [0u8; 16];
            let n = bytes.len().min(16);
            first[..n].copy_from_slice(&bytes[..n]);
            let zero_on_disk = first == [0u8; 16];
            let mut dec = first;
            if !zero_on_disk && bytes.len() >= 16 {
                old.decrypt(Domain::Journal, 0, &mut dec);
            }
            if zero_on_disk || dec[..8] == [0u8; 8] {
                let f = std::fs::OpenOptions::new().write(true).open(&jpath)?;
                f.set_len(0)?;
                f.sync_all()?;
            } else if is_journal_magic(&dec) {
                return Err(Error::Config(format!(
                    "{path}: a hot rollback journal is present; open the database once to recover it, then retry"
                )));
            } else {
                return Err(Error::Config(format!(
                    "{path}: {} is not a journal of this database key; move it away, then retry",
                    jpath.display()
                )));
            }
        }
    }
    Ok(())
}

/// `PRAGMA tde_rekey[=ARGS]` ([`RotationArgs`]) on the main-db handle.
/// Takes EXCLUSIVE through `base` unless SQLite already holds it (rollback mode inside
/// `BEGIN EXCLUSIVE`), re-encrypts every block, and switches `db` to the new DEK.
pub(crate) fn pragma(
    ctx: &TdeContext,
    path: &str,
    base: &mut BaseFile,
    db: &Arc<Database>,
    sqlite_lock: LockLevel,
    read_only: bool,
    args: &RotationArgs,
) -> Result<RekeyResult> {
    if read_only {
        return Err(Error::Config(format!("{path}: opened read-only: a rekey rewrites every page")));
    }
    let wait = args.busy();
    let took = sqlite_lock < LockLevel::Exclusive;
    if took {
        acquire(base, LockLevel::Exclusive, wait).map_err(|e| {
            if e.code == sqlite_vfs::ErrorCode::Busy {
                Error::Vfs(sqlite_vfs::VfsError::new(
                    sqlite_vfs::ErrorCode::Busy,
                    format!("{path}: database is in use: a rekey needs every other connection closed in WAL mode, and no open transaction in rollback mode ({})", e.message),
                ))
            } else {
                Error::Vfs(e)
            }
        })?;
    }
    let r = run_locked(ctx, path, base, db, args);
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
    args: &RotationArgs,
) -> Result<RekeyResult> {
    let started = Instant::now();
    let region = read_region(base)?;
    let (header, slot) = choose_slot(&region).map_err(|source| Error::Header { path: path.to_string(), source })?;
    if header.db_uuid != db.header().db_uuid {
        return Err(Error::Config(format!("{path}: the database file was replaced while open")));
    }
    let chunk = args.chunk.unwrap_or(DEFAULT_CHUNK);
    if header.rekey.is_some() {
        // Interrupted earlier (by this connection): continue it.
        let out = recover(ctx, path, base, header, slot, &region, OpenPolicy::default())?;
        return finish_report(ctx, path, base, db, out, None, started);
    }
    let old = unlock(ctx, path, &header)?;
    authenticated(path, &region, slot, old.meta())?;
    preflight_side_files(path, &old)?;
    let target = args.key.clone().unwrap_or_else(|| header.key.key_id().to_string());
    let context = EncryptionContext::for_database(&header.db_uuid);
    ctx.cache.note_kms_call();
    let t = target.clone();
    let generated = kms_call(ctx, path, move |kms| kms.generate_data_key(&t, &context))?;
    let (new, new_kcv) = new_cipher(&generated.plaintext, &header.db_uuid).map_err(|e| Error::Config(e.to_string()))?;
    let new = Arc::new(new);
    let state =
        RekeyState { key: generated.key.clone(), wrapped_dek: generated.wrapped.clone(), kcv: new_kcv, progress: 0 };
    drop(generated); // wipes the plaintext DEK
    let previous = header.key.clone();
    let old_key = cache_key_of(&header);
    let out = {
        let mut raw = BaseDb(base);
        let mut journal = FsSide::new(side_path(path, REKEY_JOURNAL_SUFFIX));
        let mut hook = VfsHook::new("rekey");
        let mut engine = RekeyEngine::new(&mut raw, &mut journal, &old, &new, header, slot, chunk, &mut hook);
        // A failure before the first chunk is committed (typically a full disk) is undone,
        // so the database stays readable by everyone; later ones are finished by recovery.
        engine.begin(state).and_then(|()| engine.run()).map_err(|e| (e, engine.roll_back()))
    };
    let out = match out {
        Ok(o) => o,
        Err((e, Ok(Abort::Untouched))) => return Err(e),
        Err((e, Ok(Abort::RolledBack))) => {
            return Err(Error::RolledBack { path: path.to_string(), operation: "rekey", source: Box::new(e) })
        }
        Err((e, undo)) => {
            let undo = match undo {
                Err(u) => format!("; undoing it failed too: {u}"),
                Ok(_) => String::new(),
            };
            // The file may be between two keys: this connection must not read it any more.
            db.block(sqlite_vfs::VfsError::new(
                sqlite_vfs::ErrorCode::Busy,
                format!("{path}: rekey failed half-way ({e}{undo}); reopen the database to finish it"),
            ));
            return Err(e);
        }
    };
    if out == Outcome::Done {
        ctx.cache.remove(&old_key);
    }
    finish_report(ctx, path, base, db, out, Some((previous, new)), started)
}

fn finish_report(
    ctx: &TdeContext,
    path: &str,
    base: &mut BaseFile,
    db: &Arc<Database>,
    out: Outcome,
    fresh: Option<(crate::format::KeyRef, Arc<XtsCipher>)>,
    started: Instant,
) -> Result<RekeyResult> {
    let region = read_region(base)?;
    let (header, slot) = choose_slot(&region).map_err(|source| Error::Header { path: path.to_string(), source })?;
    let total = super::engine::data_len(base.file_size()?);
    match out {
        Outcome::Done => {
            let cipher = match &fresh {
                Some((_, c)) => ctx.cache.insert(cache_key_of(&header), &header.key.uri, header.key.version, c.clone()),
                None => unlock(ctx, path, &header)?,
            };
            db.replace(header.clone(), slot, region, cipher);
            Ok(RekeyResult::Done {
                bytes: total,
                key_uri: header.key.uri.clone(),
                key_version: header.key.version,
                previous_key_uri: fresh.as_ref().map(|(k, _)| k.uri.clone()),
                previous_key_version: fresh.as_ref().map(|(k, _)| k.version),
                header_sequence: header.sequence,
                seconds: started.elapsed().as_secs_f64(),
            })
        }
        Outcome::Interrupted => {
            db.block(sqlite_vfs::VfsError::new(
                sqlite_vfs::ErrorCode::Busy,
                format!(
                    "{path}: rekey interrupted; reopen the database (or run `sqlite-tde rekey --resume`) to finish it"
                ),
            ));
            let progress = header.rekey.as_ref().map(|r| r.progress).unwrap_or(0);
            Ok(RekeyResult::Interrupted { bytes: progress, total, seconds: started.elapsed().as_secs_f64() })
        }
    }
}

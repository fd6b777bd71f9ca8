//! Rewrap, the VFS side (`PRAGMA tde_rewrap`): CMK rotation without touching pages. The
//! same DEK is wrapped again (KMS ReEncrypt) under the newest version of its CMK or under
//! another CMK, verified, and written to both header slots (A/B, each synced), so the file
//! no longer references the old CMK version at all. The driver is [`crate::rotation::rewrap`].

use std::sync::Arc;

use sqlite_vfs::{BaseFile, LockLevel};

use super::protocol::{RewrapResult, RewrapStatus, RotationArgs};
use crate::crypto::MetaKey;
use crate::error::{Error, Result};
use crate::format::{choose_slot, Header, FORMAT_VERSION, SLOT_LEN};
use crate::kms::EncryptionContext;
use crate::vfs::database::{acquire, authenticated, kms_call, read_region, release, unlock, unwrap_key, Database};
use crate::vfs::TdeContext;

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
pub(crate) fn pragma(
    ctx: &TdeContext,
    path: &str,
    base: &mut BaseFile,
    db: &Arc<Database>,
    sqlite_lock: LockLevel,
    read_only: bool,
    args: &RotationArgs,
) -> Result<RewrapResult> {
    if read_only {
        return Err(Error::Config(format!("{path}: opened read-only: a rewrap writes the header")));
    }
    let took = sqlite_lock < LockLevel::Reserved;
    if took {
        acquire(base, LockLevel::Reserved, args.busy())?;
    }
    let r = run_locked(ctx, path, base, db, args.key.as_deref());
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
) -> Result<RewrapResult> {
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
        return Ok(RewrapResult {
            status: RewrapStatus::Unchanged,
            key_uri: h.key.uri.clone(),
            key_version: h.key.version,
            previous_key_uri: previous.uri,
            previous_key_version: previous.version,
            header_sequence: h.sequence,
            format_upgraded: false,
        });
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
    Ok(RewrapResult {
        status: RewrapStatus::Rewrapped,
        key_uri: new.key.uri,
        key_version: new.key.version,
        previous_key_uri: previous.uri,
        previous_key_version: previous.version,
        header_sequence: new.sequence,
        format_upgraded: upgrade,
    })
}

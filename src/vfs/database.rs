//! Per-database state behind a main-db handle: the header, and the prepared cipher its DEK
//! unwraps to. Opening verifies the key before SQLite performs any I/O, so a wrong key can
//! never trigger hot-journal or WAL recovery.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use sqlite_vfs::{BaseFile, ReadStatus, SyncFlags};

use super::TdeContext;
use crate::crypto::{kcv_matches, key_check_value, random_array, Domain, XtsCipher};
use crate::error::{Error, Result};
use crate::format::{choose_slot, Header, HEADER_REGION_LEN, SLOT_LEN};
use crate::keycache::CacheKey;
use crate::kms::EncryptionContext;

/// State shared by a main database handle and its journal / WAL handles.
pub struct Database {
    pub path: String,
    pub header: Mutex<Header>,
    pub cipher: Arc<XtsCipher>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database").field("path", &self.path).finish_non_exhaustive()
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Read the header region through the handle SQLite opened (never a second descriptor:
/// closing one would drop this process's POSIX locks on the file).
pub fn read_region(base: &mut BaseFile) -> Result<Vec<u8>> {
    let size = base.file_size()?;
    let want = (size as usize).min(HEADER_REGION_LEN);
    let mut region = vec![0u8; want];
    if want > 0 {
        let st = base.read(&mut region, 0)?;
        debug_assert!(st == ReadStatus::Full || want < HEADER_REGION_LEN);
    }
    Ok(region)
}

/// Unwrap and verify the DEK of `header`, through the key cache.
pub fn unlock(ctx: &TdeContext, path: &str, header: &Header) -> Result<Arc<XtsCipher>> {
    if header.rekey.is_some() {
        return Err(Error::RekeyInProgress { path: path.to_string() });
    }
    let key = CacheKey::new(header.db_uuid, &header.wrapped_dek);
    ctx.cache.get_or_unwrap(key, &header.key.uri, || {
        let context = EncryptionContext::for_database(&header.db_uuid);
        let dek = ctx
            .kms
            .decrypt_data_key(&header.key, &header.wrapped_dek, &context)
            .map_err(|source| Error::Kms { path: path.to_string(), source })?;
        if !kcv_matches(&key_check_value(&dek, &header.db_uuid), &header.kcv) {
            return Err(Error::WrongKey { path: path.to_string() });
        }
        Ok(XtsCipher::new(&dek))
    })
}

/// Open an existing encrypted database file.
pub fn open_existing(ctx: &TdeContext, path: &str, base: &mut BaseFile) -> Result<Database> {
    let region = read_region(base)?;
    let (header, _slot) =
        choose_slot(&region).map_err(|source| Error::Header { path: path.to_string(), source })?;
    let cipher = unlock(ctx, path, &header)?;
    verify_content_key(path, base, &cipher)?;
    Ok(Database { path: path.to_string(), header: Mutex::new(header), cipher })
}

const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";
const JOURNAL_MAGIC: [u8; 8] = [0xd9, 0xd5, 0x05, 0xf9, 0x20, 0xa1, 0x63, 0xd7];

/// The key-check value proves the DEK matches the header; this proves the header matches the
/// pages (a header restored from, or swapped with, another database has a consistent but
/// wrong DEK). Page 1 must decrypt to SQLite's magic. A database whose page 1 was never
/// completely written (power loss during its first transaction) is accepted when its hot
/// journal or WAL decrypts to a valid magic instead, so SQLite can recover it. Runs before
/// SQLite reads anything, so a wrong key never reaches recovery.
fn verify_content_key(path: &str, base: &mut BaseFile, cipher: &XtsCipher) -> Result<()> {
    let size = base.file_size()?;
    if size < (HEADER_REGION_LEN + 16) as u64 {
        return Ok(()); // no page written yet
    }
    let mut block = [0u8; 16];
    base.read(&mut block, HEADER_REGION_LEN as u64)?;
    if block != [0u8; 16] {
        cipher.decrypt(Domain::Database, 0, &mut block);
        if &block == SQLITE_MAGIC {
            return Ok(());
        }
    }
    // Journals are not locked by SQLite, so reading them through a second descriptor cannot
    // drop any lock.
    let probe = |suffix: &str, domain: Domain, ok: &dyn Fn(&[u8; 16]) -> bool| -> bool {
        let Ok(mut f) = std::fs::File::open(format!("{path}{suffix}")) else { return false };
        let mut b = [0u8; 16];
        if std::io::Read::read_exact(&mut f, &mut b).is_err() {
            return false;
        }
        cipher.decrypt(domain, 0, &mut b);
        ok(&b)
    };
    if probe("-journal", Domain::Journal, &|b| b[..8] == JOURNAL_MAGIC)
        || probe("-wal", Domain::Wal, &|b| b[..3] == [0x37, 0x7f, 0x06] && (b[3] & 0xfe) == 0x82)
    {
        return Ok(());
    }
    Err(Error::WrongKey { path: path.to_string() })
}

/// Create the header of a new, empty database file under `key` and make it durable.
pub fn create(ctx: &TdeContext, path: &str, key: &str, base: &mut BaseFile) -> Result<Database> {
    let db_uuid = random_array::<16>().map_err(|e| Error::Config(e.to_string()))?;
    let context = EncryptionContext::for_database(&db_uuid);
    let generated = ctx
        .kms
        .generate_data_key(key, &context)
        .map_err(|source| Error::Kms { path: path.to_string(), source })?;
    let header = Header {
        sequence: 1,
        db_uuid,
        dek_created: now(),
        key: generated.key.clone(),
        wrapped_dek: generated.wrapped.clone(),
        kcv: key_check_value(&generated.plaintext, &db_uuid),
        rekey: None,
    };
    let slot_a = header.encode().map_err(|source| Error::Header { path: path.to_string(), source })?;
    let mut older = header.clone();
    older.sequence = 0;
    let slot_b = older.encode().map_err(|source| Error::Header { path: path.to_string(), source })?;
    let mut region = Vec::with_capacity(HEADER_REGION_LEN);
    region.extend_from_slice(&slot_a);
    region.extend_from_slice(&slot_b);
    debug_assert_eq!(region.len(), 2 * SLOT_LEN);
    base.write(&region, 0)?;
    base.sync(SyncFlags::FULL)?;
    let cipher = XtsCipher::new(&generated.plaintext);
    drop(generated); // wipes the plaintext DEK
    let cipher = ctx.cache.get_or_unwrap(CacheKey::new(db_uuid, &header.wrapped_dek), &header.key.uri, || {
        Ok::<_, Error>(cipher)
    })?;
    Ok(Database { path: path.to_string(), header: Mutex::new(header), cipher })
}

/// Open an existing database. A header still being written by a creator in another process
/// (it holds RESERVED while we may hold SHARED) can be seen half-written: retry briefly before
/// calling it corrupt.
pub fn open_existing_or_wait(ctx: &TdeContext, path: &str, base: &mut BaseFile) -> Result<Database> {
    let mut tries = 0;
    loop {
        match open_existing(ctx, path, base) {
            Err(Error::Header { source: crate::format::HeaderError::Truncated | crate::format::HeaderError::Corrupt(_) | crate::format::HeaderError::NotEncrypted, .. })
                if tries < 20 && base.file_size()? <= HEADER_REGION_LEN as u64 =>
            {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

/// Create the header of a still-empty database outside a SQLite transaction (for
/// `PRAGMA tde_create`, so an application learns about a bad key at open time). SQLite's
/// EXCLUSIVE lock, taken through the base handle, keeps other creators out meanwhile.
pub fn create_locked(ctx: &TdeContext, path: &str, key: &str, base: &mut BaseFile) -> Result<Option<Database>> {
    use sqlite_vfs::{ErrorCode, LockLevel};
    let mut tries = 0;
    loop {
        let r = base.lock(LockLevel::Shared).and_then(|_| base.lock(LockLevel::Exclusive));
        match r {
            Ok(()) => break,
            Err(e) if e.code == ErrorCode::Busy && tries < 500 => {
                let _ = base.unlock(LockLevel::None);
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => {
                let _ = base.unlock(LockLevel::None);
                return Err(e.into());
            }
        }
    }
    let result = match base.file_size() {
        Ok(0) => create(ctx, path, key, base).map(Some),
        Ok(_) => Ok(None), // another connection created it meanwhile
        Err(e) => Err(e.into()),
    };
    let _ = base.unlock(LockLevel::None);
    result
}

//! One open file of the encrypting VFS.

use std::sync::Arc;

use sqlite_vfs::{
    BaseFile, DeviceCharacteristics, FileControl, FileControlOutcome, FileKind, OpenRequest, PragmaOutcome,
    ReadStatus, ShimFile, VfsResult,
};

use super::blockio::EncryptedIo;
use super::database::{self, Database};
use super::{TdeContext, URI_KEY_PARAM};
use crate::crypto::{DataKey, Domain, XtsCipher};
use crate::error::{Error, Result};
use crate::format::HEADER_REGION_LEN;

/// How a file's bytes are stored.
enum Storage {
    /// AES-256-XTS blocks after `data_offset` bytes.
    Encrypted { cipher: Arc<XtsCipher>, domain: Domain, data_offset: u64 },
    /// The super-journal only: a list of file names, written in the clear by design.
    Plain,
}

/// A file opened through `tde`.
pub struct TdeFile {
    base: BaseFile,
    kind: FileKind,
    storage: Storage,
    /// Set for main databases and for the journal / WAL linked to one.
    db: Option<Arc<Database>>,
    ctx: Arc<TdeContext>,
    scratch: Vec<u8>,
}

impl TdeFile {
    /// The database this file belongs to, if any.
    pub fn database(&self) -> Option<&Arc<Database>> {
        self.db.as_ref()
    }

    fn io(&mut self) -> Option<EncryptedIo<'_, BaseFile>> {
        match &self.storage {
            Storage::Encrypted { cipher, domain, data_offset } => Some(EncryptedIo {
                raw: &mut self.base,
                cipher,
                domain: *domain,
                data_offset: *data_offset,
                scratch: &mut self.scratch,
            }),
            Storage::Plain => None,
        }
    }

    fn status_json(&self) -> String {
        let mut v = serde_json::json!({
            "vfs": self.ctx.vfs_name,
            "file_kind": self.kind.as_str(),
            "cipher": "aes-256-xts",
            "cache": self.ctx.cache.metrics(),
            "cache_ttl_secs": self.ctx.cache.config().ttl.as_secs(),
        });
        if let Some(db) = &self.db {
            let h = db.header.lock().unwrap_or_else(|p| p.into_inner());
            v["db_uuid"] = uuid::Uuid::from_bytes(h.db_uuid).to_string().into();
            v["key"] = h.key.uri.clone().into();
            v["key_version"] = h.key.version.into();
            v["header_sequence"] = h.sequence.into();
        }
        v.to_string()
    }
}

/// Open hook: classify, link, verify keys, and build the file.
pub fn open(ctx: &Arc<TdeContext>, req: &OpenRequest<'_>, mut base: BaseFile, main_db: Option<&TdeFile>) -> Result<TdeFile> {
    let path = req.path.unwrap_or("(anonymous)").to_string();
    let (storage, db) = match req.kind {
        FileKind::MainDb => {
            let size = base.file_size()?;
            let db = if size == 0 {
                if !req.flags.read_write() {
                    return Err(Error::EmptyReadOnly { path });
                }
                let key = req.uri_parameter(URI_KEY_PARAM).unwrap_or_else(|| ctx.default_key.clone());
                database::create_locked(ctx, &path, &key, &mut base)?
            } else {
                database::open_existing_or_wait(ctx, &path, &mut base)?
            };
            let db = Arc::new(db);
            let storage = Storage::Encrypted {
                cipher: db.cipher.clone(),
                domain: Domain::Database,
                data_offset: HEADER_REGION_LEN as u64,
            };
            (storage, Some(db))
        }
        FileKind::MainJournal | FileKind::Wal => {
            // Journals must be readable by any connection to the database (hot-journal and WAL
            // recovery), so they use the database's DEK. Without a link we cannot know the key:
            // refuse rather than write anything unencrypted.
            let db = main_db.and_then(|m| m.db.clone()).ok_or_else(|| {
                Error::Vfs(super::misuse(format!(
                    "{path}: cannot link this {} to an encrypted main database",
                    req.kind.as_str()
                )))
            })?;
            let domain = if req.kind == FileKind::Wal { Domain::Wal } else { Domain::Journal };
            (Storage::Encrypted { cipher: db.cipher.clone(), domain, data_offset: 0 }, Some(db))
        }
        FileKind::SuperJournal => (Storage::Plain, None),
        FileKind::SubJournal | FileKind::TempDb | FileKind::TempJournal | FileKind::TransientDb => {
            // Never outlives this connection: a random key that is never stored.
            let key = DataKey::generate().map_err(|e| Error::Config(e.to_string()))?;
            (Storage::Encrypted { cipher: Arc::new(XtsCipher::new(&key)), domain: Domain::Temporary, data_offset: 0 }, None)
        }
    };
    Ok(TdeFile { base, kind: req.kind, storage, db, ctx: ctx.clone(), scratch: Vec::new() })
}

impl ShimFile for TdeFile {
    fn base(&mut self) -> &mut BaseFile {
        &mut self.base
    }

    fn read(&mut self, buf: &mut [u8], offset: u64) -> VfsResult<ReadStatus> {
        match self.io() {
            Some(mut io) => io.read(buf, offset),
            None => self.base.read(buf, offset),
        }
    }

    fn write(&mut self, buf: &[u8], offset: u64) -> VfsResult<()> {
        match self.io() {
            Some(mut io) => io.write(buf, offset),
            None => self.base.write(buf, offset),
        }
    }

    fn truncate(&mut self, size: u64) -> VfsResult<()> {
        match self.io() {
            Some(mut io) => io.truncate(size),
            None => self.base.truncate(size),
        }
    }

    fn file_size(&mut self) -> VfsResult<u64> {
        match self.io() {
            Some(mut io) => io.logical_size(),
            None => self.base.file_size(),
        }
    }

    fn device_characteristics(&mut self) -> DeviceCharacteristics {
        let base = self.base.device_characteristics();
        if matches!(self.storage, Storage::Plain) {
            return base;
        }
        // Edge blocks of a write are re-encrypted whole (read-modify-write of up to 15 bytes
        // around the requested range), so "a crash changes only the bytes written" no longer
        // holds below 16-byte granularity, and multi-sector atomic writes are not ours to
        // promise. SQLite then pads and aligns its journals to the sector size.
        base.without(
            DeviceCharacteristics::POWERSAFE_OVERWRITE
                | DeviceCharacteristics::ATOMIC_ANY
                | DeviceCharacteristics::SAFE_APPEND,
        )
    }

    fn file_control(&mut self, op: FileControl) -> FileControlOutcome {
        match op {
            // Both make the base VFS grow the raw file to sizes computed in logical bytes,
            // which would desynchronise the length encoding; they are only hints.
            FileControl::SizeHint(_) | FileControl::ChunkSize(_) => FileControlOutcome::NotFound,
            _ => FileControlOutcome::Forward,
        }
    }

    fn pragma(&mut self, name: &str, _value: Option<&str>) -> PragmaOutcome {
        match name.to_ascii_lowercase().as_str() {
            "tde_status" => PragmaOutcome::Handled(Some(self.status_json())),
            n if n.starts_with("tde_") => PragmaOutcome::Failed(format!("unknown pragma {n}")),
            _ => PragmaOutcome::NotFound,
        }
    }
}

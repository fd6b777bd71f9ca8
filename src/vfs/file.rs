//! One open file of the encrypting VFS.

use std::sync::Arc;

use sqlite_vfs::{
    BaseFile, DeviceCharacteristics, FileControl, FileControlOutcome, FileKind, LockLevel, OpenRequest, PragmaOutcome,
    ReadStatus, ShimFile, VfsResult,
};

use super::blockio::EncryptedIo;
use super::database::{self, Database};
use super::{TdeContext, ENV_KEY, URI_KEY_PARAM};
use crate::crypto::{DataKey, Domain, XtsCipher};
use crate::error::{set_last_open_error, Error, Result};
use crate::format::HEADER_REGION_LEN;

/// How a file's bytes are stored.
enum Storage {
    /// AES-256-XTS blocks after `data_offset` bytes.
    Encrypted { cipher: Arc<XtsCipher>, domain: Domain, data_offset: u64 },
    /// The super-journal only: a list of file names, written in the clear by design.
    Plain,
    /// A main database whose file was empty at open: the header (and so the key) is created
    /// when this connection first takes a write lock, or loaded when another connection has
    /// created it meanwhile. Until then the database is empty; nothing can be written.
    PendingMain {
        /// CMK for the header: `PRAGMA tde_key`, else the URI `key=`, else `SQLITE_TDE_KEY`,
        /// else the VFS default.
        key: String,
    },
}

/// A file opened through `tde`.
pub struct TdeFile {
    base: BaseFile,
    kind: FileKind,
    storage: Storage,
    /// Set for main databases and for the journal / WAL linked to one.
    db: Option<Arc<Database>>,
    ctx: Arc<TdeContext>,
    path: String,
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
            Storage::Plain | Storage::PendingMain { .. } => None,
        }
    }

    /// Leave the pending state: load the header another connection wrote, or (when `create`
    /// and the file is still empty) create it. Creation only happens while SQLite holds at
    /// least RESERVED on this file, which serialises creators across processes.
    fn settle(&mut self, create: bool) -> std::result::Result<(), Error> {
        let Storage::PendingMain { key } = &self.storage else { return Ok(()) };
        let key = key.clone();
        let path = self.path.clone();
        let size = self.base.file_size()?;
        let db = if size > 0 {
            database::open_existing_or_wait(&self.ctx, &path, &mut self.base)?
        } else if create {
            database::create(&self.ctx, &path, &key, &mut self.base)?
        } else {
            return Ok(());
        };
        let db = Arc::new(db);
        self.storage = Storage::Encrypted {
            cipher: db.cipher.clone(),
            domain: Domain::Database,
            data_offset: HEADER_REGION_LEN as u64,
        };
        self.db = Some(db);
        Ok(())
    }

    /// `PRAGMA tde_create`: create the header of a pending database now, outside a write
    /// transaction (the page size stays changeable until SQLite writes page 1).
    fn create_now(&mut self) -> std::result::Result<(), Error> {
        self.settle(false)?;
        let Storage::PendingMain { key } = &self.storage else { return Ok(()) };
        let key = key.clone();
        let path = self.path.clone();
        if let Some(db) = database::create_locked(&self.ctx, &path, &key, &mut self.base)? {
            let db = Arc::new(db);
            self.storage = Storage::Encrypted {
                cipher: db.cipher.clone(),
                domain: Domain::Database,
                data_offset: HEADER_REGION_LEN as u64,
            };
            self.db = Some(db);
            Ok(())
        } else {
            self.settle(false)
        }
    }

    /// `settle`, reporting failures to SQLite (and the detailed error to this thread).
    fn settle_vfs(&mut self, create: bool) -> VfsResult<()> {
        self.settle(create).map_err(|e| {
            let v = e.to_vfs();
            set_last_open_error(e);
            v
        })
    }

    /// `PRAGMA tde_key[=KEY]`: choose the CMK of a database this connection creates. The key
    /// of an existing database is named by its header (change it with `sqlite-tde rewrap`),
    /// so on an existing database this only reports the key in use.
    fn pragma_key(&mut self, value: Option<&str>) -> PragmaOutcome {
        if self.kind != FileKind::MainDb {
            return PragmaOutcome::NotFound;
        }
        if let Err(e) = self.settle(false) {
            return PragmaOutcome::Failed(e.to_string());
        }
        match (&mut self.storage, value) {
            (Storage::PendingMain { key }, Some(v)) => {
                let v = v.trim_matches(|c| c == '\'' || c == '"');
                if v.is_empty() {
                    return PragmaOutcome::Failed("tde_key: empty key".into());
                }
                *key = v.to_string();
                PragmaOutcome::Handled(Some(format!("pending:{v}")))
            }
            (Storage::PendingMain { key }, None) => PragmaOutcome::Handled(Some(format!("pending:{key}"))),
            _ => {
                let uri = self.db.as_ref().map(|d| d.header.lock().unwrap_or_else(|p| p.into_inner()).key.uri.clone());
                PragmaOutcome::Handled(uri)
            }
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
        if let Storage::PendingMain { key } = &self.storage {
            v["state"] = "pending-create".into();
            v["pending_key"] = key.clone().into();
        }
        if let Some(db) = &self.db {
            v["state"] = "open".into();
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
            if base.file_size()? == 0 {
                let key = req
                    .uri_parameter(URI_KEY_PARAM)
                    .or_else(|| std::env::var(ENV_KEY).ok().filter(|k| !k.is_empty()))
                    .unwrap_or_else(|| ctx.default_key.clone());
                (Storage::PendingMain { key }, None)
            } else {
                let db = Arc::new(database::open_existing_or_wait(ctx, &path, &mut base)?);
                let storage = Storage::Encrypted {
                    cipher: db.cipher.clone(),
                    domain: Domain::Database,
                    data_offset: HEADER_REGION_LEN as u64,
                };
                (storage, Some(db))
            }
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
    Ok(TdeFile { base, kind: req.kind, storage, db, ctx: ctx.clone(), path, scratch: Vec::new() })
}

impl ShimFile for TdeFile {
    fn base(&mut self) -> &mut BaseFile {
        &mut self.base
    }

    fn read(&mut self, buf: &mut [u8], offset: u64) -> VfsResult<ReadStatus> {
        self.settle_vfs(false)?;
        if let Storage::PendingMain { .. } = self.storage {
            buf.fill(0);
            return Ok(ReadStatus::Short);
        }
        match self.io() {
            Some(mut io) => io.read(buf, offset),
            None => self.base.read(buf, offset),
        }
    }

    fn write(&mut self, buf: &[u8], offset: u64) -> VfsResult<()> {
        self.settle_vfs(true)?;
        match self.io() {
            Some(mut io) => io.write(buf, offset),
            None => self.base.write(buf, offset),
        }
    }

    fn truncate(&mut self, size: u64) -> VfsResult<()> {
        self.settle_vfs(size > 0)?;
        if let Storage::PendingMain { .. } = self.storage {
            return Ok(()); // still empty: truncating to 0 changes nothing
        }
        match self.io() {
            Some(mut io) => io.truncate(size),
            None => self.base.truncate(size),
        }
    }

    fn file_size(&mut self) -> VfsResult<u64> {
        self.settle_vfs(false)?;
        if let Storage::PendingMain { .. } = self.storage {
            return Ok(0);
        }
        match self.io() {
            Some(mut io) => io.logical_size(),
            None => self.base.file_size(),
        }
    }

    fn after_lock_change(&mut self, level: LockLevel) -> VfsResult<()> {
        // A writer creates the header as soon as it holds RESERVED, before SQLite opens the
        // journal or WAL, which must find the database's key.
        self.settle_vfs(level >= LockLevel::Reserved)
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

    fn pragma(&mut self, name: &str, value: Option<&str>) -> PragmaOutcome {
        match name.to_ascii_lowercase().as_str() {
            "tde_status" => PragmaOutcome::Handled(Some(self.status_json())),
            "tde_key" => self.pragma_key(value),
            "tde_create" => match self.create_now() {
                Ok(()) => self.pragma_key(None),
                Err(e) => {
                    let msg = e.to_string();
                    set_last_open_error(e);
                    PragmaOutcome::Failed(msg)
                }
            },
            n if n.starts_with("tde_") => PragmaOutcome::Failed(format!("unknown pragma {n}")),
            _ => PragmaOutcome::NotFound,
        }
    }
}

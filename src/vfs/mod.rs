//! The encrypting VFS `tde`, layered over the default OS VFS with the `sqlite-vfs` binding.
//!
//! Every file kind is encrypted: the main database and its journal and WAL with the
//! database's DEK (domain-separated tweaks), temporary files with an ephemeral key that is
//! never stored. Only the super-journal (a list of journal file names) stays plain. mmap is
//! declined, so SQLite always reads through `xRead`.

pub mod blockio;
pub mod database;
mod file;
mod lineage;
mod pinning;
pub mod rotation;
mod sidefiles;

use std::sync::Arc;

use sqlite_vfs::{BaseFile, ErrorCode, FileKind, OpenRequest, RegisterOptions, Shim, VfsError, VfsResult};

pub use database::Database;
pub use file::{TdeFile, URI_CONVERT_PARAM, URI_TRUST_FORMAT_1_PARAM};

use crate::error::{set_last_open_error, Error};
use crate::keycache::{CacheConfig, EpochProbe, KeyCache};
use crate::kms::{Kms, DEFAULT_KEY_ALIAS};

/// Name under which the encrypting VFS is registered by default.
pub const VFS_NAME: &str = "tde";

/// URI parameter that selects the CMK a new database is created under.
pub const URI_KEY_PARAM: &str = "key";

/// Environment variable naming the CMK for new databases (when no URI `key=` or
/// `PRAGMA tde_key` says otherwise).
pub const ENV_KEY: &str = "SQLITE_TDE_KEY";

/// `SQLITE_TDE_KEY`, read once where a registration is configured.
pub fn named_key_from_env() -> Option<String> {
    std::env::var(ENV_KEY).ok().filter(|k| !k.is_empty())
}

/// What every file of one registered VFS shares: the KMS, the default key and the key cache.
pub struct TdeContext {
    pub kms: Arc<dyn Kms>,
    pub default_key: String,
    /// A key every main database is named under unless its URI names another
    /// ([`VfsConfig::named_key`]).
    pub named_key: Option<String>,
    pub cache: KeyCache,
    pub vfs_name: String,
    /// Which connection created which database (key inheritance).
    pub(crate) lineage: lineage::Lineage,
    /// Key names resolved for key pinning.
    pub(crate) resolved_names: pinning::ResolvedNames,
}

impl std::fmt::Debug for TdeContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TdeContext").field("vfs", &self.vfs_name).field("default_key", &self.default_key).finish()
    }
}

/// Settings of one registration of the encrypting VFS.
pub struct VfsConfig {
    pub name: String,
    pub kms: Arc<dyn Kms>,
    /// CMK for databases created without an explicit key.
    pub default_key: String,
    /// A key the process names for every main database whose URI names none (`SQLITE_TDE_KEY`,
    /// see [`named_key_from_env`]): unlike `default_key` it pins existing databases, and a
    /// database created through a connection is created under it rather than inheriting the
    /// connection's key.
    pub named_key: Option<String>,
    pub cache: CacheConfig,
    /// Register as the process's default VFS.
    pub make_default: bool,
    /// VFS to layer over (`None`: the default VFS).
    pub base_vfs: Option<String>,
    /// Revocation epoch of the KMS (see [`crate::keycache`]): cached keys are revalidated as
    /// soon as it changes. The embedded KMS uses its keystore file's identity.
    pub epoch_probe: Option<EpochProbe>,
}

impl VfsConfig {
    pub fn new(kms: Arc<dyn Kms>) -> VfsConfig {
        VfsConfig {
            name: VFS_NAME.into(),
            kms,
            default_key: DEFAULT_KEY_ALIAS.into(),
            named_key: None,
            cache: CacheConfig::default(),
            make_default: false,
            base_vfs: None,
            epoch_probe: None,
        }
    }
}

/// The shim handed to the binding.
pub struct TdeShim {
    ctx: Arc<TdeContext>,
}

impl Shim for TdeShim {
    type File = TdeFile;

    fn open(&self, req: &OpenRequest<'_>, base: BaseFile, main_db: Option<&TdeFile>) -> VfsResult<TdeFile> {
        file::open(&self.ctx, req, base, main_db).map_err(|e| {
            let v = e.to_vfs();
            set_last_open_error(e);
            v
        })
    }

    fn physical_path(&self, path: &str, kind: Option<FileKind>) -> VfsResult<Option<String>> {
        sidefiles::physical_path(path, kind)
    }
}

/// Register the encrypting VFS with the SQLite this process links against.
pub fn register_static(config: VfsConfig) -> Result<Arc<TdeContext>, Error> {
    let (ctx, shim, opts) = prepare(config);
    sqlite_vfs::register_static(&ctx.vfs_name, shim, opts)?;
    Ok(ctx)
}

/// Register through a loadable-extension API table (see `ext`).
///
/// # Safety
/// `api` must be the `sqlite3_api_routines` pointer SQLite passed to the extension entry point.
#[allow(unsafe_code)]
pub unsafe fn register_with_api(
    api: *const rusqlite::ffi::sqlite3_api_routines,
    config: VfsConfig,
) -> Result<(Arc<TdeContext>, sqlite_vfs::RegisteredVfs), Error> {
    let (ctx, shim, opts) = prepare(config);
    // SAFETY: forwarded contract of this function.
    let vfs = unsafe { sqlite_vfs::register_with_api(api, &ctx.vfs_name, shim, opts)? };
    Ok((ctx, vfs))
}

fn prepare(config: VfsConfig) -> (Arc<TdeContext>, TdeShim, RegisterOptions) {
    let ctx = Arc::new(TdeContext {
        kms: config.kms,
        default_key: config.default_key,
        named_key: config.named_key,
        cache: KeyCache::with_probe(config.cache, config.epoch_probe),
        vfs_name: config.name,
        resolved_names: pinning::ResolvedNames::default(),
        lineage: lineage::Lineage::default(),
    });
    // Revocations made in this process's embedded KMS (disable, deletion, ...) drop cached
    // data keys at once, for static and extension registrations alike.
    let listener: std::sync::Weak<TdeContext> = Arc::downgrade(&ctx);
    crate::kms::events::subscribe(listener);
    let opts = RegisterOptions { base: config.base_vfs, make_default: config.make_default };
    (ctx.clone(), TdeShim { ctx }, opts)
}

impl crate::kms::events::KeyEventListener for TdeContext {
    fn key_revoked(&self, key_uri: &str) {
        self.cache.invalidate_key(key_uri);
    }
}

pub(crate) fn misuse(msg: impl Into<String>) -> VfsError {
    VfsError::new(ErrorCode::CantOpen, msg)
}

/// Is `kind` a file this VFS refuses to open (never: every kind is classified). Kept as a
/// single place to document the policy.
pub fn kind_policy(kind: FileKind) -> &'static str {
    match kind {
        FileKind::MainDb => "encrypted with the database DEK after an 8 KiB header",
        FileKind::MainJournal | FileKind::Wal => "encrypted with the database DEK",
        FileKind::SuperJournal => "plain: holds only journal file names",
        _ => "encrypted with an ephemeral per-file key",
    }
}

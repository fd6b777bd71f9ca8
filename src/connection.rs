//! The Rust API: register the encrypting VFS and open `rusqlite::Connection`s through it.
//!
//! ```no_run
//! let tde = sqlite_tde::Tde::builder().keystore("/tmp/ks").register()?;
//! let conn = tde.open("app.db")?;               // created under the default key on first open
//! conn.execute_batch("CREATE TABLE IF NOT EXISTS t(x)")?;
//! # Ok::<(), sqlite_tde::Error>(())
//! ```

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags};

use crate::error::{take_last_open_error, Error, Result};
use crate::keycache::CacheConfig;
use crate::kms::{Kms, KmsSpec, DEFAULT_KEY_ALIAS};
use crate::vfs::{self, TdeContext, VfsConfig, VFS_NAME};

/// Environment variable selecting the KMS ([`KmsSpec`]): `local:[KEYSTORE_DIR]` (default),
/// `unix:SOCKET` (the KMS daemon), or `openbao+http(s)://HOST:PORT/MOUNT/KEY` for OpenBao /
/// Vault transit (credentials from `BAO_TOKEN` / `VAULT_TOKEN`, a token file or AppRole).
pub use crate::kms::ENV_KMS;

/// A registered encrypting VFS.
#[derive(Debug, Clone)]
pub struct Tde {
    ctx: Arc<TdeContext>,
}

/// How to register a [`Tde`].
#[derive(Debug, Clone)]
pub struct TdeBuilder {
    keystore: Option<PathBuf>,
    vfs_name: String,
    default_key: String,
    cache: CacheConfig,
    make_default: bool,
    base_vfs: Option<String>,
    epoch_probe: Option<crate::keycache::EpochProbe>,
    kms: Option<KmsSpec>,
    principal: Option<String>,
}

/// Options of one open.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// CMK (key id, `alias/NAME` or key URI) of the database: a new one is created under it,
    /// an existing one must be under it (after alias resolution), else the open fails with
    /// [`Error::KeyMismatch`](crate::Error::KeyMismatch) and changes nothing. `None`: a new
    /// database gets the VFS's default key, an existing one opens under whatever key its
    /// header names.
    pub key: Option<String>,
    /// Open read-only.
    pub read_only: bool,
    /// Fail instead of creating a missing database.
    pub must_exist: bool,
    /// Finish an interrupted rekey or in-place encryption whose state was written by a
    /// format-1 build (not authenticated: anyone who can write the file could have forged
    /// it). Only on an operator's explicit decision (`--trust-format-1`); docs/FORMAT.md §11.
    pub trust_format_1: bool,
}

/// Registrations made by this process, by VFS name (a name can be registered only once).
static REGISTERED: Mutex<Vec<Tde>> = Mutex::new(Vec::new());

impl TdeBuilder {
    /// Keystore directory of the embedded KMS (default: `SQLITE_TDE_KEYSTORE`, XDG data dir).
    pub fn keystore(mut self, dir: impl Into<PathBuf>) -> Self {
        self.keystore = Some(dir.into());
        self
    }
    /// Register under another name than `tde` (e.g. one VFS per keystore in tests).
    pub fn vfs_name(mut self, name: impl Into<String>) -> Self {
        self.vfs_name = name.into();
        self
    }
    /// CMK for databases created without an explicit key.
    pub fn default_key(mut self, key: impl Into<String>) -> Self {
        self.default_key = key.into();
        self
    }
    /// Key cache thresholds.
    pub fn cache(mut self, cache: CacheConfig) -> Self {
        self.cache = cache;
        self
    }
    /// Make this the process's default VFS.
    pub fn make_default(mut self, yes: bool) -> Self {
        self.make_default = yes;
        self
    }

    /// Layer over this registered VFS instead of the default one (tests stack a recording VFS
    /// underneath to see every byte written).
    pub fn base_vfs(mut self, name: impl Into<String>) -> Self {
        self.base_vfs = Some(name.into());
        self
    }

    /// Revocation epoch of a custom KMS: cached data keys are revalidated with the KMS as
    /// soon as the probe's value changes (see [`crate::keycache`]). The embedded KMS gets one
    /// automatically: its keystore file's identity, so a key disabled by another process is
    /// noticed at the next open.
    pub fn epoch_probe(mut self, probe: crate::keycache::EpochProbe) -> Self {
        self.epoch_probe = Some(probe);
        self
    }

    /// Register with an explicit KMS.
    pub fn register_with_kms(self, kms: Arc<dyn Kms>) -> Result<Tde> {
        let mut reg = REGISTERED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = reg.iter().find(|t| t.ctx.vfs_name == self.vfs_name) {
            return Ok(t.clone());
        }
        let mut cfg = VfsConfig::new(kms);
        cfg.name = self.vfs_name;
        cfg.default_key = self.default_key;
        cfg.named_key = vfs::named_key_from_env();
        cfg.cache = self.cache;
        cfg.make_default = self.make_default;
        cfg.base_vfs = self.base_vfs;
        cfg.epoch_probe = self.epoch_probe;
        let ctx = vfs::register_static(cfg)?;
        let tde = Tde { ctx };
        reg.push(tde.clone());
        Ok(tde)
    }

    /// Use this KMS instead of the one `SQLITE_TDE_KMS` selects.
    pub fn kms(mut self, spec: KmsSpec) -> Self {
        self.kms = Some(spec);
        self
    }

    /// The principal the embedded KMS acts for (default: the OS user). A daemon or OpenBao
    /// authenticates the caller itself and ignores it.
    pub fn principal(mut self, principal: impl Into<String>) -> Self {
        self.principal = Some(principal.into());
        self
    }

    /// Register with the KMS of [`TdeBuilder::kms`], else the one the environment selects
    /// (`SQLITE_TDE_KMS`; the embedded KMS by default). Registering a name twice returns the
    /// first registration.
    pub fn register(mut self) -> Result<Tde> {
        let spec = match self.kms.take() {
            Some(s) => s,
            None => KmsSpec::from_env().map_err(|e| Error::Config(e.to_string()))?,
        };
        let keystore = self.keystore.clone();
        let kms = spec
            .connect(keystore.as_deref(), self.principal.as_deref())
            .map_err(|e| Error::Config(format!("{ENV_KMS}: {e}")))?;
        if self.epoch_probe.is_none() {
            if let Some(dir) = spec.local_keystore(keystore.as_deref()) {
                self.epoch_probe = Some(crate::keycache::keystore_file_probe(dir.join("keystore.json")));
            }
        }
        self.register_with_kms(kms)
    }
}

/// Build the KMS selected by `SQLITE_TDE_KMS` (default `local:`). `keystore` applies to the
/// local provider only.
pub fn kms_from_env(keystore: Option<PathBuf>) -> Result<Arc<dyn Kms>> {
    let spec = KmsSpec::from_env().map_err(|e| Error::Config(e.to_string()))?;
    spec.connect(keystore.as_deref(), None).map_err(|e| Error::Config(format!("{ENV_KMS}: {e}")))
}

/// Percent-encode a path for a `file:` URI (SQLite decodes `%HH`; `?` and `#` end the path).
fn uri_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Tde {
    /// Start configuring a registration.
    pub fn builder() -> TdeBuilder {
        TdeBuilder {
            keystore: None,
            vfs_name: VFS_NAME.into(),
            default_key: DEFAULT_KEY_ALIAS.into(),
            cache: CacheConfig::default(),
            make_default: false,
            base_vfs: None,
            epoch_probe: None,
            kms: None,
            principal: None,
        }
    }

    /// The name SQLite knows this VFS by.
    pub fn vfs_name(&self) -> &str {
        &self.ctx.vfs_name
    }

    /// Shared state (KMS, key cache).
    pub fn context(&self) -> &Arc<TdeContext> {
        &self.ctx
    }

    /// Open (creating under the default key if missing) an encrypted database.
    pub fn open(&self, path: impl AsRef<Path>) -> Result<Connection> {
        self.open_with(path, &OpenOptions::default())
    }

    /// Open with options.
    pub fn open_with(&self, path: impl AsRef<Path>, opts: &OpenOptions) -> Result<Connection> {
        let path = path.as_ref();
        let path_str = path.to_str().ok_or_else(|| Error::Config(format!("path is not UTF-8: {}", path.display())))?;
        let mut uri = format!("file:{}?vfs={}", uri_escape(path_str), uri_escape(&self.ctx.vfs_name));
        if let Some(k) = &opts.key {
            uri.push_str("&key=");
            uri.push_str(&uri_escape(k));
        }
        if opts.trust_format_1 {
            uri.push_str(&format!("&{}=1", crate::vfs::URI_TRUST_FORMAT_1_PARAM));
        }
        let mut flags = OpenFlags::SQLITE_OPEN_URI | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if opts.read_only {
            flags |= OpenFlags::SQLITE_OPEN_READ_ONLY;
        } else {
            flags |= OpenFlags::SQLITE_OPEN_READ_WRITE;
            if !opts.must_exist {
                flags |= OpenFlags::SQLITE_OPEN_CREATE;
            }
        }
        // A new database's header is created when the first write lock is taken. Create it
        // now, so a bad key or an unreachable KMS fails this call rather than the first write
        // (without a write transaction, which would fix the page size).
        let is_new = !opts.read_only && std::fs::metadata(path).map(|m| m.len() == 0).unwrap_or(true);
        let _ = take_last_open_error();
        let conn = match Connection::open_with_flags(&uri, flags) {
            Ok(c) => c,
            Err(e) => return Err(take_last_open_error().unwrap_or(Error::Sqlite(e))),
        };
        if is_new {
            if let Err(e) = conn.query_row("PRAGMA tde_create", [], |_| Ok(())) {
                return Err(take_last_open_error().unwrap_or(Error::Sqlite(e)));
            }
        }
        Ok(conn)
    }
}

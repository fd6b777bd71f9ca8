//! SQLite loadable-extension entry points: register the encrypting VFS `tde` in whatever SQLite
//! loaded us (the `sqlite3` shell, Python's `sqlite3`, better-sqlite3, ...).
//!
//! The shared library is built by the workspace member `ext/` (package `sqlite-tde-ext`), which
//! links these entry points into `libtde.so`:
//!
//! ```text
//! cargo build --release -p sqlite-tde-ext      # -> target/release/libtde.so
//! sqlite3> .load ./target/release/libtde
//! sqlite3> .open file:app.db?vfs=tde&key=alias/app
//! ```
//!
//! SQLite derives the entry point `sqlite3_tde_init` from the file name `libtde.so`.
//! `sqlite3_tde_default_init` (pass it as the entry point name) also makes `tde` the process's
//! default VFS, for hosts that cannot name a VFS (no URI support, e.g. better-sqlite3); so does
//! `SQLITE_TDE_DEFAULT_VFS=1` in the environment with the ordinary entry point.
//!
//! Every call into SQLite goes through the host's `sqlite3_api_routines` (`pApi`), never through
//! a linked symbol, so the library works with any host SQLite >= 3.32 (Debian 12 ships 3.40.1).
//! The KMS is chosen from the environment at load time (`SQLITE_TDE_KMS`, `SQLITE_TDE_KEYSTORE`,
//! see [`crate::kms::KmsSpec`]); the key of a new database from the URI `key=`,
//! `PRAGMA tde_key` or `SQLITE_TDE_KEY` (see [`crate::vfs`]).
//!
//! The entry points return `SQLITE_OK_LOAD_PERMANENTLY`: the VFS outlives the connection that
//! loaded it (SQLite never unloads the library), as SQLite's own `cksumvfs` does. Loading a
//! second time (another `.load`, another connection) registers nothing new; with the default
//! flag it makes the already registered `tde` the default VFS. A `tde` VFS that this copy of
//! the library did not register (another extension, a program, another build of sqlite-tde)
//! is refused: the load fails with an error instead of reporting success while databases
//! opened with `vfs=tde` would go through code that is not ours.
//!
//! The crate denies `unsafe` code; here only the two entry points and their shared body `init`
//! are allowed it, because they receive raw pointers from C. Everything else is safe code.

use std::ffi::{c_char, c_int};
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Mutex;

use rusqlite::ffi::{sqlite3, sqlite3_api_routines};
use sqlite_vfs::api::SqliteApi;

use crate::keycache::keystore_file_probe;
use crate::kms::KmsSpec;
use crate::vfs::{VfsConfig, VFS_NAME};

/// `SQLITE_OK_LOAD_PERMANENTLY`: the extension stays loaded after the connection that loaded
/// it closes (SQLite >= 3.14).
pub const SQLITE_OK_LOAD_PERMANENTLY: c_int = 256;

/// Environment variable: when true (`1`, `true`, `yes`, `on`), `sqlite3_tde_init` also makes
/// `tde` the default VFS.
pub const ENV_DEFAULT_VFS: &str = "SQLITE_TDE_DEFAULT_VFS";
/// Environment variable (`1`): drop a database's key as soon as its last connection closes
/// (`CacheConfig::forget_on_last_close`), instead of keeping it warm for the cache TTL.
pub const ENV_FORGET_ON_CLOSE: &str = "SQLITE_TDE_FORGET_ON_CLOSE";

/// File name of the shared library built by `ext/` on this platform.
pub const LIBRARY_FILE_NAME: &str = if cfg!(target_os = "macos") {
    "libtde.dylib"
} else if cfg!(windows) {
    "tde.dll"
} else {
    "libtde.so"
};

const SQLITE_OK: c_int = 0;
const SQLITE_ERROR: c_int = 1;

/// Serialises loads (two connections of one process may load the library at once).
static LOAD_LOCK: Mutex<()> = Mutex::new(());

/// Address of the `sqlite3_vfs` this copy of the library registered as `tde` (0: none yet).
/// Only ever compared with what `sqlite3_vfs_find` returns, never dereferenced: that is how a
/// reload recognises its own VFS without reading memory a foreign one owns.
static REGISTERED: Mutex<usize> = Mutex::new(0);

/// Whether the VFS should become the default VFS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DefaultVfs {
    /// `sqlite3_tde_init`: as `SQLITE_TDE_DEFAULT_VFS` says.
    FromEnv,
    /// `sqlite3_tde_default_init`: always.
    Yes,
}

/// Parse a boolean environment value.
fn parse_flag(name: &str, value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "" | "0" | "false" | "no" | "off" => Ok(false),
        other => Err(format!("{name}={other:?}: expected 1/0, true/false, yes/no or on/off")),
    }
}

fn wants_default(mode: DefaultVfs) -> Result<bool, String> {
    match mode {
        DefaultVfs::Yes => Ok(true),
        DefaultVfs::FromEnv => match std::env::var(ENV_DEFAULT_VFS) {
            Ok(v) => parse_flag(ENV_DEFAULT_VFS, &v),
            Err(std::env::VarError::NotPresent) => Ok(false),
            Err(std::env::VarError::NotUnicode(_)) => Err(format!("{ENV_DEFAULT_VFS} is not UTF-8")),
        },
    }
}

/// The VFS configuration a load registers: the KMS the environment selects, everything else
/// at its defaults (name `tde`, over the default VFS at load time), as `Tde::builder().register()`
/// does for Rust programs.
fn config_from_env(make_default: bool) -> Result<VfsConfig, String> {
    let spec = KmsSpec::from_env().map_err(|e| match e {
        crate::kms::KmsError::InvalidRequest(m) => m,
        other => other.to_string(),
    })?;
    let kms = spec.connect(None, None).map_err(|e| format!("{}: {e}", crate::kms::ENV_KMS))?;
    let mut config = VfsConfig::new(kms);
    config.make_default = make_default;
    config.named_key = crate::vfs::named_key_from_env();
    if let Ok(v) = std::env::var(ENV_FORGET_ON_CLOSE) {
        config.cache.forget_on_last_close = parse_flag(ENV_FORGET_ON_CLOSE, &v)?;
    }
    // The embedded KMS: cached data keys are revalidated as soon as its keystore file changes
    // (a key disabled by `sqlite-tde kms` takes effect in long-lived clients too).
    config.epoch_probe = spec.local_keystore(None).map(|d| keystore_file_probe(d.join("keystore.json")));
    Ok(config)
}

/// SQLite versions before this one may lose WAL commits after a crash when a transaction
/// rolled back to a savepoint after its cache spilled to the WAL: `sqlite3WalSavepointUndo`
/// did not reset the pending checksum rewrite, so the commit's checksum chain continued from
/// a stale frame. Verified affected: 3.40.1 (Debian 12); verified fixed: 3.54.1 (the bundled
/// build). A VFS cannot repair SQLite's in-memory WAL state, so the extension says so once
/// (docs/RELIABILITY.md, "Upstream SQLite bugs"; `tests/wal_savepoint.rs`).
const WAL_SAVEPOINT_FIX: i32 = 3_054_001;

/// `sqlite3_log` warnings about the host SQLite, once per process (at the first load).
fn warn_about_host(api: &SqliteApi) {
    const SQLITE_WARNING: i32 = 28;
    let v = api.version_number();
    if v < WAL_SAVEPOINT_FIX {
        api.log(
            SQLITE_WARNING,
            &format!(
                "tde: this SQLite ({}.{}.{}) may lose a committed WAL transaction on a crash after ROLLBACK TO \
                 a savepoint whose changes had spilled to the WAL (an upstream bug; seen in 3.40.1, fixed in 3.54.1): \
                 use SQLite 3.54.1 or later, or journal_mode=DELETE (docs/RELIABILITY.md)",
                v / 1_000_000,
                v / 1_000 % 1_000,
                v % 1_000
            ),
        );
    }
}

/// Shared body of the entry points.
///
/// # Safety
///
/// `pz_err_msg` must be null or SQLite's `char **` error out-slot, `p_api` the
/// `sqlite3_api_routines` of the host SQLite, which stays loaded for the life of the process
/// (`sqlite3_load_extension` guarantees both; the library is never unloaded because the entry
/// points return `SQLITE_OK_LOAD_PERMANENTLY`).
#[allow(unsafe_code)]
unsafe fn init(pz_err_msg: *mut *mut c_char, p_api: *const sqlite3_api_routines, mode: DefaultVfs) -> c_int {
    // SAFETY: the caller's contract; `from_routines` checks null and the host version itself.
    let api = match catch_unwind(|| unsafe { SqliteApi::from_routines(p_api) }) {
        Ok(Ok(api)) => api,
        // Without a usable table there is no allocator for *pzErrMsg; stderr is all we have
        // (written without `eprintln!`, which would panic, and abort, if stderr is closed).
        Ok(Err(e)) => {
            let _ = writeln!(std::io::stderr(), "sqlite-tde: cannot load the extension: {}", e.message);
            return SQLITE_ERROR;
        }
        Err(_) => {
            let _ = writeln!(std::io::stderr(), "sqlite-tde: cannot load the extension: panic reading the API table");
            return SQLITE_ERROR;
        }
    };
    let outcome = catch_unwind(AssertUnwindSafe(|| -> Result<(), String> {
        let make_default = wants_default(mode)?;
        let _guard = LOAD_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let name = c"tde";
        debug_assert_eq!(name.to_str(), Ok(VFS_NAME));
        let existing = api.vfs_find(Some(name));
        let mut ours = REGISTERED.lock().unwrap_or_else(|p| p.into_inner());
        if !existing.is_null() && existing as usize != *ours {
            return Err(format!(
                "a VFS named {VFS_NAME:?} is already registered and is not this library's \
                 (another extension or another copy of sqlite-tde); refusing to load"
            ));
        }
        if !existing.is_null() {
            // Loaded before by this library: the VFS and its KMS stay as they were registered.
            // Only the default flag can still change.
            if make_default && api.vfs_find(None) != existing {
                // SAFETY: `existing` is the registered `tde` VFS; re-registering a registered VFS
                // only moves it to the head of SQLite's list (sqlite3_vfs_register unlinks it
                // first), and its memory is never freed.
                let rc = unsafe { api.vfs_register(existing, true) };
                if rc != SQLITE_OK {
                    return Err(format!("cannot make {VFS_NAME} the default VFS (sqlite code {rc})"));
                }
            }
            return Ok(());
        }
        let config = config_from_env(make_default)?;
        // SAFETY: `p_api` is the host's table (caller's contract), already validated above.
        let (_, vfs) = unsafe { crate::vfs::register_with_api(p_api, config) }
            .map_err(|e| format!("cannot register the {VFS_NAME} VFS: {e}"))?;
        *ours = vfs.as_ptr() as usize;
        warn_about_host(&api);
        Ok(())
    }));
    let message = match outcome {
        Ok(Ok(())) => return SQLITE_OK_LOAD_PERMANENTLY,
        Ok(Err(m)) => m,
        Err(_) => "panic while registering the VFS".to_string(),
    };
    if !pz_err_msg.is_null() {
        // SAFETY: `pz_err_msg` is SQLite's out-slot (caller's contract); SQLite frees the string
        // with sqlite3_free, and it comes from the host's allocator.
        unsafe { *pz_err_msg = api.alloc_cstring(&format!("sqlite-tde: {message}")) };
    }
    SQLITE_ERROR
}

/// Entry point of `libtde.so` (the name SQLite derives from the file name): register the `tde`
/// VFS, and make it the default VFS when `SQLITE_TDE_DEFAULT_VFS` is true.
///
/// # Safety
///
/// Only SQLite may call this, as the entry point of a loadable extension
/// (`sqlite3_load_extension`), with its own `pApi`.
#[no_mangle]
#[allow(unsafe_code)]
pub unsafe extern "C" fn sqlite3_tde_init(
    _db: *mut sqlite3,
    pz_err_msg: *mut *mut c_char,
    p_api: *const sqlite3_api_routines,
) -> c_int {
    // SAFETY: forwarded contract (SQLite's extension-loading call).
    unsafe { init(pz_err_msg, p_api, DefaultVfs::FromEnv) }
}

/// Second entry point: register the `tde` VFS as the default VFS (like `SQLITE_TDE_DEFAULT_VFS=1`),
/// for hosts that cannot select a VFS per database. Name it when loading:
/// `.load ./libtde sqlite3_tde_default_init`, `db.loadExtension(path, "sqlite3_tde_default_init")`.
///
/// # Safety
///
/// As [`sqlite3_tde_init`].
#[no_mangle]
#[allow(unsafe_code)]
pub unsafe extern "C" fn sqlite3_tde_default_init(
    _db: *mut sqlite3,
    pz_err_msg: *mut *mut c_char,
    p_api: *const sqlite3_api_routines,
) -> c_int {
    // SAFETY: forwarded contract (SQLite's extension-loading call).
    unsafe { init(pz_err_msg, p_api, DefaultVfs::Yes) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse() {
        for v in ["1", "true", "YES", " on "] {
            assert_eq!(parse_flag("X", v), Ok(true), "{v}");
        }
        for v in ["", "0", "false", "No", "off"] {
            assert_eq!(parse_flag("X", v), Ok(false), "{v}");
        }
        assert!(parse_flag("X", "maybe").unwrap_err().contains("X=\"maybe\""));
        assert_eq!(wants_default(DefaultVfs::Yes), Ok(true));
    }
}

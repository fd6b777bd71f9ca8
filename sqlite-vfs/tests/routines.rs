//! Registration the way a loadable extension does it: from an entry point, through the
//! `sqlite3_api_routines` table SQLite passes in, never through linked symbols. An
//! auto-extension receives the same table as `sqlite3_load_extension` gives a shared library.
//!
//! This binary makes its VFS the process default, so it holds a single test.

mod common;

use std::ffi::{c_char, c_int};
use std::sync::{Mutex, OnceLock};

use rusqlite::ffi;
use sqlite_vfs::passthrough::{PassThrough, Stats};
use sqlite_vfs::{register_with_api, ErrorCode, FileKind, RegisterOptions};

const NAME: &str = "routines-pt";

static STATS: OnceLock<std::sync::Arc<Mutex<Stats>>> = OnceLock::new();
static OUTCOME: OnceLock<Result<String, String>> = OnceLock::new();
static DUPLICATE: OnceLock<Option<ErrorCode>> = OnceLock::new();

/// What `sqlite3_extension_init` of a TDE extension would do.
unsafe extern "C" fn extension_init(
    _db: *mut ffi::sqlite3,
    _err: *mut *mut c_char,
    api: *const ffi::sqlite3_api_routines,
) -> c_int {
    OUTCOME.get_or_init(|| {
        let shim = PassThrough::default();
        STATS.set(shim.stats()).ok();
        let opts = RegisterOptions { base: Some("unix".into()), make_default: true };
        // SAFETY: `api` is the table SQLite passed to this entry point; the bundled SQLite
        // stays loaded for the life of the process.
        unsafe { register_with_api(api, NAME, shim, opts) }
            .map(|r| format!("{}/{}", r.name(), r.base_name()))
            .map_err(|e| e.to_string())
    });
    DUPLICATE.get_or_init(|| {
        // SAFETY: as above.
        unsafe { register_with_api(api, NAME, PassThrough::default(), RegisterOptions::default()) }
            .err()
            .map(|e| e.code)
    });
    ffi::SQLITE_OK
}

#[test]
fn register_through_api_routines_as_default_vfs() {
    // SAFETY: the entry point opens no connection and leaves the auto-extension list alone.
    unsafe { rusqlite::auto_extension::register_auto_extension(extension_init) }.unwrap();
    let bootstrap = rusqlite::Connection::open_in_memory().unwrap();
    rusqlite::auto_extension::cancel_auto_extension(extension_init);
    drop(bootstrap);

    assert_eq!(OUTCOME.get().unwrap().as_deref(), Ok("routines-pt/unix"));
    assert_eq!(DUPLICATE.get().unwrap(), &Some(ErrorCode::Misuse));

    // A null table is refused with a clear error.
    // SAFETY: null is explicitly allowed.
    let err = unsafe {
        register_with_api(std::ptr::null(), "routines-null", PassThrough::default(), RegisterOptions::default())
    }
    .unwrap_err();
    assert_eq!(err.code, ErrorCode::Misuse);

    // Default VFS now: a plain open goes through the shim, WAL included.
    let dir = common::tempdir();
    let conn = common::open(&dir.path().join("main.db"), None);
    conn.execute_batch("PRAGMA journal_mode=WAL;").unwrap();
    conn.execute_batch(&common::fill_sql("t", 200)).unwrap();
    assert_eq!(common::one::<i64>(&conn, "SELECT count(*) FROM t"), 200);
    drop(conn);
    let s = STATS.get().unwrap().lock().unwrap();
    assert!(s.opens_of(FileKind::MainDb) >= 1, "{}", s.summary());
    assert!(s.opens_of(FileKind::Wal) >= 1, "{}", s.summary());
    common::assert_links(&s);
    common::assert_all_closed(&s);
}

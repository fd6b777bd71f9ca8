//! The table of SQLite C functions the binding calls.
//!
//! Every call the binding makes into SQLite goes through a [`SqliteApi`], never through a
//! linked symbol. That lets one code path serve two hosts:
//!
//! - a program that links SQLite itself ([`SqliteApi::linked`], feature `static`), and
//! - a loadable extension, which must call the *host's* SQLite through the
//!   `sqlite3_api_routines` table it receives in its entry point ([`SqliteApi::from_routines`]).
//!   Calling a linked symbol there would reach a second, private copy of SQLite (or fail to
//!   link), whose VFS list and allocator are not the host's.
//!
//! libsqlite3-sys only describes `sqlite3_api_routines` with its `loadable_extension` feature,
//! which also reroutes *every* libsqlite3-sys call through a global and cannot coexist with a
//! bundled SQLite in the same build. The binding therefore reads the few slots it needs by
//! index. The layout is append-only (sqlite3ext.h: new members are only ever added at the end),
//! so slot indices are stable across versions; a test checks them against the bundled SQLite.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::fmt;
use std::ptr::{self, NonNull};

use libsqlite3_sys as sys;

use crate::error::{ErrorCode, VfsError, VfsResult};

/// Oldest SQLite the binding accepts (3.32.0): `sqlite3_database_file_object`, which links
/// journal and WAL opens to their main database, first appeared there.
pub const MIN_SQLITE_VERSION_NUMBER: i32 = 3_032_000;

type VfsFindFn = unsafe extern "C" fn(*const c_char) -> *mut sys::sqlite3_vfs;
type VfsRegisterFn = unsafe extern "C" fn(*mut sys::sqlite3_vfs, c_int) -> c_int;
type VfsUnregisterFn = unsafe extern "C" fn(*mut sys::sqlite3_vfs) -> c_int;
type DatabaseFileObjectFn = unsafe extern "C" fn(*const c_char) -> *mut sys::sqlite3_file;
type UriParameterFn = unsafe extern "C" fn(*const c_char, *const c_char) -> *const c_char;
type Malloc64Fn = unsafe extern "C" fn(u64) -> *mut c_void;
type FreeFn = unsafe extern "C" fn(*mut c_void);
type LogFn = unsafe extern "C" fn(c_int, *const c_char, ...);
type LibversionNumberFn = unsafe extern "C" fn() -> c_int;

/// Slot indices in `struct sqlite3_api_routines` (sqlite3ext.h), counted from 0.
///
/// Each member of that struct is a function pointer, so slot `i` lives at byte offset
/// `i * size_of::<*const c_void>()`.
mod slot {
    pub const FREE: usize = 58;
    pub const LIBVERSION_NUMBER: usize = 67;
    pub const VFS_FIND: usize = 141;
    pub const VFS_REGISTER: usize = 142;
    pub const VFS_UNREGISTER: usize = 143;
    pub const LOG: usize = 167;
    pub const URI_PARAMETER: usize = 189;
    pub const MALLOC64: usize = 197;
    /// Added in 3.32.0; the struct of an older host is shorter than this.
    pub const DATABASE_FILE_OBJECT: usize = 251;
}

/// The SQLite functions the binding needs, taken either from the linked SQLite or from a host's
/// `sqlite3_api_routines`.
///
/// Cheap to copy; all members are plain function pointers of the host's SQLite, which stay valid
/// for the life of the process.
#[derive(Clone, Copy)]
pub struct SqliteApi {
    version_number: i32,
    vfs_find: VfsFindFn,
    vfs_register: VfsRegisterFn,
    vfs_unregister: VfsUnregisterFn,
    database_file_object: DatabaseFileObjectFn,
    uri_parameter: UriParameterFn,
    malloc64: Malloc64Fn,
    free: FreeFn,
    log: Option<LogFn>,
}

impl fmt::Debug for SqliteApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteApi")
            .field("version_number", &self.version_number)
            .field("log", &self.log.is_some())
            .finish_non_exhaustive()
    }
}

impl SqliteApi {
    /// The SQLite this process links against (the libsqlite3-sys symbols).
    ///
    /// Only for programs that link SQLite themselves; a loadable extension must use
    /// [`SqliteApi::from_routines`] with the table its host passed in.
    #[cfg(feature = "static")]
    pub fn linked() -> SqliteApi {
        SqliteApi {
            // SAFETY: sqlite3_libversion_number takes no arguments and only returns a constant.
            version_number: unsafe { sys::sqlite3_libversion_number() },
            vfs_find: sys::sqlite3_vfs_find,
            vfs_register: sys::sqlite3_vfs_register,
            vfs_unregister: sys::sqlite3_vfs_unregister,
            database_file_object: sys::sqlite3_database_file_object,
            uri_parameter: sys::sqlite3_uri_parameter,
            malloc64: sys::sqlite3_malloc64,
            free: sys::sqlite3_free,
            log: Some(sys::sqlite3_log),
        }
    }

    /// Build the table from the `sqlite3_api_routines` a loadable extension's entry point
    /// receives (`pApi`).
    ///
    /// Fails with [`ErrorCode::Misuse`] when `p` is null, when the host SQLite is older than
    /// 3.32.0 ([`MIN_SQLITE_VERSION_NUMBER`]) or when a needed function is missing (null slot,
    /// e.g. a host built with the function omitted).
    ///
    /// # Safety
    ///
    /// `p` must be null or point to the `sqlite3_api_routines` of a live SQLite library (the
    /// pointer SQLite passes to an extension entry point), which outlives every use of the
    /// returned table. Nothing else about the host is assumed: its version is checked before
    /// any slot added after 3.0 is read.
    pub unsafe fn from_routines(p: *const sys::sqlite3_api_routines) -> VfsResult<SqliteApi> {
        let Some(base) = NonNull::new(p.cast_mut().cast::<*const c_void>()) else {
            return Err(misuse("sqlite3_api_routines pointer is null"));
        };
        // SAFETY: `libversion_number` has been part of the struct since SQLite 3.3 (the first
        // version with loadable extensions), so this slot lies inside any host's table, which the
        // caller guarantees `p` points to.
        let version_slot = unsafe { read_slot(base, slot::LIBVERSION_NUMBER) };
        if version_slot.is_null() {
            return Err(misuse("host sqlite3_api_routines has no libversion_number"));
        }
        // SAFETY: a non-null slot holds the host's sqlite3_libversion_number, whose C signature
        // is `int (void)`; function pointers and data pointers have the same size here.
        let libversion: LibversionNumberFn = unsafe { std::mem::transmute(version_slot) };
        // SAFETY: sqlite3_libversion_number has no preconditions.
        let version_number = unsafe { libversion() };
        if version_number < MIN_SQLITE_VERSION_NUMBER {
            return Err(misuse(format!(
                "host SQLite {} is older than 3.32.0: sqlite3_database_file_object, needed to \
                 link journals and WALs to their database, is not available",
                format_version(version_number)
            )));
        }

        // Reads one slot and fails with a clear message when it is empty.
        let need = |index: usize, name: &str| -> VfsResult<*const c_void> {
            // SAFETY: the host is at least 3.32.0 (checked above), whose table has every slot up
            // to DATABASE_FILE_OBJECT, the largest index read here.
            let f = unsafe { read_slot(base, index) };
            if f.is_null() {
                Err(misuse(format!("host sqlite3_api_routines has no {name}")))
            } else {
                Ok(f)
            }
        };

        // SAFETY: every slot read here lies inside a 3.32+ table (checked above); each holds the
        // host's function of that name, whose C signature the target type spells out
        // (sqlite3ext.h), and is transmuted only after a non-null check.
        unsafe {
            Ok(SqliteApi {
                version_number,
                vfs_find: std::mem::transmute::<*const c_void, VfsFindFn>(need(slot::VFS_FIND, "vfs_find")?),
                vfs_register: std::mem::transmute::<*const c_void, VfsRegisterFn>(need(
                    slot::VFS_REGISTER,
                    "vfs_register",
                )?),
                vfs_unregister: std::mem::transmute::<*const c_void, VfsUnregisterFn>(need(
                    slot::VFS_UNREGISTER,
                    "vfs_unregister",
                )?),
                database_file_object: std::mem::transmute::<*const c_void, DatabaseFileObjectFn>(need(
                    slot::DATABASE_FILE_OBJECT,
                    "database_file_object",
                )?),
                uri_parameter: std::mem::transmute::<*const c_void, UriParameterFn>(need(
                    slot::URI_PARAMETER,
                    "uri_parameter",
                )?),
                malloc64: std::mem::transmute::<*const c_void, Malloc64Fn>(need(slot::MALLOC64, "malloc64")?),
                free: std::mem::transmute::<*const c_void, FreeFn>(need(slot::FREE, "free")?),
                // Logging is a convenience: a host without it still gets a working VFS.
                log: {
                    let f = read_slot(base, slot::LOG);
                    (!f.is_null()).then(|| std::mem::transmute::<*const c_void, LogFn>(f))
                },
            })
        }
    }

    /// `sqlite3_libversion_number()` of the SQLite behind this table (e.g. `3054001`).
    pub fn version_number(&self) -> i32 {
        self.version_number
    }

    /// `sqlite3_vfs_find`: the VFS registered under `name`, or the default VFS for `None`.
    /// Null when there is no such VFS.
    pub fn vfs_find(&self, name: Option<&CStr>) -> *mut sys::sqlite3_vfs {
        let name = name.map_or(ptr::null(), CStr::as_ptr);
        // SAFETY: sqlite3_vfs_find accepts null (default VFS) or a NUL-terminated string, which
        // `CStr` guarantees; it only reads the string.
        unsafe { (self.vfs_find)(name) }
    }

    /// `sqlite3_vfs_register`.
    ///
    /// # Safety
    ///
    /// `vfs` must point to a fully initialised `sqlite3_vfs` (name, methods, app data) that stays
    /// valid and is not moved for as long as it is registered, and is not mutated by Rust code
    /// while SQLite may read it.
    pub unsafe fn vfs_register(&self, vfs: *mut sys::sqlite3_vfs, make_default: bool) -> c_int {
        // SAFETY: the caller upholds sqlite3_vfs_register's contract (see above).
        unsafe { (self.vfs_register)(vfs, c_int::from(make_default)) }
    }

    /// `sqlite3_vfs_unregister`.
    ///
    /// # Safety
    ///
    /// `vfs` must be a VFS previously registered, and no connection may still use it.
    pub unsafe fn vfs_unregister(&self, vfs: *mut sys::sqlite3_vfs) -> c_int {
        // SAFETY: the caller upholds sqlite3_vfs_unregister's contract (see above).
        unsafe { (self.vfs_unregister)(vfs) }
    }

    /// `sqlite3_database_file_object`: the main database file whose pager owns a journal or WAL
    /// file name.
    ///
    /// # Safety
    ///
    /// `name` must be the exact `zName` pointer SQLite's pager passed to `xOpen` for a
    /// `SQLITE_OPEN_MAIN_JOURNAL` or `SQLITE_OPEN_WAL` open, during that call. SQLite finds the
    /// pager by walking backwards from the pointer, so any other string is undefined behaviour.
    pub unsafe fn database_file_object(&self, name: *const c_char) -> *mut sys::sqlite3_file {
        // SAFETY: the caller guarantees `name` is a pager-owned journal/WAL name (see above).
        unsafe { (self.database_file_object)(name) }
    }

    /// `sqlite3_uri_parameter`: the value of query parameter `param` of a database file name,
    /// or null.
    ///
    /// # Safety
    ///
    /// `filename` must be a database file name created by SQLite's core (the `zName` SQLite
    /// passed to `xOpen` for a `SQLITE_OPEN_MAIN_DB` open, or `sqlite3_db_filename`), still
    /// alive. The returned pointer borrows from it.
    pub unsafe fn uri_parameter(&self, filename: *const c_char, param: &CStr) -> *const c_char {
        // SAFETY: the caller guarantees `filename` is an SQLite-made database name; `param` is
        // NUL-terminated.
        unsafe { (self.uri_parameter)(filename, param.as_ptr()) }
    }

    /// `sqlite3_malloc64`: `n` bytes from SQLite's allocator, or null when out of memory.
    /// Release with [`SqliteApi::free`] (or hand the memory to SQLite to free).
    pub fn malloc(&self, n: u64) -> *mut c_void {
        // SAFETY: sqlite3_malloc64 accepts any size and returns null on failure.
        unsafe { (self.malloc64)(n) }
    }

    /// `sqlite3_free`.
    ///
    /// # Safety
    ///
    /// `p` must be null or memory obtained from this SQLite's allocator and not yet freed.
    pub unsafe fn free(&self, p: *mut c_void) {
        // SAFETY: the caller guarantees `p` came from this SQLite's allocator (or is null).
        unsafe { (self.free)(p) }
    }

    /// Copy `s` into a NUL-terminated string allocated with this SQLite's allocator, for
    /// out-parameters that SQLite releases with `sqlite3_free` (e.g. `SQLITE_FCNTL_PRAGMA`
    /// results). Null when out of memory. A NUL byte inside `s` ends the C string early.
    pub fn alloc_cstring(&self, s: &str) -> *mut c_char {
        let bytes = s.as_bytes();
        let p = self.malloc(bytes.len() as u64 + 1).cast::<u8>();
        if p.is_null() {
            return ptr::null_mut();
        }
        // SAFETY: `p` points to a fresh allocation of `bytes.len() + 1` bytes that nothing else
        // references; the source slice cannot overlap it.
        unsafe {
            ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len());
            *p.add(bytes.len()) = 0;
        }
        p.cast()
    }

    /// `sqlite3_log(code, "%s", message)`: report to the application's error log callback
    /// (`SQLITE_CONFIG_LOG`), if any. A no-op when the host table has no `log`.
    pub fn log(&self, code: i32, message: &str) {
        let Some(log) = self.log else { return };
        // SQLite formats the message with printf; passing it as a `%s` argument keeps any `%`
        // in it literal. Interior NUL bytes would truncate it, so they are replaced.
        let msg = std::ffi::CString::new(message.replace('\0', "\u{FFFD}")).expect("NUL bytes were replaced");
        // SAFETY: "%s" consumes exactly one `char *` argument, which is a live NUL-terminated
        // string; sqlite3_log does not keep either pointer after returning.
        unsafe { log(code, c"%s".as_ptr(), msg.as_ptr()) }
    }
}

/// Read slot `index` of a `sqlite3_api_routines` table.
///
/// # Safety
///
/// `base` must point to a table with more than `index` slots.
unsafe fn read_slot(base: NonNull<*const c_void>, index: usize) -> *const c_void {
    // SAFETY: the caller guarantees the slot lies inside the table; every member is a
    // pointer-sized, pointer-aligned function pointer (possibly null).
    unsafe { base.as_ptr().add(index).read() }
}

fn misuse(message: impl Into<String>) -> VfsError {
    VfsError::new(ErrorCode::Misuse, message)
}

fn format_version(v: i32) -> String {
    format!("{}.{}.{}", v / 1_000_000, v / 1000 % 1000, v % 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake routines table: enough slots for a 3.32+ host, every slot null except those set.
    struct FakeRoutines(Vec<*const c_void>);

    impl FakeRoutines {
        fn new() -> FakeRoutines {
            FakeRoutines(vec![ptr::null(); slot::DATABASE_FILE_OBJECT + 1])
        }
        fn as_ptr(&self) -> *const sys::sqlite3_api_routines {
            self.0.as_ptr().cast()
        }
    }

    extern "C" fn version_3_31() -> c_int {
        3_031_000
    }
    extern "C" fn version_3_40() -> c_int {
        3_040_001
    }

    #[test]
    fn null_table_is_rejected() {
        // SAFETY: null is explicitly allowed.
        let err = unsafe { SqliteApi::from_routines(ptr::null()) }.unwrap_err();
        assert_eq!(err.code, ErrorCode::Misuse);
    }

    #[test]
    fn old_host_is_rejected_before_reading_new_slots() {
        let mut t = FakeRoutines::new();
        t.0[slot::LIBVERSION_NUMBER] = version_3_31 as *const c_void;
        // SAFETY: the fake table has every slot the function may read.
        let err = unsafe { SqliteApi::from_routines(t.as_ptr()) }.unwrap_err();
        assert_eq!(err.code, ErrorCode::Misuse);
        assert!(err.message.contains("3.31.0"), "{}", err.message);
    }

    #[test]
    fn missing_function_is_named() {
        let mut t = FakeRoutines::new();
        t.0[slot::LIBVERSION_NUMBER] = version_3_40 as *const c_void;
        // SAFETY: the fake table has every slot the function may read.
        let err = unsafe { SqliteApi::from_routines(t.as_ptr()) }.unwrap_err();
        assert_eq!(err.code, ErrorCode::Misuse);
        assert!(err.message.contains("vfs_find"), "{}", err.message);
    }

    /// The slot indices, checked against the real `sqlite3_api_routines` of the bundled SQLite:
    /// every function read through the table must be the very function linked by symbol.
    #[cfg(feature = "static")]
    #[test]
    fn slots_match_the_linked_sqlite() {
        use std::sync::atomic::{AtomicPtr, Ordering};

        static CAPTURED: AtomicPtr<sys::sqlite3_api_routines> = AtomicPtr::new(ptr::null_mut());

        /// An auto-extension entry point: SQLite hands it the same table a loadable extension
        /// gets.
        unsafe extern "C" fn capture(
            _db: *mut sys::sqlite3,
            _err: *mut *mut c_char,
            api: *const sys::sqlite3_api_routines,
        ) -> c_int {
            CAPTURED.store(api.cast_mut(), Ordering::SeqCst);
            sys::SQLITE_OK
        }

        // SAFETY: the entry point neither opens nor closes connections nor touches the
        // auto-extension list.
        unsafe { rusqlite::auto_extension::register_auto_extension(capture) }.unwrap();
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        rusqlite::auto_extension::cancel_auto_extension(capture);
        drop(conn);
        let p = CAPTURED.load(Ordering::SeqCst);
        assert!(!p.is_null(), "auto-extension did not run");

        // SAFETY: `p` is the bundled SQLite's static sqlite3_api_routines.
        let routed = unsafe { SqliteApi::from_routines(p) }.unwrap();
        let linked = SqliteApi::linked();
        assert_eq!(routed.version_number, linked.version_number);
        assert!(ptr::fn_addr_eq(routed.vfs_find, linked.vfs_find));
        assert!(ptr::fn_addr_eq(routed.vfs_register, linked.vfs_register));
        assert!(ptr::fn_addr_eq(routed.vfs_unregister, linked.vfs_unregister));
        assert!(ptr::fn_addr_eq(routed.database_file_object, linked.database_file_object));
        assert!(ptr::fn_addr_eq(routed.uri_parameter, linked.uri_parameter));
        assert!(ptr::fn_addr_eq(routed.malloc64, linked.malloc64));
        assert!(ptr::fn_addr_eq(routed.free, linked.free));
        assert!(ptr::fn_addr_eq(routed.log.unwrap(), linked.log.unwrap()));
    }

    #[cfg(feature = "static")]
    #[test]
    fn alloc_cstring_round_trips_through_sqlite_allocator() {
        let api = SqliteApi::linked();
        let p = api.alloc_cstring("héllo %s");
        assert!(!p.is_null());
        // SAFETY: `p` is a NUL-terminated string we just allocated.
        let s = unsafe { CStr::from_ptr(p) }.to_str().unwrap().to_owned();
        // SAFETY: `p` came from this SQLite's allocator and is freed once.
        unsafe { api.free(p.cast()) };
        assert_eq!(s, "héllo %s");
        assert!(api.version_number() >= MIN_SQLITE_VERSION_NUMBER);
        assert!(!api.vfs_find(None).is_null());
    }
}

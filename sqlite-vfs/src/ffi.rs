//! Registration of a shim as an `sqlite3_vfs`, and the C trampolines behind it.
//!
//! Memory layout of one open file (SQLite allocates `szOsFile` bytes, 8-byte aligned):
//!
//! ```text
//! +--------------------------------------+ 0
//! | FileHeader<S>                        |   sqlite3_file (pMethods) first, then our state
//! +--------------------------------------+ base_offset::<S>()  (rounded up to 8)
//! | base VFS file (base szOsFile bytes)  |   opened by the base VFS's xOpen
//! +--------------------------------------+
//! ```
//!
//! Every registration leaks one `Registration<S>` (the shim, the API table, the base VFS and
//! three `sqlite3_io_methods`, one per I/O-methods version) and one `sqlite3_vfs`: SQLite keeps
//! pointers to both for the life of the process. Because the `sqlite3_io_methods` belong to the
//! registration, a file's `pMethods` identifies which registration (and shim type) opened it;
//! that is how journal and WAL opens find their main database's shim file.
//!
//! The base file object is reached only through a `BaseCell` (a mutex around its pointer, shared
//! with the shim's `BaseFile`), so that a `BaseFile` kept past `xClose` or moved to another
//! thread can never touch freed memory or race with the binding.
//!
//! Every trampoline that runs shim code catches panics: unwinding out of an `extern "C"`
//! function aborts the process. A panic inside a file's method *poisons* that file: the shim's
//! invariants may be broken (half-updated state, key material), so further I/O fails with
//! `SQLITE_IOERR` rather than risking writing garbage, while unlocking, shared-memory calls and
//! close keep working so that locks are released. Panics are only caught when the crate is
//! built with `panic = "unwind"` (the default).

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::marker::PhantomData;
use std::mem::{align_of, size_of};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::{self, NonNull};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use libsqlite3_sys as sys;

use crate::api::SqliteApi;
use crate::error::{ErrorCode, VfsError, VfsResult};
use crate::kinds::{DeviceCharacteristics, FileKind, LockLevel, OpenFlags, SyncFlags};
use crate::{BaseFile, FileControl, FileControlOutcome, OpenRequest, PragmaOutcome, ReadStatus, Shim, ShimFile};

/// Options for registering a shim.
#[derive(Debug, Clone, Default)]
pub struct RegisterOptions {
    /// Name of the VFS to layer over; `None` = the default VFS at registration time.
    pub base: Option<String>,
    /// Make the new VFS the process-wide default.
    pub make_default: bool,
}

/// A registered shim VFS. Registration lasts for the life of the process (SQLite keeps
/// pointers into it, and connections may outlive any handle), so dropping this does nothing.
#[derive(Debug)]
pub struct RegisteredVfs {
    name: String,
    base_name: String,
    vfs: NonNull<sys::sqlite3_vfs>,
}

// SAFETY: `vfs` points to a leaked, never-freed `sqlite3_vfs` that Rust code never mutates after
// registration; `RegisteredVfs` only exposes the pointer value, so sharing or sending the handle
// between threads cannot cause a data race.
unsafe impl Send for RegisteredVfs {}
// SAFETY: see `Send`; every method takes `&self` and reads immutable data.
unsafe impl Sync for RegisteredVfs {}

impl RegisteredVfs {
    /// The name to open databases with (`vfs=` URI parameter or
    /// `sqlite3_open_v2(.., zVfs)`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Name of the VFS this shim forwards to.
    pub fn base_name(&self) -> &str {
        &self.base_name
    }

    /// The registered `sqlite3_vfs`, for C APIs that take one. It stays valid for the life of
    /// the process; do not unregister or modify it.
    ///
    /// Main-database names passed to its `xOpen` must carry SQLite's URI parameter block (the
    /// binding passes them to `sqlite3_uri_parameter`). Journal and WAL names may be any
    /// string: they are linked to their main database by address or by name, never through
    /// `sqlite3_database_file_object`.
    pub fn as_ptr(&self) -> *mut sys::sqlite3_vfs {
        self.vfs.as_ptr()
    }
}

/// Handle on the `zName` of a main-database open, to read its URI parameters.
///
/// Empty (every parameter absent) for files other than [`FileKind::MainDb`] and for anonymous
/// files: SQLite only attaches URI parameters to main database names.
#[derive(Clone, Copy)]
pub struct UriHandle<'a> {
    /// Null, or a main-db `zName` made by SQLite's core, valid for `'a`.
    filename: *const c_char,
    api: &'a SqliteApi,
    _name: PhantomData<&'a CStr>,
}

impl UriHandle<'_> {
    /// The API table the handle reads parameters through.
    pub(crate) fn api(&self) -> SqliteApi {
        *self.api
    }
}

impl std::fmt::Debug for UriHandle<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UriHandle").field("has_uri", &!self.filename.is_null()).finish()
    }
}

impl<'a> UriHandle<'a> {
    /// # Safety
    ///
    /// `filename` must be null or a database file name made by SQLite's core (the `zName` of an
    /// `SQLITE_OPEN_MAIN_DB` `xOpen`), valid for `'a`.
    unsafe fn new(filename: *const c_char, api: &'a SqliteApi) -> UriHandle<'a> {
        UriHandle { filename, api, _name: PhantomData }
    }

    /// The raw bytes of query parameter `name`, if present.
    pub fn parameter_bytes(&self, name: &str) -> Option<Vec<u8>> {
        if self.filename.is_null() {
            return None;
        }
        let name = CString::new(name).ok()?;
        // SAFETY: `filename` is an SQLite-made main database name, alive for `'a` (constructor
        // contract), and `name` is NUL-terminated.
        let value = unsafe { self.api.uri_parameter(self.filename, &name) };
        if value.is_null() {
            return None;
        }
        // SAFETY: a non-null result points to a NUL-terminated value inside `filename`, which is
        // alive; it is copied before returning.
        Some(unsafe { CStr::from_ptr(value) }.to_bytes().to_vec())
    }

    /// Query parameter `name` as text; `None` when absent or not valid UTF-8 (a value that
    /// cannot be represented exactly is never handed out approximately).
    pub fn parameter(&self, name: &str) -> Option<String> {
        String::from_utf8(self.parameter_bytes(name)?).ok()
    }
}

/// Register `shim` as VFS `name` through the SQLite this process links against.
///
/// Fails with [`ErrorCode::Misuse`] when a VFS of that name already exists (SQLite itself would
/// silently shadow it), when `name` is empty or contains NUL, or when the base VFS is unknown.
#[cfg(feature = "static")]
pub fn register_static<S: Shim>(name: &str, shim: S, opts: RegisterOptions) -> VfsResult<RegisteredVfs> {
    register(SqliteApi::linked(), name, shim, opts)
}

/// Register `shim` as VFS `name` through the host SQLite's `sqlite3_api_routines`, from a
/// loadable extension's entry point. Same errors as [`register_static`], plus those of
/// [`SqliteApi::from_routines`] (null table, host older than 3.32.0).
///
/// # Safety
///
/// `api` must be null or the `pApi` pointer SQLite passed to the extension's entry point, and the
/// host SQLite must stay loaded for the life of the process.
pub unsafe fn register_with_api<S: Shim>(
    api: *const sys::sqlite3_api_routines,
    name: &str,
    shim: S,
    opts: RegisterOptions,
) -> VfsResult<RegisteredVfs> {
    // SAFETY: forwarded caller contract.
    let api = unsafe { SqliteApi::from_routines(api) }?;
    register(api, name, shim, opts)
}

/// Serialises "is the name free?" + "register" so that two registrations through this crate
/// cannot both claim one name. (Code registering VFSes directly with SQLite is not covered.)
static REGISTER_LOCK: Mutex<()> = Mutex::new(());

fn register<S: Shim>(api: SqliteApi, name: &str, shim: S, opts: RegisterOptions) -> VfsResult<RegisteredVfs> {
    let misuse = |m: String| VfsError::new(ErrorCode::Misuse, m);
    if name.is_empty() {
        return Err(misuse("VFS name is empty".into()));
    }
    let c_name = CString::new(name).map_err(|_| misuse(format!("VFS name {name:?} contains NUL")))?;
    let c_base = match &opts.base {
        Some(b) => Some(CString::new(b.as_str()).map_err(|_| misuse(format!("base VFS name {b:?} contains NUL")))?),
        None => None,
    };

    // A poisoned lock only means another registration panicked; the `()` it guards is fine.
    let _guard = REGISTER_LOCK.lock().unwrap_or_else(|e| e.into_inner());

    if !api.vfs_find(Some(&c_name)).is_null() {
        return Err(misuse(format!("a VFS named {name:?} is already registered")));
    }
    let base = NonNull::new(api.vfs_find(c_base.as_deref())).ok_or_else(|| {
        misuse(match &opts.base {
            Some(b) => format!("base VFS {b:?} is not registered"),
            None => "there is no default VFS".into(),
        })
    })?;
    // SAFETY: a VFS returned by sqlite3_vfs_find stays registered (and therefore valid and
    // unmodified, apart from its pNext link, which we do not read) for as long as its owner keeps
    // it registered; base VFSes are expected to live for the process, as SQLite's own do.
    let b = unsafe { base.as_ref() };
    let base_name = if b.zName.is_null() {
        String::new()
    } else {
        // SAFETY: a registered VFS's zName is a NUL-terminated string.
        unsafe { CStr::from_ptr(b.zName) }.to_string_lossy().into_owned()
    };
    let version = b.iVersion.min(3);
    if version < 1 {
        return Err(misuse(format!("base VFS {base_name:?} has iVersion {}", b.iVersion)));
    }
    let base_size = usize::try_from(b.szOsFile)
        .map_err(|_| misuse(format!("base VFS {base_name:?} has szOsFile {}", b.szOsFile)))?;
    let sz_os_file =
        c_int::try_from(base_offset::<S>() + base_size).map_err(|_| misuse("file object size overflows".into()))?;

    let reg = Box::into_raw(Box::new(Registration {
        common: Common { api, base: base.as_ptr(), name: c_name },
        io_methods: [io_methods::<S>(1), io_methods::<S>(2), io_methods::<S>(3)],
        shim,
        mains: Mutex::new(Vec::new()),
    }));
    // SAFETY: `reg` was just created from a Box and is not freed unless registration fails.
    let z_name = unsafe { (*reg).common.name.as_ptr() };
    let vfs = Box::into_raw(Box::new(sys::sqlite3_vfs {
        iVersion: version,
        szOsFile: sz_os_file,
        mxPathname: b.mxPathname,
        pNext: ptr::null_mut(),
        zName: z_name,
        pAppData: reg.cast(),
        xOpen: Some(x_open::<S>),
        xDelete: Some(x_delete::<S>),
        xAccess: Some(x_access::<S>),
        xFullPathname: Some(x_full_pathname),
        // Optional in the base (e.g. built without extension loading): mirror its absence.
        xDlOpen: b.xDlOpen.map(|_| x_dl_open as _),
        xDlError: b.xDlError.map(|_| x_dl_error as _),
        xDlSym: b.xDlSym.map(|_| x_dl_sym as _),
        xDlClose: b.xDlClose.map(|_| x_dl_close as _),
        xRandomness: Some(x_randomness),
        xSleep: Some(x_sleep),
        xCurrentTime: Some(x_current_time),
        xGetLastError: Some(x_get_last_error),
        xCurrentTimeInt64: (version >= 2 && b.xCurrentTimeInt64.is_some()).then_some(x_current_time_int64 as _),
        xSetSystemCall: (version >= 3 && b.xSetSystemCall.is_some()).then_some(x_set_system_call as _),
        xGetSystemCall: (version >= 3 && b.xGetSystemCall.is_some()).then_some(x_get_system_call as _),
        xNextSystemCall: (version >= 3 && b.xNextSystemCall.is_some()).then_some(x_next_system_call as _),
    }));
    // SAFETY: `vfs` is fully initialised, heap-allocated and never freed or mutated by us once
    // registered; its zName and pAppData point into the leaked registration.
    let rc = unsafe { api.vfs_register(vfs, opts.make_default) };
    if rc != sys::SQLITE_OK {
        // SAFETY: SQLite refused the VFS, so nothing else holds these pointers; both came from
        // Box::into_raw above and are freed exactly once.
        unsafe {
            drop(Box::from_raw(vfs));
            drop(Box::from_raw(reg));
        }
        return Err(VfsError::from_base(rc, "sqlite3_vfs_register"));
    }
    Ok(RegisteredVfs {
        name: name.to_owned(),
        base_name,
        // SAFETY: Box::into_raw never returns null.
        vfs: unsafe { NonNull::new_unchecked(vfs) },
    })
}

// ---------------------------------------------------------------------------------------------
// Registration data and the per-file header
// ---------------------------------------------------------------------------------------------

/// The part of a registration that does not depend on the shim type, so that pure forwarding
/// trampolines need not be generic.
struct Common {
    api: SqliteApi,
    base: *mut sys::sqlite3_vfs,
    name: CString,
}

/// What `sqlite3_vfs.pAppData` points to. `repr(C)` with `common` first, so a pointer to it is
/// also a valid pointer to its `Common`.
#[repr(C)]
struct Registration<S: Shim> {
    common: Common,
    /// `sqlite3_io_methods` versions 1, 2 and 3, all pointing at `S`'s trampolines.
    io_methods: [sys::sqlite3_io_methods; 3],
    shim: S,
    /// The main databases open through this registration, to link journal and WAL opens to
    /// (see [`linked_main_db`]).
    mains: Mutex<Vec<MainEntry>>,
}

/// One main database open through a registration.
struct MainEntry {
    /// Its `FileHeader<S>` (an address, never dereferenced without a match below).
    file: usize,
    /// SQLite's name for it.
    name: String,
    /// Where the pager that opened it keeps its journal and WAL names: SQLite lays out
    /// `name \0 (key \0 value \0)* \0 journal \0 wal \0` in one allocation, and passes those
    /// very pointers to xOpen. Compared as addresses only.
    journal: usize,
    wal: usize,
}

/// Our `sqlite3_file` subclass. `repr(C)` with the `sqlite3_file` first, as SQLite requires.
#[repr(C)]
struct FileHeader<S: Shim> {
    file: sys::sqlite3_file,
    reg: *const Registration<S>,
    /// The shim's file, from `Box::into_raw`; null until the open succeeded and after close.
    shim: *mut S::File,
    /// The base VFS's file (at `base_offset::<S>()` inside the same allocation), shared with
    /// the shim's [`BaseFile`]; `None` until it is open and after it is closed.
    base: Option<Arc<BaseCell>>,
    /// Set when a shim method panicked; see the module documentation.
    poisoned: bool,
    /// The name the base file was opened under when [`Shim::physical_path`] mapped SQLite's
    /// name, NUL-terminated twice (so `sqlite3_uri_parameter` on it finds no parameters).
    /// The base VFS keeps the pointer (unix: for the directory sync and error messages), so it
    /// lives until the base file is closed.
    base_name: Option<Box<[u8]>>,
}

/// SQLite allocates file objects 8-byte aligned (its allocator's guarantee, and `ROUND8` in the
/// pager), so that is all the base file can rely on.
const FILE_ALIGN: usize = 8;

/// Offset of the base file inside our file object.
const fn base_offset<S: Shim>() -> usize {
    const {
        assert!(align_of::<FileHeader<S>>() <= FILE_ALIGN, "FileHeader over-aligned");
    }
    size_of::<FileHeader<S>>().next_multiple_of(FILE_ALIGN)
}

fn io_methods<S: Shim>(version: c_int) -> sys::sqlite3_io_methods {
    sys::sqlite3_io_methods {
        iVersion: version,
        xClose: Some(x_close::<S>),
        xRead: Some(x_read::<S>),
        xWrite: Some(x_write::<S>),
        xTruncate: Some(x_truncate::<S>),
        xSync: Some(x_sync::<S>),
        xFileSize: Some(x_file_size::<S>),
        xLock: Some(x_lock::<S>),
        xUnlock: Some(x_unlock::<S>),
        xCheckReservedLock: Some(x_check_reserved_lock::<S>),
        xFileControl: Some(x_file_control::<S>),
        xSectorSize: Some(x_sector_size::<S>),
        xDeviceCharacteristics: Some(x_device_characteristics::<S>),
        xShmMap: (version >= 2).then_some(x_shm_map::<S> as _),
        xShmLock: (version >= 2).then_some(x_shm_lock::<S> as _),
        xShmBarrier: (version >= 2).then_some(x_shm_barrier::<S> as _),
        xShmUnmap: (version >= 2).then_some(x_shm_unmap::<S> as _),
        xFetch: (version >= 3).then_some(x_fetch::<S> as _),
        xUnfetch: (version >= 3).then_some(x_unfetch::<S> as _),
    }
}

/// The registration behind a VFS pointer.
///
/// # Safety
///
/// `vfs` must be a VFS registered by `register::<S>` (SQLite only calls our trampolines with
/// it). The registration is leaked, hence `'static`, and never mutated, hence shareable.
unsafe fn registration<'a, S: Shim>(vfs: *mut sys::sqlite3_vfs) -> &'a Registration<S> {
    // SAFETY: per the contract, pAppData is the leaked `Registration<S>`.
    unsafe { &*(*vfs).pAppData.cast::<Registration<S>>() }
}

/// The type-independent part of a registration, for non-generic trampolines.
///
/// # Safety
///
/// `vfs` must be a VFS registered by `register` (for any shim type).
unsafe fn common<'a>(vfs: *mut sys::sqlite3_vfs) -> &'a Common {
    // SAFETY: pAppData is a leaked `Registration<S>`, which is `repr(C)` with `Common` first.
    unsafe { &*(*vfs).pAppData.cast::<Common>() }
}

/// Our header of an open file.
///
/// # Safety
///
/// `file` must be a file successfully opened by `x_open::<S>` and not yet closed; SQLite
/// serialises calls on one file, so the exclusive borrow is not aliased for the duration of the
/// call it is used in.
unsafe fn header<'a, S: Shim>(file: *mut sys::sqlite3_file) -> &'a mut FileHeader<S> {
    // SAFETY: per the contract, `file` is the start of a `FileHeader<S>` we initialised.
    unsafe { &mut *file.cast::<FileHeader<S>>() }
}

impl Common {
    fn log(&self, code: c_int, what: &str, message: &str) {
        self.api.log(code, &format!("vfs {}: {what}: {message}", self.name.to_string_lossy()));
    }

    /// Map a shim result to a result code, logging errors (except busy/locked, which are normal
    /// contention, not failures).
    fn code(&self, what: &str, result: VfsResult<()>) -> c_int {
        match result {
            Ok(()) => sys::SQLITE_OK,
            Err(e) => {
                let code = e.code.sqlite_code();
                if !matches!(code & 0xff, sys::SQLITE_BUSY | sys::SQLITE_LOCKED) {
                    self.log(code, what, &e.message);
                }
                code
            }
        }
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(non-string panic payload)")
}

/// Run `f`, turning a panic into `on_panic` (and a log entry). Returns whether it panicked.
fn guard<R>(common: &Common, what: &str, on_panic: R, f: impl FnOnce() -> R) -> (R, bool) {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => (r, false),
        Err(payload) => {
            common.log(sys::SQLITE_IOERR, what, &format!("panic: {}", panic_message(&*payload)));
            // A payload's destructor may itself panic; that must not escape either.
            let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
            (on_panic, true)
        }
    }
}

/// Run `f` on the file's shim unless the file is poisoned (then return `on_fail` at once);
/// a panic poisons the file and returns `on_fail`.
///
/// # Safety
///
/// Same as [`header`].
unsafe fn with_shim<S: Shim, R>(
    file: *mut sys::sqlite3_file,
    what: &str,
    on_fail: R,
    f: impl FnOnce(&mut S::File, &Common) -> R,
) -> R {
    // SAFETY: forwarded contract.
    let hdr = unsafe { header::<S>(file) };
    if hdr.poisoned || hdr.shim.is_null() {
        return on_fail;
    }
    // SAFETY: the registration is leaked and outlives every file.
    let common = unsafe { &(*hdr.reg).common };
    // SAFETY: `shim` came from Box::into_raw in x_open and is only freed in x_close; SQLite does
    // not call a file's methods concurrently, so this is the only live reference.
    let shim = unsafe { &mut *hdr.shim };
    let (r, panicked) = guard(common, what, on_fail, || f(shim, common));
    if panicked {
        hdr.poisoned = true;
    }
    r
}

// ---------------------------------------------------------------------------------------------
// The base file, shared by the binding and the shim's BaseFile
// ---------------------------------------------------------------------------------------------

/// The base file object inside one of our file objects, plus the lock level SQLite believes the
/// file holds.
///
/// A [`BaseFile`] is an owned, `Send` handle, so safe shim code could keep it beyond `xClose`
/// (after which SQLite frees the memory) or use it from another thread. Every access therefore
/// goes through this cell's mutex, and `close` empties the slot under that mutex before the
/// memory is released: a late or concurrent use finds the file closed (an error), never freed
/// memory, and calls into the base file are never concurrent. The mutex is uncontended in
/// normal operation (SQLite calls one file from one thread at a time).
pub(crate) struct BaseCell {
    state: Mutex<CellState>,
}

struct CellState {
    /// The open base file; `None` once closed.
    file: Option<NonNull<sys::sqlite3_file>>,
    /// What SQLite believes it holds: changes only when an `xLock`/`xUnlock` returns
    /// `SQLITE_OK`. Kept here so that [`BaseFile::unlock`] never releases SQLite's own lock.
    sqlite_lock: LockLevel,
}

// SAFETY: the raw pointer is only dereferenced by `CellState::call`, which needs the mutex held
// (it is reached only through the guard) and the slot non-empty; `close` empties the slot under
// the mutex before xClose returns to SQLite, which frees the memory only afterwards. So every
// use, from whichever thread, is serialised and reaches live memory.
unsafe impl Send for BaseCell {}
// SAFETY: as for `Send`: all shared access goes through the mutex.
unsafe impl Sync for BaseCell {}

impl BaseCell {
    fn new(file: NonNull<sys::sqlite3_file>) -> BaseCell {
        BaseCell { state: Mutex::new(CellState { file: Some(file), sqlite_lock: LockLevel::None }) }
    }

    /// Lock the cell. Poisoning is ignored: nothing that runs under the lock can leave the
    /// state half-updated (a pointer and a lock level, each written in one step).
    fn state(&self) -> MutexGuard<'_, CellState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Run `f` with the open base file and its methods; `None` once it is closed.
    fn with<R>(&self, f: impl FnOnce(*mut sys::sqlite3_file, &sys::sqlite3_io_methods) -> R) -> Option<R> {
        self.state().call(f)
    }

    /// Close the base file (once; later calls do nothing and return `SQLITE_OK`).
    fn close(&self) -> c_int {
        let mut state = self.state();
        let Some(file) = state.file.take() else {
            return sys::SQLITE_OK;
        };
        let file = file.as_ptr();
        // SAFETY: the slot held the pointer, so the base file is open and its memory live (see
        // the `Send` impl); it was just taken out, so this is the last use.
        unsafe {
            let Some(methods) = (*file).pMethods.as_ref() else {
                return sys::SQLITE_OK;
            };
            let rc = methods.xClose.map_or(sys::SQLITE_OK, |close| close(file));
            (*file).pMethods = ptr::null();
            rc
        }
    }
}

impl CellState {
    /// Run `f` with the open base file and its methods; `None` once it is closed. Callers hold
    /// the cell's mutex (a `CellState` is only reachable through its guard).
    fn call<R>(&self, f: impl FnOnce(*mut sys::sqlite3_file, &sys::sqlite3_io_methods) -> R) -> Option<R> {
        let file = self.file?.as_ptr();
        // SAFETY: the slot holds the pointer and the mutex is held, so the base file is open and
        // its memory live (see the `Send` impl of `BaseCell`); pMethods of an open file points
        // to the base VFS's methods table, which outlives the file.
        let methods = unsafe { (*file).pMethods.as_ref() }?;
        Some(f(file, methods))
    }
}

impl<S: Shim> FileHeader<S> {
    /// Run `f` with the open base file and its methods, or return `closed`.
    fn with_base<R>(&self, closed: R, f: impl FnOnce(*mut sys::sqlite3_file, &sys::sqlite3_io_methods) -> R) -> R {
        match self.base.as_deref().and_then(|cell| cell.with(f)) {
            Some(r) => r,
            None => closed,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// BaseFile: the shim's safe handle on the base file
// ---------------------------------------------------------------------------------------------

impl BaseFile {
    /// Run `f` with the open base file; an error once it is closed.
    fn call<R>(
        &self,
        what: &str,
        f: impl FnOnce(*mut sys::sqlite3_file, &sys::sqlite3_io_methods) -> VfsResult<R>,
    ) -> VfsResult<R> {
        self.cell
            .with(f)
            .unwrap_or_else(|| Err(VfsError::new(ErrorCode::Io, format!("{what}: the base file is already closed"))))
    }

    /// Read `buf.len()` bytes at `offset` from the base file. A read past the end of the file
    /// returns [`ReadStatus::Short`]; the base VFS has zero-filled the rest of `buf`.
    pub fn read(&mut self, buf: &mut [u8], offset: u64) -> VfsResult<ReadStatus> {
        let amt = len_to_c_int(buf.len(), "read")?;
        let ofst = offset_to_i64(offset, "read")?;
        self.call("read", |file, m| {
            let x_read = m.xRead.ok_or_else(|| missing("xRead"))?;
            // SAFETY: `file` is the open base file (`BaseCell::with`); `buf` is valid for writes
            // of `amt` bytes for the duration of the call.
            let rc = unsafe { x_read(file, buf.as_mut_ptr().cast(), amt, ofst) };
            match rc {
                sys::SQLITE_OK => Ok(ReadStatus::Full),
                sys::SQLITE_IOERR_SHORT_READ => Ok(ReadStatus::Short),
                rc => Err(VfsError::from_base(rc, "read")),
            }
        })
    }

    /// Write `buf` at `offset` to the base file.
    pub fn write(&mut self, buf: &[u8], offset: u64) -> VfsResult<()> {
        let amt = len_to_c_int(buf.len(), "write")?;
        let ofst = offset_to_i64(offset, "write")?;
        self.call("write", |file, m| {
            let x_write = m.xWrite.ok_or_else(|| missing("xWrite"))?;
            // SAFETY: `file` is the open base file; `buf` is valid for reads of `amt` bytes.
            let rc = unsafe { x_write(file, buf.as_ptr().cast(), amt, ofst) };
            base_result(rc, "write")
        })
    }

    /// Truncate the base file to `size` bytes.
    pub fn truncate(&mut self, size: u64) -> VfsResult<()> {
        let size = offset_to_i64(size, "truncate")?;
        self.call("truncate", |file, m| {
            let x_truncate = m.xTruncate.ok_or_else(|| missing("xTruncate"))?;
            // SAFETY: `file` is the open base file.
            base_result(unsafe { x_truncate(file, size) }, "truncate")
        })
    }

    /// Sync the base file.
    pub fn sync(&mut self, flags: SyncFlags) -> VfsResult<()> {
        self.call("sync", |file, m| {
            let x_sync = m.xSync.ok_or_else(|| missing("xSync"))?;
            // SAFETY: `file` is the open base file.
            base_result(unsafe { x_sync(file, flags.0) }, "sync")
        })
    }

    /// Size of the base file in bytes.
    pub fn file_size(&mut self) -> VfsResult<u64> {
        let size = self.call("file size", |file, m| {
            let x_file_size = m.xFileSize.ok_or_else(|| missing("xFileSize"))?;
            let mut size: sys::sqlite3_int64 = 0;
            // SAFETY: `file` is the open base file; `size` is a valid out-pointer.
            base_result(unsafe { x_file_size(file, &mut size) }, "file size")?;
            Ok(size)
        })?;
        u64::try_from(size).map_err(|_| VfsError::new(ErrorCode::Fstat, "negative base file size"))
    }

    /// The base file's sector size (SQLite's default, 4096, if the base does not say or the
    /// file is closed).
    pub fn sector_size(&mut self) -> u32 {
        self.cell
            .with(|file, m| match m.xSectorSize {
                // SAFETY: `file` is the open base file.
                Some(f) => u32::try_from(unsafe { f(file) }).unwrap_or(0),
                None => 4096,
            })
            .unwrap_or(4096)
    }

    /// The base file's device characteristics (`SQLITE_IOCAP_*`; none once closed).
    pub fn device_characteristics(&mut self) -> DeviceCharacteristics {
        self.cell
            .with(|file, m| match m.xDeviceCharacteristics {
                // SAFETY: `file` is the open base file.
                Some(f) => DeviceCharacteristics(unsafe { f(file) }),
                None => DeviceCharacteristics(0),
            })
            .unwrap_or(DeviceCharacteristics(0))
    }

    /// Take (or upgrade to) `level` on the base file, with SQLite's lock protocol (a shim uses
    /// this to serialise its own metadata updates with other connections, e.g. while creating
    /// a header). Returns `Busy` when another connection holds a conflicting lock.
    ///
    /// The lock is shared with SQLite's: lock levels belong to the file, not to the caller.
    /// Release it with [`BaseFile::unlock`], which never goes below what SQLite itself holds.
    pub fn lock(&mut self, level: LockLevel) -> VfsResult<()> {
        self.call("lock", |file, m| {
            let x_lock = m.xLock.ok_or_else(|| missing("xLock"))?;
            // SAFETY: `file` is the open base file; `level` is a valid SQLITE_LOCK_* value.
            match unsafe { x_lock(file, level.raw()) } {
                sys::SQLITE_OK => Ok(()),
                sys::SQLITE_BUSY => Err(VfsError::new(ErrorCode::Busy, "base file is locked")),
                rc => Err(VfsError::from_base(rc, "lock")),
            }
        })
    }

    /// Release locks down to `level` (`Shared` or `None`), but never below the level SQLite
    /// holds on this file: then down to SQLite's level, or not at all while SQLite holds
    /// RESERVED or more (`xUnlock` cannot return to those), in which case the shim's extra lock
    /// is released with SQLite's own next unlock.
    pub fn unlock(&mut self, level: LockLevel) -> VfsResult<()> {
        if level > LockLevel::Shared {
            return Err(VfsError::new(ErrorCode::Misuse, format!("unlock to {level:?}: only Shared or None")));
        }
        let state = self.cell.state();
        if state.sqlite_lock > LockLevel::Shared {
            return Ok(());
        }
        let target = level.max(state.sqlite_lock);
        state
            .call(|file, m| {
                let x_unlock = m.xUnlock.ok_or_else(|| missing("xUnlock"))?;
                // SAFETY: `file` is the open base file; `target` is NONE or SHARED.
                base_result(unsafe { x_unlock(file, target.raw()) }, "unlock")
            })
            .unwrap_or_else(|| Err(VfsError::new(ErrorCode::Io, "unlock: the base file is already closed")))
    }
}

fn len_to_c_int(len: usize, what: &str) -> VfsResult<c_int> {
    c_int::try_from(len).map_err(|_| VfsError::new(ErrorCode::Io, format!("{what} of {len} bytes")))
}

fn offset_to_i64(offset: u64, what: &str) -> VfsResult<i64> {
    i64::try_from(offset).map_err(|_| VfsError::new(ErrorCode::Io, format!("{what} at offset {offset}")))
}

fn missing(method: &str) -> VfsError {
    VfsError::new(ErrorCode::Io, format!("base file has no {method}"))
}

fn base_result(rc: c_int, what: &str) -> VfsResult<()> {
    if rc == sys::SQLITE_OK {
        Ok(())
    } else {
        Err(VfsError::from_base(rc, what))
    }
}

// ---------------------------------------------------------------------------------------------
// sqlite3_vfs trampolines
// ---------------------------------------------------------------------------------------------

/// Every `SQLITE_OPEN_*` file-type bit: stripped from [`OpenFlags`], which holds the others.
const FILE_TYPE_MASK: c_int = sys::SQLITE_OPEN_MAIN_DB
    | sys::SQLITE_OPEN_MAIN_JOURNAL
    | sys::SQLITE_OPEN_WAL
    | sys::SQLITE_OPEN_SUBJOURNAL
    | sys::SQLITE_OPEN_SUPER_JOURNAL
    | sys::SQLITE_OPEN_TEMP_DB
    | sys::SQLITE_OPEN_TEMP_JOURNAL
    | sys::SQLITE_OPEN_TRANSIENT_DB;

unsafe extern "C" fn x_open<S: Shim>(
    vfs: *mut sys::sqlite3_vfs,
    z_name: sys::sqlite3_filename,
    file: *mut sys::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    // SAFETY: SQLite calls xOpen with the VFS it was registered as.
    let reg = unsafe { registration::<S>(vfs) };
    let hdr = file.cast::<FileHeader<S>>();
    // SAFETY: SQLite passes `szOsFile` bytes, 8-byte aligned (see FILE_ALIGN), for the file
    // object; the memory may be uninitialised, so every field is written without reading or
    // dropping the previous contents. pMethods stays null until the open has succeeded, which
    // tells SQLite not to call xClose on failure.
    let base = unsafe {
        let base = file.cast::<u8>().add(base_offset::<S>()).cast::<sys::sqlite3_file>();
        hdr.write(FileHeader {
            file: sys::sqlite3_file { pMethods: ptr::null() },
            reg: ptr::from_ref(reg),
            shim: ptr::null_mut(),
            base: None,
            poisoned: false,
            base_name: None,
        });
        (*base).pMethods = ptr::null();
        base
    };

    let result = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the pointers are those SQLite passed to this xOpen, and `hdr`/`base` were
        // initialised above.
        unsafe { open_file::<S>(reg, z_name, hdr, base, flags, out_flags) }
    }));
    let error = match result {
        Ok(Ok(())) => return sys::SQLITE_OK,
        Ok(Err(e)) => e,
        Err(payload) => {
            let msg = format!("panic: {}", panic_message(&*payload));
            let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
            VfsError::new(ErrorCode::CantOpen, msg)
        }
    };
    // The open failed after (possibly) opening the base file: close it, or its descriptor and
    // locks would leak. The shim file, if any was made, was already dropped; a BaseFile the
    // shim kept finds the file closed.
    // SAFETY: `hdr` and `base` were initialised above. A base open that failed but left a
    // non-null pMethods (which SQLite's own VFSes never do) is closed as SQLite would close it.
    unsafe {
        match (*hdr).base.take() {
            Some(cell) => {
                cell.close();
            }
            None => {
                if let Some(m) = (*base).pMethods.as_ref() {
                    if let Some(close) = m.xClose {
                        close(base);
                    }
                    (*base).pMethods = ptr::null();
                }
            }
        }
        (*hdr).file.pMethods = ptr::null();
        (*hdr).shim = ptr::null_mut();
        // The base file is closed: nothing refers to its name any more.
        drop((*hdr).base_name.take());
    }
    let code = error.code.sqlite_code();
    // SAFETY: zName is SQLite's xOpen argument, null or a NUL-terminated string.
    // sqlite3_log truncates a message at about 200 bytes: say the path once.
    let what = match unsafe { path_for_log(z_name) } {
        Some(p) if error.message.starts_with(&p) => "open".to_owned(),
        Some(p) => format!("open {p}"),
        None => "open (anonymous)".to_owned(),
    };
    reg.common.log(code, &what, &error.message);
    code
}

/// The file name for a log message.
///
/// # Safety
///
/// `z_name` must be null or a NUL-terminated string valid for the call.
unsafe fn path_for_log(z_name: *const c_char) -> Option<String> {
    if z_name.is_null() {
        return None;
    }
    // SAFETY: non-null, so a NUL-terminated string valid for the call (contract).
    let name = unsafe { CStr::from_ptr(z_name) };
    Some(name.to_string_lossy().into_owned())
}

/// The fallible part of `x_open`. On error the caller closes the base file if it is open.
///
/// # Safety
///
/// Arguments as SQLite passed them to `x_open`, with `hdr` and `base` initialised.
unsafe fn open_file<S: Shim>(
    reg: &Registration<S>,
    z_name: *const c_char,
    hdr: *mut FileHeader<S>,
    base: *mut sys::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> VfsResult<()> {
    // Decode before touching the file system: an open we cannot classify is refused, never
    // guessed (a guess could, e.g., write a main-db page unencrypted as "temp data").
    let kind = FileKind::from_open_flags(flags).ok_or_else(|| {
        VfsError::new(ErrorCode::CantOpen, format!("open flags {flags:#x} carry no single known file-type bit"))
    })?;
    let path = if z_name.is_null() {
        None
    } else {
        // SAFETY: a non-null zName is a NUL-terminated string that SQLite keeps alive at least
        // until the file is closed (and so for this call).
        let name = unsafe { CStr::from_ptr(z_name) };
        Some(
            name.to_str()
                .map_err(|_| VfsError::new(ErrorCode::CantOpen, format!("file name {name:?} is not UTF-8")))?,
        )
    };

    let base_z_name = match path {
        Some(p) => match reg.shim.physical_path(p, Some(kind))? {
            Some(physical) => {
                let owned = nul_terminated_twice(physical, ErrorCode::CantOpen)?;
                // SAFETY: `hdr` was initialised by x_open; the boxed bytes do not move when the
                // box is stored, so the pointer stays valid until the box is dropped after the
                // base file is closed.
                unsafe {
                    (*hdr).base_name = Some(owned);
                    (*hdr).base_name.as_ref().map_or(z_name, |b| b.as_ptr().cast::<c_char>())
                }
            }
            None => z_name,
        },
        None => z_name,
    };

    let base_vfs = reg.common.base;
    // SAFETY: the base VFS outlives the registration (see `register`).
    let Some(base_open) = (unsafe { (*base_vfs).xOpen }) else {
        return Err(VfsError::new(ErrorCode::CantOpen, "base VFS has no xOpen"));
    };
    // SAFETY: the base gets its own region of our file object, `szOsFile` of the base in size
    // and 8-byte aligned, plus SQLite's own name (or the shim's physical name, kept alive in the
    // header until close), flags and out-pointer, exactly as if SQLite had called it directly.
    let rc = unsafe { base_open(base_vfs, base_z_name, base, flags, out_flags) };
    if rc != sys::SQLITE_OK {
        return Err(VfsError::from_base(rc, "open"));
    }
    // SAFETY: the base is open, so its pMethods points to its methods table.
    let version = unsafe { (*(*base).pMethods).iVersion }.clamp(1, 3);
    // From here on every use of the base file goes through the cell (see `BaseCell`). The
    // header holds it first, so x_open's error path closes the file whatever happens next.
    // SAFETY: `base` points inside SQLite's non-null file object.
    let cell = Arc::new(BaseCell::new(unsafe { NonNull::new_unchecked(base) }));
    // SAFETY: `hdr` was initialised by x_open and nothing else references it yet.
    unsafe { (*hdr).base = Some(Arc::clone(&cell)) };

    // Held until the shim's open returned: no main database leaves the registry (x_close)
    // while the shim borrows it.
    let mains = kind.is_linked_to_main_db().then(|| lock_mains(reg));
    let main_db = match (path, &mains) {
        // SAFETY: the registry only holds files of this registration that are open, and stays
        // locked while the borrow is used.
        (Some(p), Some(m)) => unsafe { linked_main_db::<S>(m, z_name, p) },
        _ => None,
    };
    let uri_name = if kind == FileKind::MainDb { z_name } else { ptr::null() };
    let req = OpenRequest {
        path,
        kind,
        flags: OpenFlags(flags & !FILE_TYPE_MASK),
        // SAFETY: for MainDb, zName is made by SQLite's core and lives until close.
        uri: unsafe { UriHandle::new(uri_name, &reg.common.api) },
    };
    let shim_file = reg.shim.open(&req, BaseFile { cell }, main_db);
    drop(mains);
    let shim_file = shim_file?;

    // SAFETY: `hdr` was initialised by x_open; nothing else references it yet.
    unsafe {
        (*hdr).shim = Box::into_raw(Box::new(shim_file));
        // Same I/O-methods version as the base file, so SQLite only uses what the base supports
        // (e.g. no WAL over a base without shared memory).
        (*hdr).file.pMethods = &reg.io_methods[(version - 1) as usize];
    }
    if let (FileKind::MainDb, Some(name)) = (kind, path) {
        // SAFETY: a main-database name SQLite passes to xOpen has the pager's layout (name,
        // URI parameters, journal and WAL names), valid until the file is closed.
        let (journal, wal) = unsafe { side_name_addresses(z_name) };
        lock_mains(reg).push(MainEntry { file: hdr as usize, name: name.to_owned(), journal, wal });
    }
    Ok(())
}

fn lock_mains<S: Shim>(reg: &Registration<S>) -> MutexGuard<'_, Vec<MainEntry>> {
    // The list stays consistent under a panic (push and retain only).
    reg.mains.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Addresses of the journal and WAL names that follow a main-database name in the pager's
/// allocation (what `sqlite3_filename_journal` / `sqlite3_filename_wal` compute), without
/// `sqlite3_database_file_object`'s backwards walk.
///
/// # Safety
///
/// `z_name` must be a main-database name as SQLite passes it to xOpen: NUL-terminated, followed
/// by NUL-terminated key/value pairs and an empty string.
unsafe fn side_name_addresses(z_name: *const c_char) -> (usize, usize) {
    // SAFETY: per the contract, every string read lies inside the name's allocation.
    unsafe {
        let skip = |p: *const c_char| p.add(CStr::from_ptr(p).to_bytes().len() + 1);
        let mut p = skip(z_name);
        while *p != 0 {
            p = skip(skip(p));
        }
        let journal = p.add(1);
        let wal = skip(journal);
        (journal as usize, wal as usize)
    }
}

/// The shim file of the main database that owns journal/WAL name `z_name` (`path`), when
/// that database is open through this same registration.
///
/// `sqlite3_database_file_object` is defined only for names SQLite's pager made; a shim stacked
/// above this one passes copies (SQLite's multiplex does), and a shim below receives whatever
/// this one passes on, so the binding never calls it. Instead:
/// 1. `z_name` is the very address of the journal or WAL name of a registered main database:
///    that database's pager opens it (exact, whatever else is open);
/// 2. otherwise (a copy made by a shim above) the main database is found by name: SQLite names
///    these files `<db>-journal` / `<db>-wal` (a multiplex chunk adds digits). Exactly one open
///    main database of that name links; none or several (two connections to one file behind a
///    copying shim: which one's is ambiguous) do not.
///
/// # Safety
///
/// `mains` must be the locked registry of this registration, which holds only files that are
/// still open (x_close removes them, under the lock, before their memory is released).
unsafe fn linked_main_db<'m, S: Shim>(
    mains: &'m [MainEntry],
    z_name: *const c_char,
    path: &str,
) -> Option<&'m S::File> {
    let file = {
        let exact = mains.iter().find(|m| m.journal == z_name as usize || m.wal == z_name as usize);
        match exact {
            Some(m) => m.file,
            None => {
                let stem = path.trim_end_matches(|c: char| c.is_ascii_digit());
                let db = stem.strip_suffix("-journal").or_else(|| stem.strip_suffix("-wal"))?;
                let mut candidates = mains.iter().filter(|m| m.name == db);
                let first = candidates.next()?;
                if candidates.next().is_some() {
                    return None;
                }
                first.file
            }
        }
    };
    // SAFETY: the registry holds open files of this registration (contract), i.e. initialised
    // `FileHeader<S>`s. The journal/WAL is opened by the connection that owns the main database
    // (its own pager, or, through a copying shim, the only open file of that name), and SQLite
    // is not inside any of that file's methods while it opens the journal, so a shared borrow
    // for the duration of this xOpen is not aliased by a mutable one.
    unsafe {
        let main = &*(file as *const FileHeader<S>);
        if main.poisoned {
            None
        } else {
            main.shim.as_ref()
        }
    }
}

unsafe extern "C" fn x_delete<S: Shim>(vfs: *mut sys::sqlite3_vfs, z_name: *const c_char, sync_dir: c_int) -> c_int {
    // SAFETY: SQLite calls xDelete with the VFS it was registered as.
    let reg = unsafe { registration::<S>(vfs) };
    if z_name.is_null() {
        return sys::SQLITE_IOERR_DELETE;
    }
    // SAFETY: zName is a NUL-terminated path, valid for the call.
    let name = unsafe { CStr::from_ptr(z_name) };
    let Ok(path) = name.to_str() else {
        reg.common.log(sys::SQLITE_IOERR_DELETE, "delete", &format!("{name:?} is not UTF-8"));
        return sys::SQLITE_IOERR_DELETE;
    };
    let (mapped, _) = guard(&reg.common, "delete", Err(sys::SQLITE_IOERR_DELETE), || {
        let physical = reg
            .shim
            .physical_path(path, None)
            .and_then(|p| p.map(|p| nul_terminated_twice(p, ErrorCode::Delete)).transpose());
        match physical {
            Ok(physical) => match reg.common.code("delete", reg.shim.before_delete(path)) {
                sys::SQLITE_OK => Ok(physical),
                rc => Err(rc),
            },
            Err(e) => Err(reg.common.code("delete", Err(e))),
        }
    });
    let physical = match mapped {
        Ok(p) => p,
        Err(rc) => return rc,
    };
    let z_base = physical.as_ref().map_or(z_name, |b| b.as_ptr().cast::<c_char>());
    let base = reg.common.base;
    // SAFETY: the base VFS outlives the registration; SQLite's own arguments are forwarded,
    // with the name replaced by the shim's physical name (alive until the call returns).
    unsafe {
        match (*base).xDelete {
            Some(f) => f(base, z_base, sync_dir),
            None => sys::SQLITE_IOERR_DELETE,
        }
    }
}

/// `name` as a C string terminated by two NULs (SQLite's layout of a file name without URI
/// parameters). A name with an interior NUL cannot be passed to C and is refused.
fn nul_terminated_twice(name: String, code: ErrorCode) -> VfsResult<Box<[u8]>> {
    if name.as_bytes().contains(&0) {
        return Err(VfsError::new(code, format!("physical file name {name:?} contains a NUL byte")));
    }
    let mut bytes = name.into_bytes();
    bytes.extend_from_slice(&[0, 0]);
    Ok(bytes.into_boxed_slice())
}

unsafe extern "C" fn x_access<S: Shim>(
    vfs: *mut sys::sqlite3_vfs,
    z_name: *const c_char,
    flags: c_int,
    res_out: *mut c_int,
) -> c_int {
    // SAFETY: SQLite calls xAccess with the VFS it was registered as.
    let reg = unsafe { registration::<S>(vfs) };
    let mut physical = None;
    if !z_name.is_null() {
        // SAFETY: zName is a NUL-terminated path, valid for the call.
        let name = unsafe { CStr::from_ptr(z_name) };
        if let Ok(path) = name.to_str() {
            let (mapped, _) = guard(&reg.common, "access", Err(sys::SQLITE_IOERR_ACCESS), || {
                reg.shim
                    .physical_path(path, None)
                    .and_then(|p| {
                        p.map(|p| nul_terminated_twice(p, ErrorCode::Raw(sys::SQLITE_IOERR_ACCESS))).transpose()
                    })
                    .map_err(|e| reg.common.code("access", Err(e)))
            });
            match mapped {
                Ok(p) => physical = p,
                Err(rc) => return rc,
            }
        }
    }
    let z_base = physical.as_ref().map_or(z_name, |b| b.as_ptr().cast::<c_char>());
    // SAFETY: the base VFS outlives the registration; SQLite's own arguments are forwarded, with
    // the name replaced by the shim's physical name (alive until the call returns).
    unsafe {
        let b = reg.common.base;
        match (*b).xAccess {
            Some(f) => f(b, z_base, flags, res_out),
            None => sys::SQLITE_IOERR_ACCESS,
        }
    }
}

// The forwarding trampolines below run no Rust code that can panic (field reads and one C
// call), so they need no catch_unwind. Each relies on the same fact:
// SAFETY (all of them): SQLite calls them with the VFS registered by `register`, whose
// registration holds the live base VFS; the remaining arguments are SQLite's own, forwarded
// unchanged to the base VFS with the base's own `sqlite3_vfs` pointer.

// The forwarding trampolines below run no Rust code that can panic (field reads and one C
// call), so they need no catch_unwind. Each relies on the same fact:
// SAFETY (all of them): SQLite calls them with the VFS registered by `register`, whose
// registration holds the live base VFS; the remaining arguments are SQLite's own, forwarded
// unchanged to the base VFS with the base's own `sqlite3_vfs` pointer.

unsafe extern "C" fn x_full_pathname(
    vfs: *mut sys::sqlite3_vfs,
    z_name: *const c_char,
    n_out: c_int,
    z_out: *mut c_char,
) -> c_int {
    // SAFETY: see the comment above the forwarding trampolines.
    unsafe {
        let b = common(vfs).base;
        match (*b).xFullPathname {
            Some(f) => f(b, z_name, n_out, z_out),
            None => sys::SQLITE_CANTOPEN,
        }
    }
}

unsafe extern "C" fn x_dl_open(vfs: *mut sys::sqlite3_vfs, z: *const c_char) -> *mut c_void {
    // SAFETY: see the comment above the forwarding trampolines.
    unsafe {
        let b = common(vfs).base;
        match (*b).xDlOpen {
            Some(f) => f(b, z),
            None => ptr::null_mut(),
        }
    }
}

unsafe extern "C" fn x_dl_error(vfs: *mut sys::sqlite3_vfs, n: c_int, z: *mut c_char) {
    // SAFETY: see the comment above the forwarding trampolines.
    unsafe {
        let b = common(vfs).base;
        if let Some(f) = (*b).xDlError {
            f(b, n, z);
        }
    }
}

type DlSymResult = Option<unsafe extern "C" fn(*mut sys::sqlite3_vfs, *mut c_void, *const c_char)>;

unsafe extern "C" fn x_dl_sym(vfs: *mut sys::sqlite3_vfs, handle: *mut c_void, z: *const c_char) -> DlSymResult {
    // SAFETY: see the comment above the forwarding trampolines.
    unsafe {
        let b = common(vfs).base;
        match (*b).xDlSym {
            Some(f) => f(b, handle, z),
            None => None,
        }
    }
}

unsafe extern "C" fn x_dl_close(vfs: *mut sys::sqlite3_vfs, handle: *mut c_void) {
    // SAFETY: see the comment above the forwarding trampolines.
    unsafe {
        let b = common(vfs).base;
        if let Some(f) = (*b).xDlClose {
            f(b, handle);
        }
    }
}

unsafe extern "C" fn x_randomness(vfs: *mut sys::sqlite3_vfs, n: c_int, out: *mut c_char) -> c_int {
    // SAFETY: see the comment above the forwarding trampolines.
    unsafe {
        let b = common(vfs).base;
        match (*b).xRandomness {
            Some(f) => f(b, n, out),
            None => 0,
        }
    }
}

unsafe extern "C" fn x_sleep(vfs: *mut sys::sqlite3_vfs, micros: c_int) -> c_int {
    // SAFETY: see the comment above the forwarding trampolines.
    unsafe {
        let b = common(vfs).base;
        match (*b).xSleep {
            Some(f) => f(b, micros),
            None => 0,
        }
    }
}

unsafe extern "C" fn x_current_time(vfs: *mut sys::sqlite3_vfs, out: *mut f64) -> c_int {
    // SAFETY: see the comment above the forwarding trampolines.
    unsafe {
        let b = common(vfs).base;
        match (*b).xCurrentTime {
            Some(f) => f(b, out),
            None => sys::SQLITE_ERROR,
        }
    }
}

unsafe extern "C" fn x_get_last_error(vfs: *mut sys::sqlite3_vfs, n: c_int, z: *mut c_char) -> c_int {
    // SAFETY: see the comment above the forwarding trampolines.
    unsafe {
        let b = common(vfs).base;
        match (*b).xGetLastError {
            Some(f) => f(b, n, z),
            None => 0,
        }
    }
}

unsafe extern "C" fn x_current_time_int64(vfs: *mut sys::sqlite3_vfs, out: *mut i64) -> c_int {
    // SAFETY: see the comment above the forwarding trampolines. This method is only installed
    // when the base's iVersion is at least 2 and it has the method.
    unsafe {
        let b = common(vfs).base;
        match (*b).xCurrentTimeInt64 {
            Some(f) => f(b, out),
            None => sys::SQLITE_ERROR,
        }
    }
}

unsafe extern "C" fn x_set_system_call(
    vfs: *mut sys::sqlite3_vfs,
    z: *const c_char,
    p: sys::sqlite3_syscall_ptr,
) -> c_int {
    // SAFETY: see the comment above the forwarding trampolines; only installed for a base with
    // iVersion >= 3 that has the method.
    unsafe {
        let b = common(vfs).base;
        match (*b).xSetSystemCall {
            Some(f) => f(b, z, p),
            None => sys::SQLITE_NOTFOUND,
        }
    }
}

unsafe extern "C" fn x_get_system_call(vfs: *mut sys::sqlite3_vfs, z: *const c_char) -> sys::sqlite3_syscall_ptr {
    // SAFETY: see the comment above the forwarding trampolines; only installed for a base with
    // iVersion >= 3 that has the method.
    unsafe {
        let b = common(vfs).base;
        match (*b).xGetSystemCall {
            Some(f) => f(b, z),
            None => None,
        }
    }
}

unsafe extern "C" fn x_next_system_call(vfs: *mut sys::sqlite3_vfs, z: *const c_char) -> *const c_char {
    // SAFETY: see the comment above the forwarding trampolines; only installed for a base with
    // iVersion >= 3 that has the method.
    unsafe {
        let b = common(vfs).base;
        match (*b).xNextSystemCall {
            Some(f) => f(b, z),
            None => ptr::null(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// sqlite3_io_methods trampolines
// ---------------------------------------------------------------------------------------------
//
// SQLite calls these only with files whose pMethods is one of this registration's tables, i.e.
// files x_open::<S> opened successfully and that are not yet closed; it never calls two methods
// of one file at the same time. That is the contract of `header` / `with_shim`, relied on by
// every `unsafe` call below.

unsafe extern "C" fn x_close<S: Shim>(file: *mut sys::sqlite3_file) -> c_int {
    // SAFETY: see the comment above the I/O trampolines.
    let hdr = unsafe { header::<S>(file) };
    // SAFETY: the registration is leaked and outlives every file.
    let common = unsafe { &(*hdr.reg).common };
    // SAFETY: the registration is leaked and outlives every file.
    let reg = unsafe { &*hdr.reg };
    {
        let me = ptr::from_mut(hdr) as usize;
        lock_mains(reg).retain(|m| m.file != me);
    }
    let shim_ptr = std::mem::replace(&mut hdr.shim, ptr::null_mut());
    let mut rc = sys::SQLITE_OK;
    // SAFETY: `shim_ptr` came from Box::into_raw in open_file and was taken out of the header
    // above, so it is reclaimed exactly once.
    let mut shim = (!shim_ptr.is_null()).then(|| unsafe { Box::from_raw(shim_ptr) });
    if let Some(s) = shim.as_mut() {
        if !hdr.poisoned {
            rc = guard(common, "close", sys::SQLITE_IOERR_CLOSE, || common.code("close", s.close())).0;
        }
    }
    // Close the base file. Any BaseFile the shim still holds fails from now on instead of
    // reaching memory SQLite is about to free.
    let base_rc = hdr.base.take().map_or(sys::SQLITE_OK, |cell| cell.close());
    drop(hdr.base_name.take());
    // The shim file goes last, so a shim that wipes secrets on drop does so after every use of
    // them. (Its BaseFile is already closed: final writes belong in `close`.)
    if let Some(s) = shim {
        guard(common, "close (drop)", (), move || drop(s));
    }
    hdr.file.pMethods = ptr::null();
    if rc != sys::SQLITE_OK {
        rc
    } else {
        base_rc
    }
}

unsafe extern "C" fn x_read<S: Shim>(
    file: *mut sys::sqlite3_file,
    buf: *mut c_void,
    amt: c_int,
    ofst: sys::sqlite3_int64,
) -> c_int {
    let (Ok(len), Ok(offset)) = (usize::try_from(amt), u64::try_from(ofst)) else {
        return sys::SQLITE_IOERR_READ;
    };
    if buf.is_null() && len > 0 {
        return sys::SQLITE_IOERR_READ;
    }
    let buf = if len == 0 {
        &mut [][..]
    } else {
        // SAFETY: SQLite passes a buffer valid for writes of `amt` bytes for the call. It may be
        // uninitialised, so it is zeroed before a `&mut [u8]` is formed over it; this also means
        // a shim that fails half-way never hands stale bytes back.
        unsafe {
            ptr::write_bytes(buf.cast::<u8>(), 0, len);
            std::slice::from_raw_parts_mut(buf.cast::<u8>(), len)
        }
    };
    // SAFETY: see the comment above the I/O trampolines.
    unsafe {
        with_shim::<S, _>(file, "read", sys::SQLITE_IOERR_READ, |f, c| match f.read(buf, offset) {
            Ok(ReadStatus::Full) => sys::SQLITE_OK,
            Ok(ReadStatus::Short) => sys::SQLITE_IOERR_SHORT_READ,
            Err(e) => c.code("read", Err(e)),
        })
    }
}

unsafe extern "C" fn x_write<S: Shim>(
    file: *mut sys::sqlite3_file,
    buf: *const c_void,
    amt: c_int,
    ofst: sys::sqlite3_int64,
) -> c_int {
    let (Ok(len), Ok(offset)) = (usize::try_from(amt), u64::try_from(ofst)) else {
        return sys::SQLITE_IOERR_WRITE;
    };
    if buf.is_null() && len > 0 {
        return sys::SQLITE_IOERR_WRITE;
    }
    let data = if len == 0 {
        &[][..]
    } else {
        // SAFETY: SQLite passes `amt` initialised bytes, valid for reads during the call.
        unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) }
    };
    // SAFETY: see the comment above the I/O trampolines.
    unsafe { with_shim::<S, _>(file, "write", sys::SQLITE_IOERR_WRITE, |f, c| c.code("write", f.write(data, offset))) }
}

unsafe extern "C" fn x_truncate<S: Shim>(file: *mut sys::sqlite3_file, size: sys::sqlite3_int64) -> c_int {
    let Ok(size) = u64::try_from(size) else {
        return sys::SQLITE_IOERR_TRUNCATE;
    };
    // SAFETY: see the comment above the I/O trampolines.
    unsafe {
        with_shim::<S, _>(file, "truncate", sys::SQLITE_IOERR_TRUNCATE, |f, c| c.code("truncate", f.truncate(size)))
    }
}

unsafe extern "C" fn x_sync<S: Shim>(file: *mut sys::sqlite3_file, flags: c_int) -> c_int {
    // SAFETY: see the comment above the I/O trampolines.
    unsafe { with_shim::<S, _>(file, "sync", sys::SQLITE_IOERR_FSYNC, |f, c| c.code("sync", f.sync(SyncFlags(flags)))) }
}

unsafe extern "C" fn x_file_size<S: Shim>(file: *mut sys::sqlite3_file, out: *mut sys::sqlite3_int64) -> c_int {
    // SAFETY: see the comment above the I/O trampolines.
    unsafe {
        with_shim::<S, _>(file, "file size", sys::SQLITE_IOERR_FSTAT, |f, c| {
            let size = f
                .file_size()
                .and_then(|s| i64::try_from(s).map_err(|_| VfsError::new(ErrorCode::Fstat, "size overflows i64")));
            match size {
                Ok(s) => {
                    // SAFETY: SQLite passes a valid out-pointer.
                    *out = s;
                    sys::SQLITE_OK
                }
                Err(e) => c.code("file size", Err(e)),
            }
        })
    }
}

/// `xLock`: lock the base file, then tell the shim.
///
/// The cell's `sqlite_lock` tracks the level SQLite *believes* the file holds: it changes only
/// when an `xLock`/`xUnlock` returns `SQLITE_OK`, and `after_lock_change` is called exactly
/// when it changes. When the shim rejects an upgrade from NONE or SHARED, the base is unlocked
/// back to that level. From RESERVED (an upgrade to EXCLUSIVE) the base cannot go back
/// (`xUnlock` only knows SHARED and NONE), so it keeps the stronger lock until SQLite's next
/// `xUnlock`; that is the same state a busy EXCLUSIVE attempt leaves the unix VFS in (holding
/// PENDING), and it is safe: holding more than SQLite thinks only delays other connections.
unsafe extern "C" fn x_lock<S: Shim>(file: *mut sys::sqlite3_file, level: c_int) -> c_int {
    let Some(new) = LockLevel::from_raw(level) else {
        return sys::SQLITE_IOERR_LOCK;
    };
    // SAFETY: see the comment above the I/O trampolines.
    let hdr = unsafe { header::<S>(file) };
    if hdr.poisoned {
        return sys::SQLITE_IOERR_LOCK;
    }
    let Some(cell) = hdr.base.clone() else {
        return sys::SQLITE_IOERR_LOCK;
    };
    // SAFETY: the registration is leaked and outlives every file.
    let common = unsafe { &(*hdr.reg).common };
    let previous = {
        let mut state = cell.state();
        let rc = state
            .call(|base, m| match m.xLock {
                // SAFETY: `base` is the open base file; SQLite's lock level is forwarded.
                Some(lock) => unsafe { lock(base, level) },
                None => sys::SQLITE_IOERR_LOCK,
            })
            .unwrap_or(sys::SQLITE_IOERR_LOCK);
        let previous = state.sqlite_lock;
        if rc != sys::SQLITE_OK || new <= previous {
            return rc;
        }
        state.sqlite_lock = new;
        previous
    };
    // The cell is unlocked while the shim runs: it may use its BaseFile.
    // SAFETY: see the comment above the I/O trampolines.
    let rc = unsafe {
        with_shim::<S, _>(file, "lock", sys::SQLITE_IOERR_LOCK, |f, c| c.code("lock", f.after_lock_change(new)))
    };
    if rc != sys::SQLITE_OK {
        let mut state = cell.state();
        state.sqlite_lock = previous;
        if previous <= LockLevel::Shared {
            let urc = state
                .call(|base, m| match m.xUnlock {
                    // SAFETY: `base` is the open base file; NONE and SHARED are valid levels.
                    Some(unlock) => unsafe { unlock(base, previous.raw()) },
                    None => sys::SQLITE_IOERR_UNLOCK,
                })
                .unwrap_or(sys::SQLITE_IOERR_UNLOCK);
            if urc != sys::SQLITE_OK {
                common.log(urc, "lock", "could not release the lock the shim rejected");
            }
        }
    }
    rc
}

unsafe extern "C" fn x_unlock<S: Shim>(file: *mut sys::sqlite3_file, level: c_int) -> c_int {
    let Some(new) = LockLevel::from_raw(level) else {
        return sys::SQLITE_IOERR_UNLOCK;
    };
    // SAFETY: see the comment above the I/O trampolines.
    let hdr = unsafe { header::<S>(file) };
    let Some(cell) = hdr.base.clone() else {
        return sys::SQLITE_IOERR_UNLOCK;
    };
    // Forwarded even for a poisoned file: locks must be released.
    {
        let mut state = cell.state();
        let rc = state
            .call(|base, m| match m.xUnlock {
                // SAFETY: `base` is the open base file; SQLite's lock level is forwarded.
                Some(unlock) => unsafe { unlock(base, level) },
                None => sys::SQLITE_IOERR_UNLOCK,
            })
            .unwrap_or(sys::SQLITE_IOERR_UNLOCK);
        if rc != sys::SQLITE_OK || new >= state.sqlite_lock {
            return rc;
        }
        state.sqlite_lock = new;
    }
    // SAFETY: see the comment above the I/O trampolines. A poisoned file returns OK here: the
    // base lock was released, and that is all SQLite asked for.
    unsafe { with_shim::<S, _>(file, "unlock", sys::SQLITE_OK, |f, c| c.code("unlock", f.after_lock_change(new))) }
}

unsafe extern "C" fn x_check_reserved_lock<S: Shim>(file: *mut sys::sqlite3_file, out: *mut c_int) -> c_int {
    // SAFETY: see the comment above the I/O trampolines.
    let hdr = unsafe { header::<S>(file) };
    hdr.with_base(sys::SQLITE_IOERR_CHECKRESERVEDLOCK, |base, m| {
        match m.xCheckReservedLock {
            // SAFETY: `base` is the open base file; `out` is SQLite's out-pointer.
            Some(f) => unsafe { f(base, out) },
            None => sys::SQLITE_IOERR_CHECKRESERVEDLOCK,
        }
    })
}

/// Forward a file control to the base file with SQLite's original argument.
///
/// # Safety
///
/// As for the I/O trampolines; `arg` is the argument SQLite passed with `op`.
unsafe fn forward_file_control<S: Shim>(file: *mut sys::sqlite3_file, op: c_int, arg: *mut c_void) -> c_int {
    // SAFETY: see the comment above the I/O trampolines.
    let hdr = unsafe { header::<S>(file) };
    hdr.with_base(sys::SQLITE_NOTFOUND, |base, m| match m.xFileControl {
        // SAFETY: `base` is the open base file; `op` and `arg` are SQLite's, as the contract
        // requires, and mean the same to the base.
        Some(f) => unsafe { f(base, op, arg) },
        None => sys::SQLITE_NOTFOUND,
    })
}

unsafe extern "C" fn x_file_control<S: Shim>(file: *mut sys::sqlite3_file, op: c_int, arg: *mut c_void) -> c_int {
    // SAFETY: see the comment above the I/O trampolines; the registration outlives every file.
    let common = unsafe { &(*header::<S>(file).reg).common };
    match op {
        // SAFETY: SQLITE_FCNTL_PRAGMA's argument is a `char *[4]` (see `pragma`).
        sys::SQLITE_FCNTL_PRAGMA => unsafe { pragma::<S>(file, arg.cast()) },
        sys::SQLITE_FCNTL_VFSNAME => {
            // Report the whole stack, "ours/base", as SQLite's own shims do.
            // SAFETY: forwarding SQLite's argument (a `char **`) to the open base file.
            let rc = unsafe { forward_file_control::<S>(file, op, arg) };
            let out = arg.cast::<*mut c_char>();
            if out.is_null() {
                return rc;
            }
            let ours = common.name.to_string_lossy();
            // SAFETY: `out` is SQLite's `char **`; on success the base stored a string from
            // sqlite3_malloc (or left it null), which we replace and free exactly once.
            unsafe {
                let below = (*out).cast_const();
                let text = if rc == sys::SQLITE_OK && !below.is_null() {
                    format!("{ours}/{}", CStr::from_ptr(below).to_string_lossy())
                } else {
                    ours.into_owned()
                };
                let new = common.api.alloc_cstring(&text);
                if new.is_null() {
                    return sys::SQLITE_NOMEM;
                }
                if rc == sys::SQLITE_OK && !below.is_null() {
                    common.api.free(below.cast_mut().cast());
                }
                *out = new;
            }
            sys::SQLITE_OK
        }
        sys::SQLITE_FCNTL_MMAP_SIZE => {
            // SAFETY: see the comment above the I/O trampolines.
            let allow = unsafe { with_shim::<S, _>(file, "file control", false, |f, _| f.allow_mmap()) };
            if allow {
                // SAFETY: forwarding SQLite's argument to the open base file.
                unsafe { forward_file_control::<S>(file, op, arg) }
            } else {
                // Keep the base from mapping the file at all and report "mmap off" (PRAGMA
                // mmap_size then returns 0). SQLite still calls xFetch, which declines.
                if !arg.is_null() {
                    // SAFETY: the argument of SQLITE_FCNTL_MMAP_SIZE is an `i64 *` in/out.
                    unsafe { *arg.cast::<i64>() = 0 };
                }
                sys::SQLITE_OK
            }
        }
        _ => {
            // SAFETY: the argument types are those documented for each op code; null is
            // checked before reading.
            let control = unsafe {
                match op {
                    sys::SQLITE_FCNTL_SIZE_HINT if !arg.is_null() => FileControl::SizeHint(*arg.cast::<i64>()),
                    sys::SQLITE_FCNTL_CHUNK_SIZE if !arg.is_null() => FileControl::ChunkSize(*arg.cast::<c_int>()),
                    sys::SQLITE_FCNTL_CKPT_START => FileControl::CheckpointStart,
                    sys::SQLITE_FCNTL_CKPT_DONE => FileControl::CheckpointDone,
                    // The argument is `sqlite3 **` (the address of the B-tree's connection
                    // field); only the pointer value is read, as an identity.
                    sys::SQLITE_FCNTL_PDB if !arg.is_null() => {
                        FileControl::Connection(crate::ConnectionId::from_raw(*arg.cast::<*const c_void>() as usize))
                    }
                    op => FileControl::Other(op),
                }
            };
            // SAFETY: see the comment above the I/O trampolines.
            let outcome =
                unsafe { with_shim::<S, _>(file, "file control", None, |f, _| Some(f.file_control(control))) };
            match outcome {
                // SAFETY: forwarding SQLite's argument unchanged to the open base file.
                Some(FileControlOutcome::Forward) => unsafe { forward_file_control::<S>(file, op, arg) },
                Some(FileControlOutcome::NotFound) => sys::SQLITE_NOTFOUND,
                Some(FileControlOutcome::Done(r)) => common.code("file control", r),
                None => sys::SQLITE_IOERR,
            }
        }
    }
}

/// `SQLITE_FCNTL_PRAGMA`: `az[1]` is the pragma name as written, `az[2]` the value (dequoted)
/// or null; the handler may store an `sqlite3_malloc`ed result or error message in `az[0]`,
/// which SQLite frees.
///
/// # Safety
///
/// As for the I/O trampolines; `az` is SQLite's `char *[4]` for this op.
unsafe fn pragma<S: Shim>(file: *mut sys::sqlite3_file, az: *mut *mut c_char) -> c_int {
    // SAFETY: see the comment above the I/O trampolines; the registration outlives every file.
    let common = unsafe { &(*header::<S>(file).reg).common };
    if az.is_null() {
        return sys::SQLITE_NOTFOUND;
    }
    // SAFETY: az[1] is a NUL-terminated name and az[2] null or a NUL-terminated value, both
    // valid for the call.
    let (name, value) = unsafe {
        let name = *az.add(1);
        let value = *az.add(2);
        if name.is_null() {
            return sys::SQLITE_NOTFOUND;
        }
        (CStr::from_ptr(name).to_str(), (!value.is_null()).then(|| CStr::from_ptr(value).to_str()))
    };
    // Shims only answer UTF-8 pragmas; anything else belongs to whatever is below (or SQLite).
    let (Ok(name), Ok(value)) = (name, value.transpose()) else {
        // SAFETY: forwarding SQLite's argument unchanged to the open base file.
        return unsafe { forward_file_control::<S>(file, sys::SQLITE_FCNTL_PRAGMA, az.cast()) };
    };
    // Pragma names are case-insensitive in SQL; SQLite passes them as written.
    let name = name.to_ascii_lowercase();
    // SAFETY: see the comment above the I/O trampolines.
    let outcome = unsafe { with_shim::<S, _>(file, "pragma", None, |f, _| Some(f.pragma(&name, value))) };
    let set_message = |text: &str| -> bool {
        let p = common.api.alloc_cstring(text);
        // SAFETY: az[0] is SQLite's out-slot (null on entry); SQLite frees it with sqlite3_free.
        unsafe { *az = p };
        !p.is_null()
    };
    match outcome {
        // Not ours: let a VFS below answer (unix answers SQLITE_NOTFOUND, and SQLite then runs
        // its built-in pragma, if any).
        // SAFETY: forwarding SQLite's argument unchanged to the open base file.
        Some(PragmaOutcome::NotFound) => unsafe {
            forward_file_control::<S>(file, sys::SQLITE_FCNTL_PRAGMA, az.cast())
        },
        Some(PragmaOutcome::Handled(None)) => sys::SQLITE_OK,
        Some(PragmaOutcome::Handled(Some(text))) => {
            if set_message(&text) {
                sys::SQLITE_OK
            } else {
                sys::SQLITE_NOMEM
            }
        }
        Some(PragmaOutcome::Failed(message)) => {
            if set_message(&message) {
                sys::SQLITE_ERROR
            } else {
                sys::SQLITE_NOMEM
            }
        }
        None => {
            set_message(&format!("vfs {}: pragma {name} failed", common.name.to_string_lossy()));
            sys::SQLITE_IOERR
        }
    }
}

unsafe extern "C" fn x_sector_size<S: Shim>(file: *mut sys::sqlite3_file) -> c_int {
    // SAFETY: see the comment above the I/O trampolines.
    let size = unsafe { with_shim::<S, _>(file, "sector size", None, |f, _| Some(f.sector_size())) };
    match size {
        Some(s) => c_int::try_from(s).unwrap_or(c_int::MAX),
        // Poisoned (or panicked): report the base's value, which is what SQLite would use
        // without us.
        None => {
            // SAFETY: see the comment above the I/O trampolines.
            let hdr = unsafe { header::<S>(file) };
            hdr.with_base(4096, |base, m| match m.xSectorSize {
                // SAFETY: `base` is the open base file.
                Some(f) => unsafe { f(base) },
                None => 4096,
            })
        }
    }
}

unsafe extern "C" fn x_device_characteristics<S: Shim>(file: *mut sys::sqlite3_file) -> c_int {
    // SAFETY: see the comment above the I/O trampolines. A poisoned file promises nothing (0):
    // no atomic writes, no powersafe overwrite, the most conservative answer.
    unsafe { with_shim::<S, _>(file, "device characteristics", 0, |f, _| f.device_characteristics().0) }
}

// Shared memory (the WAL index) is not file content: it is forwarded to the base file as is,
// even for a poisoned file, so that shm locks are always released. In each of these, `base` is
// the open base file (`with_base`) and the other arguments are SQLite's, forwarded unchanged.

unsafe extern "C" fn x_shm_map<S: Shim>(
    file: *mut sys::sqlite3_file,
    region: c_int,
    size: c_int,
    extend: c_int,
    pp: *mut *mut c_void,
) -> c_int {
    // SAFETY: see the comment above the I/O trampolines.
    let hdr = unsafe { header::<S>(file) };
    hdr.with_base(sys::SQLITE_IOERR_SHMMAP, |base, m| match m.xShmMap {
        // SAFETY: see above.
        Some(f) => unsafe { f(base, region, size, extend, pp) },
        None => sys::SQLITE_IOERR_SHMMAP,
    })
}

unsafe extern "C" fn x_shm_lock<S: Shim>(file: *mut sys::sqlite3_file, offset: c_int, n: c_int, flags: c_int) -> c_int {
    // SAFETY: see the comment above the I/O trampolines.
    let hdr = unsafe { header::<S>(file) };
    let rc = hdr.with_base(sys::SQLITE_IOERR_SHMLOCK, |base, m| match m.xShmLock {
        // SAFETY: see above.
        Some(f) => unsafe { f(base, offset, n, flags) },
        None => sys::SQLITE_IOERR_SHMLOCK,
    });
    if rc == sys::SQLITE_OK {
        // SAFETY: see the comment above the I/O trampolines.
        unsafe { with_shim::<S, _>(file, "shm lock", (), |f, _| f.after_shm_lock()) };
    }
    rc
}

unsafe extern "C" fn x_shm_barrier<S: Shim>(file: *mut sys::sqlite3_file) {
    // SAFETY: see the comment above the I/O trampolines.
    let hdr = unsafe { header::<S>(file) };
    hdr.with_base((), |base, m| {
        if let Some(f) = m.xShmBarrier {
            // SAFETY: see above.
            unsafe { f(base) }
        }
    });
}

unsafe extern "C" fn x_shm_unmap<S: Shim>(file: *mut sys::sqlite3_file, delete: c_int) -> c_int {
    // SAFETY: see the comment above the I/O trampolines.
    let hdr = unsafe { header::<S>(file) };
    hdr.with_base(sys::SQLITE_OK, |base, m| match m.xShmUnmap {
        // SAFETY: see above.
        Some(f) => unsafe { f(base, delete) },
        None => sys::SQLITE_OK,
    })
}

unsafe extern "C" fn x_fetch<S: Shim>(
    file: *mut sys::sqlite3_file,
    ofst: sys::sqlite3_int64,
    amt: c_int,
    pp: *mut *mut c_void,
) -> c_int {
    if pp.is_null() {
        return sys::SQLITE_IOERR_MMAP;
    }
    // SAFETY: `pp` is SQLite's valid out-pointer.
    unsafe { *pp = ptr::null_mut() };
    // SAFETY: see the comment above the I/O trampolines.
    let allow = unsafe { with_shim::<S, _>(file, "fetch", false, |f, _| f.allow_mmap()) };
    if !allow {
        // Declined: a mapping would show SQLite the base file's bytes, bypassing `read`.
        // A null page with SQLITE_OK makes SQLite fall back to xRead.
        return sys::SQLITE_OK;
    }
    // SAFETY: see the comment above the I/O trampolines.
    let hdr = unsafe { header::<S>(file) };
    hdr.with_base(sys::SQLITE_OK, |base, m| match m.xFetch {
        // SAFETY: `base` is the open base file; SQLite's arguments are forwarded.
        Some(f) => unsafe { f(base, ofst, amt, pp) },
        None => sys::SQLITE_OK,
    })
}

unsafe extern "C" fn x_unfetch<S: Shim>(
    file: *mut sys::sqlite3_file,
    ofst: sys::sqlite3_int64,
    p: *mut c_void,
) -> c_int {
    // Always forwarded, even when mmap is declined: SQLite only passes back pointers the base
    // handed out, and a null pointer ("drop every mapping") is harmless for a base that never
    // mapped anything. Not forwarding would leak the base's mapping reference count if a shim
    // ever changed its answer to `allow_mmap` while pages were mapped.
    // SAFETY: see the comment above the I/O trampolines.
    let hdr = unsafe { header::<S>(file) };
    hdr.with_base(sys::SQLITE_OK, |base, m| match m.xUnfetch {
        // SAFETY: `base` is the open base file; SQLite's arguments are forwarded.
        Some(f) => unsafe { f(base, ofst, p) },
        None => sys::SQLITE_OK,
    })
}

#[cfg(all(test, feature = "static"))]
mod tests {
    use super::*;
    use crate::passthrough::PassThrough;

    /// xOpen refuses flags without a file-type bit before anything reaches the base VFS, and
    /// leaves pMethods null so that SQLite will not call xClose.
    #[test]
    fn open_without_file_type_is_refused() {
        let vfs =
            register_static("sqlite-vfs-unit-no-type", PassThrough::default(), RegisterOptions::default()).unwrap();
        let v = vfs.as_ptr();
        // SAFETY: `v` is the registered VFS; the buffer is szOsFile bytes, 8-byte aligned (u64
        // storage); the name is a NUL-terminated path. The open is expected to fail, so no
        // xClose is due.
        unsafe {
            let size = usize::try_from((*v).szOsFile).unwrap();
            let mut mem = vec![0xA5u64; size.div_ceil(8)];
            let file = mem.as_mut_ptr().cast::<sys::sqlite3_file>();
            let name = c"/nonexistent-dir/never-created.db";
            let flags = sys::SQLITE_OPEN_READWRITE | sys::SQLITE_OPEN_CREATE;
            let mut out = 0;
            let rc = (*v).xOpen.unwrap()(v, name.as_ptr(), file, flags, &mut out);
            assert_eq!(rc, sys::SQLITE_CANTOPEN);
            assert!((*file).pMethods.is_null());
        }
    }

    #[test]
    fn duplicate_name_is_misuse() {
        let name = "sqlite-vfs-unit-dup";
        let first = register_static(name, PassThrough::default(), RegisterOptions::default());
        assert!(first.is_ok());
        let err = register_static(name, PassThrough::default(), RegisterOptions::default()).unwrap_err();
        assert_eq!(err.code, ErrorCode::Misuse);
        let err = register_static(
            "sqlite-vfs-unit-nobase",
            PassThrough::default(),
            RegisterOptions { base: Some("no-such-vfs".into()), make_default: false },
        )
        .unwrap_err();
        assert_eq!(err.code, ErrorCode::Misuse);
        assert!(register_static("", PassThrough::default(), RegisterOptions::default()).is_err());
    }
}

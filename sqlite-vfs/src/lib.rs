//! Safe binding for writing SQLite VFS *shims*: a VFS layered over a base VFS (normally the
//! default OS VFS) that transforms file contents and forwards everything else.
//!
//! This crate is the only place in the workspace where FFI `unsafe` lives. A shim implements
//! [`Shim`] (how files are opened) and [`ShimFile`] (how one open file reads and writes); the
//! binding turns them into a `sqlite3_vfs` and `sqlite3_io_methods`, forwards locking, shared
//! memory, sleep, randomness, time and dynamic loading to the base VFS, wraps every callback in
//! `catch_unwind`, and decodes C values into enums once, at the boundary.
//!
//! Design notes:
//! - SQLite functions are called through an [`api::SqliteApi`] table, never by symbol from the
//!   shim code paths, so the same binding serves a statically linked SQLite
//!   ([`register_static`]) and a loadable extension hosted by any SQLite ([`register_with_api`]).
//! - Journal and WAL opens are linked to their main database handle, so a shim can share
//!   per-database state (keys) between them: by the address of the journal/WAL name inside the
//!   pager's file-name block, or, when a shim above passed a copy, by name (one open main
//!   database of that name). Never with `sqlite3_database_file_object`, which is undefined for
//!   names the pager did not make (shims above copy them, shims below get this one's).
//! - Short reads are zero-filled and reported as [`ReadStatus::Short`]; the binding turns that
//!   into `SQLITE_IOERR_SHORT_READ`, as SQLite requires.

#![warn(missing_docs)]

pub mod api;
mod error;
mod ffi;
mod kinds;
pub mod mem;
pub mod passthrough;

pub use error::{ErrorCode, VfsError, VfsResult};
pub use ffi::{register_with_api, RegisterOptions, RegisteredVfs};
pub use kinds::{AccessCheck, DeviceCharacteristics, FileKind, LockLevel, OpenFlags, SyncFlags};

#[cfg(feature = "static")]
pub use ffi::register_static;

/// Result of a read: SQLite distinguishes a full read from a short one (zero-filled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadStatus {
    /// The whole buffer was filled from the file.
    Full,
    /// The file ended inside the requested range; the rest of the buffer is zero-filled.
    Short,
}

/// Outcome of a `PRAGMA` routed to the file through `SQLITE_FCNTL_PRAGMA`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PragmaOutcome {
    /// Not ours: the binding forwards it to the base file (so a VFS below may answer); the unix
    /// VFS answers `SQLITE_NOTFOUND` and SQLite then handles the pragma itself.
    NotFound,
    /// Handled; `Some(text)` is returned to the caller as a one-row, one-column result.
    Handled(Option<String>),
    /// Handled but failed; the message becomes the statement's error message.
    Failed(String),
}

/// File controls a shim may want to intercept, decoded from `xFileControl` op codes.
#[derive(Debug)]
pub enum FileControl {
    /// `SQLITE_FCNTL_SIZE_HINT`: the file is expected to grow to this many bytes.
    SizeHint(i64),
    /// `SQLITE_FCNTL_CHUNK_SIZE`: the file should grow in chunks of this many bytes.
    ChunkSize(i32),
    /// `SQLITE_FCNTL_CKPT_START`: a checkpoint is about to copy WAL frames into this database.
    CheckpointStart,
    /// `SQLITE_FCNTL_CKPT_DONE`: the checkpoint finished.
    CheckpointDone,
    /// `SQLITE_FCNTL_PDB`: SQLite's B-tree layer just opened this file for the database
    /// connection identified here (sent once per main, attached or `VACUUM INTO` database,
    /// right after the open and before any read or write).
    Connection(ConnectionId),
    /// Any other op code; the argument is opaque to the shim.
    Other(i32),
}

/// The identity of a database connection (the address of its `sqlite3` object), as SQLite
/// reports it with `SQLITE_FCNTL_PDB`. Opaque: the binding never dereferences it, and it names
/// one connection only while that connection is open (a closed connection's address may be
/// reused), so whoever keys state by it must drop that state when the file it came with closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnectionId(usize);

impl ConnectionId {
    /// For tests of shims: an identity that no real connection has at the same time.
    pub fn from_raw(raw: usize) -> ConnectionId {
        ConnectionId(raw)
    }
}

/// What the binding should do with a file control after the shim saw it.
#[derive(Debug)]
pub enum FileControlOutcome {
    /// Pass it on to the base file unchanged.
    Forward,
    /// Report `SQLITE_NOTFOUND` (not supported) without forwarding.
    NotFound,
    /// Handled by the shim with this result.
    Done(VfsResult<()>),
}

/// Per-open information handed to [`Shim::open`].
#[derive(Debug)]
pub struct OpenRequest<'a> {
    /// Full path, or `None` for anonymous (temporary) files.
    pub path: Option<&'a str>,
    /// What SQLite is opening, decoded from the open flags.
    pub kind: FileKind,
    /// The decoded open flags.
    pub flags: OpenFlags,
    pub(crate) uri: ffi::UriHandle<'a>,
}

impl<'a> OpenRequest<'a> {
    /// A URI query parameter of the main database (`file:x.db?key=...`). Only meaningful for
    /// [`FileKind::MainDb`]; `None` when absent or when the file was not opened by URI.
    ///
    /// A value that is not valid UTF-8 is reported as `None`; read it with
    /// [`OpenRequest::uri_parameter_bytes`].
    pub fn uri_parameter(&self, name: &str) -> Option<String> {
        self.uri.parameter(name)
    }

    /// The raw bytes of a URI query parameter of the main database (percent-escapes already
    /// decoded by SQLite). `None` when absent or not a [`FileKind::MainDb`] open.
    pub fn uri_parameter_bytes(&self, name: &str) -> Option<Vec<u8>> {
        self.uri.parameter_bytes(name)
    }

    /// The host SQLite's functions (e.g. [`api::SqliteApi::log`], to tell the application's
    /// error log what a shim did on its own). Cheap to copy and keep.
    pub fn api(&self) -> api::SqliteApi {
        self.uri.api()
    }
}

/// A handle on the file the base VFS opened. A shim reads and writes the real bytes through it.
///
/// The binding owns the memory and closes the base file after [`ShimFile::close`] returns (so
/// final writes belong in `close`, not in `Drop`); from then on every operation fails with an
/// I/O error. Calls are serialised with the binding's own calls on the same file.
pub struct BaseFile {
    pub(crate) cell: std::sync::Arc<ffi::BaseCell>,
}

impl std::fmt::Debug for BaseFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BaseFile").finish_non_exhaustive()
    }
}

/// A shim: decides how each file is opened and wraps it.
pub trait Shim: Send + Sync + 'static {
    /// The per-open-file state.
    type File: ShimFile;

    /// Wrap a file the base VFS has just opened. For [`FileKind::MainJournal`] and
    /// [`FileKind::Wal`] opens, `main_db` is the already-open main database file of the same
    /// connection, when it belongs to this shim (see the crate documentation for how it is
    /// found).
    ///
    /// Returning an error closes the base file and fails the open; nothing else happens.
    fn open(&self, req: &OpenRequest<'_>, base: BaseFile, main_db: Option<&Self::File>) -> VfsResult<Self::File>;

    /// Called for `xDelete` before the base deletes the file. Default: nothing to do.
    fn before_delete(&self, _path: &str) -> VfsResult<()> {
        Ok(())
    }

    /// The name under which the base VFS stores the file SQLite calls `path`: `Ok(None)` keeps
    /// SQLite's name. Asked for every named `xOpen` (`kind` is `Some`), `xDelete` and `xAccess`
    /// (`kind` is `None`: SQLite names no file type there), so one rule must map all three the
    /// same way. An error fails the call (`SQLITE_CANTOPEN`, `SQLITE_IOERR_DELETE`,
    /// `SQLITE_IOERR_ACCESS`) without touching the file system.
    ///
    /// A shim uses this to keep files out of reach of software that derives SQLite's names,
    /// e.g. so that a plain SQLite never finds (and "recovers") a journal or WAL it cannot read.
    /// The shim still sees SQLite's own name in [`OpenRequest::path`]. Default: SQLite's name.
    fn physical_path(&self, _path: &str, _kind: Option<FileKind>) -> VfsResult<Option<String>> {
        Ok(None)
    }
}

/// One open file of a shim. Every method runs inside `catch_unwind`; a panic becomes
/// `SQLITE_IOERR` (or `SQLITE_CANTOPEN` during open), never an abort.
pub trait ShimFile: Send + 'static {
    /// The base file, for shim I/O and for the binding's forwarding defaults.
    fn base(&mut self) -> &mut BaseFile;

    /// Fill `buf` from logical offset `offset`. The binding zeroes `buf` before the call, so a
    /// short read only has to fill the bytes that exist.
    fn read(&mut self, buf: &mut [u8], offset: u64) -> VfsResult<ReadStatus>;

    /// Write `buf` at logical offset `offset`.
    fn write(&mut self, buf: &[u8], offset: u64) -> VfsResult<()>;

    /// Truncate to `size` logical bytes.
    fn truncate(&mut self, size: u64) -> VfsResult<()>;

    /// Logical size in bytes.
    fn file_size(&mut self) -> VfsResult<u64>;

    /// Flush to stable storage. Default: sync the base file.
    fn sync(&mut self, flags: SyncFlags) -> VfsResult<()> {
        self.base().sync(flags)
    }

    /// Sector size reported to SQLite. Default: the base file's.
    fn sector_size(&mut self) -> u32 {
        self.base().sector_size()
    }

    /// Device characteristics reported to SQLite. Default: the base file's.
    fn device_characteristics(&mut self) -> DeviceCharacteristics {
        self.base().device_characteristics()
    }

    /// Whether SQLite may memory-map this file (`xFetch`). Default `false`: a mapping bypasses
    /// `read`, so any shim that transforms contents must decline it.
    fn allow_mmap(&self) -> bool {
        false
    }

    /// Intercept a file control (other than `SQLITE_FCNTL_PRAGMA`, which goes to
    /// [`ShimFile::pragma`]). Default: forward to the base file.
    fn file_control(&mut self, _op: FileControl) -> FileControlOutcome {
        FileControlOutcome::Forward
    }

    /// Answer a `PRAGMA` that SQLite routed to this file through `SQLITE_FCNTL_PRAGMA`.
    ///
    /// SQLite sends *every* `PRAGMA` on the main database here first (built-in ones included),
    /// so anything unknown must return [`PragmaOutcome::NotFound`]; the binding then forwards it
    /// to the base file and SQLite runs its own pragma, or silently ignores an unknown one.
    /// `name` is ASCII-lower-cased by the binding (SQL pragma names are case-insensitive, SQLite
    /// passes them as written); `value` is the dequoted argument of `PRAGMA x = value` or
    /// `PRAGMA x(value)`. Pragmas whose name or value is not UTF-8 never reach the shim.
    /// Default: not ours.
    fn pragma(&mut self, _name: &str, _value: Option<&str>) -> PragmaOutcome {
        PragmaOutcome::NotFound
    }

    /// Called after the base file's lock level changed successfully (`xLock`/`xUnlock`).
    /// An error from a lock upgrade makes the binding release the new lock again and report
    /// the error to SQLite. Default: nothing.
    fn after_lock_change(&mut self, _level: LockLevel) -> VfsResult<()> {
        Ok(())
    }

    /// Called after a successful `xShmLock` on this file (any slot, lock or unlock), e.g. to
    /// drop what the shim knows about files another connection may write between two of this
    /// connection's transactions. Default: nothing.
    fn after_shm_lock(&mut self) {}

    /// Called once before the base file is closed. Default: nothing.
    fn close(&mut self) -> VfsResult<()> {
        Ok(())
    }
}

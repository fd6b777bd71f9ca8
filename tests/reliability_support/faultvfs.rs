//! An I/O fault injector registered *below* `tde`: at the k-th matching call (reads, writes or
//! syncs of one file kind) it returns an error (or a short read), once ("transient") or for
//! that call and every later matching call ("persistent"). Every write that reaches it is
//! scanned for a plaintext marker: nothing may ever fall back to plaintext, error paths
//! included.
//!
//! State is per thread (SQLite runs every VFS call on the thread of the statement), so tests
//! running in parallel do not see each other's faults.

use std::cell::RefCell;
use std::sync::OnceLock;

use sqlite_vfs::{
    BaseFile, ErrorCode, FileKind, OpenRequest, ReadStatus, RegisterOptions, Shim, ShimFile, SyncFlags, VfsError,
    VfsResult,
};

pub const FAULT_VFS: &str = "reliability-fault";

/// The injected failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `SQLITE_IOERR_READ` from `xRead`.
    IoErrRead,
    /// `xRead` returns only the first half of the requested bytes (`SQLITE_IOERR_SHORT_READ`,
    /// rest zero-filled) although the file is long enough.
    ShortRead,
    /// `SQLITE_IOERR_WRITE` from `xWrite` (nothing written).
    IoErrWrite,
    /// `SQLITE_FULL` from `xWrite` (nothing written).
    Full,
    /// `SQLITE_IOERR_FSYNC` from `xSync` (the data was written but is not known durable).
    IoErrFsync,
}

impl Fault {
    pub const ALL: [Fault; 5] = [Fault::IoErrRead, Fault::ShortRead, Fault::IoErrWrite, Fault::Full, Fault::IoErrFsync];
    fn class(self) -> Class {
        match self {
            Fault::IoErrRead | Fault::ShortRead => Class::Read,
            Fault::IoErrWrite | Fault::Full => Class::Write,
            Fault::IoErrFsync => Class::Sync,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Read,
    Write,
    Sync,
}

/// Which files a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    MainDb,
    Journal,
    Wal,
    /// Statement journals, temp databases, sorter spills, transient tables.
    Temp,
}

impl Target {
    pub const ALL: [Target; 4] = [Target::MainDb, Target::Journal, Target::Wal, Target::Temp];
    fn of(kind: FileKind) -> Option<Target> {
        Some(match kind {
            FileKind::MainDb => Target::MainDb,
            FileKind::MainJournal => Target::Journal,
            FileKind::Wal => Target::Wal,
            FileKind::SubJournal | FileKind::TempDb | FileKind::TempJournal | FileKind::TransientDb => Target::Temp,
            FileKind::SuperJournal => return None,
        })
    }
}

/// One armed fault.
#[derive(Debug, Clone, Copy)]
pub struct Arm {
    pub target: Target,
    pub fault: Fault,
    /// 1-based index of the first failing matching call.
    pub k: u64,
    pub persistent: bool,
}

#[derive(Debug, Default)]
pub struct ThreadState {
    pub arm: Option<Arm>,
    /// Matching calls seen since arming.
    pub calls: u64,
    /// Calls that failed by injection.
    pub injected: u64,
    /// Marker that must never appear in a write below `tde`.
    pub marker: Vec<u8>,
    pub plaintext_hits: Vec<String>,
    pub writes_scanned: u64,
    pub bytes_scanned: u64,
}

thread_local! {
    static STATE: RefCell<ThreadState> = RefCell::new(ThreadState::default());
}

/// Run `f` with this thread's fault state.
pub fn with_state<R>(f: impl FnOnce(&mut ThreadState) -> R) -> R {
    STATE.with(|s| f(&mut s.borrow_mut()))
}

pub fn arm(a: Arm) {
    with_state(|s| {
        s.arm = Some(a);
        s.calls = 0;
        s.injected = 0;
    });
}

/// Disarm; returns (matching calls seen, injected failures).
pub fn disarm() -> (u64, u64) {
    with_state(|s| {
        s.arm = None;
        (s.calls, s.injected)
    })
}

/// Should this call fail?
fn decide(kind: FileKind, class: Class) -> Option<Fault> {
    with_state(|s| {
        let a = s.arm?;
        if a.fault.class() != class || Target::of(kind) != Some(a.target) {
            return None;
        }
        s.calls += 1;
        if s.calls == a.k || (a.persistent && s.calls > a.k) {
            s.injected += 1;
            Some(a.fault)
        } else {
            None
        }
    })
}

struct FaultShim;

pub struct FaultFile {
    base: BaseFile,
    kind: FileKind,
    path: String,
}

impl Shim for FaultShim {
    type File = FaultFile;
    fn open(&self, req: &OpenRequest<'_>, base: BaseFile, _main: Option<&FaultFile>) -> VfsResult<FaultFile> {
        Ok(FaultFile { base, kind: req.kind, path: req.path.unwrap_or("(anonymous)").to_string() })
    }
}

impl ShimFile for FaultFile {
    fn base(&mut self) -> &mut BaseFile {
        &mut self.base
    }
    fn read(&mut self, buf: &mut [u8], offset: u64) -> VfsResult<ReadStatus> {
        match decide(self.kind, Class::Read) {
            Some(Fault::IoErrRead) => Err(VfsError::new(ErrorCode::Read, "injected IOERR_READ")),
            Some(Fault::ShortRead) => {
                self.base.read(buf, offset)?;
                let half = buf.len() / 2;
                buf[half..].fill(0);
                Ok(ReadStatus::Short)
            }
            _ => self.base.read(buf, offset),
        }
    }
    fn write(&mut self, buf: &[u8], offset: u64) -> VfsResult<()> {
        with_state(|s| {
            s.writes_scanned += 1;
            s.bytes_scanned += buf.len() as u64;
            if !s.marker.is_empty() && buf.windows(s.marker.len()).any(|w| w == s.marker.as_slice()) {
                s.plaintext_hits.push(format!("{} {} @{offset}", self.kind.as_str(), self.path));
            }
        });
        match decide(self.kind, Class::Write) {
            Some(Fault::Full) => Err(VfsError::new(ErrorCode::Full, "injected SQLITE_FULL")),
            Some(_) => Err(VfsError::new(ErrorCode::Write, "injected IOERR_WRITE")),
            None => self.base.write(buf, offset),
        }
    }
    fn truncate(&mut self, size: u64) -> VfsResult<()> {
        self.base.truncate(size)
    }
    fn file_size(&mut self) -> VfsResult<u64> {
        self.base.file_size()
    }
    fn sync(&mut self, flags: SyncFlags) -> VfsResult<()> {
        match decide(self.kind, Class::Sync) {
            Some(_) => {
                // fsync failed: the data reached the page cache but durability is unknown.
                Err(VfsError::new(ErrorCode::Fsync, "injected IOERR_FSYNC"))
            }
            None => self.base.sync(flags),
        }
    }
    fn allow_mmap(&self) -> bool {
        false
    }
}

/// Register the fault VFS once per process (over the default VFS).
pub fn ensure_registered() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        sqlite_vfs::register_static(FAULT_VFS, FaultShim, RegisterOptions::default()).unwrap();
    });
}

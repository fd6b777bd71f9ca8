//! A shim that changes nothing: every byte goes to the base VFS as SQLite wrote it.
//!
//! It is the reference example of the shim pattern (open the base, wrap it, forward I/O, link
//! journals and WALs to their database) and a test instrument: it counts opens per
//! [`FileKind`], checks that journal and WAL opens are linked to the right main database, counts
//! bytes, and can record every read, write and truncate ([`PassThroughConfig::record_io`]).
//!
//! It answers two pragmas through `SQLITE_FCNTL_PRAGMA`:
//! - `PRAGMA passthrough_stats` returns a one-line summary of [`Stats`];
//! - `PRAGMA passthrough_fail = 'message'` fails the statement with that message (it exists to
//!   exercise the error path of `SQLITE_FCNTL_PRAGMA`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::{
    BaseFile, FileKind, LockLevel, OpenRequest, PragmaOutcome, ReadStatus, Shim, ShimFile, SyncFlags, VfsResult,
};

/// Behaviour switches of [`PassThrough`].
#[derive(Debug, Clone, Copy, Default)]
pub struct PassThroughConfig {
    /// Let SQLite memory-map files (`xFetch`). Off by default, like every shim: the point of the
    /// pass-through is to see the I/O a transforming shim would see.
    pub allow_mmap: bool,
    /// Append every read, write and truncate to [`Stats::io`].
    pub record_io: bool,
}

/// What an [`IoRecord`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IoOp {
    /// `xRead` of `len` bytes at `offset`.
    Read,
    /// `xWrite` of `len` bytes at `offset`.
    Write,
    /// `xTruncate` to `offset` bytes (`len` is 0).
    Truncate,
}

/// One recorded I/O call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoRecord {
    /// The kind of file it went to.
    pub kind: FileKind,
    /// Which file: `None` for anonymous files, else its path.
    pub path: Option<String>,
    /// The operation.
    pub op: IoOp,
    /// Offset (for truncate: the new size).
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Counters shared by every file of one [`PassThrough`].
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Successful opens per file kind.
    pub opens: BTreeMap<&'static str, u64>,
    /// Main-journal and WAL opens whose main database was found and has the matching path.
    pub linked_opens: u64,
    /// Main-journal and WAL opens with a name whose main database was not found.
    pub unlinked_opens: u64,
    /// Main-journal and WAL opens linked to a database whose path does not match the journal's
    /// name (`<db>-journal` / `<db>-wal`): a linking bug.
    pub mismatched_links: u64,
    /// Files closed.
    pub closes: u64,
    /// `xDelete` calls.
    pub deletes: u64,
    /// Read calls.
    pub reads: u64,
    /// Bytes read (requested, including zero-filled short-read tails).
    pub bytes_read: u64,
    /// Write calls.
    pub writes: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Lock level changes reported through `after_lock_change`.
    pub lock_changes: u64,
    /// Every I/O call, when [`PassThroughConfig::record_io`] is set.
    pub io: Vec<IoRecord>,
}

impl Stats {
    /// Successful opens of files of `kind`.
    pub fn opens_of(&self, kind: FileKind) -> u64 {
        self.opens.get(kind.as_str()).copied().unwrap_or(0)
    }

    /// One line, `key=value` pairs, as returned by `PRAGMA passthrough_stats`.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        for (kind, n) in &self.opens {
            let _ = write!(s, "open.{kind}={n} ");
        }
        let _ = write!(
            s,
            "linked={} unlinked={} mismatched={} closes={} deletes={} reads={} bytes_read={} \
             writes={} bytes_written={} lock_changes={}",
            self.linked_opens,
            self.unlinked_opens,
            self.mismatched_links,
            self.closes,
            self.deletes,
            self.reads,
            self.bytes_read,
            self.writes,
            self.bytes_written,
            self.lock_changes
        );
        s
    }
}

/// The pass-through shim. Cloning shares the statistics.
#[derive(Debug, Clone, Default)]
pub struct PassThrough {
    config: PassThroughConfig,
    stats: Arc<Mutex<Stats>>,
}

impl PassThrough {
    /// A pass-through shim with the given configuration and fresh statistics.
    pub fn new(config: PassThroughConfig) -> PassThrough {
        PassThrough { config, stats: Arc::default() }
    }

    /// The shared statistics (keep a clone before registering the shim).
    pub fn stats(&self) -> Arc<Mutex<Stats>> {
        Arc::clone(&self.stats)
    }
}

/// Lock the statistics, ignoring poisoning: counters stay meaningful after a panicking test.
fn lock(stats: &Mutex<Stats>) -> MutexGuard<'_, Stats> {
    stats.lock().unwrap_or_else(|e| e.into_inner())
}

/// One file opened through [`PassThrough`].
#[derive(Debug)]
pub struct PassThroughFile {
    base: BaseFile,
    kind: FileKind,
    path: Option<String>,
    config: PassThroughConfig,
    stats: Arc<Mutex<Stats>>,
}

impl PassThroughFile {
    /// What kind of file this is.
    pub fn kind(&self) -> FileKind {
        self.kind
    }

    /// Its path, `None` for anonymous files.
    pub fn path(&self) -> Option<&str> {
        self.path.as_deref()
    }

    fn record(&self, op: IoOp, offset: u64, len: u64) {
        let mut s = lock(&self.stats);
        match op {
            IoOp::Read => {
                s.reads += 1;
                s.bytes_read += len;
            }
            IoOp::Write => {
                s.writes += 1;
                s.bytes_written += len;
            }
            IoOp::Truncate => {}
        }
        if self.config.record_io {
            s.io.push(IoRecord { kind: self.kind, path: self.path.clone(), op, offset, len });
        }
    }
}

impl Shim for PassThrough {
    type File = PassThroughFile;

    fn open(
        &self,
        req: &OpenRequest<'_>,
        base: BaseFile,
        main_db: Option<&PassThroughFile>,
    ) -> VfsResult<PassThroughFile> {
        let path = req.path.map(str::to_owned);
        {
            let mut s = lock(&self.stats);
            *s.opens.entry(req.kind.as_str()).or_default() += 1;
            if req.kind.is_linked_to_main_db() && path.is_some() {
                match main_db {
                    None => s.unlinked_opens += 1,
                    Some(db) => {
                        // SQLite names them "<db>-journal" and "<db>-wal" (without 8.3 names).
                        let suffix = if req.kind == FileKind::Wal { "-wal" } else { "-journal" };
                        let expected = db.path.as_ref().map(|p| format!("{p}{suffix}"));
                        if db.kind == FileKind::MainDb && expected == path {
                            s.linked_opens += 1;
                        } else {
                            s.mismatched_links += 1;
                        }
                    }
                }
            }
        }
        Ok(PassThroughFile { base, kind: req.kind, path, config: self.config, stats: Arc::clone(&self.stats) })
    }

    fn before_delete(&self, _path: &str) -> VfsResult<()> {
        lock(&self.stats).deletes += 1;
        Ok(())
    }
}

impl ShimFile for PassThroughFile {
    fn base(&mut self) -> &mut BaseFile {
        &mut self.base
    }

    fn read(&mut self, buf: &mut [u8], offset: u64) -> VfsResult<ReadStatus> {
        self.record(IoOp::Read, offset, buf.len() as u64);
        // The base zero-fills a short read, which is exactly the contract of `read`.
        self.base.read(buf, offset)
    }

    fn write(&mut self, buf: &[u8], offset: u64) -> VfsResult<()> {
        self.record(IoOp::Write, offset, buf.len() as u64);
        self.base.write(buf, offset)
    }

    fn truncate(&mut self, size: u64) -> VfsResult<()> {
        self.record(IoOp::Truncate, size, 0);
        self.base.truncate(size)
    }

    fn file_size(&mut self) -> VfsResult<u64> {
        self.base.file_size()
    }

    fn sync(&mut self, flags: SyncFlags) -> VfsResult<()> {
        self.base.sync(flags)
    }

    fn allow_mmap(&self) -> bool {
        self.config.allow_mmap
    }

    fn pragma(&mut self, name: &str, value: Option<&str>) -> PragmaOutcome {
        match name {
            "passthrough_stats" => PragmaOutcome::Handled(Some(lock(&self.stats).summary())),
            "passthrough_fail" => PragmaOutcome::Failed(value.unwrap_or("passthrough_fail").to_owned()),
            _ => PragmaOutcome::NotFound,
        }
    }

    fn after_lock_change(&mut self, _level: LockLevel) -> VfsResult<()> {
        lock(&self.stats).lock_changes += 1;
        Ok(())
    }

    fn close(&mut self) -> VfsResult<()> {
        lock(&self.stats).closes += 1;
        Ok(())
    }
}

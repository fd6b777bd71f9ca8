//! A power-loss simulator registered *below* `tde`, after SQLite's own `src/test6.c`.
//!
//! Files under a [`Session`]'s directory are simulated; every other file (anonymous temp files,
//! files of other tests) passes straight through.
//!
//! Model (per session, i.e. per simulated machine):
//! - The real file on disk is the *durable* state. Every `xWrite` / `xTruncate` of `tde` is kept
//!   in one global ordered write list ("pending") and applied to an in-memory view of the file,
//!   which is what reads and `xFileSize` see (the OS page cache).
//! - `xSync(F)` that is not the crash point writes F's pending entries to the real file, in
//!   order (they are now durable), and leaves other files' entries pending (test6.c "normal
//!   mode", no `SEQUENTIAL`).
//! - `xClose` does NOT flush (test6.c flushes on close; a real OS does not, so this is the more
//!   adversarial choice). A file reopened later sees its pending entries through the shared
//!   per-path view.
//! - `xDelete` is immediate and durable, as in test6.c (`cfDelete` calls the real delete at
//!   once), and discards the pending entries of the deleted file. SQLite itself only asks for a
//!   durable delete (directory sync) with `synchronous=EXTRA`; with `FULL` in `journal_mode=DELETE`
//!   a real file system could resurrect a deleted journal and roll back the last commit, which
//!   is SQLite's documented contract, not ours to test. Modelling delete as durable is what
//!   lets us assert "no committed transaction lost" with `FULL` in DELETE mode.
//! - At the crash point (the N-th `xSync` or the N-th `xWrite` of the session, counted over all
//!   its files) each pending entry of every file independently gets one fate, exactly with
//!   test6.c's probabilities: written correctly (3/8), dropped (3/8), or - for writes only - every
//!   sector it touches overwritten with random bytes (1/4, "torn"; this also destroys bytes of
//!   that sector that were durable before, which is why `tde` drops POWERSAFE_OVERWRITE).
//!   Entries are materialised in list order, so later writes may survive while earlier ones
//!   are lost (out of order).
//! - After the crash the simulated machine is dead: every call of every file of the session
//!   fails (`SQLITE_IOERR`), deletes are refused, so SQLite's attempts to clean up on close
//!   change nothing. The caller closes the connection (releasing POSIX locks), then calls
//!   [`Session::materialize`], which applies the decided fates to the real files.
//! - `xSectorSize` reports the simulated sector size; `xDeviceCharacteristics` reports 0
//!   (no POWERSAFE_OVERWRITE, no atomic writes, no SAFE_APPEND, no SEQUENTIAL), or only
//!   POWERSAFE_OVERWRITE for a *powersafe* session ([`Session::start_powersafe`]), whose torn
//!   writes garble exactly the bytes written and nothing around them (what ext4 or XFS on a
//!   disk with powersafe sectors promise, and what the unix VFS reports by default).
//!
//! The shared-memory wal-index (`-shm`) is forwarded untouched, as in test6.c; after the crash
//! the first connection to reopen the database resets it and recovers from the WAL.

use std::collections::HashMap;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use sqlite_vfs::{
    BaseFile, DeviceCharacteristics, ErrorCode, FileControl, FileControlOutcome, OpenRequest, ReadStatus,
    RegisterOptions, Shim, ShimFile, SyncFlags, VfsError, VfsResult,
};

pub const CRASH_VFS: &str = "reliability-crash";

/// Where the simulated machine loses power.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// Never (dry run: counts syncs and writes).
    Never,
    /// At the n-th `xSync` (1-based) of any file of the session, instead of syncing.
    Sync(u64),
    /// Right after the n-th `xWrite` (1-based) was added to the write list.
    Write(u64),
}

/// What happened to the pending entries at the crash.
#[derive(Debug, Default, Clone, Copy)]
pub struct CrashStats {
    pub applied: u64,
    pub dropped: u64,
    pub torn: u64,
    /// Distinct files with at least one pending entry at the crash.
    pub files: u64,
}

#[derive(Debug, Clone)]
enum Op {
    Write { off: u64, data: Vec<u8> },
    Truncate(u64),
}

#[derive(Debug, Clone)]
struct Entry {
    path: String,
    op: Op,
}

/// A fate decided at the crash, applied by `materialize`.
#[derive(Debug)]
enum Fate {
    Apply(Entry),
    /// Random bytes from `off` on (whole sectors, or exactly the write when powersafe).
    Trash {
        path: String,
        off: u64,
        bytes: Vec<u8>,
    },
}

#[derive(Default)]
struct State {
    /// Current contents (durable + pending) of every simulated file by path.
    views: HashMap<String, Vec<u8>>,
    pending: Vec<Entry>,
    syncs: u64,
    writes: u64,
    dead: bool,
    /// Materialised: the machine has rebooted; I/O passes through, but the device keeps
    /// reporting the simulated sector size (recovery reads journal headers padded to it).
    rebooted: bool,
    plan: Vec<Fate>,
    stats: CrashStats,
    rng: u64,
}

/// One simulated machine: every file under `dir`.
pub struct Session {
    /// Print every operation and every fate (env SQLITE_TDE_CRASH_TRACE=1).
    trace: bool,
    dir: String,
    sector: u64,
    powersafe: bool,
    crash: CrashPoint,
    state: Mutex<State>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("dir", &self.dir).field("crash", &self.crash).finish()
    }
}

static SESSIONS: Mutex<Vec<Weak<Session>>> = Mutex::new(Vec::new());

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn splitmix(s: &mut u64) -> u64 {
    *s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *s;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn dead_err() -> VfsError {
    VfsError::new(ErrorCode::Io, "simulated power loss: the machine is off")
}

impl Session {
    /// Start simulating every file under `dir` (which must be unique to this session).
    pub fn start(dir: &Path, sector: u64, crash: CrashPoint, seed: u64) -> Arc<Session> {
        Self::start_with(dir, sector, false, crash, seed)
    }

    /// A session on a powersafe device: torn writes damage only the bytes written.
    pub fn start_powersafe(dir: &Path, sector: u64, crash: CrashPoint, seed: u64) -> Arc<Session> {
        Self::start_with(dir, sector, true, crash, seed)
    }

    fn start_with(dir: &Path, sector: u64, powersafe: bool, crash: CrashPoint, seed: u64) -> Arc<Session> {
        ensure_registered();
        let dir = std::fs::canonicalize(dir).unwrap();
        let mut d = dir.to_str().unwrap().to_string();
        if !d.ends_with('/') {
            d.push('/');
        }
        let s = Arc::new(Session {
            trace: std::env::var_os("SQLITE_TDE_CRASH_TRACE").is_some(),
            dir: d,
            sector,
            powersafe,
            crash,
            state: Mutex::new(State { rng: seed ^ 0x5EED, ..Default::default() }),
        });
        let mut all = lock(&SESSIONS);
        all.retain(|w| w.strong_count() > 0);
        all.push(Arc::downgrade(&s));
        s
    }

    /// Has the simulated power loss happened?
    pub fn crashed(&self) -> bool {
        lock(&self.state).dead
    }

    /// (syncs, writes) seen so far.
    pub fn counts(&self) -> (u64, u64) {
        let s = lock(&self.state);
        (s.syncs, s.writes)
    }

    pub fn stats(&self) -> CrashStats {
        lock(&self.state).stats
    }

    /// "Reboot": if the machine crashed, write the decided fates to the real files; from now on
    /// the session's files pass straight through (while the `Session` lives, they keep
    /// reporting the simulated sector size and no device characteristics, as the same device
    /// would). Call only after every connection on the session's files is closed.
    pub fn materialize(self: &Arc<Self>) {
        let plan = {
            let mut st = lock(&self.state);
            st.rebooted = true;
            st.dead = false;
            st.pending.clear();
            st.views.clear();
            std::mem::take(&mut st.plan)
        };
        for fate in plan {
            match fate {
                Fate::Apply(Entry { path, op }) => {
                    let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                    match op {
                        Op::Write { off, data } => {
                            f.seek(SeekFrom::Start(off)).unwrap();
                            f.write_all(&data).unwrap();
                        }
                        Op::Truncate(n) => f.set_len(n).unwrap(),
                    }
                }
                Fate::Trash { path, off, bytes } => {
                    let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                    f.seek(SeekFrom::Start(off)).unwrap();
                    f.write_all(&bytes).unwrap();
                }
            }
        }
    }

    fn crash(&self, st: &mut State) {
        let pending = std::mem::take(&mut st.pending);
        let mut files = std::collections::HashSet::new();
        for e in pending {
            files.insert(e.path.clone());
            let mut r = splitmix(&mut st.rng) as u8;
            if matches!(e.op, Op::Truncate(_)) {
                r &= 1; // a truncate is applied or lost, never torn (test6.c)
            }
            if self.trace {
                let fate = if r & 6 == 6 {
                    "TORN"
                } else if r & 1 == 1 {
                    "dropped"
                } else {
                    "applied"
                };
                let what = match &e.op {
                    Op::Write { off, data } => format!("write {}@{off}", data.len()),
                    Op::Truncate(n) => format!("truncate {n}"),
                };
                eprintln!("  crash: {fate:8} {what} {}", e.path.rsplit('/').next().unwrap());
            }
            if r & 6 == 6 {
                let Op::Write { off, data } = &e.op else { unreachable!() };
                let (start, n) = if self.powersafe {
                    (*off, data.len())
                } else {
                    let first = off / self.sector;
                    let last = (off + data.len() as u64 - 1) / self.sector;
                    (first * self.sector, ((last - first + 1) * self.sector) as usize)
                };
                let mut bytes = vec![0u8; n];
                for chunk in bytes.chunks_mut(8) {
                    let v = splitmix(&mut st.rng).to_le_bytes();
                    chunk.copy_from_slice(&v[..chunk.len()]);
                }
                st.stats.torn += 1;
                st.plan.push(Fate::Trash { path: e.path, off: start, bytes });
            } else if r & 1 == 1 {
                st.stats.dropped += 1;
            } else {
                st.stats.applied += 1;
                st.plan.push(Fate::Apply(e));
            }
        }
        st.stats.files = files.len() as u64;
        st.dead = true;
    }
}

fn session_for(path: &str) -> Option<Arc<Session>> {
    let all = lock(&SESSIONS);
    all.iter().filter_map(Weak::upgrade).find(|s| path.starts_with(&s.dir))
}

struct CrashShim;

pub struct CrashFile {
    base: BaseFile,
    sim: Option<(Arc<Session>, String)>,
    /// Sector size and powersafety of a rebooted session's files.
    sector: Option<(u32, bool)>,
}

impl Shim for CrashShim {
    type File = CrashFile;
    fn open(&self, req: &OpenRequest<'_>, mut base: BaseFile, _main: Option<&CrashFile>) -> VfsResult<CrashFile> {
        let Some(path) = req.path else { return Ok(CrashFile { base, sim: None, sector: None }) };
        let Some(sess) = session_for(path) else { return Ok(CrashFile { base, sim: None, sector: None }) };
        let mut st = lock(&sess.state);
        if st.rebooted {
            return Ok(CrashFile { base, sim: None, sector: Some((sess.sector as u32, sess.powersafe)) });
        }
        if st.dead {
            return Err(VfsError::new(ErrorCode::CantOpen, "simulated power loss: the machine is off"));
        }
        if !st.views.contains_key(path) {
            let n = base.file_size()? as usize;
            let mut data = vec![0u8; n];
            if n > 0 {
                base.read(&mut data, 0)?;
            }
            st.views.insert(path.to_string(), data);
        }
        drop(st);
        Ok(CrashFile { base, sim: Some((sess, path.to_string())), sector: None })
    }

    fn before_delete(&self, path: &str) -> VfsResult<()> {
        if let Some(sess) = session_for(path) {
            let mut st = lock(&sess.state);
            if st.rebooted {
                return Ok(());
            }
            if st.dead {
                return Err(VfsError::new(ErrorCode::Delete, "simulated power loss: the machine is off"));
            }
            st.views.remove(path);
            st.pending.retain(|e| e.path != path);
            if sess.trace {
                eprintln!("delete {}", path.rsplit('/').next().unwrap());
            }
        }
        Ok(())
    }
}

impl ShimFile for CrashFile {
    fn base(&mut self) -> &mut BaseFile {
        &mut self.base
    }

    fn read(&mut self, buf: &mut [u8], offset: u64) -> VfsResult<ReadStatus> {
        let Some((sess, path)) = &self.sim else { return self.base.read(buf, offset) };
        let st = lock(&sess.state);
        if st.dead {
            return Err(dead_err());
        }
        let empty = Vec::new();
        let v = st.views.get(path).unwrap_or(&empty);
        let off = offset as usize;
        let n = v.len().saturating_sub(off).min(buf.len());
        if n > 0 {
            buf[..n].copy_from_slice(&v[off..off + n]);
        }
        buf[n..].fill(0);
        Ok(if n == buf.len() { ReadStatus::Full } else { ReadStatus::Short })
    }

    fn write(&mut self, buf: &[u8], offset: u64) -> VfsResult<()> {
        let Some((sess, path)) = &self.sim else { return self.base.write(buf, offset) };
        let mut st = lock(&sess.state);
        if st.dead {
            return Err(dead_err());
        }
        let v = st.views.entry(path.clone()).or_default();
        let end = offset as usize + buf.len();
        if v.len() < end {
            v.resize(end, 0);
        }
        v[offset as usize..end].copy_from_slice(buf);
        st.pending.push(Entry { path: path.clone(), op: Op::Write { off: offset, data: buf.to_vec() } });
        st.writes += 1;
        if sess.trace {
            eprintln!("write#{} {}@{offset} {}", st.writes, buf.len(), path.rsplit('/').next().unwrap());
        }
        if sess.crash == CrashPoint::Write(st.writes) {
            sess.crash(&mut st);
            return Err(VfsError::new(ErrorCode::Write, "simulated power loss during write"));
        }
        Ok(())
    }

    fn truncate(&mut self, size: u64) -> VfsResult<()> {
        let Some((sess, path)) = &self.sim else { return self.base.truncate(size) };
        let mut st = lock(&sess.state);
        if st.dead {
            return Err(dead_err());
        }
        st.views.entry(path.clone()).or_default().resize(size as usize, 0);
        st.pending.push(Entry { path: path.clone(), op: Op::Truncate(size) });
        if sess.trace {
            eprintln!("truncate {size} {}", path.rsplit('/').next().unwrap());
        }
        Ok(())
    }

    fn file_size(&mut self) -> VfsResult<u64> {
        let Some((sess, path)) = &self.sim else { return self.base.file_size() };
        let st = lock(&sess.state);
        if st.dead {
            return Err(dead_err());
        }
        Ok(st.views.get(path).map_or(0, |v| v.len() as u64))
    }

    fn sync(&mut self, flags: SyncFlags) -> VfsResult<()> {
        let Some((sess, path)) = &self.sim else { return self.base.sync(flags) };
        let sess = sess.clone();
        let path = path.clone();
        let mut st = lock(&sess.state);
        if st.dead {
            return Err(dead_err());
        }
        st.syncs += 1;
        if sess.trace {
            eprintln!("sync#{} {}", st.syncs, path.rsplit('/').next().unwrap());
        }
        if sess.crash == CrashPoint::Sync(st.syncs) {
            sess.crash(&mut st);
            return Err(VfsError::new(ErrorCode::Fsync, "simulated power loss during sync"));
        }
        // Write this file's pending entries to the real file: they are durable now. (No real
        // fsync: the real machine does not crash; the file's contents are the durable state.)
        let mine: Vec<Entry> = st.pending.iter().filter(|e| e.path == path).cloned().collect();
        st.pending.retain(|e| e.path != path);
        drop(st);
        for e in mine {
            match e.op {
                Op::Write { off, data } => self.base.write(&data, off)?,
                Op::Truncate(n) => self.base.truncate(n)?,
            }
        }
        Ok(())
    }

    fn sector_size(&mut self) -> u32 {
        match (&self.sim, self.sector) {
            (Some((s, _)), _) => s.sector as u32,
            (None, Some((n, _))) => n,
            (None, None) => self.base.sector_size(),
        }
    }

    fn device_characteristics(&mut self) -> DeviceCharacteristics {
        let powersafe = match (&self.sim, self.sector) {
            (Some((s, _)), _) => s.powersafe,
            (None, Some((_, p))) => p,
            (None, None) => return self.base.device_characteristics(),
        };
        DeviceCharacteristics(if powersafe { DeviceCharacteristics::POWERSAFE_OVERWRITE } else { 0 })
    }

    fn file_control(&mut self, op: FileControl) -> FileControlOutcome {
        match op {
            // Would change the real file's size behind the simulation.
            FileControl::SizeHint(_) | FileControl::ChunkSize(_) if self.sim.is_some() => FileControlOutcome::NotFound,
            _ => FileControlOutcome::Forward,
        }
    }

    fn allow_mmap(&self) -> bool {
        false
    }
}

/// Register the crash VFS once per process (over the default VFS).
pub fn ensure_registered() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        sqlite_vfs::register_static(CRASH_VFS, CrashShim, RegisterOptions::default()).unwrap();
    });
}

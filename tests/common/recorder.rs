//! A recording VFS registered *below* the encrypting VFS: it sees every byte `tde` writes to
//! disk (including anonymous temp files that are unlinked at open and cannot be found by a
//! directory scan) and checks each write for plaintext markers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use sqlite_vfs::{BaseFile, FileKind, OpenRequest, ReadStatus, RegisterOptions, Shim, ShimFile, VfsResult};

pub const RECORDER_VFS: &str = "leak-recorder";
/// Every marker used by leak tests contains this.
pub const MARKER_CORE: &[u8] = b"XYZZY";

pub static BYTES_SCANNED: AtomicU64 = AtomicU64::new(0);
pub static WRITES_SCANNED: AtomicU64 = AtomicU64::new(0);
pub static HITS: Mutex<Vec<String>> = Mutex::new(Vec::new());
pub static KINDS: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());

struct Recorder;
pub struct RecFile {
    base: BaseFile,
    kind: FileKind,
    path: String,
}

impl Shim for Recorder {
    type File = RecFile;
    fn open(&self, req: &OpenRequest<'_>, base: BaseFile, _main: Option<&RecFile>) -> VfsResult<RecFile> {
        let mut k = KINDS.lock().unwrap();
        if !k.contains(&req.kind.as_str()) {
            k.push(req.kind.as_str());
        }
        Ok(RecFile { base, kind: req.kind, path: req.path.unwrap_or("(anonymous)").to_string() })
    }
}

impl ShimFile for RecFile {
    fn base(&mut self) -> &mut BaseFile {
        &mut self.base
    }
    fn read(&mut self, buf: &mut [u8], offset: u64) -> VfsResult<ReadStatus> {
        self.base.read(buf, offset)
    }
    fn write(&mut self, buf: &[u8], offset: u64) -> VfsResult<()> {
        BYTES_SCANNED.fetch_add(buf.len() as u64, Ordering::Relaxed);
        WRITES_SCANNED.fetch_add(1, Ordering::Relaxed);
        if buf.windows(MARKER_CORE.len()).any(|w| w == MARKER_CORE) {
            HITS.lock().unwrap().push(format!("{} {} @{offset}", self.kind.as_str(), self.path));
        }
        self.base.write(buf, offset)
    }
    fn truncate(&mut self, size: u64) -> VfsResult<()> {
        self.base.truncate(size)
    }
    fn file_size(&mut self) -> VfsResult<u64> {
        self.base.file_size()
    }
    fn allow_mmap(&self) -> bool {
        false
    }
}

/// Register the recorder once per process.
pub fn ensure_registered() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        sqlite_vfs::register_static(RECORDER_VFS, Recorder, RegisterOptions::default()).unwrap();
    });
}

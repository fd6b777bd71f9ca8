//! The two files a rekey or an in-place encryption works on, in production: the database
//! through SQLite's own handle (never a descriptor of our own: closing one would drop the
//! connection's POSIX locks), and its side file (journal or state file) in the file system.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sqlite_vfs::{BaseFile, ErrorCode, ReadStatus, SyncFlags, VfsError};

use super::{engine, reserve, REKEY_JOURNAL_SUFFIX};
use crate::error::{Error, Result};

/// The main database through SQLite's own handle.
pub(crate) struct BaseDb<'a>(pub &'a mut BaseFile);

/// Largest single read or write passed to the base VFS: the unix VFS masks the length of
/// one `pread`/`pwrite` with 0x1ffff (SQLite itself never moves more than a 64 KiB page at
/// once), so larger transfers are split.
const BASE_IO_MAX: usize = 64 << 10;

impl engine::RawDb for BaseDb<'_> {
    fn read_exact_at(&mut self, buf: &mut [u8], off: u64) -> Result<()> {
        let mut at = off;
        for piece in buf.chunks_mut(BASE_IO_MAX) {
            if self.0.read(piece, at)? == ReadStatus::Short {
                return Err(Error::Vfs(VfsError::new(ErrorCode::Corrupt, "database file shorter than expected")));
            }
            at += piece.len() as u64;
        }
        Ok(())
    }
    fn write_at(&mut self, buf: &[u8], off: u64) -> Result<()> {
        let mut at = off;
        for piece in buf.chunks(BASE_IO_MAX) {
            self.0.write(piece, at)?;
            at += piece.len() as u64;
        }
        Ok(())
    }
    fn sync(&mut self) -> Result<()> {
        Ok(self.0.sync(SyncFlags::FULL)?)
    }
    fn len(&mut self) -> Result<u64> {
        Ok(self.0.file_size()?)
    }
    fn set_len(&mut self, len: u64) -> Result<()> {
        Ok(self.0.truncate(len)?)
    }
}

/// A side file (journal) in the file system. Not a database file: SQLite never locks it, so
/// opening and closing descriptors on it cannot drop any lock.
pub(crate) struct FsSide {
    path: PathBuf,
    file: Option<File>,
    created: bool,
}

impl FsSide {
    pub(crate) fn new(path: PathBuf) -> FsSide {
        FsSide { path, file: None, created: false }
    }

    fn ctx(&self, e: std::io::Error) -> Error {
        Error::Io(std::io::Error::new(e.kind(), format!("{}: {e}", self.path.display())))
    }

    fn dir(&self) -> &Path {
        self.path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
    }

    fn open(&mut self) -> Result<&File> {
        if self.file.is_none() {
            let existed = self.path.exists();
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&self.path)
                .map_err(|e| self.ctx(e))?;
            self.created |= !existed;
            self.file = Some(f);
        }
        Ok(self.file.as_ref().unwrap())
    }

    fn what(&self) -> &'static str {
        if self.path.to_string_lossy().ends_with(REKEY_JOURNAL_SUFFIX) {
            "rekey journal"
        } else {
            "in-place encryption state file"
        }
    }
}

impl engine::SideFile for FsSide {
    fn load(&mut self) -> Result<Option<Vec<u8>>> {
        match std::fs::read(&self.path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.ctx(e)),
        }
    }
    fn write_at(&mut self, bytes: &[u8], off: u64) -> Result<()> {
        let f = self.open()?;
        f.write_all_at(bytes, off).map_err(|e| self.ctx(e))
    }
    fn reserve(&mut self, len: u64) -> Result<()> {
        let r = self.open().and_then(|f| reserve::reserve(f, len).map_err(Error::Io));
        match r {
            Ok(()) => self.sync(),
            Err(Error::Io(e)) if reserve::is_no_space(&e) => {
                Err(Error::NoSpace { path: self.path.display().to_string(), what: self.what(), needed: len, source: e })
            }
            Err(Error::Io(e)) => Err(self.ctx(e)),
            Err(e) => Err(e),
        }
    }
    fn release_after(&mut self, len: u64) -> Result<()> {
        if let Some(f) = &self.file {
            if f.metadata().map_err(|e| self.ctx(e))?.len() > len {
                f.set_len(len).map_err(|e| self.ctx(e))?;
                f.sync_all().map_err(|e| self.ctx(e))?;
            }
        }
        Ok(())
    }
    fn sync(&mut self) -> Result<()> {
        if let Some(f) = &self.file {
            f.sync_data().map_err(|e| self.ctx(e))?;
        }
        if self.created {
            crate::fsutil::sync_dir(self.dir()).map_err(|e| self.ctx(e))?;
            self.created = false;
        }
        Ok(())
    }
    fn remove(&mut self) -> Result<()> {
        self.file = None;
        match std::fs::remove_file(&self.path) {
            Ok(()) => crate::fsutil::sync_dir(self.dir()).map_err(|e| self.ctx(e)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.ctx(e)),
        }
    }
}

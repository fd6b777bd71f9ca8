//! Read-only access to the logical bytes of one encrypted file (FORMAT.md §2), through a
//! descriptor of its own: the reader's counterpart of `vfs::blockio`, without its write path.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::crypto::{Domain, XtsCipher};
use crate::format::logical_len;

const B: u64 = 16;

fn floor16(x: u64) -> u64 {
    x & !(B - 1)
}
fn ceil16(x: u64) -> u64 {
    (x + B - 1) & !(B - 1)
}

/// One encrypted file opened for reading. Lengths are taken once, at open: the reader works on
/// what the file held then.
pub struct EncryptedFile {
    path: PathBuf,
    file: File,
    cipher: Arc<XtsCipher>,
    domain: Domain,
    data_offset: u64,
    physical_len: u64,
}

impl std::fmt::Debug for EncryptedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptedFile")
            .field("path", &self.path)
            .field("domain", &self.domain)
            .field("physical_len", &self.physical_len)
            .finish_non_exhaustive()
    }
}

/// What one read found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadInfo {
    /// Logical bytes that exist in the file (the rest of the buffer is zero-filled).
    pub len: usize,
    /// 16-byte blocks that are entirely zero on disk (holes: read as zeros).
    pub holes: usize,
}

impl EncryptedFile {
    /// Open `path`, whose logical byte 0 is at physical `data_offset`, encrypted in `domain`.
    /// A missing file is `Ok(None)`.
    pub fn open(
        path: &Path,
        cipher: Arc<XtsCipher>,
        domain: Domain,
        data_offset: u64,
    ) -> io::Result<Option<EncryptedFile>> {
        // A side file that is a FIFO would block the open: refuse non-regular files.
        let file = match crate::fsutil::open_regular(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        };
        Self::from_file(path, file, cipher, domain, data_offset).map(Some)
    }

    /// Wrap an already opened file.
    pub fn from_file(
        path: &Path,
        file: File,
        cipher: Arc<XtsCipher>,
        domain: Domain,
        data_offset: u64,
    ) -> io::Result<EncryptedFile> {
        let physical_len = file.metadata()?.len();
        Ok(EncryptedFile { path: path.to_path_buf(), file, cipher, domain, data_offset, physical_len })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Physical size of the whole file (header region included) when it was opened.
    pub fn physical_len(&self) -> u64 {
        self.physical_len
    }

    /// Logical size: what SQLite sees through the VFS.
    pub fn logical_len(&self) -> u64 {
        logical_len(self.physical_len.saturating_sub(self.data_offset))
    }

    /// Problems of the length encoding itself: marker bytes that are not zero, or a physical
    /// length no logical length maps to (a torn extension). `None` when well formed.
    pub fn length_encoding_problem(&self) -> io::Result<Option<String>> {
        let p = self.physical_len.saturating_sub(self.data_offset);
        let m = p % B;
        if m == 0 {
            return Ok(None);
        }
        if p < B + m {
            return Ok(Some(format!("physical length {p} after the header cannot encode a logical length")));
        }
        let mut markers = vec![0u8; m as usize];
        self.file.read_exact_at(&mut markers, self.data_offset + p - m)?;
        if markers.iter().any(|&b| b != 0) {
            return Ok(Some(format!(
                "the {m} length-marker bytes at the end of the file are not zero (torn or damaged)"
            )));
        }
        Ok(None)
    }

    /// Read logical bytes at `offset` into `buf`; bytes beyond the logical end are zero-filled.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<ReadInfo> {
        buf.fill(0);
        let logical = self.logical_len();
        if buf.is_empty() || offset >= logical {
            return Ok(ReadInfo::default());
        }
        let end = (offset + buf.len() as u64).min(logical);
        let a = floor16(offset);
        let b = ceil16(end);
        let mut raw = vec![0u8; (b - a) as usize];
        let got = read_full_at(&self.file, &mut raw, self.data_offset + a)?;
        // A file shrunk since it was opened reads as zeros there, like a hole.
        raw[got..].fill(0);
        let mut holes = 0;
        let mut run_start: Option<usize> = None;
        let nblocks = raw.len() / 16;
        for i in 0..=nblocks {
            let hole = i < nblocks && raw[i * 16..i * 16 + 16].iter().all(|&x| x == 0);
            if i < nblocks && !hole {
                run_start.get_or_insert(i);
                continue;
            }
            if hole {
                holes += 1;
            }
            if let Some(s) = run_start.take() {
                self.cipher.decrypt(self.domain, a + (s as u64) * B, &mut raw[s * 16..i * 16]);
            }
        }
        let from = (offset - a) as usize;
        let len = (end - offset) as usize;
        buf[..len].copy_from_slice(&raw[from..from + len]);
        Ok(ReadInfo { len, holes })
    }
}

/// `pread` until `buf` is full or the file ends; returns the bytes read.
fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::DataKey;
    use crate::format::physical_len;

    /// Agrees with the VFS's own encoding: write through `blockio`, read back here.
    #[test]
    fn reads_what_blockio_wrote() {
        use crate::vfs::blockio::{EncryptedIo, MemFile};

        let key = DataKey::generate().unwrap();
        let cipher = Arc::new(XtsCipher::new(&key));
        let mut raw = MemFile(vec![0xAB; 100]);
        let mut scratch = Vec::new();
        let mut model = Vec::new();
        {
            let mut io = EncryptedIo {
                raw: &mut raw,
                cipher: &cipher,
                domain: Domain::Wal,
                data_offset: 100,
                scratch: &mut scratch,
                cache: None,
            };
            // Unaligned writes, a gap (hole) and a partial last block.
            for (off, len) in [(0u64, 37usize), (5000, 4120), (37, 11)] {
                let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(7).wrapping_add(off as u8)).collect();
                io.write(&data, off).unwrap();
                if model.len() < off as usize + len {
                    model.resize(off as usize + len, 0);
                }
                model[off as usize..off as usize + len].copy_from_slice(&data);
            }
        }
        assert_eq!(raw.0.len() as u64, 100 + physical_len(model.len() as u64));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, &raw.0).unwrap();
        let f = EncryptedFile::open(&p, cipher, Domain::Wal, 100).unwrap().unwrap();
        assert_eq!(f.logical_len(), model.len() as u64);
        assert_eq!(f.length_encoding_problem().unwrap(), None);
        let mut all = vec![0xEE; model.len() + 50];
        let info = f.read_at(&mut all, 0).unwrap();
        assert_eq!(info.len, model.len());
        assert!(info.holes > 0, "the gap is a hole");
        assert_eq!(&all[..model.len()], &model[..]);
        assert!(all[model.len()..].iter().all(|&b| b == 0));
        for (off, len) in [(1u64, 15usize), (4090, 20), (9000, 100), (36, 2)] {
            let mut b = vec![0u8; len];
            f.read_at(&mut b, off).unwrap();
            let want: Vec<u8> = (0..len).map(|i| model.get(off as usize + i).copied().unwrap_or(0)).collect();
            assert_eq!(b, want, "at {off}+{len}");
        }
    }
}

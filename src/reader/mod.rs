//! Reading an encrypted database without SQLite and without registering the VFS: for backup
//! and operations tools that must turn an encrypted database into a plain SQLite image.
//!
//! [`Reader::open`] verifies the header region (newest valid slot), unwraps the data key
//! through the KMS (a KMS `Decrypt` call, audited like any other) and checks its key-check
//! value, then decodes the files as SQLite would find them at its next open:
//!
//! - a hot `<db>-journal` (an interrupted transaction) is rolled back: the original pages it
//!   holds replace the database's, and the database is cut to its size before the
//!   transaction ([`journal`]);
//! - the committed frames of `<db>-wal` are applied: only frames whose salts match and whose
//!   cumulative checksums verify, up to the last commit frame; the last committed frame of a
//!   page wins, and the database size is the last commit's ([`wal`]).
//!
//! Pages come out one at a time ([`Reader::read_page`], [`Reader::pages`]) or as a byte
//! stream ([`Reader::image`], which implements [`std::io::Read`]): a plain SQLite database
//! file with the same pages SQLite would read through the VFS.
//!
//! # Consistency and locks
//!
//! The reader takes no SQLite locks and opens descriptors of its own. Use it on a database
//! that no process is writing (a stopped application, a copied or restored file, a backup), or
//! accept that a concurrent writer can make it fail (a WAL restarted under the reader is
//! detected and reported; a checkpoint or a rollback-mode transaction writing the database
//! file meanwhile is not). For an online, consistent copy of a database in use, use SQLite's
//! backup API through the VFS (`sqlite-tde backup`).
//!
//! **Never use the reader inside a process that has the same database open through SQLite.**
//! POSIX advisory locks belong to the process, and closing *any* descriptor of a file drops
//! all of the process's locks on it: closing the reader would silently release the locks
//! SQLite holds, and another process could then corrupt the database.

mod encfile;
pub mod journal;
pub mod verify;
pub mod wal;

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use encfile::{EncryptedFile, ReadInfo};
use journal::{JournalIndex, JournalScan};
use wal::{WalIndex, WalScan};

use crate::crypto::{verified_cipher, Domain, XtsCipher};
use crate::error::{Error, Result};
use crate::format::{choose_slot, legacy_side_path, side_path, Header, HeaderError, SideFile, HEADER_REGION_LEN};
use crate::kms::{EncryptionContext, Kms};

/// SQLite's file magic, the first 16 bytes of page 1.
pub const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// What to apply on top of the database file.
#[derive(Debug, Clone, Copy)]
pub struct ReaderOptions {
    /// Apply the committed frames of the WAL, `<db>-tdewal` (default: yes).
    pub apply_wal: bool,
    /// Roll back a hot rollback journal, `<db>-tdejournal` (default: yes).
    pub apply_journal: bool,
}

impl Default for ReaderOptions {
    fn default() -> Self {
        ReaderOptions { apply_wal: true, apply_journal: true }
    }
}

/// Where the current version of a page comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PageSource {
    /// The database file.
    Database,
    /// A committed WAL frame.
    Wal,
    /// The original page in a hot journal (rolled back).
    Journal,
}

/// A structural finding made while assembling the view of a database: [`Reader::open`] fails
/// on the first one, `verify` reports them all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// Page 1 does not start with SQLite's magic.
    PageOneMismatch,
    /// Page 1 holds an impossible page size.
    BadPageSize(u32),
    /// The WAL's page size differs from the database's.
    WalPageSize { wal: u32, db: u32 },
    /// The database header counts more pages than exist.
    Truncated { header_pages: u32, available: u32 },
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finding::PageOneMismatch => f.write_str(
                "page 1 does not decrypt to the SQLite header: the encryption header belongs to another \
                 database, or page 1 is damaged",
            ),
            Finding::BadPageSize(n) => write!(f, "page 1 records an invalid page size {n}"),
            Finding::WalPageSize { wal, db } => write!(f, "the WAL's page size {wal} differs from the database's {db}"),
            Finding::Truncated { header_pages, available } => write!(
                f,
                "the database is truncated: its header counts {header_pages} pages but only {available} exist"
            ),
        }
    }
}

/// A read-only, decoded view of an encrypted database and its journal or WAL.
pub struct Reader {
    path: PathBuf,
    header: Header,
    slot: usize,
    cipher: Arc<XtsCipher>,
    db: EncryptedFile,
    wal: Option<(EncryptedFile, WalScan, WalIndex)>,
    journal: Option<(EncryptedFile, JournalScan, JournalIndex)>,
    page_size: u32,
    page_count: u32,
    findings: Vec<Finding>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("path", &self.path)
            .field("page_size", &self.page_size)
            .field("page_count", &self.page_count)
            .finish_non_exhaustive()
    }
}

fn io_err(path: &Path, e: io::Error) -> Error {
    Error::Io(io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// Where `kind` of the database at `db` is: tde's own name, or SQLite's name when only a
/// format-1 file is there (the VFS renames such files at the next open; an offline reader must
/// not).
fn side_file(db: &Path, kind: SideFile) -> PathBuf {
    let current = side_path(db, kind);
    let legacy = legacy_side_path(db, kind);
    if !current.exists() && legacy.exists() {
        legacy
    } else {
        current
    }
}

/// Path of the WAL of the database at `db`.
pub fn wal_path(db: &Path) -> PathBuf {
    side_file(db, SideFile::Wal)
}

/// Path of the rollback journal of the database at `db`.
pub fn journal_path(db: &Path) -> PathBuf {
    side_file(db, SideFile::Journal)
}

/// Read up to the header region's length from the start of `file`.
pub(crate) fn read_region(file: &File) -> io::Result<Vec<u8>> {
    let mut region = vec![0u8; HEADER_REGION_LEN];
    let mut got = 0;
    while got < region.len() {
        match file.read_at(&mut region[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    region.truncate(got);
    Ok(region)
}

/// Unwrap the data key of `header` through the KMS (one `Decrypt` call) and check it against
/// the header's key-check value. Refuses a header with a rekey in progress (part of the pages
/// are under another key).
pub fn unwrap_key(path: &Path, kms: &dyn Kms, header: &Header) -> Result<Arc<XtsCipher>> {
    unwrap_key_cipher(path, kms, header).map(Arc::new)
}

/// [`unwrap_key`], returning the cipher itself (for callers that cache it, such as the VFS's
/// key cache).
pub fn unwrap_key_cipher(path: &Path, kms: &dyn Kms, header: &Header) -> Result<XtsCipher> {
    let shown = path.display().to_string();
    if header.rekey.is_some() {
        return Err(Error::RekeyInProgress { path: shown });
    }
    let context = EncryptionContext::for_database(&header.db_uuid);
    let dek = kms
        .decrypt_data_key(&header.key, &header.wrapped_dek, &context)
        .map_err(|source| Error::Kms { path: shown.clone(), source })?;
    verified_cipher(&dek, &header.db_uuid, &header.kcv).ok_or(Error::WrongKey { path: shown })
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

impl Reader {
    /// Open the database at `path`, unwrapping its key through `kms`, with the WAL and a hot
    /// journal applied.
    pub fn open(path: impl AsRef<Path>, kms: &dyn Kms) -> Result<Reader> {
        Self::open_with(path, kms, ReaderOptions::default())
    }

    /// Open with options. Fails on a header, key or structural problem (see [`Finding`]).
    pub fn open_with(path: impl AsRef<Path>, kms: &dyn Kms, opts: ReaderOptions) -> Result<Reader> {
        let path = path.as_ref();
        let file = crate::fsutil::open_regular(path).map_err(|e| io_err(path, e))?;
        let region = read_region(&file).map_err(|e| io_err(path, e))?;
        if region.is_empty() {
            return Err(Error::Header { path: path.display().to_string(), source: HeaderError::Truncated });
        }
        let (header, slot) =
            choose_slot(&region).map_err(|source| Error::Header { path: path.display().to_string(), source })?;
        let cipher = unwrap_key(path, kms, &header)?;
        crate::format::authenticate(&region, slot, cipher.meta())
            .map_err(|source| Error::Header { path: path.display().to_string(), source })?;
        let reader = Self::assemble(path, file, header, slot, cipher, opts)?;
        if let Some(f) = reader.findings.first() {
            return Err(Error::Header {
                path: path.display().to_string(),
                source: HeaderError::Corrupt(f.to_string()),
            });
        }
        Ok(reader)
    }

    /// Build the view from an opened database file whose header and key are already verified.
    /// Structural problems are collected in [`Reader::findings`] instead of failing.
    pub fn assemble(
        path: &Path,
        file: File,
        header: Header,
        slot: usize,
        cipher: Arc<XtsCipher>,
        opts: ReaderOptions,
    ) -> Result<Reader> {
        let io = |e| io_err(path, e);
        let db = EncryptedFile::from_file(path, file, cipher.clone(), Domain::Database, HEADER_REGION_LEN as u64)
            .map_err(io)?;
        let db_len = db.logical_len();
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
        let journal = if opts.apply_journal && db_len > 0 {
            match EncryptedFile::open(&journal_path(path), cipher.clone(), Domain::Journal, 0).map_err(io)? {
                Some(j) => {
                    let (scan, index) = journal::scan(&j, &dir).map_err(|e| io_err(j.path(), e))?;
                    Some((j, scan, index))
                }
                None => None,
            }
        } else {
            None
        };
        // SQLite ignores (deletes) the WAL of a database that has no page yet.
        let wal = if opts.apply_wal && db_len > 0 {
            match EncryptedFile::open(&wal_path(path), cipher.clone(), Domain::Wal, 0).map_err(io)? {
                Some(w) => {
                    let (scan, index) = wal::scan(&w, |_, _| {}).map_err(|e| io_err(w.path(), e))?;
                    Some((w, scan, index))
                }
                None => None,
            }
        } else {
            None
        };
        let mut r = Reader {
            path: path.to_path_buf(),
            header,
            slot,
            cipher,
            db,
            wal,
            journal,
            page_size: 0,
            page_count: 0,
            findings: Vec::new(),
        };
        r.layout().map_err(io)?;
        Ok(r)
    }

    /// Work out page size and page count as SQLite's pager and b-tree layer do.
    fn layout(&mut self) -> io::Result<()> {
        let db_len = self.db.logical_len();
        if db_len == 0 {
            return Ok(()); // an empty database: no pages
        }
        let wal_ps = self
            .wal_committed()
            .then(|| self.wal.as_ref().and_then(|w| w.1.header.as_ref()).map(|h| h.page_size))
            .flatten();
        let journal_ps = self.journal.as_ref().filter(|j| j.1.hot).map(|j| j.1.page_size);
        // Page 1's first 100 bytes, from wherever its current version lives.
        let mut p1 = [0u8; 100];
        if let (Some(ps), Some(&frame)) = (wal_ps, self.wal.as_ref().and_then(|w| w.2.pages.get(&1))) {
            self.wal.as_ref().unwrap().0.read_at(&mut p1, wal::frame_offset(frame, ps) + wal::FRAME_HEADER_LEN)?;
        } else if let Some(&at) = self.journal.as_ref().filter(|j| j.1.hot).and_then(|j| j.2.pages.get(&1)) {
            self.journal.as_ref().unwrap().0.read_at(&mut p1, at)?;
        } else {
            self.db.read_at(&mut p1, 0)?;
        }
        if &p1[..16] != SQLITE_MAGIC {
            self.findings.push(Finding::PageOneMismatch);
        }
        let raw_ps = u16::from_be_bytes([p1[16], p1[17]]) as u32;
        let ps = if raw_ps == 1 { 65536 } else { raw_ps };
        let ps = if wal::valid_page_size(ps) {
            ps
        } else {
            if !self.findings.contains(&Finding::PageOneMismatch) {
                self.findings.push(Finding::BadPageSize(raw_ps));
            }
            // Keep going with the page size the logs agree on, else the default.
            wal_ps.or(journal_ps).unwrap_or(4096)
        };
        if let Some(w) = wal_ps.filter(|&w| w != ps) {
            self.findings.push(Finding::WalPageSize { wal: w, db: ps });
        }
        self.page_size = ps;
        let file_pages = if let Some(w) = self.wal.as_ref().filter(|_| self.wal_committed()) {
            w.1.db_pages
        } else if let Some(j) = self.journal.as_ref().filter(|j| j.1.hot) {
            j.1.original_pages
        } else {
            db_len.div_ceil(ps as u64).min(u32::MAX as u64) as u32
        };
        // The b-tree layer trusts the size in the header when it is valid (non-zero, and the
        // change counter equals the version-valid-for number), else the file size.
        let header_pages = be32(&p1, 28);
        let valid = header_pages != 0 && p1[24..28] == p1[92..96];
        self.page_count = if valid { header_pages.min(file_pages) } else { file_pages };
        if valid && header_pages > file_pages {
            self.findings.push(Finding::Truncated { header_pages, available: file_pages });
        }
        Ok(())
    }

    fn wal_committed(&self) -> bool {
        self.wal.as_ref().is_some_and(|w| w.1.committed_frames > 0)
    }

    /// The database file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// The header in use (the newest valid slot).
    pub fn header(&self) -> &Header {
        &self.header
    }
    /// Which slot the header came from (0 = A, 1 = B).
    pub fn slot(&self) -> usize {
        self.slot
    }
    /// The database's cipher (for tools that read further encrypted files of it).
    pub fn cipher(&self) -> &Arc<XtsCipher> {
        &self.cipher
    }
    /// Page size in bytes (0 for a database without pages).
    pub fn page_size(&self) -> u32 {
        self.page_size
    }
    /// Pages in the database as SQLite sees it.
    pub fn page_count(&self) -> u32 {
        self.page_count
    }
    /// Length in bytes of the plain image.
    pub fn image_len(&self) -> u64 {
        self.page_count as u64 * self.page_size as u64
    }
    /// The database file (encrypted view).
    pub fn database_file(&self) -> &EncryptedFile {
        &self.db
    }
    /// What the WAL holds, when there is one.
    pub fn wal(&self) -> Option<&WalScan> {
        self.wal.as_ref().map(|w| &w.1)
    }
    /// What the rollback journal holds, when there is one.
    pub fn journal(&self) -> Option<&JournalScan> {
        self.journal.as_ref().map(|j| &j.1)
    }
    /// Structural findings (empty when [`Reader::open`] succeeded).
    pub fn findings(&self) -> &[Finding] {
        &self.findings
    }

    /// Where page `pgno` comes from.
    pub fn page_source(&self, pgno: u32) -> PageSource {
        if self.wal_committed() && self.wal.as_ref().is_some_and(|w| w.2.pages.contains_key(&pgno)) {
            PageSource::Wal
        } else if self.journal.as_ref().is_some_and(|j| j.1.hot && j.2.pages.contains_key(&pgno)) {
            PageSource::Journal
        } else {
            PageSource::Database
        }
    }

    /// Read page `pgno` (1-based) into `buf` (`page_size` bytes). Returns where it came from
    /// and what the read found on disk (for a database-file page: `len` short of the page
    /// size when the file ends inside it, `holes` for zeroed 16-byte blocks).
    pub fn read_page_info(&self, pgno: u32, buf: &mut [u8]) -> Result<(PageSource, ReadInfo)> {
        let ps = self.page_size as usize;
        if pgno == 0 || pgno > self.page_count || buf.len() != ps {
            return Err(Error::Config(format!(
                "page {pgno} out of range 1..={} or buffer of {} bytes for pages of {ps}",
                self.page_count,
                buf.len()
            )));
        }
        let source = self.page_source(pgno);
        let info = match source {
            PageSource::Wal => {
                let (w, _, index) = self.wal.as_ref().unwrap();
                let frame = index.pages[&pgno];
                let at = wal::frame_offset(frame, self.page_size);
                let mut fh = [0u8; 24];
                w.read_at(&mut fh, at).map_err(|e| io_err(w.path(), e))?;
                if index.headers.get(&frame) != Some(&fh) {
                    return Err(Error::Io(io::Error::other(format!(
                        "{}: the WAL changed while it was being read (the database is in use; use `sqlite-tde \
                         backup` for an online copy)",
                        w.path().display()
                    ))));
                }
                w.read_at(buf, at + wal::FRAME_HEADER_LEN).map_err(|e| io_err(w.path(), e))?
            }
            PageSource::Journal => {
                let (j, _, index) = self.journal.as_ref().unwrap();
                j.read_at(buf, index.pages[&pgno]).map_err(|e| io_err(j.path(), e))?
            }
            PageSource::Database => {
                self.db.read_at(buf, (pgno as u64 - 1) * ps as u64).map_err(|e| io_err(&self.path, e))?
            }
        };
        Ok((source, info))
    }

    /// Read page `pgno` (1-based) into `buf` (`page_size` bytes).
    pub fn read_page(&self, pgno: u32, buf: &mut [u8]) -> Result<()> {
        self.read_page_info(pgno, buf).map(|_| ())
    }

    /// Iterate over the pages, in order.
    pub fn pages(&self) -> Pages<'_> {
        Pages { reader: self, next: 1 }
    }

    /// The plain database image as a byte stream.
    pub fn image(&self) -> Image<'_> {
        Image { reader: self, next: 1, buf: Vec::new(), pos: 0 }
    }

    /// Write the plain image to `out`; `progress(done, total)` is called with page counts.
    /// Returns the bytes written.
    pub fn write_image(&self, out: &mut dyn Write, mut progress: impl FnMut(u64, u64)) -> Result<u64> {
        let mut buf = vec![0u8; self.page_size as usize];
        let total = self.page_count as u64;
        for p in 1..=self.page_count {
            self.read_page(p, &mut buf)?;
            out.write_all(&buf)?;
            if p % 64 == 0 {
                progress(p as u64, total);
            }
        }
        progress(total, total);
        Ok(self.image_len())
    }
}

/// Iterator over the pages of a [`Reader`].
pub struct Pages<'a> {
    reader: &'a Reader,
    next: u32,
}

impl Iterator for Pages<'_> {
    type Item = Result<Vec<u8>>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.next > self.reader.page_count {
            return None;
        }
        let mut buf = vec![0u8; self.reader.page_size as usize];
        let r = self.reader.read_page(self.next, &mut buf).map(|()| buf);
        self.next += 1;
        Some(r)
    }
}

/// The plain image of a [`Reader`] as [`Read`].
pub struct Image<'a> {
    reader: &'a Reader,
    next: u32,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for Image<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.buf.len() {
            if self.next > self.reader.page_count {
                return Ok(0);
            }
            self.buf.resize(self.reader.page_size as usize, 0);
            self.reader.read_page(self.next, &mut self.buf).map_err(|e| match e {
                Error::Io(e) => e,
                other => io::Error::other(other.to_string()),
            })?;
            self.next += 1;
            self.pos = 0;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

//! File-level verification of an encrypted database, without SQLite: both header slots (and
//! the bytes their checksums do not cover), the KMS unwrap and key-check value, that page 1
//! belongs to this header, every page read and decrypted, the length encoding, the WAL's
//! header, frames and checksum chain, and a hot journal. `sqlite-tde verify` adds SQLite's
//! `integrity_check` through the VFS.
//!
//! Every problem is collected (verification goes on where it can) rather than returned as an
//! error; only a database file that cannot be opened at all is an error.
//!
//! What cannot be detected: XTS has no authentication tag, so a damaged byte inside a page
//! only garbles that 16-byte block. `integrity_check` catches it in b-tree structure, but not
//! inside record payloads or free pages.

use std::io;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use super::journal::JournalScan;
use super::wal::WalScan;
use super::{read_region, PageSource, Reader, ReaderOptions, SQLITE_MAGIC};
use crate::crypto::XtsCipher;
use crate::error::{Error, Result};
use crate::format::{choose_slot, Header, SlotStatus, FORMAT_VERSION, HEADER_REGION_LEN, SLOT_LEN, SLOT_USED_LEN};
use crate::kms::{Kms, KmsError};

/// Which part of the database a problem is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Area {
    /// The encryption header region.
    Header,
    /// The KMS could not be used (key not found or disabled, access denied, unavailable):
    /// the data may be fine, it could not be checked.
    Kms,
    /// The data key: the wrapped key does not unwrap for this database, or does not match
    /// the key-check value.
    Key,
    /// The database file's pages.
    Database,
    /// The write-ahead log.
    Wal,
    /// The rollback journal.
    Journal,
    /// SQLite's integrity_check.
    Integrity,
}

/// One problem found.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub area: Area,
    pub message: String,
}

/// One header slot.
#[derive(Debug, Clone, Serialize)]
pub struct SlotReport {
    /// `A` or `B`.
    pub slot: &'static str,
    /// `valid`, `empty` or `invalid`.
    pub status: &'static str,
    /// Sequence number of a valid slot.
    pub sequence: Option<u64>,
}

/// Everything `verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub path: String,
    /// No problem found.
    pub ok: bool,
    pub format_version: Option<u16>,
    pub cipher: Option<&'static str>,
    pub db_uuid: Option<String>,
    pub key_uri: Option<String>,
    pub key_id: Option<String>,
    pub key_version: Option<u32>,
    pub active_slot: Option<&'static str>,
    pub slots: Vec<SlotReport>,
    /// `ok`, `mismatch`, or `not checked`.
    pub key_check: &'static str,
    pub page_size: Option<u32>,
    pub page_count: Option<u32>,
    /// Pages read and decrypted.
    pub pages_checked: u64,
    /// Of which the current version is a committed WAL frame.
    pub pages_from_wal: u64,
    /// Of which the current version is an original page in a hot journal.
    pub pages_from_journal: u64,
    /// Physical size of the database file.
    pub file_size: u64,
    pub wal: Option<WalScan>,
    pub journal: Option<JournalScan>,
    /// Rows of `PRAGMA integrity_check` (filled in by the CLI; `["ok"]` when clean).
    pub integrity_check: Option<Vec<String>>,
    pub problems: Vec<Problem>,
    /// Findings that are not problems (an interrupted transaction SQLite will undo, ...).
    pub warnings: Vec<String>,
}

impl Report {
    fn new(path: &Path) -> Report {
        Report {
            path: path.display().to_string(),
            ok: false,
            format_version: None,
            cipher: None,
            db_uuid: None,
            key_uri: None,
            key_id: None,
            key_version: None,
            active_slot: None,
            slots: Vec::new(),
            key_check: "not checked",
            page_size: None,
            page_count: None,
            pages_checked: 0,
            pages_from_wal: 0,
            pages_from_journal: 0,
            file_size: 0,
            wal: None,
            journal: None,
            integrity_check: None,
            problems: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// Record a problem.
    pub fn problem(&mut self, area: Area, message: impl Into<String>) {
        self.problems.push(Problem { area, message: message.into() });
        self.ok = false;
    }

    /// Recompute `ok` from the problems.
    pub fn finish(&mut self) {
        self.ok = self.problems.is_empty();
    }
}

fn slot_name(i: usize) -> &'static str {
    if i == 0 {
        "A"
    } else {
        "B"
    }
}

fn nonzero(b: &[u8]) -> bool {
    b.iter().any(|&x| x != 0)
}

fn le16(b: &[u8], at: usize) -> usize {
    u16::from_le_bytes([b[at], b[at + 1]]) as usize
}

/// Bytes of a slot that decodes as valid but that the format requires to be zero (FORMAT.md
/// §1): reserved fields, the padding of variable-length fields, and bytes 2048..4096, which
/// the checksum does not cover.
pub fn slot_strict_problems(raw: &[u8], h: &Header) -> Vec<String> {
    let mut out = Vec::new();
    let flags = u32::from_le_bytes(raw[12..16].try_into().unwrap());
    if flags & !1 != 0 {
        out.push(format!("unknown flag bits {flags:#x}"));
    }
    if raw[27] != 0 {
        out.push("reserved byte 27 is not zero".into());
    }
    if nonzero(&raw[64 + le16(raw, 60).min(256)..320]) {
        out.push("padding after the key reference is not zero".into());
    }
    if nonzero(&raw[320 + le16(raw, 62).min(512)..832]) {
        out.push("padding after the wrapped data key is not zero".into());
    }
    match &h.rekey {
        None => {
            if nonzero(&raw[864..1688]) {
                out.push("the rekey section is not zero, but no rekey is flagged".into());
            }
        }
        Some(_) => {
            if raw[864] != 1 {
                out.push("the rekey state byte disagrees with the flags".into());
            }
            if nonzero(&raw[865..872]) {
                out.push("reserved bytes 865..872 are not zero".into());
            }
            if nonzero(&raw[888 + le16(raw, 884).min(256)..1144]) || nonzero(&raw[1144 + le16(raw, 886).min(512)..1656])
            {
                out.push("padding in the rekey section is not zero".into());
            }
        }
    }
    // Format 2 keeps its MAC in 1984..2016.
    let reserved_end = if h.format >= FORMAT_VERSION { SLOT_USED_LEN - 64 } else { SLOT_USED_LEN - 32 };
    if nonzero(&raw[1688..reserved_end]) {
        out.push(format!("reserved bytes 1688..{reserved_end} are not zero"));
    }
    if nonzero(&raw[SLOT_USED_LEN..SLOT_LEN]) {
        out.push(format!("bytes {SLOT_USED_LEN}..{SLOT_LEN}, which the checksum does not cover, are not zero"));
    }
    out
}

/// List at most a few page numbers.
fn page_list(pages: &[u32]) -> String {
    let shown: Vec<String> = pages.iter().take(10).map(u32::to_string).collect();
    if pages.len() > 10 {
        format!("{} and {} more", shown.join(", "), pages.len() - 10)
    } else {
        shown.join(", ")
    }
}

/// Verify the database at `path`, unwrapping its key through `kms`. `progress(done, total)`
/// is called while pages are read. Errors only when the file cannot be opened or read;
/// everything else is in the report.
pub fn verify(path: &Path, kms: &dyn Kms, progress: impl FnMut(u64, u64)) -> Result<Report> {
    verify_with(path, |h| super::unwrap_key(path, kms, h), progress)
}

/// [`verify`] with the key unwrapped by `unwrap` (e.g. through a key cache). `unwrap`'s
/// errors are classified: [`Error::Kms`] as a KMS problem (an invalid ciphertext as a key
/// problem), [`Error::WrongKey`] as a key-check mismatch.
pub fn verify_with(
    path: &Path,
    unwrap: impl FnOnce(&Header) -> Result<Arc<XtsCipher>>,
    mut progress: impl FnMut(u64, u64),
) -> Result<Report> {
    let io = |e: io::Error| Error::Io(io::Error::new(e.kind(), format!("{}: {e}", path.display())));
    let mut r = Report::new(path);
    let file = crate::fsutil::open_regular(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if meta.is_dir() {
        return Err(io(io::Error::new(io::ErrorKind::InvalidInput, "is a directory")));
    }
    r.file_size = meta.len();
    let region = read_region(&file).map_err(io)?;

    // 1. The header region.
    if region.len() >= 16 && &region[..16] == SQLITE_MAGIC {
        r.problem(Area::Header, "this is a plain (unencrypted) SQLite database, not an sqlite-tde database");
        return Ok(r);
    }
    if let Some(conversion) = crate::inspect::conversion_in_progress(path, &region) {
        // Not damage: the slots are not a header yet. Nothing more can be checked until the
        // conversion is finished.
        r.problem(Area::Header, conversion);
        return Ok(r);
    }
    if region.len() < HEADER_REGION_LEN {
        r.problem(
            Area::Header,
            if region.is_empty() {
                "the file is empty: no encryption header (creation interrupted?)".to_string()
            } else {
                format!(
                    "the file is truncated: {} bytes, shorter than the {HEADER_REGION_LEN}-byte header region",
                    region.len()
                )
            },
        );
        return Ok(r);
    }
    let mut valid: Vec<Header> = Vec::new();
    for i in 0..2 {
        let raw = &region[i * SLOT_LEN..(i + 1) * SLOT_LEN];
        let name = slot_name(i);
        match Header::decode(raw) {
            SlotStatus::Valid(h) => {
                for p in slot_strict_problems(raw, &h) {
                    r.problem(Area::Header, format!("slot {name}: {p}"));
                }
                r.slots.push(SlotReport { slot: name, status: "valid", sequence: Some(h.sequence) });
                valid.push(h);
            }
            SlotStatus::Empty => {
                r.problem(
                    Area::Header,
                    format!("slot {name}: empty (both slots are written when a database is created)"),
                );
                r.slots.push(SlotReport { slot: name, status: "empty", sequence: None });
            }
            SlotStatus::Invalid(e) => {
                r.problem(Area::Header, format!("slot {name}: {e}"));
                r.slots.push(SlotReport { slot: name, status: "invalid", sequence: None });
            }
        }
    }
    if let [a, b] = &valid[..] {
        if a.db_uuid != b.db_uuid {
            r.problem(Area::Header, "slots A and B name different databases (different UUIDs)");
        } else if a.sequence == b.sequence && region[..SLOT_USED_LEN] != region[SLOT_LEN..SLOT_LEN + SLOT_USED_LEN] {
            r.problem(Area::Header, format!("slots A and B both have sequence {} but differ", a.sequence));
        }
    }
    let (header, slot) = match choose_slot(&region) {
        Ok(x) => x,
        Err(e) => {
            r.problem(Area::Header, format!("no usable header slot: {e}"));
            return Ok(r);
        }
    };
    r.format_version = Some(header.format);
    r.cipher = Some("aes-256-xts");
    r.db_uuid = Some(uuid::Uuid::from_bytes(header.db_uuid).hyphenated().to_string());
    r.key_uri = Some(header.key.uri.clone());
    r.key_id = Some(header.key.key_id().to_string());
    r.key_version = Some(header.key.version);
    r.active_slot = Some(slot_name(slot));
    if let Some(rk) = &header.rekey {
        r.problem(
            Area::Header,
            format!(
                "a rekey is in progress ({} bytes re-encrypted): the database cannot be opened until it is \
                 finished (`sqlite-tde rekey --resume`)",
                rk.progress
            ),
        );
        return Ok(r);
    }

    // 2. The key.
    let cipher = match unwrap(&header) {
        Ok(c) => c,
        Err(Error::Kms { source, .. }) => {
            let area = if matches!(source, KmsError::InvalidCiphertext { .. }) { Area::Key } else { Area::Kms };
            r.problem(area, format!("cannot unwrap the data key: {source}"));
            return Ok(r);
        }
        Err(Error::WrongKey { .. }) => {
            r.key_check = "mismatch";
            r.problem(Area::Key, "the unwrapped data key does not match the header's key-check value");
            return Ok(r);
        }
        Err(e) => {
            r.problem(Area::Key, format!("cannot unwrap the data key: {e}"));
            return Ok(r);
        }
    };
    r.key_check = "ok";
    match crate::format::authenticate(&region, slot, cipher.meta()) {
        Ok(true) => {}
        Ok(false) => r.warnings.push(format!(
            "format {} header: not authenticated (written by an earlier sqlite-tde); `sqlite-tde upgrade` rewrites it as format {FORMAT_VERSION}",
            header.format
        )),
        Err(e) => {
            r.problem(Area::Header, e.to_string());
            return Ok(r);
        }
    }

    // 3. Pages, WAL and journal.
    let reader = Reader::assemble(path, file, header, slot, cipher, ReaderOptions::default())?;
    r.wal = reader.wal().cloned();
    r.journal = reader.journal().cloned();
    for f in reader.findings() {
        r.problem(Area::Database, f.to_string());
    }
    if let Some(p) = reader.database_file().length_encoding_problem().map_err(io)? {
        r.problem(Area::Database, format!("database file: {p}"));
    }
    let ps = reader.page_size();
    if reader.database_file().logical_len() == 0 {
        r.warnings.push("the database has no pages yet".into());
    } else {
        r.page_size = Some(ps);
        r.page_count = Some(reader.page_count());
    }
    let mut buf = vec![0u8; ps as usize];
    let mut holes = Vec::new();
    let mut short = Vec::new();
    let total = reader.page_count() as u64;
    for p in 1..=reader.page_count() {
        match reader.read_page_info(p, &mut buf) {
            Ok((source, info)) => {
                r.pages_checked += 1;
                match source {
                    PageSource::Wal => r.pages_from_wal += 1,
                    PageSource::Journal => r.pages_from_journal += 1,
                    PageSource::Database => {
                        if info.len < ps as usize {
                            short.push(p);
                        }
                        if info.holes > 0 {
                            holes.push(p);
                        }
                    }
                }
            }
            Err(e) => {
                r.problem(Area::Database, format!("page {p}: {e}"));
                break;
            }
        }
        if p % 256 == 0 {
            progress(p as u64, total);
        }
    }
    progress(total, total);
    if !short.is_empty() {
        r.problem(
            Area::Database,
            format!("the database file ends before the end of page(s) {} (truncated)", page_list(&short)),
        );
    }
    if !holes.is_empty() {
        r.problem(
            Area::Database,
            format!(
                "page(s) {} hold 16-byte blocks that are all zero on disk (zeroed or damaged; SQLite reads zeros there)",
                page_list(&holes)
            ),
        );
    }
    check_wal(&mut r, &reader, path)?;
    check_journal(&mut r);
    r.finish();
    Ok(r)
}

fn check_wal(r: &mut Report, reader: &Reader, path: &Path) -> Result<()> {
    let wal_path = super::wal_path(path);
    let Some(w) = reader.wal().cloned() else {
        if wal_path.exists() && reader.database_file().logical_len() == 0 {
            r.warnings.push("a WAL exists beside a database without pages; SQLite deletes it at the next open".into());
        }
        return Ok(());
    };
    if let Some(f) = reader.wal.as_ref().map(|w| &w.0) {
        if let Some(p) = f
            .length_encoding_problem()
            .map_err(|e| Error::Io(io::Error::new(e.kind(), format!("{}: {e}", wal_path.display()))))?
        {
            r.problem(Area::Wal, format!("WAL file: {p}"));
        }
    }
    if let Some(p) = &w.header_problem {
        r.problem(Area::Wal, format!("WAL header: {p}; SQLite ignores the whole WAL"));
        return Ok(());
    }
    if let Some(f) = &w.first_invalid {
        if w.lost_commits > 0 {
            r.problem(
                Area::Wal,
                format!(
                    "WAL frame {} (page {}): {}; SQLite ignores it and every frame after it, among them {} commit \
                     frame(s): committed transactions are lost",
                    f.frame, f.page, f.reason, w.lost_commits
                ),
            );
        } else if f.commit {
            r.problem(
                Area::Wal,
                format!(
                    "WAL frame {} (page {}) is a torn commit frame ({}): the transaction it ends is lost",
                    f.frame, f.page, f.reason
                ),
            );
        }
    }
    if w.partial_tail_bytes > 0 {
        // Not damage: an append that did not finish (crash, ENOSPC). A commit frame is only
        // acknowledged once written whole, so no committed transaction is in these bytes.
        r.warnings.push(format!(
            "the WAL ends with {} bytes of an incomplete frame: an uncommitted tail (an append interrupted by a \
             crash or a full disk); SQLite ignores it",
            w.partial_tail_bytes
        ));
    }
    if w.ignored_frames > 0 && w.lost_commits == 0 {
        r.warnings.push(format!(
            "{} WAL frame(s) after the last commit belong to a transaction in progress or interrupted (or \
             predate a WAL restart); they are not part of the database",
            w.ignored_frames
        ));
    }
    Ok(())
}

fn check_journal(r: &mut Report) {
    let Some(j) = r.journal.clone() else { return };
    if let Some(p) = &j.problem {
        r.problem(Area::Journal, format!("rollback journal: {p}"));
    }
    if j.hot {
        r.warnings.push(format!(
            "hot rollback journal: an interrupted transaction that SQLite rolls back at the next open ({} original \
             page(s) to restore, database size before it {} pages)",
            j.records, j.original_pages
        ));
    }
}

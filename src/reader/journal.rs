//! Hot rollback journals, decoded as SQLite's `pager_playback` (pager.c) plays them back, over
//! the logical (decrypted) bytes of `<db>-journal`.
//!
//! ```text
//! segment header (one sector; all integers big-endian):
//!   0 magic d9 d5 05 f9 20 a1 63 d7   8 record count (0xffffffff: up to the end of file)
//!  12 checksum nonce   16 database size in pages before the transaction
//!  20 sector size   24 page size (both read from the first segment only)
//! record: page number (4) + original page + checksum (4) = nonce + every 200th byte of the
//!         page, from the end
//! trailer (optional): super-journal name, its length (4), its checksum (4), magic (8)
//! ```
//!
//! A journal whose first byte is zero is not hot (journal_mode=PERSIST zeroes its header; a
//! transaction's journal has a zero magic until its first sync).
//! A journal that names a super-journal which no longer exists belongs to a committed
//! multi-database transaction and is not played back. Rolling back truncates the database to
//! the size recorded in the first segment, then writes back every valid record's page.

use std::collections::HashMap;
use std::io;
use std::path::Path;

use serde::Serialize;

use super::encfile::EncryptedFile;
use super::wal::valid_page_size;

/// Magic at the start of every journal segment header.
pub const JOURNAL_MAGIC: [u8; 8] = [0xd9, 0xd5, 0x05, 0xf9, 0x20, 0xa1, 0x63, 0xd7];
/// SQLite's lock byte: the page that holds it is never used.
const PENDING_BYTE: u64 = 0x4000_0000;

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

/// What a rollback journal would do to its database.
#[derive(Debug, Clone, Default, Serialize)]
pub struct JournalScan {
    /// Logical length of the journal file.
    pub logical_len: u64,
    /// SQLite would roll it back at the next open (an interrupted transaction).
    pub hot: bool,
    /// Why it is, or is not, hot.
    pub state: String,
    /// Something that cannot be a journal SQLite wrote under this database's key.
    pub problem: Option<String>,
    /// Database size in pages before the interrupted transaction (hot journals).
    pub original_pages: u32,
    /// Page size recorded in the journal.
    pub page_size: u32,
    /// Segments (journal headers) read.
    pub segments: u32,
    /// Original pages that rolling back restores.
    pub records: u64,
    /// Super-journal the journal names (multi-database transactions).
    pub super_journal: Option<String>,
}

/// Where the original version of each restored page lives in the journal.
#[derive(Debug, Clone, Default)]
pub struct JournalIndex {
    /// Page number → logical offset of its original content in the journal.
    pub pages: HashMap<u32, u64>,
}

fn checksum(nonce: u32, page: &[u8]) -> u32 {
    let mut sum = nonce;
    let mut i = page.len() as i64 - 200;
    while i > 0 {
        sum = sum.wrapping_add(page[i as usize] as u32);
        i -= 200;
    }
    sum
}

/// The super-journal name in the journal's trailer, if a valid one is there.
fn super_journal(j: &EncryptedFile) -> io::Result<Option<String>> {
    let sz = j.logical_len();
    if sz < 16 {
        return Ok(None);
    }
    let mut t = [0u8; 16];
    j.read_at(&mut t, sz - 16)?;
    let len = be32(&t, 0) as u64;
    if t[8..16] != JOURNAL_MAGIC || len == 0 || len > sz - 16 || len > 4096 {
        return Ok(None);
    }
    let mut name = vec![0u8; len as usize];
    j.read_at(&mut name, sz - 16 - len)?;
    let sum = name.iter().fold(be32(&t, 4), |c, &b| c.wrapping_sub(b as u32));
    if sum != 0 {
        return Ok(None);
    }
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Ok(Some(String::from_utf8_lossy(&name[..end]).into_owned()))
}

/// Scan a journal as a hot-journal rollback would read it. `db_dir` resolves a relative
/// super-journal name.
pub fn scan(j: &EncryptedFile, db_dir: &Path) -> io::Result<(JournalScan, JournalIndex)> {
    let sz = j.logical_len();
    let mut s = JournalScan { logical_len: sz, ..JournalScan::default() };
    let mut index = JournalIndex::default();
    if sz == 0 {
        s.state = "empty".into();
        return Ok((s, index));
    }
    let mut head = [0u8; 28];
    j.read_at(&mut head, 0)?;
    // SQLite's hasHotJournal reads only the first byte: zero is never hot, whatever follows.
    // Two normal states have it: a header zeroed at commit (PERSIST mode, or exclusive locking
    // mode), and a transaction whose journal is not synced yet (writeJournalHdr leaves the
    // magic and record count zero until the first sync, the nonce, sizes and records follow).
    if head[0] == 0 {
        s.state = if head[..12].iter().any(|&b| b != 0) {
            "not hot (first byte zero: SQLite ignores and deletes it)"
        } else if head[12..].iter().any(|&b| b != 0) {
            "not hot (header not synced yet: a transaction in progress, or interrupted before its journal was synced)"
        } else {
            "not hot (zeroed header: a finished transaction)"
        }
        .into();
        return Ok((s, index));
    }
    if head[..8] != JOURNAL_MAGIC {
        s.state = "not a journal SQLite would play back".into();
        s.problem = Some("the journal does not decrypt to a journal header (another key, or damaged)".into());
        return Ok((s, index));
    }
    if let Some(name) = super_journal(j)? {
        let p = if Path::new(&name).is_absolute() { Path::new(&name).to_path_buf() } else { db_dir.join(&name) };
        let exists = p.exists();
        s.super_journal = Some(name);
        if !exists {
            s.state = "not hot (its multi-database transaction committed: the super-journal is gone)".into();
            return Ok((s, index));
        }
    }
    let sector = be32(&head, 20) as u64;
    let mut page_size = be32(&head, 24);
    if page_size == 0 {
        page_size = 4096;
    }
    if !(32..=65536).contains(&sector) || !sector.is_power_of_two() || !valid_page_size(page_size) {
        s.state = "not hot (header never completed: invalid sector or page size)".into();
        return Ok((s, index));
    }
    s.page_size = page_size;
    let ps = page_size as u64;
    let rec_len = ps + 8;
    let sj_page = (PENDING_BYTE / ps + 1) as u32;
    let mut off = 0u64;
    let mut page = vec![0u8; page_size as usize];
    let mut first = true;
    'segments: loop {
        // Segments start at sector boundaries.
        if off != 0 {
            off = (off - 1) / sector * sector + sector;
        }
        if off + sector > sz {
            break;
        }
        let mut h = [0u8; 20];
        j.read_at(&mut h, off)?;
        if h[..8] != JOURNAL_MAGIC {
            break;
        }
        let mut n_rec = be32(&h, 8) as u64;
        let nonce = be32(&h, 12);
        let db_size = be32(&h, 16);
        off += sector;
        if n_rec == 0xffff_ffff {
            n_rec = (sz - sector) / rec_len;
        }
        if first {
            s.original_pages = db_size;
            first = false;
        }
        s.segments += 1;
        for _ in 0..n_rec {
            if off + rec_len > sz {
                break 'segments; // short read ends the playback
            }
            let mut pg = [0u8; 4];
            j.read_at(&mut pg, off)?;
            let pgno = u32::from_be_bytes(pg);
            j.read_at(&mut page, off + 4)?;
            let mut ck = [0u8; 4];
            j.read_at(&mut ck, off + 4 + ps)?;
            let data_at = off + 4;
            off += rec_len;
            if pgno == 0 || pgno == sj_page {
                off = sz;
                break;
            }
            if pgno > s.original_pages {
                continue;
            }
            if checksum(nonce, &page) != u32::from_be_bytes(ck) {
                off = sz;
                break;
            }
            index.pages.insert(pgno, data_at);
        }
    }
    s.records = index.pages.len() as u64;
    s.hot = true;
    s.state = "hot: an interrupted transaction that SQLite rolls back at the next open".into();
    Ok((s, index))
}

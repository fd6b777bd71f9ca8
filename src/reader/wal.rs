//! Decoding SQLite's write-ahead log as SQLite's WAL recovery does (`walIndexRecover` in
//! SQLite's wal.c), over the logical (decrypted) bytes of `<db>-wal`.
//!
//! ```text
//! WAL header, 32 bytes, big-endian:
//!   0 magic 0x377f0682 (checksum words little-endian) or 0x377f0683 (big-endian)
//!   4 format version 3007000      8 page size      12 checkpoint sequence
//!  16 salt-1   20 salt-2   24 checksum-1   28 checksum-2 (over bytes 0..24)
//! frame: 24-byte header + one page
//!   0 page number   4 database size in pages after a commit, else 0
//!   8 salt-1   12 salt-2 (equal to the header's)   16 checksum-1   20 checksum-2
//! ```
//!
//! Frame checksums are cumulative: each is computed over the first 8 bytes of the frame header
//! and the page, starting from the previous frame's checksum (the first from the header's).
//! Frames are valid while their salts match and their checksums chain; only the valid frames
//! up to the last commit frame count, and a later frame for a page replaces an earlier one.

use std::collections::HashMap;
use std::io;

use serde::Serialize;

use super::encfile::EncryptedFile;

/// Bytes of the WAL header.
pub const WAL_HEADER_LEN: u64 = 32;
/// Bytes of a frame header.
pub const FRAME_HEADER_LEN: u64 = 24;
/// The WAL magic without its endianness bit.
pub const WAL_MAGIC: u32 = 0x377f_0682;
/// The only WAL format version.
pub const WAL_VERSION: u32 = 3_007_000;

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

/// SQLite's WAL checksum over `data` (a multiple of 8 bytes), continuing from `s`.
pub fn checksum(big_endian: bool, data: &[u8], s: (u32, u32)) -> (u32, u32) {
    let (mut s1, mut s2) = s;
    for w in data.chunks_exact(8) {
        let (x0, x1) = if big_endian {
            (be32(w, 0), be32(w, 4))
        } else {
            (u32::from_le_bytes(w[0..4].try_into().unwrap()), u32::from_le_bytes(w[4..8].try_into().unwrap()))
        };
        s1 = s1.wrapping_add(x0).wrapping_add(s2);
        s2 = s2.wrapping_add(x1).wrapping_add(s1);
    }
    (s1, s2)
}

/// Is `n` a valid SQLite page size?
pub fn valid_page_size(n: u32) -> bool {
    (512..=65536).contains(&n) && n.is_power_of_two()
}

/// The decoded WAL header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WalHeader {
    pub magic: u32,
    /// Checksum words are big-endian (magic `0x377f0683`).
    pub big_endian_checksums: bool,
    pub version: u32,
    pub page_size: u32,
    pub checkpoint_sequence: u32,
    pub salt1: u32,
    pub salt2: u32,
    #[serde(skip)]
    pub checksum: (u32, u32),
}

impl WalHeader {
    /// Decode and check a 32-byte header; the error says why SQLite would ignore the WAL.
    pub fn decode(b: &[u8]) -> Result<WalHeader, String> {
        if b.len() < WAL_HEADER_LEN as usize {
            return Err(format!("shorter than the {WAL_HEADER_LEN}-byte WAL header"));
        }
        let magic = be32(b, 0);
        if magic & !1 != WAL_MAGIC {
            return Err(format!("bad WAL magic {magic:#010x} (not a WAL, another key, or damaged)"));
        }
        let big_endian = magic & 1 == 1;
        let h = WalHeader {
            magic,
            big_endian_checksums: big_endian,
            version: be32(b, 4),
            page_size: be32(b, 8),
            checkpoint_sequence: be32(b, 12),
            salt1: be32(b, 16),
            salt2: be32(b, 20),
            checksum: (be32(b, 24), be32(b, 28)),
        };
        if h.version != WAL_VERSION {
            return Err(format!("unsupported WAL format version {}", h.version));
        }
        if !valid_page_size(h.page_size) {
            return Err(format!("invalid WAL page size {}", h.page_size));
        }
        if checksum(big_endian, &b[..24], (0, 0)) != h.checksum {
            return Err("WAL header checksum mismatch".into());
        }
        Ok(h)
    }
}

/// The frame that ended the valid prefix of the WAL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InvalidFrame {
    /// 1-based frame number.
    pub frame: u64,
    /// Page number its header claims.
    pub page: u32,
    /// It is a commit frame (with this WAL generation's salts): the transaction it ends is
    /// lost.
    pub commit: bool,
    /// Why it is invalid.
    pub reason: String,
}

/// What a WAL holds, as SQLite's recovery sees it, plus what it ignores (for `verify`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct WalScan {
    /// Logical length of the WAL file.
    pub logical_len: u64,
    /// The header, when the WAL has a valid one.
    pub header: Option<WalHeader>,
    /// Why a non-empty WAL's header is not valid (SQLite then ignores the whole WAL).
    pub header_problem: Option<String>,
    /// Complete frames in the file.
    pub frames_in_file: u64,
    /// Frames of the valid prefix (salts match, checksums chain).
    pub valid_frames: u64,
    /// Frames up to and including the last commit frame of the valid prefix: what SQLite
    /// applies (`mxFrame`).
    pub committed_frames: u64,
    /// Transactions among them: commit frames, without the copies of a commit frame SQLite
    /// appends to pad the WAL to a sector boundary (synchronous=FULL without powersafe
    /// overwrite).
    pub commits: u64,
    /// Database size in pages after the last commit (0: no commit).
    pub db_pages: u32,
    /// Bytes after the last complete frame: an append that did not finish (crash, ENOSPC).
    /// SQLite's recovery reads only complete frames, and a commit is only acknowledged once its
    /// frame is written whole, so these bytes never hold a committed transaction.
    pub partial_tail_bytes: u64,
    /// The first frame that is not valid, if any frame is not.
    pub first_invalid: Option<InvalidFrame>,
    /// Frames from the first invalid one on that carry the current salts. Normal for a
    /// transaction in progress or interrupted (SQLite writes the frames of a page it rewrites
    /// in place and fixes their checksums at commit); a loss when commit frames are among them.
    pub orphaned_frames: u64,
    /// Commit frames with the current salts after the first invalid frame: committed
    /// transactions that SQLite will not see.
    pub lost_commits: u64,
    /// Frames from the first invalid one on with other salts: left over from before the WAL
    /// was restarted, or written with zeroed salts by a transaction in progress (normal).
    pub stale_frames: u64,
    /// Valid frames after the last commit (a transaction in progress or interrupted; normal).
    pub uncommitted_frames: u64,
    /// Complete frames SQLite does not apply (everything after the last valid commit frame).
    pub ignored_frames: u64,
    /// Committed frames that hold 16-byte blocks that were zero on disk.
    pub frames_with_holes: u64,
}

/// Where the committed version of each page lives in the WAL.
#[derive(Debug, Clone, Default)]
pub struct WalIndex {
    /// Page number → 0-based index of the frame holding its newest committed version.
    pub pages: HashMap<u32, u64>,
    /// Frame index → the 24-byte frame header seen at scan time (re-checked on every read, so a
    /// WAL restarted under the reader is noticed).
    pub headers: HashMap<u64, [u8; 24]>,
}

impl WalScan {
    /// Size of one frame.
    pub fn frame_len(&self) -> Option<u64> {
        self.header.as_ref().map(|h| FRAME_HEADER_LEN + h.page_size as u64)
    }
}

/// Logical offset of frame `index` (0-based) of a WAL with pages of `page_size`.
pub fn frame_offset(index: u64, page_size: u32) -> u64 {
    WAL_HEADER_LEN + index * (FRAME_HEADER_LEN + page_size as u64)
}

/// Scan a whole WAL. `progress` is called with (frames done, frames in file).
pub fn scan(wal: &EncryptedFile, mut progress: impl FnMut(u64, u64)) -> io::Result<(WalScan, WalIndex)> {
    let mut s = WalScan { logical_len: wal.logical_len(), ..WalScan::default() };
    let mut index = WalIndex::default();
    if s.logical_len == 0 {
        return Ok((s, index));
    }
    let mut hb = [0u8; WAL_HEADER_LEN as usize];
    let got = wal.read_at(&mut hb, 0)?;
    let header = match WalHeader::decode(&hb[..got.len]) {
        Ok(h) => h,
        Err(e) => {
            s.header_problem = Some(e);
            return Ok((s, index));
        }
    };
    let page_size = header.page_size;
    let flen = FRAME_HEADER_LEN + page_size as u64;
    let body = s.logical_len - WAL_HEADER_LEN;
    s.frames_in_file = body / flen;
    s.partial_tail_bytes = body % flen;
    let mut chain = header.checksum;
    let mut valid = true;
    // Frames since the last commit: (page, frame index, had holes).
    let mut pending: Vec<(u32, u64, bool)> = Vec::new();
    let mut frame = vec![0u8; flen as usize];
    // The previous valid frame, when it was a commit frame: its page number, database size
    // and page (a padding frame repeats all three).
    let mut last_commit: Option<Vec<u8>> = None;
    for i in 0..s.frames_in_file {
        if i % 256 == 0 {
            progress(i, s.frames_in_file);
        }
        let info = wal.read_at(&mut frame, frame_offset(i, page_size))?;
        let pgno = be32(&frame, 0);
        let commit = be32(&frame, 4);
        let salts_match = be32(&frame, 8) == header.salt1 && be32(&frame, 12) == header.salt2;
        if !valid {
            if salts_match {
                s.orphaned_frames += 1;
                if commit != 0 {
                    s.lost_commits += 1;
                }
            } else {
                s.stale_frames += 1;
            }
            continue;
        }
        let reason = if !salts_match {
            Some("salts differ from the WAL header's")
        } else if pgno == 0 {
            Some("page number 0")
        } else {
            let c = checksum(header.big_endian_checksums, &frame[..8], chain);
            let c = checksum(header.big_endian_checksums, &frame[FRAME_HEADER_LEN as usize..], c);
            if c != (be32(&frame, 16), be32(&frame, 20)) {
                Some("checksum mismatch (torn or damaged frame)")
            } else {
                chain = c;
                None
            }
        };
        if let Some(r) = reason {
            valid = false;
            s.first_invalid =
                Some(InvalidFrame { frame: i + 1, page: pgno, commit: salts_match && commit != 0, reason: r.into() });
            if salts_match {
                // The invalid frame itself belongs to this generation of the WAL (a torn commit
                // frame is reported by `first_invalid.commit`, not as a lost later commit).
                s.orphaned_frames += 1;
            } else {
                s.stale_frames += 1;
            }
            continue;
        }
        s.valid_frames += 1;
        let padding = commit != 0
            && last_commit.as_deref().is_some_and(|p| {
                p[..8] == frame[..8] && p[FRAME_HEADER_LEN as usize..] == frame[FRAME_HEADER_LEN as usize..]
            });
        pending.push((pgno, i, info.holes > 0));
        index.headers.insert(i, frame[..24].try_into().unwrap());
        if commit != 0 {
            for (p, f, holes) in pending.drain(..) {
                s.frames_with_holes += u64::from(holes);
                index.pages.insert(p, f);
            }
            s.committed_frames = i + 1;
            s.commits += u64::from(!padding);
            s.db_pages = commit;
            if !padding {
                last_commit = Some(frame.clone());
            }
        } else {
            last_commit = None;
        }
    }
    progress(s.frames_in_file, s.frames_in_file);
    s.uncommitted_frames = s.valid_frames - s.committed_frames;
    s.ignored_frames = s.frames_in_file - s.committed_frames;
    // Frames after the last commit are not SQLite's: forget their headers.
    index.headers.retain(|&f, _| f < s.committed_frames);
    // Pages beyond the committed database size are not part of it.
    let db_pages = s.db_pages;
    index.pages.retain(|&p, _| p <= db_pages);
    s.header = Some(header);
    Ok((s, index))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_matches_sqlite_reference() {
        // A header written by SQLite 3.x (little-endian checksums), page size 4096.
        let mut h = [0u8; 32];
        h[0..4].copy_from_slice(&0x377f0682u32.to_be_bytes());
        h[4..8].copy_from_slice(&WAL_VERSION.to_be_bytes());
        h[8..12].copy_from_slice(&4096u32.to_be_bytes());
        h[16..20].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        let c = checksum(false, &h[..24], (0, 0));
        h[24..28].copy_from_slice(&c.0.to_be_bytes());
        h[28..32].copy_from_slice(&c.1.to_be_bytes());
        let d = WalHeader::decode(&h).unwrap();
        assert_eq!((d.page_size, d.salt1, d.big_endian_checksums), (4096, 0x1234_5678, false));
        h[9] ^= 1;
        assert!(WalHeader::decode(&h).is_err());
    }
}

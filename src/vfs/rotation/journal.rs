//! The rekey journal `<db>-tderekey`: the old ciphertext of the one chunk being re-encrypted
//! (the "hotzone"), so a torn in-place write can be undone. Format: docs/FORMAT.md §8.
//!
//! A record is valid for exactly one header state: same database UUID, same new-DEK key-check
//! value (one rekey operation) and same progress value. Once the header's progress moves past
//! it, the record is stale and ignored, so the journal never has to be deleted between chunks.
//!
//! The data is written and synced *before* the 128-byte record header (which fits in one
//! sector), so a valid header implies complete data. Writing the data of the next chunk can
//! only damage a record that is already stale (the header's progress moved past it before the
//! next chunk starts).
//!
//! Format 2 records are authenticated: a MAC under the rekey-journal key of the DEK being
//! replaced ([`MacPurpose::RekeyJournal`]) over the record header and the data, so a record
//! planted by someone without that DEK (whose "old ciphertext" recovery would write into the
//! database) is no record at all. Format 1 records (an unkeyed checksum of the record header)
//! are honoured only when the caller trusts format 1 state (`--trust-format-1`).

use sha2::{Digest, Sha256};

use crate::crypto::{MacPurpose, MetaKey};

/// Magic of a rekey journal record.
pub const MAGIC: [u8; 8] = *b"SQLTDERJ";
/// Journal format version written by this build.
pub const VERSION: u16 = 2;
/// Format 1: record header checksummed, nothing authenticated.
pub const VERSION_1: u16 = 1;
/// Record kind: old ciphertext of one chunk of a rekey.
pub const KIND_REKEY: u16 = 1;
/// Bytes before the chunk data.
pub const RECORD_HEADER_LEN: usize = 128;
/// Where the checksum (format 1) or the MAC (format 2) starts; both cover the bytes before.
const TAG_AT: usize = 96;

/// One decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub db_uuid: [u8; 16],
    /// Key-check value of the new DEK: binds the record to one rekey.
    pub new_kcv: [u8; 32],
    /// Header progress this record protects: the chunk starts at this logical offset.
    pub progress: u64,
    /// The chunk's bytes as they were on disk (ciphertext under the old DEK).
    pub data: Vec<u8>,
}

fn fields(version: u16, db_uuid: &[u8; 16], new_kcv: &[u8; 32], progress: u64, len: u64) -> [u8; RECORD_HEADER_LEN] {
    let mut b = [0u8; RECORD_HEADER_LEN];
    b[0..8].copy_from_slice(&MAGIC);
    b[8..10].copy_from_slice(&version.to_le_bytes());
    b[10..12].copy_from_slice(&KIND_REKEY.to_le_bytes());
    b[16..32].copy_from_slice(db_uuid);
    b[32..64].copy_from_slice(new_kcv);
    b[64..72].copy_from_slice(&progress.to_le_bytes());
    b[72..80].copy_from_slice(&len.to_le_bytes());
    b
}

/// The MAC of a format 2 record of `data` (computed before the data is re-encrypted in
/// memory; `meta` is the metadata key of the DEK being replaced).
pub fn record_tag(meta: &MetaKey, db_uuid: &[u8; 16], new_kcv: &[u8; 32], progress: u64, data: &[u8]) -> [u8; 32] {
    let head = fields(VERSION, db_uuid, new_kcv, progress, data.len() as u64);
    meta.mac(MacPurpose::RekeyJournal, &[&head[..TAG_AT], data])
}

/// Encode the format 2 record header for `len` bytes of data whose [`record_tag`] is `tag`
/// (written, and synced, at [`RECORD_HEADER_LEN`] before this header is written).
pub fn encode_header(
    db_uuid: &[u8; 16],
    new_kcv: &[u8; 32],
    progress: u64,
    len: u64,
    tag: &[u8; 32],
) -> [u8; RECORD_HEADER_LEN] {
    let mut b = fields(VERSION, db_uuid, new_kcv, progress, len);
    b[TAG_AT..TAG_AT + 32].copy_from_slice(tag);
    b
}

/// A whole format 2 record: header followed by the data.
pub fn encode(meta: &MetaKey, db_uuid: &[u8; 16], new_kcv: &[u8; 32], progress: u64, data: &[u8]) -> Vec<u8> {
    let tag = record_tag(meta, db_uuid, new_kcv, progress, data);
    let mut out = Vec::with_capacity(RECORD_HEADER_LEN + data.len());
    out.extend_from_slice(&encode_header(db_uuid, new_kcv, progress, data.len() as u64, &tag));
    out.extend_from_slice(data);
    out
}

/// A whole format 1 record (for tests of the migration; never written by this build).
pub fn encode_format_1(db_uuid: &[u8; 16], new_kcv: &[u8; 32], progress: u64, data: &[u8]) -> Vec<u8> {
    let mut b = fields(VERSION_1, db_uuid, new_kcv, progress, data.len() as u64);
    let sum: [u8; 32] = Sha256::digest(&b[..TAG_AT]).into();
    b[TAG_AT..TAG_AT + 32].copy_from_slice(&sum);
    let mut out = b.to_vec();
    out.extend_from_slice(data);
    out
}

/// Decode a journal file's content. `None` for anything that is not one complete, intact,
/// authentic record (absent, torn, truncated, foreign, forged, or format 1 while
/// `trust_format_1` is false): such a journal protects nothing. `meta` is the metadata key of
/// the DEK being replaced.
pub fn decode(bytes: &[u8], meta: &MetaKey, trust_format_1: bool) -> Option<Record> {
    if bytes.len() < RECORD_HEADER_LEN || bytes[0..8] != MAGIC {
        return None;
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if u16::from_le_bytes([bytes[10], bytes[11]]) != KIND_REKEY {
        return None;
    }
    let n = u64::from_le_bytes(bytes[72..80].try_into().unwrap());
    let end = (RECORD_HEADER_LEN as u64).checked_add(n)?;
    if end > bytes.len() as u64 {
        return None;
    }
    let data = &bytes[RECORD_HEADER_LEN..end as usize];
    let tag = &bytes[TAG_AT..TAG_AT + 32];
    let ok = match version {
        VERSION => {
            bytes[80..TAG_AT].iter().all(|&b| b == 0)
                && meta.verify(MacPurpose::RekeyJournal, &[&bytes[..TAG_AT], data], tag)
        }
        VERSION_1 => trust_format_1 && Sha256::digest(&bytes[..TAG_AT]).as_slice() == tag,
        _ => false,
    };
    ok.then(|| Record {
        db_uuid: bytes[16..32].try_into().unwrap(),
        new_kcv: bytes[32..64].try_into().unwrap(),
        progress: u64::from_le_bytes(bytes[64..72].try_into().unwrap()),
        data: data.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::DataKey;

    fn meta() -> MetaKey {
        MetaKey::derive(&DataKey::generate().unwrap())
    }

    #[test]
    fn round_trip_and_damage() {
        let m = meta();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let mut rec = encode(&m, &[1; 16], &[2; 32], 4096 * 3, &data);
        // A stale tail of a longer earlier record does not matter.
        rec.extend_from_slice(&[9; 100]);
        let r = decode(&rec, &m, false).unwrap();
        assert_eq!((r.progress, r.data.len(), r.db_uuid, r.new_kcv), (12288, 10_000, [1; 16], [2; 32]));
        // Any change of the header or of the data voids the record.
        for at in [0usize, 9, 20, 70, 100, RECORD_HEADER_LEN + 5, RECORD_HEADER_LEN + 9_999] {
            let mut bad = rec.clone();
            bad[at] ^= 0x40;
            assert!(decode(&bad, &m, true).is_none(), "flip at {at}");
        }
        assert!(decode(&rec[..RECORD_HEADER_LEN + 9_000], &m, true).is_none());
        assert!(decode(&[], &m, true).is_none());
        // Under another DEK it is no record.
        assert!(decode(&rec, &meta(), true).is_none());
    }

    #[test]
    fn format_1_records_need_trust() {
        let m = meta();
        let rec = encode_format_1(&[1; 16], &[2; 32], 0, &[5; 4096]);
        assert!(decode(&rec, &m, false).is_none());
        assert_eq!(decode(&rec, &m, true).unwrap().data, vec![5; 4096]);
    }
}

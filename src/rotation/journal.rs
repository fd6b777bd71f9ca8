//! The rekey journal `<db>-tderekey`: the old ciphertext of the one chunk being re-encrypted
//! (the "hotzone"), so a torn in-place write can be undone. Format: docs/FORMAT.md §8.
//!
//! A record is valid for exactly one header state: same database UUID, same new-DEK key-check
//! value (one rekey operation) and same progress value. Once the header's progress moves past
//! it, the record is stale and ignored, so the journal never has to be deleted between chunks.
//!
//! The data is written and synced *before* the 128-byte record header (which is checksummed
//! and fits in one sector), so a valid header implies complete data: no checksum over the
//! (large) data is needed. Writing the data of the next chunk can only damage a record that is
//! already stale (the header's progress moved past it before the next chunk starts).

use sha2::{Digest, Sha256};

/// Magic of a rekey journal record.
pub const MAGIC: [u8; 8] = *b"SQLTDERJ";
/// Journal format version.
pub const VERSION: u16 = 1;
/// Record kind: old ciphertext of one chunk of a rekey.
pub const KIND_REKEY: u16 = 1;
/// Bytes before the chunk data.
pub const RECORD_HEADER_LEN: usize = 128;
const CHECKSUM_AT: usize = 96;

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

fn checksum(head: &[u8]) -> [u8; 32] {
    Sha256::digest(head).into()
}

/// Encode the record header for `len` bytes of data (written, and synced, at
/// [`RECORD_HEADER_LEN`] before this header is written).
pub fn encode_header(db_uuid: &[u8; 16], new_kcv: &[u8; 32], progress: u64, len: u64) -> [u8; RECORD_HEADER_LEN] {
    let mut b = [0u8; RECORD_HEADER_LEN];
    b[0..8].copy_from_slice(&MAGIC);
    b[8..10].copy_from_slice(&VERSION.to_le_bytes());
    b[10..12].copy_from_slice(&KIND_REKEY.to_le_bytes());
    b[16..32].copy_from_slice(db_uuid);
    b[32..64].copy_from_slice(new_kcv);
    b[64..72].copy_from_slice(&progress.to_le_bytes());
    b[72..80].copy_from_slice(&len.to_le_bytes());
    let sum = checksum(&b[..CHECKSUM_AT]);
    b[CHECKSUM_AT..CHECKSUM_AT + 32].copy_from_slice(&sum);
    b
}

/// A whole record: header followed by the data.
pub fn encode(db_uuid: &[u8; 16], new_kcv: &[u8; 32], progress: u64, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECORD_HEADER_LEN + data.len());
    out.extend_from_slice(&encode_header(db_uuid, new_kcv, progress, data.len() as u64));
    out.extend_from_slice(data);
    out
}

/// Decode a journal file's content. `None` for anything that is not one complete, intact
/// record (absent, torn, truncated, foreign): such a journal protects nothing.
pub fn decode(bytes: &[u8]) -> Option<Record> {
    if bytes.len() < RECORD_HEADER_LEN || bytes[0..8] != MAGIC {
        return None;
    }
    if u16::from_le_bytes([bytes[8], bytes[9]]) != VERSION || u16::from_le_bytes([bytes[10], bytes[11]]) != KIND_REKEY {
        return None;
    }
    let n = u64::from_le_bytes(bytes[72..80].try_into().unwrap());
    let end = (RECORD_HEADER_LEN as u64).checked_add(n)?;
    if end > bytes.len() as u64 {
        return None;
    }
    let data = &bytes[RECORD_HEADER_LEN..end as usize];
    if checksum(&bytes[..CHECKSUM_AT]) != bytes[CHECKSUM_AT..CHECKSUM_AT + 32] {
        return None;
    }
    Some(Record {
        db_uuid: bytes[16..32].try_into().unwrap(),
        new_kcv: bytes[32..64].try_into().unwrap(),
        progress: u64::from_le_bytes(bytes[64..72].try_into().unwrap()),
        data: data.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let mut rec = encode(&[1; 16], &[2; 32], 4096 * 3, &data);
        // A stale tail of a longer earlier record does not matter.
        rec.extend_from_slice(&[9; 100]);
        let r = decode(&rec).unwrap();
        assert_eq!((r.progress, r.data.len(), r.db_uuid, r.new_kcv), (12288, 10_000, [1; 16], [2; 32]));
        for at in [0usize, 9, 20, 70, 100] {
            let mut bad = rec.clone();
            bad[at] ^= 0x40;
            assert!(decode(&bad).is_none(), "flip at {at}");
        }
        assert!(decode(&rec[..RECORD_HEADER_LEN + 9_000]).is_none());
        assert!(decode(&[]).is_none());
    }
}

//! The header region of an encrypted main database file: two 4 KiB slots (A at 0, B at 4096),
//! each a complete, checksummed copy of the header with a sequence number. Updates write the
//! slot that does not hold the newest valid copy, then sync, so a torn write can only damage
//! the copy being replaced. SQLite's page 1 starts at [`HEADER_REGION_LEN`].
//!
//! Format 2 slots also carry a MAC under a key derived from the DEK the slot names
//! ([`MacPurpose::HeaderSlot`]): the SHA-256 checksum tells a torn write from a good slot, the
//! MAC tells a slot written by a holder of the DEK from a forgery. Decoding cannot check the
//! MAC (the DEK is unwrapped from the slot first): [`authenticate`] does, once the caller has
//! the cipher, before anything in the slot is acted on. Format 1 slots (no MAC) are still
//! read, but only while no format 2 slot is valid, and their rekey state is never acted on
//! unasked (see docs/FORMAT.md §1).

use sha2::{Digest, Sha256};

use crate::crypto::{MacPurpose, MetaKey, KCV_LEN, MAC_LEN};

/// Magic at offset 0 of each slot.
pub const MAGIC: [u8; 8] = *b"SQLTDE\x00\x01";
/// Current header format version (written by this build).
pub const FORMAT_VERSION: u16 = 2;
/// The first format: checksummed, not authenticated. Read, never written.
pub const FORMAT_VERSION_1: u16 = 1;
/// Cipher id of AES-256-XTS with 4 KiB data units.
pub const CIPHER_AES_256_XTS: u16 = 1;
/// Bytes of one slot on disk (a slot never shares a 4 KiB sector with the other).
pub const SLOT_LEN: usize = 4096;
/// Bytes of a slot covered by the format (the rest is zero).
pub const SLOT_USED_LEN: usize = 2048;
/// Bytes before SQLite's logical byte 0.
pub const HEADER_REGION_LEN: usize = 2 * SLOT_LEN;

const KEY_REF_MAX: usize = 256;
const WRAPPED_MAX: usize = 512;
const CHECKSUM_AT: usize = SLOT_USED_LEN - 32;
/// Format 2: the MAC over `[0, MAC_AT)` sits right before the checksum.
const MAC_AT: usize = CHECKSUM_AT - MAC_LEN;
/// End of the fields of a slot; `[FIELDS_END, MAC_AT)` is zero.
const FIELDS_END: usize = 1688;

const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

pub use sqlite_tde_kms::KeyRef;

/// A DEK rotation in progress (see `rekey`): the new wrapped DEK and how far it got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RekeyState {
    /// Key that wraps the new DEK.
    pub key: KeyRef,
    /// The new DEK, wrapped.
    pub wrapped_dek: Vec<u8>,
    /// Key-check value of the new DEK.
    pub kcv: [u8; KCV_LEN],
    /// Logical bytes of the database already re-encrypted under the new DEK.
    pub progress: u64,
}

/// One decoded header slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Format version the slot was read in ([`FORMAT_VERSION`] for headers built here;
    /// [`Header::encode`] always writes the current format).
    pub format: u16,
    /// Higher wins between the two slots.
    pub sequence: u64,
    /// Database identity; the encryption context of the wrapped DEK.
    pub db_uuid: [u8; 16],
    /// When the DEK was generated (Unix seconds).
    pub dek_created: u64,
    /// Key that wraps the DEK.
    pub key: KeyRef,
    /// The DEK wrapped by the KMS (opaque to this layer).
    pub wrapped_dek: Vec<u8>,
    /// Key-check value of the DEK.
    pub kcv: [u8; KCV_LEN],
    /// Present while a rekey is in progress.
    pub rekey: Option<RekeyState>,
}

/// Why a header region could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("this is a plain (unencrypted) SQLite database, not an sqlite-tde database")]
    PlainSqlite,
    #[error("the file is shorter than the {HEADER_REGION_LEN}-byte encryption header (truncated, or creation was interrupted)")]
    Truncated,
    #[error("not an sqlite-tde database (no header magic in either slot)")]
    NotEncrypted,
    #[error("unsupported sqlite-tde format version {0} (this build reads versions {FORMAT_VERSION_1} and {FORMAT_VERSION}: it may have been written by a newer sqlite-tde)")]
    UnsupportedVersion(u16),
    #[error("unsupported cipher id {0}")]
    UnsupportedCipher(u16),
    #[error("corrupt sqlite-tde header: {0}")]
    Corrupt(String),
    /// A checksum-valid format 2 slot whose MAC does not verify under the DEK it names: not
    /// torn (the checksum says so) but written without the key. Nothing in it is used.
    #[error("header slot {slot} failed authentication: it was not written by a holder of the database's data key (the file was tampered with); nothing was changed")]
    Forged { slot: char },
    /// A format 1 slot carries a rekey state: format 1 did not authenticate it, so it is not
    /// acted on without an explicit decision.
    #[error("the header carries an unauthenticated format-1 rekey state; it is not acted on automatically (see `sqlite-tde rekey --resume --trust-format-1`)")]
    UnauthenticatedRekey,
}

/// Validity of one slot, for `verify`-style reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotStatus {
    Valid(Header),
    Empty,
    Invalid(HeaderError),
}

fn put_str(buf: &mut [u8], at: usize, max: usize, len_at: usize, bytes: &[u8]) -> Result<(), HeaderError> {
    if bytes.len() > max {
        return Err(HeaderError::Corrupt(format!("field of {} bytes exceeds {max}", bytes.len())));
    }
    buf[len_at..len_at + 2].copy_from_slice(&(bytes.len() as u16).to_le_bytes());
    buf[at..at + bytes.len()].copy_from_slice(bytes);
    Ok(())
}

fn get_bytes(buf: &[u8], at: usize, max: usize, len_at: usize) -> Result<Vec<u8>, HeaderError> {
    let len = u16::from_le_bytes([buf[len_at], buf[len_at + 1]]) as usize;
    if len > max {
        return Err(HeaderError::Corrupt(format!("length {len} exceeds {max}")));
    }
    Ok(buf[at..at + len].to_vec())
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

impl Header {
    /// Serialise into one format 2 slot image (`SLOT_LEN` bytes), MACed under `meta`: the
    /// metadata key of the DEK this header names as the database's DEK (`self.wrapped_dek`).
    pub fn encode(&self, meta: &MetaKey) -> Result<Vec<u8>, HeaderError> {
        let mut b = self.fields(FORMAT_VERSION)?;
        let tag = meta.mac(MacPurpose::HeaderSlot, &[&b[..MAC_AT]]);
        b[MAC_AT..CHECKSUM_AT].copy_from_slice(&tag);
        seal(&mut b);
        Ok(b)
    }

    /// Serialise into a format 1 slot image (no MAC): for fixtures and tests of the
    /// migration; this build never writes one to a database.
    pub fn encode_format_1(&self) -> Result<Vec<u8>, HeaderError> {
        let mut b = self.fields(FORMAT_VERSION_1)?;
        seal(&mut b);
        Ok(b)
    }

    /// The slot image without MAC and checksum.
    fn fields(&self, version: u16) -> Result<Vec<u8>, HeaderError> {
        let mut b = vec![0u8; SLOT_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&version.to_le_bytes());
        b[10..12].copy_from_slice(&(SLOT_USED_LEN as u16).to_le_bytes());
        // 12..16 flags: bit 0 = rekey in progress
        let flags: u32 = u32::from(self.rekey.is_some());
        b[12..16].copy_from_slice(&flags.to_le_bytes());
        b[16..24].copy_from_slice(&self.sequence.to_le_bytes());
        b[24..26].copy_from_slice(&CIPHER_AES_256_XTS.to_le_bytes());
        b[26] = crate::crypto::DATA_UNIT_LOG2;
        b[28..32].copy_from_slice(&(HEADER_REGION_LEN as u32).to_le_bytes());
        b[32..48].copy_from_slice(&self.db_uuid);
        b[48..56].copy_from_slice(&self.dek_created.to_le_bytes());
        b[56..60].copy_from_slice(&self.key.version.to_le_bytes());
        put_str(&mut b, 64, KEY_REF_MAX, 60, self.key.uri.as_bytes())?;
        put_str(&mut b, 320, WRAPPED_MAX, 62, &self.wrapped_dek)?;
        b[832..864].copy_from_slice(&self.kcv);
        if let Some(r) = &self.rekey {
            b[864] = 1;
            b[872..880].copy_from_slice(&r.progress.to_le_bytes());
            b[880..884].copy_from_slice(&r.key.version.to_le_bytes());
            put_str(&mut b, 888, KEY_REF_MAX, 884, r.key.uri.as_bytes())?;
            put_str(&mut b, 1144, WRAPPED_MAX, 886, &r.wrapped_dek)?;
            b[1656..FIELDS_END].copy_from_slice(&r.kcv);
        }
        Ok(b)
    }

    /// Parse one slot image.
    pub fn decode(b: &[u8]) -> SlotStatus {
        if b.len() < SLOT_USED_LEN {
            return SlotStatus::Invalid(HeaderError::Truncated);
        }
        if b[..SLOT_USED_LEN].iter().all(|&x| x == 0) {
            return SlotStatus::Empty;
        }
        match Self::decode_inner(b) {
            Ok(h) => SlotStatus::Valid(h),
            Err(e) => SlotStatus::Invalid(e),
        }
    }

    fn decode_inner(b: &[u8]) -> Result<Header, HeaderError> {
        if b[0..8] != MAGIC {
            return Err(HeaderError::NotEncrypted);
        }
        let sum = Sha256::digest(&b[..CHECKSUM_AT]);
        if sum.as_slice() != &b[CHECKSUM_AT..SLOT_USED_LEN] {
            return Err(HeaderError::Corrupt("header checksum mismatch".into()));
        }
        let version = u16::from_le_bytes([b[8], b[9]]);
        if version != FORMAT_VERSION && version != FORMAT_VERSION_1 {
            return Err(HeaderError::UnsupportedVersion(version));
        }
        if u16::from_le_bytes([b[10], b[11]]) as usize != SLOT_USED_LEN {
            return Err(HeaderError::Corrupt("unexpected slot length".into()));
        }
        let cipher = u16::from_le_bytes([b[24], b[25]]);
        if cipher != CIPHER_AES_256_XTS {
            return Err(HeaderError::UnsupportedCipher(cipher));
        }
        if b[26] != crate::crypto::DATA_UNIT_LOG2 || u32_at(b, 28) as usize != HEADER_REGION_LEN {
            return Err(HeaderError::Corrupt("unexpected data unit or header size".into()));
        }
        let flags = u32_at(b, 12);
        let text =
            |v: Vec<u8>| String::from_utf8(v).map_err(|_| HeaderError::Corrupt("key reference is not UTF-8".into()));
        let key = KeyRef { uri: text(get_bytes(b, 64, KEY_REF_MAX, 60)?)?, version: u32_at(b, 56) };
        let wrapped_dek = get_bytes(b, 320, WRAPPED_MAX, 62)?;
        if key.uri.is_empty() || wrapped_dek.is_empty() {
            return Err(HeaderError::Corrupt("empty key reference or wrapped key".into()));
        }
        let rekey = if flags & 1 != 0 {
            Some(RekeyState {
                key: KeyRef { uri: text(get_bytes(b, 888, KEY_REF_MAX, 884)?)?, version: u32_at(b, 880) },
                wrapped_dek: get_bytes(b, 1144, WRAPPED_MAX, 886)?,
                kcv: b[1656..1688].try_into().unwrap(),
                progress: u64_at(b, 872),
            })
        } else {
            None
        };
        let h = Header {
            format: version,
            sequence: u64_at(b, 16),
            db_uuid: b[32..48].try_into().unwrap(),
            dek_created: u64_at(b, 48),
            key,
            wrapped_dek,
            kcv: b[832..864].try_into().unwrap(),
            rekey,
        };
        // One encoding per header: the MAC covers exactly what is decoded (no bytes the
        // decoder skips, such as stale tails of shorter fields, can carry meaning).
        if version == FORMAT_VERSION && h.fields(version)?[..MAC_AT] != b[..MAC_AT] {
            return Err(HeaderError::Corrupt("non-canonical format 2 slot (bytes outside its fields are set)".into()));
        }
        Ok(h)
    }
}

/// Write the checksum of a slot image (catches torn writes and accidents, not attackers).
fn seal(b: &mut [u8]) {
    let sum = Sha256::digest(&b[..CHECKSUM_AT]);
    b[CHECKSUM_AT..SLOT_USED_LEN].copy_from_slice(&sum);
}

/// Check the MAC of slot `slot` (0 = A, 1 = B) of `region` under `meta`, the metadata key of
/// the DEK that slot names. Format 1 slots have no MAC: `Ok(false)` (the caller decides what
/// an unauthenticated slot may do); `Ok(true)` for a verified format 2 slot.
pub fn authenticate(region: &[u8], slot: usize, meta: &MetaKey) -> Result<bool, HeaderError> {
    let b = region.get(slot * SLOT_LEN..slot * SLOT_LEN + SLOT_USED_LEN).ok_or(HeaderError::Truncated)?;
    match u16::from_le_bytes([b[8], b[9]]) {
        FORMAT_VERSION_1 => Ok(false),
        FORMAT_VERSION if meta.verify(MacPurpose::HeaderSlot, &[&b[..MAC_AT]], &b[MAC_AT..CHECKSUM_AT]) => Ok(true),
        FORMAT_VERSION => Err(HeaderError::Forged { slot: if slot == 0 { 'A' } else { 'B' } }),
        v => Err(HeaderError::UnsupportedVersion(v)),
    }
}

/// Pick the newest valid slot of a header region. Returns the header and its slot index
/// (0 = A, 1 = B). `region` is whatever could be read (shorter than the region means the file
/// is truncated).
pub fn choose_slot(region: &[u8]) -> Result<(Header, usize), HeaderError> {
    if region.len() >= 16 && &region[..16] == SQLITE_MAGIC {
        return Err(HeaderError::PlainSqlite);
    }
    if region.len() < HEADER_REGION_LEN {
        return Err(if region.starts_with(&MAGIC) { HeaderError::Truncated } else { HeaderError::NotEncrypted });
    }
    let mut a = Header::decode(&region[..SLOT_LEN]);
    let mut b = Header::decode(&region[SLOT_LEN..HEADER_REGION_LEN]);
    // Once a slot is format 2 the database was upgraded: a format 1 slot next to it can only
    // be a leftover or a downgrade attempt, and must not win by its sequence number.
    let v2 = |s: &SlotStatus| matches!(s, SlotStatus::Valid(h) if h.format >= FORMAT_VERSION);
    if v2(&a) && matches!(&b, SlotStatus::Valid(h) if h.format < FORMAT_VERSION) {
        b = SlotStatus::Invalid(HeaderError::Corrupt("format 1 slot next to a format 2 slot".into()));
    } else if v2(&b) && matches!(&a, SlotStatus::Valid(h) if h.format < FORMAT_VERSION) {
        a = SlotStatus::Invalid(HeaderError::Corrupt("format 1 slot next to a format 2 slot".into()));
    }
    match (a, b) {
        (SlotStatus::Valid(x), SlotStatus::Valid(y)) => {
            if y.sequence > x.sequence {
                Ok((y, 1))
            } else {
                Ok((x, 0))
            }
        }
        (SlotStatus::Valid(x), _) => Ok((x, 0)),
        (_, SlotStatus::Valid(y)) => Ok((y, 1)),
        // Slot A is the one written at creation: its error is the informative one.
        (SlotStatus::Invalid(e), _) => Err(e),
        (SlotStatus::Empty, SlotStatus::Invalid(e)) => Err(e),
        (SlotStatus::Empty, SlotStatus::Empty) => Err(HeaderError::NotEncrypted),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::DataKey;

    fn sample() -> Header {
        Header {
            format: FORMAT_VERSION,
            sequence: 3,
            db_uuid: [9; 16],
            dek_created: 1_700_000_000,
            key: KeyRef { uri: "local:1234".into(), version: 2 },
            wrapped_dek: vec![5; 120],
            kcv: [7; 32],
            rekey: None,
        }
    }

    fn meta() -> MetaKey {
        MetaKey::derive(&DataKey::generate().unwrap())
    }

    #[test]
    fn round_trip_and_slot_choice() {
        let m = meta();
        let h = sample();
        let mut region = vec![0u8; HEADER_REGION_LEN];
        region[..SLOT_LEN].copy_from_slice(&h.encode(&m).unwrap());
        let mut newer = h.clone();
        newer.sequence = 4;
        newer.rekey = Some(RekeyState {
            key: KeyRef { uri: "local:1234".into(), version: 3 },
            wrapped_dek: vec![1; 100],
            kcv: [2; 32],
            progress: 4096,
        });
        region[SLOT_LEN..].copy_from_slice(&newer.encode(&m).unwrap());
        assert_eq!(choose_slot(&region).unwrap(), (newer.clone(), 1));
        assert_eq!(authenticate(&region, 1, &m), Ok(true));
        assert_eq!(authenticate(&region, 0, &m), Ok(true));
        // A torn newer slot falls back to the older one.
        region[SLOT_LEN + 100] ^= 1;
        assert_eq!(choose_slot(&region).unwrap(), (h, 0));
    }

    #[test]
    fn a_slot_written_without_the_key_fails_authentication() {
        let (m, other) = (meta(), meta());
        let mut region = vec![0u8; HEADER_REGION_LEN];
        region[..SLOT_LEN].copy_from_slice(&sample().encode(&m).unwrap());
        // Edited and re-checksummed, as an attacker without the DEK can.
        let mut forged = region.clone();
        forged[864] = 1;
        forged[12] = 1;
        seal(&mut forged[..SLOT_LEN]);
        assert!(matches!(choose_slot(&forged), Ok((ref h, 0)) if h.rekey.is_some()));
        assert_eq!(authenticate(&forged, 0, &m), Err(HeaderError::Forged { slot: 'A' }));
        // MACed under another DEK (the attacker's own).
        region[..SLOT_LEN].copy_from_slice(&sample().encode(&other).unwrap());
        assert_eq!(authenticate(&region, 0, &m), Err(HeaderError::Forged { slot: 'A' }));
    }

    #[test]
    fn format_1_slots_read_but_lose_to_format_2() {
        let m = meta();
        let mut h1 = sample();
        h1.format = FORMAT_VERSION_1;
        let mut region = vec![0u8; HEADER_REGION_LEN];
        region[..SLOT_LEN].copy_from_slice(&h1.encode_format_1().unwrap());
        assert_eq!(choose_slot(&region).unwrap(), (h1.clone(), 0));
        assert_eq!(authenticate(&region, 0, &m), Ok(false));
        // A format 2 slot next to it wins even with a lower sequence number.
        let mut h2 = sample();
        h2.sequence = 1;
        region[SLOT_LEN..].copy_from_slice(&h2.encode(&m).unwrap());
        assert_eq!(choose_slot(&region).unwrap(), (h2, 1));
    }

    #[test]
    fn non_canonical_format_2_slot_is_refused() {
        let m = meta();
        let mut b = sample().encode(&m).unwrap();
        b[1700] = 1; // between the fields and the MAC
        seal(&mut b);
        assert!(matches!(Header::decode(&b), SlotStatus::Invalid(HeaderError::Corrupt(_))));
        let mut b = sample().encode(&m).unwrap();
        b[64 + 10] = b'x'; // past the key reference's length
        seal(&mut b);
        assert!(matches!(Header::decode(&b), SlotStatus::Invalid(HeaderError::Corrupt(_))));
    }

    #[test]
    fn classifies_bad_regions() {
        let mut plain = vec![0u8; HEADER_REGION_LEN];
        plain[..16].copy_from_slice(SQLITE_MAGIC);
        assert_eq!(choose_slot(&plain), Err(HeaderError::PlainSqlite));
        assert_eq!(choose_slot(&[1u8; 100]), Err(HeaderError::NotEncrypted));
        assert_eq!(choose_slot(&[1u8; HEADER_REGION_LEN]), Err(HeaderError::NotEncrypted));
        let enc = sample().encode(&meta()).unwrap();
        assert_eq!(choose_slot(&enc[..3000]), Err(HeaderError::Truncated));
        let mut bad = vec![0u8; HEADER_REGION_LEN];
        bad[..SLOT_LEN].copy_from_slice(&enc);
        bad[40] ^= 0x10;
        assert!(matches!(choose_slot(&bad), Err(HeaderError::Corrupt(_))));
    }
}

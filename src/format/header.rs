//! The header region of an encrypted main database file: two 4 KiB slots (A at 0, B at 4096),
//! each a complete, checksummed copy of the header with a sequence number. Updates write the
//! slot that does not hold the newest valid copy, then sync, so a torn write can only damage
//! the copy being replaced. SQLite's page 1 starts at [`HEADER_REGION_LEN`].

use sha2::{Digest, Sha256};

use crate::crypto::KCV_LEN;

/// Magic at offset 0 of each slot.
pub const MAGIC: [u8; 8] = *b"SQLTDE\x00\x01";
/// Current header format version.
pub const FORMAT_VERSION: u16 = 1;
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

const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// Which KMS key wraps a DEK: a provider-qualified key URI and the key version used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRef {
    /// `local:<key-id>`, `kmsd:<key-id>`, `openbao+https://host:port/mount/key`, ...
    pub uri: String,
    /// Version of the key's material that produced the wrapped DEK.
    pub version: u32,
}

impl KeyRef {
    /// The provider part of the URI (before the first `:`).
    pub fn provider(&self) -> &str {
        self.uri.split(':').next().unwrap_or("")
    }
    /// The key id: the part after `provider:` for key-id providers (`local:<id>`), or the
    /// whole URI for URL-addressed keys (`openbao+https://host/mount/key`).
    pub fn key_id(&self) -> &str {
        match self.uri.split_once(':') {
            Some((_, rest)) if !rest.starts_with("//") => rest,
            _ => &self.uri,
        }
    }
}

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
    #[error("unsupported sqlite-tde format version {0} (this build reads version {FORMAT_VERSION})")]
    UnsupportedVersion(u16),
    #[error("unsupported cipher id {0}")]
    UnsupportedCipher(u16),
    #[error("corrupt sqlite-tde header: {0}")]
    Corrupt(String),
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
    /// Serialise into one slot image (`SLOT_LEN` bytes, checksum included).
    pub fn encode(&self) -> Result<Vec<u8>, HeaderError> {
        let mut b = vec![0u8; SLOT_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
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
            b[1656..1688].copy_from_slice(&r.kcv);
        }
        let sum = Sha256::digest(&b[..CHECKSUM_AT]);
        b[CHECKSUM_AT..SLOT_USED_LEN].copy_from_slice(&sum);
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
        if version != FORMAT_VERSION {
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
        Ok(Header {
            sequence: u64_at(b, 16),
            db_uuid: b[32..48].try_into().unwrap(),
            dek_created: u64_at(b, 48),
            key,
            wrapped_dek,
            kcv: b[832..864].try_into().unwrap(),
            rekey,
        })
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
    let a = Header::decode(&region[..SLOT_LEN]);
    let b = Header::decode(&region[SLOT_LEN..HEADER_REGION_LEN]);
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

    fn sample() -> Header {
        Header {
            sequence: 3,
            db_uuid: [9; 16],
            dek_created: 1_700_000_000,
            key: KeyRef { uri: "local:1234".into(), version: 2 },
            wrapped_dek: vec![5; 120],
            kcv: [7; 32],
            rekey: None,
        }
    }

    #[test]
    fn round_trip_and_slot_choice() {
        let h = sample();
        let mut region = vec![0u8; HEADER_REGION_LEN];
        region[..SLOT_LEN].copy_from_slice(&h.encode().unwrap());
        let mut newer = h.clone();
        newer.sequence = 4;
        newer.rekey = Some(RekeyState {
            key: KeyRef { uri: "local:1234".into(), version: 3 },
            wrapped_dek: vec![1; 100],
            kcv: [2; 32],
            progress: 4096,
        });
        region[SLOT_LEN..].copy_from_slice(&newer.encode().unwrap());
        assert_eq!(choose_slot(&region).unwrap(), (newer.clone(), 1));
        // A torn newer slot falls back to the older one.
        region[SLOT_LEN + 100] ^= 1;
        assert_eq!(choose_slot(&region).unwrap(), (h, 0));
    }

    #[test]
    fn classifies_bad_regions() {
        let mut plain = vec![0u8; HEADER_REGION_LEN];
        plain[..16].copy_from_slice(SQLITE_MAGIC);
        assert_eq!(choose_slot(&plain), Err(HeaderError::PlainSqlite));
        assert_eq!(choose_slot(&[1u8; 100]), Err(HeaderError::NotEncrypted));
        assert_eq!(choose_slot(&[1u8; HEADER_REGION_LEN]), Err(HeaderError::NotEncrypted));
        let enc = sample().encode().unwrap();
        assert_eq!(choose_slot(&enc[..3000]), Err(HeaderError::Truncated));
        let mut bad = vec![0u8; HEADER_REGION_LEN];
        bad[..SLOT_LEN].copy_from_slice(&enc);
        bad[40] ^= 0x10;
        assert!(matches!(choose_slot(&bad), Err(HeaderError::Corrupt(_))));
    }
}

//! Authentication of tde's own metadata (header slots, rekey journal records, in-place
//! encryption state): HMAC-SHA256 under keys derived from the DEK the structure concerns, so
//! that write access to the files without the DEK cannot forge state that makes tde act.
//!
//! Derivation (docs/FORMAT.md §11): `PRK = HKDF-Extract(salt = "sqlite-tde/metadata/v2", DEK)`,
//! kept for the life of the cipher; each structure has its own key
//! `HKDF-Expand(PRK, "sqlite-tde/mac/" || purpose, 32)`, so a MAC of one kind can never be
//! replayed as another. The page cipher never sees these keys, and they reveal nothing about
//! the DEK.

use hmac::{KeyInit, Mac};
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

use super::DataKey;

/// Bytes of a metadata MAC.
pub const MAC_LEN: usize = 32;

const SALT: &[u8] = b"sqlite-tde/metadata/v2";

/// What a MAC authenticates; each has its own derived key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MacPurpose {
    /// A header slot (format 2), under the DEK the slot names as the database's DEK.
    HeaderSlot,
    /// A rekey journal record, under the DEK being replaced (the record holds its ciphertext).
    RekeyJournal,
    /// An in-place encryption state slot, under the DEK the conversion encrypts to.
    ConvertState,
    /// An in-place encryption chunk record (the plaintext being moved), same DEK.
    ConvertChunk,
}

impl MacPurpose {
    fn label(self) -> &'static [u8] {
        match self {
            MacPurpose::HeaderSlot => b"sqlite-tde/mac/header-slot",
            MacPurpose::RekeyJournal => b"sqlite-tde/mac/rekey-journal",
            MacPurpose::ConvertState => b"sqlite-tde/mac/convert-state",
            MacPurpose::ConvertChunk => b"sqlite-tde/mac/convert-chunk",
        }
    }
}

/// The metadata key root of one DEK. Not `Clone`; wiped on drop; `Debug` prints nothing.
pub struct MetaKey {
    prk: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for MetaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetaKey([REDACTED])")
    }
}

type HmacSha256 = hmac::Hmac<Sha256>;

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC accepts any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

impl MetaKey {
    /// Derive from a DEK (HKDF-Extract, RFC 5869).
    pub fn derive(dek: &DataKey) -> MetaKey {
        MetaKey { prk: Zeroizing::new(hmac(SALT, &[dek.expose()])) }
    }

    /// The MAC of the concatenation of `parts`, under the key of `purpose`.
    pub fn mac(&self, purpose: MacPurpose, parts: &[&[u8]]) -> [u8; MAC_LEN] {
        // HKDF-Expand with a 32-byte output is one block: T(1) = HMAC(PRK, info || 0x01).
        let mut key = hmac(&self.prk[..], &[purpose.label(), &[1u8]]);
        let out = hmac(&key, parts);
        key.zeroize();
        out
    }

    /// Does `tag` authenticate `parts` under `purpose`? Constant time in the tag.
    pub fn verify(&self, purpose: MacPurpose, parts: &[&[u8]], tag: &[u8]) -> bool {
        let want = self.mac(purpose, parts);
        tag.len() == MAC_LEN && want.iter().zip(tag).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purposes_and_keys_are_separated() {
        let k1 = DataKey::generate().unwrap();
        let k2 = DataKey::generate().unwrap();
        let (m1, m2) = (MetaKey::derive(&k1), MetaKey::derive(&k2));
        let t = m1.mac(MacPurpose::HeaderSlot, &[b"abc", b"def"]);
        assert!(m1.verify(MacPurpose::HeaderSlot, &[b"abcdef"], &t), "MAC of the concatenation");
        assert!(!m1.verify(MacPurpose::RekeyJournal, &[b"abcdef"], &t));
        assert!(!m2.verify(MacPurpose::HeaderSlot, &[b"abcdef"], &t));
        assert!(!m1.verify(MacPurpose::HeaderSlot, &[b"abcdeg"], &t));
        assert!(!m1.verify(MacPurpose::HeaderSlot, &[b"abcdef"], &t[..31]));
    }

    #[test]
    fn known_answer() {
        // Computed independently (Python's hmac/hashlib, RFC 5869 HKDF-SHA256 by hand).
        let dek = DataKey::from_slice(&(0..64u8).collect::<Vec<_>>()).unwrap();
        let tag = MetaKey::derive(&dek).mac(MacPurpose::HeaderSlot, &[b"x"]);
        let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "171a02875f67d1d7fbf9a08bc3be43c8aa472aa5f452417649d6a8d58fe56ae6");
    }
}

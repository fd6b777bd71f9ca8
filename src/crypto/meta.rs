//! Authentication of tde's own metadata (header slots, rekey journal records, in-place
//! encryption state): HMAC-SHA256 under keys derived from the DEK the structure concerns, so
//! that write access to the files without the DEK cannot forge state that makes tde act.
//!
//! Derivation (docs/FORMAT.md §11): each structure has its own key
//! `K = HKDF-Expand(PRK = DEK, "sqlite-tde/mac/" || purpose, 32)` — the DEK is already a uniformly
//! random key, so the extract step is skipped (RFC 5869 §3.3) — computed once when the cipher is
//! built and kept with it; a MAC of one kind can never be replayed as another. The page cipher
//! never sees these keys, and they reveal nothing about the DEK. The DEK is only ever an HMAC
//! key here, as for the key-check value (whose stack hygiene tests/reliability_keys.rs checks).

use hmac::{KeyInit, Mac};
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

use super::DataKey;

/// Bytes of a metadata MAC.
pub const MAC_LEN: usize = 32;

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
    const ALL: [MacPurpose; 4] =
        [MacPurpose::HeaderSlot, MacPurpose::RekeyJournal, MacPurpose::ConvertState, MacPurpose::ConvertChunk];

    fn index(self) -> usize {
        match self {
            MacPurpose::HeaderSlot => 0,
            MacPurpose::RekeyJournal => 1,
            MacPurpose::ConvertState => 2,
            MacPurpose::ConvertChunk => 3,
        }
    }

    fn label(self) -> &'static [u8] {
        match self {
            MacPurpose::HeaderSlot => b"sqlite-tde/mac/header-slot",
            MacPurpose::RekeyJournal => b"sqlite-tde/mac/rekey-journal",
            MacPurpose::ConvertState => b"sqlite-tde/mac/convert-state",
            MacPurpose::ConvertChunk => b"sqlite-tde/mac/convert-chunk",
        }
    }
}

/// The metadata MAC keys of one DEK. Not `Clone`; wiped on drop; `Debug` prints nothing.
pub struct MetaKey {
    keys: Zeroizing<[[u8; 32]; 4]>,
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
    /// Derive from a DEK.
    pub fn derive(dek: &DataKey) -> MetaKey {
        let mut keys = Zeroizing::new([[0u8; 32]; 4]);
        for p in MacPurpose::ALL {
            // HKDF-Expand with a 32-byte output is one block: T(1) = HMAC(PRK, info || 0x01).
            let mut k = hmac(dek.expose(), &[p.label(), &[1u8]]);
            keys[p.index()] = k;
            k.zeroize();
        }
        MetaKey { keys }
    }

    /// The MAC of the concatenation of `parts`, under the key of `purpose`.
    pub fn mac(&self, purpose: MacPurpose, parts: &[&[u8]]) -> [u8; MAC_LEN] {
        hmac(&self.keys[purpose.index()], parts)
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
        // Computed independently (Python's hmac/hashlib: HMAC(HMAC(DEK, label || 1), "x")).
        let dek = DataKey::from_slice(&(0..64u8).collect::<Vec<_>>()).unwrap();
        let tag = MetaKey::derive(&dek).mac(MacPurpose::HeaderSlot, &[b"x"]);
        let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "af2fd2ab64eb6da4946db6702b51a332d83d6e61dc0fb513618d0c6e001d28c9");
    }
}

//! Plaintext key material leaving the KMS, and the randomness the KMS draws.
//!
//! A data key crosses the crate boundary as [`PlaintextDataKey`]: heap-held (moves leave no
//! stack copies), wiped on drop, neither `Clone` nor printable. The VFS turns it into its
//! cipher key and drops it; what the bytes mean (two XTS halves) is the VFS's business.

use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::KmsError;

/// Length of the data keys this KMS generates and unwraps for databases (512 bits: the two
/// 256-bit halves of an AES-256-XTS key).
pub const DATA_KEY_LEN: usize = 64;

/// A plaintext data key as a provider returned it.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct PlaintextDataKey(Box<[u8; DATA_KEY_LEN]>);

impl PlaintextDataKey {
    /// Fresh random key material.
    pub fn random() -> Result<PlaintextDataKey, KmsError> {
        let mut key = PlaintextDataKey(Box::new([0u8; DATA_KEY_LEN]));
        fill_random(&mut key.0[..])?;
        Ok(key)
    }

    /// Copy key bytes a provider unwrapped (the caller wipes its own buffer, `Zeroizing`).
    pub fn from_slice(bytes: &[u8]) -> Result<PlaintextDataKey, KmsError> {
        if bytes.len() != DATA_KEY_LEN {
            return Err(KmsError::DataKeyLength { got: bytes.len(), expected: DATA_KEY_LEN });
        }
        let mut key = PlaintextDataKey(Box::new([0u8; DATA_KEY_LEN]));
        key.0.copy_from_slice(bytes);
        Ok(key)
    }

    /// Borrow the bytes (to build a cipher key, or to wrap them).
    pub fn expose(&self) -> &[u8; DATA_KEY_LEN] {
        &self.0
    }
}

impl std::fmt::Debug for PlaintextDataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PlaintextDataKey(<redacted>)")
    }
}

/// Fill `buf` from the operating system's random generator.
pub(crate) fn fill_random(buf: &mut [u8]) -> Result<(), KmsError> {
    getrandom::fill(buf).map_err(|e| KmsError::Random(e.to_string()))
}

/// A fresh random array.
pub(crate) fn random_array<const N: usize>() -> Result<[u8; N], KmsError> {
    let mut out = [0u8; N];
    fill_random(&mut out)?;
    Ok(out)
}

//! Cryptographic primitives: the page cipher (AES-256-XTS), secret key types, the key-check
//! value, metadata MACs and tweak derivation. Nothing here does I/O.

mod kcv;
mod keys;
mod meta;
mod random;
mod tweak;
mod unwrapped;
mod xts;

pub use kcv::{kcv_matches, key_check_value, KCV_LEN};
pub use keys::{scrub_stack, with_scrubbed_stack, DataKey, DATA_KEY_LEN};
pub use meta::{MacPurpose, MetaKey, MAC_LEN};
pub use random::{fill_random, random_array};
pub use tweak::{Domain, DATA_UNIT, DATA_UNIT_LOG2};
pub use unwrapped::{new_cipher, verified_cipher};
pub use xts::XtsCipher;

/// Errors of the crypto layer.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// AES-XTS requires two independent key halves (IEEE 1619, FIPS 140 IG C.I).
    #[error("invalid XTS key: the two 256-bit halves are equal")]
    EqualKeyHalves,
    /// A key had the wrong length.
    #[error("invalid key length {got}, expected {expected}")]
    KeyLength { got: usize, expected: usize },
    /// The operating system's random generator failed.
    #[error("random number generator failed: {0}")]
    Random(String),
}

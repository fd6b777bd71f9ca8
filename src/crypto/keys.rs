//! Secret key material as types: zeroized on drop, never `Clone`, `Debug` prints nothing.

use zeroize::{Zeroize, ZeroizeOnDrop};

use super::{fill_random, CryptoError};

/// Length of a data key: AES-256-XTS takes two 256-bit keys.
pub const DATA_KEY_LEN: usize = 64;

/// A plaintext data encryption key (DEK). Lives on the heap so moves do not leave copies on
/// the stack; wiped when dropped.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct DataKey(Box<[u8; DATA_KEY_LEN]>);

impl DataKey {
    /// A new random key whose halves differ.
    pub fn generate() -> Result<DataKey, CryptoError> {
        let mut key = DataKey(Box::new([0u8; DATA_KEY_LEN]));
        loop {
            fill_random(&mut key.0[..])?;
            if key.halves_differ() {
                return Ok(key);
            }
        }
    }

    /// Take ownership of key bytes (e.g. unwrapped by a KMS). The source slice is not wiped:
    /// callers pass memory they wipe themselves (`Zeroizing`).
    pub fn from_slice(bytes: &[u8]) -> Result<DataKey, CryptoError> {
        if bytes.len() != DATA_KEY_LEN {
            return Err(CryptoError::KeyLength { got: bytes.len(), expected: DATA_KEY_LEN });
        }
        let mut key = DataKey(Box::new([0u8; DATA_KEY_LEN]));
        key.0.copy_from_slice(bytes);
        if !key.halves_differ() {
            return Err(CryptoError::EqualKeyHalves);
        }
        Ok(key)
    }

    /// Borrow the raw bytes (for wrapping and cipher setup only).
    pub fn expose(&self) -> &[u8; DATA_KEY_LEN] {
        &self.0
    }

    fn halves_differ(&self) -> bool {
        // Not secret-dependent timing that matters: equal halves are rejected either way.
        self.0[..32] != self.0[32..]
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey([REDACTED])")
    }
}

/// Overwrite the stack below the caller's frame, where functions that handled key material
/// (KMS unwrap, HMAC, AES key expansion) left copies of it in their dead frames: Rust cannot
/// wipe a value's stack copies made by moves and by library code. Call it right after such a
/// function returned, from a frame at least as shallow (the idea of libsodium's
/// `sodium_stackzero`). 64 KiB covers the deepest key-handling path measured
/// (tests/reliability_keys.rs scans the process memory for the key after eviction).
#[inline(never)]
pub fn scrub_stack() {
    let mut area = [0u8; 64 * 1024];
    // Volatile writes: the compiler may not elide them although `area` is never read.
    area.zeroize();
    std::hint::black_box(&area);
}

/// Overwrite 4 KiB of the stack below the caller's frame: enough for the frame of one block
/// cipher call, cheap enough (512 word stores) to follow every page encryption. The `aes`
/// crate's VAES backends copy the round keys (broadcast to 256 bits, the decryption schedule
/// too) into their own frame on every multi-block call, and nothing wipes that frame.
#[inline(never)]
pub fn scrub_stack_small() {
    let mut area = [0u64; 512];
    area.zeroize();
    std::hint::black_box(&area);
}

/// Run `f`, which handles plaintext key material, in frames below this one, then wipe them
/// with [`scrub_stack`].
pub fn with_scrubbed_stack<T>(f: impl FnOnce() -> T) -> T {
    let r = in_own_frame(f);
    scrub_stack();
    r
}

#[inline(never)]
fn in_own_frame<T>(f: impl FnOnce() -> T) -> T {
    f()
}

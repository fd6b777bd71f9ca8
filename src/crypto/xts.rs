//! AES-256-XTS (IEEE 1619) without ciphertext stealing, batched for speed.
//!
//! The `xts-mode` crate processes one block per cipher call. Here the tweaks of a whole data
//! unit segment are computed first (one AES call per unit plus a doubling per block), XORed
//! in, and the blocks go through the `aes` crate's runtime-dispatched multi-block backend
//! (VAES-512 / VAES-256 / AES-NI) in one call, in place in the caller's buffer. The output is
//! byte-identical to `xts-mode` (tests cross-check it).
//!
//! All lengths handled here are multiples of 16 bytes: the file layer pads the last partial
//! block of a file (see `format::size`), so ciphertext stealing is never needed.

use aes::cipher::{Array, BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};
use aes::Aes256;

use super::tweak::{Domain, DATA_UNIT};
use super::DataKey;

const BLOCK: usize = 16;
const BLOCKS_PER_UNIT: usize = DATA_UNIT / BLOCK;

/// An AES-256-XTS cipher with expanded round keys for both halves. Not `Clone`: the round keys
/// are secret and are wiped when this is dropped (the `aes` crate's `zeroize` feature).
pub struct XtsCipher {
    data: Aes256,
    tweak: Aes256,
}

impl std::fmt::Debug for XtsCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("XtsCipher([REDACTED])")
    }
}

/// Multiply a tweak by the primitive element alpha of GF(2^128) (IEEE 1619 little-endian
/// convention). Branch-free.
#[inline(always)]
fn mul_alpha(t: u128) -> u128 {
    (t << 1) ^ ((t >> 127) * 0x87)
}

#[inline(always)]
fn xor_tweaks(buf: &mut [u8], tweaks: &[u128]) {
    for (chunk, t) in buf.chunks_exact_mut(BLOCK).zip(tweaks) {
        let v = u128::from_le_bytes(chunk.try_into().expect("16-byte chunk")) ^ t;
        chunk.copy_from_slice(&v.to_le_bytes());
    }
}

impl XtsCipher {
    /// Expand both key halves. `DataKey` already guarantees the halves differ.
    pub fn new(key: &DataKey) -> XtsCipher {
        let k = key.expose();
        XtsCipher {
            data: Aes256::new_from_slice(&k[..32]).expect("32-byte key"),
            tweak: Aes256::new_from_slice(&k[32..]).expect("32-byte key"),
        }
    }

    /// Encrypt, in place, the bytes at logical `offset` of a file in `domain`.
    /// `offset` and `buf.len()` must be multiples of 16.
    pub fn encrypt(&self, domain: Domain, offset: u64, buf: &mut [u8]) {
        self.process(domain, offset, buf, true)
    }

    /// Decrypt, in place, the bytes at logical `offset` of a file in `domain`.
    pub fn decrypt(&self, domain: Domain, offset: u64, buf: &mut [u8]) {
        self.process(domain, offset, buf, false)
    }

    fn process(&self, domain: Domain, offset: u64, buf: &mut [u8], encrypt: bool) {
        assert!(
            offset % BLOCK as u64 == 0 && buf.len() % BLOCK == 0,
            "XTS range must be block aligned"
        );
        let mut pos = offset;
        let mut rest = buf;
        while !rest.is_empty() {
            let unit = pos / DATA_UNIT as u64;
            let in_unit = (pos % DATA_UNIT as u64) as usize;
            let take = (DATA_UNIT - in_unit).min(rest.len());
            let (seg, tail) = rest.split_at_mut(take);
            self.unit_segment(domain.tweak(unit), in_unit / BLOCK, seg, encrypt);
            pos += take as u64;
            rest = tail;
        }
    }

    /// Process blocks `first_block..` of one data unit whose tweak value is `tweak_value`.
    /// Public for known-answer tests with IEEE 1619 vectors.
    pub fn unit_segment(&self, tweak_value: u128, first_block: usize, seg: &mut [u8], encrypt: bool) {
        let n = seg.len() / BLOCK;
        assert!(seg.len() % BLOCK == 0 && first_block + n <= BLOCKS_PER_UNIT.max(first_block + n));
        let mut t_block = Array::from(tweak_value.to_le_bytes());
        self.tweak.encrypt_block(&mut t_block);
        let mut t = u128::from_le_bytes(t_block.into());
        for _ in 0..first_block {
            t = mul_alpha(t);
        }
        // Tweaks for up to one data unit live on the stack; longer segments (only from the raw
        // KAT entry point) are processed in unit-sized pieces with the tweak carried over.
        let mut tweaks = [0u128; BLOCKS_PER_UNIT];
        for piece in seg.chunks_mut(DATA_UNIT) {
            let m = piece.len() / BLOCK;
            for slot in tweaks.iter_mut().take(m) {
                *slot = t;
                t = mul_alpha(t);
            }
            xor_tweaks(piece, &tweaks[..m]);
            let (blocks, _) = Array::slice_as_chunks_mut(piece);
            if encrypt {
                self.data.encrypt_blocks(blocks);
            } else {
                self.data.decrypt_blocks(blocks);
            }
            xor_tweaks(piece, &tweaks[..m]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpha_multiplication_carries_into_low_byte() {
        assert_eq!(mul_alpha(1), 2);
        assert_eq!(mul_alpha(1u128 << 127), 0x87);
    }
}

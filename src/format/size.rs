//! Logical file length <-> physical length of the encrypted bytes.
//!
//! XTS works on whole 16-byte blocks, but SQLite's journals and WAL have byte-granular lengths
//! (journal records are `page + 8` bytes, WAL frames `page + 24`). A partial last block is
//! stored padded to 16 bytes, and the number of real bytes in it, `m = L mod 16`, is encoded
//! in the physical length by appending `m` zero marker bytes after the padded block:
//!
//! ```text
//! P(L) = L                              if L mod 16 == 0
//!      = 16 * ceil(L / 16) + (L mod 16) otherwise
//! ```
//!
//! so every block's encoding is independent of the file length: appending never re-encrypts
//! differently bytes that were already there, a gap write needs no conversion of the old last
//! block, and truncation is a plain `ftruncate`. Marker bytes are zero, and a physical block
//! that is entirely zero reads as zero plaintext (the hole that a gap write or an extending
//! truncate leaves behind), so gaps read as zeros as in a plain file.

/// Physical length (bytes after the header region) that stores `logical` bytes.
pub fn physical_len(logical: u64) -> u64 {
    let m = logical % 16;
    if m == 0 {
        logical
    } else {
        (logical - m) + 16 + m
    }
}

/// Logical length stored in `physical` bytes. Lengths that no `physical_len` produces (a
/// torn extension) are read conservatively: only whole blocks that exist count.
pub fn logical_len(physical: u64) -> u64 {
    let m = physical % 16;
    if m == 0 {
        physical
    } else if physical < 16 {
        0
    } else {
        (physical - m - 16) + m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_small_length() {
        for l in 0..10_000u64 {
            assert_eq!(logical_len(physical_len(l)), l, "L={l}");
            assert!(physical_len(l) >= l && physical_len(l) < l + 32);
        }
    }

    #[test]
    fn aligned_lengths_are_unchanged() {
        assert_eq!(physical_len(4096), 4096);
        assert_eq!(physical_len(24), 32 + 8);
        assert_eq!(logical_len(40), 24);
        assert_eq!(logical_len(5), 0);
    }
}

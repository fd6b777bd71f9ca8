//! XTS tweak derivation, in one place.
//!
//! Every file is cut into data units of [`DATA_UNIT`] logical bytes. The 128-bit XTS tweak of
//! unit `n` of a file of domain `d` is the little-endian integer `n | d << 120`: the unit index
//! fills the low 64 bits (as in IEEE 1619's data-unit sequence number) and the top byte
//! separates file kinds, so equal plaintext at equal offsets in the database, its WAL and its
//! journal never yields equal ciphertext.

/// Bytes per XTS data unit (one tweak encryption per unit).
pub const DATA_UNIT: usize = 4096;
/// log2 of [`DATA_UNIT`], as recorded in the header.
pub const DATA_UNIT_LOG2: u8 = 12;

/// Tweak domain: which kind of file a unit belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Domain {
    /// Main database pages.
    Database = 0x01,
    /// Write-ahead log.
    Wal = 0x02,
    /// Rollback journal.
    Journal = 0x03,
    /// Temporary files (they also get their own ephemeral key).
    Temporary = 0x04,
}

impl Domain {
    /// The tweak value of data unit `unit` in this domain.
    pub fn tweak(self, unit: u64) -> u128 {
        (unit as u128) | ((self as u8 as u128) << 120)
    }
}

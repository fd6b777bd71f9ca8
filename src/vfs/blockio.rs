//! Encrypted byte-range I/O over a raw file: the logical bytes SQLite sees, stored as
//! AES-256-XTS blocks after an optional header region.
//!
//! Every write touches exactly the 16-byte blocks that overlap the requested range (partial
//! edge blocks are read, decrypted, merged and re-encrypted) plus, at end of file, the marker
//! bytes that encode the logical length (`format::size`). Nothing is ever written in the
//! clear: a range that cannot be encrypted is an error, not a pass-through.

use sqlite_vfs::{ErrorCode, ReadStatus, VfsError, VfsResult};

use crate::crypto::{Domain, XtsCipher};
use crate::format::{logical_len, physical_len};

const B: u64 = 16;

/// The raw (ciphertext) file under the encryption.
pub trait RawIo {
    /// Fill `buf` from `offset`; `Short` means the file ended and the rest is zero-filled.
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> VfsResult<ReadStatus>;
    fn write_at(&mut self, buf: &[u8], offset: u64) -> VfsResult<()>;
    fn set_len(&mut self, size: u64) -> VfsResult<()>;
    fn len(&mut self) -> VfsResult<u64>;
}

impl RawIo for sqlite_vfs::BaseFile {
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> VfsResult<ReadStatus> {
        self.read(buf, offset)
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> VfsResult<()> {
        self.write(buf, offset)
    }
    fn set_len(&mut self, size: u64) -> VfsResult<()> {
        self.truncate(size)
    }
    fn len(&mut self) -> VfsResult<u64> {
        self.file_size()
    }
}

#[inline]
fn floor16(x: u64) -> u64 {
    x & !(B - 1)
}
#[inline]
fn ceil16(x: u64) -> u64 {
    (x + B - 1) & !(B - 1)
}

/// Decrypt `buf` (ciphertext of logical blocks starting at `offset`), treating blocks that
/// are entirely zero on disk as zero plaintext (holes left by gap writes or extending
/// truncates; real ciphertext is all-zero with probability 2^-128).
fn decrypt_with_holes(cipher: &XtsCipher, domain: Domain, offset: u64, buf: &mut [u8]) {
    let mut holes: u64 = 0; // bitmap over the first 64 blocks; longer runs use the slow path
    let mut any = false;
    let mut many = false;
    for (i, chunk) in buf.chunks_exact(16).enumerate() {
        if u128::from_ne_bytes(chunk.try_into().unwrap()) == 0 {
            any = true;
            if i < 64 {
                holes |= 1 << i;
            } else {
                many = true;
            }
        }
    }
    if !any {
        cipher.decrypt(domain, offset, buf);
        return;
    }
    if many {
        // Rare: decrypt block by block, skipping holes.
        for (i, chunk) in buf.chunks_exact_mut(16).enumerate() {
            if u128::from_ne_bytes((&*chunk).try_into().unwrap()) != 0 {
                cipher.decrypt(domain, offset + (i as u64) * B, chunk);
            }
        }
        return;
    }
    cipher.decrypt(domain, offset, buf);
    for i in 0..64 {
        if holes & (1 << i) != 0 {
            buf[i * 16..i * 16 + 16].fill(0);
        }
    }
}

/// Encrypted view of one raw file.
pub struct EncryptedIo<'a, R: RawIo> {
    pub raw: &'a mut R,
    pub cipher: &'a XtsCipher,
    pub domain: Domain,
    /// Physical offset of logical byte 0 (the header region length for main databases).
    pub data_offset: u64,
    /// Reused buffer, so page I/O does not allocate.
    pub scratch: &'a mut Vec<u8>,
}

impl<R: RawIo> EncryptedIo<'_, R> {
    /// Logical length of the file.
    pub fn logical_size(&mut self) -> VfsResult<u64> {
        let p = self.raw.len()?;
        Ok(logical_len(p.saturating_sub(self.data_offset)))
    }

    /// Read logical bytes.
    pub fn read(&mut self, buf: &mut [u8], offset: u64) -> VfsResult<ReadStatus> {
        if buf.is_empty() {
            return Ok(ReadStatus::Full);
        }
        let end = offset + buf.len() as u64;
        let a = floor16(offset);
        let b = ceil16(end);
        // One block of read-ahead: if it exists, the logical length certainly covers `end`
        // (see format::size), so the common case costs no fstat.
        let span = (b - a) as usize;
        self.scratch.clear();
        self.scratch.resize(span + B as usize, 0);
        let status = self.raw.read_at(self.scratch, self.data_offset + a)?;
        let have_end = match status {
            ReadStatus::Full => end,
            ReadStatus::Short => {
                let l = self.logical_size()?;
                if offset >= l {
                    buf.fill(0);
                    return Ok(ReadStatus::Short);
                }
                end.min(l)
            }
        };
        let dec_end = ceil16(have_end);
        let dec = &mut self.scratch[..(dec_end - a) as usize];
        decrypt_with_holes(self.cipher, self.domain, a, dec);
        let n = (have_end - offset) as usize;
        let from = (offset - a) as usize;
        buf[..n].copy_from_slice(&dec[from..from + n]);
        if have_end < end {
            buf[n..].fill(0);
            Ok(ReadStatus::Short)
        } else {
            Ok(ReadStatus::Full)
        }
    }

    /// Plaintext of the logical block at `block_start`, with bytes at or beyond the logical
    /// length `l` zeroed (they are not file content).
    fn old_block(&mut self, block_start: u64, l: u64) -> VfsResult<[u8; 16]> {
        let mut blk = [0u8; 16];
        if block_start >= l {
            return Ok(blk);
        }
        self.raw.read_at(&mut blk, self.data_offset + block_start)?;
        decrypt_with_holes(self.cipher, self.domain, block_start, &mut blk);
        let valid = (l - block_start).min(B) as usize;
        blk[valid..].fill(0);
        Ok(blk)
    }

    /// Write logical bytes.
    pub fn write(&mut self, buf: &[u8], offset: u64) -> VfsResult<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let p = self.raw.len()?;
        if p != 0 && p < self.data_offset {
            return Err(VfsError::new(ErrorCode::Corrupt, "encrypted file is shorter than its header region"));
        }
        let l = logical_len(p.saturating_sub(self.data_offset));
        let end = offset + buf.len() as u64;
        let a = floor16(offset);
        let b = ceil16(end);
        let span = (b - a) as usize;
        let head = if offset > a { Some(self.old_block(a, l)?) } else { None };
        let tail = if end < b && (b - B != a || head.is_none()) { Some(self.old_block(b - B, l)?) } else { None };
        let new_l = l.max(end);
        let markers = if new_l == end { (end % B) as usize } else { 0 };
        self.scratch.clear();
        self.scratch.resize(span + markers, 0);
        if let Some(h) = head {
            self.scratch[..16].copy_from_slice(&h);
        }
        if let Some(t) = tail {
            self.scratch[span - 16..span].copy_from_slice(&t);
        }
        let from = (offset - a) as usize;
        self.scratch[from..from + buf.len()].copy_from_slice(buf);
        self.cipher.encrypt(self.domain, a, &mut self.scratch[..span]);
        self.raw.write_at(self.scratch, self.data_offset + a)?;
        let written_end = self.data_offset + a + self.scratch.len() as u64;
        let want = self.data_offset + physical_len(new_l);
        if p.max(written_end) != want {
            // Stale marker bytes of the old length lie beyond the new end: cut them off.
            self.raw.set_len(want)?;
        }
        Ok(())
    }

    /// Set the logical length.
    pub fn truncate(&mut self, size: u64) -> VfsResult<()> {
        let old = self.logical_size()?;
        let m = (size % B) as usize;
        // When shrinking into the middle of a block, that block keeps the discarded bytes in
        // its padding; re-encrypt it with them zeroed so a later extension reads zeros there.
        let last = if m != 0 && size < old { Some(self.old_block(floor16(size), size)?) } else { None };
        self.raw.set_len(self.data_offset + physical_len(size))?;
        if m != 0 {
            // Marker bytes must be zero so that a later gap write leaves a hole that reads as
            // zeros; after shrinking they still hold old ciphertext.
            let mut tail = [0u8; 32];
            match last {
                Some(mut blk) => {
                    self.cipher.encrypt(self.domain, floor16(size), &mut blk);
                    tail[..16].copy_from_slice(&blk);
                    self.raw.write_at(&tail[..16 + m], self.data_offset + floor16(size))?;
                }
                None => self.raw.write_at(&tail[..m], self.data_offset + ceil16(size))?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::crypto::DataKey;
    use proptest::prelude::*;

    /// An in-memory raw file with SQLite's read semantics.
    #[derive(Default, Clone)]
    pub struct MemFile(pub Vec<u8>);

    impl RawIo for MemFile {
        fn read_at(&mut self, buf: &mut [u8], offset: u64) -> VfsResult<ReadStatus> {
            let off = offset as usize;
            let n = self.0.len().saturating_sub(off).min(buf.len());
            if n > 0 {
                buf[..n].copy_from_slice(&self.0[off..off + n]);
            }
            buf[n..].fill(0);
            Ok(if n == buf.len() { ReadStatus::Full } else { ReadStatus::Short })
        }
        fn write_at(&mut self, buf: &[u8], offset: u64) -> VfsResult<()> {
            let end = offset as usize + buf.len();
            if self.0.len() < end {
                self.0.resize(end, 0);
            }
            self.0[offset as usize..end].copy_from_slice(buf);
            Ok(())
        }
        fn set_len(&mut self, size: u64) -> VfsResult<()> {
            self.0.resize(size as usize, 0);
            Ok(())
        }
        fn len(&mut self) -> VfsResult<u64> {
            Ok(self.0.len() as u64)
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Write(u64, Vec<u8>),
        Truncate(u64),
        Read(u64, usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u64..3000, proptest::collection::vec(any::<u8>(), 1..600)).prop_map(|(o, d)| Op::Write(o, d)),
            1 => (0u64..3000).prop_map(Op::Truncate),
            3 => (0u64..3200, 1usize..700).prop_map(|(o, n)| Op::Read(o, n)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// The encrypted file behaves exactly like a plain file under any sequence of
        /// unaligned writes, truncations and reads, and never stores a plaintext block.
        #[test]
        fn behaves_like_a_plain_file(ops in proptest::collection::vec(op(), 1..40), header in prop_oneof![Just(0u64), Just(8192u64)]) {
            let key = DataKey::generate().unwrap();
            let cipher = XtsCipher::new(&key);
            let mut raw = MemFile(vec![0xAA; header as usize]);
            let mut model: Vec<u8> = Vec::new();
            let mut scratch = Vec::new();
            for op in ops {
                let mut io = EncryptedIo { raw: &mut raw, cipher: &cipher, domain: Domain::Journal, data_offset: header, scratch: &mut scratch };
                match op {
                    Op::Write(o, d) => {
                        io.write(&d, o).unwrap();
                        let end = o as usize + d.len();
                        if model.len() < end { model.resize(end, 0); }
                        model[o as usize..end].copy_from_slice(&d);
                    }
                    Op::Truncate(n) => {
                        io.truncate(n).unwrap();
                        model.resize(n as usize, 0);
                    }
                    Op::Read(o, n) => {
                        let mut got = vec![0xEE; n];
                        let st = io.read(&mut got, o).unwrap();
                        let mut want = vec![0u8; n];
                        let avail = model.len().saturating_sub(o as usize).min(n);
                        if avail > 0 { want[..avail].copy_from_slice(&model[o as usize..o as usize + avail]); }
                        prop_assert_eq!(st == ReadStatus::Full, avail == n);
                        prop_assert_eq!(got, want);
                    }
                }
                prop_assert_eq!(io.logical_size().unwrap(), model.len() as u64);
            }
        }
    }

    #[test]
    fn no_plaintext_reaches_the_raw_file() {
        let key = DataKey::generate().unwrap();
        let cipher = XtsCipher::new(&key);
        let mut raw = MemFile::default();
        let mut scratch = Vec::new();
        let mut io = EncryptedIo { raw: &mut raw, cipher: &cipher, domain: Domain::Wal, data_offset: 0, scratch: &mut scratch };
        let marker = b"SECRET-MARKER-0123456789";
        for i in 0..50u64 {
            io.write(marker, i * 37).unwrap();
        }
        assert!(!raw.0.windows(8).any(|w| w == &marker[..8]));
    }
}

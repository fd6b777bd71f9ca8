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
#[allow(clippy::len_without_is_empty)] // a file length, never a collection
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

/// The first `len` bytes of the reusable buffer, grown (never shrunk) as needed. The contents
/// are stale: callers overwrite what they use, so page I/O neither allocates nor memsets.
#[inline]
fn scratch(v: &mut Vec<u8>, len: usize) -> &mut [u8] {
    if v.len() < len {
        v.resize(len, 0);
    }
    &mut v[..len]
}

/// Decrypt `buf` (ciphertext of logical blocks starting at `offset`), treating blocks that
/// are entirely zero on disk as zero plaintext (holes left by gap writes or extending
/// truncates; real ciphertext is all-zero with probability 2^-128).
fn decrypt_with_holes(cipher: &XtsCipher, domain: Domain, offset: u64, buf: &mut [u8]) {
    // Zero-block detection is fused into the decryption (free in the VAES kernel).
    if cipher.decrypt_unless_zero_block(domain, offset, buf) {
        return;
    }
    // Rare: a hole reads as zeros, which it already is; decrypt the runs between holes.
    let is_hole = |buf: &[u8], i: usize| buf[i * 16..i * 16 + 16].iter().all(|&x| x == 0);
    let blocks = buf.len() / 16;
    let mut i = 0;
    while i < blocks {
        if is_hole(buf, i) {
            i += 1;
            continue;
        }
        let start = i;
        while i < blocks && !is_hole(buf, i) {
            i += 1;
        }
        cipher.decrypt(domain, offset + start as u64 * B, &mut buf[start * 16..i * 16]);
    }
}

/// What a writer knows about its file from its own last writes, so that a run of unaligned
/// writes (WAL frames are a 24-byte header plus a page; journal records a page plus 8 bytes)
/// needs neither an fstat for the logical length nor a read-back of the block the previous
/// write ended in.
///
/// Valid only while nobody else can change the file: the owner resets it (`Default`) whenever
/// that may have happened (`vfs::file` does so on every lock change of the connection).
#[derive(Debug, Default, Clone)]
pub struct WriteCache {
    /// The file's logical length.
    pub len: Option<u64>,
    /// Plaintext of the partial block the last write ended in: (block start, bytes), with
    /// zeros past the logical length.
    pub tail: Option<(u64, [u8; 16])>,
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
    /// Knowledge kept between writes (see [`WriteCache`]); `None`: none kept.
    pub cache: Option<&'a mut WriteCache>,
}

impl<R: RawIo> EncryptedIo<'_, R> {
    /// Logical length of the file.
    pub fn logical_size(&mut self) -> VfsResult<u64> {
        let p = self.raw.len()?;
        Ok(logical_len(p.saturating_sub(self.data_offset)))
    }

    /// Read logical bytes.
    ///
    /// One raw read of exactly the blocks covering the range: block-aligned reads (every page
    /// read of a main database) go straight into the caller's buffer and are decrypted there;
    /// others go through the scratch buffer. No fstat unless the file ends inside the range,
    /// or possibly inside its last block (see below).
    pub fn read(&mut self, buf: &mut [u8], offset: u64) -> VfsResult<ReadStatus> {
        if buf.is_empty() {
            return Ok(ReadStatus::Full);
        }
        let len = buf.len();
        let end = offset + len as u64;
        let a = floor16(offset);
        let b = ceil16(end);
        let aligned = offset == a && end == b;
        let from = (offset - a) as usize;
        // Unaligned reads (SQLite's 16-byte peeks at page 1, journal and WAL headers) take one
        // block more than they need: a file that reaches past it has a logical length covering
        // the range whatever its last byte (physical >= b + 16 gives logical >= b, see
        // format::size), which saves the fstat below. `Short` then only says the file ends
        // before `b + 16`, and the fstat decides.
        let (status, past) = if aligned {
            (self.raw.read_at(buf, self.data_offset + a)?, false)
        } else {
            let span = (b - a) as usize;
            let st = self.raw.read_at(scratch(self.scratch, span + B as usize), self.data_offset + a)?;
            (st, st == ReadStatus::Full)
        };
        let have_end = match status {
            ReadStatus::Full => end,
            ReadStatus::Short => {
                // The physical file ends before `b` (`b + 16` for an unaligned read); bytes
                // past its end were zero-filled.
                let l = logical_len(self.raw.len()?.saturating_sub(self.data_offset));
                if l >= end {
                    // Only (part of) the extra block was missing: the range is there in full.
                    self.decrypt_into(buf, a, end, aligned, from);
                    return Ok(ReadStatus::Full);
                }
                if offset >= l {
                    buf.fill(0);
                    return Ok(ReadStatus::Short);
                }
                end.min(l)
            }
        };
        if have_end < end {
            let n = (have_end - offset) as usize;
            self.decrypt_into(buf, a, have_end, aligned, from);
            buf[n..].fill(0);
            return Ok(ReadStatus::Short);
        }
        if past {
            self.decrypt_into(buf, a, end, aligned, from);
            return Ok(ReadStatus::Full);
        }
        self.finish_read(buf, offset, a, end, aligned, from)
    }

    /// Decrypt the raw blocks read for `[a, have_end)` into `buf` (in place when aligned).
    fn decrypt_into(&mut self, buf: &mut [u8], a: u64, have_end: u64, aligned: bool, from: usize) {
        let dec_len = (ceil16(have_end) - a) as usize;
        let n = (have_end - a) as usize - from;
        if aligned {
            decrypt_with_holes(self.cipher, self.domain, a, &mut buf[..dec_len]);
        } else {
            let raw = &mut self.scratch[..dec_len];
            decrypt_with_holes(self.cipher, self.domain, a, raw);
            buf[..n].copy_from_slice(&raw[from..from + n]);
        }
    }

    /// A read whose raw blocks reached `b`: decrypt, then settle the one case a full raw read
    /// cannot (a partial last block ending inside the range).
    fn finish_read(
        &mut self,
        buf: &mut [u8],
        offset: u64,
        a: u64,
        end: u64,
        aligned: bool,
        from: usize,
    ) -> VfsResult<ReadStatus> {
        let len = buf.len();
        self.decrypt_into(buf, a, end, aligned, from);
        // A full raw read proves the physical length reaches `b`, and the logical length then
        // covers `end` unless the file's last block is a partial one ending inside the range
        // (physical length in (b, b + 16), format::size). That block's bytes past the logical
        // end are zero padding, so a nonzero last byte rules it out; only a zero last byte
        // needs the fstat.
        if buf[len - 1] == 0 {
            let l = logical_len(self.raw.len()?.saturating_sub(self.data_offset));
            if l < end {
                let keep = l.saturating_sub(offset).min(len as u64) as usize;
                buf[keep..].fill(0);
                return Ok(ReadStatus::Short);
            }
        }
        Ok(ReadStatus::Full)
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
    ///
    /// The logical length decides the marker bytes and the edge blocks' valid bytes: it comes
    /// from the write cache when the caller keeps one ([`WriteCache`]: a run of journal or WAL
    /// writes under one lock needs neither an fstat nor a read-back of the block the previous
    /// write ended in), else from an fstat.
    pub fn write(&mut self, buf: &[u8], offset: u64) -> VfsResult<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let end = offset + buf.len() as u64;
        let a = floor16(offset);
        let b = ceil16(end);
        let span = (b - a) as usize;
        let head_needed = offset > a;
        let tail_needed = end < b && (b - B != a || !head_needed);

        let (known_len, cached_tail) = match self.cache.as_deref() {
            Some(c) => (c.len, c.tail),
            None => (None, None),
        };
        let l = match known_len {
            Some(l) => l,
            None => {
                let p = self.raw.len()?;
                if p != 0 && p < self.data_offset {
                    return Err(VfsError::new(ErrorCode::Corrupt, "encrypted file is shorter than its header region"));
                }
                logical_len(p.saturating_sub(self.data_offset))
            }
        };
        let p = self.data_offset + physical_len(l);
        // Plaintext of an edge block: the one the previous write ended in, or read back.
        let edge = |io: &mut Self, start: u64| -> VfsResult<[u8; 16]> {
            match cached_tail {
                Some((at, blk)) if at == start => Ok(blk),
                _ => io.old_block(start, l),
            }
        };
        let head = if head_needed { Some(edge(self, a)?) } else { None };
        let tail = if tail_needed { Some(edge(self, b - B)?) } else { None };
        let markers = if l.max(end) == end { (end % B) as usize } else { 0 };
        let mut new_tail = None;
        let out = scratch(self.scratch, span + markers);
        // Every byte of `out[..span]` is written below (edge blocks, then the caller's
        // bytes); only the marker bytes need zeroing.
        out[span..].fill(0);
        if head.is_none() && tail.is_none() {
            // Block-aligned: encrypt straight from SQLite's (const) buffer, no copy.
            self.cipher.encrypt_to(self.domain, a, buf, &mut out[..span]);
        } else {
            if let Some(h) = head {
                out[..16].copy_from_slice(&h);
            }
            if let Some(t) = tail {
                out[span - 16..span].copy_from_slice(&t);
            }
            let from = (offset - a) as usize;
            out[from..from + buf.len()].copy_from_slice(buf);
            new_tail = (!end.is_multiple_of(B)).then(|| (b - B, out[span - 16..span].try_into().expect("16 bytes")));
            self.cipher.encrypt(self.domain, a, &mut out[..span]);
        }
        // Forget what this write may change before it can fail half-way.
        if let Some(c) = self.cache.as_deref_mut() {
            *c = WriteCache::default();
        }
        self.raw.write_at(out, self.data_offset + a)?;
        let written_end = self.data_offset + a + out.len() as u64;
        let want = self.data_offset + physical_len(l.max(end));
        if p.max(written_end) != want {
            // Stale marker bytes of the old length lie beyond the new end: cut them off.
            self.raw.set_len(want)?;
        }
        if let Some(c) = self.cache.as_deref_mut() {
            // Known afterwards: the length, and the block this write ended in (its bytes past
            // the logical end are zero: see `old_block`).
            *c = WriteCache { len: Some(l.max(end)), tail: new_tail };
        }
        Ok(())
    }

    /// Set the logical length.
    pub fn truncate(&mut self, size: u64) -> VfsResult<()> {
        if let Some(c) = self.cache.as_deref_mut() {
            *c = WriteCache::default();
        }
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
        if let Some(c) = self.cache.as_deref_mut() {
            c.len = Some(size);
        }
        Ok(())
    }
}

/// An in-memory raw file with SQLite's read semantics (a read past the end is zero-filled and
/// short): encrypted I/O without a file system, for tests and fuzzing.
#[derive(Debug, Default, Clone)]
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::crypto::DataKey;
    use proptest::prelude::*;

    pub use super::MemFile;

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

    /// Apply `ops` to an encrypted file and to a plain model; every read and the length must
    /// agree. The same ops also go to a second encrypted file through a [`WriteCache`] kept
    /// across them (as a journal or WAL handle does): its bytes on disk must equal the first's
    /// after every op (XTS is deterministic), so the cache changes what is read, never what is
    /// written.
    fn check_against_model(ops: Vec<Op>, header: u64, domain: Domain) -> Result<(), TestCaseError> {
        let key = DataKey::generate().unwrap();
        let cipher = XtsCipher::new(&key);
        let mut raw = MemFile(vec![0xAA; header as usize]);
        let mut cached_raw = raw.clone();
        let mut cache = WriteCache::default();
        let mut model: Vec<u8> = Vec::new();
        let mut scratch = Vec::new();
        for op in ops {
            {
                let mut io = EncryptedIo {
                    raw: &mut cached_raw,
                    cipher: &cipher,
                    domain,
                    data_offset: header,
                    scratch: &mut scratch,
                    cache: Some(&mut cache),
                };
                match &op {
                    Op::Write(o, d) => io.write(d, *o).unwrap(),
                    Op::Truncate(n) => io.truncate(*n).unwrap(),
                    Op::Read(o, n) => {
                        io.read(&mut vec![0; *n], *o).unwrap();
                    }
                }
            }
            let mut io = EncryptedIo {
                raw: &mut raw,
                cipher: &cipher,
                domain,
                data_offset: header,
                scratch: &mut scratch,
                cache: None,
            };
            match op {
                Op::Write(o, d) => {
                    io.write(&d, o).unwrap();
                    let end = o as usize + d.len();
                    if model.len() < end {
                        model.resize(end, 0);
                    }
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
                    if avail > 0 {
                        want[..avail].copy_from_slice(&model[o as usize..o as usize + avail]);
                    }
                    prop_assert_eq!(st == ReadStatus::Full, avail == n, "read {} at {}, length {}", n, o, model.len());
                    prop_assert_eq!(got, want);
                }
            }
            prop_assert_eq!(io.logical_size().unwrap(), model.len() as u64);
            prop_assert!(raw.0 == cached_raw.0, "a write through the cache stored other bytes");
        }
        Ok(())
    }

    /// Every file kind (the domain only changes the tweaks).
    fn domain() -> impl Strategy<Value = Domain> {
        prop_oneof![Just(Domain::Journal), Just(Domain::Wal), Just(Domain::Database)]
    }

    /// Block-aligned ranges (the fast paths: no scratch copy) mixed with unaligned ones, and
    /// data full of zero bytes, so reads often end on a zero byte next to a partial last
    /// block (the case that needs the fstat).
    fn aligned_op() -> impl Strategy<Value = Op> {
        let data = |max: usize| proptest::collection::vec(prop_oneof![3 => Just(0u8), 1 => any::<u8>()], 1..max);
        prop_oneof![
            3 => (0u64..200, 1usize..40, any::<u8>()).prop_map(|(k, m, fill)| {
                let mut d = vec![fill; m * 16];
                d[m * 16 - 1] = if k % 2 == 0 { 0 } else { fill };
                Op::Write(k * 16, d)
            }),
            2 => (0u64..3200, data(100)).prop_map(|(o, d)| Op::Write(o, d)),
            1 => (0u64..3300).prop_map(Op::Truncate),
            3 => (0u64..210, 1usize..40).prop_map(|(k, m)| Op::Read(k * 16, m * 16)),
            2 => (0u64..3300, 1usize..100).prop_map(|(o, n)| Op::Read(o, n)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// The encrypted file behaves exactly like a plain file under any sequence of
        /// unaligned writes, truncations and reads, and never stores a plaintext block.
        #[test]
        fn behaves_like_a_plain_file(ops in proptest::collection::vec(op(), 1..40), header in prop_oneof![Just(0u64), Just(8192u64)], domain in domain()) {
            check_against_model(ops, header, domain)?;
        }

        #[test]
        fn aligned_and_zero_heavy_io_behaves_like_a_plain_file(ops in proptest::collection::vec(aligned_op(), 1..60), header in prop_oneof![Just(0u64), Just(8192u64)], domain in domain()) {
            check_against_model(ops, header, domain)?;
        }
    }

    /// Counts `len` calls (fstat on a real file).
    struct Counting(MemFile, usize);
    impl RawIo for Counting {
        fn read_at(&mut self, buf: &mut [u8], offset: u64) -> VfsResult<ReadStatus> {
            self.0.read_at(buf, offset)
        }
        fn write_at(&mut self, buf: &[u8], offset: u64) -> VfsResult<()> {
            self.0.write_at(buf, offset)
        }
        fn set_len(&mut self, size: u64) -> VfsResult<()> {
            self.0.set_len(size)
        }
        fn len(&mut self) -> VfsResult<u64> {
            self.1 += 1;
            self.0.len()
        }
    }

    /// An uncached `EncryptedIo` over `raw`.
    fn io_over<'a>(
        raw: &'a mut Counting,
        cipher: &'a XtsCipher,
        scratch: &'a mut Vec<u8>,
        domain: Domain,
        data_offset: u64,
    ) -> EncryptedIo<'a, Counting> {
        EncryptedIo { raw, cipher, domain, data_offset, scratch, cache: None }
    }

    /// Page reads inside the file cost one raw read and no fstat, into the caller's buffer.
    #[test]
    fn page_reads_need_no_fstat() {
        let key = DataKey::generate().unwrap();
        let cipher = XtsCipher::new(&key);
        let mut raw = Counting(MemFile(vec![0; 8192]), 0);
        let mut scratch = Vec::new();
        let mut io = io_over(&mut raw, &cipher, &mut scratch, Domain::Database, 8192);
        let page: Vec<u8> = (0..4096u32).map(|i| (i % 251 + 1) as u8).collect();
        for p in 0..4u64 {
            io.write(&page, p * 4096).unwrap();
        }
        io.raw.1 = 0;
        io.scratch.clear();
        let mut buf = vec![0u8; 4096];
        for p in 0..4u64 {
            assert_eq!(io.read(&mut buf, p * 4096).unwrap(), ReadStatus::Full);
            assert_eq!(buf, page);
        }
        assert_eq!(io.raw.1, 0, "fstat calls");
        assert!(io.scratch.is_empty(), "aligned reads do not use the scratch buffer");
        // Past the end: short, zero-filled.
        assert_eq!(io.read(&mut buf, 4 * 4096).unwrap(), ReadStatus::Short);
        assert!(buf.iter().all(|&x| x == 0));
    }

    /// SQLite's 16-byte peeks (page 1's change counter at offset 24, which ends in zeros) need
    /// no fstat away from the end of the file; near the end the fstat still settles a partial
    /// last block, with the same answer as before.
    #[test]
    fn unaligned_peeks_ending_in_zeros_need_no_fstat_inside_the_file() {
        let key = DataKey::generate().unwrap();
        let cipher = XtsCipher::new(&key);
        let mut raw = Counting(MemFile(vec![0; 8192]), 0);
        let mut scratch = Vec::new();
        let mut io = io_over(&mut raw, &cipher, &mut scratch, Domain::Database, 8192);
        let mut page = vec![0u8; 4096];
        page[24..28].copy_from_slice(&[0, 0, 0, 7]);
        io.write(&page, 0).unwrap();
        io.write(&page, 4096).unwrap();
        io.raw.1 = 0;
        let mut peek = [0xffu8; 16];
        assert_eq!(io.read(&mut peek, 24).unwrap(), ReadStatus::Full);
        assert_eq!(peek, page[24..40]);
        assert_eq!(io.raw.1, 0, "fstat calls for a peek inside the file");
        // At the end of a file whose last block is partial (a journal), the answer is exact.
        let mut j = Counting(MemFile(Vec::new()), 0);
        let mut scratch = Vec::new();
        let mut jio = io_over(&mut j, &cipher, &mut scratch, Domain::Journal, 0);
        jio.write(&[0u8; 20], 0).unwrap();
        let mut buf = [0xffu8; 8];
        assert_eq!(jio.read(&mut buf, 12).unwrap(), ReadStatus::Full);
        assert_eq!(buf, [0u8; 8]);
        assert_eq!(jio.read(&mut buf, 16).unwrap(), ReadStatus::Short);
        assert_eq!(buf, [0u8; 8]);
        assert!(jio.raw.1 > 0, "near the end the fstat decides");
    }

    #[test]
    fn no_plaintext_reaches_the_raw_file() {
        let key = DataKey::generate().unwrap();
        let cipher = XtsCipher::new(&key);
        let mut raw = MemFile::default();
        let mut scratch = Vec::new();
        let mut io = EncryptedIo {
            raw: &mut raw,
            cipher: &cipher,
            domain: Domain::Wal,
            data_offset: 0,
            scratch: &mut scratch,
            cache: None,
        };
        let marker = b"SECRET-MARKER-0123456789";
        for i in 0..50u64 {
            io.write(marker, i * 37).unwrap();
        }
        assert!(!raw.0.windows(8).any(|w| w == &marker[..8]));
    }
}

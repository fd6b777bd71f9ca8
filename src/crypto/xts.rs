//! AES-256-XTS (IEEE 1619) without ciphertext stealing, batched for speed.
//!
//! Two implementations with byte-identical output (tests cross-check them against each other
//! and against the `xts-mode` crate):
//!
//! - **VAES-512** (x86-64 with AVX-512F/BW/VL, VAES and VPCLMULQDQ, detected once when the
//!   cipher is built): a fused kernel that keeps the 15 round keys in ZMM registers and
//!   processes 32 blocks (512 bytes) per iteration, 4 blocks per register. The tweaks of a
//!   data unit are computed four lanes at a time with carry-less multiplications (multiply by
//!   α^32 per iteration), the pre-whitening XOR of tweak and round key 0 is one `vpternlogq`,
//!   and the post-whitening tweak is folded into the last round key
//!   (`aesenclast(x, k ^ t) = aesenclast(x, k) ^ t`). Input and output may be the same buffer
//!   (in place) or different buffers (so the file layer decrypts straight from its read buffer
//!   into SQLite's page buffer without a separate copy). The `aes` crate's own VAES backend
//!   reaches only about a fifth of the hardware's throughput on 4 KiB pages (it copies its
//!   64-block batches through the stack), so the kernel uses the round instructions directly.
//! - **portable**: the `aes` crate's runtime-dispatched multi-block backend (VAES / AES-NI /
//!   constant-time software), with the tweaks of a data unit computed first, XORed in, the
//!   blocks encrypted in one call, and the tweaks XORed again. Used everywhere else.
//!
//! All lengths handled here are multiples of 16 bytes: the file layer pads the last partial
//! block of a file (see `format::size`), so ciphertext stealing is never needed.

use aes::cipher::{Array, BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};
use aes::Aes256;

use super::meta::MetaKey;
use super::tweak::{Domain, DATA_UNIT};
use super::DataKey;

const BLOCK: usize = 16;
const BLOCKS_PER_UNIT: usize = DATA_UNIT / BLOCK;

/// Implementation names, best first (see [`XtsCipher::backend`]).
const BACKEND_VAES512: &str = "vaes512";
const BACKEND_PORTABLE: &str = "portable";

/// An AES-256-XTS cipher with expanded round keys for both halves. Not `Clone`: the round keys
/// are secret and are wiped when this is dropped (the `aes` crate's `zeroize` feature, and
/// `Drop` of the kernel's key schedule).
pub struct XtsCipher {
    k: Box<Schedules>,
}

/// The expanded keys, alone on one heap page: that page is excluded from core dumps
/// (`MADV_DONTDUMP`), and moving an `XtsCipher` moves a pointer, not key material.
#[repr(align(4096))]
struct Schedules {
    data: Aes256,
    tweak: Aes256,
    /// Round keys for the VAES-512 kernel; `Some` only if the CPU supports it.
    #[cfg(target_arch = "x86_64")]
    fast: Option<x86::Keys>,
    /// The metadata MAC key root of the same DEK (header slots, rotation side files).
    meta: MetaKey,
}

impl std::fmt::Debug for XtsCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "XtsCipher([REDACTED], {})", self.backend())
    }
}

/// Multiply a tweak by the primitive element alpha of GF(2^128) (IEEE 1619 little-endian
/// convention). Branch-free.
#[inline(always)]
fn mul_alpha(t: u128) -> u128 {
    (t << 1) ^ ((t >> 127) * 0x87)
}

/// Multiply a tweak by alpha^k: shifts of up to 56 bits at a time, the bits shifted out
/// reduced with x^128 = x^7 + x^2 + x + 1 by shifts and XORs only (constant time in `t`).
#[inline]
fn mul_alpha_pow(mut t: u128, mut k: usize) -> u128 {
    while k > 0 {
        let s = k.min(56) as u32;
        let c = t >> (128 - s);
        t = (t << s) ^ c ^ (c << 1) ^ (c << 2) ^ (c << 7);
        k -= s as usize;
    }
    t
}

#[inline(always)]
fn xor_tweaks(buf: &mut [u8], tweaks: &[u128]) {
    for (chunk, t) in buf.chunks_exact_mut(BLOCK).zip(tweaks) {
        let v = u128::from_le_bytes(chunk.try_into().expect("16-byte chunk")) ^ t;
        chunk.copy_from_slice(&v.to_le_bytes());
    }
}

impl XtsCipher {
    /// Expand both key halves, for the best implementation this CPU supports.
    /// `DataKey` already guarantees the halves differ.
    pub fn new(key: &DataKey) -> XtsCipher {
        Self::build(key, true)
    }

    /// Build with a named implementation (`"vaes512"` or `"portable"`); `None` if this CPU
    /// cannot run it. For tests and benchmarks that compare implementations.
    pub fn with_backend(key: &DataKey, backend: &str) -> Option<XtsCipher> {
        match backend {
            BACKEND_PORTABLE => Some(Self::build(key, false)),
            BACKEND_VAES512 => {
                let c = Self::build(key, true);
                (c.backend() == BACKEND_VAES512).then_some(c)
            }
            _ => None,
        }
    }

    /// Names of the implementations this CPU can run, best first.
    pub fn available_backends() -> Vec<&'static str> {
        let mut v = Vec::new();
        #[cfg(target_arch = "x86_64")]
        if x86::supported() {
            v.push(BACKEND_VAES512);
        }
        v.push(BACKEND_PORTABLE);
        v
    }

    fn build(key: &DataKey, fast: bool) -> XtsCipher {
        let k = key.expose();
        #[cfg(not(target_arch = "x86_64"))]
        let _ = fast;
        let k = Box::new(Schedules {
            data: Aes256::new_from_slice(&k[..32]).expect("32-byte key"),
            tweak: Aes256::new_from_slice(&k[32..]).expect("32-byte key"),
            #[cfg(target_arch = "x86_64")]
            fast: if fast { x86::Keys::new(k) } else { None },
            meta: MetaKey::derive(key),
        });
        // Best effort: a kernel without MADV_DONTDUMP still encrypts correctly.
        let _ = sqlite_vfs::mem::exclude_value_from_core_dumps(&*k);
        XtsCipher { k }
    }

    /// The metadata MAC keys of this cipher's DEK.
    pub fn meta(&self) -> &MetaKey {
        &self.k.meta
    }

    /// The implementation in use: `"vaes512"` or `"portable"`.
    pub fn backend(&self) -> &'static str {
        #[cfg(target_arch = "x86_64")]
        if self.k.fast.is_some() {
            return BACKEND_VAES512;
        }
        BACKEND_PORTABLE
    }

    /// Encrypt, in place, the bytes at logical `offset` of a file in `domain`.
    /// `offset` and `buf.len()` must be multiples of 16.
    pub fn encrypt(&self, domain: Domain, offset: u64, buf: &mut [u8]) {
        self.process(domain, offset, Io::InPlace(buf), Mode::Encrypt);
    }

    /// Decrypt, in place, the bytes at logical `offset` of a file in `domain`.
    pub fn decrypt(&self, domain: Domain, offset: u64, buf: &mut [u8]) {
        self.process(domain, offset, Io::InPlace(buf), Mode::Decrypt);
    }

    /// Decrypt in place, unless some 16-byte block of `buf` is entirely zero (a hole, for the
    /// file layer): then `buf` is left as it was and `false` is returned. The VAES kernel
    /// detects zero blocks while decrypting (and restores the rare buffer that has one by
    /// encrypting it again); the portable path scans first.
    pub fn decrypt_unless_zero_block(&self, domain: Domain, offset: u64, buf: &mut [u8]) -> bool {
        if self.process(domain, offset, Io::InPlace(&mut *buf), Mode::DecryptDetect) {
            // XTS encryption inverts decryption block by block: this restores the ciphertext.
            self.process(domain, offset, Io::InPlace(buf), Mode::Encrypt);
            return false;
        }
        true
    }

    /// Encrypt `src` (logical bytes at `offset`) into `dst` (same length), leaving `src`
    /// untouched.
    pub fn encrypt_to(&self, domain: Domain, offset: u64, src: &[u8], dst: &mut [u8]) {
        assert_eq!(src.len(), dst.len(), "XTS source and destination lengths differ");
        self.process(domain, offset, Io::Copy(src, dst), Mode::Encrypt);
    }

    /// Decrypt `src` (ciphertext of the logical bytes at `offset`) into `dst`.
    pub fn decrypt_to(&self, domain: Domain, offset: u64, src: &[u8], dst: &mut [u8]) {
        assert_eq!(src.len(), dst.len(), "XTS source and destination lengths differ");
        self.process(domain, offset, Io::Copy(src, dst), Mode::Decrypt);
    }

    /// Raw AES-256 encryption (ECB, data key only) of `buf` with the same implementation the
    /// XTS path uses: the throughput ceiling that benchmarks compare XTS against. Not a mode
    /// to store anything with.
    #[doc(hidden)]
    pub fn ecb_encrypt_for_benchmark(&self, buf: &mut [u8]) {
        assert!(buf.len().is_multiple_of(BLOCK), "ECB range must be block aligned");
        #[cfg(target_arch = "x86_64")]
        if let Some(keys) = &self.k.fast {
            keys.ecb_encrypt(buf);
            return;
        }
        let (blocks, _) = Array::slice_as_chunks_mut(buf);
        self.k.data.encrypt_blocks(blocks);
    }

    /// Run `mode` over a block-aligned range, one data-unit segment at a time. Returns
    /// whether an all-zero input block was seen (`Mode::DecryptDetect` only).
    fn process(&self, domain: Domain, offset: u64, io: Io<'_>, mode: Mode) -> bool {
        let len = io.len();
        assert!(offset.is_multiple_of(BLOCK as u64) && len.is_multiple_of(BLOCK), "XTS range must be block aligned");
        let mut io = io;
        let mut pos = offset;
        let mut done = 0;
        let mut zero = false;
        while done < len {
            let unit = pos / DATA_UNIT as u64;
            let in_unit = (pos % DATA_UNIT as u64) as usize;
            let take = (DATA_UNIT - in_unit).min(len - done);
            zero |= self.segment(domain.tweak(unit), in_unit / BLOCK, io.range(done, take), mode);
            pos += take as u64;
            done += take;
        }
        zero
    }

    /// Process blocks `first_block..` of one data unit whose tweak value is `tweak_value`.
    /// Public for known-answer tests with IEEE 1619 vectors; a segment longer than a data unit
    /// continues the tweak sequence.
    pub fn unit_segment(&self, tweak_value: u128, first_block: usize, seg: &mut [u8], encrypt: bool) {
        assert!(seg.len().is_multiple_of(BLOCK), "XTS range must be block aligned");
        let mode = if encrypt { Mode::Encrypt } else { Mode::Decrypt };
        self.segment(tweak_value, first_block, Io::InPlace(seg), mode);
    }

    #[inline]
    fn segment(&self, tweak_value: u128, first_block: usize, io: Io<'_>, mode: Mode) -> bool {
        if io.len() == 0 {
            return false;
        }
        #[cfg(target_arch = "x86_64")]
        if let Some(keys) = &self.k.fast {
            return keys.segment(tweak_value, first_block, io, mode);
        }
        let mut t_block = Array::from(tweak_value.to_le_bytes());
        self.k.tweak.encrypt_block(&mut t_block);
        let t = mul_alpha_pow(u128::from_le_bytes(t_block.into()), first_block);
        let buf = match io {
            Io::InPlace(b) => b,
            Io::Copy(src, dst) => {
                dst.copy_from_slice(src);
                dst
            }
        };
        let zero = mode == Mode::DecryptDetect
            && buf.chunks_exact(BLOCK).any(|b| u128::from_ne_bytes(b.try_into().expect("16 bytes")) == 0);
        self.portable(t, buf, mode == Mode::Encrypt);
        zero
    }

    /// The `aes`-crate path: tweaks of up to one data unit on the stack, XOR, one multi-block
    /// call, XOR.
    fn portable(&self, mut t: u128, seg: &mut [u8], encrypt: bool) {
        let mut tweaks = [0u128; BLOCKS_PER_UNIT];
        for piece in seg.chunks_mut(DATA_UNIT) {
            let m = piece.len() / BLOCK;
            for slot in tweaks.iter_mut().take(m) {
                *slot = t;
                t = mul_alpha(t);
            }
            xor_tweaks(piece, &tweaks[..m]);
            aes_blocks_then_wipe(&self.k.data, piece, encrypt);
            xor_tweaks(piece, &tweaks[..m]);
        }
    }
}

/// Run the `aes` crate over whole blocks in a frame below this one, then wipe that frame's
/// area: its VAES backends leave a copy of the round keys there on every call (key 1's
/// decryption schedule was recovered from a core dump), which no `Zeroize` reaches.
#[inline(never)]
fn aes_blocks_then_wipe(aes: &Aes256, piece: &mut [u8], encrypt: bool) {
    aes_blocks(aes, piece, encrypt);
    super::keys::scrub_stack_small();
}

#[inline(never)]
fn aes_blocks(aes: &Aes256, piece: &mut [u8], encrypt: bool) {
    let (blocks, _) = Array::slice_as_chunks_mut(piece);
    if encrypt {
        aes.encrypt_blocks(blocks);
    } else {
        aes.decrypt_blocks(blocks);
    }
}

/// What to do with a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Encrypt,
    Decrypt,
    /// Decrypt, and report whether an input block was all zero.
    DecryptDetect,
}

/// Where a range's output goes.
enum Io<'a> {
    InPlace(&'a mut [u8]),
    Copy(&'a [u8], &'a mut [u8]),
}

impl Io<'_> {
    fn len(&self) -> usize {
        match self {
            Io::InPlace(b) => b.len(),
            Io::Copy(s, _) => s.len(),
        }
    }
    fn range(&mut self, from: usize, len: usize) -> Io<'_> {
        match self {
            Io::InPlace(b) => Io::InPlace(&mut b[from..from + len]),
            Io::Copy(s, d) => Io::Copy(&s[from..from + len], &mut d[from..from + len]),
        }
    }
}

/// The VAES-512 kernel. The only `unsafe` here: calling `#[target_feature]` functions (after
/// the CPU check in `Keys::new`, whose result is the only way to obtain a `Keys`), and
/// unaligned vector loads/stores within bounds the callers check.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod x86 {
    use core::arch::x86_64::*;

    use zeroize::Zeroize;

    use super::{mul_alpha_pow, Io, Mode, BLOCK};

    const ROUNDS: usize = 15;

    /// Whether this CPU can run the kernel (cached by std after the first call).
    pub(super) fn supported() -> bool {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("vaes")
            && std::arch::is_x86_feature_detected!("vpclmulqdq")
            && std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("sse4.1")
    }

    /// AES-256 key schedules of both XTS halves. Exists only on CPUs with the kernel's
    /// features (the constructor checks); wiped on drop.
    pub(super) struct Keys {
        enc: [__m128i; ROUNDS],
        tweak: [__m128i; ROUNDS],
        /// The data key's round keys broadcast to all four lanes, for encryption and for the
        /// equivalent inverse cipher.
        enc4: [__m512i; ROUNDS],
        dec4: [__m512i; ROUNDS],
    }

    impl Drop for Keys {
        fn drop(&mut self) {
            self.enc.zeroize();
            self.tweak.zeroize();
            self.enc4.zeroize();
            self.dec4.zeroize();
        }
    }

    impl Keys {
        pub(super) fn new(key: &[u8; 64]) -> Option<Keys> {
            if !supported() {
                return None;
            }
            // SAFETY: the CPU supports AES-NI, SSE4.1 and AVX-512F (checked above).
            unsafe {
                let enc = expand_key(key[..32].try_into().expect("32 bytes"));
                let tweak = expand_key(key[32..].try_into().expect("32 bytes"));
                let mut dec = inverse_keys(&enc);
                let keys = Keys { enc, tweak, enc4: broadcast(&enc), dec4: broadcast(&dec) };
                dec.zeroize();
                Some(keys)
            }
        }

        #[inline]
        pub(super) fn segment(&self, tweak_value: u128, first_block: usize, io: Io<'_>, mode: Mode) -> bool {
            let (src, dst, n) = match io {
                Io::InPlace(b) => {
                    let p = b.as_mut_ptr();
                    (p.cast_const(), p, b.len() / BLOCK)
                }
                Io::Copy(s, d) => {
                    assert_eq!(s.len(), d.len());
                    (s.as_ptr(), d.as_mut_ptr(), s.len() / BLOCK)
                }
            };
            // SAFETY: CPU features as above; `src` and `dst` are valid for `n` blocks (equal
            // lengths), and either identical (in place) or non-overlapping (distinct borrows).
            unsafe {
                let (tk, tv, fb) = (&self.tweak, tweak_value, first_block);
                match mode {
                    Mode::Encrypt => xts_vaes512::<false, false>(&self.enc4, tk, tv, fb, src, dst, n),
                    Mode::Decrypt => xts_vaes512::<true, false>(&self.dec4, tk, tv, fb, src, dst, n),
                    Mode::DecryptDetect => xts_vaes512::<true, true>(&self.dec4, tk, tv, fb, src, dst, n),
                }
            }
        }
    }

    impl Keys {
        pub(super) fn ecb_encrypt(&self, buf: &mut [u8]) {
            // SAFETY: a `Keys` exists only if `supported()`; `buf` is valid for its length,
            // a multiple of 16 (checked by the caller).
            unsafe { ecb_vaes512(&self.enc4, buf.as_mut_ptr(), buf.len() / BLOCK) }
        }
    }

    /// AES-256 ECB encryption in place, 32 blocks per iteration (benchmark ceiling only).
    ///
    /// # Safety
    /// CPU features as enabled; `p` valid for `n * 16` bytes.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,vaes,vpclmulqdq,aes,sse4.1")]
    unsafe fn ecb_vaes512(k: &[__m512i; ROUNDS], p: *mut u8, n: usize) {
        let mut i = 0;
        while i < n {
            let nb = (n - i).min(32);
            let mut x = [_mm512_setzero_si512(); 8];
            let regs = nb.div_ceil(4);
            for (j, xj) in x.iter_mut().enumerate().take(regs) {
                let m = (nb - 4 * j).min(4);
                let mask: __mmask8 = (0xffu16 >> (8 - 2 * m)) as u8;
                // SAFETY: the mask covers only blocks below n.
                *xj = _mm512_xor_si512(
                    unsafe { _mm512_maskz_loadu_epi64(mask, p.add((i + 4 * j) * BLOCK).cast()) },
                    k[0],
                );
            }
            for key in &k[1..ROUNDS - 1] {
                for xj in x.iter_mut() {
                    *xj = _mm512_aesenc_epi128(*xj, *key);
                }
            }
            for (j, xj) in x.iter().enumerate().take(regs) {
                let m = (nb - 4 * j).min(4);
                let mask: __mmask8 = (0xffu16 >> (8 - 2 * m)) as u8;
                let y = _mm512_aesenclast_epi128(*xj, k[ROUNDS - 1]);
                // SAFETY: as for the load.
                unsafe { _mm512_mask_storeu_epi64(p.add((i + 4 * j) * BLOCK).cast(), mask, y) };
            }
            i += nb;
        }
    }

    #[inline]
    #[target_feature(enable = "sse2")]
    fn from_u128(v: u128) -> __m128i {
        _mm_set_epi64x((v >> 64) as i64, v as i64)
    }

    #[inline]
    #[target_feature(enable = "sse4.1")]
    fn to_u128(v: __m128i) -> u128 {
        (_mm_extract_epi64::<0>(v) as u64 as u128) | ((_mm_extract_epi64::<1>(v) as u64 as u128) << 64)
    }

    #[inline]
    #[target_feature(enable = "sse2")]
    fn spread(k: __m128i) -> __m128i {
        // w0, w0^w1, w0^w1^w2, w0^w1^w2^w3
        let k = _mm_xor_si128(k, _mm_slli_si128::<4>(k));
        _mm_xor_si128(k, _mm_slli_si128::<8>(k))
    }

    /// AES-256 key expansion (FIPS 197) with AESKEYGENASSIST.
    #[target_feature(enable = "aes,sse4.1")]
    fn expand_key(key: &[u8; 32]) -> [__m128i; ROUNDS] {
        let mut rk = [_mm_setzero_si128(); ROUNDS];
        let mut a = from_u128(u128::from_le_bytes(key[..16].try_into().expect("16 bytes")));
        let mut b = from_u128(u128::from_le_bytes(key[16..].try_into().expect("16 bytes")));
        rk[0] = a;
        rk[1] = b;
        // Round keys 2i and 2i + 1 from the previous two.
        macro_rules! even {
            ($rcon:literal, $i:literal) => {
                let t = _mm_shuffle_epi32::<0xff>(_mm_aeskeygenassist_si128::<$rcon>(b));
                a = _mm_xor_si128(spread(a), t);
                rk[$i] = a;
            };
        }
        macro_rules! odd {
            ($i:literal) => {
                let t = _mm_shuffle_epi32::<0xaa>(_mm_aeskeygenassist_si128::<0>(a));
                b = _mm_xor_si128(spread(b), t);
                rk[$i] = b;
            };
        }
        even!(0x01, 2);
        odd!(3);
        even!(0x02, 4);
        odd!(5);
        even!(0x04, 6);
        odd!(7);
        even!(0x08, 8);
        odd!(9);
        even!(0x10, 10);
        odd!(11);
        even!(0x20, 12);
        odd!(13);
        even!(0x40, 14);
        rk
    }

    /// Round keys of the equivalent inverse cipher.
    #[target_feature(enable = "aes,sse4.1")]
    fn inverse_keys(enc: &[__m128i; ROUNDS]) -> [__m128i; ROUNDS] {
        let mut dec = [_mm_setzero_si128(); ROUNDS];
        dec[0] = enc[ROUNDS - 1];
        for i in 1..ROUNDS - 1 {
            dec[i] = _mm_aesimc_si128(enc[ROUNDS - 1 - i]);
        }
        dec[ROUNDS - 1] = enc[0];
        dec
    }

    /// One AES-256 block encryption (the tweak of a data unit).
    #[inline]
    #[target_feature(enable = "aes,sse4.1")]
    fn encrypt_block_xmm(rk: &[__m128i; ROUNDS], v: __m128i) -> __m128i {
        let mut x = _mm_xor_si128(v, rk[0]);
        for k in &rk[1..ROUNDS - 1] {
            x = _mm_aesenc_si128(x, *k);
        }
        _mm_aesenclast_si128(x, rk[ROUNDS - 1])
    }

    #[cfg(test)]
    #[target_feature(enable = "aes,sse4.1")]
    fn encrypt_block(rk: &[__m128i; ROUNDS], v: u128) -> u128 {
        to_u128(encrypt_block_xmm(rk, from_u128(v)))
    }

    /// Round keys broadcast to the four lanes of a ZMM register.
    #[target_feature(enable = "avx512f")]
    fn broadcast(rk: &[__m128i; ROUNDS]) -> [__m512i; ROUNDS] {
        core::array::from_fn(|i| _mm512_broadcast_i32x4(rk[i]))
    }

    /// Multiply each 128-bit lane by x^32 with byte shifts and one carry-less multiplication
    /// (no bit shifts: those would compete with the AES rounds for port 0).
    macro_rules! mul_x32 {
        ($v:expr, $poly:expr) => {{
            let v = $v;
            let carry = _mm512_bsrli_epi128::<12>(v);
            let reduced = _mm512_clmulepi64_epi128::<0x00>(carry, $poly);
            _mm512_xor_si512(_mm512_bslli_epi128::<4>(v), reduced)
        }};
    }

    /// XTS over `n` consecutive blocks with first tweak `t` (already encrypted and advanced to
    /// the first block). `DEC` selects decryption (then `rk` is the inverse key schedule);
    /// `DETECT` makes it return whether an input block was all zero.
    ///
    /// # Safety
    /// The CPU must have the enabled features; `src` and `dst` must be valid for `n * 16`
    /// bytes and either equal or non-overlapping.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,vaes,vpclmulqdq,aes,sse4.1")]
    unsafe fn xts_vaes512<const DEC: bool, const DETECT: bool>(
        k: &[__m512i; ROUNDS],
        tweak_rk: &[__m128i; ROUNDS],
        tweak_value: u128,
        first_block: usize,
        src: *const u8,
        dst: *mut u8,
        n: usize,
    ) -> bool {
        let poly = _mm512_set_epi64(0, 0x87, 0, 0x87, 0, 0x87, 0, 0x87);
        // Running unsigned minimum of (low | high qword) per block: zero iff some block was.
        let mut seen = _mm512_set1_epi64(-1);

        // The data unit's encrypted tweak, advanced to the first block.
        let mut t = encrypt_block_xmm(tweak_rk, from_u128(tweak_value));
        if first_block != 0 {
            t = from_u128(mul_alpha_pow(to_u128(t), first_block));
        }
        // Register j holds the tweaks of blocks 4j .. 4j + 4: lane l is t * x^(4j + l), all
        // eight computed independently (shift counts below 57, one reduction each).
        let tb = _mm512_broadcast_i32x4(t);
        let mut tw = [_mm512_setzero_si512(); 8];
        for (j, twj) in tw.iter_mut().enumerate() {
            let s = 4 * j as i64;
            let cnt = _mm512_set_epi64(s + 3, s + 3, s + 2, s + 2, s + 1, s + 1, s, s);
            let carry = _mm512_srlv_epi64(tb, _mm512_sub_epi64(_mm512_set1_epi64(64), cnt));
            let reduced = _mm512_clmulepi64_epi128::<0x01>(carry, poly);
            let into_high = _mm512_bslli_epi128::<8>(carry);
            *twj = _mm512_ternarylogic_epi64::<0x96>(_mm512_sllv_epi64(tb, cnt), into_high, reduced);
        }

        let mut i = 0;
        while n - i >= 32 {
            let mut x = [_mm512_setzero_si512(); 8];
            for j in 0..8 {
                // SAFETY: blocks i + 4j .. i + 4j + 4 < n are in bounds.
                let v = unsafe { _mm512_loadu_si512(src.add((i + 4 * j) * BLOCK).cast()) };
                if DETECT {
                    seen = _mm512_min_epu64(seen, _mm512_or_si512(v, _mm512_shuffle_epi32::<_MM_PERM_BADC>(v)));
                }
                x[j] = _mm512_ternarylogic_epi64::<0x96>(v, tw[j], k[0]);
            }
            for key in &k[1..ROUNDS - 1] {
                for xj in x.iter_mut() {
                    *xj = if DEC { _mm512_aesdec_epi128(*xj, *key) } else { _mm512_aesenc_epi128(*xj, *key) };
                }
            }
            for j in 0..8 {
                let last = _mm512_xor_si512(k[ROUNDS - 1], tw[j]);
                let y = if DEC { _mm512_aesdeclast_epi128(x[j], last) } else { _mm512_aesenclast_epi128(x[j], last) };
                // SAFETY: as for the load.
                unsafe { _mm512_storeu_si512(dst.add((i + 4 * j) * BLOCK).cast(), y) };
            }
            for twj in tw.iter_mut() {
                *twj = mul_x32!(*twj, poly);
            }
            i += 32;
        }
        // Fewer than 32 blocks left: one register (up to 4 blocks) at a time, masked.
        let mut j = 0;
        while i < n {
            let nb = (n - i).min(4);
            let mask: __mmask8 = (0xffu16 >> (8 - 2 * nb)) as u8;
            let p = i * BLOCK;
            // SAFETY: the mask covers only blocks i .. i + nb <= n.
            let v = unsafe { _mm512_maskz_loadu_epi64(mask, src.add(p).cast()) };
            if DETECT {
                let folded = _mm512_or_si512(v, _mm512_shuffle_epi32::<_MM_PERM_BADC>(v));
                seen = _mm512_mask_min_epu64(seen, mask, seen, folded);
            }
            let mut x = _mm512_ternarylogic_epi64::<0x96>(v, tw[j], k[0]);
            for key in &k[1..ROUNDS - 1] {
                x = if DEC { _mm512_aesdec_epi128(x, *key) } else { _mm512_aesenc_epi128(x, *key) };
            }
            let last = _mm512_xor_si512(k[ROUNDS - 1], tw[j]);
            let y = if DEC { _mm512_aesdeclast_epi128(x, last) } else { _mm512_aesenclast_epi128(x, last) };
            // SAFETY: as for the load.
            unsafe { _mm512_mask_storeu_epi64(dst.add(p).cast(), mask, y) };
            i += nb;
            j += 1;
        }
        DETECT && _mm512_testn_epi64_mask(seen, seen) != 0
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use aes::cipher::{Array, BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};

        #[test]
        fn key_schedule_matches_the_aes_crate() {
            if !supported() {
                return;
            }
            let key: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(29).wrapping_add(3)).collect();
            let keys = Keys::new(key.as_slice().try_into().unwrap()).unwrap();
            for half in 0..2 {
                let reference = aes::Aes256::new_from_slice(&key[half * 32..half * 32 + 32]).unwrap();
                let rk = if half == 0 { &keys.enc } else { &keys.tweak };
                for v in [0u128, 1, u128::MAX, 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210] {
                    let mut b = Array::from(v.to_le_bytes());
                    reference.encrypt_block(&mut b);
                    let ours = unsafe { encrypt_block(rk, v) };
                    assert_eq!(ours.to_le_bytes(), <[u8; 16]>::from(b));
                    if half == 0 {
                        reference.decrypt_block(&mut b);
                        assert_eq!(<[u8; 16]>::from(b), v.to_le_bytes());
                    }
                }
            }
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

    #[test]
    fn ecb_ceiling_is_plain_aes() {
        let key = DataKey::generate().unwrap();
        let reference = Aes256::new_from_slice(&key.expose()[..32]).unwrap();
        for name in XtsCipher::available_backends() {
            let c = XtsCipher::with_backend(&key, name).unwrap();
            for blocks in [1usize, 3, 4, 31, 32, 33, 256] {
                let mut ours: Vec<u8> = (0..blocks * BLOCK).map(|i| i as u8).collect();
                let mut theirs = ours.clone();
                c.ecb_encrypt_for_benchmark(&mut ours);
                let (b, _) = Array::slice_as_chunks_mut(&mut theirs[..]);
                reference.encrypt_blocks(b);
                assert_eq!(ours, theirs, "{name} {blocks}");
            }
        }
    }

    #[test]
    fn alpha_powers_match_repeated_doubling() {
        let mut t = 0x8000_0000_0000_0000_0000_0000_0000_0001u128 ^ 0xdead_beef << 70;
        for k in 0..300 {
            let mut slow = t;
            for _ in 0..k {
                slow = mul_alpha(slow);
            }
            assert_eq!(mul_alpha_pow(t, k), slow, "k = {k}");
            t = t.rotate_left(7) ^ 0x1234_5678;
        }
    }

    /// Every implementation, every alignment within a unit, every length up to two units,
    /// in place and out of place, agrees with the portable one.
    #[test]
    fn implementations_agree() {
        let key = DataKey::generate().unwrap();
        let portable = XtsCipher::with_backend(&key, BACKEND_PORTABLE).unwrap();
        let data: Vec<u8> = (0..3 * DATA_UNIT).map(|i| (i * 131 % 251) as u8).collect();
        for name in XtsCipher::available_backends() {
            let c = XtsCipher::with_backend(&key, name).unwrap();
            assert_eq!(c.backend(), name);
            for start in [0usize, 1, 2, 3, 4, 5, 31, 32, 33, 200, 255] {
                for blocks in [1usize, 2, 3, 4, 5, 7, 8, 31, 32, 33, 63, 64, 65, 100, 256, 257, 300, 512] {
                    let off = (DATA_UNIT + start * BLOCK) as u64;
                    let src = &data[..blocks * BLOCK];
                    let mut want = src.to_vec();
                    portable.encrypt(Domain::Wal, off, &mut want);
                    let mut got = src.to_vec();
                    c.encrypt(Domain::Wal, off, &mut got);
                    assert_eq!(got, want, "{name} encrypt start {start} blocks {blocks}");
                    let mut out = vec![0u8; src.len()];
                    c.encrypt_to(Domain::Wal, off, src, &mut out);
                    assert_eq!(out, want, "{name} encrypt_to");
                    let mut back = vec![0u8; src.len()];
                    c.decrypt_to(Domain::Wal, off, &want, &mut back);
                    assert_eq!(back, src, "{name} decrypt_to");
                    let mut again = got.clone();
                    c.decrypt(Domain::Wal, off, &mut got);
                    assert_eq!(got, src, "{name} decrypt");
                    assert!(c.decrypt_unless_zero_block(Domain::Wal, off, &mut again));
                    assert_eq!(again, src, "{name} decrypt_unless_zero_block");
                    // A zero block anywhere: refused, buffer unchanged.
                    for hole in [0, blocks / 2, blocks - 1] {
                        let mut ct = want.clone();
                        ct[hole * BLOCK..hole * BLOCK + BLOCK].fill(0);
                        let before = ct.clone();
                        assert!(!c.decrypt_unless_zero_block(Domain::Wal, off, &mut ct), "{name} hole {hole}");
                        assert_eq!(ct, before, "{name} restored");
                    }
                }
            }
        }
    }
}

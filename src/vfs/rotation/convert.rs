//! In-place encryption of a plain database file, the VFS side: the crash-safe, resumable
//! engine, `PRAGMA tde_encrypt_in_place` and the recovery at open (docs/ARCHITECTURE.md,
//! "In-place encryption"; state file format docs/FORMAT.md §9). The driver is
//! [`crate::rotation::convert::encrypt_in_place`].
//!
//! In place, every byte must move 8 KiB up to make room for the header region, so the file
//! is processed from its end towards its start: chunk `[s, E)` of the plain file is copied to
//! the state file (durably), encrypted and written to `[s + 8192, E + 8192)`, then the state's
//! progress becomes `s`. The write may overwrite the chunk's own source (hence the copy) but
//! never the plain bytes below `s`. Before the first chunk moves, the plain file's first 16
//! bytes (`SQLite format 3\0`, a constant) are replaced by a conversion marker, so plain
//! SQLite refuses the half-converted file and `tde` recognises it and finishes the job.

use std::time::Instant;

use sha2::{Digest, Sha256};
use sqlite_vfs::{BaseFile, LockLevel};

use super::engine::{Abort, Hook, Outcome, RawDb, SideFile, Step};
use super::protocol::{EncryptResult, RotationArgs};
use super::{side_path, BaseDb, FsSide, VfsHook, CONVERT_JOURNAL_SUFFIX};
use crate::crypto::{Domain, MacPurpose, MetaKey, XtsCipher, MAC_LEN};
use crate::error::{Error, Result};
use crate::format::{choose_slot, Header, HeaderError, HEADER_REGION_LEN, SLOT_LEN};
use crate::vfs::database::{
    acquire, cache_key_of, initial_region, is_journal_magic, read_region, release, unwrap_key, verify_content_key,
    Database,
};
use crate::vfs::TdeContext;

/// Magic that replaces `SQLite format 3\0` at offset 0 while an in-place encryption runs.
pub const CONVERT_MAGIC: [u8; 16] = *b"SQLTDE-CONVERT\x00\x01";
const SQLITE_MAGIC: [u8; 16] = *b"SQLite format 3\0";

const STATE_MAGIC: [u8; 8] = *b"SQLTDECV";
const CHUNK_MAGIC: [u8; 8] = *b"SQLTDECC";
/// State format written by this build: MACed under the target DEK, with the digest of the
/// plain bytes the conversion left in place.
const STATE_VERSION: u16 = 2;
/// Format 1: checksummed only; resumed only when the caller trusts format 1 state.
const STATE_VERSION_1: u16 = 1;
const STATE_SUM_AT: usize = SLOT_LEN - 32;
const STATE_MAC_AT: usize = STATE_SUM_AT - MAC_LEN;
/// Where the digest of the plain file's bytes `PLAIN_PROBE` sits in a state slot.
const PLAIN_DIGEST_AT: usize = 48 + HEADER_IMAGE_LEN;
/// Bytes of the plain file that stay where they are until the final header is written (the
/// rest of SQLite's page 1 header; every page is at least 512 bytes): what a state says about
/// the file it belongs to.
const PLAIN_PROBE: std::ops::Range<u64> = 16..512;
/// Offset of the chunk record in the state file (after two 4 KiB state slots).
const CHUNK_AT: u64 = 2 * SLOT_LEN as u64;
const CHUNK_HEAD: usize = 128;
const HEADER_IMAGE_LEN: usize = crate::format::SLOT_USED_LEN;

/// Default chunk size of an in-place encryption.
pub const DEFAULT_CONVERT_CHUNK: u64 = 32 << 20;

/// Does this header region belong to a file in the middle of an in-place encryption?
pub fn is_converting(region: &[u8]) -> bool {
    region.len() >= 16 && region[..16] == CONVERT_MAGIC
}

/// Is the file behind `base` a plain SQLite database?
pub fn is_plain_sqlite(base: &mut BaseFile) -> Result<bool> {
    let mut b = [0u8; 16];
    base.read(&mut b, 0)?;
    Ok(b == SQLITE_MAGIC)
}

/// One decoded state slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertState {
    pub sequence: u64,
    /// Length of the plain file.
    pub plain_len: u64,
    /// Bytes `[0, progress)` of the plain file are still plain at their original place.
    pub progress: u64,
    pub chunk: u64,
    /// The header the encrypted file gets (sequence 1).
    pub header: Header,
    /// SHA-256 of the plain file's bytes [`PLAIN_PROBE`] when the conversion started
    /// (format 1 states: zero).
    pub plain_digest: [u8; 32],
    /// Format of the slot it was read from.
    pub format: u16,
}

/// Digest of the bytes of `db` a conversion never moves before its end ([`PLAIN_PROBE`]).
fn plain_digest(db: &mut impl RawDb) -> Result<[u8; 32]> {
    let mut probe = vec![0u8; (PLAIN_PROBE.end - PLAIN_PROBE.start) as usize];
    db.read_exact_at(&mut probe, PLAIN_PROBE.start)?;
    Ok(Sha256::digest(&probe).into())
}

impl ConvertState {
    /// A format 2 slot, MACed under `meta` (the target DEK's metadata key).
    fn encode(&self, meta: &MetaKey) -> Result<Vec<u8>> {
        let mut b = vec![0u8; SLOT_LEN];
        b[0..8].copy_from_slice(&STATE_MAGIC);
        b[8..10].copy_from_slice(&STATE_VERSION.to_le_bytes());
        b[16..24].copy_from_slice(&self.sequence.to_le_bytes());
        b[24..32].copy_from_slice(&self.plain_len.to_le_bytes());
        b[32..40].copy_from_slice(&self.progress.to_le_bytes());
        b[40..48].copy_from_slice(&self.chunk.to_le_bytes());
        let image =
            self.header.encode(meta).map_err(|source| Error::Header { path: "convert state".into(), source })?;
        b[48..48 + HEADER_IMAGE_LEN].copy_from_slice(&image[..HEADER_IMAGE_LEN]);
        b[PLAIN_DIGEST_AT..PLAIN_DIGEST_AT + 32].copy_from_slice(&self.plain_digest);
        let tag = meta.mac(MacPurpose::ConvertState, &[&b[..STATE_MAC_AT]]);
        b[STATE_MAC_AT..STATE_SUM_AT].copy_from_slice(&tag);
        let sum = Sha256::digest(&b[..STATE_SUM_AT]);
        b[STATE_SUM_AT..].copy_from_slice(&sum);
        Ok(b)
    }

    /// Parse a slot (checksum only: the MAC needs the DEK the slot names, see
    /// [`authenticate_state`]).
    fn decode(b: &[u8]) -> Option<ConvertState> {
        if b.len() < SLOT_LEN || b[0..8] != STATE_MAGIC {
            return None;
        }
        let format = u16::from_le_bytes([b[8], b[9]]);
        if format != STATE_VERSION && format != STATE_VERSION_1 {
            return None;
        }
        if Sha256::digest(&b[..STATE_SUM_AT]).as_slice() != &b[STATE_SUM_AT..SLOT_LEN] {
            return None;
        }
        let u = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
        let mut image = vec![0u8; SLOT_LEN];
        image[..HEADER_IMAGE_LEN].copy_from_slice(&b[48..48 + HEADER_IMAGE_LEN]);
        let header = match Header::decode(&image) {
            crate::format::SlotStatus::Valid(h) => h,
            _ => return None,
        };
        let plain_digest = if format == STATE_VERSION {
            b[PLAIN_DIGEST_AT..PLAIN_DIGEST_AT + 32].try_into().unwrap()
        } else {
            [0u8; 32]
        };
        Some(ConvertState {
            sequence: u(16),
            plain_len: u(24),
            progress: u(32),
            chunk: u(40),
            header,
            plain_digest,
            format,
        })
    }
}

/// Is slot `slot` of a state file's content written by a holder of the target DEK (`meta`)?
/// Format 1 slots only when `trust_format_1`.
fn authenticate_state(bytes: &[u8], slot: usize, meta: &MetaKey, trust_format_1: bool) -> bool {
    let Some(b) = bytes.get(slot * SLOT_LEN..(slot + 1) * SLOT_LEN) else { return false };
    match u16::from_le_bytes([b[8], b[9]]) {
        STATE_VERSION => meta.verify(MacPurpose::ConvertState, &[&b[..STATE_MAC_AT]], &b[STATE_MAC_AT..STATE_SUM_AT]),
        STATE_VERSION_1 => trust_format_1,
        _ => false,
    }
}

/// The newest valid state slot of a state file's content, and its slot index.
pub fn decode_state(bytes: &[u8]) -> Option<(ConvertState, usize)> {
    let a = bytes.get(..SLOT_LEN).and_then(ConvertState::decode);
    let b = bytes.get(SLOT_LEN..2 * SLOT_LEN).and_then(ConvertState::decode);
    match (a, b) {
        (Some(x), Some(y)) => Some(if y.sequence > x.sequence { (y, 1) } else { (x, 0) }),
        (Some(x), None) => Some((x, 0)),
        (None, Some(y)) => Some((y, 1)),
        (None, None) => None,
    }
}

/// A format 2 chunk record: the plaintext being moved, MACed under the target DEK (the
/// plaintext is written back into the database under that DEK, so it must come from the
/// conversion itself).
fn chunk_record(meta: &MetaKey, uuid: &[u8; 16], progress: u64, start: u64, data: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; CHUNK_HEAD];
    b[0..8].copy_from_slice(&CHUNK_MAGIC);
    b[8..10].copy_from_slice(&STATE_VERSION.to_le_bytes());
    b[16..32].copy_from_slice(uuid);
    b[32..40].copy_from_slice(&progress.to_le_bytes());
    b[40..48].copy_from_slice(&start.to_le_bytes());
    b[48..56].copy_from_slice(&(data.len() as u64).to_le_bytes());
    let tag = meta.mac(MacPurpose::ConvertChunk, &[&b[..64], data]);
    b[64..96].copy_from_slice(&tag);
    b.extend_from_slice(data);
    b
}

/// A valid chunk record for (`uuid`, `progress`): its start and plaintext. Format 1 records
/// (a checksum) only when `trust_format_1`.
fn decode_chunk(
    bytes: &[u8],
    uuid: &[u8; 16],
    progress: u64,
    meta: &MetaKey,
    trust_format_1: bool,
) -> Option<(u64, Vec<u8>)> {
    let b = bytes.get(CHUNK_AT as usize..)?;
    if b.len() < CHUNK_HEAD || b[0..8] != CHUNK_MAGIC || &b[16..32] != uuid {
        return None;
    }
    let format = u16::from_le_bytes([b[8], b[9]]);
    let u = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
    let (p, s, n) = (u(32), u(40), u(48));
    if p != progress || s.checked_add(n)? != p || (CHUNK_HEAD as u64).checked_add(n)? > b.len() as u64 {
        return None;
    }
    let data = &b[CHUNK_HEAD..CHUNK_HEAD + n as usize];
    let ok = match format {
        STATE_VERSION => meta.verify(MacPurpose::ConvertChunk, &[&b[..64], data], &b[64..96]),
        STATE_VERSION_1 if trust_format_1 => {
            let mut h = Sha256::new();
            h.update(&b[..64]);
            h.update(data);
            let sum: [u8; 32] = h.finalize().into();
            sum == b[64..96]
        }
        _ => false,
    };
    ok.then(|| (s, data.to_vec()))
}

/// The in-place encryption engine over a database file and its state file.
pub struct ConvertEngine<'a, D: RawDb, S: SideFile> {
    pub db: &'a mut D,
    pub side: &'a mut S,
    pub cipher: &'a XtsCipher,
    pub state: ConvertState,
    pub slot: usize,
    pub hook: &'a mut dyn Hook,
    /// Length the state file shrinks to before the first chunk grows the database: the
    /// reservation's tail was held for that growth ([`ConvertEngine::prepare`]).
    release_to: Option<u64>,
    /// A state with a new progress was (being) written, or the engine resumed: no rollback.
    committed: bool,
}

/// State-file bytes of a conversion of `plain_len` bytes in `chunk`s: both state slots and a
/// chunk record of the biggest chunk, rounded up to whole 4 KiB blocks (so shrinking back to
/// it frees the tail).
fn state_file_len(plain_len: u64, chunk: u64) -> u64 {
    (CHUNK_AT + CHUNK_HEAD as u64 + chunk.min(plain_len)).div_ceil(4096) * 4096
}

impl<'a, D: RawDb, S: SideFile> ConvertEngine<'a, D, S> {
    /// Start converting the plain file in `db` to `header` (whose DEK `cipher` holds):
    /// [`Self::prepare`], then [`Self::mark`].
    pub fn begin(
        db: &'a mut D,
        side: &'a mut S,
        cipher: &'a XtsCipher,
        header: Header,
        chunk: u64,
        hook: &'a mut dyn Hook,
    ) -> Result<Self> {
        let mut e = Self::prepare(db, side, cipher, header, chunk, hook)?;
        e.mark()?;
        Ok(e)
    }

    /// Check the plain file and reserve the space the conversion needs, durably, before
    /// anything is written: the state file's (two slots and the biggest chunk record) plus
    /// the header region the database grows by, held in the state file's tail until the
    /// first chunk moves. A failure leaves the database untouched and no state file behind.
    pub fn prepare(
        db: &'a mut D,
        side: &'a mut S,
        cipher: &'a XtsCipher,
        header: Header,
        chunk: u64,
        hook: &'a mut dyn Hook,
    ) -> Result<Self> {
        let len = db.len()?;
        if len == 0 || len % 512 != 0 {
            return Err(Error::Config(format!("not a plain SQLite database of whole pages ({len} bytes)")));
        }
        let mut magic = [0u8; 16];
        db.read_exact_at(&mut magic, 0)?;
        if magic != SQLITE_MAGIC {
            return Err(Error::Header { path: "in-place encryption".into(), source: HeaderError::NotEncrypted });
        }
        let unit = crate::crypto::DATA_UNIT as u64;
        let chunk = (chunk.max(unit) / unit) * unit;
        let plain_digest = plain_digest(db)?;
        let header = Header { format: crate::format::FORMAT_VERSION, ..header };
        let state = ConvertState {
            sequence: 1,
            plain_len: len,
            progress: len,
            chunk,
            header,
            plain_digest,
            format: STATE_VERSION,
        };
        let keep = state_file_len(len, chunk);
        if let Err(e) = side.reserve(keep + HEADER_REGION_LEN as u64) {
            let _ = side.remove();
            return Err(e);
        }
        Ok(ConvertEngine { db, side, cipher, state, slot: 0, hook, release_to: Some(keep), committed: false })
    }

    /// Write the initial state, then the conversion marker over the plain file's magic.
    pub fn mark(&mut self) -> Result<()> {
        // Slot B zeroed: a stale state of an earlier attempt must not win.
        let mut bytes = self.state.encode(self.cipher.meta())?;
        bytes.resize(2 * SLOT_LEN, 0);
        self.side.write_at(&bytes, 0)?;
        self.hook.step(Step::ConvertStateWritten)?;
        self.side.sync()?;
        self.hook.step(Step::ConvertStateSynced)?;
        self.db.write_at(&CONVERT_MAGIC, 0)?;
        self.hook.step(Step::ConvertMarked)?;
        self.db.sync()?;
        self.hook.step(Step::ConvertMarkSynced)?;
        Ok(())
    }

    /// Undo a conversion that failed (with the error the caller holds) before its first
    /// chunk was committed: the first chunk's plaintext back from its durable copy (the
    /// move may have overwritten part of it), the file cut back to its plain length, then
    /// the SQLite magic restored, then the state file removed, each synced before the next.
    /// Until the magic is back the marker stays, so a crash in between is recovered by
    /// finishing the conversion, from the same durable state as before.
    pub fn roll_back(&mut self) -> Result<Abort> {
        if self.committed {
            return Ok(Abort::Committed);
        }
        let len = self.state.plain_len;
        let mut magic = [0u8; 16];
        self.db.read_exact_at(&mut magic, 0)?;
        let state = self.side.load()?;
        if magic == SQLITE_MAGIC && self.db.len()? == len {
            // The marker never reached the file: nothing of the database was written.
            self.side.remove()?;
            return Ok(Abort::Untouched);
        }
        let meta = self.cipher.meta();
        if let Some((start, mut data)) =
            state.as_deref().and_then(|b| decode_chunk(b, &self.state.header.db_uuid, len, meta, false))
        {
            if start == 0 {
                data[..16].copy_from_slice(&CONVERT_MAGIC);
            }
            self.db.write_at(&data, start)?;
            self.db.sync()?;
            self.hook.step(Step::ConvertRollbackRestored)?;
        }
        if self.db.len()? > len {
            self.db.set_len(len)?;
            self.db.sync()?;
            self.hook.step(Step::ConvertRollbackTruncated)?;
        }
        self.db.write_at(&SQLITE_MAGIC, 0)?;
        self.db.sync()?;
        self.hook.step(Step::ConvertRollbackUnmarked)?;
        self.side.remove()?;
        Ok(Abort::RolledBack)
    }

    /// Continue an interrupted conversion from its state file. `cipher` holds the DEK of the
    /// state's header. Refused, with nothing written, unless the state was written by a holder
    /// of that DEK (format 2 MAC; format 1 only when `trust_format_1`) and the file is still
    /// what the state says: the plain bytes below the progress untouched, or (all moved) the
    /// header region not yet holding another database's header. So neither a forged state
    /// nor a genuine old one put back next to the finished database can make tde encrypt
    /// bytes of someone else's choosing, or encrypt an encrypted database again.
    pub fn resume(
        db: &'a mut D,
        side: &'a mut S,
        cipher: &'a XtsCipher,
        hook: &'a mut dyn Hook,
        trust_format_1: bool,
    ) -> Result<Self> {
        let bytes =
            side.load()?.ok_or_else(|| Error::Config("the in-place encryption state file is missing".into()))?;
        let (state, slot) = decode_state(&bytes)
            .ok_or_else(|| Error::Config("the in-place encryption state file is damaged".into()))?;
        if !authenticate_state(&bytes, slot, cipher.meta(), trust_format_1) {
            return Err(Error::Config(if state.format == STATE_VERSION_1 {
                "the in-place encryption state file is format 1 (not authenticated): it is not resumed automatically; if this conversion was started by an older sqlite-tde, resume it with `sqlite-tde encrypt --in-place --resume --trust-format-1`".into()
            } else {
                "the in-place encryption state file failed authentication: it was not written by the conversion of this database (tampering); nothing was changed".into()
            }));
        }
        if state.format == STATE_VERSION && !Self::matches_file(db, &state)? {
            return Err(Error::Config(
                "the in-place encryption state file does not belong to this file as it is now (the database is not the half-converted plain file the state describes); nothing was changed".into(),
            ));
        }
        let mut e = ConvertEngine { db, side, cipher, state, slot, hook, release_to: None, committed: true };
        // A chunk whose copy is durable but whose progress is not: move it again from the copy.
        let meta = e.cipher.meta();
        if let Some((start, data)) =
            decode_chunk(&bytes, &e.state.header.db_uuid, e.state.progress, meta, trust_format_1)
        {
            e.move_chunk(start, data)?;
        }
        Ok(e)
    }

    /// Is `db` the file `state` is converting? Until the final header is written the plain
    /// bytes [`PLAIN_PROBE`] are where they were; once it is being written (only after every
    /// chunk moved) the header region holds nothing valid but this conversion's header.
    fn matches_file(db: &mut D, state: &ConvertState) -> Result<bool> {
        if plain_digest(db)? == state.plain_digest {
            return Ok(true);
        }
        if state.progress != 0 {
            return Ok(false);
        }
        let mut region = vec![0u8; HEADER_REGION_LEN.min(db.len()? as usize)];
        db.read_exact_at(&mut region, 0)?;
        let same = |h: &Header| Header { sequence: 0, ..h.clone() } == Header { sequence: 0, ..state.header.clone() };
        let slots = [&region[..SLOT_LEN.min(region.len())], region.get(SLOT_LEN..).unwrap_or(&[])];
        Ok(slots.iter().all(|s| match Header::decode(s) {
            crate::format::SlotStatus::Valid(h) => same(&h),
            _ => true,
        }))
    }

    fn write_state(&mut self, progress: u64) -> Result<()> {
        let mut st = self.state.clone();
        st.sequence += 1;
        st.progress = progress;
        let other = 1 - self.slot;
        self.side.write_at(&st.encode(self.cipher.meta())?, (other * SLOT_LEN) as u64)?;
        self.hook.step(Step::ConvertProgressWritten)?;
        self.side.sync()?;
        self.hook.step(Step::ConvertProgressSynced)?;
        self.state = st;
        self.slot = other;
        Ok(())
    }

    fn move_chunk(&mut self, start: u64, mut data: Vec<u8>) -> Result<()> {
        self.cipher.encrypt(Domain::Database, start, &mut data);
        let at = HEADER_REGION_LEN as u64 + start;
        let half = (data.len() / 2) & !15;
        self.db.write_at(&data[..half], at)?;
        self.hook.step(Step::ConvertDataHalfWritten)?;
        self.db.write_at(&data[half..], at + half as u64)?;
        self.hook.step(Step::ConvertDataWritten)?;
        self.db.sync()?;
        self.hook.step(Step::ConvertDataSynced)?;
        self.committed = true;
        self.write_state(start)
    }

    /// Move every remaining chunk, then write the header and remove the state file.
    pub fn run(&mut self) -> Result<Outcome> {
        let total = self.state.plain_len;
        while self.state.progress > 0 {
            let e = self.state.progress;
            if self.hook.progress(total - e, total).is_break() {
                return Ok(Outcome::Interrupted);
            }
            let c = self.state.chunk;
            let s = ((e - 1) / c) * c;
            let mut buf = vec![0u8; (e - s) as usize];
            self.db.read_exact_at(&mut buf, s)?;
            if s == 0 {
                buf[..16].copy_from_slice(&SQLITE_MAGIC);
            }
            let rec = chunk_record(self.cipher.meta(), &self.state.header.db_uuid, e, s, &buf);
            self.side.write_at(&rec, CHUNK_AT)?;
            self.hook.step(Step::ConvertChunkWritten)?;
            self.side.sync()?;
            self.hook.step(Step::ConvertChunkSynced)?;
            if let Some(keep) = self.release_to.take() {
                // The database grows by the header region with this first move: hand it
                // the space held for that.
                self.side.release_after(keep)?;
            }
            self.move_chunk(s, buf)?;
        }
        let _ = self.hook.progress(total, total);
        let region = initial_region("in-place encryption", &self.state.header, self.cipher.meta())?;
        self.db.write_at(&region, 0)?;
        self.hook.step(Step::ConvertHeaderWritten)?;
        self.db.sync()?;
        self.hook.step(Step::ConvertHeaderSynced)?;
        self.side.remove()?;
        self.hook.step(Step::ConvertStateRemoved)?;
        Ok(Outcome::Done)
    }
}

/// Does a file whose header region reads `region`, with the state file content `state`,
/// need the in-place encryption finished? Yes when it carries the conversion marker, or when
/// its header region is damaged and a valid state file exists (power loss while the final
/// header was written). A file still starting with `SQLite format 3` was never modified.
pub fn recovery_needed(region: &[u8], state: Option<&[u8]>) -> bool {
    if is_converting(region) {
        return true;
    }
    match choose_slot(region) {
        Ok(_) | Err(HeaderError::PlainSqlite) => false,
        Err(_) => state.and_then(decode_state).is_some(),
    }
}

/// Is there a valid in-place encryption state file next to `path`?
pub fn state_file_valid(path: &str) -> bool {
    std::fs::read(side_path(path, CONVERT_JOURNAL_SUFFIX)).ok().and_then(|b| decode_state(&b)).is_some()
}

/// Finish an interrupted in-place encryption (the caller holds EXCLUSIVE on `base`).
pub(crate) fn recover(
    ctx: &TdeContext,
    path: &str,
    base: &mut BaseFile,
    policy: crate::vfs::database::OpenPolicy<'_>,
) -> Result<Outcome> {
    let state_path = side_path(path, CONVERT_JOURNAL_SUFFIX);
    let bytes = std::fs::read(&state_path).map_err(|e| {
        Error::Config(format!(
            "{path}: an in-place encryption was interrupted, but its state file {} cannot be read ({e}): the file cannot be recovered without it",
            state_path.display()
        ))
    })?;
    let (state, _) = decode_state(&bytes).ok_or_else(|| {
        Error::Config(format!("{path}: the in-place encryption state file {} is damaged", state_path.display()))
    })?;
    let h = &state.header;
    let cipher = unwrap_key(ctx, path, &h.db_uuid, &h.key, &h.wrapped_dek, &h.kcv)?;
    let mut raw = BaseDb(base);
    let mut side = FsSide::new(state_path);
    let mut hook = VfsHook::new("encrypt-recover");
    let mut engine = ConvertEngine::resume(&mut raw, &mut side, &cipher, &mut hook, policy.trust_format_1_state)
        .map_err(|e| Error::Config(format!("{path}: {e}")))?;
    engine.run()
}

/// `PRAGMA tde_encrypt_in_place[=ARGS]` ([`RotationArgs`]) on a plain main database opened with
/// `tde_convert=1`. Returns the report and, when done, the new database state for the handle.
pub(crate) fn pragma(
    ctx: &TdeContext,
    path: &str,
    base: &mut BaseFile,
    lock: LockLevel,
    read_only: bool,
    args: &RotationArgs,
) -> Result<(EncryptResult, Option<Database>)> {
    if read_only {
        return Err(Error::Config(format!("{path}: opened read-only: in-place encryption rewrites the file")));
    }
    let took = lock < LockLevel::Exclusive;
    if took {
        acquire(base, LockLevel::Exclusive, args.busy())?;
    }
    let r = run_locked(ctx, path, base, args);
    if took {
        release(base);
    }
    r
}

fn run_locked(
    ctx: &TdeContext,
    path: &str,
    base: &mut BaseFile,
    args: &RotationArgs,
) -> Result<(EncryptResult, Option<Database>)> {
    let started = Instant::now();
    // A plain database: its side files have SQLite's names.
    if let Ok(m) = std::fs::metadata(side_path(path, "-wal")) {
        if m.len() > 0 {
            return Err(Error::Config(format!(
                "{path}: the database has a non-empty WAL; switch it to journal_mode=DELETE first"
            )));
        }
    }
    if let Ok(b) = std::fs::read(side_path(path, "-journal")) {
        if b.len() >= 8 && is_journal_magic(&b[..8]) {
            return Err(Error::Config(format!(
                "{path}: a hot rollback journal is present; open the database with SQLite once to recover it"
            )));
        }
    }
    if !is_plain_sqlite(base)? {
        return Err(Error::Config(format!("{path}: not a plain SQLite database")));
    }
    let key = args.key.clone().unwrap_or_else(|| ctx.default_key.clone());
    let (header, cipher) = crate::vfs::database::new_data_key(ctx, path, &key)?;
    let out = {
        let mut raw = BaseDb(base);
        let mut side = FsSide::new(side_path(path, CONVERT_JOURNAL_SUFFIX));
        let mut hook = VfsHook::new("encrypt");
        let mut engine = ConvertEngine::prepare(
            &mut raw,
            &mut side,
            &cipher,
            header.clone(),
            args.chunk.unwrap_or(DEFAULT_CONVERT_CHUNK),
            &mut hook,
        )?;
        // A failure before the first chunk is committed (typically a full disk) is undone:
        // the plain file stays byte for byte as it was, readable by plain SQLite.
        match engine.mark().and_then(|()| engine.run()) {
            Ok(o) => o,
            Err(e) => {
                return match engine.roll_back() {
                    Ok(Abort::Untouched) => Err(e),
                    Ok(Abort::RolledBack) => Err(Error::RolledBack {
                        path: path.to_string(),
                        operation: "in-place encryption",
                        source: Box::new(e),
                    }),
                    Ok(Abort::Committed) => Err(e),
                    Err(u) => Err(Error::Config(format!(
                        "{path}: in-place encryption failed ({e}) and undoing it failed too ({u}); the next open through tde finishes it"
                    ))),
                }
            }
        }
    };
    let plain_len = base.file_size()?.saturating_sub(HEADER_REGION_LEN as u64);
    match out {
        Outcome::Done => {
            let cipher = ctx.cache.insert(cache_key_of(&header), &header.key.uri, header.key.version, cipher);
            verify_content_key(path, base, &cipher)?;
            let region = read_region(base)?;
            let (h, slot) = choose_slot(&region).map_err(|source| Error::Header { path: path.to_string(), source })?;
            let report = EncryptResult::Done {
                bytes: plain_len,
                key_uri: h.key.uri.clone(),
                key_version: h.key.version,
                db_uuid: uuid::Uuid::from_bytes(h.db_uuid).to_string(),
                seconds: started.elapsed().as_secs_f64(),
            };
            Ok((report, Some(Database::new(path, h, slot, region, cipher))))
        }
        Outcome::Interrupted => Ok((EncryptResult::Interrupted { seconds: started.elapsed().as_secs_f64() }, None)),
    }
}

//! Conversions between plain SQLite databases and encrypted ones:
//!
//! - copies through SQLite's online backup API ([`encrypt_copy`], [`decrypt_copy`]), so the
//!   source may be in use;
//! - the in-place encryption of a plain database file ([`encrypt_in_place`]), crash-safe and
//!   resumable like a rekey (docs/ARCHITECTURE.md, "In-place encryption"; state file format
//!   docs/FORMAT.md §9).
//!
//! In place, every byte must move 8 KiB up to make room for the header region, so the file
//! is processed from its end towards its start: chunk `[s, E)` of the plain file is copied to
//! the state file (durably), encrypted and written to `[s + 8192, E + 8192)`, then the state's
//! progress becomes `s`. The write may overwrite the chunk's own source (hence the copy) but
//! never the plain bytes below `s`. Before the first chunk moves, the plain file's first 16
//! bytes (`SQLite format 3\0`, a constant) are replaced by a conversion marker, so plain
//! SQLite refuses the half-converted file and `tde` recognises it and finishes the job.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlite_vfs::{BaseFile, LockLevel};

use super::engine::{Abort, Hook, Outcome, RawDb, SideFile, Step};
use super::{
    check_writable, observe, parse_json, side_path, BaseDb, FsSide, Progress, VfsHook, CONVERT_JOURNAL_SUFFIX,
};
use crate::crypto::{Domain, MacPurpose, MetaKey, XtsCipher, MAC_LEN};
use crate::error::{take_last_open_error, Error, Result};
use crate::format::{choose_slot, Header, HeaderError, HEADER_REGION_LEN, SLOT_LEN};
use crate::vfs::database::{
    acquire, cache_key_of, initial_region, is_journal_magic, read_region, release, unwrap_key, verify_content_key,
    Database,
};
use crate::vfs::TdeContext;
use crate::{OpenOptions, Tde};

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

#[derive(Debug, Default, serde::Deserialize)]
struct PragmaArgs {
    key: Option<String>,
    chunk: Option<u64>,
    busy_ms: Option<u64>,
}

/// `PRAGMA tde_encrypt_in_place='{"key":..,"chunk":..}'` on a plain main database opened with
/// `tde_convert=1`. Returns the report and, when done, the new database state for the handle.
pub(crate) fn pragma(
    ctx: &TdeContext,
    path: &str,
    base: &mut BaseFile,
    lock: LockLevel,
    read_only: bool,
    value: Option<&str>,
) -> Result<(serde_json::Value, Option<Database>)> {
    if read_only {
        return Err(Error::Config(format!("{path}: opened read-only: in-place encryption rewrites the file")));
    }
    let args: PragmaArgs = match value.map(str::trim).filter(|v| !v.is_empty()) {
        Some(v) => serde_json::from_str(v)
            .map_err(|e| Error::Config(format!("tde_encrypt_in_place: bad options {v:?}: {e}")))?,
        None => PragmaArgs::default(),
    };
    let took = lock < LockLevel::Exclusive;
    if took {
        acquire(base, LockLevel::Exclusive, Duration::from_millis(args.busy_ms.unwrap_or(5000)))?;
    }
    let r = run_locked(ctx, path, base, &args);
    if took {
        release(base);
    }
    r
}

fn run_locked(
    ctx: &TdeContext,
    path: &str,
    base: &mut BaseFile,
    args: &PragmaArgs,
) -> Result<(serde_json::Value, Option<Database>)> {
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
            let report = json!({
                "status": "done",
                "bytes": plain_len,
                "key_uri": h.key.uri,
                "key_version": h.key.version,
                "db_uuid": uuid::Uuid::from_bytes(h.db_uuid).to_string(),
                "seconds": started.elapsed().as_secs_f64(),
            });
            Ok((report, Some(Database::new(path, h, slot, region, cipher))))
        }
        Outcome::Interrupted => {
            Ok((json!({"status": "interrupted", "seconds": started.elapsed().as_secs_f64()}), None))
        }
    }
}

/// What a conversion did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConvertReport {
    /// `done`, `resumed`, `interrupted`.
    pub status: String,
    pub source: PathBuf,
    pub target: PathBuf,
    pub bytes: u64,
    pub key_uri: Option<String>,
    pub key_version: Option<u32>,
    pub seconds: f64,
}

fn sqlite_err(e: rusqlite::Error) -> Error {
    take_last_open_error().unwrap_or(Error::Sqlite(e))
}

fn uri(path: &Path, vfs: &str, extra: &str) -> Result<String> {
    let p = path.to_str().ok_or_else(|| Error::Config(format!("path is not UTF-8: {}", path.display())))?;
    let mut out = String::from("file:");
    for b in p.bytes() {
        if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out.push_str(&format!("?vfs={vfs}{extra}"));
    Ok(out)
}

/// Copy `src` to `dst` with the backup API, `pages` per step, reporting progress.
fn backup(src: &Connection, dst: &mut Connection, operation: &'static str) -> Result<u64> {
    let b = rusqlite::backup::Backup::new(src, dst)?;
    loop {
        let r = b.step(256)?;
        let p = b.progress();
        let total = p.pagecount.max(0) as u64;
        let done = total.saturating_sub(p.remaining.max(0) as u64);
        if observe(&Progress { operation, done, total }).is_break() {
            return Err(Error::Config("interrupted".into()));
        }
        match r {
            rusqlite::backup::StepResult::Done => return Ok(total),
            rusqlite::backup::StepResult::More => {}
            rusqlite::backup::StepResult::Busy | rusqlite::backup::StepResult::Locked => {
                std::thread::sleep(Duration::from_millis(20))
            }
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn refuse_existing(dst: &Path) -> Result<()> {
    // `symlink_metadata`: a dangling symbolic link is an existing entry too.
    if dst.symlink_metadata().is_ok() {
        return Err(Error::Config(format!("{}: already exists; choose a new file", dst.display())));
    }
    Ok(())
}

/// `sqlite-tde encrypt PLAIN OUT`: an encrypted copy of a plain database (which may be in use:
/// the backup API restarts when it changes), under `key` (default: the VFS's default key).
pub fn encrypt_copy(tde: &Tde, src: &Path, dst: &Path, key: Option<&str>) -> Result<ConvertReport> {
    let started = Instant::now();
    refuse_existing(dst)?;
    let source = Connection::open_with_flags(src, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI)?;
    source
        .query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))
        .map_err(|e| Error::Config(format!("{}: not a readable plain SQLite database ({e})", src.display())))?;
    let result = (|| {
        let mut target = tde.open_with(
            dst,
            &OpenOptions { key: key.map(str::to_string), read_only: false, must_exist: false, ..Default::default() },
        )?;
        let pages = backup(&source, &mut target, "encrypt")?;
        let ok: String = target.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        if ok != "ok" {
            return Err(Error::Config(format!("{}: the encrypted copy fails quick_check: {ok}", dst.display())));
        }
        let status: String = target.query_row("PRAGMA tde_status", [], |r| r.get(0)).map_err(sqlite_err)?;
        let v = parse_json(&status)?;
        let page_size: u64 = target.query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0))? as u64;
        Ok(ConvertReport {
            status: "done".into(),
            source: src.to_path_buf(),
            target: dst.to_path_buf(),
            bytes: pages * page_size,
            key_uri: v["key"].as_str().map(str::to_string),
            key_version: v["key_version"].as_u64().map(|x| x as u32),
            seconds: started.elapsed().as_secs_f64(),
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(dst);
        let _ = std::fs::remove_file(crate::format::side_path(dst, crate::format::SideFile::Journal));
    }
    result
}

/// What [`decrypt_copy`] does when its output path exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Existing {
    /// Refuse (the default): an existing file, or a symbolic link even a dangling one.
    #[default]
    Refuse,
    /// Replace the directory entry: a symbolic link there is replaced itself, never followed.
    Replace,
}

/// `sqlite-tde decrypt ENC OUT`: a plaintext copy of an encrypted database (for migration or
/// debugging). Always asks the KMS to unwrap the DEK (`PRAGMA tde_kms_check`), even when this
/// process has it cached, so the caller's `Decrypt` permission is checked (and the KMS audits
/// the call).
///
/// The plaintext is written to a new owner-only (0600) temp file in `dst`'s directory, created
/// exclusively under an unpredictable name, fsynced, then linked (or, with
/// [`Existing::Replace`], renamed) to `dst`: neither step follows a symbolic link planted at
/// `dst`, and a crash leaves either no `dst` or a complete one.
pub fn decrypt_copy(tde: &Tde, src: &Path, dst: &Path, existing: Existing) -> Result<ConvertReport> {
    let started = Instant::now();
    if existing == Existing::Refuse {
        refuse_existing(dst)?;
    }
    let source =
        tde.open_with(src, &OpenOptions { key: None, read_only: true, must_exist: true, ..Default::default() })?;
    let _ = take_last_open_error();
    let check: String = source.query_row("PRAGMA tde_kms_check", [], |r| r.get(0)).map_err(sqlite_err)?;
    let check = parse_json(&check)?;
    let dir = dst.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    // `tempfile` creates with O_CREAT|O_EXCL and mode 0600; SQLite gives the journal it makes
    // beside it the same mode.
    let tmp = tempfile::Builder::new()
        .prefix(&crate::fsutil::temp_prefix(dst))
        .tempfile_in(dir)
        .map_err(|e| Error::Config(format!("{}: cannot create the output: {e}", dst.display())))?
        .into_temp_path();
    let journal = crate::format::legacy_side_path(&tmp, crate::format::SideFile::Journal);
    let copied = (|| {
        let mut target = Connection::open_with_flags(
            &tmp,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NOFOLLOW | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        let pages = backup(&source, &mut target, "decrypt")?;
        let page_size: u64 = target.query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0))? as u64;
        drop(target);
        std::fs::File::open(&tmp)?.sync_all()?;
        Ok(pages * page_size)
    })();
    let bytes = match copied {
        Ok(b) => b,
        Err(e) => {
            let _ = std::fs::remove_file(&journal);
            return Err(e);
        }
    };
    let placed = match existing {
        Existing::Refuse => tmp.persist_noclobber(dst),
        Existing::Replace => tmp.persist(dst),
    };
    placed.map_err(|e| match e.error.kind() {
        std::io::ErrorKind::AlreadyExists => {
            Error::Config(format!("{}: already exists; choose a new file", dst.display()))
        }
        _ => Error::Config(format!("{}: cannot create the output: {}", dst.display(), e.error)),
    })?;
    crate::fsutil::sync_dir(dir)?;
    Ok(ConvertReport {
        status: "done".into(),
        source: src.to_path_buf(),
        target: dst.to_path_buf(),
        bytes,
        key_uri: check["key_uri"].as_str().map(str::to_string),
        key_version: check["key_version"].as_u64().map(|v| v as u32),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Options of [`encrypt_in_place`].
#[derive(Debug, Clone, Default)]
pub struct InPlaceOptions {
    /// CMK (key id or alias); `None`: the VFS's default key.
    pub key: Option<String>,
    pub chunk: Option<u64>,
    pub busy_timeout: Option<Duration>,
    /// Only finish an interrupted conversion.
    pub resume_only: bool,
    /// Resume a conversion whose state file a format-1 build wrote (not authenticated):
    /// the operator's explicit decision (docs/FORMAT.md §11).
    pub trust_format_1: bool,
}

/// `sqlite-tde encrypt --in-place PLAIN`: encrypt a plain database file where it lies,
/// crash-safe and resumable (an interrupted conversion is finished by the next open through
/// `tde`, or by calling this again). A WAL-mode database is switched to rollback mode for the
/// conversion and back afterwards (a crash in between leaves it in rollback mode).
pub fn encrypt_in_place(tde: &Tde, path: &Path, opts: &InPlaceOptions) -> Result<ConvertReport> {
    let started = Instant::now();
    check_writable(path, "in-place encryption")?;
    let busy = opts.busy_timeout.unwrap_or(Duration::from_secs(5));
    let report = |status: &str, v: Option<&serde_json::Value>| ConvertReport {
        status: status.into(),
        source: path.to_path_buf(),
        target: path.to_path_buf(),
        bytes: v.and_then(|v| v["bytes"].as_u64()).unwrap_or(0),
        key_uri: v.and_then(|v| v["key_uri"].as_str().or(v["key"].as_str()).map(str::to_string)),
        key_version: v.and_then(|v| v["key_version"].as_u64()).map(|x| x as u32),
        seconds: started.elapsed().as_secs_f64(),
    };
    // Everything goes through SQLite connections (never a descriptor of our own on the file:
    // the caller may hold connections whose POSIX locks closing one would drop). Opening with
    // `tde_convert=1` passes a plain file through, and finishes an interrupted conversion.
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_URI | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut params = format!("&{}=1", crate::vfs::URI_CONVERT_PARAM);
    if opts.trust_format_1 {
        params.push_str(&format!("&{}=1", crate::vfs::URI_TRUST_FORMAT_1_PARAM));
    }
    let convert_uri = uri(path, tde.vfs_name(), &params)?;
    let status_of = |c: &Connection| -> Result<serde_json::Value> {
        let s: String = c.query_row("PRAGMA tde_status", [], |r| r.get(0)).map_err(sqlite_err)?;
        parse_json(&s)
    };
    let _ = take_last_open_error();
    let probe = Connection::open_with_flags(&convert_uri, flags).map_err(sqlite_err)?;
    let st = status_of(&probe)?;
    drop(probe);
    match st["state"].as_str() {
        Some("plain") => {}
        Some("open") if st["recovered"] == "in-place encryption" => return Ok(report("resumed", Some(&st))),
        Some("open") if opts.resume_only => return Ok(report("nothing-to-resume", Some(&st))),
        Some("open") => {
            return Err(Error::Config(format!("{}: not a plain SQLite database (already encrypted)", path.display())))
        }
        other => {
            return Err(Error::Vfs(sqlite_vfs::VfsError::new(
                sqlite_vfs::ErrorCode::Busy,
                format!(
                    "{}: busy ({}): another connection holds the database; retry",
                    path.display(),
                    other.unwrap_or("?")
                ),
            )))
        }
    }
    if opts.resume_only {
        return Ok(report("nothing-to-resume", None));
    }
    // With plain SQLite: recover a hot journal, and leave WAL mode (the conversion runs in
    // rollback mode; switching needs every other connection closed).
    let was_wal = {
        let plain = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_URI)?;
        plain.busy_timeout(busy)?;
        plain
            .query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))
            .map_err(|e| Error::Config(format!("{}: not a readable plain SQLite database ({e})", path.display())))?;
        let mode: String = plain.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
        if mode.eq_ignore_ascii_case("wal") {
            let m: String = plain.query_row("PRAGMA journal_mode=DELETE", [], |r| r.get(0))?;
            if !m.eq_ignore_ascii_case("delete") {
                return Err(Error::Config(format!(
                    "{}: cannot leave WAL mode (other connections?): {m}",
                    path.display()
                )));
            }
            true
        } else {
            false
        }
    };
    let conn = Connection::open_with_flags(&convert_uri, flags).map_err(sqlite_err)?;
    conn.busy_timeout(busy)?;
    conn.execute_batch("BEGIN EXCLUSIVE").map_err(sqlite_err)?;
    let args = json!({"key": opts.key, "chunk": opts.chunk, "busy_ms": busy.as_millis() as u64});
    let _ = take_last_open_error();
    let r: std::result::Result<String, _> =
        conn.query_row(&format!("PRAGMA tde_encrypt_in_place='{}'", args.to_string().replace('\'', "''")), [], |r| {
            r.get(0)
        });
    let detail = take_last_open_error();
    let _ = conn.execute_batch("COMMIT");
    drop(conn);
    let text = r.map_err(|e| detail.unwrap_or(Error::Sqlite(e)))?;
    let v = parse_json(&text)?;
    let status = v["status"].as_str().unwrap_or("unknown").to_string();
    if status == "done" && was_wal {
        let c =
            tde.open_with(path, &OpenOptions { key: None, read_only: false, must_exist: true, ..Default::default() })?;
        c.busy_timeout(busy)?;
        let _: String = c.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    }
    Ok(report(&status, Some(&v)))
}

//! The rekey engine: re-encrypts a database file's blocks from the old DEK to the new one,
//! chunk by chunk, crash-safe at every step. It works on two abstract files (the database,
//! through SQLite's own handle in production, and the rekey journal) so that tests can run it
//! over a simulated disk that loses or tears unsynced writes.
//!
//! Invariant (docs/ARCHITECTURE.md, "Rekey"): the newest valid header slot says exactly
//! which key each block is under. Without rekey state: the header's DEK. With rekey state
//! `{new DEK, P}`: blocks below `P` under the new DEK, the rest under the old one, except the
//! hotzone `[P, P + chunk)` while the journal holds a valid record for `P` (then the journal
//! holds its old ciphertext and recovery puts it back first).
//!
//! Steps per chunk at `P` (each name is a crash-injection point, see [`Step`]):
//! 1. journal := old ciphertext of the chunk; fsync; then its checksummed record header
//!    {uuid, new KCV, P, length}; fsync;
//! 2. re-encrypt the chunk in memory and write it in place (two writes); fsync;
//! 3. header (other slot, sequence + 1) with progress `P + n`; fsync.
//!
//! Finish: header without rekey state (new DEK as the DEK) written to both slots one after
//! the other (each synced), so no copy of the old wrapped DEK remains; remove the journal.

use std::ops::ControlFlow;

use crate::crypto::{Domain, XtsCipher};
use crate::error::{Error, Result};
use crate::format::{Header, HEADER_REGION_LEN, SLOT_LEN};

use super::journal;

/// Crash-injection points, in the order a rekey passes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// The new DEK came back from the KMS; nothing written yet.
    BeginGenerated,
    /// The header with rekey state (progress 0) was written, not yet synced.
    BeginHeaderWritten,
    /// ... and synced.
    BeginHeaderSynced,
    /// Recovery: a valid journal record was written back over its chunk, not yet synced.
    RecoverRestored,
    /// ... and synced.
    RecoverSynced,
    /// The chunk's old ciphertext was written to the journal, not yet synced.
    JournalDataWritten,
    /// ... and synced.
    JournalDataSynced,
    /// The journal record's header was written, not yet synced.
    JournalWritten,
    /// ... and synced.
    JournalSynced,
    /// The first half of the re-encrypted chunk was written in place.
    DataHalfWritten,
    /// The whole re-encrypted chunk was written, not yet synced.
    DataWritten,
    /// ... and synced.
    DataSynced,
    /// The header with the advanced progress was written, not yet synced.
    ProgressWritten,
    /// ... and synced.
    ProgressSynced,
    /// The final header (no rekey state) was written to the inactive slot, not yet synced.
    FinalWritten,
    /// ... and synced.
    FinalSynced,
    /// The final header was written to the other slot too, not yet synced.
    FinalSecondWritten,
    /// ... and synced.
    FinalSecondSynced,
    /// The journal was removed.
    JournalRemoved,
    /// In-place encryption: the state file (new header, progress) was written, not synced.
    ConvertStateWritten,
    /// ... and synced.
    ConvertStateSynced,
    /// The plain file's magic was replaced by the conversion marker, not synced.
    ConvertMarked,
    /// ... and synced.
    ConvertMarkSynced,
    /// A chunk's plaintext was written to the state file, not synced.
    ConvertChunkWritten,
    /// ... and synced.
    ConvertChunkSynced,
    /// The first half of the chunk's ciphertext was written at its new place.
    ConvertDataHalfWritten,
    /// The whole chunk was written, not synced.
    ConvertDataWritten,
    /// ... and synced.
    ConvertDataSynced,
    /// The state with the new progress was written, not synced.
    ConvertProgressWritten,
    /// ... and synced.
    ConvertProgressSynced,
    /// The encryption header was written over the marker, not synced.
    ConvertHeaderWritten,
    /// ... and synced.
    ConvertHeaderSynced,
    /// The state file was removed.
    ConvertStateRemoved,
    /// Rollback of a rekey that failed before its first chunk committed: the hotzone was
    /// written back from the journal and synced.
    RollbackHotzoneRestored,
    /// ... the header slot `begin` overwrote has its previous bytes again, synced.
    RollbackHeaderRestored,
    /// Rollback of an in-place encryption: the first chunk's plaintext was written back
    /// from its copy and synced.
    ConvertRollbackRestored,
    /// ... the file was cut back to its plain length and synced.
    ConvertRollbackTruncated,
    /// ... the SQLite magic replaced the marker, synced (the state file is removed next).
    ConvertRollbackUnmarked,
}

impl Step {
    /// Every step of a rekey, in order.
    pub const REKEY: [Step; 19] = [
        Step::BeginGenerated,
        Step::BeginHeaderWritten,
        Step::BeginHeaderSynced,
        Step::RecoverRestored,
        Step::RecoverSynced,
        Step::JournalDataWritten,
        Step::JournalDataSynced,
        Step::JournalWritten,
        Step::JournalSynced,
        Step::DataHalfWritten,
        Step::DataWritten,
        Step::DataSynced,
        Step::ProgressWritten,
        Step::ProgressSynced,
        Step::FinalWritten,
        Step::FinalSynced,
        Step::FinalSecondWritten,
        Step::FinalSecondSynced,
        Step::JournalRemoved,
    ];

    /// Every step of an in-place encryption, in order.
    pub const CONVERT: [Step; 14] = [
        Step::ConvertStateWritten,
        Step::ConvertStateSynced,
        Step::ConvertMarked,
        Step::ConvertMarkSynced,
        Step::ConvertChunkWritten,
        Step::ConvertChunkSynced,
        Step::ConvertDataHalfWritten,
        Step::ConvertDataWritten,
        Step::ConvertDataSynced,
        Step::ConvertProgressWritten,
        Step::ConvertProgressSynced,
        Step::ConvertHeaderWritten,
        Step::ConvertHeaderSynced,
        Step::ConvertStateRemoved,
    ];

    /// Steps of the rollbacks ([`RekeyEngine::roll_back`], `ConvertEngine::roll_back`), only
    /// passed after a failure.
    pub const ROLLBACK: [Step; 5] = [
        Step::RollbackHotzoneRestored,
        Step::RollbackHeaderRestored,
        Step::ConvertRollbackRestored,
        Step::ConvertRollbackTruncated,
        Step::ConvertRollbackUnmarked,
    ];

    /// Stable name (used by `SQLITE_TDE_TEST_CRASH_AT`).
    pub fn name(self) -> &'static str {
        match self {
            Step::BeginGenerated => "begin-generated",
            Step::BeginHeaderWritten => "begin-header-written",
            Step::BeginHeaderSynced => "begin-header-synced",
            Step::RecoverRestored => "recover-restored",
            Step::RecoverSynced => "recover-synced",
            Step::JournalDataWritten => "journal-data-written",
            Step::JournalDataSynced => "journal-data-synced",
            Step::JournalWritten => "journal-written",
            Step::JournalSynced => "journal-synced",
            Step::DataHalfWritten => "data-half-written",
            Step::DataWritten => "data-written",
            Step::DataSynced => "data-synced",
            Step::ProgressWritten => "progress-written",
            Step::ProgressSynced => "progress-synced",
            Step::FinalWritten => "final-written",
            Step::FinalSynced => "final-synced",
            Step::FinalSecondWritten => "final-second-written",
            Step::FinalSecondSynced => "final-second-synced",
            Step::JournalRemoved => "journal-removed",
            Step::ConvertStateWritten => "convert-state-written",
            Step::ConvertStateSynced => "convert-state-synced",
            Step::ConvertMarked => "convert-marked",
            Step::ConvertMarkSynced => "convert-mark-synced",
            Step::ConvertChunkWritten => "convert-chunk-written",
            Step::ConvertChunkSynced => "convert-chunk-synced",
            Step::ConvertDataHalfWritten => "convert-data-half-written",
            Step::ConvertDataWritten => "convert-data-written",
            Step::ConvertDataSynced => "convert-data-synced",
            Step::ConvertProgressWritten => "convert-progress-written",
            Step::ConvertProgressSynced => "convert-progress-synced",
            Step::ConvertHeaderWritten => "convert-header-written",
            Step::ConvertHeaderSynced => "convert-header-synced",
            Step::ConvertStateRemoved => "convert-state-removed",
            Step::RollbackHotzoneRestored => "rollback-hotzone-restored",
            Step::RollbackHeaderRestored => "rollback-header-restored",
            Step::ConvertRollbackRestored => "convert-rollback-restored",
            Step::ConvertRollbackTruncated => "convert-rollback-truncated",
            Step::ConvertRollbackUnmarked => "convert-rollback-unmarked",
        }
    }

    /// Parse a [`Step::name`].
    pub fn from_name(s: &str) -> Option<Step> {
        Step::REKEY.into_iter().chain(Step::CONVERT).chain(Step::ROLLBACK).find(|x| x.name() == s)
    }
}

/// Observation and fault injection around the engine.
pub trait Hook {
    /// Called at each step; an error aborts the operation there (tests simulate a crash).
    fn step(&mut self, step: Step) -> Result<()>;
    /// Progress after each chunk; `Break` stops cleanly (the state on disk is resumable).
    fn progress(&mut self, done: u64, total: u64) -> ControlFlow<()>;
}

/// A hook that does nothing.
pub struct NoHook;
impl Hook for NoHook {
    fn step(&mut self, _: Step) -> Result<()> {
        Ok(())
    }
    fn progress(&mut self, _: u64, _: u64) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
}

/// The database file, physical bytes.
#[allow(clippy::len_without_is_empty)] // a file length, never a collection
pub trait RawDb {
    /// Read exactly `buf.len()` bytes at `off` (an error if the file is shorter).
    fn read_exact_at(&mut self, buf: &mut [u8], off: u64) -> Result<()>;
    fn write_at(&mut self, buf: &[u8], off: u64) -> Result<()>;
    /// Make every write so far durable (fsync).
    fn sync(&mut self) -> Result<()>;
    fn len(&mut self) -> Result<u64>;
    fn set_len(&mut self, len: u64) -> Result<()>;
}

/// The side file holding the hotzone (rekey) or the conversion state (in-place encryption).
pub trait SideFile {
    /// The whole content, `None` if the file does not exist.
    fn load(&mut self) -> Result<Option<Vec<u8>>>;
    /// Write `bytes` at `off` (creating the file).
    fn write_at(&mut self, bytes: &[u8], off: u64) -> Result<()>;
    /// Make the content and the file's existence durable.
    fn sync(&mut self) -> Result<()>;
    /// Delete the file (durably).
    fn remove(&mut self) -> Result<()>;
    /// Allocate `len` bytes (the file's content does not matter yet), durably, so that the
    /// writes of the operation cannot run out of space (docs/ARCHITECTURE.md, "Reserve
    /// before commit"). The default writes zeros and syncs.
    fn reserve(&mut self, len: u64) -> Result<()> {
        const PIECE: u64 = 1 << 20;
        let zeros = vec![0u8; PIECE.min(len) as usize];
        let mut at = 0;
        while at < len {
            let n = PIECE.min(len - at);
            self.write_at(&zeros[..n as usize], at)?;
            at += n;
        }
        self.sync()
    }
    /// Give back the space past `len` (part of a reservation that another file needs now).
    /// The default keeps it: only a real file system has space to give back.
    fn release_after(&mut self, _len: u64) -> Result<()> {
        Ok(())
    }
}

/// What undoing a failed operation found (see [`RekeyEngine::roll_back`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abort {
    /// Nothing of the database had been written: there is nothing to undo.
    Untouched,
    /// The state was written but no chunk committed: the database is back to exactly its
    /// bytes before the operation, and the side file is gone.
    RolledBack,
    /// A chunk was committed (or the operation was resumed): only finishing it is safe.
    Committed,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every block is under the new DEK and the header says so.
    Done,
    /// Stopped between chunks at the caller's request; resumable.
    Interrupted,
}

/// Default chunk (hotzone) size.
pub const DEFAULT_CHUNK: u64 = 32 << 20;

/// Re-encrypt `buf` (physical bytes of logical offset `offset` of a main database) from `old`
/// to `new`. All-zero blocks (holes, which read as zeros under any key) stay zero. Large
/// buffers are split over up to four threads.
pub fn transform(old: &XtsCipher, new: &XtsCipher, offset: u64, buf: &mut [u8]) {
    const PART: usize = 1 << 20;
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(4);
    if threads <= 1 || buf.len() < 2 * PART {
        transform_serial(old, new, offset, buf);
        return;
    }
    // Split on data-unit boundaries into `threads` contiguous parts.
    let unit = crate::crypto::DATA_UNIT;
    let per = buf.len().div_ceil(threads).div_ceil(unit) * unit;
    std::thread::scope(|s| {
        let mut off = offset;
        for part in buf.chunks_mut(per) {
            let o = off;
            off += part.len() as u64;
            s.spawn(move || transform_serial(old, new, o, part));
        }
    });
}

fn transform_serial(old: &XtsCipher, new: &XtsCipher, offset: u64, buf: &mut [u8]) {
    const PIECE: usize = 64 << 10;
    let mut off = offset;
    for piece in buf.chunks_mut(PIECE) {
        let has_hole = piece.chunks_exact(16).any(|b| u128::from_ne_bytes(b.try_into().unwrap()) == 0);
        if !has_hole {
            old.decrypt(Domain::Database, off, piece);
            new.encrypt(Domain::Database, off, piece);
        } else {
            for (i, b) in piece.chunks_exact_mut(16).enumerate() {
                if u128::from_ne_bytes((&*b).try_into().unwrap()) != 0 {
                    let o = off + (i as u64) * 16;
                    old.decrypt(Domain::Database, o, b);
                    new.encrypt(Domain::Database, o, b);
                }
            }
        }
        off += piece.len() as u64;
    }
}

/// Bytes of re-encryptable data of a main database file of physical length `len`: every
/// whole 16-byte block after the header region (the length encoding's marker bytes, if any,
/// are zeros and stay as they are).
pub fn data_len(len: u64) -> u64 {
    len.saturating_sub(HEADER_REGION_LEN as u64) & !15
}

/// One rekey over a database file and its journal.
pub struct RekeyEngine<'a, D: RawDb, J: SideFile> {
    pub db: &'a mut D,
    pub journal: &'a mut J,
    pub old: &'a XtsCipher,
    pub new: &'a XtsCipher,
    /// Newest header (with rekey state while running).
    pub header: Header,
    /// Slot holding `header`.
    pub slot: usize,
    /// Hotzone size (a multiple of the 4 KiB data unit).
    pub chunk: u64,
    pub hook: &'a mut dyn Hook,
    buf: Vec<u8>,
    /// Set by [`Self::begin`]: the slot it overwrote, that slot's previous bytes, and the
    /// header before the rekey.
    undo: Option<(usize, Vec<u8>, Header)>,
    /// A progress header was (being) written: a chunk may be committed, no rollback.
    committed: bool,
}

impl<'a, D: RawDb, J: SideFile> RekeyEngine<'a, D, J> {
    /// An engine over `db` and its `journal`, re-encrypting from `old` to `new` in `chunk`s.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        db: &'a mut D,
        journal: &'a mut J,
        old: &'a XtsCipher,
        new: &'a XtsCipher,
        header: Header,
        slot: usize,
        chunk: u64,
        hook: &'a mut dyn Hook,
    ) -> Self {
        let unit = crate::crypto::DATA_UNIT as u64;
        let chunk = (chunk.max(unit) / unit) * unit;
        RekeyEngine { db, journal, old, new, header, slot, chunk, hook, buf: Vec::new(), undo: None, committed: false }
    }

    /// Write `h` (sequence + 1) to the slot not holding the newest header, and sync.
    fn write_header(&mut self, mut h: Header, written: Step, synced: Step) -> Result<()> {
        h.sequence = self.header.sequence + 1;
        h.format = crate::format::FORMAT_VERSION;
        // A slot is MACed under the DEK it names as the database's: the old one while the
        // rekey runs (only a holder of the current DEK can start or advance a rekey), the new
        // one once it is finished.
        let meta = if h.rekey.is_some() { self.old.meta() } else { self.new.meta() };
        let bytes = h.encode(meta).map_err(|source| Error::Header { path: "rekey".into(), source })?;
        let other = 1 - self.slot;
        self.db.write_at(&bytes, (other * SLOT_LEN) as u64)?;
        self.hook.step(written)?;
        self.db.sync()?;
        self.hook.step(synced)?;
        self.header = h;
        self.slot = other;
        Ok(())
    }

    /// Bytes the journal needs: one record, for the biggest chunk of this database.
    pub fn journal_len(&mut self) -> Result<u64> {
        let total = data_len(self.db.len()?);
        Ok(journal::RECORD_HEADER_LEN as u64 + self.chunk.min(total))
    }

    /// Start: reserve the journal's space (durably), then record `{new wrapped DEK, new KCV,
    /// progress 0}` in the header. `self.header` must be the current header without rekey
    /// state, and `state` its rekey state. A failed reservation leaves the database untouched
    /// and no journal behind.
    pub fn begin(&mut self, state: crate::format::RekeyState) -> Result<()> {
        debug_assert!(self.header.rekey.is_none());
        self.hook.step(Step::BeginGenerated)?;
        let need = self.journal_len()?;
        if let Err(e) = self.journal.reserve(need) {
            let _ = self.journal.remove();
            return Err(e);
        }
        let other = 1 - self.slot;
        let mut before = vec![0u8; SLOT_LEN];
        self.db.read_exact_at(&mut before, (other * SLOT_LEN) as u64)?;
        self.undo = Some((other, before, self.header.clone()));
        let mut h = self.header.clone();
        h.rekey = Some(crate::format::RekeyState { progress: 0, ..state });
        self.write_header(h, Step::BeginHeaderWritten, Step::BeginHeaderSynced)
    }

    /// After a crash: put back the hotzone from a journal record that matches the header,
    /// then continue. Idempotent (a crash during recovery is recovered the same way).
    /// `trust_format_1`: honour a format 1 (unauthenticated) journal record.
    pub fn recover(&mut self, trust_format_1: bool) -> Result<Outcome> {
        let r = self.header.rekey.clone().ok_or_else(|| Error::Config("recover: no rekey in progress".into()))?;
        self.committed = true;
        if let Some(bytes) = self.journal.load()? {
            if let Some(rec) = journal::decode(&bytes, self.old.meta(), trust_format_1) {
                if rec.db_uuid == self.header.db_uuid && rec.new_kcv == r.kcv && rec.progress == r.progress {
                    self.db.write_at(&rec.data, HEADER_REGION_LEN as u64 + rec.progress)?;
                    self.hook.step(Step::RecoverRestored)?;
                    self.db.sync()?;
                    self.hook.step(Step::RecoverSynced)?;
                }
            }
        }
        self.run()
    }

    /// Re-encrypt from the header's progress to the end, then finish.
    pub fn run(&mut self) -> Result<Outcome> {
        let total = data_len(self.db.len()?);
        loop {
            let r = self.header.rekey.clone().ok_or_else(|| Error::Config("run: no rekey in progress".into()))?;
            let p = r.progress;
            if p >= total {
                break;
            }
            if self.hook.progress(p, total).is_break() {
                return Ok(Outcome::Interrupted);
            }
            let n = self.chunk.min(total - p) as usize;
            let mut buf = std::mem::take(&mut self.buf);
            buf.resize(n, 0);
            let at = HEADER_REGION_LEN as u64 + p;
            self.db.read_exact_at(&mut buf, at)?;
            // 1. The hotzone's old ciphertext, durable before the chunk is touched: the data
            // first, then (once the data is synced) the record header that makes it valid.
            self.journal.write_at(&buf, journal::RECORD_HEADER_LEN as u64)?;
            self.hook.step(Step::JournalDataWritten)?;
            // The journal holds its own copy now: re-encrypt `buf` on other threads while the
            // journal is synced; nothing reaches the database before both are done.
            let (old, new) = (self.old, self.new);
            let uuid = self.header.db_uuid;
            let journalled = std::thread::scope(|s| {
                // The record's MAC covers the old ciphertext: computed on the worker before it
                // re-encrypts `buf`, while this thread waits for the journal's fsync.
                let (tag_tx, tag_rx) = std::sync::mpsc::sync_channel(1);
                let (buf, kcv) = (&mut buf, &r.kcv);
                let worker = s.spawn(move || {
                    let _ = tag_tx.send(journal::record_tag(old.meta(), &uuid, kcv, p, buf));
                    transform(old, new, p, buf)
                });
                let r = (|| {
                    self.journal.sync()?;
                    self.hook.step(Step::JournalDataSynced)?;
                    let tag =
                        tag_rx.recv().map_err(|_| Error::Config("rekey: the re-encryption thread failed".into()))?;
                    let head = journal::encode_header(&uuid, &r.kcv, p, n as u64, &tag);
                    self.journal.write_at(&head, 0)?;
                    self.hook.step(Step::JournalWritten)?;
                    self.journal.sync()?;
                    self.hook.step(Step::JournalSynced)
                })();
                worker.join().expect("re-encryption thread");
                r
            });
            journalled?;
            // 2. Re-encrypted chunk in place.
            let half = (n / 2) & !15;
            self.db.write_at(&buf[..half], at)?;
            self.hook.step(Step::DataHalfWritten)?;
            self.db.write_at(&buf[half..], at + half as u64)?;
            self.hook.step(Step::DataWritten)?;
            self.db.sync()?;
            self.hook.step(Step::DataSynced)?;
            self.buf = buf;
            // 3. Advance the progress. From here the original header slot may be overwritten.
            self.committed = true;
            let mut h = self.header.clone();
            h.rekey.as_mut().unwrap().progress = p + n as u64;
            self.write_header(h, Step::ProgressWritten, Step::ProgressSynced)?;
        }
        let _ = self.hook.progress(total, total);
        self.finish()
    }

    /// Undo a rekey that failed (with the error the caller holds) before its first chunk was
    /// committed: the hotzone back from the journal if its record is valid (the chunk may
    /// have been written in place), then the overwritten header slot back to its exact
    /// previous bytes, then the journal removed. Each step is synced before the next, and a
    /// crash in between is recovered like any interrupted rekey (the header still says
    /// "progress 0" until the slot is restored; a torn restore leaves the slot invalid and
    /// the original header the newest valid one).
    pub fn roll_back(&mut self) -> Result<Abort> {
        if self.committed {
            return Ok(Abort::Committed);
        }
        let Some((slot, before, original)) = self.undo.clone() else {
            return Ok(if self.header.rekey.is_some() { Abort::Committed } else { Abort::Untouched });
        };
        if let Some(r) = self.header.rekey.clone().filter(|_| self.slot == slot) {
            let meta = self.old.meta();
            if let Some(rec) = self.journal.load()?.as_deref().and_then(|b| journal::decode(b, meta, false)) {
                if rec.db_uuid == self.header.db_uuid && rec.new_kcv == r.kcv && rec.progress == 0 {
                    self.db.write_at(&rec.data, HEADER_REGION_LEN as u64)?;
                    self.db.sync()?;
                    self.hook.step(Step::RollbackHotzoneRestored)?;
                }
            }
        }
        // Also when the header write itself failed (`self.slot` unchanged): its bytes may
        // have reached the file.
        self.db.write_at(&before, (slot * SLOT_LEN) as u64)?;
        self.db.sync()?;
        self.hook.step(Step::RollbackHeaderRestored)?;
        self.slot = 1 - slot;
        self.header = original;
        self.undo = None;
        self.journal.remove()?;
        Ok(Abort::RolledBack)
    }

    fn finish(&mut self) -> Result<Outcome> {
        let r = self.header.rekey.clone().expect("rekey state");
        let mut h = self.header.clone();
        h.rekey = None;
        h.key = r.key;
        h.wrapped_dek = r.wrapped_dek;
        h.kcv = r.kcv;
        h.dek_created = crate::vfs::database::unix_now();
        self.write_header(h.clone(), Step::FinalWritten, Step::FinalSynced)?;
        // The other slot still holds the old wrapped DEK (rekey state): overwrite it too.
        self.write_header(h, Step::FinalSecondWritten, Step::FinalSecondSynced)?;
        self.journal.remove()?;
        self.hook.step(Step::JournalRemoved)?;
        Ok(Outcome::Done)
    }
}

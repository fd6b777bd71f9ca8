//! Crash and power-loss simulation of the rekey and in-place encryption engines, at every
//! step: the engines run over simulated files that keep every write (process crash, kill -9)
//! or lose any subset of the sectors written since the last sync (power loss: unsynced writes
//! are dropped, reordered or torn at 512-byte granularity). After each simulated crash the
//! recovery runs on what survived and the logical content must be exactly the original, with
//! a header that names one key unambiguously. Crashes during recovery are tested too.

use std::ops::ControlFlow;

use sqlite_tde::crypto::{key_check_value, DataKey, Domain, XtsCipher};
use sqlite_tde::error::{Error, Result};
use sqlite_tde::format::{choose_slot, Header, KeyRef, RekeyState, HEADER_REGION_LEN, SLOT_LEN};
use sqlite_tde::rotation::convert::{self, ConvertEngine, CONVERT_MAGIC};
use sqlite_tde::rotation::engine::{data_len, Hook, Outcome, RawDb, RekeyEngine, SideFile, Step};

/// xorshift, deterministic per seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
}

/// A file with a durable image and the writes since the last sync.
#[derive(Clone, Default)]
struct SimFile {
    current: Vec<u8>,
    durable: Vec<u8>,
    exists: bool,
    durable_exists: bool,
    pending: Vec<(u64, Vec<u8>)>,
}

const SECTOR: usize = 512;

impl SimFile {
    fn with(bytes: Vec<u8>) -> SimFile {
        SimFile { current: bytes.clone(), durable: bytes, exists: true, durable_exists: true, pending: Vec::new() }
    }
    fn put(img: &mut Vec<u8>, off: u64, data: &[u8]) {
        let end = off as usize + data.len();
        if img.len() < end {
            img.resize(end, 0);
        }
        img[off as usize..end].copy_from_slice(data);
    }
    /// What survives: everything (process crash), or the durable image plus a random subset
    /// of the unsynced sectors (power loss).
    fn crash(&self, rng: Option<&mut Rng>) -> SimFile {
        let Some(rng) = rng else {
            let mut f = SimFile::with(self.current.clone());
            f.exists = self.exists;
            f.durable_exists = self.exists;
            return f;
        };
        let exists = self.durable_exists || (self.exists && rng.coin());
        let mut img = if exists { self.durable.clone() } else { Vec::new() };
        if exists {
            for (off, data) in &self.pending {
                for (i, piece) in data.chunks(SECTOR).enumerate() {
                    if rng.coin() {
                        Self::put(&mut img, off + (i * SECTOR) as u64, piece);
                    }
                }
            }
        }
        let mut f = SimFile::with(img);
        f.exists = exists;
        f.durable_exists = exists;
        f
    }
}

impl RawDb for SimFile {
    fn read_exact_at(&mut self, buf: &mut [u8], off: u64) -> Result<()> {
        let end = off as usize + buf.len();
        if end > self.current.len() {
            return Err(Error::Config("short read".into()));
        }
        buf.copy_from_slice(&self.current[off as usize..end]);
        Ok(())
    }
    fn write_at(&mut self, buf: &[u8], off: u64) -> Result<()> {
        Self::put(&mut self.current, off, buf);
        self.pending.push((off, buf.to_vec()));
        Ok(())
    }
    fn sync(&mut self) -> Result<()> {
        self.durable = self.current.clone();
        self.durable_exists = self.exists;
        self.pending.clear();
        Ok(())
    }
    fn len(&mut self) -> Result<u64> {
        Ok(self.current.len() as u64)
    }
    fn set_len(&mut self, len: u64) -> Result<()> {
        self.current.resize(len as usize, 0);
        Ok(())
    }
}

impl SideFile for SimFile {
    fn load(&mut self) -> Result<Option<Vec<u8>>> {
        Ok(self.exists.then(|| self.current.clone()))
    }
    fn write_at(&mut self, bytes: &[u8], off: u64) -> Result<()> {
        self.exists = true;
        RawDb::write_at(self, bytes, off)
    }
    fn sync(&mut self) -> Result<()> {
        RawDb::sync(self)
    }
    fn remove(&mut self) -> Result<()> {
        *self = SimFile::default();
        Ok(())
    }
}

/// Stops the engine at the `n`-th (0-based) time it reaches `step`.
struct CrashAt {
    step: Step,
    n: u64,
    seen: u64,
    hit: bool,
}
impl Hook for CrashAt {
    fn step(&mut self, step: Step) -> Result<()> {
        if step == self.step {
            if self.seen == self.n {
                self.hit = true;
                return Err(Error::Config("simulated crash".into()));
            }
            self.seen += 1;
        }
        Ok(())
    }
    fn progress(&mut self, _: u64, _: u64) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
}
struct Quiet;
impl Hook for Quiet {
    fn step(&mut self, _: Step) -> Result<()> {
        Ok(())
    }
    fn progress(&mut self, _: u64, _: u64) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
}

struct Keys {
    old: XtsCipher,
    new: XtsCipher,
    old_kcv: [u8; 32],
    new_kcv: [u8; 32],
}

const UUID: [u8; 16] = [7; 16];

fn keys() -> Keys {
    let a = DataKey::generate().unwrap();
    let b = DataKey::generate().unwrap();
    Keys {
        old_kcv: key_check_value(&a, &UUID),
        new_kcv: key_check_value(&b, &UUID),
        old: XtsCipher::new(&a),
        new: XtsCipher::new(&b),
    }
}

fn base_header(kcv: [u8; 32]) -> Header {
    Header {
        format: sqlite_tde::format::FORMAT_VERSION,
        sequence: 1,
        db_uuid: UUID,
        dek_created: 1,
        key: KeyRef { uri: "local:old".into(), version: 1 },
        wrapped_dek: vec![1; 90],
        kcv,
        rekey: None,
    }
}

fn rekey_state(k: &Keys) -> RekeyState {
    RekeyState {
        key: KeyRef { uri: "local:new".into(), version: 3 },
        wrapped_dek: vec![2; 90],
        kcv: k.new_kcv,
        progress: 0,
    }
}

/// An encrypted database image: header region + `len` logical bytes of random content, with
/// some all-zero ciphertext blocks (holes, which read as zeros).
fn make_db(k: &Keys, len: usize, seed: u64) -> (Vec<u8>, Vec<u8>) {
    let mut rng = Rng(seed | 1);
    let mut plain: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
    let mut phys = vec![0u8; HEADER_REGION_LEN];
    let h = base_header(k.old_kcv);
    phys[..SLOT_LEN].copy_from_slice(&h.encode(k.old.meta()).unwrap());
    let mut b = h.clone();
    b.sequence = 0;
    phys[SLOT_LEN..].copy_from_slice(&b.encode(k.old.meta()).unwrap());
    let mut data = plain.clone();
    k.old.encrypt(Domain::Database, 0, &mut data);
    // Holes: a few blocks that are zero on disk (and so zero in the plaintext).
    for i in [3usize, 4, 700, len / 16 - 1] {
        data[i * 16..i * 16 + 16].fill(0);
        plain[i * 16..i * 16 + 16].fill(0);
    }
    phys.extend_from_slice(&data);
    (phys, plain)
}

/// The logical content of a database image per its newest header slot.
fn logical(phys: &[u8], k: &Keys) -> (Vec<u8>, Header) {
    let (h, _) = choose_slot(&phys[..HEADER_REGION_LEN]).expect("a valid header slot");
    let cipher_of = |kcv: &[u8; 32]| {
        if *kcv == k.old_kcv {
            &k.old
        } else if *kcv == k.new_kcv {
            &k.new
        } else {
            panic!("header names an unknown key")
        }
    };
    let (below, above, p) = match &h.rekey {
        Some(r) => (cipher_of(&r.kcv), cipher_of(&h.kcv), r.progress),
        None => (cipher_of(&h.kcv), cipher_of(&h.kcv), 0),
    };
    let mut data = phys[HEADER_REGION_LEN..].to_vec();
    for (i, b) in data.chunks_exact_mut(16).enumerate() {
        let off = (i * 16) as u64;
        if b.iter().all(|&x| x == 0) {
            continue;
        }
        if off < p {
            below.decrypt(Domain::Database, off, b);
        } else {
            above.decrypt(Domain::Database, off, b);
        }
    }
    (data, h)
}

/// Recover a crashed image the way the VFS does at open: finish the rekey if the header says
/// one is in progress.
fn recover(db: &mut SimFile, j: &mut SimFile, k: &Keys, hook: &mut dyn Hook) -> Result<()> {
    let (h, slot) = choose_slot(&db.current[..HEADER_REGION_LEN]).expect("valid header after crash");
    if h.rekey.is_none() {
        return Ok(());
    }
    let mut e = RekeyEngine::new(db, j, &k.old, &k.new, h, slot, 64 << 10, hook);
    assert_eq!(e.recover(false)?, Outcome::Done);
    Ok(())
}

fn run_rekey(db: &mut SimFile, j: &mut SimFile, k: &Keys, chunk: u64, hook: &mut dyn Hook) -> Result<Outcome> {
    let (h, slot) = choose_slot(&db.current[..HEADER_REGION_LEN]).unwrap();
    let mut e = RekeyEngine::new(db, j, &k.old, &k.new, h, slot, chunk, hook);
    e.begin(rekey_state(k))?;
    e.run()
}

const DATA: usize = 300 * 1024 + 48; // 5 chunks of 64 KiB, the last one partial
const CHUNK: u64 = 64 << 10;

#[test]
fn rekey_survives_crash_and_power_loss_at_every_step() {
    let k = keys();
    let (template, plain) = make_db(&k, DATA, 11);
    let chunks = (data_len(template.len() as u64)).div_ceil(CHUNK);
    let mut cases = 0;
    for step in Step::REKEY {
        if matches!(step, Step::RecoverRestored | Step::RecoverSynced) {
            continue; // only reached during recovery: see the next test
        }
        for n in [0, 1, chunks - 1] {
            // seed 0: process crash (all writes survive); 1..: power loss.
            for seed in 0..12u64 {
                let mut db = SimFile::with(template.clone());
                let mut j = SimFile::default();
                let mut hook = CrashAt { step, n, seen: 0, hit: false };
                let r = run_rekey(&mut db, &mut j, &k, CHUNK, &mut hook);
                if !hook.hit {
                    assert_eq!(r.unwrap(), Outcome::Done);
                    break; // this occurrence does not exist (e.g. a one-time step)
                }
                assert!(r.is_err());
                let mut rng = Rng(seed * 7919 + 1);
                let (mut db2, mut j2) = if seed == 0 {
                    (db.crash(None), j.crash(None))
                } else {
                    (db.crash(Some(&mut rng)), j.crash(Some(&mut rng)))
                };
                recover(&mut db2, &mut j2, &k, &mut Quiet).unwrap();
                let (content, h) = logical(&db2.current, &k);
                assert_eq!(content, plain, "content after {}@{n} seed {seed}", step.name());
                assert!(h.rekey.is_none(), "rekey still in progress after recovery");
                let durable_begin = Step::REKEY.iter().position(|s| *s == step)
                    >= Step::REKEY.iter().position(|s| *s == Step::BeginHeaderSynced);
                if durable_begin || seed == 0 && step != Step::BeginGenerated {
                    assert_eq!(h.kcv, k.new_kcv, "a durable rekey must finish ({}@{n} seed {seed})", step.name());
                }
                cases += 1;
            }
        }
    }
    eprintln!("rekey: {cases} simulated crashes recovered");
    assert!(cases > 300);
}

#[test]
fn rekey_recovery_survives_crashes_too() {
    let k = keys();
    let (template, plain) = make_db(&k, DATA, 5);
    let mut cases = 0;
    // First crash: the in-place write of chunk 2 is torn (half written, power loss).
    for first_seed in 1..4u64 {
        let mut db = SimFile::with(template.clone());
        let mut j = SimFile::default();
        let mut hook = CrashAt { step: Step::DataHalfWritten, n: 2, seen: 0, hit: false };
        assert!(run_rekey(&mut db, &mut j, &k, CHUNK, &mut hook).is_err());
        let mut rng = Rng(first_seed);
        let (db1, j1) = (db.crash(Some(&mut rng)), j.crash(Some(&mut rng)));
        // Second crash: anywhere during recovery.
        for step in Step::REKEY {
            if matches!(step, Step::BeginGenerated | Step::BeginHeaderWritten | Step::BeginHeaderSynced) {
                continue;
            }
            for seed in 0..6u64 {
                let (mut db2, mut j2) = (db1.clone(), j1.clone());
                let mut hook = CrashAt { step, n: 0, seen: 0, hit: false };
                let r = recover(&mut db2, &mut j2, &k, &mut hook);
                if !hook.hit {
                    r.unwrap();
                    break;
                }
                let mut rng = Rng(seed * 31 + 3);
                let (mut db3, mut j3) = if seed == 0 {
                    (db2.crash(None), j2.crash(None))
                } else {
                    (db2.crash(Some(&mut rng)), j2.crash(Some(&mut rng)))
                };
                recover(&mut db3, &mut j3, &k, &mut Quiet).unwrap();
                let (content, h) = logical(&db3.current, &k);
                assert_eq!(content, plain, "double crash at {} seed {seed}", step.name());
                assert_eq!(h.kcv, k.new_kcv);
                cases += 1;
            }
        }
    }
    eprintln!("rekey recovery: {cases} double crashes recovered");
    assert!(cases > 50);
}

#[test]
fn interrupted_rekey_is_resumable() {
    struct StopAfter(u32);
    impl Hook for StopAfter {
        fn step(&mut self, _: Step) -> Result<()> {
            Ok(())
        }
        fn progress(&mut self, _: u64, _: u64) -> ControlFlow<()> {
            if self.0 == 0 {
                return ControlFlow::Break(());
            }
            self.0 -= 1;
            ControlFlow::Continue(())
        }
    }
    let k = keys();
    let (template, plain) = make_db(&k, DATA, 9);
    let mut db = SimFile::with(template);
    let mut j = SimFile::default();
    assert_eq!(run_rekey(&mut db, &mut j, &k, CHUNK, &mut StopAfter(2)).unwrap(), Outcome::Interrupted);
    let (mid, h) = logical(&db.current, &k);
    assert_eq!(mid, plain);
    assert_eq!(h.rekey.as_ref().unwrap().progress, 2 * CHUNK);
    recover(&mut db, &mut j, &k, &mut Quiet).unwrap();
    assert_eq!(logical(&db.current, &k).0, plain);
    assert!(!j.exists);
}

// ----- in-place encryption --------------------------------------------------------------

fn plain_db(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed | 1);
    let mut v: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
    v[..16].copy_from_slice(b"SQLite format 3\0");
    v
}

/// After a crash: finish the conversion when the VFS would, then read the file back as plain
/// bytes (a never-modified plain file, or the decrypted encrypted one).
fn convert_outcome(db: &mut SimFile, side: &mut SimFile, k: &Keys) -> (Vec<u8>, bool) {
    let state = side.exists.then(|| side.current.clone());
    let region = &db.current[..db.current.len().min(HEADER_REGION_LEN)];
    if convert::recovery_needed(region, state.as_deref()) {
        let mut quiet = Quiet;
        let mut e = ConvertEngine::resume(db, side, &k.new, &mut quiet, false).unwrap();
        assert_eq!(e.run().unwrap(), Outcome::Done);
    }
    if db.current.starts_with(b"SQLite format 3\0") {
        return (db.current.clone(), false);
    }
    assert!(!db.current.starts_with(&CONVERT_MAGIC));
    let (h, _) = choose_slot(&db.current[..HEADER_REGION_LEN]).expect("valid header after conversion");
    assert_eq!(h.kcv, k.new_kcv);
    let mut data = db.current[HEADER_REGION_LEN..].to_vec();
    k.new.decrypt(Domain::Database, 0, &mut data);
    (data, true)
}

#[test]
fn in_place_encryption_survives_crash_and_power_loss_at_every_step() {
    let k = keys();
    let len = 270 * 1024; // 5 chunks of 64 KiB, the first one (at the end) partial
    let plain = plain_db(len, 3);
    let mut cases = 0;
    let mut header = base_header(k.new_kcv);
    header.key.uri = "local:new".into();
    for step in Step::CONVERT {
        for n in [0, 1, 4] {
            for seed in 0..12u64 {
                let mut db = SimFile::with(plain.clone());
                let mut side = SimFile::default();
                let mut hook = CrashAt { step, n, seen: 0, hit: false };
                let r = ConvertEngine::begin(&mut db, &mut side, &k.new, header.clone(), 64 << 10, &mut hook)
                    .and_then(|mut e| e.run());
                if !hook.hit {
                    assert_eq!(r.unwrap(), Outcome::Done);
                    break;
                }
                let mut rng = Rng(seed * 104729 + 5);
                let (mut db2, mut side2) = if seed == 0 {
                    (db.crash(None), side.crash(None))
                } else {
                    (db.crash(Some(&mut rng)), side.crash(Some(&mut rng)))
                };
                let (content, encrypted) = convert_outcome(&mut db2, &mut side2, &k);
                assert_eq!(content, plain, "content after {}@{n} seed {seed}", step.name());
                let marked = Step::CONVERT.iter().position(|s| *s == step)
                    >= Step::CONVERT.iter().position(|s| *s == Step::ConvertMarkSynced);
                if marked || (seed == 0 && step != Step::ConvertStateWritten && step != Step::ConvertStateSynced) {
                    assert!(encrypted, "a marked file must end up encrypted ({}@{n} seed {seed})", step.name());
                }
                cases += 1;
            }
        }
    }
    eprintln!("in-place encryption: {cases} simulated crashes recovered");
    assert!(cases > 200);
}

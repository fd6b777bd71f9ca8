//! Harness 6: key hygiene. A child process (this test binary re-executed) opens an encrypted
//! database (KMS unwrap → DataKey → XTS cipher), uses it, then evicts it (closes the
//! connection and clears the key cache). The parent reads the child's whole memory through
//! /proc/PID/mem at each stage and searches it for the DEK (both 32-byte XTS halves and all
//! four 16-byte quarters: the AES round-key schedule starts with the raw key):
//!
//! - stage "loaded": a canary key held in a live `DataKey` must be found (proves the scanner
//!   sees the heap), and the DEK is expected to be found (the cipher is live);
//! - stage "evicted": neither the canary (dropped) nor any piece of the DEK may remain anywhere
//!   in the process (heap, stacks, every readable mapping).
//!
//! Also: no DEK bytes (raw, hex or base64) in any file under the test directory or in the
//! child's output; and whether the pages that held the key were excluded from core dumps.

mod common;
mod memscan_support;
mod reliability_support;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use common::child::ROLE_VAR;
use memscan_support::{raw_pieces, readable_regions, scan, vm_flags};
use reliability_support::report;
use sqlite_tde::crypto::DataKey;
use sqlite_tde::format::{choose_slot, HEADER_REGION_LEN};
use sqlite_tde::kms::local::LocalKms;
use sqlite_tde::kms::{EncryptionContext, Kms};
use sqlite_tde::Tde;

const KS: &str = "SQLITE_TDE_KEYS_KEYSTORE";
const DB: &str = "SQLITE_TDE_KEYS_DB";
const CANARY_SEED: &str = "SQLITE_TDE_KEYS_CANARY";

/// The scanner's positive control: a 64-byte key computed at run time from a seed (a constant
/// would sit in the binary's read-only data forever), written straight into wiped memory.
fn canary(seed: u64, out: &mut [u8; 64]) {
    let mut rng = reliability_support::model::Rng(seed);
    for chunk in out.chunks_mut(8) {
        chunk.copy_from_slice(&rng.next().to_le_bytes());
    }
}

fn wait_line(stdin: &mut impl BufRead) {
    let mut s = String::new();
    let _ = stdin.read_line(&mut s);
}

/// Entry point of the child process (does nothing in a normal test run).
#[test]
fn keys_child_entry() {
    let Ok(role) = std::env::var(ROLE_VAR) else { return };
    assert_eq!(role, "keys");
    let ks = PathBuf::from(std::env::var_os(KS).unwrap());
    let db = PathBuf::from(std::env::var_os(DB).unwrap());
    let mut stdin = BufReader::new(std::io::stdin());
    let out = std::io::stdout();
    let tde = Tde::builder().keystore(&ks).vfs_name("tde-keys").register().unwrap();
    let seed: u64 = std::env::var(CANARY_SEED).unwrap().parse().unwrap();
    let canary = {
        let mut tmp = zeroize::Zeroizing::new([0u8; 64]);
        canary(seed, &mut tmp);
        DataKey::from_slice(&tmp[..]).unwrap()
    };
    let conn = tde.open(&db).unwrap();
    let n: i64 = conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
    conn.execute("INSERT INTO t VALUES(?1)", [format!("row {n}")]).unwrap();
    // Also mark the canary's page as not-dumpable, to check the helper end to end.
    sqlite_vfs::mem::exclude_from_core_dumps(canary.expose()).unwrap();
    let on_stack = 0u8;
    writeln!(
        out.lock(),
        "stage loaded {:x} {:x}",
        canary.expose().as_ptr() as usize,
        std::hint::black_box(&on_stack) as *const u8 as usize
    )
    .unwrap();
    wait_line(&mut stdin);
    // Evict: close every connection, drop every cached cipher, drop the canary.
    drop(conn);
    tde.context().cache.clear();
    drop(canary);
    writeln!(out.lock(), "stage evicted").unwrap();
    wait_line(&mut stdin);
}

/// Index of the first decryption-schedule needle in [`dek_needles`] (the raw pieces come first).
const DEC_SCHEDULE_AT: usize = 6;

/// The DEK's raw pieces, then the middle round keys (1..=13) of the AES-256 decryption key
/// schedule (equivalent inverse cipher: InvMixColumns of the encryption round keys) of XTS key
/// 1 and of key 2. Unlike the encryption schedule, which starts with the raw key, none of
/// these contains a raw piece: without them a leaked decryption schedule goes unnoticed (and
/// it is enough to decrypt every page).
fn dek_needles(key: &[u8]) -> Vec<Vec<u8>> {
    let mut v = raw_pieces(key);
    for half in [&key[..32], &key[32..]] {
        let enc = aes_schedule::expand(half.try_into().unwrap());
        v.extend((1..14).map(|r| aes_schedule::inv_mix_columns(&enc[r]).to_vec()));
    }
    v
}

/// AES-256 key expansion (FIPS 197 §5.2) and InvMixColumns, from the definitions: the test
/// computes what an implementation would hold in memory without trusting that implementation.
mod aes_schedule {
    fn mul(mut a: u8, mut b: u8) -> u8 {
        let mut p = 0;
        while b != 0 {
            if b & 1 != 0 {
                p ^= a;
            }
            a = (a << 1) ^ if a & 0x80 != 0 { 0x1b } else { 0 };
            b >>= 1;
        }
        p
    }

    fn sbox(x: u8) -> u8 {
        // x^254 is the inverse in GF(2^8) (0 maps to 0), then the affine map.
        let mut inv = 1u8;
        for _ in 0..254 {
            inv = mul(inv, x);
        }
        inv ^ inv.rotate_left(1) ^ inv.rotate_left(2) ^ inv.rotate_left(3) ^ inv.rotate_left(4) ^ 0x63
    }

    /// The 15 round keys.
    pub fn expand(key: &[u8; 32]) -> Vec<[u8; 16]> {
        let mut w: Vec<[u8; 4]> = key.chunks(4).map(|c| c.try_into().unwrap()).collect();
        let mut rcon = 1u8;
        for i in 8..60 {
            let mut t = w[i - 1];
            if i % 8 == 0 {
                t = [sbox(t[1]) ^ rcon, sbox(t[2]), sbox(t[3]), sbox(t[0])];
                rcon = mul(rcon, 2);
            } else if i % 8 == 4 {
                t = t.map(sbox);
            }
            let prev = w[i - 8];
            w.push([prev[0] ^ t[0], prev[1] ^ t[1], prev[2] ^ t[2], prev[3] ^ t[3]]);
        }
        w.chunks(4).map(|c| c.concat().try_into().unwrap()).collect()
    }

    pub fn inv_mix_columns(k: &[u8; 16]) -> [u8; 16] {
        let mut out = [0u8; 16];
        for c in 0..4 {
            let a = &k[4 * c..4 * c + 4];
            for r in 0..4 {
                out[4 * c + r] =
                    mul(a[r], 14) ^ mul(a[(r + 1) % 4], 11) ^ mul(a[(r + 2) % 4], 13) ^ mul(a[(r + 3) % 4], 9);
            }
        }
        out
    }

    #[test]
    fn fips_197_vectors() {
        // FIPS 197 Appendix A.3: the last round key of the example AES-256 key.
        let key: [u8; 32] = std::array::from_fn(|i| i as u8);
        let rk = expand(&key);
        assert_eq!(hex::encode(rk[14]), "24fc79ccbf0979e9371ac23c6d68de36");
        assert_eq!(hex::encode(rk[1]), "101112131415161718191a1b1c1d1e1f");
        // InvMixColumns inverts MixColumns on the FIPS 197 §5.1.3 column example.
        let mixed = [0x8e, 0x4d, 0xa1, 0xbc, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(&inv_mix_columns(&mixed)[..4], &[0xdb, 0x13, 0x53, 0x45]);
    }
}

fn dek_of(ks: &Path, db: &Path) -> DataKey {
    let bytes = std::fs::read(db).unwrap();
    let (h, _) = choose_slot(&bytes[..HEADER_REGION_LEN]).unwrap();
    let kms = LocalKms::new(ks);
    let plain = kms.decrypt_data_key(&h.key, &h.wrapped_dek, &EncryptionContext::for_database(&h.db_uuid)).unwrap();
    DataKey::try_from(&plain).unwrap()
}

struct Outcome {
    /// DEK pieces left after eviction that lie in the stack mapping of the child's thread.
    evicted_in_thread_stack: usize,
    dek_hits_loaded: usize,
    canary_hits_loaded: usize,
    dek_hits_evicted: Vec<(usize, usize, String)>,
    canary_hits_evicted: usize,
    dek_pages_dontdump: (usize, usize),
    /// DEK pieces found while loaded on pages a core dump includes (needle index: below
    /// `DEC_SCHEDULE_AT` raw pieces, then decryption round keys 1..=13 of key 1, then of key 2).
    dek_dumpable_loaded: Vec<(usize, usize, String)>,
    /// Which DEK needles were found while loaded.
    dek_hits_loaded_needles: Vec<usize>,
    canary_dontdump: bool,
    scanned: u64,
    file_hits: Vec<String>,
    log_hits: usize,
}

fn run_child() -> Outcome {
    let env = common::Env::new();
    let ks = env.dir.path().join("keys-ks");
    let db = env.path("keys.sqlite");
    {
        // One VFS name per call: a name registered earlier in this process keeps its keystore.
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let tde = Tde::builder().keystore(&ks).vfs_name(format!("tde-keys-parent-{n}")).register().unwrap();
        tde.open(&db).unwrap().execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES('hello');").unwrap();
    }
    let dek = dek_of(&ks, &db);
    let dek_needles = dek_needles(dek.expose());
    let n_dek = dek_needles.len();
    let seed = std::process::id() as u64 ^ 0x5EED_CAFE;
    let mut canary_bytes = [0u8; 64];
    canary(seed, &mut canary_bytes);
    let canary_needles = raw_pieces(&canary_bytes);
    let mut needles = dek_needles.clone();
    needles.extend(canary_needles);

    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args(["--exact", "keys_child_entry", "--nocapture", "--test-threads", "1"])
        .env(ROLE_VAR, "keys")
        .env(KS, &ks)
        .env(DB, &db)
        .env(CANARY_SEED, seed.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut stdin = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut log = Vec::new();
    let mut wait_stage = |stage: &str, log: &mut Vec<u8>| -> String {
        let mut line = String::new();
        loop {
            line.clear();
            assert!(out.read_line(&mut line).unwrap() > 0, "child ended before stage {stage}");
            log.extend_from_slice(line.as_bytes());
            if let Some(at) = line.find("stage ") {
                let rest = line[at + 6..].trim().to_string();
                assert!(rest.starts_with(stage), "expected stage {stage}, got {rest}");
                return rest;
            }
        }
    };
    let loaded = wait_stage("loaded", &mut log);
    let canary_addr = usize::from_str_radix(loaded.split_whitespace().nth(1).unwrap(), 16).unwrap();
    let stack_addr = usize::from_str_radix(loaded.split_whitespace().nth(2).unwrap(), 16).unwrap();
    let stack_region = readable_regions(pid)
        .into_iter()
        .find(|r| r.start <= stack_addr && stack_addr < r.end)
        .map(|r| (r.start, r.end));
    let (hits, scanned) = scan(pid, &needles);
    let dek_loaded: Vec<_> = hits.iter().filter(|h| h.1 < n_dek).cloned().collect();
    let canary_loaded = hits.iter().filter(|h| h.1 >= n_dek).count();
    let mut dontdump = 0;
    let mut dumpable = Vec::new();
    for h in &dek_loaded {
        if vm_flags(pid, h.0).is_some_and(|f| f.split_whitespace().any(|x| x == "dd")) {
            dontdump += 1;
        } else {
            dumpable.push(h.clone());
        }
    }
    let canary_dd = vm_flags(pid, canary_addr).is_some_and(|f| f.split_whitespace().any(|x| x == "dd"));
    writeln!(stdin, "go").unwrap();
    wait_stage("evicted", &mut log);
    let (hits2, _) = scan(pid, &needles);
    writeln!(stdin, "go").unwrap();
    let mut rest = Vec::new();
    out.read_to_end(&mut rest).unwrap();
    log.extend_from_slice(&rest);
    let mut err = Vec::new();
    child.stderr.take().unwrap().read_to_end(&mut err).unwrap();
    log.extend_from_slice(&err);
    child.wait().unwrap();

    // Files and logs: raw bytes, hex (both cases) and base64 of each DEK half.
    let mut forms: Vec<Vec<u8>> = dek_needles[..2].to_vec();
    for h in &dek_needles[..2] {
        forms.push(hex::encode(h).into_bytes());
        forms.push(hex::encode_upper(h).into_bytes());
        forms.push(base64::engine::general_purpose::STANDARD.encode(h).into_bytes());
    }
    forms.push(hex::encode(dek.expose()).into_bytes());
    let mut file_hits = Vec::new();
    for (p, b) in common::files_under(env.dir.path()) {
        if forms.iter().any(|f| common::contains(&b, f)) {
            file_hits.push(p.display().to_string());
        }
    }
    let log_hits = forms.iter().filter(|f| common::contains(&log, f)).count();
    let in_stack = |a: usize| stack_region.is_some_and(|(s, e)| s <= a && a < e);
    Outcome {
        evicted_in_thread_stack: hits2.iter().filter(|h| h.1 < n_dek && in_stack(h.0)).count(),
        dek_hits_loaded: dek_loaded.len(),
        canary_hits_loaded: canary_loaded,
        dek_hits_evicted: hits2.iter().filter(|h| h.1 < n_dek).cloned().collect(),
        canary_hits_evicted: hits2.iter().filter(|h| h.1 >= n_dek).count(),
        dek_pages_dontdump: (dontdump, dek_loaded.len()),
        dek_dumpable_loaded: dumpable,
        dek_hits_loaded_needles: dek_loaded.iter().map(|h| h.1).collect(),
        canary_dontdump: canary_dd,
        scanned,
        file_hits,
        log_hits,
    }
}

/// Runs by default: the scanner control, DataKey wiping, files and logs. Reports every figure,
/// including the DEK residue that `dek_gone_from_memory_after_eviction` asserts.
#[test]
fn key_hygiene() {
    let o = run_child();
    report(
        "keys",
        &format!(
            "child memory scanned {} MiB per stage; loaded: canary found {} time(s), DEK pieces found {}; after eviction: canary {}, DEK pieces {} ({} in the thread's stack mapping) {:?}; \
             files containing the DEK {}, log lines containing it {}; DEK occurrences on MADV_DONTDUMP pages while loaded {}/{}; helper marks pages dd: {}",
            o.scanned >> 20,
            o.canary_hits_loaded,
            o.dek_hits_loaded,
            o.canary_hits_evicted,
            o.dek_hits_evicted.len(),
            o.evicted_in_thread_stack,
            o.dek_hits_evicted.iter().take(8).map(|(a, n, r)| format!("piece {n} @{a:x} in {r}")).collect::<Vec<_>>(),
            o.file_hits.len(),
            o.log_hits,
            o.dek_pages_dontdump.0,
            o.dek_pages_dontdump.1,
            o.canary_dontdump
        ),
    );
    assert!(o.canary_hits_loaded > 0, "the scanner did not find a live key: the memory scan proves nothing");
    assert!(o.canary_dontdump, "sqlite_vfs::mem::exclude_from_core_dumps did not mark the page");
    assert_eq!(o.canary_hits_evicted, 0, "a dropped DataKey left its bytes in memory");
    assert!(o.file_hits.is_empty(), "DEK bytes in files: {:?}", o.file_hits);
    assert_eq!(o.log_hits, 0, "DEK bytes in the child's output");
}

/// After the connection is closed and the key cache cleared, no piece of the DEK may remain
/// anywhere in the process: not in freed heap, and not in the dead stack frames of the KMS
/// unwrap, the key-check HMAC and the AES key expansion (the VFS wipes the stack below the
/// frame that handled the key, `crypto::scrub_stack`).
#[test]
fn dek_gone_from_memory_after_eviction() {
    let o = run_child();
    assert!(o.canary_hits_loaded > 0, "scanner control failed");
    assert!(
        o.dek_hits_evicted.is_empty(),
        "{} DEK pieces remain after eviction ({} on the thread stack)",
        o.dek_hits_evicted.len(),
        o.evicted_in_thread_stack
    );
}

/// The pages that hold the live key schedule are excluded from core dumps (MADV_DONTDUMP):
/// `XtsCipher` keeps its round keys alone on one advised heap page, and no copy of the raw
/// key or of either decryption key schedule stays behind in a dead stack frame (which a core
/// dump of the running process would include) once the cipher is built.
#[test]
fn key_pages_excluded_from_core_dumps() {
    let o = run_child();
    assert!(o.dek_pages_dontdump.1 > 0, "DEK not found while loaded");
    let found = |n: usize| o.dek_hits_loaded_needles.contains(&n);
    assert!(
        (DEC_SCHEDULE_AT..DEC_SCHEDULE_AT + 26).any(found),
        "no decryption round key found while loaded: the scan proves nothing"
    );
    let describe: Vec<String> = o
        .dek_dumpable_loaded
        .iter()
        .map(|(a, n, r)| match *n {
            n if n < DEC_SCHEDULE_AT => format!("raw piece {n} @{a:x} in {r}"),
            n => format!(
                "key {} decryption round key {} @{a:x} in {r}",
                1 + (n - DEC_SCHEDULE_AT) / 13,
                1 + (n - DEC_SCHEDULE_AT) % 13
            ),
        })
        .collect();
    assert_eq!(
        o.dek_pages_dontdump.0, o.dek_pages_dontdump.1,
        "key material on pages a core dump includes: {describe:?}"
    );
}

//! Harness 5 (replay half): runs every file of the checked-in fuzz corpus (`fuzz/corpus/<target>/`)
//! through the same target functions the cargo-fuzz binaries use (`fuzz/src/targets.rs`), plus
//! a few deterministic bit-flip mutations of each, in a plain `cargo test`. Longer fuzzing runs
//! use cargo-fuzz: see docs/RELIABILITY.md.
//!
//! `SQLITE_TDE_WRITE_SEED_CORPUS=1 cargo test --test fuzz_corpus -- --ignored write_seed_corpus`
//! regenerates the hand-made seed inputs.

mod reliability_support;

#[path = "../fuzz/src/targets.rs"]
mod targets;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use reliability_support::model::Rng;
use reliability_support::report;

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target)
}

fn replay(target: &str, f: fn(&[u8]), mutations: usize) {
    let mut files: Vec<_> = std::fs::read_dir(corpus_dir(target)).unwrap().flatten().map(|e| e.path()).collect();
    files.sort();
    assert!(!files.is_empty(), "empty corpus for {target}");
    // Keep the replay quick with a large grown corpus: about 4,000 mutated executions per target.
    let mutations = mutations.min(4000 / files.len()).max(if files.len() > 4000 { 0 } else { 1 });
    let mut rng = Rng(target.len() as u64);
    let mut runs = 0u64;
    let mut failures = Vec::new();
    for p in &files {
        let data = std::fs::read(p).unwrap();
        let mut inputs = vec![data.clone()];
        for _ in 0..mutations {
            let mut m = data.clone();
            if m.is_empty() {
                m.push(rng.next() as u8);
            }
            for _ in 0..rng.range(1, 4) {
                let i = rng.range(0, m.len() as u64) as usize;
                m[i] ^= 1 << rng.range(0, 8);
            }
            if rng.range(0, 4) == 0 {
                m.truncate(rng.range(0, m.len() as u64 + 1) as usize);
            }
            inputs.push(m);
        }
        for (i, input) in inputs.iter().enumerate() {
            runs += 1;
            if let Err(e) = catch_unwind(AssertUnwindSafe(|| f(input))) {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("{} (mutation {i}): {msg}", p.display()));
            }
        }
    }
    report(
        "fuzz-corpus",
        &format!(
            "{target}: {} corpus files, {runs} executions (with {mutations} bit-flip mutation(s) each), {} failures",
            files.len(),
            failures.len()
        ),
    );
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn corpus_header() {
    replay("header", targets::header, 50);
}

#[test]
fn corpus_keystore() {
    replay("keystore", targets::keystore, 20);
}

#[test]
fn corpus_kms_decrypt() {
    replay("kms_decrypt", targets::kms_decrypt, 20);
}

#[test]
fn corpus_kms_request() {
    replay("kms_request", targets::kms_request, 20);
}

#[test]
fn corpus_rotation_state() {
    replay("rotation_state", targets::rotation_state, 50);
}

#[test]
fn corpus_vfs_io() {
    replay("vfs_io", targets::vfs_io, 50);
}

/// Regenerate the hand-made seed inputs (not run by default).
#[test]
#[ignore = "writes fuzz/corpus; run with SQLITE_TDE_WRITE_SEED_CORPUS=1 and --ignored"]
fn write_seed_corpus() {
    use sqlite_tde::format::{Header, KeyRef, RekeyState, HEADER_REGION_LEN, SLOT_LEN};
    if std::env::var_os("SQLITE_TDE_WRITE_SEED_CORPUS").is_none() {
        return;
    }
    let put = |target: &str, name: &str, bytes: &[u8]| {
        let d = corpus_dir(target);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(name), bytes).unwrap();
    };
    // header (format 2, MACed under the fuzz key; the checked-in format 1 seeds stay)
    let meta = sqlite_tde::crypto::MetaKey::derive(&targets::fuzz_data_key());
    let h = Header {
        format: sqlite_tde::format::FORMAT_VERSION,
        sequence: 3,
        db_uuid: [9; 16],
        dek_created: 1_700_000_000,
        key: KeyRef { uri: "local:6f1c0000-0000-4000-8000-000000000000".into(), version: 2 },
        wrapped_dek: vec![5; 124],
        kcv: [7; 32],
        rekey: None,
    };
    let mut region = vec![0u8; HEADER_REGION_LEN];
    region[..SLOT_LEN].copy_from_slice(&h.encode(&meta).unwrap());
    let mut older = h.clone();
    older.sequence = 2;
    region[SLOT_LEN..].copy_from_slice(&older.encode(&meta).unwrap());
    put("header", "v2-region-two-slots", &region);
    put("header", "v2-slot-a-only", &region[..SLOT_LEN]);
    put("header", "v2-truncated-3000", &region[..3000]);
    put("header", "v1-slot-a-only", &h.encode_format_1().unwrap());
    let mut rk = h.clone();
    rk.rekey = Some(RekeyState {
        key: KeyRef { uri: "local:new".into(), version: 1 },
        wrapped_dek: vec![1; 100],
        kcv: [2; 32],
        progress: 8192,
    });
    put("header", "v2-slot-rekey", &rk.encode(&meta).unwrap());
    // rotation side files
    use sqlite_tde::rotation::journal;
    put("rotation_state", "journal-v2", &journal::encode(&meta, &[9; 16], &[2; 32], 4096, &[0x5a; 4096]));
    put("rotation_state", "journal-v1", &journal::encode_format_1(&[9; 16], &[2; 32], 0, &[0xa5; 512]));
    put("rotation_state", "empty", b"");
    let mut plain = b"SQLite format 3\0".to_vec();
    plain.resize(200, 0);
    put("header", "plain-sqlite", &plain);
    put("header", "empty", b"");
    // keystore: a real one from the local KMS, and bare JSON bodies (odd first byte = wrap).
    let dir = tempfile::tempdir().unwrap();
    let kms = sqlite_tde::kms::local::LocalKms::new(dir.path().join("ks"));
    kms.create_key(Some("alias/fuzz"), "seed").unwrap();
    let real = std::fs::read(dir.path().join("ks/keystore.json")).unwrap();
    put("keystore", "real-v3", &real);
    let text = String::from_utf8(real.clone()).unwrap();
    let json = text.split_once('\n').unwrap().1;
    let json = &json[..json.rfind("\naudit: ").unwrap()];
    let mut wrapped = vec![1u8];
    wrapped.extend_from_slice(json.trim_end().as_bytes());
    put("keystore", "json-body-v1", &wrapped);
    wrapped[0] = 3;
    put("keystore", "json-body-v2", &wrapped);
    put("keystore", "json-minimal", b"\x01{\"root\":{\"kind\":\"file\",\"check\":\"00\"}}");
    // kms_decrypt: blobs in the FORMAT.md §3 layout.
    let mut blob = b"TDEW\x01".to_vec();
    let id = b"6f1c0000-0000-4000-8000-000000000000";
    blob.push(id.len() as u8);
    blob.extend_from_slice(id);
    blob.extend_from_slice(&1u32.to_le_bytes());
    blob.extend_from_slice(&[0x42; 12 + 64 + 16]);
    for sel in [0u8, 1, 2, 0x80, 0x81] {
        let mut input = vec![sel, 0];
        input.extend_from_slice(&blob);
        put("kms_decrypt", &format!("blob-sel{sel}"), &input);
    }
    let mut meta = vec![1u8, 8];
    meta.extend_from_slice(b"some-key");
    meta.extend_from_slice(&blob);
    put("kms_decrypt", "blob-with-keyid", &meta);
    // kms_request: JSON requests as the daemon receives them.
    let ctx_b64 = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    for (name, body) in [
        ("list-keys", r#""ListKeys""#.to_string()),
        ("list-aliases", r#""ListAliases""#.to_string()),
        ("whoami", r#""WhoAmI""#.to_string()),
        ("describe", r#"{"DescribeKey":{"key":"alias/sqlite-tde/default"}}"#.to_string()),
        (
            "generate",
            r#"{"GenerateDataKey":{"key":"alias/sqlite-tde/default","context":{"sqlite-tde:db":"x"}}}"#.to_string(),
        ),
        ("decrypt", format!(r#"{{"Decrypt":{{"ciphertext":"{ctx_b64}","context":{{}}}}}}"#)),
        ("create-key", r#"{"CreateKey":{"alias":"alias/x","description":"d"}}"#.to_string()),
    ] {
        put("kms_request", name, body.as_bytes());
    }
    // vfs_io: flags + length + op sequences.
    let mut ops = Vec::new();
    ops.extend_from_slice(&0x100i32.to_le_bytes());
    ops.extend_from_slice(&1000u64.to_le_bytes());
    for (op, off, len) in [
        (0u8, 0u16, 28u16),
        (0, 512, 4096),
        (0, 30, 5),
        (2, 0, 600),
        (1, 100, 0),
        (0, 4000, 200),
        (2, 3990, 300),
        (1, 17, 0),
        (2, 0, 64),
    ] {
        ops.push(op);
        ops.extend_from_slice(&off.to_le_bytes());
        ops.extend_from_slice(&len.to_le_bytes());
    }
    put("vfs_io", "journal-like", &ops);
    let mut wal = Vec::new();
    wal.extend_from_slice(&0x80000i32.to_le_bytes());
    wal.extend_from_slice(&u64::MAX.to_le_bytes());
    for k in 0..6u16 {
        for (op, off, len) in [(3u8, 32 + k * 1048, 24u16), (3, 56 + k * 1048, 1024), (5, 32 + k * 1048, 1048)] {
            wal.push(op);
            wal.extend_from_slice(&off.to_le_bytes());
            wal.extend_from_slice(&len.to_le_bytes());
        }
    }
    wal[0] |= 1;
    put("vfs_io", "wal-like-with-header-region", &wal);
    put("vfs_io", "two-type-bits", &(0x100i32 | 0x800).to_le_bytes());
}

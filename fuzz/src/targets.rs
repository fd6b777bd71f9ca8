//! The fuzz targets' logic, shared by the cargo-fuzz binaries (`fuzz/fuzz_targets/*.rs`) and by
//! `tests/fuzz_corpus.rs`, which replays the checked-in corpus in a plain `cargo test`.
//!
//! Every function takes arbitrary bytes and must neither panic nor violate the invariants it
//! asserts. Only the public API of `sqlite_tde` and `sqlite_vfs` is used.

#![allow(dead_code)]

use std::cell::RefCell;

use sqlite_tde::crypto::{DataKey, Domain, MetaKey, XtsCipher};
use sqlite_tde::format::{
    authenticate, choose_slot, logical_len, physical_len, Header, SlotStatus, FORMAT_VERSION, HEADER_REGION_LEN,
    SLOT_LEN,
};
use sqlite_tde::kms::local::LocalKms;
use sqlite_tde::kms::{EncryptionContext, Kms};
use sqlite_tde::vfs::blockio::{EncryptedIo, MemFile, WriteCache};
use sqlite_vfs::{FileKind, ReadStatus};

/// The fixed DEK whose metadata key authenticates the format 2 seeds of the corpus (so the
/// fuzzer reaches the MAC check with slots that pass it).
pub fn fuzz_data_key() -> DataKey {
    DataKey::from_slice(&(1..=64u8).collect::<Vec<_>>()).expect("distinct halves")
}

/// Header region parser: `choose_slot` over the input as a region, `Header::decode` over each
/// slot-sized window; any header that decodes must survive an encode/decode round trip, and
/// authentication must only ever pass for slots MACed under the fuzz key.
pub fn header(data: &[u8]) {
    let meta = MetaKey::derive(&fuzz_data_key());
    let _ = choose_slot(data);
    for slot in [data, data.get(SLOT_LEN..).unwrap_or(&[])] {
        if let SlotStatus::Valid(h) = Header::decode(slot) {
            let again = h.encode(&meta).expect("a decoded header re-encodes");
            let want = Header { format: FORMAT_VERSION, ..h };
            assert_eq!(Header::decode(&again), SlotStatus::Valid(want), "encode/decode round trip");
            let mut region = again.clone();
            region.resize(HEADER_REGION_LEN, 0);
            assert_eq!(authenticate(&region, 0, &meta), Ok(true), "a slot this key encoded authenticates");
        }
    }
    // The same bytes as slot A of a full region (so short inputs reach the slot parser too).
    let mut region = vec![0u8; HEADER_REGION_LEN];
    let n = data.len().min(HEADER_REGION_LEN);
    region[..n].copy_from_slice(&data[..n]);
    if let Ok((h, slot)) = choose_slot(&region) {
        assert!(slot < 2);
        let _ = h.encode(&meta);
        let _ = authenticate(&region, slot, &meta);
    }
}

/// Rotation side files: the rekey journal record and the in-place encryption state parsers,
/// with and without trust in format 1. A record or state that passes must be consistent.
pub fn rotation_state(data: &[u8]) {
    use sqlite_tde::rotation::{convert, journal};
    let meta = MetaKey::derive(&fuzz_data_key());
    for trust in [false, true] {
        if let Some(r) = journal::decode(data, &meta, trust) {
            assert!(r.data.len() + journal::RECORD_HEADER_LEN <= data.len());
        }
    }
    if let Some((_, slot)) = convert::decode_state(data) {
        assert!(slot < 2);
    }
}

thread_local! {
    static SCRATCH: RefCell<Option<(tempfile::TempDir, LocalKms, sqlite_tde::format::KeyRef)>> = const { RefCell::new(None) };
}

fn with_kms<R>(f: impl FnOnce(&std::path::Path, &LocalKms, &sqlite_tde::format::KeyRef) -> R) -> R {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        if s.is_none() {
            let dir = tempfile::tempdir().unwrap();
            let kms = LocalKms::new(dir.path().join("ks"));
            let ctx = EncryptionContext::for_database(&[7; 16]);
            let g = kms.generate_data_key(sqlite_tde::kms::DEFAULT_KEY_ALIAS, &ctx).unwrap();
            *s = Some((dir, kms, g.key.clone()));
        }
        let (dir, kms, key) = s.as_ref().unwrap();
        f(dir.path(), kms, key)
    })
}

/// Keystore parser (through the public `LocalKms::read_keystore`): the input is written as
/// `keystore.json` of a scratch keystore. With an odd first byte the rest is taken as the JSON
/// document and wrapped in a correct magic line and checksum, so the fuzzer gets past the
/// SHA-256 trailer to the JSON parser.
pub fn keystore(data: &[u8]) {
    let bytes = match data.split_first() {
        Some((&b, rest)) if b & 1 == 1 => {
            let mut text = format!("sqlite-tde-keystore {}\n", 1 + (b >> 1) % 3).into_bytes();
            text.extend_from_slice(rest);
            text.push(b'\n');
            let sum = {
                use sha2::Digest;
                hex::encode(sha2::Sha256::digest(&text))
            };
            text.extend_from_slice(format!("sha256:{sum}\n").as_bytes());
            text
        }
        _ => data.to_vec(),
    };
    let dir = tempfile::tempdir().unwrap();
    let ks = dir.path().join("ks");
    std::fs::create_dir_all(&ks).unwrap();
    std::fs::write(ks.join("keystore.json"), &bytes).unwrap();
    let kms = LocalKms::new(&ks);
    if let Ok(Some(d)) = kms.read_keystore() {
        // Whatever parsed must resolve names without panicking.
        for k in d.keys.keys().take(4) {
            let _ = d.resolve(k);
        }
    }
}

/// KMS Decrypt request decoding: a wrapped DEK blob, key reference and encryption context from
/// the input, decrypted by a real local KMS. Nothing but the genuine blob may decrypt.
pub fn kms_decrypt(data: &[u8]) {
    if data.len() < 3 {
        return;
    }
    let (sel, rest) = (data[0], &data[1..]);
    let split = (data[1] as usize).min(rest.len());
    let (meta, blob) = rest.split_at(split);
    with_kms(|_, kms, genuine| {
        let meta = String::from_utf8_lossy(meta);
        let key = match sel % 3 {
            0 => genuine.clone(),
            1 => sqlite_tde::format::KeyRef { uri: format!("local:{meta}"), version: u32::from(sel) },
            _ => sqlite_tde::format::KeyRef { uri: meta.to_string(), version: genuine.version },
        };
        let ctx = if sel & 0x80 != 0 {
            EncryptionContext::for_database(&[7; 16])
        } else {
            EncryptionContext::from_pairs([(meta.to_string(), "v".to_string())])
        };
        if let Ok(dek) = kms.decrypt_data_key(&key, blob, &ctx) {
            // Only a blob made by this KMS (AES-GCM tag) can decrypt; a fuzzer cannot forge one.
            assert_eq!(dek.expose().len(), 64);
        }
        let _ = kms.rewrap_data_key(&key, blob, &ctx, None);
    })
}

/// KMS request decoding, as the daemon does it (`kms/daemon/server.rs`): the body is parsed as
/// a JSON `Request`; what parses is dispatched to a real local KMS (`LocalKms::handle`) when it
/// does not mutate the keystore (mutating requests are only parsed, so the scratch keystore
/// stays small). Errors are fine; panics are not.
pub fn kms_request(data: &[u8]) {
    let Ok(req) = serde_json::from_slice::<sqlite_tde::kms::api::Request>(data) else { return };
    let name = req.name();
    let read_only = matches!(
        name,
        "DescribeKey"
            | "ListKeys"
            | "ListAliases"
            | "GenerateDataKey"
            | "GenerateDataKeyWithoutPlaintext"
            | "Encrypt"
            | "Decrypt"
            | "ReEncrypt"
            | "GetKeyPolicy"
            | "Lint"
            | "WhoAmI"
            | "ListSecrets"
            | "ListSecretVersions"
            | "GetSecretValue"
    );
    if read_only {
        with_kms(|_, kms, _| {
            for principal in [sqlite_tde::kms::local::SERVICE_PRINCIPAL, "uid:12345"] {
                let _ = kms.handle(principal, &req);
            }
        });
    }
}

thread_local! {
    static CIPHER: XtsCipher = XtsCipher::new(&DataKey::from_slice(&[[0x11u8; 32], [0x22u8; 32]].concat()).unwrap());
}

/// The VFS I/O classifier and byte-range layer: open-flag decoding, the length encoding, and a
/// sequence of unaligned writes / truncates / reads through `EncryptedIo` checked against a
/// plain in-memory model.
pub fn vfs_io(data: &[u8]) {
    // 1. Open-flag classification: exactly one known type bit, or refused.
    if data.len() >= 4 {
        let flags = i32::from_le_bytes(data[..4].try_into().unwrap());
        let type_bits = [0x100, 0x800, 0x80000, 0x2000, 0x4000, 0x200, 0x1000, 0x400];
        let set = type_bits.iter().filter(|&&b| flags & b != 0).count();
        let kind = FileKind::from_open_flags(flags);
        assert_eq!(kind.is_some(), set == 1, "flags {flags:#x}");
        if let Some(k) = kind {
            let _ = (k.as_str(), k.is_temporary(), k.is_linked_to_main_db());
        }
    }
    // 2. Length encoding.
    if data.len() >= 12 {
        let l = u64::from_le_bytes(data[4..12].try_into().unwrap()) >> 2;
        let p = physical_len(l);
        assert!(p >= l && p < l + 32);
        assert_eq!(logical_len(p), l);
        let any = u64::from_le_bytes(data[4..12].try_into().unwrap());
        assert!(logical_len(any) <= any);
    }
    // 3. Byte-range I/O against a model (offsets < 64 KiB, lengths < 2 KiB).
    let mut raw = MemFile(vec![0xAA; if data.first().is_some_and(|b| b & 1 == 1) { HEADER_REGION_LEN } else { 0 }]);
    let header = raw.0.len() as u64;
    let mut model: Vec<u8> = Vec::new();
    let mut scratch = Vec::new();
    // Bit 1 of the first byte: keep a write cache across the ops, as a journal or WAL handle
    // does (the model must not be able to tell).
    let mut cache = data.first().is_some_and(|b| b & 2 == 2).then(WriteCache::default);
    CIPHER.with(|cipher| {
        let mut ops = data.get(12..).unwrap_or(&[]).chunks_exact(5);
        for op in ops.by_ref().take(64) {
            let off = u64::from(u16::from_le_bytes([op[1], op[2]]));
            let len = (u16::from_le_bytes([op[3], op[4]]) % 2048) as usize;
            let mut io = EncryptedIo {
                raw: &mut raw,
                cipher,
                domain: Domain::Wal,
                data_offset: header,
                scratch: &mut scratch,
                cache: cache.as_mut(),
            };
            match op[0] % 3 {
                0 => {
                    let buf: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(op[0]).wrapping_add(op[1])).collect();
                    io.write(&buf, off).unwrap();
                    let end = off as usize + len;
                    if len > 0 {
                        if model.len() < end {
                            model.resize(end, 0);
                        }
                        model[off as usize..end].copy_from_slice(&buf);
                    }
                }
                1 => {
                    io.truncate(off).unwrap();
                    model.resize(off as usize, 0);
                }
                _ => {
                    let mut got = vec![0xEE; len];
                    let st = io.read(&mut got, off).unwrap();
                    let avail = model.len().saturating_sub(off as usize).min(len);
                    let mut want = vec![0u8; len];
                    if avail > 0 {
                        want[..avail].copy_from_slice(&model[off as usize..off as usize + avail]);
                    }
                    assert_eq!(st == ReadStatus::Full, avail == len, "read status at {off}+{len}");
                    assert_eq!(got, want, "read at {off}+{len}");
                }
            }
            assert_eq!(io.logical_size().unwrap(), model.len() as u64);
        }
    });
}

//! Format 2: tde's own metadata is authenticated, so write access to the files (without the
//! DEK) cannot be turned into read access. Each test replays an attack the format-1 code fell
//! for (issue "Format v2"): the attacker can write the victim's files and holds a KMS principal
//! that may use the service default key, as the victim's can.

mod common;

use std::path::Path;

use sha2::{Digest, Sha256};
use sqlite_tde::crypto::{key_check_value, DataKey, Domain, MetaKey, XtsCipher};
use sqlite_tde::format::{choose_slot, Header, RekeyState, FORMAT_VERSION, HEADER_REGION_LEN, SLOT_LEN};
use sqlite_tde::kms::local::LocalKms;
use sqlite_tde::kms::{EncryptionContext, Kms, DEFAULT_KEY_ALIAS};

fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

/// A victim database with a secret row, closed.
fn victim(env: &common::Env) -> std::path::PathBuf {
    let p = env.path("victim.db");
    let c = env.tde.open(&p).unwrap();
    c.execute_batch("CREATE TABLE secrets(v); INSERT INTO secrets VALUES('victim data');").unwrap();
    drop(c);
    p
}

/// The secret row, read through a new connection.
fn secret(env: &common::Env, p: &Path) -> String {
    env.tde.open(p).unwrap().query_row("SELECT v FROM secrets", [], |r| r.get(0)).unwrap()
}

/// Rewrite the header as a format-1 build wrote it (both slots); returns the new file bytes.
fn as_format_1(p: &Path) -> Vec<u8> {
    let mut v = bytes(p);
    let (h, _) = choose_slot(&v[..HEADER_REGION_LEN]).unwrap();
    let mut older = h.clone();
    older.sequence = h.sequence - 1;
    v[..SLOT_LEN].copy_from_slice(&h.encode_format_1().unwrap());
    v[SLOT_LEN..HEADER_REGION_LEN].copy_from_slice(&older.encode_format_1().unwrap());
    std::fs::write(p, &v).unwrap();
    v
}

fn open_error(env: &common::Env, p: &Path) -> String {
    match env.tde.open(p).and_then(|c| {
        c.query_row("SELECT count(*) FROM secrets", [], |r| r.get::<_, i64>(0)).map_err(sqlite_tde::Error::from)
    }) {
        Ok(n) => panic!("the tampered database was opened ({n} rows)"),
        Err(e) => e.to_string(),
    }
}

/// The attacker's own data key for the victim's database (GenerateDataKey with the victim's
/// UUID as encryption context, under the default key both principals may use).
fn attacker_key(env: &common::Env, uuid: &[u8; 16]) -> sqlite_tde::kms::GeneratedDataKey {
    let kms = LocalKms::new(env.dir.path().join("keystore"));
    kms.generate_data_key(DEFAULT_KEY_ALIAS, &EncryptionContext::for_database(uuid)).unwrap()
}

/// The attacker's data key as an XTS key.
fn dek(g: &sqlite_tde::kms::GeneratedDataKey) -> DataKey {
    DataKey::try_from(&g.plaintext).unwrap()
}

/// A rekey state (progress 0) to the data key `g`.
fn planted_rekey(g: &sqlite_tde::kms::GeneratedDataKey, uuid: &[u8; 16]) -> RekeyState {
    RekeyState { key: g.key.clone(), wrapped_dek: g.wrapped.clone(), kcv: key_check_value(&dek(g), uuid), progress: 0 }
}

/// Re-seal a slot image's SHA-256 checksum, as anyone can.
fn reseal(slot: &mut [u8]) {
    let sum = Sha256::digest(&slot[..2016]);
    slot[2016..2048].copy_from_slice(&sum);
}

#[test]
fn rekey_state_hijack_is_refused_and_changes_nothing() {
    let env = common::Env::new();
    let p = victim(&env);
    let original = bytes(&p);
    let (h, _) = choose_slot(&original[..HEADER_REGION_LEN]).unwrap();
    assert_eq!(h.format, FORMAT_VERSION, "new databases are format 2");
    let g = attacker_key(&env, &h.db_uuid);
    let state = planted_rekey(&g, &h.db_uuid);
    let mut forged = h.clone();
    forged.sequence = h.sequence + 10;
    forged.rekey = Some(state);
    let attacker_meta = MetaKey::derive(&dek(&g));
    // Three ways to write the state without the victim's DEK: as format 1 (no MAC), MACed under
    // the attacker's own DEK, and a format 2 slot of the victim edited and re-checksummed.
    let mut edited = original[..SLOT_LEN].to_vec();
    {
        let with_state = forged.encode(&attacker_meta).unwrap();
        edited[12..16].copy_from_slice(&with_state[12..16]);
        edited[16..24].copy_from_slice(&with_state[16..24]);
        edited[864..1688].copy_from_slice(&with_state[864..1688]);
        reseal(&mut edited);
    }
    let variants: Vec<(&str, Vec<u8>)> = vec![
        ("format 1 slot", forged.encode_format_1().unwrap()),
        ("format 2 slot MACed under the attacker's DEK", forged.encode(&attacker_meta).unwrap()),
        ("victim's slot edited and re-checksummed", edited),
    ];
    let attacker_cipher = XtsCipher::new(&dek(&g));
    for (what, slot) in variants {
        let mut v = original.clone();
        v[..SLOT_LEN].copy_from_slice(&slot);
        v[SLOT_LEN..HEADER_REGION_LEN].copy_from_slice(&slot);
        std::fs::write(&p, &v).unwrap();
        let err = open_error(&env, &p);
        eprintln!("{what}: {err}");
        assert!(
            err.contains("failed authentication") || err.contains("unauthenticated format-1 rekey state"),
            "{what}: {err}"
        );
        assert_eq!(bytes(&p), v, "{what}: the refused open changed the file");
        assert!(!env.path("victim.db-tderekey").exists(), "{what}: a rekey journal was created");
        // The attacker's DEK decrypts nothing of the file.
        let mut page1 = v[HEADER_REGION_LEN..HEADER_REGION_LEN + 16].to_vec();
        attacker_cipher.decrypt(Domain::Database, 0, &mut page1);
        assert_ne!(&page1[..], b"SQLite format 3\0", "{what}");
    }
    // Put back, the database is intact and still under the victim's DEK.
    std::fs::write(&p, &original).unwrap();
    let c = env.tde.open(&p).unwrap();
    let v: String = c.query_row("SELECT v FROM secrets", [], |r| r.get(0)).unwrap();
    assert_eq!(v, "victim data");
}

/// The state file of an in-place encryption as the format-1 code read it (or with a format 2
/// version and a MAC the attacker cannot compute): the victim's public header image, progress
/// `plain_len - 4096`, and a chunk record holding the attacker's plaintext page.
fn forged_convert_state(version: u16, header_image: &[u8], plain_len: u64, page: &[u8], uuid: &[u8; 16]) -> Vec<u8> {
    let mut st = vec![0u8; 2 * SLOT_LEN];
    st[0..8].copy_from_slice(b"SQLTDECV");
    st[8..10].copy_from_slice(&version.to_le_bytes());
    st[16..24].copy_from_slice(&5u64.to_le_bytes());
    st[24..32].copy_from_slice(&plain_len.to_le_bytes());
    let progress = plain_len;
    st[32..40].copy_from_slice(&progress.to_le_bytes());
    st[40..48].copy_from_slice(&4096u64.to_le_bytes());
    st[48..48 + 2048].copy_from_slice(&header_image[..2048]);
    let sum = Sha256::digest(&st[..SLOT_LEN - 32]);
    st[SLOT_LEN - 32..SLOT_LEN].copy_from_slice(&sum);
    // Chunk record at 8192: moves [plain_len - 4096, plain_len) from the "copy".
    let mut rec = vec![0u8; 128];
    rec[0..8].copy_from_slice(b"SQLTDECC");
    rec[8..10].copy_from_slice(&version.to_le_bytes());
    rec[16..32].copy_from_slice(uuid);
    rec[32..40].copy_from_slice(&progress.to_le_bytes());
    rec[40..48].copy_from_slice(&(plain_len - page.len() as u64).to_le_bytes());
    rec[48..56].copy_from_slice(&(page.len() as u64).to_le_bytes());
    let mut hsh = Sha256::new();
    hsh.update(&rec[..64]);
    hsh.update(page);
    let sum: [u8; 32] = hsh.finalize().into();
    rec[64..96].copy_from_slice(&sum);
    st.extend_from_slice(&rec);
    st.extend_from_slice(page);
    st
}

#[test]
fn forged_conversion_state_is_refused_and_changes_nothing() {
    let env = common::Env::new();
    let p = victim(&env);
    let original = bytes(&p);
    let (h, _) = choose_slot(&original[..HEADER_REGION_LEN]).unwrap();
    let logical = (original.len() - HEADER_REGION_LEN) as u64;
    let page = vec![0x41u8; 4096];
    for version in [1u16, 2] {
        let state = forged_convert_state(version, &original[..SLOT_LEN], logical, &page, &h.db_uuid);
        let state_path = env.path("victim.db-tdeconvert");
        std::fs::write(&state_path, &state).unwrap();
        let mut v = original.clone();
        v[..16].copy_from_slice(b"SQLTDE-CONVERT\x00\x01");
        std::fs::write(&p, &v).unwrap();
        let err = open_error(&env, &p);
        eprintln!("format {version} state: {err}");
        assert!(err.contains("in-place encryption state file"), "{err}");
        assert_eq!(bytes(&p), v, "format {version}: the database changed");
        assert_eq!(bytes(&state_path), state, "format {version}: the state file changed");
        std::fs::remove_file(&state_path).unwrap();
    }
}

#[test]
fn a_format_1_database_opens_and_its_first_rewrap_upgrades_it() {
    let env = common::Env::new();
    let p = victim(&env);
    // Turn the header into what a format-1 build wrote (both slots).
    let v = as_format_1(&p);
    assert_eq!(secret(&env, &p), "victim data");
    assert_eq!(
        choose_slot(&bytes(&p)[..HEADER_REGION_LEN]).unwrap().0.format,
        1,
        "an open does not rewrite the header"
    );
    let r = sqlite_tde::rotation::rewrap(&env.tde, &p, &Default::default()).unwrap();
    assert_eq!(r.status, "rewrapped", "{r:?}");
    let after = bytes(&p);
    for slot in [0, 1] {
        match Header::decode(&after[slot * SLOT_LEN..(slot + 1) * SLOT_LEN]) {
            sqlite_tde::format::SlotStatus::Valid(h) => assert_eq!(h.format, FORMAT_VERSION, "slot {slot}"),
            other => panic!("slot {slot}: {other:?}"),
        }
    }
    assert_eq!(after[HEADER_REGION_LEN..], v[HEADER_REGION_LEN..], "the upgrade touched pages");
    assert_eq!(secret(&env, &p), "victim data");
}

#[test]
fn a_downgrade_to_format_1_next_to_a_format_2_slot_loses() {
    let env = common::Env::new();
    let p = victim(&env);
    let original = bytes(&p);
    let (h, slot) = choose_slot(&original[..HEADER_REGION_LEN]).unwrap();
    // A format 1 slot with a higher sequence number next to the format 2 one: ignored.
    let g = attacker_key(&env, &h.db_uuid);
    let mut forged = h.clone();
    forged.sequence = h.sequence + 100;
    forged.key = g.key.clone();
    forged.wrapped_dek = g.wrapped.clone();
    forged.kcv = key_check_value(&dek(&g), &h.db_uuid);
    let mut v = original.clone();
    let other = 1 - slot;
    v[other * SLOT_LEN..(other + 1) * SLOT_LEN].copy_from_slice(&forged.encode_format_1().unwrap());
    std::fs::write(&p, &v).unwrap();
    assert_eq!(choose_slot(&v[..HEADER_REGION_LEN]).unwrap(), (h, slot));
    assert_eq!(secret(&env, &p), "victim data");
}

#[test]
fn a_format_1_rekey_state_is_finished_only_when_trusted() {
    let env = common::Env::new();
    let p = victim(&env);
    let original = bytes(&p);
    let (h, _) = choose_slot(&original[..HEADER_REGION_LEN]).unwrap();
    // What a format-1 build leaves after a crash right after the rekey began: both slots format
    // 1, the newer one with the rekey state (progress 0), no journal record.
    let g = attacker_key(&env, &h.db_uuid);
    let mut begun = h.clone();
    begun.sequence = h.sequence + 1;
    begun.rekey = Some(planted_rekey(&g, &h.db_uuid));
    let mut v = original.clone();
    v[..SLOT_LEN].copy_from_slice(&h.encode_format_1().unwrap());
    v[SLOT_LEN..HEADER_REGION_LEN].copy_from_slice(&begun.encode_format_1().unwrap());
    std::fs::write(&p, &v).unwrap();
    let err = open_error(&env, &p);
    assert!(err.contains("--trust-format-1"), "{err}");
    assert_eq!(bytes(&p), v);
    // The operator's explicit decision finishes it.
    let trusted = sqlite_tde::OpenOptions { must_exist: true, trust_format_1: true, ..Default::default() };
    let c = env.tde.open_with(&p, &trusted).unwrap();
    let s: String = c.query_row("SELECT v FROM secrets", [], |r| r.get(0)).unwrap();
    assert_eq!(s, "victim data");
    drop(c);
    let (after, _) = choose_slot(&bytes(&p)[..HEADER_REGION_LEN]).unwrap();
    assert!(after.rekey.is_none());
    assert_eq!((after.format, after.kcv), (FORMAT_VERSION, key_check_value(&dek(&g), &h.db_uuid)));
}

#[test]
fn cli_upgrade_rewrites_format_1_headers_and_verify_reports_them() {
    let env = common::Env::new();
    let p = victim(&env);
    let v = as_format_1(&p);
    let cli = |args: &[&str]| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_sqlite-tde"))
            .arg("--keystore")
            .arg(env.dir.path().join("keystore"))
            .args(args)
            .env_remove("SQLITE_TDE_KEYSTORE")
            .env_remove("SQLITE_TDE_KMS")
            .output()
            .unwrap();
        (o.status.code(), String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr))
    };
    let db = p.to_str().unwrap();
    let (code, out) = cli(&["verify", db]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("format_version: 1") && out.contains("not authenticated"), "{out}");
    let (code, out) = cli(&["upgrade", db]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("upgraded") && out.contains("format 1 -> 2"), "{out}");
    let (code, out) = cli(&["upgrade", db]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("current"), "{out}");
    let (code, out) = cli(&["verify", db]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("format_version: 2") && !out.contains("not authenticated"), "{out}");
    assert_eq!(bytes(&p)[HEADER_REGION_LEN..], v[HEADER_REGION_LEN..], "the upgrade touched pages");
}

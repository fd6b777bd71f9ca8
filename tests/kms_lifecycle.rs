//! The CMK lifecycle of the embedded KMS, end to end through the VFS: states and their
//! effect on cryptographic operations and databases, deletion windows, rotation, the
//! service-managed default key, encryption contexts, separation of duties, BYOK, secrets.
//! Time is a manual clock.

mod kms_support;

use kms_support::*;
use sqlite_tde::kms::api::CreateKeyParams;
use sqlite_tde::kms::audit::Outcome;
use sqlite_tde::kms::local::import::wrap_for_import;
use sqlite_tde::kms::local::LocalKms;
use sqlite_tde::kms::model::{KeyManager, KeyState, Origin};
use sqlite_tde::kms::policy::{Effect, KeyPolicy, Statement};
use sqlite_tde::kms::{EncryptionContext, Kms, KmsError, DEFAULT_KEY_ALIAS};

fn ctx(db: &str) -> EncryptionContext {
    EncryptionContext::from_pairs([("sqlite-tde:db".to_string(), db.to_string())])
}

fn create(kms: &sqlite_tde::kms::local::LocalKms, alias: &str) -> String {
    kms.create_key(Some(alias), "test key").unwrap().key_id
}

#[test]
fn disabled_key_blocks_every_cryptographic_operation_and_its_databases_at_once() {
    let env = KmsEnv::new();
    let kms = env.kms("ops");
    let id = create(&kms, "alias/app");
    let tde = env.tde("ops");
    let db = env.path("a.db");
    create_db(&tde, &db, "alias/app");
    assert_eq!(read_db(&tde, &db).unwrap(), "hello");
    let blob = kms.op_generate_data_key("ops", "alias/app", &ctx("x"), None, true).unwrap().ciphertext;

    // Disabled through another instance of the KMS: the VFS's cached key is dropped too.
    let info = env.kms("ops").op_disable("ops", "alias/app").unwrap();
    assert_eq!(info.state, KeyState::Disabled);
    assert!(
        matches!(kms.op_generate_data_key("ops", "alias/app", &ctx("x"), None, true), Err(KmsError::Disabled(k)) if k == id)
    );
    assert!(matches!(kms.op_decrypt("ops", &blob, &ctx("x"), None), Err(KmsError::Disabled(_))));
    assert!(matches!(kms.op_re_encrypt("ops", &blob, &ctx("x"), None, None), Err(KmsError::Disabled(_))));
    assert!(matches!(kms.op_encrypt("ops", &id, b"data", &ctx("x")), Err(KmsError::Disabled(_))));
    assert!(matches!(kms_error(read_db(&tde, &db).unwrap_err()), KmsError::Disabled(_)));
    // A new database cannot be created under it either, and leaves no header behind.
    let fresh = env.path("fresh.db");
    assert!(tde
        .open_with(&fresh, &sqlite_tde::OpenOptions { key: Some("alias/app".into()), ..Default::default() })
        .is_err());

    kms.op_enable("ops", &id).unwrap();
    assert_eq!(read_db(&tde, &db).unwrap(), "hello");
    assert_eq!(&kms.op_decrypt("ops", &blob, &ctx("x"), None).unwrap().key_id, &id);
}

#[test]
fn deletion_window_cancel_and_irreversible_destruction() {
    let env = KmsEnv::new();
    let kms = env.kms("ops");
    let id = create(&kms, "alias/doomed");
    let tde = env.tde("ops");
    let db = env.path("d.db");
    create_db(&tde, &db, "alias/doomed");

    for days in [0, 6, 31] {
        let e = kms.op_schedule_deletion("ops", &id, Some(days)).unwrap_err();
        assert!(matches!(e, KmsError::InvalidRequest(ref m) if m.contains("7 to 30")), "{days}: {e}");
    }
    assert_eq!(kms.describe_key(&id).unwrap().state, KeyState::Enabled);

    // Default window is 30 days.
    let info = kms.op_schedule_deletion("ops", &id, None).unwrap();
    assert_eq!(info.state, KeyState::PendingDeletion);
    assert_eq!(info.deletion_date, Some(T0 + 30 * 86_400));
    assert!(matches!(kms.op_generate_data_key("ops", &id, &ctx("x"), None, true), Err(KmsError::PendingDeletion(_))));
    assert!(matches!(kms_error(read_db(&tde, &db).unwrap_err()), KmsError::PendingDeletion(_)));

    // Cancel within the window: Disabled, then usable after enable.
    env.advance_days(29);
    assert_eq!(kms.op_cancel_deletion("ops", &id).unwrap().state, KeyState::Disabled);
    assert!(matches!(kms_error(read_db(&tde, &db).unwrap_err()), KmsError::Disabled(_)));
    kms.op_enable("ops", &id).unwrap();
    assert_eq!(read_db(&tde, &db).unwrap(), "hello");

    // Schedule 7 days; once the window has passed the material is destroyed.
    kms.op_schedule_deletion("ops", &id, Some(7)).unwrap();
    env.advance_days(6);
    assert!(matches!(kms_error(read_db(&tde, &db).unwrap_err()), KmsError::PendingDeletion(_)));
    env.advance_days(1);
    let e = read_db(&tde, &db).unwrap_err();
    assert!(e.to_string().contains("has been deleted"), "{e}");
    assert!(matches!(kms_error(e), KmsError::Deleted(k) if k == id));

    let info = kms.describe_key(&id).unwrap();
    assert_eq!(info.state, KeyState::Deleted);
    assert!(info.aliases.is_empty());
    assert!(info.version_details.iter().all(|v| !v.available));
    let ks = kms.read_keystore().unwrap().unwrap();
    assert!(ks.keys[&id].versions.iter().all(|v| v.material.is_none()), "material must be gone from the keystore");
    assert!(matches!(kms.op_cancel_deletion("ops", &id), Err(KmsError::Deleted(_))));
    assert!(matches!(kms.op_enable("ops", &id), Err(KmsError::Deleted(_))));
    // The alias is free again; the database never opens again, even through a new registration.
    assert!(matches!(kms.describe_key("alias/doomed"), Err(KmsError::NotFound(_))));
    assert!(matches!(kms_error(read_db(&env.tde("ops"), &db).unwrap_err()), KmsError::Deleted(_)));
}

#[test]
fn rotation_keeps_old_databases_openable_and_new_ones_use_the_new_version() {
    let env = KmsEnv::new();
    let kms = env.kms("ops");
    let id = create(&kms, "alias/rot");
    let tde = env.tde("ops");
    let old = env.path("old.db");
    create_db(&tde, &old, "alias/rot");
    assert_eq!(header_version(&old), (id.clone(), 1));
    let old_blob = kms.op_encrypt("ops", &id, b"payload", &ctx("p")).unwrap().ciphertext;

    let info = kms.op_rotate("ops", "alias/rot").unwrap();
    assert_eq!(info.key_id, id, "rotation keeps the key id");
    assert_eq!((info.primary_version, info.versions.clone()), (2, vec![1, 2]));

    let new = env.path("new.db");
    create_db(&tde, &new, "alias/rot");
    assert_eq!(header_version(&new), (id.clone(), 2));
    assert_eq!(read_db(&env.tde("ops"), &old).unwrap(), "hello");
    assert_eq!(read_db(&env.tde("ops"), &new).unwrap(), "hello");
    let d = kms.op_decrypt("ops", &old_blob, &ctx("p"), None).unwrap();
    assert_eq!((d.key_version, &d.plaintext[..]), (1, &b"payload"[..]));

    // ReEncrypt to the newest version, without the plaintext leaving the KMS.
    let re = kms.op_re_encrypt("ops", &old_blob, &ctx("p"), None, None).unwrap();
    assert_eq!((re.source_key_version, re.key_version), (1, 2));
    assert_eq!(&kms.op_decrypt("ops", &re.ciphertext, &ctx("p"), None).unwrap().plaintext[..], b"payload");
    // ... or to another key.
    let other = create(&kms, "alias/other");
    let re2 = kms.op_re_encrypt("ops", &old_blob, &ctx("p"), Some("alias/other"), Some(&ctx("q"))).unwrap();
    assert_eq!(re2.key_id, other);
    assert!(matches!(kms.op_decrypt("ops", &re2.ciphertext, &ctx("p"), None), Err(KmsError::InvalidCiphertext { .. })));
    assert_eq!(&kms.op_decrypt("ops", &re2.ciphertext, &ctx("q"), None).unwrap().plaintext[..], b"payload");

    // The VFS's rewrap goes through ReEncrypt too.
    let (h, _) = sqlite_tde::format::choose_slot(&std::fs::read(&old).unwrap()[..8192]).unwrap();
    let (_, kr) =
        kms.rewrap_data_key(&h.key, &h.wrapped_dek, &EncryptionContext::for_database(&h.db_uuid), None).unwrap();
    assert_eq!(kr.version, 2);
}

#[test]
fn automatic_rotation_when_due_on_use_and_by_rotate_due() {
    let env = KmsEnv::new();
    let kms = env.kms("ops");
    let info = kms
        .op_create_key(
            "ops",
            &CreateKeyParams { alias: Some("alias/auto".into()), rotation_days: Some(10), ..Default::default() },
        )
        .unwrap();
    assert_eq!(info.rotation_period_days, Some(10));
    assert_eq!(info.next_rotation, Some(T0 + 10 * 86_400));
    env.advance_days(9);
    assert_eq!(kms.op_generate_data_key("ops", "alias/auto", &ctx("x"), None, true).unwrap().key_version, 1);
    env.advance_days(2);
    // Checked on use: the next GenerateDataKey already uses version 2.
    assert_eq!(kms.op_generate_data_key("ops", "alias/auto", &ctx("x"), None, true).unwrap().key_version, 2);
    let info = kms.describe_key("alias/auto").unwrap();
    assert_eq!(info.next_rotation, Some(T0 + 21 * 86_400));

    // rotate-due performs everything due without a use.
    env.advance_days(10);
    let report = kms.op_rotate_due("ops").unwrap();
    assert_eq!(report.rotated, vec![(info.key_id.clone(), 3)]);
    assert!(kms.op_rotate_due("ops").unwrap().rotated.is_empty());

    kms.op_rotation("ops", "alias/auto", None).unwrap();
    env.advance_days(100);
    assert!(kms.op_rotate_due("ops").unwrap().rotated.is_empty());
    assert!(matches!(kms.op_rotation("ops", "alias/auto", Some(0)), Err(KmsError::InvalidRequest(_))));
}

#[test]
fn default_key_is_created_on_first_use_rotated_yearly_and_not_user_manageable() {
    let env = KmsEnv::new();
    let tde = env.tde("alice");
    let db = env.path("default.db");
    let c = tde.open(&db).unwrap();
    c.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES('hello');").unwrap();
    drop(c);
    let kms = env.kms("alice");
    let info = kms.describe_key(DEFAULT_KEY_ALIAS).unwrap();
    assert_eq!(info.manager, KeyManager::Service);
    assert_eq!(info.rotation_period_days, Some(365));
    assert_eq!(header_version(&db), (info.key_id.clone(), 1));

    for r in [
        kms.op_disable("alice", DEFAULT_KEY_ALIAS).map(|_| ()),
        kms.op_schedule_deletion("alice", DEFAULT_KEY_ALIAS, Some(7)).map(|_| ()),
        kms.op_put_policy("alice", DEFAULT_KEY_ALIAS, &KeyPolicy::with_roles(&["alice".into()], &[])).map(|_| ()),
        kms.op_rotation("alice", DEFAULT_KEY_ALIAS, None).map(|_| ()),
        kms.op_rotate("alice", DEFAULT_KEY_ALIAS).map(|_| ()),
        kms.op_alias("alice", "UpdateAlias", DEFAULT_KEY_ALIAS, Some(&info.key_id)).map(|_| ()),
    ] {
        assert!(r.is_err(), "a service-managed key must refuse lifecycle changes");
    }
    // Any principal may use it ("just encrypt it").
    assert!(env.kms("bob").op_generate_data_key("bob", DEFAULT_KEY_ALIAS, &ctx("x"), None, true).is_ok());
    assert_eq!(read_db(&env.tde("bob"), &db).unwrap(), "hello");

    env.advance_days(365);
    let g = kms.op_generate_data_key("alice", DEFAULT_KEY_ALIAS, &ctx("x"), None, true).unwrap();
    assert_eq!(g.key_version, 2);
    assert_eq!(read_db(&env.tde("alice"), &db).unwrap(), "hello");
}

#[test]
fn blobs_are_self_describing_and_contexts_must_match_exactly() {
    let env = KmsEnv::new();
    let kms = env.kms("ops");
    let id = create(&kms, "alias/ctx");
    let g = kms.op_generate_data_key("ops", "alias/ctx", &ctx("db1"), None, true).unwrap();
    assert_eq!(g.plaintext.as_ref().unwrap().len(), 64, "an AES-256-XTS key");
    let d = kms.op_decrypt("ops", &g.ciphertext, &ctx("db1"), None).unwrap();
    assert_eq!(d.key_id, id);
    assert_eq!(&d.plaintext[..], &g.plaintext.as_ref().unwrap()[..]);
    for wrong in [ctx("db2"), EncryptionContext::default(), {
        let mut p = ctx("db1").pairs().clone();
        p.insert("extra".into(), "1".into());
        EncryptionContext::from_pairs(p)
    }] {
        assert!(matches!(kms.op_decrypt("ops", &g.ciphertext, &wrong, None), Err(KmsError::InvalidCiphertext { .. })));
    }
    let np = kms.op_generate_data_key("ops", &id, &ctx("db1"), Some(32), false).unwrap();
    assert!(np.plaintext.is_none());
    assert_eq!(kms.op_decrypt("ops", &np.ciphertext, &ctx("db1"), None).unwrap().plaintext.len(), 32);
    // Decrypt naming the wrong key is refused.
    let other = create(&kms, "alias/ctx2");
    assert!(kms.op_decrypt("ops", &g.ciphertext, &ctx("db1"), Some(&other)).is_err());
    // Payload limit.
    assert!(kms.op_encrypt("ops", &id, &[7u8; 4096], &ctx("p")).is_ok());
    assert!(matches!(kms.op_encrypt("ops", &id, &[7u8; 4097], &ctx("p")), Err(KmsError::InvalidRequest(_))));
    // A tampered blob fails.
    let mut bad = g.ciphertext.clone();
    *bad.last_mut().unwrap() ^= 1;
    assert!(matches!(kms.op_decrypt("ops", &bad, &ctx("db1"), None), Err(KmsError::InvalidCiphertext { .. })));
}

#[test]
fn separation_of_duties_key_users_and_key_admins() {
    let env = KmsEnv::new();
    let carol = env.kms("carol");
    let info = carol
        .op_create_key(
            "carol",
            &CreateKeyParams {
                alias: Some("alias/sod".into()),
                admins: vec!["alice".into()],
                users: vec!["bob".into(), "svc".into()],
                ..Default::default()
            },
        )
        .unwrap();
    let id = info.key_id;
    let alice = env.kms("alice");
    let bob = env.kms("bob");
    let denied = |r: Result<(), KmsError>, who: &str, action: &str| match r {
        Err(KmsError::AccessDenied { principal, action: a, .. }) => {
            assert_eq!(principal, who);
            assert_eq!(a, action);
        }
        other => panic!("{who} {action}: expected AccessDenied, got {other:?}"),
    };

    // The key user encrypts and decrypts, but cannot disable or delete.
    let g = bob.op_generate_data_key("bob", &id, &ctx("x"), None, true).unwrap();
    bob.op_decrypt("bob", &g.ciphertext, &ctx("x"), None).unwrap();
    denied(bob.op_disable("bob", &id).map(|_| ()), "bob", "kms:DisableKey");
    denied(bob.op_schedule_deletion("bob", &id, Some(7)).map(|_| ()), "bob", "kms:ScheduleKeyDeletion");
    denied(
        bob.op_put_policy("bob", &id, &KeyPolicy::with_roles(&["bob".into()], &["bob".into()])).map(|_| ()),
        "bob",
        "kms:PutKeyPolicy",
    );
    denied(bob.op_rotate("bob", &id).map(|_| ()), "bob", "kms:RotateKey");

    // The key admin manages the lifecycle, but cannot decrypt or generate.
    denied(alice.op_decrypt("alice", &g.ciphertext, &ctx("x"), None).map(|_| ()), "alice", "kms:Decrypt");
    denied(alice.op_generate_data_key("alice", &id, &ctx("x"), None, true).map(|_| ()), "alice", "kms:GenerateDataKey");
    denied(
        alice.op_re_encrypt("alice", &g.ciphertext, &ctx("x"), None, None).map(|_| ()),
        "alice",
        "kms:ReEncryptFrom",
    );
    alice.op_rotate("alice", &id).unwrap();
    alice.op_disable("alice", &id).unwrap();
    alice.op_enable("alice", &id).unwrap();
    // The creator holds no role: exactly the given ones were granted.
    denied(carol.op_describe("carol", &id).map(|_| ()), "carol", "kms:DescribeKey");

    // Through the VFS: the key admin cannot open a database under the key.
    let db = env.path("sod.db");
    create_db(&env.tde("bob"), &db, &id);
    assert!(matches!(kms_error(read_db(&env.tde("alice"), &db).unwrap_err()), KmsError::AccessDenied { .. }));
    assert_eq!(read_db(&env.tde("svc"), &db).unwrap(), "hello");

    // Lint: clean for this key; flags the creator of a default-policy key (to an operator,
    // here root; alice may not read that key's policy, so her lint does not show it).
    assert!(alice.op_lint("alice").unwrap().is_empty());
    let both = env.kms("dave").create_key(Some("alias/both"), "").unwrap().key_id;
    assert!(alice.op_lint("alice").unwrap().is_empty());
    let lint = env.kms("root").op_lint("root").unwrap();
    assert_eq!(lint.len(), 1);
    assert_eq!(lint[0].key_id, both);
    assert_eq!(lint[0].findings[0].principal, "dave");

    // Policy edits take effect at once (and revoke cached keys): revoke svc.
    let mut p = alice.op_get_policy("alice", &id).unwrap();
    for s in p.statements.iter_mut() {
        s.principals.retain(|x| x != "svc");
    }
    alice.op_put_policy("alice", &id, &p).unwrap();
    assert!(matches!(kms_error(read_db(&env.tde("svc"), &db).unwrap_err()), KmsError::AccessDenied { .. }));
    assert!(alice
        .op_put_policy(
            "alice",
            &id,
            &serde_json::from_str(r#"{"statements":[{"principals":["x"],"actions":["kms:Nope"]}]}"#).unwrap()
        )
        .is_err());
}

/// BYOK refuses weak material (all zero, repeated 16-byte blocks, few distinct bytes) with a
/// clear error: the key stays PendingImport, and the attempt spent its token (every attempt
/// that reaches the RSA private key does, so no wrapping key decrypts twice).
#[test]
fn byok_refuses_weak_key_material() {
    let env = KmsEnv::new();
    let kms = env.kms("ops");
    let id =
        kms.op_create_key("ops", &CreateKeyParams { origin: Origin::External, ..Default::default() }).unwrap().key_id;
    let block: [u8; 16] = test_material(1)[..16].try_into().unwrap();
    let few: Vec<u8> = (0..32u8).map(|i| i % 5 + (i / 16) * 100).collect();
    for (what, weak) in
        [("all zero", vec![0u8; 32]), ("repeated 16-byte blocks", [block, block].concat()), ("too few distinct", few)]
    {
        let p = kms.op_get_import_parameters("ops", &id).unwrap();
        let wrapped = wrap_for_import(&p.public_key, &weak).unwrap();
        let e = kms.op_import("ops", &id, &p.import_token, &wrapped, None).unwrap_err();
        assert!(
            matches!(&e, KmsError::InvalidRequest(m) if m.contains("weak key material") && m.contains(what)),
            "{what}: {e}"
        );
        assert_eq!(kms.describe_key(&id).unwrap().state, KeyState::PendingImport, "{what}");
        let good = wrap_for_import(&p.public_key, &test_material(2)).unwrap();
        assert!(
            matches!(kms.op_import("ops", &id, &p.import_token, &good, None), Err(KmsError::InvalidRequest(m)) if m.contains("no import parameters")),
            "{what}: a token was usable again after a failed attempt"
        );
    }
    let ks = kms.read_keystore().unwrap().unwrap();
    assert!(ks.keys[&id].import.as_ref().unwrap().fingerprint.is_none(), "weak material was fingerprinted");
    let p = kms.op_get_import_parameters("ops", &id).unwrap();
    let good = wrap_for_import(&p.public_key, &test_material(2)).unwrap();
    assert_eq!(kms.op_import("ops", &id, &p.import_token, &good, None).unwrap().state, KeyState::Enabled);
}

#[test]
fn byok_import_expiry_delete_and_reimport_of_the_same_material_only() {
    let env = KmsEnv::new();
    let kms = env.kms("ops");
    let info = kms
        .op_create_key(
            "ops",
            &CreateKeyParams { alias: Some("alias/byok".into()), origin: Origin::External, ..Default::default() },
        )
        .unwrap();
    let id = info.key_id.clone();
    assert_eq!((info.state, info.origin, info.primary_version), (KeyState::PendingImport, Origin::External, 0));
    assert!(matches!(kms.op_generate_data_key("ops", &id, &ctx("x"), None, true), Err(KmsError::PendingImport(_))));

    let material = test_material(0x42);
    let p = kms.op_get_import_parameters("ops", &id).unwrap();
    assert_eq!(p.wrapping_algorithm, "RSAES_OAEP_SHA_256");
    assert_eq!(p.valid_to, T0 + 24 * 3600);
    {
        use rsa::pkcs8::DecodePublicKey;
        use rsa::traits::PublicKeyParts;
        let pk = rsa::PublicKey::from_public_key_der(&p.public_key).unwrap();
        assert!(pk.size() * 8 >= 3072, "wrapping key has {} bits", pk.size() * 8);
    }
    let wrapped = wrap_for_import(&p.public_key, &material).unwrap();
    // A wrong token never reaches the private key, and does not spend the real one.
    assert!(kms.op_import("ops", &id, b"not the token", &wrapped, None).is_err());
    let info = kms.op_import("ops", &id, &p.import_token, &wrapped, Some(T0 + 10 * 86_400)).unwrap();
    assert_eq!((info.state, info.primary_version), (KeyState::Enabled, 1));
    // The token was spent: replaying the request (even within its 24 hours) is refused.
    assert!(
        matches!(kms.op_import("ops", &id, &p.import_token, &wrapped, None), Err(KmsError::InvalidRequest(m)) if m.contains("no import parameters")),
        "an import token was accepted twice"
    );
    assert_eq!(kms.describe_key(&id).unwrap().import_expires, Some(T0 + 10 * 86_400), "the replay changed the key");
    assert_eq!(info.import_expires, Some(T0 + 10 * 86_400));
    assert!(kms.op_rotate("ops", &id).is_err(), "imported keys are not rotated");

    let tde = env.tde("ops");
    let db = env.path("byok.db");
    create_db(&tde, &db, &id);
    assert_eq!(read_db(&tde, &db).unwrap(), "hello");

    // Expiry: the key waits for its material again, and its databases close.
    // Expiry is enforced on the KMS's next use (or `kms rotate-due`), which also drops this
    // process's cached data keys under the key.
    env.advance_days(10);
    assert!(matches!(kms_error(read_db(&env.tde("ops"), &db).unwrap_err()), KmsError::PendingImport(_)));
    assert!(matches!(kms_error(read_db(&tde, &db).unwrap_err()), KmsError::PendingImport(_)));
    assert_eq!(kms.describe_key(&id).unwrap().state, KeyState::PendingImport);

    // Reimport: the old token was spent; different material is refused.
    assert!(
        matches!(kms.op_import("ops", &id, &p.import_token, &wrapped, None), Err(KmsError::InvalidRequest(m)) if m.contains("no import parameters"))
    );
    let p2 = kms.op_get_import_parameters("ops", &id).unwrap();
    let other = wrap_for_import(&p2.public_key, &test_material(0x43)).unwrap();
    assert!(
        matches!(kms.op_import("ops", &id, &p2.import_token, &other, None), Err(KmsError::InvalidRequest(m)) if m.contains("different key material"))
    );
    let p3 = kms.op_get_import_parameters("ops", &id).unwrap();
    let again = wrap_for_import(&p3.public_key, &material).unwrap();
    assert_eq!(kms.op_import("ops", &id, &p3.import_token, &again, None).unwrap().state, KeyState::Enabled);
    assert_eq!(read_db(&env.tde("ops"), &db).unwrap(), "hello");

    // DeleteImportedKeyMaterial: unusable at once, in this process's cache too.
    kms.op_delete_imported("ops", &id).unwrap();
    assert!(matches!(kms_error(read_db(&tde, &db).unwrap_err()), KmsError::PendingImport(_)));
    let ks = kms.read_keystore().unwrap().unwrap();
    assert!(ks.keys[&id].versions.iter().all(|v| v.material.is_none()));
    // Wrong sizes are refused.
    let p3 = kms.op_get_import_parameters("ops", &id).unwrap();
    let short = wrap_for_import(&p3.public_key, &[1u8; 16]).unwrap();
    assert!(kms.op_import("ops", &id, &p3.import_token, &short, None).is_err());
    // Internal keys take no material.
    let internal = create(&kms, "alias/internal");
    assert!(kms.op_get_import_parameters("ops", &internal).is_err());
}

#[test]
fn secrets_are_versioned_staged_audited_and_policy_checked() {
    let env = KmsEnv::new();
    let admin = env.kms("alice");
    let key = admin
        .op_create_key(
            "alice",
            &CreateKeyParams {
                alias: Some("alias/secrets".into()),
                admins: vec!["alice".into()],
                users: vec!["app".into()],
                ..Default::default()
            },
        )
        .unwrap()
        .key_id;
    let app = env.kms("app").client();
    let v1 = app.put_secret("db/password", b"hunter2", Some("alias/secrets"), "the database password").unwrap();
    assert_eq!(v1.stages, vec!["current"]);
    assert_eq!(v1.key_id, key);
    assert_eq!(&app.get_secret("db/password", None, None).unwrap().value[..], b"hunter2");
    let v2 = app.rotate_secret("db/password", None).unwrap();
    let cur = app.get_secret("db/password", None, None).unwrap();
    assert_eq!(cur.version_id, v2.version_id);
    assert_eq!(cur.value.len(), 64, "generated: 32 random bytes as hex");
    assert_eq!(&app.get_secret("db/password", None, Some("previous")).unwrap().value[..], b"hunter2");
    assert_eq!(&app.get_secret("db/password", Some(&v1.version_id), None).unwrap().value[..], b"hunter2");
    let versions = app.list_secret_versions("db/password").unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!(app.list_secrets().unwrap()[0].versions, 2);
    // The key admin may not read it; the value is not in the store in clear.
    assert!(matches!(
        env.kms("alice").client().get_secret("db/password", None, None),
        Err(KmsError::AccessDenied { .. })
    ));
    let store = std::fs::read(env.ks.join("secrets.json")).unwrap();
    assert!(!store.windows(7).any(|w| w == b"hunter2"));
    // Every access is audited.
    let log = admin.op_read_audit("alice", None, None).unwrap();
    assert!(log.iter().any(|r| r.operation == "secrets:GetSecretValue"
        && r.principal == "alice"
        && r.outcome == sqlite_tde::kms::audit::Outcome::Denied));
    assert!(log.iter().any(|r| r.operation == "secrets:RotateSecret" && r.principal == "app"));
    assert!(app.get_secret("nope", None, None).is_err());
}

/// A wall clock set forward (an operator's or NTP's error, a forged time) does not bring a
/// scheduled deletion forward: the waiting period must also pass on the boot clock. A reboot
/// keeps the waiting time confirmed before it (checkpoints), so it can only delay.
#[test]
fn scheduled_deletion_is_not_brought_forward_by_a_clock_jump() {
    use sqlite_tde::kms::clock::DAY;
    let env = KmsEnv::new();
    let kms = env.kms("ops");
    let id = create(&kms, "alias/jump");
    kms.op_schedule_deletion("ops", &id, Some(7)).unwrap();
    let material = |kms: &sqlite_tde::kms::local::LocalKms| {
        kms.read_keystore().unwrap().unwrap().keys[&id].versions.iter().any(|v| v.material.is_some())
    };

    env.clock.jump(30 * DAY);
    assert_eq!(kms.describe_key(&id).unwrap().state, KeyState::PendingDeletion, "deleted early by a clock jump");
    assert!(kms.op_rotate_due("ops").unwrap().deleted.is_empty(), "rotate-due deleted early");
    assert!(material(&kms));

    // Three days really pass, the machine reboots, four more days pass: deleted then, not before.
    env.advance_days(3);
    assert_eq!(kms.describe_key(&id).unwrap().state, KeyState::PendingDeletion);
    env.clock.reboot();
    assert_eq!(kms.describe_key(&id).unwrap().state, KeyState::PendingDeletion);
    env.clock.advance(4 * DAY - 3600);
    assert_eq!(kms.describe_key(&id).unwrap().state, KeyState::PendingDeletion);
    assert!(material(&kms));
    env.clock.advance(3600);
    assert_eq!(kms.describe_key(&id).unwrap().state, KeyState::Deleted);
    assert!(!material(&kms));
}

/// Secret squatting: a principal pre-creates a secret name under a key it can read; a victim
/// that later stores a value there naming its own key by alias must get an error, never a
/// value sealed under the squatter's key (issue 14, high; the alias used to fall through the
/// key check).
#[test]
fn a_put_naming_its_key_by_alias_never_seals_under_a_squatters_key() {
    let env = KmsEnv::new();
    let ops = env.kms("ops");
    let victim_key = ops
        .op_create_key(
            "ops",
            &CreateKeyParams { alias: Some("alias/victim".into()), users: vec!["victim".into()], ..Default::default() },
        )
        .unwrap()
        .key_id;
    let mallory = env.kms("mallory").client();
    mallory.put_secret("prod/db-password", b"placeholder", None, "squatted").unwrap();
    let victim = env.kms("victim").client();
    let r = victim.put_secret("prod/db-password", b"s3cret", Some("alias/victim"), "");
    // Refused either way: the name is mallory's (secret policies), and it is under another key.
    assert!(
        matches!(&r, Err(KmsError::AccessDenied { .. }))
            || matches!(&r, Err(KmsError::InvalidRequest(m)) if m.contains("cannot change keys")),
        "the victim's value was stored under another key than the one it named: {:?}",
        r.as_ref().map(|v| v.key_id.clone())
    );
    assert_ne!(mallory.list_secrets().unwrap()[0].key_id, victim_key);
    assert_eq!(&mallory.get_secret("prod/db-password", None, None).unwrap().value[..], b"placeholder");
    // The same by key id is refused too.
    assert!(victim.put_secret("prod/db-password", b"s3cret", Some(&victim_key), "").is_err());
    // Even the owner cannot move a secret to another key by naming it on a put.
    ops.op_create_key(
        "ops",
        &CreateKeyParams { alias: Some("alias/mallory".into()), users: vec!["mallory".into()], ..Default::default() },
    )
    .unwrap();
    let r = mallory.put_secret("prod/db-password", b"v2", Some("alias/mallory"), "");
    assert!(
        matches!(&r, Err(KmsError::InvalidRequest(m)) if m.contains("cannot change keys")),
        "{:?}",
        r.map(|v| v.key_id)
    );
}

/// Secret squatting in the shared namespace (issue 14, high): a name someone else created is
/// theirs. Another principal can neither write a value there (which would seal it where the
/// squatter reads it), nor read, list, describe or re-policy it, until the owner grants it.
#[test]
fn secrets_have_owners_and_resource_policies_so_names_cannot_be_squatted() {
    use sqlite_tde::kms::secrets::owner_policy;
    let env = KmsEnv::new();
    let mallory = env.kms("mallory").client();
    let victim = env.kms("victim").client();
    // Under the service default key every principal passes the key check: only the secret's
    // own policy stands between them.
    mallory.put_secret("prod/db-password", b"placeholder", None, "squatted").unwrap();
    let denied = |r: Result<_, KmsError>, what: &str| match r {
        Err(KmsError::AccessDenied { principal, key, .. }) => {
            assert_eq!(principal, "victim");
            assert_eq!(key, "secret prod/db-password", "{what}");
        }
        Err(e) => panic!("{what}: expected AccessDenied, got {e}"),
        Ok(_) => panic!("{what}: a principal wrote or read a secret another principal owns"),
    };
    denied(victim.put_secret("prod/db-password", b"s3cret", None, "").map(|_| ()), "put");
    denied(victim.rotate_secret("prod/db-password", Some(b"s3cret")).map(|_| ()), "rotate");
    denied(victim.get_secret("prod/db-password", None, None).map(|_| ()), "get");
    denied(victim.list_secret_versions("prod/db-password").map(|_| ()), "versions");
    denied(victim.get_secret_policy("prod/db-password").map(|_| ()), "get-policy");
    denied(victim.put_secret_policy("prod/db-password", &owner_policy("victim")).map(|_| ()), "put-policy");
    assert!(victim.list_secrets().unwrap().is_empty(), "a secret the victim may not describe was listed");
    // Nothing the victim sent was stored.
    let versions = mallory.list_secret_versions("prod/db-password").unwrap();
    assert_eq!(versions.len(), 1);
    assert_eq!(&mallory.get_secret("prod/db-password", None, None).unwrap().value[..], b"placeholder");
    let log = env.kms("root").op_read_audit("root", None, None).unwrap();
    assert!(log.iter().any(|r| r.principal == "victim"
        && r.operation == "secrets:PutSecretValue"
        && r.outcome == sqlite_tde::kms::audit::Outcome::Denied));

    // The victim's own secret is equally closed to mallory, and its owner is recorded.
    victim.put_secret("victim/token", b"t0ken", None, "").unwrap();
    let info = victim.get_secret_policy("victim/token").unwrap();
    assert_eq!(info.owner, "victim");
    assert!(mallory.get_secret("victim/token", None, None).is_err());
    assert_eq!(
        mallory.list_secrets().unwrap().iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["prod/db-password"]
    );

    // A grant opens exactly what it names.
    let mut p = owner_policy("victim");
    p.statements.push(Statement {
        sid: Some("reader".into()),
        effect: Effect::Allow,
        principals: vec!["mallory".into()],
        actions: vec!["secrets:GetSecretValue".into()],
    });
    victim.put_secret_policy("victim/token", &p).unwrap();
    assert_eq!(&mallory.get_secret("victim/token", None, None).unwrap().value[..], b"t0ken");
    assert!(mallory.put_secret("victim/token", b"evil", None, "").is_err());
    assert!(mallory.put_secret_policy("victim/token", &owner_policy("mallory")).is_err());
    // The lockout check: a policy nobody could change again is refused, and changes nothing.
    let orphan = KeyPolicy {
        version: 1,
        statements: vec![Statement {
            sid: None,
            effect: Effect::Allow,
            principals: vec!["victim".into()],
            actions: vec!["secrets:GetSecretValue".into()],
        }],
    };
    assert!(matches!(victim.put_secret_policy("victim/token", &orphan), Err(KmsError::InvalidRequest(_))));
    let bad_action = KeyPolicy {
        version: 1,
        statements: vec![Statement {
            sid: None,
            effect: Effect::Allow,
            principals: vec!["victim".into()],
            actions: vec!["secrets:*".into(), "kms:Decrypt".into()],
        }],
    };
    assert!(matches!(victim.put_secret_policy("victim/token", &bad_action), Err(KmsError::InvalidRequest(_))));
    assert_eq!(victim.get_secret_policy("victim/token").unwrap().policy.unwrap(), p);
}

/// Issue 14 (SoD escape): a key-admin used to add itself to the key-user statement with
/// PutKeyPolicy and then decrypt the application's data keys; `kms lint` saw nothing. Now a
/// policy change may not give its author a cryptographic right (or kms:GrantSelf) that the
/// policy in force does not, and lint counts PutKeyPolicy as every right it can grant.
#[test]
fn a_key_admin_cannot_grant_itself_cryptographic_rights() {
    let env = KmsEnv::new();
    let id = app_key_named(&env, "alias/app");
    let ops = env.kms("ops");
    let app = env.kms("app");
    let blob = app.op_generate_data_key("app", &id, &ctx("db"), None, true).unwrap().ciphertext;
    let before = ops.op_get_policy("ops", &id).unwrap();
    let refused = |p: &KeyPolicy, what: &str| match ops.op_put_policy("ops", &id, p) {
        Err(KmsError::AccessDenied { principal, action, .. }) => {
            assert_eq!(principal, "ops");
            assert!(action.starts_with("kms:GrantSelf") && action.contains(what), "{action}");
        }
        other => panic!("self-grant of {what} must be refused, got {other:?}"),
    };
    // Itself into the key-user statement; everyone (which includes itself); and the two-step
    // route, first the permission to self-grant.
    let mut as_user = before.clone();
    as_user.statements[1].principals.push("ops".into());
    refused(&as_user, "kms:Decrypt");
    let mut everyone = before.clone();
    everyone.statements[1].principals = vec!["*".into()];
    refused(&everyone, "kms:Decrypt");
    let mut two_step = before.clone();
    two_step.statements[0].actions.push("kms:GrantSelf".into());
    refused(&two_step, "give itself kms:GrantSelf");
    let mut star = before.clone();
    star.statements[0].actions = vec!["kms:*".into()];
    refused(&star, "kms:Encrypt");
    assert_eq!(ops.op_get_policy("ops", &id).unwrap(), before, "a refused change changed the policy");
    assert!(matches!(ops.op_decrypt("ops", &blob, &ctx("db"), None), Err(KmsError::AccessDenied { .. })));
    let denials = env.kms("root").op_read_audit("root", Some(&id), None).unwrap();
    assert_eq!(
        denials
            .iter()
            .filter(|r| r.operation == "PutKeyPolicy" && r.principal == "ops" && r.outcome == Outcome::Denied)
            .count(),
        4
    );

    // Administering itself is fine (no new cryptographic right), and so is granting another
    // principal: a second identity the admin controls is beyond what a policy can see.
    let mut more = before.clone();
    more.statements[1].principals.push("batch".into());
    ops.op_put_policy("ops", &id, &more).unwrap();
    // A policy nobody could ever change again is refused (lockout check).
    let mut locked = more.clone();
    locked.statements[0].actions.retain(|a| a != "kms:PutKeyPolicy");
    assert!(matches!(ops.op_put_policy("ops", &id, &locked), Err(KmsError::InvalidRequest(m)) if m.contains("nobody")));

    // Self-grants happen only where the policy in force explicitly allows them; lint says so.
    assert!(env.kms("root").op_lint("root").unwrap().iter().all(|l| l.key_id != id));
    let carol_key = env.kms("carol").create_key(Some("alias/carol"), "").unwrap().key_id;
    let carol = env.kms("carol");
    let mut p = carol.op_get_policy("carol", &carol_key).unwrap();
    p.statements[0].principals = vec!["ops".into()];
    p.statements[0].actions.push("kms:GrantSelf".into());
    p.statements[1].principals = vec!["app".into()];
    carol.op_put_policy("carol", &carol_key, &p).unwrap();
    let lint = env.kms("root").op_lint("root").unwrap();
    let finding = &lint.iter().find(|l| l.key_id == carol_key).expect("lint flags the self-granting admin").findings[0];
    assert_eq!(finding.principal, "ops");
    assert!(finding.message.contains("can grant itself kms:Decrypt"), "{}", finding.message);
    let mut grant = p.clone();
    grant.statements[1].principals.push("ops".into());
    ops.op_put_policy("ops", &carol_key, &grant).unwrap();
    ops.op_generate_data_key("ops", &carol_key, &ctx("db"), None, true).unwrap();
}

/// Issue 14 (daemon listings): every principal used to see every key, alias, lint finding
/// and audit record. Now an operator sees everything; anyone else sees the keys its policy
/// lets it use or manage, the audit records of keys it holds kms:ReadAudit on (key-admins)
/// and of its own requests; verifying the whole trail is for operators.
#[test]
fn listings_show_a_principal_only_what_it_may_use() {
    let env = KmsEnv::new();
    let id = app_key_named(&env, "alias/app");
    let app = env.kms("app");
    app.op_generate_data_key("app", &id, &ctx("db"), None, true).unwrap();
    let eve_key = env.kms("eve").create_key(Some("alias/eve"), "").unwrap().key_id;
    let deleted = env.kms("ops").create_key(Some("alias/gone"), "").unwrap().key_id;
    env.kms("ops").op_schedule_deletion("ops", &deleted, Some(7)).unwrap();
    env.advance_days(8);
    let op =
        LocalKms::new(&env.ks).with_principal("op").with_clock(env.clock.clone()).with_operators(vec!["op".into()]);
    let as_ = |p: &str| env.kms(p).with_operators(vec!["op".into()]);

    let ids = |keys: Vec<sqlite_tde::kms::model::KeyInfo>| {
        let mut v: Vec<String> = keys.into_iter().map(|k| k.key_id).collect();
        v.sort();
        v
    };
    let all = ids(op.op_list_keys("op").unwrap());
    assert!(all.contains(&id) && all.contains(&eve_key) && all.contains(&deleted), "an operator sees every key");
    let tomb = op.op_list_keys("op").unwrap().into_iter().find(|k| k.key_id == deleted).unwrap();
    assert_eq!(
        tomb.state,
        KeyState::Deleted,
        "the deletion ran: its tombstone has no policy, which reads as open to all"
    );
    // eve: her own key and the service default key (everyone may use it); not app's, and no tombstone.
    let eve = ids(as_("eve").op_list_keys("eve").unwrap());
    assert!(eve.contains(&eve_key) && !eve.contains(&id) && !eve.contains(&deleted), "{eve:?}");
    let aliases: Vec<String> = as_("eve").op_list_aliases("eve").unwrap().into_iter().map(|a| a.alias).collect();
    assert!(aliases.contains(&"alias/eve".to_string()) && !aliases.contains(&"alias/app".to_string()), "{aliases:?}");
    assert!(as_("app").op_list_keys("app").unwrap().iter().any(|k| k.key_id == id));
    assert!(as_("ops").op_list_keys("ops").unwrap().iter().any(|k| k.key_id == id));

    // Audit: eve reads her own requests, nothing about app's key; asking for it is denied.
    let eve_audit = as_("eve").op_read_audit("eve", None, None).unwrap();
    assert!(!eve_audit.is_empty() && eve_audit.iter().all(|r| r.principal == "eve"), "{eve_audit:?}");
    assert!(
        matches!(as_("eve").op_read_audit("eve", Some("alias/app"), None), Err(KmsError::AccessDenied { action, .. }) if action == "kms:ReadAudit")
    );
    // The key-admin reads its key's trail, app's use included; the key-user does not.
    let ops_audit = as_("ops").op_read_audit("ops", Some(&id), None).unwrap();
    assert!(ops_audit.iter().any(|r| r.principal == "app" && r.operation == "GenerateDataKey"));
    assert!(matches!(as_("app").op_read_audit("app", Some(&id), None), Err(KmsError::AccessDenied { .. })));
    assert!(as_("app").op_read_audit("app", None, None).unwrap().iter().all(|r| r.principal == "app"));
    assert!(op.op_read_audit("op", None, None).unwrap().iter().any(|r| r.principal == "eve"));

    // Lint: eve, creator of a key with the default (both roles) policy, sees that finding
    // only; app's key has none; an operator sees all.
    let lint_keys =
        |k: &LocalKms, p: &str| -> Vec<String> { k.op_lint(p).unwrap().into_iter().map(|l| l.key_id).collect() };
    assert_eq!(lint_keys(&as_("eve"), "eve"), vec![eve_key.clone()]);
    assert!(lint_keys(&as_("app"), "app").is_empty());
    assert!(lint_keys(&op, "op").contains(&eve_key));

    // Verification of the whole trail: operators only, and the refusal is recorded.
    assert!(
        matches!(as_("eve").op_verify_audit("eve"), Err(KmsError::AccessDenied { action, .. }) if action == "kms:VerifyAudit")
    );
    assert!(op.op_verify_audit("op").unwrap().ok);
    assert!(op
        .op_read_audit("op", None, None)
        .unwrap()
        .iter()
        .any(|r| r.principal == "eve" && r.operation == "VerifyAudit" && r.outcome == Outcome::Denied));
}

// Review of issue 14 (outside attacker pass): lint's model of "can decrypt" missed
// kms:ReEncryptFrom and of "can destroy" kms:DeleteImportedKeyMaterial; a key-admin could move
// the application's alias to a key it may use; the move left no record on the key it left.

fn stmt(principals: &[&str], actions: &[&str]) -> Statement {
    Statement {
        sid: None,
        effect: Effect::Allow,
        principals: principals.iter().map(|s| s.to_string()).collect(),
        actions: actions.iter().map(|s| s.to_string()).collect(),
    }
}

fn app_key_named(env: &KmsEnv, alias: &str) -> String {
    env.kms("carol")
        .op_create_key(
            "carol",
            &CreateKeyParams {
                alias: Some(alias.into()),
                admins: vec!["ops".into()],
                users: vec!["app".into()],
                ..Default::default()
            },
        )
        .unwrap()
        .key_id
}

/// kms:ReEncryptFrom is a decryption right (re-encrypt to a key you hold, then decrypt
/// there): `auditor` reads app's data keys that way and may disable or destroy the key, and
/// lint must say so (it looked at kms:Decrypt only).
#[test]
fn lint_counts_reencrypt_from_as_decryption() {
    let env = KmsEnv::new();
    let id = app_key_named(&env, "alias/app");
    let ops = env.kms("ops");
    let mut p = ops.op_get_policy("ops", &id).unwrap();
    p.statements.push(stmt(&["auditor"], &["kms:ReEncryptFrom", "kms:DisableKey", "kms:ScheduleKeyDeletion"]));
    ops.op_put_policy("ops", &id, &p).unwrap();
    let app = env.kms("app");
    let dk = app.op_generate_data_key("app", &id, &ctx("db"), None, true).unwrap();

    // The exploit: auditor re-encrypts app's data key to its own key and decrypts it.
    let auditor = env.kms("auditor");
    let own = auditor.create_key(Some("alias/auditor"), "").unwrap().key_id;
    let moved = auditor.op_re_encrypt("auditor", &dk.ciphertext, &ctx("db"), Some(&own), None).unwrap();
    let plain = auditor.op_decrypt("auditor", &moved.ciphertext, &ctx("db"), None).unwrap().plaintext;
    assert_eq!(&plain[..], &dk.plaintext.as_ref().unwrap()[..], "auditor recovered app's data key");

    let lint = env.kms("op").with_operators(vec!["op".into()]).op_lint("op").unwrap();
    let flagged = lint.iter().any(|l| l.key_id == id && l.findings.iter().any(|f| f.principal == "auditor"));
    assert!(flagged, "lint does not flag auditor (kms:ReEncryptFrom + DisableKey/ScheduleKeyDeletion): {lint:?}");
}

/// A key-admin used to make itself a user of the application's *future* data keys by moving
/// the application's alias to a key it owns (UpdateAlias needs the right on both keys; it
/// holds it on both): refused now, by the self-grant rule of PutKeyPolicy.
#[test]
fn a_key_admin_cannot_move_the_applications_alias_to_a_key_it_may_use() {
    let env = KmsEnv::new();
    let id = app_key_named(&env, "alias/app");
    let ops = env.kms("ops");
    let own = ops
        .op_create_key(
            "ops",
            &CreateKeyParams {
                alias: Some("alias/ops-own".into()),
                admins: vec!["ops".into()],
                users: vec!["ops".into(), "app".into()],
                ..Default::default()
            },
        )
        .unwrap()
        .key_id;
    match ops.op_alias("ops", "UpdateAlias", "alias/app", Some(&own)) {
        Err(KmsError::AccessDenied { action, .. }) => assert!(action.starts_with("kms:GrantSelf"), "{action}"),
        other => panic!("key-admin ops moved alias/app from {id} to its own key {own}: {other:?}"),
    }
    // The alias still names the application's key, and app's next data key is not ops's.
    let app = env.kms("app");
    let dk = app.op_generate_data_key("app", "alias/app", &ctx("newdb"), None, true).unwrap();
    assert!(ops.op_decrypt("ops", &dk.ciphertext, &ctx("newdb"), None).is_err());
    // Between keys where it gains nothing the admin still moves aliases.
    let other = app_key_named(&env, "alias/other");
    ops.op_alias("ops", "UpdateAlias", "alias/app", Some(&other)).unwrap();
}

/// The UpdateAlias record used to name only the new target, so the trail of the key the alias
/// left (what its admins read with kms:ReadAudit) never showed the move.
#[test]
fn an_alias_move_is_recorded_on_the_key_it_leaves() {
    let env = KmsEnv::new();
    let id = app_key_named(&env, "alias/app");
    let ops = env.kms("ops");
    let other = app_key_named(&env, "alias/other");
    ops.op_alias("ops", "UpdateAlias", "alias/app", Some(&other)).unwrap();
    let trail = env.kms("op").with_operators(vec!["op".into()]).op_read_audit("op", Some(&id), None).unwrap();
    assert!(
        trail.iter().any(|r| r.operation.starts_with("UpdateAlias")),
        "alias/app left {id} but {id}'s audit trail has no UpdateAlias record: {:?}",
        trail.iter().map(|r| &r.operation).collect::<Vec<_>>()
    );
}

/// Policy level: kms:ReEncryptFrom decrypts (see above) and kms:DeleteImportedKeyMaterial
/// destroys a BYOK key at once; lint used to look at kms:Decrypt and DisableKey /
/// ScheduleKeyDeletion only.
#[test]
fn lint_counts_every_way_to_decrypt_or_destroy() {
    let base = || KeyPolicy::with_roles(&["ops".into()], &[]);
    let mut reenc = base();
    reenc.statements.push(stmt(&["app"], &["kms:ReEncryptFrom", "kms:DisableKey"]));
    let mut byok = base();
    byok.statements.push(stmt(&["app"], &["kms:Decrypt", "kms:DeleteImportedKeyMaterial"]));
    let missed: Vec<&str> = [("ReEncryptFrom+DisableKey", &reenc), ("Decrypt+DeleteImportedKeyMaterial", &byok)]
        .into_iter()
        .filter(|(_, p)| !p.lint().iter().any(|f| f.principal == "app"))
        .map(|(n, _)| n)
        .collect();
    assert!(missed.is_empty(), "lint does not flag app holding {missed:?}");
}

//! The HSM protection level against SoftHSM2: key versions are generated inside a PKCS#11
//! token as sensitive, non-extractable AES-256 keys, every wrap/unwrap runs in the token, and
//! the VFS works on top. The token lives in a temporary directory (SOFTHSM2_CONF).
//! Without SoftHSM2 the test is skipped, unless SQLITE_TDE_CI=1.

mod kms_support;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use kms_support::*;
use sqlite_tde::kms::api::CreateKeyParams;
use sqlite_tde::kms::hsm::{self, DEFAULT_MODULE};
use sqlite_tde::kms::model::{KeyState, Protection};
use sqlite_tde::kms::{EncryptionContext, KmsError};

const TOKEN: &str = "sqlite-tde-test";
const PIN: &str = "5678-user";

fn init_token(dir: &std::path::Path) {
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!("directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n", tokens.display()),
    )
    .unwrap();
    // Set before the PKCS#11 module is first loaded in this process (it reads it at C_Initialize).
    std::env::set_var("SOFTHSM2_CONF", &conf);
    let st = std::process::Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", TOKEN, "--so-pin", "1234-so", "--pin", PIN])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .unwrap();
    assert!(st.status.success(), "softhsm2-util: {}", String::from_utf8_lossy(&st.stderr));
}

#[test]
fn hsm_keys_are_never_extractable_and_still_serve_the_vfs() {
    if !softhsm_available() {
        return;
    }
    let env = KmsEnv::new();
    init_token(env.dir.path());
    std::env::set_var(hsm::ENV_HSM_MODULE, DEFAULT_MODULE);
    std::env::set_var(hsm::ENV_HSM_TOKEN, TOKEN);
    std::env::set_var(hsm::ENV_HSM_PIN, PIN);

    let kms = env.kms("ops");
    let info = kms
        .op_create_key(
            "ops",
            &CreateKeyParams { alias: Some("alias/hsm".into()), protection: Protection::Hsm, ..Default::default() },
        )
        .unwrap();
    let id = info.key_id.clone();
    assert_eq!(info.protection, Protection::Hsm);

    // The keystore holds no material for it: only the token object's label.
    let ks = kms.read_keystore().unwrap().unwrap();
    let rec = &ks.keys[&id];
    assert!(rec.versions[0].material.is_none());
    assert_eq!(rec.versions[0].hsm_label.as_deref(), Some(hsm::label_of(&id, 1).as_str()));
    assert_eq!(rec.hsm.as_ref().unwrap().token_label, TOKEN);

    // Cryptographic operations run in the token; the blob layout is the usual one.
    let ctx = EncryptionContext::from_pairs([("sqlite-tde:db".to_string(), "h".to_string())]);
    let g = kms.op_generate_data_key("ops", &id, &ctx, None, true).unwrap();
    assert_eq!(
        &kms.op_decrypt("ops", &g.ciphertext, &ctx, None).unwrap().plaintext[..],
        &g.plaintext.as_ref().unwrap()[..]
    );
    let other = EncryptionContext::from_pairs([("sqlite-tde:db".to_string(), "x".to_string())]);
    let r = kms.op_decrypt("ops", &g.ciphertext, &other, None);
    assert!(matches!(r, Err(KmsError::InvalidCiphertext { .. })), "{r:?}");

    // The module comes from configuration only: with another module configured, the
    // record's module is refused, not loaded (even with a session already open to it).
    std::env::set_var(hsm::ENV_HSM_MODULE, "/nonexistent/libother-pkcs11.so");
    let r = kms.op_decrypt("ops", &g.ciphertext, &ctx, None);
    assert!(
        matches!(&r, Err(KmsError::Unavailable(m)) if m.contains("taken from configuration only")),
        "the keystore record chose the PKCS#11 module: {r:?}"
    );
    std::env::set_var(hsm::ENV_HSM_MODULE, DEFAULT_MODULE);

    // A wrong PIN is tried once, then not again for a while; a different PIN at once.
    hsm::logout_all();
    std::env::set_var(hsm::ENV_HSM_PIN, "0000-wrong");
    let first = kms.op_decrypt("ops", &g.ciphertext, &ctx, None);
    assert!(matches!(&first, Err(KmsError::Unavailable(m)) if m.contains("login failed")), "{first:?}");
    let second = kms.op_decrypt("ops", &g.ciphertext, &ctx, None);
    assert!(
        matches!(&second, Err(KmsError::Unavailable(m)) if m.contains("not tried again")),
        "a refused PIN was sent to the token again at once: {second:?}"
    );
    std::env::set_var(hsm::ENV_HSM_PIN, PIN);
    kms.op_decrypt("ops", &g.ciphertext, &ctx, None).expect("the right PIN is tried at once");

    // The VFS on top: create, write, read; rotation in the token keeps old databases.
    let tde = env.tde("ops");
    let db = env.path("hsm.db");
    create_db(&tde, &db, "alias/hsm");
    assert_eq!(read_db(&tde, &db).unwrap(), "hello");
    assert_eq!(kms.op_rotate("ops", "alias/hsm").unwrap().primary_version, 2);
    let db2 = env.path("hsm2.db");
    create_db(&tde, &db2, "alias/hsm");
    assert_eq!(header_version(&db2).1, 2);
    assert_eq!(read_db(&env.tde("ops"), &db).unwrap(), "hello");
    assert_eq!(read_db(&env.tde("ops"), &db2).unwrap(), "hello");
    kms.op_disable("ops", &id).unwrap();
    assert!(matches!(kms_error(read_db(&tde, &db).unwrap_err()), KmsError::Disabled(_)));
    kms.op_enable("ops", &id).unwrap();

    // Inspect the token directly: the objects are sensitive and not extractable, and
    // CKA_VALUE cannot be read.
    let p = Pkcs11::new(DEFAULT_MODULE).unwrap();
    match p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => panic!("{e}"),
    }
    let slot = p
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| p.get_token_info(*s).unwrap().label().trim_end() == TOKEN)
        .unwrap();
    let session = p.open_ro_session(slot).unwrap();
    match session.login(UserType::User, Some(&AuthPin::new(PIN.into()))) {
        Ok(()) | Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => panic!("{e}"),
    }
    for v in [1, 2] {
        let label = hsm::label_of(&id, v);
        let objs = session
            .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY), Attribute::Label(label.as_bytes().to_vec())])
            .unwrap();
        assert_eq!(objs.len(), 1, "{label}");
        let attrs = session
            .get_attributes(objs[0], &[AttributeType::Sensitive, AttributeType::Extractable, AttributeType::ValueLen])
            .unwrap();
        assert!(attrs.contains(&Attribute::Sensitive(true)), "{attrs:?}");
        assert!(attrs.contains(&Attribute::Extractable(false)), "{attrs:?}");
        let value = session.get_attributes(objs[0], &[AttributeType::Value]);
        assert!(
            !matches!(&value, Ok(a) if a.iter().any(|x| matches!(x, Attribute::Value(_)))),
            "CKA_VALUE of {label} was readable: {value:?}"
        );
        let info = session.get_attribute_info(objs[0], &[AttributeType::Value]).unwrap();
        assert!(matches!(info[0], cryptoki::object::AttributeInfo::Sensitive), "{info:?}");
    }

    // Deletion destroys the token objects.
    kms.op_schedule_deletion("ops", &id, Some(7)).unwrap();
    env.advance_days(7);

    // A process without the PIN runs the due deletion first: the token object cannot be
    // destroyed, so the key stays pending deletion (labels kept), the failure is reported by
    // `rotate-due`'s exit code, `describe` and the audit log, and the deletion is retried.
    let now = (kms_support::T0 + 7 * 86_400).to_string();
    let no_pin = || {
        let mut c = cli(&env.ks);
        c.env_remove(hsm::ENV_HSM_PIN).env_remove(hsm::ENV_HSM_PIN_FILE).env("SQLITE_TDE_TEST_NOW", &now);
        c.args(["--principal", "ops"]);
        c
    };
    let out = no_pin().args(["kms", "rotate-due"]).output().unwrap();
    assert!(!out.status.success(), "rotate-due without the PIN succeeded: {out:?}");
    let rec = &kms.read_keystore().unwrap().unwrap().keys[&id];
    assert_eq!(rec.state, KeyState::PendingDeletion);
    assert!(rec.versions.iter().all(|v| v.hsm_label.is_some()), "labels dropped: {rec:?}");
    let d = kms.describe_key(&id).unwrap();
    assert_eq!(d.state, KeyState::PendingDeletion);
    assert!(d.deletion_error.as_deref().is_some_and(|e| e.contains("not destroyed")), "{d:?}");
    let failed = kms.op_read_audit("ops", Some(&id), None).unwrap();
    assert!(
        failed.iter().any(|r| r.operation == "DeleteKey:scheduled"
            && r.outcome == sqlite_tde::kms::audit::Outcome::Failed
            && r.error.as_deref().is_some_and(|e| e.contains("not destroyed"))),
        "no failed deletion audited: {failed:?}"
    );
    // This process has the PIN: the explicit run retries and destroys the objects.
    let r = kms.op_rotate_due("ops").unwrap();
    assert_eq!(r.deleted, vec![id.clone()]);
    assert!(matches!(kms_error(read_db(&env.tde("ops"), &db).unwrap_err()), KmsError::Deleted(_)));
    assert_eq!(kms.describe_key(&id).unwrap().state, KeyState::Deleted);
    let left = session
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(hsm::label_of(&id, 1).as_bytes().to_vec()),
        ])
        .unwrap();
    assert!(left.is_empty(), "the token object survived key deletion");
}

//! The KMS audit log (every request recorded, hash chain and MACs detect each kind of
//! tampering, fail closed) and the keystore's crash safety (kill -9 during mutating
//! operations loses no acknowledged key, version or state).

#[path = "common/child.rs"]
mod child;
mod kms_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use kms_support::*;
use sqlite_tde::kms::api::CreateKeyParams;
use sqlite_tde::kms::audit::{AuditLog, AuditRecord, Outcome, RecordKind};
use sqlite_tde::kms::local::LocalKms;
use sqlite_tde::kms::model::{KeyState, Origin};
use sqlite_tde::kms::{EncryptionContext, KmsError};

fn ctx(v: &str) -> EncryptionContext {
    EncryptionContext::from_pairs([("sqlite-tde:db".to_string(), v.to_string())])
}

fn setup() -> (KmsEnv, String) {
    let env = KmsEnv::new();
    let id = env
        .kms("carol")
        .op_create_key(
            "carol",
            &CreateKeyParams {
                alias: Some("alias/audited".into()),
                admins: vec!["alice".into()],
                users: vec!["bob".into()],
                ..Default::default()
            },
        )
        .unwrap()
        .key_id;
    (env, id)
}

#[test]
fn every_request_allowed_or_denied_is_recorded_without_secrets() {
    let (env, id) = setup();
    let bob = env.kms("bob");
    let alice = env.kms("alice");
    let g = bob.op_generate_data_key("bob", &id, &ctx("customer-db-7f3a"), None, true).unwrap();
    let dek = g.plaintext.clone().unwrap();
    bob.op_decrypt("bob", &g.ciphertext, &ctx("customer-db-7f3a"), None).unwrap();
    assert!(alice.op_decrypt("alice", &g.ciphertext, &ctx("customer-db-7f3a"), None).is_err());
    assert!(bob.op_decrypt("bob", &g.ciphertext, &ctx("wrong"), None).is_err());
    alice.op_disable("alice", &id).unwrap();

    let recs = AuditLog::new(&env.ks).read().unwrap();
    let find = |op: &str, who: &str, outcome: Outcome| -> &AuditRecord {
        recs.iter()
            .find(|r| r.operation == op && r.principal == who && r.outcome == outcome)
            .unwrap_or_else(|| panic!("no {op} by {who} ({outcome:?}) in {recs:#?}"))
    };
    let c = find("CreateKey", "carol", Outcome::Allowed);
    assert_eq!((c.key_id.as_deref(), c.key_version), (Some(id.as_str()), Some(1)));
    let gen = find("GenerateDataKey", "bob", Outcome::Allowed);
    assert_eq!(gen.key_id.as_deref(), Some(id.as_str()));
    assert_eq!(gen.key_version, Some(1));
    assert_eq!(gen.context_sha256.as_deref(), Some(hex::encode(ctx("customer-db-7f3a").digest()).as_str()));
    let denied = find("Decrypt", "alice", Outcome::Denied);
    assert!(denied.error.as_deref().unwrap().contains("kms:Decrypt"));
    let failed = find("Decrypt", "bob", Outcome::Failed);
    assert_eq!(failed.context_sha256.as_deref(), Some(hex::encode(ctx("wrong").digest()).as_str()));
    find("DisableKey", "alice", Outcome::Allowed);
    let ids: BTreeSet<&str> = recs.iter().map(|r| r.request_id.as_str()).collect();
    assert_eq!(ids.len(), recs.len(), "request ids are unique");
    assert!(recs.windows(2).all(|w| w[1].seq == w[0].seq + 1 && w[1].prev == w[0].digest));

    // Never plaintext, never key material, never context values.
    let log = std::fs::read(env.ks.join("audit.log")).unwrap();
    let text = String::from_utf8_lossy(&log);
    assert!(!text.contains("customer-db-7f3a"));
    assert!(!text.contains(&hex::encode(&dek[..])) && !log.windows(16).any(|w| w == &dek[..16]));
    use base64::Engine;
    assert!(!text.contains(&base64::engine::general_purpose::STANDARD.encode(&dek[..])));

    let report = env.kms("auditor").with_operators(auditors()).op_verify_audit("auditor").unwrap();
    assert!(report.ok && report.authenticated, "{report:?}");
    // Reading the log is itself recorded; filters work.
    let only = env
        .kms("auditor")
        .with_operators(auditors())
        .op_read_audit("auditor", Some("alias/audited"), Some(T0))
        .unwrap();
    assert!(only.iter().all(|r| r.key_id.as_deref() == Some(id.as_str())));
    assert!(AuditLog::new(&env.ks)
        .read()
        .unwrap()
        .iter()
        .any(|r| r.operation == "ReadAudit" && r.principal == "auditor"));
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap().lines().map(str::to_string).collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut s = lines.join("\n");
    s.push('\n');
    std::fs::write(path, s).unwrap();
}

/// The principal these tests verify and read the whole trail as: a keystore operator (only
/// operators may; see `listings_show_a_principal_only_what_it_may_use`).
fn auditors() -> Vec<String> {
    vec!["auditor".into()]
}

fn verify(kms: &LocalKms) -> Vec<String> {
    let r = kms.audit_log().verify(None, None).unwrap();
    let mut problems = r.problems;
    // And with MACs, through the service.
    let full = kms.op_verify_audit("auditor");
    if let Ok(f) = full {
        problems.extend(f.problems.into_iter().map(|p| format!("(mac) {p}")));
    }
    problems
}

#[test]
fn audit_chain_detects_editing_forging_deleting_reordering_and_truncation() {
    let (env, id) = setup();
    let bob = env.kms("bob");
    for i in 0..6 {
        bob.op_encrypt("bob", &id, format!("msg {i}").as_bytes(), &ctx("t")).unwrap();
    }
    let path = env.ks.join("audit.log");
    let original = lines(&path);
    let original_keystore = std::fs::read(env.ks.join("keystore.json")).unwrap();
    // Verification on a copy, so the verify requests' own records do not disturb the cases.
    let check = |mutate: &dyn Fn(&mut Vec<String>), want: &str| {
        let scratch = tempfile::tempdir().unwrap();
        let ks = scratch.path().join("ks");
        copy_dir(&env.ks, &ks);
        let mut l = original.clone();
        mutate(&mut l);
        write_lines(&ks.join("audit.log"), &l);
        let kms = LocalKms::new(&ks).with_principal("auditor").with_operators(auditors());
        let problems = kms.audit_log().verify(None, None).unwrap().problems;
        let with_mac = kms.op_verify_audit("auditor").unwrap();
        assert!(!with_mac.ok, "{want}: tampering not detected");
        assert!(
            problems.iter().chain(with_mac.problems.iter()).any(|p| p.contains(want)),
            "{want}: {problems:?} / {:?}",
            with_mac.problems
        );
    };
    assert!(verify(&LocalKms::new(&env.ks).with_principal("auditor").with_operators(auditors())).is_empty());

    // Editing a field.
    check(
        &|l| *l.get_mut(3).unwrap() = l[3].replace("\"principal\":\"bob\"", "\"principal\":\"eve\""),
        "record edited",
    );
    // Editing and recomputing the digest and the rest of the chain: only the MAC catches it.
    check(
        &|l| {
            let mut recs: Vec<AuditRecord> = l.iter().map(|x| serde_json::from_str(x).unwrap()).collect();
            recs[3].principal = "eve".into();
            for i in 3..recs.len() {
                if i > 3 {
                    recs[i].prev = recs[i - 1].digest.clone();
                }
                recs[i].digest = recs[i].content_digest();
            }
            *l = recs.iter().map(|r| serde_json::to_string(r).unwrap()).collect();
        },
        "MAC does not verify",
    );
    // Deleting a record in the middle.
    check(
        &|l| {
            l.remove(4);
        },
        "chain broken",
    );
    // Reordering two records.
    check(&|l| l.swap(2, 3), "sequence number");
    // Cutting records from the end (keystore.json remembers the last one).
    check(
        &|l| {
            l.pop();
            l.pop();
        },
        "record(s) missing",
    );
    // A field the digest does not cover.
    check(
        &|l| *l.get_mut(2).unwrap() = l[2].replacen("{\"v\":2,", "{\"v\":2,\"note\":\"hi\",", 1),
        "line 3: not a valid",
    );
    // Moving the head back inside keystore.json (to hide the cut) breaks keystore.json's MAC.
    {
        let scratch = tempfile::tempdir().unwrap();
        let ks = scratch.path().join("ks");
        copy_dir(&env.ks, &ks);
        let text = String::from_utf8(original_keystore.clone()).unwrap();
        let at = text.find("\naudit: ").unwrap();
        let seq_at = at + text[at..].find("\"seq\":").unwrap() + 6;
        let end = seq_at + text[seq_at..].find(',').unwrap();
        let edited = format!("{}2{}", &text[..seq_at], &text[end..]);
        std::fs::write(ks.join("keystore.json"), edited).unwrap();
        write_lines(&ks.join("audit.log"), &original[..2]);
        let e = LocalKms::new(&ks).with_operators(auditors()).op_verify_audit("auditor").unwrap_err().to_string();
        assert!(e.contains("MAC does not verify"), "{e}");
    }
    // The untouched original still verifies.
    assert!(lines(&path).starts_with(&original));
    assert!(verify(&LocalKms::new(&env.ks).with_principal("auditor").with_operators(auditors())).is_empty());
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn requests_fail_closed_when_their_audit_record_cannot_be_written() {
    let (env, id) = setup();
    let tde = env.tde("bob");
    let db = env.path("closed.db");
    create_db(&tde, &db, &id);
    let bob = env.kms("bob");
    let alice = env.kms("alice");
    let log = env.ks.join("audit.log");
    let saved = std::fs::read(&log).unwrap();
    std::fs::remove_file(&log).unwrap();
    std::fs::create_dir(&log).unwrap();

    assert!(matches!(bob.op_generate_data_key("bob", &id, &ctx("x"), None, true), Err(KmsError::Audit(_))));
    assert!(matches!(bob.op_encrypt("bob", &id, b"x", &ctx("x")), Err(KmsError::Audit(_))));
    assert!(matches!(alice.op_disable("alice", &id), Err(KmsError::Audit(_))));
    assert!(matches!(alice.op_rotate("alice", &id), Err(KmsError::Audit(_))));
    let info = alice.read_keystore().unwrap().unwrap();
    assert_eq!(info.keys[&id].state, KeyState::Enabled, "a mutation without an audit record must not happen");
    assert_eq!(info.keys[&id].versions.len(), 1);
    // The VFS cannot unwrap a database key without a record either (fresh registration: no cache).
    assert!(matches!(kms_error(read_db(&env.tde("bob"), &db).unwrap_err()), KmsError::Audit(_)));

    std::fs::remove_dir(&log).unwrap();
    std::fs::write(&log, saved).unwrap();
    assert_eq!(read_db(&env.tde("bob"), &db).unwrap(), "hello");
}

// ----- a log that does not match keystore.json's head closes the KMS -----

/// The error of a request refused because the audit trail is broken.
fn closed<T: std::fmt::Debug>(r: Result<T, KmsError>) -> String {
    match r {
        Err(KmsError::AuditIntegrity(m)) => {
            assert!(m.contains("sqlite-tde kms audit --acknowledge-gap"), "no recovery command in: {m}");
            m
        }
        other => panic!("expected the KMS to be closed (AuditIntegrity), got {other:?}"),
    }
}

/// Every kind of request is refused, and refusing changes nothing on disk.
fn assert_closed(env: &KmsEnv, id: &str, blob: &[u8], want: &str) {
    let before = dir_files(&env.ks);
    let e = closed(env.kms("bob").op_generate_data_key("bob", id, &ctx("x"), None, true));
    assert!(e.contains(want), "{want}: {e}");
    closed(env.kms("bob").op_decrypt("bob", blob, &ctx("c"), None));
    closed(env.kms("alice").op_disable("alice", id));
    closed(env.kms("alice").op_rotate("alice", id));
    closed(env.kms("carol").op_list_keys("carol"));
    // A key denied anyway still reports the broken trail first.
    closed(env.kms("mallory").op_decrypt("mallory", blob, &ctx("c"), None));
    assert!(matches!(
        kms_error(read_db(&env.tde("bob"), &env.path("closed.db")).unwrap_err()),
        KmsError::AuditIntegrity(_)
    ));
    assert_eq!(dir_files(&env.ks), before, "a refused request changed the keystore directory");
    assert_eq!(env.kms("alice").read_keystore().unwrap().unwrap().keys[id].state, KeyState::Enabled);
}

/// A keystore with a key, a database and some traffic; returns a blob bob can decrypt.
fn busy() -> (KmsEnv, String, Vec<u8>) {
    let (env, id) = setup();
    create_db(&env.tde("bob"), &env.path("closed.db"), &id);
    let bob = env.kms("bob");
    let blob = bob.op_encrypt("bob", &id, b"payload", &ctx("c")).unwrap().ciphertext;
    for i in 0..4 {
        bob.op_encrypt("bob", &id, format!("msg {i}").as_bytes(), &ctx("t")).unwrap();
    }
    (env, id, blob)
}

#[test]
fn cut_log_tail_closes_the_kms_until_a_gap_is_acknowledged_and_verify_keeps_reporting_it() {
    let (env, id, blob) = busy();
    let log = env.ks.join("audit.log");
    let mut l = lines(&log);
    let n = l.len();
    l.truncate(n - 3);
    write_lines(&log, &l);

    assert_closed(&env, &id, &blob, "3 record(s) missing");
    let r = env.kms("auditor").with_operators(auditors()).op_verify_audit("auditor").unwrap();
    assert!(!r.ok && r.problems.iter().any(|p| p.contains("3 record(s) missing")), "{r:?}");

    let ack = env.kms("admin").acknowledge_audit_gap("admin").unwrap();
    assert_eq!(ack.kind, Some(RecordKind::GapAcknowledged));
    assert!(ack.detail.as_deref().unwrap().contains("3 record(s) missing"), "{ack:?}");
    assert_eq!(ack.seq, n as u64 + 1, "the gap keeps the missing sequence numbers");
    // Requests work again.
    let bob = env.kms("bob");
    assert_eq!(&bob.op_decrypt("bob", &blob, &ctx("c"), None).unwrap().plaintext[..], b"payload");
    assert_eq!(read_db(&env.tde("bob"), &env.path("closed.db")).unwrap(), "hello");
    env.kms("alice").op_disable("alice", &id).unwrap();
    // The gap is in the chain for good.
    let r = env.kms("auditor").with_operators(auditors()).op_verify_audit("auditor").unwrap();
    assert!(r.ok, "{r:?}");
    assert!(r.gaps.len() == 1 && r.gaps[0].contains("3 record(s) missing") && r.gaps[0].contains("admin"), "{r:?}");
    assert!(matches!(env.kms("admin").acknowledge_audit_gap("admin"), Err(KmsError::InvalidRequest(_))));
}

#[test]
fn deleted_log_closes_the_kms() {
    let (env, id, blob) = busy();
    std::fs::remove_file(env.ks.join("audit.log")).unwrap();
    assert_closed(&env, &id, &blob, "audit.log is missing");
    // From the command line: refused with the problem and the way out, then acknowledged.
    let o = cli(&env.ks).args(["kms", "list"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("audit.log is missing") && err.contains("--acknowledge-gap"), "{err}");
    let o = cli(&env.ks).args(["kms", "audit", "--verify"]).output().unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", String::from_utf8_lossy(&o.stdout));
    let o = cli(&env.ks).args(["kms", "audit", "--acknowledge-gap"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(cli(&env.ks).args(["kms", "list"]).output().unwrap().status.success());
    let o = cli(&env.ks).args(["kms", "audit", "--verify"]).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && out.contains("acknowledged gap") && out.contains("audit.log is missing"), "{out}");
}

#[test]
fn an_older_log_put_back_is_refused() {
    let (env, id, blob) = busy();
    let log = env.ks.join("audit.log");
    let old = std::fs::read(&log).unwrap();
    for _ in 0..2 {
        env.kms("bob").op_decrypt("bob", &blob, &ctx("c"), None).unwrap();
    }
    // An older, complete and authentic log (as a backup or an earlier copy holds it).
    std::fs::write(&log, &old).unwrap();
    assert_closed(&env, &id, &blob, "2 record(s) missing");
}

#[test]
fn keystore_json_put_back_is_refused() {
    let (env, id, blob) = busy();
    let saved = std::fs::read(env.ks.join("keystore.json")).unwrap();
    env.kms("alice").op_disable("alice", &id).unwrap();
    // The older keystore.json (key enabled) is authentic, but the log has moved on.
    std::fs::write(env.ks.join("keystore.json"), &saved).unwrap();
    assert_closed(&env, &id, &blob, "went backwards");
}

#[test]
fn a_record_with_a_field_the_mac_does_not_cover_is_rejected() {
    let (env, id, blob) = busy();
    let log = env.ks.join("audit.log");
    let mut l = lines(&log);
    let last = l.len() - 1;
    let forged = l[1].replacen("\"outcome\"", "\"approved_by\":\"security\",\"outcome\"", 1);
    assert_ne!(forged, l[1]);
    l[1] = forged;
    write_lines(&log, &l);
    let r = env.kms("auditor").with_operators(auditors()).op_verify_audit("auditor").unwrap();
    assert!(!r.ok && r.problems.iter().any(|p| p.starts_with("line 2:")), "{r:?}");
    // On the newest record it closes the KMS at once.
    l[last] = l[last].replacen("\"outcome\"", "\"approved_by\":\"security\",\"outcome\"", 1);
    write_lines(&log, &l);
    assert_closed(&env, &id, &blob, "the last record of audit.log is not valid");
}

/// A process killed between replacing keystore.json (the commit) and appending the records
/// to audit.log: the log lags by exactly those records, which the next request appends.
#[test]
fn crash_between_the_keystore_commit_and_the_log_append_is_rolled_forward() {
    let env = KmsEnv::new();
    let ok = |c: &mut assert_cmd::Command| {
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    ok(cli(&env.ks).args(["kms", "create-key", "--alias", "first"]));
    let log = env.ks.join("audit.log");
    for (i, args) in
        [&["kms", "create-key", "--alias", "crashed"][..], &["kms", "describe", "alias/first"][..]].iter().enumerate()
    {
        let before = lines(&log).len();
        let o = cli(&env.ks).env("SQLITE_TDE_TEST_CRASH_AT", "kms:committed").args(*args).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains("test crash injection: kms:committed"), "{args:?}: {err}");
        assert_eq!(lines(&log).len(), before, "{args:?}: the crash must hit between the commit and the append");
        if i == 0 {
            let data = LocalKms::new(&env.ks).read_keystore().unwrap().unwrap();
            assert!(data.aliases.contains_key("alias/crashed"), "the committed key is there");
        }
        // The next request works, and the log has the record the crash kept out.
        ok(cli(&env.ks).args(["kms", "list"]));
        let recs = AuditLog::new(&env.ks).read().unwrap();
        let want = if i == 0 { "CreateKey" } else { "DescribeKey" };
        assert_eq!(recs[before].operation, want, "{recs:#?}");
        assert_eq!(recs[before + 1].operation, "ListKeys");
        assert!(ok(cli(&env.ks).args(["kms", "audit", "--verify"])).contains("audit log OK"));
    }
}

// ----- kill -9 during mutating operations -----

const ROLE_KS: &str = "SQLITE_TDE_TEST_KMS_KS";
const ROLE_DB: &str = "SQLITE_TDE_TEST_KMS_DB";

/// Child process: mutate the keystore forever, acknowledging each completed operation.
#[test]
fn kms_child_entry() {
    let Ok(role) = std::env::var(child::ROLE_VAR) else { return };
    assert_eq!(role, "kms-mutator");
    let ks = PathBuf::from(std::env::var_os(ROLE_KS).unwrap());
    let dbdir = PathBuf::from(std::env::var_os(ROLE_DB).unwrap());
    let kms = LocalKms::new(&ks).with_principal("ops");
    let tde = sqlite_tde::Tde::builder()
        .vfs_name("tde-kms-crash")
        .register_with_kms(std::sync::Arc::new(LocalKms::new(&ks).with_principal("ops")))
        .unwrap();
    let seed = std::process::id() as usize;
    // The first child finds no keystore: listing does not create one, its first create-key does.
    let listed = match kms.list_keys() {
        Err(KmsError::NoKeystore { .. }) => Vec::new(),
        other => other.unwrap(),
    };
    let live: Vec<_> = listed.into_iter().filter(|k| k.state != KeyState::Deleted).collect();
    let mut keys: Vec<String> =
        live.iter().filter(|k| k.origin == Origin::Internal).map(|k| k.key_id.clone()).collect();
    let mut byok: Vec<String> =
        live.iter().filter(|k| k.origin == Origin::External).map(|k| k.key_id.clone()).collect();
    for i in seed.. {
        if keys.is_empty() || i % 9 == 0 {
            if i % 2 == 0 || keys.is_empty() {
                let k = kms.create_key(Some(&format!("alias/crash-{seed}-{i}")), "crash test").unwrap();
                println!("ack create {}", k.key_id);
                keys.push(k.key_id);
            } else {
                // BYOK: create without material, then import (deterministic material).
                let p = CreateKeyParams { origin: Origin::External, ..Default::default() };
                let id = kms.op_create_key("ops", &p).unwrap().key_id;
                println!("ack create {id}");
                import(&kms, &id);
                println!("ack import {id}");
                byok.push(id);
            }
            continue;
        }
        let id = keys[i % keys.len()].clone();
        match i % 9 {
            1 | 5 => {
                let v = kms.op_rotate("ops", &id).unwrap().primary_version;
                println!("ack rotate {id} {v}");
            }
            2 => {
                kms.op_disable("ops", &id).unwrap();
                println!("ack state {id} disabled");
                kms.op_enable("ops", &id).unwrap();
                println!("ack state {id} enabled");
            }
            3 if !byok.is_empty() && i % 2 == 0 => {
                let b = byok[i % byok.len()].clone();
                kms.op_delete_imported("ops", &b).unwrap();
                println!("ack state {b} pending_import");
                import(&kms, &b);
                println!("ack import {b}");
            }
            3 => {
                let p = kms.op_get_policy("ops", &id).unwrap();
                kms.op_put_policy("ops", &id, &p).unwrap();
                println!("ack policy {id}");
            }
            4 => {
                kms.op_schedule_deletion("ops", &id, Some(7)).unwrap();
                println!("ack state {id} pending_deletion");
                kms.op_cancel_deletion("ops", &id).unwrap();
                println!("ack state {id} disabled");
                kms.op_enable("ops", &id).unwrap();
                println!("ack state {id} enabled");
            }
            6 => {
                let id = if !byok.is_empty() && i % 2 == 0 { byok[i % byok.len()].clone() } else { id };
                let g = kms.op_generate_data_key("ops", &id, &ctx(&format!("c{seed}-{i}")), None, true).unwrap();
                println!("ack blob c{seed}-{i} {}", hex::encode(&g.ciphertext));
            }
            7 => {
                let a = format!("alias/crash-moving-{}", i % 3);
                let r = kms.op_alias("ops", "UpdateAlias", &a, Some(&id));
                if r.is_err() {
                    kms.op_alias("ops", "CreateAlias", &a, Some(&id)).unwrap();
                }
                println!("ack alias {a} {id}");
            }
            _ => {
                let db = dbdir.join(format!("db-{seed}-{i}.sqlite"));
                create_db(&tde, &db, &id);
                println!("ack db {}", db.display());
            }
        }
    }
}

/// The material of a BYOK key in this test: derived from its id, so any process can import
/// it again.
fn material_of(id: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(id.as_bytes()).into()
}

fn import(kms: &LocalKms, id: &str) {
    let p = kms.op_get_import_parameters("ops", id).unwrap();
    let wrapped = sqlite_tde::kms::local::import::wrap_for_import(&p.public_key, &material_of(id)).unwrap();
    kms.op_import("ops", id, &p.import_token, &wrapped, None).unwrap();
}

#[derive(Default)]
struct Acked {
    created: BTreeSet<String>,
    versions: BTreeMap<String, u32>,
    states: BTreeMap<String, String>,
    blobs: Vec<(String, Vec<u8>)>,
    aliases: BTreeMap<String, String>,
    dbs: Vec<PathBuf>,
    imported: BTreeSet<String>,
}

impl Acked {
    fn take(&mut self, line: &str) {
        let parts: Vec<&str> = line.split_whitespace().collect();
        match parts.as_slice() {
            ["ack", "create", id] => {
                self.created.insert(id.to_string());
            }
            ["ack", "rotate", id, v] => {
                self.versions.insert(id.to_string(), v.parse().unwrap());
            }
            ["ack", "state", id, s] => {
                self.states.insert(id.to_string(), s.to_string());
            }
            ["ack", "blob", c, hexed] => self.blobs.push((c.to_string(), hex::decode(hexed).unwrap())),
            ["ack", "alias", a, id] => {
                self.aliases.insert(a.to_string(), id.to_string());
            }
            ["ack", "db", p] => self.dbs.push(PathBuf::from(p)),
            ["ack", "import", id] => {
                self.imported.insert(id.to_string());
            }
            _ => {}
        }
    }
}

#[test]
fn keystore_survives_kill_9_during_mutations_without_losing_a_version() {
    let dir = tempfile::tempdir().unwrap();
    let ks = dir.path().join("ks");
    let dbdir = dir.path().join("dbs");
    std::fs::create_dir(&dbdir).unwrap();
    let mut acked = Acked::default();
    let mut kills = 0;
    for round in 0..8 {
        let (mut c, mut out) = child::spawn("kms_child_entry", "kms-mutator", &[(ROLE_KS, &ks), (ROLE_DB, &dbdir)]);
        // Let it get going, then kill it right after an acknowledgement: it is then inside
        // its next operation (or its fsyncs).
        let want = 4 + (round * 7) % 23;
        for _ in 0..want {
            match child::wait_for(&mut out, "ack ") {
                Some(l) => acked.take(&l),
                None => panic!("child died on its own in round {round}"),
            }
        }
        std::thread::sleep(std::time::Duration::from_micros((round as u64 * 1319) % 4000));
        c.kill().unwrap();
        c.wait().unwrap();
        kills += 1;
        // Acks printed before the kill but not yet read.
        while let Some(l) = child::wait_for(&mut out, "ack ") {
            acked.take(&l);
        }

        // Everything acknowledged is there.
        let kms = LocalKms::new(&ks).with_principal("ops").with_operators(auditors());
        let data = kms.read_keystore().expect("keystore readable after kill -9").expect("keystore exists");
        for id in &acked.created {
            assert!(data.keys.contains_key(id), "round {round}: acknowledged key {id} lost");
        }
        for (id, v) in &acked.versions {
            let rec = &data.keys[id];
            for n in 1..=*v {
                assert!(rec.version(n).is_some_and(|x| x.available()), "round {round}: key {id} lost version {n}");
            }
            assert!(rec.primary_version >= *v);
        }
        for (id, s) in std::mem::take(&mut acked.states) {
            // The last acknowledged state holds, unless the killed child had already begun
            // the next step of the same sequence (disable → enable, schedule → cancel → enable).
            let now = data.keys[&id].state.as_str();
            let next = match s.as_str() {
                "disabled" => "enabled",
                "pending_deletion" => "disabled",
                "pending_import" => "enabled",
                _ => "enabled",
            };
            assert!(now == s || now == next || s == "enabled", "round {round}: {id} is {now}, acknowledged {s}");
        }
        for (a, id) in &acked.aliases {
            assert!(data.aliases.contains_key(a), "round {round}: alias {a} (-> {id}) lost");
        }
        // Imported material is there (or, if the child died between deleting and
        // reimporting it, the same material is accepted again: the fingerprint survived).
        for id in &acked.imported {
            let rec = &data.keys[id];
            if rec.state == KeyState::PendingImport {
                import(&kms, id);
            } else {
                assert!(rec.has_material(), "round {round}: imported material of {id} lost");
            }
        }
        // Leave every key usable for the next round's checks.
        let data = kms.read_keystore().unwrap().unwrap();
        for (id, rec) in &data.keys {
            match rec.state {
                KeyState::PendingDeletion => {
                    kms.op_cancel_deletion("ops", id).unwrap();
                    kms.op_enable("ops", id).unwrap();
                }
                KeyState::Disabled => {
                    kms.op_enable("ops", id).unwrap();
                }
                // A BYOK key whose child died before its first import.
                KeyState::PendingImport => import(&kms, id),
                _ => {}
            }
        }
        for (c, blob) in &acked.blobs {
            kms.op_decrypt("ops", blob, &ctx(c), None)
                .unwrap_or_else(|e| panic!("round {round}: acknowledged blob {c} lost: {e}"));
        }
        let tde = sqlite_tde::Tde::builder()
            .vfs_name(format!("tde-kms-crash-check-{round}"))
            .register_with_kms(std::sync::Arc::new(LocalKms::new(&ks).with_principal("ops")))
            .unwrap();
        for db in &acked.dbs {
            assert_eq!(read_db(&tde, db).unwrap(), "hello", "round {round}: {}", db.display());
        }
        // The audit chain is intact (a torn last record is repaired by the next append).
        kms.op_list_keys("ops").unwrap();
        let report = kms.op_verify_audit("auditor").unwrap();
        assert!(report.ok, "round {round}: {:?}", report.problems);
    }
    assert_eq!(kills, 8);
    assert!(
        !acked.versions.is_empty() && !acked.blobs.is_empty() && !acked.dbs.is_empty() && !acked.imported.is_empty()
    );
    eprintln!(
        "kill -9 rounds: {kills}; acknowledged: {} keys ({} imported), {} rotations, {} blobs, {} databases",
        acked.created.len(),
        acked.imported.len(),
        acked.versions.len(),
        acked.blobs.len(),
        acked.dbs.len()
    );
}

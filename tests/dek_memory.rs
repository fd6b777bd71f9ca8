//! No copy of a database's DEK in the application's memory beyond the live cipher, whatever
//! the KMS: a child process (this test binary re-executed) opens an encrypted database through
//! the embedded KMS, the KMS daemon (a real `sqlite-tde kms serve` over its Unix socket) or a
//! real OpenBao dev server (`openbao+http://`), uses it, then closes it and clears the key
//! cache. The parent searches the child's memory (/proc/PID/mem, every readable mapping) and
//! a core dump of it (`gcore`) for the DEK's raw pieces and every text encoding of it (hex
//! lower/upper, base64 standard/URL-safe, whole key, halves and windows):
//!
//! - while open, raw pieces may only lie on MADV_DONTDUMP pages (the live XTS cipher), no
//!   encoding may be anywhere, and the core dump holds no piece at all;
//! - after close, nothing anywhere;
//! - in daemon mode, the daemon's memory holds no encoding of the DEK after serving it (its
//!   response buffers are not left with the key in them).
//!
//! A canary written by the child into ordinary heap memory must be found both in
//! /proc/PID/mem and in the core dump: otherwise the scan proves nothing.

mod common;
mod kms_support;
mod memscan_support;
mod openbao_support;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use common::child::ROLE_VAR;
use memscan_support::{core_dump, dontdump, encodings, raw_pieces, require_gcore, scan};
use sqlite_tde::crypto::DataKey;
use sqlite_tde::format::{choose_slot, HEADER_REGION_LEN};
use sqlite_tde::kms::openbao::{Credentials, OpenBaoConfig, OpenBaoKms};
use sqlite_tde::kms::{EncryptionContext, Kms};
use sqlite_tde::Tde;

const KS: &str = "SQLITE_TDE_DEKMEM_KEYSTORE";
const DB: &str = "SQLITE_TDE_DEKMEM_DB";
const SEED: &str = "SQLITE_TDE_DEKMEM_SEED";

/// The positive control: 48 bytes derived at run time from a seed.
fn canary(seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..48)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn wait_line(stdin: &mut impl BufRead) {
    let mut s = String::new();
    let _ = stdin.read_line(&mut s);
}

/// Entry point of the child process (does nothing in a normal test run). The KMS comes from
/// `SQLITE_TDE_KMS`, as for any application.
#[test]
fn dek_child_entry() {
    let Ok(role) = std::env::var(ROLE_VAR) else { return };
    assert_eq!(role, "dek");
    let ks = PathBuf::from(std::env::var_os(KS).unwrap());
    let db = PathBuf::from(std::env::var_os(DB).unwrap());
    let seed: u64 = std::env::var(SEED).unwrap().parse().unwrap();
    let mut stdin = BufReader::new(std::io::stdin());
    let kms = sqlite_tde::connection::kms_from_env(Some(ks)).unwrap();
    let tde = Tde::builder().vfs_name("tde-dekmem").register_with_kms(kms).unwrap();
    let control = std::hint::black_box(canary(seed));
    let conn = tde.open(&db).unwrap();
    let n: i64 = conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
    conn.execute("INSERT INTO t VALUES(?1)", [format!("row {n}")]).unwrap();
    println!("stage open");
    std::io::stdout().flush().unwrap();
    wait_line(&mut stdin);
    drop(conn);
    tde.context().cache.clear();
    println!("stage closed");
    std::io::stdout().flush().unwrap();
    wait_line(&mut stdin);
    drop(control);
}

enum Mode<'a> {
    Embedded,
    Daemon,
    OpenBao(&'a openbao_support::BaoServer),
}

/// What the scans found, as readable findings (empty: clean), and the controls.
#[derive(Default)]
struct Outcome {
    findings: Vec<String>,
    raw_on_dd_pages_open: usize,
    canary_in_memory: bool,
    canary_in_core: Option<bool>,
}

fn dek_of(kms: &dyn Kms, db: &Path) -> DataKey {
    let bytes = std::fs::read(db).unwrap();
    let (h, _) = choose_slot(&bytes[..HEADER_REGION_LEN]).unwrap();
    let plain = kms.decrypt_data_key(&h.key, &h.wrapped_dek, &EncryptionContext::for_database(&h.db_uuid)).unwrap();
    DataKey::try_from(&plain).unwrap()
}

fn run(mode: Mode, test: &str) -> Outcome {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let env = common::Env::new();
    let ks = env.dir.path().join("ks");
    let db = env.path("dek.sqlite");
    let vfs = format!("tde-dekmem-parent-{}", N.fetch_add(1, std::sync::atomic::Ordering::SeqCst));
    let parent_kms: Arc<dyn Kms> = match &mode {
        Mode::OpenBao(server) => {
            server.create_key("dekmem");
            Arc::new(
                OpenBaoKms::new(
                    OpenBaoConfig::new(&server.uri("dekmem"), Credentials::token(&server.root_token)).unwrap(),
                )
                .unwrap(),
            )
        }
        _ => Arc::new(sqlite_tde::kms::local::LocalKms::new(&ks)),
    };
    {
        let tde = Tde::builder().vfs_name(vfs).register_with_kms(parent_kms.clone()).unwrap();
        tde.open(&db).unwrap().execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES('hello');").unwrap();
    }
    let dek = dek_of(&*parent_kms, &db);
    let raw = raw_pieces(dek.expose());
    let enc = encodings(dek.expose());
    let n_raw = raw.len();
    let seed = std::process::id() as u64 ^ 0xD0_5EED;
    let control = canary(seed);
    let mut needles = raw.clone();
    needles.extend(enc.iter().map(|(_, e)| e.clone()));
    needles.push(control.clone());
    let canary_ix = needles.len() - 1;
    let label = |i: usize| -> String {
        if i < n_raw {
            format!("raw piece {i}")
        } else {
            enc[i - n_raw].0.clone()
        }
    };

    let daemon =
        matches!(mode, Mode::Daemon).then(|| kms_support::start_daemon(&ks, &env.dir.path().join("kms.sock"), &[]));
    let gcore = require_gcore(test);
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "dek_child_entry", "--nocapture", "--test-threads", "1"]);
    for v in kms_support::KMS_ENV.iter().chain(&["BAO_TOKEN", "VAULT_TOKEN", "BAO_ADDR", "VAULT_ADDR"]) {
        cmd.env_remove(v);
    }
    match &mode {
        Mode::Embedded => cmd.env("SQLITE_TDE_KMS", "local:"),
        Mode::Daemon => cmd.env("SQLITE_TDE_KMS", format!("unix:{}", daemon.as_ref().unwrap().socket.display())),
        Mode::OpenBao(server) => cmd.env("SQLITE_TDE_KMS", server.uri("dekmem")).env("BAO_TOKEN", &server.root_token),
    };
    let mut child = cmd
        .env(ROLE_VAR, "dek")
        .env(KS, &ks)
        .env(DB, &db)
        .env(SEED, seed.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut stdin = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut o = Outcome::default();
    for stage in ["open", "closed"] {
        assert!(common::child::wait_for(&mut out, &format!("stage {stage}")).is_some(), "child died before {stage}");
        let (hits, _) = scan(pid, &needles);
        for (addr, i, region) in &hits {
            if *i == canary_ix {
                o.canary_in_memory = true;
            } else if stage == "open" && *i < n_raw && dontdump(pid, *addr) {
                o.raw_on_dd_pages_open += 1;
            } else {
                o.findings.push(format!("{stage}: {} in the application's memory @{addr:x} {region}", label(*i)));
            }
        }
        if let Some(gcore) = &gcore {
            let core = core_dump(gcore, pid, env.dir.path());
            for (i, n) in needles.iter().enumerate() {
                let at = memscan_support::find_all(&core, n);
                if i == canary_ix {
                    *o.canary_in_core.get_or_insert(true) &= !at.is_empty();
                } else if !at.is_empty() {
                    o.findings.push(format!("{stage}: {} in the application's core dump ({}x)", label(i), at.len()));
                }
            }
        }
        if let Some(d) = &daemon {
            let (hits, _) = scan(d.child.id(), &needles[n_raw..canary_ix]);
            for (addr, i, region) in hits {
                o.findings.push(format!("{stage}: {} in the daemon's memory @{addr:x} {region}", label(i + n_raw)));
            }
        }
        writeln!(stdin, "go").unwrap();
    }
    assert!(child.wait().unwrap().success(), "child failed");
    drop(daemon);
    o
}

fn check(o: Outcome) {
    assert!(o.canary_in_memory, "the scanner did not find the child's canary: the memory scan proves nothing");
    assert!(o.raw_on_dd_pages_open > 0, "the live cipher's key was not found while open: the scan proves nothing");
    assert_ne!(o.canary_in_core, Some(false), "the core dump lacks the child's canary: the dump scan proves nothing");
    assert!(o.findings.is_empty(), "DEK copies beyond the live cipher:\n{}", o.findings.join("\n"));
}

#[test]
fn dek_memory_embedded() {
    check(run(Mode::Embedded, "dek_memory_embedded"));
}

#[test]
fn dek_memory_daemon() {
    check(run(Mode::Daemon, "dek_memory_daemon"));
}

#[test]
fn dek_memory_openbao_http() {
    let Some(bao) = openbao_support::require_bao("dek_memory_openbao_http") else { return };
    let server = openbao_support::BaoServer::start(&bao, false);
    check(run(Mode::OpenBao(&server), "dek_memory_openbao_http"));
}

/// One raw HTTP/1.1 exchange with the daemon (what an old client would send).
fn raw_exchange(socket: &Path, head: &str, body: &str) -> String {
    use std::io::Read;
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    write!(s, "{head}Host: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Protocol v1 sent data keys in the clear: a v1 client gets 426 and a message naming the
/// upgrade, and a v2 request without the client's key is refused, not answered in the clear.
#[test]
fn daemon_refuses_unsealed_protocol_clearly() {
    let env = common::Env::new();
    let ks = env.dir.path().join("ks");
    let d = kms_support::start_daemon(&ks, &env.dir.path().join("kms.sock"), &[]);
    let req = r#"{"GenerateDataKey":{"key":"alias/default","context":{},"bytes":null}}"#;
    let v1 = raw_exchange(&d.socket, "POST /v1/kms HTTP/1.1\r\n", req);
    assert!(v1.starts_with("HTTP/1.1 426"), "{v1}");
    assert!(v1.contains("protocol v1 sent data keys in the clear: upgrade the client"), "{v1}");
    assert!(!v1.contains("plaintext"), "{v1}");
    let unsealed = raw_exchange(&d.socket, "POST /v2/kms HTTP/1.1\r\n", req);
    assert!(unsealed.starts_with("HTTP/1.1 400"), "{unsealed}");
    assert!(unsealed.contains("needs the client's X25519 public key in the x-tde-recipient header"), "{unsealed}");
    assert!(!unsealed.contains("plaintext"), "{unsealed}");
}

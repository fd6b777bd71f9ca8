//! Helpers for tests against a real OpenBao server: find the `bao` binary, run a dev server on
//! loopback (killed on drop, and by a watchdog if the test process dies), administer it over
//! its HTTP API, and rewrite a database header the way `sqlite-tde rewrap` will.
#![allow(dead_code)]

use std::io::{Read, Seek, SeekFrom, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqlite_tde::format::{choose_slot, Header, HEADER_REGION_LEN, SLOT_LEN};
use sqlite_tde::kms::{Kms, KmsError};
use sqlite_tde::rotation::rewrap_header;

/// The `bao` binary: on `PATH`, else where `.ci/setup.d/openbao.sh` installs it.
pub fn find_bao() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join("bao")).collect::<Vec<_>>())
        .unwrap_or_default();
    let installed = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/tools/bin/bao");
    on_path.into_iter().chain([installed]).find(|p| p.is_file())
}

/// The `bao` binary, or `None` after printing why the test is skipped. Under CI
/// (`SQLITE_TDE_CI=1`) a missing binary fails the test instead.
pub fn require_bao(test: &str) -> Option<PathBuf> {
    if let Some(b) = find_bao() {
        return Some(b);
    }
    let msg = "OpenBao's `bao` binary not found on PATH or at .ci/tools/bin/bao; install it with `bash .ci/setup.d/openbao.sh`";
    if std::env::var("SQLITE_TDE_CI").as_deref() == Ok("1") {
        panic!("{test}: {msg}");
    }
    eprintln!("SKIPPED {test}: {msg}");
    None
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A `bao server -dev` on 127.0.0.1 with a file audit device, in its own temp directory.
pub struct BaoServer {
    child: Option<Child>,
    watchdog: Option<Child>,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub root_token: String,
    pub tls: bool,
    pub audit_log: PathBuf,
    pub ca_cert: Option<PathBuf>,
}

impl BaoServer {
    /// Start a dev server (HTTPS with its generated CA when `tls`), wait until it answers,
    /// and mount transit at `transit/`.
    pub fn start(bao: &Path, tls: bool) -> BaoServer {
        let mut last_log = String::new();
        // The dev listener also takes PORT+1 for its cluster address, which we cannot reserve:
        // retry with another port if the server exits at startup.
        for _ in 0..5 {
            match Self::try_start(bao, tls) {
                Ok(server) => return server,
                Err(log) => last_log = log,
            }
        }
        panic!("bao server did not start:\n{last_log}");
    }

    fn try_start(bao: &Path, tls: bool) -> Result<BaoServer, String> {
        let dir = tempfile::tempdir().unwrap();
        let audit_log = dir.path().join("audit.log");
        let config = dir.path().join("audit.hcl");
        // Audit devices are declared in the server configuration (OpenBao 2.x does not enable
        // them through the API by default).
        std::fs::write(
            &config,
            format!(
                "audit \"file\" \"file\" {{\n  options {{\n    file_path = \"{}\"\n  }}\n}}\n",
                audit_log.display()
            ),
        )
        .unwrap();
        let root_token = format!("root-{}", uuid::Uuid::new_v4());
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let mut cmd = Command::new(bao);
        cmd.arg("server")
            .arg("-dev")
            .arg(format!("-dev-root-token-id={root_token}"))
            .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
            .arg("-dev-no-store-token")
            .arg(format!("-config={}", config.display()))
            .current_dir(dir.path())
            // Its token helper and caches go to the temp dir, never to the user's home.
            .env("HOME", dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for var in ["BAO_ADDR", "BAO_TOKEN", "VAULT_ADDR", "VAULT_TOKEN", "BAO_CACERT", "VAULT_CACERT"] {
            cmd.env_remove(var);
        }
        if tls {
            std::fs::create_dir(dir.path().join("tls")).unwrap();
            cmd.arg("-dev-tls").arg(format!("-dev-tls-cert-dir={}", dir.path().join("tls").display()));
        }
        let child = cmd.spawn().expect("spawn bao server");
        let watchdog = spawn_watchdog(child.id());
        let ca_cert = tls.then(|| dir.path().join("tls/vault-ca.pem"));
        let mut server =
            BaoServer { child: Some(child), watchdog: Some(watchdog), dir, port, root_token, tls, audit_log, ca_cert };
        if !server.wait_ready() {
            server.stop();
            return Err(std::fs::read_to_string(server.dir.path().join("server.log")).unwrap_or_default());
        }
        server.root().post("sys/mounts/transit", json!({ "type": "transit" })).unwrap();
        Ok(server)
    }

    /// Poll `sys/health` until the server is unsealed and active (or it exited).
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if child.try_wait().unwrap().is_some() {
                    return false;
                }
            }
            if self.ca_cert.as_ref().is_none_or(|ca| ca.is_file()) {
                let api = Api::new(&self.addr(), None, self.ca_cert.as_deref());
                if let Ok(v) = api.get("sys/health") {
                    if v["initialized"] == true && v["sealed"] == false {
                        return true;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// `http(s)://127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("{}://127.0.0.1:{}", if self.tls { "https" } else { "http" }, self.port)
    }

    /// The sqlite-tde key URI of transit key `key`.
    pub fn uri(&self, key: &str) -> String {
        format!("openbao+{}://127.0.0.1:{}/transit/{key}", if self.tls { "https" } else { "http" }, self.port)
    }

    /// API client with the root token.
    pub fn root(&self) -> Api {
        self.api(&self.root_token)
    }

    /// API client with `token`.
    pub fn api(&self, token: &str) -> Api {
        Api::new(&self.addr(), Some(token), self.ca_cert.as_deref())
    }

    /// Create an `aes256-gcm96` transit key.
    pub fn create_key(&self, name: &str) {
        self.root().post(&format!("transit/keys/{name}"), json!({ "type": "aes256-gcm96" })).unwrap();
    }

    /// Write an ACL policy.
    pub fn policy(&self, name: &str, hcl: &str) {
        self.root().post(&format!("sys/policies/acl/{name}"), json!({ "policy": hcl })).unwrap();
    }

    /// A token with exactly these policies (no default policy); returns (token, accessor).
    pub fn token(&self, display_name: &str, policies: &[&str]) -> (String, String) {
        let v = self
            .root()
            .post(
                "auth/token/create",
                json!({ "policies": policies, "no_default_policy": true, "display_name": display_name, "ttl": "1h" }),
            )
            .unwrap();
        (v["auth"]["client_token"].as_str().unwrap().to_string(), v["auth"]["accessor"].as_str().unwrap().to_string())
    }

    /// Revoke a token (and its children).
    pub fn revoke(&self, token: &str) {
        self.root().post("auth/token/revoke", json!({ "token": token })).unwrap();
    }

    /// Parsed audit log entries.
    pub fn audit_entries(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.audit_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Kill the server (SIGKILL: like a crashed or partitioned KMS) and reap it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

/// A shell loop that kills the server if this test process dies without running `Drop`
/// (SIGKILL, abort): no orphaned servers, whatever happens to the test.
fn spawn_watchdog(server_pid: u32) -> Child {
    let me = std::process::id();
    Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("while kill -0 {me} 2>/dev/null; do sleep 1; done; kill -9 {server_pid} 2>/dev/null"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn watchdog")
}

impl Drop for BaoServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Minimal admin client of the HTTP API.
pub struct Api {
    agent: ureq::Agent,
    addr: String,
    token: Option<String>,
}

impl Api {
    pub fn new(addr: &str, token: Option<&str>, ca: Option<&Path>) -> Api {
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(ca) = ca {
            let pem = std::fs::read(ca).unwrap();
            let certs = ureq::tls::parse_pem(&pem)
                .filter_map(|i| match i {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect::<Vec<_>>();
            tls = tls.root_certs(ureq::tls::RootCerts::Specific(Arc::new(certs)));
        }
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .tls_config(tls.build())
            .build();
        Api { agent: ureq::Agent::new_with_config(config), addr: addr.to_string(), token: token.map(str::to_string) }
    }

    fn finish(resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<Value, (u16, String)> {
        let mut resp = resp.map_err(|e| (0, e.to_string()))?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        if (200..300).contains(&status) {
            Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
        } else {
            Err((status, text))
        }
    }

    /// `POST /v1/PATH` (also used for PUT-style writes, which the API accepts as POST).
    pub fn post(&self, path: &str, body: Value) -> Result<Value, (u16, String)> {
        let mut req = self.agent.post(format!("{}/v1/{path}", self.addr));
        if let Some(t) = &self.token {
            req = req.header("X-Vault-Token", t.as_str());
        }
        Self::finish(req.send(body.to_string()))
    }

    /// `GET /v1/PATH`.
    pub fn get(&self, path: &str) -> Result<Value, (u16, String)> {
        let mut req = self.agent.get(format!("{}/v1/{path}", self.addr));
        if let Some(t) = &self.token {
            req = req.header("X-Vault-Token", t.as_str());
        }
        Self::finish(req.call())
    }
}

/// Policies for separation of duties on transit key `key`.
pub fn app_policy(key: &str) -> String {
    format!(
        "path \"transit/datakey/plaintext/{key}\" {{ capabilities = [\"update\"] }}\n\
         path \"transit/decrypt/{key}\" {{ capabilities = [\"update\"] }}\n"
    )
}

/// What the host running fleet rewrap needs (decrypt + encrypt; transit /rewrap cannot carry
/// associated_data) plus read to see the latest version.
pub fn rewrap_policy(key: &str) -> String {
    format!(
        "path \"transit/decrypt/{key}\" {{ capabilities = [\"update\"] }}\n\
         path \"transit/encrypt/{key}\" {{ capabilities = [\"update\"] }}\n\
         path \"transit/keys/{key}\" {{ capabilities = [\"read\"] }}\n"
    )
}

/// Key administrator: rotate, retire versions, read metadata; cannot obtain any DEK.
pub fn keyadmin_policy(key: &str) -> String {
    format!(
        "path \"transit/keys/{key}\" {{ capabilities = [\"read\", \"update\"] }}\n\
         path \"transit/keys/{key}/rotate\" {{ capabilities = [\"update\"] }}\n\
         path \"transit/keys/{key}/config\" {{ capabilities = [\"update\"] }}\n"
    )
}

/// Read and decode the current header of a database file.
pub fn read_header(path: &Path) -> (Header, usize) {
    let mut region = vec![0u8; HEADER_REGION_LEN];
    std::fs::File::open(path).unwrap().read_exact(&mut region).unwrap();
    choose_slot(&region).unwrap()
}

/// What `sqlite-tde rewrap FILE` will do: rewrap the DEK of the newest valid header slot with
/// the KMS, then write the result (sequence + 1) into the *other* slot and fsync, so a crash
/// leaves either the old or the new header valid. Returns (old, new).
pub fn rewrap_file(path: &Path, kms: &dyn Kms, target: Option<&str>) -> Result<(Header, Header), KmsError> {
    let (current, slot) = read_header(path);
    let new = rewrap_header(kms, &current, target)?;
    // A format 2 slot is MACed under its DEK: the rewrapper (which may decrypt) derives it.
    let ctx = sqlite_tde::kms::EncryptionContext::for_database(&current.db_uuid);
    let dek = kms.decrypt_data_key(&current.key, &current.wrapped_dek, &ctx)?;
    let image = new
        .encode(&sqlite_tde::crypto::MetaKey::derive(&sqlite_tde::crypto::DataKey::try_from(&dek).unwrap()))
        .unwrap();
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(((1 - slot) * SLOT_LEN) as u64)).unwrap();
    f.write_all(&image).unwrap();
    f.sync_all().unwrap();
    Ok((current, new))
}

//! HTTP transport to an OpenBao / Vault server: TLS setup, authentication (token or AppRole),
//! bounded retries with backoff, and classification of what went wrong.
//!
//! Requests only ever go to the configured server: redirects are not followed (a redirect
//! would carry the token to an address nobody configured), and the address recorded in a
//! database header is never dialled.

use std::io::{ErrorKind, Read};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use ureq::http::HeaderValue;
use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};
use zeroize::Zeroizing;

use super::config::{Credentials, OpenBaoConfig, ENV_ALLOW_INSECURE_HTTP, ENV_RETRIES, ENV_TIMEOUT_MS};
use crate::KmsError;
use ureq::unversioned::transport::Connector as _;
use wipe::WipingConnector;

mod wipe;

/// Largest response body accepted (transit answers are a few hundred bytes).
const MAX_BODY: u64 = 1 << 20;
/// Capacity reserved for a response body: far above any transit answer.
const BODY_RESERVE: usize = 16 * 1024;
/// First backoff; doubles per retry.
const BACKOFF_START: Duration = Duration::from_millis(100);
/// Longest single backoff.
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Why a request did not produce a 2xx answer.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The server answered with an error status (after retries, if it was transient).
    Status { status: u16, errors: Vec<String> },
    /// AppRole login was refused.
    Login { status: u16, errors: Vec<String> },
    /// No usable answer: connection, timeout or TLS failure.
    Transport { detail: String, attempts: u32, elapsed: Duration, retryable: bool },
    /// Local problem before any request (e.g. the token file cannot be read).
    Local(KmsError),
}

/// Least time between two logins caused by a dead token: each login spends a secret-ID use.
const RELOGIN_BACKOFF: Duration = Duration::from_secs(30);

/// Token obtained by AppRole login, with the time after which we log in again.
struct LoginToken {
    token: SecretString,
    refresh_at: Option<Instant>,
}

/// A connection to one server with one identity.
pub(crate) struct Client {
    agent: ureq::Agent,
    base: String,
    namespace: Option<String>,
    timeout: Duration,
    retries: u32,
    credentials: Credentials,
    login: Mutex<Option<LoginToken>>,
    /// When a dead AppRole token last made us log in again (see [`RELOGIN_BACKOFF`]).
    last_relogin: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("credentials", &self.credentials)
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .finish_non_exhaustive()
    }
}

/// A secret string field of a JSON answer (token, base64 data key), wiped when dropped.
pub(crate) struct SecretText(pub(crate) Zeroizing<String>);

impl<'de> Deserialize<'de> for SecretText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| SecretText(Zeroizing::new(s)))
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<String>,
}

#[derive(Deserialize)]
struct LoginBody {
    auth: Option<LoginAuth>,
}

#[derive(Deserialize)]
struct LoginAuth {
    client_token: SecretText,
    #[serde(default)]
    lease_duration: u64,
}

fn read_pem(path: &std::path::Path, what: &str) -> Result<Zeroizing<Vec<u8>>, KmsError> {
    std::fs::read(path)
        .map(Zeroizing::new)
        .map_err(|e| KmsError::InvalidRequest(format!("cannot read {what} {}: {e}", path.display())))
}

fn certificates(pem: &[u8], path: &std::path::Path) -> Result<Vec<Certificate<'static>>, KmsError> {
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(pem) {
        match item {
            Ok(PemItem::Certificate(c)) => certs.push(c),
            Ok(_) => {}
            Err(e) => return Err(KmsError::InvalidRequest(format!("bad PEM in {}: {e}", path.display()))),
        }
    }
    if certs.is_empty() {
        return Err(KmsError::InvalidRequest(format!("no certificate in {}", path.display())));
    }
    Ok(certs)
}

fn tls_config(config: &OpenBaoConfig) -> Result<TlsConfig, KmsError> {
    let mut tls = TlsConfig::builder();
    if let Some(ca) = &config.ca_cert {
        let certs = certificates(&read_pem(ca, "the CA bundle")?, ca)?;
        tls = tls.root_certs(RootCerts::Specific(Arc::new(certs)));
    }
    if let Some((cert, key)) = &config.client_cert {
        let chain = certificates(&read_pem(cert, "the client certificate")?, cert)?;
        let key_pem = read_pem(key, "the client key")?;
        let key = PrivateKey::from_pem(&key_pem)
            .map_err(|e| KmsError::InvalidRequest(format!("bad client key {}: {e}", key.display())))?;
        tls = tls.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
    }
    Ok(tls.build())
}

/// First error message of an error body, or the raw text.
pub(crate) fn parse_errors(body: &[u8]) -> Vec<String> {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) if !b.errors.is_empty() => b.errors.into_iter().map(|e| e.trim().to_string()).collect(),
        _ => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if text.is_empty() {
                Vec::new()
            } else {
                vec![text.chars().take(300).collect()]
            }
        }
    }
}

/// Transient answers: 412 (a standby has not caught up yet), 429 (rate limit), and server
/// errors (503 also covers a sealed or failing-over cluster). 501 means "not implemented".
fn retryable_status(status: u16) -> bool {
    matches!(status, 412 | 429 | 500 | 502 | 503 | 504)
}

fn describe_transport(e: &ureq::Error, timeout: Duration) -> (String, bool) {
    match e {
        ureq::Error::Timeout(_) => (format!("no answer within {} ms ({ENV_TIMEOUT_MS})", timeout.as_millis()), true),
        ureq::Error::Io(io) => {
            let retryable = matches!(
                io.kind(),
                ErrorKind::ConnectionRefused
                    | ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::BrokenPipe
                    | ErrorKind::UnexpectedEof
                    | ErrorKind::TimedOut
                    | ErrorKind::NotConnected
                    | ErrorKind::WouldBlock
            );
            let what = match io.kind() {
                ErrorKind::ConnectionRefused => {
                    "connection refused (is the server running and listening there?)".to_string()
                }
                ErrorKind::TimedOut | ErrorKind::WouldBlock => {
                    format!("no answer within {} ms ({ENV_TIMEOUT_MS})", timeout.as_millis())
                }
                // rustls reports handshake failures through the stream as InvalidData.
                ErrorKind::InvalidData if io.to_string().contains("certificate") => {
                    format!("TLS failure: {io} (for a private CA set BAO_CACERT to its PEM file)")
                }
                ErrorKind::InvalidData => {
                    format!("TLS or protocol failure: {io} (does the URI's scheme, http or https, match the listener?)")
                }
                _ => io.to_string(),
            };
            (what, retryable)
        }
        ureq::Error::ConnectionFailed => ("connection failed".into(), true),
        ureq::Error::HostNotFound => ("host name not found".into(), false),
        ureq::Error::Tls(_) | ureq::Error::Rustls(_) | ureq::Error::Pem(_) => {
            (format!("TLS failure: {e} (for a private CA set BAO_CACERT to its PEM file)"), false)
        }
        other => (other.to_string(), false),
    }
}

impl Client {
    /// Build the HTTP agent. Certificate files are read now, so a wrong path fails at
    /// registration rather than at the first open.
    pub(crate) fn new(config: OpenBaoConfig) -> Result<Client, KmsError> {
        if !config.key.tls() && !config.key.is_loopback() {
            if !config.allow_insecure_http {
                return Err(KmsError::InvalidRequest(format!(
                    "refusing {}: plain http to a host other than loopback would send the token and every data key over the network in the clear; use openbao+https://, or set {ENV_ALLOW_INSECURE_HTTP}=1 (OpenBaoConfig::with_insecure_http) on an isolated network",
                    config.key.base_url()
                )));
            }
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| eprintln!(
                "sqlite-tde: WARNING: {ENV_ALLOW_INSECURE_HTTP} is set: talking plain http to {}; the OpenBao token and data keys cross the network in the clear",
                config.key.base_url()
            ));
        }
        let agent_config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(config.timeout))
            .max_redirects(0)
            .https_only(config.key.tls())
            .user_agent(format!("sqlite-tde/{}", env!("CARGO_PKG_VERSION")))
            .tls_config(tls_config(&config)?)
            // No idle connections: a connection's buffers (which held the last answer, maybe a
            // data key) are wiped when it drops, right after its body is read. A KMS call
            // happens on a cold open only, so the extra connect is rare.
            .max_idle_connections(0)
            .max_idle_connections_per_host(0)
            .build();
        let connector = ureq::unversioned::transport::DefaultConnector::new().chain(WipingConnector);
        Ok(Client {
            agent: ureq::Agent::with_parts(
                agent_config,
                connector,
                ureq::unversioned::resolver::DefaultResolver::default(),
            ),
            base: config.key.base_url(),
            namespace: config.namespace.clone(),
            timeout: config.timeout,
            retries: config.retries,
            credentials: config.credentials,
            login: Mutex::new(None),
            last_relogin: Mutex::new(None),
        })
    }

    /// `http(s)://HOST:PORT` of the server.
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    /// Describes our identity for error messages.
    pub(crate) fn principal(&self) -> String {
        self.credentials.principal()
    }

    /// Settings that bound a call, for "unreachable" messages.
    pub(crate) fn budget(&self) -> String {
        format!("{ENV_TIMEOUT_MS}={}, {ENV_RETRIES}={}", self.timeout.as_millis(), self.retries)
    }

    /// `POST /v1/PATH` with a JSON body; returns the response body of a 2xx answer.
    pub(crate) fn post(&self, path: &str, body: &[u8]) -> Result<Zeroizing<Vec<u8>>, Failure> {
        self.authenticated(path, Some(body))
    }

    /// `GET /v1/PATH`.
    pub(crate) fn get(&self, path: &str) -> Result<Zeroizing<Vec<u8>>, Failure> {
        self.authenticated(path, None)
    }

    fn authenticated(&self, path: &str, body: Option<&[u8]>) -> Result<Zeroizing<Vec<u8>>, Failure> {
        let token = self.token()?;
        match self.send_with_retries(path, body, Some(&token)) {
            // A login token can be revoked or expire early (max TTL, secret ID rotation): log
            // in once more before reporting the denial. A static token is what the operator
            // gave; retrying it cannot help.
            // But a 403 is usually a path this token may not use (a crafted key name, say), and
            // every login spends one use of the secret ID: ask the server whether the token
            // still lives (lookup-self, granted to every token) and log in again only if not,
            // at most once per RELOGIN_BACKOFF.
            Err(denied @ Failure::Status { status: 403, .. })
                if matches!(self.credentials, Credentials::AppRole { .. }) =>
            {
                if self.send_with_retries("auth/token/lookup-self", None, Some(&token)).is_ok() {
                    return Err(denied);
                }
                {
                    let mut last = self.last_relogin.lock().unwrap_or_else(|p| p.into_inner());
                    if last.is_some_and(|at| at.elapsed() < RELOGIN_BACKOFF) {
                        return Err(denied);
                    }
                    *last = Some(Instant::now());
                }
                *self.login.lock().unwrap_or_else(|p| p.into_inner()) = None;
                let token = self.token()?;
                self.send_with_retries(path, body, Some(&token))
            }
            other => other,
        }
    }

    /// The token to send now.
    fn token(&self) -> Result<SecretString, Failure> {
        match &self.credentials {
            Credentials::Token { token, .. } => token.load("token").map_err(Failure::Local),
            Credentials::AppRole { mount, role_id, secret_id } => {
                let mut slot = self.login.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(t) = slot.as_ref() {
                    if t.refresh_at.is_none_or(|at| Instant::now() < at) {
                        return Ok(t.token.clone());
                    }
                }
                let secret_id = secret_id.load("AppRole secret ID").map_err(Failure::Local)?;
                #[derive(serde::Serialize)]
                struct Login<'a> {
                    role_id: &'a str,
                    secret_id: &'a str,
                }
                let mut body = Zeroizing::new(Vec::with_capacity(1024));
                let login = Login { role_id, secret_id: secret_id.expose_secret() };
                serde_json::to_writer(&mut *body, &login)
                    .map_err(|e| Failure::Local(KmsError::InvalidRequest(e.to_string())))?;
                let answer = match self.send_with_retries(&format!("auth/{mount}/login"), Some(&body), None) {
                    Ok(a) => a,
                    Err(Failure::Status { status, errors }) => return Err(Failure::Login { status, errors }),
                    Err(other) => return Err(other),
                };
                let parsed: LoginBody = serde_json::from_slice(&answer).map_err(|e| {
                    Failure::Local(KmsError::Unavailable(format!(
                        "unexpected AppRole login answer from {}: {e}",
                        self.base
                    )))
                })?;
                let auth = parsed.auth.ok_or_else(|| {
                    Failure::Local(KmsError::Unavailable(format!("AppRole login at {} returned no token", self.base)))
                })?;
                // Log in again after two thirds of the lease, well before the server expires
                // the token under a running application.
                let refresh_at = (auth.lease_duration > 0)
                    .then(|| Instant::now() + Duration::from_secs(auth.lease_duration * 2 / 3));
                // `to_string` allocates exactly, so the conversion to a boxed str does not
                // reallocate; the parsed copy is wiped when `auth` drops.
                let token = SecretString::from(auth.client_token.0.to_string());
                *slot = Some(LoginToken { token: token.clone(), refresh_at });
                Ok(token)
            }
        }
    }

    fn send_once(
        &self,
        path: &str,
        body: Option<&[u8]>,
        token: Option<&SecretString>,
    ) -> Result<(u16, Zeroizing<Vec<u8>>), ureq::Error> {
        let url = format!("{}/v1/{path}", self.base);
        let token_header = match token {
            Some(t) => {
                let mut v = HeaderValue::from_str(t.expose_secret()).map_err(|_| {
                    ureq::Error::BadUri("the token contains characters not allowed in an HTTP header".into())
                })?;
                // Keeps the value out of any header dump (http's Debug prints "Sensitive").
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        let mut response = match body {
            Some(b) => {
                let mut req = self.agent.post(&url).header("X-Vault-Request", "true").content_type("application/json");
                if let Some(v) = token_header {
                    req = req.header("X-Vault-Token", v);
                }
                if let Some(ns) = &self.namespace {
                    req = req.header("X-Vault-Namespace", ns.as_str());
                }
                req.send(b)?
            }
            None => {
                let mut req = self.agent.get(&url).header("X-Vault-Request", "true");
                if let Some(v) = token_header {
                    req = req.header("X-Vault-Token", v);
                }
                if let Some(ns) = &self.namespace {
                    req = req.header("X-Vault-Namespace", ns.as_str());
                }
                req.call()?
            }
        };
        let status = response.status().as_u16();
        // Reserved up front so a body holding a data key is never reallocated (a reallocation
        // would free a copy without wiping it).
        let mut body = Zeroizing::new(Vec::with_capacity(BODY_RESERVE));
        response.body_mut().with_config().limit(MAX_BODY).reader().read_to_end(&mut body).map_err(ureq::Error::Io)?;
        Ok((status, body))
    }

    /// One request with up to `retries` retries of transient failures. The budget is bounded:
    /// at most `(retries + 1) * timeout` plus the backoffs (100 ms, 200 ms, ... capped at 2 s).
    fn send_with_retries(
        &self,
        path: &str,
        body: Option<&[u8]>,
        token: Option<&SecretString>,
    ) -> Result<Zeroizing<Vec<u8>>, Failure> {
        let start = Instant::now();
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let outcome = self.send_once(path, body, token);
            let retryable = match &outcome {
                Ok((status, _)) => retryable_status(*status),
                Err(e) => describe_transport(e, self.timeout).1,
            };
            if !retryable || attempt > self.retries {
                return match outcome {
                    Ok((status, body)) if (200..300).contains(&status) => Ok(body),
                    Ok((status, _)) if (300..400).contains(&status) => Err(Failure::Status {
                        status,
                        errors: vec![format!(
                            "the server answered with a redirect ({status}); point the key URI at the active node or a load balancer that forwards requests"
                        )],
                    }),
                    Ok((status, body)) => Err(Failure::Status { status, errors: parse_errors(&body) }),
                    Err(e) => {
                        let (detail, retryable) = describe_transport(&e, self.timeout);
                        Err(Failure::Transport { detail, attempts: attempt, elapsed: start.elapsed(), retryable })
                    }
                };
            }
            std::thread::sleep(backoff(attempt));
        }
    }
}

/// Exponential backoff with jitter (50-100 % of the nominal delay), so a fleet that lost the
/// KMS at the same moment does not retry in lockstep.
fn backoff(attempt: u32) -> Duration {
    let nominal = BACKOFF_START.saturating_mul(1 << (attempt - 1).min(8)).min(BACKOFF_MAX);
    let r = crate::plaintext::random_array::<1>().map(|b| b[0]).unwrap_or(255);
    nominal / 2 + nominal / 2 * u32::from(r) / 255
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// A loopback server answering each request with the next canned (status, body).
    fn canned(answers: Vec<(u16, &'static str)>) -> (String, Arc<AtomicU32>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicU32::new(0));
        let h = hits.clone();
        std::thread::spawn(move || {
            for (status, body) in answers {
                let Ok((stream, _)) = listener.accept() else {
                    return;
                };
                h.fetch_add(1, Ordering::SeqCst);
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut buf = vec![0; len];
                let _ = reader.read_exact(&mut buf);
                let mut s = stream;
                let _ = write!(
                    s,
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        (format!("openbao+http://{addr}/transit/k"), hits)
    }

    fn client(uri: &str, retries: u32, timeout_ms: u64) -> Client {
        let cfg = OpenBaoConfig::new(uri, Credentials::token("t"))
            .unwrap()
            .with_retries(retries)
            .with_timeout(Duration::from_millis(timeout_ms));
        Client::new(cfg).unwrap()
    }

    #[test]
    fn retries_5xx_then_succeeds() {
        let (uri, hits) = canned(vec![(503, r#"{"errors":["sealed"]}"#), (500, "{}"), (200, r#"{"data":{}}"#)]);
        let c = client(&uri, 2, 2000);
        let body = c.post("transit/decrypt/k", b"{}").unwrap();
        assert_eq!(&body[..], br#"{"data":{}}"#);
        assert_eq!(hits.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn gives_up_after_the_retry_budget() {
        let (uri, hits) = canned(vec![(502, "bad gateway"); 5]);
        let c = client(&uri, 1, 2000);
        match c.post("transit/decrypt/k", b"{}") {
            Err(Failure::Status { status: 502, errors }) => assert_eq!(errors, vec!["bad gateway".to_string()]),
            other => panic!("{other:?}"),
        }
        assert_eq!(hits.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn client_errors_are_not_retried() {
        let (uri, hits) = canned(vec![(403, r#"{"errors":["permission denied"]}"#); 3]);
        let c = client(&uri, 2, 2000);
        assert!(matches!(c.post("transit/decrypt/k", b"{}"), Err(Failure::Status { status: 403, .. })));
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_silent_server_times_out_within_the_budget() {
        // Accepts connections but never answers.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept() {
                held.push(s);
                if held.len() > 5 {
                    break;
                }
            }
            std::thread::sleep(Duration::from_secs(5));
        });
        let c = client(&format!("openbao+http://{addr}/transit/k"), 1, 200);
        let t = Instant::now();
        match c.post("transit/decrypt/k", b"{}") {
            Err(Failure::Transport { attempts: 2, detail, .. }) => {
                assert!(detail.contains("no answer within 200 ms"), "{detail}")
            }
            other => panic!("{other:?}"),
        }
        // Two attempts of 200 ms and one backoff of at most 100 ms.
        assert!(t.elapsed() < Duration::from_millis(1500), "{:?}", t.elapsed());
    }

    #[test]
    fn refused_connections_fail_fast() {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let c = client(&format!("openbao+http://127.0.0.1:{port}/transit/k"), 2, 2000);
        let t = Instant::now();
        match c.post("transit/decrypt/k", b"{}") {
            Err(Failure::Transport { attempts: 3, detail, .. }) => {
                assert!(detail.contains("connection refused"), "{detail}")
            }
            other => panic!("{other:?}"),
        }
        assert!(t.elapsed() < Duration::from_millis(1000), "{:?}", t.elapsed());
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        for attempt in 1..20 {
            let b = backoff(attempt);
            assert!(b <= BACKOFF_MAX);
            assert!(b >= BACKOFF_START / 2);
        }
        assert!(backoff(5) >= Duration::from_millis(800));
    }
}

//! The daemon's client side, used by the CLI and the VFS (`SQLITE_TDE_KMS=unix:PATH`). Calls
//! are blocking: each runs a hyper HTTP/1.1 exchange on a private current-thread runtime (on
//! a helper thread when the caller is itself inside a tokio runtime).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request as HttpRequest};
use hyper_util::rt::TokioIo;
use zeroize::Zeroizing;

use super::seal::{Opener, CONTENT_TYPE_SEALED, HEADER_RECIPIENT};
use super::{ENV_DAEMON_UID, ENV_TOKEN, ENV_TOKEN_FILE, PATH_KMS, PROTOCOL};
use crate::api::{KmsClient, KmsService, Request, WireError};
use crate::local::{check_provider, PROVIDER};
use crate::KeyRef;
use crate::PlaintextDataKey as DataKey;
use crate::{EncryptionContext, GeneratedDataKey, Kms, KmsError};

/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(60);

/// A KMS daemon reached over a Unix socket.
#[derive(Clone)]
pub struct UnixKms {
    socket: PathBuf,
    token: Option<Arc<Zeroizing<String>>>,
    /// Uids a daemon may run as (root, this process's effective uid, and
    /// `SQLITE_TDE_KMS_DAEMON_UID`): anything else bound at the socket path is not our daemon
    /// and gets neither the bearer token nor a request.
    daemon_uids: Vec<u32>,
}

impl std::fmt::Debug for UnixKms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnixKms")
            .field("socket", &self.socket)
            .field("token", &self.token.as_ref().map(|_| "[REDACTED]"))
            .finish()
    }
}

fn run_blocking<F>(f: F) -> Result<F::Output, KmsError>
where
    F: Future + Send,
    F::Output: Send,
{
    let run = move || -> Result<F::Output, KmsError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| KmsError::Unavailable(format!("cannot start runtime: {e}")))?;
        Ok(rt.block_on(f))
    };
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| {
            s.spawn(run).join().unwrap_or_else(|_| Err(KmsError::Unavailable("KMS client thread panicked".into())))
        })
    } else {
        run()
    }
}

impl UnixKms {
    /// A client of the daemon listening on `socket`, authenticating with
    /// `$SQLITE_TDE_KMS_TOKEN` / `$SQLITE_TDE_KMS_TOKEN_FILE` if set (else by its uid).
    pub fn new(socket: impl Into<PathBuf>) -> UnixKms {
        let token = std::env::var(ENV_TOKEN)
            .ok()
            .or_else(|| std::env::var_os(ENV_TOKEN_FILE).and_then(|f| std::fs::read_to_string(f).ok()))
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .map(|t| Arc::new(Zeroizing::new(t)));
        let mut daemon_uids = vec![0, nix::unistd::geteuid().as_raw()];
        daemon_uids.extend(std::env::var(ENV_DAEMON_UID).ok().and_then(|v| v.trim().parse::<u32>().ok()));
        UnixKms { socket: socket.into(), token, daemon_uids }
    }

    /// Accept a daemon running as `uid` too.
    pub fn with_daemon_uid(mut self, uid: u32) -> UnixKms {
        self.daemon_uids.push(uid);
        self
    }

    /// Use this bearer token.
    pub fn with_token(mut self, token: impl Into<String>) -> UnixKms {
        self.token = Some(Arc::new(Zeroizing::new(token.into())));
        self
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Typed access.
    pub fn client(&self) -> KmsClient {
        KmsClient::new(Arc::new(self.clone()))
    }

    async fn exchange(&self, body: Vec<u8>, recipient: &str) -> Result<(u16, Option<String>, Bytes), KmsError> {
        let unavailable = |what: &str, e: &dyn std::fmt::Display| {
            KmsError::Unavailable(format!("KMS daemon at unix:{}: {what}: {e}", self.socket.display()))
        };
        let stream =
            tokio::net::UnixStream::connect(&self.socket).await.map_err(|e| unavailable("cannot connect", &e))?;
        // Authenticate the daemon before anything (the token) is sent: the kernel's record of
        // who is listening, not anything the peer says.
        let peer = stream.peer_cred().map_err(|e| unavailable("cannot read the daemon's credentials", &e))?;
        if !self.daemon_uids.contains(&peer.uid()) {
            return Err(KmsError::Unavailable(format!(
                "refusing the KMS daemon at unix:{}: the process listening there runs as uid {} (pid {}), not as root, this user or {ENV_DAEMON_UID}; nothing was sent",
                self.socket.display(),
                peer.uid(),
                peer.pid().map_or("?".into(), |p| p.to_string())
            )));
        }
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unavailable("handshake failed", &e))?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = HttpRequest::builder()
            .method(Method::POST)
            .uri(PATH_KMS)
            .header(HOST, "localhost")
            .header(CONTENT_TYPE, "application/json")
            .header(HEADER_RECIPIENT, recipient);
        if let Some(t) = &self.token {
            req = req.header(AUTHORIZATION, format!("Bearer {}", t.as_str()));
        }
        let req = req.body(Full::new(Bytes::from(body))).map_err(|e| unavailable("bad request", &e))?;
        let resp = sender.send_request(req).await.map_err(|e| unavailable("request failed", &e))?;
        let status = resp.status().as_u16();
        let content_type = resp.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string);
        let bytes = resp.into_body().collect().await.map_err(|e| unavailable("response failed", &e))?.to_bytes();
        driver.abort();
        Ok((status, content_type, bytes))
    }
}

impl KmsService for UnixKms {
    fn call(&self, req: &Request) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let body = serde_json::to_vec(req).map_err(|e| KmsError::InvalidRequest(e.to_string()))?;
        // A fresh key pair per request: the daemon seals its answer to it, so the data key
        // never lies in clear text in hyper's buffers (which are not ours to wipe).
        let opener = Opener::new()?;
        let recipient = opener.recipient();
        let (status, content_type, bytes) = run_blocking(async {
            match tokio::time::timeout(TIMEOUT, self.exchange(body, &recipient)).await {
                Ok(r) => r,
                Err(_) => Err(KmsError::Unavailable(format!(
                    "KMS daemon at unix:{} did not answer in time",
                    self.socket.display()
                ))),
            }
        })??;
        if status == 200 {
            if content_type.as_deref() != Some(CONTENT_TYPE_SEALED) {
                return Err(KmsError::Unavailable(format!(
                    "the KMS daemon at unix:{} answered without sealing (protocol v1?): refusing it; upgrade the daemon to this version of sqlite-tde (protocol v{PROTOCOL})",
                    self.socket.display()
                )));
            }
            return opener.open(&bytes);
        }
        #[derive(serde::Deserialize)]
        struct Envelope {
            error: WireError,
        }
        match serde_json::from_slice::<Envelope>(&bytes) {
            // A v1 daemon does not know the v2 path.
            Ok(env) if status == 400 && env.error.message.contains("no such endpoint POST /v2/kms") => {
                Err(KmsError::Unavailable(format!(
                    "the KMS daemon at unix:{} speaks protocol v1 (data keys in the clear), this client v{PROTOCOL}: upgrade the daemon to this version of sqlite-tde",
                    self.socket.display()
                )))
            }
            Ok(env) => Err(env.error.into_error()),
            Err(_) => Err(KmsError::Unavailable(format!("KMS daemon answered HTTP {status}"))),
        }
    }

    fn endpoint(&self) -> String {
        format!("unix:{}", self.socket.display())
    }
}

impl Kms for UnixKms {
    fn provider(&self) -> &str {
        PROVIDER
    }

    fn generate_data_key(&self, key: &str, context: &EncryptionContext) -> Result<GeneratedDataKey, KmsError> {
        self.client().generate_data_key(key, context, None)?.into_generated()
    }

    fn newest_version(&self, key_uri: &str) -> Option<u32> {
        let id = key_uri.strip_prefix("local:")?;
        self.client().describe_key(id).ok().map(|k| k.primary_version)
    }

    fn resolve_key_uri(&self, key: &str) -> Result<Option<String>, KmsError> {
        let id = key.strip_prefix("local:").unwrap_or(key);
        self.client().describe_key(id).map(|k| Some(format!("local:{}", k.key_id)))
    }

    fn decrypt_data_key(
        &self,
        key_ref: &KeyRef,
        wrapped: &[u8],
        context: &EncryptionContext,
    ) -> Result<DataKey, KmsError> {
        check_provider(key_ref)?;
        self.client().decrypt(wrapped, context, None)?.into_data_key()
    }

    fn rewrap_data_key(
        &self,
        key_ref: &KeyRef,
        wrapped: &[u8],
        context: &EncryptionContext,
        target: Option<&str>,
    ) -> Result<(Vec<u8>, KeyRef), KmsError> {
        check_provider(key_ref)?;
        Ok(self.client().re_encrypt(wrapped, context, target, None)?.into_rewrapped())
    }
}

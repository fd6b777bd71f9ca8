//! The daemon's server side: a tokio Unix listener, hyper HTTP/1.1 per connection, the peer's
//! uid from SO_PEERCRED, and the embedded service doing the work on blocking threads.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request as HttpRequest, Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::config::DaemonConfig;
use super::seal::{seal, CONTENT_TYPE_SEALED, HEADER_RECIPIENT};
use super::{MAX_BODY, PATH_HEALTH, PATH_KMS, PATH_KMS_V1, PROTOCOL};
use crate::api::{Request, WireError};
use crate::local::LocalKms;
use crate::policy::principal_of_uid;
use crate::KmsError;

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub socket: PathBuf,
    /// Socket file mode: 0o600 (the daemon's user only) or 0o660 (with `group`).
    pub mode: u32,
    /// Group to give the socket (for mode 0660).
    pub group: Option<u32>,
    /// uid → principal, on top of `kmsd.json`.
    pub uid_map: BTreeMap<u32, String>,
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}

fn error_response(e: &KmsError) -> Response<Full<Bytes>> {
    let w = WireError::from_error(e);
    let status = StatusCode::from_u16(w.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, serde_json::to_vec(&serde_json::json!({ "error": w })).unwrap_or_default())
}

struct Shared {
    kms: Arc<LocalKms>,
    uid_map: BTreeMap<u32, String>,
}

impl Shared {
    /// The caller's principal: a valid bearer token, else the peer uid's mapping.
    fn principal(&self, uid: u32, auth: Option<&str>) -> Result<String, KmsError> {
        let p = self.resolve(uid, auth)?;
        // Whatever named it (an old kmsd.json, an OS user of that name), a caller is never the
        // service principal.
        super::config::check_principal_name(&p).map_err(|_| KmsError::AccessDenied {
            principal: format!("uid:{uid}"),
            action: format!("authenticate as {p:?} (a reserved or malformed principal name)"),
            key: "-".into(),
        })?;
        Ok(p)
    }

    fn resolve(&self, uid: u32, auth: Option<&str>) -> Result<String, KmsError> {
        let cfg = DaemonConfig::load(&self.kms)?;
        if let Some(a) = auth {
            let token = a.strip_prefix("Bearer ").ok_or_else(|| KmsError::AccessDenied {
                principal: format!("uid:{uid}"),
                action: "authenticate".into(),
                key: "-".into(),
            })?;
            return cfg.principal_of_token(token.trim()).map(str::to_string).ok_or_else(|| KmsError::AccessDenied {
                principal: format!("uid:{uid}"),
                action: "authenticate (unknown bearer token)".into(),
                key: "-".into(),
            });
        }
        if let Some(p) = self.uid_map.get(&uid).or_else(|| cfg.uid_principals.get(&uid)) {
            return Ok(p.clone());
        }
        Ok(principal_of_uid(uid))
    }
}

async fn handle(
    shared: Arc<Shared>,
    uid: u32,
    req: HttpRequest<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, PATH_HEALTH) => {
            return Ok(json_response(
                StatusCode::OK,
                format!(r#"{{"status":"ok","protocol":{PROTOCOL}}}"#).into_bytes(),
            ))
        }
        (&Method::POST, PATH_KMS) => {}
        (&Method::POST, PATH_KMS_V1) => {
            let mut r = error_response(&KmsError::InvalidRequest(format!(
                "this KMS daemon speaks protocol v{PROTOCOL} only (POST {PATH_KMS}, responses sealed to the client); protocol v1 sent data keys in the clear: upgrade the client to this version of sqlite-tde"
            )));
            *r.status_mut() = StatusCode::UPGRADE_REQUIRED;
            return Ok(r);
        }
        _ => {
            return Ok(error_response(&KmsError::InvalidRequest(format!(
                "no such endpoint {} {} (use POST {PATH_KMS})",
                req.method(),
                req.uri().path()
            ))))
        }
    }
    let auth = req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_string);
    let Some(recipient) = req.headers().get(HEADER_RECIPIENT).and_then(|v| v.to_str().ok()).map(str::to_string) else {
        return Ok(error_response(&KmsError::InvalidRequest(format!(
            "protocol v{PROTOCOL} needs the client's X25519 public key in the {HEADER_RECIPIENT} header"
        ))));
    };
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Ok(error_response(&KmsError::InvalidRequest(format!("cannot read request body: {e}")))),
    };
    let request: Request = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return Ok(error_response(&KmsError::InvalidRequest(format!("malformed request: {e}")))),
    };
    let result = tokio::task::spawn_blocking(move || {
        let principal = shared.principal(uid, auth.as_deref())?;
        shared.kms.handle(&principal, &request)
    })
    .await;
    Ok(match result {
        // The JSON (which may hold a data key or a secret) is wiped when `bytes` drops; only the
        // sealed copy reaches hyper's buffers.
        Ok(Ok(bytes)) => match seal(&recipient, &bytes) {
            Ok(sealed) => Response::builder()
                .status(StatusCode::OK)
                .header(CONTENT_TYPE, CONTENT_TYPE_SEALED)
                .body(Full::new(Bytes::from(sealed)))
                .expect("valid response"),
            Err(e) => error_response(&e),
        },
        Ok(Err(e)) => error_response(&e),
        Err(e) => error_response(&KmsError::Unavailable(format!("request failed: {e}"))),
    })
}

/// Remove a stale socket file; refuse to replace a live daemon or a non-socket file.
fn prepare_socket_path(path: &Path) -> Result<(), KmsError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(KmsError::InvalidRequest(format!(
                    "another process is already listening on {}",
                    path.display()
                )));
            }
            std::fs::remove_file(path)
                .map_err(|e| KmsError::Unavailable(format!("cannot remove stale socket {}: {e}", path.display())))
        }
        Ok(_) => Err(KmsError::InvalidRequest(format!("{} exists and is not a socket", path.display()))),
        Err(_) => Ok(()),
    }
}

/// Serve until SIGINT or SIGTERM. Prints `listening on unix:PATH` on stdout once ready.
pub fn serve(kms: Arc<LocalKms>, opts: ServeOptions) -> Result<(), KmsError> {
    if opts.mode & 0o007 != 0 {
        return Err(KmsError::InvalidRequest("the socket must not be accessible to others (use 0600 or 0660)".into()));
    }
    // Open the keystore (and create it with its root key) before accepting anyone.
    kms.open_or_create()?;
    kms.op_list_aliases(crate::local::SERVICE_PRINCIPAL)?;
    // One thread for the protocol; KMS work (file I/O, fsync) runs on the blocking pool.
    let rt = tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(16)
        .enable_all()
        .build()
        .map_err(|e| KmsError::Unavailable(format!("cannot start runtime: {e}")))?;
    rt.block_on(run(kms, opts))
}

async fn run(kms: Arc<LocalKms>, opts: ServeOptions) -> Result<(), KmsError> {
    use tokio::signal::unix::{signal, SignalKind};
    prepare_socket_path(&opts.socket)?;
    let listener = tokio::net::UnixListener::bind(&opts.socket)
        .map_err(|e| KmsError::Unavailable(format!("cannot listen on {}: {e}", opts.socket.display())))?;
    let cleanup = SocketGuard(opts.socket.clone());
    if let Some(gid) = opts.group {
        std::os::unix::fs::chown(&opts.socket, None, Some(gid))
            .map_err(|e| KmsError::Unavailable(format!("cannot set the socket's group: {e}")))?;
    }
    std::fs::set_permissions(&opts.socket, std::fs::Permissions::from_mode(opts.mode))
        .map_err(|e| KmsError::Unavailable(format!("cannot set the socket's mode: {e}")))?;
    let shared = Arc::new(Shared { kms, uid_map: opts.uid_map.clone() });
    let mut term = signal(SignalKind::terminate()).map_err(|e| KmsError::Unavailable(e.to_string()))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| KmsError::Unavailable(e.to_string()))?;
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on unix:{}", opts.socket.display());
        let _ = out.flush();
    }
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(s) => s,
                    Err(e) => { eprintln!("sqlite-tde kms serve: accept failed: {e}"); continue; }
                };
                let uid = match stream.peer_cred() {
                    Ok(c) => c.uid(),
                    Err(e) => { eprintln!("sqlite-tde kms serve: no peer credentials: {e}"); continue; }
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(shared.clone(), uid, req));
                    if let Err(e) = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await {
                        if !e.is_incomplete_message() {
                            eprintln!("sqlite-tde kms serve: connection error: {e}");
                        }
                    }
                });
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    drop(cleanup);
    Ok(())
}

struct SocketGuard(PathBuf);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

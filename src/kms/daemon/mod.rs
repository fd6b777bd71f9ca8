//! The KMS as its own process: `sqlite-tde kms serve --socket PATH` answers the request API
//! (`api::Request`) as HTTP/1.1 + JSON on a Unix domain socket (hyper on tokio), so CMK
//! material and the root key stay in the daemon's process and the application only ever
//! holds data keys.
//!
//! Protocol: `POST /v1/kms` with the JSON of one `Request` (externally tagged, e.g.
//! `{"DisableKey":{"key":"alias/app"}}`); `200` with the operation's JSON response, or an
//! error status with `{"error": {"code", "message", "key", ...}}` (`api::WireError`).
//! `GET /v1/health` answers `{"status":"ok"}`.
//!
//! Principals: a valid `Authorization: Bearer TOKEN` names its principal (tokens are stored
//! as SHA-256 digests in `kmsd.json`); otherwise the peer's uid from SO_PEERCRED, mapped by
//! `kmsd.json` / `--map-uid`, else the uid's OS user name. The socket is created 0600 (or
//! 0660 with a group), and the keystore directory stays 0700: a client needs no access to
//! it.

pub mod client;
pub mod config;
pub mod server;

pub use client::UnixKms;
pub use config::DaemonConfig;
pub use server::{serve, ServeOptions};

/// Environment variable with a bearer token for the daemon.
pub const ENV_TOKEN: &str = "SQLITE_TDE_KMS_TOKEN";
/// Environment variable: the uid the KMS daemon runs as, when it is neither root nor the
/// client's own user. A client talks only to a daemon whose peer credentials
/// (`SO_PEERCRED`) show root, its own uid, or this one.
pub const ENV_DAEMON_UID: &str = "SQLITE_TDE_KMS_DAEMON_UID";
/// Environment variable naming a file holding the bearer token.
pub const ENV_TOKEN_FILE: &str = "SQLITE_TDE_KMS_TOKEN_FILE";
/// Largest request body the daemon reads.
pub const MAX_BODY: usize = 1 << 20;
/// The request path.
pub const PATH_KMS: &str = "/v1/kms";
pub const PATH_HEALTH: &str = "/v1/health";

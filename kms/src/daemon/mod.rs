//! The KMS as its own process: `sqlite-tde kms serve --socket PATH` answers the request API
//! (`api::Request`) as HTTP/1.1 + JSON on a Unix domain socket (hyper on tokio), so CMK
//! material and the root key stay in the daemon's process and the application only ever
//! holds data keys (received sealed, see [`seal`], so none lingers in HTTP buffers).
//!
//! Protocol v2: `POST /v2/kms` with the JSON of one `Request` (externally tagged, e.g.
//! `{"DisableKey":{"key":"alias/app"}}`) and the client's per-request X25519 public key in
//! `X-TDE-Recipient`; `200` with the operation's JSON response sealed to that key
//! ([`seal`]: data keys and secret values never cross in the clear), or an error status with
//! `{"error": {"code", "message", "key", ...}}` (`api::WireError`, not sealed: errors carry
//! no secrets). Protocol v1 (`POST /v1/kms`, plaintext responses) is refused with 426 and a
//! message naming the upgrade; a v2 client talking to a v1 daemon says so too.
//! `GET /v1/health` answers `{"status":"ok","protocol":2}`.
//!
//! Principals: a valid `Authorization: Bearer TOKEN` names its principal (tokens are stored
//! as SHA-256 digests in `kmsd.json`); otherwise the peer's uid from SO_PEERCRED, mapped by
//! `kmsd.json` / `--map-uid`, else the uid's OS user name. The socket is created 0600 (or
//! 0660 with a group), and the keystore directory stays 0700: a client needs no access to
//! it.

pub mod client;
pub mod config;
pub mod seal;
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
/// The request path (protocol v2: sealed responses).
pub const PATH_KMS: &str = "/v2/kms";
/// The protocol v1 request path (plaintext responses), refused with a clear message.
pub const PATH_KMS_V1: &str = "/v1/kms";
/// The protocol this build speaks.
pub const PROTOCOL: u32 = 2;
pub const PATH_HEALTH: &str = "/v1/health";

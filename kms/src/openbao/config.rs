//! Configuration of the transit provider: which key, which credentials, how long to wait.
//!
//! Secrets (tokens, AppRole secret IDs) come from the environment or from files, never from
//! the key URI or a command-line argument: the URI is written into every database header and
//! argument vectors are visible to every user of the host (`/proc/PID/cmdline`).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use zeroize::Zeroizing;

use super::uri::TransitKeyUri;
use crate::KmsError;

/// Token, first choice (OpenBao's own variable).
pub const ENV_BAO_TOKEN: &str = "BAO_TOKEN";
/// Token, second choice (Vault's variable, also read by `bao`).
pub const ENV_VAULT_TOKEN: &str = "VAULT_TOKEN";
/// File holding the token (re-read before every request, so a sidecar such as `bao agent`
/// can rotate it).
pub const ENV_TOKEN_FILE: &str = "SQLITE_TDE_BAO_TOKEN_FILE";
/// AppRole role ID (selects AppRole login).
pub const ENV_ROLE_ID: &str = "SQLITE_TDE_BAO_ROLE_ID";
/// AppRole secret ID.
pub const ENV_SECRET_ID: &str = "SQLITE_TDE_BAO_SECRET_ID";
/// File holding the AppRole secret ID (read at each login).
pub const ENV_SECRET_ID_FILE: &str = "SQLITE_TDE_BAO_SECRET_ID_FILE";
/// Mount path of the AppRole auth method (default `approle`).
pub const ENV_APPROLE_MOUNT: &str = "SQLITE_TDE_BAO_APPROLE_MOUNT";
/// PEM file of the CA that signed the server certificate (`https` only); `VAULT_CACERT` is
/// read too.
pub const ENV_CACERT: &str = "BAO_CACERT";
/// PEM client certificate for mutual TLS (with [`ENV_CLIENT_KEY`]); `VAULT_CLIENT_CERT` too.
pub const ENV_CLIENT_CERT: &str = "BAO_CLIENT_CERT";
/// PEM private key of the client certificate; `VAULT_CLIENT_KEY` too.
pub const ENV_CLIENT_KEY: &str = "BAO_CLIENT_KEY";
/// Namespace sent as `X-Vault-Namespace`; `VAULT_NAMESPACE` too.
pub const ENV_NAMESPACE: &str = "BAO_NAMESPACE";
/// Transit mounts or keys besides the configured key's mount that headers and SQL may name
/// (comma-separated `MOUNT` or `MOUNT/KEY`).
pub const ENV_TRANSIT_ALLOW: &str = "SQLITE_TDE_BAO_TRANSIT_ALLOW";
/// `1` allows `openbao+http://` to a host other than loopback (the token and data keys then
/// cross the network in the clear; a warning is printed).
pub const ENV_ALLOW_INSECURE_HTTP: &str = "SQLITE_TDE_BAO_ALLOW_INSECURE_HTTP";
/// Per-attempt connect + response timeout in milliseconds.
pub const ENV_TIMEOUT_MS: &str = "SQLITE_TDE_KMS_TIMEOUT_MS";
/// Retries after the first attempt on timeouts, connection failures, 429 and 5xx.
pub const ENV_RETRIES: &str = "SQLITE_TDE_KMS_RETRIES";

/// Default per-attempt timeout: long enough for a loaded cluster across a data centre, short
/// enough that an open against a dead KMS fails within seconds.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(3000);
/// Default retries (3 attempts in all).
pub const DEFAULT_RETRIES: u32 = 2;
/// Upper bound of [`ENV_RETRIES`], so a typo cannot turn a dead KMS into a hung open.
pub const MAX_RETRIES: u32 = 10;

/// A secret given by value or by a file read when it is needed.
pub enum Secret {
    /// The secret itself (from the environment or the embedding application).
    Value(SecretString),
    /// A file holding it (surrounding whitespace ignored).
    File(PathBuf),
}

impl Secret {
    /// A secret given by value.
    pub fn value(s: impl Into<String>) -> Secret {
        Secret::Value(SecretString::from(s.into()))
    }

    /// Current value (a file is read now).
    pub(crate) fn load(&self, what: &str) -> Result<SecretString, KmsError> {
        match self {
            Secret::Value(v) => Ok(v.clone()),
            Secret::File(p) => {
                let raw = Zeroizing::new(std::fs::read_to_string(p).map_err(|e| {
                    KmsError::InvalidRequest(format!("cannot read the {what} file {}: {e}", p.display()))
                })?);
                let trimmed = raw.trim();
                if trimmed.is_empty() {
                    return Err(KmsError::InvalidRequest(format!("the {what} file {} is empty", p.display())));
                }
                Ok(SecretString::from(trimmed.to_string()))
            }
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Value(_) => f.write_str("Secret([REDACTED])"),
            Secret::File(p) => f.debug_tuple("Secret::File").field(p).finish(),
        }
    }
}

/// How the provider authenticates to the server.
pub enum Credentials {
    /// A token (service or batch), by value or in a file. `source` says where it came from,
    /// for error messages (`$BAO_TOKEN`, `file /run/bao/token`, ...).
    Token { token: Secret, source: String },
    /// AppRole login (`POST /v1/auth/MOUNT/login`); the token it returns is kept in memory
    /// and renewed by logging in again shortly before its TTL runs out, or after a 403.
    AppRole { mount: String, role_id: String, secret_id: Secret },
}

impl Credentials {
    /// A token given by the embedding application.
    pub fn token(token: impl Into<String>) -> Credentials {
        Credentials::Token { token: Secret::value(token), source: "the embedding application".into() }
    }

    /// Who we are, for "access denied" messages (never the secret).
    pub(crate) fn principal(&self) -> String {
        match self {
            Credentials::Token { source, .. } => format!("token from {source}"),
            Credentials::AppRole { mount, role_id, .. } => {
                let shown: String = role_id.chars().take(8).collect();
                format!("AppRole {shown}... (auth/{mount})")
            }
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Token { token, source } => {
                f.debug_struct("Token").field("token", token).field("source", source).finish()
            }
            Credentials::AppRole { mount, secret_id, .. } => f
                .debug_struct("AppRole")
                .field("mount", mount)
                .field("role_id", &"[REDACTED]")
                .field("secret_id", secret_id)
                .finish(),
        }
    }
}

/// Everything the provider needs. Build with [`OpenBaoConfig::new`] (explicit) or
/// [`OpenBaoConfig::from_env`].
#[derive(Debug)]
pub struct OpenBaoConfig {
    /// The default key (and the server all requests go to).
    pub key: TransitKeyUri,
    /// Authentication.
    pub credentials: Credentials,
    /// Per-attempt timeout covering connect, TLS handshake, request and response.
    pub timeout: Duration,
    /// Retries after the first attempt for transient failures (timeouts, refused or reset
    /// connections, 412, 429, 5xx), with exponential backoff from 100 ms.
    pub retries: u32,
    /// PEM CA bundle to verify the server (`https`); `None`: the Mozilla root set.
    pub ca_cert: Option<PathBuf>,
    /// PEM client certificate and key for mutual TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Namespace (`X-Vault-Namespace`).
    pub namespace: Option<String>,
    /// Allow `openbao+http://` to a non-loopback host (refused otherwise).
    pub allow_insecure_http: bool,
    /// Transit keys besides the configured one that a database header, a URI `key=`,
    /// `PRAGMA tde_key` or `PRAGMA tde_rewrap` may name: `MOUNT` (any key of that mount) or
    /// `MOUNT/KEY`. Empty: keys of the configured key's mount only. Nothing at run time widens
    /// it, so SQL cannot send a data key to a mount that is not a transit engine the
    /// application chose (`SQLITE_TDE_BAO_TRANSIT_ALLOW`, comma-separated).
    pub transit_allow: Vec<String>,
}

impl OpenBaoConfig {
    /// A configuration for the key `uri` with explicit credentials and default timeouts.
    pub fn new(uri: &str, credentials: Credentials) -> Result<OpenBaoConfig, KmsError> {
        Ok(OpenBaoConfig {
            key: TransitKeyUri::parse(uri)?,
            credentials,
            timeout: DEFAULT_TIMEOUT,
            retries: DEFAULT_RETRIES,
            ca_cert: None,
            client_cert: None,
            namespace: None,
            allow_insecure_http: false,
            transit_allow: Vec::new(),
        })
    }

    /// Allow these transit mounts (`MOUNT`) or keys (`MOUNT/KEY`) besides the configured key's
    /// mount ([`OpenBaoConfig::transit_allow`]).
    pub fn with_transit_allow(mut self, entries: &[&str]) -> Result<Self, KmsError> {
        for e in entries {
            let e = e.trim().trim_matches('/');
            // `MOUNT` or `MOUNT/KEY`: every segment a valid mount segment (a key name is one too).
            if e.is_empty() || !e.split('/').all(super::uri::valid_mount_segment) {
                return Err(KmsError::InvalidRequest(format!(
                    "{ENV_TRANSIT_ALLOW}: '{e}' is not a transit mount path (MOUNT) or key (MOUNT/KEY)"
                )));
            }
            self.transit_allow.push(e.to_string());
        }
        Ok(self)
    }

    /// Allow plain `http` to a host other than loopback: the token and every data key cross
    /// the network readable by anyone on the path. For isolated test networks only.
    pub fn with_insecure_http(mut self, allow: bool) -> Self {
        self.allow_insecure_http = allow;
        self
    }

    /// Set the per-attempt timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Set the number of retries.
    pub fn with_retries(mut self, retries: u32) -> Self {
        self.retries = retries.min(MAX_RETRIES);
        self
    }

    /// Verify the server with this PEM CA bundle.
    pub fn with_ca_cert(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_cert = Some(path.into());
        self
    }

    /// Configuration from the process environment (see the `ENV_*` constants).
    pub fn from_env(uri: &str) -> Result<OpenBaoConfig, KmsError> {
        Self::from_lookup(uri, |name| std::env::var(name).ok())
    }

    /// Configuration from any variable lookup (the environment, or a map in tests). Empty
    /// values count as unset. Exactly one kind of credentials must be given: a token
    /// (`BAO_TOKEN`, else `VAULT_TOKEN`), a token file, or an AppRole.
    pub fn from_lookup(uri: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<OpenBaoConfig, KmsError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let first = |names: &[&str]| names.iter().find_map(|n| get(n));

        let token_env = [ENV_BAO_TOKEN, ENV_VAULT_TOKEN].into_iter().find(|n| get(n).is_some());
        let token_file = get(ENV_TOKEN_FILE);
        let role_id = get(ENV_ROLE_ID);
        let kinds = [token_env.is_some(), token_file.is_some(), role_id.is_some()];
        if kinds.iter().filter(|&&k| k).count() > 1 {
            return Err(KmsError::InvalidRequest(format!(
                "ambiguous OpenBao credentials: set only one of {ENV_BAO_TOKEN}/{ENV_VAULT_TOKEN}, {ENV_TOKEN_FILE}, {ENV_ROLE_ID}"
            )));
        }
        let credentials = if let Some(name) = token_env {
            // Held in a zeroizing secret from here on; the environment copy is the OS's.
            let token = Secret::Value(SecretString::from(get(name).unwrap_or_default().trim().to_string()));
            Credentials::Token { token, source: format!("${name}") }
        } else if let Some(path) = token_file {
            Credentials::Token { token: Secret::File(PathBuf::from(&path)), source: format!("file {path}") }
        } else if let Some(role_id) = role_id {
            let secret_id = match (get(ENV_SECRET_ID), get(ENV_SECRET_ID_FILE)) {
                (Some(v), None) => Secret::Value(SecretString::from(v)),
                (None, Some(p)) => Secret::File(PathBuf::from(p)),
                (Some(_), Some(_)) => {
                    return Err(KmsError::InvalidRequest(format!(
                        "set only one of {ENV_SECRET_ID} and {ENV_SECRET_ID_FILE}"
                    )))
                }
                (None, None) => {
                    return Err(KmsError::InvalidRequest(format!(
                        "{ENV_ROLE_ID} is set but neither {ENV_SECRET_ID} nor {ENV_SECRET_ID_FILE}"
                    )))
                }
            };
            let mount = get(ENV_APPROLE_MOUNT).unwrap_or_else(|| "approle".into());
            let mount = mount.trim_matches('/').to_string();
            Credentials::AppRole { mount, role_id: role_id.trim().to_string(), secret_id }
        } else {
            return Err(KmsError::InvalidRequest(format!(
                "no OpenBao credentials: set {ENV_BAO_TOKEN} (or {ENV_VAULT_TOKEN}), {ENV_TOKEN_FILE}, or {ENV_ROLE_ID} with {ENV_SECRET_ID}/{ENV_SECRET_ID_FILE}"
            )));
        };

        let mut config = OpenBaoConfig::new(uri, credentials)?;
        if let Some(ms) = get(ENV_TIMEOUT_MS) {
            let ms: u64 = ms.trim().parse().ok().filter(|&m| m > 0).ok_or_else(|| {
                KmsError::InvalidRequest(format!(
                    "{ENV_TIMEOUT_MS} must be a positive number of milliseconds, not '{ms}'"
                ))
            })?;
            config.timeout = Duration::from_millis(ms);
        }
        if let Some(r) = get(ENV_RETRIES) {
            let r: u32 = r.trim().parse().ok().filter(|&r| r <= MAX_RETRIES).ok_or_else(|| {
                KmsError::InvalidRequest(format!("{ENV_RETRIES} must be a number from 0 to {MAX_RETRIES}, not '{r}'"))
            })?;
            config.retries = r;
        }
        if let Some(list) = get(ENV_TRANSIT_ALLOW) {
            let entries: Vec<&str> = list.split(',').map(str::trim).filter(|e| !e.is_empty()).collect();
            config = config.with_transit_allow(&entries)?;
        }
        if let Some(v) = get(ENV_ALLOW_INSECURE_HTTP) {
            config.allow_insecure_http = match v.trim() {
                "1" | "true" | "yes" => true,
                "0" | "false" | "no" => false,
                other => {
                    return Err(KmsError::InvalidRequest(format!(
                        "{ENV_ALLOW_INSECURE_HTTP} must be 1 or 0, not '{other}'"
                    )))
                }
            };
        }
        config.ca_cert = first(&[ENV_CACERT, "VAULT_CACERT"]).map(PathBuf::from);
        match (first(&[ENV_CLIENT_CERT, "VAULT_CLIENT_CERT"]), first(&[ENV_CLIENT_KEY, "VAULT_CLIENT_KEY"])) {
            (Some(c), Some(k)) => config.client_cert = Some((PathBuf::from(c), PathBuf::from(k))),
            (None, None) => {}
            _ => {
                return Err(KmsError::InvalidRequest(format!(
                    "set both {ENV_CLIENT_CERT} and {ENV_CLIENT_KEY} for mutual TLS, or neither"
                )))
            }
        }
        config.namespace = first(&[ENV_NAMESPACE, "VAULT_NAMESPACE"]);
        if first(&["BAO_SKIP_VERIFY", "VAULT_SKIP_VERIFY"]).is_some_and(|v| v != "0" && v != "false") {
            // Refused rather than ignored: an operator who sets it believes verification is
            // off, and turning it off would hand the token and every DEK to any interceptor.
            return Err(KmsError::InvalidRequest(
                "BAO_SKIP_VERIFY/VAULT_SKIP_VERIFY is not supported: give the server's CA with BAO_CACERT instead"
                    .into(),
            ));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use secrecy::ExposeSecret;

    use super::*;

    const URI: &str = "openbao+http://127.0.0.1:8200/transit/db";

    fn cfg(vars: &[(&str, &str)]) -> Result<OpenBaoConfig, KmsError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        OpenBaoConfig::from_lookup(URI, |n| map.get(n).cloned())
    }

    #[test]
    fn token_sources_and_precedence() {
        let c = cfg(&[("BAO_TOKEN", " s.abc \n"), ("VAULT_TOKEN", "other")]).unwrap();
        match &c.credentials {
            Credentials::Token { token: Secret::Value(v), source } => {
                assert_eq!(v.expose_secret(), "s.abc");
                assert_eq!(source, "$BAO_TOKEN");
            }
            other => panic!("{other:?}"),
        }
        let c = cfg(&[("VAULT_TOKEN", "v")]).unwrap();
        assert!(matches!(&c.credentials, Credentials::Token { source, .. } if source == "$VAULT_TOKEN"));
        let c = cfg(&[(ENV_TOKEN_FILE, "/run/bao/token")]).unwrap();
        assert!(matches!(&c.credentials, Credentials::Token { token: Secret::File(_), .. }));
        // Empty counts as unset.
        assert!(cfg(&[("BAO_TOKEN", ""), (ENV_TOKEN_FILE, "/t")]).is_ok());
        assert!(cfg(&[("BAO_TOKEN", "x"), (ENV_TOKEN_FILE, "/t")]).is_err());
        assert!(cfg(&[]).unwrap_err().to_string().contains("no OpenBao credentials"));
    }

    #[test]
    fn approle_and_limits() {
        let c =
            cfg(&[(ENV_ROLE_ID, "role-1234567890"), (ENV_SECRET_ID, "sec"), (ENV_APPROLE_MOUNT, "/auth-x/")]).unwrap();
        match &c.credentials {
            Credentials::AppRole { mount, role_id, .. } => {
                assert_eq!((mount.as_str(), role_id.as_str()), ("auth-x", "role-1234567890"))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(c.credentials.principal(), "AppRole role-123... (auth/auth-x)");
        assert!(cfg(&[(ENV_ROLE_ID, "r")]).is_err());
        assert!(cfg(&[(ENV_ROLE_ID, "r"), (ENV_SECRET_ID, "s"), ("BAO_TOKEN", "t")]).is_err());

        let c = cfg(&[("BAO_TOKEN", "t"), (ENV_TIMEOUT_MS, "250"), (ENV_RETRIES, "0")]).unwrap();
        assert_eq!((c.timeout, c.retries), (Duration::from_millis(250), 0));
        assert!(cfg(&[("BAO_TOKEN", "t"), (ENV_TIMEOUT_MS, "0")]).is_err());
        assert!(cfg(&[("BAO_TOKEN", "t"), (ENV_RETRIES, "1000")]).is_err());
        assert!(cfg(&[("BAO_TOKEN", "t"), ("BAO_SKIP_VERIFY", "1")]).is_err());
        assert!(cfg(&[("BAO_TOKEN", "t"), (ENV_CLIENT_CERT, "/c")]).is_err());
    }

    #[test]
    fn debug_never_shows_secrets() {
        let c = cfg(&[("BAO_TOKEN", "s.supersecret")]).unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("supersecret"), "{shown}");
        let c = cfg(&[(ENV_ROLE_ID, "role-id-value"), (ENV_SECRET_ID, "secret-id-value")]).unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("secret-id-value") && !shown.contains("role-id-value"), "{shown}");
    }
}

//! OpenBao / HashiCorp Vault **transit** as the KMS: the CMK lives in a (clustered) server,
//! each database's DEK is generated there (`datakey`, 512 bits) and unwrapped there
//! (`decrypt`) at cold opens. The same HTTP API serves OpenBao and Vault.
//!
//! * Key URI (recorded in each database header): `openbao+http(s)://HOST:PORT/MOUNT/KEY`; the
//!   header's key version is the transit key version, parsed from the `vault:vN:` prefix of
//!   the wrapped DEK (the transit ciphertext, stored verbatim).
//! * Binding: every `datakey`/`decrypt`/`encrypt` sends the encryption context as
//!   `associated_data` (AEAD key types such as `aes256-gcm96`), the compact JSON of its
//!   pairs, e.g. `{"sqlite-tde:db":"<uuid>"}`. A wrapped DEK copied into another database's
//!   header therefore fails to decrypt. A server that ignores `associated_data` (it answers
//!   with a warning) is refused rather than silently losing the binding.
//! * Rewrap: transit's `/rewrap` endpoint cannot carry `associated_data` (OpenBao 2.7 and
//!   Vault decrypt with no AAD there, so it fails on bound ciphertext), so
//!   [`Kms::rewrap_data_key`] is `decrypt` + `encrypt` to the newest key version. The
//!   plaintext DEK stays inside this module in zeroizing buffers and is not returned; the
//!   rewrapping host needs `update` on `MOUNT/decrypt/KEY` and `MOUNT/encrypt/KEY`.
//! * The server that is dialled is always the configured one ([`OpenBaoConfig::key`]); the
//!   host and port in a database header are a record, never an address we send a token to
//!   (a crafted file would otherwise exfiltrate the token). Mount and key come from the header.
//! * Secrets (token, secret ID, plaintext DEK in requests and answers) are held in zeroizing
//!   buffers sized up front and never appear in `Debug` output or error messages. Copies made
//!   inside the HTTP and TLS stack (header values, I/O buffers) are outside our control.
//! * Failures are classified into [`KmsError`]s: access denied (403: policy, expired or
//!   revoked token), key not found, version retired (below `min_decryption_version`), server
//!   unreachable or sealed (after bounded retries, see [`OpenBaoConfig::retries`]).

mod client;
mod config;
mod uri;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub use config::{
    Credentials, OpenBaoConfig, Secret, DEFAULT_RETRIES, DEFAULT_TIMEOUT, ENV_APPROLE_MOUNT, ENV_BAO_TOKEN, ENV_CACERT,
    ENV_CLIENT_CERT, ENV_CLIENT_KEY, ENV_NAMESPACE, ENV_RETRIES, ENV_ROLE_ID, ENV_SECRET_ID, ENV_SECRET_ID_FILE,
    ENV_TIMEOUT_MS, ENV_TOKEN_FILE, ENV_TRANSIT_ALLOW, ENV_VAULT_TOKEN, MAX_RETRIES,
};
pub use uri::{is_openbao_uri, TransitKeyUri, DEFAULT_PORT, PROVIDER_HTTP, PROVIDER_HTTPS};

use super::{EncryptionContext, GeneratedDataKey, Kms, KmsError, DEFAULT_KEY_ALIAS};
use crate::KeyRef;
use crate::{PlaintextDataKey as DataKey, DATA_KEY_LEN};
use client::{Client, Failure, SecretText};

/// Largest wrapped DEK a header slot can hold (FORMAT.md §1).
const WRAPPED_MAX: usize = 512;

/// Metadata of a transit key (`GET MOUNT/keys/KEY`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TransitKeyInfo {
    /// Key name.
    pub name: String,
    /// Key type (`aes256-gcm96`, ...).
    pub key_type: String,
    /// Newest version: what `datakey` and `encrypt` use.
    pub latest_version: u32,
    /// Versions below this no longer decrypt ("retired").
    pub min_decryption_version: u32,
    /// Lowest version `encrypt` may be asked to use (0: any).
    pub min_encryption_version: u32,
    /// Versions that exist, ascending.
    pub versions: Vec<u32>,
    /// Derived (convergent) key: not usable by sqlite-tde.
    pub derived: bool,
}

/// The transit provider. Cheap to share (`Arc<dyn Kms>`); one HTTP connection pool.
#[derive(Debug)]
pub struct OpenBaoKms {
    key: TransitKeyUri,
    /// [`OpenBaoConfig::transit_allow`].
    allow: Vec<String>,
    client: Client,
}

#[derive(Deserialize)]
struct Answer<T> {
    data: Option<T>,
    #[serde(default)]
    warnings: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct CiphertextData {
    ciphertext: String,
}

#[derive(Deserialize)]
struct DataKeyData {
    ciphertext: String,
    plaintext: SecretText,
}

#[derive(Deserialize)]
struct PlaintextData {
    plaintext: SecretText,
}

#[derive(Deserialize)]
struct KeyData {
    name: String,
    #[serde(rename = "type")]
    key_type: String,
    latest_version: u32,
    min_decryption_version: u32,
    #[serde(default)]
    min_encryption_version: u32,
    #[serde(default)]
    keys: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    derived: bool,
}

/// What a request does, for routing and error messages.
#[derive(Clone, Copy)]
enum Action {
    DataKey,
    Decrypt,
    Encrypt,
    ReadKey,
    CreateKey,
    Rotate,
    Configure,
}

impl Action {
    fn path(self, key: &TransitKeyUri) -> String {
        match self {
            Action::DataKey => key.op_path("datakey/plaintext"),
            Action::Decrypt => key.op_path("decrypt"),
            Action::Encrypt => key.op_path("encrypt"),
            Action::ReadKey | Action::CreateKey => key.op_path("keys"),
            Action::Rotate => format!("{}/rotate", key.op_path("keys")),
            Action::Configure => format!("{}/config", key.op_path("keys")),
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Action::DataKey => "generate a data key",
            Action::Decrypt => "decrypt",
            Action::Encrypt => "encrypt",
            Action::ReadKey => "read",
            Action::CreateKey => "create",
            Action::Rotate => "rotate",
            Action::Configure => "configure",
        }
    }

    fn capability(self) -> &'static str {
        match self {
            Action::ReadKey => "read",
            _ => "update",
        }
    }
}

/// The transit key version of a ciphertext `vault:vN:...`.
pub fn ciphertext_version(ciphertext: &str) -> Option<u32> {
    let mut parts = ciphertext.splitn(3, ':');
    let prefix = parts.next()?;
    let version = parts.next()?.strip_prefix('v')?;
    parts.next()?;
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_lowercase()) || version.starts_with('0') {
        return None;
    }
    version.parse().ok().filter(|&v| v > 0)
}

/// The `associated_data` of a context: base64 of the compact JSON of its pairs (sorted by
/// key, so the encoding is canonical). Readable on purpose: an operator can reproduce it with
/// `printf '{"sqlite-tde:db":"UUID"}' | base64` to unwrap a DEK by hand.
fn associated_data(context: &EncryptionContext) -> String {
    let json = serde_json::to_vec(context.pairs()).unwrap_or_default();
    B64.encode(json)
}

/// Decode a base64 secret into a zeroizing buffer (capacity reserved up front, so the
/// decoder never reallocates and leaves stray copies).
fn decode_secret(b64: &str) -> Result<Zeroizing<Vec<u8>>, KmsError> {
    let mut out = Zeroizing::new(Vec::with_capacity(b64.len()));
    B64.decode_vec(b64.trim(), &mut out)
        .map_err(|_| KmsError::Unavailable("the server returned a data key that is not valid base64".into()))?;
    Ok(out)
}

fn data_key(b64: &SecretText) -> Result<DataKey, KmsError> {
    let bytes = decode_secret(&b64.0)?;
    if bytes.len() != DATA_KEY_LEN {
        return Err(KmsError::InvalidRequest(format!(
            "the server returned a {}-byte data key, expected {DATA_KEY_LEN} (bits=512)",
            bytes.len()
        )));
    }
    DataKey::from_slice(&bytes)
}

impl OpenBaoKms {
    /// A provider for `config` (no network traffic until the first KMS call).
    pub fn new(config: OpenBaoConfig) -> Result<OpenBaoKms, KmsError> {
        let key = config.key.clone();
        let allow = config.transit_allow.clone();
        Ok(OpenBaoKms { key, allow, client: Client::new(config)? })
    }

    /// Only the configured key's mount and the configured allow-list may receive data keys:
    /// a header or SQL naming `kv/app/loot` would otherwise make the provider post a plaintext
    /// DEK to a key-value mount, or decrypt with a key the application never chose.
    fn check_allowed(&self, u: &TransitKeyUri) -> Result<(), KmsError> {
        let mount_key = format!("{}/{}", u.mount(), u.key());
        if u.mount() == self.key.mount() || self.allow.iter().any(|a| *a == u.mount() || *a == mount_key) {
            return Ok(());
        }
        Err(KmsError::InvalidRequest(format!(
            "transit key '{mount_key}' on {} is outside this application's allowed transit mounts ('{}'{}); \
             allow it with {} (SQL and database headers cannot widen the list)",
            self.client.base(),
            self.key.mount(),
            self.allow.iter().map(|a| format!(", '{a}'")).collect::<String>(),
            config::ENV_TRANSIT_ALLOW
        )))
    }

    /// A provider for the key `uri`, configured from the environment
    /// ([`OpenBaoConfig::from_env`]).
    pub fn from_env(uri: &str) -> Result<OpenBaoKms, KmsError> {
        Self::new(OpenBaoConfig::from_env(uri)?)
    }

    /// The configured (default) key.
    pub fn key_uri(&self) -> &TransitKeyUri {
        &self.key
    }

    /// Interpret a key argument: `alias/sqlite-tde/default` (the VFS default) or empty is the
    /// configured key; `NAME` is a key of the configured mount, `MOUNT/NAME` one of another
    /// mount; a full `openbao+http(s)://` URI must name the configured server.
    pub fn resolve_key(&self, key: &str) -> Result<TransitKeyUri, KmsError> {
        if key.is_empty() || key == DEFAULT_KEY_ALIAS {
            return Ok(self.key.clone());
        }
        if is_openbao_uri(key) {
            let u = TransitKeyUri::parse(key)?;
            if !u.same_server(&self.key) {
                return Err(KmsError::InvalidRequest(format!(
                    "key {key} is on another server than the configured {}; one process talks to one OpenBao cluster",
                    self.client.base()
                )));
            }
            self.check_allowed(&u)?;
            return Ok(u);
        }
        if key.starts_with("alias/") {
            return Err(KmsError::InvalidRequest(format!(
                "transit keys have no aliases: name a key of mount '{}' (e.g. '{}') or give a full openbao URI",
                self.key.mount(),
                self.key.key()
            )));
        }
        let u = self.key.relative(key).ok_or_else(|| {
            KmsError::InvalidRequest(format!("invalid transit key name '{key}' (NAME or MOUNT/NAME)"))
        })?;
        self.check_allowed(&u)?;
        Ok(u)
    }

    /// Send one request and map failures to [`KmsError`]s naming the key and the action.
    fn call(
        &self,
        key: &TransitKeyUri,
        action: Action,
        body: Option<&[u8]>,
        version: Option<u32>,
    ) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let path = action.path(key);
        let result = match body {
            Some(b) => self.client.post(&path, b),
            None => self.client.get(&path),
        };
        result.map_err(|f| self.map_failure(f, key, action, &path, version))
    }

    /// "Not found" names OpenBao, the mount and the key: the local keystore has nothing to do
    /// with it.
    fn missing_key(&self, key: &TransitKeyUri) -> String {
        format!(
            "{key} (OpenBao at {} has no transit key '{}' in mount '{}', or this token may not see it)",
            self.client.base(),
            key.key(),
            key.mount()
        )
    }

    fn map_failure(
        &self,
        failure: Failure,
        key: &TransitKeyUri,
        action: Action,
        path: &str,
        version: Option<u32>,
    ) -> KmsError {
        let uri = key.to_string();
        let version_text = version.map(|v| format!("version {v}")).unwrap_or_else(|| "this version".into());
        match failure {
            Failure::Local(e) => e,
            Failure::Login { status, errors } => KmsError::AccessDenied {
                principal: self.client.principal(),
                action: format!("log in to {} ({status}: {})", self.client.base(), errors.join("; ")),
                key: uri,
            },
            Failure::Transport { detail, attempts, elapsed, retryable } => {
                let tries = if retryable {
                    format!(
                        "; gave up after {attempts} attempt(s) in {:.1} s ({})",
                        elapsed.as_secs_f64(),
                        self.client.budget()
                    )
                } else {
                    String::new()
                };
                KmsError::Unavailable(format!(
                    "cannot reach OpenBao at {} to {} with {uri}: {detail}{tries}",
                    self.client.base(),
                    action.verb()
                ))
            }
            Failure::Status { status, errors } => {
                let msg = errors.join("; ");
                let lower = msg.to_ascii_lowercase();
                match status {
                    403 => KmsError::AccessDenied {
                        principal: self.client.principal(),
                        action: format!(
                            "{} ({} on {path} is not granted, or the token expired or was revoked)",
                            action.verb(),
                            action.capability()
                        ),
                        key: uri,
                    },
                    404 if lower.contains("no handler for route") => {
                        KmsError::NotFound(format!("{uri}: no transit secrets engine is mounted at '{}'", key.mount()))
                    }
                    404 => KmsError::NotFound(self.missing_key(key)),
                    400 if lower.contains("key not found") => KmsError::NotFound(self.missing_key(key)),
                    400 if lower.contains("too old") => KmsError::NotUsable {
                        key: uri,
                        reason: format!(
                            "{version_text} is retired (below the key's min_decryption_version); rewrap databases before \
                             raising it. To recover this one: lower min_decryption_version, run `sqlite-tde rewrap`, raise it again"
                        ),
                    },
                    400 if lower.contains("too new") => KmsError::NotUsable {
                        key: uri,
                        reason: format!(
                            "{version_text} does not exist on this server (a different cluster, or the key was deleted and re-created)"
                        ),
                    },
                    400 if lower.contains("message authentication failed") || lower.contains("invalid ciphertext") => {
                        KmsError::InvalidCiphertext { key: uri }
                    }
                    400 if lower.contains("non-aead") => KmsError::NotUsable {
                        key: uri,
                        reason: format!(
                            "its type cannot bind a data key to its database (associated_data); use type aes256-gcm96 ({msg})"
                        ),
                    },
                    400 if lower.contains("derivation") || lower.contains("context") => KmsError::NotUsable {
                        key: uri,
                        reason: format!("derived (convergent) transit keys are not supported; use type aes256-gcm96 ({msg})"),
                    },
                    503 => KmsError::Unavailable(format!(
                        "OpenBao at {} is sealed or unavailable (503: {msg})",
                        self.client.base()
                    )),
                    429 | 500..=599 => KmsError::Unavailable(format!(
                        "OpenBao at {} failed to {} with {uri} ({status}: {msg}), also after {}",
                        self.client.base(),
                        action.verb(),
                        self.client.budget()
                    )),
                    _ => KmsError::NotUsable { key: uri, reason: format!("{} failed ({status}): {msg}", action.verb()) },
                }
            }
        }
    }

    /// Parse a 2xx answer's `data`, refusing answers whose warnings say `associated_data`
    /// was ignored (a server too old to bind the DEK to its database).
    fn data<T: for<'de> Deserialize<'de>>(
        &self,
        key: &TransitKeyUri,
        action: Action,
        body: &[u8],
    ) -> Result<T, KmsError> {
        let answer: Answer<T> = serde_json::from_slice(body).map_err(|e| {
            KmsError::Unavailable(format!("unexpected answer from {} to {}: {e}", self.client.base(), action.verb()))
        })?;
        if let Some(w) = answer.warnings.iter().flatten().find(|w| w.contains("associated_data")) {
            return Err(KmsError::NotUsable {
                key: key.to_string(),
                reason: format!("the server ignored associated_data ({w}); upgrade it, or use an AEAD key type such as aes256-gcm96"),
            });
        }
        answer.data.ok_or_else(|| {
            KmsError::Unavailable(format!("answer from {} to {} has no data", self.client.base(), action.verb()))
        })
    }

    /// Key and version of a ciphertext the server returned for `key`.
    fn key_ref(&self, key: &TransitKeyUri, ciphertext: &str) -> Result<KeyRef, KmsError> {
        let version = ciphertext_version(ciphertext).ok_or_else(|| {
            KmsError::Unavailable(format!(
                "the server returned a ciphertext without a vault:vN: version prefix for {key}"
            ))
        })?;
        if ciphertext.len() > WRAPPED_MAX {
            return Err(KmsError::NotUsable {
                key: key.to_string(),
                reason: format!(
                    "its ciphertext of {} bytes exceeds the {WRAPPED_MAX} bytes a header can hold",
                    ciphertext.len()
                ),
            });
        }
        Ok(KeyRef { uri: key.to_string(), version })
    }

    /// Where a header's key reference routes on the configured server.
    fn route(&self, key_ref: &KeyRef) -> Result<TransitKeyUri, KmsError> {
        if !is_openbao_uri(&key_ref.uri) {
            return Err(KmsError::InvalidRequest(format!(
                "the database key is held by provider '{}', but this process uses OpenBao ({})",
                key_ref.provider(),
                self.key
            )));
        }
        let recorded = TransitKeyUri::parse(&key_ref.uri)?;
        let routed = self.key.with_mount_and_key(recorded.mount(), recorded.key());
        self.check_allowed(&routed)?;
        Ok(routed)
    }

    fn decrypt(
        &self,
        key_ref: &KeyRef,
        wrapped: &[u8],
        context: &EncryptionContext,
    ) -> Result<(TransitKeyUri, DataKey), KmsError> {
        let key = self.route(key_ref)?;
        let ciphertext =
            std::str::from_utf8(wrapped).map_err(|_| KmsError::InvalidCiphertext { key: key_ref.uri.clone() })?;
        match ciphertext_version(ciphertext) {
            Some(v) if v == key_ref.version => {}
            // The header's version and the ciphertext disagree: the header was edited.
            _ => return Err(KmsError::InvalidCiphertext { key: key_ref.uri.clone() }),
        }
        let body = serde_json::to_vec(&serde_json::json!({
            "ciphertext": ciphertext,
            "associated_data": associated_data(context),
        }))
        .map_err(|e| KmsError::InvalidRequest(e.to_string()))?;
        let answer = self.call(&key, Action::Decrypt, Some(&body), Some(key_ref.version))?;
        let data: PlaintextData = self.data(&key, Action::Decrypt, &answer)?;
        Ok((key, data_key(&data.plaintext)?))
    }

    /// Key metadata (needs `read` on `MOUNT/keys/KEY`; application tokens normally lack it).
    pub fn key_info(&self, key: &str) -> Result<TransitKeyInfo, KmsError> {
        let key = self.resolve_key(key)?;
        let answer = self.call(&key, Action::ReadKey, None, None)?;
        let d: KeyData = self.data(&key, Action::ReadKey, &answer)?;
        Ok(key_info(d))
    }

    /// Create an `aes256-gcm96` transit key (an administrator's operation).
    pub fn create_key(&self, key: &str) -> Result<TransitKeyInfo, KmsError> {
        let key_uri = self.resolve_key(key)?;
        self.call(&key_uri, Action::CreateKey, Some(br#"{"type":"aes256-gcm96"}"#), None)?;
        self.key_info(key)
    }

    /// Rotate: a new key version becomes the one new DEKs and rewraps use. Existing databases
    /// keep opening with their version until it is retired.
    pub fn rotate_key(&self, key: &str) -> Result<TransitKeyInfo, KmsError> {
        let key_uri = self.resolve_key(key)?;
        self.call(&key_uri, Action::Rotate, Some(b"{}"), None)?;
        self.key_info(key)
    }

    /// Retire versions below `version`: DEKs wrapped by them no longer unwrap (rewrap first).
    pub fn set_min_decryption_version(&self, key: &str, version: u32) -> Result<TransitKeyInfo, KmsError> {
        let key_uri = self.resolve_key(key)?;
        let body = serde_json::to_vec(&serde_json::json!({ "min_decryption_version": version }))
            .map_err(|e| KmsError::InvalidRequest(e.to_string()))?;
        self.call(&key_uri, Action::Configure, Some(&body), None)?;
        self.key_info(key)
    }
}

fn key_info(d: KeyData) -> TransitKeyInfo {
    let mut versions: Vec<u32> = d.keys.keys().filter_map(|k| k.parse().ok()).collect();
    versions.sort_unstable();
    TransitKeyInfo {
        name: d.name,
        key_type: d.key_type,
        latest_version: d.latest_version,
        min_decryption_version: d.min_decryption_version,
        min_encryption_version: d.min_encryption_version,
        versions,
        derived: d.derived,
    }
}

impl Kms for OpenBaoKms {
    fn provider(&self) -> &str {
        self.key.provider()
    }

    fn newest_version(&self, key_uri: &str) -> Option<u32> {
        is_openbao_uri(key_uri).then(|| self.key_info(key_uri).ok().map(|k| k.latest_version)).flatten()
    }

    fn resolve_key_uri(&self, key: &str) -> Result<Option<String>, KmsError> {
        self.resolve_key(key).map(|k| Some(k.to_string()))
    }

    fn generate_data_key(&self, key: &str, context: &EncryptionContext) -> Result<GeneratedDataKey, KmsError> {
        let key = self.resolve_key(key)?;
        let body = serde_json::to_vec(&serde_json::json!({
            "bits": DATA_KEY_LEN * 8,
            "associated_data": associated_data(context),
        }))
        .map_err(|e| KmsError::InvalidRequest(e.to_string()))?;
        let answer = self.call(&key, Action::DataKey, Some(&body), None)?;
        let data: DataKeyData = self.data(&key, Action::DataKey, &answer)?;
        let plaintext = data_key(&data.plaintext)?;
        let key_ref = self.key_ref(&key, &data.ciphertext)?;
        Ok(GeneratedDataKey { plaintext, wrapped: data.ciphertext.into_bytes(), key: key_ref })
    }

    fn decrypt_data_key(
        &self,
        key_ref: &KeyRef,
        wrapped: &[u8],
        context: &EncryptionContext,
    ) -> Result<DataKey, KmsError> {
        self.decrypt(key_ref, wrapped, context).map(|(_, dek)| dek)
    }

    /// Decrypt, then encrypt under the newest version of `target` (default: the same key).
    /// See the module documentation for why this is not transit's `/rewrap`.
    fn rewrap_data_key(
        &self,
        key_ref: &KeyRef,
        wrapped: &[u8],
        context: &EncryptionContext,
        target: Option<&str>,
    ) -> Result<(Vec<u8>, KeyRef), KmsError> {
        let (source, dek) = self.decrypt(key_ref, wrapped, context)?;
        let target = match target {
            Some(t) => self.resolve_key(t)?,
            None => source,
        };
        let mut plaintext = Zeroizing::new(String::with_capacity(DATA_KEY_LEN * 2));
        B64.encode_string(dek.expose(), &mut plaintext);
        drop(dek);
        #[derive(Serialize)]
        struct EncryptRequest<'a> {
            plaintext: &'a str,
            associated_data: String,
        }
        let mut body = Zeroizing::new(Vec::with_capacity(1024));
        serde_json::to_writer(
            &mut *body,
            &EncryptRequest { plaintext: &plaintext, associated_data: associated_data(context) },
        )
        .map_err(|e| KmsError::InvalidRequest(e.to_string()))?;
        let answer = self.call(&target, Action::Encrypt, Some(&body), None)?;
        let data: CiphertextData = self.data(&target, Action::Encrypt, &answer)?;
        let new_ref = self.key_ref(&target, &data.ciphertext)?;
        Ok((data.ciphertext.into_bytes(), new_ref))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ciphertext_versions() {
        assert_eq!(ciphertext_version("vault:v1:abcd"), Some(1));
        assert_eq!(ciphertext_version("vault:v42:x:y"), Some(42));
        assert_eq!(ciphertext_version("vault:v0:abcd"), None);
        assert_eq!(ciphertext_version("vault:v01:abcd"), None);
        assert_eq!(ciphertext_version("vault:1:abcd"), None);
        assert_eq!(ciphertext_version("vault:v1"), None);
        assert_eq!(ciphertext_version("garbage"), None);
    }

    #[test]
    fn associated_data_is_readable_json() {
        let ctx = EncryptionContext::for_database(&[0x11; 16]);
        let ad = B64.decode(associated_data(&ctx)).unwrap();
        assert_eq!(std::str::from_utf8(&ad).unwrap(), r#"{"sqlite-tde:db":"11111111-1111-1111-1111-111111111111"}"#);
    }

    #[test]
    fn key_resolution() {
        let kms = OpenBaoKms::new(
            OpenBaoConfig::new("openbao+http://127.0.0.1:8200/transit/app", Credentials::token("t")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            kms.resolve_key(DEFAULT_KEY_ALIAS).unwrap().to_string(),
            "openbao+http://127.0.0.1:8200/transit/app"
        );
        assert_eq!(kms.resolve_key("other").unwrap().to_string(), "openbao+http://127.0.0.1:8200/transit/other");
        // Another mount only when the application allows it.
        assert!(kms.resolve_key("tr2/k").unwrap_err().to_string().contains("outside this application's allowed"));
        assert!(kms.resolve_key("openbao+http://127.0.0.1:8200/kv/app/loot").is_err());
        let allowing = OpenBaoKms::new(
            OpenBaoConfig::new("openbao+http://127.0.0.1:8200/transit/app", Credentials::token("t"))
                .unwrap()
                .with_transit_allow(&["tr2", "tr3/only"])
                .unwrap(),
        )
        .unwrap();
        assert_eq!(allowing.resolve_key("tr2/k").unwrap().to_string(), "openbao+http://127.0.0.1:8200/tr2/k");
        assert!(allowing.resolve_key("tr3/only").is_ok());
        assert!(allowing.resolve_key("tr3/other").is_err());
        for bad in ["../sys", "a b", "tr2//k", ""] {
            let cfg = OpenBaoConfig::new("openbao+http://127.0.0.1:8200/transit/app", Credentials::token("t")).unwrap();
            assert!(cfg.with_transit_allow(&[bad]).is_err(), "{bad:?} was accepted");
        }
        assert!(kms.resolve_key("openbao+http://127.0.0.1:8200/transit/x").is_ok());
        assert!(kms.resolve_key("openbao+http://10.0.0.1:8200/transit/x").is_err());
        assert!(kms.resolve_key("alias/app").is_err());
        assert!(kms.resolve_key("bad name").is_err());
        assert_eq!(kms.provider(), PROVIDER_HTTP);
    }

    #[test]
    fn foreign_providers_are_refused_without_network() {
        let kms = OpenBaoKms::new(
            OpenBaoConfig::new("openbao+http://127.0.0.1:1/transit/app", Credentials::token("t")).unwrap(),
        )
        .unwrap();
        let ctx = EncryptionContext::for_database(&[1; 16]);
        let err = kms.decrypt_data_key(&KeyRef { uri: "local:abc".into(), version: 1 }, b"x", &ctx).unwrap_err();
        assert!(err.to_string().contains("provider 'local'"), "{err}");
        // The header's version must match the ciphertext's.
        let key_ref = KeyRef { uri: "openbao+http://127.0.0.1:1/transit/app".into(), version: 2 };
        let err = kms.decrypt_data_key(&key_ref, b"vault:v1:AAAA", &ctx).unwrap_err();
        assert!(matches!(err, KmsError::InvalidCiphertext { .. }), "{err}");
    }
}

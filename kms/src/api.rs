//! The KMS request/response API (cloud-KMS operation names), shared by the embedded service,
//! the daemon and its client. A front end sends a [`Request`]; the service answers with the
//! JSON of the operation's response type or a [`KmsError`]. [`KmsClient`] wraps any
//! [`KmsService`] with typed methods, so the CLI works the same embedded and over a socket.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::audit::{AuditRecord, VerifyReport};
use super::local::uri_of;
use super::model::{AliasInfo, KeyInfo, Origin, Protection};
use super::policy::{KeyPolicy, LintFinding};
use super::secrets::{SecretInfo, SecretPolicyInfo, SecretValue, SecretVersionInfo};
use super::{EncryptionContext, GeneratedDataKey, KmsError};
use crate::KeyRef;
use crate::PlaintextDataKey as DataKey;

/// Base64 (standard, padded) for byte fields in JSON.
pub mod b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        base64::engine::general_purpose::STANDARD.decode(s.as_bytes()).map_err(serde::de::Error::custom)
    }
}

/// Base64 for secret byte fields: decoded straight into memory that is wiped on drop.
pub mod b64_secret {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};
    use zeroize::Zeroizing;

    pub fn serialize<S: Serializer>(v: &Zeroizing<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        let enc = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&v[..]));
        s.serialize_str(&enc)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Zeroizing<Vec<u8>>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let mut out = Zeroizing::new(Vec::new());
        base64::engine::general_purpose::STANDARD
            .decode_vec(s.as_bytes(), &mut out)
            .map_err(serde::de::Error::custom)?;
        if let std::borrow::Cow::Owned(mut o) = s {
            zeroize::Zeroize::zeroize(&mut o);
        }
        Ok(out)
    }
    pub mod option {
        use super::*;
        pub fn serialize<S: Serializer>(v: &Option<Zeroizing<Vec<u8>>>, s: S) -> Result<S::Ok, S::Error> {
            match v {
                Some(v) => super::serialize(v, s),
                None => s.serialize_none(),
            }
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Zeroizing<Vec<u8>>>, D::Error> {
            #[derive(Deserialize)]
            struct W(#[serde(with = "super")] Zeroizing<Vec<u8>>);
            Ok(Option::<W>::deserialize(d)?.map(|w| w.0))
        }
    }
}

/// An encryption context on the wire.
pub type Context = BTreeMap<String, String>;

/// Parameters of CreateKey.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CreateKeyParams {
    #[serde(default)]
    pub alias: Option<String>,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub protection: Protection,
    #[serde(default)]
    pub origin: Origin,
    /// Enable automatic rotation with this period.
    #[serde(default)]
    pub rotation_days: Option<u32>,
    /// Principals granted the key-admin role (with `users`: exactly these roles; with
    /// neither: the creator gets both).
    #[serde(default)]
    pub admins: Vec<String>,
    #[serde(default)]
    pub users: Vec<String>,
}

/// One request to the KMS.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    CreateKey(CreateKeyParams),
    DescribeKey {
        key: String,
    },
    ListKeys,
    ListAliases,
    CreateAlias {
        alias: String,
        key: String,
    },
    UpdateAlias {
        alias: String,
        key: String,
    },
    DeleteAlias {
        alias: String,
    },
    EnableKey {
        key: String,
    },
    DisableKey {
        key: String,
    },
    ScheduleKeyDeletion {
        key: String,
        days: Option<u32>,
    },
    CancelKeyDeletion {
        key: String,
    },
    EnableKeyRotation {
        key: String,
        days: u32,
    },
    DisableKeyRotation {
        key: String,
    },
    RotateKeyOnDemand {
        key: String,
    },
    /// Run due automatic rotations, scheduled deletions and import expiries now.
    RotateDue,
    GenerateDataKey {
        key: String,
        context: Context,
        bytes: Option<usize>,
    },
    GenerateDataKeyWithoutPlaintext {
        key: String,
        context: Context,
        bytes: Option<usize>,
    },
    Encrypt {
        key: String,
        #[serde(with = "b64_secret")]
        plaintext: Zeroizing<Vec<u8>>,
        context: Context,
    },
    Decrypt {
        #[serde(with = "b64")]
        ciphertext: Vec<u8>,
        context: Context,
        /// If given, the blob must name this key.
        key: Option<String>,
    },
    ReEncrypt {
        #[serde(with = "b64")]
        ciphertext: Vec<u8>,
        source_context: Context,
        /// Target key; `None`: the newest version of the source key.
        destination_key: Option<String>,
        /// Target context; `None`: the source context.
        destination_context: Option<Context>,
    },
    GetImportParameters {
        key: String,
    },
    ImportKeyMaterial {
        key: String,
        #[serde(with = "b64")]
        import_token: Vec<u8>,
        #[serde(with = "b64")]
        encrypted_material: Vec<u8>,
        expires: Option<u64>,
    },
    DeleteImportedKeyMaterial {
        key: String,
    },
    GetKeyPolicy {
        key: String,
    },
    PutKeyPolicy {
        key: String,
        policy: KeyPolicy,
    },
    Lint,
    ReadAudit {
        key: Option<String>,
        since: Option<u64>,
    },
    VerifyAudit,
    WhoAmI,
    PutSecret {
        name: String,
        #[serde(with = "b64_secret")]
        value: Zeroizing<Vec<u8>>,
        key: Option<String>,
        #[serde(default)]
        description: String,
    },
    GetSecret {
        name: String,
        version: Option<String>,
        stage: Option<String>,
    },
    RotateSecret {
        name: String,
        #[serde(default, with = "b64_secret::option")]
        value: Option<Zeroizing<Vec<u8>>>,
    },
    ListSecrets,
    ListSecretVersions {
        name: String,
    },
    GetSecretPolicy {
        name: String,
    },
    PutSecretPolicy {
        name: String,
        policy: KeyPolicy,
    },
}

impl Request {
    /// The operation's name (audit records, HTTP path).
    pub fn name(&self) -> &'static str {
        match self {
            Request::CreateKey(_) => "CreateKey",
            Request::DescribeKey { .. } => "DescribeKey",
            Request::ListKeys => "ListKeys",
            Request::ListAliases => "ListAliases",
            Request::CreateAlias { .. } => "CreateAlias",
            Request::UpdateAlias { .. } => "UpdateAlias",
            Request::DeleteAlias { .. } => "DeleteAlias",
            Request::EnableKey { .. } => "EnableKey",
            Request::DisableKey { .. } => "DisableKey",
            Request::ScheduleKeyDeletion { .. } => "ScheduleKeyDeletion",
            Request::CancelKeyDeletion { .. } => "CancelKeyDeletion",
            Request::EnableKeyRotation { .. } => "EnableKeyRotation",
            Request::DisableKeyRotation { .. } => "DisableKeyRotation",
            Request::RotateKeyOnDemand { .. } => "RotateKeyOnDemand",
            Request::RotateDue => "RotateDue",
            Request::GenerateDataKey { .. } => "GenerateDataKey",
            Request::GenerateDataKeyWithoutPlaintext { .. } => "GenerateDataKeyWithoutPlaintext",
            Request::Encrypt { .. } => "Encrypt",
            Request::Decrypt { .. } => "Decrypt",
            Request::ReEncrypt { .. } => "ReEncrypt",
            Request::GetImportParameters { .. } => "GetParametersForImport",
            Request::ImportKeyMaterial { .. } => "ImportKeyMaterial",
            Request::DeleteImportedKeyMaterial { .. } => "DeleteImportedKeyMaterial",
            Request::GetKeyPolicy { .. } => "GetKeyPolicy",
            Request::PutKeyPolicy { .. } => "PutKeyPolicy",
            Request::Lint => "Lint",
            Request::ReadAudit { .. } => "ReadAudit",
            Request::VerifyAudit => "VerifyAudit",
            Request::WhoAmI => "WhoAmI",
            Request::PutSecret { .. } => "PutSecretValue",
            Request::GetSecret { .. } => "GetSecretValue",
            Request::RotateSecret { .. } => "RotateSecret",
            Request::ListSecrets => "ListSecrets",
            Request::ListSecretVersions { .. } => "ListSecretVersionIds",
            Request::GetSecretPolicy { .. } => "GetSecretPolicy",
            Request::PutSecretPolicy { .. } => "PutSecretPolicy",
        }
    }
}

/// GenerateDataKey / GenerateDataKeyWithoutPlaintext.
#[derive(Debug, Serialize, Deserialize)]
pub struct DataKeyResponse {
    pub key_id: String,
    pub key_version: u32,
    #[serde(with = "b64")]
    pub ciphertext: Vec<u8>,
    #[serde(default, with = "b64_secret::option", skip_serializing_if = "Option::is_none")]
    pub plaintext: Option<Zeroizing<Vec<u8>>>,
}

impl DataKeyResponse {
    /// The `Kms` trait's view: plaintext DEK, wrapped DEK and the key reference for the header.
    pub fn into_generated(self) -> Result<GeneratedDataKey, KmsError> {
        let plain =
            self.plaintext.ok_or_else(|| KmsError::Unavailable("the KMS returned no plaintext data key".into()))?;
        Ok(GeneratedDataKey {
            plaintext: DataKey::from_slice(&plain)?,
            wrapped: self.ciphertext,
            key: KeyRef { uri: uri_of(&self.key_id), version: self.key_version },
        })
    }
}

/// Encrypt.
#[derive(Debug, Serialize, Deserialize)]
pub struct EncryptResponse {
    pub key_id: String,
    pub key_version: u32,
    #[serde(with = "b64")]
    pub ciphertext: Vec<u8>,
}

/// Decrypt.
#[derive(Debug, Serialize, Deserialize)]
pub struct DecryptResponse {
    pub key_id: String,
    pub key_version: u32,
    #[serde(with = "b64_secret")]
    pub plaintext: Zeroizing<Vec<u8>>,
}

impl DecryptResponse {
    /// The plaintext as a data key (the response's buffer is wiped when dropped).
    pub fn into_data_key(self) -> Result<DataKey, KmsError> {
        DataKey::from_slice(&self.plaintext)
    }
}

/// ReEncrypt (the plaintext never leaves the service).
#[derive(Debug, Serialize, Deserialize)]
pub struct ReEncryptResponse {
    pub source_key_id: String,
    pub source_key_version: u32,
    pub key_id: String,
    pub key_version: u32,
    #[serde(with = "b64")]
    pub ciphertext: Vec<u8>,
}

impl ReEncryptResponse {
    /// The new wrapped DEK and the key reference for the header.
    pub fn into_rewrapped(self) -> (Vec<u8>, KeyRef) {
        (self.ciphertext, KeyRef { uri: uri_of(&self.key_id), version: self.key_version })
    }
}

/// GetParametersForImport.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportParameters {
    pub key_id: String,
    /// `RSAES_OAEP_SHA_256`.
    pub wrapping_algorithm: String,
    /// DER SubjectPublicKeyInfo of the RSA wrapping key.
    #[serde(with = "b64")]
    pub public_key: Vec<u8>,
    #[serde(with = "b64")]
    pub import_token: Vec<u8>,
    /// Unix time after which the token and wrapping key are refused.
    pub valid_to: u64,
}

/// What RotateDue (and the on-use maintenance) did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MaintenanceReport {
    /// (key id, new version)
    pub rotated: Vec<(String, u32)>,
    pub deleted: Vec<String>,
    pub import_expired: Vec<String>,
    /// Due deletions that could not destroy their HSM objects (still pending, retried).
    #[serde(default)]
    pub deletion_failed: Vec<String>,
    /// Deletion checkpoints were renewed (keystore bookkeeping, not an event).
    #[serde(skip)]
    pub checkpointed: bool,
}

impl MaintenanceReport {
    pub fn is_empty(&self) -> bool {
        self.rotated.is_empty() && self.deleted.is_empty() && self.import_expired.is_empty()
    }

    /// Must the keystore be written?
    pub fn changed(&self) -> bool {
        !self.is_empty() || self.checkpointed
    }
}

/// `kms lint` findings of one key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyLint {
    pub key_id: String,
    pub aliases: Vec<String>,
    pub findings: Vec<LintFinding>,
}

/// WhoAmI.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Identity {
    pub principal: String,
    /// `embedded` or `daemon`.
    pub mode: String,
}

/// An error as the daemon sends it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireError {
    pub code: String,
    pub message: String,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub principal: Option<String>,
    #[serde(default)]
    pub action: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

impl WireError {
    /// Classify an error for transport.
    pub fn from_error(e: &KmsError) -> WireError {
        let mut w = WireError {
            code: String::new(),
            message: e.to_string(),
            key: None,
            principal: None,
            action: None,
            reason: None,
        };
        w.code = match e {
            KmsError::NotFound(k) => {
                w.key = Some(k.clone());
                "NotFound"
            }
            KmsError::Disabled(k) => {
                w.key = Some(k.clone());
                "KeyDisabled"
            }
            KmsError::PendingDeletion(k) => {
                w.key = Some(k.clone());
                "PendingDeletion"
            }
            KmsError::PendingImport(k) => {
                w.key = Some(k.clone());
                "PendingImport"
            }
            KmsError::Deleted(k) => {
                w.key = Some(k.clone());
                "KeyDeleted"
            }
            KmsError::NotUsable { key, reason } => {
                w.key = Some(key.clone());
                w.reason = Some(reason.clone());
                "NotUsable"
            }
            KmsError::AccessDenied { principal, action, key } => {
                w.key = Some(key.clone());
                w.principal = Some(principal.clone());
                w.action = Some(action.clone());
                "AccessDenied"
            }
            KmsError::InvalidCiphertext { key } => {
                w.key = Some(key.clone());
                "InvalidCiphertext"
            }
            KmsError::Unavailable(_) => "Unavailable",
            KmsError::WrongRootKey(_) => "WrongRootKey",
            KmsError::Keystore(_) => "Keystore",
            KmsError::NoKeystore { dir, key } => {
                w.key = key.clone();
                w.reason = Some(dir.clone());
                "NoKeystore"
            }
            KmsError::Audit(_) => "AuditFailure",
            KmsError::AuditIntegrity(_) => "AuditIntegrity",
            KmsError::InvalidRequest(_) => "InvalidRequest",
            KmsError::Random(_) | KmsError::DataKeyLength { .. } => "Crypto",
            #[allow(unreachable_patterns)]
            _ => "Internal",
        }
        .to_string();
        w
    }

    /// Rebuild the error on the client side.
    pub fn into_error(self) -> KmsError {
        let key = self.key.clone().unwrap_or_default();
        let strip = |m: &str, prefix: &str| m.strip_prefix(prefix).unwrap_or(m).to_string();
        match self.code.as_str() {
            "NotFound" => KmsError::NotFound(key),
            "KeyDisabled" => KmsError::Disabled(key),
            "PendingDeletion" => KmsError::PendingDeletion(key),
            "PendingImport" => KmsError::PendingImport(key),
            "KeyDeleted" => KmsError::Deleted(key),
            "NotUsable" => KmsError::NotUsable { key, reason: self.reason.unwrap_or_default() },
            "AccessDenied" => KmsError::AccessDenied {
                principal: self.principal.unwrap_or_default(),
                action: self.action.unwrap_or_default(),
                key,
            },
            "InvalidCiphertext" => KmsError::InvalidCiphertext { key },
            "WrongRootKey" => {
                KmsError::WrongRootKey(strip(&self.message, "wrong root key or passphrase for keystore "))
            }
            "Keystore" => KmsError::Keystore(strip(&self.message, "keystore error: ")),
            "NoKeystore" => KmsError::NoKeystore { dir: self.reason.unwrap_or_default(), key: self.key },
            "AuditFailure" => KmsError::Audit(strip(&self.message, "audit log unavailable, request refused: ")),
            "AuditIntegrity" => KmsError::AuditIntegrity(strip(&self.message, "audit trail broken, KMS closed: ")),
            "InvalidRequest" => KmsError::InvalidRequest(strip(&self.message, "invalid request: ")),
            "Unavailable" => KmsError::Unavailable(strip(&self.message, "KMS unavailable: ")),
            _ => KmsError::Unavailable(format!("KMS daemon error: {}", self.message)),
        }
    }

    /// HTTP status for the daemon.
    pub fn http_status(&self) -> u16 {
        match self.code.as_str() {
            "NotFound" => 404,
            "AccessDenied" => 403,
            "InvalidRequest" | "InvalidCiphertext" => 400,
            "KeyDisabled" | "PendingDeletion" | "PendingImport" | "KeyDeleted" | "NotUsable" => 409,
            "Unavailable" | "AuditFailure" | "AuditIntegrity" => 503,
            _ => 500,
        }
    }
}

/// Anything that answers KMS requests: the embedded service, or a client of the daemon.
pub trait KmsService: Send + Sync {
    /// Perform `req` as this front end's principal; the answer is the JSON of the
    /// operation's response type.
    fn call(&self, req: &Request) -> Result<Zeroizing<Vec<u8>>, KmsError>;
    /// Where requests go (for messages): a keystore directory or a socket.
    fn endpoint(&self) -> String;
}

/// Typed access to a [`KmsService`].
#[derive(Clone)]
pub struct KmsClient(pub Arc<dyn KmsService>);

impl std::fmt::Debug for KmsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("KmsClient").field(&self.0.endpoint()).finish()
    }
}

fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, KmsError> {
    serde_json::from_slice(bytes).map_err(|e| KmsError::Unavailable(format!("malformed KMS response: {e}")))
}

fn ctx(c: &EncryptionContext) -> Context {
    c.pairs().clone()
}

impl KmsClient {
    pub fn new(svc: Arc<dyn KmsService>) -> KmsClient {
        KmsClient(svc)
    }
    pub fn endpoint(&self) -> String {
        self.0.endpoint()
    }
    fn typed<T: serde::de::DeserializeOwned>(&self, req: Request) -> Result<T, KmsError> {
        parse(&self.0.call(&req)?)
    }
    pub fn create_key(&self, p: CreateKeyParams) -> Result<KeyInfo, KmsError> {
        self.typed(Request::CreateKey(p))
    }
    pub fn describe_key(&self, key: &str) -> Result<KeyInfo, KmsError> {
        self.typed(Request::DescribeKey { key: key.into() })
    }
    pub fn list_keys(&self) -> Result<Vec<KeyInfo>, KmsError> {
        self.typed(Request::ListKeys)
    }
    pub fn list_aliases(&self) -> Result<Vec<AliasInfo>, KmsError> {
        self.typed(Request::ListAliases)
    }
    pub fn create_alias(&self, alias: &str, key: &str) -> Result<AliasInfo, KmsError> {
        self.typed(Request::CreateAlias { alias: alias.into(), key: key.into() })
    }
    pub fn update_alias(&self, alias: &str, key: &str) -> Result<AliasInfo, KmsError> {
        self.typed(Request::UpdateAlias { alias: alias.into(), key: key.into() })
    }
    pub fn delete_alias(&self, alias: &str) -> Result<AliasInfo, KmsError> {
        self.typed(Request::DeleteAlias { alias: alias.into() })
    }
    pub fn enable_key(&self, key: &str) -> Result<KeyInfo, KmsError> {
        self.typed(Request::EnableKey { key: key.into() })
    }
    pub fn disable_key(&self, key: &str) -> Result<KeyInfo, KmsError> {
        self.typed(Request::DisableKey { key: key.into() })
    }
    pub fn schedule_key_deletion(&self, key: &str, days: Option<u32>) -> Result<KeyInfo, KmsError> {
        self.typed(Request::ScheduleKeyDeletion { key: key.into(), days })
    }
    pub fn cancel_key_deletion(&self, key: &str) -> Result<KeyInfo, KmsError> {
        self.typed(Request::CancelKeyDeletion { key: key.into() })
    }
    pub fn enable_key_rotation(&self, key: &str, days: u32) -> Result<KeyInfo, KmsError> {
        self.typed(Request::EnableKeyRotation { key: key.into(), days })
    }
    pub fn disable_key_rotation(&self, key: &str) -> Result<KeyInfo, KmsError> {
        self.typed(Request::DisableKeyRotation { key: key.into() })
    }
    pub fn rotate_key_on_demand(&self, key: &str) -> Result<KeyInfo, KmsError> {
        self.typed(Request::RotateKeyOnDemand { key: key.into() })
    }
    pub fn rotate_due(&self) -> Result<MaintenanceReport, KmsError> {
        self.typed(Request::RotateDue)
    }
    pub fn generate_data_key(
        &self,
        key: &str,
        context: &EncryptionContext,
        bytes: Option<usize>,
    ) -> Result<DataKeyResponse, KmsError> {
        self.typed(Request::GenerateDataKey { key: key.into(), context: ctx(context), bytes })
    }
    pub fn generate_data_key_without_plaintext(
        &self,
        key: &str,
        context: &EncryptionContext,
        bytes: Option<usize>,
    ) -> Result<DataKeyResponse, KmsError> {
        self.typed(Request::GenerateDataKeyWithoutPlaintext { key: key.into(), context: ctx(context), bytes })
    }
    pub fn encrypt(
        &self,
        key: &str,
        plaintext: &[u8],
        context: &EncryptionContext,
    ) -> Result<EncryptResponse, KmsError> {
        self.typed(Request::Encrypt {
            key: key.into(),
            plaintext: Zeroizing::new(plaintext.to_vec()),
            context: ctx(context),
        })
    }
    pub fn decrypt(
        &self,
        ciphertext: &[u8],
        context: &EncryptionContext,
        key: Option<&str>,
    ) -> Result<DecryptResponse, KmsError> {
        self.typed(Request::Decrypt {
            ciphertext: ciphertext.to_vec(),
            context: ctx(context),
            key: key.map(str::to_string),
        })
    }
    pub fn re_encrypt(
        &self,
        ciphertext: &[u8],
        source_context: &EncryptionContext,
        destination_key: Option<&str>,
        destination_context: Option<&EncryptionContext>,
    ) -> Result<ReEncryptResponse, KmsError> {
        self.typed(Request::ReEncrypt {
            ciphertext: ciphertext.to_vec(),
            source_context: ctx(source_context),
            destination_key: destination_key.map(str::to_string),
            destination_context: destination_context.map(ctx),
        })
    }
    pub fn get_import_parameters(&self, key: &str) -> Result<ImportParameters, KmsError> {
        self.typed(Request::GetImportParameters { key: key.into() })
    }
    pub fn import_key_material(
        &self,
        key: &str,
        token: &[u8],
        encrypted_material: &[u8],
        expires: Option<u64>,
    ) -> Result<KeyInfo, KmsError> {
        self.typed(Request::ImportKeyMaterial {
            key: key.into(),
            import_token: token.to_vec(),
            encrypted_material: encrypted_material.to_vec(),
            expires,
        })
    }
    pub fn delete_imported_key_material(&self, key: &str) -> Result<KeyInfo, KmsError> {
        self.typed(Request::DeleteImportedKeyMaterial { key: key.into() })
    }
    pub fn get_key_policy(&self, key: &str) -> Result<KeyPolicy, KmsError> {
        self.typed(Request::GetKeyPolicy { key: key.into() })
    }
    pub fn put_key_policy(&self, key: &str, policy: &KeyPolicy) -> Result<KeyPolicy, KmsError> {
        self.typed(Request::PutKeyPolicy { key: key.into(), policy: policy.clone() })
    }
    pub fn lint(&self) -> Result<Vec<KeyLint>, KmsError> {
        self.typed(Request::Lint)
    }
    pub fn read_audit(&self, key: Option<&str>, since: Option<u64>) -> Result<Vec<AuditRecord>, KmsError> {
        self.typed(Request::ReadAudit { key: key.map(str::to_string), since })
    }
    pub fn verify_audit(&self) -> Result<VerifyReport, KmsError> {
        self.typed(Request::VerifyAudit)
    }
    pub fn whoami(&self) -> Result<Identity, KmsError> {
        self.typed(Request::WhoAmI)
    }
    pub fn put_secret(
        &self,
        name: &str,
        value: &[u8],
        key: Option<&str>,
        description: &str,
    ) -> Result<SecretVersionInfo, KmsError> {
        self.typed(Request::PutSecret {
            name: name.into(),
            value: Zeroizing::new(value.to_vec()),
            key: key.map(str::to_string),
            description: description.into(),
        })
    }
    pub fn get_secret(&self, name: &str, version: Option<&str>, stage: Option<&str>) -> Result<SecretValue, KmsError> {
        self.typed(Request::GetSecret {
            name: name.into(),
            version: version.map(str::to_string),
            stage: stage.map(str::to_string),
        })
    }
    pub fn rotate_secret(&self, name: &str, value: Option<&[u8]>) -> Result<SecretVersionInfo, KmsError> {
        self.typed(Request::RotateSecret { name: name.into(), value: value.map(|v| Zeroizing::new(v.to_vec())) })
    }
    pub fn list_secrets(&self) -> Result<Vec<SecretInfo>, KmsError> {
        self.typed(Request::ListSecrets)
    }
    pub fn list_secret_versions(&self, name: &str) -> Result<Vec<SecretVersionInfo>, KmsError> {
        self.typed(Request::ListSecretVersions { name: name.into() })
    }
    pub fn get_secret_policy(&self, name: &str) -> Result<SecretPolicyInfo, KmsError> {
        self.typed(Request::GetSecretPolicy { name: name.into() })
    }
    pub fn put_secret_policy(&self, name: &str, policy: &KeyPolicy) -> Result<SecretPolicyInfo, KmsError> {
        self.typed(Request::PutSecretPolicy { name: name.into(), policy: policy.clone() })
    }
}

//! The PKCS#11 side of the HSM protection level (cryptoki; feature `hsm`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::{AuthPin, Ulong};
use zeroize::Zeroizing;

use super::{configured_module, label_of, ENV_HSM_MODULE, ENV_HSM_PIN, ENV_HSM_PIN_FILE, WRONG_PIN_BACKOFF};
use crate::local::HsmRef;
use crate::KmsError;

/// The record's module must be the configured one; the record never chooses what is loaded.
fn check_module(h: &HsmRef) -> Result<(), KmsError> {
    let configured = configured_module();
    if h.module != configured {
        return Err(KmsError::Unavailable(format!(
            "the keystore records PKCS#11 module {} for this key but this process is configured with {configured} \
             ({ENV_HSM_MODULE}); the module is taken from configuration only and was not loaded",
            h.module
        )));
    }
    Ok(())
}

/// (module, token) → when a PIN was refused, and that PIN's digest.
type WrongPins = Mutex<HashMap<(String, String), (std::time::Instant, [u8; 32])>>;

fn wrong_pins() -> &'static WrongPins {
    static W: OnceLock<WrongPins> = OnceLock::new();
    W.get_or_init(|| Mutex::new(HashMap::new()))
}

fn pin_digest(pin: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(pin.as_bytes()).into()
}

/// Log out of every token this process has a session with (e.g. after the PIN changed).
pub fn logout_all() {
    let t = tokens().lock().unwrap_or_else(|p| p.into_inner());
    for token in t.values() {
        *token.session.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

fn pin() -> Result<Zeroizing<String>, KmsError> {
    if let Ok(p) = std::env::var(ENV_HSM_PIN) {
        return Ok(Zeroizing::new(p));
    }
    if let Some(f) = std::env::var_os(ENV_HSM_PIN_FILE) {
        let text = Zeroizing::new(
            std::fs::read_to_string(&f).map_err(|e| KmsError::Unavailable(format!("cannot read HSM PIN file: {e}")))?,
        );
        return Ok(Zeroizing::new(text.trim_end_matches(['\n', '\r']).to_string()));
    }
    Err(KmsError::Unavailable(format!("HSM key needs the token's user PIN in {ENV_HSM_PIN} or {ENV_HSM_PIN_FILE}")))
}

fn hsm_err(what: &str, e: CkError) -> KmsError {
    KmsError::Unavailable(format!("HSM {what}: {e}"))
}

/// One logged-in session per (module, token), reused across operations.
struct Token {
    session: Mutex<Option<Session>>,
}

fn modules() -> &'static Mutex<HashMap<String, Pkcs11>> {
    static M: OnceLock<Mutex<HashMap<String, Pkcs11>>> = OnceLock::new();
    M.get_or_init(|| Mutex::new(HashMap::new()))
}

/// (module path, token label) → its session.
type Tokens = Mutex<HashMap<(String, String), Arc<Token>>>;

fn tokens() -> &'static Tokens {
    static T: OnceLock<Tokens> = OnceLock::new();
    T.get_or_init(|| Mutex::new(HashMap::new()))
}

fn module(path: &str) -> Result<Pkcs11, KmsError> {
    let mut m = modules().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = m.get(path) {
        return Ok(p.clone());
    }
    let p = Pkcs11::new(path).map_err(|e| KmsError::Unavailable(format!("cannot load PKCS#11 module {path}: {e}")))?;
    match p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(hsm_err("initialisation failed", e)),
    }
    m.insert(path.to_string(), p.clone());
    Ok(p)
}

fn open_session(h: &HsmRef) -> Result<Session, KmsError> {
    let p = module(&h.module)?;
    let slots = p.get_slots_with_token().map_err(|e| hsm_err("slot listing failed", e))?;
    let slot = slots
        .into_iter()
        .find(|s| p.get_token_info(*s).map(|i| i.label().trim_end() == h.token_label).unwrap_or(false))
        .ok_or_else(|| {
            KmsError::Unavailable(format!("no PKCS#11 token labelled '{}' in {}", h.token_label, h.module))
        })?;
    let session = p.open_rw_session(slot).map_err(|e| hsm_err("cannot open a session", e))?;
    let pin = pin()?;
    let key = (h.module.clone(), h.token_label.clone());
    let digest = pin_digest(&pin);
    if let Some((at, d)) = wrong_pins().lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        let waited = at.elapsed();
        if *d == digest && waited < WRONG_PIN_BACKOFF {
            return Err(KmsError::Unavailable(format!(
                "HSM login: token '{}' refused this PIN {}s ago; it is not tried again for another {}s \
                 (a token locks itself after a few wrong PINs): correct {ENV_HSM_PIN} or {ENV_HSM_PIN_FILE}",
                h.token_label,
                waited.as_secs(),
                (WRONG_PIN_BACKOFF - waited).as_secs().max(1)
            )));
        }
    }
    match session.login(UserType::User, Some(&AuthPin::new(pin.as_str().into()))) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {
            wrong_pins().lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
            Ok(session)
        }
        Err(e @ CkError::Pkcs11(RvError::PinIncorrect, _)) => {
            wrong_pins().lock().unwrap_or_else(|p| p.into_inner()).insert(key, (std::time::Instant::now(), digest));
            Err(hsm_err("login failed", e))
        }
        Err(e) => Err(hsm_err("login failed", e)),
    }
}

/// Run `f` with the token's session, reopening it once if it went stale.
fn with_session<T>(h: &HsmRef, f: impl Fn(&Session) -> Result<T, KmsError>) -> Result<T, KmsError> {
    check_module(h)?;
    let token = {
        let mut t = tokens().lock().unwrap_or_else(|p| p.into_inner());
        t.entry((h.module.clone(), h.token_label.clone()))
            .or_insert_with(|| Arc::new(Token { session: Mutex::new(None) }))
            .clone()
    };
    let mut slot = token.session.lock().unwrap_or_else(|p| p.into_inner());
    for attempt in 0..2 {
        if slot.is_none() {
            *slot = Some(open_session(h)?);
        }
        match f(slot.as_ref().expect("session")) {
            Err(KmsError::Unavailable(msg)) if attempt == 0 => {
                // A closed session or a logged-out token: start over once.
                *slot = None;
                let _ = msg;
            }
            other => return other,
        }
    }
    Err(KmsError::Unavailable("HSM session could not be re-established".into()))
}

fn find(session: &Session, label: &str) -> Result<ObjectHandle, KmsError> {
    let found = session
        .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY), Attribute::Label(label.as_bytes().to_vec())])
        .map_err(|e| hsm_err("object search failed", e))?;
    match found.as_slice() {
        [one] => Ok(*one),
        [] => {
            Err(KmsError::NotUsable { key: label.to_string(), reason: "the HSM token holds no such key object".into() })
        }
        _ => Err(KmsError::Keystore(format!("the HSM token holds several objects labelled {label}"))),
    }
}

/// Generate a key version inside the token; returns its label.
pub fn generate(h: &HsmRef, key_id: &str, version: u32) -> Result<String, KmsError> {
    let label = label_of(key_id, version);
    with_session(h, |s| {
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::ValueLen(Ulong::new(32)),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::Wrap(false),
            Attribute::Unwrap(false),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(label.as_bytes().to_vec()),
        ];
        s.generate_key(&Mechanism::AesKeyGen, &template).map_err(|e| hsm_err("key generation failed", e))?;
        Ok(())
    })?;
    Ok(label)
}

/// AES-GCM encrypt inside the token: returns ciphertext || 16-byte tag.
pub fn encrypt(h: &HsmRef, label: &str, nonce: &[u8; 12], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, KmsError> {
    with_session(h, |s| {
        let key = find(s, label)?;
        let mut iv = *nonce;
        let params = GcmParams::new(&mut iv, aad, Ulong::new(128)).map_err(|e| hsm_err("bad GCM parameters", e))?;
        s.encrypt(&Mechanism::AesGcm(params), key, plaintext).map_err(|e| hsm_err("encryption failed", e))
    })
}

/// AES-GCM decrypt inside the token.
pub fn decrypt(
    h: &HsmRef,
    label: &str,
    nonce: &[u8; 12],
    aad: &[u8],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, KmsError> {
    with_session(h, |s| {
        let key = find(s, label)?;
        let mut iv = *nonce;
        let params = GcmParams::new(&mut iv, aad, Ulong::new(128)).map_err(|e| hsm_err("bad GCM parameters", e))?;
        match s.decrypt(&Mechanism::AesGcm(params), key, ciphertext) {
            Ok(p) => Ok(Zeroizing::new(p)),
            // A tag mismatch (wrong context, tampered blob): the standard codes, and the
            // CKR_GENERAL_ERROR / CKR_FUNCTION_FAILED that SoftHSM2 returns for it.
            Err(CkError::Pkcs11(
                RvError::EncryptedDataInvalid
                | RvError::EncryptedDataLenRange
                | RvError::DataInvalid
                | RvError::DataLenRange
                | RvError::GeneralError
                | RvError::FunctionFailed,
                _,
            )) => Err(KmsError::InvalidCiphertext { key: label.to_string() }),
            Err(e) => Err(hsm_err("decryption failed", e)),
        }
    })
}

/// Destroy a key version's token object (key deletion).
pub fn destroy(h: &HsmRef, label: &str) -> Result<(), KmsError> {
    with_session(h, |s| match find(s, label) {
        Ok(o) => s.destroy_object(o).map_err(|e| hsm_err("object destruction failed", e)),
        Err(KmsError::NotUsable { .. }) => Ok(()),
        Err(e) => Err(e),
    })
}

//! Protocol v2: every successful daemon response is sealed to a key only the requesting
//! client holds, so a data key (or a secret value) never crosses the socket in the clear and
//! is never left, readable, in the HTTP buffers of either process (hyper's buffers are not
//! ours to wipe).
//!
//! The client makes a fresh X25519 key pair per request and sends the public half `C` in the
//! [`HEADER_RECIPIENT`] header (standard base64). The daemon answers
//!
//! ```text
//! "TDS1" | E (32 bytes, the daemon's ephemeral X25519 public key) | AES-256-GCM(body) | tag (16)
//! ```
//!
//! with `k = HKDF-SHA256(ikm = X25519(e, C), salt = E || C, info = INFO)`, an all-zero nonce
//! (each `k` seals exactly one message: both key pairs are fresh) and the magic as associated
//! data. The client opens it in place in a buffer it owns and wipes; its secret key, the
//! shared secret and `k` are wiped when the exchange ends, which leaves the sealed copy in
//! hyper's buffers useless.

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use base64::Engine as _;
use hkdf::Hkdf;
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::KmsError;

/// Request header carrying the client's ephemeral X25519 public key.
pub const HEADER_RECIPIENT: &str = "x-tde-recipient";
/// Content type of a sealed response body.
pub const CONTENT_TYPE_SEALED: &str = "application/vnd.sqlite-tde.sealed-v1";
const MAGIC: &[u8; 4] = b"TDS1";
const INFO: &[u8] = b"sqlite-tde kms daemon response v2";
const TAG_LEN: usize = 16;
const OVERHEAD: usize = MAGIC.len() + 32 + TAG_LEN;

fn fresh_secret() -> Result<StaticSecret, KmsError> {
    let mut seed = Zeroizing::new([0u8; 32]);
    crate::plaintext::fill_random(&mut seed[..])?;
    Ok(StaticSecret::from(*seed))
}

/// The one-message AES-GCM key of the exchange between `ours` and `theirs`; `e` and `c` are
/// the daemon's and the client's public keys.
fn message_cipher(ours: &StaticSecret, theirs: &PublicKey, e: &[u8; 32], c: &[u8; 32]) -> Result<Aes256Gcm, KmsError> {
    let shared = ours.diffie_hellman(theirs);
    if !shared.was_contributory() {
        return Err(KmsError::InvalidRequest("the daemon protocol's X25519 public key is of low order".into()));
    }
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(e);
    salt[32..].copy_from_slice(c);
    let mut k = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(Some(&salt), shared.as_bytes())
        .expand(INFO, &mut k[..])
        .map_err(|_| KmsError::Unavailable("HKDF output length".into()))?;
    Ok(Aes256Gcm::new_from_slice(&k[..]).expect("32-byte key"))
}

/// The client's half of one exchange: its ephemeral key pair.
pub struct Opener {
    secret: StaticSecret,
    public: PublicKey,
}

impl Opener {
    pub fn new() -> Result<Opener, KmsError> {
        let secret = fresh_secret()?;
        let public = PublicKey::from(&secret);
        Ok(Opener { secret, public })
    }

    /// The value of [`HEADER_RECIPIENT`].
    pub fn recipient(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.public.as_bytes())
    }

    /// Open a sealed response body into a buffer that is wiped on drop (consumes the key pair:
    /// it opens one message).
    pub fn open(self, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let bad = |why: &str| KmsError::Unavailable(format!("the KMS daemon's sealed response is invalid: {why}"));
        if sealed.len() < OVERHEAD || &sealed[..4] != MAGIC {
            return Err(bad("no TDS1 envelope"));
        }
        let e: [u8; 32] = sealed[4..36].try_into().expect("32 bytes");
        let cipher = message_cipher(&self.secret, &PublicKey::from(e), &e, self.public.as_bytes())
            .map_err(|_| bad("low-order daemon key"))?;
        let body = &sealed[36..sealed.len() - TAG_LEN];
        let tag = Tag::try_from(&sealed[sealed.len() - TAG_LEN..]).expect("16 bytes");
        // Exactly sized: opening in place must not reallocate (a moved buffer leaves a copy).
        let mut out = Zeroizing::new(Vec::with_capacity(body.len()));
        out.extend_from_slice(body);
        cipher
            .decrypt_inout_detached(&Nonce::default(), MAGIC, out.as_mut_slice().into(), &tag)
            .map_err(|_| bad("authentication failed (not sealed to this request's key)"))?;
        Ok(out)
    }
}

/// The daemon's side: seal `plaintext` to the client key in `recipient` (the header value).
pub fn seal(recipient: &str, plaintext: &[u8]) -> Result<Vec<u8>, KmsError> {
    let bad = || {
        KmsError::InvalidRequest(format!("the {HEADER_RECIPIENT} header must be a base64 X25519 public key (32 bytes)"))
    };
    let c: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(recipient.trim())
        .map_err(|_| bad())?
        .try_into()
        .map_err(|_| bad())?;
    let ours = fresh_secret()?;
    let e = PublicKey::from(&ours).to_bytes();
    let cipher = message_cipher(&ours, &PublicKey::from(c), &e, &c)?;
    // Exactly sized and encrypted in place: the plaintext is never copied into a buffer that
    // leaves here unencrypted.
    let mut out = Vec::with_capacity(plaintext.len() + OVERHEAD);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&e);
    out.extend_from_slice(plaintext);
    let tag = cipher
        .encrypt_inout_detached(&Nonce::default(), MAGIC, out[36..].as_mut().into())
        .map_err(|_| KmsError::Unavailable("sealing the response failed".into()))?;
    out.extend_from_slice(&tag);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_binding() {
        let opener = Opener::new().unwrap();
        let sealed = seal(&opener.recipient(), b"{\"plaintext\":\"x\"}").unwrap();
        assert!(!contains(&sealed, b"plaintext"));
        assert_eq!(&opener.open(&sealed).unwrap()[..], b"{\"plaintext\":\"x\"}");
        // Sealed to another request's key: refused.
        let other = Opener::new().unwrap();
        let sealed = seal(&Opener::new().unwrap().recipient(), b"secret").unwrap();
        assert!(other.open(&sealed).is_err());
        // Tampered: refused.
        let opener = Opener::new().unwrap();
        let mut sealed = seal(&opener.recipient(), b"secret").unwrap();
        let n = sealed.len();
        sealed[n - 20] ^= 1;
        assert!(opener.open(&sealed).is_err());
        assert!(seal("not base64!", b"x").is_err());
        assert!(seal(&base64::engine::general_purpose::STANDARD.encode([0u8; 32]), b"x").is_err());
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }
}

//! Self-describing wrapped-key blobs of the local KMS (AES-256-GCM under a CMK version).
//!
//! ```text
//! "TDEW" | ver=1 | id_len u8 | key_id | key_version u32 LE | nonce[12] | ciphertext | tag[16]
//! ```
//! AAD = everything before the nonce || SHA-256(canonical encryption context). Decrypt needs
//! no key id: the blob names its key and version.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use zeroize::Zeroizing;

use crate::plaintext::random_array;
use crate::{EncryptionContext, KmsError};

const MAGIC: &[u8; 4] = b"TDEW";

/// The parsed prefix of a wrapped blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobHeader {
    pub key_id: String,
    pub key_version: u32,
}

/// The authenticated prefix of a blob: magic, version, key id and key version.
pub fn header(key_id: &str, key_version: u32) -> Result<Vec<u8>, KmsError> {
    if key_id.len() > 255 {
        return Err(KmsError::InvalidRequest("key id too long".into()));
    }
    let mut out = Vec::with_capacity(10 + key_id.len());
    out.extend_from_slice(MAGIC);
    out.push(1);
    out.push(key_id.len() as u8);
    out.extend_from_slice(key_id.as_bytes());
    out.extend_from_slice(&key_version.to_le_bytes());
    Ok(out)
}

/// The AEAD associated data: the blob prefix and the digest of the encryption context.
pub fn aad(header: &[u8], ctx: &EncryptionContext) -> Vec<u8> {
    let mut aad = header.to_vec();
    aad.extend_from_slice(&ctx.digest());
    aad
}

/// A blob taken apart: its header, its authenticated prefix, the nonce and the ciphertext
/// with tag.
pub type SplitBlob<'a> = (BlobHeader, &'a [u8], [u8; 12], &'a [u8]);

/// Split a blob into its parts.
pub fn split(blob: &[u8]) -> Result<SplitBlob<'_>, KmsError> {
    let (hdr, end) = parse(blob)?;
    let nonce: [u8; 12] = blob[end..end + 12].try_into().unwrap();
    Ok((hdr, &blob[..end], nonce, &blob[end + 12..]))
}

/// Encrypt `plaintext` under `material` (a CMK version).
pub fn seal(
    material: &[u8; 32],
    key_id: &str,
    key_version: u32,
    plaintext: &[u8],
    ctx: &EncryptionContext,
) -> Result<Vec<u8>, KmsError> {
    if key_id.len() > 255 {
        return Err(KmsError::InvalidRequest("key id too long".into()));
    }
    let mut out = Vec::with_capacity(64 + plaintext.len());
    out.extend_from_slice(MAGIC);
    out.push(1);
    out.push(key_id.len() as u8);
    out.extend_from_slice(key_id.as_bytes());
    out.extend_from_slice(&key_version.to_le_bytes());
    let mut aad = out.clone();
    aad.extend_from_slice(&ctx.digest());
    let nonce = random_array::<12>()?;
    let cipher = Aes256Gcm::new_from_slice(material).expect("32-byte key");
    let ct = cipher
        .encrypt(&Nonce::from(nonce), Payload { msg: plaintext, aad: &aad })
        .map_err(|_| KmsError::InvalidRequest("encryption failed".into()))?;
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Parse the key id and version of a blob without decrypting.
pub fn parse(blob: &[u8]) -> Result<(BlobHeader, usize), KmsError> {
    let bad = || KmsError::InvalidCiphertext { key: "(unparseable blob)".into() };
    if blob.len() < 6 || &blob[..4] != MAGIC || blob[4] != 1 {
        return Err(bad());
    }
    let n = blob[5] as usize;
    let end = 6 + n + 4;
    if blob.len() < end + 12 + 16 {
        return Err(bad());
    }
    let key_id = std::str::from_utf8(&blob[6..6 + n]).map_err(|_| bad())?.to_string();
    let key_version = u32::from_le_bytes(blob[6 + n..end].try_into().unwrap());
    Ok((BlobHeader { key_id, key_version }, end))
}

/// Decrypt a blob with `material`, the CMK version it names.
pub fn open(material: &[u8; 32], blob: &[u8], ctx: &EncryptionContext) -> Result<Zeroizing<Vec<u8>>, KmsError> {
    let (hdr, end) = parse(blob)?;
    let mut aad = blob[..end].to_vec();
    aad.extend_from_slice(&ctx.digest());
    let nonce: [u8; 12] = blob[end..end + 12].try_into().unwrap();
    let cipher = Aes256Gcm::new_from_slice(material).expect("32-byte key");
    cipher
        .decrypt(&Nonce::from(nonce), Payload { msg: &blob[end + 12..], aad: &aad })
        .map(Zeroizing::new)
        .map_err(|_| KmsError::InvalidCiphertext { key: hdr.key_id })
}

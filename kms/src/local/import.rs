//! BYOK: keys with origin `external` are created without material (PendingImport).
//! GetParametersForImport hands out an RSA-3072 wrapping public key and an import token,
//! both valid 24 hours and good for one import attempt (spent by a failed attempt too); ImportKeyMaterial takes the 32-byte material
//! wrapped with RSAES-OAEP-SHA-256 and an optional expiry, and refuses weak material (all zero,
//! repeated blocks, few distinct bytes). Expiry or DeleteImportedKeyMaterial make the
//! key unusable (PendingImport) until the same material is imported again; different
//! material is refused. Material is never exportable.

use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::keystore::{ImportRecord, KeyRecord, KeyVersionRecord, PendingImportParams};
use super::{authorize, key_uri, material_context, wrap, LocalKms, Use};
use crate::api::ImportParameters;
use crate::model::{limits, KeyInfo, KeyState, Origin};
use crate::plaintext::random_array;
use crate::policy::actions;
use crate::{EncryptionContext, KmsError};

/// Name of the wrapping algorithm, as GetParametersForImport reports it.
pub const WRAPPING_ALGORITHM: &str = "RSAES_OAEP_SHA_256";

fn wrapping_key_context(key_id: &str) -> EncryptionContext {
    EncryptionContext::from_pairs([("sqlite-tde:import-wrapping-key".to_string(), key_id.to_string())])
}

fn fingerprint(fp_key: &[u8; 32], key_id: &str, material: &[u8]) -> String {
    let mut m = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(fp_key).expect("any key length");
    m.update(key_id.as_bytes());
    m.update(&[0]);
    m.update(material);
    hex::encode(m.finalize().into_bytes())
}

/// Remove imported material (expiry or DeleteImportedKeyMaterial): the key waits for the
/// same material again.
pub(super) fn remove_material(rec: &mut KeyRecord) {
    for v in rec.versions.iter_mut() {
        v.material = None;
    }
    if rec.state != KeyState::PendingDeletion && rec.state != KeyState::Deleted {
        rec.state = KeyState::PendingImport;
    }
    if let Some(i) = rec.import.as_mut() {
        i.expires = None;
    }
}

/// Why 32 bytes of material are unfit for an AES-256 key, if they are: all zero, two equal
/// 16-byte blocks (which also catches any pattern repeating every 1, 2, 4, 8 or 16 bytes), or
/// fewer than 12 distinct byte values (random material has about 30; the chance that 32
/// random bytes have fewer than 12 is below 2^-80).
fn weak_material(m: &[u8]) -> Option<&'static str> {
    if m.iter().all(|&b| b == 0) {
        return Some("all zero");
    }
    if m.len() >= 32 && m[..16] == m[16..32] {
        return Some("repeated 16-byte blocks");
    }
    let mut seen = [false; 256];
    m.iter().for_each(|&b| seen[b as usize] = true);
    if seen.iter().filter(|&&s| s).count() < 12 {
        return Some("too few distinct byte values");
    }
    None
}

fn external(rec: &KeyRecord) -> Result<(), KmsError> {
    if rec.origin != Origin::External {
        return Err(KmsError::InvalidRequest(format!(
            "key {} was created with origin internal: only keys created with --origin external take imported material",
            rec.key_id
        )));
    }
    match rec.state {
        KeyState::Deleted => Err(KmsError::Deleted(rec.key_id.clone())),
        KeyState::PendingDeletion => Err(KmsError::PendingDeletion(rec.key_id.clone())),
        _ => Ok(()),
    }
}

impl LocalKms {
    /// GetParametersForImport: a fresh RSA-3072 wrapping key and import token (24 h).
    pub fn op_get_import_parameters(&self, principal: &str, key: &str) -> Result<ImportParameters, KmsError> {
        // Key generation takes a moment: do it before taking the keystore lock.
        let (public_der, private_der) = oaep::new_wrapping_key()?;
        let token = Zeroizing::new(random_array::<32>()?);
        self.write_op(principal, "GetParametersForImport", Use::Existing(Some(key)), |ctx, txn| {
            let rec = txn.data.resolve(key)?;
            ctx.key(&rec.key_id);
            authorize(ctx, rec, actions::GET_PARAMETERS_FOR_IMPORT)?;
            external(rec)?;
            let id = rec.key_id.clone();
            let sealed = wrap::seal(txn.root.expose(), &id, 0, &private_der, &wrapping_key_context(&id))?;
            let valid_to = txn.now + limits::IMPORT_TOKEN_SECS;
            let rec = txn.data.keys.get_mut(&id).expect("resolved");
            rec.import.get_or_insert_with(ImportRecord::default).params = Some(PendingImportParams {
                wrapping_key: hex::encode(sealed),
                token_sha256: hex::encode(Sha256::digest(&token[..])),
                valid_to,
            });
            Ok(ImportParameters {
                key_id: id,
                wrapping_algorithm: WRAPPING_ALGORITHM.into(),
                public_key: public_der.clone(),
                import_token: token.to_vec(),
                valid_to,
            })
        })
    }

    /// ImportKeyMaterial.
    pub fn op_import(
        &self,
        principal: &str,
        key: &str,
        token: &[u8],
        encrypted_material: &[u8],
        expires: Option<u64>,
    ) -> Result<KeyInfo, KmsError> {
        self.write_op(principal, "ImportKeyMaterial", Use::Existing(Some(key)), |ctx, txn| {
            let rec = txn.data.resolve(key)?;
            ctx.key(&rec.key_id);
            authorize(ctx, rec, actions::IMPORT_KEY_MATERIAL)?;
            external(rec)?;
            let id = rec.key_id.clone();
            let import = rec.import.clone().unwrap_or_default();
            let params = import.params.as_ref().ok_or_else(|| {
                KmsError::InvalidRequest(format!("no import parameters for key {id}: run get-import-params first"))
            })?;
            if txn.now > params.valid_to {
                return Err(KmsError::InvalidRequest(
                    "the import token has expired (valid 24 hours): get new import parameters".into(),
                ));
            }
            if hex::encode(Sha256::digest(token)) != params.token_sha256 {
                return Err(KmsError::InvalidRequest(format!(
                    "the import token does not belong to key {id}'s current import parameters"
                )));
            }
            if let Some(t) = expires {
                if t <= txn.now {
                    return Err(KmsError::InvalidRequest("the expiry time is in the past".into()));
                }
            }
            // From here on the attempt spends the token and its wrapping key, whatever the
            // outcome: each RSA private key decrypts at most one ciphertext, so the timing of
            // RSA-OAEP decryption (RUSTSEC-2023-0071, `rsa` has no constant-time release) cannot
            // be sampled: an attack needs many decryptions under one key.
            let spent = txn.data.keys.get_mut(&id).expect("resolved");
            spent.import.get_or_insert_with(ImportRecord::default).params = None;
            txn.keep_on_error = true;
            let sealed_private = hex::decode(&params.wrapping_key)
                .map_err(|_| KmsError::Keystore("bad wrapping key encoding".into()))?;
            let private_der =
                wrap::open(txn.root.expose(), &sealed_private, &wrapping_key_context(&id)).map_err(|_| {
                    KmsError::Keystore("the import wrapping key does not decrypt under the root key".into())
                })?;
            let material = oaep::unwrap_material(&private_der, encrypted_material)?;
            if material.len() != 32 {
                return Err(KmsError::InvalidRequest(format!(
                    "imported key material must be 32 bytes (AES-256), got {}",
                    material.len()
                )));
            }
            if let Some(why) = weak_material(&material) {
                return Err(KmsError::InvalidRequest(format!(
                    "refusing weak key material ({why}): import 32 bytes from a cryptographic random generator"
                )));
            }
            let fp = fingerprint(&txn.root.derive(b"sqlite-tde/import-fingerprint/v1"), &id, &material);
            if let Some(old) = &import.fingerprint {
                if *old != fp {
                    return Err(KmsError::InvalidRequest(format!(
                        "key {id} was created with different key material: only the same material can be imported again"
                    )));
                }
            }
            let sealed = wrap::seal(txn.root.expose(), &id, 1, &material[..], &material_context(&id, 1))?;
            let now = txn.now;
            let rec = txn.data.keys.get_mut(&id).expect("resolved");
            match rec.versions.iter_mut().find(|v| v.version == 1) {
                Some(v) => v.material = Some(hex::encode(sealed)),
                None => rec.versions.push(KeyVersionRecord {
                    version: 1,
                    created: now,
                    material: Some(hex::encode(sealed)),
                    hsm_label: None,
                }),
            }
            rec.primary_version = 1;
            if rec.state == KeyState::PendingImport {
                rec.state = KeyState::Enabled;
            }
            let imp = rec.import.get_or_insert_with(ImportRecord::default);
            // Single use: the token (and its wrapping key) were spent above; a replayed
            // request finds no parameters.
            imp.fingerprint = Some(fp);
            imp.expires = expires;
            imp.imported_at = Some(now);
            ctx.version(1);
            Ok(super::info(&txn.data, &txn.data.keys[&id]))
        })
    }

    /// DeleteImportedKeyMaterial: the key becomes PendingImport at once.
    pub fn op_delete_imported(&self, principal: &str, key: &str) -> Result<KeyInfo, KmsError> {
        self.write_op(principal, "DeleteImportedKeyMaterial", Use::Existing(Some(key)), |ctx, txn| {
            let rec = txn.data.resolve(key)?;
            ctx.key(&rec.key_id);
            authorize(ctx, rec, actions::DELETE_IMPORTED_KEY_MATERIAL)?;
            external(rec)?;
            let id = rec.key_id.clone();
            remove_material(txn.data.keys.get_mut(&id).expect("resolved"));
            txn.revoked.push(key_uri(&id));
            Ok(super::info(&txn.data, &txn.data.keys[&id]))
        })
    }
}

pub use oaep::wrap_for_import;

/// The RSAES-OAEP-SHA-256 wrapping of imported material (feature `byok`; without it every
/// import step is refused, and keys that already have material keep working).
#[cfg(feature = "byok")]
mod oaep {
    use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
    use rsa::sha2::Sha256 as OaepSha256;
    use rsa::traits::PublicKeyParts;
    use rsa::Generate;
    use zeroize::Zeroizing;

    use crate::model::limits;
    use crate::KmsError;

    /// A fresh RSA-3072 wrapping key: (public SubjectPublicKeyInfo DER, private PKCS#8 DER).
    pub(super) fn new_wrapping_key() -> Result<(Vec<u8>, Zeroizing<Vec<u8>>), KmsError> {
        let private = rsa::PrivateKey::generate();
        if private.size() * 8 < limits::IMPORT_WRAPPING_BITS {
            return Err(KmsError::Keystore("wrapping key too small".into()));
        }
        let public_der = private
            .to_public_key()
            .to_public_key_der()
            .map_err(|e| KmsError::Keystore(format!("cannot encode wrapping key: {e}")))?;
        let private_der =
            private.to_pkcs8_der().map_err(|e| KmsError::Keystore(format!("cannot encode wrapping key: {e}")))?;
        Ok((public_der.as_bytes().to_vec(), Zeroizing::new(private_der.as_bytes().to_vec())))
    }

    /// The material an operator wrapped under our public key.
    pub(super) fn unwrap_material(private_der: &[u8], encrypted: &[u8]) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let private = rsa::PrivateKey::from_pkcs8_der(private_der)
            .map_err(|e| KmsError::Keystore(format!("bad wrapping key: {e}")))?;
        Ok(Zeroizing::new(private.oaep_decrypt::<OaepSha256>(encrypted).map_err(|_| {
            KmsError::InvalidRequest(
                "the key material does not unwrap under the import wrapping key (RSAES-OAEP-SHA-256)".into(),
            )
        })?))
    }

    /// Wrap key material for import (what an operator's tooling does with the public key from
    /// GetParametersForImport): RSAES-OAEP-SHA-256 under the DER SubjectPublicKeyInfo.
    pub fn wrap_for_import(public_key_der: &[u8], material: &[u8]) -> Result<Vec<u8>, KmsError> {
        let public = rsa::PublicKey::from_public_key_der(public_key_der)
            .map_err(|e| KmsError::InvalidRequest(format!("not an RSA public key: {e}")))?;
        public
            .oaep_encrypt::<OaepSha256>(material)
            .map_err(|e| KmsError::InvalidRequest(format!("cannot wrap key material: {e}")))
    }
}

#[cfg(not(feature = "byok"))]
mod oaep {
    use zeroize::Zeroizing;

    use crate::KmsError;

    fn not_built() -> KmsError {
        KmsError::InvalidRequest(
            "this build of sqlite-tde has no BYOK import (cargo feature `byok`); import key material with a build \
             that has it"
                .into(),
        )
    }
    pub(super) fn new_wrapping_key() -> Result<(Vec<u8>, Zeroizing<Vec<u8>>), KmsError> {
        Err(not_built())
    }
    pub(super) fn unwrap_material(_: &[u8], _: &[u8]) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        Err(not_built())
    }
    /// Refused: no BYOK in this build.
    pub fn wrap_for_import(_: &[u8], _: &[u8]) -> Result<Vec<u8>, KmsError> {
        Err(not_built())
    }
}

#[cfg(test)]
mod tests {
    use super::weak_material;

    #[test]
    fn weak_material_is_recognised() {
        assert_eq!(weak_material(&[0u8; 32]), Some("all zero"));
        assert_eq!(weak_material(&[0x42u8; 32]), Some("repeated 16-byte blocks"));
        let block: [u8; 16] = std::array::from_fn(|i| (i * 37 + 5) as u8);
        assert_eq!(weak_material(&[block, block].concat()), Some("repeated 16-byte blocks"));
        let few: Vec<u8> = (0..32u8).map(|i| i % 5 + (i / 16)).collect();
        assert_eq!(weak_material(&few), Some("too few distinct byte values"));
        let good: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(97).wrapping_add(13)).collect();
        assert_eq!(weak_material(&good), None);
    }
}

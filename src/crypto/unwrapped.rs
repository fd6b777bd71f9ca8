//! From key material a KMS returned to a page cipher: the one place a plaintext DEK becomes
//! an XTS key, and where an unwrapped DEK is checked against the header's key-check value.

use sqlite_tde_kms::PlaintextDataKey;

use super::{kcv_matches, key_check_value, CryptoError, DataKey, XtsCipher, KCV_LEN};

/// The cipher of an unwrapped DEK, if it is the key `kcv` names for database `db_uuid`.
/// `None`: another key (wrong CMK, swapped header) or no usable XTS key.
pub fn verified_cipher(plain: &PlaintextDataKey, db_uuid: &[u8; 16], kcv: &[u8; KCV_LEN]) -> Option<XtsCipher> {
    let dek = DataKey::from_slice(plain.expose()).ok()?;
    kcv_matches(&key_check_value(&dek, db_uuid), kcv).then(|| XtsCipher::new(&dek))
}

/// A freshly generated DEK: its cipher and the key-check value the header records.
pub fn new_cipher(plain: &PlaintextDataKey, db_uuid: &[u8; 16]) -> Result<(XtsCipher, [u8; KCV_LEN]), CryptoError> {
    let dek = DataKey::from_slice(plain.expose())?;
    Ok((XtsCipher::new(&dek), key_check_value(&dek, db_uuid)))
}

impl TryFrom<&PlaintextDataKey> for DataKey {
    type Error = CryptoError;

    /// The XTS key of KMS key material (refused if its halves are equal).
    fn try_from(plain: &PlaintextDataKey) -> Result<DataKey, CryptoError> {
        DataKey::from_slice(plain.expose())
    }
}

//! Key-check value: proves an unwrapped DEK is the database's key before any page is read.

use hmac::{KeyInit, Mac};
use sha2::Sha256;

use super::DataKey;

/// Length of the key-check value stored in the header.
pub const KCV_LEN: usize = 32;

/// `HMAC-SHA256(DEK, "sqlite-tde/kcv/v1" || db_uuid)`. A PRF output: it reveals nothing about
/// the key, and binds the check to one database.
pub fn key_check_value(key: &DataKey, db_uuid: &[u8; 16]) -> [u8; KCV_LEN] {
    let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(key.expose()).expect("HMAC accepts any key length");
    mac.update(b"sqlite-tde/kcv/v1");
    mac.update(db_uuid);
    mac.finalize().into_bytes().into()
}

/// Constant-time comparison of two check values.
pub fn kcv_matches(a: &[u8; KCV_LEN], b: &[u8; KCV_LEN]) -> bool {
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b.iter()) {
        diff |= x ^ y;
    }
    diff == 0
}

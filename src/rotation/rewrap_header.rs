//! Rewrapping a database header: the same DEK (so no page is rewritten), wrapped again under
//! the newest version of its CMK, or under another CMK. Provider-agnostic: it only needs
//! [`Kms::rewrap_data_key`] (the offline building block; `rewrap` does the same under the
//! database's locks).

use crate::format::{Header, RekeyState};
use crate::kms::{EncryptionContext, Kms, KmsError};

/// The header to write after rewrapping `current` under `target` (`None`: the newest version
/// of the key that wraps it now). The result has `sequence + 1`; the caller writes it into the
/// slot that does **not** hold `current` and syncs, so a crash leaves either header valid.
/// A format 2 slot must be encoded with the metadata key of the (unchanged) DEK
/// (`Header::encode(&MetaKey::derive(&dek))`, docs/FORMAT.md §11): a rewrap without the DEK
/// is refused by every reader as a forgery.
///
/// The DEK and its key-check value are unchanged, so open connections and cached ciphers stay
/// valid; only the wrapped DEK and the key reference change. A rekey in progress has two
/// wrapped DEKs; both are rewrapped.
pub fn rewrap_header(kms: &dyn Kms, current: &Header, target: Option<&str>) -> Result<Header, KmsError> {
    let context = EncryptionContext::for_database(&current.db_uuid);
    let (wrapped_dek, key) = kms.rewrap_data_key(&current.key, &current.wrapped_dek, &context, target)?;
    let rekey = match &current.rekey {
        Some(r) => {
            let (wrapped, key) = kms.rewrap_data_key(&r.key, &r.wrapped_dek, &context, target)?;
            Some(RekeyState { key, wrapped_dek: wrapped, kcv: r.kcv, progress: r.progress })
        }
        None => None,
    };
    Ok(Header { sequence: current.sequence + 1, key, wrapped_dek, rekey, ..current.clone() })
}

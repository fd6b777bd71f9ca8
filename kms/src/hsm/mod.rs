//! The HSM protection level over PKCS#11 (tested against SoftHSM2).
//!
//! Each key version is an AES-256 secret key generated inside the token with
//! `CKA_SENSITIVE=true`, `CKA_EXTRACTABLE=false`, `CKA_TOKEN=true`, labelled
//! `sqlite-tde:<key id>:v<version>`. Wrap and unwrap run inside the token as AES-GCM
//! (`CKM_AES_GCM`, 96-bit IV, 128-bit tag) with the blob prefix and the encryption context's
//! digest as AAD, so HSM-wrapped blobs have the same layout as software-wrapped ones
//! (docs/FORMAT.md §3). The material never leaves the token, not even to the KMS process.
//!
//! Configuration comes from the environment, never from a file in the keystore:
//! `SQLITE_TDE_HSM_MODULE` (default `/usr/lib/softhsm/libsofthsm2.so`),
//! `SQLITE_TDE_HSM_TOKEN` (token label), and the user PIN in `SQLITE_TDE_HSM_PIN` or a file
//! named by `SQLITE_TDE_HSM_PIN_FILE`. The module and token label of each HSM key are
//! recorded in its keystore record; the PIN is not. The module loaded is always the configured
//! one: a record naming another module is refused, never loaded (an edited keystore must not
//! bring a library of its choosing into a process that holds the PIN). A PIN the token refused
//! is not tried again for [`WRONG_PIN_BACKOFF`] (a real token locks itself after a few wrong
//! PINs); a different PIN is tried at once.

use crate::local::HsmRef;
#[cfg(not(feature = "hsm"))]
use crate::KmsError;

#[cfg(feature = "hsm")]
mod pkcs11;
#[cfg(feature = "hsm")]
pub use pkcs11::{decrypt, destroy, encrypt, generate, logout_all};

pub const ENV_HSM_MODULE: &str = "SQLITE_TDE_HSM_MODULE";
pub const ENV_HSM_TOKEN: &str = "SQLITE_TDE_HSM_TOKEN";
pub const ENV_HSM_PIN: &str = "SQLITE_TDE_HSM_PIN";
pub const ENV_HSM_PIN_FILE: &str = "SQLITE_TDE_HSM_PIN_FILE";
/// Where Debian's softhsm2 package installs its module.
pub const DEFAULT_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// How long a PIN the token refused is not tried again.
pub const WRONG_PIN_BACKOFF: std::time::Duration = std::time::Duration::from_secs(60);

/// The PKCS#11 module this process loads (configuration only).
fn configured_module() -> String {
    std::env::var(ENV_HSM_MODULE).ok().filter(|m| !m.is_empty()).unwrap_or_else(|| DEFAULT_MODULE.to_string())
}

/// The token new HSM keys go to, if the environment names one.
pub fn config_from_env() -> Option<HsmRef> {
    let token_label = std::env::var(ENV_HSM_TOKEN).ok().filter(|t| !t.is_empty())?;
    Some(HsmRef { module: configured_module(), token_label })
}

/// The label of a key version's token object.
pub fn label_of(key_id: &str, version: u32) -> String {
    format!("sqlite-tde:{key_id}:v{version}")
}

#[cfg(not(feature = "hsm"))]
mod unsupported {
    //! A build without PKCS#11 (feature `hsm` off): HSM keys in a keystore are reported, never
    //! used in software instead.
    use super::{HsmRef, KmsError};

    fn not_built() -> KmsError {
        KmsError::Unavailable(
            "this build of sqlite-tde has no PKCS#11 support (cargo feature `hsm`): HSM-protected keys need a build \
             with it, or the KMS daemon"
                .into(),
        )
    }
    pub fn generate(_: &HsmRef, _: &str, _: u32) -> Result<String, KmsError> {
        Err(not_built())
    }
    pub fn encrypt(_: &HsmRef, _: &str, _: &[u8; 12], _: &[u8], _: &[u8]) -> Result<Vec<u8>, KmsError> {
        Err(not_built())
    }
    pub fn decrypt(
        _: &HsmRef,
        _: &str,
        _: &[u8; 12],
        _: &[u8],
        _: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, KmsError> {
        Err(not_built())
    }
    pub fn destroy(_: &HsmRef, _: &str) -> Result<(), KmsError> {
        Err(not_built())
    }
    pub fn logout_all() {}
}
#[cfg(not(feature = "hsm"))]
pub use unsupported::{decrypt, destroy, encrypt, generate, logout_all};

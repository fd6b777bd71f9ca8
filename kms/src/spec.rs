//! Which KMS to use, parsed once at the edge (the CLI's `--kms`, the Rust API, the extension's
//! environment) and passed down: `local[:DIR]`, `unix:SOCKET`, or
//! `openbao+http(s)://HOST:PORT/MOUNT/KEY`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use crate::{api, local, Kms, KmsError};

/// Environment variable holding a [`KmsSpec`] (default `local:`).
pub const ENV_KMS: &str = "SQLITE_TDE_KMS";

/// A KMS selection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KmsSpec {
    /// The embedded service over a keystore directory (`None`: the caller's keystore option,
    /// else the default directory).
    Local { keystore: Option<PathBuf> },
    /// The sqlite-tde KMS daemon on a Unix socket (`sqlite-tde kms serve`).
    Daemon { socket: PathBuf },
    /// OpenBao / Vault transit; credentials come from the provider's configuration.
    OpenBao { uri: String },
}

impl Default for KmsSpec {
    fn default() -> Self {
        KmsSpec::Local { keystore: None }
    }
}

const SUPPORTED: &str = "local:[DIR], unix:SOCKET, openbao+http(s)://HOST:PORT/MOUNT/KEY";

impl FromStr for KmsSpec {
    type Err = KmsError;

    fn from_str(s: &str) -> Result<KmsSpec, KmsError> {
        let (provider, rest) = s.split_once(':').unwrap_or((s, ""));
        match provider {
            "" | "local" => Ok(KmsSpec::Local { keystore: (!rest.is_empty()).then(|| PathBuf::from(rest)) }),
            "unix" if !rest.is_empty() => Ok(KmsSpec::Daemon { socket: PathBuf::from(rest) }),
            "unix" => {
                Err(KmsError::InvalidRequest("unix: needs the daemon's socket path (unix:/run/kmsd.sock)".into()))
            }
            "openbao+http" | "openbao+https" if rest.starts_with("//") => Ok(KmsSpec::OpenBao { uri: s.to_string() }),
            other => Err(KmsError::InvalidRequest(format!("unsupported KMS '{other}' (supported: {SUPPORTED})"))),
        }
    }
}

impl fmt::Display for KmsSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KmsSpec::Local { keystore: None } => f.write_str("local:"),
            KmsSpec::Local { keystore: Some(d) } => write!(f, "local:{}", d.display()),
            KmsSpec::Daemon { socket } => write!(f, "unix:{}", socket.display()),
            KmsSpec::OpenBao { uri } => f.write_str(uri),
        }
    }
}

impl KmsSpec {
    /// [`ENV_KMS`] (unset or empty: `local:`). For the edges only: the CLI, the extension and
    /// `Tde::builder().register()` read it; nothing below them does.
    pub fn from_env() -> Result<KmsSpec, KmsError> {
        match std::env::var(ENV_KMS) {
            Ok(s) if !s.is_empty() => s.parse().map_err(|e| match e {
                KmsError::InvalidRequest(m) => KmsError::InvalidRequest(format!("{m} in {ENV_KMS}")),
                other => other,
            }),
            _ => Ok(KmsSpec::default()),
        }
    }

    /// The keystore directory of the embedded service: `keystore` (an explicit keystore
    /// option wins), else the spec's own directory, else the default. `None` for other
    /// providers.
    pub fn local_keystore(&self, keystore: Option<&Path>) -> Option<PathBuf> {
        match self {
            KmsSpec::Local { keystore: own } => Some(
                keystore.map(Path::to_path_buf).or_else(|| own.clone()).unwrap_or_else(local::default_keystore_dir),
            ),
            _ => None,
        }
    }

    /// Is this the embedded service?
    pub fn is_local(&self) -> bool {
        matches!(self, KmsSpec::Local { .. })
    }

    /// The provider the VFS calls. `keystore` applies to the embedded service when the spec
    /// names no directory; `principal` is who the embedded service acts for (default: the OS
    /// user; a daemon and OpenBao authenticate the caller themselves).
    pub fn connect(&self, keystore: Option<&Path>, principal: Option<&str>) -> Result<Arc<dyn Kms>, KmsError> {
        match self {
            KmsSpec::Local { .. } => Ok(Arc::new(self.local(keystore, principal).expect("local spec"))),
            #[cfg(feature = "daemon")]
            KmsSpec::Daemon { socket } => Ok(Arc::new(crate::daemon::UnixKms::new(socket))),
            #[cfg(feature = "openbao")]
            KmsSpec::OpenBao { uri } => Ok(Arc::new(crate::openbao::OpenBaoKms::from_env(uri)?)),
            #[allow(unreachable_patterns)]
            other => Err(not_built(other)),
        }
    }

    /// The sqlite-tde KMS front end for management commands: the embedded service or the
    /// daemon (OpenBao has its own management tools).
    pub fn service(&self, keystore: Option<&Path>, principal: Option<&str>) -> Result<api::KmsClient, KmsError> {
        match self {
            KmsSpec::Local { .. } => Ok(api::KmsClient::new(Arc::new(self.local(keystore, principal).expect("local")))),
            #[cfg(feature = "daemon")]
            KmsSpec::Daemon { socket } => Ok(crate::daemon::UnixKms::new(socket).client()),
            KmsSpec::OpenBao { .. } => Err(KmsError::InvalidRequest(format!(
                "the KMS management commands need the sqlite-tde KMS (local: or unix:PATH), not '{self}'"
            ))),
            #[allow(unreachable_patterns)]
            other => Err(not_built(other)),
        }
    }

    /// The embedded service of a `local` spec.
    pub fn local(&self, keystore: Option<&Path>, principal: Option<&str>) -> Option<local::LocalKms> {
        let dir = self.local_keystore(keystore)?;
        let kms = local::LocalKms::new(dir);
        Some(match principal {
            Some(p) => kms.with_principal(p),
            None => kms,
        })
    }
}

#[allow(dead_code)] // every provider built in: nothing is refused
fn not_built(spec: &KmsSpec) -> KmsError {
    let feature = match spec {
        KmsSpec::Daemon { .. } => "daemon",
        _ => "openbao",
    };
    KmsError::InvalidRequest(format!(
        "this build of sqlite-tde has no '{spec}' KMS provider (cargo feature `{feature}`)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_print_back() {
        for s in ["local:", "local:/var/lib/ks", "unix:/run/kmsd.sock", "openbao+https://bao:8200/transit/app"] {
            assert_eq!(s.parse::<KmsSpec>().unwrap().to_string(), s);
        }
        assert_eq!("local".parse::<KmsSpec>().unwrap(), KmsSpec::Local { keystore: None });
        assert_eq!("".parse::<KmsSpec>().unwrap(), KmsSpec::Local { keystore: None });
    }

    #[test]
    fn bad_specs_are_refused_by_name() {
        let e = "aws:kms".parse::<KmsSpec>().unwrap_err().to_string();
        assert!(e.contains("unsupported KMS 'aws'") && e.contains("unix:SOCKET"), "{e}");
        assert!("unix:".parse::<KmsSpec>().unwrap_err().to_string().contains("socket path"));
        assert!("openbao+https:bao".parse::<KmsSpec>().is_err());
    }

    #[test]
    fn an_explicit_keystore_option_wins_over_the_spec_directory() {
        let opt = Path::new("/opt/ks");
        assert_eq!(KmsSpec::default().local_keystore(Some(opt)), Some(opt.to_path_buf()));
        let own: KmsSpec = "local:/own".parse().unwrap();
        assert_eq!(own.local_keystore(Some(opt)), Some(opt.to_path_buf()));
        assert_eq!(own.local_keystore(None), Some(PathBuf::from("/own")));
        assert_eq!("unix:/s".parse::<KmsSpec>().unwrap().local_keystore(Some(opt)), None);
    }
}

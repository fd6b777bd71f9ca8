//! The contract between the rotation drivers ([`crate::rotation`]: they open a connection
//! and issue a pragma) and the pragma handlers in the VFS: one definition of each pragma's
//! arguments and result, serialised by one side and parsed by the other. The JSON is also
//! what a user sees who types `PRAGMA tde_rekey` in a shell, so field names are stable.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How long a rotation pragma waits for the lock it needs when the caller does not say.
pub const DEFAULT_BUSY: Duration = Duration::from_secs(5);

/// Arguments of `PRAGMA tde_rekey`, `tde_rewrap` and `tde_encrypt_in_place`: a JSON object
/// (every field optional), or a bare key name (what a user types in a shell).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotationArgs {
    /// CMK (key id or alias); `None`: the database's current CMK (rekey, rewrap) or the
    /// VFS's default key (in-place encryption).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Hotzone size in bytes (rekey, in-place encryption).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk: Option<u64>,
    /// How long to wait for the lock, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busy_ms: Option<u64>,
}

impl RotationArgs {
    /// The arguments of `PRAGMA <pragma>[=value]`. A misspelt field is an error, not
    /// silently ignored (`chunck` would otherwise run with the default hotzone).
    pub fn parse(pragma: &str, value: Option<&str>) -> Result<RotationArgs> {
        match value.map(str::trim).filter(|v| !v.is_empty()) {
            Some(v) if v.starts_with('{') => {
                serde_json::from_str(v).map_err(|e| Error::Config(format!("{pragma}: bad options {v:?}: {e}")))
            }
            Some(v) => Ok(RotationArgs { key: Some(v.to_string()), ..RotationArgs::default() }),
            None => Ok(RotationArgs::default()),
        }
    }

    /// The lock wait these arguments ask for.
    pub fn busy(&self) -> Duration {
        self.busy_ms.map(Duration::from_millis).unwrap_or(DEFAULT_BUSY)
    }

    /// The SQL statement that passes these arguments to `pragma`.
    pub fn pragma_sql(&self, pragma: &str) -> String {
        let json = serde_json::to_string(self).expect("RotationArgs serialise");
        format!("PRAGMA {pragma}='{}'", json.replace('\'', "''"))
    }
}

/// Result of `PRAGMA tde_rekey`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum RekeyResult {
    /// Every block is under the new DEK; the old one is gone from the header.
    Done {
        bytes: u64,
        key_uri: String,
        key_version: u32,
        /// `None` when this call finished a rekey an earlier call started.
        previous_key_uri: Option<String>,
        previous_key_version: Option<u32>,
        header_sequence: u64,
        seconds: f64,
    },
    /// Stopped by the progress observer between two chunks; resumable.
    Interrupted { bytes: u64, total: u64, seconds: f64 },
}

/// What `PRAGMA tde_rewrap` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RewrapStatus {
    /// Both header slots now hold the DEK wrapped under the target.
    Rewrapped,
    /// Already wrapped under the newest version of the target: nothing written.
    Unchanged,
}

/// Result of `PRAGMA tde_rewrap`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RewrapResult {
    pub status: RewrapStatus,
    pub key_uri: String,
    pub key_version: u32,
    pub previous_key_uri: String,
    pub previous_key_version: u32,
    pub header_sequence: u64,
    /// The header was format 1 and is now written in the current format.
    #[serde(default)]
    pub format_upgraded: bool,
}

/// Result of `PRAGMA tde_encrypt_in_place`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum EncryptResult {
    /// The file is an encrypted database now.
    Done { bytes: u64, key_uri: String, key_version: u32, db_uuid: String, seconds: f64 },
    /// Stopped by the progress observer between two chunks; resumable.
    Interrupted { seconds: f64 },
}

/// Serialise a pragma result (the text the pragma returns).
pub(crate) fn to_text<T: Serialize>(result: &T) -> String {
    serde_json::to_string(result).expect("pragma results serialise")
}

/// Parse the text `pragma` returned.
pub fn parse_result<T: DeserializeOwned>(pragma: &str, text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| Error::Config(format!("{pragma}: unexpected result {text:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_round_trip_through_the_pragma_text() {
        let args = RotationArgs { key: Some("alias/it's".into()), chunk: Some(4096), busy_ms: Some(250) };
        let sql = args.pragma_sql("tde_rekey");
        let value = sql.strip_prefix("PRAGMA tde_rekey='").and_then(|s| s.strip_suffix('\'')).unwrap();
        assert_eq!(RotationArgs::parse("tde_rekey", Some(&value.replace("''", "'"))).unwrap(), args);
        assert_eq!(args.busy(), Duration::from_millis(250));
    }

    #[test]
    fn a_bare_value_names_the_key_and_a_misspelt_field_is_refused() {
        let bare = RotationArgs::parse("tde_rewrap", Some(" alias/next ")).unwrap();
        assert_eq!(bare.key.as_deref(), Some("alias/next"));
        assert_eq!(bare.busy(), DEFAULT_BUSY);
        let e = RotationArgs::parse("tde_rekey", Some(r#"{"chunck": 4096}"#)).unwrap_err().to_string();
        assert!(e.contains("tde_rekey: bad options") && e.contains("chunck"), "{e}");
    }

    #[test]
    fn results_keep_their_field_names() {
        let r = RekeyResult::Interrupted { bytes: 1, total: 2, seconds: 0.5 };
        assert_eq!(to_text(&r), r#"{"status":"interrupted","bytes":1,"total":2,"seconds":0.5}"#);
        let back: RekeyResult = parse_result("tde_rekey", &to_text(&r)).unwrap();
        assert_eq!(back, r);
        let w: RewrapResult = parse_result(
            "tde_rewrap",
            r#"{"status":"unchanged","key_uri":"u","key_version":3,"previous_key_uri":"u","previous_key_version":3,"header_sequence":9}"#,
        )
        .unwrap();
        assert_eq!(w.status, RewrapStatus::Unchanged);
        assert!(!w.format_upgraded);
    }
}

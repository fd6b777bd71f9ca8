//! The envelope of the keystore's small JSON side files (`secrets.json`, `kmsd.json`):
//!
//! ```text
//! MAGIC-LINE "\n" JSON "\n" "hmac-sha256:" hex(HMAC-SHA256(key, everything before "hmac-")) "\n"
//! ```
//!
//! with the key derived from the root key per file (docs/FORMAT.md §6, §7). Whoever can only
//! write the directory cannot produce one.

use hmac::{Hmac, Mac};
use sha2::Sha256;

const MAC_TAG: &str = "hmac-sha256:";

/// Why a file that starts with the right magic line is not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// No `hmac-sha256:` trailer (cut, or not this format).
    MissingMac,
    /// The MAC does not verify: written without the root key, or corrupt.
    BadMac,
}

fn mac_over(key: &[u8; 32], covered: &[u8]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(key).expect("any length");
    mac.update(covered);
    mac
}

/// `magic` (one line, with its `\n`), `json`, and the MAC trailer.
pub(crate) fn seal(magic: &str, json: &str, key: &[u8; 32]) -> String {
    let mut body = String::with_capacity(magic.len() + json.len() + 80);
    body.push_str(magic);
    body.push_str(json);
    body.push('\n');
    let mac = mac_over(key, body.as_bytes()).finalize().into_bytes();
    body.push_str(MAC_TAG);
    body.push_str(&hex::encode(mac));
    body.push('\n');
    body
}

/// The JSON of `text`, which the caller has seen starts with `magic`, if its MAC verifies.
/// The last `hmac-sha256:` is the trailer; anything before it, JSON strings included, is
/// covered by the MAC.
pub(crate) fn open<'a>(text: &'a str, magic: &str, key: &[u8; 32]) -> Result<&'a str, Refused> {
    debug_assert!(text.starts_with(magic));
    let idx = text.rfind(MAC_TAG).filter(|&i| i >= magic.len()).ok_or(Refused::MissingMac)?;
    let (covered, trailer) = text.split_at(idx);
    let got = hex::decode(trailer[MAC_TAG.len()..].trim_end_matches('\n')).unwrap_or_default();
    mac_over(key, covered.as_bytes()).verify_slice(&got).map_err(|_| Refused::BadMac)?;
    Ok(&covered[magic.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let k = [7u8; 32];
        let s = seal("magic 2\n", r#"{"a":"hmac-sha256:00"}"#, &k);
        assert_eq!(open(&s, "magic 2\n", &k), Ok("{\"a\":\"hmac-sha256:00\"}\n"));
        assert_eq!(open(&s, "magic 2\n", &[8u8; 32]), Err(Refused::BadMac));
        assert_eq!(open(&s.replace("\"a\"", "\"b\""), "magic 2\n", &k), Err(Refused::BadMac));
        assert_eq!(open("magic 2\n{}\n", "magic 2\n", &k), Err(Refused::MissingMac));
    }
}

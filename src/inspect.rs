//! Read-only inspection of an encrypted database file without the KMS: the header region is
//! plaintext (identity, key reference, wrapped DEK), so tools can report which key a database
//! needs before, or without, being able to unwrap it.

use std::io::Read;
use std::path::Path;

use crate::error::Error;
use crate::format::{choose_slot, Header, HeaderError, SlotStatus, HEADER_REGION_LEN, SLOT_LEN};
use crate::vfs::rotation::convert::{decode_state, recovery_needed};

/// The header region of the file at `path` (shorter when the file is), read without SQLite
/// and without blocking on a FIFO. I/O errors name the path.
pub fn read_region(path: &Path) -> Result<Vec<u8>, Error> {
    let shown = path.display().to_string();
    let io_err = |e: std::io::Error| Error::Io(std::io::Error::new(e.kind(), format!("{shown}: {e}")));
    let file = crate::fsutil::open_regular(path).map_err(io_err)?;
    let mut region = Vec::with_capacity(HEADER_REGION_LEN);
    file.take(HEADER_REGION_LEN as u64).read_to_end(&mut region).map_err(io_err)?;
    Ok(region)
}

/// Read the header region of the database at `path` and pick its newest valid slot.
///
/// Returns the decoded header and the slot it came from (0 = A, 1 = B). Errors:
/// [`Error::Io`] (naming the path) when the file cannot be opened or read, and
/// [`Error::Header`] for a plain SQLite file, a file shorter than the header region, a file
/// of another format, or a header whose slots are all damaged.
pub fn read_header(path: &Path) -> Result<(Header, usize), Error> {
    header_of(path, &read_region(path)?)
}

/// [`read_header`] on a region already read from `path`.
pub fn header_of(path: &Path, region: &[u8]) -> Result<(Header, usize), Error> {
    let shown = path.display().to_string();
    if region.is_empty() {
        // An empty file is what an interrupted creation leaves behind; "truncated" says that,
        // where choose_slot's "no header magic" would suggest a foreign format.
        return Err(Error::Header { path: shown, source: HeaderError::Truncated });
    }
    choose_slot(region).map_err(|source| Error::Header { path: shown, source })
}

/// Both header slots of a region, as decoded (A, then B); a region too short for a slot
/// gives [`HeaderError::Truncated`] for it.
pub fn slots(region: &[u8]) -> [SlotStatus; 2] {
    let slot = |i: usize| match region.get(i * SLOT_LEN..(i + 1) * SLOT_LEN) {
        Some(raw) => Header::decode(raw),
        None => SlotStatus::Invalid(HeaderError::Truncated),
    };
    [slot(0), slot(1)]
}

/// What an in-place encryption (`sqlite-tde encrypt --in-place`) that is still running, or
/// was interrupted, left in the file at `path` (whose header region is `region`), in words;
/// `None` when no conversion is under way. Such a file is half plain, half encrypted, and
/// has no encryption header yet: a reader must say that rather than call the slots damaged.
/// The text does not start with the path (callers that need it prefix it).
pub fn conversion_in_progress(path: &Path, region: &[u8]) -> Option<String> {
    let state_path =
        crate::vfs::rotation::side_path(&path.display().to_string(), crate::vfs::rotation::CONVERT_JOURNAL_SUFFIX);
    let state = std::fs::read(&state_path).ok();
    if !recovery_needed(region, state.as_deref()) {
        return None;
    }
    let shown = path.display();
    Some(match state.as_deref().and_then(decode_state) {
        Some((s, _)) => format!(
            "an in-place encryption (`sqlite-tde encrypt --in-place`) is running or was interrupted, \
             {} of {} bytes encrypted; it has no encryption header until it is finished: run \
             `sqlite-tde encrypt --in-place --resume {shown}` (or open it read-write)",
            s.plain_len - s.progress.min(s.plain_len),
            s.plain_len
        ),
        None => format!(
            "an in-place encryption (`sqlite-tde encrypt --in-place`) was interrupted, and its state file {} \
             is missing or damaged: the file cannot be finished without it",
            state_path.display()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{KeyRef, SLOT_LEN};

    fn header(seq: u64) -> Header {
        Header {
            format: crate::format::FORMAT_VERSION,
            sequence: seq,
            db_uuid: [3; 16],
            dek_created: 1,
            key: KeyRef { uri: "local:k".into(), version: 1 },
            wrapped_dek: vec![1; 10],
            kcv: [0; 32],
            rekey: None,
        }
    }

    #[test]
    fn classifies_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.db");

        let missing = read_header(&p).unwrap_err();
        assert!(matches!(missing, Error::Io(_)) && missing.to_string().contains("x.db"), "{missing}");

        std::fs::write(&p, b"").unwrap();
        assert!(matches!(read_header(&p), Err(Error::Header { source: HeaderError::Truncated, .. })));

        let mut plain = b"SQLite format 3\0".to_vec();
        plain.resize(4096, 0);
        std::fs::write(&p, &plain).unwrap();
        assert!(matches!(read_header(&p), Err(Error::Header { source: HeaderError::PlainSqlite, .. })));

        let meta = crate::crypto::MetaKey::derive(&crate::crypto::DataKey::generate().unwrap());
        let mut region = vec![0u8; HEADER_REGION_LEN + 100];
        region[..SLOT_LEN].copy_from_slice(&header(1).encode(&meta).unwrap());
        region[SLOT_LEN..HEADER_REGION_LEN].copy_from_slice(&header(2).encode(&meta).unwrap());
        std::fs::write(&p, &region).unwrap();
        let (h, slot) = read_header(&p).unwrap();
        assert_eq!((h.sequence, slot), (2, 1));

        std::fs::write(&p, &region[..5000]).unwrap();
        assert!(matches!(read_header(&p), Err(Error::Header { source: HeaderError::Truncated, .. })));

        region[100] ^= 1;
        region[SLOT_LEN + 100] ^= 1;
        std::fs::write(&p, &region).unwrap();
        assert!(matches!(read_header(&p), Err(Error::Header { source: HeaderError::Corrupt(_), .. })));
    }
}

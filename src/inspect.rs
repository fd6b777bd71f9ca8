//! Read-only inspection of an encrypted database file without the KMS: the header region is
//! plaintext (identity, key reference, wrapped DEK), so tools can report which key a database
//! needs before, or without, being able to unwrap it.

use std::io::Read;
use std::path::Path;

use crate::error::Error;
use crate::format::{choose_slot, Header, HeaderError, HEADER_REGION_LEN};

/// Read the header region of the database at `path` and pick its newest valid slot.
///
/// Returns the decoded header and the slot it came from (0 = A, 1 = B). Errors:
/// [`Error::Io`] (naming the path) when the file cannot be opened or read, and
/// [`Error::Header`] for a plain SQLite file, a file shorter than the header region, a file
/// of another format, or a header whose slots are all damaged.
pub fn read_header(path: &Path) -> Result<(Header, usize), Error> {
    let shown = path.display().to_string();
    let io_err = |e: std::io::Error| Error::Io(std::io::Error::new(e.kind(), format!("{shown}: {e}")));
    let file = crate::fsutil::open_regular(path).map_err(io_err)?;
    let mut region = Vec::with_capacity(HEADER_REGION_LEN);
    file.take(HEADER_REGION_LEN as u64).read_to_end(&mut region).map_err(io_err)?;
    if region.is_empty() {
        // An empty file is what an interrupted creation leaves behind; "truncated" says that,
        // where choose_slot's "no header magic" would suggest a foreign format.
        return Err(Error::Header { path: shown, source: HeaderError::Truncated });
    }
    choose_slot(&region).map_err(|source| Error::Header { path: shown, source })
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

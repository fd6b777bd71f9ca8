//! Space reservation of the rotation side files (rekey journal, in-place encryption state).
//!
//! A rekey or an in-place encryption must not discover a full disk after it has marked the
//! database as "in progress": from then on no connection can read the file until the
//! operation finishes, and finishing needs the very space that is missing. So the side file's
//! blocks are allocated, and made durable, before the database is touched
//! (docs/ARCHITECTURE.md, "Reserve before commit").

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use nix::errno::Errno;
use nix::fcntl::{fallocate, FallocateFlags};

/// Allocate `[0, len)` of `file` (extending it to at least `len` bytes) and fsync it. Uses
/// `fallocate`; where the file system does not support it, writes zeros over the range.
/// Existing bytes below the old end of file are left as they are by `fallocate`, and zeroed
/// by the fallback: callers only reserve files whose content is not needed.
pub fn reserve(file: &File, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let off_len = libc_off(len)?;
    let r = loop {
        match fallocate(file, FallocateFlags::empty(), 0, off_len) {
            Err(Errno::EINTR) => continue,
            other => break other,
        }
    };
    match r {
        Ok(()) => {}
        Err(Errno::EOPNOTSUPP | Errno::ENOSYS) => write_zeros(file, len)?,
        Err(e) => return Err(io::Error::from(e)),
    }
    // The blocks must stay allocated across a crash, or the journal could hit ENOSPC again
    // after a reboot, once the rekey state is on disk.
    file.sync_all()
}

fn write_zeros(file: &File, len: u64) -> io::Result<()> {
    const PIECE: u64 = 1 << 20;
    let zeros = vec![0u8; PIECE.min(len) as usize];
    let mut at = 0u64;
    while at < len {
        let n = PIECE.min(len - at) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

fn libc_off(len: u64) -> io::Result<i64> {
    i64::try_from(len).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("reservation of {len} bytes")))
}

/// Is `e` "no space" (ENOSPC, or EDQUOT: a quota is just a smaller disk)?
pub fn is_no_space(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::StorageFull
        || e.kind() == io::ErrorKind::QuotaExceeded
        || matches!(e.raw_os_error(), Some(c) if c == Errno::ENOSPC as i32 || c == Errno::EDQUOT as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserves_the_whole_range() {
        let f = tempfile::tempfile().unwrap();
        reserve(&f, 3 * 4096 + 5).unwrap();
        let md = f.metadata().unwrap();
        assert_eq!(md.len(), 3 * 4096 + 5);
        use std::os::unix::fs::MetadataExt;
        // Allocated, not a sparse hole (st_blocks counts 512-byte units).
        assert!(md.blocks() * 512 >= 3 * 4096, "blocks {}", md.blocks());
        write_zeros(&f, 10).unwrap();
        assert!(!is_no_space(&io::Error::from(io::ErrorKind::NotFound)));
        assert!(is_no_space(&io::Error::from_raw_os_error(Errno::ENOSPC as i32)));
    }
}

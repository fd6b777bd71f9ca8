//! Keeping secrets out of core dumps: safe wrappers over the two Linux mechanisms, for crates
//! that forbid `unsafe` (the encrypting VFS keeps its key material out of dumps with these).
//!
//! On other platforms both functions return `ErrorKind::Unsupported`.

use std::io;

/// Exclude every page that holds a byte of `bytes` from core dumps (`madvise(MADV_DONTDUMP)`).
///
/// The advice applies to whole pages and stays with them after `bytes` is freed (other data that
/// later lives on those pages is not dumped either, which is harmless). Use it on long-lived
/// key material (expanded cipher keys), ideally allocated page-aligned so that nothing else
/// shares the pages. An empty slice is a no-op.
pub fn exclude_from_core_dumps(bytes: &[u8]) -> io::Result<()> {
    advise_dontdump(bytes.as_ptr() as usize, bytes.len())
}

/// [`exclude_from_core_dumps`] for the memory of any value (a key schedule inside a `Box`),
/// for callers that cannot view it as bytes without `unsafe`. Only the value's address and
/// size are used; its memory is neither read nor written.
pub fn exclude_value_from_core_dumps<T: ?Sized>(value: &T) -> io::Result<()> {
    advise_dontdump(std::ptr::from_ref(value).cast::<u8>() as usize, std::mem::size_of_val(value))
}

fn advise_dontdump(addr: usize, len: usize) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    #[cfg(target_os = "linux")]
    {
        // SAFETY: sysconf has no memory-safety preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let page = usize::try_from(page).ok().filter(|p| p.is_power_of_two()).unwrap_or(4096);
        let start = addr & !(page - 1);
        let end = (addr + len + page - 1) & !(page - 1);
        // SAFETY: MADV_DONTDUMP only changes which pages a core dump includes; it neither reads
        // nor writes memory nor changes its contents or protection, and [start, end) covers
        // pages of a live value (the caller's reference), so no mapping is affected that the
        // caller does not own a part of.
        let rc = unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTDUMP) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = addr;
        Err(io::Error::new(io::ErrorKind::Unsupported, "MADV_DONTDUMP is Linux-only"))
    }
}

/// Make the whole process non-dumpable (`prctl(PR_SET_DUMPABLE, 0)`): no core dump is written
/// and other unprivileged processes of the same user can no longer `ptrace` it or read its
/// `/proc/PID/mem`.
pub fn disable_core_dumps() -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_SET_DUMPABLE takes an integer argument and touches no memory of ours.
        let rc = unsafe {
            libc::prctl(
                libc::PR_SET_DUMPABLE,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        Err(io::Error::new(io::ErrorKind::Unsupported, "PR_SET_DUMPABLE is Linux-only"))
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The advised page shows the `dd` flag in /proc/self/smaps.
    #[test]
    fn dontdump_is_visible_in_smaps() {
        let buf = vec![0x5au8; 3 * 4096];
        let slice = &buf[4096..4096 + 100];
        exclude_from_core_dumps(slice).unwrap();
        let addr = slice.as_ptr() as usize;
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut in_range = false;
        let mut found = None;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ') {
                if let Some((a, b)) = range.split_once('-') {
                    if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
                        in_range = a <= addr && addr < b;
                        continue;
                    }
                }
            }
            if in_range {
                if let Some(flags) = line.strip_prefix("VmFlags:") {
                    found = Some(flags.split_whitespace().any(|f| f == "dd"));
                }
            }
        }
        assert_eq!(found, Some(true), "no dd flag on the advised page");
        exclude_from_core_dumps(&[]).unwrap();
    }
}

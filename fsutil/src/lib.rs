//! Durable file updates outside SQLite's own protocol (keystore, header tools): write a temp
//! file in the same directory, fsync it, rename it over the target, fsync the directory.
#![deny(unsafe_code)]

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Prefix of the temp files [`write_atomic`] and [`write_new`] make for `path`:
/// `.tmp-<file name>-`. Naming the target lets the holder of the lock that guards that file
/// remove what a killed writer left, without touching another file's writer in flight.
pub fn temp_prefix(path: &Path) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    format!(".tmp-{name}-")
}

fn dir_of(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

fn durable_temp(path: &Path, bytes: &[u8], mode: u32) -> io::Result<tempfile::NamedTempFile> {
    let mut tmp = tempfile::Builder::new().prefix(&temp_prefix(path)).tempfile_in(dir_of(path))?;
    tmp.as_file().set_permissions(fs::Permissions::from_mode(mode))?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    Ok(tmp)
}

/// Atomically replace `path` with `bytes`, with file mode `mode`. After this returns, either
/// the old or the new content is durable, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let tmp = durable_temp(path, bytes, mode)?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir_of(path))
}

/// Create `path` with `bytes` only if it does not exist (`AlreadyExists` otherwise): the
/// content is complete and durable before the name appears (hard link of an fsynced temp
/// file, which fails rather than replaces), so a crash leaves either no file or all of it.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let tmp = durable_temp(path, bytes, mode)?;
    tmp.persist_noclobber(path).map_err(|e| e.error)?;
    sync_dir(dir_of(path))
}

/// Remove the regular files in `dir` whose names start with `prefix` (temp files of a writer
/// that was killed). Only call it holding the lock every writer of such files holds. Returns
/// how many were removed.
pub fn remove_stale_temps(dir: &Path, prefix: &str) -> io::Result<usize> {
    remove_matching(dir, |n| n.starts_with(prefix))
}

/// Remove the regular files in `dir` whose names satisfy `pred`.
pub fn remove_matching(dir: &Path, pred: impl Fn(&str) -> bool) -> io::Result<usize> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut n = 0;
    for e in rd {
        let e = e?;
        let Some(name) = e.file_name().to_str().map(str::to_string) else { continue };
        if pred(&name) && e.file_type()?.is_file() {
            match fs::remove_file(e.path()) {
                Ok(()) => n += 1,
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
        }
    }
    if n > 0 {
        sync_dir(dir)?;
    }
    Ok(n)
}

/// fsync a directory so a rename or create in it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Create a directory (and parents) readable only by the owner.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    if !dir.exists() {
        fs::create_dir_all(dir)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        if let Some(parent) = dir.parent() {
            let _ = sync_dir(parent);
        }
    }
    Ok(())
}

/// Open (creating) a lock file and take an exclusive advisory lock on it. The lock is released
/// when the returned file is dropped. Never used on database files (see the POSIX lock notes
/// in docs/ARCHITECTURE.md): lock files are ours alone.
pub fn lock_exclusive(path: &Path) -> io::Result<File> {
    let f = open_lock_file(path)?;
    f.lock()?;
    Ok(f)
}

/// Open (creating) a lock file without locking it.
pub fn open_lock_file(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).truncate(false).write(true).mode(0o600).open(path)
}

/// Open `path` for reading only if it is a regular file. Opening a FIFO for reading blocks
/// until a writer appears (a tool pointed at one would hang), and a device or socket is never
/// a database: both are refused at once. `O_NONBLOCK` keeps the open itself from blocking; it
/// has no effect on reads of a regular file.
pub fn open_regular(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new().read(true).custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits()).open(path)?;
    let kind = file.metadata()?.file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() { "is a directory" } else { "is not a regular file (a FIFO, socket or device)" };
        return Err(io::Error::new(io::ErrorKind::InvalidInput, what));
    }
    Ok(file)
}

//! Durable file updates outside SQLite's own protocol (keystore, header tools): write a temp
//! file in the same directory, fsync it, rename it over the target, fsync the directory.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Atomically replace `path` with `bytes`, with file mode `mode`. After this returns, either
/// the old or the new content is durable, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    tmp.as_file().set_permissions(fs::Permissions::from_mode(mode))?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir)
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
    let f = OpenOptions::new().create(true).truncate(false).write(true).mode(0o600).open(path)?;
    f.lock()?;
    Ok(f)
}

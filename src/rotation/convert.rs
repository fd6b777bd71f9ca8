//! Conversions between plain SQLite databases and encrypted ones, from the outside: copies
//! through SQLite's online backup API ([`encrypt_copy`], [`decrypt_copy`]), so the source may
//! be in use, and the driver of the in-place encryption ([`encrypt_in_place`], through
//! `PRAGMA tde_encrypt_in_place`; the crash-safe engine is [`crate::vfs::rotation::convert`]'s).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

use super::{check_writable, parse_json};
use crate::error::{take_last_open_error, Error, Result};
use crate::vfs::rotation::protocol::{parse_result, EncryptResult, RotationArgs};
use crate::vfs::rotation::{observe, Progress};
use crate::{OpenOptions, Tde};

pub use crate::vfs::rotation::convert::{
    decode_state, is_converting, recovery_needed, state_file_valid, ConvertEngine, ConvertState, CONVERT_MAGIC,
    DEFAULT_CONVERT_CHUNK,
};

/// What a conversion did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConvertReport {
    /// `done`, `resumed`, `interrupted`.
    pub status: String,
    pub source: PathBuf,
    pub target: PathBuf,
    pub bytes: u64,
    pub key_uri: Option<String>,
    pub key_version: Option<u32>,
    pub seconds: f64,
}

fn sqlite_err(e: rusqlite::Error) -> Error {
    take_last_open_error().unwrap_or(Error::Sqlite(e))
}

fn uri(path: &Path, vfs: &str, extra: &str) -> Result<String> {
    let p = path.to_str().ok_or_else(|| Error::Config(format!("path is not UTF-8: {}", path.display())))?;
    let mut out = String::from("file:");
    for b in p.bytes() {
        if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out.push_str(&format!("?vfs={vfs}{extra}"));
    Ok(out)
}

/// Copy `src` to `dst` with the backup API, `pages` per step, reporting progress.
fn backup(src: &Connection, dst: &mut Connection, operation: &'static str) -> Result<u64> {
    let b = rusqlite::backup::Backup::new(src, dst)?;
    loop {
        let r = b.step(256)?;
        let p = b.progress();
        let total = p.pagecount.max(0) as u64;
        let done = total.saturating_sub(p.remaining.max(0) as u64);
        if observe(&Progress { operation, done, total }).is_break() {
            return Err(Error::Config("interrupted".into()));
        }
        match r {
            rusqlite::backup::StepResult::Done => return Ok(total),
            rusqlite::backup::StepResult::More => {}
            rusqlite::backup::StepResult::Busy | rusqlite::backup::StepResult::Locked => {
                std::thread::sleep(Duration::from_millis(20))
            }
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn refuse_existing(dst: &Path) -> Result<()> {
    // `symlink_metadata`: a dangling symbolic link is an existing entry too.
    if dst.symlink_metadata().is_ok() {
        return Err(Error::Config(format!("{}: already exists; choose a new file", dst.display())));
    }
    Ok(())
}

/// `sqlite-tde encrypt PLAIN OUT`: an encrypted copy of a plain database (which may be in use:
/// the backup API restarts when it changes), under `key` (default: the VFS's default key).
pub fn encrypt_copy(tde: &Tde, src: &Path, dst: &Path, key: Option<&str>) -> Result<ConvertReport> {
    let started = Instant::now();
    refuse_existing(dst)?;
    let source = Connection::open_with_flags(src, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI)?;
    source
        .query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))
        .map_err(|e| Error::Config(format!("{}: not a readable plain SQLite database ({e})", src.display())))?;
    let result = (|| {
        let mut target = tde.open_with(
            dst,
            &OpenOptions { key: key.map(str::to_string), read_only: false, must_exist: false, ..Default::default() },
        )?;
        let pages = backup(&source, &mut target, "encrypt")?;
        let ok: String = target.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        if ok != "ok" {
            return Err(Error::Config(format!("{}: the encrypted copy fails quick_check: {ok}", dst.display())));
        }
        let status: String = target.query_row("PRAGMA tde_status", [], |r| r.get(0)).map_err(sqlite_err)?;
        let v = parse_json(&status)?;
        let page_size: u64 = target.query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0))? as u64;
        Ok(ConvertReport {
            status: "done".into(),
            source: src.to_path_buf(),
            target: dst.to_path_buf(),
            bytes: pages * page_size,
            key_uri: v["key"].as_str().map(str::to_string),
            key_version: v["key_version"].as_u64().map(|x| x as u32),
            seconds: started.elapsed().as_secs_f64(),
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(dst);
        let _ = std::fs::remove_file(crate::format::side_path(dst, crate::format::SideFile::Journal));
    }
    result
}

/// What [`decrypt_copy`] does when its output path exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Existing {
    /// Refuse (the default): an existing file, or a symbolic link even a dangling one.
    #[default]
    Refuse,
    /// Replace the directory entry: a symbolic link there is replaced itself, never followed.
    Replace,
}

/// `sqlite-tde decrypt ENC OUT`: a plaintext copy of an encrypted database (for migration or
/// debugging). Always asks the KMS to unwrap the DEK (`PRAGMA tde_kms_check`), even when this
/// process has it cached, so the caller's `Decrypt` permission is checked (and the KMS audits
/// the call).
///
/// The plaintext is written to a new owner-only (0600) temp file in `dst`'s directory, created
/// exclusively under an unpredictable name, fsynced, then linked (or, with
/// [`Existing::Replace`], renamed) to `dst`: neither step follows a symbolic link planted at
/// `dst`, and a crash leaves either no `dst` or a complete one.
pub fn decrypt_copy(tde: &Tde, src: &Path, dst: &Path, existing: Existing) -> Result<ConvertReport> {
    let started = Instant::now();
    if existing == Existing::Refuse {
        refuse_existing(dst)?;
    }
    let source =
        tde.open_with(src, &OpenOptions { key: None, read_only: true, must_exist: true, ..Default::default() })?;
    let _ = take_last_open_error();
    let check: String = source.query_row("PRAGMA tde_kms_check", [], |r| r.get(0)).map_err(sqlite_err)?;
    let check = parse_json(&check)?;
    let dir = dst.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    // `tempfile` creates with O_CREAT|O_EXCL and mode 0600; SQLite gives the journal it makes
    // beside it the same mode.
    let tmp = tempfile::Builder::new()
        .prefix(&crate::fsutil::temp_prefix(dst))
        .tempfile_in(dir)
        .map_err(|e| Error::Config(format!("{}: cannot create the output: {e}", dst.display())))?
        .into_temp_path();
    let journal = crate::format::legacy_side_path(&tmp, crate::format::SideFile::Journal);
    let copied = (|| {
        let mut target = Connection::open_with_flags(
            &tmp,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NOFOLLOW | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        let pages = backup(&source, &mut target, "decrypt")?;
        let page_size: u64 = target.query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0))? as u64;
        drop(target);
        std::fs::File::open(&tmp)?.sync_all()?;
        Ok(pages * page_size)
    })();
    let bytes = match copied {
        Ok(b) => b,
        Err(e) => {
            let _ = std::fs::remove_file(&journal);
            return Err(e);
        }
    };
    let placed = match existing {
        Existing::Refuse => tmp.persist_noclobber(dst),
        Existing::Replace => tmp.persist(dst),
    };
    placed.map_err(|e| match e.error.kind() {
        std::io::ErrorKind::AlreadyExists => {
            Error::Config(format!("{}: already exists; choose a new file", dst.display()))
        }
        _ => Error::Config(format!("{}: cannot create the output: {}", dst.display(), e.error)),
    })?;
    crate::fsutil::sync_dir(dir)?;
    Ok(ConvertReport {
        status: "done".into(),
        source: src.to_path_buf(),
        target: dst.to_path_buf(),
        bytes,
        key_uri: check["key_uri"].as_str().map(str::to_string),
        key_version: check["key_version"].as_u64().map(|v| v as u32),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Options of [`encrypt_in_place`].
#[derive(Debug, Clone, Default)]
pub struct InPlaceOptions {
    /// CMK (key id or alias); `None`: the VFS's default key.
    pub key: Option<String>,
    pub chunk: Option<u64>,
    pub busy_timeout: Option<Duration>,
    /// Only finish an interrupted conversion.
    pub resume_only: bool,
    /// Resume a conversion whose state file a format-1 build wrote (not authenticated):
    /// the operator's explicit decision (docs/FORMAT.md §11).
    pub trust_format_1: bool,
}

/// `sqlite-tde encrypt --in-place PLAIN`: encrypt a plain database file where it lies,
/// crash-safe and resumable (an interrupted conversion is finished by the next open through
/// `tde`, or by calling this again). A WAL-mode database is switched to rollback mode for the
/// conversion and back afterwards (a crash in between leaves it in rollback mode).
pub fn encrypt_in_place(tde: &Tde, path: &Path, opts: &InPlaceOptions) -> Result<ConvertReport> {
    let started = Instant::now();
    check_writable(path, "in-place encryption")?;
    let busy = opts.busy_timeout.unwrap_or(Duration::from_secs(5));
    let report = |status: &str, bytes: u64, key: Option<(String, u32)>| ConvertReport {
        status: status.into(),
        source: path.to_path_buf(),
        target: path.to_path_buf(),
        bytes,
        key_version: key.as_ref().map(|k| k.1),
        key_uri: key.map(|k| k.0),
        seconds: started.elapsed().as_secs_f64(),
    };
    let key_of = |st: &serde_json::Value| {
        st["key"].as_str().map(|k| (k.to_string(), st["key_version"].as_u64().unwrap_or(0) as u32))
    };
    // Everything goes through SQLite connections (never a descriptor of our own on the file:
    // the caller may hold connections whose POSIX locks closing one would drop). Opening with
    // `tde_convert=1` passes a plain file through, and finishes an interrupted conversion.
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_URI | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut params = format!("&{}=1", crate::vfs::URI_CONVERT_PARAM);
    if opts.trust_format_1 {
        params.push_str(&format!("&{}=1", crate::vfs::URI_TRUST_FORMAT_1_PARAM));
    }
    let convert_uri = uri(path, tde.vfs_name(), &params)?;
    let status_of = |c: &Connection| -> Result<serde_json::Value> {
        let s: String = c.query_row("PRAGMA tde_status", [], |r| r.get(0)).map_err(sqlite_err)?;
        parse_json(&s)
    };
    let _ = take_last_open_error();
    let probe = Connection::open_with_flags(&convert_uri, flags).map_err(sqlite_err)?;
    let st = status_of(&probe)?;
    drop(probe);
    match st["state"].as_str() {
        Some("plain") => {}
        Some("open") if st["recovered"] == "in-place encryption" => return Ok(report("resumed", 0, key_of(&st))),
        Some("open") if opts.resume_only => return Ok(report("nothing-to-resume", 0, key_of(&st))),
        Some("open") => {
            return Err(Error::Config(format!("{}: not a plain SQLite database (already encrypted)", path.display())))
        }
        other => {
            return Err(Error::Vfs(sqlite_vfs::VfsError::new(
                sqlite_vfs::ErrorCode::Busy,
                format!(
                    "{}: busy ({}): another connection holds the database; retry",
                    path.display(),
                    other.unwrap_or("?")
                ),
            )))
        }
    }
    if opts.resume_only {
        return Ok(report("nothing-to-resume", 0, None));
    }
    // With plain SQLite: recover a hot journal, and leave WAL mode (the conversion runs in
    // rollback mode; switching needs every other connection closed).
    let was_wal = {
        let plain = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_URI)?;
        plain.busy_timeout(busy)?;
        plain
            .query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))
            .map_err(|e| Error::Config(format!("{}: not a readable plain SQLite database ({e})", path.display())))?;
        let mode: String = plain.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
        if mode.eq_ignore_ascii_case("wal") {
            let m: String = plain.query_row("PRAGMA journal_mode=DELETE", [], |r| r.get(0))?;
            if !m.eq_ignore_ascii_case("delete") {
                return Err(Error::Config(format!(
                    "{}: cannot leave WAL mode (other connections?): {m}",
                    path.display()
                )));
            }
            true
        } else {
            false
        }
    };
    let conn = Connection::open_with_flags(&convert_uri, flags).map_err(sqlite_err)?;
    conn.busy_timeout(busy)?;
    conn.execute_batch("BEGIN EXCLUSIVE").map_err(sqlite_err)?;
    let args = RotationArgs { key: opts.key.clone(), chunk: opts.chunk, busy_ms: Some(busy.as_millis() as u64) };
    let _ = take_last_open_error();
    let r: std::result::Result<String, _> = conn.query_row(&args.pragma_sql("tde_encrypt_in_place"), [], |r| r.get(0));
    let detail = take_last_open_error();
    let _ = conn.execute_batch("COMMIT");
    drop(conn);
    let text = r.map_err(|e| detail.unwrap_or(Error::Sqlite(e)))?;
    match parse_result("tde_encrypt_in_place", &text)? {
        EncryptResult::Done { bytes, key_uri, key_version, .. } => {
            if was_wal {
                let c = tde.open_with(
                    path,
                    &OpenOptions { key: None, read_only: false, must_exist: true, ..Default::default() },
                )?;
                c.busy_timeout(busy)?;
                let _: String = c.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
            }
            Ok(report("done", bytes, Some((key_uri, key_version))))
        }
        EncryptResult::Interrupted { .. } => Ok(report("interrupted", 0, None)),
    }
}

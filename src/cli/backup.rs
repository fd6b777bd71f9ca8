//! `sqlite-tde backup DB DEST` and `sqlite-tde restore BACKUP DB`: online, consistent copies
//! through SQLite's backup API and the encrypting VFS.
//!
//! The source is read in one read transaction (a snapshot: in WAL mode writers go on meanwhile;
//! in rollback mode they wait for the copy, up to their busy timeout), so the copy is a
//! consistent state of the database however long it takes. A new destination is a new
//! encrypted database (its own UUID and a fresh data key, under the source's CMK or `--key`),
//! written under a temporary name and renamed into place only when complete.

use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};
use serde_json::json;

use super::error::{CliError, CliResult};
use super::verify::{self, verify_database, EXIT_PROBLEMS};
use super::{open, Global};
use sqlite_tde::format::{Header, HeaderError};
use sqlite_tde::inspect::read_header;
use sqlite_tde::{Error, OpenOptions, Tde};

/// Pages copied per backup step (between progress updates).
const STEP_PAGES: i32 = 256;

/// Arguments of `sqlite-tde backup`.
#[derive(Debug, Clone, clap::Args)]
pub struct BackupArgs {
    /// Encrypted database to back up; it may be in use by other processes.
    #[arg(value_name = "DB")]
    pub db: PathBuf,
    /// Backup file to create: a new encrypted database with its own data key.
    #[arg(value_name = "DEST")]
    pub dest: PathBuf,
    /// KMS key for the backup (key id or alias/NAME), e.g. a dedicated backup key
    /// [default: the database's own key].
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
    /// Verify the backup once written (as `sqlite-tde verify`); exit 4 if it has a problem.
    #[arg(long)]
    pub verify: bool,
    /// Replace DEST if it exists.
    #[arg(long)]
    pub force: bool,
    /// How long to wait for locks held by writers.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub busy_timeout: u64,
}

/// Arguments of `sqlite-tde restore`.
#[derive(Debug, Clone, clap::Args)]
pub struct RestoreArgs {
    /// Backup to restore: an encrypted database (e.g. made by `sqlite-tde backup`), or a
    /// plain SQLite database to import.
    #[arg(value_name = "BACKUP")]
    pub backup: PathBuf,
    /// Database to restore into: created (encrypted) if missing; an existing database is
    /// overwritten in place with --force, in one transaction, keeping its own key.
    #[arg(value_name = "DB")]
    pub db: PathBuf,
    /// KMS key for a database the restore creates (key id or alias/NAME) [default: the
    /// backup's key, or the default key for a plain backup].
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
    /// Verify the database once restored; exit 4 if it has a problem.
    #[arg(long)]
    pub verify: bool,
    /// Overwrite the content of an existing DB.
    #[arg(long)]
    pub force: bool,
    /// How long to wait for locks held by other connections.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub busy_timeout: u64,
}

/// A progress bar on stderr when it is a terminal, hidden otherwise.
pub fn progress_bar(len: u64, what: &str) -> ProgressBar {
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template("{msg:>8} [{bar:40}] {pos}/{len} pages ({eta})") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}

/// The key reference a new database under the same CMK as `h` is created with.
pub fn same_key(h: &Header) -> String {
    if h.key.provider() == "local" {
        h.key.key_id().to_string()
    } else {
        h.key.uri.clone()
    }
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// A temporary name beside `dest`, and the clean-up of it and its journals.
pub struct TempDest {
    pub path: PathBuf,
    keep: bool,
}

impl TempDest {
    /// Errors about the temporary file name the destination the user gave instead.
    pub fn rename_in(&self, dest: &Path) -> impl Fn(CliError) -> CliError {
        let dest = dest.display().to_string();
        // SQLite names files by their absolute path, with symbolic links resolved.
        let absolute = std::path::absolute(&self.path).unwrap_or_else(|_| self.path.clone());
        let resolved = absolute
            .parent()
            .and_then(|d| std::fs::canonicalize(d).ok())
            .zip(absolute.file_name())
            .map(|(d, f)| d.join(f));
        let names: Vec<String> =
            resolved.into_iter().chain([absolute, self.path.clone()]).map(|p| p.display().to_string()).collect();
        move |mut e| {
            for n in &names {
                e.message = e.message.replace(n, &dest);
            }
            e
        }
    }

    pub fn beside(dest: &Path) -> TempDest {
        let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let path = dest.with_file_name(format!(".{name}.sqlite-tde-tmp-{}", std::process::id()));
        remove_with_journals(&path);
        TempDest { path, keep: false }
    }

    /// Rename into place (replacing `dest` and any journals it had) and make it durable.
    pub fn persist(mut self, dest: &Path) -> CliResult {
        remove_journals(dest);
        std::fs::rename(&self.path, dest).map_err(|e| {
            CliError::failure(format!("cannot rename {} to {}: {e}", self.path.display(), dest.display()))
        })?;
        self.keep = true;
        let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        sqlite_tde::fsutil::sync_dir(dir)?;
        Ok(())
    }
}

impl Drop for TempDest {
    fn drop(&mut self) {
        if !self.keep {
            remove_with_journals(&self.path);
        }
    }
}

fn remove_journals(p: &Path) {
    // SQLite's names (a plain copy; format 1) and tde's own.
    for s in ["-journal", "-wal", "-shm", "-tdejournal", "-tdewal"] {
        let _ = std::fs::remove_file(with_suffix(p, s));
    }
}

fn remove_with_journals(p: &Path) {
    let _ = std::fs::remove_file(p);
    remove_journals(p);
}

/// Refuse to write over `dest` unless forced; refuse to copy a file onto itself.
pub fn check_destination(src: &Path, dest: &Path, force: bool) -> CliResult {
    if let (Ok(a), Ok(b)) = (std::fs::canonicalize(src), std::fs::canonicalize(dest)) {
        if a == b {
            return Err(CliError::usage(format!("{} is the source itself", dest.display())));
        }
    }
    if dest.exists() && !force {
        return Err(CliError::failure(format!("{} already exists (use --force to replace it)", dest.display())));
    }
    Ok(())
}

/// What a copy did.
pub struct Copied {
    pub pages: u64,
    pub page_size: i64,
}

/// Copy `src` into `dst` with the backup API, inside one read transaction of `src` (a
/// consistent snapshot), with a progress bar. Busy destinations are retried for `timeout`.
pub fn copy(src: &Connection, dst: &mut Connection, timeout: Duration, what: &str) -> CliResult<Copied> {
    src.busy_timeout(timeout)?;
    dst.busy_timeout(timeout)?;
    // Hold a read transaction on the source for the whole copy: the backup then never
    // restarts because another connection wrote meanwhile.
    src.execute_batch("BEGIN")?;
    let result = (|| {
        src.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))?;
        let page_size: i64 = src.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let backup = Backup::new(src, dst)?;
        let bar = progress_bar(0, what);
        let started = Instant::now();
        loop {
            match backup.step(STEP_PAGES)? {
                StepResult::Done => break,
                StepResult::More => {}
                StepResult::Busy | StepResult::Locked => {
                    if started.elapsed() > timeout {
                        return Err(CliError::failure("the destination stayed locked: timed out"));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => {}
            }
            let p = backup.progress();
            bar.set_length(p.pagecount as u64);
            bar.set_position((p.pagecount - p.remaining) as u64);
        }
        let pages = backup.progress().pagecount as u64;
        bar.finish_and_clear();
        Ok(Copied { pages, page_size })
    })();
    let _ = src.execute_batch("COMMIT");
    result
}

/// Open a database to copy from. Read-write, as any SQLite application opens it, so that a
/// hot journal left by a crashed writer is rolled back first (a read-only connection cannot);
/// read-only when the file cannot be written. The copy itself only reads.
pub fn open_source_conn(tde: &Tde, keystore: &Path, db: &Path) -> CliResult<Connection> {
    match open::open(
        tde,
        keystore,
        db,
        &OpenOptions { key: None, read_only: false, must_exist: true, ..Default::default() },
    ) {
        Ok(c) => Ok(c),
        Err(e) => open::open(
            tde,
            keystore,
            db,
            &OpenOptions { key: None, read_only: true, must_exist: true, ..Default::default() },
        )
        .map_err(|_| e),
    }
}

fn open_source(tde: &Tde, keystore: &Path, db: &Path) -> CliResult<(Connection, Header)> {
    if !db.exists() {
        return Err(CliError::failure(format!("{}: no such file", db.display())));
    }
    let (header, _) = read_header(db)?;
    let conn = open_source_conn(tde, keystore, db)?;
    Ok((conn, header))
}

/// Run `sqlite-tde backup`.
pub fn run_backup(global: &Global, args: &BackupArgs) -> CliResult {
    check_destination(&args.db, &args.dest, args.force)?;
    let tde = open::register(global)?;
    let (src, header) = open_source(&tde, &global.keystore, &args.db)?;
    let key = args.key.clone().unwrap_or_else(|| same_key(&header));
    let tmp = TempDest::beside(&args.dest);
    let copied = {
        let mut dst = open::open(
            &tde,
            &global.keystore,
            &tmp.path,
            &OpenOptions { key: Some(key), read_only: false, must_exist: false, ..Default::default() },
        )
        .map_err(tmp.rename_in(&args.dest))?;
        copy(&src, &mut dst, Duration::from_secs(args.busy_timeout), "backup").map_err(tmp.rename_in(&args.dest))?
    };
    drop(src);
    tmp.persist(&args.dest)?;
    finish(global, "backup", &args.db, &args.dest, &tde, copied, args.verify)
}

/// Print the summary of a backup or restore, verifying the result first if asked.
fn finish(global: &Global, what: &str, from: &Path, to: &Path, tde: &Tde, copied: Copied, verify: bool) -> CliResult {
    let (header, _) = read_header(to)?;
    let report = if verify { Some(verify_database(tde, &global.keystore, to, false)?) } else { None };
    let mut out = io::stdout().lock();
    let uuid = uuid::Uuid::from_bytes(header.db_uuid).hyphenated().to_string();
    if global.json {
        let mut v = json!({
            "operation": what,
            "source": from.display().to_string(),
            "destination": to.display().to_string(),
            "pages": copied.pages,
            "page_size": copied.page_size,
            "db_uuid": uuid,
            "key_uri": header.key.uri,
            "key_id": header.key.key_id(),
            "key_version": header.key.version,
        });
        if let Some(r) = &report {
            v["verify"] = serde_json::to_value(r)?;
        }
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        writeln!(
            out,
            "{what}: {} pages of {} bytes from {} to {}",
            copied.pages,
            copied.page_size,
            from.display(),
            to.display()
        )?;
        writeln!(out, "db_uuid: {uuid}")?;
        writeln!(out, "key_id: {}", header.key.key_id())?;
        writeln!(out, "key_version: {}", header.key.version)?;
        if let Some(r) = &report {
            verify::write_text(&mut out, r)?;
        }
    }
    out.flush()?;
    match &report {
        Some(r) => verify::outcome(r).map_err(|mut e| {
            e.message = format!("{what} written, but verification failed: {}", e.message);
            if e.code != EXIT_PROBLEMS {
                e.code = EXIT_PROBLEMS;
            }
            e
        }),
        None => Ok(()),
    }
}

/// Run `sqlite-tde restore`.
pub fn run_restore(global: &Global, args: &RestoreArgs) -> CliResult {
    if !args.backup.exists() {
        return Err(CliError::failure(format!("{}: no such file", args.backup.display())));
    }
    check_destination(&args.backup, &args.db, true)?;
    let tde = open::register(global)?;
    let timeout = Duration::from_secs(args.busy_timeout);
    // An encrypted backup opens through the VFS; a plain SQLite file is imported.
    let (src, backup_key) = match read_header(&args.backup) {
        Ok((h, _)) => (open_source_conn(&tde, &global.keystore, &args.backup)?, Some(same_key(&h))),
        Err(Error::Header { source: HeaderError::PlainSqlite, .. }) => {
            let conn = Connection::open_with_flags(&args.backup, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
            (conn, None)
        }
        Err(e) => return Err(e.into()),
    };
    let exists = std::fs::metadata(&args.db).map(|m| m.len() > 0).unwrap_or(false);
    let copied = if exists {
        if !args.force {
            return Err(CliError::failure(format!(
                "{} already exists (use --force to overwrite its content)",
                args.db.display()
            )));
        }
        if args.key.is_some() {
            return Err(CliError::usage(format!(
                "--key applies to a database the restore creates; {} keeps its own key (rewrap it to change it)",
                args.db.display()
            )));
        }
        let mut dst = open::open(
            &tde,
            &global.keystore,
            &args.db,
            &OpenOptions { key: None, read_only: false, must_exist: true, ..Default::default() },
        )?;
        copy(&src, &mut dst, timeout, "restore")?
    } else {
        let tmp = TempDest::beside(&args.db);
        let copied = {
            let key = args.key.clone().or(backup_key);
            let mut dst = open::open(
                &tde,
                &global.keystore,
                &tmp.path,
                &OpenOptions { key, read_only: false, must_exist: false, ..Default::default() },
            )
            .map_err(tmp.rename_in(&args.db))?;
            copy(&src, &mut dst, timeout, "restore").map_err(tmp.rename_in(&args.db))?
        };
        tmp.persist(&args.db)?;
        copied
    };
    drop(src);
    finish(global, "restore", &args.backup, &args.db, &tde, copied, args.verify)
}

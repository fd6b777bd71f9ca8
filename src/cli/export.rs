//! `sqlite-tde export DB --format sql|sqlite`: decrypt a database for migration, as SQL text
//! (like `.dump`) or as a plain SQLite database file.
//!
//! Exporting decrypts: the data key is unwrapped through the KMS's Decrypt operation, so the
//! export needs the caller to be allowed to decrypt with the database's key, and appears in
//! the KMS audit log like any other Decrypt. Plain output files are created readable by the
//! owner only (0600).

use std::fs::OpenOptions as FsOpenOptions;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::Connection;
use serde_json::json;

use super::backup::{check_destination, copy, open_source_conn, progress_bar, TempDest};
use super::dump::dump;
use super::error::{CliError, CliResult};
use super::{open, Global};
use sqlite_tde::inspect::read_header;
use sqlite_tde::reader::Reader;

/// Output formats of `export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// SQL text that recreates the database (as the shell's `.dump`).
    Sql,
    /// A plain (unencrypted) SQLite database file.
    Sqlite,
}

/// Arguments of `sqlite-tde export`.
#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {
    /// Encrypted database to export; it may be in use by other processes.
    #[arg(value_name = "DB")]
    pub db: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ExportFormat::Sql)]
    pub format: ExportFormat,
    /// Output file (`-` or absent: standard output, for `--format sql` or `--raw`).
    #[arg(short = 'o', long = "output", value_name = "OUT")]
    pub output: Option<PathBuf>,
    /// With `--format sqlite`: decode the files with the built-in reader instead of SQLite
    /// (no VFS, no locks). Only for a database no process is writing.
    #[arg(long)]
    pub raw: bool,
    /// Replace OUT if it exists.
    #[arg(long)]
    pub force: bool,
    /// How long to wait for locks held by writers.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub busy_timeout: u64,
}

fn to_stdout(out: &Option<PathBuf>) -> bool {
    out.as_deref().is_none_or(|p| p == Path::new("-"))
}

/// Create `path` for plaintext output: new, owner-only.
fn create_private(path: &Path) -> CliResult<std::fs::File> {
    FsOpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| CliError::failure(format!("cannot create {}: {e}", path.display())))
}

/// Run `sqlite-tde export`.
pub fn run(global: &Global, args: &ExportArgs) -> CliResult {
    if args.raw && args.format != ExportFormat::Sqlite {
        return Err(CliError::usage("--raw applies to --format sqlite only"));
    }
    let stdout = to_stdout(&args.output);
    if args.format == ExportFormat::Sqlite && stdout && !args.raw {
        return Err(CliError::usage("--format sqlite needs an output file: -o OUT (or --raw to stream the image)"));
    }
    if args.format == ExportFormat::Sqlite && stdout && io::stdout().is_terminal() {
        return Err(CliError::usage("refusing to write a database image to a terminal: use -o OUT"));
    }
    if !args.db.exists() {
        return Err(CliError::failure(format!("{}: no such file", args.db.display())));
    }
    if let Some(out) = args.output.as_ref().filter(|_| !stdout) {
        check_destination(&args.db, out, args.force)?;
    }
    // Header problems (not encrypted, damaged) are reported before anything is written.
    read_header(&args.db)?;
    let tde = open::register(global)?;
    let timeout = Duration::from_secs(args.busy_timeout);
    let (pages, bytes) = match (args.format, args.raw) {
        (ExportFormat::Sql, _) => {
            let conn = open_source_conn(&tde, &global.keystore, &args.db)?;
            conn.busy_timeout(timeout)?;
            match args.output.as_ref().filter(|_| !stdout) {
                None => {
                    let mut out = BufWriter::new(io::stdout().lock());
                    dump(&conn, None, &mut out)?;
                    out.flush()?;
                    return Ok(());
                }
                Some(path) => {
                    let tmp = TempDest::beside(path);
                    let mut out = BufWriter::new(create_private(&tmp.path)?);
                    dump(&conn, None, &mut out)?;
                    let file = out.into_inner().map_err(|e| CliError::failure(e.to_string()))?;
                    file.sync_all()?;
                    let bytes = file.metadata()?.len();
                    drop(file);
                    tmp.persist(path)?;
                    (None, bytes)
                }
            }
        }
        (ExportFormat::Sqlite, false) => {
            let path = args.output.as_ref().expect("checked above");
            let src = open_source_conn(&tde, &global.keystore, &args.db)?;
            let tmp = TempDest::beside(path);
            drop(create_private(&tmp.path)?);
            let copied = {
                let mut dst = Connection::open(&tmp.path)?;
                copy(&src, &mut dst, timeout, "export")?
            };
            drop(src);
            tmp.persist(path)?;
            (Some(copied.pages), copied.pages * copied.page_size as u64)
        }
        (ExportFormat::Sqlite, true) => {
            // The reader opens descriptors of its own; nothing else in this process has the
            // database open.
            let kms = tde.context().kms.clone();
            let reader = Reader::open(&args.db, &*kms)?;
            let bar = progress_bar(reader.page_count() as u64, "export");
            let mut progress = |done: u64, total: u64| {
                bar.set_length(total);
                bar.set_position(done);
            };
            let Some(path) = args.output.as_ref().filter(|_| !stdout) else {
                let mut out = BufWriter::new(io::stdout().lock());
                reader.write_image(&mut out, &mut progress)?;
                out.flush()?;
                bar.finish_and_clear();
                return Ok(());
            };
            let tmp = TempDest::beside(path);
            let mut out = BufWriter::new(create_private(&tmp.path)?);
            let bytes = reader.write_image(&mut out, &mut progress)?;
            let file = out.into_inner().map_err(|e| CliError::failure(e.to_string()))?;
            file.sync_all()?;
            drop(file);
            tmp.persist(path)?;
            bar.finish_and_clear();
            (Some(reader.page_count() as u64), bytes)
        }
    };
    let path = args.output.as_ref().expect("file output");
    let mut out = io::stdout().lock();
    let format = match args.format {
        ExportFormat::Sql => "sql",
        ExportFormat::Sqlite => "sqlite",
    };
    if global.json {
        let v = json!({
            "source": args.db.display().to_string(),
            "output": path.display().to_string(),
            "format": format,
            "pages": pages,
            "bytes": bytes,
            "reader": if args.raw { "built-in" } else { "sqlite" },
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        writeln!(out, "export: {} ({format}, {bytes} bytes) from {}", path.display(), args.db.display())?;
    }
    out.flush()?;
    Ok(())
}

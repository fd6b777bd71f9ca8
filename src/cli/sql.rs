//! The `sql` command and its statement runner.

use std::io::{self, BufWriter, IsTerminal, Read, Write};
use std::path::PathBuf;

use rusqlite::fallible_iterator::FallibleIterator;
use rusqlite::types::Value;
use rusqlite::{Batch, Connection, Statement};

use super::error::{CliError, CliResult};
use super::output::{Mode, RowPrinter, Settings};
use super::script::{Flow, Processor};
use super::{history, open, shell, Global};
use sqlite_tde::error::take_last_open_error;
use sqlite_tde::OpenOptions;

/// Arguments of `sqlite-tde sql`.
#[derive(Debug, Clone, clap::Args)]
pub struct SqlArgs {
    /// Database file (created, encrypted, if it does not exist).
    #[arg(value_name = "DB")]
    pub db: PathBuf,
    /// KMS key for a database created by this command: key id or alias/NAME [default: the
    /// service-managed default key]. An existing database keeps the key its header names.
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
    /// Open the database read-only.
    #[arg(long)]
    pub read_only: bool,
    /// SQL to run; each argument may hold several `;`-separated statements, and an argument
    /// starting with `.` is a shell dot-command (e.g. `.dump`). Without any: an interactive
    /// shell if stdin is a terminal, else SQL read from stdin.
    #[arg(value_name = "SQL")]
    pub sql: Vec<String>,
    /// Interactive shell: keep a history of the lines typed, with literals and comments
    /// redacted, in $XDG_STATE_HOME/sqlite-tde/history [default: no history is written].
    #[arg(long)]
    pub history: bool,
}

/// Run `sqlite-tde sql`.
pub fn run(global: &Global, args: &SqlArgs) -> CliResult {
    let tde = open::register(global)?;
    let opts =
        OpenOptions { key: args.key.clone(), read_only: args.read_only, must_exist: false, ..Default::default() };
    let conn = open::open(&tde, &global.keystore, &args.db, &opts)?;
    let mut settings = Settings::default();
    if global.json {
        settings.mode = Mode::Json;
    }
    let out: Box<dyn Write> = Box::new(BufWriter::new(io::stdout()));
    let mut proc = Processor::new(&conn, settings, out);

    if !args.sql.is_empty() {
        for arg in &args.sql {
            if proc.argument(arg)? == Flow::Quit {
                break;
            }
        }
        return Ok(());
    }
    if io::stdin().is_terminal() {
        let legacy = history::legacy_path(&global.keystore);
        if legacy.exists() {
            eprintln!(
                "warning: {} is a plaintext shell history written by an older sqlite-tde; delete it",
                legacy.display()
            );
        }
        let path =
            if args.history {
                Some(history::default_path().ok_or_else(|| {
                    CliError::usage("--history needs $XDG_STATE_HOME or $HOME to place the history file")
                })?)
            } else {
                None
            };
        return shell::run(&mut proc, &args.db, path.as_deref());
    }
    let mut text = String::new();
    io::stdin().read_to_string(&mut text).map_err(|e| CliError::failure(format!("reading SQL from stdin: {e}")))?;
    proc.script(&text)?;
    Ok(())
}

/// Run every statement of `sql` in order, printing the rows of those that return any.
/// Stops at the first error.
pub fn execute(conn: &Connection, sql: &str, settings: Settings, out: &mut dyn Write) -> CliResult {
    // A stale reason from an earlier open must not be blamed on these statements.
    let _ = take_last_open_error();
    let mut batch = Batch::new(conn, sql);
    while let Some(stmt) = batch.next().map_err(statement_error)? {
        run_statement(stmt, settings, out)?;
    }
    Ok(())
}

fn run_statement(mut stmt: Statement<'_>, settings: Settings, out: &mut dyn Write) -> CliResult {
    let names: Vec<String> = stmt.column_names().map(String::from).collect();
    let columns = names.len();
    let mut printer = RowPrinter::new(settings, names, out);
    // Statements without result columns step once here, like any other.
    let mut rows = stmt.query([]).map_err(statement_error)?;
    while let Some(row) = rows.next().map_err(statement_error)? {
        let values = (0..columns).map(|i| row.get::<_, Value>(i)).collect::<Result<Vec<_>, _>>()?;
        printer.row(&values)?;
    }
    printer.finish()?;
    Ok(())
}

/// SQLite reports only a result code when a file open inside a statement fails (a journal or
/// WAL of an encrypted database, say); the VFS keeps the detailed reason, which says more.
fn statement_error(e: rusqlite::Error) -> CliError {
    match take_last_open_error() {
        Some(detail) => {
            let mut err = CliError::from(detail);
            err.message = format!("{e}: {}", err.message);
            err
        }
        None => e.into(),
    }
}

//! The `sqlite-tde` command line: argument types and dispatch. Each command lives in its own
//! module; the exit-code contract is in [`error`].

pub mod complete;
pub mod dot;
pub mod dump;
pub mod error;
pub mod info;
pub mod kms;
pub mod open;
pub mod output;
pub mod script;
pub mod shell;
pub mod sql;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use error::{CliError, CliResult, EXIT_FAILURE, EXIT_KEY, EXIT_OK, EXIT_USAGE};

use crate::kms::local::{default_keystore_dir, ENV_KEYSTORE};

const AFTER_HELP: &str = "\
Exit codes:
  0  success
  1  SQL or runtime error (syntax error, constraint violation, I/O error, missing file)
  2  usage error (bad command line)
  3  key, KMS or header error (wrong key, key not found or disabled, keystore unusable,
     not an sqlite-tde database, damaged header, rekey in progress)

Environment:
  SQLITE_TDE_KEYSTORE   keystore directory (same as --keystore)
  SQLITE_TDE_KMS        KMS provider (default local:)

Examples:
  sqlite-tde kms create-key --alias alias/app
  sqlite-tde sql app.db --key alias/app 'CREATE TABLE t(x)' 'INSERT INTO t VALUES(1)'
  echo 'SELECT * FROM t;' | sqlite-tde sql app.db
  sqlite-tde info --json app.db";

/// Transparent Data Encryption for SQLite: manage keys, run SQL on encrypted databases,
/// inspect their headers.
#[derive(Debug, Parser)]
#[command(name = "sqlite-tde", version, after_help = AFTER_HELP)]
pub struct Cli {
    /// Keystore directory of the embedded KMS [default: $XDG_DATA_HOME/sqlite-tde, else
    /// ~/.local/share/sqlite-tde]
    #[arg(long, global = true, value_name = "DIR", env = ENV_KEYSTORE)]
    pub keystore: Option<PathBuf>,
    /// Print data as JSON (key records, `info`, and result rows of `sql`).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage keys of the embedded KMS.
    #[command(subcommand)]
    Kms(kms::KmsCommand),
    /// Run SQL on an encrypted database (created if missing), or open an interactive shell.
    Sql(sql::SqlArgs),
    /// Show an encrypted database's format, identity, key and page size.
    Info(info::InfoArgs),
}

/// Options every command sees, resolved.
#[derive(Debug, Clone)]
pub struct Global {
    /// The keystore directory (flag, else environment, else the default).
    pub keystore: PathBuf,
    /// `--json`.
    pub json: bool,
}

/// Run the CLI on the process's arguments; returns the exit code.
pub fn main() -> ExitCode {
    ExitCode::from(run_args(std::env::args_os()))
}

/// Run the CLI on `args` (the first is the program name), reporting errors on stderr;
/// returns the exit code.
pub fn run_args(args: impl IntoIterator<Item = impl Into<OsString> + Clone>) -> u8 {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version are "errors" that print to stdout and exit 0; usage errors
            // exit 2.
            let _ = e.print();
            return u8::try_from(e.exit_code()).unwrap_or(EXIT_USAGE);
        }
    };
    match run(cli) {
        Ok(()) => EXIT_OK,
        Err(e) => {
            if !e.quiet {
                eprintln!("sqlite-tde: {}", e.message);
            }
            e.code
        }
    }
}

/// Dispatch a parsed command line.
pub fn run(cli: Cli) -> CliResult {
    let global = Global { keystore: cli.keystore.unwrap_or_else(default_keystore_dir), json: cli.json };
    match &cli.command {
        Command::Kms(cmd) => kms::run(&global, cmd),
        Command::Sql(args) => sql::run(&global, args),
        Command::Info(args) => info::run(&global, args),
    }
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}

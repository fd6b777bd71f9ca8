//! The `sqlite-tde` command line: argument types and dispatch. Each command lives in its own
//! module; the exit-code contract is in [`error`].

pub mod backup;
pub mod bench;
pub mod complete;
pub mod convert;
pub mod dot;
pub mod dump;
pub mod error;
pub mod export;
pub mod history;
pub mod info;
pub mod kms;
pub mod open;
pub mod output;
pub mod progress;
pub mod rekey;
pub mod rewrap;
pub mod script;
pub mod secrets;
pub mod shell;
pub mod sql;
pub mod upgrade;
pub mod verify;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use error::{CliError, CliResult, EXIT_OK, EXIT_USAGE};

use sqlite_tde::kms::local::{default_keystore_dir, ENV_KEYSTORE};
use sqlite_tde::kms::KmsSpec;

const AFTER_HELP: &str = "\
Exit codes:
  0  success
  1  SQL or runtime error (syntax error, constraint violation, I/O error, missing file)
  2  usage error (bad command line)
  3  key, KMS or header error (wrong key, key not found or disabled, keystore unusable,
     not an sqlite-tde database, damaged header, rekey in progress (running or
     interrupted), interrupted in-place encryption); `info` exits 3 after printing the
     header when it could not use the key (the reason is on stderr)
  4  verify (and backup/restore --verify) found a problem: damaged header slot,
     page, WAL frame or journal, failed integrity_check; with only KMS problems
     (key not found, disabled, access denied) verify exits 3 instead
  130  rekey or encrypt --in-place stopped by Ctrl-C; the database stays usable and the
     next open (or rekey --resume / encrypt --in-place --resume) finishes the operation

Environment:
  SQLITE_TDE_KEYSTORE   keystore directory (same as --keystore)
  SQLITE_TDE_KMS        KMS provider (same as --kms; default local:)
  SQLITE_TDE_PRINCIPAL  caller's principal for the embedded KMS (same as --principal)

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
    /// KMS to use: `local:` (the embedded KMS over --keystore, the default), `unix:PATH` (a
    /// `sqlite-tde kms serve` daemon), or `openbao+https://HOST:PORT/MOUNT/KEY` (OpenBao /
    /// Vault transit).
    #[arg(long, global = true, value_name = "SPEC", env = sqlite_tde::kms::ENV_KMS, value_parser = parse_kms)]
    pub kms: Option<KmsSpec>,
    /// Principal to act as with the embedded KMS [default: the OS user]. A daemon takes the
    /// principal from the connection (peer uid or bearer token) instead.
    #[arg(long, global = true, value_name = "P", env = sqlite_tde::kms::ENV_PRINCIPAL)]
    pub principal: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage KMS keys: lifecycle, rotation, BYOK, policies, audit, and the KMS daemon.
    #[command(subcommand)]
    Kms(kms::KmsCommand),
    /// Keep small versioned secrets (API tokens, passwords) encrypted under a KMS key.
    #[command(subcommand)]
    Secrets(secrets::SecretsCommand),
    /// Run SQL on an encrypted database (created if missing), or open an interactive shell.
    Sql(sql::SqlArgs),
    /// Show an encrypted database's format, identity, key and page size.
    Info(info::InfoArgs),
    /// Check an encrypted database: header slots, key, every page, WAL, journal and
    /// integrity_check; exit 4 on any problem.
    Verify(verify::VerifyArgs),
    /// Online, consistent backup (SQLite's backup API) into a new encrypted database with a
    /// fresh data key.
    Backup(backup::BackupArgs),
    /// Restore a backup (encrypted, or a plain SQLite file) into an encrypted database.
    Restore(backup::RestoreArgs),
    /// Decrypt for migration: SQL text (like .dump) or a plain SQLite file. Uses the KMS
    /// Decrypt operation (audited).
    Export(export::ExportArgs),
    /// Rotate the CMK: wrap the data key under the CMK's newest version (or another CMK),
    /// without touching pages; `--all` for a fleet of files.
    Rewrap(rewrap::RewrapArgs),
    /// Rewrite format-1 headers (not authenticated) in the current format; `--all` for a
    /// fleet of files.
    Upgrade(upgrade::UpgradeArgs),
    /// Rotate the data key: re-encrypt every page under a new one (crash-safe, resumable).
    Rekey(rekey::RekeyArgs),
    /// Encrypt a plain SQLite database: a new encrypted copy, or --in-place.
    Encrypt(convert::EncryptArgs),
    /// Write a plaintext copy of an encrypted database (migration, debugging; KMS Decrypt).
    Decrypt(convert::DecryptArgs),
    /// Measure encryption cost on this machine: page cipher throughput and SQL workloads,
    /// encrypted vs plain SQLite, in one run (`--quick`: under a minute).
    Bench(bench::BenchArgs),
}

/// Options every command sees, resolved.
#[derive(Debug, Clone)]
pub struct Global {
    /// The keystore directory (flag, else environment, else the default).
    pub keystore: PathBuf,
    /// `--json`.
    pub json: bool,
    /// `--kms` (else `local:`), parsed once.
    pub kms: KmsSpec,
    /// `--principal`: who the embedded KMS acts for (default: the OS user).
    pub principal: Option<String>,
}

impl Global {
    /// The principal the embedded KMS sees for this invocation.
    pub fn principal(&self) -> String {
        self.principal.clone().unwrap_or_else(sqlite_tde::kms::policy::default_principal)
    }

    /// The embedded KMS over `--keystore`, acting for `--principal`.
    pub fn local_kms(&self) -> sqlite_tde::kms::local::LocalKms {
        let kms = sqlite_tde::kms::local::LocalKms::new(&self.keystore);
        match &self.principal {
            Some(p) => kms.with_principal(p),
            None => kms,
        }
    }
}

/// `--kms` / SQLITE_TDE_KMS (empty: the default).
fn parse_kms(s: &str) -> Result<KmsSpec, String> {
    s.parse().map_err(|e| match e {
        sqlite_tde::kms::KmsError::InvalidRequest(m) => m,
        other => other.to_string(),
    })
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

/// Debug builds (tests, drills): `SQLITE_TDE_TEST_NOW` pins the clock of every KMS this
/// process makes. Release builds contain no test clock: there the variable is only reported
/// as ignored.
fn pin_test_clock() -> CliResult {
    const VAR: &str = "SQLITE_TDE_TEST_NOW";
    let Some(v) = std::env::var_os(VAR) else { return Ok(()) };
    #[cfg(debug_assertions)]
    {
        let v = v.to_str().ok_or_else(|| CliError::usage(format!("{VAR} is not UTF-8")))?;
        let t = sqlite_tde::kms::clock::parse_time(v).map_err(|e| CliError::usage(format!("{VAR}: {e}")))?;
        sqlite_tde::kms::clock::pin_process_clock(t);
    }
    #[cfg(not(debug_assertions))]
    {
        let _ = v;
        eprintln!("sqlite-tde: warning: {VAR} is ignored (test clocks exist in debug builds only)");
    }
    Ok(())
}

/// Dispatch a parsed command line.
pub fn run(cli: Cli) -> CliResult {
    pin_test_clock()?;
    // --kms and --principal are passed down to every KMS this process builds (the VFS's too).
    let global = Global {
        keystore: cli.keystore.unwrap_or_else(default_keystore_dir),
        json: cli.json,
        kms: cli.kms.unwrap_or_default(),
        principal: cli.principal.filter(|p| !p.is_empty()),
    };
    sqlite_tde::kms::events::on_keystore_created(|ev| eprintln!("sqlite-tde: {}", creation_notice(ev)));
    sqlite_tde::kms::events::on_keystore_upgraded(|ev| {
        eprintln!(
            "sqlite-tde: upgraded keystore {} from format {} to {} (authenticated under the root key; builds before \
             this one cannot read it)",
            ev.dir.display(),
            ev.from,
            ev.to
        )
    });
    match &cli.command {
        Command::Kms(cmd) => kms::run(&global, cmd),
        Command::Secrets(cmd) => secrets::run(&global, cmd),
        Command::Sql(args) => sql::run(&global, args),
        Command::Info(args) => info::run(&global, args),
        Command::Verify(args) => verify::run(&global, args),
        Command::Backup(args) => backup::run_backup(&global, args),
        Command::Restore(args) => backup::run_restore(&global, args),
        Command::Export(args) => export::run(&global, args),
        Command::Rewrap(args) => rewrap::run(&global, args),
        Command::Upgrade(args) => upgrade::run(&global, args),
        Command::Rekey(args) => rekey::run(&global, args),
        Command::Encrypt(args) => convert::run_encrypt(&global, args),
        Command::Decrypt(args) => convert::run_decrypt(&global, args),
        Command::Bench(args) => bench::run(&global, args),
    }
}

/// What the operator is told, once, when a command creates a keystore: where it is, and that
/// losing it loses every database under its keys.
pub fn creation_notice(ev: &sqlite_tde::kms::events::KeystoreCreated) -> String {
    let root = match &ev.root_key_file {
        Some(f) if f.starts_with(&ev.dir) => format!("root key {}", f.display()),
        Some(f) => format!("root key {} (outside the keystore: back it up separately)", f.display()),
        None => "root key derived from SQLITE_TDE_PASSPHRASE (keep the passphrase)".to_string(),
    };
    format!(
        "created a new keystore in {} ({root}). Back up this directory (`sqlite-tde kms backup FILE`): \
         databases encrypted under its keys cannot be opened without it",
        ev.dir.display()
    )
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

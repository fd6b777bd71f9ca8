//! `sqlite-tde encrypt` and `sqlite-tde decrypt`: conversions between plain SQLite databases
//! and encrypted ones.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::error::{CliError, CliResult};
use super::progress::{Reporter, EXIT_INTERRUPTED};
use super::{open, Global};
use sqlite_tde::rotation::{self, convert};

/// Arguments of `sqlite-tde encrypt`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "\
Without --in-place, OUT is a new encrypted copy made with SQLite's backup API (PLAIN may be
in use). With --in-place, PLAIN itself is encrypted, crash-safe and resumable: an
interrupted conversion is finished by the next open through sqlite-tde, or by
`sqlite-tde encrypt --in-place --resume PLAIN`. Plain SQLite refuses the file meanwhile.")]
pub struct EncryptArgs {
    /// The plain SQLite database.
    #[arg(value_name = "PLAIN")]
    pub plain: PathBuf,
    /// The encrypted copy to create (not with --in-place).
    #[arg(value_name = "OUT", required_unless_present = "in_place", conflicts_with = "in_place")]
    pub out: Option<PathBuf>,
    /// CMK (key id or alias/NAME) [default: the service-managed default key].
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
    /// Encrypt PLAIN where it lies.
    #[arg(long)]
    pub in_place: bool,
    /// Only finish an interrupted in-place encryption.
    #[arg(long, requires = "in_place")]
    pub resume: bool,
    /// With --resume: finish a conversion interrupted under an earlier sqlite-tde (format 1),
    /// whose state file is not authenticated. Only if you know that build started it: anyone
    /// who can write the files can forge such a state (docs/FORMAT.md §11).
    #[arg(long, requires = "resume")]
    pub trust_format_1: bool,
    /// Bytes moved per crash-safe step of --in-place (rounded down to 4 KiB) [default: 32 MiB].
    #[arg(long, value_name = "BYTES", requires = "in_place")]
    pub chunk_size: Option<u64>,
    /// How long to wait for other connections, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    pub busy_timeout: u64,
}

/// Arguments of `sqlite-tde decrypt`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "\
Writes a PLAINTEXT copy: for migration or debugging only. Needs permission to decrypt with
the database's CMK (the KMS is always asked, even when the key is cached, and audits it).
OUT is created readable by its owner only (0600). An existing OUT (a symbolic link too) is
refused; --force replaces it, and a symbolic link there is replaced, never followed.")]
pub struct DecryptArgs {
    /// The encrypted database.
    #[arg(value_name = "ENC")]
    pub enc: PathBuf,
    /// The plain copy to create.
    #[arg(value_name = "OUT")]
    pub out: PathBuf,
    /// Replace OUT if it exists (a symbolic link at OUT is replaced, not followed).
    #[arg(long)]
    pub force: bool,
}

fn print(global: &Global, r: &convert::ConvertReport, what: &str) -> CliResult {
    let mut out = std::io::stdout().lock();
    if global.json {
        let mut v = serde_json::to_value(r)?;
        v["event"] = "result".into();
        writeln!(out, "{v}")?;
    } else {
        let key = match (&r.key_uri, r.key_version) {
            (Some(k), Some(v)) => format!(" ({k} v{v})"),
            _ => String::new(),
        };
        writeln!(
            out,
            "{what} {} -> {}: {} ({} bytes, {:.2} s){key}",
            r.source.display(),
            r.target.display(),
            r.status,
            r.bytes,
            r.seconds
        )?;
    }
    Ok(())
}

fn interrupted(path: &std::path::Path) -> CliError {
    CliError {
        code: EXIT_INTERRUPTED,
        message: format!(
            "interrupted; run `sqlite-tde encrypt --in-place --resume {}` (or open it through sqlite-tde) to finish",
            path.display()
        ),
        quiet: false,
    }
}

/// Run `sqlite-tde encrypt`.
pub fn run_encrypt(global: &Global, args: &EncryptArgs) -> CliResult {
    let tde = open::register(global)?;
    let reporter = Arc::new(Mutex::new(Reporter::new(global.json)));
    let result = rotation::with_progress(Reporter::observer(&reporter), || {
        if args.in_place {
            let opts = convert::InPlaceOptions {
                key: args.key.clone(),
                chunk: args.chunk_size,
                busy_timeout: Some(Duration::from_millis(args.busy_timeout)),
                resume_only: args.resume,
                trust_format_1: args.trust_format_1,
            };
            convert::encrypt_in_place(&tde, &args.plain, &opts)
        } else {
            convert::encrypt_copy(
                &tde,
                &args.plain,
                args.out.as_deref().expect("clap requires OUT"),
                args.key.as_deref(),
            )
        }
    });
    let rep = reporter.lock().unwrap_or_else(|e| e.into_inner());
    rep.finish();
    let stopped = rep.stopped();
    drop(rep);
    let r = match result {
        Ok(r) => r,
        Err(e) if stopped && args.in_place => {
            let _ = e;
            return Err(interrupted(&args.plain));
        }
        Err(e) => return Err(super::progress::cli_error(e, &global.keystore)),
    };
    print(global, &r, "encrypt")?;
    if r.status == "interrupted" {
        return Err(interrupted(&args.plain));
    }
    Ok(())
}

/// Run `sqlite-tde decrypt`.
pub fn run_decrypt(global: &Global, args: &DecryptArgs) -> CliResult {
    let tde = open::register(global)?;
    let reporter = Arc::new(Mutex::new(Reporter::new(global.json)));
    let existing = if args.force { convert::Existing::Replace } else { convert::Existing::Refuse };
    let result = rotation::with_progress(Reporter::observer(&reporter), || {
        convert::decrypt_copy(&tde, &args.enc, &args.out, existing)
    });
    reporter.lock().unwrap_or_else(|e| e.into_inner()).finish();
    let r = result.map_err(|e| super::progress::cli_error(e, &global.keystore))?;
    print(global, &r, "decrypt")
}

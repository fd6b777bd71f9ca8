//! `sqlite-tde rekey DB`: rotate the data key (DEK), re-encrypting every page. Crash-safe and
//! resumable: an interrupted rekey (Ctrl-C, kill, power loss) is finished by the next open of
//! the database or by `rekey --resume`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::error::{CliError, CliResult};
use super::progress::{Reporter, EXIT_INTERRUPTED};
use super::{open, Global};
use sqlite_tde::rotation::{self, RekeyOptions};

/// Arguments of `sqlite-tde rekey`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "\
The database stays usable by other connections in rollback mode (they wait, or get
SQLITE_BUSY, while the rekey holds its exclusive lock). In WAL mode every other connection
must be closed: the WAL is checkpointed first and a connection in WAL mode holds a shared
lock for its whole life.

Ctrl-C stops at the next chunk boundary (exit code 130); the next open of the database,
or `sqlite-tde rekey --resume DB`, finishes the rekey.")]
pub struct RekeyArgs {
    /// Database file.
    #[arg(value_name = "DB")]
    pub db: PathBuf,
    /// CMK for the new data key (key id or alias/NAME) [default: the database's current CMK].
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
    /// Only finish an interrupted rekey; do not start a new one.
    #[arg(long)]
    pub resume: bool,
    /// With --resume: finish a rekey interrupted under an earlier sqlite-tde (format 1), whose
    /// rekey state is not authenticated. Only if you know that build started it: anyone who
    /// can write the file can forge such a state (docs/FORMAT.md §11).
    #[arg(long, requires = "resume")]
    pub trust_format_1: bool,
    /// Bytes re-encrypted per crash-safe step (rounded down to 4 KiB) [default: 32 MiB].
    #[arg(long, value_name = "BYTES")]
    pub chunk_size: Option<u64>,
    /// How long to wait for other connections to release the database, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    pub busy_timeout: u64,
}

/// Run `sqlite-tde rekey`.
pub fn run(global: &Global, args: &RekeyArgs) -> CliResult {
    let tde = open::register(global)?;
    let reporter = Arc::new(Mutex::new(Reporter::new(global.json)));
    let opts = RekeyOptions {
        key: args.key.clone(),
        chunk: args.chunk_size,
        busy_timeout: Duration::from_millis(args.busy_timeout),
        resume_only: args.resume,
        trust_format_1: args.trust_format_1,
    };
    let result = rotation::with_progress(Reporter::observer(&reporter), || rotation::rekey(&tde, &args.db, &opts));
    let rep = reporter.lock().unwrap_or_else(|e| e.into_inner());
    rep.finish();
    let interrupted_by_signal = rep.stopped();
    drop(rep);
    let report = match result {
        Ok(r) => r,
        Err(e) if interrupted_by_signal && matches!(e, sqlite_tde::Error::RekeyInProgress { .. }) => {
            return Err(CliError {
                code: EXIT_INTERRUPTED,
                message: format!(
                    "interrupted; run `sqlite-tde rekey --resume {}` (or just open the database) to finish",
                    args.db.display()
                ),
                quiet: false,
            })
        }
        Err(e) => return Err(open::explain_busy(e, &args.db, opts.busy_timeout).into()),
    };
    let mut out = std::io::stdout().lock();
    if global.json {
        let mut v = serde_json::to_value(&report)?;
        v["event"] = "result".into();
        v["db"] = args.db.display().to_string().into();
        writeln!(out, "{v}")?;
    } else {
        match report.status.as_str() {
            "done" => writeln!(
                out,
                "rekeyed {}: {} bytes re-encrypted in {:.2} s; new data key wrapped by {} v{}",
                args.db.display(),
                report.bytes,
                report.seconds,
                report.key_uri,
                report.key_version
            )?,
            "resumed" => writeln!(
                out,
                "finished the interrupted rekey of {}; data key wrapped by {} v{}",
                args.db.display(),
                report.key_uri,
                report.key_version
            )?,
            "nothing-to-resume" => writeln!(out, "{}: no rekey in progress", args.db.display())?,
            other => writeln!(out, "{}: {other}", args.db.display())?,
        }
    }
    if report.status == "interrupted" {
        return Err(CliError {
            code: EXIT_INTERRUPTED,
            message: format!(
                "interrupted; run `sqlite-tde rekey --resume {}` (or just open the database) to finish",
                args.db.display()
            ),
            quiet: false,
        });
    }
    Ok(())
}

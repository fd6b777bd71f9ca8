//! `sqlite-tde upgrade DB` / `upgrade --all PATH...`: rewrite format-1 headers (checksummed,
//! not authenticated) in the current format, whose slots are MACed under the data key
//! (docs/FORMAT.md §11). The rewrite is a rewrap to the newest version of the database's CMK:
//! both A/B slots are replaced one after the other, pages are not touched, other connections
//! keep working.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

use super::error::{CliError, CliResult};
use super::{open, Global};
use sqlite_tde::format::FORMAT_VERSION;
use sqlite_tde::rotation::{self, RewrapOptions};

/// Arguments of `sqlite-tde upgrade`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "\
A format-1 database keeps opening without an upgrade, but its header is not authenticated:
whoever can write the file could plant state that tde acts on. An interrupted rekey or
in-place encryption must be finished first (`rekey --resume --trust-format-1`). With --all,
every PATH that is a directory is searched recursively for sqlite-tde databases.")]
pub struct UpgradeArgs {
    /// Database file(s); with --all, files and directories.
    #[arg(value_name = "PATH", required = true)]
    pub paths: Vec<PathBuf>,
    /// Upgrade every database found under the PATHs.
    #[arg(long)]
    pub all: bool,
    /// How long to wait for a writer holding the database, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    pub busy_timeout: u64,
}

/// Run `sqlite-tde upgrade`.
pub fn run(global: &Global, args: &UpgradeArgs) -> CliResult {
    let mut files = Vec::new();
    if args.all {
        for p in &args.paths {
            super::rewrap::collect(p, &mut files).map_err(|e| CliError::failure(format!("{}: {e}", p.display())))?;
        }
    } else {
        if args.paths.len() != 1 {
            return Err(CliError::usage("upgrade takes one DB (use --all for several paths)"));
        }
        files.push(args.paths[0].clone());
    }
    let tde = open::register(global)?;
    let opts = RewrapOptions { key: None, busy_timeout: Duration::from_millis(args.busy_timeout) };
    let mut out = std::io::stdout().lock();
    let mut failures: Vec<CliError> = Vec::new();
    for f in &files {
        let result = sqlite_tde::inspect::read_header(f).and_then(|(h, _)| {
            if h.format >= FORMAT_VERSION {
                Ok(("current", h.format))
            } else {
                rotation::rewrap(&tde, f, &opts).map(|_| ("upgraded", h.format))
            }
        });
        match result {
            Ok((status, from)) => {
                if global.json {
                    writeln!(
                        out,
                        "{}",
                        json!({"path": f, "status": status, "from_format": from, "format": FORMAT_VERSION})
                    )?;
                } else if status == "current" {
                    writeln!(out, "{:<10} {}  (format {FORMAT_VERSION})", status, f.display())?;
                } else {
                    writeln!(out, "{:<10} {}  format {from} -> {FORMAT_VERSION}", status, f.display())?;
                }
            }
            Err(e) => {
                let e = super::progress::cli_error(e, &global.keystore);
                if global.json {
                    writeln!(out, "{}", json!({"path": f, "status": "failed", "error": e.message}))?;
                } else if args.all {
                    writeln!(out, "{:<10} {}  {}", "failed", f.display(), e.message)?;
                }
                failures.push(e);
            }
        }
    }
    super::rewrap::fleet_result(failures, files.len(), args.all, "upgraded")
}

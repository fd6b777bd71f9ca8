//! `sqlite-tde bench [--quick]`: page cipher throughput and the SQL workload, encrypted vs
//! plain SQLite, measured side by side in one run (see `sqlite_tde::bench` and
//! docs/PERFORMANCE.md). Uses a temporary directory and a keystore of its own.

use std::path::PathBuf;

use clap::Args;

use super::{CliError, CliResult, Global};
use sqlite_tde::bench::{self, Options};

/// Arguments of `sqlite-tde bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Short run (under a minute): 50,000 rows and 3 rounds instead of 200,000 and 5.
    #[arg(long)]
    pub quick: bool,
    /// Directory for the benchmark's databases and keystore [default: a temporary directory].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Do not run `openssl speed` for the cipher comparison.
    #[arg(long)]
    pub no_openssl: bool,
}

/// Run the benchmark; the table (last line: the summary) or, with `--json`, the report as
/// JSON goes to stdout, progress to stderr.
pub fn run(global: &Global, args: &BenchArgs) -> CliResult {
    let mut opts = if args.quick { Options::quick() } else { Options::full() };
    opts.dir = args.dir.clone();
    opts.progress = true;
    opts.openssl = !args.no_openssl;
    let report = bench::run(&opts).map_err(|e| CliError::failure(format!("bench: {e}")))?;
    if global.json {
        let text = serde_json::to_string_pretty(&report.to_json()).map_err(|e| CliError::failure(e.to_string()))?;
        println!("{text}");
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

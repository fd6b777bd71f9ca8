//! `sqlite-tde rewrap DB` / `rewrap --all PATH...`: CMK rotation without touching pages. The
//! data key is wrapped again under the newest version of its CMK (or under `--key`), and the
//! header is replaced atomically (A/B slots) while other connections keep working.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use super::error::{CliError, CliResult, EXIT_FAILURE};
use super::{open, Global};
use sqlite_tde::format::MAGIC;
use sqlite_tde::kms::Kms;
use sqlite_tde::rotation::{self, RewrapOptions};

/// Arguments of `sqlite-tde rewrap`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "\
With --all, every PATH that is a directory is searched recursively for sqlite-tde databases
(files starting with the header magic). The report ends with the CMK versions still
referenced by any file: do not disable or retire a version while something references it.")]
pub struct RewrapArgs {
    /// Database file(s); with --all, files and directories.
    #[arg(value_name = "PATH", required = true)]
    pub paths: Vec<PathBuf>,
    /// Rotate every database found under the PATHs.
    #[arg(long)]
    pub all: bool,
    /// Wrap under this CMK (key id or alias/NAME) instead of the newest version of the
    /// current one.
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
    /// How long to wait for a writer holding the database, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    pub busy_timeout: u64,
}

/// sqlite-tde database files under `path` (the file itself, or recursively a directory).
pub(super) fn collect(path: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let md = std::fs::metadata(path)?;
    if md.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)?.flatten().map(|e| e.path()).collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                collect(&p, out)?;
            } else if has_magic(&p) {
                out.push(p);
            }
        }
    } else {
        out.push(path.to_path_buf());
    }
    Ok(())
}

fn has_magic(p: &Path) -> bool {
    use std::io::Read;
    let mut b = [0u8; 8];
    std::fs::File::open(p).and_then(|mut f| f.read_exact(&mut b)).is_ok() && b == MAGIC
}

/// Key references of a file's header: (key uri, version), the rekey target included.
fn references(p: &Path) -> Vec<(String, u32)> {
    match sqlite_tde::inspect::read_header(p) {
        Ok((h, _)) => {
            let mut v = vec![(h.key.uri.clone(), h.key.version)];
            if let Some(r) = h.rekey {
                v.push((r.key.uri, r.key.version));
            }
            v
        }
        Err(_) => Vec::new(),
    }
}

/// Run `sqlite-tde rewrap`.
pub fn run(global: &Global, args: &RewrapArgs) -> CliResult {
    let mut files = Vec::new();
    if args.all {
        for p in &args.paths {
            collect(p, &mut files).map_err(|e| CliError::failure(format!("{}: {e}", p.display())))?;
        }
    } else {
        if args.paths.len() != 1 {
            return Err(CliError::usage("rewrap takes one DB (use --all for several paths)"));
        }
        files.push(args.paths[0].clone());
    }
    let tde = open::register(global)?;
    let opts = RewrapOptions { key: args.key.clone(), busy_timeout: Duration::from_millis(args.busy_timeout) };
    let mut out = std::io::stdout().lock();
    let mut failures: Vec<CliError> = Vec::new();
    for f in &files {
        match rotation::rewrap(&tde, f, &opts) {
            Ok(r) => {
                if global.json && args.all {
                    writeln!(
                        out,
                        "{}",
                        json!({"event": "file", "path": f, "status": r.status, "key_uri": r.key_uri,
                        "format_upgraded": r.format_upgraded, "key_version": r.key_version, "previous_key_uri": r.previous_key_uri, "previous_key_version": r.previous_key_version})
                    )?;
                } else if global.json {
                    writeln!(out, "{}", serde_json::to_string_pretty(&r)?)?;
                } else {
                    writeln!(
                        out,
                        "{:<10} {}  {} v{} -> {} v{}{}",
                        r.status,
                        f.display(),
                        r.previous_key_uri,
                        r.previous_key_version,
                        r.key_uri,
                        r.key_version,
                        if r.format_upgraded { "  (header upgraded from format 1)" } else { "" }
                    )?;
                }
            }
            Err(e) => {
                let e = super::progress::cli_error(open::explain_busy(e, f, opts.busy_timeout), &global.keystore);
                if global.json && args.all {
                    writeln!(out, "{}", json!({"event": "file", "path": f, "status": "failed", "error": e.message}))?;
                } else if args.all {
                    writeln!(out, "{:<10} {}  {}", "failed", f.display(), e.message)?;
                }
                failures.push(e);
            }
        }
    }
    if args.all {
        report_references(global, &files, &mut out)?;
    }
    fleet_result(failures, files.len(), args.all, "rewrapped")
}

/// The outcome of a command run over several files: a single file's own error, or a count.
pub(super) fn fleet_result(mut failures: Vec<CliError>, files: usize, all: bool, what: &str) -> CliResult {
    match failures.len() {
        0 => Ok(()),
        1 if !all => Err(failures.pop().unwrap()),
        n => Err(CliError {
            code: EXIT_FAILURE,
            message: format!("{n} of {files} databases could not be {what}"),
            quiet: false,
        }),
    }
}

/// Which CMK versions the files still reference, and which files reference a version older
/// than the newest (per the local keystore when the key lives there, else the newest seen).
fn report_references(global: &Global, files: &[PathBuf], out: &mut dyn Write) -> CliResult {
    let mut by_key: BTreeMap<String, BTreeMap<u32, Vec<PathBuf>>> = BTreeMap::new();
    for f in files {
        for (uri, v) in references(f) {
            by_key.entry(uri).or_default().entry(v).or_default().push(f.clone());
        }
    }
    // The KMS the command runs against (--kms), and the local keystore for local keys.
    let selected = global.kms.connect(Some(&global.keystore), global.principal.as_deref()).ok();
    let local = global.local_kms();
    let mut stale = Vec::new();
    let mut keys = Vec::new();
    for (uri, versions) in &by_key {
        let seen_max = versions.keys().copied().max().unwrap_or(0);
        let newest = selected
            .as_ref()
            .and_then(|k| k.newest_version(uri))
            .or_else(|| local.newest_version(uri))
            .unwrap_or(seen_max)
            .max(seen_max);
        for (v, fs) in versions {
            if *v < newest {
                for f in fs {
                    stale.push(json!({"path": f, "key_uri": uri, "key_version": v}));
                }
            }
        }
        keys.push(json!({
            "key_uri": uri,
            "newest_version": newest,
            "referenced_versions": versions.iter().map(|(v, fs)| json!({"version": v, "files": fs.len()})).collect::<Vec<_>>(),
        }));
    }
    if global.json {
        writeln!(
            out,
            "{}",
            json!({"event": "summary", "files": files.len(), "keys": keys, "older_version_references": stale})
        )?;
    } else {
        for k in &keys {
            let refs: Vec<String> = k["referenced_versions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| format!("v{} ({} file{})", r["version"], r["files"], if r["files"] == 1 { "" } else { "s" }))
                .collect();
            writeln!(
                out,
                "key {}: newest v{}; referenced: {}",
                k["key_uri"].as_str().unwrap_or(""),
                k["newest_version"],
                refs.join(", ")
            )?;
        }
        if stale.is_empty() {
            writeln!(out, "no file references an older key version")?;
        } else {
            writeln!(out, "still referencing older versions (do not retire them yet):")?;
            for s in &stale {
                writeln!(
                    out,
                    "  {}  {} v{}",
                    s["path"].as_str().unwrap_or(""),
                    s["key_uri"].as_str().unwrap_or(""),
                    s["key_version"]
                )?;
            }
        }
    }
    Ok(())
}

//! `sqlite-tde verify DB`: check everything that can be checked about an encrypted database
//! and report every problem (see `reader::verify`), then run SQLite's integrity_check through
//! the VFS.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::backup::progress_bar;
use super::error::{CliError, CliResult, EXIT_KEY};
use super::{open, Global};
use sqlite_tde::crypto::XtsCipher;
use sqlite_tde::format::Header;
use sqlite_tde::keycache::CacheKey;
use sqlite_tde::reader::verify::{verify_with, Area, Report};
use sqlite_tde::reader::{journal_path, unwrap_key_cipher};
use sqlite_tde::{OpenOptions, Tde};

/// Exit code of `verify` (and of `backup --verify`, `restore --verify`) when the database has
/// a problem.
pub const EXIT_PROBLEMS: u8 = 4;

/// Arguments of `sqlite-tde verify`.
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// Database file. Reads the files directly: run it on a database no process is writing
    /// (a stopped application, a backup), or transient states of a live WAL may show up.
    #[arg(value_name = "DB")]
    pub db: PathBuf,
    /// Run SQLite's quick_check instead of the full integrity_check.
    #[arg(long)]
    pub quick: bool,
}

/// Run `sqlite-tde verify`.
pub fn run(global: &Global, args: &VerifyArgs) -> CliResult {
    let tde = open::register(global)?;
    let report = verify_database(&tde, &global.keystore, &args.db, args.quick)?;
    let mut out = io::stdout().lock();
    if global.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        write_text(&mut out, &report)?;
    }
    out.flush()?;
    outcome(&report)
}

/// Unwrap through the VFS's key cache, so the integrity_check that follows (and anything else
/// this process opens) needs no second KMS call.
fn cached_unwrap(tde: &Tde, path: &Path, header: &Header) -> sqlite_tde::Result<Arc<XtsCipher>> {
    let ctx = tde.context();
    if header.rekey.is_some() {
        return Err(sqlite_tde::Error::RekeyInProgress { path: path.display().to_string() });
    }
    ctx.cache.get_or_unwrap(CacheKey::new(header.db_uuid, &header.wrapped_dek), &header.key.uri, || {
        unwrap_key_cipher(path, &*ctx.kms, header)
    })
}

/// Verify `db` completely: the file-level checks, then integrity_check (or quick_check)
/// through the VFS when the key is usable.
pub fn verify_database(tde: &Tde, keystore: &Path, db: &Path, quick: bool) -> CliResult<Report> {
    let bar = progress_bar(0, "verify");
    let mut report = verify_with(
        db,
        |h| cached_unwrap(tde, db, h),
        |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        },
    )?;
    bar.finish_and_clear();
    // The reader's descriptors are closed now: SQLite may open the file in this process.
    let key_ok = report.key_check == "ok";
    let hot_journal = report.journal.as_ref().is_some_and(|j| j.hot);
    if key_ok && hot_journal {
        report.warnings.push(format!(
            "integrity_check skipped: SQLite would roll back the hot journal {} first (open the database once to do \
             that, then verify again)",
            journal_path(db).display()
        ));
    } else if key_ok && report.page_count.is_some() {
        match integrity_check(tde, keystore, db, quick) {
            Ok(rows) => {
                if rows != ["ok"] {
                    let n = rows.len();
                    for row in rows.iter().take(20) {
                        report.problem(Area::Integrity, row.clone());
                    }
                    if n > 20 {
                        report.problem(Area::Integrity, format!("... and {} more integrity_check messages", n - 20));
                    }
                }
                report.integrity_check = Some(rows);
            }
            Err(e) => report.problem(Area::Integrity, format!("cannot run integrity_check: {}", e.message)),
        }
    }
    report.finish();
    Ok(report)
}

fn integrity_check(tde: &Tde, keystore: &Path, db: &Path, quick: bool) -> CliResult<Vec<String>> {
    let conn = open::open(
        tde,
        keystore,
        db,
        &OpenOptions { key: None, read_only: true, must_exist: true, ..Default::default() },
    )?;
    let pragma = if quick { "PRAGMA quick_check" } else { "PRAGMA integrity_check" };
    let mut stmt = conn.prepare(pragma)?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?.collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// The exit status of a report: 0 clean, 3 when only the KMS could not be used (the data
/// could not be checked), 4 for any other problem.
pub fn outcome(report: &Report) -> CliResult {
    if report.problems.is_empty() {
        return Ok(());
    }
    let n = report.problems.len();
    let msg = format!("{}: {n} problem{} found", report.path, if n == 1 { "" } else { "s" });
    let code = if report.problems.iter().all(|p| p.area == Area::Kms) { EXIT_KEY } else { EXIT_PROBLEMS };
    Err(CliError { code, message: msg, quiet: false })
}

/// The human-readable report.
pub fn write_text(out: &mut dyn Write, r: &Report) -> io::Result<()> {
    writeln!(out, "database: {}", r.path)?;
    if let Some(v) = r.format_version {
        writeln!(out, "format_version: {v}")?;
    }
    if let Some(c) = r.cipher {
        writeln!(out, "cipher: {c}")?;
    }
    if let Some(u) = &r.db_uuid {
        writeln!(out, "db_uuid: {u}")?;
    }
    if let (Some(id), Some(v)) = (&r.key_id, r.key_version) {
        writeln!(out, "key_id: {id}")?;
        writeln!(out, "key_version: {v}")?;
    }
    if !r.slots.is_empty() {
        let slots: Vec<String> = r
            .slots
            .iter()
            .map(|s| {
                let mut t = format!("{} {}", s.slot, s.status);
                if let Some(q) = s.sequence {
                    t.push_str(&format!(" (sequence {q}"));
                    if r.active_slot == Some(s.slot) {
                        t.push_str(", active");
                    }
                    t.push(')');
                }
                t
            })
            .collect();
        writeln!(out, "header_slots: {}", slots.join(", "))?;
    }
    writeln!(out, "key_check: {}", r.key_check)?;
    if let Some(ps) = r.page_size {
        writeln!(out, "page_size: {ps}")?;
    }
    if let Some(n) = r.page_count {
        let mut extra = Vec::new();
        if r.pages_from_wal > 0 {
            extra.push(format!("{} from the WAL", r.pages_from_wal));
        }
        if r.pages_from_journal > 0 {
            extra.push(format!("{} from the hot journal", r.pages_from_journal));
        }
        let extra = if extra.is_empty() { String::new() } else { format!(" ({})", extra.join(", ")) };
        writeln!(out, "page_count: {n}{extra}")?;
        writeln!(out, "pages_checked: {}", r.pages_checked)?;
    }
    if let Some(w) = &r.wal {
        if w.header.is_some() {
            writeln!(
                out,
                "wal: {} frames, {} committed in {} transactions, {} uncommitted",
                w.frames_in_file, w.committed_frames, w.commits, w.uncommitted_frames
            )?;
        } else {
            writeln!(out, "wal: {} bytes, no valid header", w.logical_len)?;
        }
    }
    if let Some(j) = &r.journal {
        writeln!(out, "journal: {}", j.state)?;
    }
    if let Some(rows) = &r.integrity_check {
        writeln!(out, "integrity_check: {}", if rows == &["ok"] { "ok" } else { "FAILED" })?;
    }
    for w in &r.warnings {
        writeln!(out, "warning: {w}")?;
    }
    for p in &r.problems {
        let area = serde_json::to_value(p.area).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
        writeln!(out, "problem [{area}]: {}", p.message)?;
    }
    let n = r.problems.len();
    if n == 0 {
        writeln!(out, "result: ok")
    } else {
        writeln!(out, "result: {n} problem{}", if n == 1 { "" } else { "s" })
    }
}

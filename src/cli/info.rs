//! `sqlite-tde info DB`: what an encrypted database is and which key it needs.
//!
//! The header fields come from the plaintext header region, so they are reported even when
//! the key is unavailable; the page size needs the key (it lives in the encrypted page 1).

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::error::{CliError, CliResult};
use super::{open, Global};
use sqlite_tde::format::{Header, SlotStatus};
use sqlite_tde::inspect::header_of;
use sqlite_tde::OpenOptions;

/// Arguments of `sqlite-tde info`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "\
The header fields (identity, key, both header slots, rekey state) come from the plaintext
header region and are printed even when the key cannot be used. page_size, page_count and
journal_mode need the key: when the KMS refuses it (key not found or disabled, access denied)
or a rekey is in progress (running, or interrupted: a read-only look cannot finish it), they
are left out (`null` with --json, where `unavailable` says which and why), the reason goes to
stderr, and the exit code is 3. An interrupted in-place encryption is reported as such (exit 3).")]
pub struct InfoArgs {
    /// Database file.
    #[arg(value_name = "DB")]
    pub db: PathBuf,
}

/// Name of the only cipher of format version 1.
pub const CIPHER_NAME: &str = "aes-256-xts";

/// The facts that need an open through the VFS (the key, and no rekey in progress).
const NEED_THE_KEY: [&str; 3] = ["page_size", "page_count", "journal_mode"];

/// Run `sqlite-tde info`. When the header is readable but the database cannot be opened
/// (key unusable, rekey in progress), the header fields are still printed, the fields that
/// need the key are `null`, and the reason is reported with its exit code.
pub fn run(global: &Global, args: &InfoArgs) -> CliResult {
    let region = sqlite_tde::inspect::read_region(&args.db)?;
    if let Some(conversion) = sqlite_tde::inspect::conversion_in_progress(&args.db, &region) {
        return Err(CliError::key(format!("{}: {conversion}", args.db.display())));
    }
    let (header, slot) = header_of(&args.db, &region)?;
    let mut fields = header_fields(&header, slot);
    if let Some(r) = &header.rekey {
        let total = std::fs::metadata(&args.db).map(|m| sqlite_tde::rotation::engine::data_len(m.len())).ok();
        fields.push(("rekey_total", total.map_or(Value::Null, |t| json!(t.max(r.progress)))));
    }
    fields.push(("slots", slots_json(&region)));
    fields.extend(key_fields(global, &header));
    fields.extend(file_sizes(&args.db));
    let opened = if header.rekey.is_some() {
        // A read-only connection can neither finish an interrupted rekey nor wait out a
        // running one: do not try, say so.
        Err(CliError::from(sqlite_tde::Error::RekeyInProgress { path: args.db.display().to_string() }))
    } else {
        open_stats(global, &args.db)
    };
    let (stats, failure) = match opened {
        Ok(stats) => (stats, None),
        Err(e) => (NEED_THE_KEY.iter().map(|&k| (k, Value::Null)).collect(), Some(e)),
    };
    fields.extend(stats);
    if let Some(e) = &failure {
        fields.push(("unavailable", json!({"fields": NEED_THE_KEY, "reason": e.message})));
    }
    fields.push(("key_cache", key_cache_state(global)));

    let mut out = io::stdout().lock();
    if global.json {
        let map: serde_json::Map<String, Value> = fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        writeln!(out, "{}", serde_json::to_string_pretty(&Value::Object(map))?)?;
    } else {
        for (name, value) in fields {
            match (name, value) {
                // Absent facts (no WAL file, page size without the key) are left out.
                (_, Value::Null) => {}
                ("slots", Value::Array(slots)) => {
                    for s in &slots {
                        writeln!(out, "slot_{}: {}", s["slot"].as_str().unwrap_or("?"), slot_text(s))?;
                    }
                }
                // The reason follows on stderr.
                ("unavailable", _) => writeln!(out, "unavailable: {}", NEED_THE_KEY.join(", "))?,
                (_, Value::String(s)) => writeln!(out, "{name}: {s}")?,
                (_, other) => writeln!(out, "{name}: {other}")?,
            }
        }
    }
    out.flush()?;
    match failure {
        Some(mut e) => {
            e.message = format!("could not open the database to read {}: {}", NEED_THE_KEY.join(", "), e.message);
            Err(e)
        }
        None => Ok(()),
    }
}

/// Both header slots: status, sequence, key and rekey state of each (`info` shows the
/// inactive one too: during a rekey or rewrap it holds the previous state).
fn slots_json(region: &[u8]) -> Value {
    let slots = sqlite_tde::inspect::slots(region);
    Value::Array(
        slots
            .iter()
            .zip(["A", "B"])
            .map(|(st, name)| match st {
                SlotStatus::Valid(h) => json!({
                    "slot": name,
                    "status": "valid",
                    "sequence": h.sequence,
                    "key_uri": h.key.uri,
                    "key_version": h.key.version,
                    "rekey": h.rekey.as_ref().map(|r| json!({
                        "key_uri": r.key.uri, "key_version": r.key.version, "progress": r.progress,
                    })),
                }),
                SlotStatus::Empty => json!({"slot": name, "status": "empty"}),
                SlotStatus::Invalid(e) => json!({"slot": name, "status": "invalid", "error": e.to_string()}),
            })
            .collect(),
    )
}

/// One slot of [`slots_json`] as a line of text.
fn slot_text(s: &Value) -> String {
    let status = s["status"].as_str().unwrap_or("?");
    match status {
        "valid" => {
            let mut t = format!(
                "valid, sequence {}, key {} v{}",
                s["sequence"],
                s["key_uri"].as_str().unwrap_or(""),
                s["key_version"]
            );
            if let Some(r) = s["rekey"].as_object() {
                t.push_str(&format!(
                    ", rekey to {} v{} ({} bytes re-encrypted)",
                    r["key_uri"].as_str().unwrap_or(""),
                    r["key_version"],
                    r["progress"]
                ));
            }
            t
        }
        "invalid" => format!("invalid ({})", s["error"].as_str().unwrap_or("")),
        other => other.to_string(),
    }
}

/// The report's fields from the header, in display order.
fn header_fields(h: &Header, slot: usize) -> Vec<(&'static str, Value)> {
    let mut v = vec![
        ("format_version", json!(h.format)),
        ("cipher", json!(CIPHER_NAME)),
        ("db_uuid", json!(uuid::Uuid::from_bytes(h.db_uuid).hyphenated().to_string())),
        ("key_id", json!(h.key.key_id())),
        ("key_uri", json!(h.key.uri)),
        ("key_version", json!(h.key.version)),
        ("dek_created", json!(h.dek_created)),
        ("header_sequence", json!(h.sequence)),
        ("active_slot", json!(if slot == 0 { "A" } else { "B" })),
        ("rekey_in_progress", json!(h.rekey.is_some())),
    ];
    if let Some(r) = &h.rekey {
        v.push(("rekey_key_uri", json!(r.key.uri)));
        v.push(("rekey_key_version", json!(r.key.version)));
        v.push(("rekey_progress", json!(r.progress)));
    }
    v
}

/// Physical sizes of the database and its journal files (`null` for a file that is absent).
fn file_sizes(db: &Path) -> Vec<(&'static str, Value)> {
    let size = |p: PathBuf| std::fs::metadata(p).map(|m| json!(m.len())).unwrap_or(Value::Null);
    let with_suffix = |s: &str| {
        let mut p = db.as_os_str().to_owned();
        p.push(s);
        PathBuf::from(p)
    };
    vec![
        ("file_size", size(db.to_path_buf())),
        ("wal_size", size(sqlite_tde::format::side_path(db, sqlite_tde::format::SideFile::Wal))),
        ("journal_size", size(sqlite_tde::format::side_path(db, sqlite_tde::format::SideFile::Journal))),
        // Format 1 kept SQLite's names; the next open through tde adopts such files.
        ("legacy_wal_size", size(sqlite_tde::format::legacy_side_path(db, sqlite_tde::format::SideFile::Wal))),
        ("legacy_journal_size", size(sqlite_tde::format::legacy_side_path(db, sqlite_tde::format::SideFile::Journal))),
        ("rekey_journal_size", size(with_suffix(sqlite_tde::rotation::REKEY_JOURNAL_SUFFIX))),
        ("convert_state_size", size(with_suffix(sqlite_tde::rotation::CONVERT_JOURNAL_SUFFIX))),
    ]
}

/// Facts that need the key: open read-only through the VFS and ask SQLite.
fn open_stats(global: &Global, db: &Path) -> Result<Vec<(&'static str, Value)>, CliError> {
    let keystore = global.keystore.as_path();
    let tde = open::register(global)?;
    let conn = open::open(
        &tde,
        keystore,
        db,
        &OpenOptions { key: None, read_only: true, must_exist: true, ..Default::default() },
    )?;
    let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let page_count: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let journal_mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
    Ok(vec![("page_size", json!(page_size)), ("page_count", json!(page_count)), ("journal_mode", json!(journal_mode))])
}

/// What the KMS says about the database's CMK: its aliases, state, and whether the DEK is
/// wrapped under the key's newest version (`null`s when the KMS cannot tell).
fn key_fields(global: &Global, h: &Header) -> Vec<(&'static str, Value)> {
    let described = (h.key.provider() == sqlite_tde::kms::local::PROVIDER)
        .then(|| global.local_kms().describe_key(h.key.key_id()).ok())
        .flatten()
        .and_then(|k| serde_json::to_value(k).ok())
        .unwrap_or(Value::Null);
    let newest = described.get("primary_version").and_then(Value::as_u64);
    vec![
        ("key_aliases", described.get("aliases").cloned().unwrap_or(Value::Null)),
        ("key_state", described.get("state").cloned().unwrap_or(Value::Null)),
        ("key_newest_version", newest.map_or(Value::Null, |v| json!(v))),
        ("key_version_is_newest", newest.map_or(Value::Null, |v| json!(v == u64::from(h.key.version)))),
    ]
}

/// This process's key cache: thresholds, and whether it holds keys (after opening the
/// database, the database's own).
fn key_cache_state(global: &Global) -> Value {
    match open::register(global) {
        Ok(tde) => {
            let cache = &tde.context().cache;
            let config = cache.config();
            json!({
                "ttl_secs": config.ttl.as_secs(),
                "max_entries": config.max_entries,
                "revalidate_after_secs": config.revalidate_after.as_secs(),
                "check_interval_ms": config.check_interval.as_millis() as u64,
                "kms_timeout_ms": config.kms_timeout.as_millis() as u64,
                "metrics": cache.metrics(),
            })
        }
        Err(_) => Value::Null,
    }
}

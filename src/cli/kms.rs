//! `sqlite-tde kms ...`: key management on the embedded local KMS.

use std::io::{self, Write};

use super::error::CliResult;
use super::Global;
use crate::kms::local::{KeyInfo, LocalKms};

/// Subcommands of `sqlite-tde kms`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum KmsCommand {
    /// Create a customer-managed key; prints its key id.
    CreateKey {
        /// Alias to give the key (`alias/NAME`; a bare NAME gets the prefix).
        #[arg(long, value_name = "alias/NAME")]
        alias: Option<String>,
        /// Free-text description.
        #[arg(long, value_name = "TEXT", default_value = "", hide_default_value = true)]
        description: String,
    },
    /// List the keys of the keystore (key id, state, aliases, description; tab-separated).
    List,
    /// Show one key.
    Describe {
        /// Key id or alias/NAME.
        #[arg(value_name = "KEY")]
        key: String,
    },
}

/// Run a `kms` subcommand.
pub fn run(global: &Global, cmd: &KmsCommand) -> CliResult {
    let kms = LocalKms::new(&global.keystore);
    let mut out = io::stdout().lock();
    match cmd {
        KmsCommand::CreateKey { alias, description } => {
            let alias = alias.as_deref().map(|a| if a.starts_with("alias/") { a.to_string() } else { format!("alias/{a}") });
            let info = kms.create_key(alias.as_deref(), description)?;
            if global.json {
                writeln!(out, "{}", serde_json::to_string_pretty(&info)?)?;
            } else {
                writeln!(out, "{}", info.key_id)?;
            }
        }
        KmsCommand::List => {
            let keys = kms.list_keys()?;
            if global.json {
                writeln!(out, "{}", serde_json::to_string_pretty(&keys)?)?;
            } else {
                for k in &keys {
                    let aliases = if k.aliases.is_empty() { "-".to_string() } else { k.aliases.join(",") };
                    writeln!(out, "{}\t{}\t{}\t{}", k.key_id, state(&k.state), aliases, k.description)?;
                }
            }
        }
        KmsCommand::Describe { key } => {
            let info = kms.describe_key(key)?;
            if global.json {
                writeln!(out, "{}", serde_json::to_string_pretty(&info)?)?;
            } else {
                describe_text(&mut out, &info)?;
            }
        }
    }
    Ok(())
}

/// The state as it is spelled in JSON (`enabled`, `disabled`).
fn state(s: &impl serde::Serialize) -> String {
    match serde_json::to_value(s) {
        Ok(serde_json::Value::String(v)) => v,
        _ => "unknown".into(),
    }
}

fn describe_text(out: &mut dyn Write, k: &KeyInfo) -> io::Result<()> {
    let versions: Vec<String> = k.versions.iter().map(u32::to_string).collect();
    writeln!(out, "key_id: {}", k.key_id)?;
    writeln!(out, "aliases: {}", k.aliases.join(","))?;
    writeln!(out, "description: {}", k.description)?;
    writeln!(out, "state: {}", state(&k.state))?;
    writeln!(out, "manager: {}", k.manager)?;
    writeln!(out, "origin: {}", k.origin)?;
    writeln!(out, "protection: {}", k.protection)?;
    writeln!(out, "primary_version: {}", k.primary_version)?;
    writeln!(out, "versions: {}", versions.join(","))?;
    writeln!(out, "created: {}", k.created)
}

//! `sqlite-tde secrets ...`: small versioned secrets encrypted under a CMK (see
//! `kms::secrets`). Values are read from stdin or a file, never from the command line (where
//! `ps` and shell history would show them).

use std::io::{self, Read, Write};
use std::path::PathBuf;

use base64::Engine;
use zeroize::Zeroizing;

use super::error::{CliError, CliResult};
use super::Global;
use sqlite_tde::kms::clock::format_time;
use sqlite_tde::kms::policy::KeyPolicy;

/// Subcommands of `sqlite-tde secrets`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum SecretsCommand {
    /// Store a new version of a secret (created if missing); the value comes from stdin or
    /// --from-file and becomes `current`.
    Put {
        #[arg(value_name = "NAME")]
        name: String,
        /// CMK for a new secret (key id or alias/NAME) [default: the service-managed default
        /// key, which every principal may use: pick a customer key to restrict readers].
        #[arg(long, value_name = "KEY")]
        key: Option<String>,
        /// Description of a new secret.
        #[arg(long, value_name = "TEXT", default_value = "", hide_default_value = true)]
        description: String,
        /// Read the value from FILE instead of stdin.
        #[arg(long, value_name = "FILE")]
        from_file: Option<PathBuf>,
    },
    /// Print a secret's value (the `current` version unless told otherwise).
    Get {
        #[arg(value_name = "NAME")]
        name: String,
        /// A version id.
        #[arg(long, value_name = "ID", conflicts_with = "stage")]
        version: Option<String>,
        /// A staging label: current or previous.
        #[arg(long, value_name = "LABEL")]
        stage: Option<String>,
    },
    /// Store a new version: generated (32 random bytes as 64 hex digits) unless --from-file
    /// or --stdin gives it. The old current version becomes `previous`.
    Rotate {
        #[arg(value_name = "NAME")]
        name: String,
        #[arg(long, value_name = "FILE", conflicts_with = "stdin")]
        from_file: Option<PathBuf>,
        /// Read the new value from stdin.
        #[arg(long)]
        stdin: bool,
    },
    /// List secrets (name, key id, versions, description).
    List,
    /// List a secret's versions with their staging labels.
    Versions {
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Print a secret's owner, key and resource policy (JSON).
    GetPolicy {
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Replace a secret's resource policy with the JSON policy in FILE (or stdin with `-`).
    /// Granting secrets:GetSecretValue only helps a principal the secret's key also serves.
    PutPolicy {
        #[arg(value_name = "NAME")]
        name: String,
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
    },
}

fn read_value(file: Option<&PathBuf>) -> CliResult<Zeroizing<Vec<u8>>> {
    let mut v = Zeroizing::new(Vec::new());
    match file {
        Some(f) => *v = std::fs::read(f).map_err(|e| CliError::failure(format!("cannot read {}: {e}", f.display())))?,
        None => {
            io::stdin().read_to_end(&mut v)?;
        }
    }
    // A value typed or echoed into stdin ends with a newline that is not part of it.
    if v.last() == Some(&b'\n') {
        v.pop();
        if v.last() == Some(&b'\r') {
            v.pop();
        }
    }
    if v.is_empty() {
        return Err(CliError::usage("the secret value is empty"));
    }
    Ok(v)
}

/// Run a `secrets` subcommand.
pub fn run(global: &Global, cmd: &SecretsCommand) -> CliResult {
    let c = global.kms.service(Some(&global.keystore), global.principal.as_deref())?;
    let mut out = io::stdout().lock();
    let print_version = |out: &mut dyn Write, v: &sqlite_tde::kms::secrets::SecretVersionInfo| -> CliResult {
        if global.json {
            writeln!(out, "{}", serde_json::to_string_pretty(v)?)?;
        } else {
            writeln!(out, "{}\t{}\t{}", v.name, v.version_id, v.stages.join(","))?;
        }
        Ok(())
    };
    match cmd {
        SecretsCommand::Put { name, key, description, from_file } => {
            let value = read_value(from_file.as_ref())?;
            let v = c.put_secret(name, &value, key.as_deref(), description)?;
            print_version(&mut out, &v)?;
        }
        SecretsCommand::Get { name, version, stage } => {
            let v = c.get_secret(name, version.as_deref(), stage.as_deref())?;
            if global.json {
                let value = match std::str::from_utf8(&v.value) {
                    Ok(s) => serde_json::json!({ "text": s }),
                    Err(_) => {
                        serde_json::json!({ "base64": base64::engine::general_purpose::STANDARD.encode(&v.value[..]) })
                    }
                };
                let doc = Zeroizing::new(serde_json::to_string_pretty(&serde_json::json!({
                    "name": v.name, "version_id": v.version_id, "stages": v.stages, "value": value
                }))?);
                writeln!(out, "{}", doc.as_str())?;
            } else {
                out.write_all(&v.value)?;
                if io::IsTerminal::is_terminal(&io::stdout()) {
                    writeln!(out)?;
                }
            }
        }
        SecretsCommand::Rotate { name, from_file, stdin } => {
            let value = if *stdin || from_file.is_some() { Some(read_value(from_file.as_ref())?) } else { None };
            let v = c.rotate_secret(name, value.as_ref().map(|v| &v[..]))?;
            print_version(&mut out, &v)?;
        }
        SecretsCommand::List => {
            let list = c.list_secrets()?;
            if global.json {
                writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
            } else {
                for s in &list {
                    writeln!(out, "{}\t{}\t{}\t{}", s.name, s.key_id, s.versions, s.description)?;
                }
            }
        }
        SecretsCommand::Versions { name } => {
            let list = c.list_secret_versions(name)?;
            if global.json {
                writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
            } else {
                for v in &list {
                    let stages = if v.stages.is_empty() { "-".to_string() } else { v.stages.join(",") };
                    writeln!(out, "{}\t{}\t{}", v.version_id, format_time(v.created), stages)?;
                }
            }
        }
        SecretsCommand::GetPolicy { name } => {
            writeln!(out, "{}", serde_json::to_string_pretty(&c.get_secret_policy(name)?)?)?;
        }
        SecretsCommand::PutPolicy { name, file } => {
            let text = match file.as_ref().filter(|f| f.as_os_str() != "-") {
                Some(f) => std::fs::read_to_string(f)
                    .map_err(|e| CliError::failure(format!("cannot read {}: {e}", f.display())))?,
                None => {
                    let mut s = String::new();
                    io::stdin().read_to_string(&mut s)?;
                    s
                }
            };
            let policy: KeyPolicy =
                serde_json::from_str(&text).map_err(|e| CliError::usage(format!("not a secret policy: {e}")))?;
            writeln!(out, "{}", serde_json::to_string_pretty(&c.put_secret_policy(name, &policy)?)?)?;
        }
    }
    Ok(())
}

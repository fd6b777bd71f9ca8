//! Key pinning: a caller that names a key (URI `key=`, `PRAGMA tde_key`, `OpenOptions::key`,
//! `SQLITE_TDE_KEY`, the CLI's `--key`) gets a database under that key or an error — never,
//! silently, one under another CMK. Without pinning, whoever can replace the file could hand
//! the application a database under a key the attacker can also use, and read what it writes
//! next. Without a named key, an open follows the header (it trusts the file's choice of CMK,
//! and the KMS's policy on it).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use super::database::kms_call;
use super::TdeContext;
use crate::error::{Error, Result};
use crate::format::KeyRef;

/// Names resolved to key URIs recently (aliases rarely move; the key cache's revalidation
/// interval bounds how long a moved alias is still followed).
#[derive(Default)]
pub struct ResolvedNames {
    names: Mutex<HashMap<String, (String, Instant)>>,
}

impl ResolvedNames {
    fn get(&self, ctx: &TdeContext, name: &str) -> Option<String> {
        let names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        let (uri, at) = names.get(name)?;
        (at.elapsed() < ctx.cache.config().revalidate_after).then(|| uri.clone())
    }

    fn put(&self, name: &str, uri: &str) {
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        if names.len() > 4096 {
            names.clear();
        }
        names.insert(name.to_string(), (uri.to_string(), Instant::now()));
    }
}

/// Refuse `database_key` unless it is the key `requested` names (after alias resolution by
/// the KMS). Runs before SQLite reads a byte of the database, so a refused open changes
/// nothing.
pub fn check(ctx: &TdeContext, path: &str, database_key: &KeyRef, requested: &str) -> Result<()> {
    if requested == database_key.uri || requested == database_key.key_id() {
        return Ok(());
    }
    let resolved = match ctx.resolved_names.get(ctx, requested) {
        Some(uri) => Some(uri),
        None => {
            let name = requested.to_string();
            let uri = kms_call(ctx, path, move |kms| kms.resolve_key_uri(&name))?;
            if let Some(u) = &uri {
                ctx.resolved_names.put(requested, u);
            }
            uri
        }
    };
    match resolved {
        Some(uri) if uri == database_key.uri => Ok(()),
        resolved => Err(Error::KeyMismatch {
            path: path.to_string(),
            database_key: database_key.uri.clone(),
            requested: match resolved {
                Some(uri) => format!("{requested} ({uri})"),
                None => requested.to_string(),
            },
        }),
    }
}

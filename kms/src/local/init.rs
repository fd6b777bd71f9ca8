//! Finding, checking and creating a keystore without ever destroying one.
//!
//! A keystore is `keystore.json` (keys sealed under the root key) plus its root key (`root.key`
//! in the directory, an operator's file, or a passphrase). Losing either half loses every
//! database under the keystore, so nothing here replaces either: a keystore is created only
//! when the directory is missing or holds nothing that a keystore leaves behind, `root.key` is
//! created exclusively, and a half-present keystore (one part without the other) is refused
//! with what is missing and how to restore it (docs/RELIABILITY.md, "The keystore").

use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::keystore::{self, KeystoreData, KeystorePaths, RootConfig, KEYSTORE_VERSION};
use super::rootkey::{PassphraseParams, RootKey, RootSource, ENV_PASSPHRASE, ENV_ROOT_KEY_FILE};
use crate::events::KeystoreCreated;
use crate::KmsError;

/// The root key file a keystore keeps in its own directory.
pub const ROOT_KEY_FILE: &str = "root.key";
/// Present while a creation is under way: a crash between `root.key` and `keystore.json`
/// leaves it, and the next creating use finishes the creation with that root key (which
/// never sealed anything) instead of refusing the directory.
pub const CREATING_MARKER: &str = "keystore.creating";

/// Files that do not show that a keystore ever lived in a directory: lock files, temp
/// files, the daemon's token file (written by `kms token` without a keystore).
fn is_incidental(name: &str) -> bool {
    matches!(name, "keystore.lock" | "secrets.lock" | "audit.lock" | "kmsd.json" | CREATING_MARKER)
        || name.starts_with(".tmp-")
}

/// Files a keystore leaves behind besides `keystore.json` and `root.key`.
const STATE_FILES: [&str; 3] = ["audit.log", "audit.head", "secrets.json"];

/// `keystore.json` is absent and a keystore may be created here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Absent {
    /// The directory is missing or holds nothing of a keystore.
    Fresh,
    /// An interrupted creation left `root.key` and the creation marker, nothing else.
    ResumeCreation,
}

/// `keystore.json` is absent from `dir`: is that a new keystore, or a damaged one (refused)?
pub fn check_absent(dir: &Path) -> Result<Absent, KmsError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Absent::Fresh),
        Err(e) => return Err(KmsError::Keystore(format!("cannot read keystore directory {}: {e}", dir.display()))),
    };
    let mut names = Vec::new();
    let mut marker = false;
    for e in rd {
        let e = e.map_err(|e| KmsError::Keystore(format!("cannot read keystore directory {}: {e}", dir.display())))?;
        let name = e.file_name().to_string_lossy().into_owned();
        marker |= name == CREATING_MARKER;
        if !is_incidental(&name) {
            names.push(name);
        }
    }
    names.sort();
    let has_root = names.iter().any(|n| n == ROOT_KEY_FILE);
    if has_root && marker && names.len() == 1 {
        return Ok(Absent::ResumeCreation);
    }
    if has_root {
        return Err(KmsError::Keystore(format!(
            "keystore {} is incomplete: keystore.json is missing but root.key is there. Restore keystore.json \
             from a backup (`sqlite-tde kms restore BACKUP` keeps this root.key); nothing was changed, and a \
             new keystore is never created over an existing root key",
            dir.display()
        )));
    }
    let state: Vec<&str> = names.iter().map(String::as_str).filter(|n| STATE_FILES.contains(n)).collect();
    if !state.is_empty() {
        return Err(KmsError::Keystore(format!(
            "keystore {} is incomplete: keystore.json is missing but {} is there. Restore the keystore from a \
             backup (`sqlite-tde kms restore BACKUP`); nothing was changed",
            dir.display(),
            state.join(", ")
        )));
    }
    if !names.is_empty() {
        let shown: Vec<&str> = names.iter().take(5).map(String::as_str).collect();
        return Err(KmsError::Keystore(format!(
            "{} holds no keystore but is not empty ({}{}): refusing to create a keystore there; is this the \
             right keystore directory? (see --keystore / SQLITE_TDE_KEYSTORE)",
            dir.display(),
            shown.join(", "),
            if names.len() > shown.len() { ", ..." } else { "" }
        )));
    }
    Ok(Absent::Fresh)
}

/// The root key of an existing keystore, per the environment, checked against the keystore.
/// A missing key file is named with how to restore it; nothing is ever written.
pub fn load_root(dir: &Path, data: &KeystoreData) -> Result<RootKey, KmsError> {
    let source = RootSource::from_env(dir);
    if data.root.kind == RootSource::Passphrase.kind() && source != RootSource::Passphrase {
        return Err(KmsError::WrongRootKey(format!(
            "{} (its root key is derived from a passphrase: set {ENV_PASSPHRASE})",
            dir.display()
        )));
    }
    let key = match &source {
        RootSource::KeystoreFile(p) | RootSource::OperatorFile(p) => {
            if !p.exists() {
                return Err(missing_root_file(dir, &source, p, &data.root));
            }
            RootKey::load_file(p)?
        }
        RootSource::Passphrase => {
            let params = data.root.passphrase.as_ref().ok_or_else(|| {
                KmsError::WrongRootKey(format!(
                    "{} (it was not created with a passphrase; unset {ENV_PASSPHRASE})",
                    dir.display()
                ))
            })?;
            let pass = Zeroizing::new(std::env::var(ENV_PASSPHRASE).unwrap_or_default());
            RootKey::from_passphrase(pass.as_bytes(), params)?
        }
    };
    if !data.root_matches(&key) {
        let hint = match (&source, data.root.kind.as_str()) {
            (RootSource::Passphrase, _) => " (wrong passphrase)".to_string(),
            (RootSource::KeystoreFile(_), "operator-file") => {
                format!(" (it was created with an operator root key file: set {ENV_ROOT_KEY_FILE})")
            }
            _ => String::new(),
        };
        return Err(KmsError::WrongRootKey(format!("{}{hint}", dir.display())));
    }
    Ok(key)
}

fn missing_root_file(dir: &Path, source: &RootSource, path: &Path, root: &RootConfig) -> KmsError {
    let elsewhere = if root.kind == "operator-file" {
        format!(" (this keystore was created with {ENV_ROOT_KEY_FILE}: set it to the root key file)")
    } else {
        String::new()
    };
    let what = match source {
        RootSource::OperatorFile(_) => format!("root key file {} ({ENV_ROOT_KEY_FILE})", path.display()),
        _ => format!("root key {}", path.display()),
    };
    KmsError::Keystore(format!(
        "{what} is missing{elsewhere}: the keys in keystore {} are sealed under it. Restore it from your \
         backup of the root key (kept apart from the keystore backup){}; nothing was changed, and the root key \
         is never re-created",
        dir.display(),
        if matches!(source, RootSource::KeystoreFile(_)) {
            format!(", or set {ENV_ROOT_KEY_FILE} if it lives elsewhere")
        } else {
            String::new()
        }
    ))
}

/// Create a keystore in `paths.dir` (a creating use found it absent, see [`check_absent`]).
/// The caller holds `keystore.lock` and has re-checked, under it, that `keystore.json` is
/// still absent.
pub fn create(paths: &KeystorePaths, absent: Absent) -> Result<(KeystoreData, RootKey, KeystoreCreated), KmsError> {
    let dir = &paths.dir;
    let source = RootSource::from_env(dir);
    let marker = dir.join(CREATING_MARKER);
    let werr = |p: &Path, e: std::io::Error| KmsError::Keystore(format!("cannot write {}: {e}", p.display()));
    if absent == Absent::ResumeCreation && !matches!(source, RootSource::KeystoreFile(_)) {
        return Err(KmsError::Keystore(format!(
            "{} holds root.key from an interrupted keystore creation, but the environment selects another root \
             key ({}): unset it to finish the creation with root.key",
            dir.display(),
            source.kind()
        )));
    }
    // Everything that can be refused is checked before the marker and root.key appear.
    let (mut key, passphrase, root_key_file) = match &source {
        RootSource::KeystoreFile(p) => (None, None, Some(p)),
        RootSource::OperatorFile(p) => {
            if !p.exists() {
                return Err(KmsError::Keystore(format!(
                    "root key file {} ({ENV_ROOT_KEY_FILE}) does not exist: provide the file (32 bytes, raw or \
                     64 hex characters) or unset {ENV_ROOT_KEY_FILE} to keep the root key in the keystore",
                    p.display()
                )));
            }
            (Some(RootKey::load_file(p)?), None, Some(p))
        }
        RootSource::Passphrase => {
            let pass = Zeroizing::new(std::env::var(ENV_PASSPHRASE).unwrap_or_default());
            if pass.is_empty() {
                return Err(KmsError::InvalidRequest(format!("{ENV_PASSPHRASE} is empty")));
            }
            let params = PassphraseParams::generate()?;
            (Some(RootKey::from_passphrase(pass.as_bytes(), &params)?), Some(params), None)
        }
    };
    sqlite_tde_fsutil::write_atomic(&marker, b"", 0o600).map_err(|e| werr(&marker, e))?;
    if let RootSource::KeystoreFile(p) = &source {
        key = Some(match absent {
            Absent::ResumeCreation => RootKey::load_file(p)?,
            Absent::Fresh => RootKey::generate_file(p)?,
        });
    }
    let key = key.expect("every source yields a key");
    let data = KeystoreData {
        root: RootConfig { kind: source.kind().into(), check: key.check_value_for(KEYSTORE_VERSION), passphrase },
        keys: Default::default(),
        aliases: Default::default(),
        kmsd_generation: None,
        audit: Default::default(),
        format: KEYSTORE_VERSION,
    };
    keystore::store_new(paths, &data, &key)?;
    match std::fs::remove_file(&marker) {
        Ok(()) => sqlite_tde_fsutil::sync_dir(dir).map_err(|e| werr(dir, e))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(werr(&marker, e)),
    }
    let ev = KeystoreCreated { dir: dir.clone(), root_key_file: root_key_file.map(PathBuf::from) };
    Ok((data, key, ev))
}

/// Under `keystore.lock`: remove what killed writers of `keystore.json` and `root.key` left
/// (their temp files, which hold every key's sealed material), and of a restore (journal,
/// audit files), temp files of builds before
/// temp files were named after their target (`.tmp-` and six characters), and a creation
/// marker that outlived its creation.
pub fn remove_stale(paths: &KeystorePaths) -> Result<usize, KmsError> {
    let dir = &paths.dir;
    // Restores write these under all three locks, so holding keystore.lock excludes them too.
    let restore = [super::snapshot::PENDING, "audit.log", "audit.head"].map(|n| dir.join(n));
    let ours: Vec<String> = [paths.file(), dir.join(ROOT_KEY_FILE), dir.join(CREATING_MARKER)]
        .iter()
        .chain(restore.iter())
        .map(|p| sqlite_tde_fsutil::temp_prefix(p))
        .collect();
    let legacy = |n: &str| n.len() == 11 && n.starts_with(".tmp-") && n[5..].bytes().all(|b| b.is_ascii_alphanumeric());
    let mut n =
        sqlite_tde_fsutil::remove_matching(dir, |name| ours.iter().any(|p| name.starts_with(p)) || legacy(name))
            .map_err(|e| KmsError::Keystore(format!("cannot clean {}: {e}", dir.display())))?;
    if paths.file().exists() && std::fs::remove_file(dir.join(CREATING_MARKER)).is_ok() {
        n += 1;
    }
    Ok(n)
}

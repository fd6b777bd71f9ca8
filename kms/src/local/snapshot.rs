//! `kms backup` / `kms restore`: a consistent, still-sealed snapshot of a keystore directory
//! (docs/FORMAT.md §7).
//!
//! The snapshot holds the files of the directory that make up the keystore's state —
//! `keystore.json` (policies, root-key-sealed material and the audit head), `audit.log`
//! (with `audit.head` for format-2 keystores), `secrets.json`, `kmsd.json` — read under secrets.lock → keystore.lock → audit.lock, so
//! they belong together. It never holds the root key: whoever reads it learns metadata, not
//! key material. It is authenticated under a key derived from the root key, so a restore
//! proves it belongs to that root key before anything is replaced.
//!
//! A restore replaces several files, which no single rename can do: it first writes the
//! verified snapshot as `restore.pending` (atomically), then replaces the files, then
//! removes the journal. A crash before the journal is durable leaves the old keystore; after
//! it, the next use of the keystore finishes the restore before reading anything.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};

use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};

use super::keystore::{self, KeystoreData};
use super::{init, LocalKms, OpCtx, RootKey, Use};
use crate::audit::{self, Outcome};
use crate::model::Protection;
use crate::KmsError;

/// Snapshot magic.
pub const MAGIC: [u8; 8] = *b"SQLTDEKB";
/// Snapshot format version.
pub const VERSION: u16 = 1;
const HEADER_LEN: usize = 56;
const MAC_LABEL: &[u8] = b"sqlite-tde/keystore-backup/v1";
/// The journal of a restore in progress.
pub const PENDING: &str = "restore.pending";
/// The files a snapshot may hold, in the order it stores them (`keystore.json` is required).
pub const FILES: [&str; 5] = ["keystore.json", "audit.log", "audit.head", "secrets.json", "kmsd.json"];

/// What `kms backup` wrote.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BackupReport {
    pub path: PathBuf,
    pub files: Vec<String>,
    pub bytes: u64,
    pub keys: usize,
}

/// What `kms restore` replaced.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RestoreReport {
    pub dir: PathBuf,
    pub files: Vec<String>,
    pub keys: usize,
    /// `root.key` was installed from `--root-key` (the directory had none).
    pub root_key_installed: bool,
}

/// How to restore.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Root key file to check the snapshot against (and install as `root.key` when the
    /// keystore keeps its root key in its directory and it is missing there).
    pub root_key: Option<PathBuf>,
    /// Replace a keystore holding keys or key versions the snapshot lacks.
    pub force: bool,
}

/// A parsed snapshot: the file entries, checksums verified.
struct Snapshot {
    created: u64,
    root_check: [u8; 32],
    entries: Vec<(String, Vec<u8>)>,
    /// Offset of the MAC (everything before it is authenticated).
    mac_at: usize,
}

fn corrupt(what: &str) -> KmsError {
    KmsError::InvalidRequest(format!("the keystore snapshot is corrupt or not a snapshot: {what}; nothing was changed"))
}

fn mac_key(root: &RootKey) -> zeroize::Zeroizing<[u8; 32]> {
    root.derive(MAC_LABEL)
}

fn mac_of(root: &RootKey, bytes: &[u8]) -> hmac::Hmac<Sha256> {
    let mut m = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(&mac_key(root)[..]).expect("any length");
    m.update(bytes);
    m
}

fn encode(root: &RootKey, created: u64, root_check: [u8; 32], entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&created.to_le_bytes());
    out.extend_from_slice(&root_check);
    for (name, bytes) in entries {
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        out.extend_from_slice(&Sha256::digest(bytes));
        out.extend_from_slice(bytes);
    }
    let mac = mac_of(root, &out).finalize().into_bytes();
    out.extend_from_slice(&mac);
    let sum = Sha256::digest(&out);
    out.extend_from_slice(&sum);
    out
}

fn decode(bytes: &[u8]) -> Result<Snapshot, KmsError> {
    if bytes.len() < HEADER_LEN + 64 || bytes[..8] != MAGIC {
        return Err(corrupt("bad magic or too short"));
    }
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    if Sha256::digest(body).as_slice() != sum {
        return Err(corrupt("checksum mismatch"));
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if version != VERSION {
        return Err(KmsError::InvalidRequest(format!(
            "keystore snapshot format version {version}; this build reads version {VERSION}"
        )));
    }
    let count = u16::from_le_bytes([bytes[10], bytes[11]]) as usize;
    let created = u64::from_le_bytes(bytes[16..24].try_into().unwrap());
    let root_check: [u8; 32] = bytes[24..56].try_into().unwrap();
    let mac_at = body.len() - 32;
    let mut at = HEADER_LEN;
    let mut entries = Vec::with_capacity(count);
    let mut seen = BTreeSet::new();
    for _ in 0..count {
        let take = |at: &mut usize, n: usize| -> Result<&[u8], KmsError> {
            let end = at.checked_add(n).filter(|e| *e <= mac_at).ok_or_else(|| corrupt("truncated entry"))?;
            let s = &bytes[*at..end];
            *at = end;
            Ok(s)
        };
        let n = take(&mut at, 1)?[0] as usize;
        let name = std::str::from_utf8(take(&mut at, n)?).map_err(|_| corrupt("bad file name"))?.to_string();
        if !FILES.contains(&name.as_str()) || !seen.insert(name.clone()) {
            return Err(corrupt(&format!("unexpected file {name:?}")));
        }
        let len = u64::from_le_bytes(take(&mut at, 8)?.try_into().unwrap());
        let digest: [u8; 32] = take(&mut at, 32)?.try_into().unwrap();
        let data = take(&mut at, usize::try_from(len).map_err(|_| corrupt("bad length"))?)?;
        if Sha256::digest(data).as_slice() != digest {
            return Err(corrupt(&format!("{name} does not match its checksum")));
        }
        entries.push((name, data.to_vec()));
    }
    if at != mac_at {
        return Err(corrupt("trailing bytes"));
    }
    if !seen.contains("keystore.json") {
        return Err(corrupt("no keystore.json"));
    }
    Ok(Snapshot { created, root_check, entries, mac_at })
}

impl Snapshot {
    fn file(&self, name: &str) -> Option<&[u8]> {
        self.entries.iter().find(|(n, _)| n == name).map(|(_, b)| b.as_slice())
    }
    fn keystore(&self) -> Result<keystore::Loaded, KmsError> {
        keystore::decode(self.file("keystore.json").expect("checked at decode"), Path::new("(snapshot) keystore.json"))
    }
}

fn check_hex(data: &KeystoreData) -> Result<[u8; 32], KmsError> {
    hex::decode(&data.root.check)
        .ok()
        .and_then(|v| <[u8; 32]>::try_from(v).ok())
        .ok_or_else(|| KmsError::Keystore("bad root check value".into()))
}

/// The keystore's three locks, in the documented order.
struct Locks {
    _secrets: File,
    _keystore: File,
    _audit: File,
}

fn lock_err(e: std::io::Error) -> KmsError {
    KmsError::Keystore(format!("cannot lock keystore: {e}"))
}

fn lock_file(dir: &Path, name: &str) -> Result<File, KmsError> {
    sqlite_tde_fsutil::lock_exclusive(&dir.join(name)).map_err(lock_err)
}

fn lock_all(dir: &Path) -> Result<Locks, KmsError> {
    let s = lock_file(dir, "secrets.lock")?;
    let k = lock_file(dir, "keystore.lock")?;
    let a = lock_file(dir, audit::LOCK_FILE)?;
    Ok(Locks { _secrets: s, _keystore: k, _audit: a })
}

/// Replace the keystore's files with the journal's (all three locks held), then drop the
/// journal. Idempotent: a crash anywhere in it is finished by running it again.
fn apply_pending(dir: &Path) -> Result<(), KmsError> {
    let journal = dir.join(PENDING);
    let bytes =
        std::fs::read(&journal).map_err(|e| KmsError::Keystore(format!("cannot read {}: {e}", journal.display())))?;
    let snap = decode(&bytes)?;
    let werr = |p: &Path, e: std::io::Error| KmsError::Keystore(format!("cannot write {}: {e}", p.display()));
    // keystore.json last: readers that take no lock see the rest of the new state first
    // only while the old keys still decide what they may do.
    for name in FILES.iter().rev() {
        let path = dir.join(name);
        match snap.file(name) {
            Some(b) => sqlite_tde_fsutil::write_atomic(&path, b, 0o600).map_err(|e| werr(&path, e))?,
            None => match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(werr(&path, e)),
            },
        }
    }
    sqlite_tde_fsutil::sync_dir(dir).map_err(|e| werr(dir, e))?;
    std::fs::remove_file(&journal).map_err(|e| werr(&journal, e))?;
    sqlite_tde_fsutil::sync_dir(dir).map_err(|e| werr(dir, e))?;
    // Killed restores' temp files (every writer of these files is excluded by the locks).
    for name in FILES.iter().chain([&PENDING]) {
        let _ = sqlite_tde_fsutil::remove_stale_temps(dir, &sqlite_tde_fsutil::temp_prefix(&dir.join(name)));
    }
    Ok(())
}

/// Every software key version's material opens under `root`.
fn check_material(data: &KeystoreData, root: &RootKey) -> Result<(), KmsError> {
    for rec in data.keys.values().filter(|r| r.protection == Protection::Software) {
        for v in rec.versions.iter().filter(|v| v.material.is_some()) {
            LocalKms::software_material(root, rec, v).map_err(|_| {
                KmsError::WrongRootKey(format!(
                    "(snapshot): the material of key {} v{} does not open under this root key; nothing was changed",
                    rec.key_id, v.version
                ))
            })?;
        }
    }
    Ok(())
}

/// Key versions `current` holds (with material) that `snap` lacks.
fn lost_versions(current: &KeystoreData, snap: &KeystoreData) -> Vec<String> {
    let mut lost = Vec::new();
    for rec in current.keys.values() {
        for v in rec.versions.iter().filter(|v| v.available()) {
            let kept = snap.keys.get(&rec.key_id).and_then(|r| r.version(v.version)).is_some_and(|x| x.available());
            if !kept {
                lost.push(format!("{} v{}", rec.key_id, v.version));
            }
        }
    }
    lost
}

impl LocalKms {
    /// Finish a restore a crash interrupted, before anything reads the keystore. Needs
    /// secrets.lock first (the lock order); if this process or another holds it, the request
    /// is refused until the restore can be finished (never served from a half-restored
    /// keystore).
    pub(super) fn finish_pending_restore(&self) -> Result<(), KmsError> {
        let dir = &self.paths.dir;
        if !dir.join(PENDING).exists() {
            return Ok(());
        }
        let secrets = sqlite_tde_fsutil::open_lock_file(&dir.join("secrets.lock")).map_err(lock_err)?;
        match secrets.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(KmsError::Unavailable(format!(
                    "an interrupted keystore restore in {} is being finished; retry",
                    dir.display()
                )))
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(lock_err(e)),
        }
        let _k = lock_file(dir, "keystore.lock")?;
        let _a = lock_file(dir, audit::LOCK_FILE)?;
        if dir.join(PENDING).exists() {
            apply_pending(dir)?;
        }
        Ok(())
    }

    /// `kms backup OUT`: write a snapshot of this keystore to `out` (mode 0600).
    pub fn backup(&self, principal: &str, out: &Path) -> Result<BackupReport, KmsError> {
        let dir = self.paths.dir.clone();
        self.finish_pending_restore()?;
        self.load(Use::Existing(None))?;
        let _s = lock_file(&dir, "secrets.lock")?;
        let _k = self.lock()?;
        // The backup's own record is the last one the snapshot holds (committed: the log and
        // keystore.json's head agree in the snapshot).
        let (mut data, root) = self.load_locked(true)?;
        let ctx = OpCtx::new(principal, "BackupKeystore");
        self.commit(&root, &mut data, self.events(&ctx, Outcome::Allowed, None))?;
        let _a = lock_file(&dir, audit::LOCK_FILE)?;
        let mut entries = Vec::new();
        for name in FILES {
            match std::fs::read(dir.join(name)) {
                Ok(b) => entries.push((name.to_string(), b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(KmsError::Keystore(format!("cannot read {}: {e}", dir.join(name).display()))),
            }
        }
        let bytes = encode(&root, self.now(), check_hex(&data)?, &entries);
        sqlite_tde_fsutil::write_atomic(out, &bytes, 0o600)
            .map_err(|e| KmsError::Keystore(format!("cannot write {}: {e}", out.display())))?;
        Ok(BackupReport {
            path: out.to_path_buf(),
            files: entries.into_iter().map(|(n, _)| n).collect(),
            bytes: bytes.len() as u64,
            keys: data.keys.len(),
        })
    }

    /// `kms restore IN`: verify the snapshot (checksums, root key, MAC, every key's material)
    /// and replace this keystore's state with it atomically. The root key is never replaced:
    /// the snapshot must belong to the root key in force (or `--root-key`).
    pub fn restore(&self, principal: &str, input: &Path, opts: &RestoreOptions) -> Result<RestoreReport, KmsError> {
        let dir = self.paths.dir.clone();
        let bytes = std::fs::read(input)
            .map_err(|e| KmsError::InvalidRequest(format!("cannot read {}: {e}", input.display())))?;
        let snap = decode(&bytes)?;
        let snap_loaded = snap.keystore()?;
        let snap_data = snap_loaded.data.clone();
        if check_hex(&snap_data)? != snap.root_check {
            return Err(corrupt("header and keystore.json name different root keys"));
        }
        let in_dir = dir.join(init::ROOT_KEY_FILE);
        let keeps_root_in_dir = snap_data.root.kind == "keystore-file"
            && matches!(super::RootSource::from_env(&dir), super::RootSource::KeystoreFile(_));
        let (root, install) = match &opts.root_key {
            Some(f) => {
                let k = RootKey::load_file(f)?;
                let install = keeps_root_in_dir && !in_dir.exists();
                if keeps_root_in_dir && in_dir.exists() && RootKey::load_file(&in_dir)?.check_value() != k.check_value()
                {
                    return Err(KmsError::WrongRootKey(format!(
                        "{} (its root.key differs from --root-key {}; a root key is never replaced)",
                        dir.display(),
                        f.display()
                    )));
                }
                (k, install)
            }
            None => (
                init::load_root(&dir, &snap_data).map_err(|e| match e {
                    KmsError::Keystore(m) => {
                        KmsError::Keystore(format!("{m} (pass the root key with --root-key FILE)"))
                    }
                    KmsError::WrongRootKey(_) => KmsError::WrongRootKey(format!(
                        "{} (the snapshot {} was made under another root key; nothing was changed)",
                        dir.display(),
                        input.display()
                    )),
                    other => other,
                })?,
                false,
            ),
        };
        if !snap_data.root_matches(&root) {
            return Err(KmsError::WrongRootKey(format!(
                "{} (the snapshot {} was made under another root key; nothing was changed)",
                dir.display(),
                input.display()
            )));
        }
        if mac_of(&root, &bytes[..snap.mac_at]).verify_slice(&bytes[snap.mac_at..snap.mac_at + 32]).is_err() {
            return Err(corrupt("authentication failed (altered, or made under another root key)"));
        }
        // keystore.json inside a snapshot of format 3 carries its own MAC too.
        let snap_data = snap_loaded.verify(&root)?;
        check_material(&snap_data, &root)?;

        sqlite_tde_fsutil::create_private_dir(&dir)
            .map_err(|e| KmsError::Keystore(format!("cannot create {}: {e}", dir.display())))?;
        self.finish_pending_restore()?;
        let locks = lock_all(&dir)?;
        let mut replaced = None;
        if let Some(current) = keystore::load(&self.paths)? {
            let current = current.data;
            replaced = (current.format >= keystore::MAC_VERSION).then(|| current.audit.head.clone());
            if !current.root_matches(&root) {
                return Err(KmsError::WrongRootKey(format!(
                    "{} (the snapshot belongs to another keystore: its root key differs; nothing was changed)",
                    dir.display()
                )));
            }
            let lost = lost_versions(&current, &snap_data);
            if !lost.is_empty() && !opts.force {
                return Err(KmsError::InvalidRequest(format!(
                    "the snapshot (made at {}) lacks {} key version(s) the keystore holds ({}{}): databases \
                     under them could no longer be opened. Back up the current keystore first; pass --force to \
                     restore anyway. Nothing was changed",
                    crate::clock::format_time(snap.created),
                    lost.len(),
                    lost.iter().take(3).cloned().collect::<Vec<_>>().join(", "),
                    if lost.len() > 3 { ", ..." } else { "" }
                )));
            }
        }
        let werr = |p: &Path, e: std::io::Error| KmsError::Keystore(format!("cannot write {}: {e}", p.display()));
        if install {
            root.write_new_file(&in_dir)?;
        }
        let journal = dir.join(PENDING);
        sqlite_tde_fsutil::write_atomic(&journal, &bytes, 0o600).map_err(|e| werr(&journal, e))?;
        apply_pending(&dir)?;
        drop(locks);
        // The files are in place: the restore is done. Its record uses the key it was checked
        // with (the environment may name the root key only for later uses, e.g. --root-key).
        let root = std::sync::Arc::new(root);
        *self.root.lock().unwrap_or_else(|p| p.into_inner()) = Some(root.clone());
        // The restore rolls the log back to the snapshot's: its record says which head it replaced.
        let mut ctx = OpCtx::new(principal, "RestoreKeystore");
        ctx.detail = Some(match replaced {
            Some(h) => format!(
                "restored {} (made at {}); replaced an audit log whose newest record was {} (digest {})",
                input.display(),
                crate::clock::format_time(snap.created),
                h.seq,
                h.digest
            ),
            None => format!("restored {} (made at {})", input.display(), crate::clock::format_time(snap.created)),
        });
        self.record(&ctx, Outcome::Allowed, None)?;
        Ok(RestoreReport {
            dir: dir.clone(),
            files: snap.entries.iter().map(|(n, _)| n.clone()).collect(),
            keys: snap_data.keys.len(),
            root_key_installed: install,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::rootkey::PassphraseParams;

    fn key(pass: &[u8]) -> RootKey {
        let p = PassphraseParams { salt: "00".repeat(16), m_cost_kib: 8, t_cost: 1, p_cost: 1 };
        RootKey::from_passphrase(pass, &p).unwrap()
    }

    #[test]
    fn every_truncation_and_bit_flip_is_refused_without_panicking() {
        let root = key(b"a");
        let entries = vec![("keystore.json".to_string(), b"{}".to_vec()), ("audit.log".to_string(), b"x\n".to_vec())];
        let good = encode(&root, 1, [3; 32], &entries);
        let snap = decode(&good).unwrap();
        assert_eq!(snap.entries, entries);
        assert!(mac_of(&root, &good[..snap.mac_at]).verify_slice(&good[snap.mac_at..snap.mac_at + 32]).is_ok());
        assert!(mac_of(&key(b"b"), &good[..snap.mac_at]).verify_slice(&good[snap.mac_at..snap.mac_at + 32]).is_err());
        for n in 0..good.len() {
            assert!(decode(&good[..n]).is_err(), "truncated to {n}");
        }
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            assert!(decode(&bad).is_err(), "flip at {i}");
        }
    }
}

//! The KMS audit log: one JSON line per request, allowed or denied, hash-chained and
//! authenticated, appended with fsync before the request's effect is released (fail closed).
//!
//! Each record carries `prev` (the digest of the record before it; 64 zeros for the first),
//! its own `digest` = SHA-256("sqlite-tde/audit/v1\n" || JSON of every field except `digest`
//! and `mac`) and `mac` = HMAC-SHA256(audit key, digest), where the audit key is derived
//! from the keystore's root key. Editing a record breaks its digest (or, if recomputed, its
//! MAC), deleting or reordering records breaks `seq`/`prev`, and `audit.head` (the MAC'd
//! sequence number and digest of the newest record) exposes records cut from the end.
//! See docs/FORMAT.md §5.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::KmsError;

/// File names inside the keystore directory.
pub const AUDIT_FILE: &str = "audit.log";
pub const HEAD_FILE: &str = "audit.head";
pub const LOCK_FILE: &str = "audit.lock";
/// Prefix of `audit.head`'s temp files.
pub const HEAD_TMP_PREFIX: &str = ".tmp-head-";

const DIGEST_PREFIX: &[u8] = b"sqlite-tde/audit/v1\n";
const ZERO_DIGEST: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const MAX_ERROR_LEN: usize = 512;
const TAIL_WINDOW: u64 = 64 * 1024;

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Authorised and performed.
    Allowed,
    /// Refused by a key policy (or a service-managed key's fixed rules).
    Denied,
    /// Authorised, or not yet decided, but failed (state, validation, I/O).
    Failed,
}

/// What a request reports to the log.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub request_id: String,
    pub principal: String,
    pub operation: String,
    pub key_id: Option<String>,
    pub key_version: Option<u32>,
    /// SHA-256 of the canonical encryption context (never the context's values in clear).
    pub context_digest: Option<[u8; 32]>,
    pub outcome: Outcome,
    pub error: Option<String>,
}

/// One line of `audit.log`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub v: u32,
    pub seq: u64,
    pub time: u64,
    pub request_id: String,
    pub principal: String,
    pub operation: String,
    pub key_id: Option<String>,
    pub key_version: Option<u32>,
    pub context_sha256: Option<String>,
    pub outcome: Outcome,
    pub error: Option<String>,
    pub prev: String,
    pub digest: String,
    pub mac: String,
}

#[derive(Serialize)]
struct Body<'a> {
    v: u32,
    seq: u64,
    time: u64,
    request_id: &'a str,
    principal: &'a str,
    operation: &'a str,
    key_id: &'a Option<String>,
    key_version: Option<u32>,
    context_sha256: &'a Option<String>,
    outcome: Outcome,
    error: &'a Option<String>,
    prev: &'a str,
}

impl AuditRecord {
    /// The digest this record's content calls for (what `digest` must hold).
    pub fn content_digest(&self) -> String {
        self.compute_digest()
    }

    fn compute_digest(&self) -> String {
        let body = Body {
            v: self.v,
            seq: self.seq,
            time: self.time,
            request_id: &self.request_id,
            principal: &self.principal,
            operation: &self.operation,
            key_id: &self.key_id,
            key_version: self.key_version,
            context_sha256: &self.context_sha256,
            outcome: self.outcome,
            error: &self.error,
            prev: &self.prev,
        };
        let mut h = Sha256::new();
        h.update(DIGEST_PREFIX);
        h.update(serde_json::to_vec(&body).expect("record serialises"));
        hex::encode(h.finalize())
    }
}

fn mac_hex(key: &[u8; 32], parts: &[&[u8]]) -> String {
    let mut m = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("any key length");
    for p in parts {
        m.update(p);
    }
    hex::encode(m.finalize().into_bytes())
}

fn mac_ok(key: &[u8; 32], parts: &[&[u8]], want: &str) -> bool {
    let mut m = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("any key length");
    for p in parts {
        m.update(p);
    }
    match hex::decode(want) {
        Ok(w) => m.verify_slice(&w).is_ok(),
        Err(_) => false,
    }
}

/// `audit.head`: the newest record's sequence number and digest, authenticated.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Head {
    seq: u64,
    digest: String,
    mac: String,
}

fn head_mac(key: &[u8; 32], seq: u64, digest: &str) -> String {
    mac_hex(key, &[b"sqlite-tde/audit-head/v1", &seq.to_le_bytes(), digest.as_bytes()])
}

/// The result of `kms audit --verify`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerifyReport {
    pub records: u64,
    pub ok: bool,
    /// Whether record MACs were checked (needs the root key).
    pub authenticated: bool,
    pub problems: Vec<String>,
}

/// The audit log of one keystore directory.
#[derive(Debug, Clone)]
pub struct AuditLog {
    dir: PathBuf,
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> KmsError {
    KmsError::Audit(format!("{what} {}: {e}", path.display()))
}

impl AuditLog {
    pub fn new(dir: impl Into<PathBuf>) -> AuditLog {
        AuditLog { dir: dir.into() }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(AUDIT_FILE)
    }

    fn head_path(&self) -> PathBuf {
        self.dir.join(HEAD_FILE)
    }

    /// Append one record and make it durable. An error means the record is not on disk and
    /// the caller must not perform (or must not release the result of) the request.
    pub fn append(&self, mac_key: &[u8; 32], now: u64, ev: &AuditEvent) -> Result<AuditRecord, KmsError> {
        let lock_path = self.dir.join(LOCK_FILE);
        let _lock = crate::fsutil::lock_exclusive(&lock_path).map_err(|e| io_err("cannot lock", &lock_path, e))?;
        // Head temp files are written only under this lock: any left is a killed writer's.
        let _ = crate::fsutil::remove_stale_temps(&self.dir, HEAD_TMP_PREFIX);
        let path = self.path();
        let created = !path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io_err("cannot open", &path, e))?;
        if created {
            crate::fsutil::sync_dir(&self.dir).map_err(|e| io_err("cannot sync", &self.dir, e))?;
        }
        let (last_seq, last_digest) = tail(&mut file, &path)?;
        let mut error = ev.error.clone();
        if let Some(e) = error.as_mut() {
            if e.len() > MAX_ERROR_LEN {
                let mut cut = MAX_ERROR_LEN;
                while !e.is_char_boundary(cut) {
                    cut -= 1;
                }
                e.truncate(cut);
            }
        }
        let mut rec = AuditRecord {
            v: 1,
            seq: last_seq + 1,
            time: now,
            request_id: ev.request_id.clone(),
            principal: ev.principal.clone(),
            operation: ev.operation.clone(),
            key_id: ev.key_id.clone(),
            key_version: ev.key_version,
            context_sha256: ev.context_digest.map(hex::encode),
            outcome: ev.outcome,
            error,
            prev: last_digest,
            digest: String::new(),
            mac: String::new(),
        };
        rec.digest = rec.compute_digest();
        rec.mac = mac_hex(mac_key, &[rec.digest.as_bytes()]);
        let mut line = serde_json::to_vec(&rec).map_err(|e| KmsError::Audit(e.to_string()))?;
        line.push(b'\n');
        file.write_all(&line).map_err(|e| io_err("cannot append to", &path, e))?;
        file.sync_data().map_err(|e| io_err("cannot sync", &path, e))?;
        // The head may lag the log after a crash (verification accepts that); it never leads,
        // because the record is durable before the head names it.
        let head = Head { seq: rec.seq, digest: rec.digest.clone(), mac: head_mac(mac_key, rec.seq, &rec.digest) };
        let head_bytes = serde_json::to_vec(&head).map_err(|e| KmsError::Audit(e.to_string()))?;
        write_replace(&self.head_path(), &head_bytes).map_err(|e| io_err("cannot write", &self.head_path(), e))?;
        Ok(rec)
    }

    /// Every parseable record, in file order.
    pub fn read(&self) -> Result<Vec<AuditRecord>, KmsError> {
        let path = self.path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("cannot read", &path, e)),
        };
        Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
    }

    /// Check the whole chain; with `mac_key`, also every record's and the head's MAC.
    pub fn verify(&self, mac_key: Option<&[u8; 32]>) -> Result<VerifyReport, KmsError> {
        let path = self.path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_err("cannot read", &path, e)),
        };
        let mut problems = Vec::new();
        let mut prev = ZERO_DIGEST.to_string();
        let mut seq = 0u64;
        let mut digests = Vec::new();
        if !bytes.is_empty() && bytes.last() != Some(&b'\n') {
            problems.push("the last record is incomplete (torn write or truncation)".to_string());
        }
        let text = String::from_utf8_lossy(&bytes);
        for (i, line) in text.split_terminator('\n').enumerate() {
            let lineno = i + 1;
            let rec: AuditRecord = match serde_json::from_str(line) {
                Ok(r) => r,
                Err(e) => {
                    problems.push(format!("line {lineno}: not a valid record ({e})"));
                    prev = String::new();
                    continue;
                }
            };
            if rec.v != 1 {
                problems.push(format!("line {lineno}: unsupported record version {}", rec.v));
            }
            if rec.seq != seq + 1 {
                problems.push(format!(
                    "line {lineno}: sequence number {} follows {seq} (records deleted, inserted or reordered)",
                    rec.seq
                ));
            }
            if rec.prev != prev {
                problems.push(format!(
                    "line {lineno} (seq {}): chain broken: prev does not match the digest of the record before it",
                    rec.seq
                ));
            }
            if rec.compute_digest() != rec.digest {
                problems
                    .push(format!("line {lineno} (seq {}): record edited: digest does not match its content", rec.seq));
            } else if let Some(k) = mac_key {
                if !mac_ok(k, &[rec.digest.as_bytes()], &rec.mac) {
                    problems.push(format!("line {lineno} (seq {}): record forged: MAC does not verify", rec.seq));
                }
            }
            seq = rec.seq;
            prev = rec.digest.clone();
            digests.push((rec.seq, rec.digest));
        }
        match std::fs::read(self.head_path()) {
            Ok(h) => match serde_json::from_slice::<Head>(&h) {
                Ok(head) => {
                    if let Some(k) = mac_key {
                        if !mac_ok(
                            k,
                            &[b"sqlite-tde/audit-head/v1", &head.seq.to_le_bytes(), head.digest.as_bytes()],
                            &head.mac,
                        ) {
                            problems.push("audit.head forged: MAC does not verify".into());
                        }
                    }
                    match digests.iter().find(|(s, _)| *s == head.seq) {
                        Some((_, d)) if *d == head.digest => {}
                        Some(_) => {
                            problems.push(format!("record {} differs from the one audit.head recorded", head.seq))
                        }
                        None => problems.push(format!(
                            "audit.head names record {} but the log ends at {seq}: records deleted from the end",
                            head.seq
                        )),
                    }
                }
                Err(e) => problems.push(format!("audit.head is not valid ({e})")),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !digests.is_empty() {
                    problems.push("audit.head is missing".into());
                }
            }
            Err(e) => return Err(io_err("cannot read", &self.head_path(), e)),
        }
        Ok(VerifyReport {
            records: digests.len() as u64,
            ok: problems.is_empty(),
            authenticated: mac_key.is_some(),
            problems,
        })
    }
}

/// Sequence number and digest of the last complete record. A torn final line (a crash during
/// an append that was never acknowledged) is cut off; a final line that is complete but not a
/// record means tampering: refuse to extend the chain.
fn tail(file: &mut File, path: &Path) -> Result<(u64, String), KmsError> {
    let len = file.metadata().map_err(|e| io_err("cannot stat", path, e))?.len();
    if len == 0 {
        return Ok((0, ZERO_DIGEST.to_string()));
    }
    let start = len.saturating_sub(TAIL_WINDOW);
    let mut buf = Vec::with_capacity((len - start) as usize);
    file.seek(SeekFrom::Start(start)).map_err(|e| io_err("cannot seek", path, e))?;
    file.read_to_end(&mut buf).map_err(|e| io_err("cannot read", path, e))?;
    let mut end = buf.len();
    if buf.last() != Some(&b'\n') {
        let keep = buf.iter().rposition(|&b| b == b'\n').map(|i| i + 1);
        let keep = match keep {
            Some(k) => k,
            None if start == 0 => 0,
            None => {
                return Err(KmsError::Audit(format!(
                    "{}: final record is longer than {TAIL_WINDOW} bytes",
                    path.display()
                )))
            }
        };
        file.set_len(start + keep as u64).map_err(|e| io_err("cannot repair", path, e))?;
        file.sync_data().map_err(|e| io_err("cannot sync", path, e))?;
        end = keep;
        if keep == 0 {
            return Ok((0, ZERO_DIGEST.to_string()));
        }
    }
    let body = &buf[..end - 1];
    let line_start = body.iter().rposition(|&b| b == b'\n').map(|i| i + 1).unwrap_or(0);
    if line_start == 0 && start != 0 {
        return Err(KmsError::Audit(format!("{}: final record is longer than {TAIL_WINDOW} bytes", path.display())));
    }
    let rec: AuditRecord = serde_json::from_slice(&body[line_start..]).map_err(|_| {
        KmsError::Audit(format!(
            "{}: the last record is not valid; refusing to extend a damaged chain (run `sqlite-tde kms audit --verify`)",
            path.display()
        ))
    })?;
    Ok((rec.seq, rec.digest))
}

/// Replace a small file: temp file, fsync, rename (no directory fsync: a lost rename leaves
/// the previous head, which verification tolerates).
fn write_replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new().prefix(HEAD_TMP_PREFIX).tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_data()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(op: &str) -> AuditEvent {
        AuditEvent {
            request_id: uuid::Uuid::new_v4().to_string(),
            principal: "alice".into(),
            operation: op.into(),
            key_id: Some("k".into()),
            key_version: Some(1),
            context_digest: Some([7; 32]),
            outcome: Outcome::Allowed,
            error: None,
        }
    }

    #[test]
    fn chain_verifies_and_torn_tail_is_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::new(dir.path());
        let key = [1u8; 32];
        for i in 0..5 {
            log.append(&key, 100 + i, &ev("Decrypt")).unwrap();
        }
        let r = log.verify(Some(&key)).unwrap();
        assert!(r.ok && r.records == 5, "{r:?}");
        // A torn append (crash mid-write) is cut at the next append.
        let mut f = OpenOptions::new().append(true).open(log.path()).unwrap();
        f.write_all(b"{\"v\":1,\"seq\":6,").unwrap();
        assert!(!log.verify(Some(&key)).unwrap().ok);
        let rec = log.append(&key, 200, &ev("Encrypt")).unwrap();
        assert_eq!(rec.seq, 6);
        assert!(log.verify(Some(&key)).unwrap().ok);
        assert!(!log.verify(Some(&[2u8; 32])).unwrap().ok, "wrong MAC key must not verify");
    }
}

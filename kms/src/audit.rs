//! The KMS audit log: one JSON line per request, allowed or denied, hash-chained and
//! authenticated (docs/FORMAT.md §5).
//!
//! Each record carries `prev` (the digest of the record before it; 64 zeros for the first),
//! its own `digest` = SHA-256(version prefix || canonical JSON of every field except `digest`
//! and `mac`) and `mac` = HMAC-SHA256(audit key, digest), where the audit key is derived from
//! the keystore's root key. A line must be exactly the canonical encoding of the record it
//! parses to: a field the digest does not cover (an unknown, duplicated or reordered field,
//! extra whitespace) makes the record invalid instead of silently unauthenticated.
//!
//! The newest record's sequence number and digest (the *head*) live inside `keystore.json`,
//! under the keystore's MAC, together with the records of the last commit (`pending`). A
//! request is committed by replacing `keystore.json` (head + pending) and then appending the
//! pending records to `audit.log`; so the log may lag the keystore by exactly its pending
//! records after a crash (the next request appends them), but never leads it and never
//! diverges. Any other mismatch — records cut from the end, a deleted log, an older log put
//! back, a `keystore.json` put back — makes every request fail closed until an administrator
//! runs `sqlite-tde kms audit --acknowledge-gap`, which records the gap in the chain itself.

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
/// The head file of keystore format 2 (read once, when such a keystore is upgraded).
pub const HEAD_FILE: &str = "audit.head";
pub const LOCK_FILE: &str = "audit.lock";
/// Prefix of format-2 `audit.head` temp files (removed if a killed writer left one).
pub const HEAD_TMP_PREFIX: &str = ".tmp-head-";
/// Version of the records this build writes.
pub const RECORD_VERSION: u32 = 2;
/// `prev` of the first record (and the digest of an empty log).
pub const ZERO_DIGEST: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// The recovery command every integrity error names.
pub const ACKNOWLEDGE_COMMAND: &str = "sqlite-tde kms audit --acknowledge-gap";

const DIGEST_PREFIX_V1: &[u8] = b"sqlite-tde/audit/v1\n";
const DIGEST_PREFIX_V2: &[u8] = b"sqlite-tde/audit/v2\n";
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

/// Records that are not plain requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecordKind {
    /// An administrator acknowledged that the log did not match `keystore.json` (`detail`
    /// says how); the chain goes on from the log's last record, `seq` after both.
    GapAcknowledged,
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
    /// Free text for administrative records (format upgrade, restore).
    pub detail: Option<String>,
}

/// One line of `audit.log`. The field order is the canonical encoding (docs/FORMAT.md §5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    pub v: u32,
    pub seq: u64,
    pub time: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<RecordKind>,
    pub request_id: String,
    pub principal: String,
    pub operation: String,
    pub key_id: Option<String>,
    pub key_version: Option<u32>,
    pub context_sha256: Option<String>,
    pub outcome: Outcome,
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub prev: String,
    pub digest: String,
    pub mac: String,
}

#[derive(Serialize)]
struct Body<'a> {
    v: u32,
    seq: u64,
    time: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<RecordKind>,
    request_id: &'a str,
    principal: &'a str,
    operation: &'a str,
    key_id: &'a Option<String>,
    key_version: Option<u32>,
    context_sha256: &'a Option<String>,
    outcome: Outcome,
    error: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: &'a Option<String>,
    prev: &'a str,
}

impl AuditRecord {
    /// The digest this record's content calls for (what `digest` must hold).
    pub fn content_digest(&self) -> String {
        let body = Body {
            v: self.v,
            seq: self.seq,
            time: self.time,
            kind: self.kind,
            request_id: &self.request_id,
            principal: &self.principal,
            operation: &self.operation,
            key_id: &self.key_id,
            key_version: self.key_version,
            context_sha256: &self.context_sha256,
            outcome: self.outcome,
            error: &self.error,
            detail: &self.detail,
            prev: &self.prev,
        };
        let mut h = Sha256::new();
        h.update(if self.v == 1 { DIGEST_PREFIX_V1 } else { DIGEST_PREFIX_V2 });
        h.update(serde_json::to_vec(&body).expect("record serialises"));
        hex::encode(h.finalize())
    }

    /// The canonical line (without its `\n`).
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("record serialises")
    }

    /// Parse one line, which must be exactly the canonical encoding of a record of a known
    /// version: nothing outside what the digest covers is accepted.
    pub fn parse_line(line: &str) -> Result<AuditRecord, String> {
        let rec: AuditRecord = serde_json::from_str(line).map_err(|e| format!("not a valid record ({e})"))?;
        if rec.v != 1 && rec.v != RECORD_VERSION {
            return Err(format!("unsupported record version {}", rec.v));
        }
        if rec.v == 1 && (rec.kind.is_some() || rec.detail.is_some()) {
            return Err("a version-1 record cannot carry kind or detail".into());
        }
        if rec.to_line() != line {
            return Err(
                "not in the canonical encoding (unknown, duplicated or reordered fields, or extra whitespace): \
                        fields the MAC does not cover"
                    .into(),
            );
        }
        Ok(rec)
    }

    fn is_gap(&self) -> bool {
        self.kind == Some(RecordKind::GapAcknowledged)
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

/// The newest record's sequence number and digest, as `keystore.json` records them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditHead {
    pub seq: u64,
    pub digest: String,
}

impl Default for AuditHead {
    fn default() -> AuditHead {
        AuditHead { seq: 0, digest: ZERO_DIGEST.to_string() }
    }
}

impl AuditHead {
    pub fn of(rec: &AuditRecord) -> AuditHead {
        AuditHead { seq: rec.seq, digest: rec.digest.clone() }
    }
}

/// The audit state `keystore.json` carries (under its MAC): the head, and the records of
/// the last commit, which a crash may have kept out of `audit.log`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditState {
    pub head: AuditHead,
    #[serde(default)]
    pub pending: Vec<AuditRecord>,
}

/// Build the records of one commit, chained on from `head`, each authenticated.
pub fn seal(mac_key: &[u8; 32], head: &AuditHead, now: u64, events: &[AuditEvent]) -> Vec<AuditRecord> {
    let mut prev = head.clone();
    let mut out = Vec::with_capacity(events.len());
    for ev in events {
        let mut rec = AuditRecord {
            v: RECORD_VERSION,
            seq: prev.seq + 1,
            time: now,
            kind: None,
            request_id: ev.request_id.clone(),
            principal: ev.principal.clone(),
            operation: ev.operation.clone(),
            key_id: ev.key_id.clone(),
            key_version: ev.key_version,
            context_sha256: ev.context_digest.map(hex::encode),
            outcome: ev.outcome,
            error: ev.error.as_deref().map(clip),
            detail: ev.detail.as_deref().map(clip),
            prev: prev.digest.clone(),
            digest: String::new(),
            mac: String::new(),
        };
        authenticate(mac_key, &mut rec);
        prev = AuditHead::of(&rec);
        out.push(rec);
    }
    out
}

fn authenticate(mac_key: &[u8; 32], rec: &mut AuditRecord) {
    rec.digest = rec.content_digest();
    rec.mac = mac_hex(mac_key, &[rec.digest.as_bytes()]);
}

fn clip(s: &str) -> String {
    let mut cut = s.len().min(MAX_ERROR_LEN);
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s[..cut].to_string()
}

/// The error that keeps the KMS closed while the log does not match its head.
pub fn integrity_error(problem: &str) -> KmsError {
    KmsError::AuditIntegrity(format!(
        "{problem}. Every KMS request is refused until an administrator has investigated and run \
         `{ACKNOWLEDGE_COMMAND}` (which records the gap in the audit chain for good)"
    ))
}

/// The result of `kms audit --verify`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerifyReport {
    pub records: u64,
    pub ok: bool,
    /// Whether record MACs were checked (needs the root key).
    pub authenticated: bool,
    pub problems: Vec<String>,
    /// Gaps an administrator acknowledged (`kms audit --acknowledge-gap`): part of the chain
    /// for good, reported by every verification.
    #[serde(default)]
    pub gaps: Vec<String>,
}

/// What the log is anchored to during verification.
#[derive(Debug, Clone, Copy)]
pub enum Anchor<'a> {
    /// The head and pending records of a MAC'd `keystore.json` (format 3).
    Keystore(&'a AuditState),
    /// The MAC'd `audit.head` file of a format-2 keystore.
    LegacyHeadFile,
}

/// The end of the log as found on disk.
#[derive(Debug, Default)]
struct Tail {
    exists: bool,
    last: Option<AuditRecord>,
    /// Why the last complete line is not a valid record.
    bad_last: Option<String>,
    /// Length to cut the file to (a torn final line: an append killed midway).
    torn: Option<u64>,
}

impl Tail {
    fn head(&self) -> AuditHead {
        self.last.as_ref().map(AuditHead::of).unwrap_or_default()
    }
}

/// How the log stands against the keystore's audit state: in step, behind by the pending
/// records from index `n` on (a commit whose appends a crash cut short), or broken.
fn classify(tail: &Tail, state: &AuditState) -> Result<Option<usize>, String> {
    if let Some(why) = &tail.bad_last {
        return Err(format!("the last record of audit.log is not valid: {why}"));
    }
    let head = &state.head;
    let at = tail.head();
    if at == *head {
        return Ok(None);
    }
    let pending = &state.pending;
    if pending.last().is_some_and(|r| AuditHead::of(r) == *head) {
        if pending[0].prev == at.digest && (tail.last.is_some() || pending[0].prev == ZERO_DIGEST) {
            return Ok(Some(0));
        }
        if let Some(i) = pending.iter().position(|r| r.digest == at.digest) {
            return Ok(Some(i + 1));
        }
    }
    let newest = format!("keystore.json names record {} (digest {}…) as the newest", head.seq, &head.digest[..16]);
    Err(if !tail.exists {
        format!("audit.log is missing, but {newest}")
    } else if at.seq < head.seq {
        format!(
            "audit.log ends at record {}, but {newest}: {} record(s) missing (the log was cut, deleted or an older \
             log was put back)",
            at.seq,
            head.seq - at.seq
        )
    } else if at.seq > head.seq {
        format!(
            "audit.log goes on to record {} past the newest record keystore.json names ({}): keystore.json was put \
             back (went backwards) or the log was replaced",
            at.seq, head.seq
        )
    } else {
        format!(
            "audit.log's record {} is not the one keystore.json names: the log was replaced (diverging chain)",
            at.seq
        )
    })
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

    fn lock(&self) -> Result<File, KmsError> {
        let p = self.dir.join(LOCK_FILE);
        sqlite_tde_fsutil::lock_exclusive(&p).map_err(|e| io_err("cannot lock", &p, e))
    }

    fn tail(&self) -> Result<Tail, KmsError> {
        let path = self.path();
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Tail::default()),
            Err(e) => return Err(io_err("cannot open", &path, e)),
        };
        if file.metadata().map_err(|e| io_err("cannot stat", &path, e))?.is_dir() {
            return Err(KmsError::Audit(format!("{} is not a file", path.display())));
        }
        read_tail(&mut file, &path)
    }

    /// Read-only: the problem that keeps the KMS closed, if any (a log behind by exactly the
    /// pending records is no problem: the next commit appends them).
    pub fn inspect(&self, state: &AuditState) -> Result<Option<String>, KmsError> {
        let tail = self.tail()?;
        Ok(classify(&tail, state).err())
    }

    /// Bring the log in step with the keystore's audit state before a commit (caller holds
    /// `keystore.lock`): cut a torn final line, append pending records a crash kept out, or
    /// fail closed.
    pub fn reconcile(&self, state: &AuditState) -> Result<(), KmsError> {
        let _lock = self.lock()?;
        // Format 2 wrote audit.head under this lock: any temp file of it is a killed writer's.
        let _ = sqlite_tde_fsutil::remove_stale_temps(&self.dir, HEAD_TMP_PREFIX);
        let tail = self.cut_torn()?;
        match classify(&tail, state) {
            Ok(None) => Ok(()),
            Ok(Some(from)) => self.write_records(&state.pending[from..]),
            Err(problem) => Err(integrity_error(&problem)),
        }
    }

    fn cut_torn(&self) -> Result<Tail, KmsError> {
        let tail = self.tail()?;
        if let Some(len) = tail.torn {
            let path = self.path();
            let f = OpenOptions::new().write(true).open(&path).map_err(|e| io_err("cannot open", &path, e))?;
            f.set_len(len).map_err(|e| io_err("cannot repair", &path, e))?;
            f.sync_data().map_err(|e| io_err("cannot sync", &path, e))?;
        }
        Ok(tail)
    }

    /// Append records (already committed in `keystore.json`) and make them durable.
    pub fn append(&self, recs: &[AuditRecord]) -> Result<(), KmsError> {
        let _lock = self.lock()?;
        self.write_records(recs)
    }

    fn write_records(&self, recs: &[AuditRecord]) -> Result<(), KmsError> {
        if recs.is_empty() {
            return Ok(());
        }
        let path = self.path();
        let created = !path.exists();
        let mut file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io_err("cannot open", &path, e))?;
        if created {
            sqlite_tde_fsutil::sync_dir(&self.dir).map_err(|e| io_err("cannot sync", &self.dir, e))?;
        }
        let mut bytes = Vec::new();
        for r in recs {
            bytes.extend_from_slice(r.to_line().as_bytes());
            bytes.push(b'\n');
        }
        file.write_all(&bytes).map_err(|e| io_err("cannot append to", &path, e))?;
        file.sync_data().map_err(|e| io_err("cannot sync", &path, e))
    }

    /// The record of an administrator's acknowledgement of the mismatch between the log and
    /// `state` (caller holds `keystore.lock`, commits it to `keystore.json`, then appends it).
    /// Refused when there is no mismatch.
    pub fn acknowledge(
        &self,
        mac_key: &[u8; 32],
        state: &AuditState,
        now: u64,
        principal: &str,
    ) -> Result<AuditRecord, KmsError> {
        let _lock = self.lock()?;
        let tail = self.cut_torn()?;
        let problem = match classify(&tail, state) {
            Ok(None) | Ok(Some(_)) => {
                return Err(KmsError::InvalidRequest(
                    "audit.log matches keystore.json: there is no gap to acknowledge".into(),
                ))
            }
            Err(p) => p,
        };
        if let Some(why) = &tail.bad_last {
            return Err(KmsError::InvalidRequest(format!(
                "the last line of audit.log is not a valid record ({why}): keep a copy of audit.log for the \
                 investigation, remove the damaged line (or move the log aside), then acknowledge again"
            )));
        }
        let at = tail.head();
        let mut rec = AuditRecord {
            v: RECORD_VERSION,
            seq: at.seq.max(state.head.seq) + 1,
            time: now,
            kind: Some(RecordKind::GapAcknowledged),
            request_id: uuid::Uuid::new_v4().to_string(),
            principal: principal.to_string(),
            operation: "AcknowledgeAuditGap".into(),
            key_id: None,
            key_version: None,
            context_sha256: None,
            outcome: Outcome::Allowed,
            error: None,
            detail: Some(clip(&format!(
                "{problem}; log ended at record {} (digest {}), keystore.json named record {} (digest {})",
                at.seq, at.digest, state.head.seq, state.head.digest
            ))),
            prev: at.digest,
            digest: String::new(),
            mac: String::new(),
        };
        authenticate(mac_key, &mut rec);
        Ok(rec)
    }

    /// Every valid record, in file order.
    pub fn read(&self) -> Result<Vec<AuditRecord>, KmsError> {
        let path = self.path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("cannot read", &path, e)),
        };
        Ok(text.lines().filter_map(|l| AuditRecord::parse_line(l).ok()).collect())
    }

    /// Check the whole chain; with `mac_key`, also every record's MAC; with an anchor, that
    /// the log ends where `keystore.json` (or a format-2 `audit.head`) says.
    pub fn verify(&self, mac_key: Option<&[u8; 32]>, anchor: Option<Anchor<'_>>) -> Result<VerifyReport, KmsError> {
        let path = self.path();
        let (bytes, exists) = match std::fs::read(&path) {
            Ok(b) => (b, true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Vec::new(), false),
            Err(e) => return Err(io_err("cannot read", &path, e)),
        };
        let mut problems = Vec::new();
        let mut gaps = Vec::new();
        let mut prev = ZERO_DIGEST.to_string();
        let mut seq = 0u64;
        let mut records = 0u64;
        let mut tail = Tail { exists, ..Default::default() };
        if !bytes.is_empty() && bytes.last() != Some(&b'\n') {
            problems.push("the last record is incomplete (torn write or truncation)".to_string());
        }
        let text = String::from_utf8_lossy(&bytes);
        for (i, line) in text.split_terminator('\n').enumerate() {
            let lineno = i + 1;
            let rec = match AuditRecord::parse_line(line) {
                Ok(r) => r,
                Err(e) => {
                    problems.push(format!("line {lineno}: {e}"));
                    tail.bad_last = Some(e);
                    prev = String::new();
                    continue;
                }
            };
            tail.bad_last = None;
            if rec.is_gap() {
                if rec.seq <= seq {
                    problems.push(format!("line {lineno}: gap record {} does not follow record {seq}", rec.seq));
                }
                gaps.push(format!(
                    "record {}: gap acknowledged by {} at {}: {}",
                    rec.seq,
                    rec.principal,
                    super::clock::format_time(rec.time),
                    rec.detail.as_deref().unwrap_or("")
                ));
            } else if rec.seq != seq + 1 {
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
            if rec.content_digest() != rec.digest {
                problems
                    .push(format!("line {lineno} (seq {}): record edited: digest does not match its content", rec.seq));
            } else if let Some(k) = mac_key {
                if !mac_ok(k, &[rec.digest.as_bytes()], &rec.mac) {
                    problems.push(format!("line {lineno} (seq {}): record forged: MAC does not verify", rec.seq));
                }
            }
            seq = rec.seq;
            prev = rec.digest.clone();
            records += 1;
            tail.last = Some(rec);
        }
        match anchor {
            Some(Anchor::Keystore(state)) => {
                if let Err(p) = classify(&Tail { bad_last: None, ..tail }, state) {
                    problems.push(p);
                }
            }
            Some(Anchor::LegacyHeadFile) => self.check_legacy_head(mac_key, &tail, &mut problems)?,
            None => {}
        }
        Ok(VerifyReport { records, ok: problems.is_empty(), authenticated: mac_key.is_some(), problems, gaps })
    }

    /// Format 2: `audit.head` (MAC'd) may lag the log after a crash, never lead it.
    fn check_legacy_head(
        &self,
        mac_key: Option<&[u8; 32]>,
        tail: &Tail,
        problems: &mut Vec<String>,
    ) -> Result<(), KmsError> {
        #[derive(Deserialize)]
        struct Head {
            seq: u64,
            digest: String,
            mac: String,
        }
        let path = self.dir.join(HEAD_FILE);
        match std::fs::read(&path) {
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
                    let at = tail.head();
                    if head.seq > at.seq {
                        problems.push(format!(
                            "audit.head names record {} but the log ends at {}: records deleted from the end",
                            head.seq, at.seq
                        ));
                    } else if head.seq == at.seq && head.digest != at.digest {
                        problems.push(format!("record {} differs from the one audit.head recorded", head.seq));
                    }
                }
                Err(e) => problems.push(format!("audit.head is not valid ({e})")),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if tail.last.is_some() {
                    problems.push("audit.head is missing".into());
                }
            }
            Err(e) => return Err(io_err("cannot read", &path, e)),
        }
        Ok(())
    }
}

/// The last complete line of the log, parsed; a torn final line (an append killed midway,
/// never acknowledged) is reported for cutting.
fn read_tail(file: &mut File, path: &Path) -> Result<Tail, KmsError> {
    let len = file.metadata().map_err(|e| io_err("cannot stat", path, e))?.len();
    let mut tail = Tail { exists: true, ..Default::default() };
    if len == 0 {
        return Ok(tail);
    }
    let start = len.saturating_sub(TAIL_WINDOW);
    let mut buf = Vec::with_capacity((len - start) as usize);
    file.seek(SeekFrom::Start(start)).map_err(|e| io_err("cannot seek", path, e))?;
    file.read_to_end(&mut buf).map_err(|e| io_err("cannot read", path, e))?;
    let too_long = || KmsError::Audit(format!("{}: final record is longer than {TAIL_WINDOW} bytes", path.display()));
    let mut end = buf.len();
    if buf.last() != Some(&b'\n') {
        let keep = match buf.iter().rposition(|&b| b == b'\n').map(|i| i + 1) {
            Some(k) => k,
            None if start == 0 => 0,
            None => return Err(too_long()),
        };
        tail.torn = Some(start + keep as u64);
        end = keep;
        if keep == 0 {
            return Ok(tail);
        }
    }
    let body = &buf[..end - 1];
    let line_start = body.iter().rposition(|&b| b == b'\n').map(|i| i + 1).unwrap_or(0);
    if line_start == 0 && start != 0 {
        return Err(too_long());
    }
    let line = String::from_utf8_lossy(&body[line_start..]);
    match AuditRecord::parse_line(&line) {
        Ok(r) if r.content_digest() == r.digest => tail.last = Some(r),
        Ok(r) => tail.bad_last = Some(format!("record {} was edited (digest does not match its content)", r.seq)),
        Err(e) => tail.bad_last = Some(e),
    }
    Ok(tail)
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
            detail: None,
        }
    }

    /// Commit like the KMS does: the state first, then the log.
    fn commit(log: &AuditLog, key: &[u8; 32], state: &mut AuditState, n: usize) -> Vec<AuditRecord> {
        log.reconcile(state).unwrap();
        let evs: Vec<AuditEvent> = (0..n).map(|_| ev("Decrypt")).collect();
        let recs = seal(key, &state.head, 100, &evs);
        state.head = AuditHead::of(recs.last().unwrap());
        state.pending = recs.clone();
        recs
    }

    #[test]
    fn chain_verifies_pending_records_roll_forward_and_torn_tail_is_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::new(dir.path());
        let key = [1u8; 32];
        let mut state = AuditState::default();
        for _ in 0..5 {
            let recs = commit(&log, &key, &mut state, 1);
            log.append(&recs).unwrap();
        }
        let r = log.verify(Some(&key), Some(Anchor::Keystore(&state))).unwrap();
        assert!(r.ok && r.records == 5, "{r:?}");
        // Killed after the keystore commit, before the append: the log lags by the pending
        // records, which the next commit appends.
        let _ = commit(&log, &key, &mut state, 2);
        assert_eq!(log.inspect(&state).unwrap(), None);
        // A torn append of them is cut and redone.
        let mut f = OpenOptions::new().append(true).open(log.path()).unwrap();
        f.write_all(b"{\"v\":2,\"seq\":6,").unwrap();
        let recs = commit(&log, &key, &mut state, 1);
        log.append(&recs).unwrap();
        let r = log.verify(Some(&key), Some(Anchor::Keystore(&state))).unwrap();
        assert!(r.ok && r.records == 8, "{r:?}");
        assert!(!log.verify(Some(&[2u8; 32]), None).unwrap().ok, "wrong MAC key must not verify");
    }

    #[test]
    fn a_line_must_be_the_canonical_encoding() {
        let key = [1u8; 32];
        let rec = seal(&key, &AuditHead::default(), 1, &[ev("Decrypt")]).remove(0);
        let line = rec.to_line();
        assert_eq!(AuditRecord::parse_line(&line).unwrap(), rec);
        let extra = line.replacen("{\"v\":2,", "{\"v\":2,\"note\":\"x\",", 1);
        assert!(AuditRecord::parse_line(&extra).is_err());
        let spaced = line.replacen("\"seq\":1", "\"seq\": 1", 1);
        assert!(AuditRecord::parse_line(&spaced).is_err());
        let dup = line.replacen("{\"v\":2,", "{\"v\":2,\"v\":2,", 1);
        assert!(AuditRecord::parse_line(&dup).is_err());
    }
}

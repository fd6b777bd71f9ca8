//! Process-wide cache of unwrapped data keys, so opening a database does not call the KMS
//! every time.
//!
//! Entries hold the prepared cipher (expanded round keys), never loose key bytes; the `aes`
//! crate wipes round keys when the last `Arc` drops (eviction drops the cache's reference; an
//! open connection still using the key drops its own when it closes or is revoked). Keyed by
//! database UUID and a digest of the wrapped DEK (which names the CMK version: a rewrapped or
//! rekeyed header is a different entry); each entry records the CMK URI and version that
//! vouched for it, for revocation of a key or of one version.
//!
//! Freshness (all thresholds in [`CacheConfig`], defaults documented there and in
//! docs/ARCHITECTURE.md, "Key cache"):
//!
//! - younger than `revalidate_after` since the KMS last vouched for it: served, no KMS call;
//! - older: the KMS is asked again (the same Decrypt). A refusal (disabled, pending deletion,
//!   deleted, access denied, ...) evicts the entry and fails; an outage (`Unavailable`, a
//!   timeout, an unreadable keystore) keeps serving it until `ttl`, retrying at most every
//!   `outage_retry`;
//! - older than `ttl`: never served; the KMS must answer.
//! - a *revocation epoch* (optional probe, e.g. the embedded keystore's file identity) that
//!   changed since the entry was verified forces the revalidation at once, so a CMK disabled
//!   by another process is noticed at the next open rather than after `revalidate_after`.
//!   [`KeyCache::invalidate_key`] is the in-process equivalent (KMS events).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::crypto::XtsCipher;
use crate::error::Error;
use crate::kms::KmsError;

/// Cache thresholds.
#[derive(Debug, Clone, Copy)]
pub struct CacheConfig {
    /// Maximum number of cached keys (least recently used evicted first). Default 1024.
    pub max_entries: usize,
    /// Hard limit: how long a key may be served after the KMS last vouched for it, also while
    /// the KMS is unreachable. Default 300 s.
    pub ttl: Duration,
    /// After this long the KMS is asked again before a key is served (bound on how long a
    /// remote revocation goes unnoticed while the KMS is reachable). Default 60 s.
    pub revalidate_after: Duration,
    /// How often an open connection looks at its database's header and key state (bound on
    /// how long page I/O continues after a revocation the cache already knows). Default 1 s.
    pub check_interval: Duration,
    /// Longest wait for one KMS call; then the call counts as "KMS unavailable". Default 10 s.
    pub kms_timeout: Duration,
    /// While the KMS is unreachable, retry a stale entry's revalidation at most this often
    /// (opens in between are served from the cache without waiting). Default 5 s.
    pub outage_retry: Duration,
    /// Drop a database's key (its expanded key schedules, wiped) as soon as the last
    /// connection to it closes, instead of keeping it for `ttl` so the next open is warm.
    /// Every open then asks the KMS (docs/PERFORMANCE.md: cold vs cached open). Default off.
    pub forget_on_last_close: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_entries: 1024,
            ttl: Duration::from_secs(300),
            revalidate_after: Duration::from_secs(60),
            check_interval: Duration::from_secs(1),
            kms_timeout: Duration::from_secs(10),
            outage_retry: Duration::from_secs(5),
            forget_on_last_close: false,
        }
    }
}

/// Cache key: database identity plus which wrapped DEK (a header rewrap or rekey changes
/// it; the wrapped form names the CMK version that made it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub db_uuid: [u8; 16],
    pub wrapped_digest: [u8; 32],
}

impl CacheKey {
    pub fn new(db_uuid: [u8; 16], wrapped: &[u8]) -> CacheKey {
        CacheKey { db_uuid, wrapped_digest: Sha256::digest(wrapped).into() }
    }
}

struct Entry {
    cipher: Arc<XtsCipher>,
    /// Which CMK (key URI) and version vouched for this key, for revocation.
    key_uri: String,
    cmk_version: u32,
    verified_at: Instant,
    /// Revocation epoch observed when the KMS last vouched.
    epoch: u64,
    /// After a failed (unreachable KMS) revalidation: serve without asking until then.
    quiet_until: Option<Instant>,
}

/// Counters exposed through `PRAGMA tde_status` and `sqlite-tde info`.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct CacheMetrics {
    /// Served from the cache without a KMS call (or after a successful revalidation).
    pub hits: u64,
    /// Not cached (or expired): the KMS had to unwrap.
    pub misses: u64,
    /// Entries dropped: LRU, TTL, invalidation, revocation.
    pub evictions: u64,
    /// KMS calls made for the cache (unwraps and revalidations).
    pub kms_calls: u64,
    /// Revalidations of cached entries (a subset of `kms_calls`).
    pub revalidations: u64,
    /// Served stale because the KMS was unreachable (within the TTL).
    pub stale_served: u64,
    /// Entries dropped because the KMS refused them (disabled, deleted, ...).
    pub revoked: u64,
    /// Entries now cached.
    pub entries: u64,
}

/// A cheap probe returning a value that changes whenever the KMS's key states may have
/// changed (e.g. the identity of the embedded keystore file).
#[derive(Clone)]
pub struct EpochProbe(pub Arc<dyn Fn() -> u64 + Send + Sync>);

impl EpochProbe {
    /// Wrap a probe function.
    pub fn new(f: impl Fn() -> u64 + Send + Sync + 'static) -> EpochProbe {
        EpochProbe(Arc::new(f))
    }
}

impl std::fmt::Debug for EpochProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EpochProbe")
    }
}

/// Is this KMS failure an outage (retry later, cached keys stay usable within the TTL) rather
/// than an answer (the key may not be used)?
pub fn is_transient(e: &Error) -> bool {
    matches!(e, Error::Kms { source: KmsError::Unavailable(_) | KmsError::Keystore(_), .. })
}

/// An LRU of prepared ciphers.
pub struct KeyCache {
    config: CacheConfig,
    inner: Mutex<lru::LruCache<CacheKey, Entry>>,
    probe: Option<EpochProbe>,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    kms_calls: AtomicU64,
    revalidations: AtomicU64,
    stale_served: AtomicU64,
    revoked: AtomicU64,
}

enum Plan {
    Hit(Arc<XtsCipher>),
    Revalidate(Arc<XtsCipher>),
    Stale(Arc<XtsCipher>),
    Miss,
}

impl KeyCache {
    pub fn new(config: CacheConfig) -> KeyCache {
        KeyCache::with_probe(config, None)
    }

    /// A cache whose entries are revalidated as soon as `probe` changes.
    pub fn with_probe(config: CacheConfig, probe: Option<EpochProbe>) -> KeyCache {
        KeyCache {
            config,
            // Bounded by `trim`, not by the map: entries in use are never evicted.
            inner: Mutex::new(lru::LruCache::unbounded()),
            probe,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            kms_calls: AtomicU64::new(0),
            revalidations: AtomicU64::new(0),
            stale_served: AtomicU64::new(0),
            revoked: AtomicU64::new(0),
        }
    }

    pub fn config(&self) -> CacheConfig {
        self.config
    }

    fn epoch(&self) -> u64 {
        self.probe.as_ref().map(|p| (p.0)()).unwrap_or(0)
    }

    fn lru(&self) -> std::sync::MutexGuard<'_, lru::LruCache<CacheKey, Entry>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Return the cached cipher, or run `unwrap` (a KMS Decrypt that also verifies the key)
    /// and cache its result; see the module documentation for when a cached entry is
    /// revalidated with `unwrap` instead of served.
    pub fn get_or_unwrap(
        &self,
        key: CacheKey,
        key_uri: &str,
        unwrap: impl FnOnce() -> Result<XtsCipher, Error>,
    ) -> Result<Arc<XtsCipher>, Error> {
        self.get_or_unwrap_versioned(key, key_uri, 0, unwrap)
    }

    /// [`KeyCache::get_or_unwrap`], recording the CMK version (for
    /// [`KeyCache::invalidate_version`]).
    pub fn get_or_unwrap_versioned(
        &self,
        key: CacheKey,
        key_uri: &str,
        cmk_version: u32,
        unwrap: impl FnOnce() -> Result<XtsCipher, Error>,
    ) -> Result<Arc<XtsCipher>, Error> {
        let epoch = self.epoch();
        let now = Instant::now();
        let plan = {
            let mut lru = self.lru();
            match lru.get_mut(&key) {
                Some(e) => {
                    let age = now.saturating_duration_since(e.verified_at);
                    if age >= self.config.ttl {
                        lru.pop(&key);
                        self.evictions.fetch_add(1, Ordering::Relaxed);
                        Plan::Miss
                    } else if age >= self.config.revalidate_after || e.epoch != epoch {
                        match e.quiet_until {
                            Some(t) if now < t => Plan::Stale(e.cipher.clone()),
                            _ => Plan::Revalidate(e.cipher.clone()),
                        }
                    } else {
                        Plan::Hit(e.cipher.clone())
                    }
                }
                None => Plan::Miss,
            }
        };
        match plan {
            Plan::Hit(c) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Ok(c)
            }
            Plan::Stale(c) => {
                self.stale_served.fetch_add(1, Ordering::Relaxed);
                Ok(c)
            }
            Plan::Revalidate(c) => {
                self.revalidations.fetch_add(1, Ordering::Relaxed);
                self.kms_calls.fetch_add(1, Ordering::Relaxed);
                match unwrap() {
                    Ok(_same_key) => {
                        // `unwrap` verified the key against the header's check value: it is
                        // the key already cached. Keep the existing cipher.
                        if let Some(e) = self.lru().get_mut(&key) {
                            e.verified_at = Instant::now();
                            e.epoch = epoch;
                            e.quiet_until = None;
                        }
                        self.hits.fetch_add(1, Ordering::Relaxed);
                        Ok(c)
                    }
                    Err(err) if is_transient(&err) => {
                        if let Some(e) = self.lru().get_mut(&key) {
                            e.quiet_until = Some(Instant::now() + self.config.outage_retry);
                        }
                        self.stale_served.fetch_add(1, Ordering::Relaxed);
                        Ok(c)
                    }
                    Err(err) => {
                        if self.lru().pop(&key).is_some() {
                            self.evictions.fetch_add(1, Ordering::Relaxed);
                            self.revoked.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(err)
                    }
                }
            }
            Plan::Miss => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                self.kms_calls.fetch_add(1, Ordering::Relaxed);
                let cipher = Arc::new(unwrap()?);
                Ok(self.insert_arc(key, key_uri, cmk_version, cipher, Instant::now(), epoch))
            }
        }
    }

    /// Cache a cipher the caller obtained from the KMS itself (a new database, a rekey).
    pub fn insert(&self, key: CacheKey, key_uri: &str, cmk_version: u32, cipher: Arc<XtsCipher>) -> Arc<XtsCipher> {
        let epoch = self.epoch();
        self.insert_arc(key, key_uri, cmk_version, cipher, Instant::now(), epoch)
    }

    fn insert_arc(
        &self,
        key: CacheKey,
        key_uri: &str,
        cmk_version: u32,
        cipher: Arc<XtsCipher>,
        at: Instant,
        epoch: u64,
    ) -> Arc<XtsCipher> {
        let mut lru = self.lru();
        // Another thread may have cached the same key meanwhile: keep one cipher per key.
        if let Some(e) = lru.get_mut(&key) {
            e.verified_at = e.verified_at.max(at);
            return e.cipher.clone();
        }
        let entry = Entry {
            cipher: cipher.clone(),
            key_uri: key_uri.to_string(),
            cmk_version,
            verified_at: at,
            epoch,
            quiet_until: None,
        };
        lru.push(key, entry);
        self.trim(&mut lru);
        cipher
    }

    /// Evict least recently used entries beyond `max_entries`, but only entries no open
    /// connection uses: evicting one in use frees nothing (the connection keeps its cipher) and
    /// costs a KMS call and an audit record at its next revalidation or reopen. With more
    /// databases open than `max_entries`, the cache holds one entry per open database.
    fn trim(&self, lru: &mut lru::LruCache<CacheKey, Entry>) {
        let max = self.config.max_entries.max(1);
        if lru.len() <= max {
            return;
        }
        // An entry's cipher is in use when something beyond the cache's own entries (aliases
        // of a rewrapped header share one cipher) holds a reference to it.
        let mut held_by_cache: HashMap<*const XtsCipher, usize> = HashMap::new();
        for (_, e) in lru.iter() {
            *held_by_cache.entry(Arc::as_ptr(&e.cipher)).or_default() += 1;
        }
        let mut excess = lru.len() - max;
        let doomed: Vec<CacheKey> = lru
            .iter()
            .rev()
            .filter(|(_, e)| Arc::strong_count(&e.cipher) <= held_by_cache[&Arc::as_ptr(&e.cipher)])
            .take_while(|_| {
                let more = excess > 0;
                excess = excess.saturating_sub(1);
                more
            })
            .map(|(k, _)| *k)
            .collect();
        for k in doomed {
            lru.pop(&k);
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// After a rewrap: the same DEK is now also reachable under `new` (another wrapped form,
    /// CMK or version). Copies `old`'s entry, keeping its verification time, so opens of the
    /// rewrapped header hit the cache; the next revalidation asks the KMS about `new`.
    /// Returns whether `old` was cached.
    pub fn alias(&self, old: &CacheKey, new: CacheKey, new_key_uri: &str, new_version: u32) -> bool {
        let mut lru = self.lru();
        let Some(e) = lru.peek(old) else { return false };
        if lru.contains(&new) {
            return true;
        }
        let entry = Entry {
            cipher: e.cipher.clone(),
            key_uri: new_key_uri.to_string(),
            cmk_version: new_version,
            verified_at: e.verified_at,
            epoch: e.epoch,
            quiet_until: None,
        };
        lru.push(new, entry);
        self.trim(&mut lru);
        true
    }

    /// Drop the entries of the cipher cached under `key` if nothing but the cache holds it any
    /// more (the last connection using it closed). Returns whether it was dropped.
    pub fn forget_if_unused(&self, key: &CacheKey) -> bool {
        let mut lru = self.lru();
        let Some(cipher) = lru.peek(key).map(|e| Arc::as_ptr(&e.cipher)) else { return false };
        let sharing: Vec<CacheKey> =
            lru.iter().filter(|(_, e)| Arc::as_ptr(&e.cipher) == cipher).map(|(k, _)| *k).collect();
        let held = lru.peek(key).map(|e| Arc::strong_count(&e.cipher)).unwrap_or(0);
        if held > sharing.len() {
            return false; // an open connection still uses it
        }
        for k in &sharing {
            lru.pop(k);
        }
        self.evictions.fetch_add(sharing.len() as u64, Ordering::Relaxed);
        true
    }

    /// Drop one entry (e.g. the old DEK after a rekey). Returns whether it was cached.
    pub fn remove(&self, key: &CacheKey) -> bool {
        let gone = self.lru().pop(key).is_some();
        if gone {
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
        gone
    }

    /// Drop every entry wrapped under `key_uri` (e.g. the CMK was disabled, scheduled for
    /// deletion or deleted).
    pub fn invalidate_key(&self, key_uri: &str) -> usize {
        self.invalidate_where(|_, e| e.key_uri == key_uri)
    }

    /// Drop every entry wrapped under version `version` of `key_uri` (the version was
    /// retired).
    pub fn invalidate_version(&self, key_uri: &str, version: u32) -> usize {
        self.invalidate_where(|_, e| e.key_uri == key_uri && e.cmk_version == version)
    }

    fn invalidate_where(&self, f: impl Fn(&CacheKey, &Entry) -> bool) -> usize {
        let mut lru = self.lru();
        let doomed: Vec<CacheKey> = lru.iter().filter(|(k, e)| f(k, e)).map(|(k, _)| *k).collect();
        for k in &doomed {
            lru.pop(k);
        }
        self.evictions.fetch_add(doomed.len() as u64, Ordering::Relaxed);
        self.revoked.fetch_add(doomed.len() as u64, Ordering::Relaxed);
        doomed.len()
    }

    /// Drop everything.
    pub fn clear(&self) {
        let mut lru = self.lru();
        self.evictions.fetch_add(lru.len() as u64, Ordering::Relaxed);
        lru.clear();
    }

    /// Count a KMS call made on behalf of the cache's users outside `get_or_unwrap` (rewrap,
    /// rekey).
    pub fn note_kms_call(&self) {
        self.kms_calls.fetch_add(1, Ordering::Relaxed);
    }

    pub fn metrics(&self) -> CacheMetrics {
        CacheMetrics {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            kms_calls: self.kms_calls.load(Ordering::Relaxed),
            revalidations: self.revalidations.load(Ordering::Relaxed),
            stale_served: self.stale_served.load(Ordering::Relaxed),
            revoked: self.revoked.load(Ordering::Relaxed),
            entries: self.lru().len() as u64,
        }
    }
}

impl Drop for KeyCache {
    fn drop(&mut self) {
        // Entries' ciphers wipe their round keys when their last reference drops.
        self.lru().clear();
    }
}

/// A revocation epoch for the embedded KMS: a digest of the keys part of its keystore file,
/// which changes with every mutation (not with the audit head each request commits there).
/// Costs one `stat` while the file is unchanged; the file is read only when it changed.
pub fn keystore_file_probe(keystore_file: std::path::PathBuf) -> EpochProbe {
    let seen: std::sync::Mutex<Option<(u64, u64)>> = std::sync::Mutex::new(None);
    EpochProbe::new(move || {
        use std::hash::{Hash, Hasher};
        use std::os::unix::fs::MetadataExt;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        let Ok(m) = std::fs::metadata(&keystore_file) else { return 0 };
        (m.ino(), m.len(), m.mtime(), m.mtime_nsec(), m.ctime_nsec()).hash(&mut h);
        let identity = h.finish();
        let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((id, epoch)) = *seen {
            if id == identity {
                return epoch;
            }
        }
        let Ok(bytes) = std::fs::read(&keystore_file) else { return identity };
        let mut h = std::collections::hash_map::DefaultHasher::new();
        crate::kms::local::keys_section(&bytes).hash(&mut h);
        let epoch = h.finish();
        *seen = Some((identity, epoch));
        epoch
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::DataKey;

    fn cipher() -> XtsCipher {
        XtsCipher::new(&DataKey::generate().unwrap())
    }
    fn key(n: u8) -> CacheKey {
        CacheKey::new([n; 16], &[n; 40])
    }
    fn cfg() -> CacheConfig {
        CacheConfig {
            max_entries: 2,
            ttl: Duration::from_millis(400),
            revalidate_after: Duration::from_millis(100),
            outage_retry: Duration::from_millis(50),
            ..CacheConfig::default()
        }
    }
    fn kms_err(e: KmsError) -> Error {
        Error::Kms { path: "x".into(), source: e }
    }

    #[test]
    fn hit_miss_lru_eviction() {
        let c = KeyCache::new(cfg());
        let a = c.get_or_unwrap(key(1), "local:a", || Ok(cipher())).unwrap();
        let a2 = c.get_or_unwrap(key(1), "local:a", || panic!("no KMS call on a hit")).unwrap();
        assert!(Arc::ptr_eq(&a, &a2));
        c.get_or_unwrap(key(2), "local:a", || Ok(cipher())).unwrap();
        c.get_or_unwrap(key(3), "local:b", || Ok(cipher())).unwrap(); // evicts key(1)
        let m = c.metrics();
        assert_eq!((m.hits, m.misses, m.evictions, m.kms_calls, m.entries), (1, 3, 1, 3, 2));
        assert_eq!(c.invalidate_key("local:b"), 1);
        assert_eq!(c.metrics().entries, 1);
    }

    #[test]
    fn revalidation_refusal_and_outage() {
        let c = KeyCache::new(cfg());
        c.get_or_unwrap(key(1), "local:a", || Ok(cipher())).unwrap();
        std::thread::sleep(Duration::from_millis(120));
        // Outage: served stale, then quiet (no KMS call) for outage_retry.
        c.get_or_unwrap(key(1), "local:a", || Err(kms_err(KmsError::Unavailable("down".into())))).unwrap();
        c.get_or_unwrap(key(1), "local:a", || panic!("quiet period")).unwrap();
        std::thread::sleep(Duration::from_millis(60));
        // Refusal: evicted and failing.
        let e = c.get_or_unwrap(key(1), "local:a", || Err(kms_err(KmsError::Disabled("a".into())))).unwrap_err();
        assert!(matches!(e, Error::Kms { source: KmsError::Disabled(_), .. }));
        assert_eq!(c.metrics().entries, 0);
        // TTL: an outage past the TTL is a failure.
        c.get_or_unwrap(key(2), "local:a", || Ok(cipher())).unwrap();
        std::thread::sleep(Duration::from_millis(420));
        assert!(c.get_or_unwrap(key(2), "local:a", || Err(kms_err(KmsError::Unavailable("down".into())))).is_err());
        let m = c.metrics();
        assert!(m.stale_served >= 2 && m.revoked == 1 && m.revalidations == 2, "{m:?}");
    }

    #[test]
    fn epoch_change_forces_revalidation() {
        let epoch = Arc::new(AtomicU64::new(1));
        let e2 = epoch.clone();
        let c = KeyCache::with_probe(cfg(), Some(EpochProbe::new(move || e2.load(Ordering::SeqCst))));
        c.get_or_unwrap(key(1), "local:a", || Ok(cipher())).unwrap();
        c.get_or_unwrap(key(1), "local:a", || panic!("fresh")).unwrap();
        epoch.store(2, Ordering::SeqCst);
        let mut called = false;
        c.get_or_unwrap(key(1), "local:a", || {
            called = true;
            Ok(cipher())
        })
        .unwrap();
        assert!(called);
        c.get_or_unwrap(key(1), "local:a", || panic!("revalidated under the new epoch")).unwrap();
    }

    #[test]
    fn alias_keeps_cipher_and_age() {
        let c = KeyCache::new(cfg());
        let a = c.get_or_unwrap(key(1), "local:a", || Ok(cipher())).unwrap();
        let k2 = CacheKey::new([1; 16], &[9; 40]);
        assert!(c.alias(&key(1), k2, "local:b", 2));
        let b = c.get_or_unwrap(k2, "local:b", || panic!("aliased")).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(c.invalidate_version("local:b", 2), 1);
    }
}

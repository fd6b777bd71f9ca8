//! Process-wide cache of unwrapped data keys, so opening a database does not call the KMS
//! every time.
//!
//! Entries hold the prepared cipher (expanded round keys), never loose key bytes; the `aes`
//! crate wipes round keys when the last `Arc` drops. Keyed by database UUID and a digest of
//! the wrapped DEK, so a rewrapped or rekeyed header is a different entry.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::crypto::XtsCipher;

/// Cache thresholds.
#[derive(Debug, Clone, Copy)]
pub struct CacheConfig {
    /// Maximum number of cached keys (least recently used evicted first).
    pub max_entries: usize,
    /// How long a key may be served from the cache after the KMS last vouched for it.
    pub ttl: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig { max_entries: 1024, ttl: Duration::from_secs(300) }
    }
}

/// Cache key: database identity plus which wrapped DEK (a header rewrap or rekey changes it).
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
    /// Which CMK (key URI) vouched for this key, for revocation.
    key_uri: String,
    verified_at: Instant,
}

/// Counters exposed through `tde_status` and `sqlite-tde info`.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct CacheMetrics {
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub kms_calls: u64,
    pub entries: u64,
}

/// An LRU of prepared ciphers.
pub struct KeyCache {
    config: CacheConfig,
    inner: Mutex<lru::LruCache<CacheKey, Entry>>,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    kms_calls: AtomicU64,
}

impl KeyCache {
    pub fn new(config: CacheConfig) -> KeyCache {
        let cap = NonZeroUsize::new(config.max_entries.max(1)).unwrap();
        KeyCache {
            config,
            inner: Mutex::new(lru::LruCache::new(cap)),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            kms_calls: AtomicU64::new(0),
        }
    }

    pub fn config(&self) -> CacheConfig {
        self.config
    }

    /// Return the cached cipher, or run `unwrap` (a KMS call) and cache its result.
    pub fn get_or_unwrap<E>(
        &self,
        key: CacheKey,
        key_uri: &str,
        unwrap: impl FnOnce() -> Result<XtsCipher, E>,
    ) -> Result<Arc<XtsCipher>, E> {
        {
            let mut lru = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(e) = lru.get(&key) {
                if e.verified_at.elapsed() < self.config.ttl {
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(e.cipher.clone());
                }
                lru.pop(&key);
                self.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        self.kms_calls.fetch_add(1, Ordering::Relaxed);
        let cipher = Arc::new(unwrap()?);
        let mut lru = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let entry = Entry { cipher: cipher.clone(), key_uri: key_uri.to_string(), verified_at: Instant::now() };
        if lru.push(key, entry).is_some_and(|(k, _)| k != key) {
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
        Ok(cipher)
    }

    /// Drop every entry wrapped under `key_uri` (e.g. the CMK was disabled).
    pub fn invalidate_key(&self, key_uri: &str) -> usize {
        let mut lru = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let doomed: Vec<CacheKey> = lru.iter().filter(|(_, e)| e.key_uri == key_uri).map(|(k, _)| *k).collect();
        for k in &doomed {
            lru.pop(k);
        }
        self.evictions.fetch_add(doomed.len() as u64, Ordering::Relaxed);
        doomed.len()
    }

    /// Drop everything.
    pub fn clear(&self) {
        let mut lru = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        self.evictions.fetch_add(lru.len() as u64, Ordering::Relaxed);
        lru.clear();
    }

    pub fn metrics(&self) -> CacheMetrics {
        CacheMetrics {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            kms_calls: self.kms_calls.load(Ordering::Relaxed),
            entries: self.inner.lock().map(|l| l.len() as u64).unwrap_or(0),
        }
    }
}

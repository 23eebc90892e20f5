//! A bounded LRU of ready-to-use extent ciphers, limited in entries and in age (like the
//! AWS Encryption SDK's cache limits). Evicted ciphers are zeroized when their last user
//! drops them (the `aes` crate zeroizes key schedules on drop).

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lru::LruCache;

use super::FileId;
use crate::crypto::DataCipher;

type Key = (FileId, u64);

pub struct DekCache {
    entries: Mutex<LruCache<Key, (Arc<DataCipher>, Instant)>>,
    max_age: Duration,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// Counters for `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    pub entries: usize,
    pub hits: u64,
    pub misses: u64,
}

impl DekCache {
    pub const DEFAULT_ENTRIES: usize = 4096;
    pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(600);

    pub fn new(entries: usize, max_age: Duration) -> Self {
        let cap = NonZeroUsize::new(entries.max(1)).expect("max(1) is non-zero");
        DekCache {
            entries: Mutex::new(LruCache::new(cap)),
            max_age,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    pub fn get(&self, key: &Key) -> Option<Arc<DataCipher>> {
        let mut lru = self.lock();
        let hit = match lru.get(key) {
            Some((c, born)) if born.elapsed() <= self.max_age => Some(c.clone()),
            Some(_) => {
                lru.pop(key);
                None
            }
            None => None,
        };
        let counter = if hit.is_some() { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        hit
    }

    pub fn insert(&self, key: Key, cipher: Arc<DataCipher>) {
        self.lock().put(key, (cipher, Instant::now()));
    }

    pub fn remove_where(&self, pred: impl Fn(&Key) -> bool) {
        let mut lru = self.lock();
        let doomed: Vec<Key> = lru.iter().map(|(k, _)| *k).filter(|k| pred(k)).collect();
        for k in doomed {
            lru.pop(&k);
        }
    }

    pub fn clear(&self) {
        self.lock().clear();
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            entries: self.lock().len(),
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<Key, (Arc<DataCipher>, Instant)>> {
        // A panic while holding this lock cannot leave the LRU half-updated in a way that
        // matters (entries are whole values), so a poisoned lock is still usable.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for DekCache {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Key256;

    fn cipher() -> Arc<DataCipher> {
        Arc::new(DataCipher::gcm_siv(&Key256::generate()))
    }

    #[test]
    fn bounded_by_entries_and_age() {
        let c = DekCache::new(2, Duration::from_secs(600));
        c.insert(([1; 16], 0), cipher());
        c.insert(([1; 16], 1), cipher());
        c.insert(([1; 16], 2), cipher());
        assert!(c.get(&([1; 16], 0)).is_none());
        assert!(c.get(&([1; 16], 2)).is_some());
        assert_eq!(c.stats().entries, 2);
        c.remove_where(|(_, e)| *e >= 2);
        assert!(c.get(&([1; 16], 2)).is_none());

        let aged = DekCache::new(8, Duration::ZERO);
        aged.insert(([2; 16], 0), cipher());
        std::thread::sleep(Duration::from_millis(2));
        assert!(aged.get(&([2; 16], 0)).is_none());
        assert_eq!(aged.stats().entries, 0);
    }
}

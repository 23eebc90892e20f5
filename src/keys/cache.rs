//! A bounded LRU of ready-to-use extent ciphers, limited in entries and in age (like the
//! AWS Encryption SDK's cache limits). Evicted ciphers are zeroized when their last user
//! drops them (the `aes` crate zeroizes key schedules on drop).

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lru::LruCache;

use super::FileId;
use crate::crypto::DataCipher;

type Key = (FileId, u64);

pub struct DekCache {
    entries: Mutex<Entries>,
    max_age: Duration,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// The LRU and, per file, the extents it holds: forgetting a file (every unlink) must not
/// scan the whole cache.
struct Entries {
    lru: LruCache<Key, (Arc<DataCipher>, Instant)>,
    by_file: HashMap<FileId, Vec<u64>>,
}

impl Entries {
    fn pop(&mut self, key: &Key) {
        self.lru.pop(key);
        if let Some(extents) = self.by_file.get_mut(&key.0) {
            extents.retain(|e| *e != key.1);
            if extents.is_empty() {
                self.by_file.remove(&key.0);
            }
        }
    }
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
            entries: Mutex::new(Entries { lru: LruCache::new(cap), by_file: HashMap::new() }),
            max_age,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    pub fn get(&self, key: &Key) -> Option<Arc<DataCipher>> {
        let mut entries = self.lock();
        let hit = match entries.lru.get(key) {
            Some((c, born)) if born.elapsed() <= self.max_age => Some(c.clone()),
            Some(_) => {
                entries.pop(key);
                None
            }
            None => None,
        };
        let counter = if hit.is_some() { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        hit
    }

    pub fn insert(&self, key: Key, cipher: Arc<DataCipher>) {
        let mut entries = self.lock();
        if let Some((evicted, _)) = entries.lru.push(key, (cipher, Instant::now())) {
            if evicted == key {
                return; // replaced: already indexed
            }
            entries.pop(&evicted);
        }
        entries.by_file.entry(key.0).or_default().push(key.1);
    }

    /// Drops the ciphers of `file`'s extents `from..`.
    pub fn remove_file(&self, file: &FileId, from: u64) {
        let mut entries = self.lock();
        let doomed: Vec<u64> = match entries.by_file.get(file) {
            Some(extents) => extents.iter().copied().filter(|e| *e >= from).collect(),
            None => return,
        };
        for e in doomed {
            entries.pop(&(*file, e));
        }
    }

    pub fn clear(&self) {
        let mut entries = self.lock();
        entries.lru.clear();
        entries.by_file.clear();
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            entries: self.lock().lru.len(),
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
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
        c.remove_file(&[1; 16], 2);
        assert!(c.get(&([1; 16], 2)).is_none());

        let aged = DekCache::new(8, Duration::ZERO);
        aged.insert(([2; 16], 0), cipher());
        std::thread::sleep(Duration::from_millis(2));
        assert!(aged.get(&([2; 16], 0)).is_none());
        assert_eq!(aged.stats().entries, 0);
    }

    #[test]
    fn forgetting_a_file_drops_its_extents_only() {
        let c = DekCache::new(3, Duration::from_secs(600));
        c.insert(([1; 16], 0), cipher());
        c.insert(([1; 16], 5), cipher());
        c.insert(([2; 16], 0), cipher());
        c.remove_file(&[1; 16], 1);
        assert!(c.get(&([1; 16], 5)).is_none());
        assert!(c.get(&([1; 16], 0)).is_some() && c.get(&([2; 16], 0)).is_some());
        // Evictions leave the index too: file 1's extent 0 is the least recently used.
        c.get(&([2; 16], 0));
        c.insert(([3; 16], 0), cipher());
        c.insert(([3; 16], 1), cipher());
        assert!(c.get(&([1; 16], 0)).is_none());
        assert!(!c.lock().by_file.contains_key(&[1; 16]), "an evicted file leaves the index");
        c.remove_file(&[3; 16], 0);
        assert_eq!(c.stats().entries, 1);
        assert_eq!(c.lock().by_file.len(), 1);
    }
}

//! The sizes of closed files, remembered from the store so that `stat`, lookups and
//! directory listings do not each run a query.
//!
//! Sizes change only through [`super::Store::apply`] of this store, which updates the
//! cache after its transaction commits. A size read from the database is cached only if no
//! commit ran while it was being read (the generation is unchanged), so a reader that
//! raced a commit cannot put the older size back.

use std::num::NonZeroUsize;
use std::sync::Mutex;

use lru::LruCache;

/// How many sizes are kept (some 50 bytes each).
const CAPACITY: usize = 1 << 16;

pub(super) struct Sizes {
    inner: Mutex<Inner>,
}

struct Inner {
    lru: LruCache<[u8; 16], u64>,
    generation: u64,
}

/// What a committed transaction did to a file's size.
pub(super) enum SizeChange<'a> {
    Set(&'a [u8; 16], u64),
    Gone(&'a [u8; 16]),
}

impl Default for Sizes {
    fn default() -> Self {
        let cap = NonZeroUsize::new(CAPACITY).expect("non-zero");
        Sizes { inner: Mutex::new(Inner { lru: LruCache::new(cap), generation: 0 }) }
    }
}

impl Sizes {
    /// The cached size of `id`, or the generation to pass to [`Sizes::fill`] after reading it.
    pub(super) fn get(&self, id: &[u8; 16]) -> Result<u64, u64> {
        let mut i = self.lock();
        match i.lru.get(id) {
            Some(&size) => Ok(size),
            None => Err(i.generation),
        }
    }

    /// Caches `size` of `id` read from the database at `generation`, unless a commit ran since.
    pub(super) fn fill(&self, id: &[u8; 16], size: u64, generation: u64) {
        let mut i = self.lock();
        if i.generation == generation {
            i.lru.put(*id, size);
        }
    }

    /// Applies what a committed transaction did.
    pub(super) fn committed<'a>(&self, changes: impl Iterator<Item = SizeChange<'a>>) {
        let mut i = self.lock();
        i.generation += 1;
        for c in changes {
            match c {
                SizeChange::Set(id, size) => {
                    i.lru.put(*id, size);
                }
                SizeChange::Gone(id) => {
                    i.lru.pop(id);
                }
            }
        }
    }

    /// Forgets everything (a transaction whose outcome is unknown).
    pub(super) fn clear(&self) {
        let mut i = self.lock();
        i.generation += 1;
        i.lru.clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_that_raced_a_commit_is_not_cached() {
        let s = Sizes::default();
        let id = [1u8; 16];
        let gen = s.get(&id).unwrap_err();
        s.committed([SizeChange::Set(&[2u8; 16], 5)].into_iter()); // any commit
        s.fill(&id, 10, gen); // read before that commit: dropped
        assert!(s.get(&id).is_err());
        let gen = s.get(&id).unwrap_err();
        s.fill(&id, 10, gen);
        assert_eq!(s.get(&id), Ok(10));
        s.committed([SizeChange::Set(&id, 20)].into_iter());
        assert_eq!(s.get(&id), Ok(20));
        s.committed([SizeChange::Gone(&id)].into_iter());
        assert!(s.get(&id).is_err());
        s.fill(&id, 1, s.get(&id).unwrap_err());
        s.clear();
        assert!(s.get(&id).is_err());
    }
}

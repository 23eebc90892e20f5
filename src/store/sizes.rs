//! The sizes of closed files, remembered from the store so that `stat`, lookups and
//! directory listings do not each run a query.
//!
//! Sizes change only through [`super::Store::apply`] of this store, which updates the
//! cache after its transaction commits. A size read from the database is cached only if no
//! commit ran while it was being read (the generation is unchanged), so a reader that
//! raced a commit cannot put the older size back.
//!
//! A plain map emptied when full, not an LRU: `find` or `ls -lR` of a tree with more files
//! than an LRU holds missed on every file (each walk evicts what the next one needs first),
//! and a miss is a query (23 % of the daemon's time in a cold `find` of a Linux tree with
//! 65,536 entries kept, measured with `perf`). Emptied, the map fills again from the walk.

use std::collections::HashMap;
use std::sync::Mutex;

/// How many sizes are kept (some 40 bytes each: at most about 10 MiB).
const CAPACITY: usize = 1 << 18;

pub(super) struct Sizes {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    sizes: HashMap<[u8; 16], u64>,
    generation: u64,
}

impl Inner {
    fn put(&mut self, id: [u8; 16], size: u64) {
        if self.sizes.len() >= CAPACITY && !self.sizes.contains_key(&id) {
            self.sizes.clear();
        }
        self.sizes.insert(id, size);
    }
}

/// What a committed transaction did to a file's size.
pub(super) enum SizeChange<'a> {
    Set(&'a [u8; 16], u64),
    Gone(&'a [u8; 16]),
}

impl Default for Sizes {
    fn default() -> Self {
        Sizes { inner: Mutex::new(Inner::default()) }
    }
}

impl Sizes {
    /// The cached size of `id`, or the generation to pass to [`Sizes::fill`] after reading it.
    pub(super) fn get(&self, id: &[u8; 16]) -> Result<u64, u64> {
        let i = self.lock();
        match i.sizes.get(id) {
            Some(&size) => Ok(size),
            None => Err(i.generation),
        }
    }

    /// Caches `size` of `id` read from the database at `generation`, unless a commit ran since.
    pub(super) fn fill(&self, id: &[u8; 16], size: u64, generation: u64) {
        let mut i = self.lock();
        if i.generation == generation {
            i.put(*id, size);
        }
    }

    /// Applies what a committed transaction did.
    pub(super) fn committed<'a>(&self, changes: impl Iterator<Item = SizeChange<'a>>) {
        let mut i = self.lock();
        i.generation += 1;
        for c in changes {
            match c {
                SizeChange::Set(id, size) => i.put(*id, size),
                SizeChange::Gone(id) => {
                    i.sizes.remove(id);
                }
            }
        }
    }

    /// Forgets everything (a transaction whose outcome is unknown).
    pub(super) fn clear(&self) {
        let mut i = self.lock();
        i.generation += 1;
        i.sizes.clear();
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

    /// A walk over more files than an LRU of 65,536 held hits on its second pass, and the
    /// map never holds more than its capacity.
    #[test]
    fn a_second_walk_of_a_large_tree_hits_and_the_map_stays_bounded() {
        let s = Sizes::default();
        let id = |n: u32| {
            let mut id = [0u8; 16];
            id[..4].copy_from_slice(&n.to_le_bytes());
            id
        };
        for n in 0..100_000 {
            s.fill(&id(n), n.into(), s.get(&id(n)).unwrap_err());
        }
        assert!((0..100_000).all(|n| s.get(&id(n)) == Ok(n.into())), "every size of the walk kept");
        for n in 100_000..(CAPACITY as u32 + 1) {
            s.fill(&id(n), 0, s.get(&id(n)).unwrap_err());
        }
        assert!(s.lock().sizes.len() <= CAPACITY);
        assert_eq!(s.get(&id(CAPACITY as u32)), Ok(0), "the newest is kept");
    }
}

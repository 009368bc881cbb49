//! What the engine remembers about content between looks: each inode's reported content changes
//! and each file's last hash (so a rename, a link or a `touch` reuses a hash instead of reading
//! the file again), and the one budget of threads that hashing may use.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::decide::same_content;
use super::local::FileStat;

/// Where an inode's content stands: (changes reported that no inode could be named for, the
/// inode's last reported change). Equal stamps: no content change reported in between.
pub type Stamp = (u64, u64);

/// Content changes per inode and the last hash of each file, the one place a hash is reused: only
/// for the file it was taken of (same device and inode) while no change of it was reported. In
/// memory: fed by hashing, and by the reconcile pass with the hashes of files still as indexed.
#[derive(Default)]
pub struct HashCache {
    /// Bumped when the tables start over; invalidates every stamp and hash.
    epoch: u64,
    /// Generation of each inode number's last reported content change (events name no device).
    changes: HashMap<u64, u64>,
    next: u64,
    /// (device, inode) → (hash, the stat it was taken of, stamp when hashing began). A change
    /// reported since leaves it stale by its stamp.
    hashes: HashMap<(u64, u64), (String, FileStat, Stamp)>,
}

/// Above this many inodes tracked, the tables start over (as if everything had changed).
const TRACKED_MAX: usize = 100_000;

impl HashCache {
    pub fn stamp(&self, ino: u64) -> Stamp {
        (self.epoch, self.changes.get(&ino).copied().unwrap_or(0))
    }

    /// A content change of `ino` was reported.
    pub fn changed(&mut self, ino: u64) {
        if self.changes.len() >= TRACKED_MAX {
            self.epoch += 1;
            self.changes.clear();
            self.hashes.clear();
        }
        self.next += 1;
        self.changes.insert(ino, self.next);
    }

    /// `hash` was taken of the file `stat` describes, whose inode had `stamp` when hashing began.
    pub fn hashed(&mut self, stat: &FileStat, hash: &str, stamp: Stamp) {
        if self.stamp(stat.ino) != stamp {
            return;
        }
        if self.hashes.len() >= TRACKED_MAX {
            self.hashes.clear();
        }
        self.hashes
            .insert((stat.dev, stat.ino), (hash.to_string(), *stat, stamp));
    }

    /// The file's last hash, if no content change of it was reported since and its size agrees,
    /// and whether it is verified: its inode, size and mtime are those it was taken of (a rename
    /// or a link). Otherwise (times set) only the events vouch for it.
    pub fn known_hash(&self, stat: &FileStat) -> Option<(String, bool)> {
        let (hash, then, stamp) = self.hashes.get(&(stat.dev, stat.ino))?;
        (then.size == stat.size && *stamp == self.stamp(stat.ino))
            .then(|| (hash.clone(), same_content(then, stat)))
    }
}

/// The hashing threads all files share: one per core, whether they hash many small files at
/// once or the parts of one large file.
pub struct HashBudget {
    threads: Arc<Semaphore>,
}

/// Threads taken from the budget; they go back when this drops.
pub struct HashThreads {
    permit: OwnedSemaphorePermit,
}

impl HashThreads {
    pub fn count(&self) -> NonZeroUsize {
        NonZeroUsize::new(self.permit.num_permits()).expect("at least one")
    }
}

impl HashBudget {
    pub fn new(threads: NonZeroUsize) -> HashBudget {
        HashBudget {
            threads: Arc::new(Semaphore::new(threads.get())),
        }
    }

    /// Waits for one thread, then takes as many more as are free, up to `useful`.
    pub async fn take(&self, useful: NonZeroUsize) -> HashThreads {
        let mut permit = self
            .threads
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        let more = useful.get() - 1;
        if more > 0 {
            let free = self.threads.available_permits().min(more);
            if let Ok(extra) = self.threads.clone().try_acquire_many_owned(free as u32) {
                permit.merge(extra);
            }
        }
        HashThreads { permit }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(ino: u64, size: u64) -> FileStat {
        FileStat {
            dev: 1,
            ino,
            size,
            mtime_ns: 1,
            ctime_ns: 1,
        }
    }

    fn known(hash: &str, verified: bool) -> Option<(String, bool)> {
        Some((hash.to_string(), verified))
    }

    #[test]
    fn a_hash_is_reused_until_a_change_of_its_inode_is_reported() {
        let mut cache = HashCache::default();
        let stamp = cache.stamp(1);
        cache.hashed(&stat(1, 3), "h", stamp);
        assert_eq!(cache.known_hash(&stat(1, 3)), known("h", true));
        assert_eq!(cache.known_hash(&stat(1, 4)), None, "another size");
        let touched = FileStat {
            mtime_ns: 2,
            ctime_ns: 2,
            ..stat(1, 3)
        };
        assert_eq!(cache.known_hash(&touched), known("h", false));
        cache.changed(2);
        assert_eq!(cache.known_hash(&stat(1, 3)), known("h", true));
        cache.changed(1);
        assert_eq!(cache.known_hash(&stat(1, 3)), None);
    }

    #[test]
    fn a_file_of_another_device_with_the_same_inode_number_is_hashed_anew() {
        let mut cache = HashCache::default();
        let stamp = cache.stamp(1);
        cache.hashed(&stat(1, 3), "h", stamp);
        let elsewhere = FileStat {
            dev: 2,
            ..stat(1, 3)
        };
        assert_eq!(cache.known_hash(&elsewhere), None);
    }

    #[test]
    fn a_hash_taken_across_a_change_is_not_kept() {
        let mut cache = HashCache::default();
        let stamp = cache.stamp(1);
        cache.changed(1);
        cache.hashed(&stat(1, 3), "stale", stamp);
        assert_eq!(cache.known_hash(&stat(1, 3)), None);
    }

    #[tokio::test]
    async fn one_budget_of_threads_is_shared_by_all_files() {
        let two = NonZeroUsize::new(2).unwrap();
        let budget = HashBudget::new(two);
        let big = budget.take(NonZeroUsize::new(8).unwrap()).await;
        assert_eq!(big.count(), two, "takes every free thread, no more");
        let waiting = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            budget.take(NonZeroUsize::MIN),
        );
        assert!(
            waiting.await.is_err(),
            "nothing left until it is given back"
        );
        drop(big);
        let small = budget.take(NonZeroUsize::MIN).await;
        assert_eq!(small.count().get(), 1);
        let other = budget.take(two).await;
        assert_eq!(other.count().get(), 1, "only one was free");
    }
}

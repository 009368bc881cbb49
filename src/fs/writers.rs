//! Which backing inodes are open for writing through the mount. A file is sent to the catalog only
//! once its last writer has closed it: the sync engine asks here before it sends, and the release
//! of the last writer reports the close while holding the same lock, so a look that found the
//! file open is always followed by the event of its close.

use parking_lot::Mutex;
use std::collections::HashMap;

/// A backing inode as `(st_dev, st_ino)`: inode numbers repeat across filesystems, and BACKING
/// may hold mounts of others.
pub type BackingInode = (u64, u64);

#[derive(Default)]
pub struct OpenWriters {
    /// Backing inode → handles open for writing.
    counts: Mutex<HashMap<BackingInode, usize>>,
}

impl OpenWriters {
    pub fn opened(&self, inode: BackingInode) {
        *self.counts.lock().entry(inode).or_default() += 1;
    }

    /// One writer of `inode` closed; `report(last)` runs under the lock (it must only queue an
    /// event), with `last` true when no writer is left.
    pub fn closed(&self, inode: BackingInode, report: impl FnOnce(bool)) {
        let mut counts = self.counts.lock();
        let last = match counts.get_mut(&inode) {
            Some(count) if *count > 1 => {
                *count -= 1;
                false
            }
            _ => {
                counts.remove(&inode);
                true
            }
        };
        report(last);
    }

    pub fn is_open(&self, inode: BackingInode) -> bool {
        self.counts.lock().contains_key(&inode)
    }

    /// Forgets every writer, as when the session that held them ended (a lazily detached mount
    /// can end with releases the kernel never delivered); answers the inodes they held.
    pub fn forget_all(&self) -> Vec<BackingInode> {
        let mut counts = self.counts.lock();
        counts.drain().map(|(inode, _)| inode).collect()
    }

    /// How many files are open for writing.
    pub fn count(&self) -> usize {
        self.counts.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_close_is_reported_as_last() {
        let writers = OpenWriters::default();
        writers.opened((1, 7));
        writers.opened((1, 7));
        writers.opened((1, 8));
        assert_eq!(writers.count(), 2);
        let mut seen = Vec::new();
        writers.closed((1, 7), |last| seen.push(last));
        assert!(writers.is_open((1, 7)));
        writers.closed((1, 7), |last| seen.push(last));
        assert!(!writers.is_open((1, 7)) && writers.is_open((1, 8)));
        assert_eq!(seen, [false, true]);
    }

    /// The same inode number on another filesystem (a mount inside BACKING) is another file.
    #[test]
    fn a_writer_holds_only_its_own_filesystems_inode() {
        let writers = OpenWriters::default();
        writers.opened((1, 7));
        assert!(writers.is_open((1, 7)) && !writers.is_open((2, 7)));
    }
}

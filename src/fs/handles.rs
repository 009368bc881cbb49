//! Open file and directory handles, and the rule that decides whether a handle changed content.

use super::backing::BackingId;
use super::sys::Stat;
use super::writers::BackingInode;
use fuser::Errno;
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Handles by number, numbers never reused within a mount.
#[derive(Debug)]
pub struct HandleMap<T> {
    handles: RwLock<HashMap<u64, Arc<T>>>,
    next: AtomicU64,
}

impl<T> Default for HandleMap<T> {
    fn default() -> Self {
        HandleMap {
            handles: RwLock::default(),
            next: AtomicU64::new(1),
        }
    }
}

impl<T> HandleMap<T> {
    pub fn insert(&self, handle: T) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        self.handles.write().insert(fh, Arc::new(handle));
        fh
    }

    pub fn get(&self, fh: u64) -> Result<Arc<T>, Errno> {
        self.handles.read().get(&fh).cloned().ok_or(Errno::EBADF)
    }

    /// `f` of every handle that gives a value.
    pub fn filter_map<R>(&self, f: impl Fn(&T) -> Option<R>) -> Vec<R> {
        self.handles.read().values().filter_map(|h| f(h)).collect()
    }

    pub fn remove(&self, fh: u64) -> Result<Arc<T>, Errno> {
        self.handles.write().remove(&fh).ok_or(Errno::EBADF)
    }
}

/// What a content change looks like from outside: with kernel passthrough the daemon never sees
/// writes, so it compares the backing file's size, mtime and ctime instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    size: i64,
    mtime: (i64, u64),
    ctime: (i64, u64),
}

impl Fingerprint {
    pub fn of(st: &Stat) -> Fingerprint {
        Fingerprint {
            size: st.st_size,
            mtime: (st.st_mtime, st.st_mtime_nsec),
            ctime: (st.st_ctime, st.st_ctime_nsec),
        }
    }
}

/// Tracks one writable handle's dirty period.
#[derive(Debug)]
pub struct ChangeTracker {
    /// The file as of open or the last reported change.
    baseline: Fingerprint,
    /// The handle changed content through the daemon (write, fallocate, copy_file_range into it,
    /// O_TRUNC), which we know without comparing.
    changed: bool,
}

impl ChangeTracker {
    pub fn new(baseline: Fingerprint, changed: bool) -> ChangeTracker {
        ChangeTracker { baseline, changed }
    }

    pub fn mark_changed(&mut self) {
        self.changed = true;
    }

    /// Ends the dirty period at `now`; true if it changed anything (report it once).
    pub fn settle(&mut self, now: Fingerprint) -> bool {
        let changed = self.changed || now != self.baseline;
        self.baseline = now;
        self.changed = false;
        changed
    }
}

#[derive(Debug)]
pub struct OpenFile {
    pub ino: u64,
    /// The backing file's inode, under which the writers of the file are counted.
    pub backing_inode: BackingInode,
    /// The backing file opened with the caller's flags: daemon I/O, fsync, fallocate, lseek,
    /// copy_file_range and the fstat for change detection.
    pub fd: OwnedFd,
    /// Keeps the kernel passthrough registration alive while this handle is open.
    pub _backing_id: Option<Arc<BackingId>>,
    /// `Some` for handles opened for writing.
    pub tracker: Option<Mutex<ChangeTracker>>,
}

impl OpenFile {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    pub fn mark_changed(&self) {
        if let Some(tracker) = &self.tracker {
            tracker.lock().mark_changed();
        }
    }
}

#[derive(Debug)]
pub struct OpenDir {
    pub ino: u64,
    pub fd: OwnedFd,
    /// Serializes seek + getdents on the shared fd position.
    pub position: Mutex<()>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fingerprint(size: i64, mtime: i64) -> Fingerprint {
        Fingerprint {
            size,
            mtime: (mtime, 0),
            ctime: (mtime, 0),
        }
    }

    #[test]
    fn one_report_per_dirty_period() {
        let mut tracker = ChangeTracker::new(fingerprint(0, 1), false);
        assert!(!tracker.settle(fingerprint(0, 1)), "no write, no change");
        assert!(
            tracker.settle(fingerprint(5, 2)),
            "passthrough write seen by fstat"
        );
        assert!(!tracker.settle(fingerprint(5, 2)), "release after flush");
        tracker.mark_changed();
        assert!(
            tracker.settle(fingerprint(5, 2)),
            "daemon write at same times"
        );
    }
}

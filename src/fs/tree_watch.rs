//! Changes to the backing tree made outside the mount, seen through inotify, so that the
//! containment check of the inode table (`InodeTable::get`) need not walk an inode's whole path
//! on every request.
//!
//! An inode can only leave the backing tree by a rename or an unlink of a name in a directory
//! the table knows: one of its own names, or the name of one of its ancestors, all of which
//! are in the table. Every such directory is watched for `IN_MOVED_FROM`, `IN_MOVED_TO` and
//! `IN_DELETE`; the kernel queues those events before the rename or unlink returns. Any event at
//! all (those, an overflow, a watch dropped) starts a new epoch; for directories, any but an
//! unlink's (a directory has one name, and rmdir takes only an empty one). An inode found
//! inside the tree by the full check in one epoch is trusted, without a new check, while the
//! epoch lasts; creates, writes and attribute changes do not end it.
//!
//! Renames and unlinks through the mount end the epoch too (each costs one full check per inode
//! used afterwards, as every request cost before; after an unlink, per file only). Inotify sees
//! only changes made on this machine, so the watch is used only when the backing root is on a
//! local filesystem; inodes reached through another mount below the root are always checked in
//! full. So are inodes below a directory left unwatched because we already use our share (an
//! eighth) of the user's inotify watches, which file managers and editors need too.

use super::sys;
use crate::log_limit::LogLimit;
use parking_lot::Mutex;
use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
use rustix::io::Errno;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Filesystems whose every change is made through this kernel, so inotify sees it all.
const LOCAL_FILESYSTEMS: [libc::c_long; 5] = [
    0xEF53,      // ext2/3/4
    0x5846_5342, // xfs
    0x9123_683E, // btrfs
    0x0102_1994, // tmpfs
    0xF2F5_2010, // f2fs
];

/// The watches we take when the user's limit cannot be read (an eighth of the kernel's
/// smallest default, 8,192).
const WATCHES_IF_LIMIT_UNKNOWN: usize = 1024;

const WATCHED: WatchFlags = WatchFlags::MOVED_FROM
    .union(WatchFlags::MOVED_TO)
    .union(WatchFlags::DELETE)
    .union(WatchFlags::ONLYDIR);

#[derive(Debug)]
pub struct TreeWatch {
    inotify: OwnedFd,
    /// Epoch counters, each ending (going up by one) when events of its kind were read: `moves`
    /// for any event but an unlink's, `changes` for any event. Both start at 1: 0 means "never
    /// checked".
    moves: AtomicU64,
    changes: AtomicU64,
    /// Held while events are read and the epoch ended, so that a thread that finds no event
    /// to read also finds the epoch another thread ended for the events it read.
    reading: Mutex<()>,
    /// Cleared for good if events cannot be read: from then on every check is a full one.
    usable: AtomicBool,
    /// Directories watched now, and how many may be: inotify watches are a per-user budget
    /// that file managers and editors need too.
    watches: AtomicUsize,
    max_watches: usize,
}

impl TreeWatch {
    /// A watch of the tree at `root` and the root's watch descriptor, if its filesystem is
    /// local and inotify is available.
    pub fn new(root: BorrowedFd<'_>) -> Option<(TreeWatch, i32)> {
        let fs_type = sys::statfs(root).ok()?.f_type;
        if !LOCAL_FILESYSTEMS.contains(&fs_type) {
            tracing::info!(
                fs_type = format_args!("{fs_type:#x}"),
                "backing filesystem not known to be local: every request checks its inode's whole path"
            );
            return None;
        }
        let inotify = match inotify::init(CreateFlags::NONBLOCK | CreateFlags::CLOEXEC) {
            Ok(inotify) => inotify,
            Err(error) => {
                tracing::warn!(%error, "no inotify: every request checks its inode's whole path");
                return None;
            }
        };
        let watch = TreeWatch {
            inotify,
            moves: AtomicU64::new(1),
            changes: AtomicU64::new(1),
            reading: Mutex::new(()),
            usable: AtomicBool::new(true),
            watches: AtomicUsize::new(0),
            max_watches: std::fs::read_to_string("/proc/sys/fs/inotify/max_user_watches")
                .ok()
                .and_then(|limit| limit.trim().parse::<usize>().ok())
                .map_or(WATCHES_IF_LIMIT_UNKNOWN, |limit| limit / 8),
        };
        let root_wd = watch.watch(root)?;
        Some((watch, root_wd))
    }

    /// Watches the directory open at `dir`; its watch descriptor. `None` past our share of the
    /// user's watches or on failure: then everything below `dir` is checked in full.
    pub fn watch(&self, dir: BorrowedFd<'_>) -> Option<i32> {
        if self.watches.fetch_add(1, Ordering::AcqRel) >= self.max_watches {
            self.watches.fetch_sub(1, Ordering::AcqRel);
            static AT_LIMIT: LogLimit = LogLimit::new(1, Duration::from_secs(3600));
            if AT_LIMIT.allow().is_some() {
                tracing::info!(
                    max_watches = self.max_watches,
                    "more backing directories in use than we watch: inodes below the others \
                     are checked in full on each request"
                );
            }
            return None;
        }
        let path = sys::proc_fd_path(dir);
        match inotify::add_watch(&self.inotify, path.as_c_str(), WATCHED) {
            Ok(wd) => Some(wd),
            Err(error) => {
                self.watches.fetch_sub(1, Ordering::AcqRel);
                tracing::debug!(%error, "directory not watched");
                None
            }
        }
    }

    /// Stops watching a directory the table let go of (its `IN_IGNORED` ends an epoch, which
    /// costs a full check per inode and nothing else).
    pub fn unwatch(&self, wd: i32) {
        // A watch descriptor already gone only gives EINVAL.
        let _ = inotify::remove_watch(&self.inotify, wd);
        self.watches.fetch_sub(1, Ordering::AcqRel);
    }

    /// The current epoch for an inode of this kind (`is_dir`), after reading every event
    /// queued so far; `None` when the watch is no longer usable. A directory's ends only with a
    /// move (or an overflow, a dropped watch): an unlink takes out only the name's own inode,
    /// which for a directory has no other name (and nothing below it) to be reached by.
    pub fn epoch(&self, is_dir: bool) -> Option<u64> {
        if !self.usable.load(Ordering::Acquire) {
            return None;
        }
        let _reading = self.reading.lock();
        // Room for at least one event with the longest name.
        let mut events = [0u8; 4096];
        let (mut moved, mut changed) = (false, false);
        loop {
            match rustix::io::read(&self.inotify, &mut events[..]) {
                Ok(0) | Err(Errno::AGAIN) => break,
                Ok(n) => {
                    changed = true;
                    moved |= event_masks(&events[..n]).any(|mask| mask & libc::IN_DELETE == 0);
                }
                Err(Errno::INTR) => continue,
                Err(error) => {
                    tracing::warn!(
                        %error,
                        "inotify read failed: every request checks its inode's whole path"
                    );
                    self.usable.store(false, Ordering::Release);
                    return None;
                }
            }
        }
        if moved {
            self.moves.fetch_add(1, Ordering::AcqRel);
        }
        if changed {
            self.changes.fetch_add(1, Ordering::AcqRel);
        }
        let epoch = if is_dir { &self.moves } else { &self.changes };
        Some(epoch.load(Ordering::Acquire))
    }
}

/// The masks of the inotify events in `events` (whole events, as one read returns them).
fn event_masks(events: &[u8]) -> impl Iterator<Item = u32> + '_ {
    const HEADER: usize = size_of::<libc::inotify_event>();
    let mut offset = 0;
    std::iter::from_fn(move || {
        let header = events.get(offset..offset + HEADER)?;
        let field = |at: usize| u32::from_ne_bytes(header[at..at + 4].try_into().expect("4 bytes"));
        // wd, mask, cookie, len: the name's length follows the header.
        offset += HEADER + field(12) as usize;
        Some(field(4))
    })
}

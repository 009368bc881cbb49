//! The inode table: FUSE inode number → backing inode (an `O_PATH` fd, its `(dev, ino)`, the
//! kernel's lookup count) and the names it is known by, from which event paths are built and
//! evicted descriptors are reopened.
//!
//! FUSE inode numbers are the backing `st_ino`, so `stat` through the mount shows the backing
//! numbers and hard links share one entry. The backing root is FUSE_ROOT_ID (1); a backing file
//! whose `st_ino` is 1 takes the root's real number instead. Inodes of other filesystems mounted
//! below the backing root get numbers from a private range.
//!
//! The kernel may remember far more inodes than the process may hold descriptors (a `cp -r` of
//! a large tree), so the table holds at most `fd_budget` of them. Past that it closes the least
//! recently used (a clock sweep) and reopens one on its next use from its parent's descriptor
//! and a known name, checking that the name still leads to the same `(dev, ino)`.
//!
//! A held descriptor keeps pointing at its inode wherever it moves. Something outside the mount
//! can move a directory out of BACKING; so each use checks that the inode is still reachable
//! from the root under one of its names (`still_beneath`) before the daemon acts on it, unless
//! nothing that could have taken it out has happened since it was last found there
//! (`TreeWatch`).

use super::backing::BackingId;
use super::sys;
use super::tree_watch::TreeWatch;
use crate::log_limit::LogLimit;
use fuser::Errno;
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::ops::Deref;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

pub const ROOT_INO: u64 = 1;

/// Numbers handed to inodes of other devices start here (above any ext4/xfs/btrfs st_ino seen).
const FOREIGN_INO_BASE: u64 = 1 << 62;

/// The fewest descriptors the table keeps, whatever the process limit.
const MIN_FD_BUDGET: usize = 64;

/// A backing inode the kernel holds a reference to.
#[derive(Debug)]
pub struct InodeData {
    /// `O_PATH | O_NOFOLLOW`, while held: pins the backing inode and anchors every `*at` call.
    fd: Mutex<Option<Arc<OwnedFd>>>,
    /// Set on each use, cleared by the eviction sweep (second chance).
    recently_used: AtomicBool,
    /// `(st_dev, st_ino)` of the backing inode: a reopened name must lead here.
    backing: (u64, u64),
    /// `S_IFMT` bits.
    pub file_type: libc::mode_t,
    /// The kernel passthrough registration shared by all open handles of this inode (the kernel
    /// refuses two different backing files for one inode). Handles hold it strongly.
    pub backing_id: Mutex<Weak<BackingId>>,
    /// This directory's inotify watch (`TreeWatch`), if it has one.
    watch: Option<i32>,
    /// Every directory holding one of its names is watched, so the epoch of `TreeWatch` ends
    /// when any of them changes.
    names_watched: AtomicBool,
    /// The `TreeWatch` epoch in which the full check last found it inside (0: never).
    found_inside_in: AtomicU64,
}

impl InodeData {
    fn new(fd: OwnedFd, st: &sys::Stat, watch: Option<i32>, names_watched: bool) -> InodeData {
        InodeData {
            fd: Mutex::new(Some(Arc::new(fd))),
            recently_used: AtomicBool::new(true),
            backing: (st.st_dev, st.st_ino),
            file_type: st.st_mode & libc::S_IFMT,
            backing_id: Mutex::new(Weak::new()),
            watch,
            names_watched: AtomicBool::new(names_watched),
            found_inside_in: AtomicU64::new(0),
        }
    }

    /// Whether `st` describes this backing inode.
    fn is(&self, st: &sys::Stat) -> bool {
        (st.st_dev, st.st_ino) == self.backing
    }

    pub fn is_regular(&self) -> bool {
        self.file_type == libc::S_IFREG
    }
}

/// An inode with its descriptor held open for as long as this value lives.
#[derive(Debug)]
pub struct Inode {
    data: Arc<InodeData>,
    fd: Arc<OwnedFd>,
}

impl Inode {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Deref for Inode {
    type Target = InodeData;

    fn deref(&self) -> &InodeData {
        &self.data
    }
}

/// A directory entry name: (parent FUSE inode, name).
type Name = (u64, OsString);

#[derive(Debug)]
struct Slot {
    inode: Arc<InodeData>,
    /// The kernel's lookup count (lookup, create, mknod, mkdir, symlink, link, readdirplus).
    lookups: u64,
    /// Names known for this inode (several with hard links); the first builds event paths.
    names: Vec<Name>,
    /// How many names of other slots have this slot as parent: a directory stays in the table
    /// while something below it does, so paths can always be rebuilt.
    child_names: u64,
}

#[derive(Debug, Default)]
struct Slots {
    by_ino: HashMap<u64, Slot>,
    /// (dev, st_ino) → number, for inodes not on the backing root's device.
    foreign: HashMap<(u64, u64), u64>,
    next_foreign: u64,
    /// Descriptors held by the slots' inodes.
    held_fds: AtomicUsize,
}

impl Slots {
    /// Whether the directory `ino` has an inotify watch (`TreeWatch`).
    fn is_watched(&self, ino: u64) -> bool {
        self.by_ino
            .get(&ino)
            .is_some_and(|slot| slot.inode.watch.is_some())
    }

    /// Closes `inode`'s held descriptor, if any (a handle using it keeps it open until done).
    fn close_fd(&self, inode: &InodeData) {
        if inode.fd.lock().take().is_some() {
            self.held_fds.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[derive(Debug)]
pub struct InodeTable {
    slots: RwLock<Slots>,
    /// Held (write) by a rename through the mount from the backing rename until the names here
    /// follow it, so that the slow check of `still_beneath` never sees them half-way.
    renaming: RwLock<()>,
    root_dev: u64,
    root_backing_ino: u64,
    fd_budget: usize,
    /// Changes outside the mount that could take inodes out of the tree (none on a filesystem
    /// inotify cannot see whole).
    tree_watch: Option<TreeWatch>,
}

impl InodeTable {
    /// A table rooted at `root_fd` that holds at most `fd_budget` descriptors (the root's is
    /// never closed).
    pub fn new(root_fd: OwnedFd, root: &sys::Stat, fd_budget: usize) -> InodeTable {
        let (tree_watch, root_watch) = match TreeWatch::new(root_fd.as_fd()) {
            Some((watch, root_wd)) => (Some(watch), Some(root_wd)),
            None => (None, None),
        };
        let mut slots = Slots {
            next_foreign: FOREIGN_INO_BASE,
            held_fds: AtomicUsize::new(1),
            ..Slots::default()
        };
        slots.by_ino.insert(
            ROOT_INO,
            Slot {
                inode: Arc::new(InodeData::new(root_fd, root, root_watch, true)),
                lookups: 1,
                names: Vec::new(),
                child_names: 0,
            },
        );
        InodeTable {
            slots: RwLock::new(slots),
            renaming: RwLock::new(()),
            root_dev: root.st_dev,
            root_backing_ino: root.st_ino,
            fd_budget: fd_budget.max(MIN_FD_BUDGET),
            tree_watch,
        }
    }

    /// The FUSE number of a backing inode on the root's device (the only ones readdir reports
    /// without a stat; others are corrected on lookup).
    pub fn fuse_ino_on_root_dev(&self, st_ino: u64) -> u64 {
        if st_ino == self.root_backing_ino {
            ROOT_INO
        } else if st_ino == ROOT_INO {
            self.root_backing_ino
        } else {
            st_ino
        }
    }

    /// The FUSE number of the backing inode `st`, if it has one.
    pub fn known_ino(&self, st: &sys::Stat) -> Option<u64> {
        if st.st_dev == self.root_dev {
            return Some(self.fuse_ino_on_root_dev(st.st_ino));
        }
        let slots = self.slots.read();
        slots.foreign.get(&(st.st_dev, st.st_ino)).copied()
    }

    /// The inode `ino` with its descriptor, reopened if it was evicted. ESTALE if it is no
    /// longer inside the backing tree.
    pub fn get(&self, ino: u64) -> Result<Inode, Errno> {
        self.get_checked(ino, false)
    }

    /// `get`; `renames_held`: the caller holds `renaming` for reading already.
    fn get_checked(&self, ino: u64, renames_held: bool) -> Result<Inode, Errno> {
        let data = {
            let slots = self.slots.read();
            let slot = slots.by_ino.get(&ino).ok_or(Errno::ESTALE)?;
            slot.inode.clone()
        };
        data.recently_used.store(true, Ordering::Relaxed);
        let held = data.fd.lock().clone();
        match held {
            Some(fd) => {
                let inode = Inode { data, fd };
                if ino != ROOT_INO && !self.inside(ino, &inode, renames_held) {
                    // Each request on such an inode is refused again: a client retrying, or
                    // a tree moved away under a busy client, would flood the log.
                    static MOVED_OUT: LogLimit = LogLimit::new(10, Duration::from_secs(60));
                    if let Some(left_out) = MOVED_OUT.allow() {
                        tracing::warn!(
                            ino,
                            similar_left_out = left_out,
                            "inode moved out of the backing folder; refused"
                        );
                    }
                    return Err(Errno::ESTALE);
                }
                Ok(inode)
            }
            // Reopened through a parent that was checked, so inside the tree too.
            None => self.reopen(ino, data, renames_held),
        }
    }

    /// Lets a rename through the mount keep the checks of `get` waiting while the backing
    /// tree and the names here disagree.
    pub fn rename_guard(&self) -> parking_lot::RwLockWriteGuard<'_, ()> {
        self.renaming.write()
    }

    /// Whether `inode` is still inside the tree: without a check while nothing happened since
    /// the last check that found it there could have taken it out (see `TreeWatch`).
    fn inside(&self, ino: u64, inode: &Inode, renames_held: bool) -> bool {
        let epoch = self
            .tree_watch
            .as_ref()
            .filter(|_| inode.names_watched.load(Ordering::Acquire))
            .and_then(|watch| watch.epoch(inode.file_type == libc::S_IFDIR));
        if epoch.is_some_and(|epoch| inode.found_inside_in.load(Ordering::Acquire) == epoch) {
            return true;
        }
        let inside = self.still_beneath(ino, inode, renames_held);
        if let Some(epoch) = epoch.filter(|_| inside) {
            inode.found_inside_in.store(epoch, Ordering::Release);
        }
        inside
    }

    /// Whether `inode` can still be reached from the root by one of its names (always true for
    /// an unlinked one, which no name reaches and no path outside the tree reaches either).
    fn still_beneath(&self, ino: u64, inode: &Inode, renames_held: bool) -> bool {
        // The common case in three syscalls: the kernel resolves the whole path without
        // leaving the root or following a symlink.
        if let Some(path) = self.path_of(ino) {
            let root = self.get_root();
            let found = CString::new(path.into_os_string().into_vec())
                .ok()
                .and_then(|path| sys::open_beneath(root.fd(), &path, libc::O_PATH).ok())
                .and_then(|fd| sys::stat_fd(fd.as_fd()).ok());
            if found.is_some_and(|st| inode.is(&st)) {
                return true;
            }
        }
        // Otherwise (a rename in flight, a path longer than PATH_MAX, really gone): with no
        // rename through the mount half-done, a name whose directory is still inside and that
        // still leads here.
        let _settled = (!renames_held).then(|| self.renaming.read());
        let unlinked = {
            let slots = self.slots.read();
            match slots.by_ino.get(&ino) {
                Some(slot) => slot.names.is_empty(),
                None => return false,
            }
        };
        unlinked || self.open_by_names(ino, inode, true).is_some()
    }

    fn get_root(&self) -> Inode {
        let slots = self.slots.read();
        let data = slots.by_ino[&ROOT_INO].inode.clone();
        let fd = data.fd.lock().clone();
        Inode {
            data,
            fd: fd.expect("the root's descriptor is never closed"),
        }
    }

    /// Opens an evicted inode again through one of its names.
    fn reopen(&self, ino: u64, data: Arc<InodeData>, renames_held: bool) -> Result<Inode, Errno> {
        if let Some(fd) = self.open_by_names(ino, &data, renames_held) {
            return Ok(Inode { data, fd });
        }
        if renames_held {
            return Err(Errno::ESTALE);
        }
        // A rename through the mount may have been half-done: try again once none is.
        let _settled = self.renaming.read();
        let fd = self.open_by_names(ino, &data, true).ok_or(Errno::ESTALE)?;
        Ok(Inode { data, fd })
    }

    fn open_by_names(
        &self,
        ino: u64,
        data: &InodeData,
        renames_held: bool,
    ) -> Option<Arc<OwnedFd>> {
        let names = {
            let slots = self.slots.read();
            slots.by_ino.get(&ino)?.names.clone()
        };
        names.into_iter().find_map(|(parent, name)| {
            let dir = self.get_checked(parent, renames_held).ok()?;
            let c_name = CString::new(name.into_vec()).ok()?;
            let fd = sys::open_path(dir.fd(), &c_name).ok()?;
            let st = sys::stat_fd(fd.as_fd()).ok()?;
            data.is(&st).then(|| self.hold(data, fd))
        })
    }

    /// Makes `fd` the inode's held descriptor (unless another thread got there first).
    fn hold(&self, data: &InodeData, fd: OwnedFd) -> Arc<OwnedFd> {
        let mut held = data.fd.lock();
        if let Some(existing) = held.as_ref() {
            return existing.clone();
        }
        let fd = Arc::new(fd);
        *held = Some(fd.clone());
        drop(held);
        self.count_held(&self.slots.read());
        fd
    }

    /// Counts one more held descriptor, evicting some if that goes over the budget.
    fn count_held(&self, slots: &Slots) {
        if slots.held_fds.fetch_add(1, Ordering::Relaxed) + 1 > self.fd_budget {
            self.evict(slots);
        }
    }

    /// Closes descriptors not used since the last sweep until a quarter of the budget is free.
    /// The root's and those of unlinked inodes (which have no name to reopen by) stay.
    fn evict(&self, slots: &Slots) {
        let target = self.fd_budget - self.fd_budget / 4;
        for _sweep in 0..2 {
            for (&ino, slot) in &slots.by_ino {
                if slots.held_fds.load(Ordering::Relaxed) <= target {
                    return;
                }
                if ino == ROOT_INO
                    || slot.names.is_empty()
                    || slot.inode.recently_used.swap(false, Ordering::Relaxed)
                {
                    continue;
                }
                slots.close_fd(&slot.inode);
            }
        }
    }

    /// Counts one more kernel reference to `st` found as `name` in `parent`, if the inode is
    /// already known; returns its FUSE number. Otherwise `None`: the caller opens an `O_PATH`
    /// fd and calls `insert`.
    pub fn reference_existing(&self, st: &sys::Stat, parent: u64, name: &OsStr) -> Option<u64> {
        let mut slots = self.slots.write();
        let ino = self.number_locked(&mut slots, st, false)?;
        slots.by_ino.get_mut(&ino)?.lookups += 1;
        add_name(&mut slots, ino, parent, name);
        Some(ino)
    }

    /// Counts one more kernel reference to the inode `st` (whose `O_PATH` fd is `fd`), found as
    /// `name` in `parent`; returns its FUSE number.
    pub fn insert(&self, fd: OwnedFd, st: &sys::Stat, parent: u64, name: &OsStr) -> u64 {
        let mut slots = self.slots.write();
        let ino = self
            .number_locked(&mut slots, st, true)
            .expect("numbers are allocated on insert");
        let fd_added = if let Some(slot) = slots.by_ino.get_mut(&ino) {
            // Another thread inserted it meanwhile; our fd is surplus unless the slot's was
            // evicted.
            slot.lookups += 1;
            let mut held = slot.inode.fd.lock();
            let evicted = held.is_none();
            if evicted {
                *held = Some(Arc::new(fd));
            }
            evicted
        } else {
            // A name in a watched directory; a directory is watched in turn if it is on the
            // root's filesystem (inotify may not see all of another one).
            let names_watched = slots.is_watched(parent);
            let watch = match &self.tree_watch {
                Some(tree)
                    if names_watched
                        && st.st_dev == self.root_dev
                        && st.st_mode & libc::S_IFMT == libc::S_IFDIR =>
                {
                    tree.watch(fd.as_fd())
                }
                _ => None,
            };
            let inode = Arc::new(InodeData::new(fd, st, watch, names_watched));
            slots.by_ino.insert(
                ino,
                Slot {
                    inode,
                    lookups: 1,
                    names: Vec::new(),
                    child_names: 0,
                },
            );
            true
        };
        add_name(&mut slots, ino, parent, name);
        if fd_added {
            self.count_held(&slots);
        }
        ino
    }

    fn number_locked(&self, slots: &mut Slots, st: &sys::Stat, allocate: bool) -> Option<u64> {
        if st.st_dev == self.root_dev {
            return Some(self.fuse_ino_on_root_dev(st.st_ino));
        }
        let key = (st.st_dev, st.st_ino);
        if let Some(&ino) = slots.foreign.get(&key) {
            return Some(ino);
        }
        if !allocate {
            return None;
        }
        let ino = slots.next_foreign;
        slots.next_foreign += 1;
        slots.foreign.insert(key, ino);
        Some(ino)
    }

    /// The kernel dropped `count` references (forget).
    pub fn forget(&self, ino: u64, count: u64) {
        if ino == ROOT_INO {
            return;
        }
        let mut slots = self.slots.write();
        if let Some(slot) = slots.by_ino.get_mut(&ino) {
            slot.lookups = slot.lookups.saturating_sub(count);
            release_if_unused(&mut slots, ino, self.tree_watch.as_ref());
        }
    }

    /// `name` in `parent` no longer refers to `ino` (unlink, rmdir, replaced by a rename).
    pub fn remove_name(&self, ino: u64, parent: u64, name: &OsStr) {
        let mut slots = self.slots.write();
        let Some(slot) = slots.by_ino.get_mut(&ino) else {
            return;
        };
        let before = slot.names.len();
        slot.names.retain(|(p, n)| !(*p == parent && n == name));
        if slot.names.len() != before {
            unpin(&mut slots, parent, self.tree_watch.as_ref());
        }
        release_if_unused(&mut slots, ino, self.tree_watch.as_ref());
    }

    /// `ino` moved from `from` to `to` (rename); its descendants' paths follow.
    pub fn rename_name(&self, ino: u64, from: (u64, &OsStr), to: (u64, &OsStr)) {
        let mut slots = self.slots.write();
        let Some(slot) = slots.by_ino.get_mut(&ino) else {
            return;
        };
        let before = slot.names.len();
        slot.names.retain(|(p, n)| !(*p == from.0 && n == from.1));
        if slot.names.len() != before {
            unpin(&mut slots, from.0, self.tree_watch.as_ref());
        }
        add_name(&mut slots, ino, to.0, to.1);
    }

    /// The current path of `ino` relative to the backing root, if all its ancestors are known.
    pub fn path_of(&self, ino: u64) -> Option<PathBuf> {
        let slots = self.slots.read();
        let mut components = Vec::new();
        let mut current = ino;
        while current != ROOT_INO {
            let (parent, name) = slots.by_ino.get(&current)?.names.first()?;
            components.push(name.as_os_str());
            current = *parent;
            // A cycle could only come from a corrupted table; stop rather than spin.
            if components.len() > 4096 {
                return None;
            }
        }
        Some(components.iter().rev().collect())
    }

    /// `path_of(ino)` and the backing inode's `st_ino`.
    pub fn path_and_backing_ino(&self, ino: u64) -> Option<(PathBuf, u64)> {
        let backing_ino = {
            let slots = self.slots.read();
            slots.by_ino.get(&ino)?.inode.backing.1
        };
        Some((self.path_of(ino)?, backing_ino))
    }

    /// The path of `name` inside directory `parent`.
    pub fn path_in(&self, parent: u64, name: &OsStr) -> Option<PathBuf> {
        self.path_of(parent).map(|dir| dir.join(name))
    }

    #[cfg(test)]
    fn lookups(&self, ino: u64) -> Option<u64> {
        let slots = self.slots.read();
        slots.by_ino.get(&ino).map(|slot| slot.lookups)
    }
}

fn add_name(slots: &mut Slots, ino: u64, parent: u64, name: &OsStr) {
    let parent_watched = slots.is_watched(parent);
    let Some(slot) = slots.by_ino.get_mut(&ino) else {
        return;
    };
    if !parent_watched {
        slot.inode.names_watched.store(false, Ordering::Release);
    }
    if slot.names.iter().any(|(p, n)| *p == parent && n == name) {
        return;
    }
    slot.names.push((parent, name.to_owned()));
    if let Some(parent_slot) = slots.by_ino.get_mut(&parent) {
        parent_slot.child_names += 1;
    }
}

fn unpin(slots: &mut Slots, parent: u64, tree_watch: Option<&TreeWatch>) {
    if let Some(slot) = slots.by_ino.get_mut(&parent) {
        slot.child_names = slot.child_names.saturating_sub(1);
        release_if_unused(slots, parent, tree_watch);
    }
}

/// Drops a slot nobody refers to any more, and then what only it kept alive.
fn release_if_unused(slots: &mut Slots, ino: u64, tree_watch: Option<&TreeWatch>) {
    let mut pending = vec![ino];
    while let Some(ino) = pending.pop() {
        if ino == ROOT_INO {
            continue;
        }
        let unused = slots
            .by_ino
            .get(&ino)
            .is_some_and(|slot| slot.lookups == 0 && slot.child_names == 0);
        if !unused {
            continue;
        }
        let slot = slots.by_ino.remove(&ino).expect("checked above");
        slots.close_fd(&slot.inode);
        if let (Some(tree), Some(wd)) = (tree_watch, slot.inode.watch) {
            tree.unwatch(wd);
        }
        slots.foreign.retain(|_, &mut number| number != ino);
        for (parent, _) in slot.names {
            if let Some(parent_slot) = slots.by_ino.get_mut(&parent) {
                parent_slot.child_names = parent_slot.child_names.saturating_sub(1);
                pending.push(parent);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys;

    fn table_with_tree() -> (tempfile::TempDir, InodeTable) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/f"), b"x").unwrap();
        let root = sys::open_path(
            std::fs::File::open("/").unwrap().as_fd(),
            &std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes()).unwrap(),
        )
        .unwrap();
        let st = sys::stat_fd(root.as_fd()).unwrap();
        (dir, InodeTable::new(root, &st, 0))
    }

    fn look(table: &InodeTable, parent: u64, name: &str) -> u64 {
        let dir = table.get(parent).unwrap();
        let c = std::ffi::CString::new(name).unwrap();
        let fd = sys::open_path(dir.fd(), &c).unwrap();
        let st = sys::stat_fd(fd.as_fd()).unwrap();
        table
            .reference_existing(&st, parent, OsStr::new(name))
            .unwrap_or_else(|| table.insert(fd, &st, parent, OsStr::new(name)))
    }

    #[test]
    fn paths_follow_renames_and_parents_outlive_forgotten_children() {
        let (_dir, table) = table_with_tree();
        let d = look(&table, ROOT_INO, "d");
        let f = look(&table, d, "f");
        assert_eq!(table.path_of(f), Some(PathBuf::from("d/f")));
        table.rename_name(d, (ROOT_INO, OsStr::new("d")), (ROOT_INO, OsStr::new("e")));
        assert_eq!(table.path_of(f), Some(PathBuf::from("e/f")));
        // The kernel forgets the directory first: it must stay while f names it as parent.
        table.forget(d, 1);
        assert_eq!(table.path_of(f), Some(PathBuf::from("e/f")));
        assert_eq!(table.lookups(d), Some(0));
        table.forget(f, 1);
        assert_eq!(table.lookups(f), None);
        assert_eq!(
            table.lookups(d),
            None,
            "released once nothing below needs it"
        );
    }

    #[test]
    fn evicted_descriptors_are_reopened_by_name_and_only_for_the_same_inode() {
        let (dir, table) = table_with_tree();
        for i in 0..300 {
            std::fs::write(dir.path().join(format!("d/g{i}")), b"x").unwrap();
        }
        let d = look(&table, ROOT_INO, "d");
        let files: Vec<u64> = (0..300)
            .map(|i| look(&table, d, &format!("g{i}")))
            .collect();
        let held = table.slots.read().held_fds.load(Ordering::Relaxed);
        assert!(held <= MIN_FD_BUDGET, "{held} descriptors held");
        std::fs::rename(dir.path().join("d"), dir.path().join("e")).unwrap();
        table.rename_name(d, (ROOT_INO, OsStr::new("d")), (ROOT_INO, OsStr::new("e")));
        for (i, &ino) in files.iter().enumerate() {
            let st = sys::stat_fd(table.get(ino).unwrap().fd()).unwrap();
            assert_eq!(st.st_ino, ino, "g{i}");
        }
        // A name now leading to another inode does not stand for the evicted one. Using the
        // others (twice: a second chance each) evicts g0.
        let other = dir.path().join("other");
        std::fs::rename(dir.path().join("e/g0"), &other).unwrap();
        std::fs::write(dir.path().join("e/g0"), b"new").unwrap();
        for _ in 0..2 {
            for &ino in &files[1..] {
                table.get(ino).unwrap();
            }
        }
        assert_eq!(table.get(files[0]).map(|_| ()), Err(Errno::ESTALE));
    }

    #[test]
    fn lookup_counts_are_exact() {
        let (_dir, table) = table_with_tree();
        let d = look(&table, ROOT_INO, "d");
        assert_eq!(look(&table, ROOT_INO, "d"), d);
        assert_eq!(table.lookups(d), Some(2));
        table.forget(d, 1);
        assert_eq!(table.lookups(d), Some(1));
        table.forget(d, 1);
        assert_eq!(table.lookups(d), None);
    }

    /// The epoch a check of a directory (`is_dir`) or of a file is valid in.
    fn epoch(table: &InodeTable, is_dir: bool) -> u64 {
        let watch = table
            .tree_watch
            .as_ref()
            .expect("the tests' temporary folder is on a local filesystem, which is watched");
        watch.epoch(is_dir).expect("the watch is usable")
    }

    /// The epoch in which `ino` was last found inside, after a use.
    fn found_inside_in(table: &InodeTable, ino: u64) -> u64 {
        let inode = table.get(ino).unwrap();
        inode.found_inside_in.load(Ordering::Relaxed)
    }

    /// d and d/f of `table_with_tree`, each used once (so found inside).
    fn used_d_and_f(table: &InodeTable) -> (u64, u64) {
        let d = look(table, ROOT_INO, "d");
        let f = look(table, d, "f");
        table.get(f).unwrap();
        (d, f)
    }

    #[test]
    fn an_inode_found_inside_is_trusted_until_a_rename_or_unlink_in_a_watched_directory() {
        let (dir, table) = table_with_tree();
        let (d, f) = used_d_and_f(&table);
        let trusted_in = epoch(&table, false);
        assert_eq!(found_inside_in(&table, f), trusted_in);
        // Creates, writes, attribute changes and links take nothing out: the epoch lasts.
        std::fs::write(dir.path().join("d/new"), b"y").unwrap();
        std::fs::write(dir.path().join("d/f"), b"xyz").unwrap();
        std::fs::create_dir(dir.path().join("d/sub")).unwrap();
        std::fs::hard_link(dir.path().join("d/f"), dir.path().join("d/f2")).unwrap();
        std::fs::set_permissions(
            dir.path().join("d/f"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        assert_eq!(epoch(&table, false), trusted_in);
        // A rename or an unlink in any watched directory ends it, and the next use checks
        // again.
        std::fs::rename(dir.path().join("d/new"), dir.path().join("d/newer")).unwrap();
        let after_rename = epoch(&table, false);
        assert!(after_rename > trusted_in);
        table.get(d).unwrap();
        let dirs_epoch = epoch(&table, true);
        assert_eq!(found_inside_in(&table, d), dirs_epoch);
        // An unlink ends the files' epoch only: a directory has no other name to be reached by.
        std::fs::remove_file(dir.path().join("d/newer")).unwrap();
        assert!(epoch(&table, false) > after_rename);
        assert_eq!(epoch(&table, true), dirs_epoch);
        let again = epoch(&table, false);
        table.get(f).unwrap();
        assert_eq!(found_inside_in(&table, f), again);
    }

    #[test]
    fn a_trusted_inode_moved_out_with_an_ancestor_is_refused() {
        let (dir, table) = table_with_tree();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/f"), b"x").unwrap();
        let a = look(&table, ROOT_INO, "a");
        let b = look(&table, a, "b");
        let f = look(&table, b, "f");
        table.get(f).unwrap();
        assert_eq!(found_inside_in(&table, f), epoch(&table, false));
        let away = tempfile::tempdir().unwrap();
        std::fs::rename(dir.path().join("a"), away.path().join("a")).unwrap();
        for ino in [a, b, f] {
            assert_eq!(
                table.get(ino).map(|_| ()),
                Err(Errno::ESTALE),
                "inode {ino}"
            );
        }
    }

    #[test]
    fn a_trusted_file_whose_only_inside_name_is_removed_outside_is_refused() {
        let (dir, table) = table_with_tree();
        let (_, f) = used_d_and_f(&table);
        assert_eq!(found_inside_in(&table, f), epoch(&table, false));
        let away = tempfile::tempdir().unwrap();
        std::fs::hard_link(dir.path().join("d/f"), away.path().join("f")).unwrap();
        std::fs::remove_file(dir.path().join("d/f")).unwrap();
        assert_eq!(table.get(f).map(|_| ()), Err(Errno::ESTALE));
    }
}

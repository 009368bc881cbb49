//! `Passthrough`: the filesystem as plain Rust. Every operation works on the backing directory
//! through `O_PATH` descriptors and `*at` calls that never follow a symlink, returns the backing
//! call's result or errno, and reports catalog-relevant changes as `Event`s.

use super::backing::{BackingId, FuseDevice};
use super::handles::{ChangeTracker, Fingerprint, HandleMap, OpenDir, OpenFile};
use super::inodes::{Inode, InodeTable, ROOT_INO};
use super::sys::{self, TimeSpec, XattrValue};
use super::writers::OpenWriters;
use super::{
    Event, EventSink, MountStatus, StatusSource, Transport, HEAL_XATTR, RELEASE_DELETES_XATTR,
    STATUS_XATTR, VERIFY_FINDINGS_XATTR_PREFIX,
};
use fuser::{Errno, FileAttr, FileType, INodeNo};
use parking_lot::Mutex;
use std::ffi::{CString, OsStr};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

pub type Result<T> = std::result::Result<T, Errno>;

/// How many paths open for writing status lists.
const WRITING_LISTED: usize = 20;

/// How long the kernel may cache attributes, names and the absence of names. Every change to the
/// backing tree is expected to come through the mount, which updates or invalidates the kernel's
/// copy; a change made to BACKING directly may take this long to show through the mount.
pub const TTL: Duration = Duration::from_secs(10);

/// Who asked, for ownership of what they create on a shared (`allow_other`) mount.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// The attribute changes of one setattr call; `None` leaves that attribute alone.
#[derive(Clone, Copy, Debug, Default)]
pub struct AttrChanges {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeSpec>,
    pub mtime: Option<TimeSpec>,
}

/// A new file handle, and the kernel passthrough registration to answer with, if any.
#[derive(Debug)]
pub struct Opened {
    pub fh: u64,
    pub backing_id: Option<Arc<BackingId>>,
}

pub struct Passthrough {
    inodes: InodeTable,
    files: HandleMap<OpenFile>,
    dirs: HandleMap<OpenDir>,
    events: Arc<dyn EventSink>,
    status: Option<Arc<dyn StatusSource>>,
    /// Where to register backing files when file data goes to the kernel (FUSE passthrough):
    /// set once the kernel has agreed at INIT, cleared if it then refuses a registration.
    kernel_passthrough: Mutex<Option<Arc<FuseDevice>>>,
    daemon_is_root: bool,
    /// The mount's owner.
    daemon_uid: u32,
    /// Files open for writing, shared with the sync engine, which sends none of them until its
    /// last writer has closed it.
    writers: Arc<OpenWriters>,
    /// How requests reach us, for status.
    transport: Mutex<Transport>,
}

impl Passthrough {
    /// A passthrough of the directory `backing` (symlinks in `backing` itself are resolved once,
    /// here; nothing below it is ever followed).
    pub fn new(
        backing: &Path,
        events: Arc<dyn EventSink>,
        status: Option<Arc<dyn StatusSource>>,
        writers: Arc<OpenWriters>,
    ) -> io::Result<Passthrough> {
        let path = CString::new(backing.as_os_str().as_bytes())?;
        let root = sys::open_dir_path(&path).map_err(|e| io::Error::from_raw_os_error(e.code()))?;
        let st = sys::stat_fd(root.as_fd()).map_err(|e| io::Error::from_raw_os_error(e.code()))?;
        let daemon_uid = rustix::process::geteuid().as_raw();
        Ok(Passthrough {
            inodes: InodeTable::new(root, &st, sys::nofile_limit() / 2),
            files: HandleMap::default(),
            dirs: HandleMap::default(),
            events,
            status,
            kernel_passthrough: Mutex::new(None),
            daemon_is_root: daemon_uid == 0,
            daemon_uid,
            writers,
            transport: Mutex::new(Transport::DevFuse),
        })
    }

    /// The mount's owner (the daemon's effective uid): on a private mount only its requests are
    /// served.
    pub fn owner(&self) -> u32 {
        self.daemon_uid
    }

    /// Records how requests reach us (for status).
    pub fn set_transport(&self, transport: Transport) {
        *self.transport.lock() = transport;
    }

    /// Hands the data of files opened from now on to the kernel, registered on `device`
    /// (`None`: the daemon serves reads and writes).
    pub fn set_kernel_passthrough(&self, device: Option<Arc<FuseDevice>>) {
        *self.kernel_passthrough.lock() = device;
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<FileAttr> {
        let (dir, c_name) = self.entry(parent, name)?;
        self.lookup_in(parent, dir.fd(), name, &c_name)
    }

    pub fn forget(&self, ino: u64, count: u64) {
        self.inodes.forget(ino, count);
    }

    pub fn getattr(&self, ino: u64, fh: Option<u64>) -> Result<FileAttr> {
        let st = match fh.and_then(|fh| self.files.get(fh).ok()) {
            Some(handle) => sys::stat_fd(handle.fd())?,
            None => sys::stat_fd(self.inodes.get(ino)?.fd())?,
        };
        Ok(self.attr(ino, &st))
    }

    /// Applies mode, owner, size and times in that order (as passthrough_hp), through the
    /// handle's descriptor when the kernel names one.
    pub fn setattr(&self, ino: u64, fh: Option<u64>, changes: AttrChanges) -> Result<FileAttr> {
        let inode = self.inodes.get(ino)?;
        let handle = fh.and_then(|fh| self.files.get(fh).ok());
        let handle_fd = handle.as_ref().map(|h| h.fd());
        if let Some(mode) = changes.mode {
            match handle_fd {
                Some(fd) => sys::fchmod(fd, mode)?,
                None => sys::chmod_fd(inode.fd(), mode)?,
            }
        }
        if changes.uid.is_some() || changes.gid.is_some() {
            sys::chown_fd(inode.fd(), changes.uid, changes.gid)?;
        }
        if let Some(size) = changes.size {
            match handle_fd {
                Some(fd) => sys::ftruncate(fd, size)?,
                None => sys::truncate_fd(inode.fd(), size)?,
            }
        }
        if changes.atime.is_some() || changes.mtime.is_some() {
            sys::set_times(
                handle_fd.unwrap_or(inode.fd()),
                changes.atime,
                changes.mtime,
            )?;
        }
        let st = sys::stat_fd(inode.fd())?;
        if changes.size.is_some() {
            // Reported now; the handle that truncated starts a new dirty period so its close
            // does not report the same change again.
            if let Some(tracker) = handle.as_ref().and_then(|h| h.tracker.as_ref()) {
                tracker.lock().settle(Fingerprint::of(&st));
            }
            self.emit_for(ino, |path, ino| Event::ContentChanged { path, ino });
        } else if changes.atime.is_some() || changes.mtime.is_some() {
            self.emit_for(ino, |path, ino| Event::TimesSet { path, ino });
        }
        if changes.mode.is_some() || changes.uid.is_some() || changes.gid.is_some() {
            self.emit_for(ino, |path, _| Event::PermissionsChanged { path });
        }
        Ok(self.attr(ino, &st))
    }

    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        sys::readlink_fd(self.inodes.get(ino)?.fd())
    }

    pub fn mknod(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        rdev: u32,
    ) -> Result<FileAttr> {
        sys::clear_thread_umask();
        let (dir, c_name) = self.entry(parent, name)?;
        self.as_caller(caller, || {
            sys::mknodat(dir.fd(), &c_name, mode, u64::from(rdev))
        })?;
        self.created(parent, &dir, name, &c_name)
    }

    pub fn mkdir(&self, caller: Caller, parent: u64, name: &OsStr, mode: u32) -> Result<FileAttr> {
        sys::clear_thread_umask();
        let (dir, c_name) = self.entry(parent, name)?;
        self.as_caller(caller, || sys::mkdirat(dir.fd(), &c_name, mode))?;
        self.created(parent, &dir, name, &c_name)
    }

    pub fn symlink(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        target: &Path,
    ) -> Result<FileAttr> {
        let (dir, c_name) = self.entry(parent, name)?;
        let target = CString::new(target.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
        self.as_caller(caller, || sys::symlinkat(&target, dir.fd(), &c_name))?;
        self.created(parent, &dir, name, &c_name)
    }

    pub fn unlink(&self, parent: u64, name: &OsStr) -> Result<()> {
        self.remove(parent, name, false)
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr) -> Result<()> {
        self.remove(parent, name, true)
    }

    /// renameat2 with the caller's flags (RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT).
    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: u32,
    ) -> Result<()> {
        let (dir, c_name) = self.entry(parent, name)?;
        let (new_dir, c_new_name) = self.entry(new_parent, new_name)?;
        // What the names refer to before the rename, for the table and the event.
        let source = sys::stat_at(dir.fd(), &c_name, 0).ok();
        let target = sys::stat_at(new_dir.fd(), &c_new_name, 0).ok();
        let from = self.inodes.path_in(parent, name);
        let to = self.inodes.path_in(new_parent, new_name);
        let renaming = self.inodes.rename_guard();
        sys::renameat2(dir.fd(), &c_name, new_dir.fd(), &c_new_name, flags)?;

        let Some(source) = source else { return Ok(()) };
        let same_inode = target
            .as_ref()
            .is_some_and(|t| (t.st_dev, t.st_ino) == (source.st_dev, source.st_ino));
        if same_inode {
            // Renaming one hard link onto another of the same file does nothing.
            return Ok(());
        }
        let source_ino = self.inodes.known_ino(&source);
        let target_ino = target.as_ref().and_then(|t| self.inodes.known_ino(t));
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        if let Some(target_ino) = target_ino {
            if exchange {
                self.inodes
                    .rename_name(target_ino, (new_parent, new_name), (parent, name));
            } else {
                self.inodes.remove_name(target_ino, new_parent, new_name);
            }
        }
        if let Some(source_ino) = source_ino {
            self.inodes
                .rename_name(source_ino, (parent, name), (new_parent, new_name));
        }
        drop(renaming);
        if let (Some(from), Some(to)) = (from, to) {
            self.emit(if exchange {
                Event::Exchanged { a: from, b: to }
            } else {
                Event::Renamed {
                    from,
                    to,
                    is_dir: source.st_mode & libc::S_IFMT == libc::S_IFDIR,
                }
            });
        }
        Ok(())
    }

    pub fn link(&self, ino: u64, new_parent: u64, new_name: &OsStr) -> Result<FileAttr> {
        let inode = self.inodes.get(ino)?;
        let (dir, c_name) = self.entry(new_parent, new_name)?;
        sys::link_fd(inode.fd(), dir.fd(), &c_name)?;
        let st = sys::stat_fd(inode.fd())?;
        let attr = self.remember(new_parent, new_name, &st, Opener::SameInode(inode.fd()))?;
        self.emit_at(new_parent, new_name, |path| Event::Linked { path });
        Ok(attr)
    }

    pub fn open(&self, ino: u64, flags: i32) -> Result<Opened> {
        let inode = self.inodes.get(ino)?;
        let fd = sys::reopen(inode.fd(), daemon_open_flags(flags))?;
        let truncated = flags & libc::O_TRUNC != 0;
        self.open_handle(ino, &inode, fd, flags, None, truncated)
    }

    /// Creates and opens `name`. Creation is tried exclusively first so that opening a file that
    /// already exists (no O_EXCL) is not reported as created.
    pub fn create(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
    ) -> Result<(FileAttr, Opened)> {
        sys::clear_thread_umask();
        let (dir, c_name) = self.entry(parent, name)?;
        let open_flags = daemon_open_flags(flags) | libc::O_NOFOLLOW;
        // A file that this open creates is not checked against its mode, so a plain write-only
        // create opens it read-write at once: that descriptor can then be the kernel passthrough
        // backing file too, without a reopen through /proc (see `backing_id`). The kernel only
        // lets the caller write through its own write-only file.
        let (exclusive_flags, handle_flags) = if flags & SHARED_FLAGS == libc::O_WRONLY {
            let upgraded = (open_flags & !libc::O_ACCMODE) | libc::O_RDWR;
            (upgraded, (flags & !libc::O_ACCMODE) | libc::O_RDWR)
        } else {
            (open_flags, flags)
        };
        let exclusive = exclusive_flags | libc::O_CREAT | libc::O_EXCL;
        let created_fd = self.as_caller(caller, || sys::openat(dir.fd(), &c_name, exclusive, mode));
        let (fd, created, handle_flags) = match created_fd {
            Ok(fd) => (fd, true, handle_flags),
            Err(e) if e == Errno::EEXIST && flags & libc::O_EXCL == 0 => {
                let fd = sys::openat(dir.fd(), &c_name, open_flags & !libc::O_CREAT, 0)?;
                (fd, false, flags)
            }
            Err(e) => return Err(e),
        };
        let st = sys::stat_fd(fd.as_fd())?;
        let attr = self.remember(parent, name, &st, Opener::SameInode(fd.as_fd()))?;
        let ino = attr.ino.0;
        let truncated = !created && flags & libc::O_TRUNC != 0;
        // `st` is the handle's own fstat, taken after any truncation: its change baseline.
        let opened = self.inodes.get(ino).and_then(|inode| {
            self.open_handle(ino, &inode, fd, handle_flags, Some(&st), truncated)
        });
        match opened {
            Ok(opened) => {
                if created {
                    self.emit_at(parent, name, |path| Event::Created { path });
                }
                Ok((attr, opened))
            }
            Err(e) => {
                // The kernel never saw this entry, so it will not forget it.
                self.inodes.forget(ino, 1);
                Err(e)
            }
        }
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        sys::pread(self.files.get(fh)?.fd(), size as usize, offset)
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32> {
        let handle = self.files.get(fh)?;
        let written = sys::pwrite(handle.fd(), data, offset)?;
        handle.mark_changed();
        Ok(written as u32)
    }

    /// close(2) of a descriptor of the handle: reports a content change made since open or the
    /// last report.
    pub fn flush(&self, fh: u64) -> Result<()> {
        let handle = self.files.get(fh)?;
        if self.content_changed(&handle) {
            self.emit_for(handle.ino, |path, ino| Event::ContentChanged { path, ino });
        }
        Ok(())
    }

    /// The last writer's release is reported even without a change: a file created and closed
    /// untouched still needs its record, and the engine waited for this close.
    pub fn release(&self, fh: u64) -> Result<()> {
        let handle = self.files.remove(fh)?;
        let changed = self.content_changed(&handle);
        if handle.tracker.is_some() {
            self.writers.closed(handle.backing_inode, |last| {
                let named = if changed {
                    self.emit_for(handle.ino, |path, ino| Event::ContentChanged { path, ino })
                } else {
                    last && self.emit_for(handle.ino, |path, ino| Event::WriterClosed { path, ino })
                };
                if last && !named {
                    let (_, ino) = handle.backing_inode;
                    self.emit(Event::WriterGone { ino });
                }
            });
        }
        Ok(())
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> Result<()> {
        sys::fsync(self.files.get(fh)?.fd(), datasync)
    }

    pub fn opendir(&self, ino: u64) -> Result<u64> {
        let inode = self.inodes.get(ino)?;
        let fd = sys::openat(
            inode.fd(),
            c".",
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )?;
        Ok(self.dirs.insert(OpenDir {
            ino,
            fd,
            position: Default::default(),
        }))
    }

    /// Lists entries from `offset` (0 or an entry's `next_offset`) while `add` returns true.
    /// `add(ino, next_offset, kind, name)`; inode numbers as `stat` through the mount shows them.
    pub fn readdir(
        &self,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(u64, u64, FileType, &OsStr) -> bool,
    ) -> Result<()> {
        let dir = self.dirs.get(fh)?;
        let _position = dir.position.lock();
        let mut buf = vec![MaybeUninit::uninit(); DIR_BATCH];
        sys::read_dir_batch(dir.fd.as_fd(), offset as i64, &mut buf, |entry| {
            let kind = match dirent_type(entry.kind) {
                Some(kind) => kind,
                None => match stat_type(dir.fd.as_fd(), entry.name) {
                    Some(kind) => kind,
                    None => return true, // vanished meanwhile
                },
            };
            let ino = self.inodes.fuse_ino_on_root_dev(entry.ino);
            add(ino, entry.next_offset as u64, kind, entry.name)
        })
    }

    /// Like `readdir`, with attributes; every entry handed to `add` (other than `.` and `..`)
    /// counts as a lookup, unless `add` refuses it (returns false: the reply is full).
    pub fn readdirplus(
        &self,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(&OsStr, u64, &FileAttr) -> bool,
    ) -> Result<()> {
        let dir = self.dirs.get(fh)?;
        let _position = dir.position.lock();
        let mut buf = vec![MaybeUninit::uninit(); DIR_BATCH];
        // An entry that cannot be looked up for another reason than having vanished (EMFILE
        // when the descriptor limit is reached, ENOMEM) ends the batch; if it is the first, the
        // error is the answer. Skipping it would silently drop the name from the listing.
        let mut failed = None;
        let mut added = false;
        sys::read_dir_batch(dir.fd.as_fd(), offset as i64, &mut buf, |entry| {
            let next = entry.next_offset as u64;
            if entry.name == "." || entry.name == ".." {
                // The kernel takes only the inode number and type of these.
                let ino = self.inodes.fuse_ino_on_root_dev(entry.ino);
                let attr = bare_attr(ino, FileType::Directory);
                return add(entry.name, next, &attr);
            }
            let Ok(c_name) = sys::c_name(entry.name) else {
                return true;
            };
            let attr = match self.lookup_in(dir.ino, dir.fd.as_fd(), entry.name, &c_name) {
                Ok(attr) => attr,
                Err(Errno::ENOENT) => return true, // vanished meanwhile
                Err(e) => {
                    failed = Some(e);
                    return false;
                }
            };
            let accepted = add(entry.name, next, &attr);
            if accepted {
                added = true;
            } else {
                self.inodes.forget(attr.ino.0, 1);
            }
            accepted
        })?;
        match failed {
            Some(e) if !added => Err(e),
            _ => Ok(()),
        }
    }

    pub fn releasedir(&self, fh: u64) -> Result<()> {
        self.dirs.remove(fh).map(drop)
    }

    pub fn fsyncdir(&self, fh: u64, datasync: bool) -> Result<()> {
        sys::fsync(self.dirs.get(fh)?.fd.as_fd(), datasync)
    }

    pub fn statfs(&self, ino: u64) -> Result<rustix::fs::StatFs> {
        sys::statfs(self.inodes.get(ino)?.fd())
    }

    pub fn access(&self, ino: u64, mask: i32) -> Result<()> {
        sys::access_fd(self.inodes.get(ino)?.fd(), mask)
    }

    /// `size` 0 asks for the value's size (getxattr(2) semantics, ERANGE if too small).
    pub fn getxattr(
        &self,
        caller: Caller,
        ino: u64,
        name: &OsStr,
        size: u32,
    ) -> Result<XattrValue> {
        if is_status_xattr(ino, name) {
            // Status names paths anywhere in the tree, so on an allow_other mount it would show
            // others what lies in folders they may not enter: only the owner and root may ask.
            if caller.uid != self.daemon_uid && caller.uid != 0 {
                return Err(Errno::EACCES);
            }
            let status = self.status.as_ref().ok_or(Errno::NO_XATTR)?;
            let writing = self.paths_open_for_writing(WRITING_LISTED);
            let json = status.status_json(&MountStatus {
                open_for_writing: self.writers.count(),
                writing: &writing,
                transport: *self.transport.lock(),
            });
            return XattrValue::sized(json.into_bytes(), size);
        }
        if let Some(from) = verify_findings_page_asked(ino, name) {
            // Names synced paths: the owner and root only, as for status.
            if caller.uid != self.daemon_uid && caller.uid != 0 {
                return Err(Errno::EACCES);
            }
            let page = self
                .status
                .as_ref()
                .and_then(|status| status.verify_findings_page(from));
            return XattrValue::sized(page.ok_or(Errno::NO_XATTR)?.into_bytes(), size);
        }
        let name = sys::c_name(name)?;
        sys::get_xattr(self.inodes.get(ino)?.fd(), &name, size as usize)
    }

    pub fn setxattr(
        &self,
        caller: Caller,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
    ) -> Result<()> {
        if is_status_xattr(ino, name) {
            return Err(Errno::EPERM);
        }
        if ino == ROOT_INO && name == RELEASE_DELETES_XATTR {
            // Deletes records: the owner and root only.
            if caller.uid != self.daemon_uid && caller.uid != 0 {
                return Err(Errno::EACCES);
            }
            let status = self.status.as_ref().ok_or(Errno::EPERM)?;
            status.release_held_deletes();
            return Ok(());
        }
        if ino == ROOT_INO && name == HEAL_XATTR {
            // Reads every file and may replace some: the owner and root only.
            if caller.uid != self.daemon_uid && caller.uid != 0 {
                return Err(Errno::EACCES);
            }
            let status = self.status.as_ref().ok_or(Errno::EPERM)?;
            return status.heal(value);
        }
        let name = sys::c_name(name)?;
        sys::set_xattr(self.inodes.get(ino)?.fd(), &name, value, flags)
    }

    pub fn listxattr(&self, ino: u64, size: u32) -> Result<XattrValue> {
        let mut list = sys::list_xattr(self.inodes.get(ino)?.fd())?;
        if ino == ROOT_INO {
            // The status attribute is answered by the daemon, not stored, and never listed.
            list = list
                .split_inclusive(|&b| b == 0)
                .filter(|entry| entry.strip_suffix(&[0]) != Some(STATUS_XATTR.as_bytes()))
                .flatten()
                .copied()
                .collect();
        }
        XattrValue::sized(list, size)
    }

    pub fn removexattr(&self, ino: u64, name: &OsStr) -> Result<()> {
        if is_status_xattr(ino, name) {
            return Err(Errno::EPERM);
        }
        let name = sys::c_name(name)?;
        sys::remove_xattr(self.inodes.get(ino)?.fd(), &name)
    }

    pub fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> Result<()> {
        let handle = self.files.get(fh)?;
        sys::fallocate(handle.fd(), mode, offset, length)?;
        handle.mark_changed();
        Ok(())
    }

    /// SEEK_DATA / SEEK_HOLE (the kernel answers the other whences itself).
    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> Result<i64> {
        sys::lseek(self.files.get(fh)?.fd(), offset, whence)
    }

    pub fn copy_file_range(
        &self,
        fh_in: u64,
        offset_in: u64,
        fh_out: u64,
        offset_out: u64,
        len: u64,
    ) -> Result<u32> {
        let input = self.files.get(fh_in)?;
        let output = self.files.get(fh_out)?;
        // The reply carries a u32 count; the kernel asks again for the rest.
        let len = len.min(u64::from(u32::MAX) & !0xfff);
        let copied = sys::copy_file_range(input.fd(), offset_in, output.fd(), offset_out, len)?;
        output.mark_changed();
        Ok(copied as u32)
    }

    // ---- helpers ----

    /// The parent directory and `name` checked as a single path component.
    fn entry(&self, parent: u64, name: &OsStr) -> Result<(Inode, CString)> {
        // The kernel only sends single components; refuse anything that could walk elsewhere.
        if name.is_empty() || name == "." || name == ".." || name.as_bytes().contains(&b'/') {
            return Err(Errno::EINVAL);
        }
        let dir = self.inodes.get(parent)?;
        Ok((dir, sys::c_name(name)?))
    }

    fn lookup_in(
        &self,
        parent: u64,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        c_name: &CString,
    ) -> Result<FileAttr> {
        let st = sys::stat_at(dir, c_name, 0)?;
        self.remember(parent, name, &st, Opener::Name(dir, c_name))
    }

    /// Counts a kernel reference to the inode `st` found as `name` in `parent`, opening its
    /// `O_PATH` descriptor with `open` if the table does not have it yet.
    fn remember(
        &self,
        parent: u64,
        name: &OsStr,
        st: &sys::Stat,
        open: Opener<'_>,
    ) -> Result<FileAttr> {
        if let Some(ino) = self.inodes.reference_existing(st, parent, name) {
            return Ok(self.attr(ino, st));
        }
        let (fd, restat) = match open {
            Opener::Name(dir, c_name) => (sys::open_path(dir, c_name)?, true),
            Opener::SameInode(fd) => (sys::reopen(fd, libc::O_PATH)?, false),
        };
        let ino = if restat {
            // Describe the inode actually opened, should the name have changed in between.
            let st = sys::stat_fd(fd.as_fd())?;
            let ino = self.inodes.insert(fd, &st, parent, name);
            return Ok(self.attr(ino, &st));
        } else {
            self.inodes.insert(fd, st, parent, name)
        };
        Ok(self.attr(ino, st))
    }

    /// After mknod/mkdir/symlink made `name`: its entry, the event.
    fn created(
        &self,
        parent: u64,
        dir: &Inode,
        name: &OsStr,
        c_name: &CString,
    ) -> Result<FileAttr> {
        let attr = self.lookup_in(parent, dir.fd(), name, c_name)?;
        self.emit_at(parent, name, |path| Event::Created { path });
        Ok(attr)
    }

    /// Runs `create` so that what it creates belongs to the caller from the start: a root
    /// daemon creates as another user with their ids (`sys::CreatingAs`), never as root with a
    /// chown after, which a process swapping the new name for a hard link in between would turn
    /// onto a file of its choice. A daemon run by a user creates as that user, who owns it all.
    fn as_caller<T>(&self, caller: Caller, create: impl FnOnce() -> Result<T>) -> Result<T> {
        if !self.daemon_is_root || caller.uid == 0 {
            return create();
        }
        let _creating_as = sys::CreatingAs::switch(caller.uid, caller.gid)?;
        create()
    }

    fn remove(&self, parent: u64, name: &OsStr, is_dir: bool) -> Result<()> {
        let (dir, c_name) = self.entry(parent, name)?;
        let victim = sys::stat_at(dir.fd(), &c_name, 0).ok();
        let flags = if is_dir { libc::AT_REMOVEDIR } else { 0 };
        sys::unlinkat(dir.fd(), &c_name, flags)?;
        if let Some(ino) = victim.and_then(|st| self.inodes.known_ino(&st)) {
            self.inodes.remove_name(ino, parent, name);
        }
        self.emit_at(parent, name, |path| Event::Removed { path, is_dir });
        Ok(())
    }

    /// `st`: the handle's fstat, if the caller already has it.
    #[allow(clippy::too_many_arguments)]
    fn open_handle(
        &self,
        ino: u64,
        inode: &Inode,
        fd: OwnedFd,
        flags: i32,
        st: Option<&sys::Stat>,
        truncated: bool,
    ) -> Result<Opened> {
        let own_st;
        let st = match st {
            Some(st) => st,
            None => {
                own_st = sys::stat_fd(fd.as_fd())?;
                &own_st
            }
        };
        let tracker = (flags & libc::O_ACCMODE != libc::O_RDONLY)
            .then(|| parking_lot::Mutex::new(ChangeTracker::new(Fingerprint::of(st), truncated)));
        let backing_id = if inode.is_regular() {
            self.backing_id(inode, fd.as_fd(), flags)
        } else {
            None
        };
        if tracker.is_some() {
            self.writers.opened((st.st_dev, st.st_ino));
        }
        let fh = self.files.insert(OpenFile {
            ino,
            backing_inode: (st.st_dev, st.st_ino),
            fd,
            _backing_id: backing_id.clone(),
            tracker,
        });
        Ok(Opened { fh, backing_id })
    }

    /// The inode's kernel passthrough registration, shared by all its open handles. It is
    /// registered read-write when possible, since later handles of other modes share it.
    fn backing_id(
        &self,
        inode: &Inode,
        handle_fd: BorrowedFd<'_>,
        handle_flags: i32,
    ) -> Option<Arc<BackingId>> {
        let mut shared = inode.backing_id.lock();
        if let Some(id) = shared.upgrade() {
            return Some(id);
        }
        let device = self.kernel_passthrough.lock().clone()?;
        // The kernel does I/O with the registered file's own flags too: a plain O_RDWR handle
        // can serve; otherwise open one (falling back to the handle if O_RDWR is refused).
        let read_write = if handle_flags & SHARED_FLAGS == libc::O_RDWR {
            None
        } else {
            sys::reopen(inode.fd(), libc::O_RDWR).ok()
        };
        let backing_fd = read_write.as_ref().map_or(handle_fd, |fd| fd.as_fd());
        match device.register(backing_fd) {
            Ok(id) => {
                let id = Arc::new(id);
                *shared = Arc::downgrade(&id);
                Some(id)
            }
            Err(e) => {
                tracing::warn!(
                    "kernel passthrough refused ({e}); file data goes through the daemon"
                );
                self.set_kernel_passthrough(None);
                None
            }
        }
    }

    /// Whether the handle changed content since open or the last report (a read-only handle
    /// never did). A failed fstat counts as a change: a look too many costs little.
    fn content_changed(&self, handle: &OpenFile) -> bool {
        let Some(tracker) = &handle.tracker else {
            return false;
        };
        let now = match sys::stat_fd(handle.fd()) {
            Ok(st) => Fingerprint::of(&st),
            Err(e) => {
                tracing::warn!(ino = handle.ino, "fstat for change detection failed: {e:?}");
                return true;
            }
        };
        tracker.lock().settle(now)
    }

    /// Up to `limit` paths of files open for writing, for status.
    fn paths_open_for_writing(&self, limit: usize) -> Vec<String> {
        let mut inos = self.files.filter_map(|h| h.tracker.as_ref().map(|_| h.ino));
        inos.sort_unstable();
        inos.dedup();
        inos.into_iter()
            .filter_map(|ino| self.inodes.path_of(ino))
            .take(limit)
            .map(|path| path.to_string_lossy().into_owned())
            .collect()
    }

    fn attr(&self, ino: u64, st: &sys::Stat) -> FileAttr {
        FileAttr {
            ino: INodeNo(ino),
            size: st.st_size as u64,
            blocks: st.st_blocks as u64,
            atime: sys::system_time(st.st_atime, st.st_atime_nsec as i64),
            mtime: sys::system_time(st.st_mtime, st.st_mtime_nsec as i64),
            ctime: sys::system_time(st.st_ctime, st.st_ctime_nsec as i64),
            crtime: UNIX_EPOCH,
            kind: mode_type(st.st_mode),
            perm: (st.st_mode & 0o7777) as u16,
            nlink: st.st_nlink as u32,
            uid: st.st_uid,
            gid: st.st_gid,
            rdev: st.st_rdev as u32,
            blksize: st.st_blksize as u32,
            flags: 0,
        }
    }

    fn emit(&self, event: Event) {
        tracing::debug!(?event, "event");
        self.events.send(event);
    }

    fn emit_at(&self, parent: u64, name: &OsStr, event: impl FnOnce(PathBuf) -> Event) {
        match self.inodes.path_in(parent, name) {
            Some(path) => self.emit(event(path)),
            None => tracing::debug!(parent, ?name, "no path known; event dropped"),
        }
    }

    /// An event about inode `ino`, given its current path and backing `st_ino`. False when the
    /// inode has no known path (unlinked?) and nothing was sent.
    fn emit_for(&self, ino: u64, event: impl FnOnce(PathBuf, u64) -> Event) -> bool {
        match self.inodes.path_and_backing_ino(ino) {
            Some((path, backing_ino)) => {
                self.emit(event(path, backing_ino));
                true
            }
            None => {
                tracing::debug!(ino, "no path known (unlinked?); event dropped");
                false
            }
        }
    }
}

/// Open flags that the kernel's passthrough I/O takes from the registered backing file, so a
/// handle can be shared as the backing file only if it has exactly O_RDWR of these.
const SHARED_FLAGS: i32 = libc::O_ACCMODE
    | libc::O_APPEND
    | libc::O_DIRECT
    | libc::O_SYNC
    | libc::O_DSYNC
    | libc::O_NOATIME;

/// How `remember` gets an `O_PATH` descriptor for a new table entry.
enum Opener<'a> {
    /// By name in a directory: the name may have changed since the stat, so stat again.
    Name(BorrowedFd<'a>, &'a CString),
    /// By reopening a descriptor of the very inode that was stat'ed (no second stat needed).
    SameInode(BorrowedFd<'a>),
}

/// getdents buffer per readdir call; the kernel's reply buffer is 4 KiB to 128 KiB.
const DIR_BATCH: usize = 64 * 1024;

/// The daemon's descriptor never does O_DIRECT I/O (the caller's alignment is not ours); the
/// kernel has already resolved the name (O_NOFOLLOW would refuse our /proc/self/fd re-open) and
/// done creation and controlling-terminal handling.
fn daemon_open_flags(flags: i32) -> i32 {
    flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY | libc::O_DIRECT | libc::O_NOFOLLOW)
}

fn is_status_xattr(ino: u64, name: &OsStr) -> bool {
    ino == ROOT_INO && name == STATUS_XATTR
}

/// The page of verify findings a getxattr on the root asks for, if it asks for one.
fn verify_findings_page_asked(ino: u64, name: &OsStr) -> Option<u64> {
    let from = name.to_str()?.strip_prefix(VERIFY_FINDINGS_XATTR_PREFIX)?;
    (ino == ROOT_INO).then(|| from.parse().ok()).flatten()
}

fn mode_type(mode: libc::mode_t) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

/// The type a directory entry tells, if it tells one (`DT_UNKNOWN` on some filesystems).
fn dirent_type(kind: rustix::fs::FileType) -> Option<FileType> {
    use rustix::fs::FileType as Dirent;
    Some(match kind {
        Dirent::Directory => FileType::Directory,
        Dirent::RegularFile => FileType::RegularFile,
        Dirent::Symlink => FileType::Symlink,
        Dirent::Fifo => FileType::NamedPipe,
        Dirent::Socket => FileType::Socket,
        Dirent::CharacterDevice => FileType::CharDevice,
        Dirent::BlockDevice => FileType::BlockDevice,
        Dirent::Unknown => return None,
    })
}

fn stat_type(dir: BorrowedFd<'_>, name: &OsStr) -> Option<FileType> {
    let c_name = sys::c_name(name).ok()?;
    sys::stat_at(dir, &c_name, 0)
        .ok()
        .map(|st| mode_type(st.st_mode))
}

/// Attributes that carry only an inode number and a type (for `.`/`..` in readdirplus, and node
/// id 0 for a cacheable "no such name").
pub(crate) fn bare_attr(ino: u64, kind: FileType) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}

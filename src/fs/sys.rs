//! Thin, safe wrappers over the system calls the passthrough needs: rustix's, or libc's where
//! rustix has none. Every call is relative to a file descriptor (`*at`, `AT_EMPTY_PATH`, or
//! `/proc/self/fd/N` for `O_PATH` descriptors) and never follows a symlink in the backing tree;
//! errors come back as the backing call's errno.

use fuser::Errno;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, ResolveFlags};
use rustix::process::{Resource, Rlimit};
use rustix::thread::CapabilitySets;
use std::ffi::{CStr, CString, OsStr};
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub type Result<T> = std::result::Result<T, Errno>;

/// What `stat` answers: the kernel's `struct stat`.
pub type Stat = rustix::fs::Stat;

/// The errno of a failed rustix call, as a FUSE reply carries it.
fn errno(error: rustix::io::Errno) -> Errno {
    Errno::from_i32(error.raw_os_error())
}

/// Retries a call interrupted by a signal (the daemon's threads can receive SIGTERM/SIGINT).
fn retry<T>(call: impl FnMut() -> rustix::io::Result<T>) -> Result<T> {
    rustix::io::retry_on_intr(call).map_err(errno)
}

pub fn c_name(name: &OsStr) -> Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| Errno::EINVAL)
}

/// The path that re-opens an `O_PATH` descriptor through procfs, as libfuse's passthrough_hp does.
/// Resolving it lands on the descriptor's inode itself; a symlink there is not followed further.
pub fn proc_fd_path(fd: BorrowedFd<'_>) -> CString {
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL in a number")
}

const EMPTY: &CStr = c"";

/// Open flags as the kernel takes them: every bit of `flags` (libc's `O_*`), and close-on-exec.
fn open_flags(flags: i32) -> OFlags {
    OFlags::from_bits_retain(flags as u32) | OFlags::CLOEXEC
}

pub fn openat(dir: BorrowedFd<'_>, name: &CStr, flags: i32, mode: libc::mode_t) -> Result<OwnedFd> {
    retry(|| rustix::fs::openat(dir, name, open_flags(flags), Mode::from_bits_retain(mode)))
}

/// An `O_PATH` descriptor for the directory at `path`, absolute or relative to the working
/// directory: only for the user's own name of BACKING, whose symlinks are followed this once.
/// (A descriptor standing for the working directory is never made, so no `*at` helper here can
/// be handed one and act on a path outside BACKING.)
pub fn open_dir_path(path: &CStr) -> Result<OwnedFd> {
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    retry(|| rustix::fs::open(path, flags, Mode::empty()))
}

/// Opens `path` (any number of components) below `dir` with `openat2`: the kernel refuses to
/// leave `dir` (`..`, absolute paths) or to follow any symlink, even one that races in.
pub fn open_beneath(dir: BorrowedFd<'_>, path: &CStr, flags: i32) -> Result<OwnedFd> {
    let flags = open_flags(flags) | OFlags::NOFOLLOW;
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS;
    retry(|| rustix::fs::openat2(dir, path, flags, Mode::empty(), resolve))
}

/// An `O_PATH` descriptor for `name` in `dir`, never following a symlink at `name`.
pub fn open_path(dir: BorrowedFd<'_>, name: &CStr) -> Result<OwnedFd> {
    openat(dir, name, libc::O_PATH | libc::O_NOFOLLOW, 0)
}

/// Opens the inode behind an `O_PATH` (or any) descriptor with real access `flags`.
pub fn reopen(fd: BorrowedFd<'_>, flags: i32) -> Result<OwnedFd> {
    let path = proc_fd_path(fd);
    retry(|| rustix::fs::open(path.as_c_str(), open_flags(flags), Mode::empty()))
}

pub fn stat_fd(fd: BorrowedFd<'_>) -> Result<Stat> {
    stat_at(fd, EMPTY, libc::AT_EMPTY_PATH)
}

pub fn stat_at(dir: BorrowedFd<'_>, name: &CStr, flags: i32) -> Result<Stat> {
    let flags = AtFlags::from_bits_retain(flags as u32) | AtFlags::SYMLINK_NOFOLLOW;
    rustix::fs::statat(dir, name, flags).map_err(errno)
}

pub fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: libc::mode_t) -> Result<()> {
    rustix::fs::mkdirat(dir, name, Mode::from_bits_retain(mode)).map_err(errno)
}

/// `mode` carries the file type, as mknod(2) takes it.
pub fn mknodat(dir: BorrowedFd<'_>, name: &CStr, mode: libc::mode_t, rdev: u64) -> Result<()> {
    // rustix sends the type and the permission bits or'ed together, as they came; only type 0,
    // which mknod(2) reads as a regular file, has no `FileType` of its own (`Unknown` would send
    // S_IFMT).
    let file_type = match mode & libc::S_IFMT {
        0 => FileType::RegularFile,
        _ => FileType::from_raw_mode(mode),
    };
    let permissions = Mode::from_bits_retain(mode & !libc::S_IFMT);
    rustix::fs::mknodat(dir, name, file_type, permissions, rdev).map_err(errno)
}

pub fn symlinkat(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> Result<()> {
    rustix::fs::symlinkat(target, dir, name).map_err(errno)
}

pub fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, flags: i32) -> Result<()> {
    rustix::fs::unlinkat(dir, name, AtFlags::from_bits_retain(flags as u32)).map_err(errno)
}

pub fn renameat2(
    old_dir: BorrowedFd<'_>,
    old_name: &CStr,
    new_dir: BorrowedFd<'_>,
    new_name: &CStr,
    flags: u32,
) -> Result<()> {
    let flags = RenameFlags::from_bits_retain(flags);
    rustix::fs::renameat_with(old_dir, old_name, new_dir, new_name, flags).map_err(errno)
}

/// A new hard link to the inode behind `fd`. The procfs form needs no CAP_DAC_READ_SEARCH, unlike
/// `AT_EMPTY_PATH`, and `AT_SYMLINK_FOLLOW` only resolves the magic link, never a symlink's target.
pub fn link_fd(fd: BorrowedFd<'_>, new_dir: BorrowedFd<'_>, new_name: &CStr) -> Result<()> {
    let path = proc_fd_path(fd);
    rustix::fs::linkat(
        rustix::fs::CWD,
        path.as_c_str(),
        new_dir,
        new_name,
        AtFlags::SYMLINK_FOLLOW,
    )
    .map_err(errno)
}

pub fn readlink_fd(fd: BorrowedFd<'_>) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    let len = rustix::fs::readlinkat_raw(fd, EMPTY, &mut buf[..]).map_err(errno)?;
    buf.truncate(len);
    Ok(buf)
}

pub fn chmod_fd(fd: BorrowedFd<'_>, mode: libc::mode_t) -> Result<()> {
    let path = proc_fd_path(fd);
    rustix::fs::chmod(path.as_c_str(), Mode::from_bits_retain(mode)).map_err(errno)
}

pub fn fchmod(fd: BorrowedFd<'_>, mode: libc::mode_t) -> Result<()> {
    rustix::fs::fchmod(fd, Mode::from_bits_retain(mode)).map_err(errno)
}

/// `None` leaves the id unchanged (-1 to chown).
pub fn chown_at(
    dir: BorrowedFd<'_>,
    name: &CStr,
    uid: Option<u32>,
    gid: Option<u32>,
) -> Result<()> {
    let flags = AtFlags::SYMLINK_NOFOLLOW
        | if name.is_empty() {
            AtFlags::EMPTY_PATH
        } else {
            AtFlags::empty()
        };
    // Unchecked: an id of -1 passes as before, meaning "unchanged" to the kernel as `None` does.
    let uid = uid.map(rustix::fs::Uid::from_raw_unchecked);
    let gid = gid.map(rustix::fs::Gid::from_raw_unchecked);
    rustix::fs::chownat(dir, name, uid, gid, flags).map_err(errno)
}

pub fn chown_fd(fd: BorrowedFd<'_>, uid: Option<u32>, gid: Option<u32>) -> Result<()> {
    chown_at(fd, EMPTY, uid, gid)
}

/// The calling thread creates as another user until this is dropped: its filesystem ids (fsuid,
/// fsgid) are that user's, so what it creates is theirs the moment it exists, and the kernel
/// applies the set-group-ID directory rule to their group. Only the thread that made it can drop
/// it (it is not `Send`): the ids belong to that thread alone.
///
/// Changing the fsuid from 0 drops the thread's effective filesystem capabilities
/// (CAP_DAC_OVERRIDE, CAP_FSETID...); they are raised again, so the backing call is checked as
/// before and only the owner differs: the kernel has already checked the caller, with all of
/// their groups, which the daemon cannot take on (`default_permissions`), and has already
/// cleared a set-group-ID bit they may not set.
pub struct CreatingAs {
    /// The thread's own fsuid and fsgid, and capabilities, to put back.
    own_ids: (u32, u32),
    capabilities: CapabilitySets,
    _this_thread: std::marker::PhantomData<*const ()>,
}

/// The calling thread's capabilities (`None`: pid 0, the calling thread, not the process).
fn thread_capabilities() -> Result<CapabilitySets> {
    rustix::thread::capabilities(None).map_err(errno)
}

fn set_thread_capabilities(sets: CapabilitySets) -> Result<()> {
    rustix::thread::set_capabilities(None, sets).map_err(errno)
}

/// The calling thread's fsuid and fsgid (an invalid id changes nothing, and both calls answer
/// the id in force). setfsuid/setfsgid are libc's: rustix has no wrapper for them.
fn thread_fs_ids() -> (u32, u32) {
    // SAFETY: setfsuid/setfsgid with an invalid id only read the thread's own ids.
    unsafe {
        (
            libc::setfsuid(u32::MAX) as u32,
            libc::setfsgid(u32::MAX) as u32,
        )
    }
}

/// Sets the thread's fsuid and fsgid (glibc's setfsuid acts on the calling thread only, unlike
/// its setuid family), answering whether they took.
fn set_thread_fs_ids(uid: u32, gid: u32) -> bool {
    // SAFETY: setfsgid/setfsuid change only the calling thread's filesystem ids.
    unsafe {
        libc::setfsgid(gid);
        libc::setfsuid(uid);
    }
    thread_fs_ids() == (uid, gid)
}

impl CreatingAs {
    /// Switches the calling thread (a root daemon's) to `uid` and `gid`; EPERM if the kernel
    /// refuses (a daemon without CAP_SETUID), with the thread left as it was.
    pub fn switch(uid: u32, gid: u32) -> Result<CreatingAs> {
        let capabilities = thread_capabilities()?;
        let switched = CreatingAs {
            own_ids: thread_fs_ids(),
            capabilities,
            _this_thread: std::marker::PhantomData,
        };
        // From here on, dropping `switched` puts back whatever was changed.
        if !set_thread_fs_ids(uid, gid) {
            tracing::warn!(
                uid,
                gid,
                "could not create as the caller: setfsuid/setfsgid refused"
            );
            return Err(Errno::EPERM);
        }
        set_thread_capabilities(capabilities)?;
        Ok(switched)
    }
}

impl Drop for CreatingAs {
    fn drop(&mut self) {
        // Back to fsuid 0, the kernel raises the filesystem capabilities again by itself; they are
        // set as they were all the same. A thread that stayed another user would serve the
        // daemon's own requests as them: nothing is served rather than that.
        let (uid, gid) = self.own_ids;
        let restored = set_thread_fs_ids(uid, gid)
            && set_thread_capabilities(self.capabilities).is_ok()
            && thread_capabilities().is_ok_and(|now| now == self.capabilities);
        if !restored {
            tracing::error!("could not restore the serving thread's own ids; stopping");
            std::process::abort();
        }
    }
}

pub fn truncate_fd(fd: BorrowedFd<'_>, size: u64) -> Result<()> {
    let path = proc_fd_path(fd);
    loop {
        // rustix has no truncate(2) by path, and opening the file to ftruncate it would be
        // another call with other rules (a FIFO would block it).
        // SAFETY: `path` is a NUL-terminated string that outlives the call.
        if unsafe { libc::truncate(path.as_ptr(), size as libc::off_t) } == 0 {
            return Ok(());
        }
        let error = Errno::from(std::io::Error::last_os_error());
        if error != Errno::EINTR {
            return Err(error);
        }
    }
}

pub fn ftruncate(fd: BorrowedFd<'_>, size: u64) -> Result<()> {
    retry(|| rustix::fs::ftruncate(fd, size))
}

/// What to set a timestamp to; `None` in `set_times` leaves it alone (UTIME_OMIT).
#[derive(Clone, Copy, Debug)]
pub enum TimeSpec {
    Now,
    At(SystemTime),
}

fn timespec(time: Option<TimeSpec>) -> rustix::fs::Timespec {
    match time {
        None => rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        Some(TimeSpec::Now) => rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW,
        },
        Some(TimeSpec::At(t)) => {
            let (tv_sec, tv_nsec) = match t.duration_since(UNIX_EPOCH) {
                Ok(d) => (d.as_secs() as i64, i64::from(d.subsec_nanos())),
                Err(before) => {
                    let d = before.duration();
                    let nanos = i64::from(d.subsec_nanos());
                    if nanos == 0 {
                        (-(d.as_secs() as i64), 0)
                    } else {
                        (-(d.as_secs() as i64) - 1, 1_000_000_000 - nanos)
                    }
                }
            };
            rustix::fs::Timespec { tv_sec, tv_nsec }
        }
    }
}

/// Sets atime/mtime of the inode behind `fd` (an `O_PATH` descriptor works; symlinks included).
pub fn set_times(
    fd: BorrowedFd<'_>,
    atime: Option<TimeSpec>,
    mtime: Option<TimeSpec>,
) -> Result<()> {
    let times = rustix::fs::Timestamps {
        last_access: timespec(atime),
        last_modification: timespec(mtime),
    };
    rustix::fs::utimensat(fd, EMPTY, &times, AtFlags::EMPTY_PATH).map_err(errno)
}

pub fn system_time(sec: i64, nsec: i64) -> SystemTime {
    let nsec = Duration::from_nanos(nsec as u64);
    if sec >= 0 {
        UNIX_EPOCH + Duration::from_secs(sec as u64) + nsec
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + nsec
    }
}

pub fn pread(fd: BorrowedFd<'_>, size: usize, offset: u64) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; size];
    let len = retry(|| rustix::io::pread(fd, &mut buf[..], offset))?;
    buf.truncate(len);
    Ok(buf)
}

pub fn pwrite(fd: BorrowedFd<'_>, data: &[u8], offset: u64) -> Result<usize> {
    retry(|| rustix::io::pwrite(fd, data, offset))
}

pub fn fsync(fd: BorrowedFd<'_>, datasync: bool) -> Result<()> {
    retry(|| {
        if datasync {
            rustix::fs::fdatasync(fd)
        } else {
            rustix::fs::fsync(fd)
        }
    })
}

/// `mode` is fallocate(2)'s (`FALLOC_FL_*`), every bit passed on.
pub fn fallocate(fd: BorrowedFd<'_>, mode: i32, offset: u64, len: u64) -> Result<()> {
    let mode = rustix::fs::FallocateFlags::from_bits_retain(mode as u32);
    retry(|| rustix::fs::fallocate(fd, mode, offset, len))
}

/// lseek(2) with libc's `whence` (`SEEK_*`); an unknown one is EINVAL, as the kernel answers it.
pub fn lseek(fd: BorrowedFd<'_>, offset: i64, whence: i32) -> Result<i64> {
    use rustix::fs::SeekFrom;
    // A negative offset from the start, a data or a hole is passed on as it is (rustix casts it
    // back), for the kernel's EINVAL or ENXIO.
    let position = match whence {
        libc::SEEK_SET => SeekFrom::Start(offset as u64),
        libc::SEEK_CUR => SeekFrom::Current(offset),
        libc::SEEK_END => SeekFrom::End(offset),
        libc::SEEK_DATA => SeekFrom::Data(offset as u64),
        libc::SEEK_HOLE => SeekFrom::Hole(offset as u64),
        _ => return Err(Errno::EINVAL),
    };
    rustix::fs::seek(fd, position)
        .map(|at| at as i64)
        .map_err(errno)
}

pub fn copy_file_range(
    fd_in: BorrowedFd<'_>,
    offset_in: u64,
    fd_out: BorrowedFd<'_>,
    offset_out: u64,
    len: u64,
) -> Result<usize> {
    let (mut offset_in, mut offset_out) = (offset_in, offset_out);
    retry(|| {
        rustix::fs::copy_file_range(
            fd_in,
            Some(&mut offset_in),
            fd_out,
            Some(&mut offset_out),
            len as usize,
        )
    })
}

pub fn statfs(fd: BorrowedFd<'_>) -> Result<rustix::fs::StatFs> {
    rustix::fs::fstatfs(fd).map_err(errno)
}

/// The filesystem's id (`f_fsid`): on ext4, xfs and btrfs it comes from the filesystem's UUID,
/// so it names the same disk across mounts and reboots.
pub fn filesystem_id(fd: BorrowedFd<'_>) -> Result<u64> {
    rustix::fs::fstatvfs(fd).map(|st| st.f_fsid).map_err(errno)
}

pub fn access_fd(fd: BorrowedFd<'_>, mask: i32) -> Result<()> {
    let path = proc_fd_path(fd);
    let mask = rustix::fs::Access::from_bits_retain(mask as u32);
    rustix::fs::accessat(rustix::fs::CWD, path.as_c_str(), mask, AtFlags::empty()).map_err(errno)
}

/// One entry of a `getdents64` batch.
pub struct RawDirEntry<'a> {
    pub ino: u64,
    /// The cookie that resumes reading after this entry.
    pub next_offset: i64,
    /// The entry's `d_type`; `Unknown` where the filesystem does not tell.
    pub kind: FileType,
    pub name: &'a OsStr,
}

/// Reads one batch of directory entries (what one getdents64 call fits in `buf`) starting at the
/// position `offset` (a cookie returned earlier, or 0), calling `each` until it returns `false`
/// or the batch ends.
pub fn read_dir_batch(
    fd: BorrowedFd<'_>,
    offset: i64,
    buf: &mut [MaybeUninit<u8>],
    mut each: impl FnMut(RawDirEntry<'_>) -> bool,
) -> Result<()> {
    lseek(fd, offset, libc::SEEK_SET)?;
    let mut entries = rustix::fs::RawDir::new(fd, buf);
    while let Some(entry) = entries.next() {
        let entry = entry.map_err(errno)?;
        let more = each(RawDirEntry {
            ino: entry.ino(),
            next_offset: entry.next_entry_cookie() as i64,
            kind: entry.file_type(),
            name: OsStr::from_bytes(entry.file_name().to_bytes()),
        });
        // `RawDir` would read the next batch once this one is used up.
        if !more || entries.is_buffer_empty() {
            break;
        }
    }
    Ok(())
}

/// Extended attributes through the procfs path of an `O_PATH` descriptor: it resolves to the
/// inode itself (for a symlink: the link, not its target), race-free like `f*xattr`.
pub fn get_xattr(fd: BorrowedFd<'_>, name: &CStr, size: usize) -> Result<XattrValue> {
    let path = proc_fd_path(fd);
    if size == 0 {
        let len = rustix::fs::getxattr_query(path.as_c_str(), name).map_err(errno)?;
        return Ok(XattrValue::Size(len as u32));
    }
    let mut buf = vec![0u8; size];
    let len = rustix::fs::getxattr(path.as_c_str(), name, &mut buf[..]).map_err(errno)?;
    buf.truncate(len);
    Ok(XattrValue::Data(buf))
}

/// `flags` are setxattr(2)'s (`XATTR_CREATE`, `XATTR_REPLACE`), every bit passed on.
pub fn set_xattr(fd: BorrowedFd<'_>, name: &CStr, value: &[u8], flags: i32) -> Result<()> {
    let path = proc_fd_path(fd);
    let flags = rustix::fs::XattrFlags::from_bits_retain(flags as u32);
    rustix::fs::setxattr(path.as_c_str(), name, value, flags).map_err(errno)
}

pub fn remove_xattr(fd: BorrowedFd<'_>, name: &CStr) -> Result<()> {
    let path = proc_fd_path(fd);
    rustix::fs::removexattr(path.as_c_str(), name).map_err(errno)
}

/// The whole NUL-separated name list (retrying if it grows between the size query and the read).
pub fn list_xattr(fd: BorrowedFd<'_>) -> Result<Vec<u8>> {
    let path = proc_fd_path(fd);
    loop {
        let len = rustix::fs::listxattr_query(path.as_c_str()).map_err(errno)?;
        let mut buf = vec![0u8; len];
        match rustix::fs::listxattr(path.as_c_str(), &mut buf[..]) {
            Ok(len) => {
                buf.truncate(len);
                return Ok(buf);
            }
            Err(rustix::io::Errno::RANGE) => continue,
            Err(e) => return Err(errno(e)),
        }
    }
}

/// A getxattr/listxattr answer: the size when asked with size 0, else the bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum XattrValue {
    Size(u32),
    Data(Vec<u8>),
}

impl XattrValue {
    /// Applies the size rule of getxattr(2) to a value we hold in full.
    pub fn sized(data: Vec<u8>, size: u32) -> Result<XattrValue> {
        if size == 0 {
            Ok(XattrValue::Size(data.len() as u32))
        } else if data.len() > size as usize {
            Err(Errno::ERANGE)
        } else {
            Ok(XattrValue::Data(data))
        }
    }
}

/// Gives the calling thread its own umask of 0, once: the kernel has already applied the
/// caller's umask to the modes it sends, and the daemon's must not apply a second time.
///
/// The umask belongs to the process's fs block (cwd, root, umask), shared by all threads, so
/// setting it for the FUSE threads alone needs `unshare(CLONE_FS)` first: each serving thread
/// gets its own copy, and the sync engine and everything else keep the process's umask (files
/// the daemon itself writes, its state folder, stay as private as the umask makes them). The
/// thread's own cwd is never used: the fs layer names nothing relative to it.
pub fn clear_thread_umask() {
    thread_local!(static CLEARED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });
    CLEARED.with(|cleared| {
        if !cleared.get() {
            // SAFETY: rustix's unshare is unsafe for CLONE_FILES (a descriptor another thread opens after it is not in this thread's table); CLONE_FS only gives this thread its own copy of the fs block.
            match unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::FS) } {
                Ok(()) => {
                    // After the unshare, the umask is this thread's.
                    rustix::process::umask(Mode::empty());
                }
                Err(e) => tracing::warn!(
                    "unshare(CLONE_FS) failed ({e}); created modes get the daemon's umask too"
                ),
            }
            cleared.set(true);
        }
    });
}

/// The process's current (soft) limit on open descriptors.
pub fn nofile_limit() -> usize {
    let limit = rustix::process::getrlimit(Resource::Nofile);
    // `None` is RLIM_INFINITY.
    limit.current.map_or(usize::MAX, |current| {
        usize::try_from(current).unwrap_or(usize::MAX)
    })
}

/// Lifts the open-file limit as far as allowed: the inode table holds up to half of it in
/// `O_PATH` descriptors, and more held means fewer reopened by name.
pub fn raise_nofile_limit() {
    // Root may lift the hard limit too, up to the kernel's fs.nr_open.
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok());
    if let Some(nr_open) = nr_open {
        let lifted = Rlimit {
            current: Some(nr_open),
            maximum: Some(nr_open),
        };
        if rustix::process::setrlimit(Resource::Nofile, lifted).is_ok() {
            return;
        }
    }
    let limit = rustix::process::getrlimit(Resource::Nofile);
    // The soft limit is never above the hard one: unequal, it is below.
    if limit.current == limit.maximum {
        return;
    }
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    if let Err(e) = rustix::process::setrlimit(Resource::Nofile, raised) {
        tracing::warn!("could not raise RLIMIT_NOFILE: {e}");
    }
}

/// Receives one descriptor passed with `SCM_RIGHTS` over the Unix socket `socket` (blocking).
/// `None` if the peer closed the socket without sending one.
pub fn recv_fd(socket: BorrowedFd<'_>) -> std::io::Result<Option<OwnedFd>> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let mut byte = [0u8; 1];
    // Room for one control message carrying one descriptor.
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = rustix::io::retry_on_intr(|| {
        rustix::net::recvmsg(
            socket,
            &mut [std::io::IoSliceMut::new(&mut byte)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )
    })?;
    if received.bytes == 0 {
        return Ok(None);
    }
    // Only the first control message counts; any other descriptor received is closed.
    let fd = match control.drain().next() {
        Some(RecvAncillaryMessage::ScmRights(mut fds)) => fds.next(),
        _ => None,
    };
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// A root thread creates as another user while `CreatingAs` lives, in a folder only root may
    /// write (its capabilities kept); once it is dropped, the thread's ids and capabilities are
    /// its own again and what it creates is root's.
    #[test]
    fn creating_as_another_user_lasts_as_long_as_the_guard() {
        let euid = rustix::process::geteuid();
        assert!(euid.is_root(), "the daemon's case: run as root");
        let dir = tempfile::tempdir().unwrap();
        let path = CString::new(dir.path().as_os_str().as_bytes()).unwrap();
        // Its own thread: the ids and capabilities changed are that thread's alone.
        std::thread::spawn(move || {
            let dir_fd = open_dir_path(&path).unwrap();
            let (own_ids, own_capabilities) = (thread_fs_ids(), thread_capabilities().unwrap());
            {
                let _creating_as = CreatingAs::switch(65534, 65534).unwrap();
                mkdirat(dir_fd.as_fd(), c"theirs", 0o755).unwrap();
            }
            assert_eq!(thread_fs_ids(), own_ids);
            assert_eq!(thread_capabilities().unwrap(), own_capabilities);
            mkdirat(dir_fd.as_fd(), c"mine", 0o755).unwrap();
            for (name, owner) in [(c"theirs", (65534, 65534)), (c"mine", (0, 0))] {
                let st = stat_at(dir_fd.as_fd(), name, 0).unwrap();
                assert_eq!((st.st_uid, st.st_gid), owner, "{name:?}");
            }
        })
        .join()
        .unwrap();
    }
}

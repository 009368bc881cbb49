//! What we ask of the kernel and how we answer it, for every transport: the fuser adapter and the
//! io_uring one apply these same rules.

use super::passthrough::{bare_attr, Result};
use fuser::{Errno, FileAttr, FileType, FopenFlags, InitFlags};

/// INIT capabilities asked for when the kernel offers them; an older kernel without one simply
/// goes without. Kernel passthrough (`FUSE_PASSTHROUGH`) is asked separately, only when wanted.
pub(crate) fn optional_capabilities(allow_other: bool) -> InitFlags {
    // fuser asks for the first three on its own; they are listed so that every transport asks
    // for the same set.
    let mut flags = InitFlags::FUSE_ASYNC_READ
        | InitFlags::FUSE_BIG_WRITES
        | InitFlags::FUSE_MAX_PAGES
        | InitFlags::FUSE_DO_READDIRPLUS
        | InitFlags::FUSE_READDIRPLUS_AUTO
        | InitFlags::FUSE_PARALLEL_DIROPS
        | InitFlags::FUSE_ATOMIC_O_TRUNC
        | InitFlags::FUSE_CACHE_SYMLINKS;
    if !allow_other {
        // The backing filesystem clears set-user-ID bits on write, truncate and chown, with the
        // daemon's credentials, which on a private mount are the caller's. This spares the
        // kernel a getxattr(security.capability) round trip on each first write.
        flags |= InitFlags::FUSE_HANDLE_KILLPRIV_V2;
    }
    flags
}

/// Backing files are plain files of the backing filesystem, never another FUSE or stacked
/// filesystem, and this mount may itself be stacked on once.
pub(crate) const PASSTHROUGH_MAX_STACK_DEPTH: u32 = 1;

/// The largest write the kernel may send. The kernel sends no more than max_pages pages per
/// request anyway (256, 1 MiB, unless an administrator raises fuse's max_pages_limit), and an
/// io_uring entry's payload buffer must hold max_write: fuser's default of 16 MiB would only
/// make each of those 16 times larger.
pub(crate) const MAX_WRITE: u32 = 1024 * 1024;

/// No FLUSH on close(2): it would cost a round trip per close, and content changes are reported
/// at release, once the last descriptor and mapping of the handle are gone.
pub(crate) const PASSTHROUGH_OPEN_FLAGS: FopenFlags = FopenFlags::FOPEN_NOFLUSH;
/// In daemon-I/O mode the page cache is also kept across opens: every write goes through the
/// mount.
pub(crate) const DAEMON_IO_OPEN_FLAGS: FopenFlags =
    FopenFlags::FOPEN_NOFLUSH.union(FopenFlags::FOPEN_KEEP_CACHE);

/// A lookup's answer: a missing name becomes node id 0 with a timeout, so the kernel caches
/// that the name does not exist (a create through the mount replaces that knowledge).
pub(crate) fn lookup_entry(result: Result<FileAttr>) -> Result<FileAttr> {
    match result {
        Err(Errno::ENOENT) => Ok(bare_attr(0, FileType::RegularFile)),
        result => result,
    }
}

//! The filesystem half: a passthrough of a backing directory (`Passthrough`, plain Rust returning
//! `Result<_, Errno>`) behind two thin adapters: fuser's (/dev/fuse) and our own (`uring`, FUSE
//! over io_uring). It reports every change that matters to the
//! catalog as an `Event`; it never calls the service and never blocks on the sync layer.

#![deny(clippy::undocumented_unsafe_blocks)]

mod backing;
mod fuse;
mod handles;
mod inodes;
mod kernel;
mod log_limit;
mod mount;
mod passthrough;
pub mod sys;
mod tree_watch;
mod uring;
mod writers;

pub use backing::{BackingId, FuseDevice};
/// The error of every operation, as the kernel receives it.
pub use fuser::Errno;
pub use mount::{spawn_mount, MountHandle, MountStopper};
pub use passthrough::{AttrChanges, Caller, Opened, Passthrough, TTL};
pub use sys::{TimeSpec, XattrValue};
pub use writers::OpenWriters;

use std::path::PathBuf;
use std::sync::Arc;

/// A change the catalog may care about. Paths are relative to the backing root (may be non-UTF-8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A regular file, fifo, device node, directory or symlink was created at `path`.
    Created { path: PathBuf },
    /// A handle that wrote or truncated (or a truncate through setattr) was flushed or released.
    /// `ino` is the backing inode's `st_ino`: `path` is where it was when the change was
    /// reported, and it may be renamed or replaced by the time the event is handled.
    ContentChanged { path: PathBuf, ino: u64 },
    /// The last handle open for writing was released without a change since the last report
    /// (`ino` as for `ContentChanged`): the file may now be sent.
    WriterClosed { path: PathBuf, ino: u64 },
    /// The last writer of backing inode `ino` (its `st_ino`) closed when the mount knew no name
    /// of it (unlinked, or replaced by a rename, while open). It may have been changed, and may
    /// still have names the mount never saw; whatever waited for its close stops waiting.
    WriterGone { ino: u64 },
    /// Times were set (utimensat) without a content change (`ino` as for `ContentChanged`).
    TimesSet { path: PathBuf, ino: u64 },
    /// The mode or owner of `path` was set (chmod, chown): it may have let the daemon's user
    /// in, or out.
    PermissionsChanged { path: PathBuf },
    /// `path` was unlinked (or removed with rmdir when `is_dir`).
    Removed { path: PathBuf, is_dir: bool },
    /// `from` was renamed to `to`, possibly replacing what `to` was.
    Renamed {
        from: PathBuf,
        to: PathBuf,
        is_dir: bool,
    },
    /// RENAME_EXCHANGE swapped `a` and `b`.
    Exchanged { a: PathBuf, b: PathBuf },
    /// A new hard link `path` was made to an existing file.
    Linked { path: PathBuf },
}

/// Where events go. Implementations must return at once (no I/O, no waiting on locks held long).
pub trait EventSink: Send + Sync {
    fn send(&self, event: Event);
}

/// How the kernel's requests reach the daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Per-CPU io_uring queues (FUSE over io_uring).
    IoUring,
    /// Reading and writing /dev/fuse.
    DevFuse,
}

impl Transport {
    /// The name `status --json` reports.
    pub fn name(self) -> &'static str {
        match self {
            Transport::IoUring => "io_uring",
            Transport::DevFuse => "dev_fuse",
        }
    }
}

/// Which transport to use (`--transport`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TransportChoice {
    /// io_uring when the administrator has enabled it (`enable_uring`), else /dev/fuse.
    #[default]
    Auto,
    /// io_uring, or no mount.
    IoUring,
    /// /dev/fuse.
    DevFuse,
}

impl std::str::FromStr for TransportChoice {
    type Err = String;

    /// The names `--transport` and `MAXLOFS_TRANSPORT` take.
    fn from_str(name: &str) -> Result<Self, String> {
        match name {
            "auto" => Ok(TransportChoice::Auto),
            "io-uring" => Ok(TransportChoice::IoUring),
            "dev-fuse" => Ok(TransportChoice::DevFuse),
            _ => Err(format!("{name:?} is not auto, io-uring or dev-fuse")),
        }
    }
}

/// What the filesystem side knows for a status answer.
#[derive(Clone, Copy, Debug)]
pub struct MountStatus<'a> {
    /// Files open for writing, which are sent once closed.
    pub open_for_writing: usize,
    /// The first few of their paths.
    pub writing: &'a [String],
    pub transport: Transport,
}

/// Answers `getxattr(MOUNTPOINT, STATUS_XATTR)` so `maxlofs status MOUNTPOINT` can ask the daemon.
pub trait StatusSource: Send + Sync {
    fn status_json(&self, mount: &MountStatus<'_>) -> String;

    /// `getxattr(MOUNTPOINT, VERIFY_FINDINGS_XATTR_PREFIX + FROM)`: what the last verify job found
    /// (`maxlofs verify MNT`), from the FROM-th finding on, as JSON `{"entries": [...], "next":
    /// FROM or null}` small enough for an extended attribute. `None`: not answered.
    fn verify_findings_page(&self, _from: u64) -> Option<String> {
        None
    }

    /// `setxattr(MOUNTPOINT, RELEASE_DELETES_XATTR)`: the deletes the mass-deletion guard holds
    /// go out (`maxlofs release-deletes MNT`). Answers how many were released.
    fn release_held_deletes(&self) -> usize {
        0
    }

    /// `setxattr(MOUNTPOINT, HEAL_XATTR, REQUEST)`: a scrub or restore job, as the sync layer
    /// reads REQUEST (`maxlofs scrub MNT`, `maxlofs restore MNT`). Its refusal is the setxattr's
    /// errno (EBUSY: a job runs).
    fn heal(&self, _request: &[u8]) -> Result<(), Errno> {
        Err(Errno::EOPNOTSUPP)
    }
}

/// The extended attribute on the mount root whose setting releases the held deletes.
pub const RELEASE_DELETES_XATTR: &str = "user.maxlofs.release-deletes";

/// Set on the mount root, starts a scrub or restore job (`StatusSource::heal`).
pub const HEAL_XATTR: &str = "user.maxlofs.heal";

/// Extended attributes on the mount root named this and a number page through what the last
/// verify job found (see `StatusSource::verify_findings_page`).
pub const VERIFY_FINDINGS_XATTR_PREFIX: &str = "user.maxlofs.verified.";

/// The extended attribute on the mount root that carries the daemon's status as JSON.
pub const STATUS_XATTR: &str = "user.maxlofs.status";

pub struct MountConfig {
    pub backing: PathBuf,
    pub mountpoint: PathBuf,
    pub read_only: bool,
    pub allow_other: bool,
    /// Threads serving FUSE requests.
    pub threads: usize,
    pub events: Arc<dyn EventSink>,
    pub status: Option<Arc<dyn StatusSource>>,
    /// Files open for writing, shared with the sync engine.
    pub writers: Arc<OpenWriters>,
    /// Hand file data to the kernel (FUSE passthrough, native speed) when the kernel and our
    /// privileges allow; `false` serves reads and writes in the daemon.
    pub kernel_passthrough: bool,
    pub transport: TransportChoice,
}

impl MountConfig {
    /// A private, read-write mount on 4 threads with kernel passthrough and no status source.
    pub fn new(backing: PathBuf, mountpoint: PathBuf, events: Arc<dyn EventSink>) -> MountConfig {
        MountConfig {
            backing,
            mountpoint,
            read_only: false,
            allow_other: false,
            threads: 4,
            events,
            status: None,
            writers: Arc::default(),
            kernel_passthrough: true,
            transport: TransportChoice::Auto,
        }
    }
}

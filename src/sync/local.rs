//! What the backing tree holds, read safely: every open goes through the backing root's fd with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, so no symlink, however placed or raced, makes
//! the sync engine read or hash anything outside BACKING.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::failure::{io_meaning, Io, NotRegular};
use maxlofs_api::contract;
use maxlofs_fs::sys;

/// The backing root, held open.
pub struct Backing {
    root: OwnedFd,
    path: PathBuf,
}

/// The identity and times of a regular file, as `stat` shows them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStat {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    /// Nanoseconds since the epoch: i64 ends in 2262, and ext4 keeps times to 2446.
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

impl FileStat {
    pub fn from_metadata(meta: &std::fs::Metadata) -> Self {
        FileStat {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: nanoseconds(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: nanoseconds(meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// Whether the service's timestamp form can say both times (`contract::iso8601`).
    pub fn times_can_be_sent(&self) -> bool {
        contract::can_write_ns(self.mtime_ns) && contract::can_write_ns(self.ctime_ns)
    }
}

fn nanoseconds(secs: i64, nanos: i64) -> i128 {
    i128::from(secs) * 1_000_000_000 + i128::from(nanos)
}

/// Why a file whose times the service's form cannot say is not sent, as status shows it.
pub const TIME_UNSAYABLE: &str = "its modification or change time is more than 262,143 years \
                                  from 1970, past what the service's timestamps can say; its \
                                  record is left as it was";

/// What a relative path names in the backing tree right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observed {
    Absent,
    File(FileStat),
    Directory,
    /// A symlink, fifo, socket or device: stays local.
    Special,
    /// Not to be looked at by the daemon's user (EACCES, EPERM): a directory it may not list,
    /// or a path below one it may not search. What is there is unknown, so its records are
    /// left as they are.
    Unreadable,
}

impl Observed {
    /// What an `lstat` shows.
    fn of(meta: &std::fs::Metadata) -> Observed {
        let kind = meta.file_type();
        if kind.is_file() {
            Observed::File(FileStat::from_metadata(meta))
        } else if kind.is_dir() {
            Observed::Directory
        } else {
            Observed::Special
        }
    }
}

impl Backing {
    pub fn open(path: &Path) -> io::Result<Backing> {
        let dir = File::open(path)?;
        if !dir.metadata()?.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{} is not a directory", path.display()),
            ));
        }
        Ok(Backing {
            root: dir.into(),
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What names this backing folder across mounts: its filesystem (type and id) and its
    /// root's inode. Another disk mounted there, or the empty folder under a disk that did not
    /// mount, answers another identity.
    pub fn identity(&self) -> io::Result<String> {
        let as_io = |e: maxlofs_fs::Errno| io::Error::from_raw_os_error(e.code());
        let fs = sys::statfs(self.root.as_fd()).map_err(as_io)?;
        let id = sys::filesystem_id(self.root.as_fd()).map_err(as_io)?;
        let root = sys::stat_fd(self.root.as_fd()).map_err(as_io)?;
        Ok(format!(
            "filesystem type {:#x} id {id:#x}, root inode {}",
            fs.f_type, root.st_ino
        ))
    }

    /// Whether the folder holds no entry at all.
    pub fn is_empty(&self) -> io::Result<bool> {
        let listed = std::fs::read_dir(format!("/proc/self/fd/{}", self.root.as_raw_fd()))?;
        Ok(listed.into_iter().next().is_none())
    }

    fn open_beneath(&self, relative: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
        let name = CString::new(relative.as_os_str().as_bytes())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        sys::open_beneath(self.root.as_fd(), &name, flags)
            .map_err(|e| io::Error::from_raw_os_error(e.code()))
    }

    /// Observes `relative` without following any symlink.
    pub fn observe(&self, relative: &Path) -> io::Result<Observed> {
        let fd = match self.open_beneath(relative, libc::O_PATH) {
            Ok(fd) => fd,
            Err(err) => match io_meaning(&err) {
                Io::Vanished => return Ok(Observed::Absent),
                Io::Unreadable => return Ok(Observed::Unreadable),
                Io::Other => return Err(err),
            },
        };
        Ok(Observed::of(&File::from(fd).metadata()?))
    }

    /// Opens a regular file for hashing; its stat is taken from the same fd.
    pub fn open_file(&self, relative: &Path) -> io::Result<(File, FileStat)> {
        let file = File::from(self.open_beneath(relative, libc::O_RDONLY | libc::O_NONBLOCK)?);
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, NotRegular));
        }
        Ok((file, FileStat::from_metadata(&meta)))
    }

    /// Opens the directory `relative` ("" is the root) for `*at` calls in it, never following a
    /// symlink on the way (`ELOOP`, or `ENOTDIR` when one stands at its end).
    pub fn open_dir(&self, relative: &Path) -> io::Result<OwnedFd> {
        let relative = match relative.as_os_str().is_empty() {
            true => Path::new("."),
            false => relative,
        };
        self.open_beneath(relative, libc::O_RDONLY | libc::O_DIRECTORY)
    }

    /// Every entry below `relative` (a directory), depth first, as relative paths with what they
    /// are. Symlinked directories are not entered; one that may not be listed is visited again
    /// as `Unreadable`, and the walk goes on.
    pub fn walk(&self, relative: &Path, visit: &mut dyn FnMut(&Path, Observed)) -> io::Result<()> {
        let fd = self.open_beneath(
            if relative.as_os_str().is_empty() {
                Path::new(".")
            } else {
                relative
            },
            libc::O_RDONLY | libc::O_DIRECTORY,
        )?;
        // Read the directory through its fd (via /proc) so a rename racing the walk cannot
        // redirect it outside the tree.
        let entries = std::fs::read_dir(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
        for entry in entries {
            let entry = entry?;
            let child = relative.join(entry.file_name());
            // Too long to name whole (PATH_MAX): not entered; visited as something that is not a
            // regular file, for the caller to report.
            if child.as_os_str().len() >= libc::PATH_MAX as usize {
                visit(&child, Observed::Special);
                continue;
            }
            // An lstat of the name in the directory read (one syscall, never following a link),
            // rather than a walk of the whole path from the root.
            let observed = match entry.metadata() {
                Ok(meta) => Observed::of(&meta),
                Err(err) if err.raw_os_error() == Some(libc::ENOENT) => Observed::Absent,
                Err(err) => return Err(err),
            };
            match observed {
                Observed::Directory => {
                    visit(&child, Observed::Directory);
                    // Gone, or no longer a directory at this path (replaced by a symlink, say)
                    // since it was listed: there is nothing below this path to walk.
                    if let Err(err) = self.walk(&child, visit) {
                        match io_meaning(&err) {
                            Io::Vanished => {}
                            Io::Unreadable => visit(&child, Observed::Unreadable),
                            Io::Other => return Err(err),
                        }
                    }
                }
                observed => visit(&child, observed),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observe_never_follows_symlinks() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"x").unwrap();
        let root = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("escape")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("link"))
            .unwrap();
        std::fs::create_dir(root.path().join("d")).unwrap();
        std::fs::write(root.path().join("d/f"), b"hello").unwrap();
        let backing = Backing::open(root.path()).unwrap();

        assert_eq!(
            backing.observe(Path::new("escape/secret")).unwrap(),
            Observed::Absent
        );
        assert!(backing.open_file(Path::new("escape/secret")).is_err());
        assert!(backing.open_file(Path::new("link")).is_err());
        assert_eq!(
            backing.observe(Path::new("link")).unwrap(),
            Observed::Special
        );
        assert_eq!(
            backing.observe(Path::new("../x")).unwrap(),
            Observed::Absent
        );
        assert!(matches!(
            backing.observe(Path::new("d/f")).unwrap(),
            Observed::File(FileStat { size: 5, .. })
        ));

        let mut seen = Vec::new();
        backing
            .walk(Path::new(""), &mut |p, o| seen.push((p.to_path_buf(), o)))
            .unwrap();
        seen.sort_by(|a, b| a.0.cmp(&b.0));
        let names: Vec<_> = seen.iter().map(|(p, _)| p.to_str().unwrap()).collect();
        assert_eq!(names, ["d", "d/f", "escape", "link"]);
    }

    /// A directory swapped for a symlink between being listed and being entered (behind the
    /// mount's back) ends neither the walk nor the reconcile pass that runs it.
    #[test]
    fn a_directory_replaced_by_a_symlink_during_the_walk_is_skipped() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"x").unwrap();
        let root = tempfile::tempdir().unwrap();
        for dir in ["a", "b"] {
            std::fs::create_dir(root.path().join(dir)).unwrap();
            std::fs::write(root.path().join(dir).join("f"), b"y").unwrap();
        }
        let backing = Backing::open(root.path()).unwrap();
        let mut seen = Vec::new();
        backing
            .walk(Path::new(""), &mut |p, o| {
                if p == Path::new("a") && o == Observed::Directory {
                    std::fs::rename(root.path().join("a"), root.path().join("moved")).unwrap();
                    std::os::unix::fs::symlink(outside.path(), root.path().join("a")).unwrap();
                }
                seen.push(p.to_str().unwrap().to_string());
            })
            .unwrap();
        assert!(seen.contains(&"b/f".to_string()), "{seen:?}");
        assert!(!seen.iter().any(|p| p.starts_with("a/")), "{seen:?}");
    }
}

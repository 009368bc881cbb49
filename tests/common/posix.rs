//! POSIX calls by path that report `Ok(value)` or `Err(errno)`, and a snapshot of a directory
//! tree, for comparing a plain directory with a mount operation by operation.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// A call's result: its return value (normalized where it is a descriptor) or its errno.
pub type Outcome = Result<i64, i32>;

fn c(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).unwrap()
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap()
}

fn outcome(ret: i64) -> Outcome {
    if ret < 0 {
        Err(errno())
    } else {
        Ok(ret)
    }
}

/// A descriptor that closes on drop.
pub struct Fd(pub i32);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: the descriptor is owned by this `Fd` and closed only here, once.
        unsafe { libc::close(self.0) };
    }
}

pub fn open(path: &Path, flags: i32, mode: u32) -> Result<Fd, i32> {
    // SAFETY: the path is a NUL-terminated string that outlives the call; the new descriptor is owned by the returned `Fd`.
    let fd = unsafe { libc::open(c(path).as_ptr(), flags | libc::O_CLOEXEC, mode) };
    if fd < 0 {
        Err(errno())
    } else {
        Ok(Fd(fd))
    }
}

/// open + close, recording only success or errno.
pub fn touch(path: &Path, flags: i32, mode: u32) -> Outcome {
    open(path, flags, mode).map(|_| 0)
}

pub fn pwrite(fd: &Fd, data: &[u8], offset: i64) -> Outcome {
    // SAFETY: `data` is valid for reads of its length for the call; the descriptor is open.
    outcome(unsafe { libc::pwrite(fd.0, data.as_ptr().cast(), data.len(), offset) } as i64)
}

pub fn write(fd: &Fd, data: &[u8]) -> Outcome {
    // SAFETY: `data` is valid for reads of its length for the call; the descriptor is open.
    outcome(unsafe { libc::write(fd.0, data.as_ptr().cast(), data.len()) } as i64)
}

pub fn pread(fd: &Fd, len: usize, offset: i64) -> Result<Vec<u8>, i32> {
    let mut buf = vec![0u8; len];
    // SAFETY: `buf` is valid for writes of `len` bytes for the call; the descriptor is open.
    let n = unsafe { libc::pread(fd.0, buf.as_mut_ptr().cast(), len, offset) };
    if n < 0 {
        return Err(errno());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// Opens with `flags`, writes `data` at `offset` (or appends with O_APPEND), closes.
pub fn write_file(path: &Path, flags: i32, data: &[u8], offset: i64) -> Outcome {
    let fd = open(path, flags, 0o644)?;
    if flags & libc::O_APPEND != 0 {
        write(&fd, data)
    } else {
        pwrite(&fd, data, offset)
    }
}

pub fn read_file(path: &Path) -> Result<Vec<u8>, i32> {
    std::fs::read(path).map_err(|e| e.raw_os_error().unwrap())
}

pub fn truncate(path: &Path, len: i64) -> Outcome {
    // SAFETY: the path is a NUL-terminated string that outlives the call.
    outcome(unsafe { libc::truncate(c(path).as_ptr(), len) } as i64)
}

pub fn ftruncate(fd: &Fd, len: i64) -> Outcome {
    // SAFETY: no memory is passed; the descriptor is open.
    outcome(unsafe { libc::ftruncate(fd.0, len) } as i64)
}

pub fn rename(from: &Path, to: &Path, flags: u32) -> Outcome {
    // SAFETY: both paths are NUL-terminated strings that outlive the call.
    let ret = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            c(from).as_ptr(),
            libc::AT_FDCWD,
            c(to).as_ptr(),
            flags,
        )
    };
    outcome(ret as i64)
}

pub fn link(from: &Path, to: &Path) -> Outcome {
    // SAFETY: both paths are NUL-terminated strings that outlive the call.
    outcome(unsafe { libc::link(c(from).as_ptr(), c(to).as_ptr()) } as i64)
}

pub fn symlink(target: &OsStr, path: &Path) -> Outcome {
    let target = CString::new(target.as_bytes()).unwrap();
    // SAFETY: both strings are NUL-terminated and outlive the call.
    outcome(unsafe { libc::symlink(target.as_ptr(), c(path).as_ptr()) } as i64)
}

pub fn readlink(path: &Path) -> Result<OsString, i32> {
    std::fs::read_link(path)
        .map(PathBuf::into_os_string)
        .map_err(|e| e.raw_os_error().unwrap())
}

pub fn unlink(path: &Path) -> Outcome {
    // SAFETY: the path is a NUL-terminated string that outlives the call.
    outcome(unsafe { libc::unlink(c(path).as_ptr()) } as i64)
}

pub fn mkdir(path: &Path, mode: u32) -> Outcome {
    // SAFETY: the path is a NUL-terminated string that outlives the call.
    outcome(unsafe { libc::mkdir(c(path).as_ptr(), mode) } as i64)
}

pub fn rmdir(path: &Path) -> Outcome {
    // SAFETY: the path is a NUL-terminated string that outlives the call.
    outcome(unsafe { libc::rmdir(c(path).as_ptr()) } as i64)
}

pub fn mkfifo(path: &Path, mode: u32) -> Outcome {
    // SAFETY: the path is a NUL-terminated string that outlives the call.
    outcome(unsafe { libc::mkfifo(c(path).as_ptr(), mode) } as i64)
}

pub fn chmod(path: &Path, mode: u32) -> Outcome {
    // SAFETY: the path is a NUL-terminated string that outlives the call.
    outcome(unsafe { libc::chmod(c(path).as_ptr(), mode) } as i64)
}

/// utimensat with explicit times (seconds), or UTIME_NOW / UTIME_OMIT via `None`/negative.
pub fn set_times(path: &Path, atime: Option<i64>, mtime: Option<i64>) -> Outcome {
    let spec = |t: Option<i64>| match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(t) if t < 0 => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(t) => libc::timespec {
            tv_sec: t,
            tv_nsec: 0,
        },
    };
    let times = [spec(atime), spec(mtime)];
    // SAFETY: the path is a NUL-terminated string that outlives the call, and `times` holds the two timespecs utimensat reads.
    outcome(unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c(path).as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    } as i64)
}

pub fn setxattr(path: &Path, name: &str, value: &[u8], flags: i32) -> Outcome {
    let name = CString::new(name).unwrap();
    // SAFETY: path and name are NUL-terminated strings and `value` is valid for reads of its length; all outlive the call.
    outcome(unsafe {
        libc::lsetxattr(
            c(path).as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    } as i64)
}

/// lgetxattr into a buffer of `size` bytes (0 asks for the size).
pub fn getxattr(path: &Path, name: &str, size: usize) -> Result<Vec<u8>, i32> {
    let name = CString::new(name).unwrap();
    let mut buf = vec![0u8; size];
    // SAFETY: path and name are NUL-terminated strings and `buf` is valid for writes of `size` bytes; all outlive the call.
    let n = unsafe {
        libc::lgetxattr(
            c(path).as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            size,
        )
    };
    if n < 0 {
        return Err(errno());
    }
    if size == 0 {
        return Ok(n.to_string().into_bytes());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

pub fn removexattr(path: &Path, name: &str) -> Outcome {
    let name = CString::new(name).unwrap();
    // SAFETY: path and name are NUL-terminated strings that outlive the call.
    outcome(unsafe { libc::lremovexattr(c(path).as_ptr(), name.as_ptr()) } as i64)
}

/// The names listed by llistxattr, sorted.
pub fn listxattr(path: &Path) -> Result<Vec<String>, i32> {
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: the path is NUL-terminated and `buf` valid for writes of its length; both outlive the call.
    let n = unsafe { libc::llistxattr(c(path).as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(errno());
    }
    let mut names: Vec<String> = buf[..n as usize]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    names.sort();
    Ok(names)
}

pub fn lseek(fd: &Fd, offset: i64, whence: i32) -> Outcome {
    // SAFETY: no memory is passed; the descriptor is open.
    outcome(unsafe { libc::lseek(fd.0, offset, whence) })
}

pub fn fallocate(fd: &Fd, mode: i32, offset: i64, len: i64) -> Outcome {
    // SAFETY: no memory is passed; the descriptor is open.
    outcome(unsafe { libc::fallocate(fd.0, mode, offset, len) } as i64)
}

pub fn copy_file_range(
    from: &Fd,
    from_offset: i64,
    to: &Fd,
    to_offset: i64,
    len: usize,
) -> Outcome {
    let (mut from_offset, mut to_offset) = (from_offset, to_offset);
    outcome(
        // SAFETY: both descriptors are open and the two offsets are live locals the call may update.
        unsafe { libc::copy_file_range(from.0, &mut from_offset, to.0, &mut to_offset, len, 0) }
            as i64,
    )
}

/// What the comparison sees of one directory entry.
#[derive(Debug, PartialEq, Eq)]
pub struct Node {
    pub kind: &'static str,
    pub mode: u32,
    pub nlink: u64,
    /// Regular files: size and content; symlinks: the target.
    pub size: u64,
    pub content: Vec<u8>,
    /// user.* extended attributes.
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

/// Every entry below `root` by relative path (not following symlinks).
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut tree = BTreeMap::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        for entry in std::fs::read_dir(root.join(&rel)).unwrap() {
            let entry = entry.unwrap();
            let rel = rel.join(entry.file_name());
            let path = root.join(&rel);
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let file_type = meta.file_type();
            let (kind, size, content) = if file_type.is_dir() {
                pending.push(rel.clone());
                ("dir", 0, Vec::new())
            } else if file_type.is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                ("symlink", meta.len(), target.into_os_string().into_vec())
            } else if file_type.is_file() {
                ("file", meta.len(), std::fs::read(&path).unwrap())
            } else if file_type.is_fifo() {
                ("fifo", 0, Vec::new())
            } else {
                ("other", 0, Vec::new())
            };
            let xattrs = listxattr(&path)
                .unwrap()
                .into_iter()
                .filter(|name| name.starts_with("user."))
                .map(|name| {
                    let value = getxattr(&path, &name, 64 * 1024).unwrap();
                    (name, value)
                })
                .collect();
            tree.insert(
                rel,
                Node {
                    kind,
                    mode: meta.mode() & 0o7777,
                    nlink: meta.nlink(),
                    size,
                    content,
                    xattrs,
                },
            );
        }
    }
    tree
}

//! POSIX calls by path that report `Ok(value)` or `Err(errno)`, and a snapshot of a directory
//! tree, for comparing a plain directory with a mount operation by operation.

use rustix::fs::{AtFlags, Mode, OFlags, CWD};
use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// A call's result: its return value (normalized where it is a descriptor) or its errno.
pub type Outcome = Result<i64, i32>;

fn c(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).unwrap()
}

fn errno(error: rustix::io::Errno) -> i32 {
    error.raw_os_error()
}

/// A call that answers nothing but success, as 0.
fn done(result: rustix::io::Result<()>) -> Outcome {
    result.map(|()| 0).map_err(errno)
}

/// A byte count or an offset.
fn count<N: TryInto<i64, Error: std::fmt::Debug>>(result: rustix::io::Result<N>) -> Outcome {
    result
        .map(|n| n.try_into().expect("fits in an i64"))
        .map_err(errno)
}

/// Permission bits as the kernel takes them, every bit passed on.
fn mode(mode: u32) -> Mode {
    Mode::from_bits_retain(mode)
}

/// `flags` are libc's `O_*`, every bit passed on; the descriptor closes on drop.
pub fn open(path: &Path, flags: i32, mode_bits: u32) -> Result<OwnedFd, i32> {
    let flags = OFlags::from_bits_retain(flags as u32) | OFlags::CLOEXEC;
    rustix::fs::open(c(path).as_c_str(), flags, mode(mode_bits)).map_err(errno)
}

/// open + close, recording only success or errno.
pub fn touch(path: &Path, flags: i32, mode: u32) -> Outcome {
    open(path, flags, mode).map(|_| 0)
}

pub fn pwrite(fd: &OwnedFd, data: &[u8], offset: i64) -> Outcome {
    count(rustix::io::pwrite(fd, data, offset as u64))
}

pub fn write(fd: &OwnedFd, data: &[u8]) -> Outcome {
    count(rustix::io::write(fd, data))
}

pub fn pread(fd: &OwnedFd, len: usize, offset: i64) -> Result<Vec<u8>, i32> {
    let mut buf = vec![0u8; len];
    let n = rustix::io::pread(fd, &mut buf[..], offset as u64).map_err(errno)?;
    buf.truncate(n);
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
    // rustix has no truncate(2) by path.
    // SAFETY: the path is a NUL-terminated string that outlives the call.
    match unsafe { libc::truncate(c(path).as_ptr(), len) } {
        0 => Ok(0),
        _ => Err(std::io::Error::last_os_error().raw_os_error().unwrap()),
    }
}

pub fn ftruncate(fd: &OwnedFd, len: i64) -> Outcome {
    done(rustix::fs::ftruncate(fd, len as u64))
}

pub fn rename(from: &Path, to: &Path, flags: u32) -> Outcome {
    let flags = rustix::fs::RenameFlags::from_bits_retain(flags);
    done(rustix::fs::renameat_with(
        CWD,
        c(from).as_c_str(),
        CWD,
        c(to).as_c_str(),
        flags,
    ))
}

pub fn link(from: &Path, to: &Path) -> Outcome {
    done(rustix::fs::link(c(from).as_c_str(), c(to).as_c_str()))
}

pub fn symlink(target: &OsStr, path: &Path) -> Outcome {
    let target = CString::new(target.as_bytes()).unwrap();
    done(rustix::fs::symlink(target.as_c_str(), c(path).as_c_str()))
}

pub fn readlink(path: &Path) -> Result<OsString, i32> {
    std::fs::read_link(path)
        .map(PathBuf::into_os_string)
        .map_err(|e| e.raw_os_error().unwrap())
}

pub fn unlink(path: &Path) -> Outcome {
    done(rustix::fs::unlink(c(path).as_c_str()))
}

pub fn mkdir(path: &Path, mode_bits: u32) -> Outcome {
    done(rustix::fs::mkdir(c(path).as_c_str(), mode(mode_bits)))
}

pub fn rmdir(path: &Path) -> Outcome {
    done(rustix::fs::rmdir(c(path).as_c_str()))
}

/// mkfifo(3) is mknod(2) with S_IFIFO.
pub fn mkfifo(path: &Path, mode_bits: u32) -> Outcome {
    done(rustix::fs::mknodat(
        CWD,
        c(path).as_c_str(),
        rustix::fs::FileType::Fifo,
        mode(mode_bits),
        0,
    ))
}

pub fn chmod(path: &Path, mode_bits: u32) -> Outcome {
    done(rustix::fs::chmod(c(path).as_c_str(), mode(mode_bits)))
}

/// utimensat with explicit times (seconds), or UTIME_NOW / UTIME_OMIT via `None`/negative.
pub fn set_times(path: &Path, atime: Option<i64>, mtime: Option<i64>) -> Outcome {
    let spec = |t: Option<i64>| match t {
        None => rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_OMIT,
        },
        Some(t) if t < 0 => rustix::fs::Timespec {
            tv_sec: 0,
            tv_nsec: rustix::fs::UTIME_NOW,
        },
        Some(t) => rustix::fs::Timespec {
            tv_sec: t,
            tv_nsec: 0,
        },
    };
    let times = rustix::fs::Timestamps {
        last_access: spec(atime),
        last_modification: spec(mtime),
    };
    done(rustix::fs::utimensat(
        CWD,
        c(path).as_c_str(),
        &times,
        AtFlags::SYMLINK_NOFOLLOW,
    ))
}

/// `flags` are setxattr(2)'s, every bit passed on.
pub fn setxattr(path: &Path, name: &str, value: &[u8], flags: i32) -> Outcome {
    let name = CString::new(name).unwrap();
    let flags = rustix::fs::XattrFlags::from_bits_retain(flags as u32);
    done(rustix::fs::lsetxattr(
        c(path).as_c_str(),
        name.as_c_str(),
        value,
        flags,
    ))
}

/// lgetxattr into a buffer of `size` bytes (0 asks for the size).
pub fn getxattr(path: &Path, name: &str, size: usize) -> Result<Vec<u8>, i32> {
    let (path, name) = (c(path), CString::new(name).unwrap());
    if size == 0 {
        let n = rustix::fs::lgetxattr_query(path.as_c_str(), name.as_c_str()).map_err(errno)?;
        return Ok(n.to_string().into_bytes());
    }
    let mut buf = vec![0u8; size];
    let n = rustix::fs::lgetxattr(path.as_c_str(), name.as_c_str(), &mut buf[..]).map_err(errno)?;
    buf.truncate(n);
    Ok(buf)
}

pub fn removexattr(path: &Path, name: &str) -> Outcome {
    let name = CString::new(name).unwrap();
    done(rustix::fs::lremovexattr(
        c(path).as_c_str(),
        name.as_c_str(),
    ))
}

/// The names listed by llistxattr, sorted.
pub fn listxattr(path: &Path) -> Result<Vec<String>, i32> {
    let mut buf = vec![0u8; 64 * 1024];
    let n = rustix::fs::llistxattr(c(path).as_c_str(), &mut buf[..]).map_err(errno)?;
    let mut names: Vec<String> = buf[..n]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    names.sort();
    Ok(names)
}

/// lseek with libc's `whence` (`SEEK_*`).
pub fn lseek(fd: &OwnedFd, offset: i64, whence: i32) -> Outcome {
    use rustix::fs::SeekFrom;
    // A negative offset is passed on as it is (rustix casts it back), for the kernel's answer.
    let position = match whence {
        libc::SEEK_SET => SeekFrom::Start(offset as u64),
        libc::SEEK_CUR => SeekFrom::Current(offset),
        libc::SEEK_END => SeekFrom::End(offset),
        libc::SEEK_DATA => SeekFrom::Data(offset as u64),
        libc::SEEK_HOLE => SeekFrom::Hole(offset as u64),
        _ => return Err(libc::EINVAL),
    };
    count(rustix::fs::seek(fd, position))
}

/// `mode` is fallocate(2)'s (`FALLOC_FL_*`), every bit passed on.
pub fn fallocate(fd: &OwnedFd, mode: i32, offset: i64, len: i64) -> Outcome {
    let mode = rustix::fs::FallocateFlags::from_bits_retain(mode as u32);
    done(rustix::fs::fallocate(fd, mode, offset as u64, len as u64))
}

pub fn copy_file_range(
    from: &OwnedFd,
    from_offset: i64,
    to: &OwnedFd,
    to_offset: i64,
    len: usize,
) -> Outcome {
    let (mut from_offset, mut to_offset) = (from_offset as u64, to_offset as u64);
    count(rustix::fs::copy_file_range(
        from,
        Some(&mut from_offset),
        to,
        Some(&mut to_offset),
        len,
    ))
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

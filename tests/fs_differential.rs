//! Real mounts: the same POSIX sequences on a plain directory and through maxlofs must give the
//! same results and the same trees; events, inode numbers, the status attribute, symlink safety
//! and real tools are checked too. Every differential runs with kernel passthrough and with
//! daemon I/O.

mod common;

use common::posix::{self, snapshot, Outcome};
use common::service::run;
use common::{mount_or_skip, mount_or_skip_with, DataPath};
use maxlofs_fs::{Caller, Event, EventSink, MountStatus, Passthrough, StatusSource, STATUS_XATTR};
use std::ffi::OsStr;
use std::fmt::Debug;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use libc::{O_APPEND, O_CREAT, O_EXCL, O_RDONLY, O_RDWR, O_TRUNC, O_WRONLY};

/// Labelled results of one run of a scenario.
#[derive(Default)]
struct Log(Vec<String>);

impl Log {
    fn rec(&mut self, label: &str, value: impl Debug) {
        self.0.push(format!("{label}: {value:?}"));
    }
}

/// Runs `scenario` in a plain temp dir, then through a mount for each data path, and compares
/// every recorded result, the tree seen through the mount, and the backing tree.
fn differential(test: &str, scenario: fn(&Path, &mut Log)) {
    let native = tempfile::tempdir().unwrap();
    let mut expected = Log::default();
    scenario(native.path(), &mut expected);
    let expected_tree = snapshot(native.path());
    for data_path in DataPath::ALL {
        let Some(mount) = data_path.mount_or_skip(test) else {
            return;
        };
        let mut actual = Log::default();
        scenario(&mount.mountpoint, &mut actual);
        for (want, got) in expected.0.iter().zip(&actual.0) {
            assert_eq!(want, got, "{test} via {data_path:?}");
        }
        assert_eq!(expected.0.len(), actual.0.len());
        assert_eq!(expected_tree, snapshot(&mount.mountpoint), "{data_path:?}");
        assert_eq!(
            expected_tree,
            snapshot(&mount.backing),
            "{data_path:?}: backing"
        );
        mount.unmount();
    }
}

fn write_new(path: &Path, data: &[u8]) -> Outcome {
    posix::write_file(path, O_CREAT | O_WRONLY | O_TRUNC, data, 0)
}

fn files_and_errors(root: &Path, log: &mut Log) {
    let p = |name: &str| root.join(name);
    log.rec("create", posix::touch(&p("a"), O_CREAT | O_WRONLY, 0o640));
    log.rec(
        "create O_EXCL existing",
        posix::touch(&p("a"), O_CREAT | O_EXCL | O_WRONLY, 0o644),
    );
    log.rec(
        "create O_EXCL new",
        posix::touch(&p("b"), O_CREAT | O_EXCL | O_RDWR, 0o600),
    );
    log.rec(
        "write",
        posix::write_file(&p("a"), O_WRONLY, b"hello world", 0),
    );
    log.rec(
        "append",
        posix::write_file(&p("a"), O_WRONLY | O_APPEND, b"!!", 0),
    );
    log.rec("overwrite", posix::write_file(&p("a"), O_WRONLY, b"W", 6));
    log.rec("read", posix::read_file(&p("a")));
    log.rec("truncate shorter", posix::truncate(&p("a"), 5));
    log.rec("truncate longer", posix::truncate(&p("a"), 8));
    log.rec("read", posix::read_file(&p("a")));
    log.rec(
        "O_TRUNC",
        posix::write_file(&p("b"), O_WRONLY | O_TRUNC, b"new", 0),
    );
    let fd = posix::open(&p("b"), O_RDWR, 0).unwrap();
    log.rec("ftruncate", posix::ftruncate(&fd, 2));
    log.rec("pread after ftruncate", posix::pread(&fd, 10, 0));
    drop(fd);
    log.rec("open missing", posix::touch(&p("missing"), O_RDONLY, 0));
    log.rec("mkdir", posix::mkdir(&p("d"), 0o750));
    log.rec("mkdir existing", posix::mkdir(&p("d"), 0o755));
    log.rec("open dir for writing", posix::touch(&p("d"), O_WRONLY, 0));
    log.rec("file as dir", posix::touch(&p("a/x"), O_RDONLY, 0));
    log.rec("mkdir under file", posix::mkdir(&p("a/x"), 0o755));
    log.rec("create in dir", write_new(&p("d/f"), b"in d"));
    log.rec("rmdir non-empty", posix::rmdir(&p("d")));
    log.rec("unlink dir", posix::unlink(&p("d")));
    log.rec("rmdir file", posix::rmdir(&p("a")));
    log.rec("unlink missing", posix::unlink(&p("missing")));
    log.rec("rename missing", posix::rename(&p("missing"), &p("z"), 0));
    let long = "x".repeat(255);
    let too_long = "y".repeat(256);
    log.rec("255-byte name", write_new(&p(&long), b"long"));
    log.rec("255-byte read", posix::read_file(&p(&long)));
    log.rec(
        "256-byte create",
        posix::touch(&p(&too_long), O_CREAT | O_WRONLY, 0o644),
    );
    log.rec("256-byte mkdir", posix::mkdir(&p(&too_long), 0o755));
    log.rec("256-byte open", posix::read_file(&p(&too_long)));
    let latin1 = root.join(OsStr::from_bytes(b"caf\xe9-\xff"));
    let other = root.join(OsStr::from_bytes(b"\xfe\xfd"));
    log.rec("non-UTF-8 create", write_new(&latin1, b"bytes"));
    log.rec("non-UTF-8 read", posix::read_file(&latin1));
    log.rec("non-UTF-8 rename", posix::rename(&latin1, &other, 0));
    log.rec(
        "non-UTF-8 mkdir",
        posix::mkdir(&root.join(OsStr::from_bytes(b"d\x80")), 0o755),
    );
    log.rec("mkfifo", posix::mkfifo(&p("fifo"), 0o600));
    log.rec("mkfifo existing", posix::mkfifo(&p("fifo"), 0o600));
    log.rec("chmod", posix::chmod(&p("a"), 0o604));
    log.rec("chmod dir", posix::chmod(&p("d"), 0o700));
    log.rec("chmod missing", posix::chmod(&p("missing"), 0o600));
    log.rec(
        "set times",
        posix::set_times(&p("a"), Some(1_000_000), Some(2_000_000)),
    );
    log.rec(
        "mtime",
        std::fs::symlink_metadata(p("a")).map(|m| m.mtime()).ok(),
    );
    log.rec(
        "omit atime, mtime now",
        posix::set_times(&p("a"), None, Some(-1)),
    );
    log.rec(
        "times of missing",
        posix::set_times(&p("missing"), Some(1), Some(1)),
    );
}

fn renames(root: &Path, log: &mut Log) {
    let p = |name: &str| root.join(name);
    write_new(&p("f1"), b"one").unwrap();
    write_new(&p("f2"), b"two").unwrap();
    for dir in ["d1", "d2", "d3", "d4"] {
        posix::mkdir(&p(dir), 0o755).unwrap();
    }
    write_new(&p("d2/x"), b"x").unwrap();
    log.rec("over file", posix::rename(&p("f1"), &p("f2"), 0));
    log.rec("file over dir", posix::rename(&p("f2"), &p("d1"), 0));
    log.rec("dir over file", posix::rename(&p("d1"), &p("f2"), 0));
    log.rec(
        "dir over non-empty dir",
        posix::rename(&p("d3"), &p("d2"), 0),
    );
    log.rec("dir over empty dir", posix::rename(&p("d3"), &p("d1"), 0));
    log.rec("mkdir sub", posix::mkdir(&p("d2/sub"), 0o755));
    log.rec(
        "dir into itself",
        posix::rename(&p("d2"), &p("d2/sub/d2"), 0),
    );
    log.rec(
        "noreplace existing",
        posix::rename(&p("f2"), &p("d2/x"), libc::RENAME_NOREPLACE),
    );
    log.rec(
        "noreplace new",
        posix::rename(&p("f2"), &p("g"), libc::RENAME_NOREPLACE),
    );
    log.rec(
        "exchange file/dir",
        posix::rename(&p("g"), &p("d2"), libc::RENAME_EXCHANGE),
    );
    log.rec("exchanged content", posix::read_file(&p("d2")));
    log.rec("exchanged dir", posix::read_file(&p("g/x")));
    log.rec(
        "exchange missing",
        posix::rename(&p("g"), &p("nope"), libc::RENAME_EXCHANGE),
    );
    log.rec(
        "dir with contents",
        posix::rename(&p("g"), &p("d4/moved"), 0),
    );
    log.rec("read moved", posix::read_file(&p("d4/moved/x")));
    log.rec("link", posix::link(&p("d2"), &p("hard")));
    log.rec("onto own hard link", posix::rename(&p("d2"), &p("hard"), 0));
    log.rec("onto itself", posix::rename(&p("hard"), &p("hard"), 0));
    log.rec("missing parent", posix::rename(&p("hard"), &p("none/x"), 0));
}

fn links_symlinks_xattrs(root: &Path, log: &mut Log) {
    let p = |name: &str| root.join(name);
    write_new(&p("f"), b"content").unwrap();
    posix::mkdir(&p("d"), 0o755).unwrap();
    log.rec("link", posix::link(&p("f"), &p("h")));
    log.rec("link existing", posix::link(&p("f"), &p("h")));
    log.rec("link missing", posix::link(&p("missing"), &p("h2")));
    log.rec("link dir", posix::link(&p("d"), &p("d2")));
    log.rec("nlink", std::fs::metadata(p("h")).map(|m| m.nlink()).ok());
    log.rec("symlink", posix::symlink(OsStr::new("f"), &p("s")));
    log.rec(
        "dangling",
        posix::symlink(OsStr::new("/nonexistent/target"), &p("dangling")),
    );
    log.rec("symlink existing", posix::symlink(OsStr::new("x"), &p("s")));
    log.rec("readlink", posix::readlink(&p("s")));
    log.rec("readlink dangling", posix::readlink(&p("dangling")));
    log.rec("readlink file", posix::readlink(&p("f")));
    log.rec("read through", posix::read_file(&p("s")));
    log.rec(
        "write through",
        posix::write_file(&p("s"), O_WRONLY | O_APPEND, b"+", 0),
    );
    log.rec("open dangling", posix::touch(&p("dangling"), O_RDONLY, 0));
    log.rec(
        "O_NOFOLLOW file",
        posix::touch(&p("f"), O_RDONLY | libc::O_NOFOLLOW, 0),
    );
    log.rec(
        "O_NOFOLLOW symlink",
        posix::touch(&p("s"), O_RDONLY | libc::O_NOFOLLOW, 0),
    );
    log.rec("unlink link", posix::unlink(&p("h")));
    log.rec(
        "nlink after",
        std::fs::metadata(p("f")).map(|m| m.nlink()).ok(),
    );
    let f = p("f");
    log.rec("setxattr", posix::setxattr(&f, "user.a", b"1", 0));
    log.rec(
        "create existing",
        posix::setxattr(&f, "user.a", b"2", libc::XATTR_CREATE),
    );
    log.rec(
        "replace missing",
        posix::setxattr(&f, "user.b", b"2", libc::XATTR_REPLACE),
    );
    log.rec(
        "replace",
        posix::setxattr(&f, "user.a", b"long value", libc::XATTR_REPLACE),
    );
    log.rec("get", posix::getxattr(&f, "user.a", 256));
    log.rec("get size", posix::getxattr(&f, "user.a", 0));
    log.rec("get too small", posix::getxattr(&f, "user.a", 3));
    log.rec("get missing", posix::getxattr(&f, "user.missing", 256));
    log.rec(
        "big value",
        posix::setxattr(&f, "user.big", &[7u8; 4000], 0),
    );
    log.rec("empty value", posix::setxattr(&f, "user.empty", b"", 0));
    log.rec("list", posix::listxattr(&f));
    log.rec("remove", posix::removexattr(&f, "user.big"));
    log.rec("remove again", posix::removexattr(&f, "user.big"));
    log.rec("dir xattr", posix::setxattr(&p("d"), "user.dir", b"yes", 0));
    log.rec("symlink set", posix::setxattr(&p("s"), "user.x", b"1", 0));
    log.rec("symlink get", posix::getxattr(&p("s"), "user.a", 256));
    log.rec("fifo", posix::mkfifo(&p("fifo"), 0o644));
    log.rec("fifo xattr", posix::setxattr(&p("fifo"), "user.f", b"1", 0));
    log.rec(
        "missing file",
        posix::setxattr(&p("missing"), "user.a", b"1", 0),
    );
}

fn sparse_seek_fallocate_copy(root: &Path, log: &mut Log) {
    const MIB: i64 = 1 << 20;
    let fd = posix::open(&root.join("sparse"), O_CREAT | O_RDWR, 0o644).unwrap();
    log.rec("write far", posix::pwrite(&fd, b"data", MIB));
    log.rec("write head", posix::pwrite(&fd, b"head", 0));
    log.rec("fsync", rustix::fs::fsync(&fd));
    log.rec("data at 0", posix::lseek(&fd, 0, libc::SEEK_DATA));
    log.rec("hole after head", posix::lseek(&fd, 0, libc::SEEK_HOLE));
    log.rec("data after hole", posix::lseek(&fd, 8192, libc::SEEK_DATA));
    log.rec("hole at end", posix::lseek(&fd, MIB, libc::SEEK_HOLE));
    log.rec("data past end", posix::lseek(&fd, 2 * MIB, libc::SEEK_DATA));
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    log.rec("punch head", posix::fallocate(&fd, punch, 0, 4096));
    log.rec("data after punch", posix::lseek(&fd, 0, libc::SEEK_DATA));
    log.rec("read punched", posix::pread(&fd, 8, 0));
    log.rec("allocate beyond", posix::fallocate(&fd, 0, 2 * MIB, 4096));
    log.rec(
        "size",
        std::fs::metadata(root.join("sparse")).map(|m| m.len()).ok(),
    );
    log.rec(
        "keep size",
        posix::fallocate(&fd, libc::FALLOC_FL_KEEP_SIZE, 3 * MIB, 4096),
    );
    let copy = posix::open(&root.join("copy"), O_CREAT | O_RDWR, 0o644).unwrap();
    log.rec(
        "copy_file_range",
        posix::copy_file_range(&fd, MIB, &copy, 10, 4),
    );
    log.rec("copied", posix::pread(&copy, 64, 0));
    log.rec(
        "copy past end",
        posix::copy_file_range(&fd, 4 * MIB, &copy, 0, 4),
    );
}

fn mmap_and_held_descriptors(root: &Path, log: &mut Log) {
    let p = |name: &str| root.join(name);
    write_new(&p("m"), &[b'a'; 8192]).unwrap();
    let fd = posix::open(&p("m"), O_RDWR, 0).unwrap();
    // SAFETY: a shared mapping of the file's first 8,192 bytes (the file has that many), checked for failure, used only as a slice of that length while mapped, and unmapped once.
    unsafe {
        let map = libc::mmap(
            std::ptr::null_mut(),
            8192,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        );
        assert_ne!(map, libc::MAP_FAILED);
        let bytes = std::slice::from_raw_parts_mut(map.cast::<u8>(), 8192);
        bytes[..5].copy_from_slice(b"mmap!");
        bytes[4096..4100].copy_from_slice(b"page");
        log.rec("msync", libc::msync(map, 8192, libc::MS_SYNC));
        libc::munmap(map, 8192);
    }
    drop(fd);
    log.rec(
        "mmap result",
        posix::read_file(&p("m")).map(|d| d[..8].to_vec()),
    );
    log.rec(
        "mmap page 2",
        posix::read_file(&p("m")).map(|d| d[4096..4104].to_vec()),
    );

    let fd = posix::open(&p("g"), O_CREAT | O_RDWR, 0o644).unwrap();
    log.rec("write", posix::pwrite(&fd, b"one", 0));
    log.rec("rename held", posix::rename(&p("g"), &p("h"), 0));
    log.rec("write after rename", posix::pwrite(&fd, b"two", 3));
    log.rec("read new name", posix::read_file(&p("h")));
    log.rec("mkdir", posix::mkdir(&p("dd"), 0o755));
    log.rec("move into dir", posix::rename(&p("h"), &p("dd/h"), 0));
    log.rec("unlink held", posix::unlink(&p("dd/h")));
    log.rec("write after unlink", posix::pwrite(&fd, b"three", 6));
    log.rec("read after unlink", posix::pread(&fd, 64, 0));
    log.rec("nlink", rustix::fs::fstat(&fd).map(|st| st.st_nlink));
    drop(fd);

    posix::mkdir(&p("outer"), 0o755).unwrap();
    let fd = posix::open(&p("outer/f"), O_CREAT | O_WRONLY, 0o644).unwrap();
    log.rec("write in dir", posix::write(&fd, b"before "));
    log.rec("rename dir", posix::rename(&p("outer"), &p("renamed"), 0));
    log.rec("write after dir rename", posix::write(&fd, b"after"));
    drop(fd);
    log.rec("read", posix::read_file(&p("renamed/f")));
}

#[test]
fn differential_files_and_errors() {
    differential("differential_files_and_errors", files_and_errors);
}

#[test]
fn differential_renames() {
    differential("differential_renames", renames);
}

#[test]
fn differential_links_symlinks_xattrs() {
    differential("differential_links_symlinks_xattrs", links_symlinks_xattrs);
}

#[test]
fn differential_sparse_seek_fallocate_copy() {
    differential(
        "differential_sparse_seek_fallocate_copy",
        sparse_seek_fallocate_copy,
    );
}

#[test]
fn differential_mmap_and_held_descriptors() {
    differential(
        "differential_mmap_and_held_descriptors",
        mmap_and_held_descriptors,
    );
}

/// The inode number the mount shows for `file`: the backing one, as events carry it.
fn ino_of(file: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(file).unwrap().ino()
}

fn path(p: &str) -> PathBuf {
    PathBuf::from(p)
}

#[test]
fn content_changes_are_reported_once_per_dirty_period() {
    for data_path in DataPath::ALL {
        let Some(mount) = data_path.mount_or_skip("content_changes") else {
            return;
        };
        let f = mount.mountpoint.join("f");
        let events = &mount.events;
        let changed = || {
            vec![Event::ContentChanged {
                path: path("f"),
                ino: ino_of(&f),
            }]
        };

        write_new(&f, b"hello").unwrap();
        let created = Event::Created { path: path("f") };
        assert_eq!(
            events.take_settled(),
            [vec![created], changed()].concat(),
            "{data_path:?}"
        );

        posix::write_file(&f, O_WRONLY, b"J", 0).unwrap();
        assert_eq!(
            events.take_settled(),
            changed(),
            "{data_path:?}: same-size overwrite"
        );

        posix::read_file(&f).unwrap();
        assert_eq!(events.take_settled(), vec![], "{data_path:?}: a read");
        // The last writer's close is reported even without a change: the engine waits for it.
        posix::touch(&f, O_RDWR, 0).unwrap();
        assert_eq!(
            events.take_settled(),
            vec![Event::WriterClosed {
                path: path("f"),
                ino: ino_of(&f),
            }],
            "{data_path:?}: no write, no change"
        );

        let fd = posix::open(&f, O_WRONLY | O_APPEND, 0).unwrap();
        posix::write(&fd, b" world").unwrap();
        drop(rustix::io::dup(&fd).unwrap());
        posix::write(&fd, b"!").unwrap();
        drop(fd);
        assert_eq!(
            events.take_settled(),
            changed(),
            "{data_path:?}: once for all closes"
        );

        posix::touch(&f, O_WRONLY | O_TRUNC, 0).unwrap();
        assert_eq!(events.take_settled(), changed(), "{data_path:?}: O_TRUNC");

        posix::truncate(&f, 3).unwrap();
        assert_eq!(events.take_settled(), changed(), "{data_path:?}: truncate");

        let fd = posix::open(&f, O_RDWR, 0).unwrap();
        posix::ftruncate(&fd, 1).unwrap();
        drop(fd);
        // Reported at the ftruncate, while open; the close follows as the last writer's.
        let closed = Event::WriterClosed {
            path: path("f"),
            ino: ino_of(&f),
        };
        assert_eq!(
            events.take_settled(),
            [changed(), vec![closed.clone()]].concat(),
            "{data_path:?}: ftruncate, reported once"
        );

        let fd = posix::open(&f, O_RDWR, 0).unwrap();
        posix::fallocate(&fd, 0, 0, 8192).unwrap();
        drop(fd);
        assert_eq!(events.take_settled(), changed(), "{data_path:?}: fallocate");

        posix::set_times(&f, Some(1), Some(2)).unwrap();
        posix::set_times(&f, None, Some(-1)).unwrap();
        let times_set = Event::TimesSet {
            path: path("f"),
            ino: ino_of(&f),
        };
        assert_eq!(
            events.take_settled(),
            vec![times_set.clone(), times_set],
            "{data_path:?}"
        );

        // Not a content change; said, for what the daemon's user may read now.
        posix::chmod(&f, 0o600).unwrap();
        assert_eq!(
            events.take_settled(),
            vec![Event::PermissionsChanged { path: path("f") }],
            "{data_path:?}: chmod is not a content change"
        );
    }
}

/// A file unlinked while open for writing: its writers' last close has no path to report, and
/// says so by inode (`WriterGone`), written to or not, so that no wait for it is left behind.
#[test]
fn the_last_close_of_a_file_unlinked_while_open_is_reported_by_inode() {
    let Some(mount) = mount_or_skip("writer_gone") else {
        return;
    };
    let p = |name: &str| mount.mountpoint.join(name);
    for (name, writes) in [("written.tmp", true), ("untouched.tmp", false)] {
        let fd = posix::open(&p(name), O_CREAT | O_EXCL | O_RDWR, 0o600).unwrap();
        let ino = ino_of(&p(name));
        posix::unlink(&p(name)).unwrap();
        if writes {
            posix::write(&fd, b"scratch").unwrap();
        }
        drop(fd);
        assert_eq!(
            mount.events.take_settled(),
            vec![
                Event::Created { path: path(name) },
                Event::Removed {
                    path: path(name),
                    is_dir: false
                },
                Event::WriterGone { ino },
            ],
            "{name}"
        );
    }
}

#[test]
fn namespace_changes_are_reported() {
    let Some(mount) = mount_or_skip("namespace_changes") else {
        return;
    };
    let p = |name: &str| mount.mountpoint.join(name);
    posix::mkdir(&p("d"), 0o755).unwrap();
    write_new(&p("d/f"), b"").unwrap();
    let f_ino = ino_of(&p("d/f"));
    posix::symlink(OsStr::new("f"), &p("d/s")).unwrap();
    posix::mkfifo(&p("fifo"), 0o644).unwrap();
    posix::rename(&p("d/f"), &p("d/g"), 0).unwrap();
    write_new(&p("other"), b"").unwrap();
    let other_ino = ino_of(&p("other"));
    posix::rename(&p("other"), &p("d/g"), 0).unwrap();
    posix::rename(&p("d/s"), &p("fifo"), libc::RENAME_EXCHANGE).unwrap();
    posix::link(&p("d/g"), &p("hard")).unwrap();
    posix::unlink(&p("hard")).unwrap();
    posix::rename(&p("d"), &p("e"), 0).unwrap();
    posix::unlink(&p("e/g")).unwrap();
    posix::unlink(&p("e/s")).unwrap();
    posix::rmdir(&p("e")).unwrap();
    let weird = mount.mountpoint.join(OsStr::from_bytes(b"\xff\xfe"));
    posix::mkdir(&weird, 0o755).unwrap();
    use Event::*;
    assert_eq!(
        mount.events.take_settled(),
        vec![
            Created { path: path("d") },
            Created { path: path("d/f") },
            WriterClosed {
                path: path("d/f"),
                ino: f_ino,
            },
            Created { path: path("d/s") },
            Created { path: path("fifo") },
            Renamed {
                from: path("d/f"),
                to: path("d/g"),
                is_dir: false
            },
            Created {
                path: path("other")
            },
            WriterClosed {
                path: path("other"),
                ino: other_ino,
            },
            Renamed {
                from: path("other"),
                to: path("d/g"),
                is_dir: false
            },
            Exchanged {
                a: path("d/s"),
                b: path("fifo")
            },
            Linked { path: path("hard") },
            Removed {
                path: path("hard"),
                is_dir: false
            },
            Renamed {
                from: path("d"),
                to: path("e"),
                is_dir: true
            },
            Removed {
                path: path("e/g"),
                is_dir: false
            },
            Removed {
                path: path("e/s"),
                is_dir: false
            },
            Removed {
                path: path("e"),
                is_dir: true
            },
            Created {
                path: PathBuf::from(OsStr::from_bytes(b"\xff\xfe"))
            },
        ]
    );
}

#[test]
fn handle_events_follow_renames_and_links() {
    for data_path in DataPath::ALL {
        let Some(mount) = data_path.mount_or_skip("handle_events_follow_renames") else {
            return;
        };
        let p = |name: &str| mount.mountpoint.join(name);
        std::fs::create_dir_all(p("a/b")).unwrap();
        let fd = posix::open(&p("a/b/f"), O_CREAT | O_WRONLY, 0o644).unwrap();
        posix::rename(&p("a"), &p("z"), 0).unwrap();
        posix::rename(&p("z/b/f"), &p("z/b/g"), 0).unwrap();
        mount.events.take();
        posix::write(&fd, b"moved").unwrap();
        drop(fd);
        let changed = |p: &str| {
            vec![Event::ContentChanged {
                path: path(p),
                ino: ino_of(&mount.mountpoint.join(p)),
            }]
        };
        assert_eq!(
            mount.events.take_settled(),
            changed("z/b/g"),
            "{data_path:?}"
        );

        // With hard links any current name will do, but never one that was removed.
        posix::link(&p("z/b/g"), &p("hard")).unwrap();
        let fd = posix::open(&p("hard"), O_WRONLY, 0).unwrap();
        posix::unlink(&p("z/b/g")).unwrap();
        mount.events.take();
        posix::write(&fd, b"linked").unwrap();
        drop(fd);
        assert_eq!(
            mount.events.take_settled(),
            changed("hard"),
            "{data_path:?}"
        );
    }
}

#[test]
fn inode_numbers_are_the_backing_ones() {
    let Some(mount) = mount_or_skip("inode_numbers") else {
        return;
    };
    let (mnt, backing) = (&mount.mountpoint, &mount.backing);
    write_new(&mnt.join("f"), b"x").unwrap();
    posix::link(&mnt.join("f"), &mnt.join("g")).unwrap();
    posix::mkdir(&mnt.join("d"), 0o755).unwrap();
    let ino = |p: PathBuf| std::fs::symlink_metadata(p).unwrap().ino();
    assert_eq!(ino(mnt.join("f")), ino(backing.join("f")));
    assert_eq!(
        ino(mnt.join("g")),
        ino(mnt.join("f")),
        "hard links share an inode"
    );
    assert_eq!(std::fs::metadata(mnt.join("g")).unwrap().nlink(), 2);
    assert_eq!(ino(mnt.join("d")), ino(backing.join("d")));
    assert_eq!(ino(mnt.to_path_buf()), 1, "the root is FUSE_ROOT_ID");
    for entry in std::fs::read_dir(mnt).unwrap() {
        let entry = entry.unwrap();
        assert_eq!(
            entry.ino(),
            ino(backing.join(entry.file_name())),
            "readdir d_ino"
        );
    }
}

/// Answers with the daemon's count of files open for writing and their paths.
struct CountingStatus;

impl StatusSource for CountingStatus {
    fn status_json(&self, mount: &MountStatus<'_>) -> String {
        let (open_for_writing, writing) = (mount.open_for_writing, mount.writing);
        format!(r#"{{"open_for_writing":{open_for_writing},"writing":{writing:?}}}"#)
    }
}

#[test]
fn status_xattr_answers_from_the_daemon() {
    let status = |open: usize, writing: &[&str]| {
        Ok(format!(r#"{{"open_for_writing":{open},"writing":{writing:?}}}"#).into_bytes())
    };
    let Some(mount) = mount_or_skip_with("status_xattr", |cfg| {
        cfg.status = Some(Arc::new(CountingStatus))
    }) else {
        return;
    };
    let root = &mount.mountpoint;
    assert_eq!(posix::getxattr(root, STATUS_XATTR, 4096), status(0, &[]));
    // A writer counts until its release arrives, which the kernel sends after close returns;
    // two writers of one file count it once.
    std::fs::create_dir(root.join("d")).unwrap();
    let writer = std::fs::File::create(root.join("d/w")).unwrap();
    let second = std::fs::OpenOptions::new()
        .append(true)
        .open(root.join("d/w"))
        .unwrap();
    let reader = std::fs::File::open(root.join("d/w")).unwrap();
    assert_eq!(
        posix::getxattr(root, STATUS_XATTR, 4096),
        status(1, &["d/w"])
    );
    drop(writer);
    drop(second);
    drop(reader);
    common::eventually_within(
        std::time::Duration::from_secs(10),
        "the writer never left the count",
        || posix::getxattr(root, STATUS_XATTR, 4096) == status(0, &[]),
    );
    std::fs::remove_file(root.join("d/w")).unwrap();
    assert_eq!(posix::getxattr(root, STATUS_XATTR, 4), Err(libc::ERANGE));
    assert_eq!(posix::listxattr(root), Ok(vec![]), "not listed");
    assert_eq!(
        posix::setxattr(root, STATUS_XATTR, b"x", 0),
        Err(libc::EPERM)
    );
    assert_eq!(posix::removexattr(root, STATUS_XATTR), Err(libc::EPERM));
    posix::setxattr(root, "user.other", b"1", 0).unwrap();
    assert_eq!(posix::listxattr(root), Ok(vec!["user.other".to_string()]));
    mount.unmount();

    let Some(mount) = mount_or_skip("status_xattr_without_source") else {
        return;
    };
    assert_eq!(
        posix::getxattr(&mount.mountpoint, STATUS_XATTR, 4096),
        Err(libc::ENODATA)
    );
}

/// The guarantee: the daemon never follows a symlink in the backing tree, so no request can make
/// it act outside BACKING. (A path like MNT/link/x where link → /outside is resolved by the
/// kernel on the client side, to /outside/x, which never reaches the daemon; that is the
/// caller's own access to /outside, not the daemon's.)
#[test]
fn daemon_never_follows_symlinks() {
    struct Ignore;
    impl EventSink for Ignore {
        fn send(&self, _: Event) {}
    }
    let dir = tempfile::tempdir().unwrap();
    let (backing, outside) = (dir.path().join("backing"), dir.path().join("outside"));
    std::fs::create_dir_all(&backing).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"secret").unwrap();
    std::os::unix::fs::symlink(&outside, backing.join("esc")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret"), backing.join("file-link")).unwrap();

    let fs = Passthrough::new(&backing, Arc::new(Ignore), None, Arc::default()).unwrap();
    let root = 1;
    let me = Caller { uid: 0, gid: 0 };
    let esc = fs.lookup(root, OsStr::new("esc")).unwrap();
    assert_eq!(esc.kind, fuser::FileType::Symlink);
    let esc = esc.ino.0;
    let enotdir = Err(fuser::Errno::ENOTDIR);
    assert_eq!(
        fs.lookup(esc, OsStr::new("secret")).map(|a| a.ino),
        enotdir.clone()
    );
    assert_eq!(
        fs.mkdir(me, esc, OsStr::new("x"), 0o755).map(|a| a.ino),
        enotdir.clone()
    );
    let created = fs.create(me, esc, OsStr::new("x"), 0o644, O_WRONLY);
    assert_eq!(created.map(|(a, _)| a.ino), enotdir);
    assert!(fs.opendir(esc).is_err());
    assert_eq!(
        fs.setxattr(me, esc, OsStr::new("user.x"), b"1", 0),
        Err(fuser::Errno::EPERM)
    );

    let file_link = fs.lookup(root, OsStr::new("file-link")).unwrap().ino.0;
    assert!(
        fs.open(file_link, O_RDWR).is_err(),
        "no open through a symlink"
    );
    let truncate = maxlofs_fs::AttrChanges {
        size: Some(0),
        ..Default::default()
    };
    assert!(fs.setattr(file_link, None, truncate).is_err());
    for name in ["..", ".", "a/b", ""] {
        assert_eq!(
            fs.lookup(root, OsStr::new(name)).map(|a| a.ino),
            Err(fuser::Errno::EINVAL)
        );
    }
    assert_eq!(std::fs::read(outside.join("secret")).unwrap(), b"secret");
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        1,
        "nothing created outside"
    );
    assert_eq!(posix::listxattr(&outside), Ok(vec![]));
}

#[test]
fn symlinks_to_outside_are_resolved_by_the_client() {
    let Some(mount) = mount_or_skip("symlinks_to_outside") else {
        return;
    };
    let outside = tempfile::tempdir().unwrap();
    let link = mount.mountpoint.join("esc");
    std::os::unix::fs::symlink(outside.path(), &link).unwrap();
    mount.events.take();
    assert_eq!(
        posix::readlink(&link),
        Ok(outside.path().as_os_str().to_owned())
    );
    assert_eq!(posix::setxattr(&link, "user.x", b"1", 0), Err(libc::EPERM));
    posix::rename(&link, &mount.mountpoint.join("esc2"), 0).unwrap();
    posix::unlink(&mount.mountpoint.join("esc2")).unwrap();
    assert!(
        outside.path().is_dir(),
        "rename and unlink act on the link itself"
    );
    use Event::*;
    assert_eq!(
        mount.events.take_settled(),
        vec![
            Renamed {
                from: path("esc"),
                to: path("esc2"),
                is_dir: false
            },
            Removed {
                path: path("esc2"),
                is_dir: false
            },
        ]
    );
}

/// cp -r, mv, rm -r, tar x and rsync -a into the mount end with the same tree as natively.
#[test]
fn real_tools_match_native() {
    let Some(mount) = mount_or_skip("real_tools") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let source = work.path().join("source");
    for dir in ["sub/deeper", "empty"] {
        std::fs::create_dir_all(source.join(dir)).unwrap();
    }
    for (name, size) in [("a.txt", 10), ("sub/b.bin", 300_000), ("sub/deeper/c", 1)] {
        std::fs::write(source.join(name), vec![b'z'; size]).unwrap();
    }
    std::fs::write(source.join(OsStr::from_bytes(b"sub/n\xe4me")), b"latin1").unwrap();
    std::os::unix::fs::symlink("a.txt", source.join("link")).unwrap();
    std::fs::hard_link(source.join("a.txt"), source.join("hard")).unwrap();
    posix::setxattr(&source.join("a.txt"), "user.tag", b"v", 0).unwrap();
    posix::chmod(&source.join("sub/deeper/c"), 0o751).unwrap();
    let tarball = work.path().join("source.tar");
    run(Command::new("tar")
        .arg("cf")
        .arg(&tarball)
        .arg("-C")
        .arg(&source)
        .arg("."));

    let native = work.path().join("native");
    std::fs::create_dir(&native).unwrap();
    for root in [&native, &mount.mountpoint] {
        let script = r#"set -e
            cp -r "$SRC" "$ROOT/copy"
            mv "$ROOT/copy" "$ROOT/moved"
            mv "$ROOT/moved/sub" "$ROOT/sub-moved"
            rm -r "$ROOT/moved"
            mkdir "$ROOT/untar" && tar xf "$TAR" -C "$ROOT/untar"
            rsync -aHX "$SRC/" "$ROOT/synced/"
            rsync -aHX --delete "$SRC/sub/" "$ROOT/synced/"
            cp -a "$SRC" "$ROOT/archive"
            rm -r "$ROOT/archive/sub/deeper""#;
        run(Command::new("sh")
            .arg("-c")
            .arg(script)
            .env("SRC", &source)
            .env("ROOT", root)
            .env("TAR", &tarball));
    }
    run(Command::new("diff")
        .arg("-r")
        .arg("--no-dereference")
        .arg(&native)
        .arg(&mount.mountpoint));
    assert_eq!(snapshot(&native), snapshot(&mount.mountpoint));
    assert_eq!(snapshot(&native), snapshot(&mount.backing));
}

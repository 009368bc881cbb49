//! Hostile input: names that are not UTF-8 or are 255 bytes long, deep trees, empty and 10 GiB
//! sparse files, a file rewritten while it is hashed, a full disk under the backing folder and
//! under the state folder, a service that answers garbage, a key revoked mid-run. Each must end
//! with a clear error where there is one, and nothing lost.

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::eventually;
use common::proxy::{is_create, is_media_call, response, Action, Proxy, Rule};
use common::service::{
    check_catalog, give_to_nobody, live_catalog, run, sh, Emulator, Mount, AS_NOBODY, BIN,
};

/// Polls `condition` every 50 ms for up to 60 s.
fn maxlo_hash_cli(path: &Path) -> String {
    let out = Command::new(BIN).arg("hash").arg(path).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn names_that_are_not_utf8_stay_local_and_renames_across_the_line_move_the_record() {
    let emulator = Emulator::start(&[]);
    let mount = mount!(emulator, &["--settle-ms", "20"]);
    let odd = |bytes: &[u8]| mount.mnt.join(OsStr::from_bytes(bytes));
    std::fs::write(odd(b"caf\xe9.jpg"), b"latin-1").unwrap();
    std::fs::create_dir(odd(b"dir-\xff")).unwrap();
    std::fs::write(odd(b"dir-\xff/inside.jpg"), b"utf-8 name, odd parent").unwrap();
    std::fs::write(mount.path("ok.jpg"), b"fine").unwrap();
    std::fs::write(mount.path("leaving.jpg"), b"will lose its name").unwrap();
    mount.wait_synced();
    check_catalog(&emulator, &mount.backing);
    assert_eq!(live_catalog(&emulator).len(), 2);

    // Across the line both ways: the record follows what is UTF-8.
    std::fs::rename(odd(b"caf\xe9.jpg"), mount.path("cafe.jpg")).unwrap();
    std::fs::rename(mount.path("leaving.jpg"), odd(b"gone-\xfe.jpg")).unwrap();
    std::fs::rename(odd(b"dir-\xff"), mount.path("dir-ok")).unwrap();
    mount.wait_synced();
    check_catalog(&emulator, &mount.backing);
    let live = live_catalog(&emulator);
    let paths: Vec<_> = live.keys().map(String::as_str).collect();
    assert_eq!(paths, ["cafe.jpg", "dir-ok/inside.jpg", "ok.jpg"]);
    let status = mount.status();
    assert!(
        status["local_only"].to_string().contains("not UTF-8"),
        "{status}"
    );
}

#[test]
fn names_of_255_bytes_sync_and_256_bytes_are_refused() {
    let emulator = Emulator::start(&[]);
    let mount = mount!(emulator, &["--settle-ms", "20"]);
    let ascii = "a".repeat(251) + ".jpg";
    let multibyte = "é".repeat(125) + "x.jpg"; // 250 + 5 bytes
    assert_eq!((ascii.len(), multibyte.len()), (255, 255));
    std::fs::create_dir(mount.path(&ascii[..255 - 4])).unwrap();
    for name in [&ascii, &multibyte] {
        std::fs::write(mount.path(name), name.as_bytes()).unwrap();
    }
    std::fs::write(
        mount.path(&format!("{}/{multibyte}", &ascii[..251])),
        b"nested",
    )
    .unwrap();
    let too_long = "b".repeat(256);
    let err = std::fs::write(mount.path(&too_long), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENAMETOOLONG), "{err}");
    mount.wait_synced();
    check_catalog(&emulator, &mount.backing);
    assert_eq!(live_catalog(&emulator).len(), 3);
}

#[test]
fn a_tree_100_levels_deep_syncs_and_survives_a_rename_at_the_top() {
    let emulator = Emulator::start(&[]);
    let mount = mount!(emulator, &["--settle-ms", "20"]);
    let mut dir = PathBuf::from("top");
    for level in 0..100 {
        dir.push(format!("level{level}"));
    }
    std::fs::create_dir_all(mount.path(dir.to_str().unwrap())).unwrap();
    let mut file = dir.clone();
    for level in (0..100).step_by(20) {
        let mut at: PathBuf = dir.components().take(level + 2).collect();
        at.push("f.jpg");
        std::fs::write(mount.path(at.to_str().unwrap()), at.to_str().unwrap()).unwrap();
    }
    file.push("deepest.jpg");
    std::fs::write(mount.path(file.to_str().unwrap()), b"bottom").unwrap();
    mount.wait_synced();
    check_catalog(&emulator, &mount.backing);
    assert_eq!(live_catalog(&emulator).len(), 6);
    std::fs::rename(mount.path("top"), mount.path("moved")).unwrap();
    mount.wait_synced();
    check_catalog(&emulator, &mount.backing);
    assert!(live_catalog(&emulator)
        .keys()
        .all(|p| p.starts_with("moved/")));
}

/// The kernel may remember more inodes than the daemon may hold descriptors. With a limit of 256
/// that it cannot lift (no CAP_SYS_RESOURCE), copying, renaming, changing and reading a tree of
/// 2,400 entries through the mount must still work, and the catalog must follow.
#[test]
fn a_tree_larger_than_the_descriptor_limit_works_through_the_mount() {
    let emulator = Emulator::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let mut mount = Mount::prepare(dir.path(), &emulator, &["--settle-ms", "20"]);
    mount.wrapper = [
        "setpriv",
        "--bounding-set=-sys_resource",
        "--inh-caps=-sys_resource",
        "prlimit",
        "--nofile=256:256",
    ]
    .map(String::from)
    .to_vec();
    if !mount.mount() {
        return;
    }
    let source = dir.path().join("source");
    for d in 0..24 {
        std::fs::create_dir_all(source.join(format!("d{d}"))).unwrap();
        for f in 0..100 {
            std::fs::write(source.join(format!("d{d}/f{f}.jpg")), format!("{d}/{f}")).unwrap();
        }
    }
    sh(
        &format!(
            "cp -r {src} tree && mv tree/d3 tree/moved && chmod 600 tree/d7/* && \
             touch -d 2001-01-01 tree/d9/* && find tree -type f | xargs cat >/dev/null && \
             cp -r tree copy && rm -r copy/d1 && mv copy/d2 tree/d2-again",
            src = source.display()
        ),
        &mount.mnt,
    );
    let fds = std::fs::read_dir(format!("/proc/{}/fd", mount.pid().unwrap()))
        .unwrap()
        .count();
    assert!(fds <= 256, "the daemon holds {fds} descriptors");
    sh(
        "diff -r tree/d4 ../source/d4 && test ! -e copy/d1",
        &mount.mnt,
    );
    mount.wait_synced();
    check_catalog(&emulator, &mount.backing);
    assert_eq!(live_catalog(&emulator).len(), 2 * 2400 - 100);
}

/// A path longer than PATH_MAX (4096 bytes) can be made through relative lookups (`cd` one level
/// at a time), but not named whole. It must not stop the rest from syncing, and the daemon must
/// settle (no endless retry) and say why it is not sent.
#[test]
fn a_path_longer_than_path_max_does_not_stop_the_rest() {
    let emulator = Emulator::start(&[]);
    let mut mount = mount!(emulator, &["--settle-ms", "20"]);
    // 30 levels of 200-byte names, made one level at a time relative to a directory descriptor.
    let name = std::ffi::CString::new("n".repeat(200)).unwrap();
    let mut dir = std::fs::File::open(&mount.mnt).unwrap();
    for _ in 0..30 {
        use std::os::fd::{AsRawFd, FromRawFd};
        // SAFETY: valid descriptor and C string; the new descriptor is owned by a File.
        unsafe {
            assert_eq!(libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o755), 0);
            let fd = libc::openat(
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            );
            assert!(fd >= 0, "{}", std::io::Error::last_os_error());
            dir = std::fs::File::from_raw_fd(fd);
        }
    }
    {
        use std::os::fd::{AsRawFd, FromRawFd};
        let file_name = std::ffi::CString::new("f.jpg").unwrap();
        // SAFETY: as above.
        let mut file = unsafe {
            let fd = libc::openat(
                dir.as_raw_fd(),
                file_name.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC,
                0o644,
            );
            assert!(fd >= 0, "{}", std::io::Error::last_os_error());
            std::fs::File::from_raw_fd(fd)
        };
        file.write_all(b"too deep").unwrap();
    }
    drop(dir);
    std::fs::write(mount.path("normal.jpg"), b"normal").unwrap();
    let settled = mount.try_wait_synced(60);
    let status = mount.status();
    let live = live_catalog(&emulator);
    assert!(live.contains_key("normal.jpg"), "{live:?}\n{status}");
    assert!(settled, "never settled: {status}\n{}", mount.log_text());
    let deep_sent = live.keys().any(|p| p.ends_with("f.jpg"));
    assert!(
        deep_sent || status.to_string().contains("f.jpg"),
        "the deep file is neither sent nor reported: {status}"
    );
    // And a fresh start (reconcile walks the whole tree) copes too.
    assert!(mount.unmount().success());
    assert!(mount.mount());
    assert!(mount.try_wait_synced(60), "{}", mount.status());
}

/// The paths status lists as local-only because the daemon's user may not read them.
fn unreadable(status: &serde_json::Value) -> Vec<&str> {
    status["local_only"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| {
            entry["reason"]
                .as_str()
                .unwrap()
                .starts_with("permission denied")
        })
        .map(|entry| entry["path"].as_str().unwrap())
        .collect()
}

/// A daemon run by a user (not root) may meet what that user may not read: a folder made 000 (a
/// filesystem's root-owned lost+found, say) or a file made 000. Neither may stop the rest: the
/// start's pass completes and `status --wait` returns, status says what is not looked at and
/// why, the records below stay as they are (nothing is known to be gone), and a chmod through
/// the mount brings the changes made meanwhile.
#[test]
fn what_the_daemons_user_may_not_read_is_reported_kept_and_synced_once_permitted() {
    let emulator = Emulator::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let mut mount = Mount::prepare(dir.path(), &emulator, &["--settle-ms", "20"]);
    mount.run_as_nobody();
    std::fs::create_dir(mount.backing.join("d")).unwrap();
    for name in ["d/one.jpg", "d/two.jpg", "fine.jpg"] {
        std::fs::write(mount.backing.join(name), name).unwrap();
    }
    give_to_nobody(dir.path());
    if !mount.mount() {
        return;
    }
    mount.wait_synced();
    mount.unmount();
    // While unmounted: a file added below the folder, one removed, then the folder closed.
    std::fs::write(mount.backing.join("d/three.jpg"), "three").unwrap();
    std::fs::remove_file(mount.backing.join("d/one.jpg")).unwrap();
    std::fs::write(mount.backing.join("secret.jpg"), "secret").unwrap();
    std::fs::create_dir_all(mount.backing.join("outer/inner")).unwrap();
    give_to_nobody(&mount.backing);
    for name in ["d", "secret.jpg", "outer/inner"] {
        let path = mount.backing.join(name);
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o000)).unwrap();
    }
    assert!(mount.mount());
    mount.wait_synced_within(30);
    let status = mount.status();
    assert_eq!(
        unreadable(&status),
        ["d", "outer/inner", "secret.jpg"],
        "{status}"
    );
    let live: Vec<String> = emulator.live().into_keys().collect();
    assert_eq!(live, ["d/one.jpg", "d/two.jpg", "fine.jpg"]);
    let mut chmod = Command::new(AS_NOBODY[0]);
    chmod.args(&AS_NOBODY[1..]).args(["chmod", "755"]);
    run(chmod.arg(mount.path("d")).arg(mount.path("secret.jpg")));
    // Moved, a closed folder is listed under its new name only.
    let mut mv = Command::new(AS_NOBODY[0]);
    mv.args(&AS_NOBODY[1..]).arg("mv");
    run(mv.arg(mount.path("outer")).arg(mount.path("moved")));
    mount.wait_synced_within(30);
    check_catalog(&emulator, &mount.backing);
    let status = mount.status();
    assert_eq!(unreadable(&status), ["moved/inner"], "{status}");
}

#[test]
fn empty_files_and_files_truncated_to_zero_have_the_empty_hash() {
    let emulator = Emulator::start(&[]);
    let mount = mount!(emulator, &["--settle-ms", "20"]);
    sh(
        "mkdir d && : > empty && touch d/touched && printf data > shrinks && truncate -s 0 shrinks",
        &mount.mnt,
    );
    mount.wait_synced();
    check_catalog(&emulator, &mount.backing);
    let live = live_catalog(&emulator);
    let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    for path in ["empty", "d/touched", "shrinks"] {
        assert_eq!((live[path].0.as_str(), live[path].1), (empty, 0), "{path}");
    }
}

/// `truncate -s 10G`: a multipart hash (1280 parts of 8 MiB would be too many: 16 MiB parts)
/// of zeros, compared with `maxlofs hash` of the backing file.
#[test]
fn a_sparse_10_gib_file_gets_its_multipart_hash() {
    let emulator = Emulator::start(&[]);
    // The hash is the point here: uploading 10 GiB of zeros would take minutes and the disk.
    let mount = mount!(emulator, &["--settle-ms", "20", "--no-upload"]);
    sh("truncate -s 10G sparse.bin", &mount.mnt);
    // 10 GiB hashed on the sync threads, which yield to everything else: with a CPU hog on each
    // core this took 80 s (130 MiB/s); the limit only keeps a hang from lasting for ever.
    mount.wait_synced_within(300);
    let live = live_catalog(&emulator);
    let (hash, size, _) = &live["sparse.bin"];
    assert_eq!(*size, 10 << 30);
    assert_eq!(*hash, maxlo_hash_cli(&mount.backing.join("sparse.bin")));
    assert_eq!(live.len(), 1);
}

/// A 40 MiB file rewritten in place, again and again, while the engine hashes it: what reaches
/// the catalog in the end is the final content.
#[test]
fn a_file_rewritten_while_it_is_hashed_ends_with_its_final_content() {
    let emulator = Emulator::start(&[]);
    let mount = mount!(emulator, &["--settle-ms", "0"]);
    let path = mount.path("busy.bin");
    let size = 40 << 20;
    let chunk = 1 << 20;
    std::fs::write(&path, vec![0u8; size]).unwrap();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    let started = Instant::now();
    let mut round = 0u8;
    while started.elapsed() < Duration::from_secs(3) {
        round = round.wrapping_add(1);
        let block = vec![round; chunk];
        for offset in (0..size).step_by(chunk) {
            file.write_all_at(&block, offset as u64).unwrap();
        }
        // Each close reports a change, as editors and cp do.
        let again = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        again.write_all_at(&[round], 0).unwrap();
        drop(again);
    }
    drop(file);
    mount.wait_synced();
    check_catalog(&emulator, &mount.backing);
}

/// Unmounts a tmpfs (and the FUSE mount over it first) when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir));
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn free_bytes(dir: &Path) -> u64 {
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
    // SAFETY: libc::statvfs is plain integers, for which all-zero is a valid value.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and a statvfs to fill.
    assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut stat) }, 0);
    stat.f_bavail * stat.f_frsize
}

fn write_until_full(path: &Path, bytes: usize) -> std::io::Result<()> {
    let mut file = std::fs::File::create(path)?;
    let block = vec![0x5au8; 256 << 10];
    let mut written = 0;
    while written < bytes {
        file.write_all(&block)?;
        written += block.len();
    }
    file.sync_all()
}

/// The backing folder on an 8 MiB tmpfs: the writer that fills it gets ENOSPC, the daemon keeps
/// going, and the catalog only ever ends as the tree is; once space is freed it catches up.
#[test]
fn a_full_backing_disk_gives_enospc_to_the_writer_and_the_catalog_follows_the_tree() {
    let emulator = Emulator::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let mut mount = Mount::prepare(dir.path(), &emulator, &["--settle-ms", "20"]);
    let _disk = Tmpfs::mount(&mount.backing, "8m");
    if !mount.mount() {
        return;
    }
    write_until_full(&mount.path("first.bin"), 5 << 20).unwrap();
    let err = write_until_full(&mount.path("second.bin"), 5 << 20).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    mount.wait_synced();
    assert!(mount.is_alive());
    // What reached the catalog is what the tree holds, the partial second file included.
    check_catalog(&emulator, &mount.backing);

    let full = free_bytes(&mount.backing);
    std::fs::remove_file(mount.path("first.bin")).unwrap();
    // The blocks come back once nothing holds the inode: the kernel forgets it (and the daemon
    // closes its descriptor) shortly after the unlink, later under load.
    eventually("never: the space of the removed file comes back", || {
        free_bytes(&mount.backing) >= full + (9 << 19)
    });
    write_until_full(&mount.path("second.bin"), 5 << 20).unwrap();
    std::fs::write(mount.path("third.txt"), b"after the space came back").unwrap();
    mount.wait_synced();
    check_catalog(&emulator, &mount.backing);
    assert_eq!(live_catalog(&emulator)["second.bin"].1, 5 << 20);
    assert!(mount.unmount().success());
}

/// The state folder (the index) on a full tmpfs: index writes fail; the daemon retries, says
/// so, and converges once space is freed, without a second record for anything.
#[test]
fn a_full_state_disk_delays_but_loses_nothing() {
    let emulator = Emulator::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let mut mount = Mount::prepare(dir.path(), &emulator, &["--settle-ms", "20"]);
    let _disk = Tmpfs::mount(&mount.state, "1m");
    if !mount.mount() {
        return;
    }
    std::fs::write(mount.path("before.txt"), b"synced while there was room").unwrap();
    mount.wait_synced();
    let filler = mount.state.join("filler");
    let _ = write_until_full(&filler, 2 << 20);
    for i in 0..20 {
        std::fs::write(mount.path(&format!("f{i}.txt")), format!("file {i}")).unwrap();
    }
    std::fs::remove_file(mount.path("before.txt")).unwrap();
    sleep(Duration::from_secs(2));
    assert!(mount.is_alive(), "{}", mount.log_text());
    let status = mount.status();
    std::fs::remove_file(&filler).unwrap();
    mount.wait_synced();
    check_catalog(&emulator, &mount.backing);
    assert!(
        status["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("full")
            && status["pending"].as_u64().unwrap() > 0,
        "a full index disk went unreported: {status}"
    );
}

/// Inode numbers repeat across filesystems. A file held open for writing on BACKING's filesystem
/// holds back no file of a filesystem mounted inside BACKING that has the same number: that one
/// is sent once closed, while the first is still open.
#[test]
fn a_writer_holds_back_no_file_of_the_same_inode_number_on_another_filesystem() {
    use std::os::unix::fs::MetadataExt;
    let emulator = Emulator::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let mut mount = Mount::prepare(dir.path(), &emulator, &["--settle-ms", "20"]);
    // Two fresh tmpfs: each numbers its inodes from the same start.
    let _outer = Tmpfs::mount(&mount.backing, "16m");
    let _inner = Tmpfs::mount(&mount.backing.join("inner"), "16m");
    if !mount.mount() {
        return;
    }
    let mut held = std::fs::File::create(mount.path("held.log")).unwrap();
    held.write_all(b"still being written").unwrap();
    let held_ino = std::fs::metadata(mount.backing.join("held.log"))
        .unwrap()
        .ino();
    let twin = (0..64)
        .map(|i| format!("inner/f{i}.txt"))
        .find(|name| {
            std::fs::write(mount.path(name), name.as_bytes()).unwrap();
            std::fs::metadata(mount.backing.join(name)).unwrap().ino() == held_ino
        })
        .expect("a file of the inner tmpfs with the held file's inode number");
    eventually(format!("never: {twin} reaches the catalog"), || {
        live_catalog(&emulator).contains_key(twin.as_str())
    });
    assert!(
        !live_catalog(&emulator).contains_key("held.log"),
        "sent while open"
    );
    drop(held);
    mount.wait_synced();
    check_catalog(&emulator, &mount.backing);
    assert!(mount.unmount().success());
}

/// Times far from now, on a tmpfs (which keeps any 64-bit time): before 1970, past 2262 (where
/// 64-bit nanoseconds end; ext4 goes to 2446), past 9999 (JavaScript's six-digit years), and
/// past what the service's form can say at all, which stays local with its record as it was.
#[test]
fn times_far_from_now_reach_the_catalog_exactly_or_stay_local_with_a_reason() {
    let emulator = Emulator::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let mut mount = Mount::prepare(dir.path(), &emulator, &["--settle-ms", "20"]);
    let _disk = Tmpfs::mount(&mount.backing, "16m");
    if !mount.mount() {
        return;
    }
    let beyond = "@10000000000000"; // about the year 316,889
    sh(
        &format!(
            "for f in old far future beyond; do echo $f > $f; done && \
             touch -d '1960-05-01 00:00:00.5 UTC' old && touch -d '2300-01-01 UTC' far && \
             touch -d @253402300800.25 future && touch -d {beyond} beyond"
        ),
        &mount.mnt,
    );
    mount.wait_synced();
    let mtimes = || -> BTreeMap<String, String> {
        live_catalog(&emulator)
            .into_iter()
            .map(|(path, (_, _, mtime))| (path, mtime))
            .collect()
    };
    let expected: BTreeMap<String, String> = [
        ("far", "2300-01-01T00:00:00.000Z"),
        ("future", "+010000-01-01T00:00:00.250Z"),
        ("old", "1960-05-01T00:00:00.500Z"),
    ]
    .map(|(path, mtime)| (path.to_string(), mtime.to_string()))
    .into();
    assert_eq!(mtimes(), expected, "{}", mount.log_text());
    let status = mount.status();
    assert_eq!(status["local_only"][0]["path"], "beyond", "{status}");
    assert!(status["local_only"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("262,143 years"));

    // Back in range it is sent; a synced file taken out of range keeps its record unchanged.
    sh(
        &format!("touch -d '2026-01-01 UTC' beyond && touch -d {beyond} far"),
        &mount.mnt,
    );
    mount.wait_synced();
    let mut expected = expected;
    expected.insert("beyond".into(), "2026-01-01T00:00:00.000Z".into());
    assert_eq!(mtimes(), expected, "{}", mount.log_text());
    assert_eq!(mount.status()["local_only"][0]["path"], "far");
    assert!(mount.unmount().success());
    // The index keeps times past 64-bit nanoseconds: a restart finds nothing to send.
    let sent = || emulator.calls("create") + emulator.calls("update");
    let before = sent();
    assert!(mount.mount());
    mount.wait_synced();
    assert_eq!(mtimes(), expected);
    assert_eq!(sent(), before);
    assert!(mount.unmount().success());
}

/// A service that answers creates with garbage (truncated JSON, HTML, a body cut short, not HTTP
/// at all, a 409 without a record): the daemon stays up, keeps the work pending with the last
/// error in status, and unmounts on request; when the service answers properly again (same
/// URL), everything is caught up, also what the service did while its answers were garbage.
#[test]
fn a_service_answering_garbage_keeps_the_work_and_the_daemon_up() {
    let emulator = Emulator::start(&[]);
    let proxy = Proxy::start(&emulator.url);
    let garbage = vec![
        response("200 OK", br#"{"media_id": "#),
        response("200 OK", b"<html>Service Unavailable</html>"),
        b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"media_id\":".to_vec(),
        b"\x00\x01\x02 this is not HTTP \r\n\r\n".to_vec(),
        response("409 Conflict", br#"{"media_id":"x"}"#),
        response("200 OK", br#"{"media_id": "12"}"#),
    ];
    proxy.add_rule(Rule {
        matches: is_media_call,
        action: Action::Answers(garbage.clone()),
        times: None,
    });
    let dir = tempfile::tempdir().unwrap();
    let mut mount = Mount::prepare_api(
        dir.path(),
        &proxy.url,
        &["--settle-ms", "20", "--drain-timeout", "1"],
    );
    if !mount.mount() {
        return;
    }
    for i in 0..5 {
        std::fs::write(mount.path(&format!("g{i}.jpg")), format!("garbage-era {i}")).unwrap();
    }
    eventually("never: every garbage kind was answered", || {
        proxy
            .seen()
            .iter()
            .filter(|s| s.ends_with("answer"))
            .count()
            >= 12
    });
    assert!(mount.is_alive(), "{}", mount.log_text());
    let status = mount.status();
    assert!(
        status["pending"].as_u64().unwrap() + status["in_flight"].as_u64().unwrap() > 0,
        "{status}"
    );
    assert!(status["last_error"].is_string(), "{status}");
    assert!(emulator.records().is_empty());
    // Unmount works although nothing could be sent.
    assert!(mount.unmount().success(), "{}", mount.log_text());

    // The service does the work but its answers are garbage; then it answers properly.
    proxy.clear_rules();
    proxy.add_rule(Rule {
        matches: is_media_call,
        action: Action::ForwardThenAnswer(garbage[0].clone()),
        times: Some(3),
    });
    assert!(mount.mount());
    std::fs::write(mount.path("late.jpg"), b"after").unwrap();
    mount.wait_synced();
    check_catalog(&emulator, &mount.backing);
    assert_eq!(emulator.records().len(), 6, "{:?}", emulator.records());
}

/// The key is revoked while files are being written and sent: sending pauses with a reason in
/// status, nothing is lost, and a new key in the key file resumes it.
#[test]
fn a_key_revoked_mid_run_pauses_with_a_reason_and_a_new_key_loses_nothing() {
    let emulator = Emulator::start(&[
        "--device-key",
        "key-one-4711",
        "--device-key",
        "key-two-0815",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let mut mount = Mount::prepare(dir.path(), &emulator, &["--settle-ms", "20"]);
    std::fs::write(&mount.key_file, "key-one-4711\n").unwrap();
    if !mount.mount() {
        return;
    }
    let writing = AtomicBool::new(true);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let mut i = 0;
            while writing.load(Ordering::SeqCst) || i < 40 {
                std::fs::write(
                    mount.path(&format!("w{}.txt", i % 25)),
                    format!("write {i}"),
                )
                .unwrap();
                if i % 7 == 0 {
                    let _ = std::fs::remove_file(mount.path(&format!("w{}.txt", (i + 3) % 25)));
                }
                i += 1;
                sleep(Duration::from_millis(10));
            }
        });
        sleep(Duration::from_millis(200));
        let (status, _) = emulator.post(
            "/_emulator/revoke-key",
            &serde_json::json!({"key": "key-one-4711"}),
        );
        assert_eq!(status, 200);
        eventually("never: sending pauses", || {
            !mount.status()["paused"].is_null()
        });
        writing.store(false, Ordering::SeqCst);
    });
    let status = mount.status();
    assert!(
        status["paused"].as_str().unwrap().contains("403"),
        "{status}"
    );
    std::fs::write(&mount.key_file, "key-two-0815\n").unwrap();
    mount.wait_synced();
    check_catalog(&emulator, &mount.backing);
    assert!(mount.status()["paused"].is_null());
    let log = mount.log_text();
    assert!(
        !log.contains("key-one-4711") && !log.contains("key-two-0815"),
        "{log}"
    );
}

/// A service that takes an `upload` call and never answers it, the connection held open (as a
/// service stopped, or one whose reset never reached us, does): the call fails at the answer
/// timeout (15 s) and the question is asked again, so the files reach the catalog well before
/// the whole call's timeout (60 s) would have let them; meanwhile no other `upload` call goes
/// out. Seen once as a flaky `prove_crash` run: 60 s with nothing sent after a service restart.
#[test]
fn an_upload_call_taken_and_never_answered_holds_the_uploads_for_the_answer_timeout_only() {
    let emulator = Emulator::start(&[]);
    let proxy = Proxy::start(&emulator.url);
    let is_upload = |method: &str, path: &str| method == "POST" && path.ends_with("/upload");
    proxy.add_rule(Rule {
        matches: is_upload,
        // Longer than the test: the daemon is the one to give up.
        action: Action::ForwardThenDrop {
            hold: Duration::from_secs(600),
        },
        times: Some(1),
    });
    let Some(mut mount) = Mount::start_api(&proxy.url, &["--settle-ms", "20"]) else {
        return;
    };
    for i in 0..10 {
        std::fs::write(mount.path(&format!("held{i}.jpg")), format!("held {i}")).unwrap();
    }
    eventually("never: an upload call was taken and held", || {
        proxy
            .seen()
            .iter()
            .any(|seen| seen.ends_with("/upload forward-then-drop"))
    });
    // Past the answer timeout and a retry, short of the whole call's timeout.
    mount.wait_synced_within(45);
    check_catalog(&emulator, &mount.backing);
    let seen = proxy.seen();
    assert!(
        seen.iter().any(|seen| seen.ends_with("/upload forward")),
        "the question was never asked again: {seen:?}"
    );
    assert!(mount.unmount().success());
}

/// A service whose 409 to a create names another path (here a record another client made): the
/// client must not take that record for its own (it would overwrite it with its content, and
/// delete it with its file). The create stays pending with a protocol error, and goes through
/// once the service answers sense.
#[test]
fn a_409_naming_another_path_leaves_that_record_alone() {
    let emulator = Emulator::start(&[]);
    let (status, _) = emulator.post(
        "/device/1/media_grant/1/media",
        &serde_json::json!({
            "device_session_key": "demo-device-key", "media_path": "victim.jpg",
            "file_hash": "00".repeat(32), "file_size": 1,
            "ctime": "2026-11-26T18:20:00.000Z", "mtime": "2026-11-26T18:20:00.000Z",
        }),
    );
    assert_eq!(status, 200);
    let victim = emulator.records().remove(0);
    let proxy = Proxy::start(&emulator.url);
    proxy.add_rule(Rule {
        matches: is_create,
        action: Action::Answer(response("409 Conflict", victim.to_string().as_bytes())),
        times: None,
    });
    let mut mount = match Mount::start_api(&proxy.url, &["--settle-ms", "20"]) {
        Some(mount) => mount,
        None => return,
    };
    std::fs::write(mount.path("mine.jpg"), b"my own content").unwrap();
    eventually(
        "never: the create was answered the other path's record twice",
        || {
            proxy
                .seen()
                .iter()
                .filter(|seen| seen.ends_with("/media answer"))
                .count()
                >= 2
        },
    );
    let status = mount.status();
    assert!(
        status["last_error"]
            .as_str()
            .is_some_and(|error| error.contains("409 names another path")),
        "{status}"
    );
    assert_eq!(emulator.records(), std::slice::from_ref(&victim));

    proxy.clear_rules();
    mount.wait_synced();
    let records = emulator.records();
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(records[0], victim);
    assert_eq!(records[1]["media_path"], "mine.jpg");
    std::fs::remove_file(mount.path("mine.jpg")).unwrap();
    mount.wait_synced();
    assert_eq!(emulator.live()["victim.jpg"], victim);
    assert!(mount.unmount().success());
}

/// A service that accepts connections but never answers: `mount` gives up on the start-up
/// check of key and grant within its 15 s budget (it once waited out two 60 s request
/// timeouts), mounts offline, and the mount works.
#[test]
fn a_service_that_never_answers_still_mounts_offline_within_the_start_up_budget() {
    // Never accepted: the kernel completes the connections, and nothing ever answers them.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let mut mount = Mount::prepare_api(dir.path(), &url, &["--drain-timeout", "1"]);
    let started = Instant::now();
    if !mount.mount_within(Duration::from_secs(40)) {
        return;
    }
    let took = started.elapsed();
    let log = mount.log_text();
    assert!(
        log.contains("no answer within 15 s") && log.contains("mounting offline"),
        "{log}"
    );
    assert!(took < Duration::from_secs(30), "mounting took {took:?}");
    std::fs::write(mount.path("offline.jpg"), b"kept until the service answers").unwrap();
    assert_eq!(
        std::fs::read(mount.backing.join("offline.jpg")).unwrap(),
        b"kept until the service answers"
    );
    let status = mount.status();
    assert!(
        status["pending"].as_u64().unwrap() + status["in_flight"].as_u64().unwrap() > 0,
        "{status}"
    );
    assert!(mount.unmount().success(), "{}", mount.log_text());
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

/// The state folder and what is in it are private whatever was there before: a folder left
/// 0755 and files left 0644 (by an older version, a restore, a user) are made 0700 and 0600,
/// and the files a mount creates (the index and its WAL) are 0600.
#[test]
fn the_state_folder_is_made_private() {
    let emulator = Emulator::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let mut mount = Mount::prepare(dir.path(), &emulator, &["--settle-ms", "20"]);
    std::fs::create_dir(&mount.state).unwrap();
    std::fs::set_permissions(&mount.state, PermissionsExt::from_mode(0o755)).unwrap();
    for (name, content) in [
        ("grant-prefix-path", ""),
        ("index.db", ""),
        ("notes.txt", "left here by hand"),
    ] {
        let file = mount.state.join(name);
        std::fs::write(&file, content).unwrap();
        std::fs::set_permissions(&file, PermissionsExt::from_mode(0o644)).unwrap();
    }
    if !mount.mount() {
        return;
    }
    std::fs::write(mount.path("a.jpg"), b"a").unwrap();
    mount.wait_synced();
    assert_eq!(mode(&mount.state), 0o700);
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&mount.state).unwrap() {
        let path = entry.unwrap().path();
        names.push(path.file_name().unwrap().to_string_lossy().into_owned());
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
    for name in ["grant-prefix-path", "index.db", "index.db-wal", "notes.txt"] {
        assert!(names.iter().any(|seen| seen == name), "{name}: {names:?}");
    }
    assert!(mount.unmount().success());
}

/// A state folder holding another user's file is refused with what to do, and nothing in it is
/// changed (that user could widen the modes again).
#[test]
fn a_state_folder_with_another_users_file_is_refused_untouched() {
    let emulator = Emulator::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let mount = Mount::prepare(dir.path(), &emulator, &[]);
    std::fs::create_dir(&mount.state).unwrap();
    std::fs::set_permissions(&mount.state, PermissionsExt::from_mode(0o755)).unwrap();
    let foreign = mount.state.join("index.db");
    std::fs::write(&foreign, "").unwrap();
    std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).unwrap();
    let said = refused_mount(mount.command_for(&mount.backing, &mount.mnt), &mount.mnt);
    assert!(said.contains("belongs to uid 65534"), "{said}");
    assert_eq!(mode(&mount.state), 0o755);
}

/// Runs a `maxlofs mount` that must refuse to start, and answers what it said. One that mounts
/// instead is unmounted and fails the test.
fn refused_mount(mut command: Command, mnt: &Path) -> String {
    let mut child = command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let exited = common::wait::poll(Duration::from_secs(40), || {
        if common::service::is_mounted(mnt) {
            return Some(false);
        }
        child.try_wait().unwrap().map(|_| true)
    });
    if exited != Some(true) {
        let _ = child.kill();
        let _ = child.wait();
        let _ = Command::new("umount").arg("-l").arg(mnt).status();
        panic!("maxlofs mount started instead of refusing");
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    String::from_utf8(out.stderr).unwrap()
}

/// Unmounts a bind mount when dropped.
struct BindMount(PathBuf);

impl Drop for BindMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A state folder inside the backing folder is refused also when a symlink or a bind mount of
/// the backing folder names it (only the plain path was refused: its index was then synced as
/// media, and each sync wrote the index again). Nothing is created inside the backing folder.
#[test]
fn a_state_folder_inside_the_backing_folder_is_refused_by_any_name() {
    let emulator = Emulator::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let mount = Mount::prepare(dir.path(), &emulator, &[]);
    let alias = dir.path().join("alias");
    std::fs::create_dir(&alias).unwrap();
    run(Command::new("mount")
        .arg("--bind")
        .arg(&mount.backing)
        .arg(&alias));
    let _alias = BindMount(alias.clone());
    let sub = mount.backing.join("sub");
    std::fs::create_dir(&sub).unwrap();
    for target in [sub.clone(), alias.join("sub")] {
        let _ = std::fs::remove_file(&mount.state);
        std::os::unix::fs::symlink(&target, &mount.state).unwrap();
        let said = refused_mount(mount.command_for(&mount.backing, &mount.mnt), &mount.mnt);
        assert!(said.contains("is inside the backing folder"), "{said}");
        let left: Vec<_> = std::fs::read_dir(&sub).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
    }
}

/// A service that answers every request with a 200 whose body does not end (it stops after
/// `per_answer` bytes, or when the client hangs up). Answers how many requests it answered.
fn endless_service(per_answer: usize) -> (String, Arc<AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let answered = Arc::new(AtomicUsize::new(0));
    let counter = answered.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let counter = counter.clone();
            std::thread::spawn(move || {
                if common::http::read_request(&stream).is_none() {
                    return;
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let _ = stream.set_write_timeout(Some(Duration::from_secs(20)));
                let head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n";
                let block = vec![b' '; 64 << 10];
                let mut sent = 0;
                let mut ok = stream.write_all(head).is_ok();
                while ok && sent < per_answer {
                    ok = stream.write_all(&block).is_ok();
                    sent += block.len();
                }
            });
        }
    });
    (url, answered)
}

/// The peak resident memory of process `pid` (VmHWM), in bytes.
fn peak_resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().strip_suffix("kB"))
        .and_then(|value| value.trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kib * 1024
}

/// A service whose answers never end: the daemon reads at most 1 MiB of each (it once buffered
/// them whole, up to 1 GB resident), mounts offline, keeps the work pending with the reason, and
/// unmounts on request.
#[test]
fn a_service_answering_without_end_costs_the_daemon_no_memory() {
    let (url, answered) = endless_service(256 << 20);
    let dir = tempfile::tempdir().unwrap();
    let mut mount = Mount::prepare_api(
        dir.path(),
        &url,
        &["--settle-ms", "20", "--drain-timeout", "1"],
    );
    if !mount.mount() {
        return;
    }
    for i in 0..8 {
        std::fs::write(mount.path(&format!("f{i}.jpg")), format!("file {i}")).unwrap();
    }
    // The start-up check's calls (asked again while the answers are too large), then a create
    // for each file.
    let calls = answered.load(Ordering::SeqCst) + 8;
    eventually("never: the creates were answered", || {
        answered.load(Ordering::SeqCst) >= calls
    });
    assert!(mount.is_alive(), "{}", mount.log_text());
    let peak = peak_resident_bytes(mount.pid().unwrap());
    assert!(
        peak < 150 << 20,
        "the daemon's peak resident memory: {peak} bytes"
    );
    let status = mount.status();
    assert!(
        status["last_error"]
            .as_str()
            .is_some_and(|error| error.contains("larger than 1 MiB")),
        "{status}"
    );
    assert!(mount.unmount().success(), "{}", mount.log_text());
}

/// `n` files synced through a fresh mount under `dir`; the mount is then unmounted. `None`
/// when FUSE is not available and not required.
fn library_of(dir: &Path, emulator: &Emulator, n: usize) -> Option<Mount> {
    let mut mount = Mount::prepare(dir, emulator, &["--settle-ms", "20"]);
    if !mount.mount() {
        return None;
    }
    for i in 0..n {
        std::fs::write(
            mount.path(&format!("photo-{i:02}.jpg")),
            format!("photo {i}"),
        )
        .unwrap();
    }
    mount.wait_synced();
    assert_eq!(emulator.live().len(), n);
    assert!(mount.unmount().success());
    Some(mount)
}

/// `maxlofs release-deletes MNT`, which must succeed.
fn release_deletes(mnt: &Path) -> String {
    let out = run(Command::new(BIN).arg("release-deletes").arg(mnt));
    String::from_utf8(out.stdout).unwrap()
}

/// The disk that holds BACKING did not mount: its mount point is an empty folder. The mount is
/// refused and no record is deleted (it once deleted the whole catalog); with --new-backing it
/// mounts, and the deletes are still held until the user releases them.
#[test]
fn an_empty_backing_folder_is_refused_and_its_deletes_wait_for_the_user() {
    let emulator = Emulator::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let Some(mount) = library_of(dir.path(), &emulator, 12) else {
        return;
    };
    let disk = dir.path().join("disk");
    std::fs::rename(&mount.backing, &disk).unwrap();
    std::fs::create_dir(&mount.backing).unwrap();

    let said = refused_mount(mount.command_for(&mount.backing, &mount.mnt), &mount.mnt);
    assert!(
        said.contains("is empty") && said.contains("--new-backing"),
        "{said}"
    );
    assert_eq!(emulator.live().len(), 12, "a refused mount deleted records");

    let mut accepted = Mount::prepare(
        dir.path(),
        &emulator,
        &["--settle-ms", "20", "--new-backing"],
    );
    assert!(accepted.mount());
    accepted.wait_synced();
    let status = accepted.status();
    assert_eq!(status["held_deletes"], 12, "{status}");
    let text = run(Command::new(BIN).arg("status").arg(&accepted.mnt));
    assert!(String::from_utf8_lossy(&text.stdout).contains("DELETES HELD (12)"));
    // Not "all synced" to a script: the catalog is not the tree.
    let waited = Command::new(BIN)
        .args(["status", "--wait"])
        .arg(&accepted.mnt)
        .output()
        .unwrap();
    assert_eq!(waited.status.code(), Some(3));
    assert_eq!(emulator.calls("delete"), 0);
    assert_eq!(emulator.live().len(), 12);

    // The positive control: released, they go out.
    assert!(release_deletes(&accepted.mnt).contains("12 held deletes released"));
    accepted.wait_synced();
    assert_eq!(emulator.live().len(), 0);
    assert_eq!(accepted.status()["held_deletes"], serde_json::Value::Null);
    assert!(accepted.unmount().success());
}

/// Another filesystem under the backing path (a second disk holding a copy, or the wrong disk)
/// is refused by its identity even though it holds files; --new-backing takes it.
#[test]
fn a_backing_folder_on_another_filesystem_is_refused_unless_the_user_says_so() {
    let emulator = Emulator::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let Some(mount) = library_of(dir.path(), &emulator, 3) else {
        return;
    };
    let copy = dir.path().join("copy");
    std::fs::rename(&mount.backing, &copy).unwrap();
    let _disk = Tmpfs::mount(&mount.backing, "16m");
    std::fs::copy(
        copy.join("photo-00.jpg"),
        mount.backing.join("photo-00.jpg"),
    )
    .unwrap();

    let said = refused_mount(mount.command_for(&mount.backing, &mount.mnt), &mount.mnt);
    assert!(
        said.contains("is not the one this index was made for"),
        "{said}"
    );
    assert_eq!(emulator.live().len(), 3);

    let mut accepted = Mount::prepare(
        dir.path(),
        &emulator,
        &["--settle-ms", "20", "--new-backing"],
    );
    assert!(accepted.mount());
    accepted.wait_synced();
    // 2 of 3 gone is below the guard's floor: the user said this folder is the library.
    assert_eq!(emulator.live().keys().collect::<Vec<_>>(), ["photo-00.jpg"]);
    assert!(accepted.unmount().success());
    // Taken as the library from now on: it mounts without the flag.
    let mut again = Mount::prepare(dir.path(), &emulator, &["--settle-ms", "20"]);
    assert!(again.mount());
    assert!(again.unmount().success());
}

/// Most of the library gone behind the mount's back (a folder moved away while unmounted): the
/// deletes are held; a delete the user makes through the mount goes out at once; files put back
/// keep their records when the rest are released.
#[test]
fn most_files_gone_behind_the_mounts_back_are_held_and_the_users_own_deletes_are_not() {
    let emulator = Emulator::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let Some(mount) = library_of(dir.path(), &emulator, 20) else {
        return;
    };
    let aside = dir.path().join("aside");
    std::fs::create_dir(&aside).unwrap();
    for i in 0..15 {
        let name = format!("photo-{i:02}.jpg");
        std::fs::rename(mount.backing.join(&name), aside.join(&name)).unwrap();
    }
    let mut again = Mount::prepare(dir.path(), &emulator, &["--settle-ms", "20"]);
    assert!(again.mount());
    again.wait_synced();
    let status = again.status();
    assert_eq!(status["held_deletes"], 15, "{status}");
    assert!(
        status["held_deletes_why"]
            .as_str()
            .unwrap()
            .contains("15 of the 20"),
        "{status}"
    );
    assert_eq!(emulator.calls("delete"), 0);

    std::fs::remove_file(again.path("photo-19.jpg")).unwrap();
    again.wait_synced();
    assert_eq!(
        emulator.calls("delete"),
        1,
        "the user's own delete goes out"
    );
    assert!(!emulator.live().contains_key("photo-19.jpg"));

    for i in 0..3 {
        let name = format!("photo-{i:02}.jpg");
        std::fs::rename(aside.join(&name), again.backing.join(&name)).unwrap();
    }
    assert!(release_deletes(&again.mnt).contains("15 held deletes released"));
    again.wait_synced();
    let live: Vec<String> = emulator.live().into_keys().collect();
    let expected: Vec<String> = (0..3)
        .chain(15..19)
        .map(|i| format!("photo-{i:02}.jpg"))
        .collect();
    assert_eq!(live, expected);
    assert!(again.unmount().success());
}

/// A create answered 200 with the media_id of another path's record (a lying or confused
/// service): refused and reported, never followed; that record is neither updated with this
/// file's content nor deleted with it.
#[test]
fn a_create_answered_with_another_paths_id_is_refused_and_that_record_kept() {
    let emulator = Emulator::start(&[]);
    let proxy = Proxy::start(&emulator.url);
    let mut mount = match Mount::start_api(&proxy.url, &["--settle-ms", "20"]) {
        Some(mount) => mount,
        None => return,
    };
    std::fs::write(mount.path("victim.jpg"), b"the victim's content").unwrap();
    mount.wait_synced();
    let victim = emulator.live()["victim.jpg"].clone();
    let taken = serde_json::json!({ "media_id": victim["media_id"] }).to_string();
    proxy.add_rule(Rule {
        matches: is_create,
        action: Action::Answer(response("200 OK", taken.as_bytes())),
        times: None,
    });
    std::fs::write(mount.path("mine.jpg"), b"my own content").unwrap();
    mount.wait_synced();
    let status = mount.status();
    let failed = status["failed"].to_string();
    assert!(
        failed.contains("mine.jpg") && failed.contains("is the record of \\\"victim.jpg\\\""),
        "{status}"
    );
    std::fs::remove_file(mount.path("mine.jpg")).unwrap();
    mount.wait_synced();
    assert_eq!(emulator.live()["victim.jpg"], victim);
    assert_eq!(emulator.calls("update") + emulator.calls("delete"), 0);

    // The positive control: a service answering sense gets the file's own record.
    proxy.clear_rules();
    std::fs::write(mount.path("mine.jpg"), b"my own content").unwrap();
    mount.wait_synced();
    assert_eq!(emulator.live().len(), 2);
    assert_eq!(emulator.live()["victim.jpg"], victim);
    assert!(mount.unmount().success());
}

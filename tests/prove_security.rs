//! Security: nothing outside the backing folder is read or changed through the mount by
//! symlinks or rename races; another user cannot enter a mount made without --allow-other; keys
//! never appear in logs (at trace level), status, Debug output or the state folder.

#[macro_use]
mod common;

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::service::{check_catalog, live_catalog, Emulator, Mount};
use common::Later;

fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(entry.path());
            } else {
                found.push(entry.path());
            }
        }
    }
    found.sort();
    found
}

/// A symlink in the backing folder to a directory outside: the kernel may follow it for a
/// client (that is the client's own path resolution), but the sync engine never does: no record
/// for anything behind it, not from events, not from reconcile.
#[test]
fn the_engine_never_reads_through_a_symlink_to_outside() {
    let emulator = Emulator::start(&[]);
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret.jpg"), b"outside, never sent").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut mount = Mount::prepare(dir.path(), &emulator, &["--settle-ms", "20"]);
    std::os::unix::fs::symlink(outside.path(), mount.backing.join("link")).unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("secret.jpg"),
        mount.backing.join("file-link.jpg"),
    )
    .unwrap();
    if !mount.mount() {
        return;
    }
    std::fs::write(mount.path("inside.jpg"), b"inside").unwrap();
    // Through the mount the kernel resolves the link itself, landing outside: allowed, not ours.
    std::fs::write(mount.path("link/written-through.jpg"), b"client-side").unwrap();
    mount.wait_synced();
    let paths: Vec<String> = live_catalog(&emulator).into_keys().collect();
    assert_eq!(paths, ["inside.jpg"]);
    check_catalog(&emulator, &mount.backing);
    // A fresh start walks the tree: still nothing from behind the links.
    assert!(mount.unmount().success());
    std::fs::write(outside.path().join("while-down.jpg"), b"outside").unwrap();
    assert!(mount.mount());
    mount.wait_synced();
    let paths: Vec<String> = live_catalog(&emulator).into_keys().collect();
    assert_eq!(paths, ["inside.jpg"]);
    assert_eq!(emulator.calls("create"), 1);
}

/// A thread swaps directories of the backing folder with symlinks to a directory outside
/// (atomically, `RENAME_EXCHANGE`, so no name is ever missing), and back, while another creates
/// files through the mount in those directories, each looked up for the first time at a random
/// moment of the swapping (the kernel caches a name once looked up). The symlinks' target is
/// relative, and the mountpoint sits deeper than the backing folder, so the daemon resolving one
/// would land in `outside`, the client's kernel in `m/m/m/outside`. Nothing may ever be created
/// in `outside`, and no record may come from it.
#[test]
fn a_directory_swapped_for_a_symlink_never_lets_the_daemon_create_outside() {
    const DIRS: usize = 200;
    let emulator = Emulator::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let mut mount = Mount::prepare(dir.path(), &emulator, &["--settle-ms", "20"]);
    let deep = dir.path().join("m/m/m");
    std::fs::create_dir_all(deep.join("mnt")).unwrap();
    std::fs::create_dir_all(deep.join("outside")).unwrap();
    mount.mnt = deep.join("mnt");
    let daemon_side = dir.path().join("outside");
    std::fs::create_dir(&daemon_side).unwrap();
    std::fs::write(daemon_side.join("secret.jpg"), b"outside, never sent").unwrap();
    for i in 0..DIRS {
        std::fs::create_dir(mount.backing.join(format!("d{i}"))).unwrap();
        std::os::unix::fs::symlink("../outside", mount.backing.join(format!("l{i}"))).unwrap();
    }
    if !mount.mount() {
        return;
    }
    let stop = AtomicBool::new(false);
    let (created, swaps) = std::thread::scope(|scope| {
        let swapper = scope.spawn(|| {
            let mut swaps = 0;
            while !stop.load(Ordering::SeqCst) {
                let i = swaps % DIRS;
                let d = mount.backing.join(format!("d{i}"));
                let l = mount.backing.join(format!("l{i}"));
                common::model::rename_exchange(&d, &l).unwrap();
                std::thread::yield_now();
                common::model::rename_exchange(&d, &l).unwrap();
                swaps += 1;
            }
            swaps
        });
        let mut created = 0;
        for i in 0..DIRS {
            if std::fs::write(mount.path(&format!("d{i}/f.jpg")), b"x").is_ok() {
                created += 1;
            }
            let _ = std::fs::create_dir(mount.path(&format!("d{i}/sub")));
            let _ = std::fs::write(mount.path(&format!("d{i}/sub/g.jpg")), b"y");
        }
        stop.store(true, Ordering::SeqCst);
        (created, swapper.join().unwrap())
    });
    let client_side = files_below(&deep.join("outside")).len();
    println!(
        "{created} creates, {swaps} swaps, {client_side} resolved by the kernel to m/m/m/outside"
    );
    assert!(created > 0 && swaps > 0, "created {created}, swaps {swaps}");
    assert_eq!(
        files_below(&daemon_side),
        [daemon_side.join("secret.jpg")],
        "the daemon created something outside the backing folder"
    );
    assert!(
        std::fs::read_dir(&daemon_side).unwrap().count() == 1,
        "a directory appeared outside"
    );
    // The swaps were made behind the mount's back, so events may name paths that were a symlink
    // when looked at; a change behind the mount's back is caught up at the next start.
    mount.wait_synced();
    assert!(mount.unmount().success());
    assert!(mount.mount());
    mount.wait_synced();
    check_catalog(&emulator, &mount.backing);
    assert!(!live_catalog(&emulator)
        .keys()
        .any(|p| p.ends_with("secret.jpg")));
}

/// A directory moved out of the backing folder (directly, not through the mount) while a client
/// of the mount still has it open (a shell's working directory): creating a file there through
/// the mount must not land outside the backing folder.
#[test]
fn a_directory_moved_out_of_the_backing_folder_is_not_written_through_the_mount() {
    let emulator = Emulator::start(&[]);
    let mount = mount!(emulator, &["--settle-ms", "20"]);
    std::fs::create_dir(mount.path("d")).unwrap();
    let held = std::fs::File::open(mount.path("d")).unwrap();
    let away = mount.backing.parent().unwrap().join("away");
    std::fs::rename(mount.backing.join("d"), &away).unwrap();
    let name = CString::new("planted.txt").unwrap();
    // SAFETY: valid descriptor and C string.
    let fd = unsafe {
        libc::openat(
            held.as_raw_fd(),
            name.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC,
            0o644,
        )
    };
    if fd >= 0 {
        // SAFETY: the descriptor was just opened and is not used again.
        unsafe { libc::close(fd) };
    }
    assert!(
        !away.join("planted.txt").exists(),
        "a file was created outside the backing folder through the mount"
    );
    assert!(
        std::fs::read_dir(mount.path("d")).is_err(),
        "listed outside"
    );

    // The same for a file the kernel knows: no chmod or truncate reaches it once moved out.
    std::fs::write(mount.path("f.txt"), b"keep").unwrap();
    std::fs::metadata(mount.path("f.txt")).unwrap();
    let away_file = mount.backing.parent().unwrap().join("away.txt");
    std::fs::rename(mount.backing.join("f.txt"), &away_file).unwrap();
    let _ = std::fs::set_permissions(mount.path("f.txt"), std::fs::Permissions::from_mode(0o600));
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(mount.path("f.txt"));
    let meta = std::fs::metadata(&away_file).unwrap();
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o644,
        "chmod reached outside"
    );
    assert_eq!(
        std::fs::read(&away_file).unwrap(),
        b"keep",
        "truncate reached outside"
    );
}

fn as_nobody(args: &[&str]) -> std::process::Output {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(args)
        .output()
        .unwrap()
}

/// Without --allow-other another user is turned away at the mountpoint (the folders above it
/// are open to them); with it, they get in.
#[test]
fn another_user_cannot_enter_a_mount_made_without_allow_other() {
    let emulator = Emulator::start(&[]);
    for (allow_other, enters) in [(false, false), (true, true)] {
        let extra: &[&str] = if allow_other {
            &["--settle-ms", "20", "--allow-other"]
        } else {
            &["--settle-ms", "20"]
        };
        let mount = mount!(emulator, extra);
        std::fs::set_permissions(&mount.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(mount.path("private.txt"), b"mine").unwrap();
        // Control: the folder holding the mountpoint is open to them.
        let control = as_nobody(&["ls", mount.dir.to_str().unwrap()]);
        assert!(control.status.success(), "{control:?}");
        let listing = as_nobody(&["ls", mount.mnt.to_str().unwrap()]);
        let reading = as_nobody(&["cat", mount.path("private.txt").to_str().unwrap()]);
        if enters {
            assert!(listing.status.success(), "{listing:?}");
            assert_eq!(reading.stdout, b"mine");
        } else {
            for denied in [&listing, &reading] {
                assert!(!denied.status.success(), "{denied:?}");
                let stderr = String::from_utf8_lossy(&denied.stderr);
                assert!(stderr.contains("Permission denied"), "{stderr}");
            }
        }
    }
}

fn scan_for(haystack_name: &str, haystack: &[u8], keys: &[&str]) {
    for key in keys {
        assert!(
            !haystack
                .windows(key.len())
                .any(|window| window == key.as_bytes()),
            "{key:?} appears in {haystack_name}"
        );
    }
}

/// With RUST_LOG=trace, through creates, updates, deletes (the user key goes in a DELETE's
/// query), a refused key and a key change, no key appears in the daemon's log, its status, its
/// state folder (index, WAL), or the Debug output of the key types.
#[test]
fn keys_never_appear_in_logs_status_debug_output_or_the_state_folder() {
    let device_key = "dk-7f3a9c1e5b2d4f60-device";
    let new_device_key = "dk-0b8e2d7c6a5f4e31-rotated";
    let user_key = "uk-4c2e8a6f1d3b5e79-user";
    let keys = [device_key, new_device_key, user_key];
    let emulator = Emulator::start(&[
        "--device-key",
        device_key,
        "--device-key",
        new_device_key,
        "--user-key",
        user_key,
    ]);
    let dir = tempfile::tempdir().unwrap();
    let user_key_file = dir.path().join("user.key");
    std::fs::write(&user_key_file, user_key).unwrap();
    let mut mount = Mount::prepare(
        dir.path(),
        &emulator,
        &[
            "--settle-ms",
            "20",
            "--user-key-file",
            user_key_file.to_str().unwrap(),
        ],
    );
    std::fs::write(&mount.key_file, device_key).unwrap();
    mount.env.push(("RUST_LOG".into(), "trace".into()));
    if !mount.mount() {
        return;
    }
    std::fs::write(mount.path("a.jpg"), b"one").unwrap();
    std::fs::write(mount.path("b.jpg"), b"two").unwrap();
    mount.wait_synced();
    std::fs::write(mount.path("a.jpg"), b"one, changed").unwrap();
    std::fs::remove_file(mount.path("b.jpg")).unwrap();
    mount.wait_synced();
    assert_eq!(emulator.calls("delete"), 1);

    let (status, _) = emulator.post(
        "/_emulator/revoke-key",
        &serde_json::json!({"key": device_key}),
    );
    assert_eq!(status, 200);
    std::fs::write(mount.path("c.jpg"), b"while refused").unwrap();
    common::eventually_within(Duration::from_secs(30), "never paused", || {
        !mount.status()["paused"].is_null()
    });
    std::fs::write(&mount.key_file, new_device_key).unwrap();
    mount.wait_synced();
    check_catalog(&emulator, &mount.backing);
    let status = mount.status().to_string();
    assert!(mount.unmount().success());

    let log = std::fs::read(&mount.log).unwrap();
    assert!(log.len() > 10_000, "trace logging is on");
    scan_for("the daemon's trace log", &log, &keys);
    scan_for("status", status.as_bytes(), &keys);
    for file in files_below(&mount.state) {
        scan_for(
            &file.display().to_string(),
            &std::fs::read(&file).unwrap(),
            &keys,
        );
    }
    let debug = format!(
        "{:?}",
        maxlofs_api::Keys {
            device: maxlofs_api::SecretKey::new(device_key),
            user: Some(maxlofs_api::SecretKey::new(user_key)),
        }
    );
    scan_for("Debug of Keys", debug.as_bytes(), &keys);
    let display = format!("{}", maxlofs_api::SecretKey::new(device_key));
    scan_for("Display of SecretKey", display.as_bytes(), &keys);
}

/// Names, attributes and link targets of a private mount stay private even while the kernel has
/// them cached: root lists the whole tree (every entry and attribute cached for the TTL), then
/// another user asks for cached and uncached entries alike and is refused by the kernel itself.
#[test]
fn another_user_sees_nothing_of_a_private_mount_cached_or_not() {
    let emulator = Emulator::start(&[]);
    let mount = mount!(emulator, &["--settle-ms", "20"]);
    std::fs::set_permissions(&mount.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir(mount.path("priv")).unwrap();
    std::fs::set_permissions(mount.path("priv"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(mount.path("priv/secret.txt"), b"secret").unwrap();
    std::fs::write(mount.path("open.txt"), b"open").unwrap();
    std::os::unix::fs::symlink("priv/secret.txt", mount.path("link")).unwrap();
    let listed = Command::new("ls")
        .arg("-laR")
        .arg(&mount.mnt)
        .output()
        .unwrap();
    assert!(listed.status.success(), "{listed:?}");
    // Made behind the mount's back after the listing: never looked up, so not cached.
    std::fs::write(mount.backing.join("uncached.txt"), b"new").unwrap();
    let mnt = mount.mnt.to_str().unwrap();
    let path = |rel: &str| mount.path(rel).to_str().unwrap().to_string();
    let attempts = [
        vec!["stat".to_string(), path("priv/secret.txt")],
        vec!["stat".to_string(), path("open.txt")],
        vec!["readlink".to_string(), "-v".to_string(), path("link")],
        vec!["ls".to_string(), mnt.to_string()],
        vec!["stat".to_string(), mnt.to_string()],
        vec!["stat".to_string(), path("uncached.txt")],
        vec!["cat".to_string(), path("uncached.txt")],
    ];
    for attempt in &attempts {
        let args: Vec<&str> = attempt.iter().map(String::as_str).collect();
        let output = as_nobody(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success() && stderr.contains("Permission denied"),
            "{attempt:?} as nobody: {output:?}"
        );
        assert!(output.stdout.is_empty(), "{attempt:?} printed {output:?}");
    }
}

/// On an --allow-other mount, status names paths anywhere in the tree: another user asking for
/// it is refused, so a name inside root's 0700 folder (here a file kept local because its name is
/// not UTF-8, which status lists) does not reach them; the owner still gets it.
#[test]
fn status_answers_only_the_owner_and_root() {
    let emulator = Emulator::start(&[]);
    let mount = mount!(emulator, &["--settle-ms", "20", "--allow-other"]);
    std::fs::set_permissions(&mount.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&mount.mnt, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir(mount.path("priv")).unwrap();
    std::fs::set_permissions(mount.path("priv"), std::fs::Permissions::from_mode(0o700)).unwrap();
    let name = std::ffi::OsStr::from_bytes(b"secret-name-\xff.jpg");
    std::fs::write(mount.path("priv").join(name), b"x").unwrap();
    let mnt = mount.mnt.to_str().unwrap();
    let last = std::cell::RefCell::new(None);
    common::eventually_within(
        Duration::from_secs(30),
        Later(|| format!("never listed: {:?}", last.borrow())),
        || {
            let owner = Command::new(common::service::BIN)
                .args(["status", mnt])
                .output()
                .unwrap();
            assert!(owner.status.success(), "{owner:?}");
            let listed = String::from_utf8_lossy(&owner.stdout).contains("priv/secret-name");
            *last.borrow_mut() = Some(owner);
            listed
        },
    );
    // Control: the mount lets them in (they can list its root).
    let control = as_nobody(&["ls", mnt]);
    assert!(control.status.success(), "{control:?}");
    // The folder itself is closed to them, cached or not (default_permissions).
    let listed = Command::new("ls").arg("-laR").arg(mnt).output().unwrap();
    assert!(listed.status.success(), "{listed:?}");
    let inside = as_nobody(&["ls", mount.path("priv").to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&inside.stderr).contains("Permission denied"),
        "{inside:?}"
    );
    // Nor may they ask the daemon for its jobs, which would name the paths too: each is refused
    // as the mount's, not taken for an unmounted folder.
    for command in [
        &["status", mnt][..],
        &["verify", mnt],
        &["scrub", mnt],
        &["restore", mnt, "--corrupted"],
    ] {
        let argv: Vec<&str> = [common::service::BIN]
            .iter()
            .chain(command)
            .copied()
            .collect();
        let other = as_nobody(&argv);
        assert!(!other.status.success(), "{other:?}");
        assert!(
            String::from_utf8_lossy(&other.stderr).contains("Permission denied"),
            "{command:?}: {other:?}"
        );
        for output in [&other.stdout, &other.stderr] {
            assert!(
                !String::from_utf8_lossy(output).contains("secret-name"),
                "{other:?}"
            );
        }
    }
}

/// A client keeps asking about a directory that was moved out of the backing folder (each
/// request refused): the log gets a few lines and a count of those left out, not one per request.
#[test]
fn refusals_of_an_inode_moved_out_are_rate_limited_in_the_log() {
    const REQUESTS: usize = 2000;
    let emulator = Emulator::start(&[]);
    let mount = mount!(emulator, &["--settle-ms", "20"]);
    std::fs::create_dir(mount.path("d")).unwrap();
    let held = std::fs::File::open(mount.path("d")).unwrap();
    std::fs::rename(
        mount.backing.join("d"),
        mount.backing.parent().unwrap().join("away"),
    )
    .unwrap();
    let mut refused = 0;
    for _ in 0..REQUESTS {
        if held
            .set_permissions(std::fs::Permissions::from_mode(0o700))
            .is_err()
        {
            refused += 1;
        }
    }
    assert_eq!(refused, REQUESTS);
    let log = mount.log_text();
    let lines = log
        .lines()
        .filter(|line| line.contains("moved out of the backing folder"))
        .count();
    assert!((1..=20).contains(&lines), "{lines} lines:\n{log}");
}

const NOBODY: u32 = 65534;

/// uid, gid and mode of `path` itself (a symlink is not followed).
fn owner_of(path: &Path) -> (u32, u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    (meta.uid(), meta.gid(), meta.mode())
}

/// `script` run by `sh` in `dir` as nobody, with `groups` as their only other groups.
fn sh_as_nobody(dir: &Path, groups: &str, script: &str) -> std::process::Output {
    let groups = if groups.is_empty() {
        "--clear-groups".to_string()
    } else {
        format!("--groups={groups}")
    };
    Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            &groups,
            "sh",
            "-c",
            script,
        ])
        .current_dir(dir)
        .output()
        .unwrap()
}

/// On an --allow-other mount of a root daemon, what another user creates through the mount is
/// theirs, whatever its kind: a file, a folder, a symlink, a fifo (mknod). In a set-group-ID
/// folder the group is the folder's, and a folder inherits the bit. A folder they may write only
/// through a supplementary group (the kernel checks those; the daemon cannot take them on) takes
/// their files too. Root's own creates afterwards, through the same serving threads, are root's,
/// also in a folder only root may enter.
#[test]
fn what_another_user_creates_through_an_allow_other_mount_is_theirs() {
    const GROUP: u32 = 4242;
    let emulator = Emulator::start(&[]);
    let mount = mount!(emulator, &["--settle-ms", "20", "--allow-other"]);
    std::fs::set_permissions(&mount.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let backing = &mount.backing;
    for (folder, gid, mode) in [
        ("shared", NOBODY, 0o755),
        ("setgid", GROUP, 0o2777),
        ("group", GROUP, 0o770),
        ("root-only", 0, 0o700),
    ] {
        let path = backing.join(folder);
        std::fs::create_dir(&path).unwrap();
        let uid = if folder == "shared" { NOBODY } else { 0 };
        std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let made = sh_as_nobody(
        &mount.path("shared"),
        "",
        "set -e; echo x > f; mkdir d; ln -s f s; mkfifo p",
    );
    assert!(made.status.success(), "{made:?}");
    for name in ["f", "d", "s", "p"] {
        let (uid, gid, _) = owner_of(&backing.join("shared").join(name));
        assert_eq!((uid, gid), (NOBODY, NOBODY), "shared/{name}");
    }
    let made = sh_as_nobody(&mount.path("setgid"), "", "set -e; echo x > f; mkdir d");
    assert!(made.status.success(), "{made:?}");
    let (uid, gid, _) = owner_of(&backing.join("setgid/f"));
    assert_eq!((uid, gid), (NOBODY, GROUP), "setgid/f");
    let (uid, gid, mode) = owner_of(&backing.join("setgid/d"));
    assert_eq!((uid, gid), (NOBODY, GROUP), "setgid/d");
    assert_ne!(
        mode & libc::S_ISGID,
        0,
        "setgid/d inherits the bit: {mode:o}"
    );
    let made = sh_as_nobody(&mount.path("group"), &GROUP.to_string(), "echo x > f");
    assert!(made.status.success(), "{made:?}");
    let (uid, gid, _) = owner_of(&backing.join("group/f"));
    assert_eq!((uid, gid), (NOBODY, NOBODY), "group/f");

    std::fs::write(mount.path("root-only/r"), b"root's").unwrap();
    std::fs::create_dir(mount.path("root-only/rd")).unwrap();
    std::fs::write(mount.path("shared/r"), b"root's").unwrap();
    for path in ["root-only/r", "root-only/rd", "shared/r"] {
        let (uid, gid, _) = owner_of(&backing.join(path));
        assert_eq!((uid, gid), (0, 0), "{path}");
    }
}

/// The names an inotify read reports created (`IN_CREATE`), in order.
fn created_names(buffer: &[u8]) -> Vec<Vec<u8>> {
    const HEADER: usize = std::mem::size_of::<libc::inotify_event>();
    let mut names = Vec::new();
    let mut at = 0;
    while at + HEADER <= buffer.len() {
        let field = |offset: usize| {
            u32::from_ne_bytes(buffer[at + offset..at + offset + 4].try_into().unwrap())
        };
        let (mask, len) = (field(4), field(12) as usize);
        let name = &buffer[at + HEADER..at + HEADER + len];
        let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(len)];
        if mask & libc::IN_CREATE != 0 {
            names.push(name.to_vec());
        }
        at += HEADER + len;
    }
    names
}

/// The calling thread alone becomes nobody (raw system calls: glibc's setuid family would change
/// every thread of the test process).
fn this_thread_becomes_nobody() {
    let nobody = libc::c_long::from(NOBODY as i32);
    // SAFETY: these change only the calling thread's credentials; no pointers but a null list.
    unsafe {
        assert_eq!(
            libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()),
            0
        );
        assert_eq!(
            libc::syscall(libc::SYS_setresgid, nobody, nobody, nobody),
            0
        );
        assert_eq!(
            libc::syscall(libc::SYS_setresuid, nobody, nobody, nobody),
            0
        );
    }
}

/// Pins the thread or process `tid` (0: the calling thread) to `cpu`.
fn pin_to_cpu(tid: libc::pid_t, cpu: usize) {
    // SAFETY: cpu_set_t is plain data, all-zero the empty set; the call reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0,
            "pin {tid} to cpu {cpu}: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The attack on a root daemon that gives what others create to them by name: another user with
/// write access to BACKING swaps a name they just created through the mount for a hard link to a
/// root-owned file, between the create and the chown, and the chown hands them that file. Here
/// `nobody` creates files, folders, symlinks and fifos through an --allow-other mount, and a
/// thread that is nobody too, watching the backing folder with inotify, moves each new entry
/// aside (`.took-NAME`) and links a root-owned file (mode 0666, which `protected_hardlinks` lets
/// anyone link) in its place. That thread runs real-time on the daemon's only CPU, so it runs the
/// moment the entry exists, before the daemon's next system call: every round is the race won.
/// The root file must stay root's, and every entry moved aside must be nobody's from the start.
#[test]
fn a_new_name_swapped_for_a_hard_link_to_a_root_file_never_gives_that_file_away() {
    const ROUNDS: usize = 50;
    let emulator = Emulator::start(&[]);
    let mount = mount!(emulator, &["--settle-ms", "20", "--allow-other"]);
    std::fs::set_permissions(&mount.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let shared = mount.backing.join("shared");
    std::fs::create_dir(&shared).unwrap();
    common::service::give_to_nobody(&shared);
    let victim = mount.backing.join("root-file");
    std::fs::write(&victim, b"root's").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o666)).unwrap();
    assert_eq!(owner_of(&victim), (0, 0, libc::S_IFREG | 0o666));

    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for this thread.
    let cpu = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set);
        (0..libc::CPU_SETSIZE as usize)
            .find(|&cpu| libc::CPU_ISSET(cpu, &set))
            .unwrap()
    };
    let daemon = mount.pid().expect("mounted");
    for task in std::fs::read_dir(format!("/proc/{daemon}/task")).unwrap() {
        let tid = task.unwrap().file_name().to_str().unwrap().parse().unwrap();
        pin_to_cpu(tid, cpu);
    }

    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let swaps = std::thread::scope(|scope| {
        let racer = scope.spawn(|| {
            pin_to_cpu(0, cpu);
            let param = libc::sched_param { sched_priority: 10 };
            // SAFETY: sets the calling thread's policy from a valid sched_param.
            let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
            assert_eq!(rc, 0, "SCHED_FIFO: {}", std::io::Error::last_os_error());
            // SAFETY: inotify_init1 has no preconditions.
            let inotify = unsafe { libc::inotify_init1(libc::IN_CLOEXEC) };
            assert!(inotify >= 0);
            let watched = CString::new(shared.as_os_str().as_bytes()).unwrap();
            // SAFETY: a valid descriptor and C string.
            let wd = unsafe { libc::inotify_add_watch(inotify, watched.as_ptr(), libc::IN_CREATE) };
            assert!(wd >= 0);
            this_thread_becomes_nobody();
            ready_tx.send(()).unwrap();
            let mut swapped = std::collections::HashSet::new();
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                // SAFETY: reads into a buffer of its length.
                let n = unsafe { libc::read(inotify, buffer.as_mut_ptr().cast(), buffer.len()) };
                assert!(n > 0, "inotify read: {}", std::io::Error::last_os_error());
                for name in created_names(&buffer[..n as usize]) {
                    if name == b".stop" {
                        // SAFETY: the descriptor is ours and not used again.
                        unsafe { libc::close(inotify) };
                        return swapped.len();
                    }
                    // Its own links and moves are seen too: each name is swapped once.
                    if name.starts_with(b".") || !swapped.insert(name.clone()) {
                        continue;
                    }
                    let new = shared.join(std::ffi::OsStr::from_bytes(&name));
                    let mut aside = b".took-".to_vec();
                    aside.extend_from_slice(&name);
                    let aside = shared.join(std::ffi::OsStr::from_bytes(&aside));
                    std::fs::rename(&new, &aside).unwrap();
                    std::fs::hard_link(&victim, &new).unwrap();
                }
            }
        });
        ready_rx.recv().unwrap();
        // Folders and symlinks swapped for a file answer EIO through the mount: not our concern.
        let creates = sh_as_nobody(
            &mount.path("shared"),
            "",
            &format!(
                "i=0; while [ $i -lt {ROUNDS} ]; do \
                 true > f$i; mkdir d$i; ln -s f$i s$i; mkfifo p$i; i=$((i + 1)); \
                 done 2>/dev/null; true"
            ),
        );
        std::fs::write(shared.join(".stop"), b"").unwrap();
        assert!(creates.status.success(), "{creates:?}");
        racer.join().unwrap()
    });

    assert_eq!(
        owner_of(&victim),
        (0, 0, libc::S_IFREG | 0o666),
        "the root-owned file was given away"
    );
    let mut kinds = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(&shared).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        let Some(created) = name.to_str().unwrap().strip_prefix(".took-") else {
            continue;
        };
        kinds.insert(created.chars().next().unwrap());
        let (uid, gid, _) = owner_of(&entry.path());
        assert_eq!(
            (uid, gid),
            (NOBODY, NOBODY),
            "{created} was created as another user"
        );
    }
    println!("{swaps} names swapped for a hard link to the root file");
    assert_eq!(swaps, 4 * ROUNDS, "every entry created was swapped");
    assert_eq!(
        kinds,
        "dfps".chars().collect(),
        "all four kinds were created and swapped"
    );
}

/// A world-writable sticky folder, as /tmp, where nobody plants names, beside root's own folder
/// and file that must come through untouched. The shared folder is nobody's: the kernel's
/// `fs.protected_symlinks` and `fs.protected_regular` guard a sticky folder only against names
/// of users other than its owner, so here the daemon's own refusal is what the test sees, however
/// the machine sets them.
struct Planted {
    _dir: tempfile::TempDir,
    shared: PathBuf,
    roots_folder: PathBuf,
    roots_file: PathBuf,
}

impl Planted {
    fn new() -> Planted {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        common::service::give_to_nobody(&shared);
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let roots_folder = dir.path().join("roots-folder");
        std::fs::create_dir(&roots_folder).unwrap();
        std::fs::set_permissions(&roots_folder, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(roots_folder.join("kept.txt"), b"root's own").unwrap();
        let roots_file = dir.path().join("roots-file");
        std::fs::write(&roots_file, b"root's own\n").unwrap();
        std::fs::set_permissions(&roots_file, std::fs::Permissions::from_mode(0o644)).unwrap();
        Planted {
            _dir: dir,
            shared,
            roots_folder,
            roots_file,
        }
    }

    /// nobody's symlink at `name` in the shared folder, to `target`.
    fn symlink(&self, name: &str, target: &Path) -> PathBuf {
        let link = self.shared.join(name);
        let made = as_nobody(&["ln", "-s", target.to_str().unwrap(), link.to_str().unwrap()]);
        assert!(made.status.success(), "{made:?}");
        assert_eq!(link.symlink_metadata().unwrap().uid(), 65534);
        link
    }

    /// Asserts root's folder and file are as they were made: modes, names and contents.
    fn assert_untouched(&self) {
        assert_eq!(mode_of(&self.roots_folder), 0o755);
        let names: Vec<_> = std::fs::read_dir(&self.roots_folder)
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, ["kept.txt"]);
        assert_eq!(
            std::fs::read(self.roots_folder.join("kept.txt")).unwrap(),
            b"root's own"
        );
        assert_eq!(mode_of(&self.roots_file), 0o644);
        assert_eq!(std::fs::read(&self.roots_file).unwrap(), b"root's own\n");
    }
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Runs a `maxlofs mount` that must be refused as a usage error (exit status 2) before anything
/// is mounted, and answers its stderr. One that mounts instead is unmounted and fails the test.
fn refused_with_2(mut command: Command, mnt: &Path) -> String {
    let out = common::service::output_within(&mut command, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if common::service::is_mounted(mnt) {
        let _ = Command::new("umount").arg(mnt).status();
        panic!("mounted instead of refusing: {}\n{stderr}", out.status);
    }
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    stderr
}

/// A symlink another user planted at the name of the state folder, in a shared folder, to a
/// folder of root's: the daemon made that folder 0700 and put its index there. Now the mount is
/// refused, saying which path and what to do, and root's folder is as it was.
#[test]
fn a_symlink_planted_at_the_state_folder_is_refused_and_its_target_untouched() {
    let emulator = Emulator::start(&[]);
    let planted = Planted::new();
    let mount = Mount::prepare(&planted.shared, &emulator, &[]);
    planted.symlink("state", &planted.roots_folder);
    let said = refused_with_2(mount.command_for(&mount.backing, &mount.mnt), &mount.mnt);
    assert!(
        said.contains(&format!(
            "state folder {} is a symlink",
            mount.state.display()
        )) && said.contains("choose another --state-dir"),
        "{said}"
    );
    // In daemon mode the daemon refuses it, and `maxlofs mount` exits 2 as the daemon did.
    let log = planted.shared.join("own.log");
    let (command, mnt) = daemon_mode_mount(&planted.shared, &emulator, &log);
    let said = refused_with_2(command, &mnt);
    assert!(said.contains("is a symlink"), "{said}");
    planted.assert_untouched();
}

/// `maxlofs mount` in daemon mode with its log at `log`, against `emulator`, with a site of its
/// own in `dir`.
fn daemon_mode_mount(dir: &Path, emulator: &Emulator, log: &Path) -> (Command, PathBuf) {
    let mount = Mount::prepare(dir, emulator, &[]);
    let mut command = Command::new(common::service::BIN);
    command
        .arg("mount")
        .arg(&mount.backing)
        .arg(&mount.mnt)
        .arg("--api")
        .arg(&emulator.url)
        .arg("--device-key-file")
        .arg(&mount.key_file)
        .arg("--state-dir")
        .arg(&mount.state)
        .arg("--log-file")
        .arg(log);
    (command, mount.mnt.clone())
}

/// A symlink another user planted at the log file's name, in a shared folder, to a file of
/// root's: the daemon appended its log to that file. Now the mount is refused and the file is as
/// it was.
#[test]
fn a_symlink_planted_at_the_log_file_is_refused_and_its_target_untouched() {
    let emulator = Emulator::start(&[]);
    let planted = Planted::new();
    let log = planted.symlink("maxlofs.log", &planted.roots_file);
    let site = tempfile::tempdir().unwrap();
    let (command, mnt) = daemon_mode_mount(site.path(), &emulator, &log);
    let said = refused_with_2(command, &mnt);
    assert!(
        said.contains(&format!("log file {} is a symlink", log.display()))
            && said.contains("choose another --log-file"),
        "{said}"
    );
    planted.assert_untouched();
}

/// A log file another user made beforehand, in a shared folder: the daemon logged into it, for
/// that user to read. Now the mount is refused and nothing is written to it.
#[test]
fn a_log_file_made_by_another_user_is_refused_and_nothing_written_to_it() {
    let emulator = Emulator::start(&[]);
    let planted = Planted::new();
    let log = planted.shared.join("maxlofs.log");
    let made = as_nobody(&["touch", log.to_str().unwrap()]);
    assert!(made.status.success(), "{made:?}");
    let site = tempfile::tempdir().unwrap();
    let (command, mnt) = daemon_mode_mount(site.path(), &emulator, &log);
    let said = refused_with_2(command, &mnt);
    assert!(
        said.contains(&format!("log file {} belongs to uid 65534", log.display())),
        "{said}"
    );
    assert_eq!(std::fs::metadata(&log).unwrap().len(), 0);
    planted.assert_untouched();
}

/// The daemon is not dumpable: no core dump holds its keys, and no other process of its user may
/// read its memory. Seen from outside as the kernel shows it: the /proc files of a process that
/// is not dumpable (mem, environ) are root's, so a daemon run as nobody cannot be read by nobody,
/// while a plain process of nobody's can (the control). Looked at while the daemon, keys read,
/// waits on a service that accepts and never answers (no mount is needed for this).
#[test]
fn the_daemon_is_not_dumpable_and_its_memory_not_readable_by_its_user() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let api = format!("http://{}", silent.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let mut mount = Mount::prepare_api(dir.path(), &api, &[]);
    mount.run_as_nobody();
    common::service::give_to_nobody(dir.path());
    let mut daemon = mount
        .command_for(&mount.backing, &mount.mnt)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Its first call: by then it runs as nobody and has read its key.
    let _call = silent.accept().unwrap();
    let pid = daemon.id();
    for file in ["environ", "mem"] {
        let control = as_nobody(&["stat", "-c", "%u:%g", &format!("/proc/self/{file}")]);
        assert_eq!(String::from_utf8_lossy(&control.stdout), "65534:65534\n");
        let meta = std::fs::metadata(format!("/proc/{pid}/{file}")).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (0, 0), "the daemon's {file}");
    }
    let control = as_nobody(&["cat", "/proc/self/environ"]);
    assert!(control.status.success(), "{control:?}");
    let read = as_nobody(&["cat", &format!("/proc/{pid}/environ")]);
    assert!(
        String::from_utf8_lossy(&read.stderr).contains("Permission denied"),
        "{read:?}"
    );
    let _ = daemon.kill();
    let _ = daemon.wait();
}

/// A lying service answers `upload` with a signed URL at another local address (127.0.0.2, where
/// a keyless admin endpoint could listen): no request reaches it, the refusal is logged, and the
/// file goes up once the service answers truthfully again (the control).
#[test]
fn a_signed_url_at_another_local_address_is_not_followed() {
    use common::proxy::{response, Action, Proxy, Rule};
    let emulator = Emulator::start(&[]);
    let proxy = Proxy::start(&emulator.url);
    let elsewhere = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
    elsewhere.set_nonblocking(true).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut mount = Mount::prepare_api(dir.path(), &proxy.url, &[]);
    let content = b"must not go to 127.0.0.2";
    std::fs::write(mount.backing.join("a.jpg"), content).unwrap();
    let hashed = Command::new(common::service::BIN)
        .arg("hash")
        .arg(mount.backing.join("a.jpg"))
        .output()
        .unwrap();
    let hash = String::from_utf8(hashed.stdout).unwrap();
    let hash = hash.split_whitespace().next().unwrap().to_string();
    let url = format!("http://{}/_emulator/admin", elsewhere.local_addr().unwrap());
    let lie = serde_json::json!({"upload_list": [{
        "file_hash": hash, "file_size": content.len(), "s3_bucket_id": "maxlo-emulator",
        "signed_opts": {"host": "127.0.0.2", "method": "PUT", "path": "/_emulator/admin",
            "url": url, "headers": {"Content-Length": content.len().to_string()}},
    }]});
    proxy.add_rule(Rule {
        matches: |method, path| method == "POST" && path.ends_with("/upload"),
        action: Action::Answer(response("200 OK", lie.to_string().as_bytes())),
        times: None,
    });
    if !mount.mount() {
        return;
    }
    let refused = "a signed URL at the local address \"127.0.0.2\", not followed";
    common::eventually_within(
        Duration::from_secs(30),
        Later(|| format!("no refusal: {}\n{}", mount.status(), mount.log_text())),
        || {
            mount.status()["last_error"]
                .as_str()
                .is_some_and(|error| error.contains(refused))
        },
    );
    let reached = elsewhere.accept();
    assert!(
        matches!(&reached, Err(err) if err.kind() == std::io::ErrorKind::WouldBlock),
        "a request reached 127.0.0.2: {reached:?}"
    );
    proxy.clear_rules();
    mount.wait_synced();
    let held = emulator.get("/_emulator/objects");
    assert!(held.to_string().contains(&hash), "{held}");
    assert!(elsewhere.accept().is_err());
}

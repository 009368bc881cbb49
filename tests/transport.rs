//! The two transports: FUSE over io_uring (per-CPU rings, our own session) and /dev/fuse. Each
//! serves the mount with kernel passthrough of file data, says which it is in `status`, and a
//! forced io_uring refuses to mount when the kernel has it off.
//!
//! These tests set the kernel's global switch (`enable_uring`, root only) for their own run and
//! put it back; they run one at a time. The rest of the suite runs on both transports through
//! scripts/test.sh, which sets `MAXLOFS_TRANSPORT` for each pass.

#[macro_use]
mod common;

use common::service::{sh, Emulator, Mount};
use common::Later;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

const SWITCH: &str = "/sys/module/fuse/parameters/enable_uring";

/// One test at a time changes the switch.
static SWITCH_LOCK: Mutex<()> = Mutex::new(());

/// Sets the switch and puts back what it was when dropped. `None` when this kernel or user
/// cannot (a skip, or a failure under MAXLOFS_REQUIRE_FUSE=1 as for any FUSE test).
struct UringSwitch {
    was: String,
    _lock: std::sync::MutexGuard<'static, ()>,
}

impl UringSwitch {
    fn set(on: bool, test: &str) -> Option<UringSwitch> {
        let lock = SWITCH_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let was = match std::fs::read_to_string(SWITCH) {
            Ok(was) => was.trim().to_string(),
            Err(e) => return unavailable(test, &format!("{SWITCH}: {e}")),
        };
        if let Err(e) = std::fs::write(SWITCH, if on { "1" } else { "0" }) {
            return unavailable(test, &format!("cannot set {SWITCH}: {e}"));
        }
        Some(UringSwitch { was, _lock: lock })
    }
}

impl Drop for UringSwitch {
    fn drop(&mut self) {
        std::fs::write(SWITCH, &self.was).expect("enable_uring restored");
    }
}

fn unavailable<T>(test: &str, why: &str) -> Option<T> {
    if common::service::fuse_required() {
        panic!("{test}: {why}, and MAXLOFS_REQUIRE_FUSE=1");
    }
    eprintln!("SKIP {test}: {why}");
    None
}

/// Bytes of files the daemon has written (the pages it dirtied: `write_bytes` of /proc/PID/io).
/// Not `wchar`, which counts sockets too: the upload of the file to the emulator, which may start
/// while a slow machine is still reading the file back, is no write of file data.
fn written_by(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    io.lines()
        .find_map(|line| line.strip_prefix("write_bytes: "))
        .and_then(|n| n.trim().parse().ok())
        .expect("write_bytes in /proc/PID/io")
}

/// Files made, renamed, touched and removed through the mount reach the catalog, file data
/// bypasses the daemon (kernel passthrough: 64 MiB written through the mount is not written by
/// the daemon), and status names the transport.
/// The rings are on for both transports: `dev-fuse` must not take them.
fn serves_with_passthrough(flag: &str, transport: &str) {
    let Some(_switch) = UringSwitch::set(true, transport) else {
        return;
    };
    let emulator = Emulator::start(&[]);
    let mut mount = mount!(emulator, &["--transport", flag]);
    assert_eq!(
        mount.status()["transport"],
        transport,
        "{}",
        mount.log_text()
    );
    let pid = mount.pid().expect("daemon running");
    let before = written_by(pid);
    sh(
        "head -c 67108864 /dev/zero > big.bin && sync big.bin && cmp big.bin /dev/zero -n 67108864",
        &mount.mnt,
    );
    let daemon_wrote = written_by(pid) - before;
    assert!(
        daemon_wrote < 16 << 20,
        "{transport}: the daemon wrote {daemon_wrote} bytes for a 64 MiB file: no kernel passthrough"
    );
    sh(
        "mkdir -p d && echo one > d/a.txt && echo two > b.txt && mv b.txt d/c.txt \
         && touch -d 2020-01-02 d/a.txt && rm big.bin && ls -la d >/dev/null",
        &mount.mnt,
    );
    mount.wait_synced();
    let live = emulator.live();
    let paths: Vec<&String> = live.keys().collect();
    assert_eq!(paths, ["d/a.txt", "d/c.txt"], "{}", mount.log_text());
    assert!(mount.unmount().success(), "{}", mount.log_text());
}

#[test]
fn io_uring_transport_serves_the_mount() {
    serves_with_passthrough("io-uring", "io_uring");
}

#[test]
fn dev_fuse_transport_serves_the_mount_with_the_rings_on() {
    serves_with_passthrough("dev-fuse", "dev_fuse");
}

/// `auto` takes /dev/fuse when the switch is off, and `io-uring` then refuses, saying why,
/// with nothing left mounted.
#[test]
fn with_the_switch_off_auto_takes_dev_fuse_and_io_uring_refuses() {
    let Some(_switch) = UringSwitch::set(false, "switch_off") else {
        return;
    };
    let emulator = Emulator::start(&[]);
    let mut mount = mount!(emulator, &["--transport", "auto"]);
    assert_eq!(mount.status()["transport"], "dev_fuse");
    assert!(mount.unmount().success());

    let dir = tempfile::tempdir().unwrap();
    let refused = Mount::prepare(dir.path(), &emulator, &["--transport", "io-uring"]);
    let mut child = refused
        .command_for(&refused.backing, &refused.mnt)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let exited = common::wait::poll(std::time::Duration::from_secs(20), || {
        child.try_wait().unwrap()
    });
    if exited.is_none() {
        child.kill().unwrap();
        let _ = Command::new("umount").arg(&refused.mnt).status();
        panic!("--transport io-uring mounted with the switch off");
    }
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("enable_uring"), "{stderr}");
    assert!(!common::service::is_mounted(&refused.mnt));
}

/// Aborting the connection (/sys/fs/fuse/connections/N/abort, as an administrator unsticks a
/// hung mount) ends the serving threads and the daemon, and the dead mount is taken away (its
/// attributes still in the kernel's cache, so the watchdog must ask with statfs, not stat).
fn session_ends_cleanly_on_abort(transport: &str, name: &str) {
    let Some(_switch) = UringSwitch::set(true, "session_ends_cleanly_on_abort") else {
        return;
    };
    let emulator = Emulator::start(&[]);
    let mut mount = mount!(emulator, &["--transport", transport]);
    assert_eq!(mount.status()["transport"], name);
    sh("echo x > f.txt && stat . >/dev/null", &mount.mnt);
    let connections = Path::new("/sys/fs/fuse/connections");
    if !common::service::is_mounted(connections) {
        sh(
            "mount -t fusectl fusectl /sys/fs/fuse/connections",
            Path::new("/"),
        );
    }
    let device = std::os::unix::fs::MetadataExt::dev(&std::fs::metadata(&mount.mnt).unwrap());
    let minor = (device & 0xff) | ((device >> 12) & !0xff);
    std::fs::write(connections.join(format!("{minor}/abort")), "1").unwrap();
    // `is_alive` reaps the daemon, so it needs the mount to itself.
    let ended = common::wait::poll(std::time::Duration::from_secs(20), || {
        (!mount.is_alive()).then_some(())
    });
    assert!(
        ended.is_some(),
        "the daemon outlived its aborted connection: {}",
        mount.log_text()
    );
    common::eventually_within(
        std::time::Duration::from_secs(20),
        Later(|| format!("the dead mount stayed: {}", mount.log_text())),
        || !common::service::is_mounted(&mount.mnt),
    );
}

#[test]
fn io_uring_session_ends_cleanly_on_abort() {
    session_ends_cleanly_on_abort("io-uring", "io_uring");
}

#[test]
fn dev_fuse_session_ends_cleanly_on_abort() {
    session_ends_cleanly_on_abort("dev-fuse", "dev_fuse");
}

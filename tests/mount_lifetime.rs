//! The mount never outlives its daemon, and is made without `allow_other` unless asked: a
//! SIGKILLed daemon's private mount is unmounted by its watchdog, for root and for an
//! unprivileged user alike.

#[macro_use]
mod common;

use std::path::Path;
use std::time::Duration;

use common::service::{give_to_nobody, is_mounted, Emulator, Mount};
use common::Later;

/// The kernel options of the mount at `mnt`, from /proc/self/mountinfo (super options last).
fn mount_options(mnt: &Path) -> String {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let target = mnt.to_str().unwrap();
    info.lines()
        .find(|line| line.split(' ').nth(4) == Some(target))
        .unwrap_or_else(|| panic!("{target} is not mounted"))
        .to_string()
}

/// SIGKILLs the daemon and waits for its mount to go, without unmounting it ourselves.
fn kill_and_expect_unmounted(mount: &mut Mount) {
    let pid = mount.pid().expect("running") as i32;
    // SAFETY: plain kill(2) on the daemon's pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    common::eventually_within(
        Duration::from_secs(10),
        Later(|| {
            format!(
                "the mount outlived its daemon: {}",
                mount_options(&mount.mnt)
            )
        }),
        || !is_mounted(&mount.mnt),
    );
}

#[test]
fn a_killed_root_daemon_leaves_no_mount_behind() {
    let emulator = Emulator::start(&[]);
    let mut mount = mount!(emulator, &["--settle-ms", "20"]);
    let options = mount_options(&mount.mnt);
    assert!(!options.contains("allow_other"), "{options}");
    std::fs::write(mount.path("a.jpg"), b"a").unwrap();
    kill_and_expect_unmounted(&mut mount);
}

#[test]
fn a_killed_unprivileged_daemon_leaves_no_mount_behind() {
    let emulator = Emulator::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let mut mount = Mount::prepare(dir.path(), &emulator, &["--settle-ms", "20"]);
    mount.run_as_nobody();
    give_to_nobody(dir.path());
    if !mount.mount() {
        return;
    }
    let options = mount_options(&mount.mnt);
    assert!(
        options.contains("user_id=65534") && !options.contains("allow_other"),
        "{options}"
    );
    kill_and_expect_unmounted(&mut mount);
}

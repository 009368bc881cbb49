//! Daemon mode and mount(8) end to end: real mounts started the ways an operator starts them
//! (`maxlofs mount` without `--foreground`, mount.fuse3, `mount --fstab`, as a systemd
//! `Type=notify` service), against the emulator.
//! Without FUSE here (no /dev/fuse or fusermount3) the tests say SKIPPED, unless
//! MAXLOFS_REQUIRE_FUSE=1 requires it.

mod common;

use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::proxy::{response, Action, Proxy, Rule};
use common::service::{fuse_required, is_mounted, Emulator, BIN};
use common::Later;

fn fuse_available(test: &str) -> bool {
    let usable = Path::new("/dev/fuse").exists()
        && Command::new("fusermount3")
            .arg("--version")
            .output()
            .is_ok();
    if !usable && !fuse_required() {
        eprintln!("SKIPPED {test}: no FUSE here");
    }
    usable || fuse_required()
}

fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).expect("UTF-8 output")
}

/// A backing folder, a mountpoint, a key file, a state folder and a log path in a temp folder;
/// unmounts on drop.
struct Site {
    dir: tempfile::TempDir,
    backing: PathBuf,
    mnt: PathBuf,
    key: PathBuf,
    state: PathBuf,
    log: PathBuf,
}

impl Site {
    fn new(device_key: &str) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        let site = Site {
            backing: path("backing"),
            mnt: path("mnt"),
            key: path("device.key"),
            state: path("state"),
            log: path("maxlofs.log"),
            dir,
        };
        std::fs::create_dir(&site.backing).unwrap();
        std::fs::create_dir(&site.mnt).unwrap();
        std::fs::write(&site.key, format!("{device_key}\n")).unwrap();
        site
    }

    /// `maxlofs mount BACKING MOUNTPOINT`, for the caller to add settings to.
    fn mount_command(&self) -> Command {
        let mut command = Command::new(BIN);
        command.arg("mount").arg(&self.backing).arg(&self.mnt);
        command
    }

    /// `maxlofs mount BACKING MOUNTPOINT FLAGS...` in daemon mode: asserts it mounted, and
    /// answers what it printed.
    fn mount_as_daemon(&self, flags: &[String]) -> Output {
        let out = self.mount_command().args(flags).output().unwrap();
        self.assert_mounted_by(&out);
        out
    }

    /// Waits until the mount has nothing left to send.
    fn wait_synced(&self) {
        common::service::wait_synced_at(&self.mnt, 60, || self.log_text());
    }

    /// The settings for `emulator` as flags.
    fn flags(&self, emulator: &Emulator) -> Vec<String> {
        [
            ("--api", emulator.url.as_str()),
            ("--device-key-file", self.key.to_str().unwrap()),
            ("--state-dir", self.state.to_str().unwrap()),
            ("--log-file", self.log.to_str().unwrap()),
            ("--settle-ms", "100"),
        ]
        .iter()
        .flat_map(|(flag, value)| [flag.to_string(), value.to_string()])
        .collect()
    }

    /// The same settings as one `-o` argument.
    fn options(&self, emulator: &Emulator) -> String {
        format!(
            "api={},device_key_file={},state_dir={},log_file={},settle_ms=100",
            emulator.url,
            self.key.display(),
            self.state.display(),
            self.log.display()
        )
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Asserts the command mounted: it exited 0 with the mount already live.
    fn assert_mounted_by(&self, out: &Output) {
        assert!(
            out.status.success(),
            "{}\nstderr: {}\nlog:\n{}",
            out.status,
            text(&out.stderr),
            self.log_text()
        );
        assert!(is_mounted(&self.mnt), "exited 0 before the mount was live");
    }

    /// Writes a file through the mount and waits until the emulator has it.
    fn assert_syncs(&self, emulator: &Emulator) {
        std::fs::write(self.mnt.join("hello.txt"), b"hello").unwrap();
        self.wait_synced();
        assert!(
            emulator.live().contains_key("hello.txt"),
            "{:?}",
            emulator.live()
        );
    }

    /// `umount`, then waits for the daemon to finish and exit.
    fn unmount(&self) {
        let daemons = daemons(&self.mnt);
        let out = Command::new("umount").arg(&self.mnt).output().unwrap();
        assert!(out.status.success(), "umount: {}", text(&out.stderr));
        common::eventually_within(
            Duration::from_secs(20),
            "the daemon outlived its mount",
            || {
                !daemons
                    .iter()
                    .any(|pid| Path::new(&format!("/proc/{pid}")).exists())
            },
        );
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        if is_mounted(&self.mnt) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}

/// The pids of the `maxlofs mount --foreground` daemons serving `mnt`.
fn daemons(mnt: &Path) -> Vec<u32> {
    let mnt = mnt.as_os_str().as_bytes();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.contains(&mnt) && args.contains(&&b"--foreground=true"[..])
        })
        .collect()
}

/// The session id of process `pid`, from /proc/PID/stat (the field after pgrp).
fn session(pid: u32) -> u32 {
    stat_field(Path::new(&format!("/proc/{pid}/stat")), 6)
        .parse()
        .unwrap()
}

/// Field `number` (counted from 1, as in proc(5)) of a `/proc/.../stat` file.
fn stat_field(stat: &Path, number: usize) -> String {
    let stat = std::fs::read_to_string(stat).unwrap();
    // The name (field 2) is in parentheses and may hold spaces; field 3 starts after ") ".
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    after_name.split(' ').nth(number - 3).unwrap().to_string()
}

#[test]
fn daemon_mode_returns_once_the_mount_is_live() {
    if !fuse_available("daemon_mode_returns_once_the_mount_is_live") {
        return;
    }
    let emulator = Emulator::start(&[]);
    let site = Site::new("demo-device-key");
    site.mount_as_daemon(&site.flags(&emulator));
    let pids = daemons(&site.mnt);
    assert_eq!(pids.len(), 1, "one daemon");
    assert_eq!(
        session(pids[0]),
        pids[0],
        "the daemon leads its own session"
    );
    site.assert_syncs(&emulator);
    site.unmount();
}

#[test]
fn daemon_mode_fails_with_a_refused_key() {
    if !fuse_available("daemon_mode_fails_with_a_refused_key") {
        return;
    }
    let emulator = Emulator::start(&[]);
    let site = Site::new("revoked-key");
    let out = site
        .mount_command()
        .args(site.flags(&emulator))
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("not mounted") && stderr.contains("403"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("revoked-key"),
        "the key is never printed: {stderr}"
    );
    assert!(!is_mounted(&site.mnt));
    assert!(daemons(&site.mnt).is_empty(), "no daemon left behind");
}

/// Asserts `out` is a refusal before anything mounted: exit status 2, `says` on stderr, no mount
/// and no daemon.
fn assert_refused(site: &Site, out: &Output, says: &str) {
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{stderr}\nlog:\n{}",
        site.log_text()
    );
    assert!(stderr.contains(says), "{says:?} not in: {stderr}");
    assert!(!is_mounted(&site.mnt), "mounted: {stderr}");
    assert!(daemons(&site.mnt).is_empty(), "a daemon was left behind");
}

/// A service failing a third of its calls: a grant it does not have is refused every time (it
/// once mounted offline on the first 503, in 4 tries of 8), and one it has mounts and syncs.
#[test]
fn an_unknown_grant_is_refused_however_often_the_service_fails() {
    if !fuse_available("an_unknown_grant_is_refused_however_often_the_service_fails") {
        return;
    }
    let emulator = Emulator::start(&["--fail-rate", "0.3"]);
    for _ in 0..8 {
        let site = Site::new("demo-device-key");
        let out = site
            .mount_command()
            .args(site.flags(&emulator))
            .args(["--grant", "99"])
            .output()
            .unwrap();
        assert_refused(&site, &out, "grant 99 is not one this device can see");
    }

    let site = Site::new("demo-device-key");
    let out = site.mount_as_daemon(&site.flags(&emulator));
    assert!(!text(&out.stderr).contains("mounting offline"));
    site.assert_syncs(&emulator);
    site.unmount();
    assert!(emulator.faults().0 > 0, "the service failed no call");
}

/// The start-up check asks again while the service answers 503, and only then decides: the
/// answers that follow the 503s refuse an unknown grant, and mount a known one online.
#[test]
fn the_start_up_check_asks_again_after_a_503() {
    if !fuse_available("the_start_up_check_asks_again_after_a_503") {
        return;
    }
    let emulator = Emulator::start(&[]);
    let proxy = Proxy::start(&emulator.url);
    let unavailable = || {
        for matches in [
            (|_, path| path == "/device/1/current") as fn(&str, &str) -> bool,
            |_, path| path == "/device/1/media_grant",
        ] {
            proxy.add_rule(Rule {
                matches,
                action: Action::Answer(response("503 Service Unavailable", b"{}")),
                times: Some(3),
            });
        }
    };
    let site = Site::new("demo-device-key");
    let mut flags = site.flags(&emulator);
    let api = flags.iter().position(|flag| flag == "--api").unwrap() + 1;
    flags[api] = proxy.url.clone();

    unavailable();
    let out = site
        .mount_command()
        .args(&flags)
        .args(["--grant", "99"])
        .output()
        .unwrap();
    assert_refused(&site, &out, "grant 99 is not one this device can see");
    let asked = |path: &str, action: &str| {
        let call = format!("POST {path} {action}");
        proxy.seen().iter().filter(|seen| **seen == call).count()
    };
    assert_eq!(asked("/device/1/current", "answer"), 3);
    assert_eq!(asked("/device/1/media_grant", "answer"), 3);
    assert_eq!(asked("/device/1/media_grant", "forward"), 1);

    proxy.clear_rules();
    unavailable();
    let out = site.mount_as_daemon(&flags);
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("mounting offline"), "{stderr}");
    assert_eq!(asked("/device/1/current", "answer"), 6);
    site.assert_syncs(&emulator);
    site.unmount();
}

/// A `--prefix` that no media_path can start with is refused as a usage error before anything
/// mounts (it once mounted, and the service refused every file with 400), from the command line,
/// the environment or the config file; a nested one mounts.
#[test]
fn a_prefix_no_media_path_can_start_with_is_refused_before_mounting() {
    if !fuse_available("a_prefix_no_media_path_can_start_with_is_refused_before_mounting") {
        return;
    }
    let emulator = Emulator::start(&[]);
    let says = "no media_path can start with";
    for bad in [
        "../x", "a//b", "./x", "a/./b", "x/..", "a/../b", "2026\n", "a\tb",
    ] {
        let site = Site::new("demo-device-key");
        let out = site
            .mount_command()
            .args(site.flags(&emulator))
            .args(["--prefix", bad])
            .output()
            .unwrap();
        assert_refused(&site, &out, says);

        let out = site
            .mount_command()
            .args(site.flags(&emulator))
            .env("MAXLOFS_PREFIX", bad)
            .output()
            .unwrap();
        assert_refused(&site, &out, says);
    }
    // A NUL can only come from the config file (an argument or a variable cannot hold one).
    let site = Site::new("demo-device-key");
    let config = site.dir.path().join("maxlofs.toml");
    std::fs::write(&config, "prefix = \"a\\u0000b\"\n").unwrap();
    let out = site
        .mount_command()
        .args(site.flags(&emulator))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_refused(&site, &out, says);
    let out = site
        .mount_command()
        .args(site.flags(&emulator))
        .arg("--prefix")
        .arg(std::ffi::OsStr::from_bytes(b"photos\xff"))
        .output()
        .unwrap();
    assert_refused(&site, &out, "invalid UTF-8");
    let calls: u64 = emulator.stats()["calls"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|by_status| by_status.as_object().unwrap().values())
        .filter_map(serde_json::Value::as_u64)
        .sum();
    assert_eq!(calls, 0, "no call reached the service");

    let site = Site::new("demo-device-key");
    let mut flags = site.flags(&emulator);
    flags.extend(["--prefix".to_string(), "a/b".to_string()]);
    site.mount_as_daemon(&flags);
    std::fs::write(site.mnt.join("hello.txt"), b"hello").unwrap();
    site.wait_synced();
    assert!(
        emulator.live().contains_key("a/b/hello.txt"),
        "{:?}",
        emulator.live()
    );
    site.unmount();
}

/// What the mount cannot do as expected is said on the terminal of `maxlofs mount`, not only in
/// the daemon's log file, where nobody looks at mount time.
#[test]
fn daemon_mode_prints_the_start_warnings_where_the_user_looks() {
    if !fuse_available("daemon_mode_prints_the_start_warnings_where_the_user_looks") {
        return;
    }
    // A service that is not there: mounted offline, and said so once.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let site = Site::new("demo-device-key");
    let mut flags = site.flags(&Emulator::start(&[]));
    let api = flags.iter().position(|flag| flag == "--api").unwrap() + 1;
    flags[api] = dead;
    let out = site.mount_as_daemon(&flags);
    let stderr = text(&out.stderr);
    assert_eq!(
        stderr
            .matches("maxlofs: warning: the service cannot be reached")
            .count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains("mounting offline"), "{stderr}");
    assert!(
        site.log_text().contains("mounting offline"),
        "and in the log"
    );
    site.unmount();

    // A device whose uploads the service disabled: records only, said so.
    let emulator = Emulator::start(&["--device-upload-disabled"]);
    let site = Site::new("demo-device-key");
    let out = site.mount_as_daemon(&site.flags(&emulator));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("maxlofs: warning: records only, no content is uploaded")
            && stderr.contains("is_upload_disabled"),
        "{stderr}"
    );
    site.assert_syncs(&emulator);
    site.unmount();

    // Nothing to warn of: nothing printed.
    let emulator = Emulator::start(&[]);
    let site = Site::new("demo-device-key");
    let out = site.mount_as_daemon(&site.flags(&emulator));
    assert_eq!(text(&out.stderr), "");
    site.unmount();
}

#[test]
fn mount_fuse3_runs_maxlofs_as_the_fuse_maxlofs_helper() {
    if !fuse_available("mount_fuse3_runs_maxlofs_as_the_fuse_maxlofs_helper") {
        return;
    }
    let emulator = Emulator::start(&[]);
    let site = Site::new("demo-device-key");
    // mount.fuse3 runs `maxlofs SOURCE MOUNTPOINT -o OPTIONS` through sh, found on PATH.
    let bin_dir = site.dir.path().join("bin");
    std::fs::create_dir(&bin_dir).unwrap();
    std::os::unix::fs::symlink(BIN, bin_dir.join("maxlofs")).unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("mount.fuse3")
        .arg(&site.backing)
        .arg(&site.mnt)
        .args(["-t", "fuse.maxlofs", "-o"])
        .arg(format!(
            "{},_netdev,nofail,nosuid,nodev",
            site.options(&emulator)
        ))
        .env("PATH", path)
        .output()
        .unwrap();
    site.assert_mounted_by(&out);
    site.assert_syncs(&emulator);
    site.unmount();
}

/// `/usr/local/bin/maxlofs` linked to this build for as long as it lives.
struct Installed(PathBuf);

impl Installed {
    /// mount(8) runs helpers with no PATH, so the shell mount.fuse3 starts looks for `maxlofs`
    /// in its default path only: link this build there. `None` (after saying why) when not root
    /// or when another maxlofs is installed there.
    fn link() -> Option<Installed> {
        let link = PathBuf::from("/usr/local/bin/maxlofs");
        // SAFETY: geteuid cannot fail and touches no memory.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: mount(8) of a fuse.maxlofs entry needs root");
            return None;
        }
        match std::fs::read_link(&link) {
            Ok(target) if target == Path::new(BIN) => {}
            Err(_) if !link.exists() => std::os::unix::fs::symlink(BIN, &link).unwrap(),
            _ => {
                eprintln!(
                    "SKIPPED: {} is another maxlofs; not replacing it",
                    link.display()
                );
                return None;
            }
        }
        Some(Installed(link))
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn mount_mounts_an_fstab_entry_of_type_fuse_maxlofs() {
    if !fuse_available("mount_mounts_an_fstab_entry_of_type_fuse_maxlofs") {
        return;
    }
    let Some(_installed) = Installed::link() else {
        assert!(!fuse_required(), "cannot install the helper for mount(8)");
        return;
    };
    let emulator = Emulator::start(&[]);
    let site = Site::new("demo-device-key");
    let fstab = site.dir.path().join("fstab");
    std::fs::write(
        &fstab,
        format!(
            "# as in docs/fstab.md\n{} {} fuse.maxlofs {},noauto,_netdev,x-systemd.automount 0 0\n",
            site.backing.display(),
            site.mnt.display(),
            site.options(&emulator)
        ),
    )
    .unwrap();
    let out = Command::new("mount")
        .arg("--fstab")
        .arg(&fstab)
        .arg(&site.mnt)
        .output()
        .unwrap();
    site.assert_mounted_by(&out);
    site.assert_syncs(&emulator);
    site.unmount();
}

#[test]
fn a_config_file_mounts_a_grant_given_by_name() {
    if !fuse_available("a_config_file_mounts_a_grant_given_by_name") {
        return;
    }
    let emulator = Emulator::start(&["--grant", "1", "--grant", "7"]);
    let site = Site::new("demo-device-key");
    let config = site.dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "api = \"{}\"\ngrant = \"grant-7\"\ndevice_key_file = \"{}\"\nstate_dir = \"{}\"\n\
             log_file = \"{}\"\nsettle_ms = 100\n",
            emulator.url,
            site.key.display(),
            site.state.display(),
            site.log.display()
        ),
    )
    .unwrap();
    let out = site
        .mount_command()
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    site.assert_mounted_by(&out);
    std::fs::write(site.mnt.join("by-name.txt"), b"grant seven").unwrap();
    site.wait_synced();
    let in_grant = |grant: u64| -> Vec<String> {
        emulator.get(&format!("/_emulator/media_grant/{grant}/media"))["media_list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["media_path"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(in_grant(7), ["by-name.txt"]);
    assert!(in_grant(1).is_empty());
    site.unmount();
}

#[test]
fn a_foreground_mount_tells_systemd_once_it_is_live() {
    if !fuse_available("a_foreground_mount_tells_systemd_once_it_is_live") {
        return;
    }
    let emulator = Emulator::start(&[]);
    let site = Site::new("demo-device-key");
    // What systemd listens on for a Type=notify service.
    let notify = site.dir.path().join("notify");
    let systemd = UnixDatagram::bind(&notify).unwrap();
    systemd
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut daemon = site
        .mount_command()
        .arg("--foreground")
        .args(site.flags(&emulator))
        .env("NOTIFY_SOCKET", &notify)
        .stderr(std::fs::File::create(&site.log).unwrap())
        .spawn()
        .unwrap();
    let mut message = [0; 64];
    let received = systemd.recv(&mut message);
    let mounted = is_mounted(&site.mnt);
    let len = received.unwrap_or_else(|err| panic!("no READY=1: {err}\n{}", site.log_text()));
    assert_eq!(&message[..len], b"READY=1");
    assert!(mounted, "READY=1 before the mount was live");
    site.assert_syncs(&emulator);
    site.unmount();
    assert!(daemon.wait().unwrap().success(), "{}", site.log_text());
}

#[test]
fn the_reconcile_pass_logs_its_progress() {
    if !fuse_available("the_reconcile_pass_logs_its_progress") {
        return;
    }
    let emulator = Emulator::start(&[]);
    let site = Site::new("demo-device-key");
    // 3000 files in 10 folders: 3010 paths for the walk to count.
    for folder in 0..10 {
        let dir = site.backing.join(format!("d{folder}"));
        std::fs::create_dir(&dir).unwrap();
        for file in 0..300 {
            std::fs::write(dir.join(format!("f{file}")), b"x").unwrap();
        }
    }
    let out = site
        .mount_command()
        .args(site.flags(&emulator))
        // Nothing here is about sending: don't wait for the files at unmount.
        .arg("--drain-timeout=0")
        .env("MAXLOFS_PROGRESS_INTERVAL_MS", "1")
        .output()
        .unwrap();
    site.assert_mounted_by(&out);
    common::eventually_within(
        Duration::from_secs(60),
        Later(|| format!("no reconcile:\n{}", site.log_text())),
        || site.log_text().contains("paths to look at"),
    );
    let log = site.log_text();
    // The count in each "reconcile, backing folder: N paths..." line; the last one has " in ".
    let walked: Vec<(u64, bool)> = log
        .lines()
        .filter_map(|line| line.split_once("reconcile, backing folder: "))
        .map(|(_, rest)| {
            let count = rest.split(' ').next().unwrap().parse().unwrap();
            (count, rest.contains(" in "))
        })
        .collect();
    let Some((&(total, true), periodic)) = walked.split_last() else {
        panic!("no last line for the walk:\n{log}");
    };
    assert_eq!(total, 3010, "{log}");
    assert!(!periodic.is_empty(), "no periodic line:\n{log}");
    assert!(
        periodic
            .windows(2)
            .all(|pair| pair[0].0 < pair[1].0 && !pair[1].1),
        "{log}"
    );
    // A periodic line can fall due on the walk's last path, just before the last line.
    assert!(periodic.iter().all(|&(count, _)| count <= total), "{log}");
    // Workers send during the walk, so the index holds some of the files by then.
    let index_done = log.lines().any(|line| {
        line.split_once("reconcile, index: ")
            .and_then(|(_, rest)| rest.split_once(" paths (100%) in "))
            .and_then(|(count, _)| count.split_once('/'))
            .is_some_and(|(done, total)| done == total)
    });
    assert!(index_done, "no last line for the index:\n{log}");
    site.unmount();
}

/// Catalog work runs at a lower CPU priority than the threads serving the mount, so a user's
/// `cp` never waits behind hashing or uploads.
#[test]
fn sync_threads_yield_the_cpu_to_the_threads_serving_the_mount() {
    let emulator = Emulator::start(&[]);
    let Some(mount) = common::service::Mount::start(&emulator, &[]) else {
        return;
    };
    std::fs::write(mount.path("a.jpg"), b"a").unwrap();
    mount.wait_synced();
    let mut sync_nice = Vec::new();
    let mut other_nice = Vec::new();
    let tasks = format!("/proc/{}/task", mount.pid().unwrap());
    for task in std::fs::read_dir(tasks).unwrap() {
        let task = task.unwrap().path();
        let name = std::fs::read_to_string(task.join("comm")).unwrap();
        let nice: i32 = stat_field(&task.join("stat"), 19).parse().unwrap();
        if name.trim() == "maxlofs-sync" {
            sync_nice.push(nice);
        } else {
            other_nice.push(nice);
        }
    }
    // Relative to the daemon's own priority, whatever `nice` the tests run under.
    let base = other_nice[0];
    assert!(!sync_nice.is_empty(), "no sync threads found");
    assert!(
        sync_nice.iter().all(|&n| n == (base + 10).min(19)),
        "sync threads: {sync_nice:?}, others: {other_nice:?}"
    );
    assert!(
        other_nice.iter().all(|&n| n == base),
        "other threads: {other_nice:?}"
    );
}

/// A mountpoint inside the backing folder would hold the mount inside itself, and the daemon
/// would wait on itself (with every user of the mount): it is refused before anything is mounted.
/// The backing folder itself is a mountpoint like any other.
#[test]
fn a_mountpoint_inside_the_backing_folder_is_refused_and_the_folder_itself_serves() {
    let emulator = Emulator::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let mut mount = common::service::Mount::prepare(dir.path(), &emulator, &[]);
    let inner = mount.backing.join("view");
    std::fs::create_dir(&inner).unwrap();
    // Mounted, the daemon would wait on itself, in a wait no kill ends (abort it in fusectl).
    let out = common::service::output_within(
        &mut mount.command_for(&mount.backing, &inner),
        std::time::Duration::from_secs(20),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("the mount would hold itself"), "{stderr}");
    assert!(!is_mounted(&inner));
    std::fs::remove_dir(&inner).unwrap();

    std::fs::write(mount.backing.join("before.jpg"), b"there before").unwrap();
    mount.mnt = mount.backing.clone();
    if !mount.mount() {
        return;
    }
    std::fs::write(mount.path("through.jpg"), b"written through the mount").unwrap();
    mount.wait_synced();
    let live = emulator.live();
    assert_eq!(
        live.keys().collect::<Vec<_>>(),
        ["before.jpg", "through.jpg"],
        "{}",
        mount.log_text()
    );
    assert!(mount.unmount().success());
}

/// A damaged index (a copy cut short, a page a disk fault overwrote) is refused with what to do, not taken for a
/// second mount; moved aside, the next mount rebuilds it and adopts the records it had.
#[test]
fn a_damaged_index_is_refused_with_how_to_rebuild_it() {
    let emulator = Emulator::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let mut mount = common::service::Mount::prepare(dir.path(), &emulator, &[]);
    if !mount.mount() {
        return;
    }
    std::fs::write(mount.path("kept.jpg"), b"kept").unwrap();
    mount.wait_synced();
    assert!(mount.unmount().success());
    let index = mount.state.join("index.db");
    let whole = std::fs::read(&index).unwrap();
    // The index of paths, which only lookups by path read (a count of the entries does not).
    let by_path = rusqlite::Connection::open(&index)
        .unwrap()
        .query_row(
            "SELECT rootpage FROM sqlite_master WHERE name = 'sqlite_autoindex_synced_1'",
            [],
            |row| row.get::<_, usize>(0),
        )
        .unwrap();
    let mut page_damaged = whole.clone();
    page_damaged[(by_path - 1) * 4096..by_path * 4096].fill(0xee);
    for damaged in [whole[..whole.len() / 2].to_vec(), page_damaged] {
        std::fs::write(&index, &damaged).unwrap();
        // Mounted (in the foreground), it would run on: that fails the test at the limit.
        let out = common::service::output_within(
            &mut mount.command_for(&mount.backing, &mount.mnt),
            std::time::Duration::from_secs(20),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "mounted on a damaged index: {stderr}"
        );
        assert!(
            stderr.contains("it is damaged; moving") && !stderr.contains("another maxlofs"),
            "{stderr}"
        );
        assert!(!is_mounted(&mount.mnt));
    }
    std::fs::rename(&index, mount.state.join("index.db.damaged")).unwrap();
    assert!(mount.mount());
    mount.wait_synced();
    let live = emulator.live();
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(
        emulator.calls("update"),
        0,
        "the record was adopted as it is"
    );
    assert!(mount.unmount().success());
}

/// Two mounts cannot share a state folder: the second is refused with a reason, and the first
/// goes on syncing.
#[test]
fn a_second_mount_on_the_same_state_folder_is_refused() {
    let emulator = Emulator::start(&[]);
    let Some(first) = common::service::Mount::start(&emulator, &[]) else {
        return;
    };
    let other = tempfile::tempdir().unwrap();
    let (backing, mnt) = (other.path().join("backing"), other.path().join("mnt"));
    std::fs::create_dir_all(&backing).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();
    let out = first.command_for(&backing, &mnt).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "second mount started: {stderr}");
    assert!(
        stderr.contains("another maxlofs mount"),
        "no reason given: {stderr}"
    );
    assert!(!is_mounted(&mnt));
    std::fs::write(first.path("still.jpg"), b"still").unwrap();
    first.wait_synced();
    assert!(emulator.live().contains_key("still.jpg"));
}

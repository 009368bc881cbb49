//! What `maxlofs status` and the daemon's log show: names and messages escaped, a closed stdout
//! ending quietly, status of any size reaching the reader, ioctl probes answered without noise.

#[macro_use]
mod common;

use std::ffi::OsStr;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::service::{Emulator, BIN};
use common::Later;
use maxlofs_fs::{MountStatus, StatusSource};
use maxlofs_sync::report::{encode_bounded, PathReason, StatusReport};

/// A pipe whose reading end is already closed: writing to the other end fails with EPIPE.
fn pipe_without_reader() -> OwnedFd {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: pipe2 just opened both; each is owned once, here.
    let (reader, writer) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(reader);
    writer
}

/// `maxlofs status MNT | true`: the reader is gone before status writes. It ends quietly with
/// success, text or JSON, every time (it used to panic on EPIPE).
#[test]
fn status_into_a_closed_pipe_ends_quietly() {
    let emulator = Emulator::start(&[]);
    let mount = mount!(emulator, &["--settle-ms", "20"]);
    std::fs::write(mount.path("a.jpg"), b"a").unwrap();
    for round in 0..10 {
        for json in [false, true] {
            let mut command = Command::new(BIN);
            command.arg("status").arg(&mount.mnt);
            if json {
                command.arg("--json");
            }
            let output = command
                .stdout(Stdio::from(pipe_without_reader()))
                .stderr(Stdio::piped())
                .output()
                .unwrap();
            assert!(
                output.status.success() && output.stderr.is_empty(),
                "round {round}, json {json}: {output:?}"
            );
        }
    }
}

/// A name made of control characters and an escape sequence (kept local: it is not UTF-8, so
/// status lists it) is shown escaped: the terminal gets no escape byte and no forged line.
#[test]
fn status_shows_names_escaped() {
    let emulator = Emulator::start(&[]);
    let mount = mount!(emulator, &["--settle-ms", "20"]);
    let name = OsStr::from_bytes(b"x\n\x1b[2Jforged: line\r\xff.jpg");
    std::fs::write(mount.mnt.join(name), b"x").unwrap();
    let last = std::cell::RefCell::new(String::new());
    let text = common::eventually_some(
        Duration::from_secs(30),
        Later(|| format!("never listed: {}", last.borrow())),
        || {
            let output = Command::new(BIN)
                .arg("status")
                .arg(&mount.mnt)
                .output()
                .unwrap();
            assert!(output.status.success(), "{output:?}");
            let text = String::from_utf8(output.stdout).unwrap();
            if text.contains("local only (1)") {
                return Some(text);
            }
            *last.borrow_mut() = text;
            None
        },
    );
    assert!(!text.contains('\u{1b}') && !text.contains('\r'), "{text:?}");
    assert!(
        !text.lines().any(|line| line.starts_with("forged")),
        "{text:?}"
    );
    assert!(
        text.contains(concat!(
            r"x\n\u{1b}[2Jforged: line\r",
            "\u{fffd}.jpg: name is not UTF-8"
        )),
        "{text:?}"
    );
}

/// A status source of any size, as the daemon's engine has it.
struct BigStatus(StatusReport, bool);

impl StatusSource for BigStatus {
    fn status_json(&self, _mount: &MountStatus<'_>) -> String {
        if self.1 {
            encode_bounded(&self.0)
        } else {
            serde_json::to_string(&self.0).unwrap()
        }
    }
}

fn report_with_many_long_paths() -> StatusReport {
    let entries: Vec<PathReason> = (0..2000)
        .map(|i| PathReason {
            path: format!("{}/{i}.jpg", "long-folder-name".repeat(12)),
            reason: "name is not UTF-8".into(),
        })
        .collect();
    StatusReport {
        local_only_count: entries.len(),
        local_only: entries.clone(),
        failed_count: entries.len(),
        failed: entries,
        last_error: Some("x".repeat(1 << 20)),
        reconciled: true,
        ..StatusReport::default()
    }
}

/// Thousands of long paths and a 1 MiB server message: unbounded, that JSON cannot pass through
/// an extended attribute (64 KiB at most) and status fails; bounded, it is read, with the
/// counts of everything and a note of how many were left out.
#[test]
fn status_of_any_size_reaches_the_reader() {
    let report = report_with_many_long_paths();
    assert!(serde_json::to_string(&report).unwrap().len() > 1 << 16);
    for bounded in [false, true] {
        let source = Arc::new(BigStatus(report.clone(), bounded));
        let Some(mount) =
            common::mount_or_skip_with("status_of_any_size", |cfg| cfg.status = Some(source))
        else {
            return;
        };
        let read = maxlofs::status::read(&mount.mountpoint);
        if !bounded {
            let err = read.unwrap_err().to_string();
            assert!(err.contains("larger than an extended attribute"), "{err}");
            continue;
        }
        let read = read.unwrap();
        assert_eq!(read.local_only_count, 2000);
        assert_eq!(read.failed_count, 2000);
        assert!(!read.failed.is_empty() && read.failed.len() < 2000);
        assert_eq!(read.failed[..], report.failed[..read.failed.len()]);
        let output = Command::new(BIN)
            .arg("status")
            .arg(&mount.mountpoint)
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        let text = String::from_utf8(output.stdout).unwrap();
        let more = format!("  … and {} more", 2000 - read.failed.len());
        assert!(text.contains(&more), "{text}");
        assert!(text.contains("local only (2000):"), "{text}");
    }
}

/// Every Python `open()` asks isatty (ioctl TCGETS): the answer is ENOTTY and the daemon's log
/// stays quiet (it used to log three "[Not Implemented] ioctl" warnings per open).
#[test]
fn ioctl_probes_answer_enotty_without_a_log_line() {
    let emulator = Emulator::start(&[]);
    let mount = mount!(emulator, &["--settle-ms", "20"]);
    std::fs::write(mount.path("a.jpg"), b"a").unwrap();
    for _ in 0..3 {
        let file = std::fs::File::open(mount.path("a.jpg")).unwrap();
        let mut termios = std::mem::MaybeUninit::<libc::termios>::uninit();
        // SAFETY: TCGETS writes one termios into the buffer given; the descriptor is open.
        let ret = unsafe {
            libc::ioctl(
                std::os::fd::AsRawFd::as_raw_fd(&file),
                libc::TCGETS,
                termios.as_mut_ptr(),
            )
        };
        let errno = std::io::Error::last_os_error().raw_os_error();
        assert_eq!((ret, errno), (-1, Some(libc::ENOTTY)));
    }
    mount.wait_synced();
    let log = mount.log_text();
    // A line written before the mount appears: "mounted" comes once `spawn_mount` returns, which
    // may be after this test's last step (it failed so once in a clean-clone run).
    assert!(
        log.contains("maxlofs::daemon: device "),
        "the log is the daemon's: {log}"
    );
    assert!(!log.contains("ioctl"), "{log}");
}

/// The fs layer's log lines show names escaped: a name holding newlines, made, renamed and
/// removed through the mount with its debug logging on, forges no line of the daemon's log.
#[test]
fn names_cannot_forge_lines_of_the_fs_layers_log() {
    let emulator = Emulator::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let mut mount = common::service::Mount::prepare(dir.path(), &emulator, &["--settle-ms", "20"]);
    mount
        .env
        .push(("RUST_LOG".into(), "error,maxlofs_fs=debug".into()));
    if !mount.mount() {
        return;
    }
    let forged = "x\nFORGED line\r\n\u{1b}[2K";
    std::fs::create_dir(mount.path(forged)).unwrap();
    let inside = mount.path(forged).join(format!("{forged}.jpg"));
    std::fs::write(&inside, b"x").unwrap();
    let moved = mount.path(&format!("{forged}-moved.jpg"));
    std::fs::rename(&inside, &moved).unwrap();
    std::fs::remove_file(&moved).unwrap();
    std::fs::remove_dir(mount.path(forged)).unwrap();
    assert!(mount.unmount().success());
    let log = mount.log_text();
    assert!(
        log.contains(r#"FORGED line\r\n\u{1b}[2K"#),
        "names are logged: {log}"
    );
    assert!(!log.contains('\u{1b}') && !log.contains('\r'), "{log:?}");
    assert!(!log.lines().any(|line| line.starts_with("FORGED")), "{log}");
}

/// `status --wait` exits 0 once everything is sent, and 3 once nothing is left to send but a
/// path failed (here the service refuses every create with a 400): a script does not read "all
/// synced" (it exited 0). Without --wait, status exits 0 whatever it shows.
#[test]
fn status_wait_exits_3_when_paths_failed() {
    use common::proxy::{is_create, response, Action, Proxy, Rule};
    let emulator = Emulator::start(&[]);
    let proxy = Proxy::start(&emulator.url);
    let Some(mount) = common::service::Mount::start_api(&proxy.url, &["--settle-ms", "20"]) else {
        return;
    };
    let status = |wait: bool| {
        let mut command = Command::new(BIN);
        command.arg("status").arg(&mount.mnt);
        if wait {
            command.args(["--wait", "--timeout", "60"]);
        }
        let out = common::service::output_within(&mut command, Duration::from_secs(90));
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    std::fs::write(mount.path("good.jpg"), b"good").unwrap();
    let (code, text) = status(true);
    assert_eq!(code, Some(0), "{text}");
    proxy.add_rule(Rule {
        matches: is_create,
        action: Action::Answer(response("400 Bad Request", br#"{"error":"refused"}"#)),
        times: None,
    });
    std::fs::write(mount.path("bad.jpg"), b"bad").unwrap();
    let (code, text) = status(true);
    assert_eq!(code, Some(3), "{text}");
    assert!(text.contains("failed (1):\n  bad.jpg: "), "{text}");
    assert_eq!(status(false).0, Some(0));
}

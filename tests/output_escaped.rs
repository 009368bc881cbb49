//! The output policy (docs/security.md): what a lying service says reaches the terminal and the
//! daemon's log escaped. Its grant names and error messages hold an OSC title, a screen clear,
//! an OSC 52 clipboard write, a forged line, a bidi override and a line separator: none of them
//! comes out raw from `grants`, `mount`, `status`, `verify` or the log.

#[macro_use]
mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::proxy::{is_create, is_download, response, Action, Proxy, Rule};
use common::service::{output_within, Emulator, Mount, BIN};

const HOSTILE: &str = "\u{1b}]0;pwned\u{7}\u{1b}[2J\u{1b}]52;c;cHduZWQ=\u{7}\n maxlofs: mounted \
                       fine\u{202e}gpj.exe\u{2028}end";

fn hostile_refusal() -> Action {
    let body = serde_json::json!({ "error": HOSTILE }).to_string();
    Action::Answer(response("400 Bad Request", body.as_bytes()))
}

/// `what` shows the hostile text (its `pwned` reached it), and only escaped.
fn assert_escaped(what: &str, text: &str) {
    assert!(
        text.contains("pwned"),
        "{what} never got the text: {text:?}"
    );
    for raw in ['\u{1b}', '\u{7}', '\u{202e}', '\u{2028}'] {
        assert!(!text.contains(raw), "{what} holds {raw:?} raw: {text:?}");
    }
    assert!(
        !text
            .lines()
            .any(|line| line.trim_start().starts_with("maxlofs: mounted fine")),
        "{what} has a forged line: {text:?}"
    );
}

fn stdout_and_stderr(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn is_current_device(_: &str, path: &str) -> bool {
    path == "/device/1/current"
}

fn is_grant_list(_: &str, path: &str) -> bool {
    path == "/device/1/media_grant"
}

/// `grants` lists a grant named and prefixed with the hostile text, and prints the service's
/// refusal of the list; `mount` prints its refusal of the device, in the foreground and as a
/// daemon, whose log file gets it too.
#[test]
fn grants_and_mount_show_the_services_words_escaped() {
    let emulator = Emulator::start(&[]);
    let proxy = Proxy::start(&emulator.url);
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("device.key");
    std::fs::write(&key_file, "demo-device-key\n").unwrap();
    let grants = || {
        let mut command = Command::new(BIN);
        command
            .args([
                "grants",
                "--no-config",
                "--api",
                &proxy.url,
                "--device-key-file",
            ])
            .arg(&key_file);
        output_within(&mut command, Duration::from_secs(30))
    };

    let listing = serde_json::json!({
        "is_device_disabled": false,
        "media_grant_list": [{
            "media_grant_id": "1", "grant_name": HOSTILE, "volume_id": 1,
            "prefix_path": HOSTILE, "is_disabled": false, "volume_encryption_key": null,
        }],
    });
    proxy.add_rule(Rule {
        matches: is_grant_list,
        action: Action::Answer(response("200 OK", listing.to_string().as_bytes())),
        times: Some(1),
    });
    let out = grants();
    let (stdout, stderr) = stdout_and_stderr(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_escaped("grants", &stdout);

    proxy.add_rule(Rule {
        matches: is_grant_list,
        action: hostile_refusal(),
        times: Some(1),
    });
    let out = grants();
    let (stdout, stderr) = stdout_and_stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert_escaped("the error of grants", &stderr);

    proxy.add_rule(Rule {
        matches: is_current_device,
        action: hostile_refusal(),
        times: None,
    });
    let mount = Mount::prepare_api(dir.path(), &proxy.url, &[]);
    let out = output_within(
        &mut mount.command_for(&mount.backing, &mount.mnt),
        Duration::from_secs(60),
    );
    let (stdout, stderr) = stdout_and_stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert_escaped("the error of mount --foreground", &stderr);

    let log = dir.path().join("daemon.log");
    let mut daemon = Command::new(BIN);
    daemon
        .arg("mount")
        .arg(&mount.backing)
        .arg(&mount.mnt)
        .args(["--no-config", "--api", &proxy.url, "--device-key-file"])
        .arg(&key_file)
        .arg("--state-dir")
        .arg(&mount.state)
        .arg("--log-file")
        .arg(&log);
    let out = output_within(&mut daemon, Duration::from_secs(60));
    let (stdout, stderr) = stdout_and_stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert_escaped("the error of mount", &stderr);
    assert_escaped("the daemon's log", &std::fs::read_to_string(&log).unwrap());
}

/// Through a real mount: the service refuses a file with the hostile text, and answers verify's
/// `download` with it. `status` (and `status --wait`), the daemon's log and verify's error show
/// it escaped.
#[test]
fn status_verify_and_the_log_show_the_services_words_escaped() {
    let emulator = Emulator::start(&[]);
    let proxy = Proxy::start(&emulator.url);
    let mut mount = match Mount::start_api(&proxy.url, &["--settle-ms", "20"]) {
        Some(mount) => mount,
        None => return,
    };
    std::fs::write(mount.path("good.jpg"), b"good").unwrap();
    mount.wait_synced();
    proxy.add_rule(Rule {
        matches: is_create,
        action: hostile_refusal(),
        times: None,
    });
    std::fs::write(mount.path("bad.jpg"), b"bad").unwrap();
    let wait = output_within(
        Command::new(BIN)
            .args(["status", "--wait", "--timeout", "60"])
            .arg(&mount.mnt),
        Duration::from_secs(90),
    );
    let (stdout, stderr) = stdout_and_stderr(&wait);
    assert!(stdout.contains("failed (1):"), "{stdout}{stderr}");
    assert_escaped("status --wait", &stdout);
    let status = output_within(
        Command::new(BIN).arg("status").arg(&mount.mnt),
        Duration::from_secs(30),
    );
    assert!(status.status.success(), "{status:?}");
    assert_escaped("status", &String::from_utf8_lossy(&status.stdout));

    proxy.add_rule(Rule {
        matches: is_download,
        action: hostile_refusal(),
        times: None,
    });
    let verify = output_within(
        Command::new(BIN)
            .arg("verify")
            .arg(&mount.mnt)
            .args(["--api", &proxy.url, "--device-key-file"])
            .arg(&mount.key_file),
        Duration::from_secs(60),
    );
    let (stdout, stderr) = stdout_and_stderr(&verify);
    assert_eq!(verify.status.code(), Some(2), "{stdout}{stderr}");
    assert_escaped("the error of verify", &stderr);

    assert!(mount.unmount().success());
    assert_escaped("the daemon's log", &mount.log_text());
}

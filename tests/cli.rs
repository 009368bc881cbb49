//! The command line as an operator meets it, through the real binary: where mount settings come
//! from (`mount --print-config` shows the resolved ones without mounting), mount(8)'s `-o` form,
//! `grants` against a real emulator, completions, usage errors and daemon mode's error report.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::service::{Emulator, BIN};
use serde_json::{json, Value};

/// `maxlofs ARGS` in `dir`, with no `MAXLOFS_*` variable and no default config file unless a
/// test adds them.
fn maxlofs(dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .current_dir(dir)
        .env("XDG_CONFIG_HOME", dir.join("no-config-here"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("MAXLOFS_") {
            command.env_remove(name);
        }
    }
    command
}

fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).expect("UTF-8 output")
}

/// Runs a `--print-config` command line and answers the settings it printed.
fn settings(command: &mut Command) -> Value {
    let out = command.output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON settings")
}

/// Asserts a usage error: exit status 2, no panic, and stderr mentioning each of `needles`.
fn assert_usage_error(out: &Output, needles: &[&str]) {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "{needle:?} not in: {stderr}");
    }
}

fn write_config(path: &Path, toml: &str) -> PathBuf {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, toml).unwrap();
    path.to_path_buf()
}

#[test]
fn defaults_apply_when_nothing_is_configured_and_paths_become_absolute() {
    let dir = tempfile::tempdir().unwrap();
    let got = settings(&mut maxlofs(
        dir.path(),
        &["mount", "b", "m", "--print-config"],
    ));
    let root = dir.path().to_str().unwrap();
    assert_eq!(
        got,
        json!({
            "backing": format!("{root}/b"),
            "mountpoint": format!("{root}/m"),
            "foreground": false,
            "read_only": false,
            "allow_other": false,
            "api": "http://127.0.0.1:8700",
            "grant": "1",
            "prefix": "",
            "device_key_file": null,
            "user_key_file": null,
            "state_dir": null,
            "settle_ms": 500,
            "concurrency": 64,
            "cache_entries": 100000,
            "ignore": [],
            "no_default_ignore": [],
            "no_delete": false,
            "new_backing": false,
            "no_upload": false,
            "upload_concurrency": 4,
            "small_upload_concurrency": 32,
            "upload_limit": null,
            "scrub_rate": 32 << 20,
            "scrub_interval": null,
            "drain_timeout": 30,
            "threads": 4,
            "transport": "auto",
            "log_level": null,
            "log_file": null,
        })
    );
}

#[test]
fn flags_beat_the_environment_which_beats_the_file_which_beats_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        &dir.path().join("maxlofs.toml"),
        r#"
            settle_ms = 100
            api = "http://file:1"
            grant = "photos"
            concurrency = 3
            ignore = ["*.part", "*.{tmp,bak}"]
            device_key_file = "/etc/maxlofs/device.key"
        "#,
    );
    let config = config.to_str().unwrap();
    let run = |flags: &[&str], env: &[(&str, &str)]| {
        let mut args = vec!["mount", "/b", "/m", "--config", config, "--print-config"];
        args.extend(flags);
        settings(maxlofs(dir.path(), &args).envs(env.iter().copied()))
    };

    let env = [
        ("MAXLOFS_SETTLE_MS", "200"),
        ("MAXLOFS_API", "http://env:2"),
    ];
    let got = run(&["--settle-ms", "300"], &env);
    assert_eq!(got["settle_ms"], 300, "flag");
    assert_eq!(got["api"], "http://env:2", "environment");
    assert_eq!(got["grant"], "photos", "file");
    assert_eq!(got["concurrency"], 3, "file");
    assert_eq!(got["ignore"], json!(["*.part", "*.{tmp,bak}"]), "file");
    assert_eq!(got["device_key_file"], "/etc/maxlofs/device.key", "file");
    assert_eq!(got["threads"], 4, "default");

    assert_eq!(run(&[], &env)["settle_ms"], 200, "environment over file");
    assert_eq!(run(&[], &[])["settle_ms"], 100, "file over default");
    let ignore = run(&["--ignore", "*.x"], &[("MAXLOFS_IGNORE", "*.y")])["ignore"].clone();
    assert_eq!(ignore, json!(["*.x"]), "a list is replaced, not merged");
    assert_eq!(
        run(&[], &[("MAXLOFS_IGNORE", "*.y")])["ignore"],
        json!(["*.y"])
    );
}

#[test]
fn the_default_config_file_is_read_when_it_exists() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("xdg");
    write_config(&home.join("maxlofs/config.toml"), "grant = \"7\"\n");
    let run = |extra: &[&str]| {
        let mut args = vec!["mount", "/b", "/m", "--print-config"];
        args.extend(extra);
        settings(maxlofs(dir.path(), &args).env("XDG_CONFIG_HOME", &home))
    };
    assert_eq!(run(&[])["grant"], "7");
    assert_eq!(run(&["--no-config"])["grant"], "1");
    // --no-config wins over every way of naming a file: the daemon inherits the environment.
    let other = write_config(&dir.path().join("other.toml"), "grant = \"8\"\n");
    let other_option = format!("config={}", other.display());
    let other = other.to_str().unwrap();
    assert_eq!(run(&["--no-config", "--config", other])["grant"], "1");
    assert_eq!(run(&["--no-config", "-o", &other_option])["grant"], "1");
    let from_env = settings(
        maxlofs(
            dir.path(),
            &["mount", "/b", "/m", "--no-config", "--print-config"],
        )
        .env("MAXLOFS_CONFIG", other),
    );
    assert_eq!(from_env["grant"], "1");
}

#[test]
fn on_off_settings_turn_either_way() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&dir.path().join("c.toml"), "read_only = true\n");
    let config = config.to_str().unwrap();
    let read_only = |extra: &[&str], env: &[(&str, &str)]| {
        let mut args = vec!["mount", "/b", "/m", "--config", config, "--print-config"];
        args.extend(extra);
        settings(maxlofs(dir.path(), &args).envs(env.iter().copied()))["read_only"].clone()
    };
    assert_eq!(read_only(&[], &[]), true);
    assert_eq!(read_only(&[], &[("MAXLOFS_READ_ONLY", "no")]), false);
    assert_eq!(read_only(&["--read-only=false"], &[]), false);
    assert_eq!(read_only(&["-o", "read_only=false"], &[]), false);
    // mount(8) always passes rw, so rw cannot undo read_only from the file or environment.
    assert_eq!(read_only(&["-o", "rw"], &[]), true);
}

/// What mount(8) passes for an fstab line: the settings, the FUSE options and mount(8)'s own.
const FSTAB_OPTIONS: &str = "api=http://127.0.0.1:8700,grant=7,device_key_file=/etc/maxlofs/key,\
    settle_ms=200,ignore=*.tmp,ignore=*.bak,allow_other,ro,log_level=errors,foreground,\
    _netdev,x-systemd.automount,x-systemd.requires=network-online.target,noauto,auto,user,\
    nouser,defaults,nofail,dev,nodev,suid,nosuid,exec,noexec,rw,noatime,comment=photos";

#[test]
fn mount_options_set_the_same_settings_as_flags() {
    let dir = tempfile::tempdir().unwrap();
    let flags = settings(&mut maxlofs(
        dir.path(),
        &[
            "mount",
            "/b",
            "/m",
            "--grant=7",
            "--device-key-file=/etc/maxlofs/key",
            "--settle-ms=200",
            "--ignore=*.tmp",
            "--ignore=*.bak",
            "--allow-other",
            "--read-only",
            "--log-level=error",
            "--foreground",
            "--print-config",
        ],
    ));
    // As mount.fuse3 runs it, and as a person may.
    let helper = ["/b", "/m", "-o", FSTAB_OPTIONS, "--print-config"];
    assert_eq!(settings(&mut maxlofs(dir.path(), &helper)), flags);
    let with_subcommand = ["mount", "/b", "/m", "-o", FSTAB_OPTIONS, "--print-config"];
    assert_eq!(settings(&mut maxlofs(dir.path(), &with_subcommand)), flags);
}

#[test]
fn mount_options_rank_as_flags_and_the_last_one_wins() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&dir.path().join("c.toml"), "settle_ms = 100\n");
    let got = settings(
        maxlofs(
            dir.path(),
            &[
                "/b",
                "/m",
                "-o",
                "settle_ms=300,threads=2",
                "-o",
                "settle_ms=400",
                "--config",
                config.to_str().unwrap(),
                "--print-config",
            ],
        )
        .env("MAXLOFS_SETTLE_MS", "200"),
    );
    assert_eq!(
        (got["settle_ms"].clone(), got["threads"].clone()),
        (json!(400), json!(2))
    );
}

#[test]
fn an_fstab_line_names_its_config_file_with_o_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&dir.path().join("photos.toml"), "grant = \"photos\"\n");
    let option = format!("config={},noauto", config.display());
    let got = settings(&mut maxlofs(
        dir.path(),
        &["/b", "/m", "-o", &option, "--print-config"],
    ));
    assert_eq!(got["grant"], "photos");
}

#[test]
fn configuration_mistakes_are_usage_errors_that_say_where() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| maxlofs(dir.path(), args).output().unwrap();
    let unknown = write_config(
        &dir.path().join("unknown.toml"),
        "settle_ms = 1\nsettle = 2\n",
    );
    let unknown = unknown.to_str().unwrap();
    assert_usage_error(
        &run(&["mount", "/b", "/m", "--config", unknown]),
        &["unknown key 'settle'", unknown],
    );
    let bad = write_config(&dir.path().join("bad.toml"), "settle_ms = \"soon\"\n");
    let bad = bad.to_str().unwrap();
    assert_usage_error(
        &run(&["mount", "/b", "/m", "--config", bad]),
        &["'soon'", "settle_ms", bad],
    );
    let list = write_config(&dir.path().join("list.toml"), "grant = [1, 2]\n");
    assert_usage_error(
        &run(&["mount", "/b", "/m", "--config", list.to_str().unwrap()]),
        &["grant", "not a list"],
    );
    let broken = write_config(&dir.path().join("broken.toml"), "grant = \n");
    assert_usage_error(
        &run(&["mount", "/b", "/m", "--config", broken.to_str().unwrap()]),
        &["broken.toml", "line 1"],
    );
    assert_usage_error(
        &run(&["mount", "/b", "/m", "--config", "/nonexistent/maxlofs.toml"]),
        &["cannot read config file /nonexistent/maxlofs.toml"],
    );
    assert_usage_error(
        &run(&["/b", "/m", "-o", "rw,sync_every=5"]),
        &["unknown mount option 'sync_every'"],
    );
    assert_usage_error(
        &run(&["/b", "/m", "-o", "settle_ms=soon"]),
        &["'soon'", "-o settle_ms"],
    );
    assert_usage_error(&run(&["/b", "/m", "-o", "api"]), &["-o api needs a value"]);
    assert_usage_error(
        &run(&["mount", "/b", "/m", "--grant", "2", "-o", "grant=3"]),
        &["given both as --grant and as -o grant"],
    );
    assert_usage_error(
        &run(&["mount", "/b", "/m", "-o", "log_level=loud"]),
        &["'loud'", "error, warn, info, debug, trace"],
    );
}

#[test]
fn usage_errors_exit_2_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[&[&str]] = &[
        &[],
        &["frobnicate"],
        &["mount"],
        &["mount", "/only-backing"],
        &["mount", "/b", "/m", "--settle-ms", "soon"],
        &["mount", "/b", "/m", "--log-level", "loud"],
        &["mount", "/b", "/m", "--no-such-flag"],
        &["mount", "", "/m", "--print-config"],
        &["grants", "--json", "extra"],
        &["completions"],
        &["completions", "tcsh"],
        &["status"],
        &["hash"],
    ];
    for args in cases {
        let out = maxlofs(dir.path(), args).output().unwrap();
        assert_usage_error(&out, &[]);
        // An error, or (for no arguments at all) the help.
        let stderr = text(&out.stderr);
        assert!(
            stderr.starts_with("error: ") || stderr.contains("Usage: maxlofs <COMMAND>"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn completions_cover_the_subcommands_and_settings() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let out = maxlofs(dir.path(), &["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        for word in ["maxlofs", "mount", "grants", "settle-ms"] {
            assert!(script.contains(word), "{shell} completions lack {word}");
        }
    }
}

#[test]
fn grants_lists_what_the_device_key_sees() {
    let emulator = Emulator::start(&["--grant", "1", "--grant", "7"]);
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("device.key");
    std::fs::write(&key, "demo-device-key\n").unwrap();
    let key = key.to_str().unwrap();

    let out = maxlofs(
        dir.path(),
        &["grants", "--api", &emulator.url, "--device-key-file", key],
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<Vec<&str>> = text(&out.stdout)
        .lines()
        .map(|line| line.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines,
        [
            vec!["ID", "NAME", "PREFIX", "DISABLED"],
            vec!["1", "grant-1", "no"],
            vec!["7", "grant-7", "no"],
        ]
    );

    // The key from the environment, the URL from MAXLOFS_API, JSON out.
    let out = maxlofs(dir.path(), &["grants", "--json"])
        .env("MAXLOFS_API", &emulator.url)
        .env("MAXLO_DEVICE_SESSION_KEY", "demo-device-key")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listing: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        listing,
        json!({
            "device_disabled": false,
            "grants": [
                {"id": "1", "name": "grant-1", "prefix_path": "", "disabled": false},
                {"id": "7", "name": "grant-7", "prefix_path": "", "disabled": false},
            ],
        })
    );
}

#[test]
fn grants_reads_api_and_key_file_from_the_config_file_like_mount() {
    let emulator = Emulator::start(&["--grant", "1", "--grant", "7"]);
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("device.key");
    std::fs::write(&key, "demo-device-key\n").unwrap();
    let wrong_key = dir.path().join("wrong.key");
    std::fs::write(&wrong_key, "not-a-key\n").unwrap();
    // The keys only `mount` uses are passed over.
    let mount_config = |api: &str| {
        format!(
            "api = \"{api}\"\ndevice_key_file = \"{}\"\ngrant = \"7\"\nsettle_ms = 100\n",
            key.display()
        )
    };
    let config = write_config(
        &dir.path().join("maxlofs.toml"),
        &mount_config(&emulator.url),
    );
    let config = config.to_str().unwrap();
    let grant_ids = |out: Output| -> Vec<String> {
        assert!(out.status.success(), "{}", text(&out.stderr));
        let listing: Value = serde_json::from_slice(&out.stdout).unwrap();
        listing["grants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|grant| grant["id"].as_str().unwrap().to_string())
            .collect()
    };

    let out = maxlofs(dir.path(), &["grants", "--json", "--config", config])
        .output()
        .unwrap();
    assert_eq!(grant_ids(out), ["1", "7"], "from --config");

    // The default file, with an api that the environment overrides.
    let home = dir.path().join("xdg");
    write_config(
        &home.join("maxlofs/config.toml"),
        &mount_config("http://127.0.0.1:1"),
    );
    let out = maxlofs(dir.path(), &["grants", "--json"])
        .env("XDG_CONFIG_HOME", &home)
        .env("MAXLOFS_API", &emulator.url)
        .output()
        .unwrap();
    assert_eq!(
        grant_ids(out),
        ["1", "7"],
        "the default file, under the environment"
    );

    // A flag beats the file.
    let out = maxlofs(
        dir.path(),
        &["grants", "--config", config, "--device-key-file"],
    )
    .arg(&wrong_key)
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("403"), "{}", text(&out.stderr));

    let unknown = write_config(&dir.path().join("unknown.toml"), "apu = \"x\"\n");
    assert_usage_error(
        &maxlofs(
            dir.path(),
            &["grants", "--config", unknown.to_str().unwrap()],
        )
        .output()
        .unwrap(),
        &["unknown key 'apu'"],
    );
}

#[test]
fn grants_reports_a_refused_key_and_a_missing_one() {
    let emulator = Emulator::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("device.key");
    std::fs::write(&key, "not-a-key\n").unwrap();
    let out = maxlofs(
        dir.path(),
        &[
            "grants",
            "--api",
            &emulator.url,
            "--device-key-file",
            key.to_str().unwrap(),
        ],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("403"), "{}", text(&out.stderr));
    assert!(
        !text(&out.stderr).contains("not-a-key"),
        "the key is never printed"
    );

    let out = maxlofs(dir.path(), &["grants", "--api", &emulator.url])
        .env_remove("MAXLO_DEVICE_SESSION_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("--device-key-file"),
        "{}",
        text(&out.stderr)
    );
}

/// A service that accepts connections and never answers: `grants` ends with an error saying so
/// (after the interactive budget, 15 s, where a mount's calls wait a minute), and a status
/// other than 0.
#[test]
fn grants_reports_a_service_that_never_answers() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    // Connections are accepted by the kernel's backlog; nothing is ever read or written.
    let dir = tempfile::tempdir().unwrap();
    let out = maxlofs(dir.path(), &["grants", "--api", &url])
        .env("MAXLO_DEVICE_SESSION_KEY", "demo-device-key")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("timed out"),
        "{}",
        text(&out.stderr)
    );
    drop(silent);
}

#[test]
fn daemon_mode_fails_with_the_daemons_own_error() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("logs/maxlofs.log");
    std::fs::create_dir(dir.path().join("mnt")).unwrap();
    let out = maxlofs(
        dir.path(),
        &[
            "mount",
            "no-such-backing",
            "mnt",
            "--log-file",
            "logs/maxlofs.log",
        ],
    )
    .output()
    .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("before the mount was ready"), "{stderr}");
    // The daemon's own last words, from its log (a relative --log-file is the caller's).
    let logged = std::fs::read_to_string(&log).expect("the daemon's log");
    let last = logged.lines().last().expect("a logged error");
    assert!(last.starts_with("maxlofs: "), "{logged}");
    assert!(stderr.contains(last), "{stderr}");
}

/// `maxlofs completions bash | true` and `maxlofs hash ... | head -0`: the reader is gone before
/// the first line, and the command ends without a word on stderr (it used to panic or print
/// "Broken pipe").
#[test]
fn printing_commands_end_quietly_when_the_reader_goes_away() {
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<String> = (0..2000)
        .map(|i| {
            let path = dir.path().join(format!("f{i}"));
            std::fs::write(&path, i.to_string()).unwrap();
            path.to_str().unwrap().to_string()
        })
        .collect();
    let mut hash = vec!["hash"];
    hash.extend(files.iter().map(String::as_str));
    for args in [vec!["completions", "bash"], hash] {
        let mut child = Command::new(BIN)
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        assert_eq!(text(&out.stderr), "", "maxlofs {}", args[0]);
    }
}

#[test]
fn upload_limits_take_k_m_g_suffixes_and_refuse_nonsense() {
    let dir = tempfile::tempdir().unwrap();
    for (given, rate) in [
        ("500K", 512_000),
        ("20m", 20 << 20),
        ("1G", 1 << 30),
        ("1000", 1000),
    ] {
        let got = settings(&mut maxlofs(
            dir.path(),
            &["mount", "b", "m", "--print-config", "--upload-limit", given],
        ));
        assert_eq!(got["upload_limit"], rate, "{given}");
    }
    for bad in ["0", "20X", "M", "1.5M", "99999999999G"] {
        let out = maxlofs(dir.path(), &["mount", "b", "m", "--upload-limit", bad])
            .output()
            .unwrap();
        assert_usage_error(&out, &["--upload-limit"]);
    }
}

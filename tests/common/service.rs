//! The emulator and a `maxlofs mount` daemon as child processes, and the catalog checks the
//! end-to-end tests assert with.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_maxlofs");

/// A running `maxlofs emulator`; killed when dropped.
pub struct Emulator {
    child: Child,
    pub url: String,
    args: Vec<String>,
}

impl Emulator {
    pub fn start(args: &[&str]) -> Emulator {
        Emulator::start_at("127.0.0.1:0", args)
    }

    pub fn start_at(listen: &str, args: &[&str]) -> Emulator {
        let mut child = Command::new(BIN)
            .args(["emulator", "--listen", listen])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("the emulator starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim_end()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Emulator {
            child,
            url,
            args: args.iter().map(|a| a.to_string()).collect(),
        }
    }

    /// Kills the emulator and starts it again on the same address and arguments (use a `--db`).
    pub fn restart(&mut self) {
        let args = self.args.clone();
        self.restart_with(&args.iter().map(String::as_str).collect::<Vec<_>>());
    }

    /// `restart` with other arguments (other fault flags on the same `--db`, say).
    pub fn restart_with(&mut self, args: &[&str]) {
        self.kill();
        let listen = self.url.trim_start_matches("http://").to_string();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // The port may linger briefly after the kill.
            let attempt = std::panic::catch_unwind(|| Emulator::start_at(&listen, args));
            match attempt {
                Ok(started) => {
                    *self = started;
                    return;
                }
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(err) => std::panic::resume_unwind(err),
            }
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The emulator's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn get(&self, path: &str) -> Value {
        reqwest::blocking::get(format!("{}{path}", self.url))
            .and_then(|r| r.error_for_status())
            .and_then(|r| r.json())
            .unwrap_or_else(|err| panic!("GET {path}: {err}"))
    }

    /// Moves the emulator's signed-URL clock `secs` ahead (`POST /_emulator/clock`): URLs expire
    /// as if that time had passed, without waiting for it.
    pub fn advance_clock(&self, secs: u64) {
        let (status, body) = self.post(
            "/_emulator/clock",
            &serde_json::json!({"advance_secs": secs}),
        );
        assert_eq!(status, 200, "{body}");
    }

    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = reqwest::blocking::Client::new()
            .post(format!("{}{path}", self.url))
            .json(body)
            .send()
            .unwrap_or_else(|err| panic!("POST {path}: {err}"));
        let status = response.status().as_u16();
        (status, response.json().unwrap_or(Value::Null))
    }

    /// Every record of grant 1, deleted ones included.
    pub fn records(&self) -> Vec<Value> {
        self.get("/_emulator/media_grant/1/media")["media_list"]
            .as_array()
            .expect("media_list")
            .clone()
    }

    /// Live records of grant 1 by media_path.
    pub fn live(&self) -> BTreeMap<String, Value> {
        self.records()
            .into_iter()
            .filter(|r| r["is_deleted"] == Value::Bool(false))
            .map(|r| (r["media_path"].as_str().unwrap().to_string(), r))
            .collect()
    }

    /// The emulator's `/_emulator/stats`.
    pub fn stats(&self) -> Value {
        self.get("/_emulator/stats")
    }

    /// Faults injected so far: (calls answered 503, connections dropped).
    pub fn faults(&self) -> (u64, u64) {
        let stats = self.stats();
        let failed = stats["calls"].as_object().map_or(0, |calls| {
            calls
                .values()
                .filter_map(|by_status| by_status["503"].as_u64())
                .sum()
        });
        (failed, stats["dropped"].as_u64().unwrap_or(0))
    }

    /// Calls answered for `call` (create, update, delete, ...) with any status.
    pub fn calls(&self, call: &str) -> u64 {
        let stats = self.get("/_emulator/stats");
        stats["calls"][call].as_object().map_or(0, |by_status| {
            by_status.values().filter_map(Value::as_u64).sum()
        })
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `script` with `sh -e` in `dir`, failing the test with its output if it fails.
pub fn sh(script: &str, dir: &Path) {
    run(Command::new("sh").arg("-ec").arg(script).current_dir(dir));
}

/// Runs `command` to its end, failing the test with its output unless it succeeds.
pub fn run(command: &mut Command) -> Output {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `command` to its end with its output captured, failing the test (and killing it, where a
/// kill can) if it runs longer than `limit`: a command that would hang must fail instead.
pub fn output_within(command: &mut Command, limit: Duration) -> Output {
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    if super::wait::poll(limit, || child.try_wait().unwrap()).is_none() {
        let _ = child.kill();
        panic!("{command:?} still running after {limit:?}");
    }
    child.wait_with_output().unwrap()
}

/// Whether a real FUSE mount is required here (CI): then a mount that fails fails the test.
/// `maxlofs status MNT --wait`: returns once nothing is pending or in flight; otherwise fails
/// with the status and the daemon's log.
pub fn wait_synced_at(mnt: &Path, timeout_secs: u64, log: impl FnOnce() -> String) {
    wait_synced_by(Command::new(BIN), mnt, timeout_secs, log);
}

/// `wait_synced_at` with `maxlofs` run as `maxlofs` says (as another user, say).
fn wait_synced_by(
    mut maxlofs: Command,
    mnt: &Path,
    timeout_secs: u64,
    log: impl FnOnce() -> String,
) {
    let out = maxlofs
        .args(["status", "--wait", "--json", "--timeout"])
        .arg(timeout_secs.to_string())
        .arg(mnt)
        .output()
        .unwrap();
    // 3: settled with paths failed or deletes held, which the caller asserts on if it cares.
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "status --wait failed: {}{}\nlog:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        log()
    );
}

pub fn fuse_required() -> bool {
    std::env::var("MAXLOFS_REQUIRE_FUSE").is_ok_and(|v| v == "1")
}

pub fn is_mounted(mountpoint: &Path) -> bool {
    let target = mountpoint.as_os_str().as_bytes();
    std::fs::read("/proc/self/mountinfo").is_ok_and(|info| {
        info.split(|b| *b == b'\n')
            .any(|line| line.split(|b| *b == b' ').nth(4) == Some(target))
    })
}

/// A command's prefix that runs it as nobody (uid and gid 65534, no other groups).
pub const AS_NOBODY: [&str; 4] = [
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
];

/// `chown -R nobody:nogroup PATH`.
pub fn give_to_nobody(path: &Path) {
    run(Command::new("chown").arg("-R").arg("65534:65534").arg(path));
}

/// A `maxlofs mount --foreground` daemon over a temp backing folder, against an emulator.
pub struct Mount {
    child: Option<Child>,
    pub dir: PathBuf,
    pub backing: PathBuf,
    pub mnt: PathBuf,
    pub state: PathBuf,
    pub key_file: PathBuf,
    pub log: PathBuf,
    args: Vec<String>,
    /// Environment of the daemon (`RUST_LOG=info` unless set here).
    pub env: Vec<(String, String)>,
    /// A command (and its arguments) the daemon runs under, such as `prlimit --nofile=N:N`.
    pub wrapper: Vec<String>,
    _temp: Option<tempfile::TempDir>,
}

impl Mount {
    /// Mounts with `--settle-ms 100` and `extra` flags. `None` when FUSE is not available and
    /// not required (the caller skips, saying so).
    pub fn start(emulator: &Emulator, extra: &[&str]) -> Option<Mount> {
        Mount::start_api(&emulator.url, extra)
    }

    /// `start` against the service at `api` (e.g. a proxy in front of an emulator).
    pub fn start_api(api: &str, extra: &[&str]) -> Option<Mount> {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().to_path_buf();
        let mut mount = Mount::prepare_api(&dir, api, extra);
        mount._temp = Some(temp);
        mount.mount().then_some(mount)
    }

    /// A mount's folders and arguments under `dir`, not mounted yet.
    pub fn prepare(dir: &Path, emulator: &Emulator, extra: &[&str]) -> Mount {
        Mount::prepare_api(dir, &emulator.url, extra)
    }

    /// `prepare` against the service at `api`.
    pub fn prepare_api(dir: &Path, api: &str, extra: &[&str]) -> Mount {
        let backing = dir.join("backing");
        let mnt = dir.join("mnt");
        let state = dir.join("state");
        let key_file = dir.join("device.key");
        for d in [&backing, &mnt] {
            std::fs::create_dir_all(d).unwrap();
        }
        if !key_file.exists() {
            std::fs::write(&key_file, "demo-device-key\n").unwrap();
        }
        let mut args: Vec<String> = vec![
            "--foreground".into(),
            "--api".into(),
            api.to_string(),
            "--device-key-file".into(),
            key_file.to_string_lossy().into(),
            "--state-dir".into(),
            state.to_string_lossy().into(),
        ];
        for (flag, default) in [("--grant", "1"), ("--settle-ms", "100")] {
            if !extra.contains(&flag) {
                args.extend([flag.into(), default.into()]);
            }
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        Mount {
            child: None,
            dir: dir.to_path_buf(),
            log: dir.join("mount.log"),
            backing,
            mnt,
            state,
            key_file,
            args,
            env: Vec::new(),
            wrapper: Vec::new(),
            _temp: None,
        }
    }

    /// Starts the daemon and waits for the mount. False (after saying why) when FUSE is not
    /// available and not required; panics when it is required. The wait allows for the 15 s
    /// that the start-up check asks a service that cannot be reached before mounting offline.
    pub fn mount(&mut self) -> bool {
        self.mount_within(Duration::from_secs(40))
    }

    /// `mount`, waiting up to `limit` for the mount to appear.
    pub fn mount_within(&mut self, limit: Duration) -> bool {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut child = self
            .command_for(&self.backing, &self.mnt)
            // MAXLOFS_DAEMON_LOG (e.g. `maxlofs=debug`) raises every test daemon's log level.
            .env(
                "RUST_LOG",
                std::env::var("MAXLOFS_DAEMON_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stderr(log)
            .spawn()
            .expect("maxlofs mount starts");
        let deadline = Instant::now() + limit;
        while !is_mounted(&self.mnt) {
            if let Some(status) = child.try_wait().unwrap() {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                if fuse_required() {
                    panic!("maxlofs mount exited with {status} before mounting:\n{log}");
                }
                eprintln!("SKIPPED: cannot mount FUSE here ({status}):\n{log}");
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "mount did not appear in {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
        true
    }

    /// `maxlofs mount BACKING MNT` with this mount's arguments and wrapper: what `mount` runs,
    /// or, given other folders, a second daemon with this one's key and state folder.
    pub fn command_for(&self, backing: &Path, mnt: &Path) -> Command {
        let mut command = self.maxlofs();
        command.arg("mount").arg(backing).arg(mnt).args(&self.args);
        command
    }

    /// Runs the daemon (and `status`) as nobody, with `dir` (this mount's folder, made
    /// 0755) as its home. What the daemon must reach, the caller gives to nobody (`chown`).
    pub fn run_as_nobody(&mut self) {
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        self.wrapper = AS_NOBODY.map(String::from).to_vec();
        let home = self.dir.to_str().unwrap().to_string();
        self.env.push(("HOME".into(), home));
    }

    /// `maxlofs` under this mount's wrapper: as the daemon's user, whom alone a private mount
    /// answers.
    fn maxlofs(&self) -> Command {
        match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(BIN);
                command
            }
            None => Command::new(BIN),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// `maxlofs status MNT --wait`: returns once nothing is pending or in flight.
    pub fn wait_synced(&self) {
        self.wait_synced_within(60)
    }

    /// `wait_synced` with another deadline (retries and probes back off up to 7.5 s under heavy faults).
    pub fn wait_synced_within(&self, timeout_secs: u64) {
        wait_synced_by(self.maxlofs(), &self.mnt, timeout_secs, || self.log_text());
    }

    /// `maxlofs status MNT --wait` with a timeout: whether everything was sent in time.
    pub fn try_wait_synced(&self, timeout_secs: u64) -> bool {
        self.maxlofs()
            .args(["status", "--wait", "--json", "--timeout"])
            .arg(timeout_secs.to_string())
            .arg(&self.mnt)
            .output()
            .unwrap()
            .status
            .success()
    }

    /// Whether the daemon process is still running.
    pub fn is_alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| child.try_wait().unwrap().is_none())
    }

    /// The daemon's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn status(&self) -> Value {
        let out = run(self.maxlofs().args(["status", "--json"]).arg(&self.mnt));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `umount MNT`, then waits for the daemon to drain and exit.
    pub fn unmount(&mut self) -> ExitStatus {
        let out = Command::new("umount").arg(&self.mnt).output().unwrap();
        assert!(
            out.status.success(),
            "umount: {}\ndaemon log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
        self.child.take().expect("mounted").wait().unwrap()
    }

    /// Sends `signal` to the daemon and waits for it to exit.
    pub fn signal_and_wait(&mut self, signal: i32) -> ExitStatus {
        self.signal(signal);
        self.wait_exit()
    }

    /// Sends `signal` to the daemon.
    pub fn signal(&self, signal: i32) {
        let pid = self.pid().expect("mounted");
        // SAFETY: plain kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(pid as i32, signal) }, 0);
    }

    /// Waits for the daemon to exit.
    pub fn wait_exit(&mut self) -> ExitStatus {
        self.child.take().expect("mounted").wait().unwrap()
    }

    /// SIGKILLs the daemon, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        super::wait::poll(Duration::from_secs(10), || {
            if !is_mounted(&self.mnt) {
                return Some(());
            }
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
            None
        });
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = Command::new("umount").arg(&self.mnt).status();
            if let Some(mut child) = self.child.take() {
                super::wait::poll(Duration::from_secs(10), || child.try_wait().ok().flatten());
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if is_mounted(&self.mnt) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}

/// What the catalog must hold for `backing`: one live record per regular file with a UTF-8 path
/// that no ignore rule matches, with its Maxlo hash, size and mtime.
pub fn expected_catalog(backing: &Path, ignored: &dyn Fn(&Path) -> bool) -> Catalog {
    let mut expected = BTreeMap::new();
    let mut stack = vec![backing.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            let path = entry.path();
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                let rel = path.strip_prefix(backing).unwrap();
                let Some(key) = rel.to_str() else { continue };
                if ignored(rel) {
                    continue;
                }
                let meta = std::fs::metadata(&path).unwrap();
                let mtime = chrono::DateTime::<chrono::Utc>::from(meta.modified().unwrap())
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
                let hash = maxlofs_api::hash::hash_file(&path).unwrap().to_hex();
                expected.insert(key.to_string(), (hash, meta.len(), mtime));
            }
        }
    }
    expected
}

/// Asserts the emulator's live catalog is exactly what the backing tree implies.
pub fn assert_catalog_matches(emulator: &Emulator, backing: &Path) {
    let rules = maxlofs_sync::ignore::IgnoreRules::new(&[], &[]).unwrap();
    let expected = expected_catalog(backing, &|p| rules.is_ignored(p));
    let actual = live_catalog(emulator);
    assert_eq!(
        actual, expected,
        "catalog (left) differs from the tree (right)"
    );
}

/// (hash, size, mtime) of each record, keyed by media_path.
pub type Catalog = BTreeMap<String, (String, u64, String)>;

/// The emulator's live records as a `Catalog`.
pub fn live_catalog(emulator: &Emulator) -> Catalog {
    emulator
        .live()
        .into_iter()
        .map(|(path, r)| {
            (
                path,
                (
                    r["file_hash"].as_str().unwrap().to_string(),
                    r["file_size"].as_u64().unwrap(),
                    r["mtime"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect()
}

/// How a live catalog differs from what a tree implies.
#[derive(Debug, Default)]
pub struct CatalogDiff {
    /// Records the tree implies.
    pub checked: usize,
    /// Files with no live record.
    pub missing: Vec<String>,
    /// Files whose live record shows other content, size or mtime.
    pub wrong: Vec<String>,
    /// Live records for which the tree has no file.
    pub extra: Vec<String>,
}

impl CatalogDiff {
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.wrong.is_empty() && self.extra.is_empty()
    }

    /// Files whose content the catalog does not hold: missing or wrong.
    pub fn lost(&self) -> usize {
        self.missing.len() + self.wrong.len()
    }
}

pub fn diff_catalog(expected: &Catalog, actual: &Catalog) -> CatalogDiff {
    let mut diff = CatalogDiff {
        checked: expected.len(),
        ..CatalogDiff::default()
    };
    for (path, want) in expected {
        match actual.get(path) {
            None => diff.missing.push(path.clone()),
            Some(got) if got != want => diff.wrong.push(path.clone()),
            Some(_) => {}
        }
    }
    diff.extra = actual
        .keys()
        .filter(|path| !expected.contains_key(*path))
        .cloned()
        .collect();
    diff
}

/// Compares the live catalog with the tree (default ignore rules) and asserts they agree, and
/// that no media_path has two records. Answers the comparison, for tallies.
pub fn check_catalog(emulator: &Emulator, backing: &Path) -> CatalogDiff {
    check_catalog_then(emulator, backing, |_| {})
}

/// `check_catalog`, handing the comparison to `tally` before asserting (so a failing comparison
/// is counted too).
pub fn check_catalog_then(
    emulator: &Emulator,
    backing: &Path,
    tally: impl FnOnce(&CatalogDiff),
) -> CatalogDiff {
    let rules = maxlofs_sync::ignore::IgnoreRules::new(&[], &[]).unwrap();
    let expected = expected_catalog(backing, &|p| rules.is_ignored(p));
    let actual = live_catalog(emulator);
    let diff = diff_catalog(&expected, &actual);
    tally(&diff);
    assert_unique_paths(emulator);
    assert!(
        diff.is_empty(),
        "the catalog differs from the tree: {diff:?}\ncatalog: {actual:#?}\ntree: {expected:#?}"
    );
    diff
}

/// No media_path has more than one record, deleted or not.
pub fn assert_unique_paths(emulator: &Emulator) {
    let mut seen = std::collections::BTreeSet::new();
    for record in emulator.records() {
        let path = record["media_path"].as_str().unwrap().to_string();
        assert!(seen.insert(path.clone()), "two records for {path}");
    }
}

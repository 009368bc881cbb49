//! The catalog shows only what the user did, under real use: files still being written are not
//! sent, and deletes and renames under a faulty service that merges parallel creates converge
//! without ever bringing a deleted record back.

#[macro_use]
mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::service::{assert_catalog_matches, sh, Emulator, Mount, BIN};
use serde_json::Value;

fn status_json(mount: &Mount) -> Value {
    let output = Command::new(BIN)
        .args(["status", "--json"])
        .arg(&mount.mnt)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).unwrap()
}

/// rsync copies into a temp name (`.NAME.XXXXXX`) and renames it when done; at a limited rate the
/// copy takes far longer than the settle window, and the temp file must never become a record.
#[test]
fn rsync_with_a_bandwidth_limit_sends_only_the_finished_file() {
    let emulator = Emulator::start(&[]);
    let mount = mount!(emulator, &["--settle-ms", "100"]);
    let src = tempfile::tempdir().unwrap();
    sh("head -c 6000000 /dev/urandom > slow.bin", src.path());
    sh(
        &format!(
            "rsync -a --bwlimit=2000 {}/slow.bin r/",
            src.path().display()
        ),
        &mount.mnt,
    );
    mount.wait_synced();
    let records = emulator.records();
    let paths: Vec<&str> = records
        .iter()
        .map(|r| r["media_path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["r/slow.bin"], "every record ever made: {records:?}");
    assert_eq!(emulator.calls("create"), 1);
    assert_catalog_matches(&emulator, &mount.backing);
}

/// A program writing a file slowly, open the whole time (a recording, a download): nothing is sent
/// while it writes, status lists it, and one create follows its close.
#[test]
fn a_slow_writer_holding_a_file_open_sends_nothing_until_it_closes() {
    let emulator = Emulator::start(&[]);
    let mount = mount!(emulator, &["--settle-ms", "100"]);
    // The writer leaves a mark before it closes: a status taken while there is none was taken
    // while the file was open (the process itself may still be exiting after its close).
    let marks = tempfile::tempdir().unwrap();
    let closing = marks.path().join("closing");
    let writer = Command::new("python3")
        .arg("-c")
        .arg(
            "import sys, time\n\
             with open(sys.argv[1], 'wb') as f:\n\
             \x20   for i in range(12):\n\
             \x20       f.write(bytes([i]) * 262144); f.flush(); time.sleep(0.25)\n\
             \x20   open(sys.argv[2], 'w').close()\n",
        )
        .arg(mount.path("take1.wav"))
        .arg(&closing)
        .spawn()
        .unwrap();
    let mut writer = ChildGuard(writer);
    std::thread::sleep(Duration::from_millis(500));
    let mut looks = 0;
    let done = |writer: &mut ChildGuard| closing.exists() || writer.0.try_wait().unwrap().is_some();
    while !done(&mut writer) {
        let status = status_json(&mount);
        if done(&mut writer) {
            break;
        }
        assert_eq!(status["open_for_writing"], 1, "{status}");
        assert_eq!(
            status["writing"],
            serde_json::json!(["take1.wav"]),
            "{status}"
        );
        assert!(emulator.records().is_empty(), "sent while open");
        looks += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(writer.0.wait().unwrap().success());
    assert!(
        looks >= 5,
        "the writer ended too soon to tell ({looks} looks)"
    );
    mount.wait_synced();
    assert_eq!((emulator.calls("create"), emulator.calls("update")), (1, 0));
    assert_eq!(emulator.live()["take1.wav"]["file_size"], 12 * 262144);
    assert_catalog_matches(&emulator, &mount.backing);
}

/// Kills the child if the test fails before it ends.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls the emulator's records and keeps every media_id seen deleted and then live again.
struct ResurrectionWatch {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<i64>>>,
}

impl ResurrectionWatch {
    fn start(url: &str) -> ResurrectionWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let url = format!("{url}/_emulator/media_grant/1/media");
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut deleted = BTreeSet::new();
            let mut resurrected = Vec::new();
            while !stopped.load(Ordering::SeqCst) {
                let Ok(list) = reqwest::blocking::get(&url).and_then(|r| r.json::<Value>()) else {
                    continue;
                };
                for record in list["media_list"].as_array().into_iter().flatten() {
                    let id = record["media_id"].as_i64().unwrap();
                    if record["is_deleted"] == true {
                        deleted.insert(id);
                    } else if deleted.contains(&id) {
                        resurrected.push(id);
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            resurrected
        });
        ResurrectionWatch {
            stop,
            thread: Some(thread),
        }
    }

    fn resurrected(mut self) -> Vec<i64> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap()
    }
}

/// The fault run of the issue: a service that merges parallel creates, fails 30 % of calls, drops
/// 20 % after doing them and answers after 20 ms. `rm -rf` of 100 synced files and then 150
/// renames each converge, no delete is ever followed by a create, and no record goes from
/// deleted to live. The settle times are printed (`scripts/bench-faults.sh` reports them); the
/// target, 60 s each, is a benchmark's, so the wait here is generous.
#[test]
fn under_faults_deletes_and_renames_converge_and_nothing_comes_back() {
    let db_dir = tempfile::tempdir().unwrap();
    let db = db_dir.path().join("maxlo.db");
    let db = db.to_str().unwrap();
    let mut emulator = Emulator::start(&["--db", db, "--merge-parallel-creates"]);
    let mount = mount!(emulator, &["--settle-ms", "100"]);
    sh(
        "mkdir rm mv && for i in $(seq 100); do echo rm$i > rm/f$i; done \
         && for i in $(seq 150); do echo mv$i > mv/g$i; done",
        &mount.mnt,
    );
    mount.wait_synced();
    assert_eq!(emulator.live().len(), 250);
    emulator.restart_with(&[
        "--db",
        db,
        "--merge-parallel-creates",
        "--fail-rate",
        "0.3",
        "--drop-rate",
        "0.2",
        "--latency-ms",
        "20",
    ]);
    let watch = ResurrectionWatch::start(&emulator.url);
    let timed = |label: &str, script: &str| {
        let started = Instant::now();
        sh(script, &mount.mnt);
        mount.wait_synced_within(300);
        eprintln!(
            "fault run: {label} settled in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    };
    timed("rm -rf of 100 files", "rm -rf rm");
    assert_eq!(
        emulator.calls("create"),
        0,
        "a delete was retried as a create"
    );
    timed(
        "150 renames",
        "for i in $(seq 150); do mv mv/g$i mv/h$i; done",
    );
    let resurrected = watch.resurrected();
    assert!(
        resurrected.is_empty(),
        "deleted, then live: {resurrected:?}"
    );
    let (failed, dropped) = emulator.faults();
    assert!(failed > 0 && dropped > 0, "the faults were on");
    assert_catalog_matches(&emulator, &mount.backing);
    let live = emulator.live();
    assert_eq!(live.len(), 150);
    assert!(live.keys().all(|path| path.starts_with("mv/h")));
}

//! Crashes and a second writer: kill -9 the daemon at random instants of a workload and mount
//! again on the same backing folder and state; kill the emulator and bring it back on its
//! database mid-workload; two devices writing the same paths at once. After each, the catalog
//! must converge to exactly what the tree implies.
//!
//! `MAXLOFS_CRASH_ROUNDS` sets the number of daemon kills (default 3); `MAXLOFS_SEED` fixes the
//! random choices (printed at the start of each test).

mod common;

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::sleep;
use std::time::Duration;

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use rand::{Rng, SeedableRng};

use common::model::{self, Model};
use common::service::{live_catalog, run, Emulator, Mount, BIN};
use common::soak::{env_count, Tally};

fn seed(test: &str) -> u64 {
    let seed = env_count(
        "MAXLOFS_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    );
    println!("{test}: MAXLOFS_SEED={seed}");
    seed
}

/// Random operation sequences from the model's strategy, reproducible from a seed.
struct OpSource {
    runner: TestRunner,
}

impl OpSource {
    fn new(seed: u64) -> OpSource {
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&seed.to_le_bytes());
        OpSource {
            runner: TestRunner::new_with_rng(
                Config::default(),
                TestRng::from_seed(RngAlgorithm::ChaCha, &bytes),
            ),
        }
    }

    fn ops(&mut self, n: usize) -> Vec<model::Op> {
        model::ops_exact(n)
            .new_tree(&mut self.runner)
            .unwrap()
            .current()
    }
}

/// Random operations on the tree under `mnt/model` from another thread, and many small writes
/// under `mnt/bulk` from a second, until stopped or until the mount goes away. Paths go through a descriptor of the mount's root, so once the daemon is
/// killed every operation fails (ENOTCONN) rather than landing in the bare mountpoint directory.
struct Workload {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<(u64, Option<String>)>>,
    /// Writes many small files (and rewrites some) under `bulk/`, so that plenty of calls are
    /// queued and on the wire when something is killed.
    bulk: Option<std::thread::JoinHandle<(u64, Option<String>)>>,
}

impl Workload {
    fn start(mnt: &Path, ops: Vec<model::Op>) -> Workload {
        let root_dir = std::fs::File::open(mnt).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            // The model's operations stay in model/, the bulk writer's in bulk/.
            let root =
                PathBuf::from(format!("/proc/self/fd/{}", root_dir.as_raw_fd())).join("model");
            let _ = std::fs::create_dir_all(&root);
            let mut model = Model::scan(&root);
            let mut done = 0;
            let mut error = None;
            for op in &ops {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                if let Err(err) = model.apply(&root, op) {
                    error = Some(format!("{err}\n{}", model.log.join("\n")));
                    break;
                }
                done += 1;
            }
            drop(root_dir);
            (done, error)
        });
        let bulk_root = std::fs::File::open(mnt).unwrap();
        let stopped = stop.clone();
        let bulk = std::thread::spawn(move || {
            let root = PathBuf::from(format!("/proc/self/fd/{}", bulk_root.as_raw_fd()));
            let dir = root.join("bulk");
            let mut written = 0u64;
            let mut error = None;
            while !stopped.load(Ordering::SeqCst) && written < 400 {
                let name = format!("f{}.jpg", written % 150);
                // The model's operations may rename or remove bulk/ meanwhile: make it again.
                let _ = std::fs::create_dir_all(&dir);
                match std::fs::write(dir.join(name), format!("bulk write {written}\n")) {
                    Ok(()) => written += 1,
                    // The mount is gone (killed): stop.
                    Err(err) if err.raw_os_error() == Some(libc::ENOTCONN) => break,
                    Err(err) if err.raw_os_error() == Some(libc::ECONNABORTED) => break,
                    // bulk/ replaced by a file, or moved between two calls: skip this one.
                    Err(err)
                        if matches!(
                            err.raw_os_error(),
                            Some(libc::ENOENT | libc::ENOTDIR | libc::EISDIR)
                        ) =>
                    {
                        written += 1
                    }
                    Err(err) => {
                        error = Some(format!("bulk: {err}"));
                        break;
                    }
                }
                if written.is_multiple_of(20) {
                    sleep(Duration::from_millis(5));
                }
            }
            drop(bulk_root);
            (written, error)
        });
        Workload {
            stop,
            thread: Some(thread),
            bulk: Some(bulk),
        }
    }

    /// Stops it and answers how many operations it carried out, and the error that stopped it.
    fn finish(mut self) -> (u64, Option<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let (done, error) = self.thread.take().unwrap().join().unwrap();
        let (written, bulk_error) = self.bulk.take().unwrap().join().unwrap();
        (done + written, error.or(bulk_error))
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for thread in [self.thread.take(), self.bulk.take()].into_iter().flatten() {
            let _ = thread.join();
        }
    }
}

fn mount_in(dir: &Path, emulator: &Emulator, extra: &[&str]) -> Option<Mount> {
    let mut mount = Mount::prepare(dir, emulator, extra);
    mount.mount().then_some(mount)
}

/// kill -9 of the daemon at a random instant of a workload, round after round, on the same
/// backing folder and state; between rounds the backing folder is sometimes changed directly
/// (as if while unmounted), and sometimes the daemon is killed again while it catches up.
#[test]
fn the_daemon_killed_at_random_instants_loses_nothing() {
    let seed = seed("daemon kills");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut source = OpSource::new(seed);
    let rounds = env_count("MAXLOFS_CRASH_ROUNDS", 3);
    // Latency keeps calls on the wire when the kill comes; drops make answers go missing.
    let emulator = Emulator::start(&["--latency-ms", "20", "--drop-rate", "0.05"]);
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--settle-ms", "20", "--drain-timeout", "20"];
    let Some(mut mount) = mount_in(dir.path(), &emulator, &flags) else {
        return;
    };
    let tally = Tally::default();
    for round in 0..rounds {
        let workload = Workload::start(&mount.mnt, source.ops(80));
        sleep(Duration::from_millis(rng.gen_range(20..900)));
        mount.kill();
        let (done, _) = workload.finish();
        Tally::add(&tally.ops, done);
        Tally::add(&tally.rounds, 1);

        if rng.gen_bool(0.3) {
            // Changes made while nothing is mounted.
            let mut model = Model::scan(&mount.backing);
            for op in source.ops(6) {
                let _ = model.apply(&mount.backing, &op);
            }
        }
        assert!(mount.mount(), "round {round}: mounts again");
        if rng.gen_bool(0.3) {
            // Killed again while it catches up.
            sleep(Duration::from_millis(rng.gen_range(0..150)));
            mount.kill();
            Tally::add(&tally.rounds, 1);
            assert!(
                mount.mount(),
                "round {round}: mounts again after the second kill"
            );
        }
        mount.wait_synced();
        release_held_deletes(&mount);
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            tally.check_catalog(&emulator, &mount.backing)
        }))
        .unwrap_or_else(|err| {
            eprintln!(
                "round {round} (MAXLOFS_SEED={seed}), daemon log:\n{}",
                mount.log_text()
            );
            std::panic::resume_unwind(err)
        });
    }
    tally.faults_of(&emulator);
    Tally::add(&tally.cases, 1);
    tally.print("crash_daemon");
    assert!(mount.unmount().success());
}

/// Deletes made through the mount that a kill stopped before they were sent are found by the next
/// start-up's reconcile, which cannot tell them from files gone behind the mount's back: when
/// they are most of the indexed files, the mass-deletion guard holds them, and the user's answer
/// is `release-deletes`. The catalog check that follows shows every released delete was of a
/// file the tree no longer has.
fn release_held_deletes(mount: &Mount) {
    if mount.status()["held_deletes"].as_u64().unwrap_or(0) > 0 {
        run(std::process::Command::new(BIN)
            .arg("release-deletes")
            .arg(&mount.mnt));
        mount.wait_synced();
    }
}

/// The emulator is killed and started again on its database, twice, while a workload runs and
/// the daemon sends: the daemon retries and converges; no record is lost or doubled.
#[test]
fn the_service_killed_and_restarted_on_its_database_mid_workload_loses_nothing() {
    let seed = seed("service restarts");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut source = OpSource::new(seed);
    let db = tempfile::tempdir().unwrap();
    let db_path = db.path().join("emulator.db");
    let mut emulator = Emulator::start(&["--db", db_path.to_str().unwrap(), "--latency-ms", "10"]);
    let dir = tempfile::tempdir().unwrap();
    let Some(mount) = mount_in(dir.path(), &emulator, &["--settle-ms", "20"]) else {
        return;
    };
    let tally = Tally::default();
    let workload = Workload::start(&mount.mnt, source.ops(300));
    for _ in 0..2 {
        sleep(Duration::from_millis(rng.gen_range(50..600)));
        tally.faults_of(&emulator);
        emulator.restart();
        Tally::add(&tally.rounds, 1);
    }
    let (done, error) = workload.finish();
    Tally::add(&tally.ops, done);
    assert!(error.is_none(), "the mount refused an operation: {error:?}");
    // And once more while it catches up.
    tally.faults_of(&emulator);
    emulator.restart();
    Tally::add(&tally.rounds, 1);
    mount.wait_synced();
    tally.check_catalog(&emulator, &mount.backing);
    Tally::add(&tally.cases, 1);
    tally.print("crash_service");
}

fn maxlo_hash(path: &Path) -> String {
    maxlofs_api::hash::hash_file(path).unwrap().to_hex()
}

/// Two mounts of one grant over two backing folders (two devices, two keys) write the same
/// paths at once: both stay up, 409s are handled, each record ends as one writer's final
/// content, and a later write from either side wins.
#[test]
fn two_devices_writing_the_same_paths_converge_and_the_later_write_wins() {
    let emulator = Emulator::start(&["--device-key", "k1", "--device-key", "k2"]);
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut mounts = Vec::new();
    for (dir, key) in dirs.iter().zip(["k1", "k2"]) {
        let mut mount = Mount::prepare(dir.path(), &emulator, &["--settle-ms", "20"]);
        std::fs::write(&mount.key_file, key).unwrap();
        if !mount.mount() {
            return;
        }
        mounts.push(mount);
    }
    let paths: Vec<String> = (0..12)
        .map(|i| {
            if i % 3 == 0 {
                format!("shared/{i}.jpg")
            } else {
                format!("{i}.jpg")
            }
        })
        .collect();
    std::thread::scope(|scope| {
        for (side, mount) in mounts.iter().enumerate() {
            let paths = &paths;
            scope.spawn(move || {
                std::fs::create_dir_all(mount.path("shared")).unwrap();
                for round in 0..5 {
                    for path in paths {
                        let content =
                            format!("device {side} round {round} {path}\n").repeat(side + 1);
                        std::fs::write(mount.path(path), content).unwrap();
                    }
                    sleep(Duration::from_millis(30));
                }
            });
        }
    });
    for mount in &mounts {
        mount.wait_synced();
    }
    for mount in &mut mounts {
        assert!(mount.is_alive(), "{}", mount.log_text());
    }
    let live = live_catalog(&emulator);
    assert_eq!(live.len(), paths.len(), "{live:#?}");
    for path in &paths {
        let (hash, size, _) = &live[path];
        let sides: Vec<String> = mounts
            .iter()
            .map(|m| maxlo_hash(&m.backing.join(path)))
            .collect();
        assert!(
            sides.contains(hash),
            "{path}: the record ({hash}, {size}) is neither side's content {sides:?}"
        );
    }
    common::service::assert_unique_paths(&emulator);
    let conflicts = emulator.stats()["calls"]["create"]["409"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        conflicts > 0,
        "no create met the other device's record: {}",
        emulator.stats()
    );

    // A later write from either side wins, whatever the other side's index believes.
    for (side, winner) in mounts.iter().enumerate() {
        for path in &paths {
            std::fs::write(winner.path(path), format!("final from {side}: {path}")).unwrap();
        }
        winner.wait_synced();
        let live = live_catalog(&emulator);
        for path in &paths {
            let want = maxlo_hash(&winner.backing.join(path));
            assert_eq!(live[path].0, want, "{path} after device {side} wrote last");
        }
    }
    for mount in &mut mounts {
        assert!(mount.is_alive(), "{}", mount.log_text());
        assert!(mount.unmount().success());
    }
}

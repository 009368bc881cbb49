//! One model-based case: a sequence of operations through a real mount against an emulator,
//! then every check that says nothing was lost (tests/prove_model.rs, tests/regressions.rs).

use std::collections::BTreeSet;

use super::model::{Model, Op};
use super::service::{Emulator, Mount};
use super::soak::Tally;

/// Emulator arguments for the fault runs.
pub const FAULTS: &[&str] = &[
    "--fail-rate",
    "0.3",
    "--drop-rate",
    "0.1",
    "--latency-ms",
    "50",
];

/// Whether FUSE mounts work here; `false` (after saying so) when not and not required.
pub fn fuse_available() -> bool {
    let emulator = Emulator::start(&[]);
    Mount::start(&emulator, &[]).is_some()
}

fn sent_calls(emulator: &Emulator) -> u64 {
    ["create", "update", "delete"]
        .iter()
        .map(|call| emulator.calls(call))
        .sum()
}

/// Runs `ops` in a fresh mount (settle window `settle_ms`) against a fresh emulator started with
/// `emulator_args`, and asserts:
/// - the tree through the mount is the model's (names, kinds, content, set mtimes, hard links);
/// - once synced, the live catalog is exactly what the tree implies, no path has two records,
///   nothing failed or is paused, and no record exists for a path that was never a file;
/// - after unmount and mount again, reconcile finds nothing to send and the catalog still holds.
pub fn run_case(emulator_args: &[&str], settle_ms: u64, ops: &[Op], tally: &Tally) {
    let emulator = Emulator::start(emulator_args);
    let settle = settle_ms.to_string();
    let mut mount = Mount::start(
        &emulator,
        &["--settle-ms", &settle, "--drain-timeout", "20"],
    )
    .expect("FUSE is available (checked before)");
    // Under faults a path backs off up to 3 s and the service's pacer up to 7.5 s: a generous deadline.
    let wait = if emulator_args.is_empty() { 60 } else { 300 };
    let mut model = Model::default();
    for op in ops {
        match op {
            Op::Remount => {
                model.release_all();
                model.log.push("unmount, mount".into());
                let exit = mount.unmount();
                assert!(exit.success(), "daemon exit {exit}\n{}", mount.log_text());
                assert!(mount.mount());
                continue;
            }
            Op::Kill => {
                model.release_all();
                model.log.push("kill -9, mount".into());
                mount.kill();
                Tally::add(&tally.rounds, 1);
                assert!(mount.mount());
                continue;
            }
            _ => {}
        }
        if let Err(err) = model.apply(&mount.mnt, op) {
            panic!(
                "the mount refused a valid operation: {err}\noperations:\n{}",
                model.log.join("\n")
            );
        }
    }
    Tally::add(&tally.ops, ops.len() as u64);
    model.release_all();
    model.assert_tree(&mount.mnt, &mount.backing);
    mount.wait_synced_within(wait);
    let log = mount.log.clone();
    let context = || {
        format!(
            "operations:\n{}\nlog:\n{}",
            model.log.join("\n"),
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    };
    let status = mount.status();
    assert_eq!(status["failed_count"], 0, "{status}\n{}", context());
    assert!(status["paused"].is_null(), "{status}");
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        tally.check_catalog(&emulator, &mount.backing)
    }))
    .unwrap_or_else(|err| {
        eprintln!("{}", context());
        std::panic::resume_unwind(err)
    });

    let may_exist: BTreeSet<String> = model
        .ever
        .iter()
        .map(|p| p.to_str().unwrap().to_string())
        .collect();
    for record in emulator.records() {
        let path = record["media_path"].as_str().unwrap();
        assert!(
            may_exist.contains(path),
            "a record for {path:?}, which was never a file: {record}\n{}",
            context()
        );
    }

    let sent = sent_calls(&emulator);
    let exit = mount.unmount();
    assert!(exit.success(), "daemon exit {exit}\n{}", context());
    assert!(mount.mount(), "mounts again");
    mount.wait_synced_within(wait);
    assert_eq!(
        sent_calls(&emulator),
        sent,
        "a mount over an unchanged, synced tree sent calls\n{}",
        context()
    );
    tally.check_catalog(&emulator, &mount.backing);
    let exit = mount.unmount();
    assert!(exit.success(), "daemon exit {exit}\n{}", context());
    tally.faults_of(&emulator);
    Tally::add(&tally.cases, 1);
}

/// Two sequences at once, from two threads, in two subtrees (`A/` and `B/`) of one mount, each
/// checked against its own model; then the catalog as in `run_case`. Remount and kill are
/// skipped here.
pub fn run_concurrent_case(emulator_args: &[&str], settle_ms: u64, ops: [&[Op]; 2], tally: &Tally) {
    let emulator = Emulator::start(emulator_args);
    let settle = settle_ms.to_string();
    let mut mount = Mount::start(&emulator, &["--settle-ms", &settle])
        .expect("FUSE is available (checked before)");
    let roots = ["A", "B"];
    let models: Vec<Model> = std::thread::scope(|scope| {
        let workers: Vec<_> = roots
            .iter()
            .zip(ops)
            .map(|(root, ops)| {
                let root = mount.mnt.join(root);
                std::fs::create_dir(&root).unwrap();
                scope.spawn(move || {
                    let mut model = Model::default();
                    for op in ops {
                        if let Err(err) = model.apply(&root, op) {
                            panic!(
                                "the mount refused a valid operation in {root:?}: {err}\n{}",
                                model.log.join("\n")
                            );
                        }
                    }
                    model.release_all();
                    model
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    Tally::add(&tally.ops, (ops[0].len() + ops[1].len()) as u64);
    for (root, model) in roots.iter().zip(&models) {
        model.assert_tree(&mount.mnt.join(root), &mount.backing.join(root));
    }
    mount.wait_synced();
    let context = || {
        roots
            .iter()
            .zip(&models)
            .map(|(root, model)| format!("in {root}:\n{}", model.log.join("\n")))
            .collect::<Vec<_>>()
            .join("\n")
    };
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        tally.check_catalog(&emulator, &mount.backing)
    }))
    .unwrap_or_else(|err| {
        eprintln!("{}", context());
        std::panic::resume_unwind(err)
    });
    let may_exist: BTreeSet<String> = roots
        .iter()
        .zip(&models)
        .flat_map(|(root, model)| {
            model
                .ever
                .iter()
                .map(move |p| format!("{root}/{}", p.to_str().unwrap()))
        })
        .collect();
    for record in emulator.records() {
        let path = record["media_path"].as_str().unwrap();
        assert!(
            may_exist.contains(path),
            "a record for {path:?}, which was never a file\n{}",
            context()
        );
    }
    assert!(mount.unmount().success());
    tally.faults_of(&emulator);
    Tally::add(&tally.cases, 1);
}

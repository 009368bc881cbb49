//! Model-based property tests through a real mount: random sequences of file and directory
//! operations (create, write, append, truncate, utime, rename over files and directories,
//! exchange, unlink, link, mkdir, rmdir, rm -r, editor safe-saves, pauses), after which the tree
//! must equal an in-memory model and the emulator's catalog must equal what the tree implies.
//! Failures shrink to a minimal sequence; keep those in tests/regressions.rs.
//!
//! `PROPTEST_CASES` sets the number of cases (default 12); `MAXLOFS_FAULT_CASES` and
//! `MAXLOFS_CONCURRENT_CASES` those of the fault and two-thread runs (default a third of that,
//! at least 3).

mod common;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use common::model;
use common::reftest::{fuse_available, run_case, run_concurrent_case, FAULTS};
use common::soak::{env_count, Tally};

fn cases() -> u32 {
    env_count("PROPTEST_CASES", 12) as u32
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        // Each case mounts; shrinking a failure still gets far in a few minutes.
        max_shrink_iters: 300,
        failure_persistence: None,
        ..Config::default()
    })
}

fn settle() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), Just(20), Just(50)]
}

fn run(name: &str, emulator_args: &[&str], cases: u32, max_ops: usize) {
    if !fuse_available() {
        return;
    }
    let tally = Tally::default();
    let result = runner(cases).run(&(settle(), model::ops(max_ops)), |(settle_ms, ops)| {
        run_case(emulator_args, settle_ms, &ops, &tally);
        Ok(())
    });
    tally.print(name);
    if let Err(err) = result {
        panic!("{err}");
    }
}

#[test]
fn random_operations_leave_the_tree_and_catalog_as_the_model_says() {
    run("model", &[], cases(), 40);
}

#[test]
fn random_operations_converge_under_faults_with_nothing_lost_or_duplicated() {
    let cases = env_count("MAXLOFS_FAULT_CASES", u64::from((cases() / 3).max(3))) as u32;
    run("model_faults", FAULTS, cases, 25);
}

/// Two threads at once in two subtrees of one mount: events from both interleave in the engine.
#[test]
fn concurrent_operations_in_two_subtrees_leave_both_as_their_models_say() {
    if !fuse_available() {
        return;
    }
    let cases = env_count("MAXLOFS_CONCURRENT_CASES", u64::from((cases() / 3).max(3))) as u32;
    let tally = Tally::default();
    let result = runner(cases).run(
        &(settle(), model::ops(30), model::ops(30)),
        |(settle_ms, a, b)| {
            run_concurrent_case(&[], settle_ms, [&a, &b], &tally);
            Ok(())
        },
    );
    tally.print("model_concurrent");
    if let Err(err) = result {
        panic!("{err}");
    }
}

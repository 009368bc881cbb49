//! Machine-readable tallies: each long-running test prints one `SOAK ...` line that
//! `scripts/soak.sh` collects (run with `--nocapture`).

use std::sync::atomic::{AtomicU64, Ordering};

use std::path::Path;

use super::service::{check_catalog_then, CatalogDiff, Emulator};

#[derive(Default)]
pub struct Tally {
    pub cases: AtomicU64,
    pub ops: AtomicU64,
    pub rounds: AtomicU64,
    pub records_checked: AtomicU64,
    pub lost: AtomicU64,
    pub faults_503: AtomicU64,
    pub faults_dropped: AtomicU64,
}

impl Tally {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn checked(&self, diff: &CatalogDiff) {
        Tally::add(&self.records_checked, diff.checked as u64);
        Tally::add(&self.lost, diff.lost() as u64);
    }

    /// `service::check_catalog`, counted here whether it passes or not.
    pub fn check_catalog(&self, emulator: &Emulator, backing: &Path) -> CatalogDiff {
        check_catalog_then(emulator, backing, |diff| self.checked(diff))
    }

    /// Adds the faults the emulator injected so far (call once per emulator, at its end).
    pub fn faults_of(&self, emulator: &Emulator) {
        let (failed, dropped) = emulator.faults();
        Tally::add(&self.faults_503, failed);
        Tally::add(&self.faults_dropped, dropped);
    }

    pub fn print(&self, test: &str) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        println!(
            "SOAK test={test} cases={} ops={} crash_rounds={} records_checked={} lost={} \
             faults_503={} faults_dropped={}",
            get(&self.cases),
            get(&self.ops),
            get(&self.rounds),
            get(&self.records_checked),
            get(&self.lost),
            get(&self.faults_503),
            get(&self.faults_dropped),
        );
    }
}

/// A count from the environment (e.g. `MAXLOFS_CRASH_ROUNDS`), or `default`.
pub fn env_count(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

//! `maxlofs emulator`: a local, persistent, faithful Maxlo device API.
//!
//! `store` holds the service's rules (shared with `api::memory::MemoryApi`), `server` its HTTP
//! face with fault injection, `stats` the call counts. See docs/emulator.md.

mod request;
mod server;
pub mod stats;
pub mod store;

use crate::cli::EmulatorArgs;
use anyhow::Context;
use std::sync::{Mutex, MutexGuard, PoisonError};
use store::{Store, StoreConfig};

pub fn run(args: &EmulatorArgs) -> anyhow::Result<()> {
    let faults = server::Faults::from_args(args)?;
    let config = StoreConfig::from(args);
    let store = match &args.db {
        Some(path) => Store::open(path, config)
            .with_context(|| format!("cannot open the database {}", path.display()))?,
        None => Store::in_memory(config)?,
    };
    tokio::runtime::Runtime::new()?.block_on(server::serve(&args.listen, store, faults))
}

/// A lock whose holder panicked is still usable: every critical section here leaves consistent
/// data (SQLite rolls back an unfinished transaction).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

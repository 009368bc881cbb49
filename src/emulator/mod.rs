//! `maxlofs emulator`: a local, persistent, faithful Maxlo device API.
//!
//! `store` holds the service's rules (shared with `api::memory::MemoryApi`), `server` its HTTP
//! face with fault injection, `stats` the call counts; `objects` holds the uploaded content and
//! signs its URLs, `content` is the HTTP face of the content calls. See docs/emulator.md.

mod content;
pub mod objects;
mod request;
mod server;
pub mod stats;
pub mod store;

use crate::cli::EmulatorArgs;
use anyhow::Context;
use objects::{ObjectStore, ObjectsConfig};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use store::{Store, StoreConfig};

pub fn run(args: &EmulatorArgs) -> anyhow::Result<()> {
    let faults = server::Faults::from_args(args)?;
    let config = StoreConfig::from(args);
    let store = match &args.db {
        Some(path) => Store::open(path, config)
            .with_context(|| format!("cannot open the database {}", path.display()))?,
        None => Store::in_memory(config)?,
    };
    let objects_config = ObjectsConfig {
        dir: args
            .objects
            .clone()
            .or_else(|| args.db.as_deref().map(objects_next_to)),
        url_ttl: Duration::from_secs(args.url_ttl_secs),
        upload_disabled: args.upload_disabled,
        no_active_file: args.multipart_no_active_file,
    };
    let objects = ObjectStore::open(objects_config).context("cannot open the object store")?;
    tracing::info!(folder = %objects.root().display(), "object store");
    tokio::runtime::Runtime::new()?.block_on(server::serve(&args.listen, store, objects, faults))
}

/// `<db>.objects`: the objects of a database live and persist next to it.
fn objects_next_to(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".objects");
    PathBuf::from(name)
}

/// A lock whose holder panicked is still usable: every critical section here leaves consistent
/// data (SQLite rolls back an unfinished transaction).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

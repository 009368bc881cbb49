//! Keeps the catalog in step with the backing tree: events become marks on a settle-window queue,
//! workers compare each marked path with the index and send what differs, and a reconcile pass at
//! start catches up everything that happened while the engine was not looking.

pub mod engine;
mod hasher;
pub mod ignore;
pub mod index;
pub mod local;
pub mod queue;
#[cfg(test)]
mod tests;

pub use engine::{Engine, SyncConfig};

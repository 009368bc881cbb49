//! Keeps the catalog in step with the backing tree: events become marks on a settle-window queue,
//! workers compare each marked path with the index and send what differs, and a reconcile pass at
//! start catches up everything that happened while the engine was not looking.

#![deny(clippy::undocumented_unsafe_blocks)]

mod decide;
pub mod engine;
mod execute;
mod failure;
mod hash_cache;
mod hasher;
pub mod heal;
pub mod ignore;
pub mod index;
pub mod local;
pub mod progress;
pub mod queue;
mod reconcile;
pub mod report;
pub mod restore;
pub mod scrub;
#[cfg(test)]
mod tests;
pub mod upload;
pub mod verify;

pub use engine::{Engine, SyncConfig};
pub use heal::{HealConfig, HealRequest};
pub use upload::UploadConfig;

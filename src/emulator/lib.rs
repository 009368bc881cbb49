//! A local, persistent, faithful Maxlo device API (`maxlofs emulator` runs it).
//!
//! `store` holds the service's rules (shared with `memory::MemoryApi`, the in-process double for tests), `server` its HTTP
//! face with fault injection, `stats` the call counts; `objects` holds the uploaded content and
//! signs its URLs, `content` is the HTTP face of the content calls. See docs/emulator.md.

#![deny(clippy::undocumented_unsafe_blocks)]

mod app;
mod content;
#[cfg(any(test, feature = "memory-api"))]
pub mod memory;
pub mod objects;
mod request;
pub mod server;
pub mod stats;
pub mod store;

pub use app::Faults;

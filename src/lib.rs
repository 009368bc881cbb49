//! maxlofs: a FUSE passthrough filesystem that keeps a Maxlo media catalog in step.

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod api;
pub mod cli;
pub mod config;
pub mod contract;
pub mod daemon;
pub mod daemonize;
pub mod emulator;
pub mod fs;
pub mod grants;
pub mod hash;
pub mod log_limit;
pub mod mutex;
pub mod output;
pub mod progress;
pub mod status;
pub mod sync;
pub mod verify;
pub mod wake;

//! The `maxlofs` binary's layer: its command line, configuration, the daemon that mounts and
//! syncs, and the commands and their output. The layers below are crates of their own
//! (docs/design.md, "Crates"): `maxlofs_api`, `maxlofs_fs`, `maxlofs_sync` and `maxlofs_emulator`.

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod args;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod daemonize;
pub mod emulator_command;
pub mod grants;
pub mod hash;
pub mod heal;
pub mod keys;
pub mod offline;
pub mod output;
pub mod status;
pub mod verify;

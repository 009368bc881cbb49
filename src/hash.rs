//! The Maxlo file hash (NOTES.md, "File hashing").

use std::path::PathBuf;

pub fn run_cli(_files: &[PathBuf]) -> i32 {
    eprintln!("hash: not built yet");
    2
}

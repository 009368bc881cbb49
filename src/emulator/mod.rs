//! `maxlofs emulator`: a local, persistent, faithful Maxlo device API.

use crate::cli::EmulatorArgs;

pub fn run(_args: &EmulatorArgs) -> anyhow::Result<()> {
    anyhow::bail!("emulator: not built yet")
}

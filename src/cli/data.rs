//! `tunelab data ...` (owned by the data work).
use crate::device::DeviceChoice;

#[derive(clap::Subcommand, Debug)]
pub enum DataCommand {
    /// Print statistics and the governance audit for a dataset file or folder.
    Inspect { path: std::path::PathBuf },
}

pub fn run(cmd: DataCommand, _device: DeviceChoice) -> anyhow::Result<()> {
    anyhow::bail!("`tunelab data` is not implemented yet: {cmd:?}")
}

//! `tunelab report ...` (owned by the report work).
use crate::device::DeviceChoice;
#[derive(clap::Subcommand, Debug)]
pub enum ReportCommand {
    /// Re-run an evaluation from its manifest and say whether the numbers match.
    Rerun { manifest: std::path::PathBuf },
}
pub fn run(_c: ReportCommand, _d: DeviceChoice) -> anyhow::Result<()> { anyhow::bail!("`tunelab report` is not implemented yet") }

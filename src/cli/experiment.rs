//! `tunelab experiment`: the main job.
use crate::device::DeviceChoice;
#[derive(clap::Args, Debug)]
pub struct ExperimentArgs {}
pub fn run(_a: ExperimentArgs, _d: DeviceChoice) -> anyhow::Result<()> { anyhow::bail!("`tunelab experiment` is not implemented yet") }

//! `tunelab embed` and `tunelab train embed` (owned by the encoder work).
use crate::device::DeviceChoice;
#[derive(clap::Args, Debug)]
pub struct EmbedArgs {}
#[derive(clap::Args, Debug)]
pub struct TrainEmbedArgs {}
pub fn run_embed(_a: EmbedArgs, _d: DeviceChoice) -> anyhow::Result<()> { anyhow::bail!("`tunelab embed` is not implemented yet") }
pub fn run_train(_a: TrainEmbedArgs, _d: DeviceChoice) -> anyhow::Result<()> { anyhow::bail!("`tunelab train embed` is not implemented yet") }

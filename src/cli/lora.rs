//! `tunelab train lora`, `generate`, `export`, `fuse` (owned by the decoder work).
use crate::device::DeviceChoice;
#[derive(clap::Args, Debug)]
pub struct TrainLoraArgs {}
#[derive(clap::Args, Debug)]
pub struct GenerateArgs {}
#[derive(clap::Args, Debug)]
pub struct ExportArgs {}
#[derive(clap::Args, Debug)]
pub struct FuseArgs {}
pub fn run_train(_a: TrainLoraArgs, _d: DeviceChoice) -> anyhow::Result<()> { anyhow::bail!("`tunelab train lora` is not implemented yet") }
pub fn run_generate(_a: GenerateArgs, _d: DeviceChoice) -> anyhow::Result<()> { anyhow::bail!("`tunelab generate` is not implemented yet") }
pub fn run_export(_a: ExportArgs, _d: DeviceChoice) -> anyhow::Result<()> { anyhow::bail!("`tunelab export` is not implemented yet") }
pub fn run_fuse(_a: FuseArgs, _d: DeviceChoice) -> anyhow::Result<()> { anyhow::bail!("`tunelab fuse` is not implemented yet") }

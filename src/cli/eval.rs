//! `tunelab eval` and `tunelab compare` (owned by the evaluation work).
#[derive(clap::Args, Debug)]
pub struct EvalArgs {}
#[derive(clap::Args, Debug)]
pub struct CompareArgs {}
pub fn run_eval(_a: EvalArgs) -> anyhow::Result<()> { anyhow::bail!("`tunelab eval` is not implemented yet") }
pub fn run_compare(_a: CompareArgs) -> anyhow::Result<()> { anyhow::bail!("`tunelab compare` is not implemented yet") }

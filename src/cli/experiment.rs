//! `tunelab experiment`: the main job (see [`crate::experiment`]).
use std::path::PathBuf;

use crate::device::DeviceChoice;
use crate::experiment::{self, ExperimentConfig};

#[derive(clap::Args, Debug)]
pub struct ExperimentArgs {
    /// TOML configuration (every field optional; `--print-config` shows them all).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Print the default configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Seed for training, sampling and the significance tests.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Training epochs.
    #[arg(value_parser = crate::cli::values::positive_usize, long)]
    pub epochs: Option<usize>,
    /// Stop training after this many optimizer steps.
    #[arg(value_parser = crate::cli::values::positive_usize, long)]
    pub max_steps: Option<usize>,
    /// Compare BM25 with the base dense model, without fine-tuning.
    #[arg(long)]
    pub skip_training: bool,
    /// Experiment name (the report folder under reports/).
    #[arg(long)]
    pub name: Option<String>,
    /// Where run folders go.
    #[arg(long)]
    pub reports: Option<PathBuf>,
    /// Evaluate QMD's whole search pipeline stage by stage with base and tuned models instead
    /// (`--config` then reads a pipeline configuration; `--print-config` prints its defaults).
    #[arg(long)]
    pub pipeline: bool,
    /// Pipeline experiment: the base embedder folder.
    #[arg(long, requires = "pipeline")]
    pub base_embedder: Option<PathBuf>,
    /// Pipeline experiment: a tuned embedder folder (e.g. a main-experiment run's `model/`).
    #[arg(long, requires = "pipeline")]
    pub tuned_embedder: Option<PathBuf>,
    /// Pipeline experiment: the base expansion model's expansions (JSONL, `tunelab eval expansions`).
    #[arg(long, requires = "pipeline")]
    pub base_expansions: Option<PathBuf>,
    /// Pipeline experiment: the tuned expansion model's expansions.
    #[arg(long, requires = "pipeline")]
    pub tuned_expansions: Option<PathBuf>,
    /// Pipeline experiment: the base yes/no LLM reranker (`.gguf` or Hugging Face folder); adds
    /// the `full` stage.
    #[arg(long, requires = "pipeline")]
    pub base_reranker: Option<PathBuf>,
    /// Pipeline experiment: a LoRA adapter on the base reranker (`tunelab train rerank`'s).
    #[arg(long, requires = "pipeline")]
    pub tuned_reranker_adapter: Option<PathBuf>,
    /// Pipeline experiment: the base reranker's scores, a TREC run of P(yes) written by
    /// `tunelab rerank --run <this experiment's run>/runs/base/hybrid+expansion.run --depth 40`
    /// (e.g. on a GPU), instead of `--base-reranker`.
    #[arg(long, requires = "pipeline", conflicts_with = "base_reranker")]
    pub base_rerank_run: Option<PathBuf>,
    /// Pipeline experiment: the tuned reranker's scores of the same candidates.
    #[arg(long, requires = "pipeline", conflicts_with = "tuned_reranker_adapter")]
    pub tuned_rerank_run: Option<PathBuf>,
    /// Pipeline experiment: the tuned reranker's `calibration.json` (`tunelab train rerank`
    /// writes it in the adapter folder): Brier, ECE and reliability, base vs tuned, in the report.
    #[arg(long, requires = "pipeline")]
    pub rerank_calibration: Option<PathBuf>,
}

fn run_pipeline(a: ExperimentArgs, device: DeviceChoice) -> anyhow::Result<()> {
    use crate::experiment::pipeline::{PipelineExperimentConfig, load_config};
    if a.print_config {
        print!(
            "{}",
            toml::to_string_pretty(&PipelineExperimentConfig::default())?
        );
        return Ok(());
    }
    let mut cfg = match &a.config {
        Some(p) => load_config(p)?,
        None => PipelineExperimentConfig::default(),
    };
    if let Some(s) = a.seed {
        cfg.seed = s;
    }
    if let Some(n) = a.name {
        cfg.name = n;
    }
    if let Some(r) = a.reports {
        cfg.reports = r;
    }
    if let Some(m) = a.base_embedder {
        cfg.base_embedder = m;
    }
    cfg.tuned_embedder = a.tuned_embedder.or(cfg.tuned_embedder);
    cfg.base_expansions = a.base_expansions.or(cfg.base_expansions);
    cfg.tuned_expansions = a.tuned_expansions.or(cfg.tuned_expansions);
    cfg.base_reranker = a.base_reranker.or(cfg.base_reranker);
    cfg.tuned_reranker_adapter = a.tuned_reranker_adapter.or(cfg.tuned_reranker_adapter);
    cfg.base_rerank_run = a.base_rerank_run.or(cfg.base_rerank_run);
    cfg.tuned_rerank_run = a.tuned_rerank_run.or(cfg.tuned_rerank_run);
    cfg.rerank_calibration = a.rerank_calibration.or(cfg.rerank_calibration);
    crate::experiment::pipeline::run(&cfg, device, None)?;
    Ok(())
}

pub fn run(a: ExperimentArgs, device: DeviceChoice) -> anyhow::Result<()> {
    if a.pipeline {
        return run_pipeline(a, device);
    }
    if a.print_config {
        print!("{}", experiment::default_config_toml());
        return Ok(());
    }
    let mut cfg = match &a.config {
        Some(p) => experiment::load_config(p)?,
        None => ExperimentConfig::default(),
    };
    if let Some(s) = a.seed {
        cfg.seed = s;
        cfg.train.seed = s;
    }
    if let Some(e) = a.epochs {
        cfg.train.epochs = e;
    }
    if a.max_steps.is_some() {
        cfg.train.max_steps = a.max_steps;
    }
    cfg.skip_training |= a.skip_training;
    if let Some(n) = a.name {
        cfg.name = n;
    }
    if let Some(r) = a.reports {
        cfg.reports = r;
    }
    experiment::run(&cfg, device)?;
    Ok(())
}

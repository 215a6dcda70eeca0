//! The `tunelab` command line. Each area's arguments and handler live in its own file.
use clap::{Parser, Subcommand};

use crate::device::DeviceChoice;

pub mod bench;
pub mod data;
pub mod doctor;
pub mod embed;
pub mod eval;
pub mod experiment;
pub mod expansion;
pub mod export;
pub mod gate;
pub mod lora;
pub mod report;
pub mod rerank;
pub mod search;
pub mod values;

/// Fine-tune and evaluate retrieval models locally.
#[derive(Parser, Debug)]
#[command(name = "tunelab", version, about)]
pub struct Cli {
    /// Backend to run on: cpu, vulkan, metal or wgpu.
    #[arg(long, global = true, env = "TUNELAB_DEVICE", default_value = "cpu")]
    pub device: DeviceChoice,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Show the backends this build has, whether they start, their dtypes and memory.
    Doctor(doctor::DoctorArgs),
    /// Inspect and split datasets (governance applied).
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Evaluate a TREC run against qrels, printing trec_eval's format; `eval expansions` scores query expansions.
    Eval(eval::EvalArgs),
    /// A/B-compare two runs with paired significance tests.
    Compare(eval::CompareArgs),
    /// Work with run reports.
    #[command(subcommand)]
    Report(report::ReportCommand),
    /// Search a corpus through a whole search pipeline (QMD's: BM25, vectors, expansions, RRF, rerank).
    Search(search::SearchArgs),
    /// Embed texts with an encoder model.
    Embed(embed::EmbedArgs),
    /// Train a model.
    #[command(subcommand)]
    Train(TrainCommand),
    /// Generate text with a decoder (and optional adapter).
    Generate(lora::GenerateArgs),
    /// Rescore the top documents of a TREC run with a yes/no LLM reranker (scores = P(yes)).
    Rerank(rerank::RerankArgs),
    /// Export adapters or models to other tools' formats.
    #[command(subcommand)]
    Export(export::ExportCommand),
    /// Fuse an adapter into its base model.
    Fuse(lora::FuseArgs),
    /// Run the end-to-end experiment on the bundled data and models.
    Experiment(experiment::ExperimentArgs),
    /// Decide whether a candidate run may replace the current one (exit 0 pass, 2 refused).
    Gate(gate::GateArgs),
    /// Add a run or model directory to a model store as the next version and make it current.
    Promote(gate::PromoteArgs),
    /// Point a model store back at the previous version.
    Rollback(gate::RollbackArgs),
    /// Measure training throughput on this machine (JSON lines, beside bench/torch_anchor.py's).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Summarise a notebook batch (scripts/run-notebooks): configurations ranked with CIs and p-values.
    BatchSummary(gate::BatchSummaryArgs),
}

#[derive(Subcommand, Debug)]
pub enum TrainCommand {
    /// Contrastive fine-tuning of an embedding model.
    Embed(embed::TrainEmbedArgs),
    /// LoRA fine-tuning of a decoder.
    Lora(lora::TrainLoraArgs),
    /// LoRA fine-tuning of a decoder as a yes/no reranker (pointwise or listwise loss).
    Rerank(rerank::TrainRerankArgs),
}

/// Parse arguments and run the command.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let device = cli.device;
    match cli.command {
        Command::Doctor(a) => doctor::run(a, device),
        Command::Data(c) => data::run(c, device),
        Command::Eval(a) => eval::run_eval(a, device),
        Command::Compare(a) => eval::run_compare(a),
        Command::Report(c) => report::run(c, device),
        Command::Search(a) => search::run(a, device),
        Command::Embed(a) => embed::run_embed(a, device),
        Command::Train(TrainCommand::Embed(a)) => embed::run_train(a, device),
        Command::Train(TrainCommand::Lora(a)) => lora::run_train(a, device),
        Command::Train(TrainCommand::Rerank(a)) => rerank::run_train(a, device),
        Command::Generate(a) => lora::run_generate(a, device),
        Command::Rerank(a) => rerank::run_rerank(a, device),
        Command::Export(c) => export::run(c, device),
        Command::Fuse(a) => lora::run_fuse(a, device),
        Command::Experiment(a) => experiment::run(a, device),
        Command::Gate(a) => gate::run_gate(a),
        Command::Promote(a) => gate::run_promote(a),
        Command::Rollback(a) => gate::run_rollback(a),
        Command::BatchSummary(a) => gate::run_batch_summary(a),
        Command::Bench(c) => bench::run(c, device),
    }
}

//! # tunelab
//!
//! Fine-tune and evaluate retrieval models locally: embedding encoders, query-expansion and
//! reranker decoders, persona adapters. The modules follow the pipeline:
//!
//! `data → model → lora → train → eval → report → export`
//!
//! * [`data`]: dataset readers/writers (polars frames), governance, splits, statistics.
//! * [`io`]: weight and tokenizer loading (safetensors, GGUF, Hugging Face folders).
//! * [`model`]: architectures, one file each (`bert`, `decoder`).
//! * [`lora`]: LoRA layers, merge/unmerge.
//! * [`train`]: training loops (contrastive, SFT), optimiser schedules, checkpoints.
//! * [`eval`]: trec_eval-exact metrics, search engines (dense, BM25, hybrid), A/B statistics.
//! * [`report`]: run directories, manifests, plots, `report.md`/`report.html`.
//! * [`export`]: PEFT, MLX-LM, GGUF and sentence-transformers artifacts.
//! * [`device`]: run-time backend selection (`cpu`, `vulkan`, `metal`, `wgpu`).
//! * [`gate`]: the validation gate for retraining, versioned model stores (promote/rollback).
//! * [`notebook`]: rich display in evcxr notebooks (tables, plots, progress).
//!
//! The modules that need burn (`model`, `lora`, `train`, `export`, `device`, `experiment`, `cli`,
//! dense search, tensor loading) are behind the `models` feature (on by default, implied by every
//! backend feature); without it the data, evaluation, report and gate modules build alone.

#[cfg(feature = "models")]
pub mod cli;
pub mod data;
#[cfg(feature = "models")]
pub mod device;
pub mod eval;
#[cfg(feature = "models")]
pub mod experiment;
#[cfg(feature = "models")]
pub mod export;
pub mod gate;
pub mod io;
#[cfg(feature = "models")]
pub mod lora;
#[cfg(feature = "models")]
pub mod model;
pub mod notebook;
pub mod report;
#[cfg(feature = "models")]
pub mod train;

/// The crate version, recorded in every run manifest.
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

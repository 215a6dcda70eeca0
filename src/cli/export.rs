//! `tunelab export …`: models and adapters in other tools' formats, one subcommand per format.
//!
//! `tunelab export gguf --model ST_DIR --out FILE.gguf --type f16` writes a BERT sentence encoder
//! (or EmbeddingGemma) as a GGUF that llama.cpp runs (`llama-embedding -m FILE.gguf`); see
//! [`crate::export::gguf_bert`] and [`crate::export::gguf_gemma`].
//! `tunelab export gguf-lora --adapter ADAPTER_DIR --base BASE.gguf --out FILE.gguf` writes a decoder
//! LoRA adapter that llama.cpp applies with `--lora`; see [`crate::export::gguf_lora`].
use std::path::PathBuf;

use anyhow::Context;

use crate::device::DeviceChoice;
use crate::export::gguf_bert::{GgufExportSummary, GgufOutType, write_bert_gguf};
use crate::export::gguf_lora::{LoraBase, write_lora_gguf};
use crate::io::gguf::GgufFile;
use crate::model::bert::SentenceEncoder;

#[derive(clap::Subcommand, Debug)]
pub enum ExportCommand {
    /// A sentence encoder (BERT family or EmbeddingGemma) as a llama.cpp GGUF.
    Gguf(GgufArgs),
    /// A decoder LoRA adapter (PEFT or MLX-LM folder) as a llama.cpp GGUF adapter for a GGUF base model.
    GgufLora(GgufLoraArgs),
    /// A decoder LoRA adapter folder (MLX-LM or PEFT) rewritten in the other format.
    Adapter(crate::cli::lora::ExportArgs),
}

#[derive(clap::Args, Debug)]
pub struct GgufArgs {
    /// The encoder: a sentence-transformers / Hugging Face folder of a BERT-family encoder or of
    /// EmbeddingGemma (e.g. a `tunelab train embed` output), or an EmbeddingGemma GGUF.
    #[arg(long)]
    pub model: PathBuf,
    /// The GGUF file to write (must not exist yet).
    #[arg(long)]
    pub out: PathBuf,
    /// How weight matrices are stored: f32, f16 or q8_0 (norms and biases stay f32).
    #[arg(long = "type", default_value = "f16")]
    pub out_type: GgufOutType,
    /// A JSON file stored in the GGUF under `tunelab.manifest` (training run, governance audit).
    /// Default: the model folder's `tunelab_manifest.json`, when it has one.
    #[arg(long)]
    pub manifest: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct GgufLoraArgs {
    /// The adapter: a PEFT or MLX-LM folder (e.g. a `tunelab train lora` output).
    #[arg(long)]
    pub adapter: PathBuf,
    /// The GGUF base model the adapter will be applied to (its architecture, head counts and
    /// tensor shapes decide the layout).
    #[arg(long)]
    pub base: PathBuf,
    /// The GGUF file to write (must not exist yet).
    #[arg(long)]
    pub out: PathBuf,
    /// How the factors are stored: f32 or f16.
    #[arg(long = "type", default_value = "f32")]
    pub out_type: GgufOutType,
    /// A JSON file stored in the GGUF under `tunelab.manifest` (training run, governance audit).
    #[arg(long)]
    pub manifest: Option<PathBuf>,
}

/// Run `tunelab export …`.
pub fn run(c: ExportCommand, d: DeviceChoice) -> anyhow::Result<()> {
    match c {
        ExportCommand::Gguf(a) => run_gguf(a, d),
        ExportCommand::GgufLora(a) => run_gguf_lora(a),
        ExportCommand::Adapter(a) => crate::cli::lora::run_export(a, d),
    }
}

fn read_json(path: &std::path::Path) -> anyhow::Result<serde_json::Value> {
    let text = crate::io::text::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

fn run_gguf(a: GgufArgs, d: DeviceChoice) -> anyhow::Result<()> {
    let manifest = match &a.manifest {
        Some(p) => read_json(p)?,
        None => {
            // The record our own exports and training runs leave beside the weights.
            let own = a.model.join("tunelab_manifest.json");
            if own.exists() { read_json(&own)? } else { serde_json::Value::Null }
        }
    };
    let device = d.device()?;
    let loading = || format!("loading {}", a.model.display());
    let summary = if crate::model::gemma_gguf::is_gguf(&a.model) || crate::model::gemma::is_gemma_folder(&a.model) {
        // EmbeddingGemma: llama.cpp's gemma-embedding layout with its Dense layers.
        let encoder = crate::model::gemma::GemmaEncoder::load_any(&a.model, &device).with_context(loading)?;
        crate::export::gguf_gemma::write_gemma_gguf(&encoder, &a.out, a.out_type, manifest)?
    } else {
        let encoder = SentenceEncoder::load(&a.model, &device).with_context(loading)?;
        write_bert_gguf(&encoder, &a.out, a.out_type, manifest)?
    };
    report(&summary)
}

fn run_gguf_lora(a: GgufLoraArgs) -> anyhow::Result<()> {
    let mut adapter = crate::export::read_adapter_dir(&a.adapter)?;
    if let Some(p) = &a.manifest {
        adapter.metadata.insert("manifest".into(), read_json(p)?.to_string());
    }
    let base = GgufFile::open(&a.base)?;
    let summary = write_lora_gguf(&adapter, &LoraBase::from_gguf(&base)?, &a.out, a.out_type)?;
    report(&summary)
}

fn report(summary: &GgufExportSummary) -> anyhow::Result<()> {
    eprintln!(
        "wrote {} ({} tensors, {:.1} MiB, {}), sha256 {}",
        summary.path.display(),
        summary.tensors,
        summary.bytes as f64 / (1024.0 * 1024.0),
        summary.out_type,
        summary.sha256
    );
    println!("{}", serde_json::to_string(summary)?);
    Ok(())
}

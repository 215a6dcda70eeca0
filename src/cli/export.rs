//! `tunelab export …`: models and adapters in other tools' formats, one subcommand per format.
//!
//! `tunelab export gguf --model ST_DIR --out FILE.gguf --type f16` writes a BERT sentence encoder
//! (or EmbeddingGemma) as a GGUF that llama.cpp runs (`llama-embedding -m FILE.gguf`); see
//! [`crate::export::gguf_bert`] and [`crate::export::gguf_gemma`].
//! A decoder (`.gguf` file or llama/qwen3 folder, `--adapter-path` fused first) goes to
//! [`crate::export::gguf_decoder`]; `--reranker` writes a Qwen3 yes/no reranker for llama.cpp's
//! rank pooling.
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
    /// A sentence encoder (BERT family or EmbeddingGemma) or a decoder (LLM, yes/no reranker with
    /// --reranker) as a llama.cpp GGUF.
    Gguf(GgufArgs),
    /// A decoder LoRA adapter (PEFT or MLX-LM folder) as a llama.cpp GGUF adapter for a GGUF base model.
    GgufLora(GgufLoraArgs),
    /// A decoder LoRA adapter folder (MLX-LM or PEFT) rewritten in the other format.
    Adapter(crate::cli::lora::ExportArgs),
}

#[derive(clap::Args, Debug)]
pub struct GgufArgs {
    /// The model: a sentence-transformers / Hugging Face folder of a BERT-family encoder or of
    /// EmbeddingGemma (e.g. a `tunelab train embed` output), an EmbeddingGemma GGUF, or a decoder
    /// (a `.gguf` file, or a llama/qwen3 Hugging Face or `tunelab fuse` folder).
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
    /// Decoders: a LoRA/DoRA adapter folder (PEFT or MLX-LM) fused into the weights first.
    #[arg(long)]
    pub adapter_path: Option<PathBuf>,
    /// Decoders (qwen3): write a yes/no reranker for llama.cpp's rank pooling (QMD_RERANK_MODEL):
    /// `cls_out` = the `yes`/`no` rows of the output head, `pooling_type` rank, and the rerank
    /// prompt as `tokenizer.chat_template.rerank`.
    #[arg(long)]
    pub reranker: bool,
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
    if is_decoder(&a.model) {
        return run_gguf_decoder(a, d);
    }
    if a.adapter_path.is_some() || a.reranker {
        anyhow::bail!("{}: --adapter-path and --reranker apply to decoders (a .gguf file or a llama/qwen3 folder)", a.model.display());
    }
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

/// A `.gguf` file other than an EmbeddingGemma one (`gemma-embedding`, an encoder), or a Hugging
/// Face folder whose `config.json` names a decoder architecture.
fn is_decoder(model: &std::path::Path) -> bool {
    if model.is_file() {
        return !crate::model::gemma_gguf::is_gemma_gguf(model);
    }
    let Ok(cfg) = read_json(&model.join("config.json")) else { return false };
    cfg["model_type"].as_str().and_then(crate::model::decoder::Architecture::parse).is_some()
}

/// `tunelab export gguf` for a decoder (optionally fused with an adapter, optionally as a
/// reranker); see [`crate::export::gguf_decoder`].
fn run_gguf_decoder(a: GgufArgs, d: DeviceChoice) -> anyhow::Result<()> {
    use crate::export::gguf_decoder::{DecoderGgufOptions, write_decoder_gguf};
    use crate::model::reranker::Reranker;
    let device = d.device()?;
    let (lm, template) = if a.reranker {
        // The reranker loader reads the GGUF's own rerank prompt and checks the yes/no tokens.
        let r = Reranker::load(&a.model, a.adapter_path.as_deref(), &device)?;
        (r.lm, Some(r.template))
    } else {
        let mut lm = crate::model::decoder::CausalLm::load(&a.model, &device).with_context(|| format!("loading {}", a.model.display()))?;
        if let Some(dir) = &a.adapter_path {
            let w = crate::export::read_adapter_dir(dir)?;
            lm.model = lm.model.apply_adapter(&w).with_context(|| format!("applying the adapter in {} to {}", dir.display(), a.model.display()))?;
        }
        (lm, None)
    };
    let manifest = match (&a.manifest, &a.adapter_path) {
        (Some(p), _) => read_json(p)?,
        // The training run's manifest (governance audit included) travels in the adapter.
        (None, Some(dir)) => {
            let w = crate::export::read_adapter_dir(dir)?;
            let run = w.metadata.get("tunelab_manifest").and_then(|m| serde_json::from_str(m).ok()).unwrap_or(serde_json::Value::Null);
            serde_json::json!({ "adapter": dir.file_name().map(|n| n.to_string_lossy().into_owned()), "adapter_manifest": run })
        }
        (None, None) => {
            let own = a.model.join("tunelab_manifest.json");
            if own.is_file() { read_json(&own)? } else { serde_json::Value::Null }
        }
    };
    let opts = DecoderGgufOptions { out_type: a.out_type, reranker: template, manifest };
    let summary = write_decoder_gguf(&lm, &a.out, &opts)?;
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

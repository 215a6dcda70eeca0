//! Exports: PEFT, MLX-LM, GGUF and sentence-transformers artifacts.
//!
//! * [`peft`]: LoRA adapters as PEFT folders (`adapter_config.json` + `adapter_model.safetensors`).
//! * [`fused`]: adapters merged into a decoder, written as a Hugging Face folder.
//! * [`mlx`]: LoRA adapters as MLX-LM folders (`adapter_config.json` + `adapters.safetensors`).
//! * [`gguf_bert`]: BERT encoders as llama.cpp GGUF files (f32, f16, q8_0).
//! * [`gguf_decoder`]: decoders (llama, qwen3) and Qwen3 yes/no rerankers as llama.cpp GGUF files.
//! * [`gguf_lora`]: decoder LoRA adapters as llama.cpp GGUF adapters (`--lora`).
//! * [`sentence_transformers`]: tuned encoders as sentence-transformers folders.
pub mod fused;
pub mod gguf_bert;
pub mod gguf_decoder;
pub mod gguf_gemma;
pub mod gguf_lora;
pub mod mlx;
pub mod peft;
pub mod sentence_transformers;

use std::path::{Path, PathBuf};

use crate::io::safetensors::WeightsError;
use crate::lora::LoraError;

/// An adapter folder could not be written or read; names the file (and field or tensor).
#[derive(Debug, thiserror::Error)]
pub enum AdapterFileError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("{path}: field '{field}': {reason}")]
    Field { path: PathBuf, field: String, reason: String },
    #[error("{path}: tensor '{tensor}': {reason}")]
    Tensor { path: PathBuf, tensor: String, reason: String },
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error("{path}: {source}")]
    Lora { path: PathBuf, source: LoraError },
}

/// Read a LoRA adapter folder in either format: MLX-LM (`adapters.safetensors`) or PEFT
/// (`adapter_model.safetensors`).
pub fn read_adapter_dir(dir: &Path) -> Result<crate::lora::AdapterWeights, AdapterFileError> {
    if dir.join(mlx::WEIGHTS_FILE).is_file() {
        mlx::read(dir)
    } else if dir.join(peft::WEIGHTS_FILE).is_file() {
        peft::read(dir)
    } else {
        Err(AdapterFileError::Io {
            path: dir.join(mlx::WEIGHTS_FILE),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, format!("no {} (MLX-LM) or {} (PEFT) in the adapter folder", mlx::WEIGHTS_FILE, peft::WEIGHTS_FILE)),
        })
    }
}

pub(crate) fn read_json(path: &Path) -> Result<serde_json::Value, AdapterFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| AdapterFileError::Io { path: path.to_path_buf(), source })?;
    serde_json::from_str(&text).map_err(|source| AdapterFileError::Json { path: path.to_path_buf(), source })
}

pub(crate) fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), AdapterFileError> {
    let text = serde_json::to_string_pretty(value).expect("JSON values serialise");
    std::fs::write(path, text + "\n").map_err(|source| AdapterFileError::Io { path: path.to_path_buf(), source })
}

/// `[rows, cols]` row-major to `[cols, rows]` (MLX stores LoRA factors transposed to PEFT).
pub(crate) fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = x[r * cols + c];
        }
    }
    out
}

//! Fused models: adapters folded into the base weights (`W + scale·B·A`) and written as a
//! Hugging Face folder that transformers, MLX-LM and `tunelab generate` load as a plain model
//! (what `mlx_lm.fuse --save-path` produces).
//!
//! The folder holds `config.json` (the base's own, or written from GGUF metadata), `model.safetensors` (f32; our manifest in the header under
//! `tunelab_manifest`), and the tokenizer files: copied unchanged from a Hugging Face base
//! folder, or, for a GGUF base, `tokenizer.json` saved from the GGUF vocabulary plus a
//! `tokenizer_config.json` carrying its chat template and special tokens.

use std::collections::HashMap;
use std::path::Path;

use super::{AdapterFileError, write_json};
use crate::io::safetensors::write_f32;
use crate::model::decoder::CausalLm;

/// Tokenizer files copied from a Hugging Face base folder when present.
const TOKENIZER_FILES: [&str; 5] = ["tokenizer.json", "tokenizer_config.json", "generation_config.json", "special_tokens_map.json", "chat_template.jinja"];

/// Write `lm` (its adapters merged first) as a Hugging Face folder at `dir`, which must not
/// exist or be empty. `manifest` (JSON) goes into the safetensors header.
pub fn write(dir: &Path, lm: &CausalLm, manifest: &serde_json::Value) -> Result<(), AdapterFileError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| AdapterFileError::Io { path, source }
    };
    if dir.read_dir().is_ok_and(|mut d| d.next().is_some()) {
        return Err(AdapterFileError::Io { path: dir.to_path_buf(), source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, "not empty: choose a new folder (fuse never overwrites)") });
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    // A Hugging Face base keeps its own config.json (every field transformers knows, unchanged);
    // a GGUF base gets one written from its metadata.
    let base_config = lm.source.join("config.json");
    if lm.source.is_dir() && base_config.is_file() {
        std::fs::copy(&base_config, dir.join("config.json")).map_err(io(&dir.join("config.json")))?;
    } else {
        let config = lm.config.to_hf_json().map_err(|reason| AdapterFileError::Field { path: lm.source.clone(), field: "rope_scaling".into(), reason })?;
        write_json(&dir.join("config.json"), &config)?;
    }
    let merged = lm.model.clone().merged();
    let meta = HashMap::from([("format".to_string(), "pt".to_string()), ("tunelab_manifest".to_string(), manifest.to_string())]);
    write_f32(dir.join("model.safetensors"), &merged.hf_tensors(), Some(meta))?;
    if lm.source.is_dir() {
        for f in TOKENIZER_FILES {
            let from = lm.source.join(f);
            if from.is_file() {
                std::fs::copy(&from, dir.join(f)).map_err(io(&dir.join(f)))?;
            }
        }
        return Ok(());
    }
    let tok_path = dir.join("tokenizer.json");
    lm.tokenizer.save(&tok_path, false).map_err(|e| AdapterFileError::Io { path: tok_path.clone(), source: std::io::Error::other(e.to_string()) })?;
    let g = crate::io::gguf::GgufFile::open(&lm.source).map_err(|e| AdapterFileError::Io { path: lm.source.clone(), source: std::io::Error::other(e.to_string()) })?;
    let template = g.get("tokenizer.chat_template").and_then(|v| v.as_str()).map(str::to_string);
    let eos = lm.chat_template.as_ref().and_then(|t| t.eos_token.clone());
    write_json(
        &dir.join("tokenizer_config.json"),
        &serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": lm.bos_token, "eos_token": eos, "add_bos_token": lm.add_bos,
            "chat_template": template,
        }),
    )?;
    write_json(&dir.join("generation_config.json"), &serde_json::json!({ "eos_token_id": lm.eos_token_ids }))
}

//! EmbeddingGemma from a llama.cpp GGUF (`general.architecture = "gemma-embedding"`), the file QMD
//! downloads (`embeddinggemma-300M-Q8_0.gguf`), and the names both directions share with
//! [`crate::export::gguf_gemma`].
//!
//! The GGUF is read with **llama.cpp's semantics** (`src/models/gemma-embedding.cpp`,
//! `convert_hf_to_gguf.py`'s `EmbeddingGemma`), which are not always the checkpoint's:
//! - queries are scaled by `1/√key_length`: llama.cpp ignores `query_pre_attn_scalar` (equal to the
//!   head width in EmbeddingGemma, so nothing changes for the real model);
//! - the layer pattern comes from `attention.sliding_window_pattern` when the file has it, else every
//!   6th layer is global (`il % 6 == 5`), whatever `layer_types` the checkpoint had;
//! - sliding layers use `rope.freq_base_swa` (10 000 when absent, llama.cpp's default), global ones
//!   `rope.freq_base`; the window is symmetric with radius `sliding_window / 2`;
//! - the converter stores Gemma's norm weights as `1 + w` (llama.cpp multiplies by the stored
//!   weight); [`GemmaRmsNorm`](super::gemma::GemmaRmsNorm) computes `(1 + w)`, so 1 is subtracted on
//!   load (and added back on export);
//! - `dense_2` / `dense_3` (sentence-transformers' `2_Dense`, `3_Dense`, no bias, identity) run after
//!   mean pooling when present, then the vector is L2-normalised (`llama-embedding`, QMD).
//!
//! The file carries no sentence-transformers prompts: EmbeddingGemma's own ([`EMBEDDINGGEMMA_PROMPTS`])
//! are attached, and QMD's formats are available by name in `tunelab embed` as for every encoder.
//!
//! ```no_run
//! use tunelab::model::gemma::GemmaEncoder;
//! let enc = GemmaEncoder::load_gguf("embeddinggemma-300M-Q8_0.gguf", false, &burn::tensor::Device::flex())?;
//! let v = enc.embed_with_prompt(&["how do I cook rice"], enc.prompt("query"), 8)?;
//! assert_eq!(v[0].len(), 768);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::Path;

use burn::tensor::{Device, TensorData};

use crate::io::gguf::{GgufFile, MetaValue};
use crate::lora::{AdaptableLinear, QuantLinear, QuantType, QuantWeight};
use crate::model::bert::{BertError, ParamSource};
use crate::model::gemma::{GemmaConfig, GemmaError, GemmaModel};

/// llama.cpp's architecture name for EmbeddingGemma.
pub const ARCH: &str = "gemma-embedding";

/// EmbeddingGemma's prompts (its `config_sentence_transformers.json`, as the model card lists
/// them), attached to a model loaded from a GGUF, which stores none.
pub const EMBEDDINGGEMMA_PROMPTS: [(&str, &str); 14] = [
    ("query", "task: search result | query: "),
    ("document", "title: none | text: "),
    ("BitextMining", "task: search result | query: "),
    ("Clustering", "task: clustering | query: "),
    ("Classification", "task: classification | query: "),
    ("InstructionRetrieval", "task: code retrieval | query: "),
    ("MultilabelClassification", "task: classification | query: "),
    ("PairClassification", "task: sentence similarity | query: "),
    ("Reranking", "task: search result | query: "),
    ("Retrieval", "task: search result | query: "),
    ("Retrieval-query", "task: search result | query: "),
    ("Retrieval-document", "title: none | text: "),
    ("STS", "task: sentence similarity | query: "),
    ("Summarization", "task: summarization | query: "),
];

/// The GGUF name of a tensor of `Gemma3TextModel` (Hugging Face name, no prefix), as gguf-py's
/// `tensor_mapping.py` maps it for `gemma-embedding`; None for names it does not know.
///
/// ```
/// use tunelab::model::gemma_gguf::gguf_name;
/// assert_eq!(gguf_name("layers.3.self_attn.o_proj.weight").as_deref(), Some("blk.3.attn_output.weight"));
/// assert_eq!(gguf_name("layers.0.pre_feedforward_layernorm.weight").as_deref(), Some("blk.0.ffn_norm.weight"));
/// ```
pub fn gguf_name(hf: &str) -> Option<String> {
    match hf {
        "embed_tokens.weight" => return Some("token_embd.weight".into()),
        "norm.weight" => return Some("output_norm.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("layers.")?;
    let (i, tail) = rest.split_once('.')?;
    let i: usize = i.parse().ok()?;
    let name = match tail.strip_suffix(".weight")? {
        "input_layernorm" => "attn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "post_attention_layernorm" => "post_attention_norm",
        "pre_feedforward_layernorm" => "ffn_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        "post_feedforward_layernorm" => "post_ffw_norm",
        _ => return None,
    };
    Some(format!("blk.{i}.{name}.weight"))
}

/// GGUF names of the sentence-transformers Dense modules after pooling, in order.
pub const DENSE_NAMES: [&str; 2] = ["dense_2", "dense_3"];

/// Whether a Hugging Face tensor name is one of Gemma's RMSNorm weights (stored `+1` in GGUF).
pub fn is_norm(hf: &str) -> bool {
    hf.ends_with("norm.weight")
}

fn config_err(path: &Path, field: &str, reason: String) -> GemmaError {
    GemmaError::Config {
        path: path.display().to_string(),
        field: field.into(),
        reason,
    }
}

/// Whether `path` is a GGUF file of llama.cpp's `gemma-embedding` architecture.
pub fn is_gemma_gguf(path: &Path) -> bool {
    path.is_file() && GgufFile::open(path).is_ok_and(|g| g.architecture().is_ok_and(|a| a == ARCH))
}

/// Whether `path` looks like a GGUF file (its magic bytes), whatever the architecture.
pub fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    path.is_file()
        && std::fs::File::open(path)
            .and_then(|mut f| f.read_exact(&mut magic))
            .is_ok()
        && &magic == b"GGUF"
}

/// The model configuration from `gemma-embedding.*` metadata, with llama.cpp's defaults and
/// semantics (see the module notes); the vocabulary size from `token_embd.weight`.
pub fn config_from_gguf(g: &GgufFile) -> Result<GemmaConfig, GemmaError> {
    let path = g.path();
    let arch = g.architecture()?;
    if arch != ARCH {
        return Err(config_err(
            path,
            "general.architecture",
            format!(
                "'{arch}' is not EmbeddingGemma (expected '{ARCH}', as llama.cpp's converter writes it)"
            ),
        ));
    }
    let key = |k: &str| format!("{ARCH}.{k}");
    let int = |k: &str| -> Result<usize, GemmaError> {
        let v = g.get_int(&key(k))?;
        usize::try_from(v)
            .ok()
            .filter(|&v| v > 0)
            .ok_or_else(|| config_err(path, &key(k), format!("{v} is not a positive count")))
    };
    let hidden = int("embedding_length")?;
    let layers = int("block_count")?;
    let heads = int("attention.head_count")?;
    let kv_heads = int("attention.head_count_kv")?;
    let head_dim = match g.opt_int(&key("attention.key_length"))? {
        Some(v) => usize::try_from(v).ok().filter(|&v| v > 0).ok_or_else(|| {
            config_err(
                path,
                &key("attention.key_length"),
                format!("{v} is not a positive width"),
            )
        })?,
        None => hidden / heads,
    };
    if let Some(v) = g.opt_int(&key("attention.value_length"))?
        && v as usize != head_dim
    {
        return Err(config_err(
            path,
            &key("attention.value_length"),
            format!("{v} differs from key_length {head_dim}"),
        ));
    }
    let embd = g
        .tensor_info("token_embd.weight")
        .ok_or_else(|| config_err(path, "token_embd.weight", "tensor is missing".into()))?;
    let vocab = match embd.shape().as_slice() {
        [v, h] if *h == hidden => *v,
        other => {
            return Err(config_err(
                path,
                "token_embd.weight",
                format!("shape {other:?}, expected [vocab, {hidden}]"),
            ));
        }
    };
    // llama.cpp: an explicit per-layer array wins, else an integer period (default 6); layer il is
    // sliding when il % n < n - 1 (n = 0: every layer sliding).
    let pattern_key = key("attention.sliding_window_pattern");
    let sliding: Vec<bool> = match g.get(&pattern_key) {
        Some(MetaValue::Array(_, items)) => {
            let flags: Option<Vec<bool>> = items
                .iter()
                .map(|v| v.as_bool().or_else(|| v.as_i64().map(|i| i != 0)))
                .collect();
            let flags = flags.ok_or_else(|| {
                config_err(path, &pattern_key, "expected an array of booleans".into())
            })?;
            if flags.len() != layers {
                return Err(config_err(
                    path,
                    &pattern_key,
                    format!("{} entries for {layers} layers", flags.len()),
                ));
            }
            flags
        }
        Some(v) => {
            let n = v.as_i64().ok_or_else(|| {
                config_err(
                    path,
                    &pattern_key,
                    "expected an integer or a boolean array".into(),
                )
            })? as usize;
            (0..layers).map(|il| n == 0 || il % n < n - 1).collect()
        }
        None => (0..layers).map(|il| il % 6 < 5).collect(),
    };
    let pooling = g.opt_int(&key("pooling_type"))?.unwrap_or(1);
    if pooling != 1 {
        return Err(config_err(
            path,
            &key("pooling_type"),
            format!("{pooling} is not supported (1 = mean, as EmbeddingGemma)"),
        ));
    }
    let f = |k: &str, default: f64| -> Result<f64, GemmaError> {
        Ok(g.opt_f64(&key(k))?.unwrap_or(default))
    };
    let mut config = GemmaConfig::tiny(vocab);
    config.vocab_size = vocab;
    config.hidden_size = hidden;
    config.intermediate_size = int("feed_forward_length")?;
    config.num_hidden_layers = layers;
    config.num_attention_heads = heads;
    config.num_key_value_heads = kv_heads;
    config.head_dim = head_dim;
    config.rms_norm_eps = f("attention.layer_norm_rms_epsilon", 1e-6)?;
    config.rope_theta = Some(f("rope.freq_base", 10_000.0)?);
    config.rope_local_base_freq = Some(f("rope.freq_base_swa", 10_000.0)?);
    config.sliding_window = int("attention.sliding_window")?;
    config.layer_types = Some(
        sliding
            .iter()
            .map(|&s| {
                if s {
                    "sliding_attention"
                } else {
                    "full_attention"
                }
                .to_string()
            })
            .collect(),
    );
    // llama.cpp scales queries by 1/sqrt(head_dim), whatever the checkpoint's query_pre_attn_scalar.
    config.query_pre_attn_scalar = head_dim as f64;
    config.max_position_embeddings = g
        .opt_int(&key("context_length"))?
        .map_or(2048, |v| v.max(1) as usize);
    config.extra.insert(
        "architectures".into(),
        serde_json::json!(["Gemma3TextModel"]),
    );
    config
        .validate()
        .map_err(|(field, reason)| config_err(path, &field, reason))?;
    Ok(config)
}

/// Parameters from a GGUF under Hugging Face names: dequantized to f32, shapes checked, norm
/// weights shifted back by −1. Errors name the file and the GGUF tensor.
pub struct GgufSource<'a> {
    pub file: &'a GgufFile,
}

impl GgufSource<'_> {
    fn err(&self, tensor: &str, reason: String) -> BertError {
        BertError::Config {
            path: self.file.path().display().to_string(),
            field: format!("tensor '{tensor}'"),
            reason,
        }
    }

    /// A GGUF tensor by its own name, as f32 of exactly `shape` (PyTorch order).
    pub fn tensor(&self, gname: &str, shape: &[usize]) -> Result<Vec<f32>, BertError> {
        let info = self
            .file
            .tensor_info(gname)
            .ok_or_else(|| self.err(gname, "is missing".into()))?;
        if info.shape() != shape {
            return Err(self.err(
                gname,
                format!("has shape {:?}, expected {shape:?}", info.shape()),
            ));
        }
        let (_, values) = self
            .file
            .tensor_f32(gname)
            .map_err(|e| self.err(gname, e.to_string()))?;
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(self.err(gname, format!("holds {} at index {i}", values[i])));
        }
        Ok(values)
    }
}

impl ParamSource for GgufSource<'_> {
    fn get(&mut self, name: &str, shape: &[usize]) -> Result<TensorData, BertError> {
        let gname =
            gguf_name(name).ok_or_else(|| self.err(name, "has no gemma-embedding name".into()))?;
        let mut values = self.tensor(&gname, shape)?;
        if is_norm(name) {
            values.iter_mut().for_each(|v| *v -= 1.0);
        }
        Ok(TensorData::new(values, shape.to_vec()))
    }

    fn has(&self, name: &str) -> bool {
        gguf_name(name).is_some_and(|g| self.file.tensor_info(&g).is_some())
    }
}

/// Replace every block projection that the file stores as Q8_0/Q4_0/Q4_1 by the file's own
/// blocks (frozen, dequantized inside each forward bit-exactly as ggml does): QLoRA's base, as the
/// decoder's `quantize_base = keep`. Other projections stay f32.
pub fn keep_quantized(
    model: GemmaModel,
    g: &GgufFile,
    device: &Device,
) -> Result<GemmaModel, GemmaError> {
    let mut model = model;
    let layers = std::mem::take(&mut model.layers);
    let mut out = Vec::with_capacity(layers.len());
    for (i, layer) in layers.into_iter().enumerate() {
        out.push(layer.map_linears(|name, slot| {
            let gname = gguf_name(&format!("layers.{i}.{name}.weight"))
                .expect("block projection names map");
            let info = g.tensor_info(&gname).expect("loaded from this file");
            let Some(ty) = QuantType::from_ggml(info.ggml_type) else {
                return Ok(slot);
            };
            let shape = info.shape();
            let bytes = g.tensor_bytes(&gname)?;
            let q = QuantWeight::from_ggml_blocks(&gname, ty, bytes, [shape[0], shape[1]], device)
                .map_err(|e| config_err(g.path(), &format!("tensor '{gname}'"), e.to_string()))?;
            Ok::<_, GemmaError>(AdaptableLinear::Quantized(QuantLinear::new(q, None)))
        })?);
    }
    model.layers = out;
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_block_tensor_has_a_distinct_gguf_name() {
        let names = [
            "input_layernorm",
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "self_attn.q_norm",
            "self_attn.k_norm",
            "post_attention_layernorm",
            "pre_feedforward_layernorm",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
            "post_feedforward_layernorm",
        ];
        let mapped: std::collections::BTreeSet<String> = names
            .iter()
            .map(|n| gguf_name(&format!("layers.11.{n}.weight")).unwrap())
            .collect();
        assert_eq!(mapped.len(), names.len());
        assert!(
            mapped
                .iter()
                .all(|g| g.starts_with("blk.11.") && g.ends_with(".weight"))
        );
        assert_eq!(gguf_name("layers.x.mlp.up_proj.weight"), None);
        assert_eq!(gguf_name("layers.0.mlp.up_proj.bias"), None);
    }
}

//! BERT sentence encoders as GGUF files that llama.cpp loads (`llama-embedding`,
//! `llama-server --embeddings`, llama-cpp-python `Llama(embedding=True)`).
//!
//! The file has the layout llama.cpp's `convert_hf_to_gguf.py` (`BertModel`) writes:
//!
//! * metadata `general.architecture = "bert"`, `bert.context_length`, `bert.embedding_length`,
//!   `bert.feed_forward_length`, `bert.block_count`, `bert.attention.head_count`,
//!   `bert.attention.layer_norm_epsilon`, `bert.attention.causal = false`, `bert.pooling_type`
//!   (mean 1, cls 2, last token 3);
//! * a WordPiece vocabulary (`tokenizer.ggml.model = "bert"`) in llama.cpp's "phantom space" form:
//!   a word-initial piece `foo` is stored as `▁foo`, a continuation `##bar` as `bar`, control
//!   tokens (`[CLS]`, …) unchanged; token types, the ids of `[CLS] [SEP] [UNK] [PAD] [MASK]`, and
//!   the BertNormalizer's lower-casing / accent stripping;
//! * tensors `token_embd`, `token_types`, `position_embd`, `token_embd_norm`, and per block
//!   `blk.N.attn_{q,k,v,output}`, `blk.N.attn_output_norm`, `blk.N.ffn_{up,down}`,
//!   `blk.N.layer_output_norm` (weights and biases). The pooler is left out, as the converter does.
//!
//! Tensor types follow the converter too: norms, biases, `position_embd` and `token_types` stay
//! F32; the other matrices take the requested type, and a Q8_0 matrix whose rows are not a
//! multiple of 32 falls back to F16.
//!
//! llama.cpp never normalises inside the model; `llama-embedding` L2-normalises by default, and
//! whether the encoder normalises is recorded as `tunelab.normalize`. The caller's manifest
//! (training run, governance audit) goes in as JSON text under `tunelab.manifest`.
//!
//! ```no_run
//! use tunelab::export::gguf_bert::{write_bert_gguf, GgufOutType};
//! use tunelab::model::bert::SentenceEncoder;
//! let enc = SentenceEncoder::load("models/all-MiniLM-L6-v2", &burn::tensor::Device::flex()).unwrap();
//! let s = write_bert_gguf(&enc, "minilm-f16.gguf".as_ref(), GgufOutType::F16, serde_json::json!({})).unwrap();
//! println!("{} tensors, sha256 {}", s.tensors, s.sha256);
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::io::gguf::{GgmlType, GgufError, GgufWriter, MetaValue};
use crate::model::bert::{HiddenAct, PoolingMode, SentenceEncoder};

/// What a GGUF export can store its weight matrices as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GgufOutType {
    F32,
    F16,
    Q8_0,
}

impl GgufOutType {
    /// llama.cpp's `general.file_type` (`LlamaFileType`: ALL_F32 0, MOSTLY_F16 1, MOSTLY_Q8_0 7).
    pub fn file_type(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q8_0 => 7,
        }
    }

    /// The ggml type of a tensor of `shape` as llama.cpp's converter writes it: vectors (norms,
    /// biases) stay F32, matrices get [`GgufOutType::matrix_type`] of their row length.
    pub fn tensor_type(self, shape: &[usize]) -> GgmlType {
        if shape.len() <= 1 { GgmlType::F32 } else { self.matrix_type(shape[shape.len() - 1]) }
    }

    /// The ggml type a weight matrix with rows of `row_len` values gets: Q8_0 needs whole
    /// 32-value blocks per row, otherwise F16 (the converter's `QuantError` fallback).
    pub fn matrix_type(self, row_len: usize) -> GgmlType {
        match self {
            Self::F32 => GgmlType::F32,
            Self::F16 => GgmlType::F16,
            Self::Q8_0 if row_len.is_multiple_of(32) => GgmlType::Q8_0,
            Self::Q8_0 => GgmlType::F16,
        }
    }
}

impl std::str::FromStr for GgufOutType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            "q8_0" | "q8" => Ok(Self::Q8_0),
            other => Err(format!("GGUF type '{other}' is not one of f32, f16, q8_0")),
        }
    }
}

impl std::fmt::Display for GgufOutType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Q8_0 => "q8_0",
        })
    }
}

/// Why a GGUF export failed. Every variant names the file (or source) concerned.
#[derive(Debug, thiserror::Error)]
pub enum GgufExportError {
    #[error("{path} already exists: choose a new file name (exports never overwrite)")]
    Exists { path: PathBuf },
    #[error("{path}: {reason}")]
    Unsupported { path: PathBuf, reason: String },
    #[error("{path}: tensor '{tensor}': {reason}")]
    Tensor { path: PathBuf, tensor: String, reason: String },
    #[error("{path}: tokenizer: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Gguf(#[from] GgufError),
}

/// What was written.
#[derive(Debug, Clone, Serialize)]
pub struct GgufExportSummary {
    pub path: PathBuf,
    /// Number of tensors in the file.
    pub tensors: usize,
    /// File size in bytes.
    pub bytes: u64,
    /// SHA-256 of the file (hex).
    pub sha256: String,
    pub out_type: GgufOutType,
}

impl GgufExportSummary {
    /// Size and SHA-256 of a GGUF file just written.
    pub(crate) fn of_written(path: &Path, tensors: usize, out_type: GgufOutType) -> Result<Self, GgufExportError> {
        let bytes = std::fs::read(path).map_err(|source| GgufExportError::Io { path: path.to_path_buf(), source })?;
        Ok(GgufExportSummary { path: path.to_path_buf(), tensors, bytes: bytes.len() as u64, sha256: hex::encode(Sha256::digest(&bytes)), out_type })
    }
}

/// llama.cpp's token types (`tokenizer.ggml.token_type`, gguf-py `TokenType`).
mod token_type {
    pub const NORMAL: i32 = 1;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
}

/// llama.cpp's `LLAMA_POOLING_TYPE_*` for `bert.pooling_type`.
fn pooling_type(mode: PoolingMode) -> Option<u32> {
    match mode {
        PoolingMode::Mean => Some(1),
        PoolingMode::Cls => Some(2),
        PoolingMode::LastToken => Some(3),
        PoolingMode::Max | PoolingMode::MeanSqrtLen => None,
    }
}

/// The GGUF name of a Hugging Face `BertModel` tensor: `Some(Some(name))`; `Some(None)` for the
/// pooler, which llama.cpp does not use (the converter drops it too); `None` for a name that is
/// not part of a `BertModel` (the export refuses it rather than silently dropping weights).
pub fn bert_gguf_name(hf: &str) -> Option<Option<String>> {
    let (stem, suffix) = hf.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let fixed = match stem {
        "embeddings.word_embeddings" => Some("token_embd"),
        "embeddings.position_embeddings" => Some("position_embd"),
        "embeddings.token_type_embeddings" => Some("token_types"),
        "embeddings.LayerNorm" => Some("token_embd_norm"),
        "pooler.dense" => return Some(None),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(Some(format!("{f}.{suffix}")));
    }
    let rest = stem.strip_prefix("encoder.layer.")?;
    let (n, part) = rest.split_once('.')?;
    let n: usize = n.parse().ok()?;
    let g = match part {
        "attention.self.query" => "attn_q",
        "attention.self.key" => "attn_k",
        "attention.self.value" => "attn_v",
        "attention.output.dense" => "attn_output",
        "attention.output.LayerNorm" => "attn_output_norm",
        "intermediate.dense" => "ffn_up",
        "output.dense" => "ffn_down",
        "output.LayerNorm" => "layer_output_norm",
        _ => return None,
    };
    Some(Some(format!("blk.{n}.{g}.{suffix}")))
}

/// Whether a GGUF tensor stays F32 whatever the requested type: 1-D tensors, norms, and the
/// position / token-type tables (llama.cpp's converter and `llama_model_quantize` keep these F32;
/// `bert.cpp` adds a row of `token_types` with `ggml_add`, which wants F32).
fn keeps_f32(gguf_name: &str, shape: &[usize]) -> bool {
    shape.len() <= 1
        || gguf_name.ends_with("_norm.weight")
        || !gguf_name.ends_with(".weight")
        || gguf_name == "position_embd.weight"
        || gguf_name == "token_types.weight"
}

/// Where the encoder came from, for error messages.
fn source_path(encoder: &SentenceEncoder) -> PathBuf {
    encoder
        .source
        .as_ref()
        .map(|s| s.root.clone())
        .unwrap_or_else(|| PathBuf::from("(in-memory encoder)"))
}

/// The WordPiece vocabulary, converted as `BertModel.set_vocab` does, plus the special tokens.
struct Vocab {
    tokens: Vec<String>,
    types: Vec<i32>,
    cls: u32,
    sep: u32,
    unk: u32,
    pad: Option<u32>,
    mask: Option<u32>,
    lowercase: Option<bool>,
    strip_accents: Option<bool>,
}

/// Walk a tokenizer.json `normalizer` (BertNormalizer, Lowercase, StripAccents, Sequence) as
/// gguf-py's `SpecialVocab._parse_normalizer` does.
fn parse_normalizer(n: &serde_json::Value, lowercase: &mut Option<bool>, strip: &mut Option<bool>) {
    match n.get("type").and_then(|t| t.as_str()) {
        Some("Lowercase") => *lowercase = Some(true),
        Some("StripAccents") => *strip = Some(true),
        Some("BertNormalizer") => {
            // A JSON null (strip_accents: null means "follow lowercase") writes no key, so
            // llama.cpp's own default (strip_accents = lowercase) applies, as in transformers.
            if let Some(v) = n.get("lowercase").and_then(|v| v.as_bool()) {
                *lowercase = Some(v);
            }
            if let Some(v) = n.get("strip_accents").and_then(|v| v.as_bool()) {
                *strip = Some(v);
            }
        }
        Some("Sequence") => {
            for inner in n.get("normalizers").and_then(|v| v.as_array()).into_iter().flatten() {
                parse_normalizer(inner, lowercase, strip);
            }
        }
        _ => {}
    }
}

fn build_vocab(encoder: &SentenceEncoder, n_vocab: usize) -> Result<Vocab, GgufExportError> {
    let path = encoder.tokenizer.path().to_path_buf();
    let err = |reason: String| GgufExportError::Tokenizer { path: path.clone(), reason };
    let json: serde_json::Value = encoder
        .tokenizer
        .inner()
        .to_string(false)
        .map_err(|e| err(format!("cannot serialise: {e}")))
        .and_then(|s| serde_json::from_str(&s).map_err(|e| err(format!("cannot parse: {e}"))))?;
    let model = &json["model"];
    let kind = model["type"].as_str().unwrap_or("?");
    if kind != "WordPiece" {
        return Err(err(format!(
            "model type '{kind}': llama.cpp's BERT vocabulary (tokenizer.ggml.model = bert) is WordPiece"
        )));
    }
    let prefix = model["continuing_subword_prefix"].as_str().unwrap_or("##").to_string();
    let mut by_id: Vec<Option<String>> = vec![None; n_vocab];
    let mut put = |tok: &str, id: u64| -> Result<(), GgufExportError> {
        let slot = by_id.get_mut(id as usize).ok_or_else(|| {
            err(format!("token {tok:?} has id {id}, beyond the model's vocab_size {n_vocab}"))
        })?;
        *slot = Some(tok.to_string());
        Ok(())
    };
    let vocab = model["vocab"].as_object().ok_or_else(|| err("WordPiece model without a vocab".into()))?;
    for (tok, id) in vocab {
        put(tok, id.as_u64().ok_or_else(|| err(format!("token {tok:?}: id is not a number")))?)?;
    }
    // Added tokens: special ones are CONTROL, the rest USER_DEFINED (get_vocab_base).
    let mut added: HashMap<u64, bool> = HashMap::new();
    for t in json["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(content)) = (t["id"].as_u64(), t["content"].as_str()) else {
            return Err(err(format!("added token without id/content: {t}")));
        };
        put(content, id)?;
        added.insert(id, t["special"].as_bool().unwrap_or(false));
    }

    let mut tokens = Vec::with_capacity(n_vocab);
    let mut types = Vec::with_capacity(n_vocab);
    for (i, tok) in by_id.iter().enumerate() {
        let (text, ty) = match tok {
            // Ids the tokenizer never produces still need a row name (get_vocab_base: "[PAD{i}]").
            None => (format!("[PAD{i}]"), token_type::UNUSED),
            Some(t) => {
                let ty = match added.get(&(i as u64)) {
                    Some(true) => token_type::CONTROL,
                    Some(false) => token_type::USER_DEFINED,
                    None => token_type::NORMAL,
                };
                (t.clone(), ty)
            }
        };
        // Phantom-space form (BertModel.set_vocab): llama.cpp's WPM tokenizer prefixes each word
        // with "▁" and matches pieces greedily, so word starts carry the "▁" and continuations
        // lose their "##".
        let text = if ty == token_type::CONTROL {
            text
        } else if let Some(rest) = text.strip_prefix(prefix.as_str()) {
            rest.to_string()
        } else {
            format!("\u{2581}{text}")
        };
        tokens.push(text);
        types.push(ty);
    }

    let id_of = |tok: &str| -> Option<u32> { by_id.iter().position(|t| t.as_deref() == Some(tok)).map(|i| i as u32) };
    // [CLS] / [SEP]: the single-sequence template's first and last special tokens when there is
    // one (what the model was trained with), else the usual spellings.
    let template = json["post_processor"]["single"].as_array().cloned().unwrap_or_default();
    let special_at = |i: Option<&serde_json::Value>| {
        i.and_then(|v| v["SpecialToken"]["id"].as_str()).map(str::to_string)
    };
    let cls_name = special_at(template.first()).unwrap_or_else(|| "[CLS]".into());
    let sep_name = special_at(template.last()).unwrap_or_else(|| "[SEP]".into());
    let cls = id_of(&cls_name).ok_or_else(|| err(format!("no {cls_name} token: llama.cpp's WPM tokenizer starts every text with it")))?;
    let sep = id_of(&sep_name).ok_or_else(|| err(format!("no {sep_name} token: llama.cpp's WPM tokenizer ends every text with it")))?;
    let unk_name = model["unk_token"].as_str().unwrap_or("[UNK]");
    let unk = id_of(unk_name).ok_or_else(|| err(format!("the unknown token {unk_name} is not in the vocabulary")))?;
    let pad = encoder.tokenizer.inner().get_padding().map(|p| p.pad_id).or_else(|| id_of("[PAD]"));
    let mask = id_of("[MASK]");

    let (mut lowercase, mut strip_accents) = (None, None);
    if !json["normalizer"].is_null() {
        parse_normalizer(&json["normalizer"], &mut lowercase, &mut strip_accents);
    }
    // sentence-transformers' do_lower_case lower-cases before the tokenizer; llama.cpp can only
    // do that in its normaliser.
    if encoder.source.as_ref().is_some_and(|s| s.sentence_bert.do_lower_case) {
        lowercase = Some(true);
    }
    Ok(Vocab { tokens, types, cls, sep, unk, pad, mask, lowercase, strip_accents })
}

/// Write `encoder` to `path` as a llama.cpp BERT GGUF with weight matrices as `ty`. `manifest`
/// (e.g. the training run and its governance audit) is stored as JSON text under
/// `tunelab.manifest`. Refuses an existing `path`, encoders llama.cpp would run differently
/// (activations other than GELU, relative positions, max / sqrt-length pooling, several pooling
/// modes) and non-WordPiece tokenizers.
pub fn write_bert_gguf(
    encoder: &SentenceEncoder,
    path: &Path,
    ty: GgufOutType,
    manifest: serde_json::Value,
) -> Result<GgufExportSummary, GgufExportError> {
    if path.exists() {
        return Err(GgufExportError::Exists { path: path.to_path_buf() });
    }
    let src = source_path(encoder);
    let unsupported = |reason: String| GgufExportError::Unsupported { path: src.clone(), reason };
    let c = &encoder.model.config;
    // llama.cpp's BERT graph always uses GELU (ggml_gelu); other activations would silently differ.
    match HiddenAct::parse(&c.hidden_act) {
        Ok(HiddenAct::Gelu | HiddenAct::GeluTanh) => {}
        _ => return Err(unsupported(format!("hidden_act '{}': llama.cpp's BERT uses GELU", c.hidden_act))),
    }
    if c.position_embedding_type != "absolute" {
        return Err(unsupported(format!(
            "position_embedding_type '{}': llama.cpp's BERT uses absolute positions",
            c.position_embedding_type
        )));
    }
    let pooling = match encoder.pooling.modes.as_slice() {
        [m] => pooling_type(*m)
            .ok_or_else(|| unsupported(format!("pooling '{}': llama.cpp pools by mean, cls or last token", m.st_name())))?,
        modes => return Err(unsupported(format!("{} pooling modes: llama.cpp pools with one", modes.len()))),
    };
    let vocab = build_vocab(encoder, c.vocab_size)?;

    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", "bert");
    w.add_metadata("general.type", "model");
    let name = encoder
        .source
        .as_ref()
        .and_then(|s| s.root.file_name())
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "tunelab-encoder".into());
    w.add_metadata("general.name", name);
    w.add_metadata("general.file_type", ty.file_type());
    // GGML_QUANT_VERSION, which the converter records for every file.
    w.add_metadata("general.quantization_version", 2u32);
    let u = |v: usize| v as u32;
    w.add_metadata("bert.context_length", u(c.max_position_embeddings));
    w.add_metadata("bert.embedding_length", u(c.hidden_size));
    w.add_metadata("bert.feed_forward_length", u(c.intermediate_size));
    w.add_metadata("bert.block_count", u(c.num_hidden_layers));
    w.add_metadata("bert.attention.head_count", u(c.num_attention_heads));
    w.add_metadata("bert.attention.layer_norm_epsilon", c.layer_norm_eps as f32);
    w.add_metadata("bert.attention.causal", false);
    w.add_metadata("bert.pooling_type", pooling);

    w.add_metadata("tokenizer.ggml.model", "bert");
    // llama.cpp reads tokenizer.ggml.pre only for BPE vocabularies.
    w.add_metadata("tokenizer.ggml.pre", "default");
    w.add_metadata("tokenizer.ggml.token_type_count", u(c.type_vocab_size));
    w.add_metadata("tokenizer.ggml.tokens", vocab.tokens);
    w.add_metadata("tokenizer.ggml.token_type", vocab.types);
    // The converter (gguf-py SpecialVocab) takes BOS = [CLS] and EOS = [SEP] from the template.
    w.add_metadata("tokenizer.ggml.bos_token_id", vocab.cls);
    w.add_metadata("tokenizer.ggml.eos_token_id", vocab.sep);
    w.add_metadata("tokenizer.ggml.unknown_token_id", vocab.unk);
    // Spelled as llama.cpp spells it.
    w.add_metadata("tokenizer.ggml.seperator_token_id", vocab.sep);
    if let Some(p) = vocab.pad {
        w.add_metadata("tokenizer.ggml.padding_token_id", p);
    }
    w.add_metadata("tokenizer.ggml.cls_token_id", vocab.cls);
    if let Some(m) = vocab.mask {
        w.add_metadata("tokenizer.ggml.mask_token_id", m);
    }
    w.add_metadata("tokenizer.ggml.add_bos_token", true);
    w.add_metadata("tokenizer.ggml.add_eos_token", true);
    if let Some(l) = vocab.lowercase {
        w.add_metadata("tokenizer.ggml.normalizer.lowercase", l);
    }
    if let Some(s) = vocab.strip_accents {
        w.add_metadata("tokenizer.ggml.normalizer.strip_accents", s);
    }

    let record = serde_json::json!({
        "tunelab_version": crate::version(),
        "created": chrono::Utc::now().to_rfc3339(),
        "format": "gguf",
        "out_type": ty,
        "source_model": encoder.source.as_ref().map(|s| s.root.display().to_string()),
        "pooling": encoder.pooling.modes.iter().map(|m| m.st_name()).collect::<Vec<_>>(),
        "normalize": encoder.normalize,
        "max_seq_length": encoder.max_seq_len(),
        "prompts": encoder.prompts,
        "manifest": manifest,
    });
    w.add_metadata("tunelab.version", crate::version());
    w.add_metadata("tunelab.normalize", encoder.normalize);
    w.add_metadata("tunelab.max_seq_length", u(encoder.max_seq_len()));
    w.add_metadata("tunelab.manifest", MetaValue::String(record.to_string()));

    let mut n_tensors = 0;
    for (hf, shape, values) in encoder.model.hf_tensors() {
        let gname = match bert_gguf_name(&hf) {
            Some(Some(g)) => g,
            Some(None) => continue,
            None => {
                return Err(GgufExportError::Tensor {
                    path: src.clone(),
                    tensor: hf,
                    reason: "no llama.cpp BERT tensor corresponds to it".into(),
                });
            }
        };
        let gty = if keeps_f32(&gname, &shape) {
            GgmlType::F32
        } else {
            ty.matrix_type(*shape.last().unwrap_or(&0))
        };
        add_finite_tensor(&mut w, &src, &hf, &gname, &shape, gty, &values)?;
        n_tensors += 1;
    }
    w.write(path)?;
    GgufExportSummary::of_written(path, n_tensors, ty)
}

/// Add `values` as the GGUF tensor `gname`, or refuse a non-finite value with an error naming
/// the source file and `tensor` (before anything is written: the file is written only at the
/// end). Shared by every GGUF exporter.
pub(crate) fn add_finite_tensor(
    w: &mut GgufWriter,
    src: &Path,
    tensor: &str,
    gname: &str,
    shape: &[usize],
    gty: GgmlType,
    values: &[f32],
) -> Result<(), GgufExportError> {
    if let Some(bad) = values.iter().position(|v| !v.is_finite()) {
        return Err(GgufExportError::Tensor {
            path: src.to_path_buf(),
            tensor: tensor.into(),
            reason: format!("value {} at index {bad} is not finite; nothing was written", values[bad]),
        });
    }
    w.add_tensor(gname, shape, gty, values);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::gguf::GgufFile;
    use crate::io::tokenizer::TextTokenizer;
    use crate::model::bert::{BertConfig, BertModel, Pooling, Prompts};
    use burn::tensor::Device;

    /// A tiny random encoder with a real WordPiece tokenizer (BertNormalizer, lower-casing):
    /// vocabulary `[PAD] [UNK] [CLS] [SEP] [MASK]`, some words, some `##` pieces; two ids at the
    /// end that the tokenizer never produces.
    fn tiny_wordpiece(hidden: usize, seed: u64) -> SentenceEncoder {
        let pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "play", "##ing", "##s", ".", "a"];
        let vocab: serde_json::Map<String, serde_json::Value> =
            pieces.iter().enumerate().map(|(i, p)| (p.to_string(), serde_json::json!(i))).collect();
        let added: Vec<_> = pieces[..5]
            .iter()
            .enumerate()
            .map(|(i, t)| serde_json::json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
            .collect();
        let cls = serde_json::json!({"SpecialToken": {"id": "[CLS]", "type_id": 0}});
        let sep = serde_json::json!({"SpecialToken": {"id": "[SEP]", "type_id": 0}});
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
            "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "post_processor": {
                "type": "TemplateProcessing",
                "single": [cls, {"Sequence": {"id": "A", "type_id": 0}}, sep],
                "pair": [cls, {"Sequence": {"id": "A", "type_id": 0}}, sep, {"Sequence": {"id": "B", "type_id": 1}}, {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
                "special_tokens": {
                    "[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                    "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}
                }
            },
            "decoder": null,
            "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##", "max_input_chars_per_word": 100, "vocab": vocab}
        });
        let inner: tokenizers::Tokenizer = json.to_string().parse().expect("valid tokenizer JSON");
        let config = BertConfig::tiny(pieces.len() + 2, hidden, 2, 4);
        let dev = Device::flex();
        SentenceEncoder {
            model: BertModel::random(&config, seed, &dev),
            tokenizer: TextTokenizer::new(inner, "tokenizer.json (test)".into(), 32).unwrap(),
            pooling: Pooling::mean(),
            normalize: true,
            prompts: Prompts::none(),
            default_prompt: None,
            source: None,
        }
    }

    fn meta<'a>(g: &'a GgufFile, k: &str) -> &'a MetaValue {
        g.get(k).unwrap_or_else(|| panic!("metadata {k} missing"))
    }

    #[test]
    fn f32_round_trips_exactly_with_llama_cpp_names_and_metadata() {
        let enc = tiny_wordpiece(32, 7);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        let s = write_bert_gguf(&enc, &path, GgufOutType::F32, serde_json::json!({"audit": {"rows": 3}})).unwrap();
        let g = GgufFile::open(&path).unwrap();
        assert_eq!(g.architecture().unwrap(), "bert");
        assert_eq!(g.get_int("bert.block_count").unwrap(), 2);
        assert_eq!(g.get_int("bert.embedding_length").unwrap(), 32);
        assert_eq!(g.get_int("bert.feed_forward_length").unwrap(), 128);
        assert_eq!(g.get_int("bert.attention.head_count").unwrap(), 4);
        assert_eq!(g.get_int("bert.pooling_type").unwrap(), 1);
        assert_eq!(meta(&g, "bert.attention.causal").as_bool(), Some(false));
        assert_eq!(g.get_int("general.file_type").unwrap(), 0);
        assert_eq!(g.get_int("tokenizer.ggml.token_type_count").unwrap(), 2);
        let manifest: serde_json::Value = serde_json::from_str(g.get_str("tunelab.manifest").unwrap()).unwrap();
        assert_eq!(manifest["manifest"]["audit"]["rows"], 3);

        // Every parameter except the pooler is present under its llama.cpp name, bit for bit.
        let mut expected = 0;
        for (hf, shape, values) in enc.model.hf_tensors() {
            let Some(Some(gname)) = bert_gguf_name(&hf) else { continue };
            expected += 1;
            let info = g.tensor_info(&gname).unwrap_or_else(|| panic!("{gname} ({hf}) missing"));
            assert_eq!(info.ggml_type, GgmlType::F32, "{gname}");
            let (s, v) = g.tensor_f32(&gname).unwrap();
            assert_eq!(s, shape, "{gname}");
            assert_eq!(v, values, "{gname}");
        }
        assert_eq!(g.tensors.len(), expected);
        assert_eq!(s.tensors, expected);
        assert!(g.tensor_info("blk.1.attn_output_norm.bias").is_some());
        assert!(g.tensor_info("blk.0.layer_output_norm.weight").is_some());
        assert_eq!(g.tensor_info("token_embd.weight").unwrap().dims, vec![32, 15], "ggml order [n_embd, n_vocab]");
    }

    #[test]
    fn vocabulary_is_in_phantom_space_form_with_special_ids() {
        let enc = tiny_wordpiece(32, 1);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.gguf");
        write_bert_gguf(&enc, &path, GgufOutType::F16, serde_json::Value::Null).unwrap();
        let g = GgufFile::open(&path).unwrap();
        assert_eq!(g.get_str("tokenizer.ggml.model").unwrap(), "bert");
        let toks = g.get_string_array("tokenizer.ggml.tokens").unwrap();
        assert_eq!(toks.len(), 15, "one token per embedding row");
        assert_eq!(&toks[..3], ["[PAD]", "[UNK]", "[CLS]"], "control tokens unchanged");
        assert_eq!(toks[5], "\u{2581}the");
        assert_eq!(toks[9], "ing", "continuations lose ##");
        // Ids the tokenizer lacks get placeholder names, phantom-spaced like every non-control
        // token (as the converter does), so no text can ever produce them.
        assert_eq!(toks[13], "\u{2581}[PAD13]");
        let types = meta(&g, "tokenizer.ggml.token_type").as_i64_array().unwrap();
        assert_eq!(types[..6], [3, 3, 3, 3, 3, 1]);
        assert_eq!(types[14], 5);
        for (k, id) in [
            ("bos", 2),
            ("eos", 3),
            ("unknown", 1),
            ("seperator", 3),
            ("padding", 0),
            ("cls", 2),
            ("mask", 4),
        ] {
            assert_eq!(g.get_int(&format!("tokenizer.ggml.{k}_token_id")).unwrap(), id, "{k}");
        }
        assert_eq!(meta(&g, "tokenizer.ggml.normalizer.lowercase").as_bool(), Some(true));
        assert!(g.get("tokenizer.ggml.normalizer.strip_accents").is_none(), "null strip_accents follows lowercase");
    }

    #[test]
    fn q8_0_quantises_matrices_only_within_block_tolerance() {
        let enc = tiny_wordpiece(32, 3);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.gguf");
        write_bert_gguf(&enc, &path, GgufOutType::Q8_0, serde_json::Value::Null).unwrap();
        let g = GgufFile::open(&path).unwrap();
        assert_eq!(g.get_int("general.file_type").unwrap(), 7);
        let mut quantised = 0;
        for (hf, _, values) in enc.model.hf_tensors() {
            let Some(Some(gname)) = bert_gguf_name(&hf) else { continue };
            let ty = g.tensor_info(&gname).unwrap().ggml_type;
            let (_, back) = g.tensor_f32(&gname).unwrap();
            if gname.ends_with(".bias") || gname.contains("norm") || gname.starts_with("position") || gname.starts_with("token_types") {
                assert_eq!(ty, GgmlType::F32, "{gname}");
                assert_eq!(back, values, "{gname}");
                continue;
            }
            assert_eq!(ty, GgmlType::Q8_0, "{gname}");
            quantised += 1;
            // Per 32-value block: rounding to the grid d = max|x|/127 costs at most d/2, and d's
            // own f16 rounding (relative 2^-11) at most 127·d·2^-11 more.
            for (blk, (x, y)) in values.chunks(32).zip(back.chunks(32)).enumerate() {
                let d = x.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0;
                let tol = d * (0.5 + 127.0 / 2048.0) + 1e-7;
                let err = x.iter().zip(y).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
                assert!(err <= tol, "{gname} block {blk}: error {err} > {tol}");
            }
            assert_ne!(back, values, "{gname}: Q8_0 should not be lossless on random weights");
        }
        assert_eq!(quantised, 1 + 2 * 6, "token_embd and six matrices per block");
    }

    #[test]
    fn q8_0_falls_back_to_f16_when_rows_are_not_whole_blocks() {
        let enc = tiny_wordpiece(48, 3);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q48.gguf");
        write_bert_gguf(&enc, &path, GgufOutType::Q8_0, serde_json::Value::Null).unwrap();
        let g = GgufFile::open(&path).unwrap();
        assert_eq!(g.tensor_info("blk.0.attn_q.weight").unwrap().ggml_type, GgmlType::F16, "rows of 48");
        // ffn_down's rows are the intermediate size, 4·48 = 192 = 6 blocks.
        assert_eq!(g.tensor_info("blk.0.ffn_down.weight").unwrap().ggml_type, GgmlType::Q8_0);
    }

    #[test]
    fn refuses_what_llama_cpp_would_run_differently() {
        let dir = tempfile::tempdir().unwrap();
        // A word-level tokenizer is not WordPiece.
        let wl = SentenceEncoder::random_tiny(&["a", "b"], 0, &Device::flex());
        let e = write_bert_gguf(&wl, &dir.path().join("a.gguf"), GgufOutType::F32, serde_json::Value::Null).unwrap_err();
        assert!(e.to_string().contains("WordPiece"), "{e}");
        let mut enc = tiny_wordpiece(32, 0);
        enc.pooling = Pooling { modes: vec![PoolingMode::Max] };
        let e = write_bert_gguf(&enc, &dir.path().join("b.gguf"), GgufOutType::F32, serde_json::Value::Null).unwrap_err();
        assert!(e.to_string().contains("pooling 'max'"), "{e}");
        let mut enc = tiny_wordpiece(32, 0);
        enc.model.config.hidden_act = "relu".into();
        let e = write_bert_gguf(&enc, &dir.path().join("c.gguf"), GgufOutType::F32, serde_json::Value::Null).unwrap_err();
        assert!(e.to_string().contains("GELU"), "{e}");
        assert!(!dir.path().join("c.gguf").exists());
        // Never overwrites.
        std::fs::write(dir.path().join("keep.gguf"), "user data").unwrap();
        let e = write_bert_gguf(&tiny_wordpiece(32, 0), &dir.path().join("keep.gguf"), GgufOutType::F32, serde_json::Value::Null)
            .unwrap_err();
        assert!(e.to_string().contains("already exists"), "{e}");
        assert_eq!(std::fs::read_to_string(dir.path().join("keep.gguf")).unwrap(), "user data");
    }

    #[test]
    fn name_mapping_covers_every_bert_tensor() {
        assert_eq!(bert_gguf_name("encoder.layer.11.attention.self.key.bias"), Some(Some("blk.11.attn_k.bias".into())));
        assert_eq!(bert_gguf_name("encoder.layer.0.output.dense.weight"), Some(Some("blk.0.ffn_down.weight".into())));
        assert_eq!(bert_gguf_name("pooler.dense.weight"), Some(None));
        assert_eq!(bert_gguf_name("encoder.layer.0.crossattention.weight"), None);
        assert_eq!("q8_0".parse::<GgufOutType>().unwrap(), GgufOutType::Q8_0);
        assert!("q4_0".parse::<GgufOutType>().is_err());
    }
}

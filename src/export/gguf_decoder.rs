//! Decoders (Llama / SmolLM2, Qwen3) as GGUF files that llama.cpp loads, and Qwen3 yes/no
//! rerankers as GGUF files that llama.cpp ranks with (`--pooling rank`, `llama-server --rerank`,
//! node-llama-cpp's `createRankingContext`, hence QMD through `QMD_RERANK_MODEL`).
//!
//! The layout is the one llama.cpp's `convert_hf_to_gguf.py` writes (`LlamaModel`, `Qwen3Model`):
//!
//! * metadata `{arch}.block_count`, `context_length`, `embedding_length`, `feed_forward_length`,
//!   `attention.head_count`, `attention.head_count_kv`, `attention.key_length` /
//!   `value_length`, `attention.layer_norm_rms_epsilon`, `rope.freq_base`, linear RoPE scaling;
//!   Llama adds `vocab_size` and `rope.dimension_count`, and Llama 3 RoPE scaling becomes the
//!   `rope_freqs.weight` factors the converter computes;
//! * tensors `token_embd`, `blk.N.attn_norm`, `attn_q/k/v/output` (with biases when the model has
//!   them), `attn_q_norm` / `attn_k_norm` (Qwen3), `ffn_norm`, `ffn_gate/up/down`, `output_norm`,
//!   `output` (untied heads). For the `llama` architecture the rows of `attn_q` / `attn_k` are
//!   permuted as the converter's `LlamaModel.permute` does (llama.cpp applies RoPE to adjacent
//!   pairs, transformers to the two halves of each head); Qwen3 is stored as it is;
//! * 1-D tensors (norms, biases, RoPE factors) stay F32, matrices take the requested type; a Q8_0
//!   matrix whose rows are not a multiple of 32 falls back to F16 (the converter's fallback);
//! * the tokenizer: every `tokenizer.*` key copied from the GGUF the model was loaded from, or,
//!   for a Hugging Face folder, written from `tokenizer.json` as the converter's
//!   `_set_vocab_gpt2` does (byte-level BPE: tokens, token types, merges, `tokenizer.ggml.pre`,
//!   special token ids, `add_bos_token`, the chat template).
//!
//! `tokenizer.ggml.pre` names the pre-tokenizer regexes llama.cpp splits text with. The converter
//! finds it by hashing the tokenization of a test string, which only recognises published
//! tokenizers; here it is read from `tokenizer.json`'s pre-tokenizer itself (Qwen2's split regex →
//! `qwen2`, digits + GPT-2 byte level → `smollm`, Llama 3's regex → `llama-bpe`, plain GPT-2 byte
//! level → `gpt-2`), so a retrained vocabulary with a known pre-tokenizer exports too, and an
//! unknown one is refused instead of being tokenized differently by llama.cpp.
//!
//! **Reranker** ([`DecoderGgufOptions::reranker`], Qwen3 only): as the converter writes
//! Qwen3-Reranker, `cls.output.weight` (llama.cpp's `LLM_TENSOR_CLS_OUT`, the model's `cls_out`) holds the output head's rows of
//! `yes` and `no`, in that order (`[2, hidden]`), `qwen3.pooling_type = 4` (rank),
//! `qwen3.classifier.output_labels = ["yes", "no"]` and `tokenizer.chat_template.rerank` the
//! prompt (the same text [`crate::model::reranker::Reranker`] scores with, so tunelab reading the
//! file back builds the same prompt). llama.cpp's rank pooling takes the last token's hidden
//! state, multiplies by `cls_out` (no bias) and, for `qwen3` only, applies a softmax, so its
//! first output is `softmax([logit_yes, logit_no])[0] = P(yes)`, which node-llama-cpp returns as
//! it is for qwen3. An untied output head is dropped, as the converter drops it (llama.cpp then
//! uses the embedding for generation); tunelab reads `cls_out` back for scoring. The `llama`
//! architecture is refused: llama.cpp loads `cls_out` only for qwen3 (and BERT-like encoders).
//!
//! The file is a pure function of the model and the options (no time stamps, no absolute paths),
//! so its SHA-256 identifies it. The caller's manifest (training run, governance audit) is
//! stored as JSON text under `tunelab.manifest`.
//!
//! ```no_run
//! use burn::tensor::Device;
//! use tunelab::export::gguf_bert::GgufOutType;
//! use tunelab::export::gguf_decoder::{write_decoder_gguf, DecoderGgufOptions};
//! use tunelab::model::decoder::CausalLm;
//! use tunelab::model::reranker::RerankTemplate;
//! let lm = CausalLm::load("models/tiny-qwen3-reranker", &Device::flex())?;
//! let opts = DecoderGgufOptions { out_type: GgufOutType::F16, reranker: Some(RerankTemplate::default()), manifest: serde_json::Value::Null };
//! let s = write_decoder_gguf(&lm, "reranker-f16.gguf".as_ref(), &opts)?;
//! println!("{} tensors, sha256 {}", s.tensors, s.sha256);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::Path;

use crate::export::gguf_bert::{GgufExportError, GgufExportSummary, GgufOutType, add_finite_tensor};
use crate::io::gguf::{GgufFile, GgufWriter, MetaValue};
use crate::model::decoder::{Architecture, CausalLm, RopeScaling, gguf_name, permute_rows};
use crate::model::reranker::{RERANK_TEMPLATE_KEY, RerankTemplate};

/// How [`write_decoder_gguf`] writes a decoder.
#[derive(Debug, Clone)]
pub struct DecoderGgufOptions {
    /// How weight matrices are stored (1-D tensors stay F32).
    pub out_type: GgufOutType,
    /// Write a yes/no reranker for llama.cpp's rank pooling with this prompt (Qwen3 only).
    pub reranker: Option<RerankTemplate>,
    /// Stored under `tunelab.manifest` (training run, governance audit).
    pub manifest: serde_json::Value,
}

/// llama.cpp's `LLAMA_POOLING_TYPE_RANK`.
pub const POOLING_TYPE_RANK: u32 = 4;

/// llama.cpp's token types (gguf-py `TokenType`).
mod token_type {
    pub const NORMAL: i32 = 1;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
}

/// Qwen2's split regex as its `tokenizer.json` spells it (llama.cpp's `qwen2` pre-tokenizer).
const QWEN2_HF_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Llama 3's split regex as its `tokenizer.json` spells it (llama.cpp's `llama-bpe`).
const LLAMA3_HF_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Write `lm` (its adapters fused, LoRA or DoRA) to `path` as a llama.cpp GGUF. Refuses an
/// existing `path`, architectures other than `llama` and `qwen3`, a reranker that is not Qwen3
/// or whose vocabulary lacks `yes` / `no`, tokenizers llama.cpp cannot reproduce, and non-finite
/// weights; nothing is written then.
pub fn write_decoder_gguf(
    lm: &CausalLm,
    path: &Path,
    opts: &DecoderGgufOptions,
) -> Result<GgufExportSummary, GgufExportError> {
    if path.exists() {
        return Err(GgufExportError::Exists {
            path: path.to_path_buf(),
        });
    }
    let src = lm.source.clone();
    let unsupported = |reason: String| GgufExportError::Unsupported {
        path: src.clone(),
        reason,
    };
    let c = &lm.config;
    let arch = match c.architecture {
        Architecture::Llama => "llama",
        Architecture::Qwen3 => "qwen3",
        other => {
            return Err(unsupported(format!(
                "architecture '{}': the decoder GGUF export writes llama (Llama, SmolLM2) and qwen3",
                other.name()
            )));
        }
    };
    if c.architecture == Architecture::Llama && c.qk_norm {
        return Err(unsupported(
            "a llama model with q/k norms has no llama.cpp form".into(),
        ));
    }
    let rerank = match &opts.reranker {
        None => None,
        Some(_) if c.architecture != Architecture::Qwen3 => {
            return Err(unsupported(format!(
                "--reranker needs a qwen3 model: llama.cpp's rank pooling reads the yes/no head (cls_out) only for \
                 qwen3, and this model is {arch}"
            )));
        }
        Some(t) => {
            let id = |tok: &str| {
                lm.tokenizer.token_to_id(tok).ok_or_else(|| {
                    unsupported(format!(
                        "the vocabulary has no token '{tok}': a yes/no reranker's cls_out holds the output-head rows of 'yes' and 'no'"
                    ))
                })
            };
            Some((t, id("yes")?, id("no")?))
        }
    };

    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", arch);
    w.add_metadata("general.type", "model");
    if let Some(name) = src.file_stem().and_then(|s| s.to_str()) {
        w.add_metadata("general.name", name);
    }
    w.add_metadata("general.file_type", opts.out_type.file_type());
    let u = |v: usize| v as u32;
    let key = |k: &str| format!("{arch}.{k}");
    w.add_metadata(&key("block_count"), u(c.num_hidden_layers));
    w.add_metadata(&key("context_length"), u(c.max_position_embeddings));
    w.add_metadata(&key("embedding_length"), u(c.hidden_size));
    w.add_metadata(&key("feed_forward_length"), u(c.intermediate_size));
    w.add_metadata(&key("attention.head_count"), u(c.num_attention_heads));
    w.add_metadata(&key("attention.head_count_kv"), u(c.num_key_value_heads));
    w.add_metadata(&key("rope.freq_base"), c.rope_theta as f32);
    w.add_metadata(
        &key("attention.layer_norm_rms_epsilon"),
        c.rms_norm_eps as f32,
    );
    w.add_metadata(&key("attention.key_length"), u(c.head_dim));
    w.add_metadata(&key("attention.value_length"), u(c.head_dim));
    if c.architecture == Architecture::Llama {
        w.add_metadata(&key("vocab_size"), u(c.vocab_size));
        w.add_metadata(&key("rope.dimension_count"), u(c.head_dim));
    }
    let rope_freqs = match &c.rope_scaling {
        None => None,
        Some(RopeScaling::Linear { factor }) => {
            w.add_metadata(&key("rope.scaling.type"), "linear");
            w.add_metadata(&key("rope.scaling.factor"), *factor as f32);
            None
        }
        Some(RopeScaling::FreqFactors { factors }) => Some(factors.clone()),
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        }) => Some(llama3_rope_factors(
            c.rope_theta,
            c.head_dim,
            *factor,
            *low_freq_factor,
            *high_freq_factor,
            *original_max_position_embeddings,
        )),
    };
    if rope_freqs.is_some() && c.architecture != Architecture::Llama {
        return Err(unsupported(
            "RoPE frequency factors (rope_freqs) are read by llama.cpp's llama architecture only"
                .into(),
        ));
    }

    for (k, v) in tokenizer_metadata(lm, c.vocab_size)? {
        w.add_metadata(&k, v);
    }
    if let Some((t, _, _)) = &rerank {
        w.add_metadata(&key("pooling_type"), POOLING_TYPE_RANK);
        w.add_metadata(
            &key("classifier.output_labels"),
            vec!["yes".to_string(), "no".to_string()],
        );
        w.add_metadata(RERANK_TEMPLATE_KEY, t.text());
        w.add_metadata("tokenizer.chat_templates", vec!["rerank".to_string()]);
    }

    let record = serde_json::json!({
        "format": "gguf",
        "architecture": arch,
        "out_type": opts.out_type,
        "source_model": src.file_name().map(|s| s.to_string_lossy().into_owned()),
        "reranker": rerank.as_ref().map(|(t, yes, no)| serde_json::json!({"template": t.text(), "yes_id": yes, "no_id": no})),
        "manifest": opts.manifest,
    });
    w.add_metadata("tunelab.manifest", MetaValue::String(record.to_string()));

    let n_tensors = add_tensors(
        &mut w,
        lm,
        opts.out_type,
        rerank.as_ref().map(|(_, y, n)| (*y, *n)),
        rope_freqs,
    )?;
    w.write(path)?;
    GgufExportSummary::of_written(path, n_tensors, opts.out_type)
}

/// The `rope_freqs.weight` factors of Llama 3 RoPE scaling, computed as the converter's
/// `LlamaModel.generate_extra_tensors` does (frequencies in f32, the rest in f64).
pub fn llama3_rope_factors(
    theta: f64,
    head_dim: usize,
    factor: f64,
    low: f64,
    high: f64,
    old_ctx: f64,
) -> Vec<f32> {
    let (low_wavelen, high_wavelen) = (old_ctx / low, old_ctx / high);
    (0..head_dim / 2)
        .map(|i| {
            let freq = 1.0f32 / (theta as f32).powf((2 * i) as f32 / head_dim as f32);
            let wavelen = 2.0 * std::f64::consts::PI / freq as f64;
            let f = if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (old_ctx / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            };
            f as f32
        })
        .collect()
}

/// Every weight under its llama.cpp name (q/k rows permuted for `llama`), the reranker's
/// `cls_out`, and the RoPE factors. Returns the tensor count.
fn add_tensors(
    w: &mut GgufWriter,
    lm: &CausalLm,
    ty: GgufOutType,
    rerank: Option<(u32, u32)>,
    rope_freqs: Option<Vec<f32>>,
) -> Result<usize, GgufExportError> {
    let c = &lm.config;
    let src = &lm.source;
    let mut n = 0;
    let mut put = |w: &mut GgufWriter, gname: &str, shape: &[usize], values: &[f32]| -> Result<(), GgufExportError> {
        add_finite_tensor(w, src, gname, gname, shape, ty.tensor_type(shape), values)?;
        n += 1;
        Ok(())
    };
    let tensors = lm.model.hf_tensors();
    let head_name = if c.tie_word_embeddings || lm.model.lm_head.is_none() {
        "model.embed_tokens.weight"
    } else {
        "lm_head.weight"
    };
    for (hf, shape, mut values) in tensors {
        let gname = gguf_name(&hf).ok_or_else(|| GgufExportError::Tensor {
            path: src.clone(),
            tensor: hf.clone(),
            reason: "no llama.cpp tensor corresponds to it".into(),
        })?;
        if let Some((yes, no)) = rerank
            && hf == head_name
        {
            let d = shape[1];
            let row = |id: u32| values[id as usize * d..(id as usize + 1) * d].to_vec();
            // A GGUF reranker already carries its rank head (its untied output head may be gone,
            // so the loaded model's head would be the embedding): keep that head.
            let stacked: Vec<f32> = match source_rank_head(lm, d)? {
                Some(h) => h,
                None => row(yes).into_iter().chain(row(no)).collect(),
            };
            put(w, "cls.output.weight", &[2, d], &stacked)?;
            // The converter keeps a tied embedding (it is the input too) and drops an untied head.
            if hf == "lm_head.weight" {
                continue;
            }
        }
        if c.architecture == Architecture::Llama {
            let cols = if shape.len() == 2 { shape[1] } else { 1 };
            if hf.ends_with("q_proj.weight") || hf.ends_with("q_proj.bias") {
                values = permute_rows(&values, c.num_attention_heads, cols);
            } else if hf.ends_with("k_proj.weight") || hf.ends_with("k_proj.bias") {
                values = permute_rows(&values, c.num_key_value_heads, cols);
            }
        }
        put(w, &gname, &shape, &values)?;
    }
    if let Some(f) = rope_freqs {
        put(w, "rope_freqs.weight", &[f.len()], &f)?;
    }
    Ok(n)
}

/// The `cls.output.weight` rows (`yes` then `no`, `[2, hidden]` flattened) of the GGUF `lm` was
/// loaded from, when it is a reranker file.
fn source_rank_head(lm: &CausalLm, hidden: usize) -> Result<Option<Vec<f32>>, GgufExportError> {
    if !lm.source.is_file() {
        return Ok(None);
    }
    let g = GgufFile::open(&lm.source)?;
    // The model's own device: `Device::flex()` does not exist in GPU-only builds
    // (`--no-default-features --features vulkan|metal`).
    let device = burn::module::Module::devices(&lm.model).into_iter().next().unwrap_or_default();
    let head =
        crate::model::reranker::rank_head(&g, &device).map_err(|e| {
            GgufExportError::Tensor {
                path: lm.source.clone(),
                tensor: "cls.output.weight".into(),
                reason: format!("{e:#}"),
            }
        })?;
    let Some(h) = head else { return Ok(None) };
    if h.dims() != [hidden, 2] {
        return Err(GgufExportError::Tensor {
            path: lm.source.clone(),
            tensor: "cls.output.weight".into(),
            reason: format!(
                "shape {:?} does not match the hidden size {hidden}",
                h.dims()
            ),
        });
    }
    // rank_head gives [hidden, 2]; the file stores the two rows.
    Ok(Some(
        h.transpose()
            .into_data()
            .try_into_vec_as::<f32>()
            .expect("f32 head"),
    ))
}

/// The `tokenizer.*` metadata: copied from the GGUF the model came from, else converted from
/// the Hugging Face folder's tokenizer files.
fn tokenizer_metadata(
    lm: &CausalLm,
    n_vocab: usize,
) -> Result<Vec<(String, MetaValue)>, GgufExportError> {
    if lm.source.is_file() {
        let g = GgufFile::open(&lm.source)?;
        let n_tokens = g
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.as_array())
            .map(|a| a.len());
        if n_tokens != Some(n_vocab) {
            return Err(GgufExportError::Tokenizer {
                path: lm.source.clone(),
                reason: format!(
                    "{n_tokens:?} tokens for an embedding of {n_vocab} rows: llama.cpp needs one token per row"
                ),
            });
        }
        // A rerank template is written afresh (or not at all) by the caller.
        return Ok(g
            .metadata
            .iter()
            .filter(|(k, _)| {
                k.starts_with("tokenizer.")
                    && k.as_str() != RERANK_TEMPLATE_KEY
                    && k.as_str() != "tokenizer.chat_templates"
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect());
    }
    hf_tokenizer_metadata(&lm.source, &lm.tokenizer, n_vocab)
}

/// Which llama.cpp pre-tokenizer (`tokenizer.ggml.pre`) splits text as `pre_tokenizer` (a
/// tokenizer.json `pre_tokenizer`) does, or why none does.
pub fn llama_cpp_pre(pre_tokenizer: &serde_json::Value) -> Result<&'static str, String> {
    let steps: Vec<&serde_json::Value> = match pre_tokenizer["type"].as_str() {
        Some("Sequence") => pre_tokenizer["pretokenizers"]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default(),
        Some(_) => vec![pre_tokenizer],
        None => vec![],
    };
    let kind = |s: &serde_json::Value| s["type"].as_str().unwrap_or("?").to_string();
    let byte_level = |s: &serde_json::Value, regex: bool| {
        kind(s) == "ByteLevel"
            && s["use_regex"].as_bool().unwrap_or(true) == regex
            && !s["add_prefix_space"].as_bool().unwrap_or(false)
    };
    let split = |s: &serde_json::Value| -> Option<String> {
        (kind(s) == "Split"
            && s["behavior"].as_str() == Some("Isolated")
            && !s["invert"].as_bool().unwrap_or(false))
        .then(|| s["pattern"]["Regex"].as_str().map(str::to_string))
        .flatten()
    };
    match steps.as_slice() {
        [b] if byte_level(b, true) => return Ok("gpt-2"),
        [d, b]
            if kind(d) == "Digits"
                && d["individual_digits"].as_bool() == Some(true)
                && byte_level(b, true) =>
        {
            return Ok("smollm");
        }
        [s, b] if byte_level(b, false) => match split(s).as_deref() {
            Some(QWEN2_HF_SPLIT) => return Ok("qwen2"),
            Some(LLAMA3_HF_SPLIT) => return Ok("llama-bpe"),
            _ => {}
        },
        _ => {}
    }
    // The form tunelab itself gives a tokenizer read from a GGUF (a fused folder of a GGUF base):
    // llama.cpp's own regexes as isolating splits, then the byte-level mapping.
    if let Some((last, splits)) = steps.split_last()
        && byte_level(last, false)
    {
        let regexes: Option<Vec<String>> = splits.iter().map(|s| split(s)).collect();
        if let Some(regexes) = regexes {
            for name in ["qwen2", "smollm", "llama-bpe", "gpt-2"] {
                let (known, _) = crate::io::gguf::bpe_pre_regexes(name).expect("a known name");
                if known.len() == regexes.len() && known.iter().zip(&regexes).all(|(a, b)| *a == b)
                {
                    return Ok(name);
                }
            }
        }
    }
    Err(format!(
        "pre-tokenizer {}: no llama.cpp pre-tokenizer is known to split text the same way (known: Qwen2's split regex, \
         Llama 3's, SmolLM2's digits + byte level, GPT-2's byte level)",
        serde_json::to_string(pre_tokenizer).unwrap_or_default()
    ))
}

/// `tokenizer.*` metadata from a Hugging Face folder (`tokenizer.json`, `tokenizer_config.json`,
/// `config.json`, `chat_template.jinja`), as the converter's `_set_vocab_gpt2` + gguf-py
/// `SpecialVocab` write it.
fn hf_tokenizer_metadata(
    dir: &Path,
    tokenizer: &tokenizers::Tokenizer,
    n_vocab: usize,
) -> Result<Vec<(String, MetaValue)>, GgufExportError> {
    let tok_path = dir.join("tokenizer.json");
    let err = |reason: String| GgufExportError::Tokenizer {
        path: tok_path.clone(),
        reason,
    };
    let json: serde_json::Value = tokenizer
        .to_string(false)
        .map_err(|e| err(format!("cannot serialise: {e}")))
        .and_then(|s| serde_json::from_str(&s).map_err(|e| err(format!("cannot parse: {e}"))))?;
    let model = &json["model"];
    let kind = model["type"].as_str().unwrap_or("?");
    if kind != "BPE"
        || model["byte_fallback"].as_bool() == Some(true)
        || json["decoder"]["type"].as_str() != Some("ByteLevel")
    {
        return Err(err(format!(
            "model type '{kind}' (decoder {}): the export writes byte-level BPE vocabularies (llama.cpp's gpt2 model, as \
             Qwen3 and SmolLM2 use); a SentencePiece model needs llama.cpp's converter",
            json["decoder"]["type"].as_str().unwrap_or("none")
        )));
    }
    let pre = llama_cpp_pre(&json["pre_tokenizer"]).map_err(err)?;

    let mut by_id: Vec<Option<String>> = vec![None; n_vocab];
    let mut put = |tok: &str, id: u64| -> Result<(), GgufExportError> {
        let slot = by_id.get_mut(id as usize).ok_or_else(|| {
            err(format!(
                "token {tok:?} has id {id}, beyond the model's {n_vocab} embedding rows"
            ))
        })?;
        *slot = Some(tok.to_string());
        Ok(())
    };
    for (tok, id) in model["vocab"]
        .as_object()
        .ok_or_else(|| err("BPE model without a vocab".into()))?
    {
        put(
            tok,
            id.as_u64()
                .ok_or_else(|| err(format!("token {tok:?}: id is not a number")))?,
        )?;
    }
    let mut added = std::collections::HashMap::new();
    for t in json["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(content)) = (t["id"].as_u64(), t["content"].as_str()) else {
            return Err(err(format!("added token without id/content: {t}")));
        };
        put(content, id)?;
        added.insert(id as usize, t["special"].as_bool().unwrap_or(false));
    }
    let mut tokens = Vec::with_capacity(n_vocab);
    let mut types = Vec::with_capacity(n_vocab);
    for (i, tok) in by_id.iter().enumerate() {
        let (text, ty) = match tok {
            None => (format!("[PAD{i}]"), token_type::UNUSED),
            Some(t) => {
                // get_vocab_base: special added tokens, and added ones that look special, are CONTROL.
                let looks_special = t.starts_with("<|") && t.ends_with("|>");
                let ty = match added.get(&i) {
                    Some(true) => token_type::CONTROL,
                    Some(false) if looks_special => token_type::CONTROL,
                    Some(false) => token_type::USER_DEFINED,
                    None => token_type::NORMAL,
                };
                (t.clone(), ty)
            }
        };
        tokens.push(text);
        types.push(ty);
    }
    let merges: Vec<String> = model["merges"]
        .as_array()
        .ok_or_else(|| err("BPE model without merges".into()))?
        .iter()
        .map(|m| match m {
            serde_json::Value::String(s) => Ok(s.clone()),
            serde_json::Value::Array(p) if p.len() == 2 && p.iter().all(|x| x.is_string()) => Ok(
                format!("{} {}", p[0].as_str().unwrap(), p[1].as_str().unwrap()),
            ),
            other => Err(err(format!(
                "merge {other} is neither \"a b\" nor [\"a\", \"b\"]"
            ))),
        })
        .collect::<Result<_, _>>()?;

    let read_json = |name: &str| -> Result<serde_json::Value, GgufExportError> {
        let p = dir.join(name);
        if !p.is_file() {
            return Ok(serde_json::Value::Null);
        }
        let text = std::fs::read_to_string(&p).map_err(|source| GgufExportError::Io {
            path: p.clone(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|e| GgufExportError::Tokenizer {
            path: p.clone(),
            reason: format!("line {}: {e}", e.line()),
        })
    };
    let tc = read_json("tokenizer_config.json")?;
    let config = read_json("config.json")?;
    let id_of = |t: &str| {
        by_id
            .iter()
            .position(|x| x.as_deref() == Some(t))
            .map(|i| i as u32)
    };
    let mut meta: Vec<(String, MetaValue)> = vec![
        ("tokenizer.ggml.model".into(), "gpt2".into()),
        ("tokenizer.ggml.pre".into(), pre.into()),
        ("tokenizer.ggml.tokens".into(), tokens.into()),
        ("tokenizer.ggml.token_type".into(), types.into()),
        ("tokenizer.ggml.merges".into(), merges.into()),
    ];
    // SpecialVocab: the token named in tokenizer_config.json, else config.json's id.
    for typ in ["bos", "eos", "unk", "sep", "pad", "cls", "mask"] {
        let v = &tc[format!("{typ}_token")];
        let text = v.as_str().or_else(|| v["content"].as_str());
        let id = text
            .and_then(id_of)
            .or_else(|| config[format!("{typ}_token_id")].as_u64().map(|i| i as u32))
            .filter(|&i| (i as usize) < n_vocab);
        if let Some(id) = id {
            let name = if typ == "unk" {
                "unknown"
            } else if typ == "sep" {
                "seperator"
            } else if typ == "pad" {
                "padding"
            } else {
                typ
            };
            meta.push((format!("tokenizer.ggml.{name}_token_id"), id.into()));
        }
    }
    for typ in ["bos", "eos"] {
        if let Some(b) = tc[format!("add_{typ}_token")].as_bool() {
            meta.push((format!("tokenizer.ggml.add_{typ}_token"), b.into()));
        }
    }
    let template = match tc["chat_template"].as_str() {
        Some(t) => Some(t.to_string()),
        None => {
            let p = dir.join("chat_template.jinja");
            if p.is_file() {
                Some(
                    std::fs::read_to_string(&p).map_err(|source| GgufExportError::Io {
                        path: p.clone(),
                        source,
                    })?,
                )
            } else {
                None
            }
        }
    };
    if let Some(t) = template {
        meta.push(("tokenizer.chat_template".into(), t.into()));
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn split(re: &str) -> serde_json::Value {
        json!({"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false})
    }

    fn byte_level(use_regex: bool) -> serde_json::Value {
        json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": use_regex})
    }

    fn seq(steps: Vec<serde_json::Value>) -> serde_json::Value {
        json!({"type": "Sequence", "pretokenizers": steps})
    }

    #[test]
    fn pre_tokenizers_map_to_llama_cpp_names_and_unknown_ones_are_refused() {
        assert_eq!(
            llama_cpp_pre(&seq(vec![split(QWEN2_HF_SPLIT), byte_level(false)])),
            Ok("qwen2")
        );
        assert_eq!(
            llama_cpp_pre(&seq(vec![split(LLAMA3_HF_SPLIT), byte_level(false)])),
            Ok("llama-bpe")
        );
        let digits = json!({"type": "Digits", "individual_digits": true});
        assert_eq!(
            llama_cpp_pre(&seq(vec![digits.clone(), byte_level(true)])),
            Ok("smollm")
        );
        assert_eq!(llama_cpp_pre(&byte_level(true)), Ok("gpt-2"));
        // The form tunelab gives a tokenizer read from a GGUF (a fused folder of a GGUF base).
        for name in ["qwen2", "smollm", "llama-bpe", "gpt-2"] {
            let (regexes, _) = crate::io::gguf::bpe_pre_regexes(name).unwrap();
            let mut steps: Vec<_> = regexes.iter().map(|r| split(r)).collect();
            steps.push(byte_level(false));
            assert_eq!(llama_cpp_pre(&seq(steps)), Ok(name), "{name}");
        }
        // Variants that split differently: each one refused, not guessed.
        let grouped_digits = json!({"type": "Digits", "individual_digits": false});
        let inverted = json!({"type": "Split", "pattern": {"Regex": QWEN2_HF_SPLIT}, "behavior": "Isolated", "invert": true});
        let prefix_space = json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true});
        for bad in [
            seq(vec![
                split(&QWEN2_HF_SPLIT.replace(r"\p{N}", r"\p{N}{1,3}")),
                byte_level(false),
            ]),
            seq(vec![split(QWEN2_HF_SPLIT), byte_level(true)]),
            seq(vec![inverted, byte_level(false)]),
            seq(vec![grouped_digits, byte_level(true)]),
            seq(vec![digits, byte_level(false)]),
            prefix_space,
            json!({"type": "Metaspace", "replacement": "\u{2581}"}),
            json!({"type": "WhitespaceSplit"}),
            serde_json::Value::Null,
        ] {
            let e = llama_cpp_pre(&bad).unwrap_err();
            assert!(e.contains("no llama.cpp pre-tokenizer"), "{bad}: {e}");
        }
    }

    #[test]
    fn llama3_rope_factors_give_the_scaled_frequencies() {
        let cfg = crate::model::decoder::DecoderConfig {
            rope_scaling: Some(RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192.0,
            }),
            ..crate::model::decoder::DecoderConfig::tiny_llama()
        };
        let factors = llama3_rope_factors(cfg.rope_theta, cfg.head_dim, 8.0, 1.0, 4.0, 8192.0);
        let scaled = cfg.rope_inv_freq();
        let plain = crate::model::decoder::DecoderConfig {
            rope_scaling: None,
            ..cfg.clone()
        }
        .rope_inv_freq();
        // All three bands occur with these settings.
        assert!(
            factors.contains(&1.0)
                && factors.contains(&8.0)
                && factors.iter().any(|f| *f > 1.0 && *f < 8.0),
            "{factors:?}"
        );
        for ((b, s), f) in plain.iter().zip(&scaled).zip(&factors) {
            assert!(((b / f) - s).abs() <= 1e-6 * s.abs(), "{b} / {f} vs {s}");
        }
    }

    /// A DoRA adapter (magnitudes away from the row norms) is fused exactly: the exported f32 GGUF
    /// computes the adapted model's logits.
    #[test]
    fn dora_adapters_are_fused_into_the_exported_weights() {
        use crate::lora::{AdapterWeights, LoraConfig, LoraFactors};
        use burn::tensor::{Device, Int, Tensor, TensorData};
        use rand::{Rng, SeedableRng};
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/reranker/tiny_qwen3_reranker");
        let mut lm = CausalLm::load(&dir, &Device::flex()).unwrap();
        let logits = |lm: &CausalLm| -> Vec<f32> {
            let ids = Tensor::<2, Int>::from_data(
                TensorData::new(vec![1i64, 5, 17, 99, 3, 42], [1, 6]),
                &Device::flex(),
            );
            lm.model
                .forward(ids, None, None)
                .into_data()
                .try_into_vec_as::<f32>()
                .unwrap()
        };
        let cfg = LoraConfig {
            rank: 2,
            alpha: 4.0,
            use_dora: true,
            ..LoraConfig::default()
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let zero = lm
            .model
            .clone()
            .with_lora(&cfg, &mut rng)
            .unwrap()
            .adapter_weights(&cfg);
        let mut adapter = AdapterWeights::new(cfg);
        for (path, f) in zero.layers {
            let b = (0..f.b.len())
                .map(|_| rng.random_range(-0.2f32..0.2))
                .collect();
            adapter.insert(&path, LoraFactors { b, ..f }).unwrap();
            let m = &zero.magnitudes[&path];
            adapter
                .insert_magnitude(
                    &path,
                    m.iter()
                        .map(|v| v * rng.random_range(0.5f32..1.5))
                        .collect(),
                )
                .unwrap();
        }
        let base = logits(&lm);
        lm.model = lm.model.apply_adapter(&adapter).unwrap();
        let want = logits(&lm);
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("dora.gguf");
        let opts = DecoderGgufOptions {
            out_type: GgufOutType::F32,
            reranker: None,
            manifest: serde_json::Value::Null,
        };
        write_decoder_gguf(&lm, &path, &opts).unwrap();
        let got = logits(&CausalLm::load(&path, &Device::flex()).unwrap());
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        let moved = want
            .iter()
            .zip(&base)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            worst < 1e-4 && moved > 1e-2,
            "exported vs adapted {worst}, adapted vs base {moved}"
        );
    }

    /// An untied Qwen3 reranker: the export drops the output head (as the converter does) and
    /// keeps its yes/no rows as `cls.output.weight`; tunelab scores the file as the model, and
    /// re-exporting that file (whose loaded head is now the embedding) keeps the rank head.
    #[test]
    fn untied_reranker_keeps_its_rank_head_through_two_exports() {
        use crate::model::decoder::Projection;
        use crate::model::reranker::Reranker;
        use burn::module::Param;
        use burn::tensor::{Device, Tensor, TensorData};
        let dev = Device::flex();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/reranker/tiny_qwen3_reranker");
        let mut lm = CausalLm::load(&dir, &dev).unwrap();
        let (d, v) = (lm.config.hidden_size, lm.config.vocab_size);
        let w: Vec<f32> = (0..d * v)
            .map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * 0.4)
            .collect();
        lm.model.lm_head = Some(Projection {
            weight: Param::from_tensor(Tensor::from_data(TensorData::new(w, [d, v]), &dev)),
            bias: None,
        });
        lm.config.tie_word_embeddings = false;
        let untied = Reranker::new(lm, RerankTemplate::default()).unwrap();
        let prompts: Vec<Vec<u32>> = ["first document", "zweites Dokument", ""]
            .iter()
            .map(|doc| untied.encode_pair("a query", doc).unwrap())
            .collect();
        let want = untied.score_tokens(&prompts).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let opts = DecoderGgufOptions {
            out_type: GgufOutType::F32,
            reranker: Some(RerankTemplate::default()),
            manifest: serde_json::Value::Null,
        };
        let first = tmp.path().join("first.gguf");
        write_decoder_gguf(&untied.lm, &first, &opts).unwrap();
        let g = GgufFile::open(&first).unwrap();
        assert!(
            g.tensor_info("output.weight").is_none(),
            "the untied head is dropped"
        );
        let back = Reranker::load(&first, None, &dev).unwrap();
        let got = back.score_tokens(&prompts).unwrap();
        let second = tmp.path().join("second.gguf");
        write_decoder_gguf(&back.lm, &second, &opts).unwrap();
        let again = Reranker::load(&second, None, &dev)
            .unwrap()
            .score_tokens(&prompts)
            .unwrap();
        // Without its rank head the tied reading of the file scores something else.
        let tied = Reranker::new(
            CausalLm::load(&first, &dev).unwrap(),
            RerankTemplate::default(),
        )
        .unwrap()
        .score_tokens(&prompts)
        .unwrap();
        for i in 0..prompts.len() {
            assert!(
                (got[i] - want[i]).abs() <= 1e-5 && (again[i] - want[i]).abs() <= 1e-5,
                "{i}: {} {} vs {}",
                got[i],
                again[i],
                want[i]
            );
        }
        assert!(
            tied.iter().zip(&want).any(|(a, b)| (a - b).abs() > 1e-3),
            "the check needs an untied head that differs: {tied:?} {want:?}"
        );
    }
}

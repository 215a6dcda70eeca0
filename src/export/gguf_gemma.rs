//! EmbeddingGemma encoders as GGUF files of llama.cpp's `gemma-embedding` architecture, with the
//! two Dense layers, so llama.cpp (`llama-embedding`, `llama-server --embeddings`) and therefore QMD
//! (`QMD_EMBED_MODEL`) run the tuned model.
//!
//! The layout is what llama.cpp's `convert_hf_to_gguf.py --sentence-transformers-dense-modules`
//! (`EmbeddingGemma`) writes and `src/models/gemma-embedding.cpp` reads:
//! * metadata `gemma-embedding.{context_length, embedding_length, block_count, feed_forward_length,
//!   attention.head_count, attention.head_count_kv, attention.key_length, attention.value_length,
//!   attention.layer_norm_rms_epsilon, attention.sliding_window, rope.freq_base, rope.freq_base_swa,
//!   dense_2_feat_in/out, dense_3_feat_in/out, pooling_type}`;
//! * tensors `token_embd`, `output_norm`, per block `blk.N.attn_{norm,q,k,v,output,q_norm,k_norm}`,
//!   `blk.N.post_attention_norm`, `blk.N.ffn_{norm,gate,up,down}`, `blk.N.post_ffw_norm`, and
//!   `dense_2`, `dense_3`; norm weights stored as `1 + w` (llama.cpp multiplies by the stored value);
//! * norms F32, every matrix (the embedding table included) the requested type, a Q8_0 matrix whose
//!   rows are not whole 32-value blocks F16, as the converter does.
//!
//! What llama.cpp cannot express is refused rather than silently changed: a `query_pre_attn_scalar`
//! other than the head width (llama.cpp scales by `1/√head_dim`), pooling other than mean, Dense
//! layers with a bias or an activation. A layer pattern other than llama.cpp's default (every 6th
//! layer global) is written as the `attention.sliding_window_pattern` array.
//!
//! The tokenizer (`tokenizer.ggml.model = "llama"`, SentencePiece): copied from the source GGUF when
//! the encoder was loaded from one; otherwise rebuilt from the folder's `tokenizer.json`, which must
//! be a SentencePiece-style BPE (`▁` for spaces, as transformers converts Gemma's `tokenizer.model`):
//! the pieces by id, a score per piece that orders merges as the file's merge list does (llama.cpp
//! merges the pair whose result scores highest), byte-fallback pieces as BYTE tokens, added tokens as
//! CONTROL (special) or USER_DEFINED, `<bos>`/`<eos>` from the post-processor template.
//!
//! Same model, same type → same bytes: nothing time-dependent is written (the caller's manifest,
//! with the training run's own dates, goes in under `tunelab.manifest`).
//!
//! ```no_run
//! use tunelab::export::gguf_bert::GgufOutType;
//! use tunelab::export::gguf_gemma::write_gemma_gguf;
//! use tunelab::model::gemma::GemmaEncoder;
//! let enc = GemmaEncoder::load("reports/embed/run/model", &burn::tensor::Device::flex()).unwrap();
//! let s = write_gemma_gguf(&enc, "tuned-f16.gguf".as_ref(), GgufOutType::F16, serde_json::json!({})).unwrap();
//! println!("{} tensors, sha256 {}", s.tensors, s.sha256);
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::export::gguf_bert::{GgufExportError, GgufExportSummary, GgufOutType, add_finite_tensor};
use crate::io::gguf::{GgufFile, GgufWriter, MetaValue};
use crate::model::bert::PoolingMode;
use crate::model::gemma::{DenseActivation, GemmaEncoder, LayerType};
use crate::model::gemma_gguf::{ARCH, DENSE_NAMES, gguf_name, is_norm};

/// llama.cpp's SentencePiece token types (`llama_token_type`).
mod token_type {
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

fn source_path(encoder: &GemmaEncoder) -> PathBuf {
    encoder.source_path()
}

/// `tokenizer.ggml.*` metadata of a SentencePiece-style BPE `tokenizer.json`, for `n_vocab` rows.
///
/// ```
/// use tunelab::export::gguf_gemma::spm_metadata_from_tokenizer;
/// let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/gemma/tuned/tokenizer.json");
/// let tok = tokenizers::Tokenizer::from_file(dir).unwrap();
/// let md = spm_metadata_from_tokenizer(&tok, 400, dir.as_ref()).unwrap();
/// assert!(md.iter().any(|(k, v)| k == "tokenizer.ggml.model" && v.as_str() == Some("llama")));
/// ```
pub fn spm_metadata_from_tokenizer(
    tokenizer: &tokenizers::Tokenizer,
    n_vocab: usize,
    path: &Path,
) -> Result<Vec<(String, MetaValue)>, GgufExportError> {
    let err = |reason: String| GgufExportError::Tokenizer {
        path: path.to_path_buf(),
        reason,
    };
    let json: serde_json::Value = tokenizer
        .to_string(false)
        .map_err(|e| err(format!("cannot serialise: {e}")))
        .and_then(|s| serde_json::from_str(&s).map_err(|e| err(format!("cannot parse: {e}"))))?;
    let model = &json["model"];
    let kind = model["type"].as_str().unwrap_or("?");
    if kind != "BPE" {
        return Err(err(format!(
            "model type '{kind}': llama.cpp's gemma-embedding vocabulary is SentencePiece (tokenizer.ggml.model = llama), \
             which tunelab writes from a SentencePiece-style BPE tokenizer.json (as transformers converts Gemma's)"
        )));
    }
    // Spaces must become '▁' as SentencePiece (and llama.cpp) do; and whether a '▁' is prepended.
    let text = json.to_string();
    let metaspace = text.contains("\"Metaspace\"");
    let replaces_space = metaspace || (text.contains("\"Replace\"") && text.contains('\u{2581}'));
    if !replaces_space {
        return Err(err("the tokenizer does not write spaces as '▁' (no Metaspace pre-tokenizer or Replace normalizer): not a SentencePiece-style vocabulary".into()));
    }
    let add_space_prefix = find_type(&json["pre_tokenizer"], "Metaspace").is_some_and(|m| {
        m["prepend_scheme"]
            .as_str()
            .map_or(m["add_prefix_space"].as_bool().unwrap_or(true), |s| {
                s != "never"
            })
    }) || find_type(&json["normalizer"], "Prepend").is_some();

    let byte_fallback = model["byte_fallback"].as_bool().unwrap_or(false);
    let mut by_id: Vec<Option<String>> = vec![None; n_vocab];
    let vocab = model["vocab"]
        .as_object()
        .ok_or_else(|| err("BPE model without a vocab".into()))?;
    for (tok, id) in vocab {
        let id = id
            .as_u64()
            .ok_or_else(|| err(format!("token {tok:?}: id is not a number")))?
            as usize;
        *by_id.get_mut(id).ok_or_else(|| {
            err(format!(
                "token {tok:?} has id {id}, beyond the model's {n_vocab} rows"
            ))
        })? = Some(tok.clone());
    }
    let mut added: HashMap<usize, bool> = HashMap::new();
    for t in json["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(content)) = (t["id"].as_u64(), t["content"].as_str()) else {
            return Err(err(format!("added token without id/content: {t}")));
        };
        let id = id as usize;
        *by_id.get_mut(id).ok_or_else(|| {
            err(format!(
                "added token {content:?} has id {id}, beyond the model's {n_vocab} rows"
            ))
        })? = Some(content.to_string());
        added.insert(id, t["special"].as_bool().unwrap_or(false));
    }
    // Merge rank → score: the earlier a merge, the higher the score of the piece it makes.
    let index: HashMap<&str, usize> = by_id
        .iter()
        .enumerate()
        .filter_map(|(i, t)| t.as_deref().map(|t| (t, i)))
        .collect();
    let merges = model["merges"].as_array().cloned().unwrap_or_default();
    let n_merges = merges.len();
    let mut scores = vec![f32::NAN; n_vocab];
    for (rank, m) in merges.iter().enumerate() {
        let (a, b) = match m {
            serde_json::Value::String(s) => s
                .split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string())),
            serde_json::Value::Array(p) if p.len() == 2 => Some((
                p[0].as_str().unwrap_or_default().to_string(),
                p[1].as_str().unwrap_or_default().to_string(),
            )),
            _ => None,
        }
        .ok_or_else(|| err(format!("merge {rank} is malformed: {m}")))?;
        if let Some(&id) = index.get(format!("{a}{b}").as_str())
            && scores[id].is_nan()
        {
            scores[id] = -(rank as f32);
        }
    }
    let unk = model["unk_token"]
        .as_str()
        .and_then(|u| index.get(u).copied());
    let mut tokens = Vec::with_capacity(n_vocab);
    let mut types = Vec::with_capacity(n_vocab);
    let mut out_scores = Vec::with_capacity(n_vocab);
    for (i, tok) in by_id.iter().enumerate() {
        let (text, ty, score) = match tok {
            None => (format!("[PAD{i}]"), token_type::UNUSED, -10_000.0),
            Some(t) => {
                let is_byte =
                    byte_fallback && t.len() == 6 && t.starts_with("<0x") && t.ends_with('>');
                let ty = match added.get(&i) {
                    Some(true) => token_type::CONTROL,
                    Some(false) => token_type::USER_DEFINED,
                    None if Some(i) == unk => token_type::UNKNOWN,
                    None if is_byte => token_type::BYTE,
                    None => token_type::NORMAL,
                };
                // Pieces no merge makes (single characters, bytes, specials) rank below every merge.
                let score = if scores[i].is_nan() {
                    -(n_merges as f32) - 1.0
                } else {
                    scores[i]
                };
                (
                    t.clone(),
                    ty,
                    if ty == token_type::NORMAL { score } else { 0.0 },
                )
            }
        };
        tokens.push(text);
        types.push(ty);
        out_scores.push(score);
    }
    // BOS/EOS: the special tokens the post-processor puts around a single text.
    let template = json["post_processor"]["single"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let special = |v: Option<&serde_json::Value>| {
        v.and_then(|v| v["SpecialToken"]["id"].as_str())
            .and_then(|t| index.get(t).copied())
    };
    let lead = special(template.first());
    let trail = if template.len() > 1 {
        special(template.last())
    } else {
        None
    };
    let bos = lead.or_else(|| index.get("<bos>").copied());
    let eos = trail.or_else(|| index.get("<eos>").copied());
    let pad = tokenizer
        .get_padding()
        .map(|p| p.pad_id as usize)
        .or_else(|| index.get("<pad>").copied());

    let mut md: Vec<(String, MetaValue)> = vec![
        ("tokenizer.ggml.model".into(), "llama".into()),
        ("tokenizer.ggml.pre".into(), "default".into()),
        ("tokenizer.ggml.tokens".into(), tokens.into()),
        (
            "tokenizer.ggml.scores".into(),
            MetaValue::Array(6, out_scores.into_iter().map(MetaValue::F32).collect()),
        ),
        ("tokenizer.ggml.token_type".into(), types.into()),
    ];
    let id = |v: usize| MetaValue::U32(v as u32);
    if let Some(b) = bos {
        md.push(("tokenizer.ggml.bos_token_id".into(), id(b)));
    }
    if let Some(e) = eos {
        md.push(("tokenizer.ggml.eos_token_id".into(), id(e)));
    }
    if let Some(u) = unk {
        md.push(("tokenizer.ggml.unknown_token_id".into(), id(u)));
    }
    if let Some(p) = pad {
        md.push(("tokenizer.ggml.padding_token_id".into(), id(p)));
    }
    md.push((
        "tokenizer.ggml.add_bos_token".into(),
        MetaValue::Bool(lead.is_some()),
    ));
    md.push((
        "tokenizer.ggml.add_eos_token".into(),
        MetaValue::Bool(trail.is_some()),
    ));
    md.push((
        "tokenizer.ggml.add_space_prefix".into(),
        MetaValue::Bool(add_space_prefix),
    ));
    Ok(md)
}

/// The first component of `type` inside a (possibly `Sequence`) normalizer / pre-tokenizer.
fn find_type<'a>(v: &'a serde_json::Value, ty: &str) -> Option<&'a serde_json::Value> {
    if v["type"].as_str() == Some(ty) {
        return Some(v);
    }
    for key in ["normalizers", "pretokenizers"] {
        for inner in v[key].as_array().into_iter().flatten() {
            if let Some(found) = find_type(inner, ty) {
                return Some(found);
            }
        }
    }
    None
}

/// Write `encoder` (adapters fused) as a `gemma-embedding` GGUF. Refuses to overwrite `path`.
pub fn write_gemma_gguf(
    encoder: &GemmaEncoder,
    path: &Path,
    ty: GgufOutType,
    manifest: serde_json::Value,
) -> Result<GgufExportSummary, GgufExportError> {
    if path.exists() {
        return Err(GgufExportError::Exists {
            path: path.to_path_buf(),
        });
    }
    let src = source_path(encoder);
    let unsupported = |reason: String| GgufExportError::Unsupported {
        path: src.clone(),
        reason,
    };
    let c = &encoder.model.transformer.config;
    if (c.query_pre_attn_scalar - c.head_dim as f64).abs() > 1e-9 {
        return Err(unsupported(format!(
            "query_pre_attn_scalar {} differs from head_dim {}: llama.cpp scales queries by 1/sqrt(head_dim)",
            c.query_pre_attn_scalar, c.head_dim
        )));
    }
    if encoder.pooling.modes.as_slice() != [PoolingMode::Mean] {
        return Err(unsupported(
            "pooling: llama.cpp's gemma-embedding pools by mean only (pooling_type 1)".into(),
        ));
    }
    let h = c.hidden_size;
    let dense: Vec<_> = encoder
        .model
        .dense
        .iter()
        .map(|d| (d.activation, d.linear.fused_weight()))
        .collect();
    match dense.as_slice() {
        [] => {}
        [(a2, (w2, b2)), (a3, (w3, b3))] => {
            if *a2 != DenseActivation::Identity
                || *a3 != DenseActivation::Identity
                || b2.is_some()
                || b3.is_some()
            {
                return Err(unsupported("Dense layers with a bias or an activation: llama.cpp's dense_2/dense_3 are plain matrices".into()));
            }
            let ([o2, i2], [o3, i3]) = (w2.dims(), w3.dims());
            if i2 != h || o3 != h || o2 != i3 {
                return Err(unsupported(format!(
                    "Dense shapes {h}→{i2}→{o2}, {i3}→{o3}: llama.cpp needs hidden → n → hidden"
                )));
            }
        }
        other => {
            return Err(unsupported(format!(
                "{} Dense layers: llama.cpp runs none or two (dense_2, dense_3)",
                other.len()
            )));
        }
    }
    let kinds = c.layer_kinds().map_err(&unsupported)?;
    let rope = |k| c.rope_base(k).map_err(&unsupported);
    let (rope_full, rope_swa) = (rope(LayerType::Full)?, rope(LayerType::Sliding)?);

    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", ARCH);
    w.add_metadata("general.type", "model");
    let name = encoder
        .source
        .as_ref()
        .and_then(|s| s.root.file_name())
        .or_else(|| encoder.gguf.as_ref().and_then(|p| p.file_stem()))
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "tunelab-embeddinggemma".into());
    w.add_metadata("general.name", name);
    let u = |v: usize| v as u32;
    let k = |s: &str| format!("{ARCH}.{s}");
    w.add_metadata(&k("block_count"), u(c.num_hidden_layers));
    w.add_metadata(&k("context_length"), u(c.max_position_embeddings));
    w.add_metadata(&k("embedding_length"), u(h));
    w.add_metadata(&k("feed_forward_length"), u(c.intermediate_size));
    w.add_metadata(&k("attention.head_count"), u(c.num_attention_heads));
    w.add_metadata(&k("attention.head_count_kv"), u(c.num_key_value_heads));
    w.add_metadata(&k("rope.freq_base"), rope_full as f32);
    w.add_metadata(&k("rope.freq_base_swa"), rope_swa as f32);
    w.add_metadata(
        &k("attention.layer_norm_rms_epsilon"),
        c.rms_norm_eps as f32,
    );
    w.add_metadata(&k("attention.key_length"), u(c.head_dim));
    w.add_metadata(&k("attention.value_length"), u(c.head_dim));
    w.add_metadata("general.file_type", ty.file_type());
    w.add_metadata(&k("attention.sliding_window"), u(c.sliding_window));
    // llama.cpp assumes every 6th layer global unless told otherwise.
    let default_pattern = kinds
        .iter()
        .enumerate()
        .all(|(i, t)| (*t == LayerType::Sliding) == (i % 6 < 5));
    if !default_pattern {
        let flags = kinds
            .iter()
            .map(|t| MetaValue::Bool(*t == LayerType::Sliding))
            .collect();
        w.add_metadata(
            &k("attention.sliding_window_pattern"),
            MetaValue::Array(7, flags),
        );
    }
    if let [(_, (w2, _)), (_, (w3, _))] = dense.as_slice() {
        let ([o2, i2], [o3, i3]) = (w2.dims(), w3.dims());
        w.add_metadata(&k("dense_2_feat_in"), u(i2));
        w.add_metadata(&k("dense_2_feat_out"), u(o2));
        w.add_metadata(&k("dense_3_feat_in"), u(i3));
        w.add_metadata(&k("dense_3_feat_out"), u(o3));
    }
    w.add_metadata(&k("pooling_type"), 1u32);
    w.add_metadata("general.quantization_version", 2u32);

    // Tokenizer: the source GGUF's own metadata, or rebuilt from tokenizer.json.
    let tokenizer_md = match &encoder.gguf {
        Some(p) => {
            let g = GgufFile::open(p)?;
            g.metadata
                .iter()
                .filter(|(k, _)| k.starts_with("tokenizer."))
                .cloned()
                .collect()
        }
        None => spm_metadata_from_tokenizer(
            encoder.tokenizer.inner(),
            c.vocab_size,
            encoder.tokenizer.path(),
        )?,
    };
    for (key, v) in tokenizer_md {
        w.add_metadata(&key, v);
    }

    let record = serde_json::json!({
        "tunelab_version": crate::version(),
        "format": "gguf",
        "architecture": ARCH,
        "out_type": ty,
        // The name only: a full path would make the bytes depend on where the model sits.
        "source_model": src.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        "normalize": encoder.normalize,
        "max_seq_length": encoder.max_seq_len(),
        "prompts": encoder.prompts,
        "manifest": manifest,
    });
    w.add_metadata("tunelab.version", crate::version());
    w.add_metadata("tunelab.normalize", encoder.normalize);
    w.add_metadata("tunelab.max_seq_length", u(encoder.max_seq_len()));
    w.add_metadata("tunelab.manifest", MetaValue::String(record.to_string()));

    let mut n = 0;
    let mut put = |w: &mut GgufWriter, gname: &str, shape: &[usize], values: &[f32]| -> Result<(), GgufExportError> {
        add_finite_tensor(w, &src, gname, gname, shape, ty.tensor_type(shape), values)?;
        n += 1;
        Ok(())
    };
    for (i, (_, (weight, _))) in dense.into_iter().enumerate() {
        let shape = weight.dims().to_vec();
        let values = weight
            .into_data()
            .try_into_vec_as::<f32>()
            .expect("f32 tensor data");
        put(
            &mut w,
            &format!("{}.weight", DENSE_NAMES[i]),
            &shape,
            &values,
        )?;
    }
    for (hf, shape, mut values) in encoder.model.transformer.hf_tensors() {
        let gname = gguf_name(&hf).ok_or_else(|| GgufExportError::Tensor {
            path: src.clone(),
            tensor: hf.clone(),
            reason: "no llama.cpp gemma-embedding tensor corresponds to it".into(),
        })?;
        if is_norm(&hf) {
            // llama.cpp multiplies by the stored weight: store Gemma's (1 + w).
            values.iter_mut().for_each(|v| *v += 1.0);
        }
        put(&mut w, &gname, &shape, &values)?;
    }
    w.write(path)?;
    GgufExportSummary::of_written(path, n, ty)
}

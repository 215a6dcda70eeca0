//! EmbeddingGemma: the Gemma 3 text encoder with bidirectional attention, as QMD embeds with it
//! (`embeddinggemma-300M`), followed by sentence-transformers' mean `Pooling`, two `Dense`
//! layers (768 → 3072 → 768, no bias, identity activation) and `Normalize`.
//!
//! The blocks follow `transformers`' `modeling_gemma3.py` (`Gemma3TextModel` with
//! `use_bidirectional_attention: true`) and keep its tensor names (`embed_tokens`,
//! `layers.{i}.self_attn.q_proj`, `layers.{i}.pre_feedforward_layernorm`, `norm`), so checkpoints
//! load by name:
//! - embeddings scaled by √hidden;
//! - Gemma's RMSNorm `x / rms(x) · (1 + w)`, also on queries and keys per head;
//! - grouped-query attention scaled by `query_pre_attn_scalar^-½`, no causal mask; *sliding*
//!   layers see only keys within `sliding_window / 2` positions on either side (transformers turns
//!   the window into the exclusive bound `sliding_window // 2 + 1` for bidirectional models;
//!   llama.cpp's symmetric window masks `|i − j| > n_swa / 2`: the same set);
//! - RoPE with `rope_theta` on full-attention layers and `rope_local_base_freq` on sliding ones;
//! - four norms per block (before and after attention and the GELU-tanh gated MLP).
//!
//! ```no_run
//! use tunelab::model::gemma::GemmaEncoder;
//! let enc = GemmaEncoder::load("models/embeddinggemma-300m", &burn::tensor::Device::flex()).unwrap();
//! let q = enc.embed_with_prompt(&["how do I cook rice"], enc.prompt("query"), 8).unwrap();
//! assert_eq!(q[0].len(), 768);
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::{Module, Param};
use burn::nn::{Embedding, Linear};
use burn::tensor::activation::{gelu_approximate, softmax, tanh};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::io::hf::{HfError, ModelFolder};
use crate::io::safetensors::{Weights, WeightsError};
use crate::io::tokenizer::{TextTokenizer, TokenTensors, TokenizerError};
use crate::lora::{AdaptableLinear, AdapterWeights, LoraConfig, LoraError, LoraFactors};
use crate::model::bert::{
    BertError, CheckpointSource, ParamSource, Pooling, Prompts, RandomSource, l2_normalize,
};

/// `config.json` of a Gemma 3 text model (`Gemma3TextModel`, `model_type: gemma3_text`).
/// Both spellings of RoPE settings are read: transformers 4's `rope_theta` +
/// `rope_local_base_freq`, and transformers 5's per-layer-type `rope_parameters`. Fields we do
/// not use are kept in `extra` so an export writes them back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GemmaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    #[serde(default = "defaults::head_dim")]
    pub head_dim: usize,
    #[serde(default = "defaults::rms_norm_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base of full-attention layers (transformers 4 spelling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    /// RoPE base of sliding-window layers (transformers 4 spelling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_local_base_freq: Option<f64>,
    /// transformers 5: `{"full_attention": {"rope_type", "rope_theta"}, "sliding_attention": {…}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<serde_json::Value>,
    /// The window as the checkpoint states it (512 for EmbeddingGemma): a token sees keys up to
    /// `sliding_window / 2` positions away on sliding layers.
    #[serde(default = "defaults::sliding_window")]
    pub sliding_window: usize,
    /// `sliding_attention` / `full_attention` per layer; when absent, every
    /// `sliding_window_pattern`-th layer is full (the old spelling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_types: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window_pattern: Option<usize>,
    /// Written back as an integer when whole: transformers 5's strict config refuses `256.0`.
    #[serde(default = "defaults::query_pre_attn_scalar", serialize_with = "whole_as_int")]
    pub query_pre_attn_scalar: f64,
    #[serde(default = "defaults::hidden_activation")]
    pub hidden_activation: String,
    #[serde(default = "defaults::max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub use_bidirectional_attention: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attn_logit_softcapping: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_type: Option<String>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// `(name, shape, values)` of tensors to write.
pub type NamedTensors = Vec<(String, Vec<usize>, Vec<f32>)>;

fn whole_as_int<S: serde::Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
    if x.fract() == 0.0 && x.abs() < 1e15 { s.serialize_i64(*x as i64) } else { s.serialize_f64(*x) }
}

mod defaults {
    pub fn head_dim() -> usize {
        256
    }
    pub fn rms_norm_eps() -> f64 {
        1e-6
    }
    pub fn sliding_window() -> usize {
        4096
    }
    pub fn query_pre_attn_scalar() -> f64 {
        256.0
    }
    pub fn hidden_activation() -> String {
        "gelu_pytorch_tanh".into()
    }
    pub fn max_position_embeddings() -> usize {
        2048
    }
}

/// Whether a layer attends to every token or to a window around each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LayerType {
    Full,
    Sliding,
}

impl GemmaConfig {
    /// Read and check `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, GemmaError> {
        let path = path.as_ref();
        let config: Self = crate::io::hf::read_json(path)?;
        config
            .validate()
            .map_err(|(field, reason)| GemmaError::Config {
                path: path.display().to_string(),
                field,
                reason,
            })?;
        Ok(config)
    }

    /// A small configuration for tests: both layer types, GQA, a head width unlike
    /// `hidden / heads`, and a window short enough that ordinary sentences exceed it.
    pub fn tiny(vocab_size: usize) -> Self {
        Self {
            vocab_size,
            hidden_size: 32,
            intermediate_size: 48,
            num_hidden_layers: 3,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 12,
            rms_norm_eps: 1e-6,
            rope_theta: Some(10_000.0),
            rope_local_base_freq: Some(100.0),
            rope_parameters: None,
            rope_scaling: None,
            sliding_window: 6,
            layer_types: Some(vec![
                "sliding_attention".into(),
                "full_attention".into(),
                "sliding_attention".into(),
            ]),
            sliding_window_pattern: None,
            query_pre_attn_scalar: 10.0,
            hidden_activation: defaults::hidden_activation(),
            max_position_embeddings: 64,
            use_bidirectional_attention: true,
            attn_logit_softcapping: None,
            model_type: Some("gemma3_text".into()),
            extra: Default::default(),
        }
    }

    /// The type of each layer, bottom first.
    pub fn layer_kinds(&self) -> Result<Vec<LayerType>, String> {
        match &self.layer_types {
            Some(types) => types
                .iter()
                .map(|t| match t.as_str() {
                    "full_attention" => Ok(LayerType::Full),
                    "sliding_attention" => Ok(LayerType::Sliding),
                    other => Err(format!("layer type '{other}' is not supported")),
                })
                .collect(),
            None => {
                let pattern = self.sliding_window_pattern.unwrap_or(6).max(1);
                Ok((0..self.num_hidden_layers)
                    .map(|i| {
                        if (i + 1) % pattern == 0 {
                            LayerType::Full
                        } else {
                            LayerType::Sliding
                        }
                    })
                    .collect())
            }
        }
    }

    /// How far a token sees on sliding layers: keys with `|i − j| ≤ radius`.
    pub fn window_radius(&self) -> usize {
        self.sliding_window / 2
    }

    /// RoPE base of a layer type, from whichever spelling the file used.
    pub fn rope_base(&self, kind: LayerType) -> Result<f64, String> {
        let (key, old, default) = match kind {
            LayerType::Full => ("full_attention", self.rope_theta, 1_000_000.0),
            LayerType::Sliding => ("sliding_attention", self.rope_local_base_freq, 10_000.0),
        };
        if let Some(p) = self.rope_parameters.as_ref().and_then(|p| p.get(key)) {
            let ty = p
                .get("rope_type")
                .and_then(|t| t.as_str())
                .unwrap_or("default");
            if ty != "default" {
                return Err(format!(
                    "rope_parameters.{key}.rope_type '{ty}' is not supported (default is)"
                ));
            }
            return p
                .get("rope_theta")
                .and_then(|t| t.as_f64())
                .ok_or_else(|| format!("rope_parameters.{key}.rope_theta is missing"));
        }
        Ok(old.unwrap_or(default))
    }

    /// Check what this implementation supports; returns `(field, reason)` on failure.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let fail = |f: &str, r: String| Err((f.to_string(), r));
        if let Some(t) = &self.model_type
            && t != "gemma3_text"
            && t != "gemma3"
        {
            return fail(
                "model_type",
                format!("'{t}' is not supported (expected 'gemma3_text')"),
            );
        }
        if !self.use_bidirectional_attention {
            // Without it Gemma 3 is a causal decoder: a chat model, not EmbeddingGemma.
            return fail(
                "use_bidirectional_attention",
                "must be true for a sentence encoder (EmbeddingGemma)".into(),
            );
        }
        if self.num_key_value_heads == 0
            || !self
                .num_attention_heads
                .is_multiple_of(self.num_key_value_heads)
        {
            return fail(
                "num_key_value_heads",
                format!(
                    "{} attention heads are not a multiple of {} key/value heads",
                    self.num_attention_heads, self.num_key_value_heads
                ),
            );
        }
        if self.attn_logit_softcapping.is_some() {
            return fail(
                "attn_logit_softcapping",
                "attention logit soft-capping is not supported".into(),
            );
        }
        if self.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return fail("rope_scaling", "RoPE scaling is not supported".into());
        }
        if self.hidden_activation != "gelu_pytorch_tanh" && self.hidden_activation != "gelu_new" {
            return fail(
                "hidden_activation",
                format!(
                    "'{}' is not supported (gelu_pytorch_tanh is)",
                    self.hidden_activation
                ),
            );
        }
        let kinds = self
            .layer_kinds()
            .map_err(|r| ("layer_types".to_string(), r))?;
        if kinds.len() != self.num_hidden_layers {
            return fail(
                "layer_types",
                format!(
                    "{} entries for {} layers",
                    kinds.len(),
                    self.num_hidden_layers
                ),
            );
        }
        for kind in [LayerType::Full, LayerType::Sliding] {
            self.rope_base(kind)
                .map_err(|r| ("rope_parameters".to_string(), r))?;
        }
        Ok(())
    }
}

/// Why an EmbeddingGemma model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum GemmaError {
    #[error(transparent)]
    Folder(#[from] HfError),
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Params(#[from] BertError),
    #[error("{path}: {field}: {reason}")]
    Config {
        path: String,
        field: String,
        reason: String,
    },
    #[error(transparent)]
    Gguf(#[from] crate::io::gguf::GgufError),
    #[error(transparent)]
    GgufTokenizer(#[from] crate::io::gguf::TokenizerError),
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .try_into_vec_as::<f32>()
        .expect("f32 tensor data")
}

/// A bias-free linear layer from `{name}.weight` `[out, in]` (burn stores `[in, out]`).
fn load_linear(
    src: &mut dyn ParamSource,
    name: &str,
    d_in: usize,
    d_out: usize,
    device: &Device,
) -> Result<AdaptableLinear, GemmaError> {
    let w = src.get(&format!("{name}.weight"), &[d_out, d_in])?;
    let w = transpose(&w.try_to_vec::<f32>().expect("f32 data"), d_out, d_in);
    Ok(AdaptableLinear::Base(Linear {
        weight: Param::from_data(TensorData::new(w, [d_in, d_out]), device),
        bias: None,
    }))
}

fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = x[r * cols + c];
        }
    }
    out
}

fn export_linear(out: &mut Vec<(String, Vec<usize>, Vec<f32>)>, name: &str, l: &AdaptableLinear) {
    let (w, bias) = l.fused_weight();
    let [d_out, d_in] = w.dims();
    out.push((format!("{name}.weight"), vec![d_out, d_in], values(w)));
    if let Some(b) = bias {
        out.push((format!("{name}.bias"), vec![d_out], values(b)));
    }
}

// ---------------------------------------------------------------------------------------------
// The network.
// ---------------------------------------------------------------------------------------------

/// Gemma's RMSNorm: `x / √(mean(x²) + eps) · (1 + w)`, so a zero weight is the identity scale.
#[derive(Module, Debug)]
pub struct GemmaRmsNorm {
    pub weight: Param<Tensor<1>>,
    pub eps: f64,
}

impl GemmaRmsNorm {
    fn load(
        src: &mut dyn ParamSource,
        name: &str,
        d: usize,
        eps: f64,
        device: &Device,
    ) -> Result<Self, GemmaError> {
        Ok(Self {
            weight: Param::from_data(src.get(&format!("{name}.weight"), &[d])?, device),
            eps,
        })
    }

    /// Normalises the last axis, in f32 as transformers' `Gemma3RMSNorm` does (one operation:
    /// `model::rms_norm`).
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        crate::model::rms_norm::rms_norm_scaled(x, self.weight.val().add_scalar(1.0), self.eps)
    }
}

/// Rotary tables `[seq, head_dim]` for positions `0..seq`: `cos`/`sin` of `pos · θ^(−2i/d)`,
/// the frequencies repeated for both halves (transformers' layout), computed in f32 as there.
fn rope_tables(base: f64, head_dim: usize, seq: usize, device: &Device) -> (Tensor<2>, Tensor<2>) {
    let half = head_dim / 2;
    let inv: Vec<f32> = (0..half)
        .map(|i| 1.0 / (base as f32).powf((2 * i) as f32 / head_dim as f32))
        .collect();
    let mut cos = Vec::with_capacity(seq * head_dim);
    let mut sin = Vec::with_capacity(seq * head_dim);
    for p in 0..seq {
        for j in 0..head_dim {
            let angle = p as f32 * inv[j % half];
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    (
        Tensor::from_data(TensorData::new(cos, [seq, head_dim]), device),
        Tensor::from_data(TensorData::new(sin, [seq, head_dim]), device),
    )
}

/// Grouped-query self-attention with per-head q/k RMSNorm and RoPE (`self_attn`).
#[derive(Module, Debug)]
pub struct GemmaAttention {
    pub q_proj: AdaptableLinear,
    pub k_proj: AdaptableLinear,
    pub v_proj: AdaptableLinear,
    pub o_proj: AdaptableLinear,
    pub q_norm: GemmaRmsNorm,
    pub k_norm: GemmaRmsNorm,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// `query_pre_attn_scalar^-½` (not `head_dim^-½`: the two differ in some Gemma sizes).
    pub scaling: f64,
}

impl GemmaAttention {
    fn load(
        c: &GemmaConfig,
        src: &mut dyn ParamSource,
        p: &str,
        device: &Device,
    ) -> Result<Self, GemmaError> {
        let (h, hd) = (c.hidden_size, c.head_dim);
        let (q_out, kv_out) = (c.num_attention_heads * hd, c.num_key_value_heads * hd);
        Ok(Self {
            q_proj: load_linear(src, &format!("{p}.q_proj"), h, q_out, device)?,
            k_proj: load_linear(src, &format!("{p}.k_proj"), h, kv_out, device)?,
            v_proj: load_linear(src, &format!("{p}.v_proj"), h, kv_out, device)?,
            o_proj: load_linear(src, &format!("{p}.o_proj"), q_out, h, device)?,
            q_norm: GemmaRmsNorm::load(src, &format!("{p}.q_norm"), hd, c.rms_norm_eps, device)?,
            k_norm: GemmaRmsNorm::load(src, &format!("{p}.k_norm"), hd, c.rms_norm_eps, device)?,
            n_heads: c.num_attention_heads,
            n_kv_heads: c.num_key_value_heads,
            head_dim: hd,
            scaling: c.query_pre_attn_scalar.powf(-0.5),
        })
    }

    /// `x`: `[batch, seq, hidden]`; `cos`/`sin`: `[seq, head_dim]`; `mask`: additive
    /// `[batch, 1, seq, seq]` (0 where a key is visible, −1e30 where not).
    pub fn forward(
        &self,
        x: Tensor<3>,
        cos: &Tensor<2>,
        sin: &Tensor<2>,
        mask: &Tensor<4>,
    ) -> Tensor<3> {
        let [b, t, _] = x.dims();
        let (h, kvh, hd) = (self.n_heads, self.n_kv_heads, self.head_dim);
        // Per-head norm and RoPE (`model::rope`) on the last axis, before the heads are moved in
        // front of the positions (RoPE moves them as it writes): contiguous rows.
        let heads = |y: Tensor<3>, n: usize| y.reshape([b, t, n, hd]);
        let rotate = |y: Tensor<4>| crate::model::rope::rope(y, cos.clone(), sin.clone());
        let q = rotate(self.q_norm.forward(heads(self.q_proj.forward(x.clone()), h)));
        let k = rotate(self.k_norm.forward(heads(self.k_proj.forward(x.clone()), kvh)));
        let v = heads(self.v_proj.forward(x), kvh).swap_dims(1, 2);
        // Grouped-query attention without copying K/V: the query heads sharing one K/V head are
        // folded into the sequence axis (transformers' repeat_kv gives query head i K/V head i / rep).
        let rep = h / kvh;
        let scores = q
            .reshape([b, kvh, rep * t, hd])
            .matmul(k.swap_dims(2, 3))
            .mul_scalar(self.scaling)
            .reshape([b, h, t, t]);
        let probs = softmax(scores + mask.clone(), 3).reshape([b, kvh, rep * t, t]);
        let out = probs
            .matmul(v)
            .reshape([b, h, t, hd])
            .swap_dims(1, 2)
            .reshape([b, t, h * hd]);
        self.o_proj.forward(out)
    }
}

/// GELU-tanh gated feed-forward: `down(gelu_tanh(gate(x)) · up(x))`.
#[derive(Module, Debug)]
pub struct GemmaMlp {
    pub gate_proj: AdaptableLinear,
    pub up_proj: AdaptableLinear,
    pub down_proj: AdaptableLinear,
}

impl GemmaMlp {
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.down_proj
            .forward(gelu_approximate(self.gate_proj.forward(x.clone())) * self.up_proj.forward(x))
    }
}

/// One block: norms before and after both attention and MLP (Gemma 2/3's "sandwich").
#[derive(Module, Debug)]
pub struct GemmaLayer {
    pub input_layernorm: GemmaRmsNorm,
    pub self_attn: GemmaAttention,
    pub post_attention_layernorm: GemmaRmsNorm,
    pub pre_feedforward_layernorm: GemmaRmsNorm,
    pub mlp: GemmaMlp,
    pub post_feedforward_layernorm: GemmaRmsNorm,
    pub sliding: bool,
}

impl GemmaLayer {
    fn load(
        c: &GemmaConfig,
        src: &mut dyn ParamSource,
        i: usize,
        sliding: bool,
        device: &Device,
    ) -> Result<Self, GemmaError> {
        let p = format!("layers.{i}");
        let (h, eps) = (c.hidden_size, c.rms_norm_eps);
        let norm = |src: &mut dyn ParamSource, n: &str| {
            GemmaRmsNorm::load(src, &format!("{p}.{n}"), h, eps, device)
        };
        Ok(Self {
            input_layernorm: norm(src, "input_layernorm")?,
            self_attn: GemmaAttention::load(c, src, &format!("{p}.self_attn"), device)?,
            post_attention_layernorm: norm(src, "post_attention_layernorm")?,
            pre_feedforward_layernorm: norm(src, "pre_feedforward_layernorm")?,
            mlp: GemmaMlp {
                gate_proj: load_linear(
                    src,
                    &format!("{p}.mlp.gate_proj"),
                    h,
                    c.intermediate_size,
                    device,
                )?,
                up_proj: load_linear(
                    src,
                    &format!("{p}.mlp.up_proj"),
                    h,
                    c.intermediate_size,
                    device,
                )?,
                down_proj: load_linear(
                    src,
                    &format!("{p}.mlp.down_proj"),
                    c.intermediate_size,
                    h,
                    device,
                )?,
            },
            post_feedforward_layernorm: norm(src, "post_feedforward_layernorm")?,
            sliding,
        })
    }

    pub fn forward(
        &self,
        x: Tensor<3>,
        cos: &Tensor<2>,
        sin: &Tensor<2>,
        mask: &Tensor<4>,
    ) -> Tensor<3> {
        let attended =
            self.self_attn
                .forward(self.input_layernorm.forward(x.clone()), cos, sin, mask);
        let x = x + self.post_attention_layernorm.forward(attended);
        let fed = self
            .mlp
            .forward(self.pre_feedforward_layernorm.forward(x.clone()));
        x + self.post_feedforward_layernorm.forward(fed)
    }

    /// The linear layers under their names inside the block.
    fn linears(&self) -> [(&'static str, &AdaptableLinear); 7] {
        [
            ("self_attn.q_proj", &self.self_attn.q_proj),
            ("self_attn.k_proj", &self.self_attn.k_proj),
            ("self_attn.v_proj", &self.self_attn.v_proj),
            ("self_attn.o_proj", &self.self_attn.o_proj),
            ("mlp.gate_proj", &self.mlp.gate_proj),
            ("mlp.up_proj", &self.mlp.up_proj),
            ("mlp.down_proj", &self.mlp.down_proj),
        ]
    }

    pub(crate) fn map_linears<E>(
        mut self,
        mut f: impl FnMut(&str, AdaptableLinear) -> Result<AdaptableLinear, E>,
    ) -> Result<Self, E> {
        let a = &mut self.self_attn;
        a.q_proj = f("self_attn.q_proj", a.q_proj.clone())?;
        a.k_proj = f("self_attn.k_proj", a.k_proj.clone())?;
        a.v_proj = f("self_attn.v_proj", a.v_proj.clone())?;
        a.o_proj = f("self_attn.o_proj", a.o_proj.clone())?;
        let m = &mut self.mlp;
        m.gate_proj = f("mlp.gate_proj", m.gate_proj.clone())?;
        m.up_proj = f("mlp.up_proj", m.up_proj.clone())?;
        m.down_proj = f("mlp.down_proj", m.down_proj.clone())?;
        Ok(self)
    }
}

/// `Gemma3TextModel`: scaled embeddings, the blocks, the final norm.
#[derive(Module, Debug)]
pub struct GemmaModel {
    pub embed_tokens: Embedding,
    pub layers: Vec<GemmaLayer>,
    pub norm: GemmaRmsNorm,
    #[module(skip)]
    pub config: GemmaConfig,
}

impl GemmaModel {
    /// Build from a parameter source (a checkpoint or [`RandomSource`]).
    pub fn load(
        config: &GemmaConfig,
        src: &mut dyn ParamSource,
        device: &Device,
    ) -> Result<Self, GemmaError> {
        let cfg_err = |field: &str, reason: String| GemmaError::Config {
            path: "config.json".into(),
            field: field.into(),
            reason,
        };
        config.validate().map_err(|(f, r)| cfg_err(&f, r))?;
        let kinds = config
            .layer_kinds()
            .map_err(|r| cfg_err("layer_types", r))?;
        let (v, h) = (config.vocab_size, config.hidden_size);
        let embed_tokens = Embedding {
            weight: Param::from_data(src.get("embed_tokens.weight", &[v, h])?, device),
        };
        let layers = kinds
            .iter()
            .enumerate()
            .map(|(i, k)| GemmaLayer::load(config, src, i, *k == LayerType::Sliding, device))
            .collect::<Result<Vec<_>, _>>()?;
        let norm = GemmaRmsNorm::load(src, "norm", h, config.rms_norm_eps, device)?;
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            config: config.clone(),
        })
    }

    /// A randomly initialised model (seeded), for tests.
    pub fn random(config: &GemmaConfig, seed: u64, device: &Device) -> Self {
        Self::load(config, &mut RandomSource::new(seed, 0.2), device)
            .expect("random source never fails")
    }

    /// Additive attention masks `[batch, 1, seq, seq]` for full and sliding layers: padding keys
    /// hidden everywhere, keys further than the window radius hidden on sliding layers.
    fn masks(&self, attention_mask: &Tensor<2, Int>) -> (Tensor<4>, Tensor<4>) {
        let [b, s] = attention_mask.dims();
        let device = attention_mask.device();
        // −1e30 rather than −inf: a row with every key hidden (a padding query far from every
        // token) stays finite, and padding rows are never pooled.
        let hidden = -1e30f32;
        let pad = attention_mask
            .clone()
            .float()
            .sub_scalar(1.0)
            .mul_scalar(-hidden)
            .reshape([b, 1, 1, s])
            .expand([b, 1, s, s]);
        let r = self.config.window_radius();
        let band: Vec<f32> = (0..s * s)
            .map(|k| {
                if (k / s).abs_diff(k % s) > r {
                    hidden
                } else {
                    0.0
                }
            })
            .collect();
        let band =
            Tensor::<2>::from_data(TensorData::new(band, [s, s]), &device).reshape([1, 1, s, s]);
        (pad.clone(), pad + band)
    }

    /// `[batch, seq]` ids and attention mask (1 = token, 0 = padding, right-padded) →
    /// `[batch, seq, hidden]` after the final norm.
    pub fn forward(&self, input_ids: Tensor<2, Int>, attention_mask: Tensor<2, Int>) -> Tensor<3> {
        let [_, s] = input_ids.dims();
        let device = input_ids.device();
        let c = &self.config;
        // transformers multiplies by √hidden cast to the weight dtype: exact in f32 here.
        let mut x = self
            .embed_tokens
            .forward(input_ids)
            .mul_scalar((c.hidden_size as f32).sqrt());
        let (full_mask, sliding_mask) = self.masks(&attention_mask);
        let base = |k| c.rope_base(k).expect("validated at load");
        let (gcos, gsin) = rope_tables(base(LayerType::Full), c.head_dim, s, &device);
        let (lcos, lsin) = rope_tables(base(LayerType::Sliding), c.head_dim, s, &device);
        for layer in &self.layers {
            x = if layer.sliding {
                layer.forward(x, &lcos, &lsin, &sliding_mask)
            } else {
                layer.forward(x, &gcos, &gsin, &full_mask)
            };
        }
        self.norm.forward(x)
    }

    /// Linear layers adapted when a LoRA config names no targets: the attention projections
    /// (PEFT has no Gemma default; these are what sentence-transformers' LoRA examples use).
    pub const DEFAULT_LORA_TARGETS: [&'static str; 4] = ["q_proj", "k_proj", "v_proj", "o_proj"];

    /// All parameters under their Hugging Face names and layouts (`[out, in]`), adapters fused.
    pub fn hf_tensors(&self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let mut out = Vec::new();
        let w = self.embed_tokens.weight.val();
        out.push(("embed_tokens.weight".into(), w.dims().to_vec(), values(w)));
        let norm = |out: &mut Vec<_>, name: String, n: &GemmaRmsNorm| {
            let w = n.weight.val();
            out.push((format!("{name}.weight"), w.dims().to_vec(), values(w)));
        };
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("layers.{i}");
            norm(&mut out, format!("{p}.input_layernorm"), &l.input_layernorm);
            for (name, lin) in l.linears() {
                export_linear(&mut out, &format!("{p}.{name}"), lin);
            }
            norm(
                &mut out,
                format!("{p}.self_attn.q_norm"),
                &l.self_attn.q_norm,
            );
            norm(
                &mut out,
                format!("{p}.self_attn.k_norm"),
                &l.self_attn.k_norm,
            );
            norm(
                &mut out,
                format!("{p}.post_attention_layernorm"),
                &l.post_attention_layernorm,
            );
            norm(
                &mut out,
                format!("{p}.pre_feedforward_layernorm"),
                &l.pre_feedforward_layernorm,
            );
            norm(
                &mut out,
                format!("{p}.post_feedforward_layernorm"),
                &l.post_feedforward_layernorm,
            );
        }
        norm(&mut out, "norm".into(), &self.norm);
        out
    }
}

// ---------------------------------------------------------------------------------------------
// sentence-transformers modules after the transformer.
// ---------------------------------------------------------------------------------------------

/// The activation of a sentence-transformers `Dense` module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DenseActivation {
    /// `torch.nn.modules.linear.Identity` (EmbeddingGemma).
    Identity,
    /// `torch.nn.modules.activation.Tanh` (sentence-transformers' default).
    Tanh,
}

impl DenseActivation {
    fn parse(name: &str) -> Result<Self, String> {
        match name.rsplit('.').next().unwrap_or(name) {
            "Identity" => Ok(Self::Identity),
            "Tanh" => Ok(Self::Tanh),
            other => Err(format!(
                "activation '{name}' is not supported (Identity, Tanh are; got {other})"
            )),
        }
    }

    /// The class path sentence-transformers writes in the module's `config.json`.
    pub fn st_name(self) -> &'static str {
        match self {
            Self::Identity => "torch.nn.modules.linear.Identity",
            Self::Tanh => "torch.nn.modules.activation.Tanh",
        }
    }
}

/// `{N}_Dense/config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DenseConfig {
    pub in_features: usize,
    pub out_features: usize,
    #[serde(default = "dense_bias")]
    pub bias: bool,
    #[serde(default = "dense_activation")]
    pub activation_function: String,
}

fn dense_bias() -> bool {
    true
}
fn dense_activation() -> String {
    DenseActivation::Tanh.st_name().into()
}

/// A sentence-transformers `Dense` module: `activation(x W + b)` on the pooled vector. Its
/// weights are `linear.weight` `[out, in]` and `linear.bias` in the folder's `model.safetensors`.
#[derive(Module, Debug)]
pub struct Dense {
    pub linear: AdaptableLinear,
    #[module(skip)]
    pub activation: DenseActivation,
}

impl Dense {
    /// Load a `Dense` module folder.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, GemmaError> {
        let config_path = dir.join("config.json");
        let c: DenseConfig = crate::io::hf::read_json(&config_path)?;
        let cfg_err = |field: &str, reason: String| GemmaError::Config {
            path: config_path.display().to_string(),
            field: field.into(),
            reason,
        };
        let activation = DenseActivation::parse(&c.activation_function)
            .map_err(|r| cfg_err("activation_function", r))?;
        let file = dir.join("model.safetensors");
        if !file.exists() {
            let hint = if dir.join("pytorch_model.bin").exists() {
                " (pytorch_model.bin is not read: re-save with sentence-transformers >= 3, which writes safetensors)"
            } else {
                ""
            };
            return Err(HfError::MissingFile {
                dir: dir.to_path_buf(),
                file: "model.safetensors".into(),
                hint: hint.into(),
            }
            .into());
        }
        let weights = Weights::open_file(&file)?;
        let w = weights.read_data_checked("linear.weight", &[c.out_features, c.in_features])?;
        let w = transpose(
            &w.try_to_vec::<f32>().expect("f32 data"),
            c.out_features,
            c.in_features,
        );
        let bias = if c.bias {
            Some(Param::from_data(
                weights.read_data_checked("linear.bias", &[c.out_features])?,
                device,
            ))
        } else {
            None
        };
        let linear = Linear {
            weight: Param::from_data(TensorData::new(w, [c.in_features, c.out_features]), device),
            bias,
        };
        Ok(Self {
            linear: AdaptableLinear::Base(linear),
            activation,
        })
    }

    /// A seeded random `Dense` module without bias (EmbeddingGemma's shape), for tests.
    pub fn random(d_in: usize, d_out: usize, seed: u64, device: &Device) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let bound = 1.0 / (d_in as f32).sqrt();
        let w: Vec<f32> = (0..d_in * d_out)
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        let linear = Linear {
            weight: Param::from_data(TensorData::new(w, [d_in, d_out]), device),
            bias: None,
        };
        Self {
            linear: AdaptableLinear::Base(linear),
            activation: DenseActivation::Identity,
        }
    }

    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let y = self.linear.forward(x);
        match self.activation {
            DenseActivation::Identity => y,
            DenseActivation::Tanh => tanh(y),
        }
    }

    /// `(config.json, tensors)` as sentence-transformers saves the module.
    pub fn st_files(&self) -> (DenseConfig, NamedTensors) {
        let (w, b) = self.linear.fused_weight();
        let [d_out, d_in] = w.dims();
        let mut tensors = vec![("linear.weight".to_string(), vec![d_out, d_in], values(w))];
        if let Some(b) = &b {
            tensors.push(("linear.bias".into(), vec![d_out], values(b.clone())));
        }
        let config = DenseConfig {
            in_features: d_in,
            out_features: d_out,
            bias: b.is_some(),
            activation_function: self.activation.st_name().into(),
        };
        (config, tensors)
    }
}

/// Everything with parameters: the transformer and the `Dense` modules after pooling.
#[derive(Module, Debug)]
pub struct GemmaSentenceModel {
    pub transformer: GemmaModel,
    pub dense: Vec<Dense>,
}

impl GemmaSentenceModel {
    /// Freeze every weight and attach LoRA adapters to the transformer's linear layers as
    /// `config` says (targets by name: `q_proj`, `k_proj`, `v_proj`, `o_proj`, `gate_proj`,
    /// `up_proj`, `down_proj`, or a full path; default the four attention projections). The
    /// Dense modules stay frozen. Fails when a target matches no layer.
    pub fn with_lora<R: Rng>(self, config: &LoraConfig, rng: &mut R) -> Result<Self, LoraError> {
        config.validate()?;
        let mut m = self.no_grad();
        let n = m.transformer.layers.len();
        let mut hit = std::collections::BTreeSet::new();
        let layers = std::mem::take(&mut m.transformer.layers);
        let mut out = Vec::with_capacity(n);
        for (i, l) in layers.into_iter().enumerate() {
            if !config.adapts_layer(i, n) {
                out.push(l);
                continue;
            }
            out.push(l.map_linears(|name, slot| {
                let path = format!("layers.{i}.{name}");
                let named: Vec<&String> = config
                    .target_modules
                    .iter()
                    .filter(|t| path == **t || path.ends_with(&format!(".{t}")))
                    .collect();
                hit.extend(named.iter().map(|t| t.to_string()));
                if config.targets(&path, &GemmaModel::DEFAULT_LORA_TARGETS) || !named.is_empty() {
                    slot.with_lora(config, rng)
                } else {
                    Ok(slot)
                }
            })?);
        }
        m.transformer.layers = out;
        if let Some(t) = config.target_modules.iter().find(|t| !hit.contains(*t)) {
            return Err(LoraError::NoMatch {
                target: t.clone(),
                model: "Gemma3TextModel".into(),
            });
        }
        Ok(m)
    }

    /// The adapters as plain arrays (module paths as PEFT names them inside `Gemma3TextModel`).
    pub fn adapter_weights(&self, config: &LoraConfig) -> AdapterWeights {
        let mut out = AdapterWeights::new(config.clone());
        for (i, l) in self.transformer.layers.iter().enumerate() {
            for (name, slot) in l.linears() {
                if let AdaptableLinear::Lora(lora) = slot {
                    let (a, b) = (lora.lora_a.val(), lora.lora_b.val());
                    let (a_shape, b_shape) = (a.dims(), b.dims());
                    let f = LoraFactors {
                        a: values(a),
                        a_shape,
                        b: values(b),
                        b_shape,
                    };
                    out.insert(&format!("layers.{i}.{name}"), f)
                        .expect("factors of a LoraLinear have consistent shapes");
                }
            }
        }
        out
    }

    /// Every adapter folded into its base weight: a plain model again.
    pub fn merged(mut self) -> Self {
        let layers = std::mem::take(&mut self.transformer.layers);
        self.transformer.layers = layers
            .into_iter()
            .map(|l| {
                l.map_linears(|_, slot| Ok::<_, std::convert::Infallible>(slot.merged()))
                    .expect("infallible")
            })
            .collect();
        self
    }
}

// ---------------------------------------------------------------------------------------------
// The sentence encoder.
// ---------------------------------------------------------------------------------------------

/// EmbeddingGemma as sentence-transformers runs it: tokenizer → [`GemmaModel`] → pooling →
/// [`Dense`] modules → optional normalisation, with the folder's named prompts.
#[derive(Debug, Clone)]
pub struct GemmaEncoder {
    pub model: GemmaSentenceModel,
    pub tokenizer: TextTokenizer,
    pub pooling: Pooling,
    pub normalize: bool,
    /// `config_sentence_transformers.json`'s `prompts` (`query`, `document`, `Clustering`, …).
    pub prompts: BTreeMap<String, String>,
    /// The prompt applied when none is asked for (sentence-transformers' `default_prompt_name`).
    pub default_prompt: Option<String>,
    /// The folder this was loaded from; `None` for random models and GGUF files.
    pub source: Option<ModelFolder>,
    /// The llama.cpp GGUF this was loaded from (its tokenizer metadata is what a GGUF export
    /// writes back); `None` for folders and random models.
    pub gguf: Option<PathBuf>,
}

/// Whether `dir` holds a Gemma 3 text model (its `config.json` says `gemma3_text`), so callers
/// can choose between this encoder and the BERT one before loading.
pub fn is_gemma_folder(dir: &Path) -> bool {
    let Ok(folder) = ModelFolder::open(dir) else {
        return false;
    };
    let Ok(json) = crate::io::hf::read_json::<serde_json::Value>(&folder.config_path()) else {
        return false;
    };
    matches!(
        json.get("model_type").and_then(|v| v.as_str()),
        Some("gemma3_text" | "gemma3")
    )
}

impl GemmaEncoder {
    /// Load a sentence-transformers folder (EmbeddingGemma layout) onto `device`.
    pub fn load(dir: impl AsRef<Path>, device: &Device) -> Result<Self, GemmaError> {
        let folder = ModelFolder::open(dir)?;
        let config = GemmaConfig::from_file(folder.config_path())?;
        let weights = Weights::open_dir(&folder.transformer_dir)?;
        let anchor = "embed_tokens.weight";
        // Saved from Gemma3TextModel (no prefix) or from a causal-LM head (`model.`).
        let prefix = weights
            .names()
            .into_iter()
            .filter_map(|n| n.strip_suffix(anchor).map(str::to_string))
            .min_by_key(|p| p.len())
            .unwrap_or_default();
        let transformer = GemmaModel::load(
            &config,
            &mut CheckpointSource {
                weights: &weights,
                prefix,
            },
            device,
        )?;

        let max_len = folder.max_seq_length(config.max_position_embeddings);
        let tokenizer = TextTokenizer::from_file(&folder.tokenizer_json, max_len)?
            .with_lowercase(folder.sentence_bert.do_lower_case);
        let tok_vocab = tokenizer.inner().get_vocab_size(true);
        if tok_vocab > config.vocab_size {
            return Err(GemmaError::Config {
                path: folder.tokenizer_json.display().to_string(),
                field: "vocab".into(),
                reason: format!(
                    "tokenizer has {tok_vocab} tokens but the model's vocab_size is {}",
                    config.vocab_size
                ),
            });
        }
        let pooling_path = folder
            .pooling_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let pooling = match &folder.pooling {
            Some(p) => Pooling::from_config(p).map_err(|reason| GemmaError::Config {
                path: pooling_path.clone(),
                field: "pooling".into(),
                reason,
            })?,
            None => Pooling::mean(),
        };
        let mut width = config.hidden_size * pooling.modes.len();
        let mut dense = Vec::new();
        for dir in &folder.dense {
            let d = Dense::load(dir, device)?;
            let [out_f, in_f] = d.linear.fused_weight().0.dims();
            if in_f != width {
                return Err(GemmaError::Config {
                    path: dir.join("config.json").display().to_string(),
                    field: "in_features".into(),
                    reason: format!(
                        "{in_f} differs from the width {width} of the module before it"
                    ),
                });
            }
            width = out_f;
            dense.push(d);
        }
        let prompts = folder.st_config.prompts.clone();
        let default_prompt = folder
            .st_config
            .default_prompt_name
            .as_ref()
            .and_then(|n| prompts.get(n).cloned());
        Ok(Self {
            model: GemmaSentenceModel { transformer, dense },
            tokenizer,
            pooling,
            normalize: folder.normalize,
            prompts,
            default_prompt,
            source: Some(folder),
            gguf: None,
        })
    }

    /// Load a llama.cpp `gemma-embedding` GGUF (the file QMD downloads) with llama.cpp's semantics
    /// (see [`crate::model::gemma_gguf`]): weights, Dense layers, tokenizer from its metadata,
    /// truncation at `context_length`, EmbeddingGemma's prompts. `keep_quantized` keeps Q8_0/Q4_0/
    /// Q4_1 block projections in the file's blocks (frozen: for LoRA); otherwise every weight is
    /// dequantized to f32 (inference, full fine-tuning).
    ///
    /// ```
    /// use tunelab::model::gemma::GemmaEncoder;
    /// let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/gemma/tiny_gguf/tiny-q8_0.gguf");
    /// let enc = GemmaEncoder::load_gguf(path, true, &burn::tensor::Device::flex())?;
    /// let v = enc.embed_with_prompt(&["how do I cook rice"], enc.prompt("query"), 8)?;
    /// assert_eq!(v[0].len(), enc.dim());
    /// # Ok::<(), tunelab::model::gemma::GemmaError>(())
    /// ```
    pub fn load_gguf(path: impl AsRef<Path>, keep_quantized: bool, device: &Device) -> Result<Self, GemmaError> {
        use crate::model::gemma_gguf as gg;
        let path = path.as_ref();
        let g = crate::io::gguf::GgufFile::open(path)?;
        let config = gg::config_from_gguf(&g)?;
        let mut src = gg::GgufSource { file: &g };
        let mut transformer = GemmaModel::load(&config, &mut src, device)?;
        if keep_quantized {
            transformer = gg::keep_quantized(transformer, &g, device)?;
        }
        let h = config.hidden_size;
        let mut width = h;
        let mut dense = Vec::new();
        for name in gg::DENSE_NAMES {
            let gname = format!("{name}.weight");
            let Some(info) = g.tensor_info(&gname) else { break };
            let shape = info.shape();
            let [d_out, d_in] = shape[..] else {
                return Err(GemmaError::Config { path: path.display().to_string(), field: format!("tensor '{gname}'"), reason: format!("shape {shape:?} is not a matrix") });
            };
            if d_in != width {
                return Err(GemmaError::Config { path: path.display().to_string(), field: format!("tensor '{gname}'"), reason: format!("shape {shape:?}: its input width {d_in} differs from the width {width} before it") });
            }
            let w = src.tensor(&gname, &[d_out, d_in])?;
            let linear = Linear { weight: Param::from_data(TensorData::new(transpose(&w, d_out, d_in), [d_in, d_out]), device), bias: None };
            dense.push(Dense { linear: AdaptableLinear::Base(linear), activation: DenseActivation::Identity });
            width = d_out;
        }
        if dense.len() == 1 || width != h {
            return Err(GemmaError::Config { path: path.display().to_string(), field: "dense_3.weight".into(), reason: format!("the Dense layers must come as a pair back to width {h} (dense_2 and dense_3)") });
        }
        let tok = crate::io::gguf::GgufTokenizer::from_gguf(&g)?;
        let mut inner = tok.tokenizer;
        let pad_id = g.opt_int("tokenizer.ggml.padding_token_id")?.map(|v| v as u32).or_else(|| inner.token_to_id("<pad>"));
        if let Some(pad_id) = pad_id {
            let pad_token = inner.id_to_token(pad_id).unwrap_or_default();
            inner.with_padding(Some(tokenizers::PaddingParams { pad_id, pad_token, ..Default::default() }));
        }
        let tok_vocab = inner.get_vocab_size(true);
        if tok_vocab > config.vocab_size {
            return Err(GemmaError::Config { path: path.display().to_string(), field: "tokenizer.ggml.tokens".into(), reason: format!("{tok_vocab} tokens but token_embd.weight has {} rows", config.vocab_size) });
        }
        let tokenizer = TextTokenizer::new(inner, path.to_path_buf(), config.max_position_embeddings)?;
        Ok(Self {
            model: GemmaSentenceModel { transformer, dense },
            tokenizer,
            pooling: Pooling::mean(),
            normalize: true,
            prompts: gg::EMBEDDINGGEMMA_PROMPTS.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            default_prompt: None,
            source: None,
            gguf: Some(path.to_path_buf()),
        })
    }

    /// Load a sentence-transformers folder or a `gemma-embedding` GGUF file (dequantized).
    pub fn load_any(path: impl AsRef<Path>, device: &Device) -> Result<Self, GemmaError> {
        let path = path.as_ref();
        if path.is_file() { Self::load_gguf(path, false, device) } else { Self::load(path, device) }
    }

    /// Truncate at `max_len` tokens (special tokens included) from now on.
    ///
    /// ```
    /// use tunelab::model::gemma::GemmaEncoder;
    /// let enc = GemmaEncoder::random_tiny(&["a", "b"], 0, &burn::tensor::Device::flex());
    /// assert_eq!(enc.with_max_seq_len(4).unwrap().max_seq_len(), 4);
    /// ```
    pub fn with_max_seq_len(mut self, max_len: usize) -> Result<Self, GemmaError> {
        let path = self.tokenizer.path().to_path_buf();
        let lowercase = self.source.as_ref().is_some_and(|s| s.sentence_bert.do_lower_case);
        self.tokenizer = TextTokenizer::new(self.tokenizer.inner().clone(), path, max_len)?.with_lowercase(lowercase);
        Ok(self)
    }

    /// A tiny random encoder for tests: [`GemmaConfig::tiny`] shapes, a word-level tokenizer
    /// over `words`, mean pooling, Dense 32 → 64 → 32, normalisation, EmbeddingGemma's
    /// `query`/`document` prompts. Same seed → same model.
    ///
    /// ```
    /// use tunelab::model::gemma::GemmaEncoder;
    /// let enc = GemmaEncoder::random_tiny(&["hello", "world"], 0, &burn::tensor::Device::flex());
    /// let v = enc.embed_with_prompt(&["hello world"], enc.prompt("query"), 8).unwrap();
    /// assert_eq!(v[0].len(), enc.dim());
    /// ```
    pub fn random_tiny(words: &[&str], seed: u64, device: &Device) -> Self {
        let tokenizer_json = crate::model::bert::word_level_tokenizer_json(words);
        let inner: tokenizers::Tokenizer = tokenizer_json
            .to_string()
            .parse()
            .expect("valid tokenizer JSON");
        let config = GemmaConfig::tiny(inner.get_vocab_size(true));
        let tokenizer = TextTokenizer::new(inner, "tokenizer.json (random_tiny)".into(), 32)
            .expect("truncation at 32 is valid");
        let h = config.hidden_size;
        let dense = vec![
            Dense::random(h, 2 * h, seed + 1, device),
            Dense::random(2 * h, h, seed + 2, device),
        ];
        let prompts = [
            ("query", "task: search result | query: "),
            ("document", "title: none | text: "),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        Self {
            model: GemmaSentenceModel {
                transformer: GemmaModel::random(&config, seed, device),
                dense,
            },
            tokenizer,
            pooling: Pooling::mean(),
            normalize: true,
            prompts,
            default_prompt: None,
            source: None,
            gguf: None,
        }
    }

    /// The named prompt (`query`, `document`, … as the folder lists them).
    pub fn prompt(&self, name: &str) -> Option<&str> {
        self.prompts.get(name).map(String::as_str)
    }

    /// Width of the sentence vectors (the last Dense module's output).
    pub fn dim(&self) -> usize {
        match self.model.dense.last() {
            Some(d) => d.linear.fused_weight().0.dims()[0],
            None => self.model.transformer.config.hidden_size * self.pooling.modes.len(),
        }
    }

    /// Truncation length in tokens, special tokens included.
    pub fn max_seq_len(&self) -> usize {
        self.tokenizer.max_len()
    }

    /// The device the parameters live on.
    pub fn device(&self) -> Device {
        self.model.transformer.embed_tokens.weight.val().device()
    }

    /// Tokenized batch → sentence vectors `[batch, dim]` (differentiable).
    pub fn encode_tokens(&self, tokens: TokenTensors) -> Tensor<2> {
        let hidden = self
            .model
            .transformer
            .forward(tokens.input_ids, tokens.attention_mask.clone());
        let mut x = self.pooling.forward(hidden, tokens.attention_mask);
        for d in &self.model.dense {
            x = d.forward(x);
        }
        if self.normalize { l2_normalize(x) } else { x }
    }

    /// Texts (as given: no prompt added) → sentence vectors `[batch, dim]` on the model's device.
    pub fn encode(&self, texts: &[&str]) -> Result<Tensor<2>, GemmaError> {
        let batch = self.tokenizer.encode_batch(texts)?;
        Ok(self.encode_tokens(batch.to_tensors(&self.device())))
    }

    /// Embed texts with an explicit prompt (a prefix, or a template with `{text}`/`{title}`, see
    /// [`Prompts::apply`]), in batches, longest first, returned in input order. Runs without
    /// recording a graph even on an autodiff device.
    pub fn embed_with_prompt(
        &self,
        texts: &[&str],
        prompt: Option<&str>,
        batch_size: usize,
    ) -> Result<Vec<Vec<f32>>, GemmaError> {
        let batch_size = batch_size.max(1);
        let prompted: Vec<String> = texts
            .iter()
            .map(|t| Prompts::apply(prompt, t, None))
            .collect();
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(prompted[i].chars().count()));
        let inference;
        let encoder = if self.device().is_autodiff() {
            inference = Self {
                model: self.model.valid(),
                ..self.clone()
            };
            &inference
        } else {
            self
        };
        let device = encoder.device();
        let dim = self.dim();
        let mut out = vec![Vec::new(); texts.len()];
        for chunk in order.chunks(batch_size) {
            let batch: Vec<&str> = chunk.iter().map(|&i| prompted[i].as_str()).collect();
            let tokens = encoder.tokenizer.encode_batch(&batch)?;
            let flat = values(encoder.encode_tokens(tokens.to_tensors(&device)));
            for (row, &i) in chunk.iter().enumerate() {
                out[i] = flat[row * dim..(row + 1) * dim].to_vec();
            }
        }
        Ok(out)
    }

    /// Embed with the default prompt (none unless the folder names one).
    pub fn embed(&self, texts: &[&str], batch_size: usize) -> Result<Vec<Vec<f32>>, GemmaError> {
        self.embed_with_prompt(texts, self.default_prompt.clone().as_deref(), batch_size)
    }

    /// Where the model was loaded from (for manifests), or a placeholder for random models.
    pub fn source_path(&self) -> PathBuf {
        self.source
            .as_ref()
            .map(|f| f.root.clone())
            .or_else(|| self.gguf.clone())
            .unwrap_or_else(|| PathBuf::from("(random)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WORDS: [&str; 12] = [
        "the", "cat", "sat", "on", "mat", "a", "dog", "ran", "in", "park", "query", "text",
    ];

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn rms_norm_by_hand() {
        // x = [3, 4]: mean square 12.5, so x / √12.5 · (1 + w) with w = [0, 1].
        let dev = Device::flex();
        let n = GemmaRmsNorm {
            weight: Param::from_data(TensorData::new(vec![0.0f32, 1.0], [2]), &dev),
            eps: 0.0,
        };
        let y = values(n.forward(Tensor::<2>::from_data(
            TensorData::new(vec![3.0f32, 4.0], [1, 2]),
            &dev,
        )));
        let r = 12.5f32.sqrt();
        assert!(max_abs_diff(&y, &[3.0 / r, 8.0 / r]) < 1e-6, "{y:?}");
    }

    #[test]
    fn sliding_window_is_symmetric_with_radius_half_the_window() {
        // Window 6 → radius 3: on sliding layers token 0 sees keys 0..=3, token 5 sees 2..=8.
        let dev = Device::flex();
        let enc = GemmaEncoder::random_tiny(&WORDS, 1, &dev);
        let mask = Tensor::<2, Int>::from_data(TensorData::new(vec![1i64; 9], [1, 9]), &dev);
        let (full, sliding) = enc.model.transformer.masks(&mask);
        let sliding = values(sliding);
        let visible = |q: usize| {
            (0..9)
                .filter(|&k| sliding[q * 9 + k] == 0.0)
                .collect::<Vec<_>>()
        };
        assert_eq!(visible(0), vec![0, 1, 2, 3]);
        assert_eq!(visible(5), vec![2, 3, 4, 5, 6, 7, 8]);
        assert!(values(full).iter().all(|&v| v == 0.0));
    }

    #[test]
    fn padding_and_batching_do_not_change_a_sentence() {
        // A long sentence (beyond the window) alone and next to a longer one must embed the same.
        let dev = Device::flex();
        let enc = GemmaEncoder::random_tiny(&WORDS, 3, &dev);
        let s = "the cat sat on the mat a dog ran in the park";
        let long = "the cat sat on the mat a dog ran in the park the cat sat on a mat in a park";
        let alone = enc.embed_with_prompt(&[s], None, 4).unwrap();
        let both = enc.embed_with_prompt(&[long, s], None, 4).unwrap();
        assert!(
            max_abs_diff(&alone[0], &both[1]) < 1e-5,
            "{}",
            max_abs_diff(&alone[0], &both[1])
        );
        let norm: f32 = alone[0].iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
    }

    #[test]
    fn export_names_round_trip_through_load() {
        let dev = Device::flex();
        let enc = GemmaEncoder::random_tiny(&WORDS, 5, &dev);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        crate::io::safetensors::write_f32(&path, &enc.model.transformer.hf_tensors(), None)
            .unwrap();
        let w = Weights::open_file(&path).unwrap();
        let cfg = enc.model.transformer.config.clone();
        let m2 = GemmaModel::load(
            &cfg,
            &mut CheckpointSource {
                weights: &w,
                prefix: String::new(),
            },
            &dev,
        )
        .unwrap();
        let ids = Tensor::<2, Int>::from_data(
            TensorData::new(vec![2i64, 5, 6, 7, 8, 9, 10, 3], [1, 8]),
            &dev,
        );
        let mask = Tensor::<2, Int>::from_data(TensorData::new(vec![1i64; 8], [1, 8]), &dev);
        assert_eq!(
            values(enc.model.transformer.forward(ids.clone(), mask.clone())),
            values(m2.forward(ids, mask))
        );
    }

    #[test]
    fn config_refuses_what_we_cannot_run_and_reads_both_rope_spellings() {
        // transformers 5 refuses `10.0` where its config declares an int.
        let json = serde_json::to_value(GemmaConfig::tiny(20)).unwrap();
        assert!(json["query_pre_attn_scalar"].is_i64(), "{}", json["query_pre_attn_scalar"]);
        let mut c = GemmaConfig::tiny(20);
        c.use_bidirectional_attention = false;
        assert_eq!(c.validate().unwrap_err().0, "use_bidirectional_attention");
        let mut c = GemmaConfig::tiny(20);
        c.num_key_value_heads = 3;
        assert_eq!(c.validate().unwrap_err().0, "num_key_value_heads");
        let mut c = GemmaConfig::tiny(20);
        c.layer_types = Some(vec!["full_attention".into()]);
        assert_eq!(c.validate().unwrap_err().0, "layer_types");
        let mut c = GemmaConfig::tiny(20);
        c.rope_parameters = Some(serde_json::json!({
            "full_attention": {"rope_type": "default", "rope_theta": 5.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 7.0}}));
        assert_eq!(c.rope_base(LayerType::Full).unwrap(), 5.0);
        assert_eq!(c.rope_base(LayerType::Sliding).unwrap(), 7.0);
        c.rope_parameters.as_mut().unwrap()["full_attention"]["rope_type"] = "linear".into();
        assert_eq!(c.validate().unwrap_err().0, "rope_parameters");
        // The old pattern spelling: every 6th layer is full.
        let mut c = GemmaConfig::tiny(20);
        c.layer_types = None;
        c.num_hidden_layers = 7;
        c.sliding_window_pattern = Some(6);
        let kinds = c.layer_kinds().unwrap();
        assert_eq!(kinds[5], LayerType::Full);
        assert_eq!(kinds.iter().filter(|k| **k == LayerType::Full).count(), 1);
    }

    #[test]
    fn lora_trains_only_adapters_and_merges_to_the_same_function() {
        let dev = Device::flex().autodiff();
        let enc = GemmaEncoder::random_tiny(&WORDS, 5, &dev);
        let cfg = LoraConfig {
            rank: 2,
            alpha: 4.0,
            ..LoraConfig::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut lora = enc.clone();
        lora.model = enc.model.clone().with_lora(&cfg, &mut rng).unwrap();
        assert!(lora.model.transformer.layers[0].self_attn.q_proj.is_lora());
        assert!(!lora.model.transformer.layers[0].mlp.up_proj.is_lora());
        let loss = lora
            .encode(&["the cat sat on the mat a dog ran"])
            .unwrap()
            .powf_scalar(3.0)
            .sum();
        let grads = loss.backward();
        let AdaptableLinear::Lora(q) = &lora.model.transformer.layers[0].self_attn.q_proj else {
            unreachable!()
        };
        assert!(q.lora_a.grad(&grads).is_some(), "adapter gets a gradient");
        assert!(
            lora.model
                .transformer
                .embed_tokens
                .weight
                .grad(&grads)
                .is_none(),
            "embeddings frozen"
        );
        let AdaptableLinear::Base(d) = &lora.model.dense[0].linear else {
            unreachable!()
        };
        assert!(d.weight.grad(&grads).is_none(), "Dense frozen");
        let merged = GemmaEncoder {
            model: lora.model.clone().merged(),
            ..lora.clone()
        };
        let t = ["the cat sat on the mat a dog ran in the park"];
        let a = lora.embed_with_prompt(&t, None, 2).unwrap();
        let b = merged.embed_with_prompt(&t, None, 2).unwrap();
        assert!(max_abs_diff(&a[0], &b[0]) < 1e-5);
        let bad = LoraConfig {
            target_modules: vec!["query".into()],
            ..cfg
        };
        assert!(
            enc.model
                .with_lora(&bad, &mut rng)
                .unwrap_err()
                .to_string()
                .contains("query")
        );
    }

    /// The contrastive trainer on the tiny encoder: loss falls, a resumed run ends bit-identical
    /// to an uninterrupted one, and the sentence-transformers export reloads with the same vectors.
    /// Full fine-tuning with GradCache and the symmetric loss, then LoRA.
    #[test]
    fn contrastive_training_lowers_loss_resumes_and_exports() {
        use crate::train::checkpoint;
        use crate::train::contrastive_trainer::tests::TestPairs;
        use crate::train::contrastive_trainer::{ContrastiveConfig, ContrastiveTrainer};
        use crate::train::encoder::TrainableEncoder;
        let topics = ["cat", "dog", "park", "mat", "sat", "ran"];
        let data = TestPairs(
            (0..12)
                .map(|i| {
                    let t = topics[i % 6];
                    (
                        format!("query {t} the"),
                        format!("text {t} a {t} in the park on the mat"),
                        vec![],
                    )
                })
                .collect(),
        );
        let enc = || GemmaEncoder::random_tiny(&WORDS, 9, &Device::flex());
        let config = |dir: &Path, lora: Option<LoraConfig>| ContrastiveConfig {
            learning_rate: 1e-2,
            batch_size: 4,
            epochs: 3,
            warmup_ratio: 0.0,
            save_every: Some(2),
            symmetric: true,
            mini_batch_size: Some(2),
            output_dir: dir.to_path_buf(),
            lora,
            ..ContrastiveConfig::default()
        };
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let full = ContrastiveTrainer::new(config(d1.path(), None))
            .with_progress(false)
            .fit(enc(), &data, None)
            .unwrap();
        assert_eq!(full.steps, 9);
        let first: f32 = full.losses[..3].iter().sum();
        let last: f32 = full.losses[6..].iter().sum();
        assert!(last < first, "loss should fall: {:?}", full.losses);

        let part = ContrastiveTrainer::new(config(d2.path(), None))
            .with_progress(false)
            .stop_after(4)
            .fit(enc(), &data, None)
            .unwrap();
        let ckpt = checkpoint::latest(d2.path()).unwrap();
        let fresh = GemmaEncoder::random_tiny(&WORDS, 77, &Device::flex());
        let rest = ContrastiveTrainer::new(config(d2.path(), None))
            .with_progress(false)
            .fit(fresh, &data, Some(&ckpt))
            .unwrap();
        assert_eq!(
            [part.losses, rest.losses].concat(),
            full.losses,
            "resume is bit-identical"
        );
        let tuned = full.encoder.for_inference();
        let texts = ["query cat the", "text dog a dog in the park on the mat"];
        let resumed = rest.encoder.for_inference();
        assert_eq!(
            tuned.embed_with_prompt(&texts, None, 2).unwrap(),
            resumed.embed_with_prompt(&texts, None, 2).unwrap()
        );

        // The export reloads with the same vectors (prompts included).
        let out = tempfile::tempdir().unwrap();
        let dir = out.path().join("tuned");
        crate::export::sentence_transformers::write_gemma_folder(
            &tuned,
            &dir,
            serde_json::json!({"test": true}),
        )
        .unwrap();
        let back = GemmaEncoder::load(&dir, &Device::flex()).unwrap();
        assert_eq!(back.prompts, tuned.prompts);
        assert_eq!(back.model.dense.len(), 2);
        let a = tuned
            .embed_with_prompt(&texts, tuned.prompt("query"), 2)
            .unwrap();
        let b = back
            .embed_with_prompt(&texts, back.prompt("query"), 2)
            .unwrap();
        for (x, y) in a.iter().zip(&b) {
            assert!(max_abs_diff(x, y) < 1e-6, "{}", max_abs_diff(x, y));
        }

        // LoRA: only adapters move; the merged export equals the adapted model.
        let d3 = tempfile::tempdir().unwrap();
        let lora = LoraConfig {
            rank: 2,
            alpha: 4.0,
            ..LoraConfig::default()
        };
        let base = enc();
        let trained = ContrastiveTrainer::new(config(d3.path(), Some(lora)))
            .with_progress(false)
            .fit(base.clone(), &data, None)
            .unwrap();
        let first: f32 = trained.losses[..3].iter().sum();
        let last: f32 = trained.losses[6..].iter().sum();
        assert!(last < first, "LoRA loss should fall: {:?}", trained.losses);
        let adapted = trained.encoder.for_inference();
        let AdaptableLinear::Base(d0) = &adapted.model.dense[0].linear else {
            unreachable!()
        };
        let AdaptableLinear::Base(b0) = &base.model.dense[0].linear else {
            unreachable!()
        };
        assert_eq!(
            values(d0.weight.val()),
            values(b0.weight.val()),
            "Dense frozen under LoRA"
        );
        let merged = GemmaEncoder {
            model: adapted.model.clone().merged(),
            ..adapted.clone()
        };
        let a = adapted.embed_with_prompt(&texts, None, 2).unwrap();
        let b = merged.embed_with_prompt(&texts, None, 2).unwrap();
        assert!(max_abs_diff(&a[0], &b[0]) < 1e-5);
    }
}

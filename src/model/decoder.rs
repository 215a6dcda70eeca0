//! Llama-family decoders: Llama 2/3, Mistral, SmolLM2, Qwen2 and Qwen3, in the style of MLX-LM's
//! `models/llama.py`: a config first, then small modules (`Projection`, `Attention`, `Mlp`,
//! `DecoderLayer`, `Decoder`), a KV cache, and sampling.
//!
//! Weights come from a GGUF file ([`Decoder::from_gguf`]) or a Hugging Face folder
//! ([`Decoder::from_hf_dir`]). Everything is kept in Hugging Face's layout: llama.cpp's converter
//! permutes the rows of `q_proj`/`k_proj` of Llama models so that its interleaved ("normal") RoPE
//! applies; we undo that permutation on load and use the rotate-half RoPE of transformers
//! everywhere, so a LoRA trained here has the same meaning in PEFT.
//!
//! Base weights are burn [`Param`]s; the seven block projections are [`AdaptableLinear`]s, so
//! [`Decoder::with_lora`] can swap in LoRA layers (paths as PEFT names them), and
//! [`Decoder::merged`] / [`Decoder::apply_adapter`] fold or load adapters.
//!
//! ```no_run
//! use burn::tensor::Device;
//! use tunelab::model::decoder::{CausalLm, GenerateOptions};
//! let lm = CausalLm::load("models/SmolLM2-135M-Instruct.Q4_1.gguf", &Device::flex())?;
//! let prompt = lm.encode("The capital of France is", false)?;
//! let out = lm.generate(&prompt, &GenerateOptions { max_tokens: 8, ..Default::default() }, |_| {});
//! println!("{}", lm.decode(&out)?);
//! # Ok::<(), tunelab::model::decoder::DecoderError>(())
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::module::{Module, Param, ParamId};
use burn::nn::{Linear, RmsNorm};
use burn::tensor::activation::{silu, softmax};
use burn::tensor::module::{embedding, linear};
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::data::chat_template::{ChatTemplate, TemplateError};
use crate::io::gguf::{GgufError, GgufFile};
use crate::lora::{
    AdaptableLinear, AdapterWeights, BaseWeight, LoraConfig, LoraError, LoraFactors, LoraLinear,
    QuantError, QuantLinear, QuantType, QuantWeight, QuantizeBase,
};

// ------------------------------------------------------------------------------------------ config

/// The architectures this file implements (`general.architecture` in GGUF, `model_type` in HF).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
}

impl Architecture {
    /// Parse a GGUF `general.architecture` or HF `model_type` value.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "llama" => Self::Llama,
            "mistral" => Self::Mistral,
            "qwen2" => Self::Qwen2,
            "qwen3" => Self::Qwen3,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Mistral => "mistral",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
        }
    }
}

/// How RoPE frequencies are rescaled for long contexts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RopeScaling {
    /// Position interpolation: every frequency divided by `factor`.
    Linear { factor: f64 },
    /// Llama 3.1's piecewise rescaling (transformers `_compute_llama3_parameters`).
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
    /// llama.cpp's `rope_freqs.weight` tensor: inverse frequency `i` divided by `factors[i]`
    /// (how GGUF files carry Llama 3.1 scaling).
    FreqFactors { factors: Vec<f32> },
}

/// Hyper-parameters of a decoder, named as in Hugging Face's `config.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DecoderConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Grouped-query attention: each K/V head serves `num_attention_heads / num_key_value_heads` query heads.
    pub num_key_value_heads: usize,
    /// Usually `hidden_size / num_attention_heads`; Qwen3 sets it independently.
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    /// The output projection reuses the token embedding.
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v projections (Qwen2; Llama/Qwen3 with `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on the output projection (Llama/Qwen3 with `attention_bias`).
    pub o_bias: bool,
    /// Qwen3's RMSNorm on each query and key head before RoPE.
    pub qk_norm: bool,
}

impl DecoderConfig {
    /// Read the config from GGUF metadata (`{arch}.block_count`, `{arch}.attention.head_count`, ...).
    pub fn from_gguf(g: &GgufFile) -> Result<Self, DecoderError> {
        let arch_name = g.architecture()?;
        let architecture = Architecture::parse(arch_name).ok_or_else(|| {
            DecoderError::UnsupportedArchitecture {
                path: g.path().to_path_buf(),
                field: "general.architecture".into(),
                architecture: arch_name.to_string(),
            }
        })?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let int = |k: &str| -> Result<usize, DecoderError> { Ok(g.get_int(&key(k))? as usize) };
        let hidden_size = int("embedding_length")?;
        let num_attention_heads = int("attention.head_count")?;
        let num_key_value_heads = g
            .opt_int(&key("attention.head_count_kv"))?
            .map(|v| v as usize)
            .unwrap_or(num_attention_heads);
        let head_dim = g
            .opt_int(&key("attention.key_length"))?
            .map(|v| v as usize)
            .unwrap_or(hidden_size.checked_div(num_attention_heads).unwrap_or(0));
        // The embedding's row count is authoritative; `{arch}.vocab_size` is often absent.
        let vocab_size = match (
            g.tensor_info("token_embd.weight"),
            g.opt_int(&key("vocab_size"))?,
        ) {
            (Some(t), _) => t.shape()[0],
            (None, Some(v)) => v as usize,
            (None, None) => g
                .get("tokenizer.ggml.tokens")
                .and_then(|v| v.as_array())
                .map(|a| a.len())
                .unwrap_or(0),
        };
        let rope_scaling = if g.tensor_info("rope_freqs.weight").is_some() {
            Some(RopeScaling::FreqFactors {
                factors: g.tensor_f32("rope_freqs.weight")?.1,
            })
        } else {
            match g.get(&key("rope.scaling.type")).and_then(|v| v.as_str()) {
                Some("linear") => Some(RopeScaling::Linear {
                    factor: g.get_f64(&key("rope.scaling.factor"))?,
                }),
                Some("none") | None => None,
                Some(other) => {
                    return Err(DecoderError::Config {
                        path: g.path().to_path_buf(),
                        field: key("rope.scaling.type"),
                        reason: format!(
                            "RoPE scaling '{other}' is not supported (linear, llama3 only)"
                        ),
                    });
                }
            }
        };
        let layer0 = |name: &str| g.tensor_info(&format!("blk.0.{name}")).is_some();
        Ok(Self {
            architecture,
            vocab_size,
            hidden_size,
            intermediate_size: int("feed_forward_length")?,
            num_hidden_layers: int("block_count")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            max_position_embeddings: g
                .opt_int(&key("context_length"))?
                .map(|v| v as usize)
                .unwrap_or(4096),
            rms_norm_eps: g.get_f64(&key("attention.layer_norm_rms_epsilon"))?,
            rope_theta: g.opt_f64(&key("rope.freq_base"))?.unwrap_or(10_000.0),
            rope_scaling,
            tie_word_embeddings: g.tensor_info("output.weight").is_none(),
            qkv_bias: layer0("attn_q.bias"),
            o_bias: layer0("attn_output.bias"),
            qk_norm: layer0("attn_q_norm.weight"),
        })
    }

    /// Read a Hugging Face `config.json` (transformers 4 `rope_theta`/`rope_scaling` or
    /// transformers 5 `rope_parameters`).
    pub fn from_hf_json(path: &Path, json: &serde_json::Value) -> Result<Self, DecoderError> {
        let cfg_err = |field: &str, reason: String| DecoderError::Config {
            path: path.to_path_buf(),
            field: field.into(),
            reason,
        };
        let model_type = json["model_type"]
            .as_str()
            .ok_or_else(|| cfg_err("model_type", "missing".into()))?;
        let architecture = Architecture::parse(model_type).ok_or_else(|| {
            DecoderError::UnsupportedArchitecture {
                path: path.to_path_buf(),
                field: "model_type".into(),
                architecture: model_type.to_string(),
            }
        })?;
        let uint = |k: &str| -> Result<usize, DecoderError> {
            json[k]
                .as_u64()
                .map(|v| v as usize)
                .ok_or_else(|| cfg_err(k, "missing or not a non-negative integer".into()))
        };
        let num_attention_heads = uint("num_attention_heads")?;
        let hidden_size = uint("hidden_size")?;
        let opt_uint = |k: &str| json.get(k).and_then(|v| v.as_u64()).map(|v| v as usize);
        let rope = json
            .get("rope_parameters")
            .filter(|v| v.is_object())
            .or_else(|| json.get("rope_scaling").filter(|v| v.is_object()));
        let rope_theta = json["rope_theta"]
            .as_f64()
            .or_else(|| rope.and_then(|r| r["rope_theta"].as_f64()))
            .unwrap_or(10_000.0);
        let rope_scaling = match rope {
            None => None,
            Some(r) => {
                let kind = r
                    .get("rope_type")
                    .or_else(|| r.get("type"))
                    .and_then(|v| v.as_str())
                    .unwrap_or("default");
                let f = |k: &str| {
                    r[k].as_f64()
                        .ok_or_else(|| cfg_err(&format!("rope_scaling.{k}"), "missing".into()))
                };
                match kind {
                    "default" => None,
                    "linear" => Some(RopeScaling::Linear {
                        factor: f("factor")?,
                    }),
                    "llama3" => Some(RopeScaling::Llama3 {
                        factor: f("factor")?,
                        low_freq_factor: f("low_freq_factor")?,
                        high_freq_factor: f("high_freq_factor")?,
                        original_max_position_embeddings: f("original_max_position_embeddings")?,
                    }),
                    other => {
                        return Err(cfg_err(
                            "rope_scaling.rope_type",
                            format!("'{other}' is not supported (default, linear, llama3)"),
                        ));
                    }
                }
            }
        };
        let attention_bias = json["attention_bias"].as_bool().unwrap_or(false);
        if json["mlp_bias"].as_bool() == Some(true) {
            return Err(cfg_err("mlp_bias", "MLP biases are not supported".into()));
        }
        Ok(Self {
            architecture,
            vocab_size: uint("vocab_size")?,
            hidden_size,
            intermediate_size: uint("intermediate_size")?,
            num_hidden_layers: uint("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads: opt_uint("num_key_value_heads").unwrap_or(num_attention_heads),
            head_dim: opt_uint("head_dim").unwrap_or(hidden_size.checked_div(num_attention_heads).unwrap_or(0)),
            max_position_embeddings: opt_uint("max_position_embeddings").unwrap_or(4096),
            rms_norm_eps: json["rms_norm_eps"].as_f64().unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            tie_word_embeddings: json["tie_word_embeddings"].as_bool().unwrap_or(false),
            // Qwen2 always has q/k/v biases (hard-coded in transformers); others follow attention_bias.
            qkv_bias: architecture == Architecture::Qwen2 || attention_bias,
            o_bias: architecture != Architecture::Qwen2 && attention_bias,
            qk_norm: architecture == Architecture::Qwen3,
        })
    }

    /// A tiny Llama (vocab 128, hidden 64, 2 blocks, 4 query / 2 key-value heads of 16,
    /// attention biases, untied head): the shape of `tests/fixtures/decoder/tiny_llama`, for fast tests.
    pub fn tiny_llama() -> Self {
        Self {
            architecture: Architecture::Llama,
            vocab_size: 128,
            hidden_size: 64,
            intermediate_size: 96,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 16,
            max_position_embeddings: 256,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: None,
            tie_word_embeddings: false,
            qkv_bias: true,
            o_bias: true,
            qk_norm: false,
        }
    }

    /// The Hugging Face `config.json` of this config (what [`DecoderConfig::from_hf_json`] reads
    /// back), for a fused model folder. RoPE frequency factors read from a GGUF
    /// (`rope_freqs.weight`) have no `config.json` form and are refused.
    pub fn to_hf_json(&self) -> Result<serde_json::Value, String> {
        let class = match self.architecture {
            Architecture::Llama => "LlamaForCausalLM",
            Architecture::Mistral => "MistralForCausalLM",
            Architecture::Qwen2 => "Qwen2ForCausalLM",
            Architecture::Qwen3 => "Qwen3ForCausalLM",
        };
        let rope_scaling = match &self.rope_scaling {
            None => serde_json::Value::Null,
            Some(RopeScaling::Linear { factor }) => {
                serde_json::json!({ "rope_type": "linear", "factor": factor })
            }
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => serde_json::json!({
                "rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
                "high_freq_factor": high_freq_factor,
                "original_max_position_embeddings": *original_max_position_embeddings as u64,
            }),
            Some(RopeScaling::FreqFactors { .. }) => {
                return Err("RoPE frequency factors (GGUF rope_freqs.weight) cannot be written to config.json".into());
            }
        };
        Ok(serde_json::json!({
            "architectures": [class],
            "model_type": self.architecture.name(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": rope_scaling,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.qkv_bias && self.architecture != Architecture::Qwen2,
            "mlp_bias": false,
            "hidden_act": "silu",
            "torch_dtype": "float32",
        }))
    }

    /// RoPE inverse frequencies `theta^(-2i/d)` for `i < head_dim/2`, rescaled as configured.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let d = self.head_dim as f64;
        let base: Vec<f64> = (0..self.head_dim / 2)
            .map(|i| 1.0 / self.rope_theta.powf(2.0 * i as f64 / d))
            .collect();
        let scaled: Vec<f64> = match &self.rope_scaling {
            None => base,
            Some(RopeScaling::Linear { factor }) => base.iter().map(|f| f / factor).collect(),
            Some(RopeScaling::FreqFactors { factors }) => base
                .iter()
                .zip(factors)
                .map(|(f, s)| f / *s as f64)
                .collect(),
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                // Long wavelengths are interpolated by `factor`, short ones kept, a smooth blend between.
                let low_wavelen = original_max_position_embeddings / low_freq_factor;
                let high_wavelen = original_max_position_embeddings / high_freq_factor;
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (original_max_position_embeddings / wavelen
                                - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        };
        scaled.into_iter().map(|f| f as f32).collect()
    }
}

// ------------------------------------------------------------------------------------------ errors

/// Errors loading or running a decoder. Each names the file (and field or tensor) at fault.
#[derive(Debug, thiserror::Error)]
pub enum DecoderError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(
        "{path}: {field} = '{architecture}' is not a supported architecture (llama, mistral, qwen2, qwen3)"
    )]
    UnsupportedArchitecture {
        path: PathBuf,
        field: String,
        architecture: String,
    },
    #[error("{path}: config field '{field}': {reason}")]
    Config {
        path: PathBuf,
        field: String,
        reason: String,
    },
    #[error("{path}: tensor '{tensor}' is missing")]
    MissingTensor { path: PathBuf, tensor: String },
    #[error("{path}: tensor '{tensor}' has shape {found:?}, expected {expected:?}")]
    Shape {
        path: PathBuf,
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{path}: {reason}")]
    Weights { path: PathBuf, reason: String },
    #[error("{path}: tokenizer: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error(transparent)]
    GgufTokenizer(#[from] crate::io::gguf::TokenizerError),
    #[error("{path}: {source}")]
    Quant { path: PathBuf, source: QuantError },
}

// ------------------------------------------------------------------------------------------ modules

/// `y = x W + b` with `W` stored `[in, out]` (burn's `Linear` layout; HF's `[out, in]` transposed).
/// Used for the output head, which LoRA never adapts; the block projections are
/// [`AdaptableLinear`]s.
#[derive(Module, Debug)]
pub struct Projection {
    pub weight: Param<Tensor<2>>,
    pub bias: Option<Param<Tensor<1>>>,
}

impl Projection {
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        linear(x, self.weight.val(), self.bias.as_ref().map(|b| b.val()))
    }
}

/// Multi-head attention with grouped K/V heads, RoPE and optional q/k RMSNorm (Qwen3).
#[derive(Module, Debug)]
pub struct Attention {
    pub q_proj: AdaptableLinear,
    pub k_proj: AdaptableLinear,
    pub v_proj: AdaptableLinear,
    pub o_proj: AdaptableLinear,
    pub q_norm: Option<RmsNorm>,
    pub k_norm: Option<RmsNorm>,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

/// `rotate_half` of transformers: `[x1, x2] -> [-x2, x1]` on the last axis.
fn rotate_half(x: Tensor<4>) -> Tensor<4> {
    let d = x.dims()[3];
    let x1 = x.clone().narrow(3, 0, d / 2);
    let x2 = x.narrow(3, d / 2, d / 2);
    Tensor::cat(vec![x2.neg(), x1], 3)
}

impl Attention {
    /// `x`: `[batch, seq, hidden]`; `cos`/`sin`: `[seq, head_dim]`; `mask`: additive `[batch|1, 1, seq, past+seq]`.
    pub fn forward(
        &self,
        x: Tensor<3>,
        cos: &Tensor<2>,
        sin: &Tensor<2>,
        mask: Option<&Tensor<4>>,
        cache: Option<&mut LayerCache>,
    ) -> Tensor<3> {
        let [b, t, _] = x.dims();
        let (h, kvh, hd) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let heads = |y: Tensor<3>, n: usize| y.reshape([b, t, n, hd]).swap_dims(1, 2);
        let mut q = heads(self.q_proj.forward(x.clone()), h);
        let mut k = heads(self.k_proj.forward(x.clone()), kvh);
        let mut v = heads(self.v_proj.forward(x), kvh);
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            q = qn.forward(q);
            k = kn.forward(k);
        }
        let cos = cos.clone().unsqueeze::<4>();
        let sin = sin.clone().unsqueeze::<4>();
        q = q.clone() * cos.clone() + rotate_half(q) * sin.clone();
        k = k.clone() * cos + rotate_half(k) * sin;
        if let Some(c) = cache {
            if let Some((pk, pv)) = c.kv.take() {
                k = Tensor::cat(vec![pk, k], 2);
                v = Tensor::cat(vec![pv, v], 2);
            }
            c.kv = Some((k.clone(), v.clone()));
        }
        let s = k.dims()[2];
        // Grouped-query attention without copying K/V: fold the query heads of one K/V head into
        // the sequence axis, so one batched matmul serves the whole group.
        let rep = h / kvh;
        let q = q.reshape([b, kvh, rep * t, hd]);
        let scale = 1.0 / (hd as f32).sqrt();
        let scores = q
            .matmul(k.swap_dims(2, 3))
            .mul_scalar(scale)
            .reshape([b, h, t, s]);
        let scores = match mask {
            Some(m) => scores + m.clone(),
            None => scores,
        };
        let probs = softmax(scores, 3).reshape([b, kvh, rep * t, s]);
        let out = probs
            .matmul(v)
            .reshape([b, h, t, hd])
            .swap_dims(1, 2)
            .reshape([b, t, h * hd]);
        self.o_proj.forward(out)
    }
}

/// SwiGLU feed-forward: `down(silu(gate(x)) * up(x))`.
#[derive(Module, Debug)]
pub struct Mlp {
    pub gate_proj: AdaptableLinear,
    pub up_proj: AdaptableLinear,
    pub down_proj: AdaptableLinear,
}

impl Mlp {
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.down_proj
            .forward(silu(self.gate_proj.forward(x.clone())) * self.up_proj.forward(x))
    }
}

/// Pre-norm transformer block.
#[derive(Module, Debug)]
pub struct DecoderLayer {
    pub input_layernorm: RmsNorm,
    pub self_attn: Attention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: Mlp,
}

impl DecoderLayer {
    pub fn forward(
        &self,
        x: Tensor<3>,
        cos: &Tensor<2>,
        sin: &Tensor<2>,
        mask: Option<&Tensor<4>>,
        cache: Option<&mut LayerCache>,
    ) -> Tensor<3> {
        let h = x.clone()
            + self
                .self_attn
                .forward(self.input_layernorm.forward(x), cos, sin, mask, cache);
        h.clone() + self.mlp.forward(self.post_attention_layernorm.forward(h))
    }
}

/// The key/value cache of one layer: `[batch, kv_heads, past, head_dim]` each.
#[derive(Debug, Default, Clone)]
pub struct LayerCache {
    kv: Option<(Tensor<4>, Tensor<4>)>,
}

/// Key/value caches of all layers, filled by [`Decoder::forward`] during generation.
#[derive(Debug, Default, Clone)]
pub struct KvCache {
    layers: Vec<LayerCache>,
}

impl KvCache {
    pub fn new(n_layers: usize) -> Self {
        Self {
            layers: vec![LayerCache::default(); n_layers],
        }
    }

    /// Positions already cached.
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.kv.as_ref())
            .map(|(k, _)| k.dims()[2])
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The decoder: token embedding, layers, final norm and (untied) output projection.
#[derive(Module, Debug)]
pub struct Decoder {
    pub embed_tokens: Param<Tensor<2>>,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
    /// `[hidden, vocab]`; None when tied to `embed_tokens`.
    pub lm_head: Option<Projection>,
    /// RoPE inverse frequencies `[head_dim / 2]`.
    pub inv_freq: Tensor<1>,
}

/// Additive attention mask value: large enough to zero a probability, finite so a fully masked
/// row (a padding query) gives a uniform row instead of NaN.
const MASKED: f32 = -1e9;

impl Decoder {
    /// Hidden states after the final norm, `[batch, seq, hidden]`.
    ///
    /// `input_ids`: `[batch, seq]`. Positions continue from the cache (`cache.len()..`).
    /// `padding_mask`: `[batch, past + seq]`, true where a key position is padding. Positions are
    /// not shifted for padding, so pad on the right (as training batches do); left-padded batched
    /// generation would need per-row positions.
    pub fn forward_hidden(
        &self,
        input_ids: Tensor<2, Int>,
        mut cache: Option<&mut KvCache>,
        padding_mask: Option<Tensor<2, Bool>>,
    ) -> Tensor<3> {
        let device = input_ids.device();
        let [b, t] = input_ids.dims();
        let past = cache.as_ref().map(|c| c.len()).unwrap_or(0);
        let mut x = embedding(self.embed_tokens.val(), input_ids);

        // RoPE tables for positions past..past+t, computed as transformers does (f32 positions
        // times f32 inverse frequencies, duplicated for the two halves).
        let pos = Tensor::<1, Int>::arange(past as i64..(past + t) as i64, &device)
            .float()
            .reshape([t, 1]);
        // A constant: off the autodiff graph, so it mixes with activations of any checkpointing strategy.
        let freqs = pos * self.inv_freq.clone().without_autodiff().unsqueeze::<2>();
        let emb = Tensor::cat(vec![freqs.clone(), freqs], 1);
        let (cos, sin) = (emb.clone().cos(), emb.sin());

        let s = past + t;
        let mut mask: Option<Tensor<4>> = None;
        if t > 1 {
            // Causal: query i (absolute past+i) sees keys j <= past+i.
            let data: Vec<f32> = (0..t)
                .flat_map(|i| (0..s).map(move |j| if j > past + i { MASKED } else { 0.0 }))
                .collect();
            mask = Some(
                Tensor::<2>::from_data(TensorData::new(data, [t, s]), &device)
                    .reshape([1, 1, t, s]),
            );
        }
        if let Some(pad) = padding_mask {
            let pad = Tensor::<2>::zeros([b, s], &device)
                .mask_fill(pad, MASKED)
                .reshape([b, 1, 1, s]);
            mask = Some(match mask {
                Some(m) => m + pad,
                None => pad,
            });
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            x = layer.forward(x, &cos, &sin, mask.as_ref(), layer_cache);
        }
        self.norm.forward(x)
    }

    /// Project hidden states to vocabulary logits.
    pub fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => {
                let [b, t, d] = hidden.dims();
                let v = self.embed_tokens.dims()[0];
                hidden
                    .reshape([b * t, d])
                    .matmul(self.embed_tokens.val().transpose())
                    .reshape([b, t, v])
            }
        }
    }

    /// Logits for every position, `[batch, seq, vocab]`.
    pub fn forward(
        &self,
        input_ids: Tensor<2, Int>,
        cache: Option<&mut KvCache>,
        padding_mask: Option<Tensor<2, Bool>>,
    ) -> Tensor<3> {
        self.logits(self.forward_hidden(input_ids, cache, padding_mask))
    }

    /// Logits of the last position only (what generation needs), `[batch, vocab]`.
    pub fn forward_last(
        &self,
        input_ids: Tensor<2, Int>,
        cache: Option<&mut KvCache>,
    ) -> Tensor<2> {
        let h = self.forward_hidden(input_ids, cache, None);
        let [b, t, _] = h.dims();
        self.logits(h.narrow(1, t - 1, 1))
            .reshape([b, self.vocab_size()])
    }

    pub fn vocab_size(&self) -> usize {
        self.embed_tokens.dims()[0]
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Build a decoder from named f32 tensors in Hugging Face naming and layout.
    pub fn from_tensors(
        cfg: &DecoderConfig,
        w: TensorSource<'_>,
        device: &Device,
    ) -> Result<Self, DecoderError> {
        Self::from_tensors_with(cfg, w, device, QuantizeBase::None)
    }

    /// [`Decoder::from_tensors`] with the seven block projections kept or made quantized as
    /// `quantize` says (QLoRA's frozen base); embeddings, norms and the output head stay f32.
    pub fn from_tensors_with(
        cfg: &DecoderConfig,
        mut w: TensorSource<'_>,
        device: &Device,
        quantize: QuantizeBase,
    ) -> Result<Self, DecoderError> {
        let (h, kv, hd) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        );
        let d = cfg.hidden_size;
        if h == 0 || kv == 0 || h % kv != 0 {
            return Err(DecoderError::Config {
                path: w.path.to_path_buf(),
                field: "num_key_value_heads".into(),
                reason: format!("{h} attention heads are not a multiple of {kv} key/value heads"),
            });
        }
        let norm =
            |w: &mut TensorSource<'_>, name: &str, n: usize| -> Result<RmsNorm, DecoderError> {
                let gamma = w.take(name, &[n])?;
                Ok(RmsNorm {
                    gamma: param1(gamma, device),
                    epsilon: cfg.rms_norm_eps,
                })
            };
        let proj = |w: &mut TensorSource<'_>,
                    name: &str,
                    out: usize,
                    inp: usize,
                    bias: bool|
         -> Result<AdaptableLinear, DecoderError> {
            let weight = w.take_projection(&format!("{name}.weight"), [out, inp], quantize, device)?;
            let bias = if bias {
                Some(param1(w.take(&format!("{name}.bias"), &[out])?, device))
            } else {
                None
            };
            Ok(match weight {
                ProjectionWeight::Dense(weight) => AdaptableLinear::Base(Linear {
                    weight: param2(transpose(&weight, out, inp), [inp, out], device),
                    bias,
                }),
                ProjectionWeight::Quantized(q) => {
                    AdaptableLinear::Quantized(QuantLinear::new(q, bias.map(|b| b.val())))
                }
            })
        };
        let embed = w.take("model.embed_tokens.weight", &[cfg.vocab_size, d])?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let (q_norm, k_norm) = if cfg.qk_norm {
                (
                    Some(norm(&mut w, &format!("{p}.self_attn.q_norm.weight"), hd)?),
                    Some(norm(&mut w, &format!("{p}.self_attn.k_norm.weight"), hd)?),
                )
            } else {
                (None, None)
            };
            layers.push(DecoderLayer {
                input_layernorm: norm(&mut w, &format!("{p}.input_layernorm.weight"), d)?,
                self_attn: Attention {
                    q_proj: proj(
                        &mut w,
                        &format!("{p}.self_attn.q_proj"),
                        h * hd,
                        d,
                        cfg.qkv_bias,
                    )?,
                    k_proj: proj(
                        &mut w,
                        &format!("{p}.self_attn.k_proj"),
                        kv * hd,
                        d,
                        cfg.qkv_bias,
                    )?,
                    v_proj: proj(
                        &mut w,
                        &format!("{p}.self_attn.v_proj"),
                        kv * hd,
                        d,
                        cfg.qkv_bias,
                    )?,
                    o_proj: proj(
                        &mut w,
                        &format!("{p}.self_attn.o_proj"),
                        d,
                        h * hd,
                        cfg.o_bias,
                    )?,
                    q_norm,
                    k_norm,
                    n_heads: h,
                    n_kv_heads: kv,
                    head_dim: hd,
                },
                post_attention_layernorm: norm(
                    &mut w,
                    &format!("{p}.post_attention_layernorm.weight"),
                    d,
                )?,
                mlp: Mlp {
                    gate_proj: proj(
                        &mut w,
                        &format!("{p}.mlp.gate_proj"),
                        cfg.intermediate_size,
                        d,
                        false,
                    )?,
                    up_proj: proj(
                        &mut w,
                        &format!("{p}.mlp.up_proj"),
                        cfg.intermediate_size,
                        d,
                        false,
                    )?,
                    down_proj: proj(
                        &mut w,
                        &format!("{p}.mlp.down_proj"),
                        d,
                        cfg.intermediate_size,
                        false,
                    )?,
                },
            });
        }
        let norm_f = norm(&mut w, "model.norm.weight", d)?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            let weight = w.take("lm_head.weight", &[cfg.vocab_size, d])?;
            Some(Projection {
                weight: param2(
                    transpose(&weight, cfg.vocab_size, d),
                    [d, cfg.vocab_size],
                    device,
                ),
                bias: None,
            })
        };
        let inv_freq = cfg.rope_inv_freq();
        let n = inv_freq.len();
        Ok(Self {
            embed_tokens: param2(embed, [cfg.vocab_size, d], device),
            layers,
            norm: norm_f,
            lm_head,
            inv_freq: Tensor::from_data(TensorData::new(inv_freq, [n]), device),
        })
    }

    /// Load from a GGUF file: config from metadata, every tensor dequantized to f32, renamed to
    /// Hugging Face's names, Llama's permuted q/k rows restored.
    pub fn from_gguf(g: &GgufFile, device: &Device) -> Result<(Self, DecoderConfig), DecoderError> {
        Self::from_gguf_with(g, device, QuantizeBase::None)
    }

    /// [`Decoder::from_gguf`] with the projections kept or made quantized ([`QuantizeBase`]):
    /// with `Keep`, Q8_0/Q4_0/Q4_1 projections stay in the file's own blocks.
    pub fn from_gguf_with(g: &GgufFile, device: &Device, quantize: QuantizeBase) -> Result<(Self, DecoderConfig), DecoderError> {
        let cfg = DecoderConfig::from_gguf(g)?;
        crate::model::checks::decoder_config(&cfg, g.path(), g.tensors.iter().map(|t| t.name.as_str()), "blk.")?;
        let model = Self::from_tensors_with(&cfg, TensorSource::gguf(g, &cfg), device, quantize)?;
        Ok((model, cfg))
    }

    /// Load from a Hugging Face model folder (`config.json`, `model.safetensors` or
    /// `model.safetensors.index.json` with shards).
    pub fn from_hf_dir(dir: &Path, device: &Device) -> Result<(Self, DecoderConfig), DecoderError> {
        Self::from_hf_dir_with(dir, device, QuantizeBase::None)
    }

    /// [`Decoder::from_hf_dir`] with the projections quantized as `quantize` says (`q8_0`,
    /// `q4_0`; `keep` and `none` load f32, as the folder holds).
    pub fn from_hf_dir_with(dir: &Path, device: &Device, quantize: QuantizeBase) -> Result<(Self, DecoderConfig), DecoderError> {
        let cfg_path = dir.join("config.json");
        let text = crate::io::text::read_to_string(&cfg_path).map_err(|source| DecoderError::Io {
            path: cfg_path.clone(),
            source,
        })?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| DecoderError::Config {
                path: cfg_path.clone(),
                field: "(file)".into(),
                reason: format!("line {}: {e}", e.line()),
            })?;
        let cfg = DecoderConfig::from_hf_json(&cfg_path, &json)?;
        let tensors = read_safetensors_dir(dir)?;
        crate::model::checks::decoder_config(&cfg, &cfg_path, tensors.keys().map(String::as_str), "model.layers.")?;
        let model = Self::from_tensors_with(&cfg, TensorSource::map(dir, tensors), device, quantize)?;
        Ok((model, cfg))
    }
}

// ------------------------------------------------------------------------------------------ weights

fn param1(values: Vec<f32>, device: &Device) -> Param<Tensor<1>> {
    let n = values.len();
    Param::from_tensor(Tensor::from_data(TensorData::new(values, [n]), device))
}

fn param2(values: Vec<f32>, shape: [usize; 2], device: &Device) -> Param<Tensor<2>> {
    Param::from_tensor(Tensor::from_data(TensorData::new(values, shape), device))
}

/// `[rows, cols]` row-major to `[cols, rows]`.
fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = x[r * cols + c];
        }
    }
    out
}

/// The row pairs of llama.cpp's `permute` (convert_hf_to_gguf.py, `LlamaModel.permute`) of a
/// `[rows, cols]` q/k matrix: within each of `n_heads` heads, Hugging Face's row `(half i, pair j)`
/// sits at GGUF row `(pair j, half i)`. Yields `(hf_row, gguf_row)`.
fn llama_permutation(rows: usize, n_heads: usize) -> impl Iterator<Item = (usize, usize)> {
    let hd = rows / n_heads;
    (0..n_heads).flat_map(move |head| {
        (0..2).flat_map(move |i| (0..hd / 2).map(move |j| (head * hd + i * (hd / 2) + j, head * hd + j * 2 + i)))
    })
}

/// llama.cpp's `permute` of the rows of a row-major `[rows, cols]` matrix (HF order → GGUF order).
pub fn permute_rows<T: Copy + Default>(x: &[T], n_heads: usize, cols: usize) -> Vec<T> {
    let mut out = vec![T::default(); x.len()];
    for (hf, gguf) in llama_permutation(x.len() / cols, n_heads) {
        out[gguf * cols..(gguf + 1) * cols].copy_from_slice(&x[hf * cols..(hf + 1) * cols]);
    }
    out
}

/// Undo llama.cpp's `permute` (GGUF order → HF order).
fn unpermute_rows<T: Copy + Default>(x: &[T], n_heads: usize, cols: usize) -> Vec<T> {
    let mut out = vec![T::default(); x.len()];
    for (hf, gguf) in llama_permutation(x.len() / cols, n_heads) {
        out[hf * cols..(hf + 1) * cols].copy_from_slice(&x[gguf * cols..(gguf + 1) * cols]);
    }
    out
}

/// Where named f32 tensors come from: an in-memory map (safetensors) or a GGUF file read lazily
/// under Hugging Face names.
pub struct TensorSource<'a> {
    path: &'a Path,
    inner: SourceKind<'a>,
}

enum SourceKind<'a> {
    Map(HashMap<String, (Vec<usize>, Vec<f32>)>),
    Gguf {
        file: &'a GgufFile,
        arch: Architecture,
        n_heads: usize,
        n_kv_heads: usize,
    },
}

impl<'a> TensorSource<'a> {
    /// Tensors already in memory, keyed by HF name, `(shape, row-major values)`.
    pub fn map(path: &'a Path, tensors: HashMap<String, (Vec<usize>, Vec<f32>)>) -> Self {
        Self {
            path,
            inner: SourceKind::Map(tensors),
        }
    }

    /// A GGUF file's tensors under HF names.
    pub fn gguf(file: &'a GgufFile, cfg: &DecoderConfig) -> Self {
        Self {
            path: file.path(),
            inner: SourceKind::Gguf {
                file,
                arch: cfg.architecture,
                n_heads: cfg.num_attention_heads,
                n_kv_heads: cfg.num_key_value_heads,
            },
        }
    }

    /// Remove and return a tensor, checking its shape.
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, DecoderError> {
        let (file_name, found, values) = match &mut self.inner {
            SourceKind::Map(m) => {
                let (s, v) = m.remove(name).ok_or_else(|| DecoderError::MissingTensor {
                    path: self.path.to_path_buf(),
                    tensor: name.into(),
                })?;
                (name.to_string(), s, v)
            }
            SourceKind::Gguf {
                file,
                arch,
                n_heads,
                n_kv_heads,
            } => {
                let gname = gguf_name(name).ok_or_else(|| DecoderError::MissingTensor {
                    path: self.path.to_path_buf(),
                    tensor: name.into(),
                })?;
                if file.tensor_info(&gname).is_none() {
                    return Err(DecoderError::MissingTensor {
                        path: self.path.to_path_buf(),
                        tensor: gname,
                    });
                }
                let (s, mut v) = file.tensor_f32(&gname)?;
                // llama.cpp permutes q/k (weights and biases) of Llama-architecture models only.
                if matches!(arch, Architecture::Llama | Architecture::Mistral) {
                    let cols = if s.len() == 2 { s[1] } else { 1 };
                    if name.ends_with("q_proj.weight") || name.ends_with("q_proj.bias") {
                        v = unpermute_rows(&v, *n_heads, cols);
                    } else if name.ends_with("k_proj.weight") || name.ends_with("k_proj.bias") {
                        v = unpermute_rows(&v, *n_kv_heads, cols);
                    }
                }
                (gname, s, v)
            }
        };
        if found != shape {
            return Err(DecoderError::Shape {
                path: self.path.to_path_buf(),
                tensor: file_name,
                expected: shape.to_vec(),
                found,
            });
        }
        crate::model::checks::finite_tensor(&values, &file_name, self.path)?;
        Ok(values)
    }
}

/// A projection weight as loaded: f32 values `[out, in]` or ggml blocks.
enum ProjectionWeight {
    Dense(Vec<f32>),
    Quantized(QuantWeight),
}

impl TensorSource<'_> {
    /// A projection weight `[out, in]`, kept in the file's blocks or quantized as `quantize`
    /// says, else f32 (see [`QuantizeBase`]).
    fn take_projection(&mut self, name: &str, shape: [usize; 2], quantize: QuantizeBase, device: &Device) -> Result<ProjectionWeight, DecoderError> {
        let path = self.path.to_path_buf();
        let quant_err = |source| DecoderError::Quant { path: path.clone(), source };
        let file_type = match &self.inner {
            SourceKind::Gguf { file, .. } => gguf_name(name)
                .and_then(|g| file.tensor_info(&g))
                .and_then(|t| QuantType::from_ggml(t.ggml_type)),
            SourceKind::Map(_) => None,
        };
        let Some(target) = quantize.target(file_type) else {
            return Ok(ProjectionWeight::Dense(self.take(name, &shape)?));
        };
        if let (Some(ty), SourceKind::Gguf { file, arch, n_heads, n_kv_heads }) = (file_type.filter(|t| *t == target), &self.inner) {
            // The file's own blocks, bit for bit; llama.cpp's q/k row permutation is undone on
            // whole rows of blocks (a row is never split across blocks).
            let gname = gguf_name(name).expect("file_type came from this name");
            let info = file.tensor_info(&gname).expect("file_type came from this tensor");
            if info.shape() != shape {
                return Err(DecoderError::Shape { path: path.clone(), tensor: gname, expected: shape.to_vec(), found: info.shape() });
            }
            let mut bytes = file.tensor_bytes(&gname)?.to_vec();
            if matches!(arch, Architecture::Llama | Architecture::Mistral) {
                let row = shape[1] / crate::lora::quant::BLOCK * ty.block_bytes();
                if name.ends_with("q_proj.weight") {
                    bytes = unpermute_rows(&bytes, *n_heads, row);
                } else if name.ends_with("k_proj.weight") {
                    bytes = unpermute_rows(&bytes, *n_kv_heads, row);
                }
            }
            return QuantWeight::from_ggml_blocks(&gname, ty, &bytes, shape, device).map(ProjectionWeight::Quantized).map_err(quant_err);
        }
        let values = self.take(name, &shape)?;
        QuantWeight::quantize_named(name, target, &values, shape, device).map(ProjectionWeight::Quantized).map_err(quant_err)
    }
}

/// llama.cpp's tensor name for a Hugging Face one (`model.layers.3.mlp.up_proj.weight` ->
/// `blk.3.ffn_up.weight`), as in gguf-py's `tensor_mapping.py`.
pub fn gguf_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (idx, rest) = rest.split_once('.')?;
    let (module, suffix) = rest.rsplit_once('.')?;
    let g = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{idx}.{g}.{suffix}"))
}

/// Read every tensor of a HF folder's safetensors (single file or sharded with an index) as f32.
fn read_safetensors_dir(
    dir: &Path,
) -> Result<HashMap<String, (Vec<usize>, Vec<f32>)>, DecoderError> {
    let index = dir.join("model.safetensors.index.json");
    let files: Vec<PathBuf> = if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|source| DecoderError::Io {
            path: index.clone(),
            source,
        })?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| DecoderError::Weights {
                path: index.clone(),
                reason: format!("line {}: {e}", e.line()),
            })?;
        let map = json["weight_map"]
            .as_object()
            .ok_or_else(|| DecoderError::Weights {
                path: index.clone(),
                reason: "no 'weight_map' object".into(),
            })?;
        let mut names: Vec<String> = map
            .values()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        names.sort();
        names.dedup();
        names.into_iter().map(|n| dir.join(n)).collect()
    } else {
        vec![dir.join("model.safetensors")]
    };
    let mut out = HashMap::new();
    for file in files {
        let bytes = std::fs::read(&file).map_err(|source| DecoderError::Io {
            path: file.clone(),
            source,
        })?;
        let st =
            safetensors::SafeTensors::deserialize(&bytes).map_err(|e| DecoderError::Weights {
                path: file.clone(),
                reason: e.to_string(),
            })?;
        for (name, view) in st.tensors() {
            let data = view.data();
            let values: Vec<f32> = match view.dtype() {
                safetensors::Dtype::F32 => data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect(),
                safetensors::Dtype::F16 => data
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
                safetensors::Dtype::BF16 => data
                    .chunks_exact(2)
                    .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                    .collect(),
                other => {
                    return Err(DecoderError::Weights {
                        path: file.clone(),
                        reason: format!(
                            "tensor '{name}' has dtype {other:?}; expected F32, F16 or BF16"
                        ),
                    });
                }
            };
            out.insert(name, (view.shape().to_vec(), values));
        }
    }
    Ok(out)
}

// ------------------------------------------------------------------------------------------ LoRA

/// Module paths of the seven projections of a block, relative to `model.layers.{i}` (PEFT's
/// and MLX-LM's names).
pub const PROJECTIONS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

impl DecoderLayer {
    /// The seven projections with their paths relative to the block.
    pub fn projections(&self) -> [(&'static str, &AdaptableLinear); 7] {
        let (a, m) = (&self.self_attn, &self.mlp);
        [
            (PROJECTIONS[0], &a.q_proj),
            (PROJECTIONS[1], &a.k_proj),
            (PROJECTIONS[2], &a.v_proj),
            (PROJECTIONS[3], &a.o_proj),
            (PROJECTIONS[4], &m.gate_proj),
            (PROJECTIONS[5], &m.up_proj),
            (PROJECTIONS[6], &m.down_proj),
        ]
    }

    /// Rebuild the block with each projection passed through `f(relative path, projection)`.
    fn map_projections<E>(
        self,
        mut f: impl FnMut(&'static str, AdaptableLinear) -> Result<AdaptableLinear, E>,
    ) -> Result<Self, E> {
        let DecoderLayer {
            input_layernorm,
            self_attn,
            post_attention_layernorm,
            mlp,
        } = self;
        let Attention {
            q_proj,
            k_proj,
            v_proj,
            o_proj,
            q_norm,
            k_norm,
            n_heads,
            n_kv_heads,
            head_dim,
        } = self_attn;
        let self_attn = Attention {
            q_proj: f(PROJECTIONS[0], q_proj)?,
            k_proj: f(PROJECTIONS[1], k_proj)?,
            v_proj: f(PROJECTIONS[2], v_proj)?,
            o_proj: f(PROJECTIONS[3], o_proj)?,
            q_norm,
            k_norm,
            n_heads,
            n_kv_heads,
            head_dim,
        };
        let mlp = Mlp {
            gate_proj: f(PROJECTIONS[4], mlp.gate_proj)?,
            up_proj: f(PROJECTIONS[5], mlp.up_proj)?,
            down_proj: f(PROJECTIONS[6], mlp.down_proj)?,
        };
        Ok(DecoderLayer {
            input_layernorm,
            self_attn,
            post_attention_layernorm,
            mlp,
        })
    }
}

/// A fixed parameter id for adapter factor `factor` (`lora_A`/`lora_B`) of the layer at `path`
/// (FNV-1a of both). Optimizer state is keyed by parameter id, so fixed ids let a resumed run
/// match the saved AdamW moments to adapters rebuilt from a saved adapter file.
pub fn adapter_param_id(path: &str, factor: &str) -> ParamId {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in path.bytes().chain([b'.']).chain(factor.bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    ParamId::from(h)
}

fn with_id(p: Param<Tensor<2>>, id: ParamId) -> Param<Tensor<2>> {
    let (_, value, mapper) = p.consume();
    Param::from_mapped_value(id, value, mapper)
}

/// Give a freshly built adapter the fixed ids of [`adapter_param_id`].
fn fix_ids(mut l: LoraLinear, path: &str) -> LoraLinear {
    l.lora_a = with_id(l.lora_a, adapter_param_id(path, "lora_A"));
    l.lora_b = with_id(l.lora_b, adapter_param_id(path, "lora_B"));
    l
}

fn host(t: Tensor<2>) -> Vec<f32> {
    t.into_data()
        .try_into_vec_as::<f32>()
        .expect("f32 parameters")
}

impl Decoder {
    /// What MLX-LM adapts when no keys are given: every linear layer of the blocks.
    pub const DEFAULT_LORA_TARGETS: [&'static str; 7] = [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ];

    /// Freeze every weight and attach LoRA adapters where `config` says: targets by name
    /// (`q_proj`), relative path (`self_attn.q_proj`) or full path
    /// (`model.layers.3.mlp.up_proj`); all seven projections by default (MLX-LM's choice);
    /// `num_layers` blocks counted from the top. `A` is drawn from `rng`, `B` is zero.
    /// Fails with [`LoraError::NoMatch`] when a listed target matches no adapted layer.
    pub fn with_lora<R: Rng>(self, config: &LoraConfig, rng: &mut R) -> Result<Self, LoraError> {
        config.validate()?;
        let mut m = self.no_grad();
        let n = m.layers.len();
        let mut hit = std::collections::BTreeSet::new();
        let mut layers = Vec::with_capacity(n);
        for (i, layer) in std::mem::take(&mut m.layers).into_iter().enumerate() {
            if !config.adapts_layer(i, n) {
                layers.push(layer);
                continue;
            }
            layers.push(layer.map_projections(|rel, slot| {
                let path = format!("model.layers.{i}.{rel}");
                let named: Vec<&String> = config
                    .target_modules
                    .iter()
                    .filter(|t| path == **t || path.ends_with(&format!(".{t}")))
                    .collect();
                hit.extend(named.iter().map(|t| t.to_string()));
                let wanted = if config.target_modules.is_empty() {
                    config.targets(&path, &Self::DEFAULT_LORA_TARGETS)
                } else {
                    !named.is_empty()
                };
                match slot {
                    AdaptableLinear::Base(l) if wanted => Ok(AdaptableLinear::Lora(fix_ids(
                        LoraLinear::from_linear(&l, config, &mut *rng)?,
                        &path,
                    ))),
                    AdaptableLinear::Quantized(l) if wanted => Ok(AdaptableLinear::Lora(fix_ids(
                        LoraLinear::from_quantized(&l, config, &mut *rng)?,
                        &path,
                    ))),
                    other => Ok(other),
                }
            })?);
        }
        m.layers = layers;
        if let Some(t) = config.target_modules.iter().find(|t| !hit.contains(*t)) {
            return Err(LoraError::NoMatch {
                target: t.clone(),
                model: format!(
                    "this {n}-block decoder (num_layers = {})",
                    config.num_layers
                ),
            });
        }
        Ok(m)
    }

    /// The adapters as plain arrays, keyed `model.layers.{i}.self_attn.q_proj` (PEFT's paths).
    pub fn adapter_weights(&self, config: &LoraConfig) -> AdapterWeights {
        let mut out = AdapterWeights::new(config.clone());
        for (i, layer) in self.layers.iter().enumerate() {
            for (rel, slot) in layer.projections() {
                if let AdaptableLinear::Lora(l) = slot {
                    let (a, b) = (l.lora_a.val(), l.lora_b.val());
                    let (a_shape, b_shape) = (a.dims(), b.dims());
                    let f = LoraFactors {
                        a: host(a),
                        a_shape,
                        b: host(b),
                        b_shape,
                    };
                    out.insert(&format!("model.layers.{i}.{rel}"), f)
                        .expect("factors of a LoraLinear have consistent shapes");
                }
            }
        }
        out
    }

    /// Number of adapted projections.
    pub fn lora_layer_count(&self) -> usize {
        self.layers
            .iter()
            .flat_map(|l| l.projections())
            .filter(|(_, s)| s.is_lora())
            .count()
    }

    /// Quantize every f32 projection without an adapter to `ty` with ggml's reference quantizer
    /// (QLoRA on a model loaded as f32); already quantized ones are left as they are. The error
    /// names the layer whose rows are not whole blocks of 32.
    pub fn quantize_projections(mut self, ty: QuantType) -> Result<Self, QuantError> {
        let layers = std::mem::take(&mut self.layers);
        let mut out = Vec::with_capacity(layers.len());
        for (i, layer) in layers.into_iter().enumerate() {
            out.push(layer.map_projections(|rel, slot| match slot {
                AdaptableLinear::Base(l) => {
                    let w = l.weight.val().transpose();
                    let shape = w.dims();
                    let q = QuantWeight::quantize_named(&format!("model.layers.{i}.{rel}.weight"), ty, &host(w), shape, &l.weight.val().device())?;
                    Ok(AdaptableLinear::Quantized(QuantLinear::new(q, l.bias.map(|b| b.val()))))
                }
                other => Ok(other),
            })?);
        }
        self.layers = out;
        Ok(self)
    }

    /// Bytes the block projections' frozen weights take on the device (f32 or quantized;
    /// adapters not counted): what QLoRA shrinks.
    pub fn projection_bytes(&self) -> usize {
        let dense = |dims: [usize; 2]| dims[0] * dims[1] * 4;
        self.layers
            .iter()
            .flat_map(|l| l.projections())
            .map(|(_, s)| match s {
                AdaptableLinear::Base(l) => dense(l.weight.dims()),
                AdaptableLinear::Lora(l) => match &l.weight {
                    BaseWeight::Dense(w) => dense(w.dims()),
                    BaseWeight::Quantized(q) => q.bytes_at_rest(),
                },
                AdaptableLinear::Quantized(l) => l.weight.bytes_at_rest(),
            })
            .sum()
    }

    /// Every adapter folded into its base weight (`W + scale·B·A`): a plain model again.
    pub fn merged(mut self) -> Self {
        self.layers = std::mem::take(&mut self.layers)
            .into_iter()
            .map(|l| {
                l.map_projections(|_, s| Ok::<_, std::convert::Infallible>(s.merged()))
                    .unwrap_or_else(|e| match e {})
            })
            .collect();
        self
    }

    /// Freeze the model and attach the saved factors of `adapter` (scale and dropout from its
    /// config). An already adapted projection gets the new factors on its base weight. Fails,
    /// naming the layer, when a path is not a projection of this model or a shape disagrees.
    pub fn apply_adapter(self, adapter: &AdapterWeights) -> Result<Self, LoraError> {
        adapter.config.validate()?;
        let mut m = self.no_grad();
        let n = m.layers.len();
        let bad = |path: &str, reason: String| LoraError::Config {
            field: "layers",
            reason: format!("{path}: {reason}"),
        };
        let mut by_layer: Vec<Vec<(&'static str, &str, &LoraFactors)>> = vec![Vec::new(); n];
        for (path, f) in &adapter.layers {
            let parsed = path
                .strip_prefix("model.layers.")
                .and_then(|r| r.split_once('.'))
                .and_then(|(i, rel)| Some((i.parse::<usize>().ok()?, rel)))
                .and_then(|(i, rel)| Some((i, *PROJECTIONS.iter().find(|p| **p == rel)?)));
            match parsed {
                Some((i, rel)) if i < n => by_layer[i].push((rel, path.as_str(), f)),
                _ => {
                    return Err(bad(
                        path,
                        format!("not a projection of this {n}-block decoder"),
                    ));
                }
            }
        }
        let device = m.embed_tokens.val().device();
        let (scale, dropout) = (adapter.config.scale(), adapter.config.dropout);
        let mut layers = Vec::with_capacity(n);
        for (i, layer) in std::mem::take(&mut m.layers).into_iter().enumerate() {
            let wanted = &by_layer[i];
            layers.push(layer.map_projections(|rel, slot| {
                let Some((_, path, f)) = wanted.iter().find(|(r, _, _)| *r == rel) else {
                    return Ok(slot);
                };
                // Base weights are `[in, out]`; LoRA keeps `[out, in]` as PEFT does. A quantized
                // base stays quantized (QLoRA).
                let (weight, bias) = match slot {
                    AdaptableLinear::Base(l) => (
                        BaseWeight::Dense(Param::from_tensor(l.weight.val().transpose().detach()).set_require_grad(false)),
                        l.bias.map(|b| b.val()),
                    ),
                    AdaptableLinear::Lora(l) => (l.weight, l.bias.map(|b| b.val())),
                    AdaptableLinear::Quantized(l) => (BaseWeight::Quantized(l.weight), l.bias.map(|b| b.val())),
                };
                let [out_f, in_f] = weight.dims();
                if f.a_shape[1] != in_f || f.b_shape[0] != out_f {
                    return Err(bad(
                        path,
                        format!(
                            "lora_A {:?} / lora_B {:?} do not fit a [{out_f}, {in_f}] weight",
                            f.a_shape, f.b_shape
                        ),
                    ));
                }
                let t = |v: &[f32], s: [usize; 2]| {
                    Tensor::<2>::from_data(TensorData::new(v.to_vec(), s), &device)
                };
                let l = LoraLinear::from_base(
                    weight,
                    bias,
                    t(&f.a, f.a_shape),
                    t(&f.b, f.b_shape),
                    scale,
                    dropout,
                );
                Ok(AdaptableLinear::Lora(fix_ids(l, path)))
            })?);
        }
        m.layers = layers;
        Ok(m)
    }

    /// All weights under their Hugging Face names and layouts (`[out, in]` for linear layers),
    /// adapters fused (`W + scale·B·A`): what a merged safetensors checkpoint holds.
    pub fn hf_tensors(&self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let mut out = Vec::new();
        let push2 = |out: &mut Vec<_>, name: String, t: Tensor<2>| {
            let dims = t.dims().to_vec();
            out.push((name, dims, host(t)));
        };
        let vec1 = |t: Tensor<1>| {
            t.into_data()
                .try_into_vec_as::<f32>()
                .expect("f32 parameters")
        };
        push2(
            &mut out,
            "model.embed_tokens.weight".into(),
            self.embed_tokens.val(),
        );
        for (i, layer) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            let g = layer.input_layernorm.gamma.val();
            out.push((
                format!("{p}.input_layernorm.weight"),
                g.dims().to_vec(),
                vec1(g),
            ));
            for (rel, slot) in layer.projections() {
                let (w, bias) = slot.fused_weight();
                push2(&mut out, format!("{p}.{rel}.weight"), w);
                if let Some(b) = bias {
                    out.push((format!("{p}.{rel}.bias"), b.dims().to_vec(), vec1(b)));
                }
            }
            for (name, norm) in [
                ("self_attn.q_norm", &layer.self_attn.q_norm),
                ("self_attn.k_norm", &layer.self_attn.k_norm),
            ] {
                if let Some(norm) = norm {
                    let g = norm.gamma.val();
                    out.push((format!("{p}.{name}.weight"), g.dims().to_vec(), vec1(g)));
                }
            }
            let g = layer.post_attention_layernorm.gamma.val();
            out.push((
                format!("{p}.post_attention_layernorm.weight"),
                g.dims().to_vec(),
                vec1(g),
            ));
        }
        let g = self.norm.gamma.val();
        out.push(("model.norm.weight".into(), g.dims().to_vec(), vec1(g)));
        if let Some(head) = &self.lm_head {
            push2(
                &mut out,
                "lm_head.weight".into(),
                head.weight.val().transpose(),
            );
        }
        out
    }

    /// A decoder with seeded random weights (tests, benchmarks): projections
    /// `U(-1/√in, 1/√in)`, embeddings `U(-1, 1)`, norm weights 1.
    pub fn random(cfg: &DecoderConfig, device: &Device, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut tensors = HashMap::new();
        let mut add = |name: String, shape: Vec<usize>, bound: f32, rng: &mut ChaCha8Rng| {
            let n: usize = shape.iter().product();
            let v = (0..n).map(|_| rng.random_range(-bound..bound)).collect();
            tensors.insert(name, (shape, v));
        };
        let (d, h, kv, hd, ff, v) = (
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
            cfg.intermediate_size,
            cfg.vocab_size,
        );
        add(
            "model.embed_tokens.weight".into(),
            vec![v, d],
            1.0,
            &mut rng,
        );
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            for (rel, out_f, in_f, bias) in [
                ("self_attn.q_proj", h * hd, d, cfg.qkv_bias),
                ("self_attn.k_proj", kv * hd, d, cfg.qkv_bias),
                ("self_attn.v_proj", kv * hd, d, cfg.qkv_bias),
                ("self_attn.o_proj", d, h * hd, cfg.o_bias),
                ("mlp.gate_proj", ff, d, false),
                ("mlp.up_proj", ff, d, false),
                ("mlp.down_proj", d, ff, false),
            ] {
                let bound = 1.0 / (in_f as f32).sqrt();
                add(
                    format!("{p}.{rel}.weight"),
                    vec![out_f, in_f],
                    bound,
                    &mut rng,
                );
                if bias {
                    add(format!("{p}.{rel}.bias"), vec![out_f], bound, &mut rng);
                }
            }
        }
        if !cfg.tie_word_embeddings {
            add(
                "lm_head.weight".into(),
                vec![v, d],
                1.0 / (d as f32).sqrt(),
                &mut rng,
            );
        }
        let ones = |n: usize| (vec![n], vec![1.0f32; n]);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            tensors.insert(format!("{p}.input_layernorm.weight"), ones(d));
            tensors.insert(format!("{p}.post_attention_layernorm.weight"), ones(d));
            if cfg.qk_norm {
                tensors.insert(format!("{p}.self_attn.q_norm.weight"), ones(hd));
                tensors.insert(format!("{p}.self_attn.k_norm.weight"), ones(hd));
            }
        }
        tensors.insert("model.norm.weight".into(), ones(d));
        Self::from_tensors(
            cfg,
            TensorSource::map(Path::new("(random)"), tensors),
            device,
        )
        .expect("random tensors have the configured names and shapes")
    }
}

// ------------------------------------------------------------------------------------------ sampling

/// Options for [`CausalLm::generate`], named as MLX-LM's `generate` flags.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches `top_p` (1.0 = off).
    pub top_p: f32,
    pub seed: u64,
    /// Extra stop tokens (the model's end-of-sequence tokens always stop).
    pub stop_tokens: Vec<u32>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stop_tokens: Vec::new(),
        }
    }
}

/// Pick the next token from one row of logits: argmax at temperature 0, else a seeded draw from
/// softmax(logits / T) restricted to the top-p nucleus. Ties in argmax go to the lowest id.
pub fn sample(logits: &[f32], temperature: f32, top_p: f32, rng: &mut ChaCha8Rng) -> u32 {
    if temperature <= 0.0 {
        let mut best = 0;
        for (i, &v) in logits.iter().enumerate() {
            if v > logits[best] {
                best = i;
            }
        }
        return best as u32;
    }
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(usize, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &v)| (i, (((v - max) / temperature) as f64).exp()))
        .collect();
    let total: f64 = probs.iter().map(|p| p.1).sum();
    probs.iter_mut().for_each(|p| p.1 /= total);
    if top_p < 1.0 {
        probs.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap().then(a.0.cmp(&b.0)));
        let mut cum = 0.0;
        let mut keep = probs.len();
        for (k, p) in probs.iter().enumerate() {
            cum += p.1;
            if cum >= top_p as f64 {
                keep = k + 1;
                break;
            }
        }
        probs.truncate(keep);
    }
    let mass: f64 = probs.iter().map(|p| p.1).sum();
    let mut u = rng.random::<f64>() * mass;
    for &(i, p) in &probs {
        if u < p {
            return i as u32;
        }
        u -= p;
    }
    probs.last().map(|p| p.0 as u32).unwrap_or(0)
}

// ------------------------------------------------------------------------------------------ bundle

/// A decoder with its tokenizer, chat template and stop tokens: what `tunelab generate` loads.
pub struct CausalLm {
    pub model: Decoder,
    pub config: DecoderConfig,
    pub tokenizer: tokenizers::Tokenizer,
    /// The chat template, when the model has one.
    pub chat_template: Option<ChatTemplate>,
    /// Tokens that end generation (end-of-sequence and end-of-turn).
    pub eos_token_ids: Vec<u32>,
    /// Whether encoding adds a beginning-of-sequence token.
    pub add_bos: bool,
    pub bos_token: Option<String>,
    pub source: PathBuf,
}

impl CausalLm {
    /// Load a `.gguf` file or a Hugging Face folder.
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self, DecoderError> {
        Self::load_with(path, device, QuantizeBase::None)
    }

    /// [`CausalLm::load`] with the block projections kept or made quantized (QLoRA's frozen
    /// base, see [`QuantizeBase`]).
    pub fn load_with(path: impl AsRef<Path>, device: &Device, quantize: QuantizeBase) -> Result<Self, DecoderError> {
        let path = path.as_ref();
        if path.is_dir() {
            Self::load_hf_dir_with(path, device, quantize)
        } else {
            Self::load_gguf_with(path, device, quantize)
        }
    }

    /// Load model, tokenizer and chat template from one GGUF file.
    pub fn load_gguf(path: &Path, device: &Device) -> Result<Self, DecoderError> {
        Self::load_gguf_with(path, device, QuantizeBase::None)
    }

    fn load_gguf_with(path: &Path, device: &Device, quantize: QuantizeBase) -> Result<Self, DecoderError> {
        let g = GgufFile::open(path)?;
        let (model, config) = Decoder::from_gguf_with(&g, device, quantize)?;
        let tok = crate::io::gguf::GgufTokenizer::from_gguf(&g)?;
        let template_text = g
            .get("tokenizer.chat_template")
            .and_then(|v| v.as_str())
            .map(str::to_string);
        let token_text = |id: Option<u32>| id.and_then(|i| tok.tokenizer.id_to_token(i));
        let bos_token = token_text(tok.bos_token_id);
        let eos_token = token_text(tok.eos_token_id);
        let chat_template = template_text
            .map(|t| {
                ChatTemplate::new(
                    &t,
                    bos_token.clone(),
                    eos_token.clone(),
                    format!("{} (tokenizer.chat_template)", path.display()),
                )
            })
            .transpose()?;
        let mut eos = tok.eos_token_id.into_iter().collect::<Vec<_>>();
        eos.extend(tok.eot_token_id);
        // Chat models end a turn with a token the metadata may not name (`<|im_end|>`, `<|eot_id|>`).
        for t in ["<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"] {
            if let Some(id) = tok.tokenizer.token_to_id(t) {
                eos.push(id);
            }
        }
        eos.sort();
        eos.dedup();
        Ok(Self {
            model,
            config,
            tokenizer: tok.tokenizer,
            chat_template,
            eos_token_ids: eos,
            add_bos: tok.add_bos,
            bos_token,
            source: path.to_path_buf(),
        })
    }

    /// Load a Hugging Face folder: `config.json`, safetensors, `tokenizer.json`,
    /// `tokenizer_config.json` (chat template, bos/eos), `generation_config.json` (eos ids).
    pub fn load_hf_dir(dir: &Path, device: &Device) -> Result<Self, DecoderError> {
        Self::load_hf_dir_with(dir, device, QuantizeBase::None)
    }

    fn load_hf_dir_with(dir: &Path, device: &Device, quantize: QuantizeBase) -> Result<Self, DecoderError> {
        let (model, config) = Decoder::from_hf_dir_with(dir, device, quantize)?;
        let tok_path = dir.join("tokenizer.json");
        let tokenizer =
            tokenizers::Tokenizer::from_file(&tok_path).map_err(|e| DecoderError::Tokenizer {
                path: tok_path.clone(),
                reason: e.to_string(),
            })?;
        let read_json = |name: &str| -> Result<Option<serde_json::Value>, DecoderError> {
            let p = dir.join(name);
            if !p.exists() {
                return Ok(None);
            }
            let text = std::fs::read_to_string(&p).map_err(|source| DecoderError::Io {
                path: p.clone(),
                source,
            })?;
            serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| DecoderError::Config {
                    path: p.clone(),
                    field: "(file)".into(),
                    reason: format!("line {}: {e}", e.line()),
                })
        };
        let tc = read_json("tokenizer_config.json")?.unwrap_or_default();
        // Special tokens are strings or {"content": ...} objects.
        let token_str = |v: &serde_json::Value| {
            v.as_str()
                .map(str::to_string)
                .or_else(|| v["content"].as_str().map(str::to_string))
        };
        let bos_token = token_str(&tc["bos_token"]);
        let eos_token = token_str(&tc["eos_token"]);
        let mut template_text = tc["chat_template"].as_str().map(str::to_string);
        if template_text.is_none() {
            let jinja = dir.join("chat_template.jinja");
            if jinja.exists() {
                template_text =
                    Some(
                        std::fs::read_to_string(&jinja).map_err(|source| DecoderError::Io {
                            path: jinja.clone(),
                            source,
                        })?,
                    );
            }
        }
        let chat_template = template_text
            .map(|t| {
                ChatTemplate::new(
                    &t,
                    bos_token.clone(),
                    eos_token.clone(),
                    format!("{}", dir.join("tokenizer_config.json").display()),
                )
            })
            .transpose()?;
        let mut eos: Vec<u32> = eos_token
            .as_deref()
            .and_then(|t| tokenizer.token_to_id(t))
            .into_iter()
            .collect();
        if let Some(gc) = read_json("generation_config.json")? {
            match &gc["eos_token_id"] {
                serde_json::Value::Number(n) => eos.extend(n.as_u64().map(|v| v as u32)),
                serde_json::Value::Array(a) => {
                    eos.extend(a.iter().filter_map(|v| v.as_u64().map(|v| v as u32)))
                }
                _ => {}
            }
        }
        eos.sort();
        eos.dedup();
        let add_bos = tc["add_bos_token"].as_bool().unwrap_or(false);
        Ok(Self {
            model,
            config,
            tokenizer,
            chat_template,
            eos_token_ids: eos,
            add_bos,
            bos_token,
            source: dir.to_path_buf(),
        })
    }

    /// Token ids of `text`; special tokens written in the text (`<|im_start|>`) are recognised.
    /// `add_special` adds the BOS token when the model wants one.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, DecoderError> {
        let enc =
            self.tokenizer
                .encode(text, add_special)
                .map_err(|e| DecoderError::Tokenizer {
                    path: self.source.clone(),
                    reason: e.to_string(),
                })?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String, DecoderError> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| DecoderError::Tokenizer {
                path: self.source.clone(),
                reason: e.to_string(),
            })
    }

    /// Generate up to `max_tokens` new tokens after `prompt`, calling `on_token` for each.
    /// Stops at an end-of-sequence or stop token (not included in the result).
    pub fn generate(
        &self,
        prompt: &[u32],
        opts: &GenerateOptions,
        mut on_token: impl FnMut(u32),
    ) -> Vec<u32> {
        let device = self.model.embed_tokens.val().device();
        let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
        let mut cache = KvCache::new(self.model.num_layers());
        let mut out = Vec::new();
        let mut input: Vec<u32> = prompt.to_vec();
        while out.len() < opts.max_tokens && !input.is_empty() {
            let ids = Tensor::<2, Int>::from_data(
                TensorData::new(
                    input.iter().map(|&i| i as i64).collect::<Vec<_>>(),
                    [1, input.len()],
                ),
                &device,
            );
            let logits = self.model.forward_last(ids, Some(&mut cache));
            let row: Vec<f32> = logits
                .into_data()
                .try_into_vec_as::<f32>()
                .expect("f32 logits");
            let next = sample(&row, opts.temperature, opts.top_p, &mut rng);
            if self.eos_token_ids.contains(&next) || opts.stop_tokens.contains(&next) {
                break;
            }
            on_token(next);
            out.push(next);
            input = vec![next];
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `tiny_llama.gguf` (llama.cpp's conversion, q/k rows permuted) rewritten with Q4_0
    /// attention and Q8_0 MLP projections (ggml's reference quantizers); other tensors as they were.
    fn quantized_tiny_gguf(dir: &Path) -> PathBuf {
        use crate::io::gguf::{GgmlType, GgufWriter, quantize_q4_0};
        let src = GgufFile::open(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/decoder/tiny_llama.gguf")).unwrap();
        let mut w = GgufWriter::new();
        for (k, v) in src.metadata.iter().filter(|(k, _)| k != "general.alignment") {
            w.add_metadata(k, v.clone());
        }
        for t in &src.tensors {
            let (shape, values) = src.tensor_f32(&t.name).unwrap();
            let proj = t.name.starts_with("blk.") && t.name.ends_with(".weight") && shape.len() == 2;
            if proj && t.name.contains(".attn_") {
                w.add_raw_tensor(&t.name, &shape, GgmlType::Q4_0, quantize_q4_0(&values));
            } else if proj && t.name.contains(".ffn_") {
                w.add_tensor(&t.name, &shape, GgmlType::Q8_0, &values);
            } else {
                w.add_tensor(&t.name, &shape, GgmlType::F32, &values);
            }
        }
        let path = dir.join("tiny_q.gguf");
        w.write(&path).unwrap();
        path
    }

    /// `keep` holds the file's blocks (the permuted q/k rows restored on whole rows of blocks)
    /// and dequantizes to exactly the f32 model loaded from the same file; `q8_0` keeps the
    /// Q8_0 tensors and requantizes the others.
    #[test]
    fn kept_gguf_blocks_are_the_dequantized_model() {
        let dir = tempfile::tempdir().unwrap();
        let g = GgufFile::open(quantized_tiny_gguf(dir.path())).unwrap();
        let device = Device::flex();
        let (dense, _) = Decoder::from_gguf(&g, &device).unwrap();
        let (kept, _) = Decoder::from_gguf_with(&g, &device, QuantizeBase::Keep).unwrap();
        let kinds = |m: &Decoder| {
            m.layers[0].projections().iter().map(|(_, s)| match s {
                AdaptableLinear::Quantized(q) => Some(q.weight.ty),
                _ => None,
            }).collect::<Vec<_>>()
        };
        let (q4, q8) = (Some(QuantType::Q4_0), Some(QuantType::Q8_0));
        assert_eq!(kinds(&kept), vec![q4, q4, q4, q4, q8, q8, q8]);
        assert!(kinds(&dense).iter().all(Option::is_none));
        let (kt, dt) = (kept.hf_tensors(), dense.hf_tensors());
        assert_eq!(kt.len(), dt.len());
        for ((name, shape, k), (dname, dshape, d)) in kt.iter().zip(&dt) {
            let same = k.iter().zip(d).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(name == dname && shape == dshape && same, "{name}: not the f32 load's values bit for bit");
        }
        assert!(kept.projection_bytes() * 3 < dense.projection_bytes(), "{} vs {}", kept.projection_bytes(), dense.projection_bytes());
        let (q8_all, _) = Decoder::from_gguf_with(&g, &device, QuantizeBase::Q8_0).unwrap();
        assert_eq!(kinds(&q8_all), vec![q8; 7]);
        let q8_mlp = |m: &Decoder| m.hf_tensors().into_iter().filter(|(n, _, _)| n.contains(".mlp.")).collect::<Vec<_>>();
        assert_eq!(q8_mlp(&q8_all), q8_mlp(&dense), "Q8_0 blocks kept, not requantized");
        // Same logits (up to matmul order) and an adapter attaches over the blocks.
        let ids = Tensor::<2, Int>::from_data(TensorData::new(vec![1i64, 5, 9, 3], [1, 4]), &device);
        let (a, b) = (flat(kept.forward(ids.clone(), None, None)), flat(dense.forward(ids, None, None)));
        let diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(diff < 1e-5, "logits differ by {diff}");
        let cfg = LoraConfig { rank: 2, alpha: 4.0, ..LoraConfig::default() };
        let adapted = kept.with_lora(&cfg, &mut ChaCha8Rng::seed_from_u64(0)).unwrap();
        assert_eq!(adapted.lora_layer_count(), 14);
        let AdaptableLinear::Lora(l) = &adapted.layers[1].self_attn.q_proj else { panic!() };
        assert!(l.weight.is_quantized());
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: w.reshape(n_head, 2, hd/2, cols).swapaxes(1, 2). With hd = 4 and one head,
        // HF rows [r0, r1, r2, r3] (halves [r0 r1], [r2 r3]) become GGUF rows [r0, r2, r1, r3].
        let gguf = vec![0.0, 2.0, 1.0, 3.0, 10.0, 12.0, 11.0, 13.0]; // 2 heads, 1 column
        assert_eq!(
            unpermute_rows(&gguf, 2, 1),
            vec![0.0, 1.0, 2.0, 3.0, 10.0, 11.0, 12.0, 13.0]
        );
    }

    #[test]
    fn gguf_names_follow_llama_cpp() {
        assert_eq!(
            gguf_name("model.layers.12.self_attn.k_proj.bias").unwrap(),
            "blk.12.attn_k.bias"
        );
        assert_eq!(
            gguf_name("model.layers.0.mlp.down_proj.weight").unwrap(),
            "blk.0.ffn_down.weight"
        );
        assert_eq!(
            gguf_name("model.embed_tokens.weight").unwrap(),
            "token_embd.weight"
        );
        assert!(gguf_name("model.layers.0.unknown.weight").is_none());
    }

    #[test]
    fn llama3_rope_scaling_matches_transformers_formula() {
        // Llama 3.1 8B: theta 500000, factor 8, low 1, high 4, original 8192, head_dim 128.
        // transformers keeps frequencies with wavelength < 8192/4 = 2048 and divides those with
        // wavelength > 8192 by 8. i = 0: wavelength 2*pi -> unchanged; i = 63: divided by 8.
        let cfg = DecoderConfig {
            architecture: Architecture::Llama,
            vocab_size: 1,
            hidden_size: 128,
            intermediate_size: 1,
            num_hidden_layers: 0,
            num_attention_heads: 1,
            num_key_value_heads: 1,
            head_dim: 128,
            max_position_embeddings: 1,
            rms_norm_eps: 1e-5,
            rope_theta: 500_000.0,
            rope_scaling: Some(RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192.0,
            }),
            tie_word_embeddings: true,
            qkv_bias: false,
            o_bias: false,
            qk_norm: false,
        };
        let f = cfg.rope_inv_freq();
        assert_eq!(f[0], 1.0);
        let base63 = 1.0 / 500_000f64.powf(126.0 / 128.0);
        assert!((f[63] as f64 - base63 / 8.0).abs() < 1e-12);
        // A middle frequency (wavelength between 2048 and 8192, i = 28..=35) is blended.
        let i = 32;
        let base = 1.0 / 500_000f64.powf(2.0 * i as f64 / 128.0);
        let wavelen = 2.0 * std::f64::consts::PI / base;
        assert!(wavelen > 2048.0 && wavelen < 8192.0, "{wavelen}");
        assert!((f[i] as f64) < base && (f[i] as f64) > base / 8.0);
    }

    #[test]
    fn greedy_and_seeded_sampling() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        assert_eq!(
            sample(&[0.0, 3.0, 3.0, -1.0], 0.0, 1.0, &mut rng),
            1,
            "ties go to the lowest id"
        );
        // top_p tiny keeps only the most likely token, whatever the draw.
        for _ in 0..20 {
            assert_eq!(sample(&[0.0, 5.0, 1.0], 1.0, 0.01, &mut rng), 1);
        }
        // Same seed, same draws.
        let draws = |seed| {
            let mut r = ChaCha8Rng::seed_from_u64(seed);
            (0..50)
                .map(|_| sample(&[0.0, 0.5, 1.0, 0.2], 1.0, 1.0, &mut r))
                .collect::<Vec<_>>()
        };
        assert_eq!(draws(7), draws(7));
        // Frequencies follow softmax: token 2 has p = e^1 / (1 + e^.5 + e + e^.2) ~ 0.42.
        let mut r = ChaCha8Rng::seed_from_u64(3);
        let n = 4000;
        let hits = (0..n)
            .filter(|_| sample(&[0.0, 0.5, 1.0, 0.2], 1.0, 1.0, &mut r) == 2)
            .count();
        let p = 1f64.exp() / (1.0 + 0.5f64.exp() + 1f64.exp() + 0.2f64.exp());
        assert!(((hits as f64 / n as f64) - p).abs() < 0.03, "{hits}");
    }

    // ---- LoRA

    use burn::tensor::activation::log_softmax;

    fn ids(device: &Device) -> Tensor<2, Int> {
        Tensor::<2, Int>::from_data(
            TensorData::new(vec![5i64, 17, 99, 3, 42, 8, 1, 77, 23, 64, 0, 101], [2, 6]),
            device,
        )
    }

    /// Mean next-token cross-entropy of `ids` (the SFT loss without masking).
    fn next_token_loss(m: &Decoder, ids: Tensor<2, Int>) -> Tensor<1> {
        let [b, t] = ids.dims();
        let logits = m.forward(ids.clone().narrow(1, 0, t - 1), None, None);
        let targets = ids.narrow(1, 1, t - 1).reshape([b, t - 1, 1]);
        let logp = log_softmax(logits, 2).gather(2, targets);
        logp.mean().neg().reshape([1])
    }

    fn flat<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_into_vec_as::<f32>().unwrap()
    }

    /// An adapter on `model` with random (non-zero) A and B, so every factor has a gradient.
    fn random_adapter(model: &Decoder, config: &LoraConfig, seed: u64) -> AdapterWeights {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let zero = model
            .clone()
            .with_lora(config, &mut rng)
            .unwrap()
            .adapter_weights(config);
        let mut out = AdapterWeights::new(config.clone());
        for (path, f) in zero.layers {
            let b = (0..f.b.len())
                .map(|_| rng.random_range(-0.3f32..0.3))
                .collect();
            out.insert(&path, LoraFactors { b, ..f }).unwrap();
        }
        out
    }

    #[test]
    fn lora_trains_only_adapters() {
        let device = Device::flex().autodiff();
        let cfg = LoraConfig {
            rank: 2,
            alpha: 4.0,
            num_layers: 1,
            ..LoraConfig::default()
        };
        let m = Decoder::random(&DecoderConfig::tiny_llama(), &device, 1)
            .with_lora(&cfg, &mut ChaCha8Rng::seed_from_u64(0))
            .unwrap();
        // num_layers = 1 counts from the top: only the last block is adapted, all 7 projections.
        assert!(m.layers[0].projections().iter().all(|(_, s)| !s.is_lora()));
        assert!(m.layers[1].projections().iter().all(|(_, s)| s.is_lora()));
        assert_eq!(m.lora_layer_count(), 7);
        let grads = next_token_loss(&m, ids(&device)).backward();

        struct WithGrad<'a>(&'a burn::tensor::Gradients, Vec<String>, Vec<String>);
        impl burn::module::ModuleVisitor for WithGrad<'_> {
            fn enter_module(&mut self, name: &str, _: &str) {
                self.1.push(name.to_string());
            }
            fn exit_module(&mut self, _: &str, _: &str) {
                self.1.pop();
            }
            fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
                if p.val().grad(self.0).is_some() {
                    self.2.push(self.1.join("."));
                }
            }
        }
        let mut v = WithGrad(&grads, Vec::new(), Vec::new());
        m.visit(&mut v);
        assert_eq!(
            v.2.len(),
            14,
            "A and B of 7 projections, nothing else: {:?}",
            v.2
        );
        assert!(
            v.2.iter()
                .all(|p| p.ends_with("lora_a") || p.ends_with("lora_b")),
            "{:?}",
            v.2
        );
        // The adapted model starts as its base (B = 0).
        let base = Decoder::random(&DecoderConfig::tiny_llama(), &Device::flex(), 1);
        let adapted = m.valid();
        let (x, y) = (
            flat(base.forward(ids(&Device::flex()), None, None)),
            flat(adapted.forward(ids(&Device::flex()), None, None)),
        );
        assert!(x.iter().zip(&y).all(|(a, b)| (a - b).abs() < 1e-5));
    }

    #[test]
    fn merged_and_reloaded_adapters_give_the_adapted_logits() {
        let device = Device::flex();
        let cfg = LoraConfig {
            rank: 4,
            alpha: 8.0,
            ..LoraConfig::default()
        };
        let base = Decoder::random(&DecoderConfig::tiny_llama(), &device, 2);
        let adapter = random_adapter(&base, &cfg, 3);
        assert_eq!(adapter.layers.len(), 14);
        assert!(adapter.layers.contains_key("model.layers.1.mlp.down_proj"));
        let adapted = base.clone().apply_adapter(&adapter).unwrap();
        assert_eq!(
            adapted.adapter_weights(&cfg),
            adapter,
            "adapter_weights returns what was applied"
        );
        let want = flat(adapted.forward(ids(&device), None, None));
        let plain = flat(base.forward(ids(&device), None, None));
        let moved = want
            .iter()
            .zip(&plain)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(moved > 1e-2, "the adapter changes the logits ({moved})");
        let merged = adapted.merged();
        assert_eq!(merged.lora_layer_count(), 0);
        let got = flat(merged.forward(ids(&device), None, None));
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(worst < 1e-4, "merged vs adapted: max |diff| {worst}");
        // hf_tensors of the merged and of the adapted model are the same fused weights.
        let fused: HashMap<String, (Vec<usize>, Vec<f32>)> = merged
            .hf_tensors()
            .into_iter()
            .map(|(n, s, v)| (n, (s, v)))
            .collect();
        let rebuilt = Decoder::from_tensors(
            &DecoderConfig::tiny_llama(),
            TensorSource::map(Path::new("(fused)"), fused),
            &device,
        )
        .unwrap();
        let again = flat(rebuilt.forward(ids(&device), None, None));
        assert!(again.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-4));
    }

    #[test]
    fn lora_gradients_match_finite_differences() {
        let device = Device::flex().autodiff();
        let cfg = LoraConfig {
            rank: 2,
            alpha: 4.0,
            num_layers: 1,
            ..LoraConfig::default()
        };
        let base = Decoder::random(&DecoderConfig::tiny_llama(), &device, 4);
        let adapter = random_adapter(&base, &cfg, 5);
        let m = base.apply_adapter(&adapter).unwrap();
        let x = ids(&device);
        let report = crate::train::gradcheck::check_module_gradients(
            &m,
            |m| next_token_loss(m, x.clone()),
            1e-2,
            2,
        );
        eprintln!("decoder LoRA grad check: {report:?}");
        assert_eq!(report.checked, 28, "2 entries of A and B in 7 projections");
        assert!(report.max_rel_err < 1e-2, "{report:?}");
    }

    #[test]
    fn lora_targets_are_matched_or_named() {
        let device = Device::flex();
        let m = || Decoder::random(&DecoderConfig::tiny_llama(), &device, 6);
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let cfg = |t: &[&str]| LoraConfig {
            target_modules: t.iter().map(|s| s.to_string()).collect(),
            ..LoraConfig::default()
        };
        let err = m()
            .with_lora(&cfg(&["q_proj", "query"]), &mut rng)
            .unwrap_err();
        assert!(
            matches!(&err, LoraError::NoMatch { target, .. } if target == "query"),
            "{err}"
        );
        assert!(err.to_string().contains("'query'"), "{err}");
        let a = m()
            .with_lora(
                &cfg(&["self_attn.v_proj", "model.layers.0.mlp.up_proj"]),
                &mut rng,
            )
            .unwrap();
        let paths: Vec<String> = a
            .adapter_weights(&LoraConfig::default())
            .layers
            .into_keys()
            .collect();
        assert_eq!(
            paths,
            [
                "model.layers.0.mlp.up_proj",
                "model.layers.0.self_attn.v_proj",
                "model.layers.1.self_attn.v_proj"
            ]
        );
        // A saved adapter whose path is not a projection of the model is named.
        let mut bad = random_adapter(&m(), &LoraConfig::default(), 1);
        let f = bad.layers["model.layers.0.self_attn.q_proj"].clone();
        bad.layers
            .insert("model.layers.7.self_attn.q_proj".into(), f);
        let err = m().apply_adapter(&bad).unwrap_err().to_string();
        assert!(err.contains("model.layers.7.self_attn.q_proj"), "{err}");
    }

    #[test]
    fn hf_config_round_trips() {
        let mut cfg = DecoderConfig::tiny_llama();
        cfg.rope_scaling = Some(RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8.0,
        });
        let json = cfg.to_hf_json().unwrap();
        assert_eq!(
            DecoderConfig::from_hf_json(Path::new("config.json"), &json).unwrap(),
            cfg
        );
        let qwen = DecoderConfig {
            architecture: Architecture::Qwen3,
            qk_norm: true,
            qkv_bias: false,
            o_bias: false,
            tie_word_embeddings: true,
            ..DecoderConfig::tiny_llama()
        };
        let json = qwen.to_hf_json().unwrap();
        assert_eq!(
            DecoderConfig::from_hf_json(Path::new("config.json"), &json).unwrap(),
            qwen
        );
    }
}

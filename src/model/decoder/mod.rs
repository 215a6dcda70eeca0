//! Llama-family decoders: Llama 2/3, Mistral, SmolLM2, Qwen2 and Qwen3, in the style of MLX-LM's
//! `models/llama.py`: a config first, then small modules (`Projection`, `Attention`, `Mlp`,
//! `DecoderLayer`, `Decoder`) and a KV cache, read top to bottom in this file. Beside it, as
//! candle-transformers and MLX-LM split theirs: `load.rs` (GGUF and safetensors weights in and
//! out), `lora.rs` (adapter wiring) and `generate.rs` (sampling and the [`CausalLm`] bundle).
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

use std::path::{Path, PathBuf};

use burn::module::{Module, Param};
use burn::nn::RmsNorm;
use burn::tensor::module::{embedding, linear};
use burn::tensor::{Bool, FloatDType, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::data::chat_template::TemplateError;
use crate::io::gguf::{GgufError, GgufFile};
use crate::lora::{
    AdaptableLinear,
    QuantError,
    SharedInput,
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
        // Qwen3's per-head query and key norms and RoPE act on the last axis: applied before the
        // heads are moved in front of the positions (RoPE moves them as it writes), they read
        // contiguous rows. The RoPE tables are f32; the rotation runs in the activations' dtype
        // (`model::rope`).
        let heads = |y: Tensor<3>, n: usize, norm: Option<&RmsNorm>, rotate: bool| {
            let y = y.reshape([b, t, n, hd]);
            let y = match norm {
                Some(norm) => rms_norm_f32(norm, y),
                None => y,
            };
            // RoPE writes `[b, n, t, hd]` itself; otherwise the swap is a view.
            if rotate { crate::model::rope::rope(y, cos.clone(), sin.clone()) } else { y.swap_dims(1, 2) }
        };
        // One f32 copy of `x` for the three adapters' branches under f16 (`SharedInput`).
        let x = SharedInput::new(x);
        let (qn, kn) = match (&self.q_norm, &self.k_norm) {
            (Some(qn), Some(kn)) => (Some(qn), Some(kn)),
            _ => (None, None),
        };
        let q = heads(self.q_proj.forward_shared(&x), h, qn, true);
        let mut k = heads(self.k_proj.forward_shared(&x), kvh, kn, true);
        let mut v = heads(self.v_proj.forward_shared(&x), kvh, None, false);
        if let Some(c) = cache {
            if let Some((pk, pv)) = c.kv.take() {
                k = Tensor::cat(vec![pk, k], 2);
                v = Tensor::cat(vec![pv, v], 2);
            }
            c.kv = Some((k.clone(), v.clone()));
        }
        // Grouped-query attention without copying K/V: fold the query heads of one K/V head into
        // the sequence axis, so one batched matmul serves the whole group.
        let rep = h / kvh;
        let q = q.reshape([b, kvh, rep * t, hd]);
        let scale = 1.0 / (hd as f32).sqrt();
        // Scores in f32 for the scale, mask and softmax; in training on the CPU the
        // probabilities are computed again in the backward pass instead of kept (`model::sdpa`).
        let out = crate::model::sdpa::grouped_attention(q, k, v, mask, h, scale, true)
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
        let x = SharedInput::new(x);
        self.down_proj
            .forward(crate::model::swiglu::swiglu(self.gate_proj.forward_shared(&x), self.up_proj.forward_shared(&x)))
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
                .forward(rms_norm_f32(&self.input_layernorm, x), cos, sin, mask, cache);
        h.clone() + self.mlp.forward(rms_norm_f32(&self.post_attention_layernorm, h))
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
        let (cos, sin, mask) = self.rope_and_mask(b, past, t, padding_mask, &device);
        for (i, layer) in self.layers.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            x = layer.forward(x, &cos, &sin, mask.as_ref(), layer_cache);
        }
        rms_norm_f32(&self.norm, x)
    }

    /// RoPE `cos`/`sin` tables `[t, head_dim]` for positions `past..past+t`, and the additive
    /// attention mask (causal, plus `padding_mask` over the keys), `None` for one position
    /// without padding. What every block of [`Self::forward_hidden`] reads besides its input;
    /// a training step that recomputes blocks one at a time (`train::block_checkpoint`)
    /// builds them once.
    pub fn rope_and_mask(
        &self,
        b: usize,
        past: usize,
        t: usize,
        padding_mask: Option<Tensor<2, Bool>>,
        device: &burn::tensor::Device,
    ) -> (Tensor<2>, Tensor<2>, Option<Tensor<4>>) {
        let device = device.clone();
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
        (cos, sin, mask)
    }

    /// Project hidden states to vocabulary logits, always f32: the head's matmul runs in the
    /// activations' dtype, its output (log-softmax, cross-entropy, sampling) in f32.
    pub fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        let logits = match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => {
                let [b, t, d] = hidden.dims();
                let v = self.embed_tokens.dims()[0];
                hidden
                    .reshape([b * t, d])
                    .matmul(self.embed_tokens.val().transpose())
                    .reshape([b, t, v])
            }
        };
        logits.cast(FloatDType::F32)
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
}

// ------------------------------------------------------------------------------------------ beside
// Loading and saving weights, LoRA wiring and generation live in files beside this one, so the
// architecture above reads top to bottom on its own.

mod full;
mod generate;
mod load;
mod lora;
mod precision;
#[cfg(test)]
mod tests;

pub use full::trains_block;
pub use generate::{CausalLm, GenerateOptions, sample};
pub use load::{EMBEDDING_BOUND, TensorSource, gguf_name, permute_rows};
pub use lora::{PROJECTION_INPUTS, PROJECTIONS, adapter_param_id};
pub use precision::Dtype;
use precision::rms_norm_f32;

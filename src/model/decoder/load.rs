//! Weights in and out of a [`Decoder`]: GGUF files (llama.cpp names, Llama's permuted q/k rows
//! undone) and Hugging Face safetensors folders in, Hugging Face tensors out, seeded random weights.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::nn::{Linear, RmsNorm};
use burn::tensor::{Device, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::io::gguf::GgufFile;
use crate::lora::{
    AdaptableLinear, QuantLinear, QuantType, QuantWeight, QuantizeBase,
};

use super::*;
use super::lora::host;

impl Decoder {
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
pub(super) fn unpermute_rows<T: Copy + Default>(x: &[T], n_heads: usize, cols: usize) -> Vec<T> {
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

/// Half-width of [`Decoder::random`]'s uniform embedding init: standard deviation 0.02, as
/// transformers initialises a decoder from its config (`initializer_range`), so a tied head's
/// logits spread as the PyTorch peer's do (`bench lora` beside `torch_anchor.py`). It was `U(-1, 1)`:
/// logits with a standard deviation of ~14 underflowed the softmax into subnormal floats, which x86
/// cores multiply through slow microcode assists; the head's input gradient then took 2.4x as long
/// (SmolLM2-135M shape on an AVX-512 Xeon), a cost no real checkpoint's logits pay.
pub const EMBEDDING_BOUND: f32 = 0.034_641_016; // 0.02 · √3

impl Decoder {
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
            super::full::layer_tensors(&mut out, i, layer);
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
    /// `U(-1/√in, 1/√in)`, embeddings with transformers' spread ([`EMBEDDING_BOUND`]), norm
    /// weights 1.
    pub fn random(cfg: &DecoderConfig, device: &Device, seed: u64) -> Self {
        Self::random_with(cfg, device, seed, QuantizeBase::None)
    }

    /// [`Decoder::random`] with the seven block projections quantized as `quantize` says
    /// (`keep` has no file type to keep: f32), one projection at a time while loading, so no
    /// f32 device copy of the quantized weights ever exists (`tunelab bench lora --quantize-base`).
    pub fn random_with(cfg: &DecoderConfig, device: &Device, seed: u64, quantize: QuantizeBase) -> Self {
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
            EMBEDDING_BOUND,
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
        Self::from_tensors_with(cfg, TensorSource::map(Path::new("(random)"), tensors), device, quantize)
            .expect("random tensors have the configured names and shapes (rows of whole 32-value blocks when quantized)")
    }
}

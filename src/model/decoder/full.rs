//! Full fine-tuning wiring of a [`Decoder`], as `mlx_lm.lora --fine-tune-type full` trains:
//! every weight of the top `num_layers` blocks (projections, their biases, the block's RMSNorms
//! and Qwen3's q/k norms) learns; the embedding, the final norm, the output head and the lower
//! blocks stay frozen (MLX-LM freezes the model and unfreezes `model.layers[-num_layers:]`).
//!
//! The trained weights travel under their Hugging Face names (`model.layers.29.mlp.up_proj.weight`,
//! `[out, in]`), which are also MLX-LM's parameter names: what `mlx_lm.lora` saves in
//! `adapters.safetensors` for a full fine-tune (`model.trainable_parameters()`), and what its
//! `load_adapters` loads back.
//!
//! ```
//! use burn::tensor::Device;
//! use tunelab::model::decoder::{Decoder, DecoderConfig};
//! let cfg = DecoderConfig::tiny_llama();
//! let model = Decoder::random(&cfg, &Device::flex().autodiff(), 0).with_full_fine_tune(1).unwrap();
//! let trained = model.block_tensors(1);
//! assert!(trained.iter().all(|(name, _, _)| name.starts_with("model.layers.1.")));
//! let (all, trainable) = tunelab::train::memory::param_counts(&model);
//! assert_eq!(trainable, trained.iter().map(|(_, _, v)| v.len()).sum::<usize>());
//! assert!(trainable < all);
//! ```

use std::collections::BTreeMap;

use burn::module::{Module, ModuleMapper, Param};
use burn::nn::Linear;
use burn::tensor::{Tensor, TensorData};

use super::lora::{adapter_param_id, with_id};
use crate::lora::QuantLinear;
use super::*;

/// Whether block `layer` of `total` trains with `num_layers` (-1: all; MLX-LM's
/// `model.layers[-max(num_layers, 0):]`, so 0 also means all).
pub fn trains_block(num_layers: i64, layer: usize, total: usize) -> bool {
    match usize::try_from(num_layers) {
        Ok(n) if n > 0 => layer < total && layer + n >= total,
        _ => layer < total,
    }
}

/// Gives each parameter of a block a fixed id from the block's path and the parameter's place
/// in the block: AdamW moments are keyed by parameter id, so a resumed run (whose model is
/// rebuilt from files) finds the moments of the run it continues.
struct FixIds {
    block: String,
    next: usize,
}

impl ModuleMapper for FixIds {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        self.next += 1;
        with_id(param, adapter_param_id(&self.block, &format!("full.{}", self.next)))
    }
}

fn dense(l: QuantLinear) -> Linear {
    // A quantized base (a GGUF's blocks kept) is dequantized where it trains: Adam updates f32.
    Linear { weight: Param::from_tensor(l.weight.dequantize().transpose().detach()), bias: l.bias.map(|b| Param::from_tensor(b.val().detach())) }
}

impl Decoder {
    /// Freeze everything, then make every weight of the top `num_layers` blocks (-1: all)
    /// trainable, with fixed parameter ids. Projections a loader kept quantized are dequantized
    /// in the trained blocks (frozen blocks keep them quantized). Fails, naming the block, when
    /// a trained block carries LoRA adapters.
    pub fn with_full_fine_tune(self, num_layers: i64) -> Result<Self, DecoderError> {
        let mut m = self.no_grad();
        let n = m.layers.len();
        let mut layers = Vec::with_capacity(n);
        for (i, layer) in std::mem::take(&mut m.layers).into_iter().enumerate() {
            if !trains_block(num_layers, i, n) {
                layers.push(layer);
                continue;
            }
            let layer = layer.map_projections(|rel, slot| match slot {
                AdaptableLinear::Base(l) => Ok(AdaptableLinear::Base(l)),
                AdaptableLinear::Quantized(q) => Ok(AdaptableLinear::Base(dense(q))),
                AdaptableLinear::Lora(_) => Err(DecoderError::Weights {
                    path: PathBuf::from("(model)"),
                    reason: format!("model.layers.{i}.{rel} carries a LoRA adapter: full fine-tuning trains plain weights (fuse the adapter first)"),
                }),
            })?;
            let layer = layer.set_require_grad(true).map(&mut FixIds { block: format!("model.layers.{i}"), next: 0 });
            layers.push(layer);
        }
        m.layers = layers;
        Ok(m)
    }

    /// The weights of the top `num_layers` blocks (-1: all) under their Hugging Face names and
    /// layouts: what a full fine-tune saves (MLX-LM's `adapters.safetensors` for `full`).
    pub fn block_tensors(&self, num_layers: i64) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let n = self.layers.len();
        let mut out = Vec::new();
        for (i, layer) in self.layers.iter().enumerate().filter(|(i, _)| trains_block(num_layers, *i, n)) {
            layer_tensors(&mut out, i, layer);
        }
        out
    }

    /// Replace block weights by the named tensors (Hugging Face names and layouts, as
    /// [`Decoder::block_tensors`] gives them; only blocks' weights, any subset). The replaced
    /// parameters are fresh (trainable, new ids): call [`Decoder::with_full_fine_tune`] after.
    /// Fails naming the tensor when a name is not a block weight of this model or a shape
    /// disagrees; `path` is the file the tensors came from, for the message.
    pub fn with_block_tensors(mut self, tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>, path: &Path) -> Result<Self, DecoderError> {
        let device = self.embed_tokens.val().device();
        let mut left = tensors;
        let n = self.layers.len();
        let mut layers = Vec::with_capacity(n);
        for (i, layer) in std::mem::take(&mut self.layers).into_iter().enumerate() {
            let prefix = format!("model.layers.{i}.");
            if !left.keys().any(|k| k.starts_with(&prefix)) {
                layers.push(layer);
                continue;
            }
            let mut take = |name: String, expected: Vec<usize>| -> Result<Option<Vec<f32>>, DecoderError> {
                match left.remove(&name) {
                    None => Ok(None),
                    Some((shape, _)) if shape != expected => Err(DecoderError::Shape { path: path.to_path_buf(), tensor: name, expected, found: shape }),
                    Some((_, v)) => Ok(Some(v)),
                }
            };
            let t1 = |v: Vec<f32>| Param::from_tensor(Tensor::<1>::from_data(TensorData::new(v.clone(), [v.len()]), &device));
            let mut layer = layer.map_projections(|rel, slot| {
                let name = format!("{prefix}{rel}");
                let (w, bias) = slot.fused_weight();
                let [out_f, in_f] = w.dims();
                let weight = match take(format!("{name}.weight"), vec![out_f, in_f])? {
                    Some(v) => Param::from_tensor(Tensor::<2>::from_data(TensorData::new(v, [out_f, in_f]), &device).transpose()),
                    None => Param::from_tensor(w.transpose().detach()),
                };
                let bias = match (bias, take(format!("{name}.bias"), vec![out_f])?) {
                    (Some(_), Some(v)) => Some(t1(v)),
                    (Some(b), None) => Some(Param::from_tensor(b.detach())),
                    (None, Some(_)) => return Err(DecoderError::Weights { path: path.to_path_buf(), reason: format!("tensor '{name}.bias': this model's {rel} has no bias") }),
                    (None, None) => None,
                };
                Ok(AdaptableLinear::Base(Linear { weight, bias }))
            })?;
            let mut norm = |norm: &mut burn::nn::RmsNorm, rel: &str| -> Result<(), DecoderError> {
                let d = norm.gamma.dims()[0];
                if let Some(v) = take(format!("{prefix}{rel}.weight"), vec![d])? {
                    norm.gamma = t1(v);
                }
                Ok(())
            };
            norm(&mut layer.input_layernorm, "input_layernorm")?;
            norm(&mut layer.post_attention_layernorm, "post_attention_layernorm")?;
            if let Some(q) = layer.self_attn.q_norm.as_mut() {
                norm(q, "self_attn.q_norm")?;
            }
            if let Some(k) = layer.self_attn.k_norm.as_mut() {
                norm(k, "self_attn.k_norm")?;
            }
            layers.push(layer);
        }
        self.layers = layers;
        if let Some(name) = left.keys().next() {
            return Err(DecoderError::Weights {
                path: path.to_path_buf(),
                reason: format!("tensor '{name}' is not a block weight of this {n}-block decoder (a full fine-tune saves block weights only)"),
            });
        }
        Ok(self)
    }
}

/// The weights of block `i` under their Hugging Face names, in [`Decoder::hf_tensors`]'s order.
pub(super) fn layer_tensors(out: &mut Vec<(String, Vec<usize>, Vec<f32>)>, i: usize, layer: &DecoderLayer) {
    let vec1 = |t: Tensor<1>| t.into_data().try_into_vec_as::<f32>().expect("f32 parameters");
    let p = format!("model.layers.{i}");
    let g = layer.input_layernorm.gamma.val();
    out.push((format!("{p}.input_layernorm.weight"), g.dims().to_vec(), vec1(g)));
    for (rel, slot) in layer.projections() {
        let (w, bias) = slot.fused_weight();
        out.push((format!("{p}.{rel}.weight"), w.dims().to_vec(), super::lora::host(w)));
        if let Some(b) = bias {
            out.push((format!("{p}.{rel}.bias"), b.dims().to_vec(), vec1(b)));
        }
    }
    for (name, norm) in [("self_attn.q_norm", &layer.self_attn.q_norm), ("self_attn.k_norm", &layer.self_attn.k_norm)] {
        if let Some(norm) = norm {
            let g = norm.gamma.val();
            out.push((format!("{p}.{name}.weight"), g.dims().to_vec(), vec1(g)));
        }
    }
    let g = layer.post_attention_layernorm.gamma.val();
    out.push((format!("{p}.post_attention_layernorm.weight"), g.dims().to_vec(), vec1(g)));
}

//! LoRA: low-rank adapters on frozen linear layers (Hu et al., 2021), as PEFT and MLX-LM build them.
//!
//! A [`LoraLinear`] keeps the base weight `W` `[out, in]` frozen and learns `A` `[r, in]` and
//! `B` `[out, r]`: `y = x·Wᵀ + b + scale·(dropout(x)·Aᵀ)·Bᵀ`, with `scale = alpha / r`
//! (`alpha / √r` with rsLoRA). `B` starts at zero, so an adapted model starts as its base.
//! [`LoraConfig`] says which layers get adapters: `target_modules` by name and `num_layers`
//! counted from the top of the stack, as MLX-LM counts them.
//!
//! DoRA (Liu et al., 2024; [`LoraConfig::use_dora`]): the layer also learns a magnitude `m`
//! `[out]` and computes `m ⊙ (W + scale·B·A)·x / ‖W + scale·B·A‖` (row norms, detached in
//! training), as PEFT and MLX-LM do; see [`dora_merge`] for the fused weight.
//!
//! QLoRA (Dettmers et al., 2023): a [`LoraLinear`] over a [`QuantWeight`] base keeps `W` in
//! ggml's Q8_0/Q4_0/Q4_1 blocks and dequantizes it inside `forward` ([`quant`]); layers that get
//! no adapter can stay quantized too ([`AdaptableLinear::Quantized`]). [`QuantizeBase`] says
//! what a loader does with a model's projection weights.
//!
//! ```
//! use burn::tensor::{Device, Tensor};
//! use rand::SeedableRng;
//! use tunelab::lora::{LoraConfig, LoraLinear};
//!
//! let device = Device::flex();
//! let weight = Tensor::<2>::from_floats([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]], &device); // [out 2, in 3]
//! let config = LoraConfig { rank: 2, alpha: 4.0, ..LoraConfig::default() };
//! let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
//! let layer = LoraLinear::new(weight, None, &config, &mut rng).unwrap();
//! assert_eq!(layer.scale, 2.0);
//! // B is zero at the start: the adapted layer computes exactly what the base layer does.
//! let y = layer.forward(Tensor::<2>::from_floats([[1.0, 1.0, 1.0]], &device));
//! assert_eq!(y.into_data().try_to_vec::<f32>().unwrap(), vec![3.0, 0.0]);
//! ```

mod adapter;
mod dora;
mod linear;
pub mod quant;
mod quant_matmul;

/// Dequantizations the CPU backend's quantized matmul made inside backward passes on this thread.
#[cfg(test)]
pub(crate) fn quant_matmul_test_counter() -> usize {
    quant_matmul::BACKWARD_DEQUANTIZED.with(|n| n.get())
}

pub use adapter::{AdapterWeights, LoraFactors};
pub use dora::{FineTuneType, dora_merge, row_norms};
pub use linear::{AdaptableLinear, BaseWeight, LoraLinear, QuantLinear, SharedInput};
pub use quant::{QuantError, QuantType, QuantWeight, QuantizeBase};

use serde::{Deserialize, Serialize};

/// Which layers get adapters and how they are shaped. Field names follow PEFT's `LoraConfig`
/// (`r` → `rank`, `lora_alpha` → `alpha`, `lora_dropout` → `dropout`) and MLX-LM's `num_layers`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank `r` of `A` `[r, in]` and `B` `[out, r]`.
    pub rank: usize,
    /// `scale = alpha / r` (PEFT's `lora_alpha`), or `alpha / √r` with `use_rslora`.
    pub alpha: f64,
    /// Dropout probability on the input of `A` (training only).
    pub dropout: f64,
    /// rsLoRA (Kalajdzievski, 2023): scale by `alpha / √r`, which keeps high ranks learning.
    pub use_rslora: bool,
    /// Names of the linear layers to adapt (`q_proj`, `v_proj`, BERT's `query`, `value`, …).
    /// A layer matches when its name, or the last dotted part of its path, equals one of these.
    /// Empty: the model's own default targets.
    pub target_modules: Vec<String>,
    /// How many blocks, counted from the top (the output end), get adapters; `-1` for all
    /// (MLX-LM's `num_layers`: `model.layers[-num_layers:]`).
    pub num_layers: i64,
    /// DoRA (Liu et al., 2024; PEFT's `use_dora`, MLX-LM's `fine_tune_type = "dora"`): a learned
    /// magnitude per output row times the row-normalised direction of `W + scale·B·A`.
    pub use_dora: bool,
}

impl Default for LoraConfig {
    /// Rank 8, alpha 16, no dropout, every layer of the model's default targets.
    fn default() -> Self {
        LoraConfig { rank: 8, alpha: 16.0, dropout: 0.0, use_rslora: false, target_modules: Vec::new(), num_layers: -1, use_dora: false }
    }
}

/// Why a LoRA configuration or layer cannot be built.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LoraError {
    #[error("lora config field '{field}': {reason}")]
    Config { field: &'static str, reason: String },
    #[error("{model} does not support LoRA adapters")]
    Unsupported { model: String },
    #[error("lora config: target module '{target}' matches no layer of {model}")]
    NoMatch { target: String, model: String },
}

impl LoraConfig {
    /// The factor on `B·A`: `alpha / r`, or `alpha / √r` with rsLoRA (PEFT's `scaling`).
    pub fn scale(&self) -> f64 {
        if self.use_rslora { self.alpha / (self.rank as f64).sqrt() } else { self.alpha / self.rank as f64 }
    }

    /// Checks ranges; the error names the field.
    pub fn validate(&self) -> Result<(), LoraError> {
        if self.rank == 0 {
            return Err(LoraError::Config { field: "rank", reason: "must be at least 1".into() });
        }
        if !self.alpha.is_finite() {
            return Err(LoraError::Config { field: "alpha", reason: format!("{} is not a finite number", self.alpha) });
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(LoraError::Config { field: "dropout", reason: format!("{} is not in [0, 1)", self.dropout) });
        }
        if self.num_layers < -1 {
            return Err(LoraError::Config { field: "num_layers", reason: format!("{} (use -1 for all layers)", self.num_layers) });
        }
        Ok(())
    }

    /// Whether block `layer` (0 = bottom) of a `total`-block stack gets adapters: the top
    /// `num_layers` blocks, all of them with `-1` or a count of at least `total`.
    pub fn adapts_layer(&self, layer: usize, total: usize) -> bool {
        match usize::try_from(self.num_layers) {
            Ok(n) => layer < total && layer + n >= total,
            Err(_) => layer < total,
        }
    }

    /// Whether the linear layer at `path` (e.g. `encoder.layer.3.attention.self.query`) is a
    /// target: its full path or its last dotted part is listed. With no targets listed, the
    /// model's `defaults` decide.
    pub fn targets(&self, path: &str, defaults: &[&str]) -> bool {
        let last = path.rsplit('.').next().unwrap_or(path);
        let hit = |t: &str| t == path || t == last;
        if self.target_modules.is_empty() { defaults.iter().any(|t| hit(t)) } else { self.target_modules.iter().any(|t| hit(t)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_is_alpha_over_rank_or_root_rank() {
        let c = LoraConfig { rank: 16, alpha: 32.0, ..LoraConfig::default() };
        assert_eq!(c.scale(), 2.0);
        let rs = LoraConfig { use_rslora: true, ..c };
        assert_eq!(rs.scale(), 8.0); // 32 / √16
    }

    #[test]
    fn num_layers_counts_from_the_top() {
        // MLX-LM: model.layers[-2:] of 6 blocks are blocks 4 and 5.
        let c = LoraConfig { num_layers: 2, ..LoraConfig::default() };
        let picked: Vec<usize> = (0..6).filter(|&i| c.adapts_layer(i, 6)).collect();
        assert_eq!(picked, vec![4, 5]);
        let all = LoraConfig { num_layers: -1, ..LoraConfig::default() };
        assert_eq!((0..6).filter(|&i| all.adapts_layer(i, 6)).count(), 6);
        let more = LoraConfig { num_layers: 16, ..LoraConfig::default() };
        assert_eq!((0..6).filter(|&i| more.adapts_layer(i, 6)).count(), 6);
        let none = LoraConfig { num_layers: 0, ..LoraConfig::default() };
        assert_eq!((0..6).filter(|&i| none.adapts_layer(i, 6)).count(), 0);
    }

    #[test]
    fn targets_match_by_name_or_path() {
        let c = LoraConfig { target_modules: vec!["q_proj".into(), "layers.1.mlp.up_proj".into()], ..LoraConfig::default() };
        assert!(c.targets("layers.0.self_attn.q_proj", &[]));
        assert!(c.targets("layers.1.mlp.up_proj", &[]));
        assert!(!c.targets("layers.0.mlp.up_proj", &[]));
        assert!(!c.targets("layers.0.self_attn.k_proj", &["k_proj"]));
        assert!(LoraConfig::default().targets("layers.0.self_attn.k_proj", &["k_proj"]));
    }

    #[test]
    fn bad_config_names_the_field() {
        let err = LoraConfig { rank: 0, ..LoraConfig::default() }.validate().unwrap_err();
        assert!(err.to_string().contains("'rank'"), "{err}");
        let err = LoraConfig { dropout: 1.0, ..LoraConfig::default() }.validate().unwrap_err();
        assert!(err.to_string().contains("'dropout'"), "{err}");
    }

    #[test]
    fn toml_uses_peft_and_mlx_meanings() {
        let c: LoraConfig = toml::from_str("rank = 16\nalpha = 32.0\nuse_rslora = true\ntarget_modules = [\"q_proj\", \"v_proj\"]\nnum_layers = 8\n").unwrap();
        assert_eq!((c.rank, c.num_layers, c.target_modules.len()), (16, 8, 2));
        assert!(toml::from_str::<LoraConfig>("r = 4\n").is_err(), "unknown fields are refused");
    }
}

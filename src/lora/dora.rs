//! DoRA, weight-decomposed low-rank adaptation (Liu et al., 2024), as PEFT
//! (`peft/tuners/lora/dora.py`) and MLX-LM (`mlx_lm/tuner/dora.py`) define it.
//!
//! The adapted weight is `W' = m ⊙ (W + s·B·A) / ‖W + s·B·A‖`, the norm taken over each
//! output row (`[out, in]` weights, `dim=1` in PEFT, `axis=1` in MLX-LM), so `m` has one entry
//! per output feature and starts as the row norms of `W`: a fresh DoRA layer computes what its
//! base does. In training both libraries treat the norm as a constant (PEFT `detach()`, MLX-LM
//! `stop_gradient`, section 4.3 of the paper), and so does [`super::LoraLinear::forward`].
//! The bias is added after the rescaling, unscaled.
//!
//! These host functions are the reference the exporters and tests use; the layer itself
//! computes the same on the device.
//!
//! ```
//! use tunelab::lora::{dora_merge, row_norms};
//! let w = [3.0, 4.0, 0.0, 2.0]; // [out 2, in 2]
//! assert_eq!(row_norms(&w, 2), vec![5.0, 2.0]);
//! // m = ‖W‖ and no update: the merged weight is W itself.
//! assert_eq!(dora_merge(&w, &[0.0; 4], &[5.0, 2.0], 2), w.to_vec());
//! ```

use serde::{Deserialize, Serialize};

/// What `train lora` trains (MLX-LM's `--fine-tune-type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FineTuneType {
    /// Low-rank factors `A`, `B` on frozen weights.
    #[default]
    Lora,
    /// LoRA factors plus a magnitude vector per adapted layer ([`super::LoraConfig::use_dora`]).
    Dora,
    /// Every weight of the adapted blocks.
    Full,
}

impl std::fmt::Display for FineTuneType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Lora => "lora",
            Self::Dora => "dora",
            Self::Full => "full",
        })
    }
}

/// L2 norm of each row of a row-major `[rows, cols]` matrix, accumulated in f64.
pub fn row_norms(w: &[f32], cols: usize) -> Vec<f32> {
    w.chunks(cols).map(|r| r.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>().sqrt() as f32).collect()
}

/// The merged DoRA weight `m ⊙ (W + Δ) / ‖W + Δ‖` (rows), where `delta` is `s·B·A`
/// (`[out, in]` row-major like `w`) and `magnitude` is `m` `[out]`: what PEFT's
/// `merge_and_unload` and `mlx_lm.fuse` write.
pub fn dora_merge(w: &[f32], delta: &[f32], magnitude: &[f32], cols: usize) -> Vec<f32> {
    let adapted: Vec<f32> = w.iter().zip(delta).map(|(a, d)| a + d).collect();
    let norms = row_norms(&adapted, cols);
    adapted
        .chunks(cols)
        .zip(norms.iter().zip(magnitude))
        .flat_map(|(row, (&n, &m))| row.iter().map(move |&v| v * (m / n)))
        .collect()
}

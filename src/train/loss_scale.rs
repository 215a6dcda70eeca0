//! Dynamic loss scaling for `--dtype f16`, as `torch.amp.GradScaler` does it.
//!
//! Gradients flowing back through f16 activations underflow to zero below 2^-24 (f16's smallest
//! subnormal), and LoRA's are small. The loss is multiplied by `scale` before the backward pass
//! so the f16 intermediate gradients sit in f16's range, and the f32 parameter gradients are
//! divided by it again before clipping and the update. When the scale is too large some f16
//! gradient overflows to infinity (or NaN): that update is skipped, the optimizer left untouched,
//! and the scale halved; after `growth_interval` good updates in a row it doubles.
//! GradScaler's defaults: initial scale 2^16, factors 2 and 1/2, growth interval 2000.

use serde::{Deserialize, Serialize};

/// `torch.amp.GradScaler`'s `init_scale`: 2^16.
pub const INIT_SCALE: f32 = 65_536.0;

/// GradScaler's state: the current scale and the good updates since it last changed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    /// The factor the loss is multiplied by before the backward pass.
    pub scale: f32,
    /// Good updates in a row needed to double `scale`.
    pub growth_interval: usize,
    /// Good updates since the last change of `scale`.
    pub good_steps: usize,
    /// Updates skipped so far for non-finite gradients.
    pub skipped: usize,
}

/// Whether `init_loss_scale` is GradScaler's default (configs leave it out when written).
pub(crate) fn is_default_init_scale(v: &f64) -> bool {
    *v == INIT_SCALE as f64
}

/// `init_loss_scale` as the configs validate it: a positive normal f32.
pub(crate) fn check_init_scale(v: f64) -> Result<(), String> {
    if v.is_finite() && v > 0.0 && (v as f32).is_normal() {
        Ok(())
    } else {
        Err(format!("{v} is not a positive f32 number"))
    }
}

/// The scaler a run trains with: none in f32; in f16 the one a resumed run saved, else a fresh
/// one at `init_scale`.
pub(crate) fn for_dtype(dtype: crate::model::decoder::Dtype, resumed: Option<LossScaler>, init_scale: f64) -> Option<LossScaler> {
    match dtype {
        crate::model::decoder::Dtype::F32 | crate::model::decoder::Dtype::Auto => None,
        crate::model::decoder::Dtype::F16 => Some(resumed.unwrap_or_else(|| LossScaler::new(init_scale as f32))),
    }
}

impl Default for LossScaler {
    /// `torch.amp.GradScaler()`'s defaults: `init_scale = 2^16`, `growth_interval = 2000`.
    fn default() -> Self {
        Self::new(INIT_SCALE)
    }
}

impl LossScaler {
    /// Start at `scale`, with GradScaler's growth interval (2000 good updates).
    pub fn new(scale: f32) -> Self {
        Self { scale, growth_interval: 2000, good_steps: 0, skipped: 0 }
    }

    /// Record one update's outcome: with `finite` false the update is to be skipped, the scale
    /// halves and the run of good steps restarts; otherwise the run grows and, at
    /// `growth_interval`, the scale doubles. Returns whether the update may be applied.
    pub fn update(&mut self, finite: bool) -> bool {
        if !finite {
            // Never below f32's smallest normal: a scale of 0 would hide every gradient.
            self.scale = (self.scale * 0.5).max(f32::MIN_POSITIVE);
            self.good_steps = 0;
            self.skipped += 1;
            return false;
        }
        self.good_steps += 1;
        if self.good_steps >= self.growth_interval {
            // Capped where doubling would overflow f32 (GradScaler keeps the infinite scale and skips forever).
            if (self.scale * 2.0).is_finite() {
                self.scale *= 2.0;
            }
            self.good_steps = 0;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_and_skips_on_overflow_and_doubles_after_the_growth_interval() {
        let mut s = LossScaler { growth_interval: 3, ..LossScaler::default() };
        assert_eq!(s.scale, 65_536.0);
        assert!(!s.update(false), "a non-finite gradient skips the update");
        assert_eq!((s.scale, s.skipped, s.good_steps), (32_768.0, 1, 0));
        assert!(s.update(true) && s.update(true));
        assert_eq!(s.scale, 32_768.0, "not yet grown after 2 of 3 good updates");
        assert!(s.update(true));
        assert_eq!((s.scale, s.good_steps), (65_536.0, 0), "doubled after 3 good updates");
        assert!(s.update(true) && !s.update(false));
        assert_eq!((s.scale, s.skipped, s.good_steps), (32_768.0, 2, 0), "an overflow restarts the count");
    }
}

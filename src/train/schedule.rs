//! Learning-rate schedules and gradient clipping, as `transformers` computes them.
//!
//! * [`LrSchedule`]: linear warm-up from 0, then constant, linear or cosine decay to 0, with the
//!   values of `get_constant_schedule_with_warmup`, `get_linear_schedule_with_warmup` and
//!   `get_cosine_schedule_with_warmup`. As there, the learning rate of optimizer step `k`
//!   (0-based) is `lr · λ(k)`, so with warm-up the first update uses a learning rate of 0.
//! * [`clip_grad_norm`]: scale all gradients together so their global L2 norm is at most
//!   `max_norm` (`torch.nn.utils.clip_grad_norm_`). burn's own clipping works per parameter.
//!
//! ```
//! use tunelab::train::schedule::{LrSchedule, ScheduleKind};
//! let s = LrSchedule { base_lr: 1e-3, warmup_steps: 2, total_steps: 10, kind: ScheduleKind::Linear };
//! assert_eq!(s.lr(0), 0.0);
//! assert_eq!(s.lr(1), 5e-4);
//! assert_eq!(s.lr(2), 1e-3);
//! assert_eq!(s.lr(6), 5e-4); // (10 - 6) / (10 - 2)
//! ```

use std::f64::consts::PI;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

/// Shape of the decay after warm-up (`lr_scheduler_type` in `transformers`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    Constant,
    #[default]
    Linear,
    Cosine,
}

/// Warm-up then decay over `total_steps` optimizer steps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LrSchedule {
    pub base_lr: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
    pub kind: ScheduleKind,
}

impl LrSchedule {
    /// The multiplier `λ(step)` of `transformers`' `lr_lambda` for this schedule.
    pub fn factor(&self, step: usize) -> f64 {
        let (step, warmup, total) = (step as f64, self.warmup_steps as f64, self.total_steps as f64);
        if step < warmup {
            return step / warmup.max(1.0);
        }
        let progress = (step - warmup) / (total - warmup).max(1.0);
        match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Linear => ((total - step) / (total - warmup).max(1.0)).max(0.0),
            // num_cycles = 0.5: half a cosine wave from 1 down to 0.
            ScheduleKind::Cosine => (0.5 * (1.0 + (PI * 2.0 * 0.5 * progress).cos())).max(0.0),
        }
    }

    /// Learning rate of optimizer step `step` (0-based).
    pub fn lr(&self, step: usize) -> f64 {
        self.base_lr * self.factor(step)
    }
}

/// Scale `grads` so that their global L2 norm over all of `module`'s parameters is at most
/// `max_norm`; returns the norm before clipping (what `clip_grad_norm_` returns).
///
/// As in PyTorch, the factor is `max_norm / (norm + 1e-6)`, applied only when it is below 1.
pub fn clip_grad_norm<M: Module>(module: &M, grads: GradientsParams, max_norm: f64) -> (GradientsParams, f64) {
    let norm = grad_norm(module, &grads);
    let coef = max_norm / (norm + 1e-6);
    if coef >= 1.0 || !norm.is_finite() {
        return (grads, norm);
    }
    let mut scaler = Scale { grads, coef };
    module.visit(&mut scaler);
    (scaler.grads, norm)
}

/// The gradients of `module`'s parameters multiplied by `coef` (loss-scale unscaling).
pub fn scale_grads<M: Module>(module: &M, grads: GradientsParams, coef: f64) -> GradientsParams {
    let mut scaler = Scale { grads, coef };
    module.visit(&mut scaler);
    scaler.grads
}

/// Global L2 norm of the gradients of `module`'s parameters.
pub fn grad_norm<M: Module>(module: &M, grads: &GradientsParams) -> f64 {
    let mut sum = SquaredSum { grads, total: None };
    module.visit(&mut sum);
    sum.total.map_or(0.0, |t| (t.into_scalar::<f32>() as f64).sqrt())
}

struct SquaredSum<'a> {
    grads: &'a GradientsParams,
    total: Option<Tensor<1>>,
}

impl ModuleVisitor for SquaredSum<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            // Summed on the device; one read back at the end.
            let s = g.square().sum();
            self.total = Some(match self.total.take() {
                Some(t) => t + s,
                None => s,
            });
        }
    }
}

struct Scale {
    grads: GradientsParams,
    coef: f64,
}

impl ModuleVisitor for Scale {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.remove::<D>(param.id) {
            self.grads.register(param.id, g.mul_scalar(self.coef));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn linear_warmup_and_decay_match_transformers() {
        // get_linear_schedule_with_warmup(num_warmup_steps=3, num_training_steps=9):
        // k < 3: k/3; else max(0, (9-k)/(9-3)).
        let s = LrSchedule { base_lr: 1.0, warmup_steps: 3, total_steps: 9, kind: ScheduleKind::Linear };
        let want = [0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0, 5.0 / 6.0, 4.0 / 6.0, 0.5, 2.0 / 6.0, 1.0 / 6.0, 0.0, 0.0];
        for (k, w) in want.iter().enumerate() {
            assert!(close(s.factor(k), *w), "step {k}: {} vs {w}", s.factor(k));
        }
    }

    #[test]
    fn cosine_decay_matches_transformers() {
        // get_cosine_schedule_with_warmup(2, 10): k ≥ 2: 0.5·(1 + cos(π·(k-2)/8)).
        let s = LrSchedule { base_lr: 2.0, warmup_steps: 2, total_steps: 10, kind: ScheduleKind::Cosine };
        assert!(close(s.lr(1), 1.0));
        assert!(close(s.lr(2), 2.0));
        assert!(close(s.lr(4), 2.0 * 0.5 * (1.0 + (PI / 4.0).cos()))); // 1 + √2/2 ≈ 1.7071
        assert!(close(s.lr(6), 1.0)); // halfway: cos(π/2) = 0
        assert!(close(s.lr(10), 0.0));
        // No warm-up: the first step already uses the full rate.
        let s = LrSchedule { warmup_steps: 0, ..s };
        assert!(close(s.lr(0), 2.0));
        let c = LrSchedule { kind: ScheduleKind::Constant, warmup_steps: 4, ..s };
        assert!(close(c.lr(2), 1.0) && close(c.lr(9), 2.0));
    }

    #[derive(Module, Debug)]
    struct Two {
        a: Param<Tensor<1>>,
        b: Param<Tensor<2>>,
    }

    #[test]
    fn clipping_uses_the_global_norm() {
        let device = Device::flex().autodiff();
        let m = Two {
            a: Param::from_tensor(Tensor::<1>::from_floats([1.0, 1.0], &device)),
            b: Param::from_tensor(Tensor::<2>::from_floats([[1.0]], &device)),
        };
        // loss = 3·a₀ + 0·a₁ + 4·b₀₀, so the gradients are a: [3, 0], b: [[4]].
        let loss = m.a.val().mul(Tensor::<1>::from_floats([3.0, 0.0], &device)).sum() + m.b.val().mul_scalar(4.0).sum();
        let grads = GradientsParams::from_grads(loss.backward(), &m);
        // Global norm √(3² + 4²) = 5; clipping to 1 scales everything by 1 / (5 + 1e-6).
        let (clipped, norm) = clip_grad_norm(&m, grads, 1.0);
        assert!((norm - 5.0).abs() < 1e-6);
        let ga = clipped.get::<1>(m.a.id).unwrap().into_data().try_to_vec::<f32>().unwrap();
        let gb = clipped.get::<2>(m.b.id).unwrap().into_data().try_to_vec::<f32>().unwrap();
        assert!((ga[0] - 0.6).abs() < 1e-6 && ga[1] == 0.0 && (gb[0] - 0.8).abs() < 1e-6, "{ga:?} {gb:?}");
        // Below the limit nothing changes.
        let (same, norm) = clip_grad_norm(&m, clipped, 10.0);
        assert!((norm - 1.0).abs() < 1e-5);
        assert!((same.get::<2>(m.b.id).unwrap().into_scalar::<f32>() - 0.8).abs() < 1e-6);
    }
}

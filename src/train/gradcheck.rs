//! Finite-difference checks of parameter gradients, for any [`TrainableEncoder`] (or any module)
//! and loss.
//!
//! For each parameter tensor, the entries with the largest autodiff gradient are nudged by
//! `±eps` and the loss recomputed: the central difference `(L(θ+ε) − L(θ−ε)) / 2ε` must match
//! the gradient. Checking the largest entries keeps the comparison meaningful in f32 (a tiny
//! gradient is lost in rounding, a large one is not). Dropout is switched off for the check
//! (the model is frozen, then its gradients re-enabled), so every evaluation sees one function.
//!
//! The error of an entry is `|fd − g| / max(|fd|, |g|, floor)` with `floor` = 1e-2 × the
//! largest gradient in the model, i.e. gradients far below the largest are compared in absolute
//! terms. Some are zero in exact arithmetic (BERT's key bias: softmax ignores a shift common to
//! all scores) and come out as noise on both sides: f32 rounding of the loss alone moves a
//! difference quotient by about `8·ε·|L| / eps` (≈2e-4 for L ≈ 1, eps = 1e-3).

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::{Gradients, Tensor, TensorData};

use super::encoder::TrainableEncoder;

/// What a check found.
#[derive(Clone, Debug, PartialEq)]
pub struct GradCheckReport {
    /// Entries compared.
    pub checked: usize,
    /// Largest `|fd − g| / max(|fd|, |g|, floor)` (see the module notes).
    pub max_rel_err: f64,
    /// Where that was: `path[index]: autodiff g, finite difference fd`.
    pub worst: String,
}

/// Compare the gradient of `loss(encoder)` with central differences on the `per_param`
/// largest-gradient entries of every parameter tensor.
///
/// ```
/// use burn::tensor::Device;
/// use tunelab::train::encoder::{HashedBagEncoder, TrainableEncoder};
/// use tunelab::train::gradcheck::check_parameter_gradients;
/// let enc = HashedBagEncoder::new(16, 4, 3, 0.0, 1, &Device::flex());
/// let report = check_parameter_gradients(&enc, |e| e.encode(&["a b", "c"]).unwrap().tanh().sum(), 1e-3, 2);
/// assert!(report.max_rel_err < 1e-2, "{report:?}");
/// ```
pub fn check_parameter_gradients<E: TrainableEncoder>(encoder: &E, loss: impl Fn(&E) -> Tensor<1>, eps: f32, per_param: usize) -> GradCheckReport {
    let mut e = encoder.clone();
    e.set_model(encoder.model().clone().train().freeze().set_require_grad(true));
    check_module_gradients(
        e.model(),
        |m| {
            let mut shifted = e.clone();
            shifted.set_model(m.clone());
            loss(&shifted)
        },
        eps,
        per_param,
    )
}

/// Like [`check_parameter_gradients`] for any module, taken as it is: only parameters that
/// require a gradient (on an autodiff device) are checked, so a LoRA model checks its adapters
/// and leaves its frozen base alone. The caller switches dropout off.
pub fn check_module_gradients<M: Module>(model: &M, loss: impl Fn(&M) -> Tensor<1>, eps: f32, per_param: usize) -> GradCheckReport {
    let grads = loss(model).backward();
    let mut collect = Collect { grads: &grads, path: Vec::new(), found: Vec::new() };
    model.visit(&mut collect);

    let value = |id: ParamId, index: usize, delta: f32| -> f64 {
        let shifted = model.clone().map(&mut Nudge { id, index, delta });
        loss(&shifted).into_scalar::<f32>() as f64
    };
    let mut report = GradCheckReport { checked: 0, max_rel_err: 0.0, worst: String::new() };
    let floor = 1e-2 * collect.found.iter().flat_map(|(_, _, g)| g.iter()).fold(0.0f32, |m, v| m.max(v.abs())) as f64;
    for (path, id, g) in collect.found {
        let mut order: Vec<usize> = (0..g.len()).collect();
        order.sort_by(|&a, &b| g[b].abs().total_cmp(&g[a].abs()));
        for &i in order.iter().take(per_param) {
            let fd = (value(id, i, eps) - value(id, i, -eps)) / (2.0 * eps as f64);
            let gi = g[i] as f64;
            let rel = (fd - gi).abs() / fd.abs().max(gi.abs()).max(floor).max(f64::MIN_POSITIVE);
            report.checked += 1;
            if rel > report.max_rel_err || report.worst.is_empty() {
                report.max_rel_err = rel.max(report.max_rel_err);
                report.worst = format!("{path}[{i}]: autodiff {gi:e}, finite difference {fd:e}");
            }
        }
    }
    report
}

/// Every parameter's gradient, with its module path.
struct Collect<'a> {
    grads: &'a Gradients,
    path: Vec<String>,
    found: Vec<(String, ParamId, Vec<f32>)>,
}

impl ModuleVisitor for Collect<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = param.val().grad(self.grads) {
            let values = g.into_data().convert::<f32>().try_to_vec::<f32>().expect("f32 after convert");
            self.found.push((self.path.join("."), param.id, values));
        }
    }
}

/// Adds `delta` to entry `index` (row-major) of parameter `id`.
struct Nudge {
    id: ParamId,
    index: usize,
    delta: f32,
}

impl ModuleMapper for Nudge {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if param.id != self.id {
            return param;
        }
        let (id, tensor, mapper) = param.consume();
        let (device, dtype, shape) = (tensor.device(), tensor.dtype(), tensor.shape());
        let mut values = tensor.into_data().convert::<f32>().try_to_vec::<f32>().expect("f32 after convert");
        values[self.index] += self.delta;
        let nudged = Tensor::<D>::from_data(TensorData::new(values, shape), (&device, dtype));
        Param::from_mapped_value(id, nudged, mapper)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::contrastive::{MultipleNegativesRankingLoss, PairBatch};
    use crate::train::encoder::HashedBagEncoder;
    use burn::tensor::Device;

    /// MultipleNegativesRankingLoss through a whole (tiny) model, dropout 0.3 in the model:
    /// the check must turn it off. f32, eps 1e-3, top-3 entries of each of the 3 parameters:
    /// relative error below 1e-2.
    #[test]
    fn mnrl_parameter_gradients_match_finite_differences() {
        let enc = HashedBagEncoder::new(32, 8, 6, 0.3, 4, &Device::flex());
        let negatives = ["stone wall".to_string()];
        let texts = [("red fox", "a fox that is red", &negatives[..]), ("blue sea", "the sea is blue", &[][..]), ("old tree", "an old oak tree", &[][..])];
        let batch = PairBatch::from_pairs(texts.iter().map(|(q, p, n)| crate::train::contrastive::PairRef { query: q, positive: p, negatives: n }));
        let loss = MultipleNegativesRankingLoss::default();
        let report = check_parameter_gradients(&enc, |e| loss.loss(e, &batch).unwrap(), 1e-3, 3);
        eprintln!("MNRL parameter grad check: {report:?}");
        assert_eq!(report.checked, 9);
        assert!(report.max_rel_err < 1e-2, "{report:?}");
    }

    #[test]
    fn a_wrong_gradient_is_caught() {
        // A loss whose graph is cut halfway (detach): autodiff sees half the true derivative.
        let enc = HashedBagEncoder::new(16, 4, 3, 0.0, 1, &Device::flex());
        let report = check_parameter_gradients(&enc, |e| {
            let v = e.encode(&["a b"]).unwrap().sum();
            v.clone() + v.detach()
        }, 1e-3, 1);
        assert!(report.max_rel_err > 0.4, "{report:?}");
    }
}

//! The language-model loss as one autodiff operation, as `torch.nn.functional.cross_entropy`
//! computes it: `lse(x_i) − x_i[t_i]` per row, whose backward pass is `(softmax(x_i) −
//! onehot(t_i)) · grad_i`, from the kept logits and one log-sum-exp per row.
//!
//! Written out as `log_softmax(x).gather(t)`, burn's autodiff records six operations (max, sub,
//! exp, sum, log, sub) and back-propagates through six more, each a full pass over the
//! `[rows, vocab]` logits, and keeps several such tensors. On SmolLM2-135M's 49,152-word head at
//! 1,020 target rows (200 MB of logits) that was 0.47–0.55 s of a 2.9 s `bench lora` step on a
//! 2-core Xeon (AVX-512), where torch's `cross_entropy` forward and backward took 0.22–0.25 s.
//!
//! Built like [`crate::model::sdpa`]: a backend extension routed on the CPU backend (flex: two
//! kernels of the vendored burn-flex, `ops::cross_entropy`, for f32 logits), on the GPU backends
//! (the default bodies: ordinary ops, which burn's fusion fuses) and on `Autodiff`.
// Without a backend (the `models`-only build) no route reads the arguments.
#![cfg_attr(not(any(feature = "cpu", feature = "vulkan", feature = "metal", feature = "wgpu")), allow(unused_variables, dead_code))]

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Autodiff, Backend, TensorMetadata, backend_extension};
use burn::tensor::{FloatDType, IndexingUpdateOp, Int, Tensor, TensorData};

/// Cross-entropy of `[rows, vocab]` logits against one target index per row.
#[backend_extension(Flex: cfg(feature = "cpu"), Cube: cfg(any(feature = "vulkan", feature = "metal", feature = "wgpu")), Autodiff)]
pub trait CrossEntropyBackend: Backend {
    /// `logits` `[n, v]` (any float dtype), `targets` `[n, 1]`: the losses `lse(x_i) − x_i[t_i]`,
    /// `[n, 1]` f32.
    fn cross_entropy_rows(logits: FloatTensor<Self>, targets: IntTensor<Self>) -> FloatTensor<Self> {
        losses_and_lse::<Self>(&logits, targets).0
    }

    /// `[n, 1]` f32: the log-sum-exp of each row of `logits` `[n, v]`, computed in f32.
    fn cross_entropy_lse(logits: FloatTensor<Self>) -> FloatTensor<Self> {
        composite_lse::<Self>(logits)
    }

    /// `(exp(x − lse) − onehot(t)) · grad` in `logits`' dtype: the gradient of
    /// `Σ grad_i · (lse_i − x_i[t_i])` with respect to `logits` `[n, v]`; `lse`, `grad` `[n, 1]`
    /// f32, `targets` `[n, 1]`.
    fn cross_entropy_grad(logits: FloatTensor<Self>, lse: FloatTensor<Self>, targets: IntTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        composite_grad::<Self>(logits, lse, targets, grad)
    }
}

/// The per-row losses `lse_i − x_i[t_i]` (`[n, 1]` f32) and the log-sum-exps they came from.
fn losses_and_lse<B: CrossEntropyBackend>(logits: &FloatTensor<B>, targets: IntTensor<B>) -> (FloatTensor<B>, FloatTensor<B>) {
    let lse = B::cross_entropy_lse(logits.clone());
    let picked = B::float_cast(B::float_gather(1, logits.clone(), targets), FloatDType::F32);
    (B::float_sub(lse.clone(), picked), lse)
}

/// [`CrossEntropyBackend::cross_entropy_lse`] from ordinary ops (the GPU route, and the CPU's for
/// logits other than f32).
fn composite_lse<B: Backend>(logits: FloatTensor<B>) -> FloatTensor<B> {
    let x = B::float_cast(logits, FloatDType::F32);
    let max = B::float_max_dim(x.clone(), 1);
    let sum = B::float_sum_dim(B::float_exp(B::float_sub(x, max.clone())), 1);
    B::float_add(B::float_log(sum), max)
}

/// [`CrossEntropyBackend::cross_entropy_grad`] from ordinary ops.
fn composite_grad<B: Backend>(logits: FloatTensor<B>, lse: FloatTensor<B>, targets: IntTensor<B>, grad: FloatTensor<B>) -> FloatTensor<B> {
    let dtype = logits.dtype();
    let x = B::float_cast(logits, FloatDType::F32);
    let p = B::float_mul(B::float_exp(B::float_sub(x, lse)), grad.clone());
    let g = B::float_scatter(1, p, targets, B::float_neg(grad), IndexingUpdateOp::Add);
    B::float_cast(g, dtype.into())
}

#[cfg(feature = "cpu")]
impl CrossEntropyBackend for burn::backend::Flex {
    fn cross_entropy_lse(logits: FloatTensor<Self>) -> FloatTensor<Self> {
        if logits.dtype() == burn::tensor::DType::F32 { burn_flex::ops::cross_entropy::logsumexp_rows_f32(logits) } else { composite_lse::<Self>(logits) }
    }

    fn cross_entropy_grad(logits: FloatTensor<Self>, lse: FloatTensor<Self>, targets: IntTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        if logits.dtype() == burn::tensor::DType::F32 {
            burn_flex::ops::cross_entropy::cross_entropy_grad_f32(logits, lse, targets, grad)
        } else {
            composite_grad::<Self>(logits, lse, targets, grad)
        }
    }
}

/// The GPU backends (`Fusion<CubeBackend>` with our features): the default bodies.
#[cfg(any(feature = "vulkan", feature = "metal", feature = "wgpu"))]
impl CrossEntropyBackend for burn::backend::Cube {}

impl<B: Backend + CrossEntropyBackend, C: CheckpointStrategy> CrossEntropyBackend for Autodiff<B, C> {
    fn cross_entropy_rows(logits: FloatTensor<Self>, targets: IntTensor<Self>) -> FloatTensor<Self> {
        /// `d logits = (softmax(logits) − onehot(targets)) · grad`, from the kept logits and
        /// log-sum-exps.
        #[derive(Debug)]
        struct CrossEntropyBackward;

        impl<B: Backend + CrossEntropyBackend> Backward<B, 1> for CrossEntropyBackward {
            type State = (FloatTensor<B>, FloatTensor<B>, IntTensor<B>);

            fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
                let [node] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (logits, lse, targets) = ops.state;
                if let Some(node) = node {
                    grads.register::<B>(node.id, B::cross_entropy_grad(logits, lse, targets, grad));
                }
            }
        }

        let node = logits.node();
        let logits = logits.into_primitive();
        let (losses, lse) = losses_and_lse::<B>(&logits, targets.clone());
        match CrossEntropyBackward.prepare::<C>([node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((logits, lse, targets), losses),
            OpsKind::UnTracked(prep) => prep.finish(losses),
        }
    }
}

/// `Σ_i −log softmax(logits_i)[targets_i]` as a `[1]` tensor, for `logits` `[n, vocab]` (any
/// float dtype; computed in f32) and one target word per row: `torch.nn.functional.cross_entropy(
/// logits, targets, reduction="sum")`. Differentiable in `logits` (one operation; see the module
/// notes).
///
/// ```
/// use burn::tensor::{Device, Tensor, TensorData};
/// use tunelab::train::cross_entropy::cross_entropy_sum;
///
/// let device = Device::flex();
/// let logits = Tensor::<2>::from_data(TensorData::new(vec![0.0f32, 0.0, 2.0, 0.0], [2, 2]), &device);
/// let loss: f32 = cross_entropy_sum(logits, &[1, 0]).into_scalar();
/// // ln 2 + ln(1 + e⁻²)
/// assert!((loss - (2f32.ln() + (1.0 + (-2f32).exp()).ln())).abs() < 1e-6);
/// ```
///
/// # Panics
/// If `targets` does not hold one word per row, or a target is outside `0..vocab`.
pub fn cross_entropy_sum(logits: Tensor<2>, targets: &[i64]) -> Tensor<1> {
    cross_entropy_rows(logits, targets).sum()
}

/// The per-row losses of [`cross_entropy_sum`], `[n]` f32 (`reduction="none"`).
///
/// # Panics
/// As [`cross_entropy_sum`].
pub fn cross_entropy_rows(logits: Tensor<2>, targets: &[i64]) -> Tensor<1> {
    let [n, vocab] = logits.dims();
    assert_eq!(targets.len(), n, "cross-entropy: {n} rows of logits for {} targets", targets.len());
    if let Some((i, t)) = targets.iter().enumerate().find(|&(_, &t)| t < 0 || t as usize >= vocab) {
        panic!("cross-entropy: target {t} of row {i} is outside the vocabulary 0..{vocab}");
    }
    let targets = Tensor::<2, Int>::from_data(TensorData::new(targets.to_vec(), [n, 1]), &logits.device());
    let rows = <burn::backend::Dispatch as CrossEntropyBackend>::cross_entropy_rows(logits.into_dispatch(), targets.into_dispatch());
    Tensor::<2>::from_dispatch(rows).reshape([n])
}

#[cfg(all(test, feature = "cpu"))]
mod tests {
    use super::*;
    use burn::tensor::{DType, Device};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// `Σ_i w_i · loss_i`'s value per row and gradient, in f64: `lse_i − x_i[t_i]` and
    /// `w_i · (softmax(x_i) − onehot(t_i))`.
    fn reference(x: &[f32], v: usize, t: &[i64], w: &[f32]) -> (Vec<f64>, Vec<f64>) {
        let (mut losses, mut grad) = (Vec::new(), Vec::new());
        for (i, row) in x.chunks(v).enumerate() {
            let m = row.iter().map(|&a| a as f64).fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = row.iter().map(|&a| (a as f64 - m).exp()).sum();
            let lse = m + s.ln();
            losses.push(lse - row[t[i] as usize] as f64);
            for (j, &a) in row.iter().enumerate() {
                let onehot = if j == t[i] as usize { 1.0 } else { 0.0 };
                grad.push(w[i] as f64 * ((a as f64 - lse).exp() - onehot));
            }
        }
        (losses, grad)
    }

    /// Per-row losses and the gradient of `Σ w_i · loss_i` through the operation, with the logits
    /// handed over in `dtype` (f32: the CPU kernels; others: the ordinary-op route the GPU takes).
    fn run(x: &[f32], n: usize, v: usize, t: &[i64], w: &[f32], dtype: DType) -> (Vec<f32>, Vec<f32>) {
        let device = Device::flex().autodiff();
        let logits = Tensor::<2>::from_data(TensorData::new(x.to_vec(), [n, v]), &device).cast(dtype).require_grad();
        let weights = Tensor::<1>::from_data(TensorData::new(w.to_vec(), [n]), &device);
        let rows = cross_entropy_rows(logits.clone(), t);
        let losses = rows.clone().into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        let grads = (rows * weights).sum().backward();
        let g = logits.grad(&grads).expect("the loss depends on the logits");
        assert_eq!(g.dtype(), dtype, "the gradient comes back in the logits' dtype");
        (losses, g.cast(DType::F32).into_data().try_to_vec::<f32>().unwrap())
    }

    fn case(rng: &mut ChaCha8Rng, n: usize, v: usize, spread: f32) -> (Vec<f32>, Vec<i64>, Vec<f32>) {
        let x: Vec<f32> = (0..n * v).map(|_| rng.random_range(-spread..spread)).collect();
        // The first and last rows aim at the vocabulary's ends (the kernels' edge lanes).
        let t: Vec<i64> = (0..n).map(|i| if i == 0 { 0 } else if i == n - 1 { v as i64 - 1 } else { rng.random_range(0..v as i64) }).collect();
        let w: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect();
        (x, t, w)
    }

    /// Losses and gradients against the f64 formulas, over vocabularies around the kernels' 16
    /// lanes (below, at, above, far above), one to many rows, and logit spreads from near-uniform
    /// to far past where a naive `exp` overflows; on the CPU kernels (f32 logits) and on the
    /// ordinary-op route the GPU backends take (reached here with f64 logits, computed in f32).
    #[test]
    fn matches_the_f64_formulas_over_vocabularies_rows_and_spreads() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for &v in &[1usize, 2, 15, 16, 17, 33, 1000] {
            for &n in &[1usize, 3, 70] {
                for &spread in &[0.01f32, 1.0, 30.0, 1000.0] {
                    let (x, t, w) = case(&mut rng, n, v, spread);
                    let (want_loss, want_grad) = reference(&x, v, &t, &w);
                    for dtype in [DType::F32, DType::F64] {
                        let (loss, grad) = run(&x, n, v, &t, &w, dtype);
                        // f32 rounding of a log-sum-exp of values up to `spread`, and of a sum of
                        // up to 1,000 exponentials.
                        let tol = 2e-6 * (1.0 + spread as f64) + 1e-5;
                        for (i, (a, b)) in loss.iter().zip(&want_loss).enumerate() {
                            assert!((*a as f64 - b).abs() <= tol, "{dtype:?} v={v} n={n} spread={spread} row {i}: loss {a} vs {b}");
                        }
                        for (j, (a, b)) in grad.iter().zip(&want_grad).enumerate() {
                            let tol = 1e-5 * (1.0 + spread as f64) * w[j / v].abs().max(1e-3) as f64;
                            assert!((*a as f64 - b).abs() <= tol, "{dtype:?} v={v} n={n} spread={spread} grad {j}: {a} vs {b}");
                        }
                    }
                }
            }
        }
    }

    /// burn's own `log_softmax(x).gather(t)` (what the trainer used before) gives the same loss
    /// and gradient on a head-sized case.
    #[test]
    fn matches_burns_log_softmax_gather() {
        let (n, v) = (37usize, 4099usize);
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let (x, t, w) = case(&mut rng, n, v, 8.0);
        let (loss, grad) = run(&x, n, v, &t, &w, DType::F32);
        let device = Device::flex().autodiff();
        let logits = Tensor::<2>::from_data(TensorData::new(x, [n, v]), &device).require_grad();
        let targets = Tensor::<2, Int>::from_data(TensorData::new(t, [n, 1]), &device);
        let weights = Tensor::<2>::from_data(TensorData::new(w, [n, 1]), &device);
        let rows = burn::tensor::activation::log_softmax(logits.clone(), 1).gather(1, targets).neg();
        let want_loss = rows.clone().into_data().try_to_vec::<f32>().unwrap();
        let want_grad = logits.grad(&(rows * weights).sum().backward()).unwrap().into_data().try_to_vec::<f32>().unwrap();
        for (a, b) in loss.iter().zip(&want_loss) {
            assert!((a - b).abs() <= 1e-5, "loss {a} vs burn's {b}");
        }
        for (a, b) in grad.iter().zip(&want_grad) {
            assert!((a - b).abs() <= 1e-6, "gradient {a} vs burn's {b}");
        }
    }

    /// The rows are split over rayon's threads; each row is summed on one thread, so the results
    /// are bit-identical whatever the thread count.
    #[test]
    fn thread_count_does_not_change_a_bit() {
        let (n, v) = (29usize, 3001usize);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (x, t, w) = case(&mut rng, n, v, 5.0);
        let on = |threads: usize| rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(|| run(&x, n, v, &t, &w, DType::F32));
        assert_eq!(on(1), on(3));
    }

    /// A NaN or an infinity in a row's logits makes that row's loss and gradient non-finite (so the
    /// trainer's NaN check sees it) and leaves the other rows exactly as they were.
    #[test]
    fn a_non_finite_logit_spoils_its_own_row_only() {
        let (n, v) = (4usize, 40usize);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let (x, t, w) = case(&mut rng, n, v, 3.0);
        let (clean_loss, clean_grad) = run(&x, n, v, &t, &w, DType::F32);
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            for col in [0, 17, v - 1] {
                let mut y = x.clone();
                y[2 * v + col] = bad;
                let (loss, grad) = run(&y, n, v, &t, &w, DType::F32);
                for i in 0..n {
                    let row = &grad[i * v..(i + 1) * v];
                    if i != 2 {
                        assert_eq!(loss[i].to_bits(), clean_loss[i].to_bits(), "{bad} at column {col}: row {i}'s loss changed");
                        assert_eq!(row, &clean_grad[i * v..(i + 1) * v], "{bad} at column {col}: row {i}'s gradient changed");
                    } else if bad == f32::NEG_INFINITY {
                        // −inf is a word of probability 0: a finite loss (unless it is the target).
                        let target_hit = col == t[2] as usize;
                        assert_eq!(loss[i].is_finite(), !target_hit, "-inf at column {col}: loss {}", loss[i]);
                    } else {
                        assert!(!loss[i].is_finite(), "{bad} at column {col}: loss {} is finite", loss[i]);
                        assert!(row.iter().any(|g| !g.is_finite()), "{bad} at column {col}: the gradient is all finite");
                    }
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "target 40 of row 1 is outside the vocabulary 0..40")]
    fn a_target_outside_the_vocabulary_is_named() {
        let (n, v) = (2usize, 40usize);
        let x = vec![0.5f32; n * v];
        run(&x, n, v, &[3, 40], &[1.0, 1.0], DType::F32);
    }
}

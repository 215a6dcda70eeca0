//! RMSNorm (Llama, Qwen3, SmolLM2) as one autodiff operation: `y = x · r · γ` over the last
//! axis, `r = 1 / sqrt(mean(x²) + ε)`, computed in f32 as transformers' `LlamaRMSNorm` does.
//!
//! burn's `RmsNorm::forward` records six operations (square, mean, add, sqrt, div, mul), keeps
//! their outputs and makes about fifteen passes back through `[rows, d]` tensors; a decoder layer
//! runs two norms (four in Qwen3, with its per-head query and key norms). On the CPU (flex, f32)
//! the vendored burn-flex's `ops::rms_norm` kernels make one pass each way and keep `x` and one
//! `r` per row. On the GPU backends burn's own graph runs (`device::one_op`; see
//! [`crate::model::swiglu`], built the same way).
// Without a backend (the `models`-only build) no route reads the arguments.
#![cfg_attr(not(any(feature = "cpu", feature = "vulkan", feature = "metal", feature = "wgpu")), allow(unused_variables, dead_code))]

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, TensorMetadata, backend_extension};
use burn::nn::RmsNorm;
use burn::tensor::{FloatDType, Tensor};

/// RMSNorm over the rows of `[rows, d]` f32 tensors.
#[backend_extension(Flex: cfg(feature = "cpu"), Cube: cfg(any(feature = "vulkan", feature = "metal", feature = "wgpu")), Autodiff)]
pub trait RmsNormBackend: Backend {
    /// `y = x · r · γ` `[rows, d]` with `r = 1 / sqrt(mean(x²) + eps)`, for `x` `[rows, d]` and
    /// `γ` `[d]`, all f32.
    fn rms_norm(x: FloatTensor<Self>, gamma: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        Self::rms_norm_forward(x, gamma, eps).0
    }

    /// `(y, r)`: [`Self::rms_norm`] and the `r` of each row, `[rows, 1]` (what the backward pass reads).
    fn rms_norm_forward(x: FloatTensor<Self>, gamma: FloatTensor<Self>, eps: f64) -> (FloatTensor<Self>, FloatTensor<Self>) {
        composite_forward::<Self>(x, gamma, eps)
    }

    /// The gradient of `Σ grad · y` with respect to `x`: `r·γ·dy − x·r³·Σ(γ·dy·x)/d` per row.
    fn rms_norm_backward_x(x: FloatTensor<Self>, gamma: FloatTensor<Self>, r: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        composite_backward_x::<Self>(x, gamma, r, grad)
    }

    /// The gradient of `Σ grad · y` with respect to `γ`: `Σ_rows dy · x · r`, `[d]`.
    fn rms_norm_backward_gamma(x: FloatTensor<Self>, r: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        composite_backward_gamma::<Self>(x, r, grad)
    }
}

fn row_vector<B: Backend>(gamma: FloatTensor<B>) -> FloatTensor<B> {
    let d = gamma.shape().num_elements();
    B::float_reshape(gamma, [1, d].into())
}

fn composite_forward<B: Backend>(x: FloatTensor<B>, gamma: FloatTensor<B>, eps: f64) -> (FloatTensor<B>, FloatTensor<B>) {
    let ms = B::float_mean_dim(B::float_mul(x.clone(), x.clone()), 1);
    let r = B::float_recip(B::float_sqrt(B::float_add_scalar(ms, eps.into())));
    let y = B::float_mul(B::float_mul(x, r.clone()), row_vector::<B>(gamma));
    (y, r)
}

fn composite_backward_x<B: Backend>(x: FloatTensor<B>, gamma: FloatTensor<B>, r: FloatTensor<B>, grad: FloatTensor<B>) -> FloatTensor<B> {
    let d = x.shape()[1] as f64;
    let gdy = B::float_mul(grad, row_vector::<B>(gamma));
    let t = B::float_sum_dim(B::float_mul(gdy.clone(), x.clone()), 1);
    let r3 = B::float_mul(B::float_mul(r.clone(), r.clone()), r.clone());
    let k = B::float_div_scalar(B::float_mul(r3, t), d.into());
    B::float_sub(B::float_mul(gdy, r), B::float_mul(x, k))
}

fn composite_backward_gamma<B: Backend>(x: FloatTensor<B>, r: FloatTensor<B>, grad: FloatTensor<B>) -> FloatTensor<B> {
    let d = x.shape()[1];
    let s = B::float_sum_dim(B::float_mul(B::float_mul(grad, x), r), 0);
    B::float_reshape(s, [d].into())
}

#[cfg(feature = "cpu")]
impl RmsNormBackend for burn::backend::Flex {
    fn rms_norm_forward(x: FloatTensor<Self>, gamma: FloatTensor<Self>, eps: f64) -> (FloatTensor<Self>, FloatTensor<Self>) {
        if crate::device::flex_all_f32(&[&x, &gamma]) { burn_flex::ops::rms_norm::rms_norm_f32(x, gamma, eps) } else { composite_forward::<Self>(x, gamma, eps) }
    }

    fn rms_norm_backward_x(x: FloatTensor<Self>, gamma: FloatTensor<Self>, r: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        if crate::device::flex_all_f32(&[&x, &gamma, &r, &grad]) {
            burn_flex::ops::rms_norm::rms_norm_backward_x_f32(x, gamma, r, grad)
        } else {
            composite_backward_x::<Self>(x, gamma, r, grad)
        }
    }

    fn rms_norm_backward_gamma(x: FloatTensor<Self>, r: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        if crate::device::flex_all_f32(&[&x, &r, &grad]) { burn_flex::ops::rms_norm::rms_norm_backward_gamma_f32(x, r, grad) } else { composite_backward_gamma::<Self>(x, r, grad) }
    }
}

/// The GPU backends (`Fusion<CubeBackend>` with our features): the default bodies.
#[cfg(any(feature = "vulkan", feature = "metal", feature = "wgpu"))]
impl RmsNormBackend for burn::backend::Cube {}

impl<B: Backend + RmsNormBackend, C: CheckpointStrategy> RmsNormBackend for Autodiff<B, C> {
    fn rms_norm(x: FloatTensor<Self>, gamma: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        /// `dx` and (when `γ` is trained) `dγ` from the kept `x`, `γ` and `r`.
        #[derive(Debug)]
        struct RmsNormBackward;

        impl<B: Backend + RmsNormBackend> Backward<B, 2> for RmsNormBackward {
            type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

            fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
                let [x_node, gamma_node] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x, gamma, r) = ops.state;
                if let Some(node) = gamma_node {
                    grads.register::<B>(node.id, B::rms_norm_backward_gamma(x.clone(), r.clone(), grad.clone()));
                }
                if let Some(node) = x_node {
                    grads.register::<B>(node.id, B::rms_norm_backward_x(x, gamma, r, grad));
                }
            }
        }

        let (x_node, gamma_node) = (x.node(), gamma.node());
        let (x, gamma) = (x.into_primitive(), gamma.into_primitive());
        let (y, r) = B::rms_norm_forward(x.clone(), gamma.clone(), eps);
        match RmsNormBackward.prepare::<C>([x_node, gamma_node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((x, gamma, r), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }
}

/// `norm` applied to `x` `[..., d]` as transformers' `LlamaRMSNorm` does it: in f32 (the result
/// cast back to `x`'s dtype), `x · r · γ` with `r = 1 / sqrt(mean(x²) + ε)`. Differentiable in `x`
/// and in `γ` as one operation (see the module notes).
///
/// ```
/// use burn::nn::RmsNormConfig;
/// use burn::tensor::{Device, Tensor, TensorData};
/// use tunelab::model::rms_norm::rms_norm;
///
/// let device = Device::flex();
/// let norm = RmsNormConfig::new(2).with_epsilon(1e-9).init(&device); // γ = 1
/// let x = Tensor::<2>::from_data(TensorData::new(vec![3.0f32, 4.0], [1, 2]), &device);
/// let y = rms_norm(&norm, x).into_data().try_to_vec::<f32>().unwrap();
/// // rms(3, 4) = sqrt(12.5)
/// assert!((y[0] - 3.0 / 12.5f32.sqrt()).abs() < 1e-6);
/// ```
pub fn rms_norm<const D: usize>(norm: &RmsNorm, x: Tensor<D>) -> Tensor<D> {
    rms_norm_scaled(x, norm.gamma.val(), norm.epsilon)
}

/// [`rms_norm`] with the scale `γ` `[d]` and `eps` given directly (Gemma's norm scales by
/// `1 + w`: `rms_norm_scaled(x, w.add_scalar(1.0), eps)`). Differentiable in `x` and `γ`.
///
/// # Panics
/// If `γ` does not have one value per element of `x`'s last axis.
pub fn rms_norm_scaled<const D: usize>(x: Tensor<D>, gamma: Tensor<1>, eps: f64) -> Tensor<D> {
    let dims = x.dims();
    let d = dims[D - 1];
    let [gd] = gamma.dims();
    assert_eq!(gd, d, "rms_norm: γ has {gd} values, the rows {d} (input {dims:?})");
    let dtype = x.dtype();
    if !crate::device::one_op(&x.device(), "rms_norm") {
        return written_out(x, gamma, eps);
    }
    let rows = x.cast(FloatDType::F32).reshape([dims.iter().take(D - 1).product::<usize>(), d]);
    let gamma = gamma.cast(FloatDType::F32);
    let y = <burn::backend::Dispatch as RmsNormBackend>::rms_norm(rows.into_dispatch(), gamma.into_dispatch(), eps);
    Tensor::<2>::from_dispatch(y).reshape(dims).cast(dtype)
}

/// `burn::nn::RmsNorm`'s graph in f32, cast back to `x`'s dtype: the route where the layer is not
/// one operation (`device::one_op`: on the GPU burn's fusion does better with it).
fn written_out<const D: usize>(x: Tensor<D>, gamma: Tensor<1>, eps: f64) -> Tensor<D> {
    let dtype = x.dtype();
    let x = x.cast(FloatDType::F32);
    let rms = x.clone().square().mean_dim(D - 1).add_scalar(eps).sqrt();
    ((x / rms) * gamma.cast(FloatDType::F32).unsqueeze()).cast(dtype)
}

#[cfg(all(test, feature = "cpu"))]
mod tests {
    use super::*;
    use burn::nn::RmsNormConfig;
    use burn::tensor::{DType, Device, TensorData};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// `y` and the gradients of `Σ w·y` with respect to `x` and `γ`, in f64, and the size of the
    /// two terms `dx` is the difference of (f32 can do no better than a few ulp of those).
    fn reference(x: &[f32], gamma: &[f32], w: &[f32], eps: f64) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let d = gamma.len();
        let (mut y, mut dx, mut dg, mut terms) = (vec![], vec![], vec![0f64; d], vec![]);
        for (row, wr) in x.chunks(d).zip(w.chunks(d)) {
            let ms = row.iter().map(|&a| (a as f64).powi(2)).sum::<f64>() / d as f64;
            let r = 1.0 / (ms + eps).sqrt();
            let t: f64 = (0..d).map(|j| gamma[j] as f64 * wr[j] as f64 * row[j] as f64).sum();
            for j in 0..d {
                let (xj, gj, wj) = (row[j] as f64, gamma[j] as f64, wr[j] as f64);
                y.push(xj * r * gj);
                dx.push(r * gj * wj - xj * r.powi(3) * t / d as f64);
                terms.push((r * gj * wj).abs() + (xj * r.powi(3) * t / d as f64).abs());
                dg[j] += wj * xj * r;
            }
        }
        (y, dx, dg, terms)
    }

    /// `y`, `dx`, `dγ` through the operation, inputs in `dtype` (f32: the CPU kernels; f64: the
    /// ordinary-op route the GPU takes), `x` shaped `[a, rows / a, d]` (leading axes folded).
    fn run(x: &[f32], gamma: &[f32], w: &[f32], rows: usize, eps: f64, dtype: DType) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let device = Device::flex().autodiff();
        let d = gamma.len();
        let a = if rows % 2 == 0 { 2 } else { 1 };
        let xt = Tensor::<3>::from_data(TensorData::new(x.to_vec(), [a, rows / a, d]), &device).cast(dtype).require_grad();
        let mut norm = RmsNormConfig::new(d).init(&device);
        // Set after `init`, which refuses ε = 0.
        norm.epsilon = eps;
        norm.gamma = burn::module::Param::from_tensor(Tensor::<1>::from_data(TensorData::new(gamma.to_vec(), [d]), &device));
        let wt = Tensor::<3>::from_data(TensorData::new(w.to_vec(), [a, rows / a, d]), &device).cast(dtype);
        let y = rms_norm(&norm, xt.clone());
        assert_eq!(y.dtype(), dtype, "the output comes back in the input's dtype");
        let ys = y.clone().cast(DType::F32).into_data().try_to_vec::<f32>().unwrap();
        let grads = (y * wt).sum().backward();
        let dx = xt.grad(&grads).expect("y depends on x").cast(DType::F32).into_data().try_to_vec::<f32>().unwrap();
        let dg = norm.gamma.val().grad(&grads).expect("γ is trained here").into_data().try_to_vec::<f32>().unwrap();
        (ys, dx, dg)
    }

    fn close(name: &str, got: &[f32], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len(), "{name}: length");
        for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
            let err = (a as f64 - b).abs();
            assert!(err <= tol * (1.0 + b.abs()), "{name}[{i}]: {a} against {b} (error {err:e})");
        }
    }

    /// Against f64 over row widths either side of the 16 lanes (1 to 1,000), 1 to 200 rows (either
    /// side of the 64-row blocks of `dγ`), scales from 1e-3 to 1e3, ε from 0 to 1e-2.
    #[test]
    fn rms_norm_matches_f64_reference_and_its_gradients() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for &(rows, d) in &[(1, 1), (3, 15), (2, 16), (5, 17), (64, 33), (65, 64), (200, 576), (4, 1000)] {
            for &(scale, eps) in &[(1.0f32, 1e-6), (1e-3, 1e-5), (1e3, 0.0), (0.5, 1e-2)] {
                let x: Vec<f32> = (0..rows * d).map(|_| rng.random_range(-scale..scale)).collect();
                let gamma: Vec<f32> = (0..d).map(|_| rng.random_range(-2.0f32..2.0)).collect();
                let w: Vec<f32> = (0..rows * d).map(|_| rng.random_range(-2.0f32..2.0)).collect();
                let (y, dx, dg, terms) = reference(&x, &gamma, &w, eps);
                for dtype in [DType::F32, DType::F64] {
                    let what = format!("{rows}x{d} scale {scale} eps {eps} {dtype:?}");
                    let (ys, dxs, dgs) = run(&x, &gamma, &w, rows, eps, dtype);
                    close(&format!("y {what}"), &ys, &y, 1e-5);
                    // dx is a difference of two terms that can cancel (d = 1: to ε/(x² + ε) of
                    // them): its error is measured against the terms' size, which scales as 1/scale.
                    for (i, ((&a, &b), &size)) in dxs.iter().zip(&dx).zip(&terms).enumerate() {
                        let err = (a as f64 - b).abs();
                        assert!(err <= 1e-5 * size + 1e-30, "dx {what} [{i}]: {a} against {b} (terms {size:e})");
                    }
                    close(&format!("dγ {what}"), &dgs, &dg, 1e-5 * rows as f64);
                }
            }
        }
    }

    /// The one-operation route gives what burn's `RmsNorm::forward` gives, value and gradients.
    #[test]
    fn rms_norm_agrees_with_burns_rms_norm() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let device = Device::flex().autodiff();
        let (rows, d) = (37, 576);
        let v = |rng: &mut ChaCha8Rng, n: usize| (0..n).map(|_| rng.random_range(-3.0f32..3.0)).collect::<Vec<_>>();
        let x = Tensor::<2>::from_data(TensorData::new(v(&mut rng, rows * d), [rows, d]), &device).require_grad();
        let w = Tensor::<2>::from_data(TensorData::new(v(&mut rng, rows * d), [rows, d]), &device);
        let mut norm = RmsNormConfig::new(d).with_epsilon(1e-5).init(&device);
        norm.gamma = burn::module::Param::from_tensor(Tensor::<1>::from_data(TensorData::new(v(&mut rng, d), [d]), &device));
        // burn's own module, and the written-out route the GPU takes (`device::one_op`).
        let theirs_all = [norm.forward(x.clone()), written_out(x.clone(), norm.gamma.val(), 1e-5)];
        for theirs in theirs_all {
            let ours = rms_norm(&norm, x.clone());
            let (go, gt) = ((ours.clone() * w.clone()).sum().backward(), (theirs.clone() * w.clone()).sum().backward());
            let max_diff = |a: Tensor<2>, b: Tensor<2>| (a - b).abs().max().into_scalar::<f32>();
            assert!(max_diff(ours, theirs) < 1e-5);
            assert!(max_diff(x.grad(&go).unwrap(), x.grad(&gt).unwrap()) < 1e-5);
            let g = |grads| norm.gamma.val().grad(grads).unwrap().unsqueeze::<2>();
            assert!(max_diff(g(&go), g(&gt)) < 1e-4);
        }
    }

    /// A non-finite value spoils its own row only (its `r` is NaN or 0), never a neighbour's; `dγ`
    /// sums over rows, so it is spoiled where the row is.
    #[test]
    fn rms_norm_keeps_non_finite_values_in_their_row() {
        let d = 20;
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut x: Vec<f32> = (0..3 * d).map(|i| (i as f32 * 0.37).sin()).collect();
            x[d + 7] = bad;
            let gamma = vec![1.0f32; d];
            let w = vec![1.0f32; 3 * d];
            let (y, dx, _) = run(&x, &gamma, &w, 3, 1e-6, DType::F32);
            for row in [0, 2] {
                assert!(y[row * d..(row + 1) * d].iter().chain(&dx[row * d..(row + 1) * d]).all(|v| v.is_finite()), "{bad}: row {row} spoiled");
            }
            assert!(y[d..2 * d].iter().any(|v| !v.is_finite()), "{bad}: its own row shows it");
        }
    }

    /// The same numbers on 1 and 3 threads (rows are independent; `dγ` sums fixed blocks in order).
    #[test]
    fn rms_norm_is_bit_identical_across_thread_counts() {
        let mut rng = ChaCha8Rng::seed_from_u64(13);
        let (rows, d) = (301, 576);
        let x: Vec<f32> = (0..rows * d).map(|_| rng.random_range(-4.0f32..4.0)).collect();
        let gamma: Vec<f32> = (0..d).map(|_| rng.random_range(-2.0f32..2.0)).collect();
        let w: Vec<f32> = (0..rows * d).map(|_| rng.random_range(-2.0f32..2.0)).collect();
        let on = |threads| rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(|| run(&x, &gamma, &w, rows, 1e-6, DType::F32));
        assert_eq!(on(1), on(3));
    }
}

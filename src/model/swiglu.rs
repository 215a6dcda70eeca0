//! SwiGLU, the gated MLP activation of Llama, Qwen3 and SmolLM2: `silu(gate) · up`, as one autodiff operation.
//!
//! Written out as `silu(g) * u`, burn's autodiff records three operations (sigmoid and two
//! products), keeps four `[rows, intermediate]` tensors for the backward pass, and makes about
//! seven passes back through them. On the CPU (flex, f32) two kernels of the vendored burn-flex
//! (`ops::swiglu`) do it in one pass each way and keep only `g` and `u`. On the GPU backends the
//! written-out graph runs (`device::one_op`): there the one operation's default bodies (ordinary
//! ops) made burn's fused step slower (environment.md, issue 17).
//!
//! Built like [`crate::train::cross_entropy`] and [`crate::model::sdpa`].
// Without a backend (the `models`-only build) no route reads the arguments.
#![cfg_attr(not(any(feature = "cpu", feature = "vulkan", feature = "metal", feature = "wgpu")), allow(unused_variables, dead_code))]

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
#[cfg(feature = "cpu")]
use burn::backend::TensorMetadata;
use burn::backend::{Autodiff, Backend, backend_extension};
use burn::tensor::Tensor;

/// `silu(gate) · up` and its gradients.
#[backend_extension(Flex: cfg(feature = "cpu"), Cube: cfg(any(feature = "vulkan", feature = "metal", feature = "wgpu")), Autodiff)]
pub trait SwigluBackend: Backend {
    /// `gate · σ(gate) · up`, element by element (same shape and dtype).
    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        composite_forward::<Self>(gate, up)
    }

    /// The gradients of `Σ grad · silu(gate) · up` with respect to `gate` and `up`.
    fn swiglu_backward(gate: FloatTensor<Self>, up: FloatTensor<Self>, grad: FloatTensor<Self>) -> (FloatTensor<Self>, FloatTensor<Self>) {
        composite_backward::<Self>(gate, up, grad)
    }
}

/// [`SwigluBackend::swiglu`] from ordinary ops (the GPU route, and the CPU's for dtypes other than f32).
fn composite_forward<B: Backend>(gate: FloatTensor<B>, up: FloatTensor<B>) -> FloatTensor<B> {
    let silu = B::float_mul(gate.clone(), B::sigmoid(gate));
    B::float_mul(silu, up)
}

/// [`SwigluBackend::swiglu_backward`] from ordinary ops: `dg = grad · u · (σ + silu · (1 − σ))`,
/// `du = grad · silu`.
fn composite_backward<B: Backend>(gate: FloatTensor<B>, up: FloatTensor<B>, grad: FloatTensor<B>) -> (FloatTensor<B>, FloatTensor<B>) {
    let s = B::sigmoid(gate.clone());
    let silu = B::float_mul(gate, s.clone());
    let du = B::float_mul(grad.clone(), silu.clone());
    let ds = B::float_add(s.clone(), B::float_mul(silu, B::float_add_scalar(B::float_neg(s), 1.0.into())));
    let dg = B::float_mul(B::float_mul(grad, up), ds);
    (dg, du)
}

#[cfg(feature = "cpu")]
impl SwigluBackend for burn::backend::Flex {
    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        if crate::device::flex_all_f32(&[&gate, &up]) && gate.shape() == up.shape() {
            burn_flex::ops::swiglu::swiglu_f32(gate, up)
        } else {
            composite_forward::<Self>(gate, up)
        }
    }

    fn swiglu_backward(gate: FloatTensor<Self>, up: FloatTensor<Self>, grad: FloatTensor<Self>) -> (FloatTensor<Self>, FloatTensor<Self>) {
        if crate::device::flex_all_f32(&[&gate, &up, &grad]) && gate.shape() == up.shape() && gate.shape() == grad.shape() {
            burn_flex::ops::swiglu::swiglu_backward_f32(gate, up, grad)
        } else {
            composite_backward::<Self>(gate, up, grad)
        }
    }
}

/// The GPU backends (`Fusion<CubeBackend>` with our features): the default bodies.
#[cfg(any(feature = "vulkan", feature = "metal", feature = "wgpu"))]
impl SwigluBackend for burn::backend::Cube {}

impl<B: Backend + SwigluBackend, C: CheckpointStrategy> SwigluBackend for Autodiff<B, C> {
    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        /// `dg`, `du` from the kept `g` and `u`.
        #[derive(Debug)]
        struct SwigluBackward;

        impl<B: Backend + SwigluBackend> Backward<B, 2> for SwigluBackward {
            type State = (FloatTensor<B>, FloatTensor<B>);

            fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
                let [gate_node, up_node] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (gate, up) = ops.state;
                let (dg, du) = B::swiglu_backward(gate, up, grad);
                if let Some(node) = gate_node {
                    grads.register::<B>(node.id, dg);
                }
                if let Some(node) = up_node {
                    grads.register::<B>(node.id, du);
                }
            }
        }

        let (gate_node, up_node) = (gate.node(), up.node());
        let (gate, up) = (gate.into_primitive(), up.into_primitive());
        let out = B::swiglu(gate.clone(), up.clone());
        match SwigluBackward.prepare::<C>([gate_node, up_node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((gate, up), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }
}

/// `silu(gate) · up` (`torch.nn.functional.silu(gate) * up`), differentiable in both, as one
/// operation (see the module notes). Same shape and dtype for both.
///
/// ```
/// use burn::tensor::{Device, Tensor, TensorData};
/// use tunelab::model::swiglu::swiglu;
///
/// let device = Device::flex();
/// let gate = Tensor::<1>::from_data(TensorData::new(vec![0.0f32, 2.0], [2]), &device);
/// let up = Tensor::<1>::from_data(TensorData::new(vec![5.0f32, 3.0], [2]), &device);
/// let y = swiglu(gate, up).into_data().try_to_vec::<f32>().unwrap();
/// // silu(0) = 0; silu(2) = 2 / (1 + e⁻²)
/// assert_eq!(y[0], 0.0);
/// assert!((y[1] - 3.0 * 2.0 / (1.0 + (-2f32).exp())).abs() < 1e-5);
/// ```
///
/// # Panics
/// If the shapes differ.
pub fn swiglu<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
    assert_eq!(gate.dims(), up.dims(), "swiglu: gate {:?} and up {:?} differ in shape", gate.dims(), up.dims());
    let up = up.cast(gate.dtype());
    if !crate::device::one_op(&gate.device(), "swiglu") {
        return written_out(gate, up);
    }
    let out = <burn::backend::Dispatch as SwigluBackend>::swiglu(gate.into_dispatch(), up.into_dispatch());
    Tensor::<D>::from_dispatch(out)
}

/// `silu(gate) * up` in burn's graph: the route where the layer is not one operation
/// (`device::one_op`: on the GPU burn's fusion does better with it).
fn written_out<const D: usize>(gate: Tensor<D>, up: Tensor<D>) -> Tensor<D> {
    burn::tensor::activation::silu(gate) * up
}

#[cfg(all(test, feature = "cpu"))]
mod tests {
    use super::*;
    use burn::tensor::{DType, Device, TensorData};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// `y = silu(g)·u` and the gradients of `Σ w·y`, in f64.
    fn reference(g: &[f32], u: &[f32], w: &[f32]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let (mut y, mut dg, mut du) = (vec![], vec![], vec![]);
        for ((&g, &u), &w) in g.iter().zip(u).zip(w) {
            let (g, u, w) = (g as f64, u as f64, w as f64);
            let s = 1.0 / (1.0 + (-g).exp());
            y.push(g * s * u);
            du.push(w * g * s);
            dg.push(w * u * (s + g * s * (1.0 - s)));
        }
        (y, dg, du)
    }

    /// Output and gradients through the operation, with the inputs handed over in `dtype` (f32:
    /// the CPU kernels; f64: the ordinary-op route the GPU takes) and laid out transposed when
    /// `transposed` (the kernels' copy to contiguous).
    fn run(g: &[f32], u: &[f32], w: &[f32], shape: [usize; 2], dtype: DType, transposed: bool) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let device = Device::flex().autodiff();
        // (leaf, what the operation reads): transposed, the leaf holds the values as [cols, rows]
        // and the operation reads them through a transposed (non-contiguous) layout.
        let t = |v: &[f32]| {
            let t = Tensor::<2>::from_data(TensorData::new(v.to_vec(), shape), &device).cast(dtype);
            if transposed {
                let leaf = Tensor::<2>::from_data(t.transpose().into_data(), &device).require_grad();
                (leaf.clone(), leaf.transpose())
            } else {
                let leaf = t.require_grad();
                (leaf.clone(), leaf)
            }
        };
        let ((gt, gl), (ut, ul)) = (t(g), t(u));
        let wt = Tensor::<2>::from_data(TensorData::new(w.to_vec(), shape), &device).cast(dtype);
        let y = swiglu(gl, ul);
        let ys = y.clone().cast(DType::F32).into_data().try_to_vec::<f32>().unwrap();
        let grads = (y * wt).sum().backward();
        let read = |t: &Tensor<2>| {
            let g = t.grad(&grads).expect("the output depends on both inputs");
            assert_eq!(g.dtype(), dtype, "gradients come back in the inputs' dtype");
            let g = if transposed { g.transpose() } else { g };
            g.cast(DType::F32).into_data().try_to_vec::<f32>().unwrap()
        };
        (ys, read(&gt), read(&ut))
    }

    fn close(name: &str, got: &[f32], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len(), "{name}: length");
        for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
            let err = (a as f64 - b).abs();
            assert!(err <= tol * (1.0 + b.abs()), "{name}[{i}]: {a} against {b} (error {err:e})");
        }
    }

    /// Values and gradients against f64 over sizes either side of the 16-wide lanes and of the
    /// parallel threshold (32 Ki elements), gates from ±0.01 to ±100 (σ saturating to exactly 0
    /// and 1), contiguous and transposed inputs, through the CPU kernels and the ordinary-op route.
    #[test]
    fn swiglu_matches_f64_reference_and_its_gradients() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for &(rows, cols) in &[(1, 1), (1, 15), (3, 16), (2, 17), (5, 33), (97, 400), (64, 1030)] {
            for &spread in &[0.01f32, 3.0, 100.0] {
                let n = rows * cols;
                let g: Vec<f32> = (0..n).map(|_| rng.random_range(-spread..spread)).collect();
                let u: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect();
                let w: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect();
                let (y, dg, du) = reference(&g, &u, &w);
                for (dtype, transposed) in [(DType::F32, false), (DType::F32, true), (DType::F64, false)] {
                    let what = format!("{rows}x{cols} spread {spread} {dtype:?} transposed {transposed}");
                    let (ys, dgs, dus) = run(&g, &u, &w, [rows, cols], dtype, transposed);
                    // 2 ulp of the sigmoid (burn-flex's vectorized exp), a few roundings around it.
                    close(&format!("y {what}"), &ys, &y, 2e-6);
                    close(&format!("dg {what}"), &dgs, &dg, 2e-6);
                    close(&format!("du {what}"), &dus, &du, 2e-6);
                }
            }
        }
    }

    /// The one-operation route gives what burn's own `silu(g) * u` gives, value and gradients.
    #[test]
    fn swiglu_agrees_with_burns_silu_times_up() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let device = Device::flex().autodiff();
        let (rows, cols) = (37, 1537);
        let v = |rng: &mut ChaCha8Rng| Tensor::<2>::from_data(TensorData::new((0..rows * cols).map(|_| rng.random_range(-6.0f32..6.0)).collect::<Vec<_>>(), [rows, cols]), &device).require_grad();
        let (g, u, w) = (v(&mut rng), v(&mut rng), v(&mut rng).detach());
        let ours = swiglu(g.clone(), u.clone());
        let theirs = written_out(g.clone(), u.clone());
        let (go, gt) = ((ours.clone() * w.clone()).sum().backward(), (theirs.clone() * w).sum().backward());
        let max_diff = |a: Tensor<2>, b: Tensor<2>| (a - b).abs().max().into_scalar::<f32>();
        assert!(max_diff(ours, theirs) < 1e-5);
        assert!(max_diff(g.grad(&go).unwrap(), g.grad(&gt).unwrap()) < 1e-5);
        assert!(max_diff(u.grad(&go).unwrap(), u.grad(&gt).unwrap()) < 1e-5);
    }

    /// NaN and ±inf stay in their own element: a broken activation shows up where it is.
    #[test]
    fn swiglu_keeps_non_finite_values_in_their_element() {
        let g = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1.0, -1.0, 0.5];
        let u = [1.0, 1.0, 1.0, f32::NAN, 2.0, f32::INFINITY];
        let w = [1.0f32; 6];
        let (y, dg, du) = run(&g, &u, &w, [1, 6], DType::F32, false);
        assert!(y[0].is_nan() && y[3].is_nan());
        assert_eq!(y[1], f32::INFINITY, "silu(+inf) = +inf");
        assert!(y[2] == 0.0 || y[2].is_nan(), "silu(-inf) is 0 (or NaN from -inf · 0): {}", y[2]);
        assert!(y[4].is_finite() && y[5] == f32::INFINITY);
        assert!(dg[0].is_nan() && du[0].is_nan() && dg[3].is_nan());
        assert!(dg[4].is_finite() && du[4].is_finite(), "{} {}", dg[4], du[4]);
    }

    /// The same numbers on 1 and 3 threads (chunks are independent element loops).
    #[test]
    fn swiglu_is_bit_identical_across_thread_counts() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let n = 7 * 10_001;
        let (g, u, w): (Vec<f32>, Vec<f32>, Vec<f32>) = (
            (0..n).map(|_| rng.random_range(-8.0f32..8.0)).collect(),
            (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect(),
            (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect(),
        );
        let on = |threads| rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(|| run(&g, &u, &w, [7, 10_001], DType::F32, false));
        assert_eq!(on(1), on(3));
    }
}

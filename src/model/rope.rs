//! Rotary position embedding as transformers applies it (`q·cos + rotate_half(q)·sin`), as one
//! autodiff operation on `[batch, seq, heads, head_dim]` queries or keys.
//!
//! Written out, burn's autodiff records two narrows, a negation, a concatenation, two products and
//! a sum, and goes back through about eight passes (zero-filled gradients of the narrows among
//! them). The rotation is linear: its backward pass needs only the tables, so nothing of the
//! activations is kept. On the CPU (flex, f32) two kernels of the vendored burn-flex
//! (`ops::rope`) make one pass each way, rounded as the written-out form is. On the GPU backends
//! the written-out form runs (`device::one_op`; see [`crate::model::swiglu`], built the same way).
// Without a backend (the `models`-only build) no route reads the arguments.
#![cfg_attr(not(any(feature = "cpu", feature = "vulkan", feature = "metal", feature = "wgpu")), allow(unused_variables, dead_code))]

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, TensorMetadata, backend_extension};
use burn::tensor::{Slice, Tensor};

/// RoPE on `[batch, seq, heads, head_dim]` with `[seq, head_dim]` tables, returned as
/// `[batch, heads, seq, head_dim]`.
#[backend_extension(Flex: cfg(feature = "cpu"), Cube: cfg(any(feature = "vulkan", feature = "metal", feature = "wgpu")), Autodiff)]
pub trait RopeBackend: Backend {
    /// `x · cos + rotate_half(x) · sin`, `rotate_half([x₁, x₂]) = [−x₂, x₁]` on the last axis,
    /// `[b, t, h, d]` in, `[b, h, t, d]` out.
    fn rope(x: FloatTensor<Self>, cos: FloatTensor<Self>, sin: FloatTensor<Self>) -> FloatTensor<Self> {
        composite::<Self>(x, cos, sin, false)
    }

    /// The gradient of `Σ grad · rope(x)` with respect to `x`: `grad · cos + rotate_halfᵀ(grad · sin)`,
    /// `[b, h, t, d]` in, `[b, t, h, d]` out.
    fn rope_backward(grad: FloatTensor<Self>, cos: FloatTensor<Self>, sin: FloatTensor<Self>) -> FloatTensor<Self> {
        composite::<Self>(grad, cos, sin, true)
    }
}

/// Both directions from ordinary ops, on `[b, h, t, d]`: `rotate_half` forward (from `x`
/// `[b, t, h, d]`, its view with axes 1 and 2 swapped), its transpose (`[x₁, x₂] → [x₂, −x₁]`)
/// backward (to `[b, t, h, d]`, a swapped view).
fn composite<B: Backend>(x: FloatTensor<B>, cos: FloatTensor<B>, sin: FloatTensor<B>, backward: bool) -> FloatTensor<B> {
    let x = if backward { x } else { B::float_swap_dims(x, 1, 2) };
    let s = x.shape();
    let (t, d) = (s[2], s[3]);
    let table = |c: FloatTensor<B>| B::float_reshape(c, [1, 1, t, d].into());
    let (cos, sin) = (table(cos), table(sin));
    let half = |x: &FloatTensor<B>, i: usize| {
        let (a, b) = ((i * d / 2) as isize, ((i + 1) * d / 2) as isize);
        B::float_slice(x.clone(), &[Slice::full(), Slice::full(), Slice::full(), Slice::new(a, Some(b), 1)])
    };
    if backward {
        let gs = B::float_mul(x.clone(), sin);
        let rotated = B::float_cat(vec![half(&gs, 1), B::float_neg(half(&gs, 0))], 3);
        B::float_swap_dims(B::float_add(B::float_mul(x, cos), rotated), 1, 2)
    } else {
        let rotated = B::float_cat(vec![B::float_neg(half(&x, 1)), half(&x, 0)], 3);
        B::float_add(B::float_mul(x, cos), B::float_mul(rotated, sin))
    }
}

#[cfg(feature = "cpu")]
impl RopeBackend for burn::backend::Flex {
    fn rope(x: FloatTensor<Self>, cos: FloatTensor<Self>, sin: FloatTensor<Self>) -> FloatTensor<Self> {
        if crate::device::flex_all_f32(&[&x, &cos, &sin]) { burn_flex::ops::rope::rope_f32(x, cos, sin) } else { composite::<Self>(x, cos, sin, false) }
    }

    fn rope_backward(grad: FloatTensor<Self>, cos: FloatTensor<Self>, sin: FloatTensor<Self>) -> FloatTensor<Self> {
        if crate::device::flex_all_f32(&[&grad, &cos, &sin]) { burn_flex::ops::rope::rope_backward_f32(grad, cos, sin) } else { composite::<Self>(grad, cos, sin, true) }
    }
}

/// The GPU backends (`Fusion<CubeBackend>` with our features): the default bodies.
#[cfg(any(feature = "vulkan", feature = "metal", feature = "wgpu"))]
impl RopeBackend for burn::backend::Cube {}

impl<B: Backend + RopeBackend, C: CheckpointStrategy> RopeBackend for Autodiff<B, C> {
    fn rope(x: FloatTensor<Self>, cos: FloatTensor<Self>, sin: FloatTensor<Self>) -> FloatTensor<Self> {
        /// `dx` from the tables (constants, not differentiated).
        #[derive(Debug)]
        struct RopeBackward;

        impl<B: Backend + RopeBackend> Backward<B, 1> for RopeBackward {
            type State = (FloatTensor<B>, FloatTensor<B>);

            fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
                let [node] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (cos, sin) = ops.state;
                if let Some(node) = node {
                    grads.register::<B>(node.id, B::rope_backward(grad, cos, sin));
                }
            }
        }

        let node = x.node();
        let (x, cos, sin) = (x.into_primitive(), cos.into_primitive(), sin.into_primitive());
        let y = B::rope(x, cos.clone(), sin.clone());
        match RopeBackward.prepare::<C>([node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((cos, sin), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }
}

/// `x · cos + rotate_half(x) · sin` for `x` `[batch, seq, heads, head_dim]` (positions on axis 1)
/// and tables `cos`, `sin` `[seq, head_dim]`, cast to `x`'s dtype, returned as
/// `[batch, heads, seq, head_dim]`: transformers' `apply_rotary_pos_emb` with the heads moved in
/// front of the positions in the same pass (the order attention reads). Differentiable in `x` as
/// one operation (the tables are constants).
///
/// ```
/// use burn::tensor::{Device, Tensor, TensorData};
/// use tunelab::model::rope::rope;
///
/// let device = Device::flex();
/// // One position, one head, head_dim 2: a rotation of (1, 0) by the angle θ.
/// let theta = 0.3f32;
/// let x = Tensor::<4>::from_data(TensorData::new(vec![1.0f32, 0.0], [1, 1, 1, 2]), &device);
/// let cos = Tensor::<2>::from_data(TensorData::new(vec![theta.cos(); 2], [1, 2]), &device);
/// let sin = Tensor::<2>::from_data(TensorData::new(vec![theta.sin(); 2], [1, 2]), &device);
/// let y = rope(x, cos, sin).into_data().try_to_vec::<f32>().unwrap();
/// assert_eq!(y, vec![theta.cos(), theta.sin()]);
/// ```
///
/// # Panics
/// If `head_dim` is odd or the tables are not `[seq, head_dim]`.
pub fn rope(x: Tensor<4>, cos: Tensor<2>, sin: Tensor<2>) -> Tensor<4> {
    let [_, t, _, d] = x.dims();
    assert!(d % 2 == 0, "rope: head_dim {d} is odd");
    assert_eq!(cos.dims(), [t, d], "rope: cos is {:?}, the input has {t} positions of {d}", cos.dims());
    assert_eq!(sin.dims(), [t, d], "rope: sin is {:?}, the input has {t} positions of {d}", sin.dims());
    let dtype = x.dtype();
    let (cos, sin) = (cos.cast(dtype), sin.cast(dtype));
    if !crate::device::one_op(&x.device(), "rope") {
        return written_out(x, cos, sin);
    }
    let y = <burn::backend::Dispatch as RopeBackend>::rope(x.into_dispatch(), cos.into_dispatch(), sin.into_dispatch());
    Tensor::<4>::from_dispatch(y)
}

/// transformers' form (`q·cos + rotate_half(q)·sin`) in burn's graph, on the swapped
/// `[batch, heads, seq, head_dim]` view: the route where the layer is not one operation
/// (`device::one_op`: on the GPU burn's fusion does better with it).
fn written_out(x: Tensor<4>, cos: Tensor<2>, sin: Tensor<2>) -> Tensor<4> {
    let x = x.swap_dims(1, 2);
    let d = x.dims()[3];
    let rot = Tensor::cat(vec![x.clone().narrow(3, d / 2, d / 2).neg(), x.clone().narrow(3, 0, d / 2)], 3);
    x * cos.unsqueeze::<4>() + rot * sin.unsqueeze::<4>()
}

#[cfg(all(test, feature = "cpu"))]
mod tests {
    use super::*;
    use burn::tensor::{DType, Device, TensorData};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn tables(rng: &mut ChaCha8Rng, t: usize, d: usize) -> (Vec<f32>, Vec<f32>) {
        // Real tables have equal halves; random ones check that each half reads its own.
        let a: Vec<f32> = (0..t * d).map(|_| rng.random_range(-3.0f32..3.0)).collect();
        (a.iter().map(|v| v.cos()).collect(), a.iter().map(|v| v.sin()).collect())
    }

    /// Output and gradient bit-identical to the written-out form (same roundings), over head sizes
    /// 2 to 256, one to several heads and positions, either side of the 64-row tasks, contiguous
    /// and strided inputs, in f32 (the CPU kernels) and f64 (the ordinary-op route the GPU takes).
    #[test]
    fn rope_is_the_written_out_form_to_the_bit() {
        let mut rng = ChaCha8Rng::seed_from_u64(21);
        let device = Device::flex().autodiff();
        for &(b, t, h, d) in &[(1, 1, 1, 2), (1, 3, 2, 4), (2, 5, 3, 64), (1, 70, 1, 32), (2, 33, 9, 128), (1, 4, 2, 256)] {
            for dtype in [DType::F32, DType::F64] {
                for strided in [false, true] {
                    let n = b * t * h * d;
                    let x: Vec<f32> = (0..n).map(|_| rng.random_range(-5.0f32..5.0)).collect();
                    let w: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect();
                    let (c, s) = tables(&mut rng, t, d);
                    let tab = |v: &Vec<f32>| Tensor::<2>::from_data(TensorData::new(v.clone(), [t, d]), &device).cast(dtype);
                    // Strided: the same values read through a layout with heads and positions swapped.
                    let leaf = if strided {
                        Tensor::<4>::from_data(TensorData::new(x.clone(), [b, t, h, d]), &device).cast(dtype).swap_dims(1, 2).into_data()
                    } else {
                        Tensor::<4>::from_data(TensorData::new(x.clone(), [b, t, h, d]), &device).cast(dtype).into_data()
                    };
                    let leaf = Tensor::<4>::from_data(leaf, &device).cast(dtype).require_grad();
                    // One view per backward pass (burn consumes the graph's tape).
                    let input = || if strided { leaf.clone().swap_dims(1, 2) } else { leaf.clone() };
                    let wt = Tensor::<4>::from_data(TensorData::new(w, [b, h, t, d]), &device).cast(dtype);
                    let ours = rope(input(), tab(&c), tab(&s));
                    let theirs = written_out(input(), tab(&c), tab(&s));
                    let what = format!("{b}x{t}x{h}x{d} {dtype:?} strided {strided}");
                    let bits = |t: Tensor<4>| t.cast(DType::F64).into_data().try_to_vec::<f64>().unwrap();
                    assert_eq!(ours.dims(), [b, h, t, d], "heads in front of positions");
                    assert_eq!(bits(ours.clone()), bits(theirs.clone()), "values {what}");
                    let (go, gt) = ((ours * wt.clone()).sum().backward(), (theirs * wt).sum().backward());
                    let grad = |g| bits(leaf.grad(g).expect("x is trained"));
                    assert_eq!(grad(&go), grad(&gt), "gradients {what}");
                }
            }
        }
    }

    /// The forward pass is a rotation of each pair (j, j + d/2): lengths kept, with the real
    /// (equal-halves) tables, to rounding.
    #[test]
    fn rope_rotates_pairs_and_keeps_their_length() {
        let device = Device::flex();
        let (t, d) = (7, 8);
        let angles: Vec<f32> = (0..t).flat_map(|p| (0..d).map(move |j| p as f32 * 0.7f32.powi((j % (d / 2)) as i32))).collect();
        let cos = Tensor::<2>::from_data(TensorData::new(angles.iter().map(|a| a.cos()).collect::<Vec<_>>(), [t, d]), &device);
        let sin = Tensor::<2>::from_data(TensorData::new(angles.iter().map(|a| a.sin()).collect::<Vec<_>>(), [t, d]), &device);
        let x: Vec<f32> = (0..t * d).map(|i| ((i * 37 % 11) as f32 - 5.0) / 3.0).collect();
        let y = rope(Tensor::<4>::from_data(TensorData::new(x.clone(), [1, t, 1, d]), &device), cos, sin).into_data().try_to_vec::<f32>().unwrap();
        for p in 0..t {
            for j in 0..d / 2 {
                let (a, b) = (p * d + j, p * d + j + d / 2);
                let (nx, ny) = (x[a].hypot(x[b]), y[a].hypot(y[b]));
                assert!((nx - ny).abs() < 1e-5 * (1.0 + nx), "position {p} pair {j}: |x| {nx}, |y| {ny}");
            }
        }
    }

    /// The same bits on 1 and 3 threads.
    #[test]
    fn rope_is_bit_identical_across_thread_counts() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let (b, t, h, d) = (2, 129, 9, 64);
        let x: Vec<f32> = (0..b * t * h * d).map(|_| rng.random_range(-5.0f32..5.0)).collect();
        let (c, s) = tables(&mut rng, t, d);
        let run = || {
            let device = Device::flex();
            let tab = |v: &Vec<f32>| Tensor::<2>::from_data(TensorData::new(v.clone(), [t, d]), &device);
            rope(Tensor::<4>::from_data(TensorData::new(x.clone(), [b, t, h, d]), &device), tab(&c), tab(&s)).into_data().try_to_vec::<f32>().unwrap()
        };
        let on = |threads| rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(run);
        assert_eq!(on(1), on(3));
    }
}

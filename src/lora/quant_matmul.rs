//! QLoRA's frozen matmul as one autodiff operation: `y = x · dequantize(W)ᵀ` whose backward pass
//! dequantizes `W` again for `grad_x = grad_y · W`, instead of keeping the f32 matrix of the
//! forward pass alive until `backward()` (see [`super::quant`]'s memory notes). `W` is frozen: no
//! gradient of its own, so nothing else of the forward pass is needed.
//!
//! burn 0.22 builds this from a backend extension (`#[backend_extension]`, burn's `extension`
//! feature): a trait routed by runtime dispatch, implemented on the concrete backend (Flex) with
//! primitive ops, and on `Autodiff<B, C>` with a `Backward` whose state holds only the blocks
//! (burn-signal's `rfft` is the pattern). Only the CPU backend (flex) is routed: on other devices
//! [`QuantWeight`](super::QuantWeight) keeps the plain path (dequantize, then burn's own matmul).
//! The GPU backend would need a `Cube` route and, with `gpu-speed` on, a `Fusion` one declaring
//! the output (`#[fusion(dtype = x, shape = ..)]`); neither is written yet, since nothing here
//! could run them (no GPU on the machine this was written on).
// Without the CPU backend no route reads the block arguments (the GPU-only build).
#![cfg_attr(not(feature = "cpu"), allow(unused_variables))]

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Autodiff, Backend, Scalar, TensorMetadata, backend_extension};
use burn::tensor::{DType, FloatDType, Shape};

#[cfg(test)]
thread_local! {
    /// Dequantizations inside backward passes on this thread (tests).
    pub(crate) static BACKWARD_DEQUANTIZED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Block kinds, as the extension passes them (a host integer).
pub(crate) const Q8_0: u8 = 0;
pub(crate) const Q4_0: u8 = 1;
pub(crate) const Q4_1: u8 = 2;

/// `x` `[rows, in]` · `Wᵀ` → `[rows, out]`, `W` `[out, in]` dequantized from ggml blocks as
/// [`super::QuantWeight::dequantize`] does: `values` (Q8_0 `[out, in]`, Q4 `[out, in / 2]`
/// packed nibbles), `scales` and `mins` `[out, in / 32]` (`mins` read for Q4_1 only).
#[backend_extension(Flex: cfg(feature = "cpu"), Autodiff)]
pub trait QuantMatmulBackend: Backend {
    fn quant_matmul(x: FloatTensor<Self>, values: IntTensor<Self>, scales: FloatTensor<Self>, mins: FloatTensor<Self>, kind: u8, out: usize, inp: usize) -> FloatTensor<Self> {
        let dtype = x.dtype();
        let w = dequantize::<Self>(values, scales, mins, kind, out, inp, dtype);
        Self::float_matmul(x, Self::float_transpose(w))
    }
}

/// ggml's `dequantize_row_*` in primitive ops, the same operations in the same order as
/// [`super::QuantWeight::dequantize`] (so the same bits).
/// The f32 matrix is cast to `dtype`, the activations' (f16 under `--dtype f16`: QLoRA's compute
/// dtype), after dequantizing, as `dequantize().cast(dtype)` does.
fn dequantize<B: Backend>(values: IntTensor<B>, scales: FloatTensor<B>, mins: FloatTensor<B>, kind: u8, out: usize, inp: usize, dtype: DType) -> FloatTensor<B> {
    let nb = inp / super::quant::BLOCK;
    let half = super::quant::BLOCK / 2;
    let d = B::float_reshape(B::float_cast(scales, FloatDType::F32), Shape::new([out, nb, 1]));
    let q = if kind == Q8_0 {
        B::int_into_float(B::int_reshape(values, Shape::new([out, nb, super::quant::BLOCK])), FloatDType::F32)
    } else {
        let bytes = B::int_reshape(values, Shape::new([out, nb, half]));
        let lo = B::bitwise_and_scalar(bytes.clone(), Scalar::from(0x0Fi64));
        let hi = B::bitwise_right_shift_scalar(bytes, Scalar::from(4i64));
        B::int_into_float(B::int_cat(vec![lo, hi], 2), FloatDType::F32)
    };
    let w = match kind {
        Q4_0 => B::float_mul(B::float_sub_scalar(q, Scalar::from(8.0f64)), d),
        Q4_1 => {
            let m = B::float_reshape(B::float_cast(mins, FloatDType::F32), Shape::new([out, nb, 1]));
            B::float_add(B::float_mul(q, d), m)
        }
        _ => B::float_mul(q, d),
    };
    let w = B::float_reshape(w, Shape::new([out, inp]));
    if dtype == DType::F32 { w } else { B::float_cast(w, dtype.into()) }
}

#[cfg(feature = "cpu")]
impl QuantMatmulBackend for burn::backend::Flex {}

impl<B: Backend + QuantMatmulBackend, C: CheckpointStrategy> QuantMatmulBackend for Autodiff<B, C> {
    fn quant_matmul(x: FloatTensor<Self>, values: IntTensor<Self>, scales: FloatTensor<Self>, mins: FloatTensor<Self>, kind: u8, out: usize, inp: usize) -> FloatTensor<Self> {
        /// `grad_x = grad_y · W`, `W` dequantized from the blocks kept in the state.
        #[derive(Debug)]
        struct QuantMatmulBackward;

        impl<B: Backend> Backward<B, 1> for QuantMatmulBackward {
            type State = (IntTensor<B>, FloatTensor<B>, FloatTensor<B>, u8, usize, usize);

            fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
                let (values, scales, mins, kind, out, inp) = ops.state;
                #[cfg(test)]
                BACKWARD_DEQUANTIZED.with(|n| n.set(n.get() + 1));
                unary::<B, _>(ops.parents, ops.node, grads, |grad| {
                    let dtype = grad.dtype();
                    B::float_matmul(grad, dequantize::<B>(values, scales, mins, kind, out, inp, dtype))
                });
            }
        }

        let x_node = x.node();
        let (scales, mins) = (scales.into_primitive(), mins.into_primitive());
        match QuantMatmulBackward.prepare::<C>([x_node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let y = B::quant_matmul(x.into_primitive(), values.clone(), scales.clone(), mins.clone(), kind, out, inp);
                prep.finish((values, scales, mins, kind, out, inp), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::quant_matmul(x.into_primitive(), values, scales, mins, kind, out, inp)),
        }
    }
}

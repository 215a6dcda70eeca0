//! (tunelab patch) SwiGLU, `silu(gate) · up`, in one pass forward and one pass backward, for f32.
//!
//! Written out (`silu(g) * u`, silu being `g * sigmoid(g)`), burn's autodiff records three
//! operations and keeps four `[rows, intermediate]` tensors (g, sigmoid(g), silu(g), u); its
//! backward pass recomputes the sigmoid and makes about seven more passes (two products per
//! multiplication, the sigmoid's gradient, one sum). On SmolLM2-135M at 1,024 tokens each such
//! tensor is 6.3 MB, thirty layers deep: about 28 passes and 5 GB of memory traffic per training
//! step, where these two kernels make 5 (read g and u, write y; read dy, g and u, write dg and du).
//! tunelab routes its decoders' MLP here (`model::swiglu`).

use alloc::vec::Vec;
use core::mem::MaybeUninit;
use burn_backend::DType;
use burn_std::Bytes;

use crate::ops::activation::sigmoid_f32;
use crate::par::wide;
use crate::{FlexTensor, Layout};

fn check(name: &str, a: &FlexTensor, b: &FlexTensor) {
    assert_eq!(a.dtype(), DType::F32, "{name}: f32 only, got {:?}", a.dtype());
    assert_eq!(b.dtype(), DType::F32, "{name}: f32 only, got {:?}", b.dtype());
    assert_eq!(a.layout().shape(), b.layout().shape(), "{name}: gate and up differ in shape");
}

/// One chunk of [`swiglu_backward_f32`]: writes every element of `dg` and `du`.
#[inline(always)]
fn backward_chunk(dg: &mut [MaybeUninit<f32>], du: &mut [MaybeUninit<f32>], g: &[f32], u: &[f32], dy: &[f32]) {
    for ((((dg, du), &g), &u), &dy) in dg.iter_mut().zip(du.iter_mut()).zip(g).zip(u).zip(dy) {
        let s = sigmoid_f32(g);
        let silu = g * s;
        du.write(dy * silu);
        dg.write(dy * u * (s + silu * (1.0 - s)));
    }
}

/// `silu(g) · u = g · σ(g) · u`, element by element, for f32 tensors of one shape.
///
/// # Panics
/// If the shapes differ or a tensor is not f32.
pub fn swiglu_f32(gate: FlexTensor, up: FlexTensor) -> FlexTensor {
    check("swiglu_f32", &gate, &up);
    let shape = gate.layout().shape().clone();
    let (gate, up) = (gate.into_contiguous(), up.into_contiguous());
    let (g, u): (&[f32], &[f32]) = (gate.storage(), up.storage());
    let out = crate::par::map2_collect(g, u, #[inline(always)] |g, u| g * sigmoid_f32(g) * u);
    FlexTensor::new(Bytes::from_elems(out), Layout::contiguous(shape), DType::F32)
}

/// The gradients of `Σ grad · silu(g) · u` with respect to `g` and `u`:
/// `dg = grad · u · σ(g) · (1 + g · (1 − σ(g)))` and `du = grad · g · σ(g)`, both f32 of the inputs'
/// shape, in one pass over the three inputs.
///
/// # Panics
/// If the shapes differ or a tensor is not f32.
pub fn swiglu_backward_f32(gate: FlexTensor, up: FlexTensor, grad: FlexTensor) -> (FlexTensor, FlexTensor) {
    check("swiglu_backward_f32", &gate, &up);
    check("swiglu_backward_f32", &gate, &grad);
    let shape = gate.layout().shape().clone();
    let (gate, up, grad) = (gate.into_contiguous(), up.into_contiguous(), grad.into_contiguous());
    let (g, u, dy): (&[f32], &[f32], &[f32]) = (gate.storage(), up.storage(), grad.storage());
    let n = g.len();
    // Every element of both outputs is written below before it is read (no zero-fill).
    let (mut dg, mut du): (Vec<f32>, Vec<f32>) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let (dst_g, dst_u) = (&mut dg.spare_capacity_mut()[..n], &mut du.spare_capacity_mut()[..n]);
    #[cfg(feature = "rayon")]
    if n >= crate::par::PAR_MIN_ELEMS {
        use rayon::prelude::*;
        let c = crate::par::chunk_len(n);
        dst_g
            .par_chunks_mut(c)
            .zip(dst_u.par_chunks_mut(c))
            .zip(g.par_chunks(c).zip(u.par_chunks(c)).zip(dy.par_chunks(c)))
            .for_each(|((a, b), ((g, u), dy))| wide(#[inline(always)] || backward_chunk(a, b, g, u, dy)));
    } else {
        wide(#[inline(always)] || backward_chunk(dst_g, dst_u, g, u, dy));
    }
    #[cfg(not(feature = "rayon"))]
    wide(#[inline(always)] || backward_chunk(dst_g, dst_u, g, u, dy));
    // SAFETY: `body` wrote each of the n elements of both outputs above.
    unsafe {
        dg.set_len(n);
        du.set_len(n);
    }
    let t = |v: Vec<f32>| FlexTensor::new(Bytes::from_elems(v), Layout::contiguous(shape.clone()), DType::F32);
    (t(dg), t(du))
}

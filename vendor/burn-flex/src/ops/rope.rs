//! (tunelab patch) Rotary position embedding (RoPE, transformers' `rotate_half` form) on f32
//! `[batch, seq, heads, head_dim]` rows, written as `[batch, heads, seq, head_dim]` (the order
//! attention reads), in one pass forward and one pass backward.
//!
//! `x · cos + rotate_half(x) · sin`, written out, is two narrows, a negation, a concatenation, two
//! products and a sum; under autodiff each is a pass over the queries or keys, and the backward
//! pass adds about eight more (the narrows' gradients are zero-filled tensors with a slice written
//! in). These kernels write each output element from the two it depends on. Rounded as the
//! written-out form is (`a·c − b·s` is `a·c + (−b)·s` to the bit), so results are identical.
//! tunelab routes its decoders' RoPE here (`model::rope`).

use alloc::vec::Vec;
use core::mem::MaybeUninit;
use burn_backend::DType;
use burn_std::Bytes;

use crate::par::wide;
use crate::{FlexTensor, Layout};

/// Rows per parallel task (a row is one head of one position: 64-256 values).
const ROWS_PER_TASK: usize = 64;

/// The four dims of `x` after checking dtypes and shapes; the tables must be `[dims[seq_axis], d]`.
fn dims_of(name: &str, x: &FlexTensor, cos: &FlexTensor, sin: &FlexTensor, seq_axis: usize) -> [usize; 4] {
    for t in [x, cos, sin] {
        assert_eq!(t.dtype(), DType::F32, "{name}: f32 only, got {:?}", t.dtype());
    }
    let s = x.layout().shape();
    assert_eq!(s.num_dims(), 4, "{name}: x must have 4 dims, got {s:?}");
    let dims = [s[0], s[1], s[2], s[3]];
    let (t, d) = (dims[seq_axis], dims[3]);
    assert!(d % 2 == 0, "{name}: head_dim {d} is odd");
    for (what, c) in [("cos", cos), ("sin", sin)] {
        let cs = c.layout().shape();
        assert_eq!((cs.num_dims(), cs[0], cs[cs.num_dims() - 1]), (2, t, d), "{name}: {what} must be [{t}, {d}], got {cs:?}");
    }
    dims
}

/// One head of one position. `backward`: the transpose of the rotation (the gradient).
#[inline(always)]
fn row(x: &[f32], c: &[f32], s: &[f32], y: &mut [MaybeUninit<f32>], backward: bool) {
    let half = x.len() / 2;
    let (x1, x2) = x.split_at(half);
    let (y1, y2) = y.split_at_mut(half);
    let (c1, c2) = c.split_at(half);
    let (s1, s2) = s.split_at(half);
    if backward {
        // dx₁ = dy₁·c₁ + dy₂·s₂, dx₂ = dy₂·c₂ − dy₁·s₁
        for j in 0..half {
            y1[j].write(x1[j] * c1[j] + x2[j] * s2[j]);
            y2[j].write(x2[j] * c2[j] - x1[j] * s1[j]);
        }
    } else {
        // y₁ = x₁·c₁ − x₂·s₁, y₂ = x₂·c₂ + x₁·s₂
        for j in 0..half {
            y1[j].write(x1[j] * c1[j] - x2[j] * s1[j]);
            y2[j].write(x2[j] * c2[j] + x1[j] * s2[j]);
        }
    }
}

/// Forward: `x` `[b, t, h, d]` → `[b, h, t, d]`. Backward: `grad` `[b, h, t, d]` → `[b, t, h, d]`.
/// Each output row is read from its source row in the other order (the move of the heads in
/// front of the positions that attention needs is done here, not by a copy after).
fn apply(name: &str, x: FlexTensor, cos: FlexTensor, sin: FlexTensor, backward: bool) -> FlexTensor {
    let [b, a1, a2, d] = dims_of(name, &x, &cos, &sin, if backward { 2 } else { 1 });
    // (t, h) from the input's order; the output has axes 1 and 2 swapped.
    let (t, h) = if backward { (a2, a1) } else { (a1, a2) };
    let (x, cos, sin) = (x.into_contiguous(), cos.into_contiguous(), sin.into_contiguous());
    let (xs, cs, ss): (&[f32], &[f32], &[f32]) = (x.storage(), cos.storage(), sin.storage());
    let n = b * t * h * d;
    let mut out: Vec<f32> = Vec::with_capacity(n);
    let dst = &mut out.spare_capacity_mut()[..n];
    if d > 0 {
        // Output row r: its source row and its position.
        let source = |r: usize| -> (usize, usize) {
            if backward {
                // out [b, t, h], source [b, h, t]
                let (bi, ti, hi) = (r / (t * h), (r / h) % t, r % h);
                ((bi * h + hi) * t + ti, ti)
            } else {
                // out [b, h, t], source [b, t, h]
                let (bi, hi, ti) = (r / (h * t), (r / t) % h, r % t);
                ((bi * t + ti) * h + hi, ti)
            }
        };
        let task = |k: usize, y: &mut [MaybeUninit<f32>]| {
            wide(#[inline(always)] || {
                for (i, y) in y.chunks_mut(d).enumerate() {
                    let (src, p) = source(k * ROWS_PER_TASK + i);
                    row(&xs[src * d..(src + 1) * d], &cs[p * d..(p + 1) * d], &ss[p * d..(p + 1) * d], y, backward);
                }
            })
        };
        #[cfg(feature = "rayon")]
        {
            use rayon::prelude::*;
            dst.par_chunks_mut(ROWS_PER_TASK * d).enumerate().for_each(|(k, y)| task(k, y));
        }
        #[cfg(not(feature = "rayon"))]
        for (k, y) in dst.chunks_mut(ROWS_PER_TASK * d).enumerate() {
            task(k, y);
        }
    }
    // SAFETY: every row of d elements was written by `row` above (d = 0: nothing to write).
    unsafe { out.set_len(n) };
    let dims = if backward { [b, t, h, d] } else { [b, h, t, d] };
    FlexTensor::new(Bytes::from_elems(out), Layout::contiguous(dims.into()), DType::F32)
}

/// `x · cos + rotate_half(x) · sin` for f32 `x` `[batch, seq, heads, head_dim]` and tables `cos`,
/// `sin` `[seq, head_dim]` (one row per position, shared by every head), where
/// `rotate_half([x₁, x₂]) = [−x₂, x₁]`; returned as `[batch, heads, seq, head_dim]`, the order
/// attention reads.
///
/// # Panics
/// If a dtype or shape does not match, or `head_dim` is odd.
pub fn rope_f32(x: FlexTensor, cos: FlexTensor, sin: FlexTensor) -> FlexTensor {
    apply("rope_f32", x, cos, sin, false)
}

/// The gradient of `Σ grad · rope(x)` with respect to `x`: `grad · cos + rotate_halfᵀ(grad · sin)`,
/// from the tables alone (the rotation is linear, so nothing of `x` is kept); `grad`
/// `[batch, heads, seq, head_dim]`, the result `[batch, seq, heads, head_dim]` as `x`.
///
/// # Panics
/// As [`rope_f32`].
pub fn rope_backward_f32(grad: FlexTensor, cos: FlexTensor, sin: FlexTensor) -> FlexTensor {
    apply("rope_backward_f32", grad, cos, sin, true)
}

//! (tunelab patch) RMSNorm over the last axis of f32 rows, `y = x · r · γ` with
//! `r = 1 / sqrt(mean(x²) + ε)`, in one pass forward and one pass backward.
//!
//! burn's `RmsNorm` under autodiff records square, mean, add, sqrt, div and mul (the last two
//! broadcasting over the row), keeps their outputs, and goes back through about fifteen passes over
//! the `[rows, d]` activations. A decoder runs it twice a layer; these kernels read `x` once
//! forward (writing `y` and one `r` per row) and `x` and `dy` once backward (writing `dx`), with
//! the row in cache between the row's sum and its update. tunelab routes its decoders'
//! norms here (`model::rms_norm`).

use alloc::vec;
use alloc::vec::Vec;
use core::mem::MaybeUninit;
use burn_backend::DType;
use burn_std::Bytes;

use crate::par::wide;
use crate::{FlexTensor, Layout};

/// Lanes of the partial sums: one AVX-512 register. Float additions are not reassociated by the
/// compiler, so the lanes are explicit.
const LANES: usize = 16;

/// Rows per partial sum of `dγ`: fixed, so the sum's order (and its rounding) does not depend on
/// the number of threads.
const GAMMA_BLOCK: usize = 64;

/// `Σ a_j · b_j` in 16 lanes.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut s = [0f32; LANES];
    let (mut ca, mut cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    for (x, y) in (&mut ca).zip(&mut cb) {
        for ((s, &x), &y) in s.iter_mut().zip(x).zip(y) {
            *s += x * y;
        }
    }
    let mut t: f32 = s.iter().sum();
    for (&x, &y) in ca.remainder().iter().zip(cb.remainder()) {
        t += x * y;
    }
    t
}

/// One row of [`rms_norm_f32`]: writes every element of `y`, and `r`.
#[inline(always)]
fn forward_row(x: &[f32], g: &[f32], eps: f32, y: &mut [MaybeUninit<f32>], r: &mut f32) {
    let inv = 1.0 / (dot(x, x) / x.len() as f32 + eps).sqrt();
    for ((y, &x), &g) in y.iter_mut().zip(x).zip(g) {
        y.write(x * inv * g);
    }
    *r = inv;
}

/// One row of [`rms_norm_backward_x_f32`]: `Σ γ·dy·x`, then each element of `dx`, while the row
/// is in cache.
#[inline(always)]
fn backward_row(x: &[f32], dy: &[f32], g: &[f32], r: f32, dx: &mut [MaybeUninit<f32>]) {
    let mut s = [0f32; LANES];
    let (mut cx, mut cd, mut cg) = (x.chunks_exact(LANES), dy.chunks_exact(LANES), g.chunks_exact(LANES));
    for ((x, dy), g) in (&mut cx).zip(&mut cd).zip(&mut cg) {
        for (((s, &x), &dy), &g) in s.iter_mut().zip(x).zip(dy).zip(g) {
            *s += g * dy * x;
        }
    }
    let mut t: f32 = s.iter().sum();
    for ((&x, &dy), &g) in cx.remainder().iter().zip(cd.remainder()).zip(cg.remainder()) {
        t += g * dy * x;
    }
    let k = r * r * r * t / x.len() as f32;
    for (((dx, &x), &dy), &g) in dx.iter_mut().zip(x).zip(dy).zip(g) {
        dx.write(r * g * dy - x * k);
    }
}

fn rows_of(name: &str, x: &FlexTensor, gamma: &FlexTensor) -> (usize, usize) {
    assert_eq!(x.dtype(), DType::F32, "{name}: f32 only, got {:?}", x.dtype());
    assert_eq!(gamma.dtype(), DType::F32, "{name}: f32 γ only, got {:?}", gamma.dtype());
    let dims = x.layout().shape();
    assert_eq!(dims.num_dims(), 2, "{name}: x must be [rows, d], got {dims:?}");
    let (n, d) = (dims[0], dims[1]);
    assert_eq!(gamma.layout().shape().num_elements(), d, "{name}: γ has {} values for rows of {d}", gamma.layout().shape().num_elements());
    (n, d)
}

/// `(y, r)`: `y = x · r · γ` (`[rows, d]` f32) and `r = 1 / sqrt(mean(x²) + eps)` per row
/// (`[rows, 1]` f32), for f32 `x` `[rows, d]` and `γ` `[d]`.
///
/// # Panics
/// If a dtype or shape does not match.
pub fn rms_norm_f32(x: FlexTensor, gamma: FlexTensor, eps: f64) -> (FlexTensor, FlexTensor) {
    let (n, d) = rows_of("rms_norm_f32", &x, &gamma);
    let (x, gamma) = (x.into_contiguous(), gamma.into_contiguous());
    let (xs, g): (&[f32], &[f32]) = (x.storage(), gamma.storage());
    let eps = eps as f32;
    let mut y: Vec<f32> = Vec::with_capacity(n * d);
    let mut r = vec![0f32; n];
    let dst = &mut y.spare_capacity_mut()[..n * d];
    if d > 0 {
        #[cfg(feature = "rayon")]
        {
            use rayon::prelude::*;
            dst.par_chunks_mut(d)
                .zip(xs.par_chunks(d))
                .zip(r.par_iter_mut())
                .for_each(|((y, x), r)| wide(#[inline(always)] || forward_row(x, g, eps, y, r)));
        }
        #[cfg(not(feature = "rayon"))]
        for ((y, x), r) in dst.chunks_mut(d).zip(xs.chunks(d)).zip(r.iter_mut()) {
            wide(#[inline(always)] || forward_row(x, g, eps, y, r));
        }
    } else {
        // An empty row: 1 / sqrt(eps), as burn's mean of nothing (0) plus eps gives.
        r.fill(1.0 / eps.sqrt());
    }
    // SAFETY: each of the n rows of d elements was written by `row` above (d = 0: none to write).
    unsafe { y.set_len(n * d) };
    (
        FlexTensor::new(Bytes::from_elems(y), Layout::contiguous([n, d].into()), DType::F32),
        FlexTensor::new(Bytes::from_elems(r), Layout::contiguous([n, 1].into()), DType::F32),
    )
}

/// `dx` (`[rows, d]` f32) for `y = x · r · γ`: `r · γ · dy − x · r³ · Σ(γ · dy · x) / d`, row by
/// row, from the forward pass's `r` (`[rows, 1]`).
///
/// # Panics
/// If a dtype or shape does not match.
pub fn rms_norm_backward_x_f32(x: FlexTensor, gamma: FlexTensor, r: FlexTensor, grad: FlexTensor) -> FlexTensor {
    let (n, d) = rows_of("rms_norm_backward_x_f32", &x, &gamma);
    let (x, gamma, r, grad) = (x.into_contiguous(), gamma.into_contiguous(), r.into_contiguous(), grad.into_contiguous());
    let (xs, g, rs, dys): (&[f32], &[f32], &[f32], &[f32]) = (x.storage(), gamma.storage(), r.storage(), grad.storage());
    assert_eq!(rs.len(), n, "rms_norm_backward_x_f32: {} row factors for {n} rows", rs.len());
    assert_eq!(dys.len(), n * d, "rms_norm_backward_x_f32: gradient of {} values for {n} x {d}", dys.len());
    let mut dx: Vec<f32> = Vec::with_capacity(n * d);
    let dst = &mut dx.spare_capacity_mut()[..n * d];
    if d > 0 {
        #[cfg(feature = "rayon")]
        {
            use rayon::prelude::*;
            dst.par_chunks_mut(d)
                .zip(xs.par_chunks(d).zip(dys.par_chunks(d)))
                .zip(rs.par_iter())
                .for_each(|((dx, (x, dy)), &r)| wide(#[inline(always)] || backward_row(x, dy, g, r, dx)));
        }
        #[cfg(not(feature = "rayon"))]
        for ((dx, (x, dy)), &r) in dst.chunks_mut(d).zip(xs.chunks(d).zip(dys.chunks(d))).zip(rs) {
            wide(#[inline(always)] || backward_row(x, dy, g, r, dx));
        }
    }
    // SAFETY: each of the n rows of d elements was written by `row` above.
    unsafe { dx.set_len(n * d) };
    FlexTensor::new(Bytes::from_elems(dx), Layout::contiguous([n, d].into()), DType::F32)
}

/// `dγ` (`[d]` f32) for `y = x · r · γ`: `Σ_rows dy · x · r`, summed in blocks of 64 rows in a fixed
/// order (the same bits on any number of threads).
///
/// # Panics
/// If a dtype or shape does not match.
pub fn rms_norm_backward_gamma_f32(x: FlexTensor, r: FlexTensor, grad: FlexTensor) -> FlexTensor {
    assert_eq!(x.dtype(), DType::F32, "rms_norm_backward_gamma_f32: f32 only");
    let dims = x.layout().shape();
    assert_eq!(dims.num_dims(), 2, "rms_norm_backward_gamma_f32: x must be [rows, d], got {dims:?}");
    let (n, d) = (dims[0], dims[1]);
    let (x, r, grad) = (x.into_contiguous(), r.into_contiguous(), grad.into_contiguous());
    let (xs, rs, dys): (&[f32], &[f32], &[f32]) = (x.storage(), r.storage(), grad.storage());
    assert_eq!((rs.len(), dys.len()), (n, n * d), "rms_norm_backward_gamma_f32: shapes");
    let block = |b: usize| {
        let mut acc = vec![0f32; d];
        let rows = b * GAMMA_BLOCK..((b + 1) * GAMMA_BLOCK).min(n);
        wide(#[inline(always)] || {
            for i in rows {
                let (x, dy, r) = (&xs[i * d..(i + 1) * d], &dys[i * d..(i + 1) * d], rs[i]);
                for ((a, &x), &dy) in acc.iter_mut().zip(x).zip(dy) {
                    *a += dy * x * r;
                }
            }
        });
        acc
    };
    let blocks = n.div_ceil(GAMMA_BLOCK);
    #[cfg(feature = "rayon")]
    let partial: Vec<Vec<f32>> = {
        use rayon::prelude::*;
        (0..blocks).into_par_iter().map(block).collect()
    };
    #[cfg(not(feature = "rayon"))]
    let partial: Vec<Vec<f32>> = (0..blocks).map(block).collect();
    let mut out = vec![0f32; d];
    for p in &partial {
        for (o, &v) in out.iter_mut().zip(p) {
            *o += v;
        }
    }
    FlexTensor::new(Bytes::from_elems(out), Layout::contiguous([d].into()), DType::F32)
}

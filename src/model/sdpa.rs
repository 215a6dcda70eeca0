//! Scaled dot-product attention for training that keeps no `[queries, keys]` matrix for the
//! backward pass: `softmax(q·kᵀ·scale + mask)·v` as one autodiff operation whose backward pass
//! computes the probabilities again from `q` and `k` (FlashAttention's recomputation, without
//! its tiling), as `torch.nn.functional.scaled_dot_product_attention` does in PyTorch's training.
//!
//! Under burn's autodiff, attention is a matmul, a scale, a mask, a softmax decomposed into
//! max/sub/exp/sum/div, and a matmul, and every intermediate `[batch, heads, queries, keys]`
//! tensor stays alive until the backward pass: at seq 512 that is about half of a decoder
//! block's saved activations (`train::memory::ActivationProfile::llama`'s `per_layer_per_key`).
//! burn's own `attention` op falls back to the same decomposition under autodiff. This operation
//! keeps `q`, `k`, `v` and the additive mask (all alive anyway) and, in the backward pass,
//! recomputes the scores (one matmul more) and the softmax (the CPU backend's fused kernel), then
//! `dS = P ⊙ (dP − rowsum(P ⊙ dP))`.
//!
//! Built like `lora::quant_matmul`: a backend extension routed on the CPU backend (flex),
//! on the GPU backends (burn's `Cube`, fused: the forward pass and the recomputation are ordinary
//! fused operations) and on `Autodiff`. `TUNELAB_ATTENTION=plain` keeps burn's graph on every
//! device, for comparisons ([`grouped_attention`] decides).
//!
//! On the GPU (NVIDIA H200, Vulkan, f16, LoRA r16, seq 512, batch 8, 2026-12-07, `bench lora`):
//! burn's pool peaked at 7.9 instead of 13.1 GiB on SmolLM2-135M and at 20.1 instead of 28.3 GiB on
//! Qwen3-0.6B (torch+PEFT bf16: 7.3 and 19.3 GiB allocated), for 9% and 1% fewer tokens/s; final
//! losses within 1e-5 relative of the plain graph's.
// Without a backend (the `models`-only build) no route reads the arguments.
#![cfg_attr(not(any(feature = "cpu", feature = "vulkan", feature = "metal", feature = "wgpu")), allow(unused_variables, dead_code))]

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Scalar, TensorMetadata, backend_extension};
use burn::tensor::activation::softmax;
use burn::tensor::{Device, FloatDType, Shape, Slice, Tensor};

/// `q` `[b, g, r·t, d]` (the `r` query heads of each of `g` key/value heads folded into the
/// rows), `k`, `v` `[b, g, s, d]`, `mask` additive `[b|1, 1, t, s]` (read when `has_mask`),
/// `heads = g·r`: `softmax(q·kᵀ·scale + mask)·v`, `[b, g, r·t, d]`. The scores are cast to f32
/// for the scale, the mask and the softmax, the probabilities back to `v`'s dtype.
///
/// `blocks > 1` (only with a causal mask over as many keys as queries, `s = t`): the queries are
/// taken in `blocks` consecutive ranges of positions, each against the keys up to its own end
/// only, since the mask hides the later ones (their probabilities are exactly 0). The same
/// result with about `(blocks + 1) / (2·blocks)` of the score and value products: 3/4 for 2
/// blocks, 5/8 for 4, as causal attention kernels skip the masked half. A query that sees no
/// key at all (only left padding does that) gets the average of its block's keys, not of all.
#[backend_extension(Flex: cfg(feature = "cpu"), Cube: cfg(any(feature = "vulkan", feature = "metal", feature = "wgpu")), Autodiff)]
pub trait RecomputedAttentionBackend: Backend {
    fn recomputed_attention(q: FloatTensor<Self>, k: FloatTensor<Self>, v: FloatTensor<Self>, mask: FloatTensor<Self>, has_mask: bool, heads: usize, scale: f64, blocks: usize) -> FloatTensor<Self> {
        let dtype = v.dtype();
        let split = Split::new::<Self>(&q, heads, blocks);
        let parts = split
            .ranges()
            .into_iter()
            .map(|(p0, p1)| {
                let (qb, kb, vb, mb) = split.inputs::<Self>(&q, &k, &v, &mask, has_mask, p0, p1);
                let p = probabilities::<Self>(qb, kb, &mb, has_mask, heads, scale);
                Self::float_matmul(Self::float_cast(p, dtype.into()), vb)
            })
            .collect();
        split.join::<Self>(parts)
    }
}

/// How the queries of `[b, g, r·t, d]` are cut into position ranges (see the trait's `blocks`).
#[derive(Debug, Clone, Copy)]
struct Split {
    b: usize,
    g: usize,
    r: usize,
    t: usize,
    d: usize,
    blocks: usize,
}

impl Split {
    fn new<B: Backend>(q: &FloatTensor<B>, heads: usize, blocks: usize) -> Self {
        let [b, g, rt, d] = q.shape().dims::<4>();
        let r = heads / g;
        let t = rt / r;
        Self { b, g, r, t, d, blocks: blocks.clamp(1, t.max(1)) }
    }

    /// `[p0, p1)` for each block, as even as integer positions allow.
    fn ranges(&self) -> Vec<(usize, usize)> {
        (0..self.blocks).map(|i| (i * self.t / self.blocks, (i + 1) * self.t / self.blocks)).collect()
    }

    fn whole(&self, p0: usize, p1: usize) -> bool {
        p0 == 0 && p1 == self.t
    }

    /// The rows of positions `p0..p1` of a `[b, g, r·t, d]` tensor, `[b, g, r·(p1 − p0), d]`.
    fn rows<B: Backend>(&self, x: &FloatTensor<B>, p0: usize, p1: usize) -> FloatTensor<B> {
        if self.whole(p0, p1) {
            return x.clone();
        }
        let (Self { b, g, r, t, d, .. }, n) = (*self, p1 - p0);
        let x = B::float_reshape(x.clone(), Shape::new([b, g, r, t, d]));
        let x = B::float_slice(x, &[all(), all(), all(), range(p0, p1), all()]);
        B::float_reshape(x, Shape::new([b, g, r * n, d]))
    }

    /// `q`'s rows of positions `p0..p1`, the keys and values `0..p1` and the mask's rows
    /// `p0..p1` over keys `0..p1` (whole tensors for one block).
    #[allow(clippy::too_many_arguments)]
    fn inputs<B: Backend>(
        &self,
        q: &FloatTensor<B>,
        k: &FloatTensor<B>,
        v: &FloatTensor<B>,
        mask: &FloatTensor<B>,
        has_mask: bool,
        p0: usize,
        p1: usize,
    ) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
        if self.whole(p0, p1) {
            return (q.clone(), k.clone(), v.clone(), mask.clone());
        }
        let keys = |x: &FloatTensor<B>| B::float_slice(x.clone(), &[all(), all(), range(0, p1), all()]);
        let mask = if has_mask { B::float_slice(mask.clone(), &[all(), all(), range(p0, p1), range(0, p1)]) } else { mask.clone() };
        (self.rows::<B>(q, p0, p1), keys(k), keys(v), mask)
    }

    /// The blocks' `[b, g, r·n_i, d]` results put back in position order, `[b, g, r·t, d]`.
    fn join<B: Backend>(&self, mut parts: Vec<FloatTensor<B>>) -> FloatTensor<B> {
        if parts.len() == 1 {
            return parts.pop().expect("one part");
        }
        let Self { b, g, r, t, d, .. } = *self;
        let parts = parts
            .into_iter()
            .map(|x| {
                let n = x.shape().dims::<4>()[2] / r;
                B::float_reshape(x, Shape::new([b, g, r, n, d]))
            })
            .collect();
        B::float_reshape(B::float_cat(parts, 3), Shape::new([b, g, r * t, d]))
    }
}

fn all() -> Slice {
    Slice::new(0, None, 1)
}

fn range(start: usize, end: usize) -> Slice {
    Slice::new(start as isize, Some(end as isize), 1)
}

/// `softmax(q·kᵀ·scale + mask)` in f32, `[b, g, r·t, s]`.
fn probabilities<B: Backend>(q: FloatTensor<B>, k: FloatTensor<B>, mask: &FloatTensor<B>, has_mask: bool, heads: usize, scale: f64) -> FloatTensor<B> {
    let [b, g, rt, _] = q.shape().dims::<4>();
    let s = k.shape().dims::<4>()[2];
    let t = rt * g / heads;
    let scores = B::float_matmul(q, B::float_swap_dims(k, 2, 3));
    let scores = B::float_mul_scalar(B::float_cast(scores, FloatDType::F32), Scalar::from(scale));
    let scores = B::float_reshape(scores, Shape::new([b, heads, t, s]));
    let scores = if has_mask { B::float_add(scores, mask.clone()) } else { scores };
    B::float_reshape(B::softmax(scores, 3), Shape::new([b, g, rt, s]))
}

#[cfg(feature = "cpu")]
impl RecomputedAttentionBackend for burn::backend::Flex {}

/// The GPU backends: `Fusion<CubeBackend>` with our features (`gpu-speed` turns fusion on), so the
/// default body's matmuls, casts and softmax are fused operations like any others.
#[cfg(any(feature = "vulkan", feature = "metal", feature = "wgpu"))]
impl RecomputedAttentionBackend for burn::backend::Cube {}

impl<B: Backend + RecomputedAttentionBackend, C: CheckpointStrategy> RecomputedAttentionBackend for Autodiff<B, C> {
    fn recomputed_attention(q: FloatTensor<Self>, k: FloatTensor<Self>, v: FloatTensor<Self>, mask: FloatTensor<Self>, has_mask: bool, heads: usize, scale: f64, blocks: usize) -> FloatTensor<Self> {
        /// `dV = Pᵀ·dO`, `dP = dO·vᵀ`, `dS = P ⊙ (dP − rowsum(P ⊙ dP))·scale`, `dQ = dS·k`,
        /// `dK = dSᵀ·q`, with `P` computed again from the kept `q`, `k` and mask, block by block
        /// as the forward pass ran (a block's keys are a prefix: its `dK`, `dV` add into theirs).
        #[derive(Debug)]
        struct RecomputedAttentionBackward;

        impl<B: Backend> Backward<B, 3> for RecomputedAttentionBackward {
            type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, bool, usize, f64, usize);

            fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _checkpointer: &mut Checkpointer) {
                let [node_q, node_k, node_v] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (q, k, v, mask, has_mask, heads, scale, blocks) = ops.state;
                let dtype = v.dtype();
                let split = Split::new::<B>(&q, heads, blocks);
                // A block's gradient for keys (or values) 0..p1 added into the running one.
                let add_prefix = |acc: Option<FloatTensor<B>>, part: FloatTensor<B>| match acc {
                    None => part,
                    Some(acc) => {
                        let p1 = part.shape().dims::<4>()[2];
                        let keys = [all(), all(), range(0, p1), all()];
                        let sum = B::float_add(B::float_slice(acc.clone(), &keys), part);
                        B::float_slice_assign(acc, &keys, sum)
                    }
                };
                let (mut dq, mut dk, mut dv) = (Vec::new(), None, None);
                // The last block first: its keys are all of them, so the sums start full-size.
                for (p0, p1) in split.ranges().into_iter().rev() {
                    let (qb, kb, vb, mb) = split.inputs::<B>(&q, &k, &v, &mask, has_mask, p0, p1);
                    let gb = split.rows::<B>(&grad, p0, p1);
                    let p = probabilities::<B>(qb.clone(), kb.clone(), &mb, has_mask, heads, scale);
                    if node_v.is_some() {
                        let pt = B::float_swap_dims(B::float_cast(p.clone(), dtype.into()), 2, 3);
                        dv = Some(add_prefix(dv, B::float_matmul(pt, gb.clone())));
                    }
                    if node_q.is_none() && node_k.is_none() {
                        continue;
                    }
                    let dp = B::float_cast(B::float_matmul(gb, B::float_swap_dims(vb, 2, 3)), FloatDType::F32);
                    let rowsum = B::float_sum_dim(B::float_mul(p.clone(), dp.clone()), 3);
                    let ds = B::float_mul(p, B::float_sub(dp, rowsum));
                    let ds = B::float_cast(B::float_mul_scalar(ds, Scalar::from(scale)), dtype.into());
                    if node_q.is_some() {
                        dq.push(B::float_matmul(ds.clone(), kb));
                    }
                    if node_k.is_some() {
                        dk = Some(add_prefix(dk, B::float_matmul(B::float_swap_dims(ds, 2, 3), qb)));
                    }
                }
                if let (Some(node), Some(dv)) = (node_v, dv) {
                    grads.register::<B>(node.id, dv);
                }
                if let Some(node) = node_q {
                    dq.reverse();
                    grads.register::<B>(node.id, split.join::<B>(dq));
                }
                if let (Some(node), Some(dk)) = (node_k, dk) {
                    grads.register::<B>(node.id, dk);
                }
            }
        }

        let nodes = [q.node(), k.node(), v.node()];
        let (q, k, v, mask) = (q.into_primitive(), k.into_primitive(), v.into_primitive(), mask.into_primitive());
        match RecomputedAttentionBackward.prepare::<C>(nodes).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let y = B::recomputed_attention(q.clone(), k.clone(), v.clone(), mask.clone(), has_mask, heads, scale, blocks);
                prep.finish((q, k, v, mask, has_mask, heads, scale, blocks), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::recomputed_attention(q, k, v, mask, has_mask, heads, scale, blocks)),
        }
    }
}

/// Whether [`grouped_attention`] takes the recomputing operation on `device`: in training (an
/// autodiff device), unless `TUNELAB_ATTENTION=plain`. In inference the plain path runs.
pub fn recomputes_on(device: &Device) -> bool {
    device.is_autodiff() && recomputes_in_training()
}

/// Whether training will recompute attention in its backward pass (asked before the model is on
/// the autodiff device, e.g. by the memory estimate): yes unless `TUNELAB_ATTENTION=plain`, which
/// keeps burn's graph (every `[queries, keys]` intermediate), for comparisons.
pub fn recomputes_in_training() -> bool {
    static UNKNOWN: std::sync::Once = std::sync::Once::new();
    let Ok(value) = std::env::var("TUNELAB_ATTENTION") else { return true };
    match value.trim().to_ascii_lowercase().as_str() {
        "plain" => false,
        "" | "recomputed" => true,
        _ => {
            UNKNOWN.call_once(|| eprintln!("warning: TUNELAB_ATTENTION={value:?} is neither `plain` nor `recomputed`; attention is recomputed"));
            true
        }
    }
}

/// Grouped-query attention, `q` `[b, g, r·t, d]` with the `r = heads / g` query heads of each
/// key/value head folded into the rows, `k`, `v` `[b, g, s, d]`, `mask` additive and broadcast
/// over `[b, heads, t, s]`: `softmax(q·kᵀ·scale + mask)·v`, `[b, g, r·t, d]`. The scores are
/// scaled, masked and softmaxed in f32 (the mask's -1e9 and the exponentials are out of f16's
/// range), the probabilities cast back to the activations' dtype for the second matmul. On the
/// CPU in training the probabilities are not kept but computed again in the backward pass (see
/// the module notes); otherwise burn's ops record the plain graph.
///
/// `causal`: `mask` hides every key after its query (key `j` from query `i` when `j > s − t + i`),
/// as a decoder's does. Then, in training on the CPU with as many keys as queries, the queries are
/// taken in blocks of positions, each against the keys up to its end only
/// ([`causal_blocks`]; the trait's `blocks`).
pub fn grouped_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, mask: Option<&Tensor<4>>, heads: usize, scale: f32, causal: bool) -> Tensor<4> {
    let (t, s) = (q.dims()[2] * q.dims()[1] / heads, k.dims()[2]);
    // Without a mask `grouped_attention_in_blocks` takes one block whatever this says.
    let blocks = if causal && crate::device::is_cpu(&q.device()) { causal_blocks(t, s) } else { 1 };
    grouped_attention_in_blocks(q, k, v, mask, heads, scale, blocks)
}

/// Query blocks for causal attention of `t` queries over `s` keys: 1 unless `s = t`; then one per
/// 128 positions, at most 4. `TUNELAB_ATTENTION_BLOCKS=n` sets the count instead (1: all queries
/// at once, as before blocks; more than `t` counts as `t`), for comparisons.
pub fn causal_blocks(t: usize, s: usize) -> usize {
    if s != t {
        return 1;
    }
    static UNKNOWN: std::sync::Once = std::sync::Once::new();
    if let Ok(v) = std::env::var("TUNELAB_ATTENTION_BLOCKS") {
        match v.trim().parse::<usize>() {
            Ok(n) => return n.max(1),
            // As `TUNELAB_ATTENTION`: a typo is said once, not silently measured as the default.
            Err(_) if !v.trim().is_empty() => {
                UNKNOWN.call_once(|| eprintln!("warning: TUNELAB_ATTENTION_BLOCKS={v:?} is not a whole number; the default block count is used"))
            }
            Err(_) => {}
        }
    }
    (t / 128).clamp(1, 4)
}

/// [`grouped_attention`] with the queries in `blocks` position ranges (1: all at once). The
/// caller vouches that `mask` is causal when `blocks > 1`.
fn grouped_attention_in_blocks(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, mask: Option<&Tensor<4>>, heads: usize, scale: f32, blocks: usize) -> Tensor<4> {
    if recomputes_on(&q.device()) {
        let (mask, has_mask) = match mask {
            Some(m) => (m.clone(), true),
            // Not read: a placeholder of the right kind for the extension's signature.
            None => (Tensor::<4>::zeros([1, 1, 1, 1], &q.device()), false),
        };
        let y = <burn::backend::Dispatch as RecomputedAttentionBackend>::recomputed_attention(
            q.into_dispatch(),
            k.into_dispatch(),
            v.into_dispatch(),
            mask.into_dispatch(),
            has_mask,
            heads,
            scale as f64,
            if has_mask { blocks } else { 1 },
        );
        return Tensor::from_dispatch(y);
    }
    plain_attention(q, k, v, mask, heads, scale)
}

/// [`grouped_attention`] as burn's ops record it: every intermediate kept for the backward pass.
fn plain_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, mask: Option<&Tensor<4>>, heads: usize, scale: f32) -> Tensor<4> {
    let [b, g, rt, _] = q.dims();
    let s = k.dims()[2];
    let t = rt * g / heads;
    let scores = q.matmul(k.swap_dims(2, 3)).cast(FloatDType::F32).mul_scalar(scale).reshape([b, heads, t, s]);
    let scores = match mask {
        Some(m) => scores + m.clone(),
        None => scores,
    };
    softmax(scores, 3).cast(v.dtype()).reshape([b, g, rt, s]).matmul(v)
}

#[cfg(all(test, feature = "cpu"))]
mod tests {
    use super::*;
    use burn::tensor::{DType, TensorData};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random(dims: [usize; 4], rng: &mut ChaCha8Rng, device: &Device) -> Tensor<4> {
        let n = dims.iter().product();
        Tensor::from_data(TensorData::new((0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect::<Vec<_>>(), dims), device)
    }

    fn values(t: Tensor<4>) -> Vec<f32> {
        t.cast(FloatDType::F32).into_data().try_to_vec::<f32>().unwrap()
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    /// Output and the gradients of q, k and v agree with the plain graph: grouped heads (1, 2
    /// and 3 query heads per key/value head), causal and padding masks or none, batch 1 and 2,
    /// keys longer than queries (a cache), queries in 1 to 7 causal blocks, f32 within 2e-6 and
    /// f16 within f16's rounding; frozen inputs get no gradient and the others still do.
    #[test]
    fn matches_the_plain_graph_and_its_gradients() {
        let device = Device::flex().autodiff();
        assert!(recomputes_on(&device) && !recomputes_on(&Device::flex()));
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for (b, g, r, t, s, d, masked) in [(1, 1, 1, 5, 5, 4, false), (2, 2, 2, 6, 6, 8, true), (1, 3, 3, 4, 7, 8, true), (2, 1, 2, 3, 3, 16, true)] {
            for dtype in [FloatDType::F32, FloatDType::F16] {
                let heads = g * r;
                let (qv, kv, vv, gv) = (random([b, g, r * t, d], &mut rng, &device), random([b, g, s, d], &mut rng, &device), random([b, g, s, d], &mut rng, &device), random([b, g, r * t, d], &mut rng, &device));
                // Causal over the last t of s keys, and one padded key (`pad`) in the last row.
                let mask_with = |pad: usize| {
                    masked.then(|| {
                        let mut m = vec![0.0f32; b * t * s];
                        for bi in 0..b {
                            for i in 0..t {
                                for j in 0..s {
                                    if j > s - t + i || (bi == b - 1 && j == pad && b > 1) {
                                        m[(bi * t + i) * s + j] = -1e9;
                                    }
                                }
                            }
                        }
                        Tensor::<4>::from_data(TensorData::new(m, [b, 1, t, s]), &device)
                    })
                };
                let scale = 1.0 / (d as f32).sqrt();
                let run = |f: &dyn Fn(Tensor<4>, Tensor<4>, Tensor<4>) -> Tensor<4>, frozen_k: bool| {
                    let (q, k, v) = (qv.clone().cast(dtype).require_grad(), kv.clone().cast(dtype), vv.clone().cast(dtype).require_grad());
                    let k = if frozen_k { k } else { k.require_grad() };
                    let y = f(q.clone(), k.clone(), v.clone());
                    assert_eq!(y.dtype(), DType::from(dtype));
                    let grads = (y.clone().cast(FloatDType::F32) * gv.clone()).sum().backward();
                    let grad = |t: &Tensor<4>| t.grad(&grads).map(values);
                    (values(y), grad(&q), grad(&k), grad(&v))
                };
                // Query blocks (causal masks over as many keys as queries): 2 and 3 split 6 and 3
                // positions evenly and unevenly, 4 leaves blocks of one position, 7 more blocks
                // than positions.
                let block_counts: &[usize] = if masked && s == t { &[1, 2, 3, 4, 7] } else { &[1] };
                for (&blocks, frozen_k) in block_counts.iter().flat_map(|n| [(n, false), (n, true)]) {
                    // Padding key 0 leaves the first query of the last row no key at all: the plain
                    // softmax then spreads it evenly over all keys, a block over its own keys
                    // only. Training never pads on the left, so blocks are checked with the last
                    // key padded instead.
                    let mask = mask_with(if blocks == 1 { 0 } else { s - 1 });
                    let ours = run(&|q, k, v| grouped_attention_in_blocks(q, k, v, mask.as_ref(), heads, scale, blocks), frozen_k);
                    let theirs = run(&|q, k, v| plain_attention(q, k, v, mask.as_ref(), heads, scale), frozen_k);
                    let tol = if dtype == FloatDType::F32 { 2e-6 } else { 4e-3 };
                    let case = format!("b{b} g{g} r{r} t{t} s{s} d{d} mask {masked} {dtype:?} frozen k {frozen_k} blocks {blocks}");
                    assert!(max_diff(&ours.0, &theirs.0) <= tol, "{case}: output {}", max_diff(&ours.0, &theirs.0));
                    for (name, a, b) in [("q", &ours.1, &theirs.1), ("k", &ours.2, &theirs.2), ("v", &ours.3, &theirs.3)] {
                        match (a, b) {
                            (Some(a), Some(b)) => assert!(max_diff(a, b) <= tol, "{case}: grad {name} {}", max_diff(a, b)),
                            (None, None) => assert!(name == "k" && frozen_k, "{case}: grad {name} missing"),
                            _ => panic!("{case}: grad {name} present on one side only"),
                        }
                    }
                }
            }
        }
    }
}

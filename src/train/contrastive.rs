//! Contrastive losses for embedding models, as sentence-transformers defines them.
//!
//! * [`MultipleNegativesRankingLoss`] (Henderson et al., 2017): for each anchor, cross-entropy
//!   over `scale · cos(anchor, candidate)` where the candidates are every positive in the batch
//!   (its own is the label) followed by every hard negative in the batch. `symmetric` adds the
//!   positive → anchor direction and averages the two, as `MultipleNegativesSymmetricRankingLoss`.
//! * [`CachedMultipleNegativesRankingLoss`] (GradCache, Gao et al., 2021): the same loss and the
//!   same gradients, with activation memory bounded by a mini-batch rather than the batch.
//! * [`NoDuplicatesBatchSampler`]: batches in which no text appears twice, so no in-batch
//!   "negative" is a copy of an anchor's positive.
//!
//! ```
//! use burn::tensor::{Device, Tensor};
//! use tunelab::train::contrastive::MultipleNegativesRankingLoss;
//! let d = Device::flex();
//! let anchors = Tensor::<2>::from_floats([[1.0, 0.0], [0.0, 1.0]], &d);
//! let positives = Tensor::<2>::from_floats([[1.0, 0.0], [0.0, 1.0]], &d);
//! let loss = MultipleNegativesRankingLoss::default().forward(anchors, positives, None);
//! // Each row is [20, 0] after scaling: -log softmax = ln(1 + e^-20).
//! assert!((loss.into_scalar::<f32>() - (-20f32).exp().ln_1p()).abs() < 1e-7);
//! ```

use std::collections::HashSet;

use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::encoder::TrainableEncoder;

/// One training example: a query (anchor), its positive, optional hard negatives.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PairRef<'a> {
    pub query: &'a str,
    pub positive: &'a str,
    pub negatives: &'a [String],
}

impl<'a> PairRef<'a> {
    /// Every text of the example: query, positive, negatives.
    pub fn texts(&self) -> impl Iterator<Item = &'a str> + 'a {
        let negatives = self.negatives;
        [self.query, self.positive].into_iter().chain(negatives.iter().map(String::as_str))
    }
}

/// The texts of one batch, by column: anchors and positives row-aligned, then every hard
/// negative of the batch (any number per example).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PairBatch<'a> {
    pub anchors: Vec<&'a str>,
    pub positives: Vec<&'a str>,
    pub negatives: Vec<&'a str>,
}

impl<'a> PairBatch<'a> {
    pub fn from_pairs(pairs: impl IntoIterator<Item = PairRef<'a>>) -> Self {
        let mut b = PairBatch::default();
        for p in pairs {
            b.anchors.push(p.query);
            b.positives.push(p.positive);
            b.negatives.extend(p.negatives.iter().map(String::as_str));
        }
        b
    }

    pub fn len(&self) -> usize {
        self.anchors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.anchors.is_empty()
    }

    fn columns(&self) -> [&[&'a str]; 3] {
        [&self.anchors, &self.positives, &self.negatives]
    }
}

/// Cosine similarity of every row of `a` `[n, d]` with every row of `b` `[m, d]` → `[n, m]`
/// (sentence-transformers' `cos_sim`: rows normalised with the norm clamped at 1e-12).
pub fn cos_sim(a: Tensor<2>, b: Tensor<2>) -> Tensor<2> {
    l2_normalize(a).matmul(l2_normalize(b).transpose())
}

fn l2_normalize(x: Tensor<2>) -> Tensor<2> {
    let norm = x.clone().square().sum_dim(1).sqrt().clamp_min(1e-12);
    x / norm
}

/// Mean cross-entropy of `scores` `[n, m]` (m ≥ n) with label `i` for row `i`
/// (`nn.CrossEntropyLoss()(scores, arange(n))`).
fn cross_entropy_diagonal(scores: Tensor<2>) -> Tensor<1> {
    let n = scores.dims()[0];
    let labels = Tensor::<1, Int>::arange(0..n as i64, &scores.device()).reshape([n, 1]);
    log_softmax(scores, 1).gather(1, labels).mean().neg()
}

/// sentence-transformers' `MatryoshkaLoss` around the ranking loss: `Σᵢ wᵢ · loss(shrink(e, dᵢ))`,
/// where `shrink` keeps the first `dᵢ` values of every embedding and L2-normalises them, so the
/// truncated vectors (EmbeddingGemma's 512, 256, 128) stay useful after tuning. Weights default
/// to 1 each, as there. (sentence-transformers' `n_dims_per_step` sampling is not offered: every
/// dimension counts at every step.)
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Matryoshka {
    pub dims: Vec<usize>,
    pub weights: Vec<f32>,
}

impl Matryoshka {
    /// Equal weights.
    pub fn new(dims: Vec<usize>) -> Self {
        let weights = vec![1.0; dims.len()];
        Self { dims, weights }
    }

    /// Checks the dimensions against the embedding width; the message names the bad value.
    pub fn validate(&self, width: Option<usize>) -> Result<(), String> {
        if self.dims.is_empty() {
            return Err("matryoshka_dims is empty".into());
        }
        if self.weights.len() != self.dims.len() {
            return Err(format!("{} matryoshka_weights for {} matryoshka_dims", self.weights.len(), self.dims.len()));
        }
        if let Some(d) = self.dims.iter().find(|&&d| d == 0 || width.is_some_and(|w| d > w)) {
            return Err(format!("dimension {d} is not in 1..={}", width.map_or("the embedding width".into(), |w| w.to_string())));
        }
        Ok(())
    }
}

/// The first `dim` values of every row, L2-normalised (sentence-transformers' `shrink`).
fn shrink(x: Tensor<2>, dim: usize) -> Tensor<2> {
    l2_normalize(x.narrow(1, 0, dim))
}

/// MultipleNegativesRankingLoss (`scale` 20 = temperature 0.05; cosine similarity).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MultipleNegativesRankingLoss {
    pub scale: f32,
    /// Average with the positive → anchor loss (MultipleNegativesSymmetricRankingLoss).
    pub symmetric: bool,
    /// Wrap in MatryoshkaLoss over these truncations.
    #[serde(default)]
    pub matryoshka: Option<Matryoshka>,
}

impl Default for MultipleNegativesRankingLoss {
    fn default() -> Self {
        Self { scale: 20.0, symmetric: false, matryoshka: None }
    }
}

impl MultipleNegativesRankingLoss {
    /// The loss of embeddings: `anchors` and `positives` `[n, d]` row-aligned, `negatives`
    /// `[k, d]` extra candidates for every anchor. With [`Matryoshka`] dimensions, the weighted
    /// sum of the loss over each truncation.
    pub fn forward(&self, anchors: Tensor<2>, positives: Tensor<2>, negatives: Option<Tensor<2>>) -> Tensor<1> {
        let Some(m) = &self.matryoshka else { return self.forward_full(anchors, positives, negatives) };
        let mut total: Option<Tensor<1>> = None;
        for (&d, &w) in m.dims.iter().zip(&m.weights) {
            let l = self
                .forward_full(shrink(anchors.clone(), d), shrink(positives.clone(), d), negatives.clone().map(|n| shrink(n, d)))
                .mul_scalar(w);
            total = Some(match total {
                Some(t) => t + l,
                None => l,
            });
        }
        total.expect("validated: at least one dimension")
    }

    fn forward_full(&self, anchors: Tensor<2>, positives: Tensor<2>, negatives: Option<Tensor<2>>) -> Tensor<1> {
        let n = anchors.dims()[0];
        let candidates = match negatives {
            Some(neg) => Tensor::cat(vec![positives, neg], 0),
            None => positives,
        };
        let scores = cos_sim(anchors, candidates).mul_scalar(self.scale);
        let forward = cross_entropy_diagonal(scores.clone());
        if !self.symmetric {
            return forward;
        }
        // Given a positive, find its anchor among all anchors (hard negatives take no part).
        let backward = cross_entropy_diagonal(scores.narrow(1, 0, n).transpose());
        (forward + backward).div_scalar(2.0)
    }

    /// Embed a batch (with the graph) and return the loss.
    pub fn loss<E: TrainableEncoder>(&self, encoder: &E, batch: &PairBatch) -> Result<Tensor<1>, E::Error> {
        let anchors = encoder.encode(&batch.anchors)?;
        let positives = encoder.encode(&batch.positives)?;
        let negatives = if batch.negatives.is_empty() { None } else { Some(encoder.encode(&batch.negatives)?) };
        Ok(self.forward(anchors, positives, negatives))
    }

    /// Loss value and parameter gradients of one batch. `seed` seeds the device's random
    /// stream (dropout) first, so a step can be replayed exactly.
    pub fn backward<E: TrainableEncoder>(&self, encoder: &E, batch: &PairBatch, seed: u64) -> Result<(f32, GradientsParams), E::Error> {
        self.backward_scaled(encoder, batch, seed, None)
    }

    /// [`backward`](Self::backward) with the loss multiplied by `loss_scale` before the backward
    /// pass (`--dtype f16`, [`super::loss_scale`]): the gradients come back scaled, the loss
    /// value does not. `None` is `backward` exactly.
    pub fn backward_scaled<E: TrainableEncoder>(&self, encoder: &E, batch: &PairBatch, seed: u64, loss_scale: Option<f32>) -> Result<(f32, GradientsParams), E::Error> {
        encoder.device().seed(seed);
        let loss = self.loss(encoder, batch)?;
        let value = loss.clone().into_scalar::<f32>();
        let loss = match loss_scale {
            Some(s) => loss.mul_scalar(s),
            None => loss,
        };
        let grads = GradientsParams::from_grads(loss.backward(), encoder.model());
        Ok((value, grads))
    }
}

/// CachedMultipleNegativesRankingLoss: MultipleNegativesRankingLoss through GradCache.
///
/// 1. Embed every column in mini-batches of `mini_batch_size` without recording a graph
///    ([`TrainableEncoder::without_graph`]).
/// 2. Compute the loss on those embeddings and its gradient with respect to them.
/// 3. Embed each mini-batch again with its graph and back-propagate the cached gradient through
///    the surrogate `Σ emb ⊙ grad`, accumulating the parameter gradients.
///
/// The device's random stream is re-seeded identically before both passes of a mini-batch, so
/// dropout masks match (sentence-transformers restores the RNG state for the same reason).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CachedMultipleNegativesRankingLoss {
    pub loss: MultipleNegativesRankingLoss,
    pub mini_batch_size: usize,
}

impl CachedMultipleNegativesRankingLoss {
    /// Loss value and parameter gradients of one batch, equal to
    /// [`MultipleNegativesRankingLoss::backward`]'s up to float rounding (when dropout is off).
    pub fn backward<E: TrainableEncoder>(&self, encoder: &E, batch: &PairBatch, seed: u64) -> Result<(f32, GradientsParams), E::Error> {
        self.backward_scaled(encoder, batch, seed, None)
    }

    /// [`backward`](Self::backward) with the loss scaled by `loss_scale` before step (2)'s
    /// backward pass, so the cached embedding gradients, and every gradient chained from them
    /// through the f16 activations in step (3), come back scaled (`--dtype f16`).
    pub fn backward_scaled<E: TrainableEncoder>(&self, encoder: &E, batch: &PairBatch, seed: u64, loss_scale: Option<f32>) -> Result<(f32, GradientsParams), E::Error> {
        let device = encoder.device();
        let mb = self.mini_batch_size.max(1);

        // (1) embeddings without graphs, as leaves that will receive gradients. Encoding with the
        // parameters cut from the graph records nothing; `encode(..).detach()` would not do: the
        // graph is built during the forward and burn frees it only inside a backward, so every
        // mini-batch's activations would stay alive at once.
        let untracked = encoder.without_graph();
        let mut leaves: Vec<Vec<Tensor<2>>> = Vec::new();
        for (c, texts) in batch.columns().into_iter().enumerate() {
            let mut column = Vec::new();
            for (k, chunk) in texts.chunks(mb).enumerate() {
                device.seed(chunk_seed(seed, c, k));
                column.push(untracked.encode(chunk)?.detach().require_grad());
            }
            leaves.push(column);
        }
        drop(untracked);

        // (2) loss on the cached embeddings and d loss / d embedding.
        let cat = |c: &Vec<Tensor<2>>| Tensor::cat(c.clone(), 0);
        let negatives = if leaves[2].is_empty() { None } else { Some(cat(&leaves[2])) };
        let loss = self.loss.forward(cat(&leaves[0]), cat(&leaves[1]), negatives);
        let value = loss.clone().into_scalar::<f32>();
        let loss = match loss_scale {
            Some(s) => loss.mul_scalar(s),
            None => loss,
        };
        let emb_grads = loss.backward();

        // (3) re-embed with graphs; chain the cached gradients into the parameters.
        let mut accumulator = GradientsAccumulator::new();
        for (c, texts) in batch.columns().into_iter().enumerate() {
            for (k, chunk) in texts.chunks(mb).enumerate() {
                let Some(cached) = leaves[c][k].grad(&emb_grads) else { continue };
                device.seed(chunk_seed(seed, c, k));
                let emb = encoder.encode(chunk)?;
                let surrogate = (emb * cached).sum();
                accumulator.accumulate(encoder.model(), GradientsParams::from_grads(surrogate.backward(), encoder.model()));
            }
        }
        Ok((value, accumulator.grads()))
    }
}

/// The seed of the device's random stream before mini-batch `chunk` of column `column`
/// (anchors 0, positives 1, negatives 2) is embedded, in both GradCache passes.
fn chunk_seed(seed: u64, column: usize, chunk: usize) -> u64 {
    seed ^ ((column as u64) << 56) ^ ((chunk as u64 + 1) << 32)
}

/// Batches where no text (query, positive or negative) occurs twice, as sentence-transformers'
/// `NoDuplicatesBatchSampler`: walk a seeded permutation, skip an example whose texts collide
/// with the batch so far, start the next batch from the skipped ones. Batches may come out
/// short near the end; `drop_last` drops those.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct NoDuplicatesBatchSampler {
    pub batch_size: usize,
    pub drop_last: bool,
    pub seed: u64,
}

impl NoDuplicatesBatchSampler {
    /// The batches (indices into `pairs`) of epoch `epoch`; the permutation is seeded by
    /// `seed + epoch` (sentence-transformers' `set_epoch`).
    pub fn batches(&self, pairs: &[PairRef], epoch: u64) -> Vec<Vec<usize>> {
        let mut remaining: Vec<usize> = (0..pairs.len()).collect();
        remaining.shuffle(&mut ChaCha8Rng::seed_from_u64(self.seed.wrapping_add(epoch)));
        let size = self.batch_size.max(1);
        let mut batches = Vec::new();
        while !remaining.is_empty() {
            let mut seen: HashSet<&str> = HashSet::new();
            let mut batch = Vec::new();
            for &i in &remaining {
                if pairs[i].texts().any(|t| seen.contains(t)) {
                    continue;
                }
                batch.push(i);
                if batch.len() == size {
                    break;
                }
                seen.extend(pairs[i].texts());
            }
            let taken: HashSet<usize> = batch.iter().copied().collect();
            remaining.retain(|i| !taken.contains(i));
            if batch.len() == size || !self.drop_last {
                batches.push(batch);
            }
        }
        batches
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::encoder::HashedBagEncoder;
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::tensor::{Device, TensorData};
    use rand::Rng;

    fn t2(v: Vec<f32>, s: [usize; 2], d: &Device) -> Tensor<2> {
        Tensor::from_data(TensorData::new(v, s), d)
    }

    /// log Σ_j exp(x_j) − x_label in f64.
    fn ce(row: &[f64], label: usize) -> f64 {
        let m = row.iter().cloned().fold(f64::MIN, f64::max);
        m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln() - row[label]
    }

    #[test]
    fn loss_value_matches_hand_computation() {
        let d = Device::flex();
        // Anchors (2,0) and (0,1): the norm must not matter. Positives e1, e2; one hard
        // negative (0.6, 0.8). Cosines: row 0 = [1, 0, 0.6], row 1 = [0, 1, 0.8].
        let a = t2(vec![2.0, 0.0, 0.0, 1.0], [2, 2], &d);
        let p = t2(vec![1.0, 0.0, 0.0, 1.0], [2, 2], &d);
        let n = t2(vec![0.6, 0.8], [1, 2], &d);
        let s = 20.0;
        let want = (ce(&[s, 0.0, 0.6 * s], 0) + ce(&[0.0, s, 0.8 * s], 1)) / 2.0;
        let got = MultipleNegativesRankingLoss::default().forward(a.clone(), p.clone(), Some(n.clone())).into_scalar::<f32>();
        assert!((got as f64 - want).abs() < 1e-6, "{got} vs {want}"); // = ln(1+e^-20+e^-8)/2 + ln(1+e^-20+e^-4)/2

        // Symmetric, scale 1: positive→anchor rows are columns 0..2 of the scores, i.e.
        // [1, 0] and [0, 1] (the negative takes no part).
        let sym = MultipleNegativesRankingLoss { scale: 1.0, symmetric: true, matryoshka: None };
        let fwd = (ce(&[1.0, 0.0, 0.6], 0) + ce(&[0.0, 1.0, 0.8], 1)) / 2.0;
        let bwd = (ce(&[1.0, 0.0], 0) + ce(&[0.0, 1.0], 1)) / 2.0;
        let got = sym.forward(a, p, Some(n)).into_scalar::<f32>();
        assert!((got as f64 - (fwd + bwd) / 2.0).abs() < 1e-6, "{got} vs {}", (fwd + bwd) / 2.0);
    }

    #[test]
    fn matryoshka_is_the_weighted_sum_over_truncations() {
        // 3-d embeddings where the first coordinate alone ranks wrongly: anchor 0 = (1, 0, 1)
        // matches positive 0 = (-1, 0, 1) only through the third coordinate. By hand with
        // scale 1 at dim 1 the rows are ±1 and the cosines [[-1, 1], [1, -1]].
        let d = Device::flex();
        let a = t2(vec![1.0, 0.0, 1.0, -1.0, 1.0, 0.0], [2, 3], &d);
        let p = t2(vec![-1.0, 0.0, 1.0, 1.0, 2.0, 0.0], [2, 3], &d);
        let plain = MultipleNegativesRankingLoss { scale: 1.0, symmetric: false, matryoshka: None };
        let dim1 = (ce(&[-1.0, 1.0], 0) + ce(&[1.0, -1.0], 1)) / 2.0;
        let full = plain.forward(a.clone(), p.clone(), None).into_scalar::<f32>() as f64;
        let m = MultipleNegativesRankingLoss { matryoshka: Some(Matryoshka { dims: vec![3, 1], weights: vec![1.0, 0.5] }), ..plain.clone() };
        let got = m.forward(a.clone(), p.clone(), None).into_scalar::<f32>() as f64;
        assert!((got - (full + 0.5 * dim1)).abs() < 1e-6, "{got} vs {}", full + 0.5 * dim1);
        // A single full-width dimension is the plain loss.
        let one = MultipleNegativesRankingLoss { matryoshka: Some(Matryoshka::new(vec![3])), ..plain };
        assert!((one.forward(a, p, None).into_scalar::<f32>() as f64 - full).abs() < 1e-6);
        assert!(Matryoshka::new(vec![4]).validate(Some(3)).unwrap_err().contains('4'));
        assert!(Matryoshka { dims: vec![2], weights: vec![] }.validate(Some(3)).is_err());
    }

    /// Central differences on the loss of random embeddings (f32, eps 1e-3): every partial
    /// derivative within 1e-2 relative (absolute floor 1e-3). Checked for both variants.
    #[test]
    fn embedding_gradients_match_finite_differences() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let mut rand = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect() };
        let (a, p, n) = (rand(12), rand(12), rand(8)); // 3 pairs, 2 negatives, dim 4
        for loss in [MultipleNegativesRankingLoss::default(), MultipleNegativesRankingLoss { scale: 20.0, symmetric: true, matryoshka: None }] {
            let value = |a: &[f32], p: &[f32], n: &[f32]| {
                let d = Device::flex();
                loss.forward(t2(a.to_vec(), [3, 4], &d), t2(p.to_vec(), [3, 4], &d), Some(t2(n.to_vec(), [2, 4], &d))).into_scalar::<f32>()
            };
            let d = Device::flex().autodiff();
            let (ta, tp, tn) = (t2(a.clone(), [3, 4], &d).require_grad(), t2(p.clone(), [3, 4], &d).require_grad(), t2(n.clone(), [2, 4], &d).require_grad());
            let grads = loss.forward(ta.clone(), tp.clone(), Some(tn.clone())).backward();
            let analytic: Vec<Vec<f32>> = [ta, tp, tn].iter().map(|t| t.grad(&grads).unwrap().into_data().try_to_vec().unwrap()).collect();
            let eps = 1e-3f32;
            let mut worst = 0.0f32;
            for (which, g) in analytic.iter().enumerate() {
                for i in 0..g.len() {
                    let mut cols = [a.clone(), p.clone(), n.clone()];
                    cols[which][i] += eps;
                    let up = value(&cols[0], &cols[1], &cols[2]);
                    cols[which][i] -= 2.0 * eps;
                    let down = value(&cols[0], &cols[1], &cols[2]);
                    let fd = (up - down) / (2.0 * eps);
                    let err = (fd - g[i]).abs() / g[i].abs().max(fd.abs()).max(1e-1);
                    worst = worst.max(err);
                    assert!((fd - g[i]).abs() <= 1e-2 * g[i].abs().max(fd.abs()) + 1e-3, "column {which} [{i}]: autodiff {} vs fd {fd} ({loss:?})", g[i]);
                }
            }
            eprintln!("MNRL grad check (symmetric={}): max relative error {worst:e}", loss.symmetric);
        }
    }

    /// The same check in f64 (burn-flex computes in the tensor's dtype): with eps 1e-6 the
    /// central difference is accurate to ~1e-9, so autodiff must agree to 1e-6 relative.
    #[test]
    fn embedding_gradients_match_finite_differences_in_f64() {
        let mut rng = ChaCha8Rng::seed_from_u64(12);
        let mut rand = |n: usize| -> Vec<f64> { (0..n).map(|_| rng.random_range(-1.0f64..1.0)).collect() };
        let (a, p, n) = (rand(12), rand(12), rand(8));
        let t = |v: &[f64], rows: usize, d: &Device| Tensor::<2>::from_data(TensorData::new(v.to_vec(), [rows, 4]), (d, burn::tensor::DType::F64));
        for loss in [MultipleNegativesRankingLoss::default(), MultipleNegativesRankingLoss { scale: 20.0, symmetric: true, matryoshka: None }] {
            let value = |cols: &[Vec<f64>; 3]| {
                let d = Device::flex();
                loss.forward(t(&cols[0], 3, &d), t(&cols[1], 3, &d), Some(t(&cols[2], 2, &d))).into_scalar::<f64>()
            };
            let d = Device::flex().autodiff();
            let leaves = [t(&a, 3, &d).require_grad(), t(&p, 3, &d).require_grad(), t(&n, 2, &d).require_grad()];
            let grads = loss.forward(leaves[0].clone(), leaves[1].clone(), Some(leaves[2].clone())).backward();
            let eps = 1e-6;
            let mut worst = 0.0f64;
            for (which, leaf) in leaves.iter().enumerate() {
                let g: Vec<f64> = leaf.grad(&grads).unwrap().into_data().try_to_vec().unwrap();
                for i in 0..g.len() {
                    let mut cols = [a.clone(), p.clone(), n.clone()];
                    cols[which][i] += eps;
                    let up = value(&cols);
                    cols[which][i] -= 2.0 * eps;
                    let fd = (up - value(&cols)) / (2.0 * eps);
                    let err = (fd - g[i]).abs() / g[i].abs().max(fd.abs()).max(1e-3);
                    worst = worst.max(err);
                    assert!(err < 1e-6, "column {which} [{i}]: autodiff {} vs fd {fd}", g[i]);
                }
            }
            eprintln!("MNRL f64 grad check (symmetric={}): max relative error {worst:e}", loss.symmetric);
        }
    }

    fn pairs_fixture() -> Vec<(String, String, Vec<String>)> {
        (0..7)
            .map(|i| (format!("query number {i}"), format!("document about topic {i} and fox"), if i % 2 == 0 { vec![format!("unrelated text {i}")] } else { vec![] }))
            .collect()
    }

    /// Every parameter gradient of the cached loss equals the plain loss's within 1e-5
    /// (absolute) + 1e-4 (relative): the same sums in a different order, in f32.
    #[test]
    fn gradcache_gives_the_plain_gradients() {
        let device = Device::flex().autodiff();
        let enc = HashedBagEncoder::new(64, 8, 6, 0.0, 5, &device);
        let data = pairs_fixture();
        let pairs: Vec<PairRef> = data.iter().map(|(q, p, n)| PairRef { query: q, positive: p, negatives: n }).collect();
        let batch = PairBatch::from_pairs(pairs.iter().copied());
        for symmetric in [false, true] {
            let plain = MultipleNegativesRankingLoss { scale: 20.0, symmetric, matryoshka: None };
            let (l1, g1) = plain.backward(&enc, &batch, 1).unwrap();
            let cached = CachedMultipleNegativesRankingLoss { loss: plain.clone(), mini_batch_size: 3 };
            let (l2, g2) = cached.backward(&enc, &batch, 1).unwrap();
            assert!((l1 - l2).abs() < 1e-6, "loss {l1} vs {l2}");
            let mut cmp = Compare { a: g1, b: g2, worst: 0.0, count: 0 };
            enc.visit(&mut cmp);
            assert_eq!(cmp.count, 3, "embedding, proj weight and bias all have gradients");
            eprintln!("GradCache vs plain (symmetric={symmetric}): max |Δgrad| {:e}", cmp.worst);
        }
    }

    /// With dropout on, the cached loss equals the plain loss on embeddings drawn with the same
    /// masks, i.e. each mini-batch embedded after seeding the device as GradCache does: its
    /// first pass (no graph) and second pass (graph) must draw identical masks, else the cached
    /// gradient d loss / d embedding is chained through a different network than it came from.
    #[test]
    fn gradcache_first_pass_draws_the_masks_of_the_second() {
        // Its masks come from the process-wide stream, which the trainer tests reseed every step.
        let _turn = crate::train::contrastive_trainer::tests::rng_turn();
        let device = Device::flex().autodiff();
        let enc = HashedBagEncoder::new(64, 8, 6, 0.3, 5, &device).for_training();
        let data = pairs_fixture();
        let pairs: Vec<PairRef> = data.iter().map(|(q, p, n)| PairRef { query: q, positive: p, negatives: n }).collect();
        let batch = PairBatch::from_pairs(pairs.iter().copied());
        let mb = 3;
        let with_masks = |seed: u64| {
            let columns: Vec<Tensor<2>> = batch
                .columns()
                .into_iter()
                .enumerate()
                .map(|(c, texts)| {
                    let parts = texts
                        .chunks(mb)
                        .enumerate()
                        .map(|(k, chunk)| {
                            device.seed(chunk_seed(seed, c, k));
                            enc.encode(chunk).unwrap()
                        })
                        .collect();
                    Tensor::cat(parts, 0)
                })
                .collect();
            let [a, p, n]: [Tensor<2>; 3] = columns.try_into().unwrap();
            let loss = MultipleNegativesRankingLoss::default().forward(a, p, Some(n));
            (loss.clone().into_scalar::<f32>(), GradientsParams::from_grads(loss.backward(), &enc))
        };
        let cached = CachedMultipleNegativesRankingLoss { loss: MultipleNegativesRankingLoss::default(), mini_batch_size: mb };
        let (l1, g1) = with_masks(4);
        let (l2, g2) = cached.backward(&enc, &batch, 4).unwrap();
        assert!((l1 - l2).abs() < 1e-6, "loss {l1} vs {l2}");
        let mut cmp = Compare { a: g1, b: g2, worst: 0.0, count: 0 };
        enc.visit(&mut cmp);
        assert_eq!(cmp.count, 3);
        eprintln!("GradCache vs plain with dropout 0.3 and the same masks: max |Δgrad| {:e}", cmp.worst);
        // Dropout does act here (another seed, another loss), and the same seed replays exactly.
        let (l3, _) = cached.backward(&enc, &batch, 5).unwrap();
        assert!((l3 - l2).abs() > 1e-4, "dropout 0.3 changes nothing? {l2} vs {l3}");
        assert_eq!(cached.backward(&enc, &batch, 4).unwrap().0.to_bits(), l2.to_bits());
    }

    struct Compare {
        a: GradientsParams,
        b: GradientsParams,
        worst: f32,
        count: usize,
    }

    impl ModuleVisitor for Compare {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let (Some(a), Some(b)) = (self.a.get::<D>(param.id), self.b.get::<D>(param.id)) else {
                panic!("gradient missing for a parameter of shape {:?}", param.dims())
            };
            let (a, b): (Vec<f32>, Vec<f32>) = (a.into_data().try_to_vec().unwrap(), b.into_data().try_to_vec().unwrap());
            assert!(a.iter().any(|v| *v != 0.0));
            for (x, y) in a.iter().zip(&b) {
                let diff = (x - y).abs();
                self.worst = self.worst.max(diff);
                assert!(diff <= 1e-5 + 1e-4 * x.abs(), "{x} vs {y}");
            }
            self.count += 1;
        }
    }

    #[test]
    fn no_duplicates_sampler_never_repeats_a_text_in_a_batch() {
        // Ten examples sharing positives and negatives in a pattern; batch size 4.
        let data: Vec<(String, String, Vec<String>)> =
            (0..10).map(|i| (format!("q{i}"), format!("doc{}", i % 3), vec![format!("neg{}", i % 4)])).collect();
        let pairs: Vec<PairRef> = data.iter().map(|(q, p, n)| PairRef { query: q, positive: p, negatives: n }).collect();
        let sampler = NoDuplicatesBatchSampler { batch_size: 4, drop_last: false, seed: 3 };
        let batches = sampler.batches(&pairs, 0);
        let mut all: Vec<usize> = batches.concat();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>(), "every example exactly once");
        for b in &batches {
            assert!(b.len() <= 3, "only 3 distinct positives exist: {b:?}");
            let texts: Vec<&str> = b.iter().flat_map(|&i| pairs[i].texts()).collect();
            let unique: HashSet<&str> = texts.iter().copied().collect();
            assert_eq!(unique.len(), texts.len(), "duplicate text in {b:?}");
        }
        assert_eq!(sampler.batches(&pairs, 0), batches, "seeded");
        assert_ne!(sampler.batches(&pairs, 1), batches, "epoch changes the order");
        let dropped = NoDuplicatesBatchSampler { drop_last: true, batch_size: 3, ..sampler }.batches(&pairs, 0);
        assert!(dropped.iter().all(|b| b.len() == 3));
    }
}

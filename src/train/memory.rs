//! What a contrastive run will hold in memory, estimated before it starts, so a run that cannot
//! fit stops at once with the flag to change instead of failing (or swapping) an hour in.
//!
//! * weights: every parameter, f32;
//! * gradients and AdamW state (two moments): f32 per *trainable* parameter (LoRA: adapters only);
//!   GradCache holds two sets of gradients while it re-embeds a mini-batch (the sum so far and
//!   the mini-batch's own, see [`MemoryEstimate::with_gradcache`]);
//! * activations: what autograd keeps for one micro-batch: the texts encoded with a graph at once
//!   (all columns of a batch with plain MultipleNegativesRankingLoss; one GradCache mini-batch of
//!   one column otherwise) × tokens × the floats each architecture saves per token and layer.
//!
//! The activation count per token is the architecture's (see [`ActivationProfile`]); it is an
//! estimate of the tensors burn's autodiff keeps, not a measurement.
//!
//! ```
//! use tunelab::train::memory::{ActivationProfile, MemoryEstimate};
//! let p = ActivationProfile::gemma(24, 768, 768, 256, 1152, 3, 1);
//! let e = MemoryEstimate::new(300_000_000, 300_000_000, p.bytes_per_token(256), 8 * 256);
//! assert!(e.total() > e.weights + e.gradients + e.optimizer);
//! ```

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;

/// f32 values an architecture keeps per token for the backward pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActivationProfile {
    pub layers: usize,
    /// Per layer and token, independent of the sequence length.
    pub per_layer: usize,
    /// Per layer and token, times the sequence length (attention scores and probabilities).
    pub per_layer_per_key: usize,
    /// Outside the layers (embeddings, final norm, pooling), per token.
    pub other: usize,
}

impl ActivationProfile {
    /// A BERT encoder: LayerNorm inputs/outputs, q/k/v, context, the FFN's input, GELU input and
    /// output, dropout masks; scores, probabilities and their dropout mask per head.
    pub fn bert(layers: usize, hidden: usize, intermediate: usize, heads: usize) -> Self {
        Self { layers, per_layer: 12 * hidden + 3 * intermediate, per_layer_per_key: 3 * heads, other: 4 * hidden }
    }

    /// A Gemma 3 encoder: four RMSNorms' inputs and outputs, q/k/v before and after norm and
    /// RoPE, the attention output, gate/up/GELU/product of the MLP; scores, masked scores and
    /// probabilities per query head.
    pub fn gemma(
        layers: usize,
        hidden: usize,
        q_width: usize,
        head_dim: usize,
        intermediate: usize,
        heads: usize,
        kv_heads: usize,
    ) -> Self {
        let kv_width = kv_heads * head_dim;
        Self {
            layers,
            per_layer: 10 * hidden + 4 * q_width + 4 * kv_width + 4 * intermediate,
            per_layer_per_key: 3 * heads,
            other: 3 * hidden,
        }
    }

    /// A Llama-family decoder ([`crate::model::decoder`]) with `layers` blocks under the
    /// gradient (the trained ones and those above them; frozen blocks below keep nothing):
    /// two RMSNorms' inputs and outputs, q/k/v and q/k after RoPE (each term and rotate-half),
    /// the attention output and the residual sums, gate/up/SiLU/product of the MLP;
    /// scores, masked scores and probabilities per query head. Outside: the embedding output,
    /// the final norm, and the logits and log-softmax of every target token over `vocab`.
    pub fn llama(layers: usize, hidden: usize, q_width: usize, kv_width: usize, intermediate: usize, heads: usize, vocab: usize) -> Self {
        Self {
            layers,
            per_layer: 6 * hidden + 4 * q_width + 6 * kv_width + 4 * intermediate,
            per_layer_per_key: 3 * heads,
            other: 3 * hidden + 2 * vocab,
        }
    }

    /// Bytes per token at sequence length `seq`.
    pub fn bytes_per_token(&self, seq: usize) -> u64 {
        4 * (self.layers * (self.per_layer + self.per_layer_per_key * seq) + self.other) as u64
    }

    /// Bytes per token under `train embed --dtype f16` (`BertModel::with_dtype`, arranged as
    /// `torch.autocast`): `f32_per_layer` of each layer's values (the residual stream and the
    /// LayerNorms' inputs and outputs) and what lies outside the layers (pooling, normalisation,
    /// the loss) stay f32; the rest of each layer (linear inputs cast at use, q/k/v, context, the
    /// feed-forward) is f16; the attention scores count at 4 bytes as in the decoder's case below.
    pub fn bytes_per_token_autocast(&self, seq: usize, f32_per_layer: usize) -> u64 {
        let f32_part = f32_per_layer.min(self.per_layer);
        (self.layers * (2 * (self.per_layer - f32_part) + 4 * f32_part + 4 * self.per_layer_per_key * seq) + 4 * self.other) as u64
    }

    /// Bytes per token under `--dtype f16` (`model::decoder::Dtype`): the per-layer activations
    /// at 2 bytes; the attention scores and probabilities still at 4 (scaled, masked and
    /// softmaxed in f32, then cast back to f16 for the second matmul: about as many bytes as in
    /// f32), and what lies outside the layers too (the logits and the loss are f32).
    pub fn bytes_per_token_f16(&self, seq: usize) -> u64 {
        (2 * self.layers * self.per_layer + 4 * (self.layers * self.per_layer_per_key * seq + self.other)) as u64
    }
}

/// Bytes a run needs, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryEstimate {
    pub weights: u64,
    pub gradients: u64,
    /// AdamW's first and second moments.
    pub optimizer: u64,
    /// One micro-batch's autograd graph.
    pub activations: u64,
}

impl MemoryEstimate {
    /// From parameter counts, the architecture's bytes per token and the tokens encoded with a
    /// graph at once.
    pub fn new(params: usize, trainable: usize, bytes_per_token: u64, tokens_in_graph: usize) -> Self {
        Self {
            weights: 4 * params as u64,
            gradients: 4 * trainable as u64,
            optimizer: 8 * trainable as u64,
            activations: bytes_per_token * tokens_in_graph as u64,
        }
    }

    /// GradCache accumulates parameter gradients over its mini-batches: during each second-pass
    /// backward the running sum and the mini-batch's fresh gradients are both alive, so two
    /// gradient sets count. (Measured on a 300M-shaped EmbeddingGemma on the CPU: without this
    /// term the printed total was 0.6 GiB under the peak RSS at vocab 32k.)
    pub fn with_gradcache(mut self) -> Self {
        self.gradients *= 2;
        self
    }

    pub fn total(&self) -> u64 {
        self.weights + self.gradients + self.optimizer + self.activations
    }

    /// One line for the console.
    pub fn describe(&self) -> String {
        format!(
            "memory estimate: {} total = weights {} + gradients {} + AdamW state {} + activations {} per micro-batch",
            gib(self.total()),
            gib(self.weights),
            gib(self.gradients),
            gib(self.optimizer),
            gib(self.activations)
        )
    }
}

/// `1.23 GiB` (MiB below one GiB, KiB below one MiB).
pub fn gib(bytes: u64) -> String {
    let (g, m) = (bytes as f64 / (1u64 << 30) as f64, bytes as f64 / (1u64 << 20) as f64);
    if g >= 1.0 {
        format!("{g:.2} GiB")
    } else if m >= 1.0 {
        format!("{m:.0} MiB")
    } else {
        format!("{:.0} KiB", bytes as f64 / 1024.0)
    }
}

/// Texts encoded with a graph at once: every column of a batch (anchors, positives, negatives)
/// with plain MNRL; one GradCache mini-batch of one column otherwise.
pub fn texts_in_graph(batch_size: usize, negatives_per_pair: usize, mini_batch_size: Option<usize>) -> usize {
    match mini_batch_size {
        Some(m) => m.min(batch_size * (1 + negatives_per_pair).max(1)),
        None => batch_size * (2 + negatives_per_pair),
    }
}

/// `(all parameters, trainable parameters)` of a module.
pub fn param_counts<M: Module>(model: &M) -> (usize, usize) {
    struct Count {
        all: usize,
        trainable: usize,
    }
    impl ModuleVisitor for Count {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let n: usize = param.shape().dims::<D>().iter().product();
            self.all += n;
            if param.is_require_grad() {
                self.trainable += n;
            }
        }
    }
    let mut c = Count { all: 0, trainable: 0 };
    model.visit(&mut c);
    (c.all, c.trainable)
}

/// Bytes the parameters of a module hold, each at its own dtype's width (an f16 frozen base
/// counts 2 bytes a value).
pub fn param_bytes<M: Module>(model: &M) -> u64 {
    struct Bytes(u64);
    impl ModuleVisitor for Bytes {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let n: usize = param.shape().dims::<D>().iter().product();
            // A lazy parameter is not initialised here (that would draw from the device's
            // random stream): it will be f32.
            let width = if param.is_initialized() { param.val().dtype().size() } else { 4 };
            self.0 += (n * width) as u64;
        }
    }
    let mut b = Bytes(0);
    model.visit(&mut b);
    b.0
}

/// The peak resident memory of this process so far (`VmHWM` on Linux), if known.
pub fn peak_rss() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = text.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Memory the OS can give this process now (`MemAvailable` on Linux), if known.
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_add_up_and_lora_counts_only_adapters() {
        let e = MemoryEstimate::new(1000, 10, 8, 5);
        assert_eq!((e.weights, e.gradients, e.optimizer, e.activations), (4000, 40, 80, 40));
        assert_eq!(e.total(), 4160);
        assert_eq!(e.with_gradcache().gradients, 80, "the running sum and one mini-batch's gradients");
        assert!(e.describe().contains("AdamW state"));
        // GradCache bounds the graph by its mini-batch; plain MNRL holds every column.
        assert_eq!(texts_in_graph(32, 1, None), 96);
        assert_eq!(texts_in_graph(32, 1, Some(8)), 8);
        // Activations grow with the sequence (attention) and the layer count.
        let p = ActivationProfile::gemma(2, 8, 8, 4, 16, 2, 1);
        assert!(p.bytes_per_token(64) > p.bytes_per_token(32));
        let enc = crate::model::gemma::GemmaEncoder::random_tiny(&["a", "b"], 1, &burn::tensor::Device::flex().autodiff());
        let (all, trainable) = param_counts(&enc.model);
        assert_eq!(all, trainable, "everything trains in full fine-tuning");
        let lora = crate::lora::LoraConfig { rank: 2, alpha: 4.0, ..Default::default() };
        let m = enc.model.with_lora(&lora, &mut <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(1)).unwrap();
        let (all_l, trainable_l) = param_counts(&m);
        // 3 layers × 4 attention projections × rank 2 × (in + out).
        let c = &m.transformer.config;
        let (q, kv) = (c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim);
        let h = c.hidden_size;
        assert_eq!(trainable_l, 3 * 2 * ((h + q) + 2 * (h + kv) + (q + h)));
        assert_eq!(all_l, all + trainable_l);
    }

    /// `train embed --dtype f16`'s estimate: the activations kept f32 count 4 bytes, the rest 2;
    /// the parameters count at their own width (LoRA's frozen base f16, adapters and
    /// LayerNorms f32).
    #[test]
    fn f16_estimates_count_each_part_at_its_width() {
        use crate::model::bert::{BertConfig, BertModel};
        use crate::model::decoder::Dtype;
        let p = ActivationProfile::bert(2, 8, 32, 2);
        for seq in [1, 16, 128] {
            assert_eq!(p.bytes_per_token_autocast(seq, p.per_layer), p.bytes_per_token(seq), "all kept f32: the f32 count");
            assert_eq!(p.bytes_per_token_autocast(seq, 10 * p.per_layer), p.bytes_per_token(seq), "never more than the f32 count");
            let all_f16 = p.bytes_per_token_autocast(seq, 0);
            assert_eq!(p.bytes_per_token(seq) - all_f16, (p.layers * 2 * p.per_layer) as u64, "per-layer values at 2 bytes instead of 4");
            let mixed = p.bytes_per_token_autocast(seq, 4 * 8);
            assert!(all_f16 < mixed && mixed < p.bytes_per_token(seq));
        }
        // Building models may draw from the device's process-wide stream, which the trainer
        // tests reseed and replay.
        let _turn = crate::train::contrastive_trainer::tests::rng_turn();
        let dev = burn::tensor::Device::flex().autodiff();
        let lora = crate::lora::LoraConfig { rank: 2, alpha: 4.0, ..Default::default() };
        let base = || BertModel::random(&BertConfig::tiny(50, 8, 2, 2), 0, &dev);
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(1);
        let adapted = base().with_lora(&lora, &mut rng).unwrap().train();
        let (all, trainable) = param_counts(&adapted);
        assert_eq!(param_bytes(&adapted), 4 * all as u64, "f32: 4 bytes a value");
        let half = adapted.with_dtype(Dtype::F16);
        assert_eq!(param_counts(&half), (all, trainable));
        // LayerNorms (and the pooler) stay f32 although frozen.
        let norms: usize = half.encoder.layers.iter().map(|l| param_counts(&l.attention_output.layer_norm).0 + param_counts(&l.output.layer_norm).0).sum::<usize>()
            + param_counts(&half.embeddings.layer_norm).0
            + half.pooler.as_ref().map_or(0, |p| param_counts(p).0);
        assert_eq!(param_bytes(&half), 2 * (all - trainable - norms) as u64 + 4 * (trainable + norms) as u64);
    }
}

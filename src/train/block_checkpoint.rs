//! `--grad-checkpoint` for decoders: whole blocks recomputed in the backward pass, and an output
//! head whose logits exist one chunk of tokens at a time.
//!
//! burn 0.22's own checkpointing (`Device::gradient_checkpointing()`, the balanced strategy)
//! recomputes only memory-bound operations and keeps every compute-bound one's output (all the
//! matmuls), so it lowered no peak on a decoder step. MLX-LM (`mx.checkpoint` around each
//! layer) and PEFT (`gradient_checkpointing_enable()`) instead keep only each block's input and
//! recompute the block during the backward pass. burn has no region API for that, so the step is
//! split into segments by hand, GradCache's trick ([`super::contrastive`]) at block level:
//!
//! 1. Forward every block with the parameters cut from the graph (`no_grad` on a clone: burn
//!    records an operation only when an input requires a gradient, and frees a recorded graph
//!    only inside a backward pass), keeping each block's input `[b, t, d]`.
//! 2. The head ([`Head`]) from the last block's output: loss value, parameter gradients, and the
//!    gradient of that output. The SFT head ([`sft_head`]) runs norm + output projection +
//!    cross-entropy on chunks of target tokens, one backward per chunk, so the `[tokens, vocab]`
//!    logits (Qwen3: 151,936 words) never exist at once.
//! 3. Blocks from last to first: re-run block `i` with its graph from its stored input (a leaf
//!    requiring a gradient), back-propagate `Σ output ⊙ grad_output`, keep its parameters'
//!    gradients and the gradient of its input, which is the previous block's `grad_output`.
//! 4. The embedding, when it trains (full fine-tune), the same way from the first block's input.
//!
//! Peak: the stored block inputs, one block's activations, one logits chunk. Each parameter
//! gradient is the plain backward's up to float rounding (tests: ≤ 1e-5 relative, Llama and Qwen3
//! shapes, prompt masking, the reranker's yes/no head). LoRA dropout draws its masks from the
//! device's stream reseeded per block, identically in the forward and the recompute: the masks
//! differ from the plain path's (one stream for the whole step), with the same distribution.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::module::embedding;
use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData};

use crate::model::decoder::Decoder;
use crate::train::cross_entropy::cross_entropy_sum;

/// What a head segment returns: the loss value, the gradients of the parameters it used (the
/// final norm and output head, when they train) and the gradient of its input `[b, t, d]`
/// (`None`: the loss does not depend on it).
pub(crate) struct HeadGrads {
    pub loss: f32,
    pub grads: GradientsParams,
    pub input_grad: Option<Tensor<3>>,
}

/// The loss after the last block: given its output `[b, t, d]` (no graph), the loss and its
/// gradients ([`HeadGrads`]), with the loss multiplied by `scale` before any backward pass.
pub(crate) type Head<'a> = dyn FnOnce(&Decoder, Tensor<3>) -> HeadGrads + 'a;

/// Loss value and parameter gradients of `head` over `model`'s blocks run on `input_ids`
/// (`[b, t]`, right-padded, causal), by segments (module notes). `dropout_seed`: reseed the
/// device's random stream before each block, in both passes, from this seed (LoRA dropout on).
pub(crate) fn backward_by_blocks(model: &Decoder, input_ids: Tensor<2, Int>, dropout_seed: Option<u64>, head: Box<Head<'_>>) -> (f32, GradientsParams) {
    let device = input_ids.device();
    let [b, t] = input_ids.dims();
    let (cos, sin, mask) = model.rope_and_mask(b, 0, t, None, &device);
    let n = model.num_layers();
    // Blocks below the lowest one with a trained parameter need no recompute (nor their inputs
    // kept), unless the embedding trains: no gradient flows into them.
    let embedding_trains = model.embed_tokens.val().is_require_grad();
    let lowest = if embedding_trains { 0 } else { (0..n).find(|&i| trains(&model.layers[i])).unwrap_or(n) };
    let seed_block = |i: usize| {
        if let Some(s) = dropout_seed {
            device.seed(s.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(i as u64 + 1).rotate_left(29));
        }
    };

    // (1) Forward without a graph, keeping the inputs of blocks lowest..n.
    let untracked = model.clone().no_grad();
    let mut x = embedding(untracked.embed_tokens.val(), input_ids.clone());
    let mut inputs = Vec::with_capacity(n - lowest);
    for (i, layer) in untracked.layers.iter().enumerate() {
        if i >= lowest {
            inputs.push(x.clone());
        }
        seed_block(i);
        x = layer.forward(x, &cos, &sin, mask.as_ref(), None);
    }
    drop(untracked);

    // (2) The head.
    let HeadGrads { loss, grads, input_grad } = head(model, x);
    let mut accumulator = GradientsAccumulator::new();
    accumulator.accumulate(model, grads);

    // (3) Blocks from last to first.
    let mut grad = input_grad;
    for i in (lowest..n).rev() {
        let Some(g) = grad.take() else { break };
        let x_in = inputs.pop().expect("one input per block from lowest").require_grad();
        seed_block(i);
        let out = model.layers[i].forward(x_in.clone(), &cos, &sin, mask.as_ref(), None);
        let grads = (out * g).sum().backward();
        // The lowest block's input gradient is needed only when the embedding trains.
        grad = if i > lowest || embedding_trains { x_in.grad(&grads) } else { None };
        accumulator.accumulate(model, GradientsParams::from_grads(grads, model));
    }

    // (4) The embedding (full fine-tune with the embedding trained).
    if embedding_trains && let Some(g) = grad {
        let x0 = embedding(model.embed_tokens.val(), input_ids);
        accumulator.accumulate(model, GradientsParams::from_grads((x0 * g).sum().backward(), model));
    }
    (loss, accumulator.grads())
}

/// Whether any parameter of `module` requires a gradient.
fn trains<M: Module>(module: &M) -> bool {
    struct Any(bool);
    impl ModuleVisitor for Any {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0 |= param.val().is_require_grad();
        }
    }
    let mut v = Any(false);
    module.visit(&mut v);
    v.0
}

/// The SFT head: `scale` × mean cross-entropy over the targets at the flat positions `rows` of
/// the `[b, t]` batch (ids `targets`), run through the final norm and the output head in chunks
/// of at most `max_logits` logits, each chunk back-propagated before the next is computed. The
/// norm is applied to the picked rows only (it is per row, so the same values as norming all).
pub(crate) fn sft_head(rows: Vec<i64>, targets: Vec<i64>, scale: f32, max_logits: usize) -> Box<Head<'static>> {
    Box::new(move |model: &Decoder, x: Tensor<3>| {
        let device = x.device();
        let [b, t, d] = x.dims();
        let n = rows.len();
        if n == 0 {
            return HeadGrads { loss: 0.0, grads: GradientsParams::new(), input_grad: None };
        }
        let rows = Tensor::<1, Int>::from_data(TensorData::new(rows, [n]), &device);
        let picked = x.reshape([b * t, d]).select(0, rows.clone());
        let chunk = (max_logits / model.vocab_size().max(1)).max(1);
        let (mut total, mut accumulator, mut picked_grads) = (0f32, GradientsAccumulator::new(), Vec::new());
        for start in (0..n).step_by(chunk) {
            let end = (start + chunk).min(n);
            let h = picked.clone().slice([start..end]).require_grad();
            let hidden = model.final_norm(h.clone().reshape([1, end - start, d]));
            let logits = model.logits(hidden);
            let [_, rows, vocab] = logits.dims();
            let s = cross_entropy_sum(logits.reshape([rows, vocab]), &targets[start..end]).div_scalar(n as f32);
            total += s.clone().into_scalar::<f32>();
            let grads = s.mul_scalar(scale).backward();
            picked_grads.push(h.grad(&grads).expect("the chunk's loss depends on its hidden states"));
            accumulator.accumulate(model, GradientsParams::from_grads(grads, model));
        }
        // In the activations' dtype (f16 under `--dtype f16`; a no-op cast in f32).
        let grad = Tensor::<2>::zeros([b * t, d], &device).cast(picked.dtype()).select_assign(0, rows, Tensor::cat(picked_grads, 0), IndexingUpdateOp::Add);
        HeadGrads { loss: total, grads: accumulator.grads(), input_grad: Some(grad.reshape([b, t, d])) }
    })
}

/// A head whose loss is any differentiable function of the final-norm hidden states
/// `[b, t, d]` (the reranker's yes/no margins at the last positions: two rows of the output
/// head, so no chunking), times `scale`, in one backward pass.
pub(crate) fn whole_head<'a>(loss: impl FnOnce(&Decoder, Tensor<3>) -> Tensor<1> + 'a, scale: f32) -> Box<Head<'a>> {
    Box::new(move |model: &Decoder, x: Tensor<3>| {
        let x = x.require_grad();
        let l = loss(model, model.final_norm(x.clone()));
        let value = l.clone().into_scalar::<f32>();
        let grads = l.mul_scalar(scale).backward();
        let input_grad = x.grad(&grads);
        HeadGrads { loss: value, grads: GradientsParams::from_grads(grads, model), input_grad }
    })
}

#[cfg(test)]
mod tests {
    use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
    use burn::optim::GradientsParams;
    use burn::tensor::{Device, Distribution, Tensor};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use crate::lora::{LoraConfig, QuantizeBase};
    use crate::model::decoder::{Architecture, Decoder, DecoderConfig};
    use crate::train::sft::{CHECKPOINT_MAX_LOGITS, batch_loss, checkpointed_step};
    use crate::train::sft_data::{Example, make_batch};

    /// Qwen3's block: q/k norms, no biases, tied embeddings.
    fn tiny_qwen3() -> DecoderConfig {
        DecoderConfig { architecture: Architecture::Qwen3, qk_norm: true, qkv_bias: false, o_bias: false, tie_word_embeddings: true, num_hidden_layers: 3, ..DecoderConfig::tiny_llama() }
    }

    /// `cfg` with LoRA (dropout off) on the top `num_layers` blocks, `B` drawn at random so every
    /// adapter parameter has a gradient (at the start `B` = 0 and `A`'s gradient is zero).
    fn lora_model(cfg: &DecoderConfig, num_layers: i64) -> Decoder {
        lora_model_on(cfg, num_layers, QuantizeBase::None)
    }

    /// [`lora_model`] over projections quantized as `quantize` says (QLoRA's base).
    fn lora_model_on(cfg: &DecoderConfig, num_layers: i64, quantize: QuantizeBase) -> Decoder {
        let device = Device::flex().autodiff();
        let base = Decoder::random_with(cfg, &device, 11, quantize);
        let lora = LoraConfig { rank: 4, alpha: 8.0, dropout: 0.0, num_layers, ..LoraConfig::default() };
        let model = base.with_lora(&lora, &mut ChaCha8Rng::seed_from_u64(3)).unwrap().train();
        device.seed(5);
        struct RandomB;
        impl ModuleMapper for RandomB {
            fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
                param.map(|t| if t.is_require_grad() { Tensor::<D>::random(t.shape(), Distribution::Normal(0.0, 0.05), &t.device()).require_grad() } else { t })
            }
        }
        model.map(&mut RandomB)
    }

    /// Every parameter's gradient in both sets, as host vectors (`None`: absent).
    fn grads_of(model: &Decoder, grads: &GradientsParams) -> Vec<Option<Vec<f32>>> {
        struct Collect<'a>(&'a GradientsParams, Vec<Option<Vec<f32>>>);
        impl ModuleVisitor for Collect<'_> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                self.1.push(self.0.get::<D>(param.id).map(|g| g.into_data().try_to_vec::<f32>().unwrap()));
            }
        }
        let mut c = Collect(grads, Vec::new());
        model.visit(&mut c);
        c.1
    }

    /// The same parameters have gradients, each within `tol` of the plain one relative to its
    /// largest entry; returns how many were compared.
    fn assert_same(plain: Vec<Option<Vec<f32>>>, ckpt: Vec<Option<Vec<f32>>>, tol: f32, what: &str) -> usize {
        let mut compared = 0;
        for (k, (p, c)) in plain.into_iter().zip(ckpt).enumerate() {
            match (p, c) {
                (None, None) => {}
                (Some(p), Some(c)) => {
                    let scale = p.iter().fold(0f32, |m, x| m.max(x.abs()));
                    assert!(scale > 0.0, "{what}: parameter {k} has a zero gradient: the test would prove nothing");
                    let worst = p.iter().zip(&c).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                    assert!(worst <= tol * scale, "{what}: parameter {k}: max |Δgrad| {worst} vs largest {scale}");
                    compared += 1;
                }
                (p, c) => panic!("{what}: parameter {k}: plain gradient {}, checkpointed {}", p.is_some(), c.is_some()),
            }
        }
        compared
    }

    /// Rows with a masked prompt (`offset`), a masked turn inside (`masked`, as `--mask-prompt`
    /// gives for multi-turn chats) and different lengths (right padding).
    fn examples() -> Vec<Example> {
        vec![
            Example { tokens: vec![1, 5, 9, 33, 7, 2, 11, 40, 41, 42], offset: 3, masked: vec![(5, 7)] },
            Example { tokens: vec![1, 8, 4, 2, 17], offset: 0, masked: vec![] },
            Example { tokens: vec![1, 60, 61, 62, 63, 64, 65], offset: 2, masked: vec![] },
        ]
    }

    /// `--grad-checkpoint`'s gradients and loss are the plain backward's (1e-5 relative), for
    /// Llama and Qwen3 blocks, LoRA on all or the top block only, a full fine-tune (embedding,
    /// norms and head train: the embedding segment), the output head in one or several chunks.
    #[test]
    fn sft_gradients_match_the_plain_backward() {
        let examples = examples();
        let batch = make_batch(&examples, &[0, 1, 2], 64);
        let device = Device::flex().autodiff();
        let full = |cfg: &DecoderConfig| Decoder::random(cfg, &device, 13).train();
        let cases: Vec<(&str, Decoder)> = vec![
            ("llama lora", lora_model(&DecoderConfig::tiny_llama(), -1)),
            ("qwen3 lora", lora_model(&tiny_qwen3(), -1)),
            ("qwen3 lora top block", lora_model(&tiny_qwen3(), 1)),
            ("llama full", full(&DecoderConfig::tiny_llama())),
            ("qwen3 full (tied)", full(&tiny_qwen3())),
        ];
        for (what, model) in cases {
            let plain = batch_loss(&model, &batch, &device);
            let plain_loss = plain.clone().into_scalar::<f32>();
            let plain_grads = GradientsParams::from_grads(plain.backward(), &model);
            for max_logits in [CHECKPOINT_MAX_LOGITS, 3 * model.vocab_size()] {
                let (loss, grads) = checkpointed_step(&model, &batch, &device, 1.0, None, max_logits);
                assert!((loss - plain_loss).abs() <= 1e-5 * plain_loss.abs(), "{what}: loss {loss} vs {plain_loss}");
                let n = assert_same(grads_of(&model, &plain_grads), grads_of(&model, &grads), 1e-5, what);
                assert!(n > 0, "{what}: no gradient compared");
            }
        }
        // `scale` (1 / grad_accumulation_steps) scales the gradients, not the loss reported.
        let model = lora_model(&DecoderConfig::tiny_llama(), -1);
        let (l1, g1) = checkpointed_step(&model, &batch, &device, 1.0, None, CHECKPOINT_MAX_LOGITS);
        let (l4, g4) = checkpointed_step(&model, &batch, &device, 0.25, None, CHECKPOINT_MAX_LOGITS);
        assert_eq!(l1, l4);
        let quarter: Vec<Option<Vec<f32>>> = grads_of(&model, &g1).into_iter().map(|g| g.map(|v| v.iter().map(|x| x * 0.25).collect())).collect();
        assert_same(quarter, grads_of(&model, &g4), 1e-6, "scale");
    }

    /// QLoRA under `--grad-checkpoint`: the recompute dequantizes each recomputed block's matrices
    /// again (nothing keeps an f32 matrix from the graph-free forward), blocks below the lowest
    /// adapter are not recomputed, and the gradients are the plain backward's. On the CPU backend
    /// no step keeps a dequantized matrix for its backward pass: each matmul whose input carries a
    /// gradient dequantizes `W` again there ([`crate::lora::quant`]'s custom op), which in the
    /// plain step is every matrix above the first adapted block's q/k/v (their input, the
    /// embedding, carries none).
    #[test]
    fn qlora_recompute_dequantizes_each_block_again() {
        use crate::lora::quant::DEQUANTIZED;
        let batch = make_batch(&examples(), &[0, 1, 2], 64);
        let device = Device::flex().autodiff();
        let cfg = tiny_qwen3();
        let per_block = 7;
        let n = cfg.num_hidden_layers;
        use crate::lora::quant_matmul_test_counter as backward_count;
        let calls = |f: &mut dyn FnMut()| {
            let (before, before_bw) = (DEQUANTIZED.with(|c| c.get()), backward_count());
            f();
            (DEQUANTIZED.with(|c| c.get()) - before, backward_count() - before_bw)
        };
        for (num_layers, recomputed) in [(-1, n), (1, 1)] {
            let what = format!("qwen3 q8_0 lora on {recomputed} of {n} blocks");
            let model = lora_model_on(&cfg, num_layers, QuantizeBase::Q8_0);
            let f32_bytes = n * 4 * (2 * 64 * 64 + 2 * 32 * 64 + 3 * 64 * 96);
            assert!(model.projection_bytes() < f32_bytes / 2, "{what}: the base is not quantized");
            let (mut plain_loss, mut plain_grads) = (0.0, None);
            let plain_calls = calls(&mut || {
                let loss = batch_loss(&model, &batch, &device);
                plain_loss = loss.clone().into_scalar::<f32>();
                plain_grads = Some(GradientsParams::from_grads(loss.backward(), &model));
            });
            assert_eq!(plain_calls, (per_block * n, 4 + per_block * (recomputed - 1)), "{what}: plain step (forward, backward)");
            let (mut loss, mut grads) = (0.0, None);
            let ckpt_calls = calls(&mut || (loss, grads) = {
                let (l, g) = checkpointed_step(&model, &batch, &device, 1.0, None, CHECKPOINT_MAX_LOGITS);
                (l, Some(g))
            });
            assert_eq!(ckpt_calls, (per_block * (n + recomputed), per_block * recomputed), "{what}: graph-free forward, then each recomputed block again; its backward");
            assert!((loss - plain_loss).abs() <= 1e-5 * plain_loss.abs(), "{what}: loss {loss} vs {plain_loss}");
            let compared = assert_same(grads_of(&model, &plain_grads.unwrap()), grads_of(&model, &grads.unwrap()), 1e-5, &what);
            assert!(compared > 0, "{what}: no gradient compared");
        }
    }

    /// `train rerank`'s objective (yes/no margins at each row's last position, pointwise and
    /// listwise) through recomputed blocks: the plain backward's gradients.
    #[test]
    fn rerank_gradients_match_the_plain_backward() {
        use crate::train::rerank::{listwise_loss, pointwise_loss, rerank_checkpointed};
        let rows: Vec<Vec<u32>> = vec![vec![1, 5, 9, 33, 7, 2], vec![1, 8, 4], vec![1, 60, 61, 62, 63], vec![1, 70, 71, 72]];
        let rows: Vec<&[u32]> = rows.iter().map(Vec::as_slice).collect();
        let (yes, no) = (20, 21);
        for (what, cfg) in [("llama", DecoderConfig::tiny_llama()), ("qwen3", tiny_qwen3())] {
            let model = lora_model(&cfg, -1);
            let device = model.embed_tokens.val().device();
            let targets = vec![1.0, 0.0, 0.5, 1.0];
            for listwise in [false, true] {
                let (ids, last) = crate::model::reranker::right_padded(&rows, &device).unwrap();
                let logits = crate::model::reranker::yes_no_logits(&model, ids, last, yes, no);
                let margin = crate::model::reranker::yes_no_margin(logits);
                let plain = if listwise { listwise_loss(margin.clone(), 2) } else { pointwise_loss(margin.clone(), Tensor::<1>::from_data(burn::tensor::TensorData::new(targets.clone(), [4]), &device)) };
                let plain_loss = plain.clone().into_scalar::<f32>();
                let plain_grads = GradientsParams::from_grads(plain.backward(), &model);
                let t = (!listwise).then(|| targets.clone());
                let (loss, grads) = rerank_checkpointed(&model, &rows, t, 2, yes, no, 1.0, None).unwrap();
                assert!((loss - plain_loss).abs() <= 1e-5 * plain_loss.abs(), "{what}: loss {loss} vs {plain_loss}");
                let what = format!("{what} listwise={listwise}");
                assert!(assert_same(grads_of(&model, &plain_grads), grads_of(&model, &grads), 1e-5, &what) > 0);
            }
        }
    }
}

//! `tunelab bench ...`: throughput on this machine, printed as one JSON line per case in the shape
//! of the PyTorch peer (`bench/torch_anchor.py`), so scripts can put the two side by side.
//!
//! `bench train-embed` runs the real contrastive trainer (tokenizer, MultipleNegativesRankingLoss,
//! clipping, AdamW, schedule) on synthetic pairs whose anchors are exactly `seq/2` tokens and
//! positives exactly `seq` tokens, as the anchor does. Without `--model`, the encoder is a random
//! all-MiniLM-L6-v2-shaped BERT (throughput does not depend on the weight values) with a
//! synthetic 30,522-word vocabulary, so the benchmark needs no files (e.g. on a GPU machine).
//!
//! `bench lora` is the peer of the anchor's `lora_case`: a random decoder of a real shape
//! (SmolLM2-135M, Qwen3-0.6B, Qwen3-1.7B), LoRA r=16 alpha=32 on the seven projections of every
//! block, AdamW lr 1e-4, input ids = labels = random ids `[batch, seq]`, warm-up steps and then
//! timed steps; `tokens_per_s` = batch * seq * steps / time, as the anchor counts them.
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::data::formats::EmbeddingPair;
use crate::data::governance::Policy;
use crate::device::DeviceChoice;
use crate::io::tokenizer::TextTokenizer;
use crate::model::bert::{BertConfig, BertModel, Pooling, Prompts, SentenceEncoder, word_level_tokenizer_json};
use crate::model::decoder::{Architecture, Decoder, DecoderConfig};
use crate::train::contrastive_trainer::{ContrastiveConfig, ContrastiveTrainer};
use crate::train::schedule::clip_grad_norm;
use crate::train::sft::{CHECKPOINT_MAX_LOGITS, batch_loss, checkpointed_step};
use crate::train::sft_data::Batch;

#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// Contrastive (MNRL) training throughput of a BERT encoder: pairs/s and peak memory.
    TrainEmbed(TrainEmbedBench),
    /// Decoder LoRA training throughput on a random model of a real shape: tokens/s and peak memory.
    Lora(LoraBench),
    /// The matrix products of one `bench lora` step, class by class, each timed alone: where the
    /// step's matmul time goes, beside `scripts/bench-gemm-shapes.sh`'s PyTorch peer.
    Gemm(GemmBench),
}

/// The decoder shapes of `bench/torch_anchor.py` (its SMOLLM2_135M, QWEN3_06B, QWEN3_17B).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecoderShape {
    #[value(name = "smollm2-135m")]
    Smollm2_135m,
    #[value(name = "qwen3-0.6b")]
    Qwen3_0_6b,
    #[value(name = "qwen3-1.7b")]
    Qwen3_1_7b,
}

impl DecoderShape {
    pub fn name(self) -> &'static str {
        match self {
            Self::Smollm2_135m => "smollm2-135m",
            Self::Qwen3_0_6b => "qwen3-0.6b",
            Self::Qwen3_1_7b => "qwen3-1.7b",
        }
    }

    /// The anchor's config dict as a [`DecoderConfig`] (Hugging Face defaults elsewhere:
    /// no biases, RMSNorm eps 1e-6; Qwen3's q/k norms).
    pub fn config(self) -> DecoderConfig {
        let qwen3 = |hidden_size, intermediate_size| DecoderConfig {
            architecture: Architecture::Qwen3,
            vocab_size: 151_936,
            hidden_size,
            intermediate_size,
            num_hidden_layers: 28,
            num_attention_heads: 16,
            num_key_value_heads: 8,
            head_dim: 128,
            max_position_embeddings: 4096,
            rms_norm_eps: 1e-6,
            rope_theta: 1e6,
            rope_scaling: None,
            tie_word_embeddings: true,
            qkv_bias: false,
            o_bias: false,
            qk_norm: true,
        };
        match self {
            Self::Smollm2_135m => DecoderConfig {
                architecture: Architecture::Llama,
                vocab_size: 49_152,
                hidden_size: 576,
                intermediate_size: 1536,
                num_hidden_layers: 30,
                num_attention_heads: 9,
                num_key_value_heads: 3,
                head_dim: 64,
                max_position_embeddings: 2048,
                rms_norm_eps: 1e-6,
                rope_theta: 1e5,
                rope_scaling: None,
                tie_word_embeddings: true,
                qkv_bias: false,
                o_bias: false,
                qk_norm: false,
            },
            Self::Qwen3_0_6b => qwen3(1024, 3072),
            Self::Qwen3_1_7b => qwen3(2048, 6144),
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct LoraBench {
    #[arg(long, value_enum, default_value = "smollm2-135m")]
    pub shape: DecoderShape,
    /// Tokens per row (input ids = labels, as the anchor feeds them).
    #[arg(value_parser = crate::cli::values::positive_usize, long, default_value_t = 512)]
    pub seq: usize,
    #[arg(value_parser = crate::cli::values::positive_usize, long, default_value_t = 1)]
    pub batch_size: usize,
    #[arg(value_parser = crate::cli::values::positive_usize, long, default_value_t = 16)]
    pub rank: usize,
    /// LoRA alpha; default 2 * rank (the anchor's 32 at r=16).
    #[arg(value_parser = crate::cli::values::finite_positive_f64, long)]
    pub alpha: Option<f64>,
    /// Timed steps (after the warm-up steps).
    #[arg(value_parser = crate::cli::values::positive_usize, long, default_value_t = 5)]
    pub steps: usize,
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    #[arg(value_parser = crate::cli::values::non_negative_f64, long, default_value_t = 1e-4)]
    pub learning_rate: f64,
    /// `train lora --grad-checkpoint`'s step: blocks recomputed in the backward pass, the output
    /// head's cross-entropy in chunks (the anchor's peer: `gradient_checkpointing_enable()`).
    #[arg(long)]
    pub grad_checkpoint: bool,
    /// `train lora --dtype`: f32, or f16 mixed precision (base weights and activations in f16,
    /// adapters, norms, softmax and loss in f32, dynamic loss scaling as the trainer does it), or
    /// auto (the trainer's default: f16 on a GPU, f32 on the CPU). f32 here unless given, so a
    /// benchmark line says what it measured.
    #[arg(long, default_value = "f32")]
    pub dtype: crate::model::decoder::Dtype,
    /// Frozen base of the seven block projections: none (f32, plain LoRA), q8_0 or q4_0 (the
    /// random weights quantized by ggml's reference quantizer and dequantized on the fly: QLoRA,
    /// as `train lora --quantize-base`).
    #[arg(long, default_value = "none", value_parser = bench_quantize_base)]
    pub quantize_base: crate::lora::QuantizeBase,
}

/// `--quantize-base` of `bench lora`: a random model has no file blocks to `keep`.
fn bench_quantize_base(s: &str) -> Result<crate::lora::QuantizeBase, String> {
    match s.parse()? {
        crate::lora::QuantizeBase::Keep => Err("'keep': a random model has no file blocks to keep; expected none, q8_0 or q4_0".into()),
        q => Ok(q),
    }
}

#[derive(clap::Args, Debug)]
pub struct TrainEmbedBench {
    /// Encoder folder; default: a random all-MiniLM-L6-v2-shaped model.
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[arg(value_parser = crate::cli::values::positive_usize, long, default_value_t = 32)]
    pub batch_size: usize,
    /// Tokens per positive (anchors get half), special tokens included.
    #[arg(value_parser = crate::cli::values::positive_usize, long, default_value_t = 128)]
    pub seq: usize,
    /// Timed steps (after the warm-up steps).
    #[arg(value_parser = crate::cli::values::positive_usize, long, default_value_t = 5)]
    pub steps: usize,
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Train LoRA adapters of this rank instead of every weight.
    #[arg(value_parser = crate::cli::values::positive_usize, long)]
    pub lora_rank: Option<usize>,
    /// GradCache mini-batch size (CachedMultipleNegativesRankingLoss).
    #[arg(value_parser = crate::cli::values::positive_usize, long)]
    pub mini_batch_size: Option<usize>,
    /// `train embed --dtype`: f32, or f16 mixed precision as `torch.autocast` arranges it (linear
    /// layers and attention in f16, residual stream, LayerNorms, softmax, pooling and loss in f32),
    /// or auto (the trainer's default). f32 here unless given.
    #[arg(long, default_value = "f32")]
    pub dtype: crate::model::decoder::Dtype,
}

#[derive(clap::Args, Debug)]
pub struct GemmBench {
    #[arg(long, value_enum, default_value = "smollm2-135m")]
    pub shape: DecoderShape,
    #[arg(value_parser = crate::cli::values::positive_usize, long, default_value_t = 256)]
    pub seq: usize,
    #[arg(value_parser = crate::cli::values::positive_usize, long, default_value_t = 4)]
    pub batch_size: usize,
    #[arg(value_parser = crate::cli::values::positive_usize, long, default_value_t = 16)]
    pub rank: usize,
    /// Timed calls per product (after one warm-up call).
    #[arg(value_parser = crate::cli::values::positive_usize, long, default_value_t = 5)]
    pub reps: usize,
    /// The products' dtype as `bench lora --dtype` runs them: f16 puts the projections,
    /// attention and the head in f16 and keeps the adapters' products in f32 (the trainer's
    /// mixed precision, `model::decoder::precision`).
    #[arg(long, default_value = "f32")]
    pub dtype: crate::model::decoder::Dtype,
}

/// One matrix product of the LoRA step: `[batch, m, k] · [batch, k, n]`, the right operand
/// transposed (a view of a `[n, k]` tensor, as `x·Wᵀ` reads an `[out, in]` weight) or not.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GemmCase {
    pub class: &'static str,
    pub name: String,
    pub batch: usize,
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub rhs_transposed: bool,
    /// Calls in one training step.
    pub per_step: usize,
}

/// The products one step of `bench lora` makes (LoRA on the seven projections of every block,
/// the tied head frozen): forward and the input gradient of each frozen projection, the six
/// products of each adapter (forward two, backward four), attention's two forward and four
/// backward batched products (grouped query heads folded into rows, as `Attention::forward`
/// does), and the head's forward and input gradient.
pub fn lora_step_gemms(c: &DecoderConfig, batch: usize, seq: usize, rank: usize) -> Vec<GemmCase> {
    let (m, h, layers) = (batch * seq, c.hidden_size, c.num_hidden_layers);
    let (q, kv) = (c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim);
    let case = |class, name: String, batch, m, k, n, rhs_transposed, per_step| GemmCase { class, name, batch, m, k, n, rhs_transposed, per_step };
    let mut v = Vec::new();
    // (projection, in, out, how many of that shape per block)
    let projections = [("q_proj", h, q, 1), ("k_proj/v_proj", h, kv, 2), ("o_proj", q, h, 1), ("gate/up", h, c.intermediate_size, 2), ("down", c.intermediate_size, h, 1)];
    for (p, i, o, n) in projections {
        v.push(case("projection forward", format!("{p} x·Wᵀ"), 1, m, i, o, true, n * layers));
        v.push(case("projection input grad", format!("{p} g·W"), 1, m, o, i, false, n * layers));
        v.push(case("lora", format!("{p} x·Aᵀ"), 1, m, i, rank, true, n * layers));
        v.push(case("lora", format!("{p} (xAᵀ)·Bᵀ"), 1, m, rank, o, true, n * layers));
        v.push(case("lora", format!("{p} g·B"), 1, m, o, rank, false, n * layers));
        v.push(case("lora", format!("{p} (gB)·A"), 1, m, rank, i, false, n * layers));
        v.push(case("lora", format!("{p} gᵀ·(xAᵀ) (grad B)"), 1, o, m, rank, false, n * layers));
        v.push(case("lora", format!("{p} (gB)ᵀ·x (grad A)"), 1, rank, m, i, false, n * layers));
    }
    let (groups, rows, hd) = (batch * c.num_key_value_heads, (c.num_attention_heads / c.num_key_value_heads) * seq, c.head_dim);
    v.push(case("attention", "Q·Kᵀ".into(), groups, rows, hd, seq, true, layers));
    v.push(case("attention", "P·V".into(), groups, rows, seq, hd, false, layers));
    v.push(case("attention", "dO·Vᵀ".into(), groups, rows, hd, seq, true, layers));
    v.push(case("attention", "Pᵀ·dO".into(), groups, seq, rows, hd, false, layers));
    v.push(case("attention", "dS·K".into(), groups, rows, seq, hd, false, layers));
    v.push(case("attention", "dSᵀ·Q".into(), groups, seq, rows, hd, false, layers));
    v.push(case("head", "x·Eᵀ".into(), 1, m, h, c.vocab_size, true, 1));
    v.push(case("head", "g·E".into(), 1, m, c.vocab_size, h, false, 1));
    v
}

fn gemm(a: GemmBench, choice: DeviceChoice) -> anyhow::Result<()> {
    let device = choice.device()?;
    let dtype = a.dtype.resolve(&device, true);
    dtype.check_device(&device).map_err(anyhow::Error::msg)?;
    let cases = lora_step_gemms(&a.shape.config(), a.batch_size, a.seq, a.rank);
    // Drawn on the device: the head's operands are a billion values, slow to draw on the host.
    let random = |dims: [usize; 3], dtype: crate::model::decoder::Dtype| {
        burn::tensor::Tensor::<3>::random(dims, burn::tensor::Distribution::Uniform(-1.0, 1.0), &device).cast(dtype.float_dtype())
    };
    let mut step_ms = 0.0;
    for c in &cases {
        // The adapters' products stay f32 under mixed precision (`LoraLinear::forward`).
        let case_dtype = if c.class == "lora" { crate::model::decoder::Dtype::F32 } else { dtype };
        let lhs = random([c.batch, c.m, c.k], case_dtype);
        let rhs = if c.rhs_transposed { random([c.batch, c.n, c.k], case_dtype) } else { random([c.batch, c.k, c.n], case_dtype) };
        let product = || {
            let r = if c.rhs_transposed { rhs.clone().swap_dims(1, 2) } else { rhs.clone() };
            // Unbatched products go through the 2-D path, as the trainer's `[rows, in]` ones do.
            if c.batch == 1 { lhs.clone().reshape([c.m, c.k]).matmul(r.reshape([c.k, c.n])).reshape([1, c.m, c.n]) } else { lhs.clone().matmul(r) }
        };
        // Results are kept until the sync: a lazy (fused) GPU backend need not run a product
        // whose result was dropped unread. The warm-up keeps as many, so the timed calls can reuse
        // the pool's pages instead of timing fresh device allocations: kept without such a
        // warm-up, the H100 (Vulkan, 2026-12-07) timed products at 1.5-2.3x the kernel times the
        // same products took inside a profiled step (scripts/profile-gpu-step.sh); this warm-up
        // is the suspected fix, not yet re-measured there.
        let warm: Vec<_> = (0..a.reps).map(|_| product()).collect();
        device.sync().map_err(|e| anyhow::anyhow!("{e:?}"))?;
        drop(warm);
        let t = Instant::now();
        let kept: Vec<_> = (0..a.reps).map(|_| product()).collect();
        device.sync().map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let ms = t.elapsed().as_secs_f64() * 1000.0 / a.reps as f64;
        drop(kept);
        step_ms += ms * c.per_step as f64;
        let flop = 2.0 * (c.batch * c.m * c.k * c.n) as f64;
        let mut line = serde_json::to_value(c)?;
        line["framework"] = "tunelab".into();
        line["device"] = choice.to_string().into();
        line["dtype"] = case_dtype.name().into();
        line["ms"] = ms.into();
        line["gflops"] = (flop / ms / 1e6).into();
        line["step_ms"] = (ms * c.per_step as f64).into();
        println!("{line}");
    }
    println!("{}", serde_json::json!({"framework": "tunelab", "case": format!("{} seq{} b{} r{}", a.shape.name(), a.seq, a.batch_size, a.rank), "total_step_ms": step_ms}));
    Ok(())
}

pub fn run(cmd: BenchCommand, device: DeviceChoice) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::TrainEmbed(a) => train_embed(a, device),
        BenchCommand::Lora(a) => lora(a, device),
        BenchCommand::Gemm(a) => gemm(a, device),
    }
}

/// all-MiniLM-L6-v2's shape.
fn minilm_config() -> BertConfig {
    BertConfig {
        intermediate_size: 1536,
        max_position_embeddings: 512,
        hidden_act: "gelu".into(),
        ..BertConfig::tiny(30522, 384, 6, 12)
    }
}

fn train_embed(a: TrainEmbedBench, choice: DeviceChoice) -> anyhow::Result<()> {
    let device = choice.device()?;
    let seq = a.seq.max(4);
    let (encoder, words): (SentenceEncoder, Vec<String>) = match &a.model {
        Some(dir) => {
            let enc = SentenceEncoder::load(dir, &device).with_context(|| format!("loading {}", dir.display()))?;
            // Words that are one WordPiece token each, so a text of n words is n + 2 tokens.
            let vocab = enc.tokenizer.inner().get_vocab(false);
            let mut words: Vec<String> =
                vocab.into_keys().filter(|w| w.len() > 2 && w.chars().all(|c| c.is_ascii_lowercase())).collect();
            words.sort();
            words.retain(|w| enc.tokenizer.inner().encode(w.as_str(), false).map(|e| e.len() == 1).unwrap_or(false));
            (enc, words)
        }
        None => {
            let words: Vec<String> = (0..30522 - 5).map(|i| format!("w{i}")).collect();
            let refs: Vec<&str> = words.iter().map(String::as_str).collect();
            let json = word_level_tokenizer_json(&refs);
            let inner: tokenizers::Tokenizer = json.to_string().parse().map_err(|e| anyhow::anyhow!("{e}"))?;
            let tokenizer = TextTokenizer::new(inner, "tokenizer.json (synthetic)".into(), seq)?;
            let model = BertModel::random(&minilm_config(), 0, &device);
            let enc = SentenceEncoder {
                model,
                tokenizer,
                pooling: Pooling::mean(),
                normalize: true,
                prompts: Prompts::none(),
                default_prompt: None,
                source: None,
            };
            (enc, words)
        }
    };
    anyhow::ensure!(words.len() > 100, "the tokenizer has too few single-token words for synthetic texts");
    let mut encoder = encoder;
    encoder.tokenizer = TextTokenizer::new(encoder.tokenizer.inner().clone(), encoder.tokenizer.path().to_path_buf(), seq)?;

    // Distinct synthetic texts of exact lengths (duplicates would be dropped by the sampler).
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut text = |n: usize| (0..n).map(|_| words[rng.random_range(0..words.len())].as_str()).collect::<Vec<_>>().join(" ");
    let steps_total = a.warmup + a.steps;
    let pairs: Vec<EmbeddingPair> = (0..a.batch_size * steps_total)
        .map(|_| EmbeddingPair { query: text(seq / 2 - 2), positive: text(seq - 2), ..Default::default() })
        .collect();
    let policy = Policy { treat_unclassified_as_public: true, ..Policy::default() };
    let data = policy.apply(pairs);

    let out = tempdir_path()?;
    let mut cfg = ContrastiveConfig {
        batch_size: a.batch_size,
        epochs: 1,
        max_steps: Some(a.warmup),
        mini_batch_size: a.mini_batch_size,
        output_dir: out.clone(),
        ..ContrastiveConfig::default()
    };
    cfg.dtype = a.dtype;
    if let Some(rank) = a.lora_rank {
        cfg.lora = Some(crate::lora::LoraConfig { rank, alpha: 2.0 * rank as f64, ..Default::default() });
    }
    let estimate = crate::train::embed_job::bert_memory_estimate(&encoder, &cfg, seq, 0)?;
    let dtype = cfg.resolved_dtype(&encoder);
    // The model is built: from here the high-water mark is the training's (the estimate's peer).
    let reset = reset_peak_rss();
    // Warm-up run (kernel caches, allocator and thread pools are per process), then the timed run.
    drop(ContrastiveTrainer::new(cfg.clone()).with_progress(false).fit(encoder.clone(), &data, None)?);
    // As `bench lora`: a sync between warm-up and timed run, and one after it, mark the timed
    // steps in CubeCL's profiling log (scripts/profile-gpu-step.sh); a no-op on the CPU.
    device.sync().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    cfg.max_steps = Some(a.steps);
    let timed_dir = out.join("timed");
    cfg.output_dir = timed_dir.clone();
    let t = Instant::now();
    let done = ContrastiveTrainer::new(cfg).with_progress(false).fit(encoder, &data, None)?;
    let wall = t.elapsed().as_secs_f64();
    device.sync().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    // The trainer's own pairs/s at its last step excludes the final checkpoint write.
    let logged = std::fs::read_to_string(timed_dir.join("loss.jsonl"))
        .ok()
        .and_then(|s| s.lines().last().and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok()))
        .and_then(|v| v["pairs_per_s"].as_f64());
    let pairs_per_s = logged.unwrap_or((a.batch_size * done.steps) as f64 / wall);
    let dt = (a.batch_size * done.steps) as f64 / pairs_per_s;
    let _ = std::fs::remove_dir_all(&out);
    let line = serde_json::json!({
        "case": format!(
            "minilm-l6 mnrl seq{seq} b{}{}{}",
            a.batch_size,
            a.lora_rank.map(|r| format!(" lora r{r}")).unwrap_or_default(),
            if dtype == crate::model::decoder::Dtype::F32 { "" } else { " f16" }
        ),
        "framework": "tunelab",
        "device": choice.to_string(),
        "dtype": dtype.name(),
        "estimate_gib": estimate.total() as f64 / (1u64 << 30) as f64,
        "step_peak_rss_gib": if reset { peak_rss_gib() } else { None },
        "batch": a.batch_size,
        "seq": seq,
        "pairs_per_s": pairs_per_s,
        "step_ms": dt / done.steps as f64 * 1000.0,
        "steps": done.steps,
        "warmup": a.warmup,
        "final_loss": done.losses.last(),
        "peak_rss_gib": peak_rss_gib(),
        "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    });
    println!("{line}");
    Ok(())
}

/// `tunelab train lora`'s training step on a fixed batch. `SftTrainer::fit` takes governed,
/// tokenized records (and writes adapters and checkpoints), so this loop repeats its update
/// instead, with the same pieces: `sft::batch_loss` (mean next-token cross-entropy over the
/// masked targets; here every target counts, as with `labels = input_ids` in the anchor), burn's
/// AdamW from `AdamWConfig` (weight decay 0, the trainer's default), `clip_grad_norm` at 1.0 (the
/// trainer's `max_grad_norm`; PEFT's loop in the anchor does not clip), a constant learning rate,
/// and the loss read back every step as the trainer does (that read is its per-step sync).
/// `final_loss` starts near ln(vocab) (10.8 on SmolLM2's shape), as the anchor's does:
/// `Decoder::random` draws embeddings with transformers' spread (`EMBEDDING_BOUND`). Throughput
/// can depend on the values on x86 CPUs: with the earlier `U(-1, 1)` embeddings (loss ~130) the
/// softmax underflowed into subnormal floats and the head's input gradient took 2.4x as long.
fn lora(a: LoraBench, choice: DeviceChoice) -> anyhow::Result<()> {
    anyhow::ensure!(a.seq >= 2 && a.batch_size >= 1 && a.steps >= 1, "--seq must be at least 2, --batch-size and --steps at least 1");
    let device = choice.device()?;
    let dtype = a.dtype.resolve(&device, true);
    let cfg = a.shape.config();
    let lora = crate::lora::LoraConfig { rank: a.rank, alpha: a.alpha.unwrap_or(2.0 * a.rank as f64), ..Default::default() };
    let built = Instant::now();
    let model = Decoder::random_with(&cfg, &device, 0, a.quantize_base).with_lora(&lora, &mut ChaCha8Rng::seed_from_u64(0))?;
    let base_gib = model.projection_bytes() as f64 / (1u64 << 30) as f64;
    // What `train lora` would print for this run (src/train/memory.rs), beside the measured peak.
    let estimate = crate::train::sft::memory_estimate_of(
        &model,
        &cfg,
        &crate::train::sft::SftConfig {
            batch_size: a.batch_size,
            max_seq_length: a.seq,
            grad_checkpoint: a.grad_checkpoint,
            dtype,
            num_layers: lora.num_layers,
            lora_parameters: crate::train::sft::LoraParameters { rank: a.rank, alpha: Some(lora.alpha), ..Default::default() },
            ..Default::default()
        },
    );
    // Printed before the steps, as `train lora` prints it, so a run too big to finish still tells.
    eprintln!("{}", estimate.describe());
    dtype.check_device(&device).map_err(anyhow::Error::msg)?;
    let mut model = model.train().with_frozen_dtype(dtype);
    let build_s = built.elapsed().as_secs_f64();
    // The random model is drawn as f32 host values first (all of them for a quantized base too):
    // that peak is the build's, not the step's. Reset the high-water mark so `step_peak_rss_gib`
    // is what training holds: the weights at rest plus the step's own transient memory.
    let build_peak = peak_rss_gib();
    release_free_heap();
    let reset = reset_peak_rss();
    // `--dtype f16`: the trainer's loss scaling (`train::lora_loop`), on the same schedule.
    let mut scaler = (dtype == crate::model::decoder::Dtype::F16).then(crate::train::loss_scale::LossScaler::default);
    let mut optim: ModuleOptimizer = AdamWConfig::new().with_weight_decay(0.0).init();

    // input_ids = labels = random ids, as in the anchor: all `seq` positions go through the model,
    // and HF's shifted labels make the first seq - 1 of them targets (the last one predicts nothing).
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let (rows, cols) = (a.batch_size, a.seq);
    let inputs: Vec<i64> = (0..rows * cols).map(|_| rng.random_range(0..cfg.vocab_size as i64)).collect();
    let (mut targets, mut mask) = (vec![0i64; rows * cols], vec![0f32; rows * cols]);
    for r in 0..rows {
        for j in 0..cols - 1 {
            targets[r * cols + j] = inputs[r * cols + j + 1];
            mask[r * cols + j] = 1.0;
        }
    }
    let batch = Batch { rows, cols, inputs, targets, mask, ntoks: rows * (cols - 1), seq_tokens: rows * cols };
    let mut losses = Vec::new();
    let mut step = |model: Decoder| -> anyhow::Result<Decoder> {
        let loss_scale = scaler.as_ref().map(|s| s.scale);
        let (value, mut grads) = if a.grad_checkpoint {
            checkpointed_step(&model, &batch, &device, loss_scale.unwrap_or(1.0), None, CHECKPOINT_MAX_LOGITS)
        } else {
            let loss = batch_loss(&model, &batch, &device);
            let value = loss.clone().into_scalar::<f32>();
            anyhow::ensure!(value.is_finite(), "loss {value}");
            let loss = match loss_scale {
                Some(s) => loss.mul_scalar(s),
                None => loss,
            };
            (value, GradientsParams::from_grads(loss.backward(), &model))
        };
        anyhow::ensure!(value.is_finite(), "loss {value}");
        if let Some(s) = loss_scale {
            grads = crate::train::schedule::scale_grads(&model, grads, 1.0 / s as f64);
        }
        let (grads, norm) = clip_grad_norm(&model, grads, 1.0);
        losses.push(value);
        if let Some(scaler) = scaler.as_mut()
            && !scaler.update(norm.is_finite())
        {
            return Ok(model);
        }
        Ok(optim.step(a.learning_rate, model, grads))
    };
    for _ in 0..a.warmup {
        model = step(model)?;
    }
    device.sync().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let t = Instant::now();
    for _ in 0..a.steps {
        model = step(model)?;
    }
    device.sync().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let dt = t.elapsed().as_secs_f64();
    let quant = serde_json::to_value(a.quantize_base).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
    let step_peak = if reset { peak_rss_gib() } else { None };
    let whole_peak = match (peak_rss_gib(), build_peak) {
        (Some(s), Some(b)) => Some(s.max(b)),
        (s, b) => s.or(b),
    };
    // Device allocators that report (wgpu/CUDA through cubecl; flex does not): what they hold
    // after the timed steps. Pools keep their pages between steps, so `reserved` is close to the
    // step's peak, but it is not a high-water mark: scripts/bench-step-memory.sh samples
    // nvidia-smi for that.
    let pool = device.memory_pool_usage();
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let line = serde_json::json!({
        // f16 runs and quantized bases get their own case names, so a script keying results by case keeps them apart.
        "case": format!("{} lora r{} seq{} b{}{}{}{}", a.shape.name(), a.rank, a.seq, a.batch_size,
            if quant == "none" { String::new() } else { format!(" {quant}") }, if a.grad_checkpoint { " ckpt" } else { "" },
            if dtype == crate::model::decoder::Dtype::F32 { "" } else { " f16" }),
        "grad_checkpoint": a.grad_checkpoint,
        "quantize_base": quant,
        "base_projections_gib": base_gib,
        "estimate_gib": estimate.total() as f64 / (1u64 << 30) as f64,
        "framework": "tunelab",
        "device": choice.to_string(),
        "dtype": dtype.name(),
        "loss_scale": scaler.as_ref().map(|s| s.scale),
        "skipped_steps": scaler.as_ref().map(|s| s.skipped),
        "batch": a.batch_size,
        "seq": a.seq,
        "tokens_per_s": (a.batch_size * a.seq * a.steps) as f64 / dt,
        "step_ms": dt / a.steps as f64 * 1000.0,
        "steps": a.steps,
        "warmup": a.warmup,
        "build_s": build_s,
        "final_loss": losses.last(),
        "peak_rss_gib": whole_peak,
        "build_peak_rss_gib": build_peak,
        "step_peak_rss_gib": step_peak,
        "device_reserved_gib": pool.as_ref().map(|p| gib(p.bytes_reserved)),
        "device_in_use_gib": pool.as_ref().map(|p| gib(p.bytes_in_use)),
        "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    });
    println!("{line}");
    Ok(())
}

fn tempdir_path() -> anyhow::Result<PathBuf> {
    let p = std::env::temp_dir().join(format!("tunelab-bench-{}", std::process::id()));
    std::fs::create_dir_all(&p)?;
    Ok(p)
}

/// Hand the allocator's free heap pages back to the OS (glibc `malloc_trim`), so memory freed
/// after building a model (the f32 host values of a quantized one) is not counted as resident
/// in the step's peak. A no-op elsewhere.
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn malloc_trim(pad: usize) -> std::ffi::c_int;
        }
        // SAFETY: glibc's malloc_trim takes a byte count and only returns free memory.
        unsafe {
            malloc_trim(0);
        }
    }
}

/// Start the process's peak RSS (`VmHWM`) again from its current RSS (Linux `clear_refs` 5).
/// False where that is not possible: the peak then still includes what came before.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Peak resident memory of this process (Linux `VmHWM`); `None` elsewhere.
pub fn peak_rss_gib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `bench lora --quantize-base` takes train lora's values but `keep`, which has no file to
    /// keep blocks from here.
    #[test]
    fn quantize_base_flag() {
        use crate::lora::QuantizeBase;
        assert_eq!(bench_quantize_base("q4_0"), Ok(QuantizeBase::Q4_0));
        assert_eq!(bench_quantize_base("none"), Ok(QuantizeBase::None));
        let err = bench_quantize_base("keep").unwrap_err();
        assert!(err.contains("keep") && err.contains("q4_0"), "{err}");
        assert!(bench_quantize_base("q4_k").is_err());
    }
}

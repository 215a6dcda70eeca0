//! `tunelab bench ...`: throughput on this machine, printed as one JSON line per case in the shape
//! of the PyTorch peer (`bench/torch_anchor.py`), so scripts can put the two side by side.
//!
//! `bench train-embed` runs the real contrastive trainer (tokenizer, MultipleNegativesRankingLoss,
//! clipping, AdamW, schedule) on synthetic pairs whose anchors are exactly `seq/2` tokens and
//! positives exactly `seq` tokens, as the anchor does. Without `--model`, the encoder is a random
//! all-MiniLM-L6-v2-shaped BERT (throughput does not depend on the weight values) with a
//! synthetic 30,522-word vocabulary, so the benchmark needs no files (e.g. on a GPU machine).
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::data::formats::EmbeddingPair;
use crate::data::governance::Policy;
use crate::device::DeviceChoice;
use crate::io::tokenizer::TextTokenizer;
use crate::model::bert::{BertConfig, BertModel, Pooling, Prompts, SentenceEncoder, word_level_tokenizer_json};
use crate::train::contrastive_trainer::{ContrastiveConfig, ContrastiveTrainer};

#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// Contrastive (MNRL) training throughput of a BERT encoder: pairs/s and peak memory.
    TrainEmbed(TrainEmbedBench),
}

#[derive(clap::Args, Debug)]
pub struct TrainEmbedBench {
    /// Encoder folder; default: a random all-MiniLM-L6-v2-shaped model.
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Tokens per positive (anchors get half), special tokens included.
    #[arg(long, default_value_t = 128)]
    pub seq: usize,
    /// Timed steps (after the warm-up steps).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Train LoRA adapters of this rank instead of every weight.
    #[arg(long)]
    pub lora_rank: Option<usize>,
    /// GradCache mini-batch size (CachedMultipleNegativesRankingLoss).
    #[arg(long)]
    pub mini_batch_size: Option<usize>,
}

pub fn run(cmd: BenchCommand, device: DeviceChoice) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::TrainEmbed(a) => train_embed(a, device),
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
    if let Some(rank) = a.lora_rank {
        cfg.lora = Some(crate::lora::LoraConfig { rank, alpha: 2.0 * rank as f64, ..Default::default() });
    }
    // Warm-up run (kernel caches, allocator and thread pools are per process), then the timed run.
    drop(ContrastiveTrainer::new(cfg.clone()).with_progress(false).fit(encoder.clone(), &data, None)?);
    cfg.max_steps = Some(a.steps);
    let timed_dir = out.join("timed");
    cfg.output_dir = timed_dir.clone();
    let t = Instant::now();
    let done = ContrastiveTrainer::new(cfg).with_progress(false).fit(encoder, &data, None)?;
    let wall = t.elapsed().as_secs_f64();
    // The trainer's own pairs/s at its last step excludes the final checkpoint write.
    let logged = std::fs::read_to_string(timed_dir.join("loss.jsonl"))
        .ok()
        .and_then(|s| s.lines().last().and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok()))
        .and_then(|v| v["pairs_per_s"].as_f64());
    let pairs_per_s = logged.unwrap_or((a.batch_size * done.steps) as f64 / wall);
    let dt = (a.batch_size * done.steps) as f64 / pairs_per_s;
    let _ = std::fs::remove_dir_all(&out);
    let line = serde_json::json!({
        "case": format!("minilm-l6 mnrl seq{seq} b{}{}", a.batch_size, a.lora_rank.map(|r| format!(" lora r{r}")).unwrap_or_default()),
        "framework": "tunelab",
        "device": choice.to_string(),
        "dtype": "f32",
        "batch": a.batch_size,
        "seq": seq,
        "pairs_per_s": pairs_per_s,
        "step_ms": dt / done.steps as f64 * 1000.0,
        "steps": done.steps,
        "final_loss": done.losses.last(),
        "peak_rss_gib": peak_rss_gib(),
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

/// Peak resident memory of this process (Linux `VmHWM`); `None` elsewhere.
pub fn peak_rss_gib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / (1024.0 * 1024.0))
}

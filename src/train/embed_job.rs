//! `tunelab train embed CONFIG.toml`: fine-tune a sentence encoder on governed pairs, end to end.
//!
//! 1. Load the encoder folder and the pairs; apply the governance policy (only the
//!    [`GovernedDataset`](crate::data::governance::GovernedDataset) it returns is trained on).
//! 2. Optionally mine hard negatives from a corpus (BM25 or the base model), governed too.
//! 3. Train with [`ContrastiveTrainer`] (MultipleNegativesRankingLoss, GradCache with
//!    `mini_batch_size`, LoRA with `[train.lora]`), validating on held-out queries if given and
//!    keeping the best checkpoint.
//! 4. Export the tuned model (the best one when validating) as a sentence-transformers folder
//!    and write the run's manifest: `<reports>/<name>/<run-id>/{manifest.json, training/, model/}`.
//!
//! ```no_run
//! use tunelab::train::embed_job::{EmbedJobConfig, run_embed_job};
//! let cfg: EmbedJobConfig = toml::from_str(r#"
//!     model = "models/all-MiniLM-L6-v2"
//!     data = "datasets/pairs/pairs.jsonl"
//!     policy = "datasets/governance/policy.toml"
//!     [train]
//!     epochs = 2
//!     learning_rate = 5e-5
//!     [train.lora]
//!     rank = 16
//!     alpha = 32.0
//! "#).unwrap();
//! let out = run_embed_job(&cfg, tunelab::device::DeviceChoice::Cpu).unwrap();
//! println!("{}", out.model_dir.display());
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use burn::module::Module;
use serde::{Deserialize, Serialize};

use crate::data::corpus::read_corpus;
use crate::data::formats::{EmbeddingPair, read_records};
use crate::data::governance::Policy;
use crate::data::jsonl::{BadLines, read_jsonl};
use crate::data::trec::Qrels;
use crate::device::DeviceChoice;
use crate::io::tokenizer::TextTokenizer;
use crate::lora::{AdapterWeights, FineTuneType, LoraConfig};
use crate::model::bert::{Prompts, SentenceEncoder};
use crate::model::decoder::Dtype;
use crate::model::gemma::{GemmaEncoder, is_gemma_folder};
use crate::report::manifest::{Manifest, RunDir};
use crate::train::checkpoint;
use crate::train::contrastive_trainer::{ContrastiveConfig, ContrastiveTrainer};
use crate::train::encoder::TrainableEncoder;
use crate::train::hard_negatives::{Miner, MiningOptions, mine_hard_negatives};
use crate::train::memory::{ActivationProfile, MemoryEstimate, available_memory, gib, param_bytes, param_counts, texts_in_graph};
use crate::train::validation::RetrievalValidation;

/// Everything a training run depends on; recorded whole in the manifest.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbedJobConfig {
    /// Run name: the run lands in `<reports>/<name>/<run-id>/`.
    pub name: String,
    /// Encoder folder (Hugging Face / sentence-transformers layout): a BERT-family encoder or
    /// EmbeddingGemma (`model_type: gemma3_text`); or a llama.cpp `gemma-embedding` GGUF file
    /// (QMD's `embeddinggemma-300M-Q8_0.gguf`).
    pub model: PathBuf,
    /// Embedding pairs, JSONL `{"query", "positive", "negatives"?, "doc_id"?, governance...}`.
    pub data: PathBuf,
    /// Governance policy (TOML). Default: the first `governance/policy.toml` (or `tunelab.toml` naming a
    /// `policy`) in the data's folder or a folder above it, never the working directory's; without one
    /// only public pairs are trained on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<PathBuf>,
    pub reports: PathBuf,
    /// Token limit while training (the export keeps the model's own limit).
    pub max_seq_length: Option<usize>,
    /// Skip malformed JSONL lines (each one is reported) instead of stopping at the first.
    pub skip_bad_lines: bool,
    pub hard_negatives: Option<HardNegativesConfig>,
    pub validation: Option<ValidationConfig>,
    /// `lora`, `dora` or `full`, as `train lora --fine-tune-type` takes them: `lora` and `dora`
    /// train adapters shaped by `[train.lora]` (its defaults when absent; `dora` sets
    /// `use_dora`), `full` every weight. Unset: adapters when `[train.lora]` is given, else full.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fine_tune_type: Option<FineTuneType>,
    pub train: ContrastiveConfig,
}

impl Default for EmbedJobConfig {
    fn default() -> Self {
        EmbedJobConfig {
            name: "train-embed".into(),
            model: "models/all-MiniLM-L6-v2".into(),
            data: "datasets/pairs/pairs.jsonl".into(),
            policy: None,
            reports: "reports".into(),
            max_seq_length: Some(128),
            skip_bad_lines: false,
            hard_negatives: None,
            validation: None,
            fine_tune_type: None,
            train: ContrastiveConfig::default(),
        }
    }
}

/// `[hard_negatives]`: mine negatives from a corpus before training.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HardNegativesConfig {
    /// `bm25` or `dense` (the base model).
    pub method: String,
    /// Markdown folder or `{"id","title","text"}` JSONL; governed by the same policy.
    pub corpus: PathBuf,
    #[serde(default = "one")]
    pub num_negatives: usize,
    #[serde(default)]
    pub range_min: usize,
    #[serde(default = "fifty")]
    pub range_max: usize,
    #[serde(default)]
    pub relative_margin: Option<f32>,
}

fn one() -> usize {
    1
}
fn fifty() -> usize {
    50
}
fn ten() -> usize {
    10
}

/// `[validation]`: held-out queries searched over a corpus, scored with trec_eval's measures.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationConfig {
    pub corpus: PathBuf,
    /// JSONL `{"qid", "query"}`.
    pub queries: PathBuf,
    /// TREC qrels.
    pub qrels: PathBuf,
    #[serde(default = "ten")]
    pub depth: usize,
}

/// What a run produced.
#[derive(Debug)]
pub struct EmbedJobOutcome {
    pub run_dir: PathBuf,
    /// The exported sentence-transformers folder.
    pub model_dir: PathBuf,
    pub steps: usize,
    pub final_loss: Option<f32>,
    /// Best validation value: (metric, value, step).
    pub best: Option<(String, f64, usize)>,
}

#[derive(Deserialize)]
struct QueryLine {
    qid: String,
    query: String,
}

impl EmbedJobConfig {
    /// Read a TOML file; errors name the file and the TOML error (line, field).
    /// This config with `fine_tune_type` settled into `[train.lora]` (and named), so the run and
    /// its manifest say the same thing. Contradictions are errors naming both settings.
    pub fn resolved(&self) -> anyhow::Result<Self> {
        let mut c = self.clone();
        let kind = match (c.fine_tune_type, &mut c.train.lora) {
            (None, None) => FineTuneType::Full,
            (None, Some(l)) => if l.use_dora { FineTuneType::Dora } else { FineTuneType::Lora },
            (Some(FineTuneType::Full), Some(_)) => bail!(
                "fine_tune_type = \"full\" trains every weight, but [train.lora] (or --lora-rank) asks for adapters: drop one of them"
            ),
            (Some(FineTuneType::Full), None) => FineTuneType::Full,
            (Some(FineTuneType::Lora), Some(l)) if l.use_dora => bail!(
                "fine_tune_type = \"lora\" but [train.lora] sets use_dora = true: use fine_tune_type = \"dora\" or drop use_dora"
            ),
            (Some(kind), lora) => {
                lora.get_or_insert_with(LoraConfig::default).use_dora = kind == FineTuneType::Dora;
                kind
            }
        };
        c.fine_tune_type = Some(kind);
        Ok(c)
    }

    pub fn from_toml_file(path: &Path) -> anyhow::Result<Self> {
        let text = crate::io::text::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }
}

/// What the job needs from an encoder beyond training: its prompts, its tokenizer, a way to mine
/// with it, and its export.
trait JobEncoder: TrainableEncoder {
    fn query_prompt(&self) -> Option<String>;
    fn document_prompt(&self) -> Option<String>;
    fn tokenizer_mut(&mut self) -> &mut TextTokenizer;
    /// The encoder dense hard-negative mining can search with (BERT only, for now).
    fn dense_miner(&self) -> Option<&SentenceEncoder>;
    /// The adapters as arrays.
    fn adapter_weights(&self, lora: &LoraConfig) -> AdapterWeights;
    /// Adapters (if any) folded into the weights.
    fn merged(self) -> Self;
    /// `adapter` attached to this (plain, freshly loaded) encoder and folded into its weights:
    /// the export of a `--dtype f16` LoRA run, whose own frozen base was rounded to f16.
    fn merge_adapter_into(self, adapter: &AdapterWeights) -> anyhow::Result<Self>;
    fn write_folder(&self, dir: &Path, meta: serde_json::Value) -> anyhow::Result<()>;
    /// What one token costs autograd, for the memory estimate.
    fn activation_profile(&self) -> ActivationProfile;
    /// Bytes one token of `seq` keeps for the backward pass when the encoder runs in `dtype`.
    fn activation_bytes_per_token(&self, seq: usize, dtype: Dtype) -> u64 {
        let _ = dtype;
        self.activation_profile().bytes_per_token(seq)
    }
}

impl JobEncoder for SentenceEncoder {
    fn query_prompt(&self) -> Option<String> {
        self.prompts.query.clone()
    }
    fn document_prompt(&self) -> Option<String> {
        self.prompts.document.clone()
    }
    fn tokenizer_mut(&mut self) -> &mut TextTokenizer {
        &mut self.tokenizer
    }
    fn dense_miner(&self) -> Option<&SentenceEncoder> {
        Some(self)
    }
    fn adapter_weights(&self, lora: &LoraConfig) -> AdapterWeights {
        self.model.adapter_weights(lora)
    }
    fn merged(mut self) -> Self {
        self.model = self.model.merged();
        self
    }
    fn merge_adapter_into(mut self, adapter: &AdapterWeights) -> anyhow::Result<Self> {
        self.model = self.model.with_adapter(adapter)?.merged();
        Ok(self)
    }
    fn write_folder(&self, dir: &Path, meta: serde_json::Value) -> anyhow::Result<()> {
        crate::export::sentence_transformers::write_folder(self, dir, meta)?;
        Ok(())
    }
    fn activation_profile(&self) -> ActivationProfile {
        let c = &self.model.config;
        ActivationProfile::bert(c.num_hidden_layers, c.hidden_size, c.intermediate_size, c.num_attention_heads)
    }
    fn activation_bytes_per_token(&self, seq: usize, dtype: Dtype) -> u64 {
        match dtype {
            Dtype::F32 | Dtype::Auto => self.activation_profile().bytes_per_token(seq),
            // The two LayerNorms' inputs and outputs stay f32 (`BertLayer::forward_in`).
            Dtype::F16 => self.activation_profile().bytes_per_token_autocast(seq, 4 * self.model.config.hidden_size),
        }
    }
}

impl JobEncoder for GemmaEncoder {
    fn query_prompt(&self) -> Option<String> {
        self.prompt("query").map(str::to_string)
    }
    fn document_prompt(&self) -> Option<String> {
        self.prompt("document").map(str::to_string)
    }
    fn tokenizer_mut(&mut self) -> &mut TextTokenizer {
        &mut self.tokenizer
    }
    fn dense_miner(&self) -> Option<&SentenceEncoder> {
        None
    }
    fn adapter_weights(&self, lora: &LoraConfig) -> AdapterWeights {
        self.model.adapter_weights(lora)
    }
    fn merged(mut self) -> Self {
        self.model = self.model.merged();
        self
    }
    fn merge_adapter_into(self, _adapter: &AdapterWeights) -> anyhow::Result<Self> {
        // Only f16 runs export this way, and EmbeddingGemma refuses f16 before training.
        bail!("EmbeddingGemma does not train in f16: its adapter is exported from the f32 run's own weights")
    }
    fn write_folder(&self, dir: &Path, meta: serde_json::Value) -> anyhow::Result<()> {
        crate::export::sentence_transformers::write_gemma_folder(self, dir, meta)?;
        Ok(())
    }
    fn activation_profile(&self) -> ActivationProfile {
        let c = &self.model.transformer.config;
        let (heads, kv) = (c.num_attention_heads, c.num_key_value_heads);
        ActivationProfile::gemma(c.num_hidden_layers, c.hidden_size, heads * c.head_dim, c.head_dim, c.intermediate_size, heads, kv)
    }
}

/// The memory a CPU run may use: what the OS has available, or `TUNELAB_MEMORY_LIMIT` (bytes)
/// when set lower (to keep room for other work on the machine).
fn memory_limit() -> Option<u64> {
    let limit = std::env::var("TUNELAB_MEMORY_LIMIT").ok().and_then(|v| v.trim().parse::<u64>().ok());
    match (available_memory(), limit) {
        (Some(a), Some(l)) => Some(a.min(l)),
        (a, l) => a.or(l),
    }
}

/// What a contrastive run of `encoder` under `cfg` will hold in memory, texts of `seq` tokens
/// with `negatives` hard negatives per pair (see [`crate::train::memory`]), with the parameter
/// counts `(all, trainable)` it was made from.
fn memory_estimate<E: JobEncoder>(encoder: &E, cfg: &ContrastiveConfig, seq: usize, negatives: usize) -> anyhow::Result<(MemoryEstimate, usize, usize)> {
    let probe = match &cfg.lora {
        Some(l) => encoder.clone().with_lora(l, cfg.seed)?,
        None => encoder.clone(),
    };
    // On the autodiff device and in the dtype the trainer runs it in: frozen parameters are
    // those without grad, and under `--dtype f16` a LoRA run's frozen base is f16.
    let dtype = cfg.resolved_dtype(encoder);
    let probe = probe.for_training().with_dtype(dtype).map_err(anyhow::Error::msg)?;
    let (params, trainable) = param_counts(probe.model());
    let texts = texts_in_graph(cfg.batch_size, negatives, cfg.mini_batch_size);
    let mut estimate = MemoryEstimate::new(params, trainable, encoder.activation_bytes_per_token(seq, dtype), texts * seq);
    if dtype == Dtype::F16 {
        // Each weight at its own width (a LoRA run's frozen base f16); the trained weights stay
        // f32 masters cast to f16 at each use, and the graph keeps those copies for the backward
        // pass: 2 more bytes each (all of them in full fine-tuning).
        estimate.weights = param_bytes(probe.model()) + 2 * trainable as u64;
    }
    if cfg.mini_batch_size.is_some() {
        estimate = estimate.with_gradcache();
    }
    Ok((estimate, params, trainable))
}

/// `tunelab bench train-embed`'s estimate: `memory_estimate` (this module's) for a BERT encoder.
pub fn bert_memory_estimate(encoder: &SentenceEncoder, cfg: &ContrastiveConfig, seq: usize, negatives: usize) -> anyhow::Result<MemoryEstimate> {
    Ok(memory_estimate(encoder, cfg, seq, negatives)?.0)
}

/// Print what the run will hold in memory and refuse, naming the flags to change, when it
/// cannot fit the memory the OS has available (CPU runs; GPU memory is not known here).
fn check_memory<E: JobEncoder>(encoder: &E, cfg: &ContrastiveConfig, seq: usize, negatives: usize, cpu: bool) -> anyhow::Result<MemoryEstimate> {
    let (estimate, params, trainable) = memory_estimate(encoder, cfg, seq, negatives)?;
    let texts = texts_in_graph(cfg.batch_size, negatives, cfg.mini_batch_size);
    println!(
        "{} ({} parameters, {} trainable; {} texts × {} tokens per micro-batch)",
        estimate.describe(),
        params,
        trainable,
        texts,
        seq
    );
    if cpu
        && std::env::var("TUNELAB_SKIP_MEMORY_CHECK").as_deref() != Ok("1")
        && let Some(available) = memory_limit()
        && estimate.total() > available
    {
        bail!(
            "this run needs about {} but {} is available: lower --mini-batch-size (GradCache: {}), \
             --batch-size ({}) or --max-seq-length ({}), or train LoRA adapters (--lora-rank) instead of every weight \
             (TUNELAB_SKIP_MEMORY_CHECK=1 runs anyway)",
            gib(estimate.total()),
            gib(available),
            cfg.mini_batch_size.map_or("off".to_string(), |m| m.to_string()),
            cfg.batch_size,
            seq
        );
    }
    Ok(estimate)
}

/// Run the job on `choice`'s device. See the module notes.
pub fn run_embed_job(cfg: &EmbedJobConfig, choice: DeviceChoice) -> anyhow::Result<EmbedJobOutcome> {
    let cfg = &cfg.resolved()?;
    cfg.train.validate()?;
    let device = choice.device()?;
    device.seed(cfg.train.seed);
    let run_dir = RunDir::create(&cfg.reports, &cfg.name)?;
    let mut manifest = Manifest::new(&run_dir, cfg.train.seed, serde_json::to_value(cfg)?, choice.to_string());
    println!("run directory: {}", run_dir.path().display());
    let bad = if cfg.skip_bad_lines { BadLines::SkipBad } else { BadLines::Fail };

    // Data, governed.
    let policy = Policy::resolve(cfg.policy.as_deref(), &cfg.data)?;
    match (&policy.file, &policy.not_found) {
        (_, Some(why)) => eprintln!("warning: {why}. Only public pairs are used (sacred never)."),
        (Some(file), None) => eprintln!("governance policy: {}", file.display()),
        (None, None) => {}
    }
    let read = read_records::<EmbeddingPair>(&cfg.data, bad)?;
    for skipped in &read.skipped {
        eprintln!("skipped {skipped}");
    }
    if let Some(file) = &policy.file {
        manifest.add_input(file)?;
    }
    manifest.add_input(&cfg.data)?;
    let loading = || format!("loading {}", cfg.model.display());
    let cpu = matches!(choice, DeviceChoice::Cpu);
    if crate::model::gemma_gguf::is_gguf(&cfg.model) {
        // QMD's embeddinggemma GGUF: LoRA keeps the file's Q8_0 blocks as its frozen base (QLoRA);
        // full fine-tuning needs f32 weights to update.
        let keep_quantized = cfg.train.lora.is_some();
        let load = || GemmaEncoder::load_gguf(&cfg.model, keep_quantized, &device).with_context(loading);
        manifest.add_input(&cfg.model)?;
        train_and_export(cfg, load()?, &load, read.records, &policy, manifest, run_dir, cpu)
    } else if is_gemma_folder(&cfg.model) {
        let load = || GemmaEncoder::load(&cfg.model, &device).with_context(loading);
        train_and_export(cfg, load()?, &load, read.records, &policy, manifest, run_dir, cpu)
    } else {
        let load = || SentenceEncoder::load(&cfg.model, &device).with_context(loading);
        train_and_export(cfg, load()?, &load, read.records, &policy, manifest, run_dir, cpu)
    }
}

/// Everything after loading: governance, mining, validation, training, export. `load` loads
/// the encoder again (the f32 base an f16 LoRA run's adapter is exported onto).
#[allow(clippy::too_many_arguments)]
fn train_and_export<E: JobEncoder>(
    cfg: &EmbedJobConfig,
    mut encoder: E,
    load: &dyn Fn() -> anyhow::Result<E>,
    records: Vec<EmbeddingPair>,
    policy: &Policy,
    mut manifest: Manifest,
    run_dir: RunDir,
    cpu: bool,
) -> anyhow::Result<EmbedJobOutcome> {
    let bad = if cfg.skip_bad_lines { BadLines::SkipBad } else { BadLines::Fail };
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        let p = cfg.model.join(f);
        if p.is_file() {
            manifest.add_input(&p)?;
        }
    }
    let mut pairs = policy.apply(records);
    // The audit of what the policy kept and excluded from the data as given; mining below only adds
    // negatives to kept pairs, and its hash is recorded beside this one.
    let mut governance = serde_json::to_value(pairs.audit())?;

    if let Some(hn) = &cfg.hard_negatives {
        let t = Instant::now();
        let docs = policy.apply(read_corpus(&hn.corpus, bad)?.records);
        manifest.add_input(&hn.corpus)?;
        let miner = match hn.method.as_str() {
            "bm25" => Miner::Bm25,
            "dense" => match encoder.dense_miner() {
                Some(e) => Miner::Dense(e),
                None => bail!(
                    "{}: hard_negatives.method \"dense\" is not available for this encoder yet: use \"bm25\"",
                    cfg.model.display()
                ),
            },
            other => bail!("hard_negatives.method {other:?}: use \"bm25\" or \"dense\""),
        };
        let opts = MiningOptions {
            num_negatives: hn.num_negatives,
            range_min: hn.range_min,
            range_max: hn.range_max,
            relative_margin: hn.relative_margin,
            ..MiningOptions::default()
        };
        let (mined, report) = mine_hard_negatives(pairs.records(), &docs, &miner, &opts, None)?;
        println!(
            "hard negatives ({}): {} added to {} pairs ({} skipped as relevant, {} short), from {} allowed documents",
            hn.method, report.negatives_added, report.pairs, report.skipped_relevant, report.pairs_short, report.documents_allowed
        );
        std::fs::write(run_dir.path().join("hard_negatives.json"), serde_json::to_string_pretty(&report)?)?;
        // Mined pairs are judged again, so the audit and its hash describe exactly what trains.
        pairs = policy.apply(mined);
        governance["sha256_after_mining"] = serde_json::Value::String(pairs.audit().sha256.clone());
        manifest.record_timing("mine_hard_negatives", t.elapsed());
    }
    println!(
        "training on {} pairs kept of {} ({} excluded by the policy)",
        pairs.len(),
        governance["total"],
        governance["excluded"].as_array().map_or(0, Vec::len)
    );
    manifest.governance = governance;

    let mut validation = match &cfg.validation {
        Some(v) => {
            let docs = read_corpus(&v.corpus, bad)?.records;
            let queries = read_jsonl::<QueryLine>(&v.queries, bad)?.records;
            let qrels = Qrels::read(&v.qrels)?;
            for p in [&v.corpus, &v.queries, &v.qrels] {
                manifest.add_input(p)?;
            }
            let documents = docs
                .iter()
                .map(|d| (d.id.clone(), Prompts::apply(encoder.document_prompt().as_deref(), &format!("{}\n{}", d.title, d.text), None)))
                .collect();
            let queries = queries.into_iter().map(|q| (q.qid, Prompts::apply(encoder.query_prompt().as_deref(), &q.query, None))).collect();
            let mut rv = RetrievalValidation::new(queries, documents, qrels);
            rv.depth = v.depth;
            Some(rv)
        }
        None => None,
    };

    // Train.
    let t = Instant::now();
    let mut train_cfg = cfg.train.clone();
    train_cfg.output_dir = run_dir.path().join("training");
    // Concrete from here on (`auto`: f16 on a GPU for a BERT-family encoder): the export below
    // depends on it.
    train_cfg.dtype = train_cfg.resolved_dtype(&encoder);
    manifest.config["train"]["dtype"] = serde_json::to_value(train_cfg.dtype)?;
    if validation.is_some() && train_cfg.eval_every.is_none() {
        // Validate once per epoch at least, so "best" means something.
        train_cfg.eval_every = Some(pairs.len().div_ceil(train_cfg.batch_size).max(1));
    }
    let full_len = encoder.tokenizer_mut().max_len();
    if let Some(max) = cfg.max_seq_length {
        let t = encoder.tokenizer_mut();
        *t = TextTokenizer::new(t.inner().clone(), t.path().to_path_buf(), max.min(full_len))?;
    }
    let negatives = pairs.records().iter().map(|p| p.negatives.len()).max().unwrap_or(0);
    let seq = encoder.tokenizer_mut().max_len();
    check_memory(&encoder, &train_cfg, seq, negatives, cpu)?;
    let mut trainer = ContrastiveTrainer::new(train_cfg.clone());
    if let Some(v) = validation.as_mut() {
        trainer = trainer.with_validation(v);
    }
    let trained = trainer.fit(encoder, &pairs, None).context("fine-tuning the encoder")?;
    manifest.record_timing("train", t.elapsed());

    // The best checkpoint when validating, else the last model.
    let mut tuned = trained.encoder.for_inference();
    if trained.best.is_some() {
        let best_dir = train_cfg.output_dir.join("best");
        tuned.set_model(checkpoint::load_model(&best_dir, tuned.model().clone())?.valid());
    }
    let lora_adapter = train_cfg.lora.as_ref().map(|l| tuned.adapter_weights(l));
    let mut tuned = match (train_cfg.dtype, &lora_adapter) {
        // The frozen base trained in f16 (rounded once); the export folds the f32-trained adapter
        // into the base as loaded, so nothing but the adapter's training saw f16 (as `train lora`).
        (Dtype::F16, Some(adapter)) => {
            drop(tuned);
            load()?.merge_adapter_into(adapter)?
        }
        _ => tuned.merged(),
    };
    let t = tuned.tokenizer_mut();
    *t = TextTokenizer::new(t.inner().clone(), t.path().to_path_buf(), full_len)?;

    let t = Instant::now();
    let model_dir = run_dir.path().join("model");
    let meta = serde_json::json!({ "governance": manifest.governance.clone(), "run_id": manifest.run_id, "config": cfg });
    tuned.write_folder(&model_dir, meta)?;
    if let Some(adapter) = &lora_adapter {
        // The adapter itself too, as PEFT saves it (DoRA magnitudes as `lora_magnitude_vector`):
        // `PeftModel.from_pretrained(AutoModel.from_pretrained(base), "adapter")`.
        crate::export::peft::write_task(&run_dir.path().join("adapter"), adapter, &cfg.model.display().to_string(), "FEATURE_EXTRACTION")?;
        let summary: BTreeMap<&str, [usize; 2]> = adapter.layers.iter().map(|(k, f)| (k.as_str(), [f.b_shape[0], f.a_shape[1]])).collect();
        std::fs::write(run_dir.path().join("lora_layers.json"), serde_json::to_string_pretty(&summary)?)?;
    }
    manifest.record_timing("export", t.elapsed());
    let manifest_path = manifest.write(&run_dir)?;
    println!("tuned model: {}\nmanifest: {}", model_dir.display(), manifest_path.display());
    if let Some((m, v, s)) = &trained.best {
        println!("best {m} = {v:.4} at step {s}");
    }
    Ok(EmbedJobOutcome {
        run_dir: run_dir.path().to_path_buf(),
        model_dir,
        steps: trained.steps,
        final_loss: trained.losses.last().copied(),
        best: trained.best,
    })
}

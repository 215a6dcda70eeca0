//! LoRA fine-tuning of a yes/no LLM reranker (`tunelab train rerank`) on governed
//! `{"query", "document", "relevant": bool | grade}` judgments, with the machinery of
//! [`super::sft`]: LoRA wiring, the optimizer loop `train lora` runs (`lora_loop`: AdamW,
//! warm-up + schedule, clipping, gradient accumulation, MLX-LM adapter files, resumable
//! checkpoints, `loss.jsonl`), a governance audit and manifest. Only the loss differs.
//!
//! The judged `document` is sent as it is: the bundled judgments hold what QMD's reranker is
//! sent for the corpus document (its best rerank chunk), so training sees the pipeline's format.
//!
//! * Prompts are the reranker's ([`crate::model::reranker::encode_pair`]), so what is trained is
//!   what QMD scores: `m = logit_yes − logit_no` at the last position, `P(yes) = σ(m)`.
//! * `loss = "pointwise"`: binary cross-entropy of P(yes) against a target per pair: the grade
//!   divided by the largest grade in the data (0/1/2 → 0, 0.5, 1; booleans → 0, 1); mined
//!   negatives have target 0. `loss = "listwise"`: for each judged relevant document, softmax
//!   cross-entropy over `m` of it and `negatives` documents of lower grade (judged ones first,
//!   then mined), the relevant one at index 0.
//! * Hard negatives: BM25 (QMD's FTS5 settings, any term) over the distinct documents of the
//!   training judgments, skipping documents judged for that query; or, with `mining_embedder`,
//!   QMD's own pipeline over that pool (its fused BM25 + vector list), which is how the
//!   reranker's candidates are found at search time. BM25 negatives are picked for sharing the
//!   query's words, so they teach that shared words mean "no"; the pipeline's candidates are the
//!   ones the reranker has to sort. Documents of held-out queries never enter the pool, so
//!   nothing held out is seen in training.
//! * Held-out judgments: the queries whose FNV-1a hash (with `seed`) falls in the
//!   `valid_fraction`; Brier score and expected calibration error of P(yes) against
//!   `relevant ≥ 1` are reported for the base model and the tuned one (`calibration.json`):
//!   QMD blends P(yes) with ranks, so calibration has to survive tuning.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::Context;
use burn::module::Module;
use burn::optim::{AdamWConfig, ModuleOptimizer};
use burn::tensor::activation::{log_softmax, relu};
use burn::tensor::{Tensor, TensorData};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::checkpoint::{self, TrainState};
use super::lora_loop::{self, LoopConfig, Objective, StepLoss};
use super::schedule::{LrSchedule, ScheduleKind};
use super::sft::{LoraParameters, LossLog, SftConfig, SftError, checkpoint_of};
use super::sft_data::epoch_order;
use crate::data::corpus::Document;
use crate::eval::search::bm25::{Bm25Config, Bm25Index, QueryMode};
use crate::export::mlx;
use crate::lora::{AdapterWeights, QuantizeBase};
use crate::model::decoder::{CausalLm, Decoder, Dtype};
use crate::model::reranker::{
    RerankTemplate, encode_pair, logit_margins, right_padded, sigmoid_f32, yes_no_ids,
    yes_no_head, yes_no_logits, yes_no_margin,
};

/// Which loss trains the reranker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RerankLoss {
    /// Binary cross-entropy of P(yes) against the pair's target.
    #[default]
    Pointwise,
    /// Softmax cross-entropy over one relevant document and `negatives` less relevant ones.
    Listwise,
}

/// What a judged grade becomes as the pointwise loss's target P(yes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RerankTargets {
    /// The grade divided by the largest grade in the data (0/1/2 → 0, 0.5, 1).
    #[default]
    Graded,
    /// 1 for any grade ≥ 1, else 0: the labels calibration is measured against and the ones
    /// MRR counts. QMD's blend can lift a document past a non-relevant fused rank 2 (score
    /// ≥ 0.375) from rank 11 on only with P(yes) > 0.56 (0.4/11 + 0.6·P), so graded targets,
    /// which teach P = 0.5 for a same-concept document of another aspect, keep such documents
    /// below it.
    Binary,
}

/// The pointwise target of a judgment of `grade` when the data's largest grade is `max_grade`.
pub fn pointwise_target(targets: RerankTargets, grade: i64, max_grade: i64) -> f32 {
    let max_grade = max_grade.max(1);
    match targets {
        RerankTargets::Graded => grade.clamp(0, max_grade) as f32 / max_grade as f32,
        RerankTargets::Binary => (grade >= 1) as u8 as f32,
    }
}

/// Options of `tunelab train rerank`: `train lora`'s names and meanings where they apply, plus
/// the reranker's own (`loss`, `negatives`, `mined_negatives`, `valid_fraction`,
/// `calibration_bins`, `eval_batch_size`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RerankConfig {
    /// A `.gguf` file or Hugging Face folder.
    pub model: Option<PathBuf>,
    /// A JSONL file of judgments `{"query", "document", "relevant"}` with governance fields.
    pub data: Option<PathBuf>,
    pub policy: Option<PathBuf>,
    pub treat_unclassified_as_public: bool,
    /// Batches to train on: pairs (pointwise) or groups (listwise) per batch.
    pub iters: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub steps_per_report: usize,
    pub save_every: usize,
    pub num_layers: i64,
    /// Longest prompt in tokens (documents lose their tail).
    pub max_seq_length: usize,
    pub grad_accumulation_steps: usize,
    pub adapter_path: PathBuf,
    pub resume_adapter_file: Option<PathBuf>,
    pub seed: u64,
    pub lora_parameters: LoraParameters,
    pub warmup: usize,
    pub lr_schedule: ScheduleKind,
    pub weight_decay: f64,
    pub max_grad_norm: Option<f64>,
    pub quantize_base: QuantizeBase,
    pub grad_checkpoint: bool,
    /// `f16`: mixed precision as `train lora`'s `dtype` (`auto`, the default, resolved as there).
    pub dtype: Dtype,
    /// `dtype = "f16"`: the starting loss scale, as `train lora`'s `init_loss_scale`.
    #[serde(skip_serializing_if = "super::loss_scale::is_default_init_scale")]
    pub init_loss_scale: f64,
    pub loss: RerankLoss,
    /// Pointwise targets: graded (grade / largest grade) or binary (grade ≥ 1).
    pub targets: RerankTargets,
    /// Negatives per group (listwise).
    pub negatives: usize,
    /// Hard negatives mined per training query (BM25, or the pipeline with `mining_embedder`);
    /// none by default: BM25's alone taught the reranker that shared words mean "no", the
    /// opposite of what separates the candidates QMD's pipeline hands it (run D against E2,
    /// `reports/rerank-ab/20261206-gpu/README.md`).
    pub mined_negatives: usize,
    /// An embedder (sentence-transformers folder, or QMD's EmbeddingGemma GGUF or folder): mine
    /// through QMD's pipeline (the `hybrid` stage: BM25 and vector lists of the query, fused)
    /// instead of BM25 alone. Left out of written configs when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mining_embedder: Option<PathBuf>,
    /// Share of queries held out for calibration (Brier, ECE).
    pub valid_fraction: f64,
    pub calibration_bins: usize,
    /// Prompts per forward pass when scoring held-out judgments.
    pub eval_batch_size: usize,
}

impl Default for RerankConfig {
    fn default() -> Self {
        let s = SftConfig::default();
        Self {
            model: None,
            data: None,
            policy: None,
            treat_unclassified_as_public: false,
            iters: 200,
            batch_size: 4,
            learning_rate: 1e-4,
            steps_per_report: 10,
            save_every: 100,
            num_layers: -1,
            max_seq_length: 512,
            grad_accumulation_steps: 1,
            adapter_path: PathBuf::from("adapters"),
            resume_adapter_file: None,
            seed: 0,
            lora_parameters: LoraParameters {
                rank: 8,
                scale: 2.0,
                ..LoraParameters::default()
            },
            warmup: 0,
            lr_schedule: s.lr_schedule,
            weight_decay: 0.0,
            max_grad_norm: Some(1.0),
            quantize_base: QuantizeBase::Keep,
            grad_checkpoint: false,
            dtype: Dtype::Auto,
            init_loss_scale: s.init_loss_scale,
            loss: RerankLoss::Pointwise,
            targets: RerankTargets::Graded,
            negatives: 3,
            mined_negatives: 0,
            mining_embedder: None,
            valid_fraction: 0.2,
            calibration_bins: 10,
            eval_batch_size: 8,
        }
    }
}

impl RerankConfig {
    pub fn from_toml_file(path: &Path) -> Result<Self, SftError> {
        let text = std::fs::read_to_string(path).map_err(|source| SftError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| SftError::ConfigFile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    /// The `train lora` options this run shares, validated there (ranges, accumulation).
    fn sft(&self) -> SftConfig {
        SftConfig {
            iters: self.iters,
            batch_size: self.batch_size,
            learning_rate: self.learning_rate,
            steps_per_report: self.steps_per_report,
            save_every: self.save_every,
            num_layers: self.num_layers,
            max_seq_length: self.max_seq_length,
            grad_accumulation_steps: self.grad_accumulation_steps,
            seed: self.seed,
            lora_parameters: self.lora_parameters.clone(),
            warmup: self.warmup,
            lr_schedule: self.lr_schedule,
            weight_decay: self.weight_decay,
            max_grad_norm: self.max_grad_norm,
            quantize_base: self.quantize_base,
            dtype: self.dtype,
            init_loss_scale: self.init_loss_scale,
            ..SftConfig::default()
        }
    }

    pub fn validate(&self) -> Result<(), SftError> {
        self.sft().validate()?;
        let bad = |field: &'static str, reason: String| Err(SftError::Config { field, reason });
        if !(self.valid_fraction >= 0.0 && self.valid_fraction < 1.0) {
            return bad(
                "valid_fraction",
                format!("{} is not in [0, 1)", self.valid_fraction),
            );
        }
        if self.loss == RerankLoss::Listwise && self.negatives == 0 {
            return bad(
                "negatives",
                "listwise training needs at least one negative per group".into(),
            );
        }
        if self.calibration_bins == 0 || self.eval_batch_size == 0 {
            return bad(
                "calibration_bins",
                "calibration_bins and eval_batch_size must be at least 1".into(),
            );
        }
        Ok(())
    }
}

/// One judgment: a query, a document text and its grade (booleans as 0/1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Judged {
    pub query: String,
    pub document: String,
    pub grade: i64,
}

/// FNV-1a of `seed` and `text`: a stable hash for the query split.
fn fnv(seed: u64, text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in text.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Split judgments by query: every judgment of a query lands on the same side. Returns
/// `(train, held_out)`.
pub fn split_by_query(
    judged: &[Judged],
    valid_fraction: f64,
    seed: u64,
) -> (Vec<Judged>, Vec<Judged>) {
    let held = |q: &str| (fnv(seed, q) % 10_000) as f64 / 10_000.0 < valid_fraction;
    judged.iter().cloned().partition(|j| !held(&j.query))
}

/// The pool hard negatives are mined from: the distinct documents of `judged`, as documents
/// `d0`, `d1`, ... in text order; and the documents judged for each query.
fn mining_pool(judged: &[Judged]) -> (Vec<Document>, BTreeMap<&str, BTreeSet<&str>>) {
    let pool: BTreeSet<&str> = judged.iter().map(|j| j.document.as_str()).collect();
    let docs = pool
        .into_iter()
        .enumerate()
        .map(|(i, text)| Document {
            id: format!("d{i}"),
            title: String::new(),
            text: text.to_string(),
            governance: Default::default(),
        })
        .collect();
    let mut judged_for: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for j in judged {
        judged_for.entry(&j.query).or_default().insert(&j.document);
    }
    (docs, judged_for)
}

/// The first `k` documents of `ranked` (pool ids, best first) not judged for the query.
fn unjudged(docs: &[Document], ranked: &[String], seen: &BTreeSet<&str>, k: usize) -> Vec<String> {
    ranked
        .iter()
        .filter_map(|id| id.strip_prefix('d').and_then(|i| i.parse::<usize>().ok()))
        .filter_map(|i| docs.get(i))
        .map(|d| d.text.clone())
        .filter(|d| !seen.contains(d.as_str()))
        .take(k)
        .collect()
}

/// Up to `k` BM25 hard negatives per query: the best-ranked documents of the pool (distinct
/// documents of `judged`) that are not judged for that query. QMD's FTS5 settings, any term.
pub fn mine_negatives(
    judged: &[Judged],
    k: usize,
) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let mut out = BTreeMap::new();
    if k == 0 {
        return Ok(out);
    }
    let (docs, judged_for) = mining_pool(judged);
    let index = Bm25Index::in_memory(
        &docs,
        &Bm25Config {
            query_mode: QueryMode::AnyTerm,
            index_doc_id: false,
            ..Bm25Config::default()
        },
    )?;
    for (query, seen) in judged_for {
        let hits: Vec<String> = index.search(query, k + seen.len())?.into_iter().map(|r| r.doc_id).collect();
        out.insert(query.to_string(), unjudged(&docs, &hits, &seen, k));
    }
    Ok(out)
}

/// Up to `k` hard negatives per query mined through QMD's pipeline: the `hybrid` stage (BM25
/// with QMD's query syntax and vector search with `embedder`, fused by RRF, no expansion) over
/// the pool (distinct documents of `judged`), without the documents judged for the query.
/// These are the candidates the reranker meets at search time, unlike BM25's any-term hits.
pub fn mine_negatives_pipeline(
    judged: &[Judged],
    k: usize,
    embedder: Box<dyn crate::eval::search::qmd::Embedder>,
) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    use crate::eval::search::qmd::{QmdConfig, QmdPipeline};
    let mut out = BTreeMap::new();
    if k == 0 {
        return Ok(out);
    }
    let (docs, judged_for) = mining_pool(judged);
    let pipeline = QmdPipeline::build(&docs, embedder, QmdConfig::default())?;
    for (query, seen) in judged_for {
        let answer = pipeline.search(query, None, None)?;
        let ranked: Vec<String> = answer.hybrid.iter().map(|r| r.doc_id.clone()).collect();
        out.insert(query.to_string(), unjudged(&docs, &ranked, &seen, k));
    }
    Ok(out)
}

/// Brier score and expected calibration error of probabilities `p` against binary labels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    pub n: usize,
    /// Mean squared error of P(yes) against the 0/1 label.
    pub brier: f64,
    /// Σ_bins (n_bin / n) · |mean label − mean P(yes)| over equal-width bins of P(yes).
    pub ece: f64,
    pub mean_p: f64,
    pub positive_rate: f64,
    /// Per bin: (count, mean P(yes), positive rate).
    pub bins: Vec<(usize, f64, f64)>,
}

/// Brier score and ECE (`bins` equal-width bins over [0, 1], the last one closed).
pub fn calibration(p: &[f32], labels: &[bool], bins: usize) -> Calibration {
    assert_eq!(p.len(), labels.len());
    let n = p.len();
    let nf = n.max(1) as f64;
    let mut acc = vec![(0usize, 0f64, 0f64); bins];
    let mut brier = 0.0;
    for (&pi, &y) in p.iter().zip(labels) {
        let (pi, yf) = (pi as f64, y as u8 as f64);
        brier += (pi - yf).powi(2);
        let b = ((pi * bins as f64) as usize).min(bins - 1);
        acc[b].0 += 1;
        acc[b].1 += pi;
        acc[b].2 += yf;
    }
    let ece = acc
        .iter()
        .filter(|b| b.0 > 0)
        .map(|b| (b.0 as f64 / nf) * (b.2 / b.0 as f64 - b.1 / b.0 as f64).abs())
        .sum();
    Calibration {
        n,
        brier: brier / nf,
        ece,
        mean_p: p.iter().map(|&x| x as f64).sum::<f64>() / nf,
        positive_rate: labels.iter().filter(|&&y| y).count() as f64 / nf,
        bins: acc
            .into_iter()
            .map(|(c, s, y)| {
                if c == 0 {
                    (0, 0.0, 0.0)
                } else {
                    (c, s / c as f64, y / c as f64)
                }
            })
            .collect(),
    }
}

/// Mean binary cross-entropy of `σ(margin)` against `targets` in [0, 1], computed stably from
/// the margin: `max(m, 0) − y·m + log(1 + e^{−|m|})`. `[1]`.
pub fn pointwise_loss(margin: Tensor<1>, targets: Tensor<1>) -> Tensor<1> {
    let softplus_neg_abs = margin.clone().abs().neg().exp().log1p();
    (relu(margin.clone()) - targets * margin + softplus_neg_abs).mean()
}

/// Mean softmax cross-entropy over groups of `group` margins (`[n_groups · group]`, the relevant
/// document first in each group). `[1]`.
pub fn listwise_loss(margin: Tensor<1>, group: usize) -> Tensor<1> {
    let n = margin.dims()[0] / group;
    log_softmax(margin.reshape([n, group]), 1)
        .narrow(1, 0, 1)
        .neg()
        .mean()
}

/// `logit_yes − logit_no` of a batch of prompts on the model's device (autodiff when training), `[batch]`.
fn margins(model: &Decoder, prompts: &[&[u32]], yes: u32, no: u32) -> anyhow::Result<Tensor<1>> {
    let device = model.embed_tokens.val().device();
    let (ids, last) = right_padded(prompts, &device)?;
    Ok(yes_no_margin(yes_no_logits(model, ids, last, yes, no)))
}

/// The prompts of the items `picked` and, pointwise, their targets (listwise: `None`, each
/// group's relevant document first).
fn batch_rows<'a>(items: &'a Items, picked: &[usize]) -> (Vec<&'a [u32]>, Option<Vec<f32>>) {
    match items {
        Items::Pairs(pairs) => (picked.iter().map(|&i| pairs[i].0.as_slice()).collect(), Some(picked.iter().map(|&i| pairs[i].1).collect())),
        Items::Groups(groups) => (picked.iter().flat_map(|&i| groups[i].iter().map(Vec::as_slice)).collect(), None),
    }
}

/// The loss of a batch's margins: pointwise against `targets`, else listwise over groups of `group`.
fn rerank_loss(margin: Tensor<1>, targets: Option<Vec<f32>>, group: usize) -> Tensor<1> {
    match targets {
        Some(t) => {
            let n = t.len();
            pointwise_loss(margin.clone(), Tensor::<1>::from_data(TensorData::new(t, [n]), &margin.device()))
        }
        None => listwise_loss(margin, group),
    }
}

/// `--grad-checkpoint`'s step for `train rerank`: the loss of the prompts `rows` and the
/// gradients of `scale` × it, with the decoder's blocks recomputed in the backward pass
/// ([`super::block_checkpoint`]). The head is the two yes/no rows of the output projection at
/// each row's last position, so it needs no chunking.
#[allow(clippy::too_many_arguments)]
pub(crate) fn rerank_checkpointed(model: &Decoder, rows: &[&[u32]], targets: Option<Vec<f32>>, group: usize, yes: u32, no: u32, scale: f32, dropout_seed: Option<u64>) -> anyhow::Result<(f32, burn::optim::GradientsParams)> {
    use super::block_checkpoint::{backward_by_blocks, whole_head};
    let device = model.embed_tokens.val().device();
    let (ids, last) = right_padded(rows, &device)?;
    let head = whole_head(move |model: &Decoder, hidden| rerank_loss(yes_no_margin(yes_no_head(model, hidden, last, yes, no)), targets, group), scale);
    Ok(backward_by_blocks(model, ids, dropout_seed, head))
}

/// Training items: pairs with targets (pointwise) or groups with the relevant document first
/// (listwise).
enum Items {
    Pairs(Vec<(Vec<u32>, f32)>),
    Groups(Vec<Vec<Vec<u32>>>),
}

impl Items {
    fn len(&self) -> usize {
        match self {
            Items::Pairs(p) => p.len(),
            Items::Groups(g) => g.len(),
        }
    }
}

/// What a run produced.
pub struct RerankOutcome {
    pub model: Decoder,
    pub adapter: AdapterWeights,
    pub iterations: usize,
    pub losses: Vec<f32>,
    pub base: Option<Calibration>,
    pub tuned: Option<Calibration>,
    pub train_items: usize,
    pub held_out: usize,
    pub pairs_per_s: f64,
}

/// Train a reranker adapter for `lm` on `train` judgments; score `held_out` before and after.
/// `audit` (the governance audit of the judgments) is written beside the adapter.
pub fn fit(
    cfg: &RerankConfig,
    lm: &CausalLm,
    template: &RerankTemplate,
    judged: &[Judged],
    audit: serde_json::Value,
    progress: bool,
) -> anyhow::Result<RerankOutcome> {
    // `auto` made concrete before anything reads it (a LoRA run: f16 on a GPU that computes it).
    let resolved = RerankConfig { dtype: cfg.dtype.resolve(&lm.model.embed_tokens.val().device(), true), ..cfg.clone() };
    let cfg = &resolved;
    cfg.validate()?;
    let out = cfg.adapter_path.clone();
    std::fs::create_dir_all(&out).map_err(|source| SftError::Io {
        path: out.clone(),
        source,
    })?;
    let (train, held_out) = split_by_query(judged, cfg.valid_fraction, cfg.seed);
    if train.is_empty() {
        anyhow::bail!(
            "no training judgments left after holding out {:.0}% of the queries",
            cfg.valid_fraction * 100.0
        );
    }
    let (yes, no) = yes_no_ids(lm)?;
    let enc = |q: &str, d: &str| encode_pair(lm, template, cfg.max_seq_length, q, d);
    let max_grade = train.iter().map(|j| j.grade).max().unwrap_or(1).max(1);
    let mined = match &cfg.mining_embedder {
        None => mine_negatives(&train, cfg.mined_negatives)?,
        Some(path) if cfg.mined_negatives > 0 => {
            let device = lm.model.embed_tokens.val().device();
            let embedder = crate::eval::search::qmd::load_embedder(path, &device)
                .with_context(|| format!("mining_embedder {}", path.display()))?;
            mine_negatives_pipeline(&train, cfg.mined_negatives, embedder)?
        }
        Some(_) => BTreeMap::new(),
    };
    let items = match cfg.loss {
        RerankLoss::Pointwise => {
            let mut pairs = Vec::new();
            for j in &train {
                pairs.push((
                    enc(&j.query, &j.document)?,
                    pointwise_target(cfg.targets, j.grade, max_grade),
                ));
            }
            for (q, negs) in &mined {
                for d in negs {
                    pairs.push((enc(q, d)?, 0.0));
                }
            }
            Items::Pairs(pairs)
        }
        RerankLoss::Listwise => {
            let mut groups = Vec::new();
            let mut by_query: BTreeMap<&str, Vec<&Judged>> = BTreeMap::new();
            for j in &train {
                by_query.entry(&j.query).or_default().push(j);
            }
            for (q, js) in by_query {
                for pos in js.iter().filter(|j| j.grade >= 1) {
                    let mut negs: Vec<&str> = js
                        .iter()
                        .filter(|j| j.grade < pos.grade && j.grade < 1)
                        .map(|j| j.document.as_str())
                        .collect();
                    negs.extend(mined.get(q).into_iter().flatten().map(String::as_str));
                    if negs.is_empty() {
                        continue;
                    }
                    let mut g = vec![enc(q, &pos.document)?];
                    for i in 0..cfg.negatives {
                        g.push(enc(q, negs[i % negs.len()])?);
                    }
                    groups.push(g);
                }
            }
            Items::Groups(groups)
        }
    };
    if items.len() < cfg.batch_size {
        anyhow::bail!(SftError::TooFew {
            part: "train".into(),
            n: items.len(),
            batch_size: cfg.batch_size
        });
    }
    std::fs::write(
        out.join("governance_audit.json"),
        serde_json::to_string_pretty(&audit)?,
    )?;
    let manifest = serde_json::json!({
        "tool": "tunelab", "version": env!("CARGO_PKG_VERSION"), "task": "rerank",
        "base_model": lm.source, "config": cfg, "train_judgments": train.len(), "held_out_judgments": held_out.len(),
        "train_items": items.len(), "template": template.text(), "governance_audit": audit,
    });

    // Held-out calibration of a model (forward only).
    let held_prompts = held_out
        .iter()
        .map(|j| enc(&j.query, &j.document))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let labels: Vec<bool> = held_out.iter().map(|j| j.grade >= 1).collect();
    let calibrate = |model: &Decoder| -> anyhow::Result<Option<Calibration>> {
        if held_prompts.is_empty() {
            return Ok(None);
        }
        let p: Vec<f32> = logit_margins(model, &held_prompts, cfg.eval_batch_size, yes, no)?
            .into_iter()
            .map(sigmoid_f32)
            .collect();
        Ok(Some(calibration(&p, &labels, cfg.calibration_bins)))
    };

    let lora = cfg.sft().lora_config();
    let base = match cfg.quantize_base.target(None) {
        Some(ty) => lm.model.clone().quantize_projections(ty)?,
        None => lm.model.clone(),
    };
    let mut model = base.clone().with_lora(&lora, &mut ChaCha8Rng::seed_from_u64(cfg.seed))?;
    let mut state = TrainState {
        step: 0,
        epoch: 0,
        batch_in_epoch: 0,
        seed: cfg.seed,
        best: None,
        loss_scaler: None,
    };
    let mut resume_dir = None;
    if let Some(from) = &cfg.resume_adapter_file {
        let (adapter, ckpt) = match checkpoint_of(from) {
            Some(dir) => (mlx::read(&dir)?, Some(dir)),
            None => (
                mlx::read_with_weights(from.parent().unwrap_or(Path::new(".")), from)?,
                None,
            ),
        };
        model = model.apply_adapter(&AdapterWeights {
            config: lora.clone(),
            ..adapter
        })?;
        if let Some(dir) = ckpt {
            state = checkpoint::load_state(&dir)?;
            resume_dir = Some(dir);
        }
    }
    let base_cal = if state.step == 0 {
        calibrate(&model)?
    } else {
        None
    };
    // `--grad-checkpoint` runs on the same autodiff device: its step recomputes blocks itself
    // ([`rerank_checkpointed`]).
    let model = super::sft::with_training_dtype(model, cfg.dtype, cfg.init_loss_scale, &mut state)?;
    let mut optim: ModuleOptimizer = AdamWConfig::new()
        .with_weight_decay(cfg.weight_decay as f32)
        .init();
    if let Some(dir) = &resume_dir {
        optim = checkpoint::load_optimizer(dir, optim)?;
    }
    let acc = cfg.grad_accumulation_steps;
    let schedule = LrSchedule {
        base_lr: cfg.learning_rate,
        warmup_steps: cfg.warmup,
        total_steps: cfg.iters / acc,
        kind: cfg.lr_schedule,
    };
    let n_batches = items.len() / cfg.batch_size;
    let mut log = LossLog::open(&out.join("loss.jsonl"), state.step)?;
    let extra = serde_json::json!({ "tunelab_rerank": cfg, "template": template.text() });
    let save = |model: &Decoder, dir: &Path, iteration: usize| -> anyhow::Result<AdapterWeights> {
        let mut adapter = model.adapter_weights(&lora);
        adapter.metadata.insert(
            "tunelab_manifest".into(),
            serde_json::json!({ "iteration": iteration, "run": manifest }).to_string(),
        );
        mlx::write(dir, &adapter, extra.clone())?;
        Ok(adapter)
    };
    if state.step == 0
        && let Some(c) = &base_cal
    {
        log.write(&serde_json::json!({ "iteration": 0, "val_brier": c.brier, "val_ece": c.ece }))?;
    }
    /// `train rerank`'s objective: pointwise or listwise loss on `logit_yes − logit_no`.
    struct Rerank<'a, S: Fn(&Decoder, &Path, usize) -> anyhow::Result<AdapterWeights>> {
        items: &'a Items,
        batch_size: usize,
        seed: u64,
        group: usize,
        yes: u32,
        no: u32,
        save: S,
        /// `--grad-checkpoint`: blocks recomputed in the backward pass ([`rerank_checkpointed`]).
        grad_checkpoint: bool,
        /// LoRA dropout is on (`--grad-checkpoint` reseeds it per block).
        dropout: bool,
        grad_accumulation_steps: usize,
        n_batches: usize,
    }
    impl<S: Fn(&Decoder, &Path, usize) -> anyhow::Result<AdapterWeights>> Objective for Rerank<'_, S> {
        type Error = anyhow::Error;
        fn loss(&mut self, model: &Decoder, epoch: usize, pos: usize, loss_scale: f32) -> anyhow::Result<StepLoss> {
            let order = epoch_order(self.items.len(), self.seed, epoch);
            let picked = &order[pos * self.batch_size..(pos + 1) * self.batch_size];
            let (rows, targets) = batch_rows(self.items, picked);
            let n_pairs = rows.len();
            let (group, yes, no) = (self.group, self.yes, self.no);
            if self.grad_checkpoint {
                let it = epoch * self.n_batches + pos + 1;
                let dropout_seed = self.dropout.then(|| super::sft::iteration_seed(self.seed, it));
                let scale = loss_scale / self.grad_accumulation_steps.max(1) as f32;
                let (loss, grads) = rerank_checkpointed(model, &rows, targets, group, yes, no, scale, dropout_seed)?;
                let loss = Tensor::<1>::from_data(TensorData::new(vec![loss], [1]), &model.embed_tokens.val().device());
                return Ok(StepLoss { loss, counts: vec![("pairs", n_pairs)], grads: Some(grads) });
            }
            let m = margins(model, &rows, yes, no)?;
            Ok(StepLoss {
                loss: rerank_loss(m, targets, group),
                counts: vec![("pairs", n_pairs)],
                grads: None,
            })
        }
        fn save(&self, model: &Decoder, dir: &Path, iteration: usize) -> anyhow::Result<()> {
            (self.save)(model, dir, iteration).map(|_| ())
        }
    }
    let loop_cfg = LoopConfig {
        out: out.clone(),
        iters: cfg.iters,
        stop: cfg.iters,
        n_batches,
        grad_accumulation_steps: acc,
        seed: cfg.seed,
        dropout: lora.dropout > 0.0,
        max_grad_norm: cfg.max_grad_norm,
        steps_per_report: cfg.steps_per_report,
        save_every: cfg.save_every,
        schedule,
        numbered_copies: false,
        progress,
    };
    let mut objective = Rerank {
        items: &items,
        batch_size: cfg.batch_size,
        seed: cfg.seed,
        group: cfg.negatives + 1,
        yes,
        no,
        save: &save,
        grad_checkpoint: cfg.grad_checkpoint,
        dropout: lora.dropout > 0.0,
        grad_accumulation_steps: acc,
        n_batches,
    };
    let last_adapter = resume_dir.as_ref().map(|d| d.join(mlx::WEIGHTS_FILE));
    let done = lora_loop::run(
        &loop_cfg,
        model,
        optim,
        &mut state,
        last_adapter,
        &mut log,
        &mut objective,
    )?;
    let (model, losses) = (done.model, done.losses);
    let pairs_seen = done.totals.get("pairs").copied().unwrap_or(0);
    let train_secs = done.train_secs;
    let adapter = model.adapter_weights(&lora);
    if state.step == 0 {
        save(&model, &out, 0)?;
    }
    let model = match cfg.dtype {
        Dtype::F32 | Dtype::Auto => model.valid(),
        // The f16 base served the training steps only: calibration and the returned model use
        // the trained adapter over the f32 base the run was given.
        Dtype::F16 => base
            .with_lora(&lora, &mut ChaCha8Rng::seed_from_u64(cfg.seed))?
            .apply_adapter(&adapter)?,
    };
    let tuned = calibrate(&model)?;
    if let Some(t) = &tuned {
        log.write(
            &serde_json::json!({ "iteration": state.step, "val_brier": t.brier, "val_ece": t.ece }),
        )?;
    }
    let report = serde_json::json!({
        "held_out_judgments": held_out.len(), "labels": "relevant >= 1",
        "base": base_cal, "tuned": tuned,
    });
    std::fs::write(
        out.join("calibration.json"),
        serde_json::to_string_pretty(&report)? + "\n",
    )?;
    Ok(RerankOutcome {
        model,
        adapter,
        iterations: state.step,
        losses,
        base: base_cal,
        tuned,
        train_items: items.len(),
        held_out: held_out.len(),
        pairs_per_s: pairs_seen as f64 / train_secs.max(1e-9),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    fn t1(v: &[f32]) -> Tensor<1> {
        Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), &Device::flex())
    }

    #[test]
    fn pointwise_targets_graded_and_binary() {
        use RerankTargets::{Binary, Graded};
        for (grade, max, graded, binary) in [
            (0, 2, 0.0, 0.0),
            (1, 2, 0.5, 1.0),
            (2, 2, 1.0, 1.0),
            (3, 2, 1.0, 1.0),
            (-1, 2, 0.0, 0.0),
            (1, 1, 1.0, 1.0),
            (0, 0, 0.0, 0.0),
            (2, 4, 0.5, 1.0),
        ] {
            assert_eq!(pointwise_target(Graded, grade, max), graded, "graded {grade}/{max}");
            assert_eq!(pointwise_target(Binary, grade, max), binary, "binary {grade}/{max}");
        }
    }

    #[test]
    fn pointwise_loss_is_binary_cross_entropy_of_p_yes() {
        // Margins of every size (saturated both ways included) and fractional targets.
        let m = [-40.0f32, -3.0, -0.5, 0.0, 0.25, 2.0, 9.0, 40.0];
        let y = [0.0f32, 1.0, 0.5, 1.0, 0.0, 0.5, 1.0, 0.0];
        let want: f64 = m
            .iter()
            .zip(&y)
            .map(|(&m, &y)| {
                let (m, y) = (m as f64, y as f64);
                // log σ(m) and log(1 − σ(m)) in f64, stably.
                let log_p = -(1.0 + (-m).exp()).ln();
                let log_q = -(1.0 + m.exp()).ln();
                -(y * log_p + (1.0 - y) * log_q)
            })
            .sum::<f64>()
            / m.len() as f64;
        let got = pointwise_loss(t1(&m), t1(&y)).into_scalar::<f32>() as f64;
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }

    #[test]
    fn listwise_loss_is_cross_entropy_with_the_positive_first() {
        let m = [2.0f32, 0.5, -1.0, 0.0, 3.0, 3.0];
        let want: f64 = m
            .chunks(3)
            .map(|g| {
                let lse = g.iter().map(|&x| (x as f64).exp()).sum::<f64>().ln();
                lse - g[0] as f64
            })
            .sum::<f64>()
            / 2.0;
        let got = listwise_loss(t1(&m), 3).into_scalar::<f32>() as f64;
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }

    /// Through the loop `train lora` shares (`lora_loop`): a run resumed from its checkpoint at
    /// iteration 2 ends with the adapter and losses of the run that was never interrupted.
    #[test]
    fn resumed_run_ends_with_the_same_adapter_and_losses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/reranker/tiny_qwen3_reranker");
        let lm = CausalLm::load(&dir, &Device::flex()).unwrap();
        let judged: Vec<Judged> = (0..6)
            .flat_map(|q| {
                [(2, "the moon pulls the tide"), (0, "flour and water")].map(|(g, d)| Judged {
                    query: format!("question {q} about the tide"),
                    document: format!("{d} ({q})"),
                    grade: g,
                })
            })
            .collect();
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let cfg = |out: &Path| RerankConfig {
            iters: 4,
            batch_size: 2,
            learning_rate: 0.05,
            save_every: 2,
            valid_fraction: 0.0,
            mined_negatives: 1,
            adapter_path: out.to_path_buf(),
            seed: 3,
            ..RerankConfig::default()
        };
        let t = RerankTemplate::default();
        let fit_ =
            |c: &RerankConfig| fit(c, &lm, &t, &judged, serde_json::json!({}), false).unwrap();
        let whole = fit_(&cfg(a.path()));
        assert_eq!(whole.iterations, 4);
        let ckpt = checkpoint::checkpoint_dir(a.path(), 2);
        let resumed = fit_(&RerankConfig {
            resume_adapter_file: Some(ckpt),
            ..cfg(b.path())
        });
        assert_eq!(resumed.iterations, 4);
        assert_eq!(
            resumed.losses,
            whole.losses[2..],
            "same losses, iteration by iteration"
        );
        assert_eq!(
            resumed.adapter.layers, whole.adapter.layers,
            "bit-identical adapter"
        );
        assert_ne!(whole.losses[0], whole.losses[3]);
        let log = std::fs::read_to_string(a.path().join("loss.jsonl")).unwrap();
        let last: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
        assert_eq!(last["iteration"], 4);
        assert!(
            last["pairs"].as_u64() == Some(2) && last["pairs_per_s"].as_f64().unwrap() > 0.0,
            "{last}"
        );
    }

    #[test]
    fn calibration_of_known_predictions() {
        let p = [0.05f32, 0.15, 0.95, 0.85, 1.0, 0.0];
        let y = [false, true, true, true, true, false];
        let c = calibration(&p, &y, 10);
        let brier =
            (0.05f64.powi(2) + 0.85f64.powi(2) + 0.05f64.powi(2) + 0.15f64.powi(2) + 0.0 + 0.0)
                / 6.0;
        assert!((c.brier - brier).abs() < 1e-6, "{} vs {brier}", c.brier);
        // Bins: [0,0.1): {0.05 n, 0.0 n} mean p 0.025, rate 0; [0.1,0.2): {0.15 y}; [0.8,0.9): {0.85 y};
        // [0.9,1.0]: {0.95 y, 1.0 y} (1.0 falls in the last bin).
        let ece = (2.0 * 0.025 + 0.85 + 0.15 + 2.0 * 0.025) / 6.0;
        assert!((c.ece - ece).abs() < 1e-6, "{} vs {ece}", c.ece);
        assert_eq!(c.bins[9].0, 2);
        let perfect = calibration(&[0.0, 1.0], &[false, true], 10);
        assert_eq!((perfect.brier, perfect.ece), (0.0, 0.0));
    }

    #[test]
    fn the_query_split_keeps_queries_whole_and_is_seeded() {
        let judged: Vec<Judged> = (0..200)
            .flat_map(|q| {
                (0..3).map(move |d| Judged {
                    query: format!("query {q}"),
                    document: format!("doc {d}"),
                    grade: d,
                })
            })
            .collect();
        let (train, held) = split_by_query(&judged, 0.25, 7);
        let tq: BTreeSet<_> = train.iter().map(|j| &j.query).collect();
        let hq: BTreeSet<_> = held.iter().map(|j| &j.query).collect();
        assert!(tq.is_disjoint(&hq));
        assert_eq!(train.len() + held.len(), judged.len());
        assert!(
            (30..70).contains(&hq.len()),
            "{} of 200 queries held out at 25%",
            hq.len()
        );
        assert_ne!(
            split_by_query(&judged, 0.25, 8).1,
            held,
            "another seed gives another split"
        );
        assert!(split_by_query(&judged, 0.0, 7).1.is_empty());
    }

    #[test]
    fn mined_negatives_skip_documents_judged_for_the_query() {
        let j = |q: &str, d: &str, g| Judged {
            query: q.into(),
            document: d.into(),
            grade: g,
        };
        let judged = vec![
            j("ferry timetable", "The ferry leaves at nine.", 2),
            j("ferry timetable", "Bread recipes of the valley.", 0),
            j("bread oven", "The bread oven is lit at dawn.", 2),
            j("bread oven", "Ferry tickets are sold at the pier.", 0),
        ];
        let mined = mine_negatives(&judged, 2).unwrap();
        for (q, negs) in &mined {
            for d in negs {
                assert!(
                    !judged.iter().any(|x| &x.query == q && &x.document == d),
                    "{q}: judged document {d:?} mined"
                );
            }
        }
        assert!(
            mined["ferry timetable"]
                .iter()
                .any(|d| d.contains("Ferry tickets")),
            "{mined:?}"
        );
        assert!(mine_negatives(&judged, 0).unwrap().is_empty());
    }

    /// Pipeline mining finds what the vector list finds (a document sharing no word with the
    /// query), never a document judged for the query, and at most `k`; BM25 mining does not
    /// find that document at all.
    #[test]
    fn pipeline_mining_takes_the_fused_candidates_not_judged_for_the_query() {
        use crate::eval::search::qmd::FnEmbedder;
        let j = |q: &str, d: &str, g| Judged { query: q.into(), document: d.into(), grade: g };
        let judged = vec![
            j("ferry timetable", "The ferry leaves at nine.", 2),
            j("ferry timetable", "Bread recipes of the valley.", 0),
            j("bread oven", "The bread oven is lit at dawn.", 2),
            j("bread oven", "Ferry tickets are sold at the pier.", 0),
            j("harbour tide", "Boats wait in the harbour for the tide.", 2),
            j("harbour tide", "Timetable of the mill: grinding days.", 0),
        ];
        // A two-word "meaning": water travel and bread; "boats" sits closest to "ferry".
        let embedder = || {
            Box::new(FnEmbedder::new(
                |texts: &[&str]| {
                    Ok(texts
                        .iter()
                        .map(|t| {
                            let t = t.to_lowercase();
                            let has = |w: &str| t.contains(w) as u8 as f32;
                            vec![
                                has("ferry") + has("boats"),
                                0.5 * has("tickets") + 0.1 * has("boats") + has("bread") + 0.01,
                            ]
                        })
                        .collect())
                },
                |t: &str| Ok(t.split_whitespace().count()),
            ))
        };
        let boats = "Boats wait in the harbour for the tide.";
        let mined = mine_negatives_pipeline(&judged, 1, embedder()).unwrap();
        assert_eq!(mined["ferry timetable"], vec![boats.to_string()], "{mined:?}");
        let mined3 = mine_negatives_pipeline(&judged, 3, embedder()).unwrap();
        for (q, negs) in &mined3 {
            assert!(negs.len() <= 3, "{q}: {negs:?}");
            for d in negs {
                assert!(!judged.iter().any(|x| &x.query == q && &x.document == d), "{q}: judged document {d:?} mined");
            }
        }
        let bm25 = mine_negatives(&judged, 3).unwrap();
        assert!(!bm25["ferry timetable"].iter().any(|d| d == boats), "{bm25:?}");
        assert!(mine_negatives_pipeline(&judged, 0, embedder()).unwrap().is_empty());
    }
}

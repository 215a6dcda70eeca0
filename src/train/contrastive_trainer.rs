//! The contrastive training loop for embedding models (`tunelab train embed CONFIG.toml`).
//!
//! What it does, in sentence-transformers' terms: [`NoDuplicatesBatchSampler`] batches,
//! MultipleNegativesRankingLoss (or its GradCache variant when `mini_batch_size` is set), AdamW
//! (weight decay 0.01, none on biases and norm weights, as `transformers`' Trainer), warm-up and
//! linear or cosine decay, clipping by global norm. Every `eval_every` steps it runs a
//! [`Validation`] and keeps the best model; every `save_every` steps it writes a checkpoint that
//! [`ContrastiveTrainer::fit`] can resume from bit for bit. A NaN or infinite loss (or gradient
//! norm) stops the run before the optimizer step, naming the step and the last checkpoint (which
//! is left intact).
//!
//! Output folder: `loss.jsonl` (one line per step: `{"step","epoch","loss","lr","grad_norm",
//! "pairs_per_s"}` plus `"valid_<metric>"` on evaluation steps), `checkpoints/step-N/`,
//! `best/` (the best model by `best_metric`) and `config.json`.
//!
//! `dtype = "f16"` (`--dtype f16`) trains in mixed precision, as sentence-transformers'
//! `fp16=True` (`torch.autocast` + `GradScaler`): linear layers and attention in f16, the
//! residual stream, LayerNorm, softmax, pooling, the similarity matrix and the loss in f32,
//! frozen base weights cast to f16 once, trainable weights (LoRA factors, or every weight in
//! full fine-tuning) and AdamW's state f32 (`BertModel::with_dtype`). The loss is scaled before
//! the backward pass and the gradients unscaled before clipping ([`super::loss_scale`]); a step
//! whose gradients are not finite is skipped (the scale halves, AdamW's state untouched) instead
//! of stopping the run, and its `loss.jsonl` line carries `loss_scale`, `skipped` and
//! `skipped_steps` (`grad_norm` is null there). The scaler is saved in checkpoints.
//!
//! Only governed data is accepted: [`TrainingPairs`] is sealed and implemented for the data
//! module's `GovernedDataset<EmbeddingPair>`, which only `Policy::apply` creates.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::{Module, ModuleVisitor, Param, ParamGroup, ParamId};
use burn::optim::{AdamWConfig, ModuleOptimizer};
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::checkpoint::{self, CheckpointError, TrainState};
use super::contrastive::{CachedMultipleNegativesRankingLoss, MultipleNegativesRankingLoss, NoDuplicatesBatchSampler, PairBatch, PairRef};
use super::encoder::TrainableEncoder;
use super::schedule::{LrSchedule, ScheduleKind, clip_grad_norm, grad_norm, scale_grads};
use super::validation::{Metrics, Validation};
use crate::lora::{LoraConfig, LoraError};
use crate::model::decoder::Dtype;

/// Everything a contrastive run needs; TOML or JSON. Unset fields take the defaults shown by
/// [`ContrastiveConfig::default`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContrastiveConfig {
    /// Peak learning rate (after warm-up).
    pub learning_rate: f64,
    pub batch_size: usize,
    pub epochs: usize,
    /// Stop after this many optimizer steps (the schedule spans them), even mid-epoch.
    pub max_steps: Option<usize>,
    /// Warm-up as a fraction of the steps (rounded up, as `transformers` does)…
    pub warmup_ratio: f64,
    /// …or as a number of steps (wins over the ratio).
    pub warmup_steps: Option<usize>,
    pub lr_schedule: ScheduleKind,
    /// AdamW decoupled weight decay (not applied to 1-D parameters: biases, norm weights).
    pub weight_decay: f64,
    pub adam_beta1: f32,
    pub adam_beta2: f32,
    pub adam_epsilon: f32,
    /// Clip gradients to this global L2 norm (`max_grad_norm`); `None` disables clipping.
    pub max_grad_norm: Option<f64>,
    /// MultipleNegativesRankingLoss similarity scale (1 / temperature).
    pub scale: f32,
    /// Add the positive → anchor direction (MultipleNegativesSymmetricRankingLoss).
    pub symmetric: bool,
    /// Set to use CachedMultipleNegativesRankingLoss with mini-batches of this size.
    pub mini_batch_size: Option<usize>,
    pub seed: u64,
    /// Validate every N steps (and after the last step).
    pub eval_every: Option<usize>,
    /// Write a checkpoint every N steps (one is always written after the last step).
    pub save_every: Option<usize>,
    pub output_dir: PathBuf,
    /// Validation metric that decides the best checkpoint (higher is better).
    pub best_metric: String,
    /// Train LoRA adapters instead of every weight.
    pub lora: Option<LoraConfig>,
    /// MatryoshkaLoss: also train the first N dimensions of every embedding (e.g. `[768, 512,
    /// 256, 128]` for EmbeddingGemma), each re-normalised; the losses are summed.
    pub matryoshka_dims: Option<Vec<usize>>,
    /// One weight per `matryoshka_dims` entry (default 1 each, as sentence-transformers).
    pub matryoshka_weights: Option<Vec<f32>>,
    /// `f16`: mixed precision with dynamic loss scaling (module notes), for LoRA and full
    /// fine-tuning; `f32` as before; `auto` (default): f16 on a GPU that computes it for an
    /// encoder that trains in f16 (BERT family, not DoRA), f32 on the CPU and elsewhere
    /// (`Dtype::resolve`). The run's written config records what `auto` resolved to.
    pub dtype: Dtype,
    /// `dtype = "f16"`: the loss scale a fresh run starts at (`torch.amp.GradScaler`'s
    /// `init_scale`, 2^16).
    #[serde(skip_serializing_if = "super::loss_scale::is_default_init_scale")]
    pub init_loss_scale: f64,
}


impl Default for ContrastiveConfig {
    fn default() -> Self {
        Self {
            learning_rate: 2e-5,
            batch_size: 32,
            epochs: 1,
            max_steps: None,
            warmup_ratio: 0.1,
            warmup_steps: None,
            lr_schedule: ScheduleKind::Linear,
            weight_decay: 0.01,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            max_grad_norm: Some(1.0),
            scale: 20.0,
            symmetric: false,
            mini_batch_size: None,
            seed: 42,
            eval_every: None,
            save_every: None,
            output_dir: PathBuf::from("runs/embed"),
            best_metric: "ndcg_cut_10".into(),
            lora: None,
            matryoshka_dims: None,
            matryoshka_weights: None,
            dtype: Dtype::Auto,
            init_loss_scale: super::loss_scale::INIT_SCALE as f64,
        }
    }
}

impl ContrastiveConfig {
    /// Read a TOML config; errors name the file (and line and field, as `toml` reports them).
    pub fn from_toml_file(path: &Path) -> Result<Self, TrainError> {
        let text = crate::io::text::read_to_string(path).map_err(|source| TrainError::Io { path: path.to_path_buf(), source })?;
        let config: Self = toml::from_str(&text).map_err(|e| TrainError::ConfigFile { path: path.to_path_buf(), reason: e.to_string() })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges; the error names the field.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |field: &'static str, reason: String| Err(TrainError::Config { field, reason });
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return bad("learning_rate", format!("{} is not a positive number", self.learning_rate));
        }
        if self.batch_size < 2 {
            return bad("batch_size", format!("{}: in-batch negatives need at least 2 pairs", self.batch_size));
        }
        if self.epochs == 0 && self.max_steps.is_none() {
            return bad("epochs", "0 epochs and no max_steps: nothing to train".into());
        }
        if !(0.0..=1.0).contains(&self.warmup_ratio) {
            return bad("warmup_ratio", format!("{} is not in [0, 1]", self.warmup_ratio));
        }
        // A TOML file bypasses the command line's parsers: every float is checked here too.
        let positive = [
            ("scale", self.scale as f64),
            ("adam_epsilon", self.adam_epsilon as f64),
            ("max_grad_norm", self.max_grad_norm.unwrap_or(1.0)),
        ];
        for (field, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                return bad(field, format!("{v} is not a finite number above 0"));
            }
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("weight_decay", format!("{} is not a finite number >= 0", self.weight_decay));
        }
        for (field, v) in [("adam_beta1", self.adam_beta1), ("adam_beta2", self.adam_beta2)] {
            if !(0.0..1.0).contains(&v) {
                return bad(field, format!("{v} is not in [0, 1)"));
            }
        }
        if self.mini_batch_size == Some(0) {
            return bad("mini_batch_size", "must be at least 1".into());
        }
        if self.eval_every == Some(0) || self.save_every == Some(0) {
            return bad(if self.eval_every == Some(0) { "eval_every" } else { "save_every" }, "must be at least 1".into());
        }
        if let Some(lora) = &self.lora {
            lora.validate()?;
        }
        if let Err(reason) = super::loss_scale::check_init_scale(self.init_loss_scale) {
            return bad("init_loss_scale", reason);
        }
        if self.dtype == Dtype::F16 && self.lora.as_ref().is_some_and(|l| l.use_dora) {
            // DoRA's row norms mix the frozen base with B·A: its layers run in f32 only.
            return bad("dtype", format!("{} trains LoRA adapters or every weight, not DoRA (fine_tune_type dora needs f32 weights for its row norms): use --dtype f32 or --fine-tune-type lora", self.dtype));
        }
        if let Some(m) = self.matryoshka() {
            m.validate(None).map_err(|reason| TrainError::Config { field: "matryoshka_dims", reason })?;
        } else if self.matryoshka_weights.is_some() {
            return bad("matryoshka_weights", "set without matryoshka_dims".into());
        }
        Ok(())
    }

    /// The MatryoshkaLoss settings, when `matryoshka_dims` is set.
    /// [`Self::dtype`] made concrete for `encoder` on its device ([`Dtype::resolve`]): `auto`
    /// gives f16 on a GPU that computes it to an encoder that trains in f16 (BERT family; not
    /// EmbeddingGemma, not DoRA), f32 elsewhere.
    pub fn resolved_dtype<E: TrainableEncoder>(&self, encoder: &E) -> Dtype {
        self.dtype.resolve(&encoder.device(), self.trains_in_f16(encoder))
    }

    /// Whether this run of `encoder` can train in f16: an encoder with an f16 path, not DoRA.
    pub fn trains_in_f16<E: TrainableEncoder>(&self, encoder: &E) -> bool {
        encoder.trains_in_f16() && !self.lora.as_ref().is_some_and(|l| l.use_dora)
    }

    pub fn matryoshka(&self) -> Option<super::contrastive::Matryoshka> {
        let dims = self.matryoshka_dims.clone()?;
        let weights = self.matryoshka_weights.clone().unwrap_or_else(|| vec![1.0; dims.len()]);
        Some(super::contrastive::Matryoshka { dims, weights })
    }
}

/// Why training stopped.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("training config field '{field}': {reason}")]
    Config { field: &'static str, reason: String },
    #[error("{path}: {reason}")]
    ConfigFile { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("no training pairs")]
    EmptyData,
    #[error("step {step}: encoding failed: {source}")]
    Encode { step: usize, source: Box<dyn std::error::Error + Send + Sync> },
    /// The loss or the gradient norm is NaN or infinite: nothing of that step was applied.
    #[error("step {step}: {quantity} is {value}; training stopped before the update. Last good checkpoint: {}", checkpoint.as_ref().map_or("none written yet".to_string(), |p| p.display().to_string()))]
    NonFinite { step: usize, quantity: &'static str, value: f64, checkpoint: Option<PathBuf> },
    #[error("step {step}: validation failed: {source}")]
    Validation { step: usize, source: Box<dyn std::error::Error + Send + Sync> },
    #[error("step {step}: validation gave no '{metric}' (best_metric); it gave: {available}")]
    MissingMetric { step: usize, metric: String, available: String },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Lora(#[from] LoraError),
    #[error(transparent)]
    RunFolder(#[from] crate::train::run_folder::RunFolderError),
}

mod sealed {
    pub trait Sealed {}
}

/// Training data the contrastive trainer accepts: governed embedding pairs. Sealed, so only
/// types that went through the governance policy implement it.
pub trait TrainingPairs: sealed::Sealed {
    fn pairs(&self) -> Vec<PairRef<'_>>;
    /// The governance audit of these records, written to `governance_audit.json` in the run.
    fn audit(&self) -> serde_json::Value;
}

// The only public way in: embedding pairs that went through `Policy::apply`.
impl sealed::Sealed for crate::data::governance::GovernedDataset<crate::data::formats::EmbeddingPair> {}

impl TrainingPairs for crate::data::governance::GovernedDataset<crate::data::formats::EmbeddingPair> {
    fn pairs(&self) -> Vec<PairRef<'_>> {
        self.records()
            .iter()
            .map(|r| PairRef { query: &r.query, positive: &r.positive, negatives: &r.negatives })
            .collect()
    }
    fn audit(&self) -> serde_json::Value {
        serde_json::to_value(crate::data::governance::GovernedDataset::audit(self)).unwrap_or_default()
    }
}

/// The result of [`ContrastiveTrainer::fit`].
#[derive(Debug)]
pub struct TrainOutcome<E> {
    /// The trained encoder (on the training device).
    pub encoder: E,
    /// Optimizer steps taken in total (including those before a resume).
    pub steps: usize,
    /// Loss of each step run in this call.
    pub losses: Vec<f32>,
    /// Best validation value: (metric, value, step); the model is in `output_dir/best`.
    pub best: Option<(String, f64, usize)>,
    /// The checkpoint written last.
    pub last_checkpoint: Option<PathBuf>,
}

/// Runs contrastive training; see the module notes.
///
/// ```
/// use tunelab::train::contrastive_trainer::{ContrastiveConfig, ContrastiveTrainer};
/// use tunelab::train::encoder::HashedBagEncoder;
/// let config: ContrastiveConfig = toml::from_str("learning_rate = 1e-4\nbatch_size = 16\nepochs = 2\n").unwrap();
/// config.validate().unwrap();
/// let trainer = ContrastiveTrainer::<HashedBagEncoder>::new(config).with_progress(false);
/// # let _ = trainer;
/// ```
pub struct ContrastiveTrainer<'v, E> {
    config: ContrastiveConfig,
    validation: Option<&'v mut dyn Validation<E>>,
    progress: bool,
    stop_after: Option<usize>,
}

impl<'v, E: TrainableEncoder> ContrastiveTrainer<'v, E> {
    pub fn new(config: ContrastiveConfig) -> Self {
        Self { config, validation: None, progress: true, stop_after: None }
    }

    /// Validate with this every `eval_every` steps.
    pub fn with_validation(mut self, validation: &'v mut dyn Validation<E>) -> Self {
        self.validation = Some(validation);
        self
    }

    /// Show a progress bar (on by default; hidden anyway when stderr is not a terminal).
    pub fn with_progress(mut self, on: bool) -> Self {
        self.progress = on;
        self
    }

    /// Stop (with a checkpoint) once the run reaches `step`, leaving the rest for a resume; the
    /// schedule still spans the whole run.
    pub fn stop_after(mut self, step: usize) -> Self {
        self.stop_after = Some(step);
        self
    }

    pub fn config(&self) -> &ContrastiveConfig {
        &self.config
    }

    /// Train `encoder` on `data`. With `resume`, continue from that checkpoint (for example
    /// [`checkpoint::latest`] of the output folder) with its model, optimizer and position.
    pub fn fit(&mut self, encoder: E, data: &dyn TrainingPairs, resume: Option<&Path>) -> Result<TrainOutcome<E>, TrainError> {
        let mut cfg = self.config.clone();
        cfg.validate()?;
        // `auto` made concrete before anything reads it; the config written below records it.
        cfg.dtype = cfg.resolved_dtype(&encoder);
        let pairs = data.pairs();
        if pairs.is_empty() {
            return Err(TrainError::EmptyData);
        }
        let out = cfg.output_dir.clone();
        // The folder belongs to one run: another run's checkpoints and log would mix with these.
        use crate::train::run_folder::{Claim, claim};
        claim(&out, if resume.is_some() { Claim::Resume } else { Claim::Fresh })?;
        let config_path = out.join("config.json");
        std::fs::write(&config_path, serde_json::to_string_pretty(&cfg).expect("config serialises"))
            .map_err(|source| TrainError::Io { path: config_path, source })?;
        let audit_path = out.join("governance_audit.json");
        std::fs::write(&audit_path, serde_json::to_string_pretty(&data.audit()).expect("JSON value serialises"))
            .map_err(|source| TrainError::Io { path: audit_path, source })?;

        // The whole run's batches are known up front: they fix the schedule's length.
        let sampler = NoDuplicatesBatchSampler { batch_size: cfg.batch_size, drop_last: false, seed: cfg.seed };
        let epochs = cfg.epochs.max(1);
        let mut plan: Vec<Vec<Vec<usize>>> = (0..epochs).map(|e| sampler.batches(&pairs, e as u64)).collect();
        let mut available: usize = plan.iter().map(Vec::len).sum();
        if let Some(max) = cfg.max_steps {
            // max_steps beyond the epochs keeps sampling more epochs, as transformers does.
            while available < max {
                plan.push(sampler.batches(&pairs, plan.len() as u64));
                available += plan.last().map_or(0, Vec::len);
            }
        }
        let total_steps = cfg.max_steps.unwrap_or(available).min(available);
        let warmup_steps = cfg.warmup_steps.unwrap_or((cfg.warmup_ratio * total_steps as f64).ceil() as usize);
        let schedule = LrSchedule { base_lr: cfg.learning_rate, warmup_steps, total_steps, kind: cfg.lr_schedule };

        // Model (LoRA attached first, so a checkpoint of an adapted model loads onto the same shape).
        let encoder = match &cfg.lora {
            Some(lora) => encoder.with_lora(lora, cfg.seed)?,
            None => encoder,
        }
        .for_training();
        // Mixed precision before a checkpoint is loaded, so its (f16) frozen base loads into
        // tensors of the same dtype.
        cfg.dtype.check_device(&encoder.device()).map_err(|reason| TrainError::Config { field: "dtype", reason })?;
        let mut encoder = encoder.with_dtype(cfg.dtype).map_err(|reason| TrainError::Config { field: "dtype", reason })?;
        let mut state = TrainState { step: 0, epoch: 0, batch_in_epoch: 0, seed: cfg.seed, best: None, loss_scaler: None };
        let mut last_checkpoint = None;
        if let Some(dir) = resume {
            state = checkpoint::load_state(dir)?;
            let model = checkpoint::load_model(dir, encoder.model().clone())?;
            encoder.set_model(model);
            last_checkpoint = Some(dir.to_path_buf());
        }
        // A resumed run keeps the loss scale it had; a fresh f16 run starts at `init_loss_scale`.
        state.loss_scaler = super::loss_scale::for_dtype(cfg.dtype, state.loss_scaler.take(), cfg.init_loss_scale);
        let mut optim = adamw(&cfg, encoder.model());
        if let Some(dir) = resume {
            optim = checkpoint::load_optimizer(dir, optim)?;
        }
        let mut log = LossLog::open(&out.join("loss.jsonl"), state.step)?;

        let matryoshka = cfg.matryoshka();
        if let Some(m) = &matryoshka {
            // The embedding width is only known from the model: one text tells.
            let width = encoder.for_inference().encode(&[""]).map_err(|e| TrainError::Encode { step: state.step + 1, source: Box::new(e) })?.dims()[1];
            m.validate(Some(width)).map_err(|reason| TrainError::Config { field: "matryoshka_dims", reason })?;
        }
        let plain = MultipleNegativesRankingLoss { scale: cfg.scale, symmetric: cfg.symmetric, matryoshka };
        let cached = cfg.mini_batch_size.map(|m| CachedMultipleNegativesRankingLoss { loss: plain.clone(), mini_batch_size: m });
        let bar = progress_bar(self.progress, total_steps as u64, state.step as u64);
        let started = Instant::now();
        let mut pairs_seen = 0usize;
        let mut losses = Vec::new();

        'epochs: while state.step < total_steps {
            let batches = &plan[state.epoch];
            while state.batch_in_epoch < batches.len() {
                if state.step >= total_steps || self.stop_after.is_some_and(|s| state.step >= s) {
                    break 'epochs;
                }
                let step = state.step + 1; // 1-based, as logged
                let batch = PairBatch::from_pairs(batches[state.batch_in_epoch].iter().map(|&i| pairs[i]));
                let seed = step_seed(cfg.seed, state.step);
                // The scale is that of this step's backward pass; the scaler may change it below.
                let loss_scale = state.loss_scaler.as_ref().map(|s| s.scale);
                let result = match &cached {
                    Some(c) => c.backward_scaled(&encoder, &batch, seed, loss_scale),
                    None => plain.backward_scaled(&encoder, &batch, seed, loss_scale),
                };
                let (loss, mut grads) = result.map_err(|e| TrainError::Encode { step, source: Box::new(e) })?;
                if let Some(s) = loss_scale {
                    // Unscaled in f32 before clipping, as GradScaler's `unscale_`; an overflowed
                    // gradient stays infinite (or NaN) and shows in the norm.
                    grads = scale_grads(encoder.model(), grads, 1.0 / s as f64);
                }
                let (grads, norm) = match cfg.max_grad_norm {
                    Some(max) => clip_grad_norm(encoder.model(), grads, max),
                    None => {
                        let norm = grad_norm(encoder.model(), &grads);
                        (grads, norm)
                    }
                };
                // A non-finite gradient with a finite loss (an overflow) would poison the weights
                // and the next checkpoint: stop on either, before the update. Under f16 an
                // overflowed gradient is the loss scaler's to handle: the update is skipped.
                let overflow_is_skipped = state.loss_scaler.is_some() && loss.is_finite();
                if let Some((quantity, value)) = [("loss", loss as f64), ("gradient norm", norm)].into_iter().find(|(_, v)| !v.is_finite())
                    && !overflow_is_skipped
                {
                    bar.abandon_with_message(format!("{quantity} {value} at step {step}"));
                    return Err(TrainError::NonFinite { step, quantity, value, checkpoint: last_checkpoint });
                }
                let lr = schedule.lr(state.step);
                let apply = state.loss_scaler.as_mut().is_none_or(|s| s.update(norm.is_finite()));
                if apply {
                    let model = optim.step(lr, encoder.model().clone(), grads);
                    encoder.set_model(model);
                }
                state.step = step;
                state.batch_in_epoch += 1;
                losses.push(loss);
                pairs_seen += batch.len();

                let pairs_per_s = pairs_seen as f64 / started.elapsed().as_secs_f64().max(1e-9);
                let mut line = serde_json::json!({
                    "step": step, "epoch": state.epoch, "loss": loss, "lr": lr, "grad_norm": norm, "pairs_per_s": pairs_per_s,
                });
                if let Some(scaler) = &state.loss_scaler {
                    line["loss_scale"] = serde_json::json!(loss_scale);
                    line["skipped"] = serde_json::json!(!apply);
                    line["skipped_steps"] = serde_json::json!(scaler.skipped);
                    line["grad_norm"] = serde_json::json!(if norm.is_finite() { Some(norm) } else { None });
                }
                let last = step == total_steps || self.stop_after == Some(step);
                if let Some(every) = cfg.eval_every
                    && (step.is_multiple_of(every) || step == total_steps)
                    && let Some(validation) = self.validation.as_deref_mut()
                {
                    let metrics = validation
                        .validate(&encoder.for_inference())
                        .map_err(|source| TrainError::Validation { step, source })?;
                    for (k, v) in &metrics {
                        line[format!("valid_{k}")] = serde_json::json!(v);
                    }
                    if improves(&cfg.best_metric, &metrics, &state, step)? {
                        state.best = Some((cfg.best_metric.clone(), metrics[&cfg.best_metric], step));
                        checkpoint::save(&out.join("best"), encoder.model(), None, &state)?;
                    }
                }
                log.write(&line)?;
                bar.set_position(step as u64);
                bar.set_message(format!("loss {loss:.4} lr {lr:.2e} {pairs_per_s:.1} pairs/s"));

                if cfg.save_every.is_some_and(|every| step.is_multiple_of(every)) || last {
                    let dir = checkpoint::checkpoint_dir(&out, step);
                    checkpoint::save(&dir, encoder.model(), Some(&optim), &state)?;
                    last_checkpoint = Some(dir);
                }
            }
            state.epoch += 1;
            state.batch_in_epoch = 0;
        }
        // A stop between epochs or at a limit already saved; make sure the final state is on disk.
        if last_checkpoint.as_ref().and_then(|d| checkpoint::load_state(d).ok()).is_none_or(|s| s.step != state.step) && state.step > 0 {
            let dir = checkpoint::checkpoint_dir(&out, state.step);
            checkpoint::save(&dir, encoder.model(), Some(&optim), &state)?;
            last_checkpoint = Some(dir);
        }
        bar.finish_and_clear();
        Ok(TrainOutcome { encoder, steps: state.step, losses, best: state.best, last_checkpoint })
    }
}

/// Whether `metrics` beat the best so far on `metric` (an error if the metric is absent).
fn improves(metric: &str, metrics: &Metrics, state: &TrainState, step: usize) -> Result<bool, TrainError> {
    let Some(&value) = metrics.get(metric) else {
        let available = metrics.keys().cloned().collect::<Vec<_>>().join(", ");
        return Err(TrainError::MissingMetric { step, metric: metric.to_string(), available });
    };
    Ok(state.best.as_ref().is_none_or(|(_, best, _)| value > *best))
}

/// The dropout seed of a step: a fixed mix of the run seed and the step (SplitMix64's constant).
fn step_seed(seed: u64, step: usize) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(step as u64).rotate_left(17)
}

/// AdamW as `transformers`' Trainer sets it up: decay on matrices, none on 1-D parameters.
fn adamw<M: Module>(cfg: &ContrastiveConfig, model: &M) -> ModuleOptimizer {
    let base = || {
        AdamWConfig::new().with_beta_1(cfg.adam_beta1).with_beta_2(cfg.adam_beta2).with_epsilon(cfg.adam_epsilon)
    };
    let mut one_d = OneDimensional(Vec::new());
    model.visit(&mut one_d);
    base()
        .with_weight_decay(cfg.weight_decay as f32)
        .init()
        .with_group(ParamGroup::from_ids(one_d.0), base().with_weight_decay(0.0).build(), None)
}

struct OneDimensional(Vec<ParamId>);

impl ModuleVisitor for OneDimensional {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if D == 1 {
            self.0.push(param.id);
        }
    }
}

fn progress_bar(on: bool, total: u64, position: u64) -> indicatif::ProgressBar {
    if !on {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("train {bar:30} {pos}/{len} steps  {msg}  [{elapsed_precise} < {eta_precise}]")
            .expect("valid template"),
    );
    bar.set_position(position);
    bar
}

/// `loss.jsonl`, appended line by line (flushed each step). On resume, lines past the
/// checkpoint's step are dropped first: the resumed run writes them again, identically.
struct LossLog {
    path: PathBuf,
    file: std::fs::File,
}

impl LossLog {
    fn open(path: &Path, keep_through_step: usize) -> Result<Self, TrainError> {
        let err = |source| TrainError::Io { path: path.to_path_buf(), source };
        let kept: String = match std::fs::read_to_string(path) {
            Ok(text) => text
                .lines()
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .and_then(|v| v["step"].as_u64())
                        .is_some_and(|s| s as usize <= keep_through_step)
                })
                .map(|l| format!("{l}\n"))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(err(e)),
        };
        std::fs::write(path, kept).map_err(err)?;
        let file = std::fs::OpenOptions::new().append(true).open(path).map_err(err)?;
        Ok(Self { path: path.to_path_buf(), file })
    }

    fn write(&mut self, line: &serde_json::Value) -> Result<(), TrainError> {
        writeln!(self.file, "{line}")
            .and_then(|_| self.file.flush())
            .map_err(|source| TrainError::Io { path: self.path.clone(), source })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::train::encoder::HashedBagEncoder;
    use burn::tensor::Device;

    /// burn-flex keeps one random stream per process (`Device::seed` reseeds it for everyone), so
    /// tests whose dropout must replay exactly take turns.
    static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

    pub(crate) fn rng_turn() -> std::sync::MutexGuard<'static, ()> {
        RNG.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Test data standing in for a governed dataset (the crate's tests may implement the seal).
    pub(crate) struct TestPairs(pub Vec<(String, String, Vec<String>)>);

    impl sealed::Sealed for TestPairs {}

    impl TrainingPairs for TestPairs {
        fn pairs(&self) -> Vec<PairRef<'_>> {
            self.0.iter().map(|(q, p, n)| PairRef { query: q, positive: p, negatives: n }).collect()
        }
        fn audit(&self) -> serde_json::Value {
            serde_json::json!({ "test": true, "kept": self.0.len() })
        }
    }

    /// 24 pairs over 8 topics: a query shares one word with its positive.
    fn data() -> TestPairs {
        let topics = ["river", "harvest", "winter", "song", "market", "fishing", "school", "healing"];
        TestPairs(
            (0..24)
                .map(|i| {
                    let t = topics[i % 8];
                    (format!("where is the {t} {i}"), format!("notes on {t} number {i}"), if i % 3 == 0 { vec![format!("unrelated page {i}")] } else { vec![] })
                })
                .collect(),
        )
    }

    fn config(dir: &Path) -> ContrastiveConfig {
        ContrastiveConfig {
            learning_rate: 5e-2,
            batch_size: 6,
            epochs: 2,
            warmup_ratio: 0.2,
            save_every: Some(3),
            output_dir: dir.to_path_buf(),
            ..ContrastiveConfig::default()
        }
    }

    // No dropout here: burn-flex has one random stream per process, and other unit tests running on
    // parallel threads draw from it, so dropout masks would depend on test scheduling. Batch order and
    // initialisation use our own seeded RNGs and stay covered; dropout determinism holds in a
    // single-process run (the main job), not across concurrently running tests.
    fn encoder() -> HashedBagEncoder {
        HashedBagEncoder::new(128, 16, 8, 0.0, 7, &Device::flex())
    }

    fn values(enc: &HashedBagEncoder) -> Vec<f32> {
        enc.embedding.val().into_data().try_to_vec().unwrap()
    }

    /// Property: non-finite or out-of-range floats in any float option are refused by
    /// `validate`, naming the option (a TOML file bypasses the command line's parsers).
    #[test]
    fn numeric_garbage_in_float_options_is_refused_naming_the_option() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -1.0, -1e-9];
        for (i, v) in garbage.iter().copied().enumerate() {
            let base = || config(dir.path());
            let cases: Vec<(&str, ContrastiveConfig)> = vec![
                ("learning_rate", ContrastiveConfig { learning_rate: v, ..base() }),
                ("warmup_ratio", ContrastiveConfig { warmup_ratio: v, ..base() }),
                ("weight_decay", ContrastiveConfig { weight_decay: v, ..base() }),
                ("max_grad_norm", ContrastiveConfig { max_grad_norm: Some(v), ..base() }),
                ("scale", ContrastiveConfig { scale: v as f32, ..base() }),
                ("adam_epsilon", ContrastiveConfig { adam_epsilon: v as f32, ..base() }),
                ("adam_beta1", ContrastiveConfig { adam_beta1: v as f32, ..base() }),
                ("adam_beta2", ContrastiveConfig { adam_beta2: v as f32, ..base() }),
            ];
            for (field, cfg) in cases {
                let err = cfg.validate().map(|_| ()).unwrap_err().to_string();
                assert!(err.contains(field), "case {i}: {field} = {v}: {err}");
            }
        }
        config(dir.path()).validate().unwrap();
    }

    #[test]
    fn same_seed_same_losses_and_loss_goes_down() {
        let _turn = rng_turn();
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let a = ContrastiveTrainer::new(config(d1.path())).with_progress(false).fit(encoder(), &data(), None).unwrap();
        let b = ContrastiveTrainer::new(config(d2.path())).with_progress(false).fit(encoder(), &data(), None).unwrap();
        assert_eq!(a.steps, 8, "2 epochs × 4 batches of 6");
        assert_eq!(a.losses, b.losses, "same seed, same loss sequence (bit for bit)");
        assert_eq!(values(&a.encoder), values(&b.encoder));
        let first: f32 = a.losses[..2].iter().sum();
        let last: f32 = a.losses[6..].iter().sum();
        assert!(last < first, "loss should fall: {:?}", a.losses);
        let log = std::fs::read_to_string(d1.path().join("loss.jsonl")).unwrap();
        let lines: Vec<serde_json::Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 8);
        assert_eq!(lines[0]["lr"], 0.0, "transformers' warm-up: the first update has lr 0");
        assert_eq!(lines[7]["step"], 8);
        // A different seed gives a different run.
        let d3 = tempfile::tempdir().unwrap();
        let c = ContrastiveTrainer::new(ContrastiveConfig { seed: 1, ..config(d3.path()) }).with_progress(false).fit(encoder(), &data(), None).unwrap();
        assert_ne!(c.losses, a.losses);
    }

    #[test]
    fn resumed_run_ends_where_an_uninterrupted_one_does() {
        let _turn = rng_turn();
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let full = ContrastiveTrainer::new(config(d1.path())).with_progress(false).fit(encoder(), &data(), None).unwrap();
        let first = ContrastiveTrainer::new(config(d2.path())).with_progress(false).stop_after(5).fit(encoder(), &data(), None).unwrap();
        assert_eq!(first.steps, 5);
        let ckpt = checkpoint::latest(d2.path()).unwrap();
        assert!(ckpt.ends_with("step-00000005"), "{ckpt:?}");
        // Resume onto a differently initialised encoder: everything must come from the checkpoint.
        let fresh = HashedBagEncoder::new(128, 16, 8, 0.0, 1234, &Device::flex());
        let rest = ContrastiveTrainer::new(config(d2.path())).with_progress(false).fit(fresh, &data(), Some(&ckpt)).unwrap();
        assert_eq!(rest.steps, 8);
        assert_eq!([first.losses, rest.losses].concat(), full.losses);
        assert_eq!(values(&rest.encoder), values(&full.encoder));
        // The resumed log equals the uninterrupted one (throughput aside).
        let read = |d: &Path| -> Vec<serde_json::Value> {
            let text = std::fs::read_to_string(d.join("loss.jsonl")).unwrap();
            text.lines()
                .map(|l| {
                    let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                    v.as_object_mut().unwrap().remove("pairs_per_s");
                    v
                })
                .collect()
        };
        assert_eq!(read(d2.path()), read(d1.path()));
    }

    /// Wraps an encoder and returns NaN vectors for any text containing "poison".
    #[derive(Clone, Debug)]
    struct Poisoned(HashedBagEncoder);

    impl TrainableEncoder for Poisoned {
        type Model = HashedBagEncoder;
        type Error = std::convert::Infallible;
        fn model(&self) -> &HashedBagEncoder {
            &self.0
        }
        fn set_model(&mut self, model: HashedBagEncoder) {
            self.0 = model;
        }
        fn encode(&self, texts: &[&str]) -> Result<Tensor<2>, Self::Error> {
            let v = self.0.encode(texts)?;
            Ok(if texts.iter().any(|t| t.contains("poison")) { v.mul_scalar(f32::NAN) } else { v })
        }
    }

    #[test]
    fn nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint() {
        let _turn = rng_turn();
        let dir = tempfile::tempdir().unwrap();
        // Poison the positive of a pair in the third batch (batches do not depend on the texts
        // here: every text is unique either way), so steps 1 and 2 succeed and step 3 fails.
        let mut d = data();
        let sampler = NoDuplicatesBatchSampler { batch_size: 6, drop_last: false, seed: 42 };
        let victim = sampler.batches(&d.pairs(), 0)[2][0];
        d.0[victim].1 = "poison".into();
        let poisoned_step = 3;
        let cfg = ContrastiveConfig { save_every: Some(1), ..config(dir.path()) };
        let err = ContrastiveTrainer::new(cfg).with_progress(false).fit(Poisoned(encoder()), &d, None).unwrap_err();
        let TrainError::NonFinite { step, checkpoint, quantity, .. } = &err else { panic!("{err}") };
        assert_eq!((*step, *quantity), (poisoned_step, "loss"));
        assert!(err.to_string().contains(&format!("step {poisoned_step}")), "{err}");
        let ckpt = checkpoint.clone().expect("checkpoints of steps 1 and 2 were written");
        assert_eq!(checkpoint::latest(dir.path()).as_ref(), Some(&ckpt), "no checkpoint after the bad step");
        assert_eq!(checkpoint::load_state(&ckpt).unwrap().step, 2);
        let model = checkpoint::load_model(&ckpt, encoder()).unwrap();
        assert!(values(&model).iter().all(|v| v.is_finite()));
        // The loss log holds the two good steps only.
        assert_eq!(std::fs::read_to_string(dir.path().join("loss.jsonl")).unwrap().lines().count(), 2);
    }

    #[test]
    fn gradcache_run_matches_the_plain_run() {
        // Dropout off: the cached and plain losses then see identical embeddings.
        let enc = || HashedBagEncoder::new(128, 16, 8, 0.0, 7, &Device::flex());
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let plain = ContrastiveTrainer::new(config(d1.path())).with_progress(false).fit(enc(), &data(), None).unwrap();
        let cfg = ContrastiveConfig { mini_batch_size: Some(4), ..config(d2.path()) };
        let cached = ContrastiveTrainer::new(cfg).with_progress(false).fit(enc(), &data(), None).unwrap();
        for (a, b) in plain.losses.iter().zip(&cached.losses) {
            assert!((a - b).abs() < 1e-4, "{:?} vs {:?}", plain.losses, cached.losses);
        }
    }

    #[test]
    fn validation_keeps_the_best_and_logs_metrics() {
        let _turn = rng_turn();
        let dir = tempfile::tempdir().unwrap();
        let mut calls = 0;
        // A scripted metric that peaks at the second evaluation (step 4).
        let mut validation = |_: &HashedBagEncoder| -> Result<Metrics, crate::train::validation::ValidationError> {
            calls += 1;
            Ok(Metrics::from([("ndcg_cut_10".to_string(), [0.2, 0.9, 0.5, 0.4][calls - 1])]))
        };
        let cfg = ContrastiveConfig { eval_every: Some(2), ..config(dir.path()) };
        let out = ContrastiveTrainer::new(cfg).with_validation(&mut validation).with_progress(false).fit(encoder(), &data(), None).unwrap();
        assert_eq!(out.best, Some(("ndcg_cut_10".to_string(), 0.9, 4)));
        assert_eq!(checkpoint::load_state(&dir.path().join("best")).unwrap().step, 4);
        let log = std::fs::read_to_string(dir.path().join("loss.jsonl")).unwrap();
        let with_valid = log.lines().filter(|l| l.contains("valid_ndcg_cut_10")).count();
        assert_eq!(with_valid, 4);
        // Asking for a metric the validation does not give is an error naming both.
        let dir = tempfile::tempdir().unwrap();
        let mut v = |_: &HashedBagEncoder| -> Result<Metrics, crate::train::validation::ValidationError> { Ok(Metrics::from([("P_5".to_string(), 0.1)])) };
        let cfg = ContrastiveConfig { eval_every: Some(2), best_metric: "recip_rank".into(), ..config(dir.path()) };
        let err = ContrastiveTrainer::new(cfg).with_validation(&mut v).with_progress(false).fit(encoder(), &data(), None).unwrap_err().to_string();
        assert!(err.contains("recip_rank") && err.contains("P_5"), "{err}");
    }

    #[test]
    fn lora_run_trains_only_the_adapter() {
        let _turn = rng_turn();
        let dir = tempfile::tempdir().unwrap();
        let before = values(&encoder());
        let cfg = ContrastiveConfig { lora: Some(LoraConfig { rank: 4, alpha: 8.0, ..LoraConfig::default() }), ..config(dir.path()) };
        let out = ContrastiveTrainer::new(cfg).with_progress(false).fit(encoder(), &data(), None).unwrap();
        assert_eq!(values(&out.encoder), before, "embedding table frozen");
        let crate::lora::AdaptableLinear::Lora(l) = &out.encoder.proj else { panic!("proj not adapted") };
        assert!(l.lora_b.val().into_data().try_to_vec::<f32>().unwrap().iter().any(|v| *v != 0.0), "B trained");
    }

    /// With zero gradients AdamW's update is 0/(0+eps) = 0, so only decoupled weight decay moves
    /// a parameter: matrices shrink by (1 − lr·wd), 1-D parameters (the bias) must not move.
    #[test]
    fn weight_decay_spares_one_dimensional_parameters() {
        let device = Device::flex().autodiff();
        let enc = HashedBagEncoder::new(8, 4, 3, 0.0, 1, &device);
        let cfg = ContrastiveConfig { weight_decay: 0.5, ..ContrastiveConfig::default() };
        let mut optim = adamw(&cfg, &enc);
        let mut grads = burn::optim::GradientsParams::new();
        grads.register(enc.embedding.id, enc.embedding.val().zeros_like().inner());
        let crate::lora::AdaptableLinear::Base(proj) = &enc.proj else { unreachable!() };
        let bias = proj.bias.as_ref().unwrap();
        grads.register(proj.weight.id, proj.weight.val().zeros_like().inner());
        grads.register(bias.id, bias.val().zeros_like().inner());
        let (w0, b0) = (proj.weight.val().into_data().try_to_vec::<f32>().unwrap(), bias.val().into_data().try_to_vec::<f32>().unwrap());
        let after = optim.step(0.1, enc.clone(), grads);
        let crate::lora::AdaptableLinear::Base(p1) = &after.proj else { unreachable!() };
        let w1 = p1.weight.val().into_data().try_to_vec::<f32>().unwrap();
        for (a, b) in w1.iter().zip(&w0) {
            assert!((a - b * 0.95).abs() < 1e-7, "{a} vs {b}·0.95");
        }
        assert_eq!(p1.bias.as_ref().unwrap().val().into_data().try_to_vec::<f32>().unwrap(), b0);
    }

    /// The tiny random BERT (word-level tokenizer over `data()`'s words), dropout off.
    fn tiny_bert() -> crate::model::bert::SentenceEncoder {
        let mut words: Vec<String> = ["where", "is", "the", "notes", "on", "number", "unrelated", "page"].map(String::from).to_vec();
        words.extend(["river", "harvest", "winter", "song", "market", "fishing", "school", "healing"].map(String::from));
        words.extend((0..24).map(|i| i.to_string()));
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        let mut e = crate::model::bert::SentenceEncoder::random_tiny(&words, 5, &Device::flex());
        e.model = e.model.without_dropout();
        e
    }

    fn log_lines(dir: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.join("loss.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    /// `dtype = "f16"` follows the f32 run over 50 steps of the tiny BERT, with LoRA (lr 5e-3)
    /// and in full fine-tuning (autocast: f32 master weights, lr 1e-3; plain and GradCache):
    /// max |Δloss| within 0.002 (measured on a 2-core Intel Xeon: 0.00020 LoRA, 0.00009 full,
    /// 0.00010 full with GradCache, the losses falling from 1.52 to 0.02 and below; on
    /// all-MiniLM-L6-v2 see `BertLayer::forward_in`). No step is skipped at a scale of 1024,
    /// every line carries the scale, the first step's unscaled gradient norm is the f32 one, and
    /// the trained weights come back as f32 where they train. At 2^40 the first gradients
    /// overflow f16: those steps are skipped (scale halved each time) and the run goes on
    /// instead of stopping.
    #[test]
    fn f16_follows_f32_over_50_steps_with_lora_and_full_fine_tuning() {
        let _turn = rng_turn();
        let lora = LoraConfig { rank: 4, alpha: 8.0, ..LoraConfig::default() };
        for (name, lora, lr, mini_batch_size) in [("lora", Some(lora), 5e-3, None), ("full", None, 1e-3, None), ("full, GradCache", None, 1e-3, Some(4))] {
            let run = |dtype: Dtype, init_loss_scale: f64| {
                let d = tempfile::tempdir().unwrap();
                let cfg = ContrastiveConfig { max_steps: Some(50), learning_rate: lr, save_every: None, lora: lora.clone(), mini_batch_size, dtype, init_loss_scale, ..config(d.path()) };
                let out = ContrastiveTrainer::new(cfg).with_progress(false).fit(tiny_bert(), &data(), None).unwrap();
                (out, log_lines(d.path()), d)
            };
            let (f32_run, f32_log, _d1) = run(Dtype::F32, 1024.0);
            assert!(f32_log.iter().all(|l| l.get("loss_scale").is_none()), "f32 runs log no scale");
            let (f16_run, f16_log, _d2) = run(Dtype::F16, 1024.0);
            assert_eq!((f32_run.losses.len(), f16_run.losses.len()), (50, 50));
            let worst = f32_run.losses.iter().zip(&f16_run.losses).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            eprintln!("{name}: f16 vs f32 over 50 steps: max |Δloss| {worst:.5} (losses {:.4} → {:.4})", f32_run.losses[0], f32_run.losses[49]);
            assert!(worst <= 0.002 && worst > 0.0, "{name}: max |Δloss| {worst}: {:?} vs {:?}", f32_run.losses, f16_run.losses);
            // Same weights at step 1: the unscaled gradient norm is the f32 one (AdamW alone would
            // hide a gradient left scaled: its update does not depend on the gradient's scale).
            let norm = |log: &[serde_json::Value]| log[0]["grad_norm"].as_f64().unwrap();
            assert!((norm(&f16_log) / norm(&f32_log) - 1.0).abs() < 1e-2, "{name}: step 1 gradient norm {} vs {}", norm(&f16_log), norm(&f32_log));
            assert!(f32_run.losses[49] < f32_run.losses[0] - 0.1, "{name}: the loss must move for the comparison to mean anything: {:?}", f32_run.losses);
            assert!(f16_log.iter().all(|l| l["loss_scale"].as_f64() == Some(1024.0) && l["skipped"] == false && l["skipped_steps"] == 0), "{}", f16_log[0]);
            let model = f16_run.encoder.model();
            assert_eq!(model.dtype, Dtype::F16, "{name}: still f16 after 50 optimizer steps");
            let crate::lora::AdaptableLinear::Base(key) = &model.encoder.layers[1].attention.key else { panic!("key not adapted") };
            let expect = if name == "lora" { burn::tensor::DType::F16 } else { burn::tensor::DType::F32 };
            assert_eq!(key.weight.val().dtype(), expect, "{name}: frozen base in f16, trained weights f32");
            assert_eq!(model.encoder.layers[1].output.layer_norm.gamma.val().dtype(), burn::tensor::DType::F32);

            let (skipping, log, _d3) = run(Dtype::F16, 2f64.powi(40));
            let skipped = log.iter().take_while(|l| l["skipped"] == true).count();
            eprintln!("{name}: f16 at 2^40: {skipped} steps skipped, then scale {}", log[skipped]["loss_scale"]);
            assert!(skipped >= 1 && skipped < 50, "{name}: {skipped}");
            assert_eq!((log[0]["loss_scale"].as_f64(), log[0]["skipped_steps"].as_u64(), log[0]["grad_norm"].is_null()), (Some(2f64.powi(40)), Some(1), true), "{}", log[0]);
            assert_eq!(log[1]["loss_scale"].as_f64(), Some(2f64.powi(39)), "halved after an overflow");
            // Had an overflowed gradient reached AdamW, the weights and every later loss would be NaN.
            assert!(skipping.losses.iter().all(|l| l.is_finite()), "{:?}", skipping.losses);
        }
    }

    /// An f16 run interrupted and resumed from its checkpoint (f16 frozen base, f32 adapters,
    /// the loss scaler in state.json) ends where the uninterrupted one does, bit for bit.
    #[test]
    fn f16_run_resumes_bit_for_bit() {
        let _turn = rng_turn();
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let lora = LoraConfig { rank: 4, alpha: 8.0, ..LoraConfig::default() };
        // 2^26 overflows for the first steps: the resumed run must continue with the halved scale.
        let cfg = |d: &Path| ContrastiveConfig { max_steps: Some(12), learning_rate: 5e-3, lora: Some(lora.clone()), dtype: Dtype::F16, init_loss_scale: 2f64.powi(26), ..config(d) };
        let full = ContrastiveTrainer::new(cfg(d1.path())).with_progress(false).fit(tiny_bert(), &data(), None).unwrap();
        let first = ContrastiveTrainer::new(cfg(d2.path())).with_progress(false).stop_after(6).fit(tiny_bert(), &data(), None).unwrap();
        let ckpt = checkpoint::latest(d2.path()).unwrap();
        let scaler = checkpoint::load_state(&ckpt).unwrap().loss_scaler.expect("the scaler is saved");
        let rest = ContrastiveTrainer::new(cfg(d2.path())).with_progress(false).fit(tiny_bert(), &data(), Some(&ckpt)).unwrap();
        assert_eq!([first.losses, rest.losses].concat(), full.losses);
        let strip = |mut v: Vec<serde_json::Value>| {
            v.iter_mut().for_each(|l| drop(l.as_object_mut().unwrap().remove("pairs_per_s")));
            v
        };
        let (a, b) = (strip(log_lines(d1.path())), strip(log_lines(d2.path())));
        assert_eq!(a, b);
        assert!(a.iter().any(|l| l["skipped"] == true), "some steps overflowed: {:?}", a[0]);
        assert_eq!(a[6]["loss_scale"].as_f64(), Some(scaler.scale as f64), "step 7 runs at the saved scale");
    }

    #[test]
    fn bad_config_names_the_field_and_file() {
        let err = ContrastiveConfig { batch_size: 1, ..ContrastiveConfig::default() }.validate().unwrap_err().to_string();
        assert!(err.contains("batch_size"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("embed.toml");
        std::fs::write(&path, "learning_rate = 1e-4\nbatch_sise = 8\n").unwrap();
        let err = ContrastiveConfig::from_toml_file(&path).unwrap_err().to_string();
        assert!(err.contains("embed.toml") && err.contains("batch_sise") && err.contains("line 2"), "{err}");
    }
}

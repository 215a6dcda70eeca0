//! The optimizer loop of every decoder LoRA trainer: `tunelab train lora` ([`super::sft`]) and
//! `tunelab train rerank` ([`super::rerank`]) differ only in how a batch becomes a loss, so they
//! share this one loop and a trainer supplies an [`Objective`].
//!
//! Per iteration (one batch): the objective's loss; a NaN or infinite loss stops the run before
//! the backward pass, naming the iteration and the last adapter saved. Gradients are averaged over
//! `grad_accumulation_steps` iterations, then clipped to `max_grad_norm` (the global norm is
//! logged either way; a non-finite norm stops the run before the update) and applied by AdamW at
//! the schedule's learning rate. Dropout masks are drawn from `seed` and the iteration. Every
//! iteration appends a `loss.jsonl` line (`iteration`, `loss`, the objective's fields, `<count>_per_s`
//! over training time only, `forward_ms` / `backward_ms` / `update_ms`, `lr` and `grad_norm` on
//! update iterations). Every `save_every` iterations and at the last one: the adapter in `out`,
//! optionally MLX-LM's numbered copy, and a resume checkpoint (adapter, AdamW moments, loop state).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::optim::{GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::tensor::Tensor;

use super::checkpoint::{self, TrainState};
use super::schedule::{LrSchedule, clip_grad_norm, grad_norm};
use super::sft::{LossLog, SftError, iteration_seed, progress_bar};
use crate::export::mlx;
use crate::model::decoder::Decoder;

/// One iteration's loss and what its `loss.jsonl` line reports.
pub(crate) struct StepLoss {
    /// The mean loss of the batch, `[1]`, on the model's (autodiff) device.
    pub loss: Tensor<1>,
    /// Counters of the batch (`tokens`, `pairs`, ...): logged as they are, and their rate over
    /// training time as `<name>_per_s`.
    pub counts: Vec<(&'static str, usize)>,
    /// The gradients of `loss / grad_accumulation_steps`, when the objective computed them itself
    /// (`--grad-checkpoint`, [`super::block_checkpoint`]): `loss` is then a value without a graph
    /// and the loop skips its backward pass.
    pub grads: Option<GradientsParams>,
}

/// What a trainer supplies to [`run`].
pub(crate) trait Objective {
    /// The trainer's error type; the loop's own errors ([`SftError`]) convert into it.
    type Error: From<SftError>;

    /// The loss of the batch at position `pos` of `epoch`'s order.
    fn loss(&mut self, model: &Decoder, epoch: usize, pos: usize) -> Result<StepLoss, Self::Error>;

    /// After iteration `it` (its update done, before its line is written): e.g. validation,
    /// adding `val_loss` to `line`.
    fn after_step(
        &mut self,
        _model: &Decoder,
        _it: usize,
        _line: &mut serde_json::Value,
    ) -> Result<(), Self::Error> {
        Ok(())
    }

    /// The progress bar's message after iteration `line["iteration"]`.
    fn message(&self, line: &serde_json::Value) -> String {
        format!("loss {:.3}", line["loss"].as_f64().unwrap_or(f64::NAN))
    }

    /// Write the adapter of `model` after `iteration` iterations into `dir`.
    fn save(&self, model: &Decoder, dir: &Path, iteration: usize) -> Result<(), Self::Error>;
}

/// The loop's settings (the trainer's config, resolved).
pub(crate) struct LoopConfig {
    /// The run folder: adapters, checkpoints.
    pub out: PathBuf,
    /// Iterations of the whole run, and where this call stops (≤ `iters`).
    pub iters: usize,
    pub stop: usize,
    /// Batches per epoch.
    pub n_batches: usize,
    pub grad_accumulation_steps: usize,
    pub seed: u64,
    /// Reseed the device's random stream per iteration (LoRA dropout is on).
    pub dropout: bool,
    pub max_grad_norm: Option<f64>,
    pub steps_per_report: usize,
    pub save_every: usize,
    pub schedule: LrSchedule,
    /// Also keep `{iteration:07}_adapters.safetensors` at each save, as MLX-LM does.
    pub numbered_copies: bool,
    pub progress: bool,
}

/// What the loop leaves.
pub(crate) struct LoopOutcome {
    pub model: Decoder,
    /// The loss of each iteration run by this call.
    pub losses: Vec<f32>,
    /// Seconds of training work (forward, backward, update; no validation or saving).
    pub train_secs: f64,
    /// Each counter's total over this call.
    pub totals: BTreeMap<&'static str, usize>,
    /// Whether this call saved the adapter at least once.
    pub saved: bool,
}

/// Train `model` from `state` (updated as it goes) until `cfg.stop`; `last_adapter` is the
/// adapter file saved before this call (a resumed checkpoint's), named if the run stops on a NaN.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run<O: Objective>(
    cfg: &LoopConfig,
    mut model: Decoder,
    mut optim: ModuleOptimizer,
    state: &mut TrainState,
    mut last_adapter: Option<PathBuf>,
    log: &mut LossLog,
    objective: &mut O,
) -> Result<LoopOutcome, O::Error> {
    let device = model.embed_tokens.val().device();
    let acc = cfg.grad_accumulation_steps;
    let bar = progress_bar(cfg.progress, cfg.iters as u64, state.step as u64);
    let mut accumulator = GradientsAccumulator::new();
    let (mut losses, mut train_secs, mut saved) = (Vec::new(), 0f64, false);
    let mut totals: BTreeMap<&'static str, usize> = BTreeMap::new();
    while state.step < cfg.stop {
        let it = state.step + 1;
        let (epoch, pos) = ((it - 1) / cfg.n_batches, (it - 1) % cfg.n_batches);
        if cfg.dropout {
            // Dropout masks come from the device's (process-wide) random stream; reseeding it
            // only when drawn from leaves other users of the stream alone.
            device.seed(iteration_seed(cfg.seed, it));
        }
        let t0 = Instant::now();
        let step = objective.loss(&model, epoch, pos)?;
        let loss_value = step.loss.clone().into_scalar::<f32>();
        let forward_ms = t0.elapsed().as_secs_f64() * 1e3;
        if !loss_value.is_finite() {
            bar.abandon_with_message(format!("loss {loss_value} at iteration {it}"));
            return Err(SftError::NonFinite {
                iteration: it,
                quantity: "loss",
                value: loss_value as f64,
                last_adapter,
            }
            .into());
        }
        let t1 = Instant::now();
        let grads = match step.grads {
            Some(grads) => grads,
            None => GradientsParams::from_grads(step.loss.div_scalar(acc as f32).backward(), &model),
        };
        accumulator.accumulate(&model, grads);
        let backward_ms = t1.elapsed().as_secs_f64() * 1e3;
        let mut line = serde_json::json!({ "iteration": it, "loss": loss_value, "forward_ms": forward_ms, "backward_ms": backward_ms });
        for &(name, n) in &step.counts {
            *totals.entry(name).or_default() += n;
            line[name] = serde_json::json!(n);
        }
        if it.is_multiple_of(acc) {
            let grads = accumulator.grads();
            let (grads, norm) = match cfg.max_grad_norm {
                Some(max) => clip_grad_norm(&model, grads, max),
                None => {
                    let n = grad_norm(&model, &grads);
                    (grads, n)
                }
            };
            if !norm.is_finite() {
                bar.abandon_with_message(format!("gradient norm {norm} at iteration {it}"));
                return Err(SftError::NonFinite {
                    iteration: it,
                    quantity: "gradient norm",
                    value: norm,
                    last_adapter,
                }
                .into());
            }
            let lr = cfg.schedule.lr(it / acc - 1);
            model = optim.step(lr, model, grads);
            line["lr"] = serde_json::json!(lr);
            line["grad_norm"] = serde_json::json!(norm);
        }
        line["update_ms"] = serde_json::json!(t1.elapsed().as_secs_f64() * 1e3 - backward_ms);
        if let Some(peak) = super::memory::peak_rss() {
            // The process's peak so far (Linux): what a step costs, before any saving.
            line["peak_rss_mib"] = serde_json::json!(peak >> 20);
        }
        // Throughput over training work only (validation and saving excluded, as MLX-LM).
        train_secs += t0.elapsed().as_secs_f64();
        for (name, total) in &totals {
            line[format!("{name}_per_s")] = serde_json::json!(*total as f64 / train_secs.max(1e-9));
        }
        state.step = it;
        (state.epoch, state.batch_in_epoch) = (epoch, pos + 1);
        losses.push(loss_value);
        objective.after_step(&model, it, &mut line)?;
        log.write(&line)?;
        bar.set_position(it as u64);
        if it.is_multiple_of(cfg.steps_per_report) || it == cfg.stop {
            bar.set_message(objective.message(&line));
        }
        if it.is_multiple_of(cfg.save_every) || it == cfg.stop {
            objective.save(&model, &cfg.out, it)?;
            if cfg.numbered_copies {
                let numbered = cfg.out.join(format!("{it:07}_adapters.safetensors"));
                std::fs::copy(cfg.out.join(mlx::WEIGHTS_FILE), &numbered).map_err(|source| {
                    SftError::Io {
                        path: numbered.clone(),
                        source,
                    }
                })?;
            }
            let ckpt = checkpoint::checkpoint_dir(&cfg.out, it);
            objective.save(&model, &ckpt, it)?;
            // Only the optimizer and loop state: the adapter is the checkpoint's model.
            checkpoint::save_optimizer_and_state(&ckpt, &optim, state).map_err(SftError::from)?;
            last_adapter = Some(cfg.out.join(mlx::WEIGHTS_FILE));
            saved = true;
        }
    }
    bar.finish_and_clear();
    let _ = last_adapter;
    Ok(LoopOutcome {
        model,
        losses,
        train_secs,
        totals,
        saved,
    })
}

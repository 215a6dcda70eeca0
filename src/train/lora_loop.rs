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
//!
//! Under `--dtype f16` (`state.loss_scaler` set, [`super::loss_scale`]) the loss is multiplied by
//! the scale before the backward pass and the gradients divided by it before clipping; an update
//! whose gradients are not finite is skipped (the scale halves) instead of stopping the run, and
//! update lines carry `loss_scale` (the scale of that update's backward passes), `skipped` and
//! `skipped_steps` (updates skipped so far).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::optim::{GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::tensor::Tensor;

use super::checkpoint::{self, TrainState};
use super::schedule::{LrSchedule, clip_grad_norm, grad_norm, scale_grads};
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
    /// The gradients of `loss_scale × loss / grad_accumulation_steps`, when the objective computed them itself
    /// (`--grad-checkpoint`, [`super::block_checkpoint`]): `loss` is then a value without a graph
    /// and the loop skips its backward pass.
    pub grads: Option<GradientsParams>,
}

/// What a trainer supplies to [`run`].
pub(crate) trait Objective {
    /// The trainer's error type; the loop's own errors ([`SftError`]) convert into it.
    type Error: From<SftError>;

    /// The loss of the batch at position `pos` of `epoch`'s order. `loss_scale`: the factor an
    /// objective that runs its own backward pass ([`StepLoss::grads`]) multiplies the loss by
    /// (besides `1 / grad_accumulation_steps`): the loss scale under `--dtype f16`, else 1.
    fn loss(&mut self, model: &Decoder, epoch: usize, pos: usize, loss_scale: f32) -> Result<StepLoss, Self::Error>;

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
        // The scale is fixed over an accumulation window: it changes only at an update.
        let loss_scale = state.loss_scaler.as_ref().map(|s| s.scale);
        let step = objective.loss(&model, epoch, pos, loss_scale.unwrap_or(1.0))?;
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
            None => {
                let loss = step.loss.div_scalar(acc as f32);
                // Without a scaler (f32) the loss is back-propagated exactly as before.
                let loss = match loss_scale {
                    Some(s) => loss.mul_scalar(s),
                    None => loss,
                };
                GradientsParams::from_grads(loss.backward(), &model)
            }
        };
        accumulator.accumulate(&model, grads);
        let backward_ms = t1.elapsed().as_secs_f64() * 1e3;
        let mut line = serde_json::json!({ "iteration": it, "loss": loss_value, "forward_ms": forward_ms, "backward_ms": backward_ms });
        for &(name, n) in &step.counts {
            *totals.entry(name).or_default() += n;
            line[name] = serde_json::json!(n);
        }
        if it.is_multiple_of(acc) {
            let mut grads = accumulator.grads();
            if let Some(s) = loss_scale {
                // Unscaled in f32 before clipping, as GradScaler's `unscale_`; an overflowed
                // gradient stays infinite (or NaN) and shows in the norm.
                grads = scale_grads(&model, grads, 1.0 / s as f64);
            }
            let (grads, norm) = match cfg.max_grad_norm {
                Some(max) => clip_grad_norm(&model, grads, max),
                None => {
                    let n = grad_norm(&model, &grads);
                    (grads, n)
                }
            };
            if let Some(scaler) = state.loss_scaler.as_mut() {
                let apply = scaler.update(norm.is_finite());
                line["loss_scale"] = serde_json::json!(loss_scale);
                line["skipped"] = serde_json::json!(!apply);
                line["skipped_steps"] = serde_json::json!(scaler.skipped);
                if apply {
                    let lr = cfg.schedule.lr(it / acc - 1);
                    model = optim.step(lr, model, grads);
                    line["lr"] = serde_json::json!(lr);
                }
                line["grad_norm"] = serde_json::json!(if norm.is_finite() { Some(norm) } else { None });
            } else if !norm.is_finite() {
                bar.abandon_with_message(format!("gradient norm {norm} at iteration {it}"));
                return Err(SftError::NonFinite {
                    iteration: it,
                    quantity: "gradient norm",
                    value: norm,
                    last_adapter,
                }
                .into());
            } else {
                let lr = cfg.schedule.lr(it / acc - 1);
                model = optim.step(lr, model, grads);
                line["lr"] = serde_json::json!(lr);
                line["grad_norm"] = serde_json::json!(norm);
            }
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

#[cfg(test)]
mod tests {
    use burn::module::Module;
    use burn::optim::AdamWConfig;
    use burn::tensor::{DType, Device};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::lora::{AdaptableLinear, LoraConfig};
    use crate::model::decoder::{DecoderConfig, Dtype};
    use crate::train::loss_scale::LossScaler;
    use crate::train::schedule::ScheduleKind;
    use crate::train::sft::batch_loss;
    use crate::train::sft_data::Batch;

    /// A fixed batch's loss; at iteration `poison`, the objective runs its own backward pass
    /// (as `--grad-checkpoint` does, scaled by the loop's `loss_scale`) and makes one gradient
    /// infinite, as an f16 overflow would. Records each iteration's scale and first `B` factor.
    struct Poisoned {
        batch: Batch,
        device: Device,
        poison: usize,
        it: usize,
        scales: Vec<f32>,
        b_after: Vec<Vec<f32>>,
    }

    fn first_b(model: &Decoder) -> &crate::lora::LoraLinear {
        match &model.layers[0].self_attn.q_proj {
            AdaptableLinear::Lora(l) => l,
            _ => unreachable!("adapted"),
        }
    }

    impl Objective for Poisoned {
        type Error = SftError;
        fn loss(&mut self, model: &Decoder, _epoch: usize, _pos: usize, loss_scale: f32) -> Result<StepLoss, SftError> {
            self.it += 1;
            self.scales.push(loss_scale);
            let loss = batch_loss(model, &self.batch, &self.device);
            if self.it != self.poison {
                return Ok(StepLoss { loss, counts: vec![], grads: None });
            }
            let mut grads = GradientsParams::from_grads(loss.clone().mul_scalar(loss_scale).backward(), model);
            let id = first_b(model).lora_b.id;
            let g = grads.remove::<2>(id).expect("B has a gradient");
            grads.register(id, g.add_scalar(f32::INFINITY));
            Ok(StepLoss { loss: loss.detach(), counts: vec![], grads: Some(grads) })
        }
        fn after_step(&mut self, model: &Decoder, _it: usize, _line: &mut serde_json::Value) -> Result<(), SftError> {
            self.b_after.push(first_b(model).lora_b.val().into_data().try_to_vec::<f32>().unwrap());
            Ok(())
        }
        fn save(&self, _model: &Decoder, _dir: &Path, _iteration: usize) -> Result<(), SftError> {
            Ok(())
        }
    }

    /// GradScaler's contract inside the loop, on a tiny f16 model: an iteration whose gradient
    /// is infinite is skipped (the adapter unchanged, no error), the scale halves, `loss.jsonl`
    /// records it, and after `growth_interval` good updates the scale doubles again.
    #[test]
    fn overflow_skips_the_update_and_halves_the_scale_then_it_grows() {
        let device = Device::flex().autodiff();
        let lora = LoraConfig { rank: 4, alpha: 8.0, ..LoraConfig::default() };
        let model = Decoder::random(&DecoderConfig::tiny_llama(), &device, 2).with_lora(&lora, &mut ChaCha8Rng::seed_from_u64(0)).unwrap().train().with_frozen_dtype(Dtype::F16);
        assert_eq!(model.activation_dtype(), DType::F16);
        let (rows, cols) = (2, 8);
        let inputs: Vec<i64> = (0..rows * cols).map(|i| (i * 11 % 128) as i64).collect();
        let targets: Vec<i64> = inputs.iter().map(|t| (t + 1) % 128).collect();
        let batch = Batch { rows, cols, inputs, targets, mask: vec![1.0; rows * cols], ntoks: rows * cols, seq_tokens: rows * cols };
        let dir = tempfile::tempdir().unwrap();
        let cfg = LoopConfig {
            out: dir.path().to_path_buf(),
            iters: 6,
            stop: 6,
            n_batches: 6,
            grad_accumulation_steps: 1,
            seed: 0,
            dropout: false,
            max_grad_norm: Some(1.0),
            steps_per_report: 1,
            save_every: 100,
            schedule: LrSchedule { base_lr: 1e-2, warmup_steps: 0, total_steps: 6, kind: ScheduleKind::Constant },
            numbered_copies: false,
            progress: false,
        };
        let mut state = TrainState { step: 0, epoch: 0, batch_in_epoch: 0, seed: 0, best: None, loss_scaler: Some(LossScaler { growth_interval: 2, ..LossScaler::default() }) };
        let mut log = LossLog::open(&dir.path().join("loss.jsonl"), 0).unwrap();
        let mut objective = Poisoned { batch, device, poison: 2, it: 0, scales: vec![], b_after: vec![] };
        let optim: ModuleOptimizer = AdamWConfig::new().init();
        run(&cfg, model, optim, &mut state, None, &mut log, &mut objective).expect("an overflow is skipped, not an error");
        // 2^16; halved by the overflow at 2; doubled after the good updates 3 and 4; again after 5 and 6.
        assert_eq!(objective.scales, vec![65_536.0, 65_536.0, 32_768.0, 32_768.0, 65_536.0, 65_536.0]);
        assert_eq!(state.loss_scaler.as_ref().map(|s| (s.scale, s.skipped)), Some((131_072.0, 1)));
        let b = &objective.b_after;
        assert_ne!(b[0], vec![0.0; b[0].len()], "iteration 1 updated B");
        assert_eq!(b[1], b[0], "iteration 2 (infinite gradient) left the adapter as it was");
        assert_ne!(b[2], b[1], "iteration 3 updates again");
        assert!(b.iter().flatten().all(|v| v.is_finite()));
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(dir.path().join("loss.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!((lines[1]["skipped"].as_bool(), lines[1]["loss_scale"].as_f64(), lines[1]["skipped_steps"].as_u64()), (Some(true), Some(65_536.0), Some(1)));
        assert!(lines[1].get("lr").is_none(), "no update, no learning rate");
        assert_eq!((lines[2]["skipped"].as_bool(), lines[2]["loss_scale"].as_f64(), lines[2]["skipped_steps"].as_u64()), (Some(false), Some(32_768.0), Some(1)));
    }
}

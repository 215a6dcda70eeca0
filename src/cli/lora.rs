//! `tunelab train lora`, `generate`, `export adapter`, `fuse`: decoder LoRA from the command line, with
//! MLX-LM's option names (`mlx_lm.lora`, `mlx_lm.generate`, `mlx_lm.fuse`).
//!
//! `tunelab train lora [CONFIG.toml] [--flags]`: every option of [`SftConfig`] can be set in the
//! TOML file or as a flag; a flag wins over the file.
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::data::formats::{Format, Loaded, Record, load};
use crate::data::governance::{GovernedDataset, Policy};
use crate::data::jsonl::BadLines;
use crate::device::DeviceChoice;
use crate::export::{fused, mlx, peft, read_adapter_dir};
use crate::model::decoder::CausalLm;
use crate::train::schedule::ScheduleKind;
use crate::train::sft::{SftConfig, SftData, SftTrainer};
use crate::train::sft_data::SftRecord;

/// The options every decoder LoRA trainer takes (`train lora`, `train rerank`), named as
/// `mlx_lm.lora`'s (plus `--policy`, `--warmup`, ...): one set of flags, flattened into each
/// command, and applied over its config file by [`LoraFlags::apply`].
#[derive(clap::Args, Debug, Default, Clone)]
pub struct LoraFlags {
    /// A `.gguf` file or a Hugging Face model folder.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Governance policy TOML (default: the first governance/policy.toml in the data's folder or a
    /// folder above it; without one only public records are trained on).
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Keep records without a classification, treating them as public.
    #[arg(long)]
    pub treat_unclassified_as_public: bool,
    /// Training iterations, one batch each (`train lora`: 0 with `--test` only scores a saved
    /// adapter given by `--resume-adapter-file`, as `mlx_lm.lora --test` without `--train` does).
    #[arg(long)]
    pub iters: Option<usize>,
    #[arg(value_parser = crate::cli::values::positive_usize, long)]
    pub batch_size: Option<usize>,
    #[arg(value_parser = crate::cli::values::non_negative_f64, long)]
    pub learning_rate: Option<f64>,
    #[arg(value_parser = crate::cli::values::positive_usize, long)]
    pub steps_per_report: Option<usize>,
    #[arg(value_parser = crate::cli::values::positive_usize, long)]
    pub save_every: Option<usize>,
    /// Blocks to adapt, counted from the top (-1: all).
    #[arg(value_parser = crate::cli::values::count_or_all, long, allow_hyphen_values = true)]
    pub num_layers: Option<i64>,
    #[arg(value_parser = crate::cli::values::positive_usize, long)]
    pub max_seq_length: Option<usize>,
    #[arg(value_parser = crate::cli::values::positive_usize, long)]
    pub grad_accumulation_steps: Option<usize>,
    /// Output folder for adapters, checkpoints and loss.jsonl.
    #[arg(long)]
    pub adapter_path: Option<PathBuf>,
    /// A checkpoint folder or a run's adapter folder (exact resume from its latest checkpoint),
    /// or an adapter file (initial weights only, as MLX-LM).
    #[arg(long)]
    pub resume_adapter_file: Option<PathBuf>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// LoRA rank.
    #[arg(value_parser = crate::cli::values::positive_usize, long)]
    pub rank: Option<usize>,
    /// MLX-LM's LoRA scale (ignored with --alpha).
    #[arg(value_parser = crate::cli::values::finite_f64, long)]
    pub scale: Option<f64>,
    /// PEFT's lora_alpha (scale = alpha / rank).
    #[arg(value_parser = crate::cli::values::finite_positive_f64, long)]
    pub alpha: Option<f64>,
    #[arg(value_parser = crate::cli::values::fraction_f64, long)]
    pub dropout: Option<f64>,
    /// Layers to adapt (repeatable): q_proj, self_attn.v_proj, ... (default: all projections).
    #[arg(long)]
    pub keys: Vec<String>,
    /// Warm-up updates.
    #[arg(long)]
    pub warmup: Option<usize>,
    /// constant, linear or cosine.
    #[arg(long)]
    pub lr_schedule: Option<String>,
    #[arg(value_parser = crate::cli::values::non_negative_f64, long)]
    pub weight_decay: Option<f64>,
    /// Clip gradients to this global norm (0 disables clipping).
    #[arg(value_parser = crate::cli::values::non_negative_f64, long)]
    pub max_grad_norm: Option<f64>,
    /// QLoRA base: keep (a GGUF's own Q8_0/Q4_0/Q4_1 projections stay quantized; default),
    /// none (f32), q8_0 or q4_0 (quantize the projections as ggml's reference quantizers do).
    #[arg(long)]
    pub quantize_base: Option<crate::lora::QuantizeBase>,
    /// Keep only each decoder block's input and recompute the block in the backward pass, with the
    /// output head's cross-entropy in chunks (less memory, about a third more time; MLX-LM's flag).
    #[arg(long)]
    pub grad_checkpoint: bool,
    /// auto (default), f32 or f16. f16: mixed precision, frozen base weights and activations in
    /// f16 (GPU tensor cores), adapters, norms, softmax and loss in f32, dynamic loss scaling
    /// (LoRA only). auto: f16 for a LoRA run on a GPU that computes f16, f32 on the CPU (no f16
    /// SIMD: slower there) and for DoRA and full fine-tunes.
    #[arg(long)]
    pub dtype: Option<crate::model::decoder::Dtype>,
    /// With --dtype f16: the loss scale a fresh run starts at (GradScaler's init_scale, default
    /// 65536); halved at each overflow (that update skipped), doubled after 2000 good updates.
    #[arg(value_parser = crate::cli::values::finite_positive_f64, long)]
    pub init_loss_scale: Option<f64>,
}

/// The fields [`LoraFlags`] sets, in any trainer's config ([`SftConfig`],
/// [`crate::train::rerank::RerankConfig`]).
pub struct LoraOptionsMut<'a> {
    pub model: &'a mut Option<PathBuf>,
    pub policy: &'a mut Option<PathBuf>,
    pub treat_unclassified_as_public: &'a mut bool,
    pub iters: &'a mut usize,
    pub batch_size: &'a mut usize,
    pub learning_rate: &'a mut f64,
    pub steps_per_report: &'a mut usize,
    pub save_every: &'a mut usize,
    pub num_layers: &'a mut i64,
    pub max_seq_length: &'a mut usize,
    pub grad_accumulation_steps: &'a mut usize,
    pub adapter_path: &'a mut PathBuf,
    pub resume_adapter_file: &'a mut Option<PathBuf>,
    pub seed: &'a mut u64,
    pub lora_parameters: &'a mut crate::train::sft::LoraParameters,
    pub warmup: &'a mut usize,
    pub lr_schedule: &'a mut ScheduleKind,
    pub weight_decay: &'a mut f64,
    pub max_grad_norm: &'a mut Option<f64>,
    pub quantize_base: &'a mut crate::lora::QuantizeBase,
    pub grad_checkpoint: &'a mut bool,
    pub dtype: &'a mut crate::model::decoder::Dtype,
    pub init_loss_scale: &'a mut f64,
}

impl LoraFlags {
    /// Set every option given as a flag over `c` (a flag wins over the config file).
    pub fn apply(&self, c: LoraOptionsMut<'_>) -> anyhow::Result<()> {
        fn set<T: Clone>(flag: &Option<T>, target: &mut T) {
            if let Some(v) = flag {
                *target = v.clone();
            }
        }
        set(&self.iters, c.iters);
        set(&self.batch_size, c.batch_size);
        set(&self.learning_rate, c.learning_rate);
        set(&self.steps_per_report, c.steps_per_report);
        set(&self.save_every, c.save_every);
        set(&self.num_layers, c.num_layers);
        set(&self.max_seq_length, c.max_seq_length);
        set(&self.grad_accumulation_steps, c.grad_accumulation_steps);
        set(&self.seed, c.seed);
        set(&self.warmup, c.warmup);
        set(&self.weight_decay, c.weight_decay);
        set(&self.adapter_path, c.adapter_path);
        set(&self.quantize_base, c.quantize_base);
        set(&self.dtype, c.dtype);
        set(&self.init_loss_scale, c.init_loss_scale);
        for (flag, target) in [(&self.model, c.model), (&self.policy, c.policy), (&self.resume_adapter_file, c.resume_adapter_file)] {
            if flag.is_some() {
                *target = flag.clone();
            }
        }
        *c.grad_checkpoint |= self.grad_checkpoint;
        *c.treat_unclassified_as_public |= self.treat_unclassified_as_public;
        let lp = c.lora_parameters;
        if let Some(v) = self.rank {
            lp.rank = v;
        }
        if let Some(v) = self.scale {
            lp.scale = v;
            lp.alpha = None;
        }
        if self.alpha.is_some() {
            lp.alpha = self.alpha;
        }
        if let Some(v) = self.dropout {
            lp.dropout = v;
        }
        if !self.keys.is_empty() {
            lp.keys = Some(self.keys.clone());
        }
        if let Some(s) = &self.lr_schedule {
            *c.lr_schedule = match s.as_str() {
                "constant" => ScheduleKind::Constant,
                "linear" => ScheduleKind::Linear,
                "cosine" => ScheduleKind::Cosine,
                other => anyhow::bail!("--lr-schedule {other}: expected constant, linear or cosine"),
            };
        }
        if let Some(v) = self.max_grad_norm {
            *c.max_grad_norm = (v > 0.0).then_some(v);
        }
        Ok(())
    }
}

/// `tunelab train lora`: [`LoraFlags`] plus `mlx_lm.lora`'s data, evaluation and test flags.
#[derive(clap::Args, Debug, Default)]
pub struct TrainLoraArgs {
    /// A TOML file of options (the names of the flags, with underscores).
    pub config: Option<PathBuf>,
    /// An MLX-LM data folder: train.jsonl, valid.jsonl (optional), test.jsonl (optional).
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[command(flatten)]
    pub lora: LoraFlags,
    #[arg(value_parser = crate::cli::values::positive_usize, long)]
    pub steps_per_eval: Option<usize>,
    /// Validation batches per evaluation (-1: all).
    #[arg(value_parser = crate::cli::values::count_or_all, long, allow_hyphen_values = true)]
    pub val_batches: Option<i64>,
    /// Loss on the assistant turns only, every one of them (MLX-LM's --mask-prompt keeps only the
    /// last message; the two agree on records with one assistant turn, at the end).
    #[arg(long)]
    pub mask_prompt: bool,
    /// Continue the run in --adapter-path from its latest checkpoint (= --resume-adapter-file ADAPTER_PATH).
    #[arg(long, conflicts_with = "overwrite")]
    pub resume: bool,
    /// Replace the run already in --adapter-path (its adapters, checkpoints and loss log are removed).
    #[arg(long)]
    pub overwrite: bool,
    /// Evaluate on test.jsonl after training (loss and perplexity).
    #[arg(long)]
    pub test: bool,
    #[arg(value_parser = crate::cli::values::count_or_all, long, allow_hyphen_values = true)]
    pub test_batches: Option<i64>,
    /// lora, dora (LoRA plus DoRA's magnitude vectors) or full (MLX-LM's flag).
    #[arg(long, value_enum)]
    pub fine_tune_type: Option<crate::lora::FineTuneType>,
}

/// The [`LoraOptionsMut`] of a configuration whose fields have [`LoraFlags`]' names
/// (`SftConfig`, `RerankConfig`): one list of the shared fields for every trainer.
macro_rules! lora_options_of {
    ($c:expr) => {
        LoraOptionsMut {
            model: &mut $c.model,
            policy: &mut $c.policy,
            treat_unclassified_as_public: &mut $c.treat_unclassified_as_public,
            iters: &mut $c.iters,
            batch_size: &mut $c.batch_size,
            learning_rate: &mut $c.learning_rate,
            steps_per_report: &mut $c.steps_per_report,
            save_every: &mut $c.save_every,
            num_layers: &mut $c.num_layers,
            max_seq_length: &mut $c.max_seq_length,
            grad_accumulation_steps: &mut $c.grad_accumulation_steps,
            adapter_path: &mut $c.adapter_path,
            resume_adapter_file: &mut $c.resume_adapter_file,
            seed: &mut $c.seed,
            lora_parameters: &mut $c.lora_parameters,
            warmup: &mut $c.warmup,
            lr_schedule: &mut $c.lr_schedule,
            weight_decay: &mut $c.weight_decay,
            max_grad_norm: &mut $c.max_grad_norm,
            quantize_base: &mut $c.quantize_base,
            grad_checkpoint: &mut $c.grad_checkpoint,
            dtype: &mut $c.dtype,
            init_loss_scale: &mut $c.init_loss_scale,
        }
    };
}
pub(crate) use lora_options_of;

impl SftConfig {
    /// The fields [`LoraFlags`] sets.
    pub fn lora_options(&mut self) -> LoraOptionsMut<'_> {
        lora_options_of!(self)
    }
}

impl TrainLoraArgs {
    /// The config file (or the defaults) with every given flag applied over it.
    pub fn config(&self) -> anyhow::Result<SftConfig> {
        let mut c = match &self.config {
            Some(p) => SftConfig::from_toml_file(p)?,
            None => SftConfig::default(),
        };
        self.lora.apply(c.lora_options())?;
        if let Some(v) = self.steps_per_eval {
            c.steps_per_eval = v;
        }
        for (flag, target) in [(&self.val_batches, &mut c.val_batches), (&self.test_batches, &mut c.test_batches)] {
            if let Some(v) = flag {
                *target = *v;
            }
        }
        if let Some(v) = self.fine_tune_type {
            c.fine_tune_type = v;
        }
        if self.data.is_some() {
            c.data = self.data.clone();
        }
        c.mask_prompt |= self.mask_prompt;
        c.overwrite |= self.overwrite;
        if self.resume && c.resume_adapter_file.is_none() {
            c.resume_adapter_file = Some(c.adapter_path.clone());
        }
        c.test |= self.test;
        c.validate()?;
        Ok(c)
    }
}

/// `tunelab generate`: flags named as MLX-LM's `mlx_lm.generate`.
#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// A `.gguf` file or a Hugging Face model folder.
    #[arg(long)]
    pub model: std::path::PathBuf,
    /// A LoRA adapter folder to apply (MLX-LM `adapters.safetensors` or PEFT `adapter_model.safetensors`).
    #[arg(long)]
    pub adapter_path: Option<std::path::PathBuf>,
    /// The user message (rendered through the chat template unless --ignore-chat-template).
    #[arg(long, short = 'p')]
    pub prompt: String,
    /// An optional system message for the chat template.
    #[arg(long)]
    pub system_prompt: Option<String>,
    /// Maximum number of tokens to generate.
    #[arg(value_parser = crate::cli::values::positive_usize, long, short = 'm', default_value_t = 100)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(value_parser = crate::cli::values::non_negative_f32, long, default_value_t = 0.0)]
    pub temp: f32,
    /// Nucleus sampling threshold (1.0 = off).
    #[arg(value_parser = crate::cli::values::probability_f32, long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Use the prompt as raw text instead of rendering it as a chat.
    #[arg(long)]
    pub ignore_chat_template: bool,
    /// Another token that ends generation (repeatable).
    #[arg(long)]
    pub extra_eos_token: Vec<String>,
}
/// `tunelab export adapter`: convert a LoRA adapter folder between PEFT and MLX-LM.
#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// The adapter folder to read (MLX-LM or PEFT, detected from its files).
    #[arg(long)]
    pub adapter_path: PathBuf,
    /// peft or mlx.
    #[arg(long)]
    pub format: String,
    /// The folder to write.
    #[arg(long)]
    pub output: PathBuf,
    /// `base_model_name_or_path` for PEFT's adapter_config.json.
    #[arg(long, default_value = "")]
    pub base_model: String,
}

/// `tunelab fuse`: fold an adapter into its base model and save a Hugging Face folder.
#[derive(clap::Args, Debug)]
pub struct FuseArgs {
    /// A `.gguf` file or a Hugging Face model folder.
    #[arg(long)]
    pub model: PathBuf,
    /// The adapter folder (MLX-LM or PEFT).
    #[arg(long)]
    pub adapter_path: PathBuf,
    /// The folder to write (must not exist or be empty).
    #[arg(long)]
    pub save_path: PathBuf,
}

/// Load a model and apply an adapter folder to it (kept as LoRA layers; `merged()` folds them).
pub fn load_with_adapter(model: &Path, adapter: Option<&Path>, device: &burn::tensor::Device) -> anyhow::Result<CausalLm> {
    let mut lm = CausalLm::load(model, device).with_context(|| format!("loading {}", model.display()))?;
    if let Some(dir) = adapter
        && dir.join(mlx::CONFIG_FILE).is_file()
        && mlx::fine_tune_type(dir)? == "full"
    {
        // A full fine-tune (ours or mlx_lm.lora's): its block weights replace the base's.
        let file = dir.join(mlx::WEIGHTS_FILE);
        let weights = mlx::read_full(dir, &file)?;
        lm.model = lm.model.with_block_tensors(weights.tensors, &file).with_context(|| format!("loading the full fine-tune in {} over {}", dir.display(), model.display()))?;
        return Ok(lm);
    }
    if let Some(dir) = adapter {
        let weights = read_adapter_dir(dir)?;
        lm.model = lm
            .model
            .apply_adapter(&weights)
            .with_context(|| format!("applying the adapter in {} to {}", dir.display(), model.display()))?;
    }
    Ok(lm)
}

/// Policy: the configured file, else the one found from the data folder's location (never the working
/// directory); without one only public records are trained on. Then the opt-in.
fn resolve_policy(cfg: &SftConfig, data: &Path) -> anyhow::Result<Policy> {
    crate::cli::data::resolve_policy(cfg.policy.as_deref(), data, cfg.treat_unclassified_as_public)
}

/// Govern the split files of one record type and train.
fn train_typed<T: Record + SftRecord>(trainer: &SftTrainer, lm: &CausalLm, loaded: &Loaded, policy: &Policy) -> anyhow::Result<()> {
    let part = |name: &str| -> Option<GovernedDataset<T>> {
        let p = loaded.parts.iter().find(|p| p.name == name)?;
        Some(policy.apply(T::slice(&p.data).expect("parts share the loaded format").to_vec()))
    };
    let train = part("train").context("the data folder has no train.jsonl")?;
    let (valid, test) = (part("valid"), part("test"));
    for (name, d) in [("train", Some(&train)), ("valid", valid.as_ref()), ("test", test.as_ref())] {
        if let Some(d) = d {
            let a = d.audit();
            eprintln!("{name}: {} of {} records kept by the governance policy ({} excluded)", a.kept, a.total, a.excluded.len());
        }
    }
    let out = trainer.fit(lm, &SftData { train: &train, valid: valid.as_ref(), test: test.as_ref() })?;
    let cfg = trainer.config();
    println!("Trained {} iterations: {:.1} loss tokens/s, {:.1} tokens/s", out.iterations, out.tokens_per_s, out.seq_tokens_per_s);
    if let (Some(first), Some(last)) = (out.val_losses.first(), out.val_losses.last()) {
        println!("Validation loss {:.3} (iteration {}) -> {:.3} (iteration {})", first.1, first.0, last.1, last.0);
    }
    if let Some(t) = out.test {
        println!("Test loss {:.3}, Test ppl {:.3}.", t.loss, t.perplexity);
    }
    // Report only what is on disk.
    let saved = cfg.adapter_path.join(mlx::WEIGHTS_FILE);
    anyhow::ensure!(saved.is_file(), "training ended but {} was not written", saved.display());
    if cfg.fine_tune_type == crate::lora::FineTuneType::Full {
        println!("Trained block weights saved to {} (MLX-LM's full fine-tune)", saved.display());
        let folder = cfg.adapter_path.join(crate::train::sft::FULL_MODEL_DIR);
        if folder.is_dir() {
            println!("Model saved to {} (a Hugging Face folder: --model for generate, mlx_lm.load, transformers)", folder.display());
        }
    } else {
        println!("Adapter saved to {}", saved.display());
    }
    Ok(())
}

pub fn run_train(a: TrainLoraArgs, d: DeviceChoice) -> anyhow::Result<()> {
    let cfg = a.config()?;
    let model = cfg.model.clone().context("no model: give --model or `model = ...` in the config")?;
    let data = cfg.data.clone().context("no data: give --data or `data = ...` in the config")?;
    let device = d.device()?;
    let lm = CausalLm::load_with(&model, &device, cfg.quantize_base).with_context(|| format!("loading {}", model.display()))?;
    let quantized = lm.model.layers.iter().flat_map(|l| l.projections()).filter(|(_, s)| matches!(s, crate::lora::AdaptableLinear::Quantized(_))).count();
    let total = lm.model.layers.len() * crate::model::decoder::PROJECTIONS.len();
    // Resident memory right after loading: the weights at rest, before autodiff keeps anything.
    let rss = std::fs::read_to_string("/proc/self/status").ok().and_then(|s| {
        s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse::<f64>().ok()
    });
    eprintln!(
        "base weights: {quantized} of {total} projections quantized (quantize_base = {}), {:.1} MiB at rest{}",
        serde_json::to_value(cfg.quantize_base).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default(),
        lm.model.projection_bytes() as f64 / (1 << 20) as f64,
        rss.map_or(String::new(), |kb| format!("; process RSS after loading {:.0} MiB", kb / 1024.0))
    );
    // Printed before anything trains, so a run that cannot fit is stopped at once.
    let estimate = crate::train::sft::memory_estimate(&lm, &cfg);
    eprintln!(
        "fine_tune_type = {}: {}{}",
        cfg.fine_tune_type,
        estimate.describe(),
        crate::train::memory::available_memory().map_or(String::new(), |a| format!(" ({} available)", crate::train::memory::gib(a)))
    );
    let loaded = load(&data, BadLines::Fail)?;
    let policy = resolve_policy(&cfg, &data)?;
    let trainer = SftTrainer::new(cfg);
    match loaded.format {
        Format::Chat => train_typed::<crate::data::formats::ChatRecord>(&trainer, &lm, &loaded, &policy),
        Format::Completions => train_typed::<crate::data::formats::CompletionRecord>(&trainer, &lm, &loaded, &policy),
        Format::Text => train_typed::<crate::data::formats::TextRecord>(&trainer, &lm, &loaded, &policy),
        Format::QueryExpansion => train_typed::<crate::data::formats::QueryExpansion>(&trainer, &lm, &loaded, &policy),
        other => anyhow::bail!("{}: {other} records cannot train a decoder (use chat, completions, text or query-expansion records)", data.display()),
    }
}

/// Load the model, render the prompt, stream the generated text to stdout, stats to stderr.
pub fn run_generate(a: GenerateArgs, d: DeviceChoice) -> anyhow::Result<()> {
    use std::io::Write;

    use crate::data::chat_template::ChatMessage;
    use crate::model::decoder::GenerateOptions;

    let device = d.device()?;
    let started = std::time::Instant::now();
    let mut lm = load_with_adapter(&a.model, a.adapter_path.as_deref(), &device)?;
    // Generation only runs forward: fold the adapter into the weights once instead of paying
    // for the low-rank path at every token (the same function, see Decoder::merged).
    lm.model = lm.model.merged();
    let load_s = started.elapsed().as_secs_f64();
    let ids = match (&lm.chat_template, a.ignore_chat_template) {
        (Some(tpl), false) => {
            let mut messages = Vec::new();
            if let Some(sys) = &a.system_prompt {
                messages.push(ChatMessage::new("system", sys.clone()));
            }
            messages.push(ChatMessage::new("user", a.prompt.clone()));
            // The template writes any BOS itself (transformers tokenizes its output without adding specials).
            lm.encode(&tpl.render(&messages, true)?, false)?
        }
        _ => lm.encode(&a.prompt, true)?,
    };
    let mut stop_tokens = Vec::new();
    for t in &a.extra_eos_token {
        stop_tokens.push(
            lm.tokenizer
                .token_to_id(t)
                .with_context(|| format!("--extra-eos-token {t:?} is not a token of the model"))?,
        );
    }
    let opts = GenerateOptions {
        max_tokens: a.max_tokens,
        temperature: a.temp,
        top_p: a.top_p,
        seed: a.seed,
        stop_tokens,
    };
    let gen_start = std::time::Instant::now();
    let mut out: Vec<u32> = Vec::new();
    let mut printed = 0;
    let mut stdout = std::io::stdout();
    let generated = lm.generate(&ids, &opts, |t| {
        // Decode the whole continuation each time so multi-token characters print once complete.
        out.push(t);
        if let Ok(text) = lm.decode(&out) {
            if let Some(new) = text
                .get(printed..)
                .filter(|n| !n.is_empty() && !n.ends_with('\u{fffd}'))
            {
                let _ = write!(stdout, "{new}");
                let _ = stdout.flush();
                printed = text.len();
            }
        }
    });
    let text = lm.decode(&generated)?;
    print!("{}", text.get(printed..).unwrap_or_default());
    println!();
    let secs = gen_start.elapsed().as_secs_f64();
    eprintln!(
        "==========\nPrompt: {} tokens | Generation: {} tokens, {:.2} tokens/s | load {:.1}s | device {}",
        ids.len(),
        generated.len(),
        generated.len() as f64 / secs.max(1e-9),
        load_s,
        d
    );
    Ok(())
}
pub fn run_export(a: ExportArgs, _d: DeviceChoice) -> anyhow::Result<()> {
    let adapter = read_adapter_dir(&a.adapter_path)?;
    match a.format.as_str() {
        "peft" => peft::write(&a.output, &adapter, &a.base_model)?,
        "mlx" => mlx::write(&a.output, &adapter, serde_json::json!({}))?,
        other => anyhow::bail!("--format {other}: expected peft or mlx"),
    }
    println!("Wrote {} adapted layers to {}", adapter.layers.len(), a.output.display());
    Ok(())
}

pub fn run_fuse(a: FuseArgs, d: DeviceChoice) -> anyhow::Result<()> {
    let device = d.device()?;
    let lm = load_with_adapter(&a.model, Some(&a.adapter_path), &device)?;
    let manifest = serde_json::json!({
        "tool": "tunelab", "version": env!("CARGO_PKG_VERSION"),
        "base_model": a.model, "adapter_path": a.adapter_path,
        "adapter_manifest": read_adapter_dir(&a.adapter_path)?.metadata.get("tunelab_manifest"),
    });
    fused::write(&a.save_path, &lm, &manifest)?;
    println!("Fused model saved to {}", a.save_path.display());
    Ok(())
}

//! `tunelab train lora`, `generate`, `fuse` (owned by the decoder work); `export` lives in `cli/export.rs`.
use crate::device::DeviceChoice;
#[derive(clap::Args, Debug)]
pub struct TrainLoraArgs {}
/// `tunelab generate`: flags named as MLX-LM's `mlx_lm.generate`.
#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// A `.gguf` file or a Hugging Face model folder.
    #[arg(long)]
    pub model: std::path::PathBuf,
    /// A LoRA adapter folder to apply (not supported yet).
    #[arg(long)]
    pub adapter_path: Option<std::path::PathBuf>,
    /// The user message (rendered through the chat template unless --ignore-chat-template).
    #[arg(long, short = 'p')]
    pub prompt: String,
    /// An optional system message for the chat template.
    #[arg(long)]
    pub system_prompt: Option<String>,
    /// Maximum number of tokens to generate.
    #[arg(long, short = 'm', default_value_t = 100)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temp: f32,
    /// Nucleus sampling threshold (1.0 = off).
    #[arg(long, default_value_t = 1.0)]
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
#[derive(clap::Args, Debug)]
pub struct FuseArgs {}
pub fn run_train(_a: TrainLoraArgs, _d: DeviceChoice) -> anyhow::Result<()> {
    anyhow::bail!("`tunelab train lora` is not implemented yet")
}
/// Load the model, render the prompt, stream the generated text to stdout, stats to stderr.
pub fn run_generate(a: GenerateArgs, d: DeviceChoice) -> anyhow::Result<()> {
    use std::io::Write;

    use anyhow::Context;

    use crate::data::chat_template::ChatMessage;
    use crate::model::decoder::{CausalLm, GenerateOptions};

    if let Some(p) = &a.adapter_path {
        anyhow::bail!(
            "--adapter-path {}: adapters are not supported by `tunelab generate` yet",
            p.display()
        );
    }
    let device = d.device()?;
    let started = std::time::Instant::now();
    let lm = CausalLm::load(&a.model, &device)
        .with_context(|| format!("loading {}", a.model.display()))?;
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
pub fn run_fuse(_a: FuseArgs, _d: DeviceChoice) -> anyhow::Result<()> {
    anyhow::bail!("`tunelab fuse` is not implemented yet")
}

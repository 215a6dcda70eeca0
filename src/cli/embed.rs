//! `tunelab embed` and `tunelab train embed` (owned by the encoder work).
//!
//! `tunelab embed --model DIR --input texts.jsonl --output vectors.jsonl` reads lines
//! `{"id": ..., "text": "...", "title"?: "..."}` and writes `{"id": ..., "embedding": [...]}` in
//! the same order. The whole input is checked before any model runs, and the output is written
//! under a temporary name and renamed when complete, so a bad line or a crash never leaves a
//! partial output file (or clobbers an older one).
use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::device::DeviceChoice;
use crate::model::bert::{Prompts, SentenceEncoder};
use crate::model::gemma::{GemmaEncoder, is_gemma_folder};

#[derive(clap::Args, Debug)]
pub struct EmbedArgs {
    /// Model folder (Hugging Face / sentence-transformers layout): a BERT-family encoder or
    /// EmbeddingGemma (`model_type: gemma3_text`), or an EmbeddingGemma GGUF (llama.cpp's `gemma-embedding`).
    #[arg(long)]
    pub model: PathBuf,
    /// JSONL input: one `{"id", "text"}` object per line (optional `"title"`).
    #[arg(long)]
    pub input: PathBuf,
    /// JSONL output: one `{"id", "embedding"}` object per line, in input order.
    #[arg(long)]
    pub output: PathBuf,
    /// Texts per forward pass.
    #[arg(value_parser = crate::cli::values::positive_usize, long, default_value_t = 32)]
    pub batch_size: usize,
    /// Prompt for every text: a prefix (e.g. "query: "), or a template with {text} and {title}.
    #[arg(long, conflicts_with = "prompt_name")]
    pub prompt: Option<String>,
    /// A named prompt: one of the model's own (`query`, `document`, … from
    /// config_sentence_transformers.json), or QMD's formats for any model: `qmd-query`
    /// (`task: search result | query: {text}`) and `qmd-document` (`title: {title or none} | text: {text}`).
    #[arg(long)]
    pub prompt_name: Option<String>,
    /// Matryoshka truncation: keep the first N dimensions and re-normalise (EmbeddingGemma is
    /// trained for 768, 512, 256 and 128).
    #[arg(long)]
    pub dim: Option<usize>,
}

/// `tunelab train embed [CONFIG.toml] [--flags]`: flags override the file's values.
#[derive(clap::Args, Debug)]
pub struct TrainEmbedArgs {
    /// TOML config (`--print-config` shows every setting with its default).
    pub config: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Encoder folder (Hugging Face / sentence-transformers layout), or an EmbeddingGemma GGUF
    /// (llama.cpp's `gemma-embedding`, e.g. the file QMD downloaded).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Training pairs (JSONL `{"query", "positive", "negatives"?}` with governance fields).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Governance policy (TOML).
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Folder the run directory goes under.
    #[arg(long)]
    pub reports: Option<PathBuf>,
    /// Run name (`<reports>/<name>/<run-id>/`).
    #[arg(long)]
    pub name: Option<String>,
    #[arg(value_parser = crate::cli::values::positive_usize, long)]
    pub epochs: Option<usize>,
    #[arg(value_parser = crate::cli::values::positive_usize, long)]
    pub max_steps: Option<usize>,
    #[arg(value_parser = crate::cli::values::non_negative_f64, long)]
    pub learning_rate: Option<f64>,
    #[arg(value_parser = crate::cli::values::positive_usize, long)]
    pub batch_size: Option<usize>,
    /// Use CachedMultipleNegativesRankingLoss (GradCache) with mini-batches of this size.
    #[arg(value_parser = crate::cli::values::positive_usize, long)]
    pub mini_batch_size: Option<usize>,
    /// Token limit while training.
    #[arg(value_parser = crate::cli::values::positive_usize, long)]
    pub max_seq_length: Option<usize>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// lora, dora (LoRA plus DoRA's magnitude vectors) or full (every weight), as `train lora`
    /// takes it; adapters are shaped by [train.lora] and --lora-rank.
    #[arg(long, value_enum)]
    pub fine_tune_type: Option<crate::lora::FineTuneType>,
    /// Train LoRA adapters of this rank instead of every weight (alpha defaults to 2 × rank).
    #[arg(value_parser = crate::cli::values::positive_usize, long)]
    pub lora_rank: Option<usize>,
    #[arg(value_parser = crate::cli::values::finite_positive_f64, long, requires = "lora_rank")]
    pub lora_alpha: Option<f64>,
    /// MatryoshkaLoss: also train these leading dimensions (comma-separated, e.g. 768,512,256,128).
    #[arg(long, value_delimiter = ',')]
    pub matryoshka_dims: Option<Vec<usize>>,
    /// auto (default), f32 or f16. f16: mixed precision as sentence-transformers' fp16=True, linear
    /// layers and attention in f16 (GPU tensor cores), residual stream, LayerNorm, softmax, pooling
    /// and loss in f32, trainable weights and AdamW in f32, dynamic loss scaling; LoRA and full
    /// fine-tuning (`[train] dtype`). auto: f16 on a GPU that computes f16 for a BERT-family
    /// encoder, f32 on the CPU and for EmbeddingGemma (overflows f16) and DoRA.
    #[arg(long)]
    pub dtype: Option<crate::model::decoder::Dtype>,
    /// With --dtype f16: the loss scale a fresh run starts at (GradScaler's init_scale, default
    /// 65536); halved at each overflow (that step skipped), doubled after 2000 good steps.
    #[arg(value_parser = crate::cli::values::finite_positive_f64, long)]
    pub init_loss_scale: Option<f64>,
    /// Skip malformed JSONL lines (each is reported) instead of stopping at the first.
    #[arg(long)]
    pub skip_bad_lines: bool,
}

/// One output line; a struct (not `json!`) keeps `id` first and writes f32 values at f32 precision.
#[derive(serde::Serialize)]
struct OutputRow<'a> {
    id: &'a serde_json::Value,
    embedding: &'a [f32],
}

/// One input record.
struct Item {
    id: serde_json::Value,
    text: String,
    title: Option<String>,
}

/// Read and check every line: `file:line: problem` on the first bad one.
fn read_input(path: &Path) -> anyhow::Result<Vec<Item>> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open input {}", path.display()))?;
    let mut items = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let n = i + 1;
        let line = line.with_context(|| format!("{}:{n}: cannot read line", path.display()))?;
        let line = if n == 1 { crate::io::text::strip_bom(&line).to_string() } else { line };
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value =
            crate::data::jsonl::parse_strict(&line).with_context(|| format!("{}:{n}: invalid JSON", path.display()))?;
        let Some(obj) = value.as_object() else { bail!("{}:{n}: expected a JSON object", path.display()) };
        let id = match obj.get("id") {
            Some(v @ (serde_json::Value::String(_) | serde_json::Value::Number(_))) => v.clone(),
            Some(_) => bail!("{}:{n}: field \"id\" must be a string or a number", path.display()),
            None => bail!("{}:{n}: missing field \"id\"", path.display()),
        };
        let text = match obj.get("text") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(_) => bail!("{}:{n}: field \"text\" must be a string", path.display()),
            None => bail!("{}:{n}: missing field \"text\"", path.display()),
        };
        let title = match obj.get("title") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(_) => bail!("{}:{n}: field \"title\" must be a string", path.display()),
        };
        items.push(Item { id, text, title });
    }
    Ok(items)
}

/// Remove `.{name}.partial-{pid}` files an interrupted `embed` left beside `output`.
fn remove_stale_partials(output: &std::path::Path) {
    let (Some(dir), Some(name)) = (output.parent(), output.file_name()) else { return };
    let dir = if dir.as_os_str().is_empty() { std::path::Path::new(".") } else { dir };
    let prefix = format!(".{}.partial-", name.to_string_lossy());
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// The encoders `tunelab embed` runs, chosen from the folder's `config.json`.
#[allow(clippy::large_enum_variant)]
enum AnyEncoder {
    Bert(SentenceEncoder),
    Gemma(GemmaEncoder),
}

impl AnyEncoder {
    fn load(dir: &Path, device: &burn::tensor::Device) -> anyhow::Result<Self> {
        let context = || format!("loading model {}", dir.display());
        Ok(if crate::model::gemma_gguf::is_gguf(dir) {
            // A llama.cpp GGUF: EmbeddingGemma's (`gemma-embedding`) is the one encoder read from GGUF;
            // any other architecture is refused naming the file and what it is.
            Self::Gemma(GemmaEncoder::load_gguf(dir, false, device).with_context(context)?)
        } else if is_gemma_folder(dir) {
            Self::Gemma(GemmaEncoder::load(dir, device).with_context(context)?)
        } else {
            Self::Bert(SentenceEncoder::load(dir, device).with_context(context)?)
        })
    }

    /// The model's named prompts (`config_sentence_transformers.json`).
    fn named_prompts(&self) -> std::collections::BTreeMap<String, String> {
        match self {
            Self::Bert(e) => {
                let mut named = e.source.as_ref().map(|f| f.st_config.prompts.clone()).unwrap_or_default();
                for (k, v) in [("query", &e.prompts.query), ("document", &e.prompts.document)] {
                    if let Some(v) = v {
                        named.entry(k.to_string()).or_insert_with(|| v.clone());
                    }
                }
                named
            }
            Self::Gemma(e) => e.prompts.clone(),
        }
    }

    fn default_prompt(&self) -> Option<String> {
        match self {
            Self::Bert(e) => e.default_prompt.clone(),
            Self::Gemma(e) => e.default_prompt.clone(),
        }
    }

    fn dim(&self) -> usize {
        match self {
            Self::Bert(e) => e.dim(),
            Self::Gemma(e) => e.dim(),
        }
    }

    /// Texts already prompted → vectors.
    fn embed(&self, texts: &[&str], batch_size: usize) -> anyhow::Result<Vec<Vec<f32>>> {
        Ok(match self {
            Self::Bert(e) => e.embed_with_prompt(texts, None, batch_size)?,
            Self::Gemma(e) => e.embed_with_prompt(texts, None, batch_size)?,
        })
    }
}

/// QMD's text formats (tobi/qmd `formatQueryForEmbedding` / `formatDocForEmbedding`), by the
/// names `--prompt-name` accepts for every model.
pub fn builtin_prompt(name: &str) -> Option<String> {
    let qmd = Prompts::qmd();
    match name {
        "qmd-query" => qmd.query,
        "qmd-document" => qmd.document,
        _ => None,
    }
}

/// The prompt `--prompt` / `--prompt-name` ask for: the model's own names first, then the
/// built-in QMD formats; an unknown name is refused with the names that exist.
fn resolve_prompt(
    prompt: Option<&str>,
    name: Option<&str>,
    named: &std::collections::BTreeMap<String, String>,
    default: Option<String>,
) -> anyhow::Result<Option<String>> {
    match (prompt, name) {
        (Some(p), _) => Ok(Some(p.to_string())),
        (None, None) => Ok(default),
        (None, Some(n)) => match named.get(n).cloned().or_else(|| builtin_prompt(n)) {
            Some(p) => Ok(Some(p)),
            None => {
                let mut names: Vec<&str> = named.keys().map(String::as_str).collect();
                names.extend(["qmd-query", "qmd-document"]);
                bail!("--prompt-name `{n}` is not a prompt of this model; available: {}", names.join(", "))
            }
        },
    }
}

/// Matryoshka truncation: the first `dim` values, re-normalised to unit length (as
/// sentence-transformers' `truncate_dim` followed by normalisation).
pub fn truncate_normalized(v: &[f32], dim: usize) -> Vec<f32> {
    let head = &v[..dim.min(v.len())];
    let norm = head.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    head.iter().map(|x| x / norm).collect()
}

pub fn run_embed(a: EmbedArgs, d: DeviceChoice) -> anyhow::Result<()> {
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    // Writing over the input would lose it (the output replaces it only at the end, but then
    // the texts are gone): refuse, whatever path spells the same file.
    if let (Ok(i), Ok(o)) = (std::fs::canonicalize(&a.input), std::fs::canonicalize(&a.output))
        && i == o
    {
        bail!("--output {} is the input file: choose another path (the input would be lost)", a.output.display());
    }
    remove_stale_partials(&a.output);
    let items = read_input(&a.input)?;
    let device = d.device()?;
    let encoder = AnyEncoder::load(&a.model, &device)?;
    if let Some(n) = a.dim
        && (n == 0 || n > encoder.dim())
    {
        bail!("--dim {n}: the model's vectors have {} dimensions (use 1..={})", encoder.dim(), encoder.dim());
    }
    let prompt =
        resolve_prompt(a.prompt.as_deref(), a.prompt_name.as_deref(), &encoder.named_prompts(), encoder.default_prompt())?;
    // Titles only matter to templates; the prompt is applied here so each text gets its own title.
    let texts: Vec<String> =
        items.iter().map(|it| Prompts::apply(prompt.as_deref(), &it.text, it.title.as_deref())).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();

    let start = std::time::Instant::now();
    let mut vectors = encoder.embed(&refs, a.batch_size)?;
    if let Some(n) = a.dim {
        vectors = vectors.iter().map(|v| truncate_normalized(v, n)).collect();
    }
    let secs = start.elapsed().as_secs_f64();

    let tmp = a.output.with_file_name(format!(
        ".{}.partial-{}",
        a.output.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default(),
        std::process::id()
    ));
    let write = || -> anyhow::Result<()> {
        let mut w = BufWriter::new(std::fs::File::create(&tmp)?);
        for (it, v) in items.iter().zip(&vectors) {
            serde_json::to_writer(&mut w, &OutputRow { id: &it.id, embedding: v })?;
            w.write_all(b"\n")?;
        }
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, &a.output)?;
        Ok(())
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.context(format!("writing {}", a.output.display())));
    }
    eprintln!(
        "embedded {} texts (dim {}) in {:.1}s ({:.1} texts/s) -> {}",
        items.len(),
        a.dim.unwrap_or(encoder.dim()),
        secs,
        items.len() as f64 / secs.max(1e-9),
        a.output.display()
    );
    Ok(())
}

pub fn run_train(a: TrainEmbedArgs, device: DeviceChoice) -> anyhow::Result<()> {
    use crate::train::embed_job::{EmbedJobConfig, run_embed_job};
    let mut cfg = match &a.config {
        Some(p) => EmbedJobConfig::from_toml_file(p)?,
        None => EmbedJobConfig::default(),
    };
    macro_rules! set {
        ($($flag:ident => $($field:ident).+),* $(,)?) => { $(if let Some(v) = a.$flag.clone() { cfg.$($field).+ = v.into(); })* };
    }
    set!(model => model, data => data, policy => policy, reports => reports, name => name,
         epochs => train.epochs, learning_rate => train.learning_rate, batch_size => train.batch_size,
         seed => train.seed);
    if let Some(v) = a.max_steps {
        cfg.train.max_steps = Some(v);
    }
    if let Some(v) = a.mini_batch_size {
        cfg.train.mini_batch_size = Some(v);
    }
    if let Some(v) = a.max_seq_length {
        cfg.max_seq_length = Some(v);
    }
    if let Some(v) = a.matryoshka_dims.clone() {
        cfg.train.matryoshka_dims = Some(v);
    }
    if let Some(v) = a.dtype {
        cfg.train.dtype = v;
    }
    if let Some(v) = a.init_loss_scale {
        cfg.train.init_loss_scale = v;
    }
    if let Some(rank) = a.lora_rank {
        let alpha = a.lora_alpha.unwrap_or(2.0 * rank as f64);
        cfg.train.lora = Some(crate::lora::LoraConfig { rank, alpha, ..cfg.train.lora.clone().unwrap_or_default() });
    }
    if let Some(v) = a.fine_tune_type {
        cfg.fine_tune_type = Some(v);
    }
    cfg.skip_bad_lines |= a.skip_bad_lines;
    if a.print_config {
        print!("{}", toml::to_string_pretty(&cfg)?);
        return Ok(());
    }
    let out = run_embed_job(&cfg, device)?;
    println!("{} steps, final loss {:?}; run: {}", out.steps, out.final_loss, out.run_dir.display());
    Ok(())
}

//! `tunelab search --pipeline qmd`: QMD's search pipeline ([`crate::eval::search::qmd`]) over a
//! corpus with a tunelab encoder, optional query expansions (a file, or an expansion model) and
//! an optional reranker. One query answers in the terminal with titles and scores; `--queries`
//! with `--out` writes one TREC run per stage.
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::data::corpus::read_corpus;
use crate::data::jsonl::BadLines;
use crate::data::trec::Qrels;
use crate::device::DeviceChoice;
use crate::eval::metrics::{EvalOptions, Measure, evaluate};
use crate::eval::search::qmd::{
    load_embedder, ExpandedQuery, PrecomputedExpansions, QmdAnswer, QmdConfig, QmdPipeline,
    QueryExpander, STAGES, Scorer, parse_expansion_output,
};
use crate::model::decoder::{CausalLm, GenerateOptions};
use crate::model::reranker::Reranker;

/// The search pipelines `tunelab search` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PipelineKind {
    /// QMD's: BM25 + vectors + expansions + RRF + rerank (tobi/qmd v2.8.3).
    Qmd,
}

/// `tunelab search`.
#[derive(clap::Args, Debug)]
pub struct SearchArgs {
    /// The pipeline to run.
    #[arg(long, value_enum, default_value = "qmd")]
    pub pipeline: PipelineKind,
    /// Corpus: a folder of markdown files or a JSONL file (`{"id","title","text"}`).
    #[arg(long)]
    pub corpus: PathBuf,
    /// Embedding model: a sentence-transformers folder (BERT-family or EmbeddingGemma, base or tuned) or
    /// the EmbeddingGemma GGUF QMD downloaded.
    #[arg(long)]
    pub model: PathBuf,
    /// Precomputed expansions (JSONL: `{"query","text"}` as `tunelab eval expansions` writes, or
    /// `{"query","expansions":[{"type","query"}]}`).
    #[arg(long, conflicts_with = "expansion_model")]
    pub expansions: Option<PathBuf>,
    /// Expansion model (`.gguf` or Hugging Face folder) prompted as QMD prompts it.
    #[arg(long)]
    pub expansion_model: Option<PathBuf>,
    /// LoRA adapter for the expansion model.
    #[arg(long, requires = "expansion_model")]
    pub expansion_adapter: Option<PathBuf>,
    /// Expansion sampling temperature (QMD: 0.7 with top-p 0.8 and top-k 20; 0 is greedy, reproducible).
    #[arg(long, default_value_t = 0.0)]
    pub expansion_temp: f32,
    /// Maximum tokens per expansion.
    #[arg(long, default_value_t = 160)]
    pub expansion_max_tokens: usize,
    /// Yes/no LLM reranker (`.gguf` or Hugging Face folder): adds the `full` stage.
    #[arg(long)]
    pub reranker: Option<PathBuf>,
    /// LoRA adapter for the reranker (MLX-LM or PEFT folder, e.g. `tunelab train rerank`'s).
    #[arg(long, requires = "reranker")]
    pub reranker_adapter: Option<PathBuf>,
    /// Longest rerank prompt in tokens (the chunk loses its tail; default: the model's context,
    /// at most 2048).
    #[arg(long)]
    pub reranker_max_length: Option<usize>,
    /// Rerank prompts per forward pass.
    #[arg(long, default_value_t = 8)]
    pub reranker_batch_size: usize,
    /// Queries file for batch mode: `{"qid"|"id", "query"}` per line.
    #[arg(long, requires = "out")]
    pub queries: Option<PathBuf>,
    /// Batch mode output folder: `<stage>.run` per stage and `answers.jsonl`.
    #[arg(long, requires = "queries")]
    pub out: Option<PathBuf>,
    /// Batch mode: qrels to print each stage's metrics.
    #[arg(long, requires = "queries")]
    pub qrels: Option<PathBuf>,
    /// Results shown in the terminal.
    #[arg(long, default_value_t = 10)]
    pub limit: usize,
    /// The query (single-query mode).
    pub query: Option<String>,
}

/// An expansion model prompted as QMD prompts it (`/no_think Expand this search query: {q}`
/// through the chat template), its output parsed as QMD parses it.
pub struct DecoderExpander {
    pub lm: CausalLm,
    pub options: GenerateOptions,
}

impl DecoderExpander {
    /// Load a model (and adapter, folded in for inference).
    pub fn load(
        model: &Path,
        adapter: Option<&Path>,
        options: GenerateOptions,
        device: &burn::tensor::Device,
    ) -> anyhow::Result<Self> {
        let mut lm = super::lora::load_with_adapter(model, adapter, device)?;
        lm.model = lm.model.merged();
        if lm.chat_template.is_none() {
            bail!(
                "{} has no chat template: QMD query-expansion prompts are chats",
                model.display()
            );
        }
        Ok(Self { lm, options })
    }

    /// The raw text the model writes for `query`.
    pub fn generate(&self, query: &str) -> anyhow::Result<String> {
        let tpl = self.lm.chat_template.as_ref().context("no chat template")?;
        let prompt = crate::train::sft_data::qmd_generation_prompt(tpl, query)?;
        let ids = self.lm.encode(&prompt, false)?;
        let out = self.lm.generate(&ids, &self.options, |_| {});
        Ok(self.lm.decode(&out)?)
    }
}

impl QueryExpander for DecoderExpander {
    fn expand(&self, query: &str) -> anyhow::Result<Vec<ExpandedQuery>> {
        Ok(parse_expansion_output(query, &self.generate(query)?))
    }
}

/// Read `{"qid"|"id", "query"}` lines; errors name the file and line.
pub fn read_search_queries(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), i + 1);
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}: invalid JSON", at()))?;
        let query = v
            .get("query")
            .and_then(|q| q.as_str())
            .with_context(|| format!("{}: missing string field \"query\"", at()))?;
        let id = match v.get("qid").or_else(|| v.get("id")) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            _ => bail!("{}: missing field \"qid\" (or \"id\")", at()),
        };
        out.push((id, query.to_string()));
    }
    Ok(out)
}

/// Build the pipeline with an encoder: a BERT-family folder, or EmbeddingGemma as a folder or GGUF.
pub fn build_pipeline(
    corpus: &Path,
    model: &Path,
    device: &burn::tensor::Device,
) -> anyhow::Result<QmdPipeline> {
    let docs = read_corpus(corpus, BadLines::Fail)?.records;
    QmdPipeline::build(&docs, load_embedder(model, device)?, QmdConfig::default())
}

fn print_answer(p: &QmdPipeline, query: &str, a: &QmdAnswer, limit: usize) {
    if a.strong_signal {
        println!("strong BM25 signal: expansion skipped");
    }
    for e in &a.expansions {
        println!("  {:?}: {}", e.kind, e.query);
    }
    let stage = ["full", "hybrid+expansion"]
        .into_iter()
        .find(|s| a.stage(s).is_some_and(|l| !l.is_empty()))
        .unwrap_or("hybrid");
    let list = a.stage(stage).unwrap_or_default();
    println!(
        "{query:?} — stage {stage}, {} of {} results",
        list.len().min(limit),
        list.len()
    );
    for (i, r) in list.iter().take(limit).enumerate() {
        println!(
            "{:>3}. {:.4}  {}  ({})",
            i + 1,
            r.score,
            p.title(&r.doc_id).unwrap_or(""),
            r.doc_id
        );
    }
}

pub fn run(a: SearchArgs, d: DeviceChoice) -> anyhow::Result<()> {
    let PipelineKind::Qmd = a.pipeline;
    if a.query.is_none() && a.queries.is_none() {
        bail!("give a QUERY, or --queries Q.jsonl --out DIR");
    }
    let device = d.device()?;
    let t = std::time::Instant::now();
    let pipeline = build_pipeline(&a.corpus, &a.model, &device)?;
    eprintln!(
        "indexed {} documents ({} chunks) in {:.1} s",
        pipeline.len(),
        pipeline.n_chunks(),
        t.elapsed().as_secs_f64()
    );
    let expander: Option<Box<dyn QueryExpander>> = match (&a.expansions, &a.expansion_model) {
        (Some(f), _) => Some(Box::new(PrecomputedExpansions::read(f)?)),
        (None, Some(m)) => {
            let opts = GenerateOptions {
                max_tokens: a.expansion_max_tokens,
                temperature: a.expansion_temp,
                top_p: if a.expansion_temp > 0.0 { 0.8 } else { 1.0 },
                seed: 0,
                stop_tokens: Vec::new(),
            };
            Some(Box::new(DecoderExpander::load(
                m,
                a.expansion_adapter.as_deref(),
                opts,
                &device,
            )?))
        }
        (None, None) => None,
    };
    let reranker = a
        .reranker
        .as_deref()
        .map(|m| -> anyhow::Result<Reranker> {
            let mut r = Reranker::load_merged(m, a.reranker_adapter.as_deref(), &device)?;
            if let Some(n) = a.reranker_max_length {
                r.max_length = n;
            }
            r.batch_size = a.reranker_batch_size.max(1);
            Ok(r)
        })
        .transpose()?;
    let reranker = reranker.as_ref().map(|r| r as &dyn Scorer);
    if let Some(q) = &a.query {
        let answer = pipeline.search(q, expander.as_deref(), reranker)?;
        print_answer(&pipeline, q, &answer, a.limit);
    }
    if let (Some(qpath), Some(out)) = (&a.queries, &a.out) {
        let queries = read_search_queries(qpath)?;
        let t = std::time::Instant::now();
        let runs = pipeline.run_stages(&queries, expander.as_deref(), reranker, "qmd-")?;
        let secs = t.elapsed().as_secs_f64();
        for p in runs.write(out)? {
            println!("wrote {}", p.display());
        }
        println!(
            "{} queries in {:.2} s ({:.2} queries/s)",
            queries.len(),
            secs,
            queries.len() as f64 / secs.max(1e-9)
        );
        if let Some(qrels) = &a.qrels {
            let qrels = Qrels::read(qrels)?;
            let measures = Measure::parse_list(&["recip_rank_cut.10", "recip_rank", "ndcg_cut.10", "recall.20"])?;
            let opts = EvalOptions {
                complete: true,
                ..EvalOptions::default()
            };
            for stage in STAGES {
                if let Some(run) = runs.runs.get(stage) {
                    let e = evaluate(&qrels, run, &measures, &opts);
                    let row: Vec<String> = e
                        .measures
                        .iter()
                        .zip(&e.summaries)
                        .map(|(m, v)| format!("{}={v:.4}", m.trec_name()))
                        .collect();
                    println!("{stage:<17} {}", row.join("  "));
                }
            }
        }
    }
    Ok(())
}

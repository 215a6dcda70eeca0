//! `tunelab rerank`: rescore the top documents of a TREC run with a yes/no LLM reranker
//! ([`Reranker`]), writing a run whose scores are P(yes).
//!
//! Each document is sent as QMD sends it: its body cut into rerank chunks (3600/540/800
//! characters) and the chunk with the most query words chosen, by the pipeline's own
//! [`rerank_chunk_for`]; the prompt's tail is cut at the reranker's `--max-length`.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::data::corpus::read_corpus;
use crate::data::jsonl::{BadLines, DataError, read_with};
use crate::data::trec::{Retrieved, Run};
use crate::device::DeviceChoice;
use crate::eval::search::qmd::{QmdConfig, rerank_chunk_for};
use crate::eval::search::sort_trec;
use crate::model::reranker::{RerankTemplate, Reranker};
use crate::cli::lora::{LoraFlags, LoraOptionsMut, lora_options_of};
use crate::train::rerank::{Judged, RerankConfig, RerankLoss, RerankTargets};

/// `tunelab rerank --model M [--adapter-path DIR] --queries Q.jsonl --run RUN --corpus DIR --out RUN`.
#[derive(clap::Args, Debug)]
pub struct RerankArgs {
    /// A `.gguf` file or a Hugging Face model folder.
    #[arg(long)]
    pub model: PathBuf,
    /// A LoRA adapter folder (MLX-LM or PEFT).
    #[arg(long)]
    pub adapter_path: Option<PathBuf>,
    /// Queries, JSONL `{"qid", "query"}`.
    #[arg(long)]
    pub queries: PathBuf,
    /// The TREC run whose top documents are rescored.
    #[arg(long)]
    pub run: PathBuf,
    /// The corpus: a folder of markdown files or a JSONL file `{"id", "text", "title"?}`.
    #[arg(long)]
    pub corpus: PathBuf,
    /// Where to write the reranked TREC run.
    #[arg(long)]
    pub out: PathBuf,
    /// Documents rescored per query (QMD: 40); the rest of the run is dropped.
    #[arg(long, default_value_t = 40)]
    pub depth: usize,
    /// Longest prompt in tokens (documents lose their tail).
    #[arg(long, default_value_t = 1024)]
    pub max_length: usize,
    /// Prompts per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// The run tag written in the last column.
    #[arg(long, default_value = "rerank")]
    pub tag: String,
}

/// Read `{"qid", "query"}` lines; errors name the file and line.
pub fn read_qid_queries(path: &Path) -> Result<BTreeMap<String, String>, DataError> {
    let read = read_with(path, BadLines::Fail, |line, v| {
        let field = |k: &str| {
            v.get(k)
                .and_then(|q| q.as_str())
                .map(str::to_string)
                .ok_or_else(|| {
                    DataError::at(path, line, Some(k), format!("expected a string `{k}`"))
                })
        };
        Ok((line, field("qid")?, field("query")?))
    })?;
    let mut out = BTreeMap::new();
    for (line, qid, query) in read.records {
        if out.insert(qid.clone(), query).is_some() {
            return Err(DataError::at(
                path,
                line,
                Some("qid"),
                format!("qid {qid:?} appears twice"),
            ));
        }
    }
    Ok(out)
}

/// Rerank the top `depth` documents of each query of `run` with `scorer`; documents are looked up
/// in `texts` and sent as their best rerank chunk for the query ([`rerank_chunk_for`] with
/// `chunking`'s sizes). The result holds P(yes) scores, trec_eval-sorted.
#[allow(clippy::too_many_arguments)]
pub fn rerank_run(
    scorer: &dyn crate::model::reranker::Scorer,
    queries: &BTreeMap<String, String>,
    run: &Run,
    texts: &BTreeMap<String, String>,
    chunking: &QmdConfig,
    depth: usize,
    tag: &str,
    mut on_query: impl FnMut(&str, usize),
) -> anyhow::Result<Run> {
    let mut out = Run {
        tag: tag.to_string(),
        results: BTreeMap::new(),
    };
    for (qid, retrieved) in &run.results {
        let query = queries
            .get(qid)
            .with_context(|| format!("the run has query {qid:?}, which the queries file lacks"))?;
        let mut top = retrieved.clone();
        sort_trec(&mut top);
        top.truncate(depth);
        let chunks: Vec<String> = top
            .iter()
            .map(|r| {
                let text = texts.get(&r.doc_id).with_context(|| {
                    format!("query {qid}: document {:?} is not in the corpus", r.doc_id)
                })?;
                // A blank body has no chunk; it is scored as sent (empty).
                Ok(rerank_chunk_for(text, query, chunking).unwrap_or_default())
            })
            .collect::<anyhow::Result<_>>()?;
        let docs: Vec<&str> = chunks.iter().map(String::as_str).collect();
        let scores = scorer.score(query, &docs)?;
        if scores.len() != docs.len() {
            bail!(
                "the reranker returned {} scores for {} documents",
                scores.len(),
                docs.len()
            );
        }
        let mut rescored: Vec<Retrieved> = top
            .iter()
            .zip(scores)
            .map(|(r, s)| Retrieved {
                doc_id: r.doc_id.clone(),
                score: s as f64,
            })
            .collect();
        sort_trec(&mut rescored);
        on_query(qid, rescored.len());
        out.results.insert(qid.clone(), rescored);
    }
    Ok(out)
}

pub fn run_rerank(a: RerankArgs, d: DeviceChoice) -> anyhow::Result<()> {
    if a.depth == 0 {
        bail!("--depth must be at least 1");
    }
    let device = d.device()?;
    let started = std::time::Instant::now();
    // Scoring only runs forward: an adapter is folded into the weights once.
    let mut reranker = Reranker::load_merged(&a.model, a.adapter_path.as_deref(), &device)?;
    reranker.max_length = a.max_length;
    reranker.batch_size = a.batch_size.max(1);
    let queries = read_qid_queries(&a.queries)?;
    let run = Run::read(&a.run)?;
    let corpus = read_corpus(&a.corpus, BadLines::Fail)?;
    let wanted: BTreeSet<&str> = run
        .results
        .values()
        .flatten()
        .map(|r| r.doc_id.as_str())
        .collect();
    let texts: BTreeMap<String, String> = corpus
        .records
        .into_iter()
        .filter(|doc| wanted.contains(doc.id.as_str()))
        .map(|doc| (doc.id, doc.text))
        .collect();
    let load_s = started.elapsed().as_secs_f64();
    let t0 = std::time::Instant::now();
    let mut n_docs = 0;
    let total = run.results.len();
    let mut done = 0;
    let out = rerank_run(
        &reranker,
        &queries,
        &run,
        &texts,
        &QmdConfig::default(),
        a.depth,
        &a.tag,
        |qid, n| {
            n_docs += n;
            done += 1;
            eprintln!("[{done}/{total}] {qid}: {n} documents");
        },
    )?;
    if let Some(parent) = a.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    out.write(&a.out)?;
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "reranked {n_docs} documents of {total} queries in {secs:.1} s ({:.2} documents/s; load {load_s:.1} s) -> {}",
        n_docs as f64 / secs.max(1e-9),
        a.out.display()
    );
    Ok(())
}

/// `tunelab train rerank [CONFIG.toml] [--flags]`: `train lora`'s flags where they apply
/// ([`LoraFlags`]), plus `--loss`, `--negatives`, `--mined-negatives`, `--mining-embedder`,
/// `--valid-fraction`.
#[derive(clap::Args, Debug, Default)]
pub struct TrainRerankArgs {
    /// A TOML file of options (the names of the flags, with underscores).
    pub config: Option<PathBuf>,
    /// A JSONL file of judgments `{"query", "document", "relevant"}` (governance fields per record).
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[command(flatten)]
    pub lora: LoraFlags,
    /// pointwise (BCE on P(yes)) or listwise (softmax over a positive and --negatives negatives).
    #[arg(long)]
    pub loss: Option<String>,
    /// Pointwise targets: graded (grade / largest grade, the default) or binary (grade ≥ 1 → 1).
    #[arg(long)]
    pub targets: Option<String>,
    #[arg(long)]
    pub negatives: Option<usize>,
    /// Hard negatives mined per training query (default 0; BM25 unless --mining-embedder).
    #[arg(long)]
    pub mined_negatives: Option<usize>,
    /// Mine them through QMD's pipeline (BM25 + vector search, fused) with this embedder (a
    /// sentence-transformers folder or an EmbeddingGemma GGUF), as search finds the reranker's
    /// candidates, instead of with BM25 alone.
    #[arg(long)]
    pub mining_embedder: Option<PathBuf>,
    #[arg(long)]
    pub valid_fraction: Option<f64>,
}

impl TrainRerankArgs {
    /// The config file (or the defaults) with every given flag applied over it.
    pub fn config(&self) -> anyhow::Result<RerankConfig> {
        let mut c = match &self.config {
            Some(p) => RerankConfig::from_toml_file(p)?,
            None => RerankConfig::default(),
        };
        self.lora.apply(c.lora_options())?;
        if self.data.is_some() {
            c.data = self.data.clone();
        }
        if let Some(v) = self.negatives {
            c.negatives = v;
        }
        if let Some(v) = self.mined_negatives {
            c.mined_negatives = v;
        }
        if self.mining_embedder.is_some() {
            c.mining_embedder = self.mining_embedder.clone();
        }
        if let Some(v) = self.valid_fraction {
            c.valid_fraction = v;
        }
        if let Some(l) = &self.loss {
            c.loss = match l.as_str() {
                "pointwise" => RerankLoss::Pointwise,
                "listwise" => RerankLoss::Listwise,
                other => bail!("--loss {other}: expected pointwise or listwise"),
            };
        }
        if let Some(t) = &self.targets {
            c.targets = match t.as_str() {
                "graded" => RerankTargets::Graded,
                "binary" => RerankTargets::Binary,
                other => bail!("--targets {other}: expected graded or binary"),
            };
        }
        c.validate()?;
        Ok(c)
    }
}

impl RerankConfig {
    /// The fields [`LoraFlags`] sets.
    pub fn lora_options(&mut self) -> LoraOptionsMut<'_> {
        lora_options_of!(self)
    }
}

pub fn run_train(a: TrainRerankArgs, d: DeviceChoice) -> anyhow::Result<()> {
    use crate::data::formats::{Format, Record, RerankerJudgment, load};

    let cfg = a.config()?;
    let model = cfg
        .model
        .clone()
        .context("no model: give --model or `model = ...` in the config")?;
    let data = cfg
        .data
        .clone()
        .context("no data: give --data or `data = ...` in the config")?;
    let device = d.device()?;
    let lm = crate::model::decoder::CausalLm::load_with(&model, &device, cfg.quantize_base)
        .with_context(|| format!("loading {}", model.display()))?;
    let template = match model
        .is_file()
        .then(|| crate::io::gguf::GgufFile::open(&model))
        .transpose()?
    {
        Some(g) => match g
            .get(crate::model::reranker::RERANK_TEMPLATE_KEY)
            .and_then(|v| v.as_str())
        {
            Some(t) => RerankTemplate::parse(t)?,
            None => RerankTemplate::default(),
        },
        None => RerankTemplate::default(),
    };
    let loaded = load(&data, BadLines::Fail)?;
    if loaded.format != Format::Reranker {
        bail!(
            "{}: {} records cannot train a reranker (use reranker judgments {{\"query\", \"document\", \"relevant\"}})",
            data.display(),
            loaded.format
        );
    }
    // The policy governing the judgments is found from their location (or `policy`), never from the
    // working directory; without one only public records pass (Policy::resolve).
    let policy = crate::cli::data::resolve_policy(cfg.policy.as_deref(), &data, cfg.treat_unclassified_as_public)?;
    let records: Vec<RerankerJudgment> = loaded
        .parts
        .iter()
        .flat_map(|p| {
            RerankerJudgment::slice(&p.data)
                .expect("one format")
                .to_vec()
        })
        .collect();
    let governed = policy.apply(records);
    let audit = governed.audit();
    eprintln!(
        "{} of {} judgments kept by the governance policy ({} excluded)",
        audit.kept,
        audit.total,
        audit.excluded.len()
    );
    let audit = serde_json::to_value(audit)?;
    let judged: Vec<Judged> = governed
        .iter()
        .map(|r| Judged {
            query: r.query.clone(),
            document: r.document.clone(),
            grade: r.relevant.grade(),
        })
        .collect();
    let out = crate::train::rerank::fit(&cfg, &lm, &template, &judged, audit, true)?;
    println!(
        "Trained {} iterations on {} {} items ({:.2} prompts/s)",
        out.iterations,
        out.train_items,
        if cfg.loss == RerankLoss::Listwise {
            "listwise"
        } else {
            "pointwise"
        },
        out.pairs_per_s
    );
    let show = |name: &str, c: &Option<crate::train::rerank::Calibration>| {
        if let Some(c) = c {
            println!(
                "{name}: Brier {:.4}, ECE {:.4}, mean P(yes) {:.3} (positive rate {:.3}, {} held-out judgments)",
                c.brier, c.ece, c.mean_p, c.positive_rate, c.n
            );
        }
    };
    show("base ", &out.base);
    show("tuned", &out.tuned);
    println!(
        "Adapter saved to {}",
        cfg.adapter_path
            .join(crate::export::mlx::WEIGHTS_FILE)
            .display()
    );
    Ok(())
}

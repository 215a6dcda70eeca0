//! The main job: an end-to-end experiment on the bundled data and models.
//!
//! 1. Read the bundled corpus, held-out test queries and graded qrels; govern the training pairs.
//! 2. Search the corpus three ways: BM25 (SQLite FTS5, as QMD), exact dense search with the base
//!    all-MiniLM-L6-v2, and QMD-style hybrid fusion (RRF) of the two.
//! 3. Fine-tune the encoder on the governed pairs (MultipleNegativesRankingLoss), search again.
//! 4. A/B-compare base vs tuned (paired randomization test, bootstrap CIs, Holm) and write the
//!    report (`reports/<experiment>/<run-id>/`), with the tuned model exported as a
//!    sentence-transformers folder and every run file stored so `tunelab report rerun` can check it.
//!
//! ```no_run
//! let cfg = tunelab::experiment::ExperimentConfig::default();
//! let out = tunelab::experiment::run(&cfg, tunelab::device::DeviceChoice::Cpu).unwrap();
//! println!("{}", out.report_html.display());
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::data::corpus::{Document, read_corpus};
use crate::data::formats::{EmbeddingPair, read_records};
use crate::data::governance::Policy;
use crate::data::jsonl::{BadLines, read_jsonl};
use crate::data::trec::{Qrels, Run};
use crate::device::DeviceChoice;
use crate::eval::compare::{CompareOptions, compare};
use crate::eval::metrics::{EvalOptions, Measure, evaluate};
use crate::eval::search::bm25::{Bm25Config, Bm25Index};
use crate::eval::search::dense::DenseIndex;
use crate::eval::search::fusion::{RrfConfig, reciprocal_rank_fusion};
use crate::io::tokenizer::TextTokenizer;
use crate::model::bert::SentenceEncoder;
use crate::report::manifest::{EvaluationSpec, Manifest, RunDir, SystemRun};
use crate::report::{AbReportInput, ComparisonRow, LossPoint, write_ab_report};
use crate::train::contrastive_trainer::{ContrastiveConfig, ContrastiveTrainer};
use crate::train::encoder::TrainableEncoder;

pub mod pipeline;

/// Everything the experiment depends on; recorded whole in the manifest.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExperimentConfig {
    pub name: String,
    pub datasets: PathBuf,
    pub model: PathBuf,
    pub reports: PathBuf,
    pub seed: u64,
    /// Documents retrieved per query (MRR is MRR@depth).
    pub depth: usize,
    /// trec_eval measure names.
    pub measures: Vec<String>,
    /// Token limit while training (documents are embedded at the model's own limit).
    pub train_max_len: usize,
    /// Skip fine-tuning: compare BM25 against the base dense model instead.
    pub skip_training: bool,
    pub train: ContrastiveConfig,
    pub permutations: usize,
}

impl Default for ExperimentConfig {
    fn default() -> Self {
        let train = ContrastiveConfig {
            learning_rate: 5e-5,
            batch_size: 32,
            epochs: 2,
            symmetric: true,
            seed: 42,
            output_dir: PathBuf::new(), // set inside the run directory
            ..ContrastiveConfig::default()
        };
        Self {
            name: "main-experiment".into(),
            datasets: "datasets".into(),
            model: "models/all-MiniLM-L6-v2".into(),
            reports: "reports".into(),
            seed: 42,
            depth: 10,
            measures: ["recip_rank", "ndcg_cut.10", "P.5", "recall.10", "success.1"].map(String::from).to_vec(),
            train_max_len: 96,
            skip_training: false,
            train,
            permutations: 10_000,
        }
    }
}

/// Where the experiment wrote its results, and the headline numbers.
#[derive(Debug)]
pub struct ExperimentOutcome {
    pub run_dir: PathBuf,
    pub report_html: PathBuf,
    /// Mean of each measure for each system (`bm25`, `dense-base`, `hybrid-base`, `dense-tuned`, ...).
    pub means: BTreeMap<String, BTreeMap<String, f64>>,
    /// The A/B rows of the report (A = baseline, B = candidate).
    pub comparison: Vec<ComparisonRow>,
}

#[derive(Deserialize)]
struct TestQuery {
    qid: String,
    query: String,
}

/// Run the experiment on `device`.
pub fn run(cfg: &ExperimentConfig, choice: DeviceChoice) -> anyhow::Result<ExperimentOutcome> {
    let device = choice.device()?;
    device.seed(cfg.seed);
    let measures = Measure::parse_list(&cfg.measures)?;
    let ds = &cfg.datasets;

    let run_dir = RunDir::create(&cfg.reports, &cfg.name)?;
    let mut manifest = Manifest::new(&run_dir, cfg.seed, serde_json::to_value(cfg)?, choice.to_string());
    println!("run directory: {}", run_dir.path().display());

    // 1. Data. The corpus is what a user searches (all of it is indexed); only training data is governed.
    let t = Instant::now();
    let corpus_dir = ds.join("corpus");
    let docs: Vec<Document> = read_corpus(&corpus_dir, BadLines::Fail)?.records;
    let queries_path = ds.join("queries/test.jsonl");
    let queries: Vec<(String, String)> = read_jsonl::<TestQuery>(&queries_path, BadLines::Fail)?
        .records
        .into_iter()
        .map(|q| (q.qid, q.query))
        .collect();
    let qrels_path = ds.join("qrels/test.qrels");
    let qrels = Qrels::read(&qrels_path)?;
    let policy_path = ds.join("governance/policy.toml");
    let policy = Policy::load(&policy_path)?;
    let pairs_path = ds.join("pairs/pairs.jsonl");
    let pairs = policy.apply(read_records::<EmbeddingPair>(&pairs_path, BadLines::Fail)?.records);
    for p in [&corpus_dir, &queries_path, &qrels_path, &policy_path, &pairs_path] {
        manifest.add_input(p)?;
    }
    manifest.governance = serde_json::to_value(pairs.audit())?;
    manifest.record_timing("load_data", t.elapsed());
    println!(
        "data: {} documents, {} test queries, {} training pairs kept of {} ({} excluded by the policy)",
        docs.len(),
        queries.len(),
        pairs.len(),
        pairs.audit().total,
        pairs.audit().excluded.len()
    );

    let mut runs: BTreeMap<String, Run> = BTreeMap::new();

    // 2. BM25 through FTS5.
    let t = Instant::now();
    let bm25 = Bm25Index::in_memory(&docs, &Bm25Config::default())?;
    runs.insert("bm25".into(), bm25.run(&queries, cfg.depth, "bm25")?);
    manifest.record_timing("bm25", t.elapsed());

    // 3. Dense search with the base encoder, and hybrid fusion.
    let model_files = ["config.json", "model.safetensors", "tokenizer.json"];
    if let Some(missing) = model_files.iter().find(|f| !cfg.model.join(f).is_file()) {
        bail!(
            "model file {} is missing: run scripts/fetch-models.sh (it fetches all-MiniLM-L6-v2 into models/)",
            cfg.model.join(missing).display()
        );
    }
    for f in model_files {
        manifest.add_input(&cfg.model.join(f))?;
    }
    let mut encoder = SentenceEncoder::load(&cfg.model, &device)
        .with_context(|| format!("loading {}", cfg.model.display()))?;
    let doc_texts: Vec<String> = docs.iter().map(|d| format!("{}\n{}", d.title, d.text)).collect();
    let doc_ids: Vec<String> = docs.iter().map(|d| d.id.clone()).collect();
    let query_ids: Vec<String> = queries.iter().map(|q| q.0.clone()).collect();
    let query_texts: Vec<&str> = queries.iter().map(|q| q.1.as_str()).collect();

    let t = Instant::now();
    let base = dense_run(&encoder, &doc_texts, &doc_ids, &query_texts, &query_ids, cfg.depth, "dense-base")?;
    manifest.record_timing("dense_base", t.elapsed());
    runs.insert("hybrid-base".into(), reciprocal_rank_fusion(&[&runs["bm25"], &base], &RrfConfig::default(), "hybrid-base"));
    runs.insert("dense-base".into(), base);

    // 4. Fine-tune on the governed pairs.
    let mut loss_log = None;
    let (system_a, system_b) = if cfg.skip_training {
        ("bm25".to_string(), "dense-base".to_string())
    } else {
        let t = Instant::now();
        let mut train_cfg = cfg.train.clone();
        train_cfg.output_dir = run_dir.path().join("training");
        // `auto` (the default): f16 on a GPU that computes it, f32 on the CPU; recorded resolved.
        train_cfg.dtype = train_cfg.resolved_dtype(&encoder);
        manifest.config["train"]["dtype"] = serde_json::to_value(train_cfg.dtype)?;
        let full_len = encoder.tokenizer.max_len();
        encoder.tokenizer = with_max_len(&encoder.tokenizer, cfg.train_max_len)?;
        println!("fine-tuning on {} pairs ({} epochs, batch {})", pairs.len(), train_cfg.epochs, train_cfg.batch_size);
        let trained = ContrastiveTrainer::new(train_cfg.clone())
            .fit(encoder, &pairs, None)
            .context("fine-tuning the encoder")?;
        manifest.record_timing("train", t.elapsed());
        let mut tuned = trained.encoder.for_inference();
        tuned.tokenizer = with_max_len(&tuned.tokenizer, full_len)?;
        loss_log = LossPoint::read_log(&train_cfg.output_dir.join("loss.jsonl")).ok();

        let t = Instant::now();
        let tuned_run = dense_run(&tuned, &doc_texts, &doc_ids, &query_texts, &query_ids, cfg.depth, "dense-tuned")?;
        manifest.record_timing("dense_tuned", t.elapsed());
        runs.insert("hybrid-tuned".into(), reciprocal_rank_fusion(&[&runs["bm25"], &tuned_run], &RrfConfig::default(), "hybrid-tuned"));
        runs.insert("dense-tuned".into(), tuned_run);

        let t = Instant::now();
        let export_dir = run_dir.path().join("model");
        let meta = serde_json::json!({ "governance": pairs.audit(), "run_id": manifest.run_id, "config": cfg });
        crate::export::sentence_transformers::write_folder(&tuned, &export_dir, meta.clone())?;
        // The same model for GGUF-based engines (QMD, llama.cpp's llama-embedding), f16 as llama.cpp's converter writes it.
        let gguf = run_dir.path().join("model.f16.gguf");
        let summary = crate::export::gguf_bert::write_bert_gguf(&tuned, &gguf, crate::export::gguf_bert::GgufOutType::F16, meta)?;
        manifest.record_timing("export", t.elapsed());
        println!("tuned model exported to {} and {} ({} tensors, sha256 {})", export_dir.display(), gguf.display(), summary.tensors, &summary.sha256[..12]);
        ("dense-base".to_string(), "dense-tuned".to_string())
    };

    // 5. Evaluate every system, compare A vs B, store the runs for `report rerun`.
    // Every judged query counts (trec_eval -c): a system that retrieves nothing for a query scores 0
    // there, in the table, the comparison and the report alike (BM25 with QMD's all-terms queries
    // answers few of them; without -c its per-query values and the comparison disagreed).
    let opts = EvalOptions { complete: true, ..EvalOptions::default() };
    let mut means = BTreeMap::new();
    let mut stored = Vec::new();
    for (name, run) in &runs {
        let e = evaluate(&qrels, run, &measures, &opts);
        let row: BTreeMap<String, f64> =
            e.measures.iter().zip(&e.summaries).map(|(m, v)| (m.trec_name(), *v)).collect();
        println!("{name:<14} {}", row.iter().map(|(m, v)| format!("{m}={v:.4}")).collect::<Vec<_>>().join("  "));
        means.insert(name.clone(), row);
        let path = run_dir.path().join(format!("{name}.run"));
        run.write(&path)?;
        if *name == system_a || *name == system_b {
            stored.push(SystemRun { system: name.clone(), run: run_dir.store_input(&path, &format!("{name}.run"))? });
        }
    }
    std::fs::write(run_dir.path().join("systems.json"), serde_json::to_string_pretty(&means)?)?;

    let copts = CompareOptions { seed: cfg.seed, permutations: cfg.permutations, complete: true, ..CompareOptions::default() };
    let cmp = compare(&qrels, &runs[&system_a], &runs[&system_b], &measures, &copts);
    let comparison: Vec<ComparisonRow> = cmp.metrics.iter().map(ComparisonRow::from).collect();
    manifest.evaluation = Some(EvaluationSpec {
        qrels: run_dir.store_input(&qrels_path, "test.qrels")?,
        runs: stored,
        measures: cfg.measures.clone(),
        seed: cfg.seed,
        permutations: cfg.permutations as u64,
        bootstrap: Some(copts.bootstrap_samples as u64),
        options: opts.clone(),
    });
    manifest.tools.insert("sqlite".into(), rusqlite::version().to_string());

    let values = |name: &str| crate::report::per_query_values(&evaluate(&qrels, &runs[name], &measures, &opts));
    let input = AbReportInput {
        title: format!("{system_b} vs {system_a} on the bundled Ostrel Valley test queries"),
        system_a: system_a.clone(),
        system_b: system_b.clone(),
        per_query_a: values(&system_a),
        per_query_b: values(&system_b),
        comparison: comparison.clone(),
        loss_log,
        manifest,
        examples: None,
        tables: Vec::new(),
    };
    let paths = write_ab_report(&run_dir, &input)?;
    println!("\n{}", cmp.to_table());
    println!("report: {}", paths.report_html.display());
    Ok(ExperimentOutcome { run_dir: paths.dir, report_html: paths.report_html, means, comparison })
}

/// Embed documents and queries, search exactly by cosine, return the top `depth` per query.
fn dense_run(
    encoder: &SentenceEncoder,
    doc_texts: &[String],
    doc_ids: &[String],
    queries: &[&str],
    query_ids: &[String],
    depth: usize,
    tag: &str,
) -> anyhow::Result<Run> {
    let docs: Vec<&str> = doc_texts.iter().map(String::as_str).collect();
    let d = encoder.embed_documents(&docs, 32)?;
    let q = encoder.embed_queries(queries, 32)?;
    let device = encoder.device();
    let to_tensor = |rows: Vec<Vec<f32>>| -> Tensor<2> {
        let (n, dim) = (rows.len(), rows.first().map_or(0, Vec::len));
        Tensor::from_data(TensorData::new(rows.concat(), [n, dim]), &device)
    };
    let index = DenseIndex::new(to_tensor(d), doc_ids.to_vec())?;
    Ok(index.search(to_tensor(q), query_ids, depth, tag)?)
}

fn with_max_len(t: &TextTokenizer, max_len: usize) -> anyhow::Result<TextTokenizer> {
    Ok(TextTokenizer::new(t.inner().clone(), t.path().to_path_buf(), max_len)?)
}

/// Write the experiment's default configuration as TOML (for `tunelab experiment --config`).
pub fn default_config_toml() -> String {
    toml::to_string_pretty(&ExperimentConfig::default()).unwrap_or_default()
}

/// Load a config file (TOML), every field optional.
pub fn load_config(path: &Path) -> anyhow::Result<ExperimentConfig> {
    let text = crate::io::text::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

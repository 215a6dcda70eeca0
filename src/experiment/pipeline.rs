//! `tunelab experiment --pipeline`: every stage of QMD's search pipeline
//! ([`crate::eval::search::qmd`]) with base and tuned models — the embedder, the query expansions,
//! the reranker, one at a time and all together — on the bundled held-out queries, in one A/B
//! report (per-stage metrics, paired randomization tests, bootstrap CIs, Holm across every row).
//!
//! Systems: `base` (every model base), `tuned-<part>` for each part given a tuned model (that part
//! tuned, the others base), and `tuned-all` when two or more parts are tuned. Each comparison row
//! is `<system> · <stage> · <measure>`, B − A with A = `base` on the same stage.
//!
//! ```no_run
//! use tunelab::experiment::pipeline::{PipelineExperimentConfig, run};
//! let cfg = PipelineExperimentConfig { tuned_embedder: Some("reports/main-experiment/RUN/model".into()), ..Default::default() };
//! let out = run(&cfg, tunelab::device::DeviceChoice::Cpu, None).unwrap();
//! println!("{}", out.report_html.display());
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::data::corpus::{Document, read_corpus};
use crate::data::jsonl::BadLines;
use crate::data::trec::Qrels;
use crate::device::DeviceChoice;
use crate::eval::compare::{CompareOptions, compare, holm};
use crate::eval::metrics::{EvalOptions, Measure, evaluate};
use crate::eval::search::qmd::{
    load_embedder, PrecomputedExpansions, QmdConfig, QmdPipeline, QueryExpander, RunScores, Scorer,
    StageRuns,
};
use crate::model::reranker::Reranker;
use crate::report::manifest::{Manifest, RunDir};
use crate::report::{AbReportInput, ComparisonRow, QueryValue, ReportTable, write_ab_report};

/// What the pipeline experiment compares; every field optional in TOML.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineExperimentConfig {
    pub name: String,
    /// Holds `corpus/`, `queries/test.jsonl`, `qrels/test.qrels`.
    pub datasets: PathBuf,
    pub reports: PathBuf,
    pub seed: u64,
    pub measures: Vec<String>,
    pub permutations: usize,
    /// The base embedder (a sentence-transformers folder).
    pub base_embedder: PathBuf,
    /// A tuned embedder (e.g. the `model/` folder of a `tunelab experiment` run).
    pub tuned_embedder: Option<PathBuf>,
    /// Expansions of the base expansion model for the test queries (`tunelab eval expansions`'
    /// `expansions.jsonl`, or `{"query","expansions"}` lines). None: no expansion for `base`.
    pub base_expansions: Option<PathBuf>,
    /// The tuned expansion model's expansions.
    pub tuned_expansions: Option<PathBuf>,
    /// The base yes/no LLM reranker (`.gguf` or Hugging Face folder): adds the `full` stage.
    pub base_reranker: Option<PathBuf>,
    /// A LoRA adapter on the base reranker (`tunelab train rerank`'s): the `tuned-reranker` system.
    pub tuned_reranker_adapter: Option<PathBuf>,
    /// The base reranker's scores as a TREC run (`tunelab rerank --out`), instead of
    /// `base_reranker`: the `full` stage blends them as it blends a model's. `tunelab rerank`
    /// must have reranked this experiment's candidates: `--run <run>/runs/base/hybrid+expansion.run
    /// --depth 40` (the `tuned-reranker` system has the same candidates as `base`).
    pub base_rerank_run: Option<PathBuf>,
    /// The tuned reranker's scores of the same candidates: the `tuned-reranker` system.
    pub tuned_rerank_run: Option<PathBuf>,
    /// `calibration.json` of the `tunelab train rerank` run that made the tuned reranker: its
    /// Brier score, ECE and reliability bins, base vs tuned, become a section of the report.
    pub rerank_calibration: Option<PathBuf>,
    /// Longest rerank prompt in tokens (None: the model's context, at most 2048), and prompts
    /// per forward pass.
    pub reranker_max_length: Option<usize>,
    pub reranker_batch_size: usize,
    /// QMD's constants.
    pub qmd: QmdConfig,
}

impl Default for PipelineExperimentConfig {
    fn default() -> Self {
        Self {
            name: "search-pipeline".into(),
            datasets: "datasets".into(),
            reports: "reports".into(),
            seed: 42,
            measures: ["recip_rank_cut.10", "recip_rank", "ndcg_cut.10", "recall.20"]
                .map(String::from)
                .to_vec(),
            permutations: 10_000,
            base_embedder: "models/all-MiniLM-L6-v2".into(),
            tuned_embedder: None,
            base_expansions: None,
            tuned_expansions: None,
            base_reranker: None,
            tuned_reranker_adapter: None,
            base_rerank_run: None,
            tuned_rerank_run: None,
            rerank_calibration: None,
            reranker_max_length: None,
            reranker_batch_size: 8,
            qmd: QmdConfig::default(),
        }
    }
}

/// Base and tuned rerankers, for callers that have them (the `full` stage).
pub struct Rerankers<'a> {
    pub base: &'a dyn Scorer,
    pub tuned: Option<&'a dyn Scorer>,
}

/// Where the report went and the numbers in it.
#[derive(Debug)]
pub struct PipelineOutcome {
    pub run_dir: PathBuf,
    pub report_html: PathBuf,
    /// system → stage → measure → mean.
    pub means: BTreeMap<String, BTreeMap<String, BTreeMap<String, f64>>>,
    pub comparison: Vec<ComparisonRow>,
    /// Queries per second of each system's whole pipeline (CPU time of this process, wall clock).
    pub queries_per_second: BTreeMap<String, f64>,
}

#[derive(Deserialize)]
struct TestQuery {
    qid: String,
    query: String,
}

/// One configuration of the three models.
struct System<'a> {
    name: String,
    tuned_embedder: bool,
    expander: Option<&'a dyn QueryExpander>,
    reranker: Option<&'a dyn Scorer>,
}

fn load_pipeline(
    docs: &[Document],
    model: &Path,
    device: &burn::tensor::Device,
    qmd: &QmdConfig,
) -> anyhow::Result<QmdPipeline> {
    QmdPipeline::build(docs, load_embedder(model, device)?, qmd.clone())
}

/// Run the pipeline experiment. `rerankers` adds the `full` stage (and a `tuned-reranker`
/// system when a tuned one is given); without it, `cfg.base_reranker` (and
/// `cfg.tuned_reranker_adapter`) are loaded as [`Reranker`]s when set, or the scores of
/// `cfg.base_rerank_run` (and `cfg.tuned_rerank_run`) are read ([`RunScores`]).
pub fn run(
    cfg: &PipelineExperimentConfig,
    choice: DeviceChoice,
    rerankers: Option<Rerankers<'_>>,
) -> anyhow::Result<PipelineOutcome> {
    let device = choice.device()?;
    if cfg.tuned_reranker_adapter.is_some() && cfg.base_reranker.is_none() {
        bail!(
            "tuned_reranker_adapter (--tuned-reranker-adapter) needs base_reranker (--base-reranker)"
        );
    }
    let load_reranker = |adapter: Option<&Path>| -> anyhow::Result<Reranker> {
        let model = cfg.base_reranker.as_deref().expect("checked above");
        let mut r = Reranker::load_merged(model, adapter, &device)?;
        if let Some(n) = cfg.reranker_max_length {
            r.max_length = n;
        }
        r.batch_size = cfg.reranker_batch_size.max(1);
        Ok(r)
    };
    if cfg.base_rerank_run.is_some() && cfg.base_reranker.is_some() {
        bail!(
            "give the base reranker as a model (base_reranker, --base-reranker) or as scores (base_rerank_run, --base-rerank-run), not both"
        );
    }
    if cfg.tuned_rerank_run.is_some() && cfg.base_rerank_run.is_none() {
        bail!("tuned_rerank_run (--tuned-rerank-run) needs base_rerank_run (--base-rerank-run)");
    }
    let (loaded_base, loaded_tuned) = match (&rerankers, &cfg.base_reranker) {
        (None, Some(_)) => (
            Some(load_reranker(None)?),
            cfg.tuned_reranker_adapter
                .as_deref()
                .map(|a| load_reranker(Some(a)))
                .transpose()?,
        ),
        _ => (None, None),
    };
    let measures = Measure::parse_list(&cfg.measures)?;
    let ds = &cfg.datasets;
    let corpus_dir = ds.join("corpus");
    let queries_path = ds.join("queries/test.jsonl");
    let qrels_path = ds.join("qrels/test.qrels");
    let docs = read_corpus(&corpus_dir, BadLines::Fail)?.records;
    let queries: Vec<(String, String)> =
        crate::data::jsonl::read_jsonl::<TestQuery>(&queries_path, BadLines::Fail)?
            .records
            .into_iter()
            .map(|q| (q.qid, q.query))
            .collect();
    let (file_base, file_tuned) = match (&rerankers, &cfg.base_rerank_run) {
        (None, Some(base)) => (
            Some(RunScores::read(base, &queries)?),
            cfg.tuned_rerank_run
                .as_deref()
                .map(|t| RunScores::read(t, &queries))
                .transpose()?,
        ),
        _ => (None, None),
    };
    let rerankers = rerankers
        .or(loaded_base.as_ref().map(|b| Rerankers {
            base: b as &dyn Scorer,
            tuned: loaded_tuned.as_ref().map(|t| t as &dyn Scorer),
        }))
        .or(file_base.as_ref().map(|b| Rerankers {
            base: b as &dyn Scorer,
            tuned: file_tuned.as_ref().map(|t| t as &dyn Scorer),
        }));
    let qrels = Qrels::read(&qrels_path)?;

    let base_exp = cfg
        .base_expansions
        .as_deref()
        .map(PrecomputedExpansions::read)
        .transpose()?;
    let tuned_exp = cfg
        .tuned_expansions
        .as_deref()
        .map(PrecomputedExpansions::read)
        .transpose()?;
    let (base_rr, tuned_rr) = match &rerankers {
        Some(r) => (Some(r.base), r.tuned),
        None => (None, None),
    };
    let base_x = base_exp.as_ref().map(|e| e as &dyn QueryExpander);
    let tuned_x = tuned_exp.as_ref().map(|e| e as &dyn QueryExpander);
    let mut systems = vec![System {
        name: "base".into(),
        tuned_embedder: false,
        expander: base_x,
        reranker: base_rr,
    }];
    let mut n_tuned = 0;
    if cfg.tuned_embedder.is_some() {
        systems.push(System {
            name: "tuned-embedder".into(),
            tuned_embedder: true,
            expander: base_x,
            reranker: base_rr,
        });
        n_tuned += 1;
    }
    if tuned_x.is_some() {
        systems.push(System {
            name: "tuned-expansion".into(),
            tuned_embedder: false,
            expander: tuned_x,
            reranker: base_rr,
        });
        n_tuned += 1;
    }
    if tuned_rr.is_some() {
        systems.push(System {
            name: "tuned-reranker".into(),
            tuned_embedder: false,
            expander: base_x,
            reranker: tuned_rr,
        });
        n_tuned += 1;
    }
    if n_tuned == 0 {
        bail!(
            "give at least one tuned model: tuned_embedder (--tuned-embedder), tuned_expansions (--tuned-expansions), tuned_reranker_adapter (--tuned-reranker-adapter) or tuned_rerank_run (--tuned-rerank-run)"
        );
    }
    if n_tuned >= 2 {
        systems.push(System {
            name: "tuned-all".into(),
            tuned_embedder: cfg.tuned_embedder.is_some(),
            expander: tuned_x.or(base_x),
            reranker: tuned_rr.or(base_rr),
        });
    }

    let run_dir = RunDir::create(&cfg.reports, &cfg.name)?;
    let mut manifest = Manifest::new(
        &run_dir,
        cfg.seed,
        serde_json::to_value(cfg)?,
        choice.to_string(),
    );
    for p in [&corpus_dir, &queries_path, &qrels_path] {
        manifest.add_input(p)?;
    }
    for p in [
        &cfg.base_expansions,
        &cfg.tuned_expansions,
        &cfg.base_rerank_run,
        &cfg.tuned_rerank_run,
        &cfg.rerank_calibration,
    ]
    .into_iter()
    .flatten()
    {
        manifest.add_input(p)?;
    }
    println!("run directory: {}", run_dir.path().display());

    let t = Instant::now();
    let base_pipe = load_pipeline(&docs, &cfg.base_embedder, &device, &cfg.qmd)?;
    manifest.record_timing("index base embedder", t.elapsed());
    let tuned_pipe = match &cfg.tuned_embedder {
        Some(m) => {
            let t = Instant::now();
            let p = load_pipeline(&docs, m, &device, &cfg.qmd)?;
            manifest.record_timing("index tuned embedder", t.elapsed());
            Some(p)
        }
        None => None,
    };

    let opts = EvalOptions {
        complete: true,
        ..EvalOptions::default()
    };
    let mut all: BTreeMap<String, StageRuns> = BTreeMap::new();
    let mut qps = BTreeMap::new();
    let mut means = BTreeMap::new();
    for s in &systems {
        let pipe = if s.tuned_embedder {
            tuned_pipe.as_ref().expect("loaded above")
        } else {
            &base_pipe
        };
        let t = Instant::now();
        let runs = pipe.run_stages(&queries, s.expander, s.reranker, &format!("{}-", s.name))?;
        manifest.record_timing(
            format!("{}: {} queries", s.name, queries.len()),
            t.elapsed(),
        );
        qps.insert(
            s.name.clone(),
            queries.len() as f64 / t.elapsed().as_secs_f64().max(1e-9),
        );
        runs.write(&run_dir.path().join("runs").join(&s.name))?;
        let mut per_stage = BTreeMap::new();
        for (stage, run) in &runs.runs {
            let e = evaluate(&qrels, run, &measures, &opts);
            let row: BTreeMap<String, f64> = e
                .measures
                .iter()
                .zip(&e.summaries)
                .map(|(m, v)| (m.trec_name(), *v))
                .collect();
            println!(
                "{:<16} {stage:<17} {}",
                s.name,
                row.iter()
                    .map(|(m, v)| format!("{m}={v:.4}"))
                    .collect::<Vec<_>>()
                    .join("  ")
            );
            per_stage.insert(stage.clone(), row);
        }
        means.insert(s.name.clone(), per_stage);
        all.insert(s.name.clone(), runs);
    }
    std::fs::write(
        run_dir.path().join("systems.json"),
        serde_json::to_string_pretty(&means)?,
    )?;

    // Every tuned system against base, stage by stage; Holm over all rows together.
    let copts = CompareOptions {
        seed: cfg.seed,
        permutations: cfg.permutations,
        complete: true,
        ..CompareOptions::default()
    };
    let mut rows: Vec<ComparisonRow> = Vec::new();
    let (mut per_a, mut per_b): (Vec<QueryValue>, Vec<QueryValue>) = (Vec::new(), Vec::new());
    let base = &all["base"];
    for s in systems.iter().skip(1) {
        for (stage, run_b) in &all[&s.name].runs {
            let Some(run_a) = base.runs.get(stage) else {
                continue;
            };
            let cmp = compare(&qrels, run_a, run_b, &measures, &copts);
            let ea = evaluate(&qrels, run_a, &measures, &opts);
            let eb = evaluate(&qrels, run_b, &measures, &opts);
            for m in &cmp.metrics {
                let label = format!("{} · {stage} · {}", s.name, m.measure);
                let mut row = ComparisonRow::from(m);
                row.measure = label.clone();
                rows.push(row);
                for (e, out) in [(&ea, &mut per_a), (&eb, &mut per_b)] {
                    for v in crate::report::per_query_values(e)
                        .into_iter()
                        .filter(|v| v.1 == m.measure)
                    {
                        out.push((v.0, label.clone(), v.2));
                    }
                }
            }
        }
    }
    let adjusted = holm(&rows.iter().map(|r| r.p_value).collect::<Vec<_>>());
    for (r, h) in rows.iter_mut().zip(adjusted) {
        r.p_holm = h;
    }
    manifest
        .tools
        .insert("sqlite".into(), rusqlite::version().to_string());
    let system_b = systems.last().map(|s| s.name.clone()).unwrap_or_default();
    let input = AbReportInput {
        title: format!(
            "QMD's search pipeline on the bundled test queries: tuned models vs base, stage by stage ({})",
            systems
                .iter()
                .skip(1)
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        system_a: "base".into(),
        system_b: if systems.len() > 2 {
            "tuned".into()
        } else {
            system_b
        },
        per_query_a: per_a,
        per_query_b: per_b,
        comparison: rows.clone(),
        loss_log: None,
        manifest,
        examples: None,
        tables: match &cfg.rerank_calibration {
            Some(p) => calibration_tables(p)?,
            None => Vec::new(),
        },
    };
    let paths = write_ab_report(&run_dir, &input)?;
    for (s, q) in &qps {
        println!("{s}: {q:.2} queries/s");
    }
    println!("report: {}", paths.report_html.display());
    Ok(PipelineOutcome {
        run_dir: paths.dir,
        report_html: paths.report_html,
        means,
        comparison: rows,
        queries_per_second: qps,
    })
}

/// The calibration of `train rerank` (`calibration.json`: base and tuned P(yes) on held-out
/// training judgments) as two report tables: the scores, and the reliability bins side by side.
pub fn calibration_tables(path: &Path) -> anyhow::Result<Vec<ReportTable>> {
    use crate::train::rerank::Calibration;
    #[derive(Deserialize)]
    struct File {
        base: Option<Calibration>,
        tuned: Option<Calibration>,
        labels: Option<String>,
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let f: File = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a `tunelab train rerank` calibration.json", path.display()))?;
    let systems: Vec<(&str, &Calibration)> = [("base", &f.base), ("tuned", &f.tuned)]
        .into_iter()
        .filter_map(|(n, c)| c.as_ref().map(|c| (n, c)))
        .collect();
    if systems.is_empty() {
        bail!("{}: has neither a base nor a tuned calibration", path.display());
    }
    let labels = f.labels.unwrap_or_else(|| "relevant >= 1".into());
    let rate = systems[0].1.positive_rate;
    let scores = ReportTable {
        title: "Reranker calibration (held-out training judgments)".into(),
        caption: format!(
            "P(yes) of the base and the tuned reranker on judgments of training queries held out from \
             training, labels {labels}, from `{}`. QMD blends P(yes) with the fused rank, so tuning must \
             keep it calibrated. Brier: mean squared error of P(yes); ECE: expected calibration error over \
             equal-width bins. For scale: a constant P(yes) equal to the positive rate scores Brier \
             r(1 − r) = {:.4} and ECE 0, so a Brier near it means calibrated but not discriminating.",
            path.display(),
            rate * (1.0 - rate)
        ),
        header: ["reranker", "judgments", "Brier", "ECE", "mean P(yes)", "positive rate"]
            .map(String::from)
            .to_vec(),
        rows: systems
            .iter()
            .map(|(n, c)| {
                vec![
                    n.to_string(),
                    c.n.to_string(),
                    format!("{:.4}", c.brier),
                    format!("{:.4}", c.ece),
                    format!("{:.3}", c.mean_p),
                    format!("{:.3}", c.positive_rate),
                ]
            })
            .collect(),
    };
    let bins = systems.iter().map(|(_, c)| c.bins.len()).max().unwrap_or(0);
    let mut header = vec!["P(yes) bin".to_string()];
    for (n, _) in &systems {
        header.extend([format!("{n}: judgments"), format!("{n}: mean P(yes)"), format!("{n}: relevant")]);
    }
    let rows = (0..bins)
        .map(|b| {
            let mut row = vec![format!("{:.1}–{:.1}", b as f64 / bins as f64, (b + 1) as f64 / bins as f64)];
            for (_, c) in &systems {
                match c.bins.get(b) {
                    Some(&(n, p, y)) if n > 0 => row.extend([n.to_string(), format!("{p:.3}"), format!("{y:.3}")]),
                    _ => row.extend(["0".to_string(), "–".into(), "–".into()]),
                }
            }
            row
        })
        .collect();
    let reliability = ReportTable {
        title: "Reranker reliability (held-out training judgments)".into(),
        caption: "Judgments per equal-width bin of P(yes), their mean P(yes) and the share that is relevant: \
                  a calibrated reranker has the two close in every bin."
            .into(),
        header,
        rows,
    };
    Ok(vec![scores, reliability])
}

/// Load a config file (TOML), every field optional.
pub fn load_config(path: &Path) -> anyhow::Result<PipelineExperimentConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::rerank::calibration;

    /// The tables hold `train rerank`'s numbers for both rerankers, bin by bin; a file that is
    /// not a calibration, or holds neither system, is refused naming it.
    #[test]
    fn calibration_tables_show_base_and_tuned() {
        let dir = tempfile::tempdir().unwrap();
        let labels = [true, false, false, true, false, false, true, false];
        let base = calibration(&[0.9, 0.8, 0.95, 0.85, 0.9, 0.7, 0.99, 0.88], &labels, 10);
        let tuned = calibration(&[0.7, 0.1, 0.2, 0.6, 0.05, 0.3, 0.8, 0.15], &labels, 10);
        // As `train rerank` writes it.
        let json = serde_json::json!({
            "held_out_judgments": 8, "labels": "relevant >= 1", "base": base, "tuned": tuned,
        });
        let path = dir.path().join("calibration.json");
        std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
        let t = calibration_tables(&path).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].rows.len(), 2);
        assert_eq!(t[0].rows[0][0], "base");
        assert_eq!(t[0].rows[0][2], format!("{:.4}", base.brier));
        assert_eq!(t[0].rows[1][3], format!("{:.4}", tuned.ece));
        assert!(t[0].caption.contains(&format!("{:.4}", 0.375 * 0.625)), "{}", t[0].caption);
        // The last bin, 0.9–1.0 (closed), as train rerank counted it.
        let last = t[1].rows.last().unwrap();
        assert_eq!(last[0], "0.9–1.0");
        assert_eq!(last[1], base.bins[9].0.to_string());
        assert_eq!(t[1].rows.len(), 10);
        assert!(t[1].rows.iter().all(|r| r.len() == 7));

        for bad in ["{}", "[1, 2]", "{\"base\": {\"n\": 1}}", ""] {
            std::fs::write(&path, bad).unwrap();
            let err = format!("{:#}", calibration_tables(&path).unwrap_err());
            assert!(err.contains("calibration.json"), "{bad:?}: {err}");
        }
    }
}

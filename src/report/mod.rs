//! Run directories, manifests, plots and human-readable reports.
//!
//! [`write_ab_report`] writes a full A/B report into a [`RunDir`]:
//!
//! ```text
//! reports/<experiment>/<run-id>/
//!   manifest.json      seed, config, git, versions, input hashes, governance, timings
//!   metrics.arrow      per-query values: system, qid, measure, value (Arrow IPC)
//!   summary.arrow      one row per measure: means, difference, CI, p, Holm p, W/T/L
//!   plots/*.svg|png    metric bars with CIs, CI of the differences, per-query differences,
//!                      training curve (when a loss log is given)
//!   report.md          tables + links to the plots
//!   report.html        self-contained: the SVGs inline, no external resources
//! ```
//!
//! The report takes plain data (per-query `(qid, measure, value)` triples and [`ComparisonRow`]s),
//! so any metric or statistics code can feed it. [`rerun`] recomputes the per-query metrics
//! from the run files stored in the run directory through a [`MetricsEvaluator`] and checks them
//! against `metrics.arrow`, value for value.
//!
//! ```
//! use tunelab::report::{write_ab_report, AbReportInput, ComparisonRow, manifest::{Manifest, RunDir}};
//!
//! let root = tempfile::tempdir().unwrap();
//! let run = RunDir::create(root.path(), "demo").unwrap();
//! let q = |qid: &str, v: f64| (qid.to_string(), "recip_rank".to_string(), v);
//! let input = AbReportInput {
//!     title: "BM25 vs hybrid".into(),
//!     system_a: "bm25".into(),
//!     system_b: "hybrid".into(),
//!     per_query_a: vec![q("q1", 0.5), q("q2", 1.0)],
//!     per_query_b: vec![q("q1", 1.0), q("q2", 1.0)],
//!     comparison: vec![ComparisonRow {
//!         measure: "recip_rank".into(), mean_a: 0.75, mean_b: 1.0, diff: 0.25,
//!         ci_low: 0.0, ci_high: 0.5, p_value: 1.0, p_holm: 1.0, wins: 1, ties: 1, losses: 0,
//!     }],
//!     loss_log: None,
//!     manifest: Manifest::new(&run, 42, serde_json::json!({}), "cpu"),
//!     examples: None,
//!     tables: Vec::new(),
//! };
//! let paths = write_ab_report(&run, &input).unwrap();
//! assert!(std::fs::read_to_string(paths.report_html).unwrap().contains("<svg"));
//! ```

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use polars::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

pub(crate) mod fonts;
pub mod html;
pub mod manifest;
pub mod plots;

use manifest::{Manifest, RunDir};

/// Why a report could not be written or re-run.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0} already exists; reports never overwrite a file")]
    Exists(PathBuf),
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: Arrow IPC: {source}")]
    Arrow {
        path: PathBuf,
        #[source]
        source: PolarsError,
    },
    #[error("{path}: drawing the plot failed: {message}")]
    Plot { path: PathBuf, message: String },
    #[error("rendering {name}: {source}")]
    Template {
        name: String,
        #[source]
        source: minijinja::Error,
    },
    #[error("{path}, line {line}: {message}")]
    Parse { path: PathBuf, line: usize, message: String },
    #[error("{path}: SHA-256 is {actual}, the manifest recorded {expected}")]
    HashMismatch { path: PathBuf, expected: String, actual: String },
    #[error("evaluating {path}: {message}")]
    Evaluator { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl ReportError {
    pub(crate) fn io(path: &Path) -> impl FnOnce(io::Error) -> Self + '_ {
        move |source| ReportError::Io { path: path.to_path_buf(), source }
    }
    fn arrow(path: &Path) -> impl FnOnce(PolarsError) -> Self + '_ {
        move |source| ReportError::Arrow { path: path.to_path_buf(), source }
    }
}

/// Create `path` and write `bytes`, failing if it exists.
pub(crate) fn write_new(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    let mut f = create_new(path)?;
    f.write_all(bytes).map_err(ReportError::io(path))
}

fn create_new(path: &Path) -> Result<fs::File, ReportError> {
    fs::OpenOptions::new().write(true).create_new(true).open(path).map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            ReportError::Exists(path.to_path_buf())
        } else {
            ReportError::Io { path: path.to_path_buf(), source: e }
        }
    })
}

/// One query's value of one measure: `(qid, measure, value)`.
pub type QueryValue = (String, String, f64);

/// Flatten an evaluation into `(qid, measure, value)` rows (trec_eval measure names).
pub fn per_query_values(e: &crate::eval::metrics::Evaluation) -> Vec<QueryValue> {
    let mut out = Vec::new();
    for (qid, values) in &e.per_query {
        for (m, v) in e.measures.iter().zip(values) {
            out.push((qid.clone(), m.trec_name(), *v));
        }
    }
    out
}

/// One measure's A/B comparison (B − A), as computed by the statistics code.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ComparisonRow {
    pub measure: String,
    pub mean_a: f64,
    pub mean_b: f64,
    /// `mean_b - mean_a`.
    pub diff: f64,
    /// Bootstrap confidence interval of `diff`.
    pub ci_low: f64,
    pub ci_high: f64,
    /// Two-sided paired randomization test.
    pub p_value: f64,
    /// Holm-corrected across the measures of the report.
    pub p_holm: f64,
    /// Queries where B beats A, ties, and where A beats B.
    pub wins: u32,
    pub ties: u32,
    pub losses: u32,
}

impl From<&crate::eval::compare::MetricComparison> for ComparisonRow {
    /// The row of one measure of [`crate::eval::compare::compare`]'s result.
    fn from(m: &crate::eval::compare::MetricComparison) -> Self {
        ComparisonRow {
            measure: m.measure.clone(),
            mean_a: m.mean_a,
            mean_b: m.mean_b,
            diff: m.difference,
            ci_low: m.ci_low,
            ci_high: m.ci_high,
            p_value: m.p_value,
            p_holm: m.p_holm,
            wins: m.wins as u32,
            ties: m.ties as u32,
            losses: m.losses as u32,
        }
    }
}

/// One point of a training loss log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossPoint {
    pub step: u64,
    pub loss: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_loss: Option<f64>,
}

impl LossPoint {
    /// Read a loss log: JSON lines (`{"step", "loss", "valid_loss"?}`) or CSV/TSV with columns
    /// `step, loss[, valid_loss]` and an optional header (columns then found by name; `val_loss`
    /// is accepted). An empty `valid_loss` cell means none. Errors name the file and line.
    pub fn read_log(path: &Path) -> Result<Vec<LossPoint>, ReportError> {
        let text = fs::read_to_string(path).map_err(ReportError::io(path))?;
        let err = |line: usize, message: String| ReportError::Parse {
            path: path.to_path_buf(),
            line,
            message,
        };
        let mut points = Vec::new();
        let mut columns: [Option<usize>; 3] = [Some(0), Some(1), Some(2)];
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line.starts_with('{') {
                points.extend(json_point(line).map_err(|m| err(i + 1, m))?);
                continue;
            }
            let cells: Vec<&str> = line.split([',', '\t']).map(str::trim).collect();
            if points.is_empty() && cells.first().is_some_and(|c| c.parse::<f64>().is_err()) {
                let find = |names: &[&str]| {
                    cells.iter().position(|c| names.contains(&c.to_ascii_lowercase().as_str()))
                };
                columns = [
                    find(&["step"]),
                    find(&["loss", "train_loss"]),
                    find(&["valid_loss", "val_loss"]),
                ];
                if columns[0].is_none() || columns[1].is_none() {
                    return Err(err(
                        i + 1,
                        format!("header {line:?} needs columns `step` and `loss`"),
                    ));
                }
                continue;
            }
            let cell =
                |c: Option<usize>| c.and_then(|c| cells.get(c)).copied().filter(|s| !s.is_empty());
            let step = cell(columns[0])
                .ok_or_else(|| err(i + 1, "missing field `step`".into()))?
                .parse::<u64>()
                .map_err(|e| err(i + 1, format!("field `step`: {e}")))?;
            let loss = cell(columns[1])
                .ok_or_else(|| err(i + 1, "missing field `loss`".into()))?
                .parse::<f64>()
                .map_err(|e| err(i + 1, format!("field `loss`: {e}")))?;
            let valid_loss = cell(columns[2])
                .map(|s| {
                    s.parse::<f64>().map_err(|e| err(i + 1, format!("field `valid_loss`: {e}")))
                })
                .transpose()?;
            points.push(LossPoint { step, loss, valid_loss });
        }
        Ok(points)
    }
}

/// One JSON line of a loss log: `{"step", "loss", "valid_loss"?}`, or the SFT trainer's
/// `loss.jsonl` names (`iteration`, `loss`, `val_loss`), whose validation lines carry no training
/// loss (then NaN, which the plot leaves out) and its final test line is no point of the curve
/// (`None`).
fn json_point(line: &str) -> Result<Option<LossPoint>, String> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
    if v.get("test_loss").is_some() && v.get("loss").is_none() {
        return Ok(None);
    }
    let field = |names: [&str; 2]| names.iter().find_map(|n| v.get(*n)).filter(|x| !x.is_null());
    let number = |names: [&str; 2]| -> Result<Option<f64>, String> {
        field(names).map(|x| x.as_f64().ok_or_else(|| format!("field `{}`: not a number", names[0]))).transpose()
    };
    let step = field(["step", "iteration"]).ok_or("missing field `step`")?;
    let step = step.as_u64().ok_or_else(|| format!("field `step`: {step} is not a count"))?;
    let valid_loss = number(["valid_loss", "val_loss"])?;
    let loss = match (number(["loss", "loss"])?, valid_loss) {
        (Some(l), _) => l,
        (None, Some(_)) => f64::NAN,
        (None, None) => return Err("missing field `loss`".into()),
    };
    Ok(Some(LossPoint { step, loss, valid_loss }))
}

/// Everything an A/B report shows.
#[derive(Clone, Debug)]
pub struct AbReportInput {
    pub title: String,
    /// Name of the baseline system (A).
    pub system_a: String,
    /// Name of the candidate system (B); differences are B − A.
    pub system_b: String,
    pub per_query_a: Vec<QueryValue>,
    pub per_query_b: Vec<QueryValue>,
    /// One row per measure, in the order the report shows them.
    pub comparison: Vec<ComparisonRow>,
    pub loss_log: Option<Vec<LossPoint>>,
    pub manifest: Manifest,
    /// Inputs shown side by side with what each system made of them (none: no section).
    pub examples: Option<ExampleSet>,
    /// Further tables, each its own section after the plots (a reranker's calibration, say).
    pub tables: Vec<ReportTable>,
}

/// A table of values the per-query comparison does not hold, as text cells.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReportTable {
    pub title: String,
    /// A paragraph under the title: what the numbers are and where they come from.
    pub caption: String,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

/// Worked examples for a report: `caption` says how they were chosen.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExampleSet {
    pub caption: String,
    pub items: Vec<PairedExample>,
}

/// One input with system A's and system B's output for it (a query and two models' expansions).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PairedExample {
    pub id: String,
    pub input: String,
    pub a: String,
    pub b: String,
    /// A short line under each output (its score, say).
    pub note_a: String,
    pub note_b: String,
}

/// The files a report wrote.
#[derive(Clone, Debug)]
pub struct ReportPaths {
    pub dir: PathBuf,
    pub manifest: PathBuf,
    pub metrics: PathBuf,
    pub summary: PathBuf,
    pub report_md: PathBuf,
    pub report_html: PathBuf,
    /// Every plot file (SVG and PNG).
    pub plots: Vec<PathBuf>,
}

/// Resamples for the per-system confidence intervals drawn on the metric bars.
pub const BAR_CI_RESAMPLES: usize = 2000;

/// Write a complete A/B report into `run` (see the module docs for the layout).
///
/// Checks first, writes nothing on bad input: system names differ; every compared measure has
/// per-query values for both systems; each row's `mean_a`/`mean_b` equals the mean of its
/// per-query values (to 1e-9), so the report cannot show numbers that disagree with its own
/// tables; the manifest belongs to `run`; a manifest `evaluation` names exactly the two systems.
pub fn write_ab_report(run: &RunDir, input: &AbReportInput) -> Result<ReportPaths, ReportError> {
    let data = ReportData::prepare(input)?;
    if input.manifest.run_id != run.run_id || input.manifest.experiment != run.experiment {
        return Err(ReportError::Invalid(format!(
            "manifest is for {}/{} but the run directory is {}/{}",
            input.manifest.experiment, input.manifest.run_id, run.experiment, run.run_id
        )));
    }
    if let Some(eval) = &input.manifest.evaluation {
        let named: BTreeSet<&str> = eval.runs.iter().map(|r| r.system.as_str()).collect();
        let ours: BTreeSet<&str> = [input.system_a.as_str(), input.system_b.as_str()].into();
        if named != ours || eval.runs.len() != 2 {
            return Err(ReportError::Invalid(format!(
                "manifest evaluation lists systems {named:?}, the report compares {ours:?}"
            )));
        }
    }

    let dir = run.path().to_path_buf();
    let manifest = input.manifest.write(run)?;

    let metrics = dir.join("metrics.arrow");
    let rows: Vec<(&str, &QueryValue)> = input
        .per_query_a
        .iter()
        .map(|v| (input.system_a.as_str(), v))
        .chain(input.per_query_b.iter().map(|v| (input.system_b.as_str(), v)))
        .collect();
    write_ipc(&metrics, &mut metrics_frame(&rows).map_err(ReportError::arrow(&metrics))?)?;
    let summary = dir.join("summary.arrow");
    write_ipc(
        &summary,
        &mut summary_frame(&input.comparison, &data.paired)
            .map_err(ReportError::arrow(&summary))?,
    )?;

    let figures = plots::render_all(&run.plots_dir(), input, &data)?;
    let plot_files = figures.iter().flat_map(|f| [f.svg.clone(), f.png.clone()]).collect();

    let report_md = dir.join("report.md");
    write_new(&report_md, html::render_markdown(input, &data, &figures)?.as_bytes())?;
    let report_html = dir.join("report.html");
    write_new(&report_html, html::render_html(input, &data, &figures)?.as_bytes())?;

    Ok(ReportPaths { dir, manifest, metrics, summary, report_md, report_html, plots: plot_files })
}

/// Derived numbers shared by the plots and the documents.
pub(crate) struct ReportData {
    /// Per measure (comparison order): per-query `(qid, a, b)` for queries both systems have.
    pub paired: Vec<Vec<(String, f64, f64)>>,
    /// Per measure: bootstrap CI of each system's mean `[(lo, hi) of A, (lo, hi) of B]`.
    pub bar_ci: Vec<[(f64, f64); 2]>,
    /// Per measure: queries present for only one system.
    pub unpaired: Vec<usize>,
}

impl ReportData {
    fn prepare(input: &AbReportInput) -> Result<Self, ReportError> {
        if input.system_a == input.system_b {
            return Err(ReportError::Invalid(format!(
                "both systems are named {:?}",
                input.system_a
            )));
        }
        if input.comparison.is_empty() {
            return Err(ReportError::Invalid("the comparison has no measures".into()));
        }
        let index = |values: &[QueryValue], system: &str| -> Result<(), ReportError> {
            let mut seen = HashSet::new();
            for (qid, measure, _) in values {
                if !seen.insert((measure, qid)) {
                    return Err(ReportError::Invalid(format!(
                        "{system}: two values for query {qid:?}, measure {measure:?}"
                    )));
                }
            }
            Ok(())
        };
        index(&input.per_query_a, &input.system_a)?;
        index(&input.per_query_b, &input.system_b)?;
        let (mut paired, mut bar_ci, mut unpaired) = (Vec::new(), Vec::new(), Vec::new());
        for (i, row) in input.comparison.iter().enumerate() {
            let of = |values: &[QueryValue]| -> BTreeMap<String, f64> {
                values.iter().filter(|v| v.1 == row.measure).map(|v| (v.0.clone(), v.2)).collect()
            };
            let (va, vb) = (of(&input.per_query_a), of(&input.per_query_b));
            for (system, values, mean) in
                [(&input.system_a, &va, row.mean_a), (&input.system_b, &vb, row.mean_b)]
            {
                if values.is_empty() {
                    return Err(ReportError::Invalid(format!(
                        "measure {:?}: no per-query values for system {system:?}",
                        row.measure
                    )));
                }
                let m = values.values().sum::<f64>() / values.len() as f64;
                if (m - mean).abs() > 1e-9 {
                    return Err(ReportError::Invalid(format!(
                        "measure {:?}, system {system:?}: the comparison says mean {mean}, the per-query values average {m}",
                        row.measure
                    )));
                }
            }
            let pairs: Vec<(String, f64, f64)> =
                va.iter().filter_map(|(q, x)| vb.get(q).map(|y| (q.clone(), *x, *y))).collect();
            let only_one = va.len() + vb.len() - 2 * pairs.len();
            let seed = input.manifest.seed.wrapping_add(i as u64);
            let ci_a = bootstrap_mean_ci(
                &va.values().copied().collect::<Vec<_>>(),
                0.95,
                BAR_CI_RESAMPLES,
                seed,
            );
            let ci_b = bootstrap_mean_ci(
                &vb.values().copied().collect::<Vec<_>>(),
                0.95,
                BAR_CI_RESAMPLES,
                seed,
            );
            paired.push(pairs);
            bar_ci.push([ci_a, ci_b]);
            unpaired.push(only_one);
        }
        Ok(Self { paired, bar_ci, unpaired })
    }
}

/// Percentile bootstrap confidence interval of a mean: `resamples` seeded resamples with
/// replacement (ChaCha8), the `(1-level)/2` and `(1+level)/2` quantiles of their means (nearest
/// rank). Empty input gives `(NaN, NaN)`.
pub fn bootstrap_mean_ci(values: &[f64], level: f64, resamples: usize, seed: u64) -> (f64, f64) {
    if values.is_empty() || resamples == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = values.len();
    let mut means: Vec<f64> = (0..resamples)
        .map(|_| (0..n).map(|_| values[rng.random_range(0..n)]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    let at = |q: f64| means[((q * resamples as f64).ceil() as usize).clamp(1, resamples) - 1];
    (at((1.0 - level) / 2.0), at((1.0 + level) / 2.0))
}

fn metrics_frame(rows: &[(&str, &QueryValue)]) -> PolarsResult<DataFrame> {
    df!(
        "system" => rows.iter().map(|r| r.0).collect::<Vec<_>>(),
        "qid" => rows.iter().map(|r| r.1.0.as_str()).collect::<Vec<_>>(),
        "measure" => rows.iter().map(|r| r.1.1.as_str()).collect::<Vec<_>>(),
        "value" => rows.iter().map(|r| r.1.2).collect::<Vec<_>>(),
    )
}

fn summary_frame(
    rows: &[ComparisonRow],
    paired: &[Vec<(String, f64, f64)>],
) -> PolarsResult<DataFrame> {
    let f = |g: fn(&ComparisonRow) -> f64| rows.iter().map(g).collect::<Vec<f64>>();
    let u = |g: fn(&ComparisonRow) -> u32| rows.iter().map(g).collect::<Vec<u32>>();
    df!(
        "measure" => rows.iter().map(|r| r.measure.as_str()).collect::<Vec<_>>(),
        "mean_a" => f(|r| r.mean_a),
        "mean_b" => f(|r| r.mean_b),
        "diff" => f(|r| r.diff),
        "ci_low" => f(|r| r.ci_low),
        "ci_high" => f(|r| r.ci_high),
        "p_value" => f(|r| r.p_value),
        "p_holm" => f(|r| r.p_holm),
        "wins" => u(|r| r.wins),
        "ties" => u(|r| r.ties),
        "losses" => u(|r| r.losses),
        "n_paired" => paired.iter().map(|p| p.len() as u32).collect::<Vec<u32>>(),
    )
}

fn write_ipc(path: &Path, df: &mut DataFrame) -> Result<(), ReportError> {
    let mut file = create_new(path)?;
    IpcWriter::new(&mut file).finish(df).map_err(ReportError::arrow(path))
}

/// Read a `metrics.arrow` back as `(system, qid, measure, value)` rows, in file order.
pub fn read_metrics(path: &Path) -> Result<Vec<(String, String, String, f64)>, ReportError> {
    let file = fs::File::open(path).map_err(ReportError::io(path))?;
    let df = IpcReader::new(file).finish().map_err(ReportError::arrow(path))?;
    let get = |name: &str| df.column(name).map_err(ReportError::arrow(path));
    let (system, qid, measure, value) =
        (get("system")?.str(), get("qid")?.str(), get("measure")?.str(), get("value")?.f64());
    let (system, qid, measure, value) = (
        system.map_err(ReportError::arrow(path))?,
        qid.map_err(ReportError::arrow(path))?,
        measure.map_err(ReportError::arrow(path))?,
        value.map_err(ReportError::arrow(path))?,
    );
    let mut out = Vec::with_capacity(df.height());
    for i in 0..df.height() {
        let missing = || ReportError::Invalid(format!("{}: null in row {}", path.display(), i + 1));
        out.push((
            system.get(i).ok_or_else(missing)?.to_string(),
            qid.get(i).ok_or_else(missing)?.to_string(),
            measure.get(i).ok_or_else(missing)?.to_string(),
            value.get(i).ok_or_else(missing)?,
        ));
    }
    Ok(out)
}

/// Computes per-query metric values of a run file against a qrels file — the plug for
/// `eval::metrics` in [`rerun`]. Closures `Fn(&Path, &Path, &[String]) -> Result<Vec<QueryValue>, E>`
/// implement it.
pub trait MetricsEvaluator {
    /// Per-query values `(qid, measure, value)` of `run` judged by `qrels`, for `measures`.
    /// `options` are the trec_eval switches recorded in the manifest.
    fn evaluate(
        &self,
        qrels: &Path,
        run: &Path,
        measures: &[String],
        options: &crate::eval::metrics::EvalOptions,
    ) -> Result<Vec<QueryValue>, String>;
}

impl<F, E> MetricsEvaluator for F
where
    F: Fn(&Path, &Path, &[String], &crate::eval::metrics::EvalOptions) -> Result<Vec<QueryValue>, E>,
    E: std::fmt::Display,
{
    fn evaluate(
        &self,
        qrels: &Path,
        run: &Path,
        measures: &[String],
        options: &crate::eval::metrics::EvalOptions,
    ) -> Result<Vec<QueryValue>, String> {
        self(qrels, run, measures, options).map_err(|e| e.to_string())
    }
}

/// A value that differs between `metrics.arrow` and the re-run (`None`: missing on that side).
#[derive(Clone, Debug, PartialEq)]
pub struct RerunMismatch {
    pub system: String,
    pub qid: String,
    pub measure: String,
    pub stored: Option<f64>,
    pub recomputed: Option<f64>,
}

/// What [`rerun`] found.
#[derive(Clone, Debug, PartialEq)]
pub struct RerunOutcome {
    pub experiment: String,
    pub run_id: String,
    /// Values compared (union of stored and recomputed keys).
    pub compared: usize,
    pub mismatches: Vec<RerunMismatch>,
}

impl RerunOutcome {
    /// Every value matched exactly (and there was something to compare).
    pub fn matches(&self) -> bool {
        self.compared > 0 && self.mismatches.is_empty()
    }
}

/// Re-evaluate the run files stored with a manifest and compare with its `metrics.arrow`
/// exactly (f64 equality). Stored files are checked against their recorded SHA-256 first.
pub fn rerun(
    manifest_path: &Path,
    evaluator: &dyn MetricsEvaluator,
) -> Result<RerunOutcome, ReportError> {
    let manifest = Manifest::read(manifest_path)?;
    let dir = manifest_path.parent().unwrap_or(Path::new("."));
    let spec = manifest.evaluation.as_ref().ok_or_else(|| {
        ReportError::Invalid(format!(
            "{}: no `evaluation` section, so there is nothing to re-run",
            manifest_path.display()
        ))
    })?;
    let checked = |s: &manifest::StoredInput| -> Result<PathBuf, ReportError> {
        let path = dir.join(&s.path);
        let actual = manifest::hash_file(&path)?;
        if actual != s.sha256 {
            return Err(ReportError::HashMismatch { path, expected: s.sha256.clone(), actual });
        }
        Ok(path)
    };
    let qrels = checked(&spec.qrels)?;
    let mut recomputed: BTreeMap<(String, String, String), f64> = BTreeMap::new();
    for sr in &spec.runs {
        let run_path = checked(&sr.run)?;
        let values = evaluator
            .evaluate(&qrels, &run_path, &spec.measures, &spec.options)
            .map_err(|message| ReportError::Evaluator { path: run_path.clone(), message })?;
        for (qid, measure, v) in values {
            recomputed.insert((sr.system.clone(), qid, measure), v);
        }
    }
    let stored: BTreeMap<(String, String, String), f64> = read_metrics(&dir.join("metrics.arrow"))?
        .into_iter()
        .map(|(s, q, m, v)| ((s, q, m), v))
        .collect();
    let keys: BTreeSet<&(String, String, String)> =
        stored.keys().chain(recomputed.keys()).collect();
    let mut mismatches = Vec::new();
    for key in &keys {
        let (s, r) = (stored.get(*key).copied(), recomputed.get(*key).copied());
        let same = match (s, r) {
            (Some(x), Some(y)) => x == y || (x.is_nan() && y.is_nan()),
            _ => false,
        };
        if !same {
            mismatches.push(RerunMismatch {
                system: key.0.clone(),
                qid: key.1.clone(),
                measure: key.2.clone(),
                stored: s,
                recomputed: r,
            });
        }
    }
    Ok(RerunOutcome {
        experiment: manifest.experiment,
        run_id: manifest.run_id,
        compared: keys.len(),
        mismatches,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_ci_of_constant_and_two_point_data() {
        // Constant data: every resample mean is 3.
        assert_eq!(bootstrap_mean_ci(&[3.0; 5], 0.95, 500, 1), (3.0, 3.0));
        // {0, 1}: a resample mean is 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4. With 2000
        // resamples, ~500 land on each end, far more than the 50 the 2.5% / 97.5% quantiles need.
        assert_eq!(bootstrap_mean_ci(&[0.0, 1.0], 0.95, 2000, 9), (0.0, 1.0));
        // Same seed, same interval; a different seed changes the resamples.
        let v: Vec<f64> = (0..50).map(|i| (i * 37 % 11) as f64 / 10.0).collect();
        assert_eq!(bootstrap_mean_ci(&v, 0.95, 300, 5), bootstrap_mean_ci(&v, 0.95, 300, 5));
        let (lo, hi) = bootstrap_mean_ci(&v, 0.95, 300, 5);
        let mean = v.iter().sum::<f64>() / 50.0;
        assert!(lo < mean && mean < hi);
        assert!(bootstrap_mean_ci(&[], 0.95, 10, 0).0.is_nan());
    }

    #[test]
    fn loss_logs_parse_csv_tsv_and_jsonl_with_line_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("loss.csv");
        fs::write(&p, "step,loss,val_loss\n1,2.5,\n2,2.0,2.2\n").unwrap();
        let got = LossPoint::read_log(&p).unwrap();
        assert_eq!(
            got,
            vec![
                LossPoint { step: 1, loss: 2.5, valid_loss: None },
                LossPoint { step: 2, loss: 2.0, valid_loss: Some(2.2) },
            ]
        );
        let p = dir.path().join("loss.tsv");
        fs::write(&p, "10\t1.5\n").unwrap();
        assert_eq!(
            LossPoint::read_log(&p).unwrap()[0],
            LossPoint { step: 10, loss: 1.5, valid_loss: None }
        );
        let p = dir.path().join("loss.jsonl");
        fs::write(&p, "{\"step\": 3, \"loss\": 0.5, \"valid_loss\": 0.7}\n").unwrap();
        assert_eq!(LossPoint::read_log(&p).unwrap()[0].valid_loss, Some(0.7));
        // The SFT trainer's loss.jsonl: validation lines have no training loss.
        fs::write(&p, "{\"iteration\":0,\"val_loss\":4.5}\n{\"iteration\":1,\"loss\":3.9,\"lr\":1e-4}\n{\"iteration\":1,\"test_loss\":4.0,\"test_ppl\":54.6}\n").unwrap();
        let got = LossPoint::read_log(&p).unwrap();
        assert_eq!(got.len(), 2, "the test line is no point of the curve");
        assert!(got[0].step == 0 && got[0].loss.is_nan() && got[0].valid_loss == Some(4.5));
        assert_eq!(got[1], LossPoint { step: 1, loss: 3.9, valid_loss: None });
        fs::write(&p, "{\"iteration\":2}\n").unwrap();
        assert!(LossPoint::read_log(&p).unwrap_err().to_string().contains("`loss`"));
        fs::write(&p, "step,loss\n1,0.5\n2,abc\n").unwrap();
        let err = LossPoint::read_log(&p).unwrap_err().to_string();
        assert!(
            err.contains("loss.jsonl") && err.contains("line 3") && err.contains("`loss`"),
            "{err}"
        );
    }
}

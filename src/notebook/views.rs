//! Typed views of the library's results for notebook cells: what the notebooks used to assemble
//! by hand (polars tables from result structs, plots walked from a run folder, the governance and
//! split summaries) as one call each. Every view is one rich value (`evcxr_display`) and hands its
//! tables to a [`NotebookReport`] with `add_to`, so a notebook cell is a call or two and its report
//! cell repeats nothing.
//!
//! ```
//! use std::collections::BTreeMap;
//! use tunelab::notebook::means_frame;
//! let mut means = BTreeMap::new();
//! means.insert("bm25".to_string(), BTreeMap::from([("recip_rank".to_string(), 0.5)]));
//! means.insert("dense".to_string(), BTreeMap::from([("recip_rank".to_string(), 0.75), ("P_5".to_string(), 0.2)]));
//! let df = means_frame(&means).unwrap();
//! assert_eq!(df.get_column_names(), ["system", "P_5", "recip_rank"]);
//! assert!(df.column("P_5").unwrap().f64().unwrap().get(0).unwrap().is_nan(), "bm25 has no P_5");
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use polars::prelude::{Column, DataFrame, NamedFrom, PolarsResult, Series};

use super::{Html, NotebookError, NotebookReport, TableOptions, bar_chart_svg, html_table_with, show_report_link, show_svg};
use crate::data::formats::Record;
use crate::data::governance::{Audit, GovernedDataset};
use crate::data::split::Splits;
use crate::data::stats;
use crate::eval::metrics::Evaluation;
use crate::report::ComparisonRow;

/// The five governance classes, in the policy's order (most open first).
pub const CLASSES: [&str; 5] = ["public", "community", "personal", "sacred", "unclassified"];

/// Means per system as a wide table: one row per system, one column per measure (the union of
/// every system's measures, sorted; a measure a system lacks is NaN).
pub fn means_frame(means: &BTreeMap<String, BTreeMap<String, f64>>) -> PolarsResult<DataFrame> {
    let measures: BTreeSet<&String> = means.values().flat_map(|m| m.keys()).collect();
    let mut columns = vec![Column::new("system".into(), means.keys().map(String::as_str).collect::<Vec<_>>())];
    for m in measures {
        let values: Vec<f64> = means.values().map(|row| row.get(m).copied().unwrap_or(f64::NAN)).collect();
        columns.push(Column::new(m.as_str().into(), values));
    }
    DataFrame::new_infer_height(columns)
}

/// Means per system and stage (QMD's pipeline experiment): one row per (system, stage), one
/// column per measure, stages in the order of the outcome's maps.
pub fn stage_means_frame(means: &BTreeMap<String, BTreeMap<String, BTreeMap<String, f64>>>) -> PolarsResult<DataFrame> {
    let measures: BTreeSet<&String> = means.values().flat_map(|s| s.values()).flat_map(|m| m.keys()).collect();
    let rows: Vec<(&String, &String, &BTreeMap<String, f64>)> =
        means.iter().flat_map(|(sys, stages)| stages.iter().map(move |(st, row)| (sys, st, row))).collect();
    let mut columns = vec![
        Column::new("system".into(), rows.iter().map(|r| r.0.as_str()).collect::<Vec<_>>()),
        Column::new("stage".into(), rows.iter().map(|r| r.1.as_str()).collect::<Vec<_>>()),
    ];
    for m in measures {
        columns.push(Column::new(m.as_str().into(), rows.iter().map(|r| r.2.get(m).copied().unwrap_or(f64::NAN)).collect::<Vec<f64>>()));
    }
    DataFrame::new_infer_height(columns)
}

/// The A/B rows of a report as a table: `measure`, the two means under the systems' names,
/// `diff` (B − A) with its bootstrap interval, the randomization p-value, Holm's adjustment and
/// wins/ties/losses of B.
///
/// ```
/// use tunelab::report::ComparisonRow;
/// let row = ComparisonRow { measure: "recip_rank".into(), mean_a: 0.5, mean_b: 0.6, diff: 0.1, ci_low: 0.0, ci_high: 0.2,
///     p_value: 0.04, p_holm: 0.08, wins: 3, ties: 5, losses: 1 };
/// let df = tunelab::notebook::comparison_frame(&[row], "base", "tuned").unwrap();
/// assert_eq!(df.get_column_names(), ["measure", "base", "tuned", "diff", "ci_low", "ci_high", "p", "p_holm", "W/T/L"]);
/// assert_eq!(df.column("W/T/L").unwrap().str().unwrap().get(0), Some("3/5/1"));
/// ```
pub fn comparison_frame(rows: &[ComparisonRow], name_a: &str, name_b: &str) -> PolarsResult<DataFrame> {
    let f = |g: fn(&ComparisonRow) -> f64| rows.iter().map(g).collect::<Vec<f64>>();
    DataFrame::new_infer_height(vec![
        Column::new("measure".into(), rows.iter().map(|r| r.measure.as_str()).collect::<Vec<_>>()),
        Column::new(name_a.into(), f(|r| r.mean_a)),
        Column::new(name_b.into(), f(|r| r.mean_b)),
        Column::new("diff".into(), f(|r| r.diff)),
        Column::new("ci_low".into(), f(|r| r.ci_low)),
        Column::new("ci_high".into(), f(|r| r.ci_high)),
        Column::new("p".into(), f(|r| r.p_value)),
        Column::new("p_holm".into(), f(|r| r.p_holm)),
        Column::new("W/T/L".into(), rows.iter().map(|r| format!("{}/{}/{}", r.wins, r.ties, r.losses)).collect::<Vec<_>>()),
    ])
}

/// Per-query values of measure number `measure` for two evaluations of the same queries, with the
/// query text: `qid`, `query`, `A`, `B`, `B - A`, largest gain of B first, then by qid. Queries
/// only one evaluation has are left out (evaluate both with `complete: true` to keep them all).
///
/// ```
/// use std::collections::BTreeMap;
/// use tunelab::eval::metrics::{Evaluation, Measure};
/// let ev = |v: [f64; 2]| Evaluation { measures: Measure::parse_list(&["recip_rank"]).unwrap(), run_tag: "t".into(),
///     per_query: BTreeMap::from([("q1".to_string(), vec![v[0]]), ("q2".to_string(), vec![v[1]])]), summaries: vec![0.0] };
/// let queries = vec![("q1".to_string(), "salmon weirs".to_string())];
/// let df = tunelab::notebook::per_query_diff_frame(&ev([0.5, 1.0]), &ev([1.0, 0.5]), &queries, 0).unwrap();
/// assert_eq!(df.column("qid").unwrap().str().unwrap().get(0), Some("q1"));
/// assert_eq!(df.column("B - A").unwrap().f64().unwrap().get(1), Some(-0.5));
/// assert_eq!(df.column("query").unwrap().str().unwrap().get(1), Some(""), "q2 has no text");
/// ```
pub fn per_query_diff_frame(a: &Evaluation, b: &Evaluation, queries: &[(String, String)], measure: usize) -> PolarsResult<DataFrame> {
    let text: HashMap<&str, &str> = queries.iter().map(|(q, t)| (q.as_str(), t.as_str())).collect();
    let mut rows: Vec<(&str, &str, f64, f64)> = a
        .per_query
        .iter()
        .filter_map(|(qid, va)| {
            let vb = b.per_query.get(qid)?;
            Some((qid.as_str(), text.get(qid.as_str()).copied().unwrap_or(""), *va.get(measure)?, *vb.get(measure)?))
        })
        .collect();
    rows.sort_by(|x, y| (y.3 - y.2).total_cmp(&(x.3 - x.2)).then(x.0.cmp(y.0)));
    DataFrame::new_infer_height(vec![
        Column::new("qid".into(), rows.iter().map(|r| r.0).collect::<Vec<_>>()),
        Column::new("query".into(), rows.iter().map(|r| r.1).collect::<Vec<_>>()),
        Column::new("A".into(), rows.iter().map(|r| r.2).collect::<Vec<_>>()),
        Column::new("B".into(), rows.iter().map(|r| r.3).collect::<Vec<_>>()),
        Column::new("B - A".into(), rows.iter().map(|r| r.3 - r.2).collect::<Vec<_>>()),
    ])
}

/// A table of files under `root` with their sizes (`file` relative to `root`, `bytes`; a missing
/// file shows 0 bytes): what an export cell lists.
pub fn files_frame(root: &Path, files: &[PathBuf]) -> PolarsResult<DataFrame> {
    DataFrame::new_infer_height(vec![
        Column::new("file".into(), files.iter().map(|f| f.strip_prefix(root).unwrap_or(f).display().to_string()).collect::<Vec<_>>()),
        Column::new("bytes".into(), files.iter().map(|f| std::fs::metadata(f).map_or(0, |m| m.len())).collect::<Vec<u64>>()),
    ])
}

/// A run folder in a notebook: its plots (every `plots/*.svg`, by name, at most `max_plots`) and
/// the links to its report, as one rich value.
///
/// ```
/// let dir = tempfile::tempdir().unwrap();
/// std::fs::create_dir(dir.path().join("plots")).unwrap();
/// for name in ["b.svg", "a.svg", "notes.txt"] {
///     std::fs::write(dir.path().join("plots").join(name), format!("<svg id=\"{name}\"></svg>")).unwrap();
/// }
/// std::fs::write(dir.path().join("report.html"), "").unwrap();
/// let run = tunelab::notebook::RunView::open(dir.path()).unwrap();
/// assert_eq!(run.plots.len(), 2);
/// let html = run.to_html().into_string();
/// assert!(html.find("a.svg").unwrap() < html.find("b.svg").unwrap() && html.contains(">report.html</a>"));
/// assert_eq!(tunelab::notebook::RunView::open(dir.path()).unwrap().max_plots(1).to_html().as_str().matches("<svg").count(), 1);
/// ```
#[derive(Clone, Debug)]
pub struct RunView {
    pub dir: PathBuf,
    /// The run's SVG plots, sorted by file name.
    pub plots: Vec<PathBuf>,
    max_plots: usize,
}

impl RunView {
    /// Read `dir/plots/` (a run without plots shows only its report links).
    pub fn open(dir: impl AsRef<Path>) -> Result<RunView, NotebookError> {
        let dir = dir.as_ref().to_path_buf();
        let plots_dir = dir.join("plots");
        let mut plots: Vec<PathBuf> = match std::fs::read_dir(&plots_dir) {
            Ok(entries) => entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "svg")).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(NotebookError::Io { path: plots_dir, source }),
        };
        plots.sort();
        Ok(RunView { dir, plots, max_plots: usize::MAX })
    }

    /// The newest run of an experiment: the last `<reports_root>/<experiment>/<run-id>/` (run ids
    /// start with a UTC timestamp) that holds a `report.html`.
    pub fn newest(reports_root: impl AsRef<Path>, experiment: &str) -> Result<RunView, NotebookError> {
        let dir = reports_root.as_ref().join(experiment);
        let newest = std::fs::read_dir(&dir)
            .map_err(|source| NotebookError::Io { path: dir.clone(), source })?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join("report.html").is_file())
            .max();
        let newest = newest.ok_or_else(|| NotebookError::Io {
            path: dir.clone(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no run with a report.html"),
        })?;
        RunView::open(newest)
    }

    /// Show at most `n` plots (the first by name).
    pub fn max_plots(mut self, n: usize) -> Self {
        self.max_plots = n;
        self
    }

    pub fn to_html(&self) -> Html {
        let mut h = Html::new();
        for p in self.plots.iter().take(self.max_plots) {
            h = match show_svg(p) {
                Ok(svg) => h.push(svg),
                Err(e) => h.text(&format!("(plot not shown: {e})")),
            };
        }
        h.push(show_report_link(&self.dir))
    }

    pub fn evcxr_display(&self) {
        self.to_html().evcxr_display();
    }
}

/// What a governance policy did to a dataset, for a notebook: the counts per class (table and
/// bar chart) and every excluded record with its reason.
#[derive(Clone, Debug)]
pub struct GovernanceView {
    pub kept: usize,
    pub total: usize,
    pub sha256: String,
    /// `stats::audit_counts`.
    pub counts: DataFrame,
    /// `stats::audit_excluded`.
    pub excluded: DataFrame,
    /// Kept and excluded records per class ([`CLASSES`]), SVG.
    pub chart: String,
}

impl GovernanceView {
    pub fn new<T>(governed: &GovernedDataset<T>, title: &str) -> Result<GovernanceView, NotebookError> {
        GovernanceView::of_audit(governed.audit(), title)
    }

    pub fn of_audit(audit: &Audit, title: &str) -> Result<GovernanceView, NotebookError> {
        let polars = |e: polars::prelude::PolarsError| NotebookError::Plot { what: title.to_string(), message: e.to_string() };
        let kept: Vec<f64> = CLASSES.iter().map(|k| audit.counts.get(*k).map_or(0.0, |c| c.kept as f64)).collect();
        let dropped: Vec<f64> = CLASSES.iter().map(|k| audit.counts.get(*k).map_or(0.0, |c| (c.total - c.kept) as f64)).collect();
        Ok(GovernanceView {
            kept: audit.kept,
            total: audit.total,
            sha256: audit.sha256.clone(),
            counts: stats::audit_counts(audit).map_err(polars)?,
            excluded: stats::audit_excluded(audit).map_err(polars)?,
            chart: bar_chart_svg(title, "records", &CLASSES, &[("kept", &kept), ("excluded", &dropped)])?,
        })
    }

    pub fn summary(&self) -> String {
        format!("{} of {} records kept; audit hash {}", self.kept, self.total, self.sha256)
    }

    pub fn to_html(&self) -> Html {
        Html::new().text(&self.summary()).table(&self.counts).svg(&self.chart).heading(4, "Excluded records").table(&self.excluded)
    }

    /// The same, as a section of a report (tables `audit_counts`, `excluded`; plot `classes`).
    pub fn add_to(&self, report: NotebookReport) -> NotebookReport {
        report
            .heading("Governance")
            .text(&self.summary())
            .table("audit_counts", &self.counts)
            .svg("classes", &self.chart)
            .table("excluded", &self.excluded)
    }

    pub fn evcxr_display(&self) {
        self.to_html().evcxr_display();
    }
}

/// A seeded split checked for what goes wrong in splits: text lengths and class mix per split,
/// duplicate records, and texts that appear in more than one split (leakage).
#[derive(Clone, Debug)]
pub struct SplitView {
    pub lengths: DataFrame,
    pub classes: DataFrame,
    pub duplicates: DataFrame,
    pub leakage: DataFrame,
}

impl SplitView {
    pub fn new<T: Record>(splits: &Splits<T>) -> PolarsResult<SplitView> {
        let parts = splits.slices();
        Ok(SplitView {
            lengths: stats::length_stats(&parts)?,
            classes: stats::class_mix(&parts)?,
            duplicates: crate::data::split::duplicates(&parts)?,
            leakage: crate::data::split::leakage(&parts)?,
        })
    }

    pub fn summary(&self) -> String {
        format!("{} duplicate records, {} texts in more than one split.", self.duplicates.height(), self.leakage.height())
    }

    pub fn to_html(&self) -> Html {
        Html::new()
            .heading(4, "Lengths (characters)")
            .table(&self.lengths)
            .heading(4, "Classification by split")
            .table(&self.classes)
            .heading(4, &format!("Duplicate records: {}", self.duplicates.height()))
            .table(&self.duplicates)
            .heading(4, &format!("Texts in more than one split: {}", self.leakage.height()))
            .table(&self.leakage)
    }

    /// The same, as a section of a report (tables `lengths`, `split_classes`).
    pub fn add_to(&self, report: NotebookReport) -> NotebookReport {
        report.heading("Split").text(&self.summary()).table("lengths", &self.lengths).table("split_classes", &self.classes)
    }

    pub fn evcxr_display(&self) {
        self.to_html().evcxr_display();
    }
}

/// A table with long text cells shown with up to `max_chars` characters per cell (generated
/// replies, queries): [`html_table_with`] with that one option changed.
pub fn text_table(df: &DataFrame, max_chars: usize) -> Html {
    html_table_with(df, &TableOptions { max_chars, ..TableOptions::default() })
}

/// `(name, values)` columns of equal length as a frame of f64 columns (one-line tables of scores).
pub fn number_frame(label: &str, rows: &[&str], columns: &[(&str, Vec<f64>)]) -> PolarsResult<DataFrame> {
    let mut cols: Vec<Column> = vec![Series::new(label.into(), rows).into()];
    for (name, values) in columns {
        cols.push(Column::new((*name).into(), values.clone()));
    }
    DataFrame::new_infer_height(cols)
}

/// `{"qid", "query"}` lines (the test queries' format) as `(qid, query)` pairs in file order,
/// what [`crate::eval::search::bm25::Bm25Index::run`] takes.
pub fn read_queries(path: &Path) -> Result<Vec<(String, String)>, crate::data::jsonl::DataError> {
    #[derive(serde::Deserialize)]
    struct Line {
        qid: String,
        query: String,
    }
    let read = crate::data::jsonl::read_jsonl::<Line>(path, crate::data::jsonl::BadLines::Fail)?;
    Ok(read.records.into_iter().map(|l| (l.qid, l.query)).collect())
}

/// QMD's BM25 settings with another query mode (`qmd_lex` or `any_term`) and title weight.
pub fn bm25_config(query_mode: &str, title_weight: f64) -> Result<crate::eval::search::bm25::Bm25Config, NotebookError> {
    use crate::eval::search::bm25::{Bm25Config, QueryMode};
    let query_mode = match query_mode {
        "qmd_lex" => QueryMode::QmdLex,
        "any_term" => QueryMode::AnyTerm,
        other => {
            return Err(NotebookError::Plot { what: "BM25 settings".into(), message: format!("query mode `{other}` (use qmd_lex or any_term)") });
        }
    };
    let d = Bm25Config::default();
    Ok(Bm25Config { weights: [d.weights[0], title_weight, d.weights[2]], query_mode, ..d })
}

/// Queries for which `run` retrieved at least one document.
pub fn answered_queries(run: &crate::data::trec::Run) -> usize {
    run.results.values().filter(|v| !v.is_empty()).count()
}

/// Two runs of the same queries compared on the same measures (notebook 04's whole analysis):
/// the A/B statistics of [`crate::eval::compare::compare`] and both evaluations with the same
/// trec_eval switches (`complete`, `relevance_level` taken from the comparison's options), then a
/// full A/B report with the runs and judgments stored beside it, so `tunelab report rerun`
/// reproduces the numbers.
#[derive(Clone, Debug)]
pub struct AbRuns {
    pub measures: Vec<String>,
    pub comparison: crate::eval::compare::Comparison,
    pub eval_a: Evaluation,
    pub eval_b: Evaluation,
    pub compare_options: crate::eval::compare::CompareOptions,
    pub eval_options: crate::eval::metrics::EvalOptions,
}

impl AbRuns {
    pub fn new(
        qrels: &crate::data::trec::Qrels,
        run_a: &crate::data::trec::Run,
        run_b: &crate::data::trec::Run,
        measures: &[String],
        compare_options: crate::eval::compare::CompareOptions,
    ) -> Result<AbRuns, crate::eval::metrics::MeasureError> {
        use crate::eval::metrics::{EvalOptions, Measure, evaluate};
        let parsed = Measure::parse_list(measures)?;
        let eval_options =
            EvalOptions { complete: compare_options.complete, relevance_level: compare_options.relevance_level };
        Ok(AbRuns {
            measures: measures.to_vec(),
            comparison: crate::eval::compare::compare(qrels, run_a, run_b, &parsed, &compare_options),
            eval_a: evaluate(qrels, run_a, &parsed, &eval_options),
            eval_b: evaluate(qrels, run_b, &parsed, &eval_options),
            compare_options,
            eval_options,
        })
    }

    /// The comparison, one row per measure.
    pub fn comparison_frame(&self) -> PolarsResult<DataFrame> {
        self.comparison.to_frame()
    }

    /// Per-query values of the first measure, largest gains of B first ([`per_query_diff_frame`]).
    pub fn per_query_frame(&self, queries: &[(String, String)]) -> PolarsResult<DataFrame> {
        per_query_diff_frame(&self.eval_a, &self.eval_b, queries, 0)
    }

    /// Write the A/B report into `run` (`baseline.run`, `candidate.run` and the qrels stored in it,
    /// the evaluation recorded in `manifest`): metrics, plots, `report.md`, `report.html`.
    pub fn write_report(
        &self,
        run: &crate::report::manifest::RunDir,
        mut manifest: crate::report::manifest::Manifest,
        title: &str,
        qrels_path: &Path,
        run_a: &crate::data::trec::Run,
        run_b: &crate::data::trec::Run,
    ) -> Result<crate::report::ReportPaths, crate::report::ReportError> {
        use crate::report::manifest::{EvaluationSpec, SystemRun};
        let mut stored = Vec::new();
        for (system, r) in [("baseline", run_a), ("candidate", run_b)] {
            let path = run.path().join(format!("{system}.run"));
            r.write(&path).map_err(|e| crate::report::ReportError::Io { path: path.clone(), source: std::io::Error::other(e.to_string()) })?;
            stored.push(SystemRun { system: system.to_string(), run: run.store_input(&path, &format!("{system}.run"))? });
        }
        manifest.evaluation = Some(EvaluationSpec {
            qrels: run.store_input(qrels_path, "test.qrels")?,
            runs: stored,
            measures: self.measures.clone(),
            seed: self.compare_options.seed,
            permutations: self.compare_options.permutations as u64,
            bootstrap: Some(self.compare_options.bootstrap_samples as u64),
            options: self.eval_options.clone(),
        });
        crate::report::write_ab_report(
            run,
            &crate::report::AbReportInput {
                title: title.to_string(),
                system_a: "baseline".to_string(),
                system_b: "candidate".to_string(),
                per_query_a: crate::report::per_query_values(&self.eval_a),
                per_query_b: crate::report::per_query_values(&self.eval_b),
                comparison: self.comparison.metrics.iter().map(ComparisonRow::from).collect(),
                loss_log: None,
                examples: None,
                tables: Vec::new(),
                manifest,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_means_are_one_row_per_system_and_stage() {
        let mut means: BTreeMap<String, BTreeMap<String, BTreeMap<String, f64>>> = BTreeMap::new();
        for (sys, stage, m, v) in [("base", "bm25", "ndcg", 0.3), ("base", "rrf", "ndcg", 0.4), ("tuned", "rrf", "ndcg", 0.5), ("tuned", "rrf", "rr", 0.6)] {
            means.entry(sys.into()).or_default().entry(stage.into()).or_default().insert(m.into(), v);
        }
        let df = stage_means_frame(&means).unwrap();
        assert_eq!(df.shape(), (3, 4));
        assert_eq!(df.get_column_names(), ["system", "stage", "ndcg", "rr"]);
        let rr = df.column("rr").unwrap().f64().unwrap();
        assert!(rr.get(0).unwrap().is_nan() && rr.get(2) == Some(0.6));
    }

    #[test]
    fn newest_run_is_the_last_with_a_report() {
        let dir = tempfile::tempdir().unwrap();
        for (run, report) in [("20261201-a", true), ("20261202-b", true), ("20261203-c", false)] {
            std::fs::create_dir_all(dir.path().join("exp").join(run)).unwrap();
            if report {
                std::fs::write(dir.path().join("exp").join(run).join("report.html"), "").unwrap();
            }
        }
        assert!(RunView::newest(dir.path(), "exp").unwrap().dir.ends_with("20261202-b"));
        assert!(matches!(RunView::newest(dir.path(), "none"), Err(NotebookError::Io { .. })));
    }
}

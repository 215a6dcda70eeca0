//! The summary of a notebook batch (`scripts/run-notebooks` → `tunelab batch-summary`): every
//! configuration's per-query metrics against a baseline configuration, ranked on a primary measure.
//!
//! For each configuration and measure: the mean with its bootstrap confidence interval, and against
//! the baseline (paired on the queries both have) the difference with its bootstrap interval, the
//! two-sided paired randomization p-value and win/tie/loss, all from [`eval::compare`]
//! (seeded; same seed, same numbers). Holm's correction runs over **every** comparison in the
//! summary (configurations × measures), since a batch tests them all at once.
//!
//! [`eval::compare`]: crate::eval::compare
//!
//! ```
//! use tunelab::gate::RunMetrics;
//! use tunelab::notebook::batch::{summarize, SummaryOptions};
//! let run = |v: [f64; 4]| {
//!     let t = v.iter().enumerate().map(|(i, x)| (format!("q{i}"), "recip_rank".to_string(), *x));
//!     RunMetrics::from_triples("x", t).unwrap()
//! };
//! let configs = vec![("base".to_string(), run([0.5; 4])), ("tuned".to_string(), run([1.0, 1.0, 1.0, 0.5]))];
//! let s = summarize(&configs, &SummaryOptions::default()).unwrap();
//! assert_eq!(s.ranking, ["tuned", "base"]);
//! let tuned = s.row("tuned", "recip_rank").unwrap();
//! assert_eq!((tuned.mean, tuned.difference, tuned.wins), (0.875, 0.375, 3));
//! ```

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{Html, escape};
use crate::eval::compare::{CompareOptions, bootstrap_ci, compare_values, holm};
use crate::gate::{GateError, RunMetrics};

/// One configuration's record in `batch.json`, as `scripts/run_notebooks.py` writes it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BatchRun {
    pub name: String,
    #[serde(default)]
    pub notebook: String,
    #[serde(default)]
    pub parameters: serde_json::Value,
    /// `ok` or `failed`.
    pub status: String,
    #[serde(default)]
    pub seconds: f64,
    /// Cell, error and stderr tail of a failed run.
    #[serde(default)]
    pub failure: Option<serde_json::Value>,
    /// The executed notebook.
    #[serde(default)]
    pub executed: Option<String>,
    #[serde(default)]
    pub html: Option<String>,
    /// The report directory the notebook wrote.
    #[serde(default)]
    pub report_dir: Option<String>,
    /// Its `metrics.arrow`.
    #[serde(default)]
    pub metrics: Option<String>,
}

/// `batch.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BatchFile {
    #[serde(default)]
    pub experiment: String,
    #[serde(default)]
    pub started: String,
    pub runs: Vec<BatchRun>,
}

impl BatchFile {
    pub fn read(path: &Path) -> Result<Self, GateError> {
        let text = std::fs::read_to_string(path).map_err(|source| GateError::Io { path: path.into(), source })?;
        serde_json::from_str(&text).map_err(|e| GateError::Parse { path: path.into(), line: e.line(), message: e.to_string() })
    }
}

/// What to summarise and how.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SummaryOptions {
    /// Ranks the configurations.
    pub primary: String,
    /// Measures to report; empty = every measure all configurations have.
    pub measures: Vec<String>,
    /// Baseline configuration; default the first one.
    pub baseline: Option<String>,
    /// Seeds, rounds and confidence level (eval::compare's).
    pub compare: CompareOptions,
}

impl Default for SummaryOptions {
    fn default() -> Self {
        SummaryOptions { primary: "recip_rank".into(), measures: Vec::new(), baseline: None, compare: CompareOptions::default() }
    }
}

/// One configuration on one measure.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SummaryRow {
    pub config: String,
    pub measure: String,
    /// Queries of this configuration / paired with the baseline.
    pub queries: usize,
    pub paired: usize,
    pub mean: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    /// Against the baseline (configuration − baseline, on the paired queries); 0 and p = 1 for the
    /// baseline itself.
    pub difference: f64,
    pub diff_ci_low: f64,
    pub diff_ci_high: f64,
    pub p_value: f64,
    /// Holm-adjusted over every comparison in the summary.
    pub p_holm: f64,
    pub wins: usize,
    pub ties: usize,
    pub losses: usize,
}

/// The summary of a batch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchSummary {
    pub baseline: String,
    pub primary: String,
    pub measures: Vec<String>,
    pub confidence: f64,
    /// Configurations by primary mean, best first.
    pub ranking: Vec<String>,
    pub rows: Vec<SummaryRow>,
}

impl BatchSummary {
    pub fn row(&self, config: &str, measure: &str) -> Option<&SummaryRow> {
        self.rows.iter().find(|r| r.config == config && r.measure == measure)
    }
}

/// Compare every configuration with the baseline (see the module notes).
pub fn summarize(configs: &[(String, RunMetrics)], opts: &SummaryOptions) -> Result<BatchSummary, GateError> {
    let Some((first, _)) = configs.first() else {
        return Err(GateError::Config("no configuration has metrics to summarise".into()));
    };
    let baseline = opts.baseline.clone().unwrap_or_else(|| first.clone());
    let base = &configs
        .iter()
        .find(|(n, _)| *n == baseline)
        .ok_or_else(|| {
            let names: Vec<&str> = configs.iter().map(|(n, _)| n.as_str()).collect();
            GateError::Config(format!("baseline `{baseline}` is not among the configurations with metrics ({})", names.join(", ")))
        })?
        .1;
    let measures: Vec<String> = if opts.measures.is_empty() {
        let mut common: BTreeSet<&String> = base.values.keys().collect();
        for (_, m) in configs {
            common.retain(|k| m.values.contains_key(*k));
        }
        let mut v: Vec<String> = common.into_iter().cloned().collect();
        // Primary first, the rest alphabetical.
        v.sort_by_key(|m| (*m != opts.primary, m.clone()));
        v
    } else {
        opts.measures.clone()
    };
    if !measures.contains(&opts.primary) {
        return Err(GateError::Config(format!("the primary measure `{}` is not among the summarised measures", opts.primary)));
    }
    let mut rows = Vec::new();
    for (name, run) in configs {
        for measure in &measures {
            let (values, base_values) = (measure_of(run, name, measure)?, measure_of(base, &baseline, measure)?);
            let own: Vec<f64> = values.values().copied().collect();
            let mut rng = ChaCha8Rng::seed_from_u64(opts.compare.seed);
            rng.set_stream(2); // streams 0 and 1 are compare_values' test and bootstrap
            let (ci_low, ci_high) = bootstrap_ci(&own, opts.compare.bootstrap_samples, opts.compare.confidence, &mut rng);
            let paired: Vec<&String> = values.keys().filter(|q| base_values.contains_key(*q)).collect();
            let a: Vec<f64> = paired.iter().map(|q| base_values[*q]).collect();
            let b: Vec<f64> = paired.iter().map(|q| values[*q]).collect();
            let c = compare_values(std::slice::from_ref(measure), &[a], &[b], &opts.compare);
            let m = &c.metrics[0];
            rows.push(SummaryRow {
                config: name.clone(),
                measure: measure.clone(),
                queries: own.len(),
                paired: paired.len(),
                mean: own.iter().sum::<f64>() / own.len().max(1) as f64,
                ci_low,
                ci_high,
                difference: m.difference,
                diff_ci_low: m.ci_low,
                diff_ci_high: m.ci_high,
                p_value: m.p_value,
                p_holm: f64::NAN,
                wins: m.wins,
                ties: m.ties,
                losses: m.losses,
            });
        }
    }
    // Holm over the non-baseline comparisons.
    let idx: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].config != baseline).collect();
    let adjusted = holm(&idx.iter().map(|&i| rows[i].p_value).collect::<Vec<_>>());
    for (&i, p) in idx.iter().zip(adjusted) {
        rows[i].p_holm = p;
    }
    for r in rows.iter_mut().filter(|r| r.config == baseline) {
        r.p_holm = r.p_value;
    }
    let mut ranking: Vec<(String, f64)> =
        rows.iter().filter(|r| r.measure == opts.primary).map(|r| (r.config.clone(), r.mean)).collect();
    ranking.sort_by(|x, y| y.1.total_cmp(&x.1));
    Ok(BatchSummary {
        baseline,
        primary: opts.primary.clone(),
        measures,
        confidence: opts.compare.confidence,
        ranking: ranking.into_iter().map(|(n, _)| n).collect(),
        rows,
    })
}

fn measure_of<'a>(r: &'a RunMetrics, config: &str, measure: &str) -> Result<&'a std::collections::BTreeMap<String, f64>, GateError> {
    r.values.get(measure).ok_or_else(|| GateError::MissingMeasure {
        measure: measure.to_string(),
        run: format!("configuration `{config}` ({})", r.source),
        available: r.measures().join(", "),
    })
}

fn f4(x: f64) -> String {
    if x.is_nan() { "–".into() } else { format!("{x:.4}") }
}

fn fp(p: f64) -> String {
    if p.is_nan() {
        "–".into()
    } else if p < 0.001 {
        "<0.001".into()
    } else {
        format!("{p:.3}")
    }
}

fn run_status(r: &BatchRun) -> String {
    if r.status == "ok" {
        return "ok".into();
    }
    match &r.failure {
        Some(f) => {
            let cell = f.get("cell").and_then(|c| c.as_u64()).map(|c| format!("cell {c}: ")).unwrap_or_default();
            let ev = f.get("evalue").and_then(|v| v.as_str()).unwrap_or("");
            let first = ev.lines().next().unwrap_or("");
            format!("FAILED ({cell}{})", first.chars().take(160).collect::<String>())
        }
        None => "FAILED".into(),
    }
}

fn params(r: &BatchRun) -> String {
    match r.parameters.as_object() {
        Some(o) if !o.is_empty() => o.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", "),
        _ => "–".into(),
    }
}

/// `summary.md`: the runs (status, time, where), the ranking on the primary measure and one
/// table per measure.
pub fn to_markdown(batch: &BatchFile, s: Option<&BatchSummary>) -> String {
    let mut md = format!("# Batch summary: {}\n\nStarted {}. {} configuration(s).\n\n", batch.experiment, batch.started, batch.runs.len());
    md.push_str("## Runs\n\n| configuration | parameters | status | seconds | notebook | report |\n|---|---|---|---:|---|---|\n");
    for r in &batch.runs {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.0} | {} | {} |",
            r.name,
            params(r).replace('|', "\\|"),
            run_status(r).replace('|', "\\|"),
            r.seconds,
            r.executed.as_deref().unwrap_or("–"),
            r.report_dir.as_deref().unwrap_or("–")
        );
    }
    let Some(s) = s else {
        md.push_str("\nNo configuration produced per-query metrics; nothing to compare.\n");
        return md;
    };
    let pct = (s.confidence * 100.0).round();
    let _ = write!(
        md,
        "\n## Ranking on {} (baseline: {})\n\nMeans with {pct}% bootstrap intervals; differences against the baseline on paired queries, \
         two-sided paired randomization test, Holm-adjusted over all {} comparisons.\n\n",
        s.primary,
        s.baseline,
        s.rows.iter().filter(|r| r.config != s.baseline).count()
    );
    for m in &s.measures {
        let _ = write!(md, "### {m}\n\n| rank | configuration | mean | {pct}% CI | diff | {pct}% CI of diff | p | p (Holm) | W/T/L | queries |\n|---:|---|---:|---|---:|---|---:|---:|---|---:|\n");
        for (rank, name) in s.ranking.iter().enumerate() {
            let Some(r) = s.row(name, m) else { continue };
            let base = r.config == s.baseline;
            let _ = writeln!(
                md,
                "| {} | {}{} | {} | [{}, {}] | {} | {} | {} | {} | {} | {} |",
                rank + 1,
                r.config,
                if base { " (baseline)" } else { "" },
                f4(r.mean),
                f4(r.ci_low),
                f4(r.ci_high),
                if base { "–".into() } else { format!("{:+.4}", r.difference) },
                if base { "–".into() } else { format!("[{:+.4}, {:+.4}]", r.diff_ci_low, r.diff_ci_high) },
                if base { "–".into() } else { fp(r.p_value) },
                if base { "–".into() } else { fp(r.p_holm) },
                if base { "–".into() } else { format!("{}/{}/{}", r.wins, r.ties, r.losses) },
                r.queries
            );
        }
        md.push('\n');
    }
    md
}

/// A forest plot of the primary measure: each configuration's mean and interval, best first.
pub fn forest_svg(s: &BatchSummary) -> Result<String, GateError> {
    let rows: Vec<&SummaryRow> = s.ranking.iter().filter_map(|n| s.row(n, &s.primary)).collect();
    let err = |e: &dyn std::fmt::Display| GateError::Config(format!("drawing the summary plot: {e}"));
    let lo = rows.iter().map(|r| r.ci_low).filter(|x| x.is_finite()).fold(f64::MAX, f64::min);
    let hi = rows.iter().map(|r| r.ci_high).filter(|x| x.is_finite()).fold(f64::MIN, f64::max);
    if rows.is_empty() || lo > hi {
        return Ok(String::new());
    }
    let pad = ((hi - lo) * 0.1).max(0.01);
    let n = rows.len();
    let mut svg = String::new();
    {
        crate::report::fonts::register();
        let root = SVGBackend::with_string(&mut svg, (760, 70 + 34 * n as u32)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("{} by configuration ({:.0}% CI)", s.primary, s.confidence * 100.0), (crate::report::fonts::FAMILY, 16))
            .margin(10)
            .x_label_area_size(28)
            .y_label_area_size(200)
            .build_cartesian_2d((lo - pad)..(hi + pad), (0..n).into_segmented())
            .map_err(|e| err(&e))?;
        let names: Vec<String> = rows.iter().map(|r| r.config.clone()).collect();
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n)
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .x_desc(s.primary.as_str())
            .draw()
            .map_err(|e| err(&e))?;
        let blue = RGBColor(0x25, 0x63, 0xeb);
        let grey = RGBColor(0x6b, 0x72, 0x80);
        for (i, r) in rows.iter().enumerate() {
            let color = if r.config == s.baseline { grey } else { blue };
            let y = SegmentValue::CenterOf(i);
            chart
                .draw_series(std::iter::once(PathElement::new(vec![(r.ci_low, y.clone()), (r.ci_high, y.clone())], color.stroke_width(2))))
                .map_err(|e| err(&e))?;
            chart.draw_series(std::iter::once(Circle::new((r.mean, y), 5, color.filled()))).map_err(|e| err(&e))?;
        }
        root.present().map_err(|e| err(&e))?;
    }
    Ok(svg)
}

/// `summary.html`: self-contained (plot inline).
pub fn to_html(batch: &BatchFile, s: Option<&BatchSummary>) -> String {
    let md_tables = to_markdown(batch, s);
    let mut body = Html::new();
    // The tables, converted line by line from the markdown so both files say the same thing.
    let mut in_table = false;
    let mut html = String::new();
    for line in md_tables.lines() {
        if line.starts_with('|') {
            // The alignment row (`|---|---:|`) has no spaces around its pipes: test it on its own.
            if line.trim_matches('|').split('|').all(|c| !c.trim().is_empty() && c.trim().chars().all(|ch| matches!(ch, '-' | ':'))) {
                continue;
            }
            let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
            if !in_table {
                html.push_str("<table><thead><tr>");
                for c in &cells {
                    let _ = write!(html, "<th>{}</th>", escape(c));
                }
                html.push_str("</tr></thead><tbody>\n");
                in_table = true;
                continue;
            }
            html.push_str("<tr>");
            for c in &cells {
                let _ = write!(html, "<td>{}</td>", escape(&c.replace("\\|", "|")));
            }
            html.push_str("</tr>\n");
        } else {
            if in_table {
                html.push_str("</tbody></table>\n");
                in_table = false;
            }
            if let Some(h) = line.strip_prefix("### ") {
                let _ = writeln!(html, "<h3>{}</h3>", escape(h));
            } else if let Some(h) = line.strip_prefix("## ") {
                let _ = writeln!(html, "<h2>{}</h2>", escape(h));
                if h.starts_with("Ranking")
                    && let Some(s) = s
                    && let Ok(svg) = forest_svg(s)
                {
                    html.push_str(&Html::new().svg(&svg).into_string());
                }
            } else if let Some(h) = line.strip_prefix("# ") {
                let _ = writeln!(html, "<h1>{}</h1>", escape(h));
            } else if !line.is_empty() {
                let _ = writeln!(html, "<p>{}</p>", escape(line));
            }
        }
    }
    if in_table {
        html.push_str("</tbody></table>\n");
    }
    body = body.push(Html::raw(html));
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Batch summary: {}</title><style>\
         body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}}\
         table{{border-collapse:collapse;margin:1em 0;font-size:14px}}th,td{{border:1px solid #ddd;padding:4px 8px;text-align:right}}\
         th{{background:#f3f4f6}}td:nth-child(2),td:first-child{{text-align:left}}</style></head><body>\n{}\n</body></html>\n",
        escape(&batch.experiment),
        body
    )
}

/// Paths written by [`write_summary`].
#[derive(Clone, Debug)]
pub struct SummaryPaths {
    pub markdown: PathBuf,
    pub html: PathBuf,
    pub json: PathBuf,
}

/// Write `summary.md`, `summary.html` and `summary.json` into `dir`.
pub fn write_summary(dir: &Path, batch: &BatchFile, s: Option<&BatchSummary>) -> Result<SummaryPaths, GateError> {
    let paths = SummaryPaths { markdown: dir.join("summary.md"), html: dir.join("summary.html"), json: dir.join("summary.json") };
    let w = |p: &Path, text: String| std::fs::write(p, text).map_err(|source| GateError::Io { path: p.into(), source });
    w(&paths.markdown, to_markdown(batch, s))?;
    w(&paths.html, to_html(batch, s))?;
    let json = serde_json::json!({"batch": batch, "summary": s});
    w(&paths.json, serde_json::to_string_pretty(&json).expect("serializes") + "\n")?;
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(vals: &[f64]) -> RunMetrics {
        let t = vals.iter().enumerate().flat_map(|(i, v)| {
            [(format!("q{i}"), "recip_rank".to_string(), *v), (format!("q{i}"), "P_5".to_string(), v / 5.0)]
        });
        RunMetrics::from_triples("t", t).unwrap()
    }

    #[test]
    fn baseline_row_has_no_difference_and_ranking_follows_primary_mean() {
        let configs = vec![
            ("base".to_string(), run(&[0.5, 0.5, 0.5, 0.5])),
            ("worse".to_string(), run(&[0.25, 0.25, 0.5, 0.5])),
            ("better".to_string(), run(&[1.0, 1.0, 1.0, 1.0])),
        ];
        let s = summarize(&configs, &SummaryOptions::default()).unwrap();
        assert_eq!(s.ranking, ["better", "base", "worse"]);
        assert_eq!(s.measures, ["recip_rank", "P_5"], "primary first");
        let b = s.row("base", "recip_rank").unwrap();
        assert_eq!((b.difference, b.p_value, b.wins, b.ties, b.losses), (0.0, 1.0, 0, 4, 0));
        // worse: diffs (-0.25, -0.25, 0, 0), mean -0.125 (by hand).
        let w = s.row("worse", "recip_rank").unwrap();
        assert_eq!((w.difference, w.losses, w.ties), (-0.125, 2, 2));
        // Holm over 4 comparisons (2 configs × 2 measures): adjusted ≥ raw, ≤ 1.
        for r in s.rows.iter().filter(|r| r.config != "base") {
            assert!(r.p_holm >= r.p_value && r.p_holm <= 1.0);
        }
        // A constant configuration's mean interval collapses to the mean.
        let better = s.row("better", "recip_rank").unwrap();
        assert_eq!((better.ci_low, better.ci_high), (1.0, 1.0));
    }

    #[test]
    fn unknown_baseline_is_an_error() {
        let configs = vec![("a".to_string(), run(&[0.5]))];
        let opts = SummaryOptions { baseline: Some("zzz".into()), ..SummaryOptions::default() };
        assert!(summarize(&configs, &opts).unwrap_err().to_string().contains("zzz"));
    }

    #[test]
    fn markdown_and_html_list_failures_and_tables() {
        let configs = vec![("base".to_string(), run(&[0.5, 0.5])), ("t".to_string(), run(&[1.0, 1.0]))];
        let s = summarize(&configs, &SummaryOptions::default()).unwrap();
        let batch = BatchFile {
            experiment: "exp".into(),
            started: "now".into(),
            runs: vec![
                BatchRun { name: "base".into(), status: "ok".into(), ..Default::default() },
                BatchRun {
                    name: "broken".into(),
                    status: "failed".into(),
                    failure: Some(serde_json::json!({"cell": 3, "evalue": "Subprocess terminated"})),
                    ..Default::default()
                },
            ],
        };
        let md = to_markdown(&batch, Some(&s));
        assert!(md.contains("FAILED (cell 3: Subprocess terminated)"), "{md}");
        assert!(md.contains("| 1 | t | 1.0000 |"), "{md}");
        let html = to_html(&batch, Some(&s));
        assert!(html.contains("<svg") && html.contains("<td>t</td>"), "{html}");
        // Markdown's alignment rows are not table rows.
        assert!(!html.contains("<td>---") && !html.contains("<th>---"), "{html}");
        assert_eq!(html.matches("<table>").count(), md.lines().filter(|l| l.starts_with("|---")).count(), "{html}");
    }
}

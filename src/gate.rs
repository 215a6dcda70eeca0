//! The validation gate for scheduled retraining, and a versioned model store (promote / rollback).
//!
//! **Gate.** A candidate run replaces the current one only when, on the same queries,
//! * it is **not significantly worse on any gated measure**, and
//! * it is **better on the primary measure**: by default significantly better (two-sided paired
//!   test, p < α, positive mean difference); with `require_significant_gain = false`, a higher mean
//!   that is not significantly worse is enough.
//!
//! The "worse" checks are deliberately *not* corrected for multiple comparisons (Holm would make
//! each check less sensitive, i.e. let more bad candidates through); a gate should err on the side
//! of keeping the model it has. Both runs must cover exactly the same queries: a gate that compares
//! different query sets compares nothing, so that is an error, not a warning.
//!
//! The test is a plug ([`PairedTest`]); [`RandomizationTest`] is `eval::compare`'s paired
//! sign-flip randomization test with the same seed stream, so the gate's p-values are
//! `tunelab compare`'s.
//!
//! **Per-query metrics** come from a run directory's `metrics.arrow` (Arrow IPC, long format:
//! `qid`, `measure`, `value`, and optionally `system` when one file holds several systems, as
//! the report module writes it) or from trec_eval's `-q` output (`measure<TAB>qid<TAB>value`).
//!
//! **Model store.** [`ModelStore::promote`] copies a run or model directory (it must hold a
//! `manifest.json`) into `v1/`, `v2/`, … side by side, writes `version.json` beside it, and switches
//! the `current` symlink atomically (a new link renamed over the old one). [`ModelStore::rollback`]
//! points `current` back at the version that was current when the present one was promoted.
//! Every switch is appended to `history.jsonl`. Nothing is ever deleted.
//!
//! ```
//! use tunelab::gate::{gate, GateConfig, RandomizationTest, RunMetrics};
//! // 12 queries; the candidate finds the relevant document at rank 1 where the current one had it at rank 2.
//! let q = |v: f64| (0..12).map(move |i| (format!("q{i}"), "recip_rank".to_string(), v));
//! let current = RunMetrics::from_triples("current", q(0.5)).unwrap();
//! let candidate = RunMetrics::from_triples("candidate", q(1.0)).unwrap();
//! let cfg = GateConfig::default();
//! let test = RandomizationTest::new(cfg.permutations, cfg.seed);
//! let decision = gate(&current, &candidate, &cfg, &test).unwrap();
//! assert!(decision.passed, "{}", decision.to_table());
//! // The same pair the other way round is refused.
//! assert!(!gate(&candidate, &current, &cfg, &test).unwrap().passed);
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use polars::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::eval::compare::randomization_test;

/// Why a gate could not be evaluated or a store changed.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: Arrow IPC: {source}")]
    Arrow {
        path: PathBuf,
        #[source]
        source: PolarsError,
    },
    #[error("{path}, line {line}: {message}")]
    Parse { path: PathBuf, line: usize, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("measure `{measure}` is missing from {run} (it has: {available})")]
    MissingMeasure { measure: String, run: String, available: String },
    #[error("`{measure}`: the runs cover different queries ({only_current} only in current, e.g. {example_current:?}; {only_candidate} only in candidate, e.g. {example_candidate:?})")]
    QueryMismatch {
        measure: String,
        only_current: usize,
        only_candidate: usize,
        example_current: Option<String>,
        example_candidate: Option<String>,
    },
    #[error("{0}")]
    Config(String),
    #[error("model store {path}: {message}")]
    Store { path: PathBuf, message: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> GateError + '_ {
    move |source| GateError::Io { path: path.to_path_buf(), source }
}

/// One run's per-query values: measure → qid → value.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunMetrics {
    /// Where the values came from (for messages).
    pub source: String,
    pub values: BTreeMap<String, BTreeMap<String, f64>>,
}

impl RunMetrics {
    /// Build from `(qid, measure, value)` triples. trec_eval's summary rows (qid `all`) are
    /// skipped; a repeated (qid, measure) is an error.
    pub fn from_triples(
        source: impl Into<String>,
        triples: impl IntoIterator<Item = (String, String, f64)>,
    ) -> Result<Self, GateError> {
        let source = source.into();
        let mut values: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
        for (qid, measure, value) in triples {
            if qid == "all" {
                continue;
            }
            if values.entry(measure.clone()).or_default().insert(qid.clone(), value).is_some() {
                return Err(GateError::Invalid {
                    path: source.clone().into(),
                    message: format!("query `{qid}` has two values of `{measure}`"),
                });
            }
        }
        Ok(RunMetrics { source, values })
    }

    /// Read a run's per-query metrics from `path`: a run directory (its `metrics.arrow`, else its
    /// `trec_eval.txt`), an Arrow IPC file (`.arrow`/`.ipc`/`.feather`) or a trec_eval `-q` text file.
    /// `system` selects the rows of one system when the file holds several.
    pub fn read(path: &Path, system: Option<&str>) -> Result<Self, GateError> {
        let file = if path.is_dir() {
            ["metrics.arrow", "trec_eval.txt"].iter().map(|f| path.join(f)).find(|p| p.exists()).ok_or_else(|| {
                GateError::Invalid {
                    path: path.to_path_buf(),
                    message: "no metrics.arrow or trec_eval.txt in this run directory".into(),
                }
            })?
        } else {
            path.to_path_buf()
        };
        let ext = file.extension().and_then(|e| e.to_str()).unwrap_or("");
        let mut m = if matches!(ext, "arrow" | "ipc" | "feather") {
            read_ipc(&file, system)?
        } else {
            if system.is_some() {
                return Err(GateError::Config(format!("{}: a trec_eval file holds one system; drop the system name", file.display())));
            }
            read_trec_eval(&file)?
        };
        if m.values.is_empty() {
            return Err(GateError::Invalid { path: file, message: "no per-query values".into() });
        }
        m.source = match system {
            Some(s) => format!("{} [{s}]", path.display()),
            None => path.display().to_string(),
        };
        Ok(m)
    }

    /// The measures present.
    pub fn measures(&self) -> Vec<&str> {
        self.values.keys().map(String::as_str).collect()
    }

    /// Mean of a measure over its queries.
    pub fn mean(&self, measure: &str) -> Option<f64> {
        let v = self.values.get(measure)?;
        (!v.is_empty()).then(|| v.values().sum::<f64>() / v.len() as f64)
    }
}

fn read_ipc(path: &Path, system: Option<&str>) -> Result<RunMetrics, GateError> {
    let arrow = |source| GateError::Arrow { path: path.to_path_buf(), source };
    let f = fs::File::open(path).map_err(io_err(path))?;
    let df = IpcReader::new(f).finish().map_err(arrow)?;
    let names: Vec<String> = df.get_column_names().iter().map(|s| s.to_string()).collect();
    for c in ["qid", "measure", "value"] {
        if !names.iter().any(|n| n == c) {
            return Err(GateError::Invalid {
                path: path.to_path_buf(),
                message: format!("no column `{c}` (columns: {}); expected long format qid, measure, value", names.join(", ")),
            });
        }
    }
    let qid = df.column("qid").and_then(|c| c.str().cloned()).map_err(arrow)?;
    let measure = df.column("measure").and_then(|c| c.str().cloned()).map_err(arrow)?;
    let value = df.column("value").and_then(|c| c.cast(&DataType::Float64)).map_err(arrow)?;
    let value = value.f64().map_err(arrow)?.clone();
    let systems = if names.iter().any(|n| n == "system") {
        Some(df.column("system").and_then(|c| c.str().cloned()).map_err(arrow)?)
    } else {
        None
    };
    // Which system's rows to keep: the named one, or the only one there is.
    let keep: Option<String> = match (&systems, system) {
        (None, None) => None,
        (None, Some(s)) => {
            return Err(GateError::Config(format!("{}: no `system` column, so system `{s}` cannot be selected", path.display())));
        }
        (Some(col), want) => {
            let present: BTreeSet<&str> = (0..col.len()).filter_map(|i| col.get(i)).collect();
            match want {
                Some(s) if present.contains(s) => Some(s.to_string()),
                Some(s) => {
                    return Err(GateError::Config(format!(
                        "{}: no system `{s}` (systems: {})",
                        path.display(),
                        present.into_iter().collect::<Vec<_>>().join(", ")
                    )));
                }
                None if present.len() <= 1 => present.into_iter().next().map(str::to_string),
                None => {
                    return Err(GateError::Config(format!(
                        "{}: holds several systems ({}); name the one to gate",
                        path.display(),
                        present.into_iter().collect::<Vec<_>>().join(", ")
                    )));
                }
            }
        }
    };
    let mut triples = Vec::with_capacity(df.height());
    for i in 0..df.height() {
        if let (Some(col), Some(k)) = (&systems, &keep)
            && col.get(i) != Some(k.as_str())
        {
            continue;
        }
        let null = |field: &str| GateError::Invalid { path: path.to_path_buf(), message: format!("row {}: `{field}` is null", i + 1) };
        triples.push((
            qid.get(i).ok_or_else(|| null("qid"))?.to_string(),
            measure.get(i).ok_or_else(|| null("measure"))?.to_string(),
            value.get(i).ok_or_else(|| null("value"))?,
        ));
    }
    RunMetrics::from_triples(path.display().to_string(), triples)
}

/// trec_eval `-q` output: `measure<whitespace>qid<whitespace>value` per line.
fn read_trec_eval(path: &Path) -> Result<RunMetrics, GateError> {
    let text = crate::io::text::read_to_string(path).map_err(io_err(path))?;
    let mut triples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let parse = |message: String| GateError::Parse { path: path.to_path_buf(), line: i + 1, message };
        let f: Vec<&str> = line.split_whitespace().collect();
        let [measure, qid, value] = f[..] else {
            return Err(parse(format!("expected `measure qid value`, found {} fields", f.len())));
        };
        // Non-numeric summary lines (runid) are not per-query values.
        if qid == "all" {
            continue;
        }
        let value: f64 = value.parse().map_err(|_| parse(format!("value `{value}` is not a number")))?;
        triples.push((qid.to_string(), measure.to_string(), value));
    }
    RunMetrics::from_triples(path.display().to_string(), triples)
}

/// A two-sided paired significance test: the p-value of "no difference" between paired values
/// (same query order in both slices).
pub trait PairedTest {
    fn p_value(&self, current: &[f64], candidate: &[f64]) -> f64;
}

impl<F: Fn(&[f64], &[f64]) -> f64> PairedTest for F {
    fn p_value(&self, current: &[f64], candidate: &[f64]) -> f64 {
        self(current, candidate)
    }
}

/// Paired randomization (sign-flip) test, seeded: [`eval::compare::randomization_test`]
/// (Smucker, Allan & Carterette 2007; p = (count + 1) / (rounds + 1)).
///
/// [`eval::compare::randomization_test`]: crate::eval::compare::randomization_test
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RandomizationTest {
    pub permutations: usize,
    pub seed: u64,
}

impl RandomizationTest {
    pub fn new(permutations: usize, seed: u64) -> Self {
        RandomizationTest { permutations, seed }
    }
}

impl PairedTest for RandomizationTest {
    fn p_value(&self, current: &[f64], candidate: &[f64]) -> f64 {
        let diffs: Vec<f64> = candidate.iter().zip(current).map(|(b, a)| b - a).collect();
        // Stream 0 of the seed, as `eval::compare::compare_values` draws it: the gate's p-values
        // equal `tunelab compare`'s for the same seed.
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(0);
        randomization_test(&diffs, self.permutations, &mut rng)
    }
}

/// Gate settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GateConfig {
    /// The measure the candidate must improve (trec_eval name).
    pub primary: String,
    /// Measures that must not get significantly worse; empty = every measure both runs have.
    /// The primary measure is always gated.
    pub metrics: Vec<String>,
    /// Significance level.
    pub alpha: f64,
    /// Require a *significant* gain on the primary measure (default), not just a higher mean.
    pub require_significant_gain: bool,
    /// Randomization rounds and seed of the default test.
    pub permutations: usize,
    pub seed: u64,
}

impl Default for GateConfig {
    fn default() -> Self {
        GateConfig {
            primary: "recip_rank".into(),
            metrics: Vec::new(),
            alpha: 0.05,
            require_significant_gain: true,
            permutations: 10_000,
            seed: 42,
        }
    }
}

/// A measure's outcome at level α.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Significantly better (p < α, positive difference).
    Better,
    /// No significant difference.
    NoDifference,
    /// Significantly worse.
    Worse,
}

/// One gated measure.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricCheck {
    pub measure: String,
    pub primary: bool,
    pub current_mean: f64,
    pub candidate_mean: f64,
    /// candidate − current.
    pub difference: f64,
    pub p_value: f64,
    pub verdict: Verdict,
    /// Queries where the candidate scores higher / the same / lower.
    pub wins: usize,
    pub ties: usize,
    pub losses: usize,
    pub passed: bool,
}

/// The gate's decision, with the evidence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GateDecision {
    pub passed: bool,
    pub current: String,
    pub candidate: String,
    pub queries: usize,
    pub config: GateConfig,
    pub checks: Vec<MetricCheck>,
    /// Why it was refused (empty when passed).
    pub reasons: Vec<String>,
}

impl GateDecision {
    /// A plain-text table of the checks and the decision.
    pub fn to_table(&self) -> String {
        let mut s = format!(
            "gate: candidate {}\n      current   {}\n      {} queries, alpha {}, primary {}{}\n\n",
            self.candidate,
            self.current,
            self.queries,
            self.config.alpha,
            self.config.primary,
            if self.config.require_significant_gain { " (significant gain required)" } else { "" }
        );
        s.push_str(&format!(
            "{:<16} {:>9} {:>9} {:>9} {:>8} {:>11} {:>6}  {}\n",
            "measure", "current", "candidate", "diff", "p", "W/T/L", "check", "verdict"
        ));
        for c in &self.checks {
            s.push_str(&format!(
                "{:<16} {:>9.4} {:>9.4} {:>+9.4} {:>8.4} {:>11} {:>6}  {:?}{}\n",
                c.measure,
                c.current_mean,
                c.candidate_mean,
                c.difference,
                c.p_value,
                format!("{}/{}/{}", c.wins, c.ties, c.losses),
                if c.passed { "ok" } else { "FAIL" },
                c.verdict,
                if c.primary { " (primary)" } else { "" }
            ));
        }
        s.push('\n');
        if self.passed {
            s.push_str("PASS: the candidate may replace the current model\n");
        } else {
            s.push_str("REFUSED:\n");
            for r in &self.reasons {
                s.push_str(&format!("  - {r}\n"));
            }
        }
        s
    }

    /// Notebook display: the table as preformatted text.
    pub fn evcxr_display(&self) {
        crate::notebook::Html::new().pre(&self.to_table()).evcxr_display();
    }
}

fn measure_values<'a>(run: &'a RunMetrics, measure: &str) -> Result<&'a BTreeMap<String, f64>, GateError> {
    run.values.get(measure).ok_or_else(|| GateError::MissingMeasure {
        measure: measure.to_string(),
        run: run.source.clone(),
        available: run.measures().join(", "),
    })
}

/// Decide whether `candidate` may replace `current` (see the module notes).
pub fn gate(current: &RunMetrics, candidate: &RunMetrics, cfg: &GateConfig, test: &dyn PairedTest) -> Result<GateDecision, GateError> {
    if !(cfg.alpha > 0.0 && cfg.alpha < 1.0) {
        return Err(GateError::Config(format!("alpha must be in (0, 1), got {}", cfg.alpha)));
    }
    let mut measures: Vec<String> = vec![cfg.primary.clone()];
    let requested: Vec<String> = if cfg.metrics.is_empty() {
        current.values.keys().filter(|m| candidate.values.contains_key(*m)).cloned().collect()
    } else {
        cfg.metrics.clone()
    };
    for m in requested {
        if !measures.contains(&m) {
            measures.push(m);
        }
    }
    let mut checks = Vec::new();
    let mut reasons = Vec::new();
    let mut queries = 0;
    for measure in &measures {
        let (cur, cand) = (measure_values(current, measure)?, measure_values(candidate, measure)?);
        let only_cur: Vec<&String> = cur.keys().filter(|q| !cand.contains_key(*q)).collect();
        let only_cand: Vec<&String> = cand.keys().filter(|q| !cur.contains_key(*q)).collect();
        if !only_cur.is_empty() || !only_cand.is_empty() {
            return Err(GateError::QueryMismatch {
                measure: measure.clone(),
                only_current: only_cur.len(),
                only_candidate: only_cand.len(),
                example_current: only_cur.first().map(|s| s.to_string()),
                example_candidate: only_cand.first().map(|s| s.to_string()),
            });
        }
        if cur.is_empty() {
            return Err(GateError::Config(format!("`{measure}` has no queries")));
        }
        queries = cur.len();
        let a: Vec<f64> = cur.values().copied().collect();
        let b: Vec<f64> = cur.keys().map(|q| cand[q]).collect();
        let n = a.len() as f64;
        let (mean_a, mean_b) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
        let difference = mean_b - mean_a;
        let p_value = test.p_value(&a, &b);
        let (mut wins, mut ties, mut losses) = (0, 0, 0);
        for (x, y) in a.iter().zip(&b) {
            match y.partial_cmp(x) {
                Some(std::cmp::Ordering::Greater) => wins += 1,
                Some(std::cmp::Ordering::Less) => losses += 1,
                _ => ties += 1,
            }
        }
        let verdict = if p_value < cfg.alpha && difference > 0.0 {
            Verdict::Better
        } else if p_value < cfg.alpha && difference < 0.0 {
            Verdict::Worse
        } else {
            Verdict::NoDifference
        };
        let primary = *measure == cfg.primary;
        let passed = if verdict == Verdict::Worse {
            reasons.push(format!("{measure} is significantly worse ({difference:+.4}, p = {p_value:.4})"));
            false
        } else if primary && cfg.require_significant_gain && verdict != Verdict::Better {
            reasons.push(format!(
                "{measure} (primary) is not significantly better ({difference:+.4}, p = {p_value:.4} ≥ α = {})",
                cfg.alpha
            ));
            false
        } else if primary && difference <= 0.0 {
            reasons.push(format!("{measure} (primary) did not improve ({difference:+.4})"));
            false
        } else {
            true
        };
        checks.push(MetricCheck {
            measure: measure.clone(),
            primary,
            current_mean: mean_a,
            candidate_mean: mean_b,
            difference,
            p_value,
            verdict,
            wins,
            ties,
            losses,
            passed,
        });
    }
    Ok(GateDecision {
        passed: reasons.is_empty(),
        current: current.source.clone(),
        candidate: candidate.source.clone(),
        queries,
        config: cfg.clone(),
        checks,
        reasons,
    })
}

/// What `version.json` in each `vN/` records.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VersionInfo {
    pub version: u32,
    /// The directory it was promoted from (absolute).
    pub source: String,
    /// RFC 3339, UTC.
    pub promoted_at: String,
    /// The version that was current when this one was promoted (where a rollback returns to).
    pub previous: Option<u32>,
    /// SHA-256 of the copied `manifest.json`.
    pub manifest_sha256: String,
    /// The gate decision that let it in, when one was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<serde_json::Value>,
}

/// A directory of model versions: `v1/`, `v2/`, … and a `current` symlink.
#[derive(Clone, Debug)]
pub struct ModelStore {
    root: PathBuf,
}

const CURRENT: &str = "current";
const VERSION_FILE: &str = "version.json";
const HISTORY_FILE: &str = "history.jsonl";

impl ModelStore {
    /// Open (and create if missing) a store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, GateError> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(io_err(&root))?;
        Ok(ModelStore { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn store_err(&self, message: impl Into<String>) -> GateError {
        GateError::Store { path: self.root.clone(), message: message.into() }
    }

    /// The directory of version `v`.
    pub fn version_dir(&self, v: u32) -> PathBuf {
        self.root.join(format!("v{v}"))
    }

    /// Version numbers present, ascending.
    pub fn versions(&self) -> Result<Vec<u32>, GateError> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.root).map_err(io_err(&self.root))? {
            let e = e.map_err(io_err(&self.root))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(n) = name.strip_prefix('v').and_then(|n| n.parse::<u32>().ok())
                && e.path().join(VERSION_FILE).is_file()
            {
                out.push(n);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// The version `current` points at, if any.
    pub fn current(&self) -> Result<Option<u32>, GateError> {
        let link = self.root.join(CURRENT);
        match fs::read_link(&link) {
            Ok(target) => {
                let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                name.strip_prefix('v')
                    .and_then(|n| n.parse().ok())
                    .map(Some)
                    .ok_or_else(|| self.store_err(format!("`current` points at {}, not a vN directory", target.display())))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(GateError::Io { path: link, source: e }),
        }
    }

    /// The `version.json` of version `v`.
    pub fn info(&self, v: u32) -> Result<VersionInfo, GateError> {
        let p = self.version_dir(v).join(VERSION_FILE);
        let text = fs::read_to_string(&p).map_err(io_err(&p))?;
        serde_json::from_str(&text).map_err(|e| GateError::Parse { path: p, line: e.line(), message: e.to_string() })
    }

    /// Copy `source` (a directory with a `manifest.json`) in as the next version and make it current.
    pub fn promote(&self, source: &Path, gate: Option<&GateDecision>) -> Result<VersionInfo, GateError> {
        let manifest = source.join("manifest.json");
        if !manifest.is_file() {
            return Err(GateError::Invalid {
                path: source.to_path_buf(),
                message: "no manifest.json: only run or model directories written by tunelab can be promoted".into(),
            });
        }
        let source_abs = fs::canonicalize(source).map_err(io_err(source))?;
        if source_abs.starts_with(fs::canonicalize(&self.root).map_err(io_err(&self.root))?) {
            return Err(self.store_err(format!("{} is inside the store", source.display())));
        }
        let previous = self.current()?;
        // Copy into a staging directory first, so a failed copy never leaves a half version behind.
        let staging = self.root.join(format!(".incoming-{}", std::process::id()));
        if staging.exists() {
            fs::remove_dir_all(&staging).map_err(io_err(&staging))?;
        }
        copy_dir(&source_abs, &staging)?;
        let manifest_sha256 = sha256_file(&staging.join("manifest.json"))?;
        let mut version = self.versions()?.last().copied().unwrap_or(0) + 1;
        let info = loop {
            let info = VersionInfo {
                version,
                source: source_abs.display().to_string(),
                promoted_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                previous,
                manifest_sha256: manifest_sha256.clone(),
                gate: gate.map(|g| serde_json::to_value(g).expect("a gate decision serializes")),
            };
            let vf = staging.join(VERSION_FILE);
            fs::write(&vf, serde_json::to_string_pretty(&info).expect("serializes") + "\n").map_err(io_err(&vf))?;
            let dest = self.version_dir(version);
            if dest.exists() {
                version += 1; // another promotion took this number meanwhile
                continue;
            }
            fs::rename(&staging, &dest).map_err(io_err(&dest))?;
            break info;
        };
        self.switch(version)?;
        self.log(&serde_json::json!({"event": "promote", "version": version, "previous": previous, "source": info.source, "at": info.promoted_at}))?;
        Ok(info)
    }

    /// Point `current` back at the version that was current before the present one was promoted.
    /// Returns (from, to).
    pub fn rollback(&self) -> Result<(u32, u32), GateError> {
        let from = self.current()?.ok_or_else(|| self.store_err("nothing is current; nothing to roll back"))?;
        let to = self
            .info(from)?
            .previous
            .ok_or_else(|| self.store_err(format!("v{from} was the first version; there is nothing to roll back to")))?;
        if !self.version_dir(to).join(VERSION_FILE).is_file() {
            return Err(self.store_err(format!("v{to} (previous of v{from}) is missing")));
        }
        self.switch(to)?;
        let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        self.log(&serde_json::json!({"event": "rollback", "from": from, "to": to, "at": at}))?;
        Ok((from, to))
    }

    /// Atomically point `current` at `vN`: a fresh relative symlink renamed over the old one.
    #[cfg(unix)]
    fn switch(&self, version: u32) -> Result<(), GateError> {
        let tmp = self.root.join(format!(".current-{}", std::process::id()));
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(format!("v{version}"), &tmp).map_err(io_err(&tmp))?;
        let link = self.root.join(CURRENT);
        fs::rename(&tmp, &link).map_err(io_err(&link))
    }

    #[cfg(not(unix))]
    fn switch(&self, _version: u32) -> Result<(), GateError> {
        Err(self.store_err("the model store needs symlinks (Linux or macOS)"))
    }

    fn log(&self, event: &serde_json::Value) -> Result<(), GateError> {
        let p = self.root.join(HISTORY_FILE);
        let mut f = fs::OpenOptions::new().create(true).append(true).open(&p).map_err(io_err(&p))?;
        writeln!(f, "{event}").map_err(io_err(&p))
    }
}

fn sha256_file(path: &Path) -> Result<String, GateError> {
    use sha2::{Digest, Sha256};
    let bytes = fs::read(path).map_err(io_err(path))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

/// Recursive copy; symlinks are copied as links.
fn copy_dir(src: &Path, dst: &Path) -> Result<(), GateError> {
    fs::create_dir_all(dst).map_err(io_err(dst))?;
    for e in fs::read_dir(src).map_err(io_err(src))? {
        let e = e.map_err(io_err(src))?;
        let (from, to) = (e.path(), dst.join(e.file_name()));
        let ty = e.file_type().map_err(io_err(&from))?;
        if ty.is_dir() {
            copy_dir(&from, &to)?;
        } else if ty.is_symlink() {
            #[cfg(unix)]
            std::os::unix::fs::symlink(fs::read_link(&from).map_err(io_err(&from))?, &to).map_err(io_err(&to))?;
        } else {
            fs::copy(&from, &to).map_err(io_err(&to))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn randomization_p_matches_exact_enumeration() {
        // diffs [1, 1, 1, 1]: of the 2^4 = 16 sign patterns only all-plus and all-minus reach
        // |mean| = 1, so the exact p is 2/16 = 0.125. 20,000 rounds: standard error
        // sqrt(0.125 · 0.875 / 20000) ≈ 0.0023, so ±0.01 is > 4 standard errors.
        let t = RandomizationTest::new(20_000, 7);
        let p = t.p_value(&[0.0; 4], &[1.0; 4]);
        assert!((p - 0.125).abs() < 0.01, "p = {p}");
        // diffs [1, -1, 1, -1]: observed mean 0, every pattern reaches it: p = 1.
        assert_eq!(t.p_value(&[0.0, 1.0, 0.0, 1.0], &[1.0, 0.0, 1.0, 0.0]), 1.0);
        // Same seed, same p.
        assert_eq!(t.p_value(&[0.0; 4], &[1.0; 4]), p);
    }

    #[test]
    fn trec_eval_text_is_read_and_summary_rows_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("trec_eval.txt");
        fs::write(&p, "recip_rank\tq1\t1.0000\nrecip_rank\tq2\t0.5000\nrecip_rank\tall\t0.7500\nrunid\tall\tbm25\n").unwrap();
        let m = RunMetrics::read(dir.path(), None).unwrap();
        assert_eq!(m.values["recip_rank"].len(), 2);
        assert_eq!(m.mean("recip_rank"), Some(0.75));
        fs::write(&p, "recip_rank\tq1\tx\n").unwrap();
        let e = RunMetrics::read(&p, None).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("`x`"), "{e}");
    }

    #[test]
    fn duplicate_values_are_rejected() {
        let t = vec![("q1".into(), "P_5".into(), 1.0), ("q1".into(), "P_5".into(), 0.0)];
        assert!(RunMetrics::from_triples("x", t).is_err());
    }

    #[test]
    fn different_query_sets_are_an_error() {
        let a = RunMetrics::from_triples("a", vec![("q1".into(), "recip_rank".into(), 1.0)]).unwrap();
        let b = RunMetrics::from_triples("b", vec![("q2".into(), "recip_rank".into(), 1.0)]).unwrap();
        let e = gate(&a, &b, &GateConfig::default(), &RandomizationTest::new(100, 1)).unwrap_err();
        assert!(matches!(e, GateError::QueryMismatch { only_current: 1, only_candidate: 1, .. }), "{e}");
    }
}

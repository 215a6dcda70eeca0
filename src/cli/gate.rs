//! `tunelab gate`, `tunelab promote`, `tunelab rollback`: the validation gate and model versions.
use std::path::PathBuf;

use anyhow::Context;

use crate::eval::compare::CompareOptions;
use crate::gate::{GateConfig, GateDecision, ModelStore, RandomizationTest, RunMetrics, gate};
use crate::notebook::batch::{BatchFile, SummaryOptions, summarize, write_summary};

/// Exit status of `tunelab gate` when the candidate is refused (1 is an error).
pub const REFUSED_EXIT: i32 = 2;

/// Decide whether a candidate run may replace the current one. Exit status: 0 pass,
/// 2 refused, 1 error.
#[derive(clap::Args, Debug)]
pub struct GateArgs {
    /// The candidate's run directory (or its metrics.arrow / trec_eval -q file).
    #[arg(long)]
    pub candidate: PathBuf,
    /// The current model's run directory (or file).
    #[arg(long)]
    pub current: PathBuf,
    /// The system to read from the candidate's metrics when the file holds several.
    #[arg(long)]
    pub candidate_system: Option<String>,
    /// The system to read from the current run's metrics when the file holds several.
    #[arg(long)]
    pub current_system: Option<String>,
    /// The measure the candidate must improve.
    #[arg(long, default_value = "recip_rank")]
    pub primary: String,
    /// Measures that must not get significantly worse (comma-separated; default: all both runs have).
    #[arg(long, value_delimiter = ',')]
    pub metrics: Vec<String>,
    /// Significance level of the paired randomization test.
    #[arg(value_parser = crate::cli::values::open_unit_f64, long, default_value_t = 0.05)]
    pub alpha: f64,
    /// Accept a higher primary mean that is not significant (default: require p < alpha).
    #[arg(long)]
    pub allow_insignificant_gain: bool,
    /// Randomization rounds.
    #[arg(value_parser = crate::cli::values::positive_usize, long, default_value_t = 10_000)]
    pub permutations: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Also write the decision as JSON here (for the promotion record).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print the decision as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Copy a run or model directory into a model store as the next version and make it current.
#[derive(clap::Args, Debug)]
pub struct PromoteArgs {
    /// Directory to promote (must contain manifest.json).
    pub source: PathBuf,
    /// The model store (v1/, v2/, ..., current -> vN).
    #[arg(long)]
    pub store: PathBuf,
    /// The gate decision JSON (`tunelab gate --out`) to keep with the version.
    #[arg(long)]
    pub gate: Option<PathBuf>,
}

/// Point a model store's `current` back at the version before the present one.
#[derive(clap::Args, Debug)]
pub struct RollbackArgs {
    #[arg(long)]
    pub store: PathBuf,
}

pub fn run_gate(a: GateArgs) -> anyhow::Result<()> {
    let current = RunMetrics::read(&a.current, a.current_system.as_deref())?;
    let candidate = RunMetrics::read(&a.candidate, a.candidate_system.as_deref())?;
    let cfg = GateConfig {
        primary: a.primary,
        metrics: a.metrics,
        alpha: a.alpha,
        require_significant_gain: !a.allow_insignificant_gain,
        permutations: a.permutations,
        seed: a.seed,
    };
    let decision = gate(&current, &candidate, &cfg, &RandomizationTest::new(cfg.permutations, cfg.seed))?;
    let json = serde_json::to_string_pretty(&decision)?;
    if let Some(out) = &a.out {
        std::fs::write(out, format!("{json}\n")).with_context(|| format!("writing {}", out.display()))?;
    }
    if a.json {
        println!("{json}");
    } else {
        print!("{}", decision.to_table());
    }
    if !decision.passed {
        std::process::exit(REFUSED_EXIT);
    }
    Ok(())
}

pub fn run_promote(a: PromoteArgs) -> anyhow::Result<()> {
    let decision: Option<GateDecision> = match &a.gate {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            let d: GateDecision = serde_json::from_str(&text).with_context(|| format!("{}: not a gate decision", p.display()))?;
            anyhow::ensure!(d.passed, "{}: the gate refused this candidate; not promoting", p.display());
            Some(d)
        }
        None => None,
    };
    let store = ModelStore::open(&a.store)?;
    let info = store.promote(&a.source, decision.as_ref())?;
    println!(
        "promoted {} -> {} (current; previous: {})",
        a.source.display(),
        store.version_dir(info.version).display(),
        info.previous.map(|v| format!("v{v}")).unwrap_or_else(|| "none".into())
    );
    Ok(())
}

pub fn run_rollback(a: RollbackArgs) -> anyhow::Result<()> {
    let store = ModelStore::open(&a.store)?;
    let (from, to) = store.rollback()?;
    println!("rolled back {}: current v{from} -> v{to}", a.store.display());
    Ok(())
}

/// Summarise a notebook batch (`batch.json` from scripts/run-notebooks): every configuration's
/// per-query metrics against a baseline, ranked with confidence intervals and p-values.
#[derive(clap::Args, Debug)]
pub struct BatchSummaryArgs {
    /// The batch's batch.json.
    pub batch: PathBuf,
    /// Where to write summary.md, summary.html, summary.json (default: beside batch.json).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The measure that ranks the configurations.
    #[arg(long, default_value = "recip_rank")]
    pub primary: String,
    /// Measures to report (comma-separated; default: all that every configuration has).
    #[arg(long, value_delimiter = ',')]
    pub measures: Vec<String>,
    /// Baseline configuration (default: the first with metrics).
    #[arg(long)]
    pub baseline: Option<String>,
    /// The system to read when a metrics.arrow holds several.
    #[arg(long)]
    pub system: Option<String>,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    #[arg(value_parser = crate::cli::values::positive_usize, long, default_value_t = 10_000)]
    pub permutations: usize,
    #[arg(value_parser = crate::cli::values::positive_usize, long, default_value_t = 10_000)]
    pub bootstrap: usize,
    #[arg(value_parser = crate::cli::values::open_unit_f64, long, default_value_t = 0.95)]
    pub confidence: f64,
}

pub fn run_batch_summary(a: BatchSummaryArgs) -> anyhow::Result<()> {
    let batch = BatchFile::read(&a.batch)?;
    let mut configs = Vec::new();
    for r in batch.runs.iter().filter(|r| r.status == "ok") {
        if let Some(m) = &r.metrics {
            let metrics = RunMetrics::read(std::path::Path::new(m), a.system.as_deref())
                .with_context(|| format!("configuration `{}`", r.name))?;
            configs.push((r.name.clone(), metrics));
        }
    }
    let opts = SummaryOptions {
        primary: a.primary,
        measures: a.measures,
        baseline: a.baseline,
        compare: CompareOptions {
            seed: a.seed,
            permutations: a.permutations,
            bootstrap_samples: a.bootstrap,
            confidence: a.confidence,
            ..CompareOptions::default()
        },
    };
    let summary = if configs.is_empty() { None } else { Some(summarize(&configs, &opts)?) };
    let dir = match a.out {
        Some(d) => d,
        None => a.batch.parent().map(std::path::Path::to_path_buf).unwrap_or_default(),
    };
    let paths = write_summary(&dir, &batch, summary.as_ref())?;
    if let Some(s) = &summary {
        println!("ranking on {} (baseline {}):", s.primary, s.baseline);
        for (i, name) in s.ranking.iter().enumerate() {
            if let Some(r) = s.row(name, &s.primary) {
                println!(
                    "  {}. {:<32} {:.4} [{:.4}, {:.4}]  diff {:+.4}  p {:.4}",
                    i + 1,
                    name,
                    r.mean,
                    r.ci_low,
                    r.ci_high,
                    r.difference,
                    r.p_value
                );
            }
        }
    }
    println!("wrote {} and {}", paths.markdown.display(), paths.html.display());
    Ok(())
}

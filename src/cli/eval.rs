//! `tunelab eval` (trec_eval-compatible output) and `tunelab compare` (A/B statistics).
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use indicatif::ProgressBar;

use crate::data::trec::{Qrels, Run};
use crate::eval::compare::{CompareOptions, compare};
use crate::eval::metrics::{EvalOptions, Measure, evaluate};

/// Measures printed when no `-m` is given: the part of trec_eval's default set that we compute.
const DEFAULT_EVAL_MEASURES: [&str; 8] =
    ["runid", "num_q", "num_ret", "num_rel", "num_rel_ret", "map", "recip_rank", "P"];
const DEFAULT_COMPARE_MEASURES: [&str; 3] = ["map", "recip_rank", "ndcg_cut.10"];

/// Evaluate a TREC run against qrels; output is trec_eval's (`measure<TAB>qid<TAB>value`).
/// Subcommands evaluate other things (query expansions).
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct EvalArgs {
    #[command(subcommand)]
    pub command: Option<EvalCommand>,
    /// Relevance judgments (`qid 0 docid rel`).
    #[arg(required = true)]
    pub qrels: Option<PathBuf>,
    /// Run file (`qid Q0 docid rank score tag`).
    #[arg(required = true)]
    pub run: Option<PathBuf>,
    /// Measure, trec_eval style, repeatable: map, recip_rank, ndcg, P.5, P.5,10, recall.100,
    /// ndcg_cut.10, success.1, num_q, num_ret, num_rel, num_rel_ret, runid. Default: runid num_q
    /// num_ret num_rel num_rel_ret map recip_rank P.
    #[arg(short = 'm', long = "measure")]
    pub measures: Vec<String>,
    /// Print per-query values too (trec_eval -q).
    #[arg(short = 'q', long = "query")]
    pub per_query: bool,
    /// Average over every qrels query; queries missing from the run score 0 (trec_eval -c).
    #[arg(short = 'c', long = "complete")]
    pub complete: bool,
    /// Judgments at or above this level are relevant for binary measures (trec_eval -l).
    #[arg(value_parser = crate::cli::values::relevance_level, short = 'l', long = "level-for-rel", default_value_t = 1, allow_negative_numbers = true)]
    pub relevance_level: i32,
    /// Print full-precision values as JSON instead of trec_eval's 4-decimal text.
    #[arg(long)]
    pub json: bool,
}

/// What `tunelab eval` evaluates besides TREC runs.
#[derive(clap::Subcommand, Debug)]
pub enum EvalCommand {
    /// Generate expansions of held-out queries and score them with QMD's reward (reward.py).
    Expansions(super::expansion::ExpansionsArgs),
    /// A/B report of two `eval expansions` folders (base vs tuned): rates, rewards, paired tests, examples.
    ExpansionsCompare(super::expansion::ExpansionsCompareArgs),
}

/// A/B-compare two runs: means, difference, randomization test, bootstrap CI, Holm, win/tie/loss.
#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// Relevance judgments (`qid 0 docid rel`).
    pub qrels: PathBuf,
    /// Baseline run (A).
    pub run_a: PathBuf,
    /// Candidate run (B); differences are B − A.
    pub run_b: PathBuf,
    /// Measures as for `tunelab eval` (default: map, recip_rank, ndcg_cut.10).
    #[arg(short = 'm', long = "measure")]
    pub measures: Vec<String>,
    /// Seed of the randomization test and the bootstrap.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Sign-flip rounds of the randomization test.
    #[arg(value_parser = crate::cli::values::positive_usize, long, default_value_t = 10_000)]
    pub permutations: usize,
    /// Bootstrap resamples for the confidence interval.
    #[arg(value_parser = crate::cli::values::positive_usize, long, default_value_t = 10_000)]
    pub bootstrap: usize,
    /// Compare on every qrels query (trec_eval -c).
    #[arg(short = 'c', long = "complete")]
    pub complete: bool,
    /// Relevance level for binary measures (trec_eval -l).
    #[arg(value_parser = crate::cli::values::relevance_level, short = 'l', long = "level-for-rel", default_value_t = 1, allow_negative_numbers = true)]
    pub relevance_level: i32,
    /// Print the result as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Split `runid` (a label, not a value) from the numeric measures.
fn parse_measures(specs: &[String], default: &[&str]) -> anyhow::Result<(bool, Vec<Measure>)> {
    let specs: Vec<&str> = if specs.is_empty() { default.to_vec() } else { specs.iter().map(String::as_str).collect() };
    let runid = specs.contains(&"runid");
    let numeric: Vec<&str> = specs.into_iter().filter(|s| *s != "runid").collect();
    Ok((runid, Measure::parse_list(&numeric)?))
}

fn spinner(msg: String) -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    pb.enable_steady_tick(std::time::Duration::from_millis(120));
    pb.set_message(msg);
    pb
}

fn read_inputs(qrels: &Path, runs: &[&Path]) -> anyhow::Result<(Qrels, Vec<Run>)> {
    let pb = spinner(format!("reading {}", qrels.display()));
    let q = Qrels::read(qrels)?;
    if q.judgments.is_empty() {
        bail!("{}: no judgments (empty file?)", qrels.display());
    }
    let mut out = Vec::new();
    for r in runs {
        pb.set_message(format!("reading {}", r.display()));
        let run = Run::read(r)?;
        // An empty run would score 0 everywhere: in `compare` a "significant" difference, in
        // `eval -c` a MAP of 0, both from a file that failed to be written, not from a system.
        if run.results.is_empty() {
            bail!("{}: the run holds no results (empty file?)", r.display());
        }
        out.push(run);
    }
    pb.finish_and_clear();
    Ok((q, out))
}

pub fn run_eval(a: EvalArgs, d: crate::device::DeviceChoice) -> anyhow::Result<()> {
    match a.command {
        Some(EvalCommand::Expansions(e)) => return super::expansion::run_expansions(e, d),
        Some(EvalCommand::ExpansionsCompare(c)) => return super::expansion::run_expansions_compare(c, d),
        None => {}
    }
    let (Some(qrels_path), Some(run_path)) = (&a.qrels, &a.run) else { bail!("give QRELS and RUN, or a subcommand") };
    let (runid, measures) = parse_measures(&a.measures, &DEFAULT_EVAL_MEASURES)?;
    let (qrels, runs) = read_inputs(qrels_path, &[run_path])?;
    let run = &runs[0];
    let opts = EvalOptions { relevance_level: a.relevance_level, complete: a.complete };
    let ev = evaluate(&qrels, run, &measures, &opts);
    if ev.num_queries() == 0 {
        bail!("no queries with both results ({}) and relevance info ({})", run_path.display(), qrels_path.display());
    }
    let out = if a.json {
        serde_json::to_string(&ev.to_json())? + "\n"
    } else {
        ev.to_trec_eval_with_runid(a.per_query, runid)
    };
    std::io::stdout().lock().write_all(out.as_bytes()).context("writing to stdout")?;
    Ok(())
}

pub fn run_compare(a: CompareArgs) -> anyhow::Result<()> {
    let (_, measures) = parse_measures(&a.measures, &DEFAULT_COMPARE_MEASURES)?;
    if measures.iter().any(|m| m.is_count()) {
        bail!("compare works on per-query scores; num_* counts are not comparable measures");
    }
    let (qrels, runs) = read_inputs(&a.qrels, &[&a.run_a, &a.run_b])?;
    let opts = CompareOptions {
        seed: a.seed,
        permutations: a.permutations,
        bootstrap_samples: a.bootstrap,
        relevance_level: a.relevance_level,
        complete: a.complete,
        ..CompareOptions::default()
    };
    let pb = spinner(format!("comparing on {} measures", measures.len()));
    let mut cmp = compare(&qrels, &runs[0], &runs[1], &measures, &opts);
    pb.finish_and_clear();
    if cmp.queries == 0 {
        bail!("no judged query in {} was retrieved by either run", a.qrels.display());
    }
    // Name runs by their files when the tags say nothing (or the same thing).
    if cmp.run_a == cmp.run_b {
        cmp.run_a = a.run_a.display().to_string();
        cmp.run_b = a.run_b.display().to_string();
    }
    let out = if a.json { serde_json::to_string_pretty(&cmp)? + "\n" } else { cmp.to_table() };
    std::io::stdout().lock().write_all(out.as_bytes()).context("writing to stdout")?;
    Ok(())
}

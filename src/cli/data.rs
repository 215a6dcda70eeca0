//! `tunelab data ...`: inspect, split and mine datasets, with governance applied.
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::data::corpus::read_corpus;
use crate::data::formats::{Loaded, Record, load, with_format};
use crate::data::governance::Policy;
use crate::data::jsonl::{BadLines, write_jsonl};
use crate::data::mining::mine_pairs;
use crate::data::split::{SplitConfig, duplicates, leakage, split, write_split};
use crate::data::stats;
use crate::device::DeviceChoice;

/// The policy used when `--policy` is not given and this file exists (relative to the working directory).
pub const DEFAULT_POLICY: &str = "datasets/governance/policy.toml";

#[derive(clap::Args, Debug)]
pub struct PolicyArgs {
    /// Governance policy (TOML). Default: datasets/governance/policy.toml if present, else the built-in
    /// default (sacred never; community/personal need consent; empty ledger).
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Keep records without a classification, treating them as public.
    #[arg(long)]
    pub treat_unclassified_as_public: bool,
    /// Skip malformed lines (each is reported) instead of stopping at the first.
    #[arg(long)]
    pub skip_bad: bool,
}

#[derive(clap::Subcommand, Debug)]
pub enum DataCommand {
    /// Print statistics and the governance audit for a dataset file or folder.
    Inspect {
        /// A JSONL file, an MLX-LM folder (train/valid/test.jsonl) or a folder of markdown files.
        path: PathBuf,
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// Apply the governance policy and write a seeded, group-aware train/valid/test split.
    Split {
        path: PathBuf,
        /// Output folder for train.jsonl, valid.jsonl, test.jsonl and audit.json.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Field that groups records (all of a group land in one split).
        #[arg(long, default_value = "doc_id")]
        group_by: String,
        /// Shares of train, valid and test.
        #[arg(value_parser = crate::cli::values::fraction_f64, long, value_delimiter = ',', num_args = 3, default_values_t = [0.8, 0.1, 0.1])]
        ratios: Vec<f64>,
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// Mine title→body and heading→section pairs from a corpus (markdown folder or JSONL).
    Mine {
        corpus: PathBuf,
        /// Output JSONL of embedding pairs.
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        skip_bad: bool,
    },
    /// Add mined hard negatives to embedding pairs (BM25 or a dense model over a governed corpus),
    /// as sentence-transformers' mine_hard_negatives does. Documents the policy refuses are never used.
    MineNegatives {
        /// Embedding pairs (JSONL).
        pairs: PathBuf,
        /// Corpus the negatives come from (markdown folder or JSONL).
        #[arg(long)]
        corpus: PathBuf,
        /// Output JSONL: the pairs with negatives appended.
        #[arg(long)]
        out: PathBuf,
        /// `bm25` or `dense`.
        #[arg(long, default_value = "bm25")]
        method: String,
        /// Encoder folder for `--method dense`.
        #[arg(long, required_if_eq("method", "dense"))]
        model: Option<PathBuf>,
        #[arg(value_parser = crate::cli::values::positive_usize, long, default_value_t = 1)]
        num_negatives: usize,
        /// Skip this many top candidates (often unjudged positives).
        #[arg(long, default_value_t = 0)]
        range_min: usize,
        #[arg(long, default_value_t = 50)]
        range_max: usize,
        /// Dense only: keep candidates scoring at most (1 - margin) × the positive's score.
        #[arg(value_parser = crate::cli::values::fraction_f32, long)]
        relative_margin: Option<f32>,
        /// TREC qrels + queries JSONL (`{"qid","query"}`): judged-relevant documents are never negatives.
        #[arg(long, requires = "queries")]
        qrels: Option<PathBuf>,
        #[arg(long, requires = "qrels")]
        queries: Option<PathBuf>,
        #[command(flatten)]
        policy: PolicyArgs,
    },
}

pub fn run(cmd: DataCommand, device: DeviceChoice) -> anyhow::Result<()> {
    widen_tables();
    match cmd {
        DataCommand::Inspect { path, policy } => {
            let loaded = load_reporting(&path, &policy)?;
            let policy = resolve_policy(&policy)?;
            with_format!(loaded.format, T => inspect::<T>(&loaded, &policy))
        }
        DataCommand::Split {
            path,
            out,
            seed,
            group_by,
            ratios,
            policy,
        } => {
            // Each share is checked in [0, 1] when parsed; all three zero would put every record in train.
            if ratios.iter().sum::<f64>() <= 0.0 {
                anyhow::bail!("--ratios {ratios:?}: at least one share must be above 0");
            }
            let loaded = load_reporting(&path, &policy)?;
            let policy = resolve_policy(&policy)?;
            let cfg = SplitConfig {
                seed,
                ratios: [ratios[0], ratios[1], ratios[2]],
                group_by: Some(group_by),
            };
            with_format!(loaded.format, T => split_to::<T>(&loaded, &policy, &cfg, &out))
        }
        DataCommand::Mine { corpus, out, skip_bad } => {
            let read = read_corpus(&corpus, bad_lines(skip_bad))?;
            report_skipped(&read.skipped);
            let pairs = mine_pairs(&read.records);
            write_jsonl(&out, &pairs)?;
            println!(
                "mined {} pairs from {} documents into {}",
                pairs.len(),
                read.records.len(),
                out.display()
            );
            Ok(())
        }
        DataCommand::MineNegatives {
            pairs, corpus, out, method, model, num_negatives, range_min, range_max, relative_margin, qrels, queries, policy: pargs,
        } => {
            use crate::train::hard_negatives::{Miner, MiningOptions, mine_hard_negatives};
            let policy = resolve_policy(&pargs)?;
            let read = crate::data::formats::read_records::<crate::data::formats::EmbeddingPair>(&pairs, bad_lines(pargs.skip_bad))?;
            report_skipped(&read.skipped);
            let docs = read_corpus(&corpus, bad_lines(pargs.skip_bad))?;
            report_skipped(&docs.skipped);
            let governed_docs = policy.apply(docs.records);
            let relevant = match (&qrels, &queries) {
                (Some(qrels), Some(queries)) => Some(relevant_by_query_text(qrels, queries)?),
                _ => None,
            };
            let encoder;
            let miner = match method.as_str() {
                "bm25" => Miner::Bm25,
                "dense" => {
                    let dir = model.as_ref().context("--method dense needs --model")?;
                    encoder = crate::model::bert::SentenceEncoder::load(dir, &device.device()?)?;
                    Miner::Dense(&encoder)
                }
                other => anyhow::bail!("--method {other:?}: use bm25 or dense"),
            };
            let opts = MiningOptions { num_negatives, range_min, range_max, relative_margin, ..MiningOptions::default() };
            // Pairs are governed too: excluded pairs (sacred, no consent) are neither mined for nor written.
            let governed_pairs = policy.apply(read.records);
            let (mined, report) = mine_hard_negatives(governed_pairs.records(), &governed_docs, &miner, &opts, relevant.as_ref())?;
            write_jsonl(&out, &mined)?;
            if !governed_pairs.audit().excluded.is_empty() {
                println!("{} of {} pairs excluded by the policy (not written)", governed_pairs.audit().excluded.len(), governed_pairs.audit().total);
            }
            println!(
                "{} negatives added to {} pairs ({} candidates skipped as relevant, {} by margin, {} pairs short) from {} of {} documents the policy allows; wrote {}",
                report.negatives_added, report.pairs, report.skipped_relevant, report.skipped_margin, report.pairs_short,
                report.documents_allowed, governed_docs.audit().total, out.display()
            );
            Ok(())
        }
    }
}

/// Query text → documents judged relevant (grade > 0) for it.
fn relevant_by_query_text(
    qrels: &Path,
    queries: &Path,
) -> anyhow::Result<std::collections::BTreeMap<String, std::collections::BTreeSet<String>>> {
    #[derive(serde::Deserialize)]
    struct Q {
        qid: String,
        query: String,
    }
    let qrels = crate::data::trec::Qrels::read(qrels)?;
    let qs = crate::data::jsonl::read_jsonl::<Q>(queries, BadLines::Fail)?.records;
    let mut out = std::collections::BTreeMap::new();
    for q in qs {
        if let Some(j) = qrels.judgments.get(&q.qid) {
            let set: &mut std::collections::BTreeSet<String> = out.entry(q.query).or_default();
            set.extend(j.iter().filter(|(_, g)| **g > 0).map(|(d, _)| d.clone()));
        }
    }
    Ok(out)
}

/// polars prints at most 8 columns and 10 rows by default and wraps at 100 characters when not on a
/// terminal; our summaries are a little wider and longer. Variables the user set win.
fn widen_tables() {
    for (key, value) in [
        ("POLARS_FMT_MAX_COLS", "20"),
        ("POLARS_FMT_MAX_ROWS", "100"),
        ("POLARS_FMT_STR_LEN", "60"),
        ("POLARS_TABLE_WIDTH", "200"),
    ] {
        if std::env::var_os(key).is_none() {
            // SAFETY: called at the start of the command, before any other thread exists.
            unsafe { std::env::set_var(key, value) };
        }
    }
}

fn bad_lines(skip: bool) -> BadLines {
    if skip { BadLines::SkipBad } else { BadLines::Fail }
}

fn load_reporting(path: &Path, args: &PolicyArgs) -> anyhow::Result<Loaded> {
    let loaded = load(path, bad_lines(args.skip_bad))?;
    report_skipped(&loaded.skipped);
    Ok(loaded)
}

fn report_skipped(skipped: &[crate::data::jsonl::SkippedLine]) {
    if !skipped.is_empty() {
        eprintln!("skipped {} bad line(s):", skipped.len());
        for s in skipped {
            eprintln!("  {s}");
        }
    }
}

/// `--policy`, else the bundled policy file, else the built-in default; then the opt-in flag.
fn resolve_policy(args: &PolicyArgs) -> anyhow::Result<Policy> {
    let mut policy = match &args.policy {
        Some(p) => Policy::load(p)?,
        None if Path::new(DEFAULT_POLICY).is_file() => Policy::load(Path::new(DEFAULT_POLICY))?,
        None => Policy::default(),
    };
    policy.treat_unclassified_as_public |= args.treat_unclassified_as_public;
    Ok(policy)
}

fn typed_parts<T: Record>(loaded: &Loaded) -> Vec<(&str, &[T])> {
    loaded
        .parts
        .iter()
        .map(|p| {
            (
                p.name.as_str(),
                T::slice(&p.data).expect("parts share the loaded format"),
            )
        })
        .collect()
}

fn inspect<T: Record>(loaded: &Loaded, policy: &Policy) -> anyhow::Result<()> {
    let parts = typed_parts::<T>(loaded);
    println!("format: {}", loaded.format);
    println!("{}", stats::file_counts(loaded)?);
    println!(
        "text lengths (characters, whitespace tokens):\n{}",
        stats::length_stats(&parts)?
    );
    println!("classification mix:\n{}", stats::class_mix(&parts)?);
    let dups = duplicates(&parts)?;
    if dups.height() > 0 {
        println!("duplicates (normalised text):\n{dups}");
    }
    if parts.len() > 1 {
        let leaks = leakage(&parts)?;
        println!("leakage across splits: {} text(s)", leaks.height());
        if leaks.height() > 0 {
            println!("{leaks}");
        }
    }
    let all: Vec<T> = parts.iter().flat_map(|p| p.1.iter().cloned()).collect();
    let governed = policy.apply(all);
    print_audit(governed.audit())
}

fn print_audit(audit: &crate::data::governance::Audit) -> anyhow::Result<()> {
    let source = audit
        .policy_file
        .as_ref()
        .map_or("built-in default".to_string(), |p| p.display().to_string());
    println!(
        "governance audit (policy: {source}; {} consent(s), {} withdrawn contributor(s); unclassified as public: {}):",
        audit.ledger_entries, audit.withdrawn_contributors, audit.policy.treat_unclassified_as_public
    );
    println!("{}", stats::audit_counts(audit)?);
    println!(
        "kept {} of {} records; sha256 {}",
        audit.kept, audit.total, audit.sha256
    );
    if !audit.excluded.is_empty() {
        println!("excluded:\n{}", stats::audit_excluded(audit)?);
    }
    Ok(())
}

fn split_to<T: Record>(loaded: &Loaded, policy: &Policy, cfg: &SplitConfig, out: &Path) -> anyhow::Result<()> {
    let all: Vec<T> = typed_parts::<T>(loaded)
        .iter()
        .flat_map(|p| p.1.iter().cloned())
        .collect();
    let governed = policy.apply(all);
    let splits = split(&governed, cfg);
    let audit = write_split(&splits, out).with_context(|| format!("writing the split into {}", out.display()))?;
    print_audit(&audit.governance)?;
    println!(
        "classification mix of the splits:\n{}",
        stats::class_mix(&splits.slices())?
    );
    for (name, info) in &audit.splits {
        println!("{name}: {} records in {} groups", info.records, info.groups);
    }
    if audit.duplicate_records > 0 || audit.leaked_texts > 0 {
        println!(
            "warning: {} duplicate record(s), {} text(s) shared across splits",
            audit.duplicate_records, audit.leaked_texts
        );
    }
    println!("wrote {}/{{train,valid,test}}.jsonl and audit.json", out.display());
    Ok(())
}

//! `tunelab data ...`: inspect, split and mine datasets, with governance applied.
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::data::corpus::read_corpus;
use crate::data::formats::{Loaded, Record, load, with_format};
use crate::data::governance::Policy;
use crate::data::jsonl::{BadLines, write_jsonl};
use crate::data::lint;
use crate::data::mining::mine_pairs;
use crate::data::split::{SplitConfig, duplicates, leakage, split, write_split};
use crate::data::stats;
use crate::device::DeviceChoice;

#[derive(clap::Args, Debug)]
pub struct PolicyArgs {
    /// Governance policy (TOML). Default: the first governance/policy.toml (or tunelab.toml naming a
    /// `policy`) in the data's folder or a folder above it; without one only public records are used.
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
        /// Make the record checks (duplicates, missing ids, empty texts, names near a withdrawn
        /// contributor's) errors: exit non-zero when any is found.
        #[arg(long)]
        strict: bool,
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
        #[arg(long, value_delimiter = ',', num_args = 3, default_values_t = [0.8, 0.1, 0.1])]
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
        #[arg(long, default_value_t = 1)]
        num_negatives: usize,
        /// Skip this many top candidates (often unjudged positives).
        #[arg(long, default_value_t = 0)]
        range_min: usize,
        #[arg(long, default_value_t = 50)]
        range_max: usize,
        /// Dense only: keep candidates scoring at most (1 - margin) × the positive's score.
        #[arg(long)]
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
        DataCommand::Inspect { path, strict, policy: pargs } => {
            let loaded = load_reporting(&path, &pargs)?;
            let policy = resolve_policy(pargs.policy.as_deref(), &path, pargs.treat_unclassified_as_public)?;
            with_format!(loaded.format, T => inspect::<T>(&loaded, &policy, strict))
        }
        DataCommand::Split {
            path,
            out,
            seed,
            group_by,
            ratios,
            policy,
        } => {
            let loaded = load_reporting(&path, &policy)?;
            let policy = resolve_policy(policy.policy.as_deref(), &path, policy.treat_unclassified_as_public)?;
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
            // One policy governs both the pairs and the corpus their negatives come from: the one found
            // from the pairs' location (else the corpus's).
            let found_for = match (&pargs.policy, Policy::discover(&pairs)?) {
                (None, None) => &corpus,
                _ => &pairs,
            };
            let policy = resolve_policy(pargs.policy.as_deref(), found_for, pargs.treat_unclassified_as_public)?;
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

/// The policy for data at `data`: `explicit`, else the one found from the data's location (never the
/// working directory, see [`Policy::resolve`]); without one only public records pass, and a warning says
/// how to give one. Then the opt-in for unclassified records. Every command that governs data uses this.
pub fn resolve_policy(explicit: Option<&Path>, data: &Path, treat_unclassified_as_public: bool) -> anyhow::Result<Policy> {
    let mut policy = Policy::resolve(explicit, data)?;
    match (&policy.file, &policy.not_found) {
        (_, Some(why)) => eprintln!("warning: {why}. Only public records are used (sacred never)."),
        (Some(file), None) => eprintln!("governance policy: {}", file.display()),
        (None, None) => {}
    }
    policy.treat_unclassified_as_public |= treat_unclassified_as_public;
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

fn inspect<T: Record>(loaded: &Loaded, policy: &Policy, strict: bool) -> anyhow::Result<()> {
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
    print_audit(governed.audit())?;
    let findings = lint::check::<T>(loaded, policy);
    if findings.is_empty() {
        println!("record checks: no duplicates, missing ids, empty texts or names near a withdrawn one");
        return Ok(());
    }
    let level = if strict { "error" } else { "warning" };
    println!("record checks: {} finding(s)", findings.len());
    for f in &findings {
        println!("{level}: {f}");
    }
    if strict {
        anyhow::bail!(
            "{} record check(s) failed under --strict (see above): duplicates, missing ids, empty texts or names near a withdrawn contributor's",
            findings.len()
        );
    }
    Ok(())
}

fn print_audit(audit: &crate::data::governance::Audit) -> anyhow::Result<()> {
    let source = match (&audit.policy_file, &audit.policy.not_found) {
        (Some(p), _) => p.display().to_string(),
        (None, Some(_)) => "none found: only public records".to_string(),
        (None, None) => "built-in default".to_string(),
    };
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
    if !audit.admitted_by_consent.is_empty() {
        let uses: Vec<String> = audit.admitted_by_consent.iter().map(|(c, u)| format!("{c} ({})", u.records)).collect();
        println!("admitted by consent (records): {}", uses.join(", "));
    }
    for n in &audit.near_matches {
        println!(
            "warning: kept {} by {:?}, {} edit(s) from withdrawn {:?}: check whether it is the same person",
            n.id, n.contributor, n.distance, n.withdrawn
        );
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

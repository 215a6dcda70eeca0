//! `tunelab eval expansions`: generate query expansions for held-out queries with a decoder (and
//! adapter) and score them with QMD's reward ([`crate::eval::expansion`]); `tunelab eval
//! expansions-compare`: the A/B report of two such evaluations (base vs tuned).
//!
//! The prompt is the one the SFT trainer trains QMD records on
//! ([`crate::train::sft_data::qmd_generation_prompt`]), and generation is `tunelab generate`'s
//! (adapter folded into the weights, greedy at `--temp 0`).
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::data::jsonl::{BadLines, DataError, read_with};
use crate::device::DeviceChoice;
use crate::eval::compare::{CompareOptions, compare_values};
use crate::eval::expansion::{ExpansionScore, ExpansionSummary, REWARD_PY_COMMIT, score_expansion_detailed};
use crate::model::decoder::GenerateOptions;
use crate::report::manifest::{InputHash, Manifest, RunDir};
use crate::report::{AbReportInput, ComparisonRow, ExampleSet, LossPoint, PairedExample, write_ab_report};

/// Per-query numbers the comparison tests, in report order ([`ExpansionScore::measure`]).
pub const COMPARED: [&str; 8] = ["reward", "valid", "format", "diversity", "hyde", "quality", "entity", "think_bonus"];

/// `tunelab eval expansions`.
#[derive(clap::Args, Debug)]
pub struct ExpansionsArgs {
    /// A `.gguf` file or a Hugging Face model folder.
    #[arg(long)]
    pub model: PathBuf,
    /// A LoRA adapter folder to apply (MLX-LM or PEFT).
    #[arg(long)]
    pub adapter_path: Option<PathBuf>,
    /// JSONL of queries: `{"query": ..., "id"?: ...}` per line (QMD records and split files work as they are).
    #[arg(long)]
    pub queries: PathBuf,
    /// Maximum number of tokens to generate per query.
    #[arg(value_parser = crate::cli::values::positive_usize, long, short = 'm', default_value_t = 160)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(value_parser = crate::cli::values::non_negative_f32, long, default_value_t = 0.0)]
    pub temp: f32,
    /// Nucleus sampling threshold (1.0 = off).
    #[arg(value_parser = crate::cli::values::probability_f32, long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Only the first N queries.
    #[arg(value_parser = crate::cli::values::positive_usize, long)]
    pub limit: Option<usize>,
    /// Output folder for expansions.jsonl and summary.json (must not hold them already).
    #[arg(long)]
    pub out: PathBuf,
}

/// `tunelab eval expansions-compare`.
#[derive(clap::Args, Debug)]
pub struct ExpansionsCompareArgs {
    /// Baseline evaluation (A): the `--out` folder of `tunelab eval expansions`, or its summary.json.
    pub a: PathBuf,
    /// Candidate evaluation (B); differences are B − A.
    pub b: PathBuf,
    /// Name of A in the report.
    #[arg(long, default_value = "base")]
    pub name_a: String,
    /// Name of B in the report.
    #[arg(long, default_value = "tuned")]
    pub name_b: String,
    /// Where run directories go (`<root>/<experiment>/<run-id>/`).
    #[arg(long, default_value = "reports")]
    pub reports_root: PathBuf,
    #[arg(long, default_value = "qe-eval")]
    pub experiment: String,
    /// A training loss log to plot (default: B's adapter folder's loss.jsonl, if any).
    #[arg(long)]
    pub loss_log: Option<PathBuf>,
    /// Seed of the randomization test and the bootstrap.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Sign-flip rounds of the randomization test.
    #[arg(value_parser = crate::cli::values::positive_usize, long, default_value_t = 10_000)]
    pub permutations: usize,
    /// Bootstrap resamples for the confidence interval.
    #[arg(value_parser = crate::cli::values::positive_usize, long, default_value_t = 10_000)]
    pub bootstrap: usize,
    /// Examples shown side by side: half the largest reward gains of B, half its largest losses.
    #[arg(long, default_value_t = 6)]
    pub examples: usize,
}

/// One line of `expansions.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExpansionRecord {
    pub id: String,
    pub query: String,
    /// The generated text, as decoded.
    pub text: String,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub seconds: f64,
    /// reward.py's breakdown (with the parsed lines), reward and validity.
    pub score: ExpansionScore,
}

/// `summary.json`: what was evaluated, how, and the aggregate scores.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExpansionRunSummary {
    pub tool: String,
    pub version: String,
    pub created_at: String,
    pub device: String,
    pub model: InputHash,
    pub adapter: Option<InputHash>,
    pub queries: InputHash,
    pub max_tokens: usize,
    pub temp: f32,
    pub top_p: f32,
    pub seed: u64,
    pub limit: Option<usize>,
    /// The reward.py commit the scorer ports.
    pub reward_py_commit: String,
    /// The prompt of the first query, as rendered (the others differ only in the query).
    pub example_prompt: String,
    pub load_seconds: f64,
    pub generate_seconds: f64,
    pub summary: ExpansionSummary,
}

/// A query to expand: `id` from the record, else `#<line>`.
#[derive(Clone, Debug, PartialEq)]
pub struct QueryLine {
    pub id: String,
    pub query: String,
}

/// Read `{"query", "id"?}` lines; errors name the file and line (a missing or non-string query,
/// invalid JSON, a repeated id).
pub fn read_queries(path: &Path) -> Result<Vec<QueryLine>, DataError> {
    let read = read_with(path, BadLines::Fail, |line, v| {
        let query = v.get("query").and_then(|q| q.as_str()).ok_or_else(|| DataError::at(path, line, Some("query"), "expected a string `query`"))?;
        let id = match v.get("id") {
            None | Some(serde_json::Value::Null) => format!("#{line}"),
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        };
        Ok((line, QueryLine { id, query: query.to_string() }))
    })?;
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (line, q) in read.records {
        if !seen.insert(q.id.clone()) {
            return Err(DataError::at(path, line, Some("id"), format!("id {:?} appears twice", q.id)));
        }
        out.push(q);
    }
    if out.is_empty() {
        return Err(DataError::file(path, "no queries"));
    }
    Ok(out)
}

fn write_json(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(value)? + "\n").with_context(|| format!("writing {}", path.display()))
}

pub fn run_expansions(a: ExpansionsArgs, d: DeviceChoice) -> anyhow::Result<()> {
    let mut queries = read_queries(&a.queries)?;
    if let Some(n) = a.limit {
        queries.truncate(n);
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let (lines_path, summary_path) = (a.out.join("expansions.jsonl"), a.out.join("summary.json"));
    for p in [&lines_path, &summary_path] {
        if p.exists() {
            bail!("{} exists; give an empty --out folder", p.display());
        }
    }
    let (model, adapter, queries_hash) =
        (InputHash::of(&a.model)?, a.adapter_path.as_deref().map(InputHash::of).transpose()?, InputHash::of(&a.queries)?);

    let device = d.device()?;
    let started = Instant::now();
    let mut lm = super::lora::load_with_adapter(&a.model, a.adapter_path.as_deref(), &device)?;
    // Forward only: fold the adapter in once, as `tunelab generate` does.
    lm.model = lm.model.merged();
    let load_seconds = started.elapsed().as_secs_f64();
    let tpl = lm
        .chat_template
        .as_ref()
        .with_context(|| format!("{} has no chat template: QMD query-expansion prompts are chats", a.model.display()))?;
    let opts = GenerateOptions { max_tokens: a.max_tokens, temperature: a.temp, top_p: a.top_p, seed: a.seed, stop_tokens: Vec::new() };

    let pb = ProgressBar::new(queries.len() as u64);
    pb.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} queries, {elapsed} elapsed, ETA {eta} {msg}").expect("a valid template"));
    let mut file = std::io::BufWriter::new(std::fs::File::create(&lines_path).with_context(|| format!("creating {}", lines_path.display()))?);
    let (mut scores, mut example_prompt) = (Vec::new(), String::new());
    let gen_started = Instant::now();
    for q in &queries {
        let prompt = crate::train::sft_data::qmd_generation_prompt(tpl, &q.query)?;
        // The template writes any BOS itself, as in training.
        let ids = lm.encode(&prompt, false)?;
        if example_prompt.is_empty() {
            example_prompt = prompt;
        }
        let t = Instant::now();
        let generated = lm.generate(&ids, &opts, |_| {});
        let text = lm.decode(&generated)?;
        let score = score_expansion_detailed(&q.query, &text);
        pb.set_message(format!("valid so far {}/{}", scores.iter().filter(|s: &&ExpansionScore| s.valid).count() + usize::from(score.valid), scores.len() + 1));
        let rec = ExpansionRecord {
            id: q.id.clone(),
            query: q.query.clone(),
            text,
            prompt_tokens: ids.len(),
            generated_tokens: generated.len(),
            seconds: t.elapsed().as_secs_f64(),
            score: score.clone(),
        };
        // Flushed per line: a long run that is cut short keeps what it generated.
        writeln!(file, "{}", serde_json::to_string(&rec)?).and_then(|()| file.flush()).with_context(|| format!("writing {}", lines_path.display()))?;
        scores.push(score);
        pb.inc(1);
    }
    file.flush().with_context(|| format!("writing {}", lines_path.display()))?;
    pb.finish_and_clear();
    let summary = ExpansionSummary::of(&scores);
    let run = ExpansionRunSummary {
        tool: "tunelab".into(),
        version: crate::version().into(),
        created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        device: d.to_string(),
        model,
        adapter,
        queries: queries_hash,
        max_tokens: a.max_tokens,
        temp: a.temp,
        top_p: a.top_p,
        seed: a.seed,
        limit: a.limit,
        reward_py_commit: REWARD_PY_COMMIT.into(),
        example_prompt,
        load_seconds,
        generate_seconds: gen_started.elapsed().as_secs_f64(),
        summary: summary.clone(),
    };
    write_json(&summary_path, &run)?;
    println!(
        "{} queries: valid-expansion rate {:.4}, mean reward {:.4}, hard fails {:.4} ({:.0} s)",
        summary.n, summary.valid_rate, summary.mean_reward, summary.hard_fail_rate, run.generate_seconds
    );
    println!("wrote {} and {}", lines_path.display(), summary_path.display());
    Ok(())
}

/// An evaluation folder read back: its summary and per-query lines (checked against each other).
pub struct LoadedEvaluation {
    pub dir: PathBuf,
    pub summary: ExpansionRunSummary,
    pub records: Vec<ExpansionRecord>,
}

/// Read `summary.json` and `expansions.jsonl` of an evaluation (`path`: the folder or its
/// summary.json); refuses a summary whose numbers do not match its lines.
pub fn load_evaluation(path: &Path) -> anyhow::Result<LoadedEvaluation> {
    let dir = if path.is_file() { path.parent().unwrap_or(Path::new(".")).to_path_buf() } else { path.to_path_buf() };
    let sp = dir.join("summary.json");
    let summary: ExpansionRunSummary =
        serde_json::from_str(&std::fs::read_to_string(&sp).with_context(|| format!("reading {}", sp.display()))?).with_context(|| format!("parsing {}", sp.display()))?;
    let lp = dir.join("expansions.jsonl");
    let records = crate::data::jsonl::read_jsonl::<ExpansionRecord>(&lp, BadLines::Fail)?.records;
    let recomputed = ExpansionSummary::of(&records.iter().map(|r| r.score.clone()).collect::<Vec<_>>());
    let close = |x: f64, y: f64| (x - y).abs() <= 1e-9 || (x.is_nan() && y.is_nan());
    if recomputed.n != summary.summary.n || !close(recomputed.mean_reward, summary.summary.mean_reward) || !close(recomputed.valid_rate, summary.summary.valid_rate) {
        bail!("{} does not match {} (n {} vs {}, mean reward {} vs {})", sp.display(), lp.display(), summary.summary.n, recomputed.n, summary.summary.mean_reward, recomputed.mean_reward);
    }
    Ok(LoadedEvaluation { dir, summary, records })
}

/// An expansion with its score, for a report cell.
fn note(s: &ExpansionScore) -> String {
    let why = s.hard_fail.as_deref().map(|r| format!(", hard fail: {r}")).unwrap_or_default();
    format!("reward {:.3} ({}, {}{why})", s.reward, if s.valid { "valid" } else { "invalid" }, s.rating)
}

pub fn run_expansions_compare(a: ExpansionsCompareArgs, _d: DeviceChoice) -> anyhow::Result<()> {
    let (ea, eb) = (load_evaluation(&a.a)?, load_evaluation(&a.b)?);
    let by_id = |e: &LoadedEvaluation| -> BTreeMap<String, ExpansionRecord> { e.records.iter().map(|r| (r.id.clone(), r.clone())).collect() };
    let (ma, mb) = (by_id(&ea), by_id(&eb));
    if ma.keys().ne(mb.keys()) || ma.iter().any(|(id, r)| mb[id].query != r.query) {
        bail!("{} and {} were not run on the same queries (ids and query texts must match)", ea.dir.display(), eb.dir.display());
    }
    if ea.summary.queries.sha256 != eb.summary.queries.sha256 {
        eprintln!("warning: the query files differ ({} vs {}), though their queries match", ea.summary.queries.path, eb.summary.queries.path);
    }
    let ids: Vec<&String> = ma.keys().collect();
    let values = |m: &BTreeMap<String, ExpansionRecord>, measure: &str| -> Vec<f64> {
        ids.iter().map(|id| m[*id].score.measure(measure).expect("a compared measure")).collect()
    };
    let names: Vec<String> = COMPARED.iter().map(|s| s.to_string()).collect();
    let va: Vec<Vec<f64>> = COMPARED.iter().map(|m| values(&ma, m)).collect();
    let vb: Vec<Vec<f64>> = COMPARED.iter().map(|m| values(&mb, m)).collect();
    let opts = CompareOptions { seed: a.seed, permutations: a.permutations, bootstrap_samples: a.bootstrap, ..CompareOptions::default() };
    let mut cmp = compare_values(&names, &va, &vb, &opts);
    (cmp.run_a, cmp.run_b) = (a.name_a.clone(), a.name_b.clone());
    let comparison: Vec<ComparisonRow> = cmp.metrics.iter().map(ComparisonRow::from).collect();
    let per_query = |v: &[Vec<f64>]| -> Vec<(String, String, f64)> {
        COMPARED.iter().zip(v).flat_map(|(m, xs)| ids.iter().zip(xs).map(move |(id, x)| ((*id).clone(), m.to_string(), *x))).collect()
    };

    // Examples: B's largest reward gains and losses (ties broken by id), each shown once.
    let mut order: Vec<(f64, &String)> = ids.iter().map(|id| (mb[*id].score.reward - ma[*id].score.reward, *id)).collect();
    order.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(y.1)));
    let gains = a.examples.div_ceil(2).min(order.len());
    let mut chosen: Vec<&String> = order[..gains].iter().map(|x| x.1).collect();
    for (_, id) in order.iter().rev().take(a.examples - gains) {
        if !chosen.contains(id) {
            chosen.push(id);
        }
    }
    let items: Vec<PairedExample> = chosen
        .iter()
        .map(|id| PairedExample {
            id: (*id).clone(),
            input: ma[*id].query.clone(),
            a: ma[*id].text.clone(),
            b: mb[*id].text.clone(),
            note_a: note(&ma[*id].score),
            note_b: note(&mb[*id].score),
        })
        .collect();

    let loss_log_path = a.loss_log.clone().or_else(|| {
        let p = Path::new(&eb.summary.adapter.as_ref()?.path).join("loss.jsonl");
        p.is_file().then_some(p)
    });
    let loss_log = loss_log_path.as_deref().map(LossPoint::read_log).transpose()?;

    let run = RunDir::create(&a.reports_root, &a.experiment)?;
    let config = serde_json::json!({
        "a": { "name": a.name_a, "dir": ea.dir, "evaluation": ea.summary },
        "b": { "name": a.name_b, "dir": eb.dir, "evaluation": eb.summary },
        "compared": COMPARED,
        "permutations": a.permutations,
        "bootstrap": a.bootstrap,
        "loss_log": loss_log_path,
        "scorer": format!("QMD finetune/reward.py @ {REWARD_PY_COMMIT}, ported in tunelab::eval::expansion"),
    });
    let mut manifest = Manifest::new(&run, a.seed, config, eb.summary.device.clone());
    manifest.tools.insert("qmd-reward.py".into(), REWARD_PY_COMMIT.into());
    for e in [&ea, &eb] {
        manifest.inputs.extend([Some(e.summary.model.clone()), e.summary.adapter.clone(), Some(e.summary.queries.clone())].into_iter().flatten());
        manifest.add_input(&e.dir.join("expansions.jsonl"))?;
        manifest.record_timing(format!("{}: load", e.dir.display()), std::time::Duration::from_secs_f64(e.summary.load_seconds));
        manifest.record_timing(format!("{}: generate", e.dir.display()), std::time::Duration::from_secs_f64(e.summary.generate_seconds));
    }
    // The governance audit of the data the adapter was trained on, where the trainer left one.
    if let Some(adapter) = &eb.summary.adapter {
        let audit = Path::new(&adapter.path).join("governance_audit.json");
        if let Ok(text) = std::fs::read_to_string(&audit) {
            manifest.governance = serde_json::from_str(&text).with_context(|| format!("parsing {}", audit.display()))?;
        }
    }
    let n = ids.len();
    let input = AbReportInput {
        title: format!("Query expansion: {} vs {} on {n} held-out queries (QMD reward)", a.name_b, a.name_a),
        system_a: a.name_a.clone(),
        system_b: a.name_b.clone(),
        per_query_a: per_query(&va),
        per_query_b: per_query(&vb),
        comparison,
        loss_log,
        manifest,
        examples: (!items.is_empty()).then(|| ExampleSet {
            caption: format!(
                "Queries where {b} gained most reward over {a} ({gains}), then where {b} lost most or gained least. Valid: no hard fail and reward.py's full format score (a lex: and a vec: line, no unprefixed line).",
                b = a.name_b,
                a = a.name_a
            ),
            items,
        }),
        tables: Vec::new(),
    };
    let paths = write_ab_report(&run, &input)?;
    println!("{}", cmp.to_table());
    println!("report: {}", paths.report_html.display());
    Ok(())
}

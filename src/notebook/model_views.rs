//! Views of the model-side results (the `models` feature): the experiment and pipeline outcomes
//! as tables, a LoRA run's summary, the base-vs-tuned reply table and the adapter exports of the
//! persona notebook, the reranker's calibration. Methods on the result types live here (inherent
//! impls of this crate's types, so no trait import is needed in a cell); the training code itself
//! knows nothing about notebooks.

use std::path::{Path, PathBuf};

use anyhow::Context;
use polars::prelude::{Column, DataFrame, PolarsResult};

use super::views::{RunView, comparison_frame, files_frame, means_frame, stage_means_frame};
use super::{Html, NotebookError, Progress, bar_chart_svg};
use crate::cli::expansion::LoadedEvaluation;
use crate::data::chat_template::ChatMessage as TemplateMessage;
use crate::data::formats::{ChatRecord, EmbeddingPair, read_records};
use crate::data::governance::Policy;
use crate::data::jsonl::BadLines;
use crate::device::DeviceChoice;
use crate::experiment::pipeline::PipelineOutcome;
use crate::experiment::ExperimentOutcome;
use crate::train::contrastive_trainer::ContrastiveConfig;
use crate::export::gguf_bert::{GgufExportSummary, GgufOutType};
use crate::lora::AdapterWeights;
use crate::model::decoder::{CausalLm, GenerateOptions};
use crate::report::manifest::RunDir;
use crate::train::rerank::Calibration;
use crate::train::sft::SftOutcome;

impl ExperimentOutcome {
    /// Mean of every measure per system (`bm25`, `dense-base`, `dense-tuned`, ...).
    pub fn means_frame(&self) -> PolarsResult<DataFrame> {
        means_frame(&self.means)
    }

    /// The report's A/B rows: tuned (B) against base (A).
    pub fn comparison_frame(&self) -> PolarsResult<DataFrame> {
        comparison_frame(&self.comparison, "base", "tuned")
    }

    /// Both tables, headed, as one rich value.
    pub fn results(&self) -> Result<Html, NotebookError> {
        let (means, comparison) = (self.means_frame().map_err(table_error)?, self.comparison_frame().map_err(table_error)?);
        Ok(Html::new().heading(4, "Mean per system").table(&means).heading(4, "Tuned (B) vs base (A)").table(&comparison))
    }

    /// The run folder's plots and report links.
    pub fn run_view(&self) -> Result<RunView, NotebookError> {
        RunView::open(&self.run_dir)
    }
}

impl PipelineOutcome {
    /// Mean of every measure per system and stage.
    pub fn means_frame(&self) -> PolarsResult<DataFrame> {
        stage_means_frame(&self.means)
    }

    /// Tuned (B) against base (A), one row per stage and measure (`row` names both).
    pub fn comparison_frame(&self) -> PolarsResult<DataFrame> {
        comparison_frame(&self.comparison, "base", "tuned")
    }

    /// Queries per second of each system's whole pipeline.
    pub fn speed_frame(&self) -> PolarsResult<DataFrame> {
        DataFrame::new_infer_height(vec![
            Column::new("system".into(), self.queries_per_second.keys().map(String::as_str).collect::<Vec<_>>()),
            Column::new("queries/s".into(), self.queries_per_second.values().copied().collect::<Vec<f64>>()),
        ])
    }

    /// Means, speed and the A/B rows, headed, with the report links.
    pub fn results(&self) -> Result<Html, NotebookError> {
        let means = self.means_frame().map_err(table_error)?;
        let comparison = self.comparison_frame().map_err(table_error)?;
        let speed = self.speed_frame().map_err(table_error)?;
        Ok(Html::new()
            .heading(4, "Mean per system and stage")
            .push(super::html_table_with(&means, &super::TableOptions { max_rows: 40, ..Default::default() }))
            .heading(4, "Tuned (B) vs base (A), stage by stage")
            .push(super::html_table_with(&comparison, &super::TableOptions { max_rows: 40, ..Default::default() }))
            .heading(4, "Speed")
            .table(&speed)
            .push(RunView::open(&self.run_dir)?.to_html()))
    }
}

impl SftOutcome {
    /// `(iteration, validation loss)` of each evaluation as a table.
    pub fn validation_frame(&self) -> PolarsResult<DataFrame> {
        DataFrame::new_infer_height(vec![
            Column::new("iteration".into(), self.val_losses.iter().map(|v| v.0 as u64).collect::<Vec<_>>()),
            Column::new("validation loss".into(), self.val_losses.iter().map(|v| v.1).collect::<Vec<_>>()),
        ])
    }

    /// One line: iterations, speed, test loss and perplexity.
    pub fn summary_line(&self) -> String {
        let test = self.test.as_ref().map_or("-".to_string(), |t| format!("{:.3} (perplexity {:.1})", t.loss, t.perplexity));
        format!("{} iterations, {:.1} tokens/s; test loss {test}", self.iterations, self.seq_tokens_per_s)
    }

    /// The summary line and the validation losses.
    pub fn results(&self) -> Result<Html, NotebookError> {
        Ok(Html::new().text(&self.summary_line()).table(&self.validation_frame().map_err(table_error)?))
    }
}

fn table_error(e: polars::prelude::PolarsError) -> NotebookError {
    NotebookError::Plot { what: "table".into(), message: e.to_string() }
}

/// About how many optimizer steps contrastive training takes on `datasets/pairs/pairs.jsonl`:
/// the pairs the policy `datasets/governance/policy.toml` keeps (as `experiment::run` reads them),
/// in batches, times the epochs; or `max_steps` (the no-duplicates sampler can add a few batches).
/// For the live training view.
pub fn planned_steps(datasets: &Path, train: &ContrastiveConfig) -> anyhow::Result<usize> {
    if let Some(n) = train.max_steps {
        return Ok(n);
    }
    let policy = Policy::load(&datasets.join("governance/policy.toml"))?;
    let pairs = read_records::<EmbeddingPair>(&datasets.join("pairs/pairs.jsonl"), BadLines::Fail)?.records;
    Ok(policy.apply(pairs).len().div_ceil(train.batch_size.max(1)) * train.epochs)
}

/// Greedy replies of the base model and of the base with `adapter` merged in, to the last user
/// turn of each conversation (through the model's chat template), beside the reference reply:
/// columns `user`, `base`, `tuned`, `reference`. Prints a progress line per conversation.
///
/// Both models are loaded here, in the calling cell: evcxr links each cell with its own copy of
/// the tokenizer's C regex library, and a tokenizer built in another cell cannot search with it.
pub fn reply_table(
    model: &Path,
    adapter: &Path,
    conversations: &[ChatRecord],
    max_tokens: usize,
    seed: u64,
    choice: DeviceChoice,
) -> anyhow::Result<DataFrame> {
    let device = choice.device()?;
    let base = CausalLm::load(model, &device).with_context(|| format!("loading {}", model.display()))?;
    let mut tuned = crate::cli::lora::load_with_adapter(model, Some(adapter), &device)?;
    tuned.model = tuned.model.merged();
    let reply = |lm: &CausalLm, messages: &[TemplateMessage]| -> anyhow::Result<String> {
        let template = lm.chat_template.as_ref().context("the model has no chat template")?;
        let ids = lm.encode(&template.render(messages, true)?, false)?;
        let opts = GenerateOptions { max_tokens, temperature: 0.0, seed, ..GenerateOptions::default() };
        Ok(lm.decode(&lm.generate(&ids, &opts, |_| {}))?)
    };
    let (mut asked, mut base_replies, mut tuned_replies, mut reference) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut progress = Progress::new("generating", conversations.len()).every(1);
    for (i, conv) in conversations.iter().enumerate() {
        let last_user = conv.messages.iter().rposition(|m| m.role.as_str() == "user").with_context(|| format!("conversation {} has no user turn", i + 1))?;
        let prompt: Vec<TemplateMessage> =
            conv.messages[..=last_user].iter().map(|m| TemplateMessage::new(m.role.as_str(), m.content.clone())).collect();
        asked.push(conv.messages[last_user].content.clone());
        base_replies.push(reply(&base, &prompt)?);
        tuned_replies.push(reply(&tuned, &prompt)?);
        reference.push(conv.messages.get(last_user + 1).map(|m| m.content.clone()).unwrap_or_default());
        progress.update(i + 1, &[]);
    }
    Ok(DataFrame::new_infer_height(vec![
        Column::new("user".into(), asked),
        Column::new("base".into(), base_replies),
        Column::new("tuned".into(), tuned_replies),
        Column::new("reference".into(), reference),
    ])?)
}

/// A LoRA adapter written in every format tunelab exports, under `<run>/adapter/`: PEFT
/// (`peft/`), MLX-LM (`mlx/`) and a llama.cpp LoRA GGUF (`<name>-lora.f16.gguf`, for the GGUF base
/// `model`). The run's `manifest.json` (write it first) goes into the adapter's metadata.
pub struct AdapterExports {
    pub dir: PathBuf,
    pub gguf: GgufExportSummary,
    /// The written files with their sizes.
    pub files: DataFrame,
}

impl AdapterExports {
    pub fn to_html(&self) -> Html {
        Html::new().text(&format!("GGUF LoRA sha256 {}", self.gguf.sha256)).table(&self.files)
    }

    pub fn evcxr_display(&self) {
        self.to_html().evcxr_display();
    }
}

impl crate::train::embed_job::EmbedJobOutcome {
    /// Steps, last loss, the best validation value and where the tuned model went, with the run's
    /// report links.
    pub fn results(&self) -> Html {
        let best = self.best.as_ref().map_or("no validation".to_string(), |(m, v, step)| format!("best {m} {v:.4} at step {step}"));
        let loss = self.final_loss.map_or("-".to_string(), |l| format!("{l:.4}"));
        Html::new()
            .text(&format!("{} steps, last loss {loss}; {best}", self.steps))
            .text(&format!("tuned model: {}", self.model_dir.display()))
            .push(super::show_report_link(&self.run_dir))
    }
}

/// See [`AdapterExports`].
pub fn export_adapter(run: &RunDir, adapter: &AdapterWeights, model: &str, name: &str) -> anyhow::Result<AdapterExports> {
    use crate::export::gguf_lora::{LoraBase, write_lora_gguf};
    use crate::export::{mlx, peft};
    use crate::io::gguf::GgufFile;
    let dir = run.path().join("adapter");
    let mut adapter = adapter.clone();
    let manifest = run.path().join("manifest.json");
    adapter.metadata.insert("manifest".into(), std::fs::read_to_string(&manifest).with_context(|| format!("reading {}", manifest.display()))?);
    peft::write(&dir.join("peft"), &adapter, model)?;
    mlx::write(&dir.join("mlx"), &adapter, serde_json::json!({}))?;
    let base = LoraBase::from_gguf(&GgufFile::open(model)?)?;
    let gguf_path = dir.join(format!("{name}-lora.f16.gguf"));
    let gguf = write_lora_gguf(&adapter, &base, &gguf_path, GgufOutType::F16)?;
    let files: Vec<PathBuf> = ["peft/adapter_model.safetensors", "peft/adapter_config.json", "mlx/adapters.safetensors", "mlx/adapter_config.json"]
        .iter()
        .map(|f| dir.join(f))
        .chain([gguf_path])
        .collect();
    Ok(AdapterExports { files: files_frame(run.path(), &files)?, dir, gguf })
}

/// Exact dense retrieval of `datasets/queries/test.jsonl` over `datasets/corpus/` with an encoder
/// folder (EmbeddingGemma, or a BERT sentence-transformers folder), each text with the folder's
/// query or document prompt as training validates with it: the top `depth` per query as a run
/// (`tag`). Base and tuned runs of the same queries go into [`super::AbRuns`].
pub fn dense_run(encoder_dir: &Path, datasets: &Path, depth: usize, tag: &str, choice: DeviceChoice) -> anyhow::Result<crate::data::trec::Run> {
    use crate::data::corpus::read_corpus;
    use crate::model::bert::{Prompts, SentenceEncoder};
    use crate::model::gemma::{GemmaEncoder, is_gemma_folder};
    use crate::train::validation::RetrievalValidation;
    let device = choice.device()?;
    let docs = read_corpus(&datasets.join("corpus"), BadLines::Fail)?.records;
    let queries = super::views::read_queries(&datasets.join("queries/test.jsonl"))?;
    let qrels = crate::data::trec::Qrels::read(datasets.join("qrels/test.qrels"))?;
    let validation = |query_prompt: Option<&str>, document_prompt: Option<&str>| {
        let documents = docs.iter().map(|d| (d.id.clone(), Prompts::apply(document_prompt, &format!("{}\n{}", d.title, d.text), None))).collect();
        let queries = queries.iter().map(|(q, t)| (q.clone(), Prompts::apply(query_prompt, t, None))).collect();
        RetrievalValidation { depth, ..RetrievalValidation::new(queries, documents, qrels.clone()) }
    };
    let mut run = if is_gemma_folder(encoder_dir) {
        let e = GemmaEncoder::load(encoder_dir, &device).with_context(|| format!("loading {}", encoder_dir.display()))?;
        validation(e.prompt("query"), e.prompt("document")).run(&e).map_err(|err| anyhow::anyhow!("searching with {}: {err}", encoder_dir.display()))?
    } else {
        let e = SentenceEncoder::load(encoder_dir, &device).with_context(|| format!("loading {}", encoder_dir.display()))?;
        validation(e.prompts.query.as_deref(), e.prompts.document.as_deref()).run(&e).map_err(|err| anyhow::anyhow!("searching with {}: {err}", encoder_dir.display()))?
    };
    run.tag = tag.to_string();
    Ok(run)
}

/// P(yes) of the base reranker and of the base with `adapter`, side by side, on the first `shown`
/// held-out judgments of `data` (reranker judgments, governed by the policy found from their
/// location as `tunelab train rerank` finds it; held out by query with `valid_fraction` and `seed`
/// exactly as training held them out): `query`, `grade`, `base`, `tuned`, `document`.
/// Both models are loaded here, in the calling cell (see [`reply_table`] on tokenizers).
#[allow(clippy::too_many_arguments)]
pub fn rerank_scores_frame(
    model: &Path,
    adapter: &Path,
    data: &Path,
    valid_fraction: f64,
    seed: u64,
    shown: usize,
    choice: DeviceChoice,
) -> anyhow::Result<DataFrame> {
    use crate::data::formats::RerankerJudgment;
    use crate::model::reranker::Reranker;
    use crate::train::rerank::{Judged, split_by_query};
    let policy = crate::cli::data::resolve_policy(None, data, false)?;
    let records: Vec<RerankerJudgment> = read_records(data, BadLines::Fail)?.records;
    let judged: Vec<Judged> = policy
        .apply(records)
        .iter()
        .map(|r| Judged { query: r.query.clone(), document: r.document.clone(), grade: r.relevant.grade() })
        .collect();
    let held_out: Vec<Judged> = split_by_query(&judged, valid_fraction, seed).1.into_iter().take(shown).collect();
    let device = choice.device()?;
    let (base, tuned) = (Reranker::load(model, None, &device)?, Reranker::load(model, Some(adapter), &device)?);
    let mut progress = Progress::new("scoring", held_out.len()).every(held_out.len().div_ceil(4).max(1));
    let (mut p_base, mut p_tuned) = (Vec::new(), Vec::new());
    for (i, j) in held_out.iter().enumerate() {
        p_base.push(f64::from(base.score(&j.query, &[j.document.as_str()])?[0]));
        p_tuned.push(f64::from(tuned.score(&j.query, &[j.document.as_str()])?[0]));
        progress.update(i + 1, &[]);
    }
    Ok(DataFrame::new_infer_height(vec![
        Column::new("query".into(), held_out.iter().map(|j| j.query.as_str()).collect::<Vec<_>>()),
        Column::new("grade".into(), held_out.iter().map(|j| j.grade).collect::<Vec<i64>>()),
        Column::new("base".into(), p_base),
        Column::new("tuned".into(), p_tuned),
        Column::new("document".into(), held_out.iter().map(|j| j.document.as_str()).collect::<Vec<_>>()),
    ])?)
}

/// The expansion evaluations of several models side by side (`tunelab eval expansions` folders):
/// queries, valid-expansion rate, mean reward (QMD's), hard-fail rate.
pub fn expansion_scores_frame(evaluations: &[(&str, &LoadedEvaluation)]) -> PolarsResult<DataFrame> {
    let s = |f: fn(&LoadedEvaluation) -> f64| evaluations.iter().map(|(_, e)| f(e)).collect::<Vec<f64>>();
    DataFrame::new_infer_height(vec![
        Column::new("model".into(), evaluations.iter().map(|(n, _)| *n).collect::<Vec<_>>()),
        Column::new("queries".into(), evaluations.iter().map(|(_, e)| e.summary.summary.n as u64).collect::<Vec<_>>()),
        Column::new("valid-expansion rate".into(), s(|e| e.summary.summary.valid_rate)),
        Column::new("mean reward".into(), s(|e| e.summary.summary.mean_reward)),
        Column::new("hard-fail rate".into(), s(|e| e.summary.summary.hard_fail_rate)),
    ])
}

/// A reranker training run (`tunelab train rerank`'s adapter folder): how calibrated P(yes) is on
/// the held-out judgments before and after tuning (`calibration.json`: Brier score, expected
/// calibration error, reliability bins), and the training curve (`loss.jsonl`).
#[derive(Clone, Debug)]
pub struct RerankView {
    pub dir: PathBuf,
    pub base: Option<Calibration>,
    pub tuned: Option<Calibration>,
    /// `(iteration, loss)` from `loss.jsonl`.
    pub losses: Vec<(usize, f64)>,
}

impl RerankView {
    /// Read `calibration.json` and `loss.jsonl` of an adapter folder.
    pub fn open(adapter_dir: impl AsRef<Path>) -> anyhow::Result<RerankView> {
        let dir = adapter_dir.as_ref().to_path_buf();
        let path = dir.join("calibration.json");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let calibration = |key: &str| -> anyhow::Result<Option<Calibration>> {
            match v.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(c) => Ok(Some(serde_json::from_value(c.clone()).with_context(|| format!("{}: `{key}`", path.display()))?)),
            }
        };
        let losses = read_losses(&dir.join("loss.jsonl"));
        Ok(RerankView { base: calibration("base")?, tuned: calibration("tuned")?, losses, dir })
    }

    /// One row per model: held-out judgments, Brier, ECE, mean P(yes), positive rate.
    pub fn calibration_frame(&self) -> PolarsResult<DataFrame> {
        let rows: Vec<(&str, &Calibration)> =
            [("base", &self.base), ("tuned", &self.tuned)].into_iter().filter_map(|(n, c)| c.as_ref().map(|c| (n, c))).collect();
        DataFrame::new_infer_height(vec![
            Column::new("model".into(), rows.iter().map(|r| r.0).collect::<Vec<_>>()),
            Column::new("judgments".into(), rows.iter().map(|r| r.1.n as u64).collect::<Vec<_>>()),
            Column::new("Brier".into(), rows.iter().map(|r| r.1.brier).collect::<Vec<_>>()),
            Column::new("ECE".into(), rows.iter().map(|r| r.1.ece).collect::<Vec<_>>()),
            Column::new("mean P(yes)".into(), rows.iter().map(|r| r.1.mean_p).collect::<Vec<_>>()),
            Column::new("positive rate".into(), rows.iter().map(|r| r.1.positive_rate).collect::<Vec<_>>()),
        ])
    }

    /// Reliability chart: per bin of P(yes), the mean predicted probability and the observed
    /// positive rate, for base and tuned (a calibrated model has them equal).
    pub fn reliability_svg(&self) -> Result<String, NotebookError> {
        let bins = self.base.as_ref().or(self.tuned.as_ref()).map_or(0, |c| c.bins.len());
        let labels: Vec<String> = (0..bins).map(|i| format!("{:.1}–{:.1}", i as f64 / bins as f64, (i + 1) as f64 / bins as f64)).collect();
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        let series = |c: &Option<Calibration>, f: fn(&(usize, f64, f64)) -> f64| -> Vec<f64> {
            c.as_ref().map_or(vec![f64::NAN; bins], |c| c.bins.iter().map(|b| if b.0 == 0 { f64::NAN } else { f(b) }).collect())
        };
        let (bp, bo) = (series(&self.base, |b| b.1), series(&self.base, |b| b.2));
        let (tp, to) = (series(&self.tuned, |b| b.1), series(&self.tuned, |b| b.2));
        bar_chart_svg(
            "Reliability: mean P(yes) and positive rate per bin",
            "probability",
            &labels,
            &[("base P(yes)", &bp), ("base observed", &bo), ("tuned P(yes)", &tp), ("tuned observed", &to)],
        )
    }

    pub fn to_html(&self) -> Html {
        let mut h = Html::new().heading(4, "Calibration on the held-out queries");
        h = match self.calibration_frame() {
            Ok(df) => h.table(&df),
            Err(e) => h.text(&format!("(no table: {e})")),
        };
        h = match self.reliability_svg() {
            Ok(svg) => h.svg(&svg),
            Err(e) => h.text(&format!("(no chart: {e})")),
        };
        let mut progress = Progress::new("reranker LoRA", self.losses.len()).quiet();
        for (step, loss) in &self.losses {
            progress.update(*step, &[("loss", *loss)]);
        }
        match progress.chart_svg() {
            Ok(svg) => h.svg(&svg),
            Err(_) => h,
        }
    }

    pub fn evcxr_display(&self) {
        self.to_html().evcxr_display();
    }
}

/// `(iteration|step, loss)` of every line of a `loss.jsonl` that has both (missing file: none).
fn read_losses(path: &Path) -> Vec<(usize, f64)> {
    let Ok(text) = std::fs::read_to_string(path) else { return Vec::new() };
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            let step = v.get("iteration").or_else(|| v.get("step"))?.as_u64()? as usize;
            Some((step, v.get("loss")?.as_f64()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rerank_view_reads_calibration_and_losses() {
        let dir = tempfile::tempdir().unwrap();
        let cal = |brier: f64| serde_json::json!({"n": 4, "brier": brier, "ece": 0.1, "mean_p": 0.4, "positive_rate": 0.5,
            "bins": [[2, 0.2, 0.0], [0, 0.0, 0.0], [2, 0.6, 1.0]]});
        std::fs::write(dir.path().join("calibration.json"), serde_json::json!({"base": cal(0.3), "tuned": cal(0.2)}).to_string()).unwrap();
        std::fs::write(dir.path().join("loss.jsonl"), "{\"iteration\":1,\"loss\":0.9}\nnot json\n{\"iteration\":2,\"val_loss\":0.5}\n{\"iteration\":3,\"loss\":0.4}\n").unwrap();
        let v = RerankView::open(dir.path()).unwrap();
        assert_eq!(v.losses, [(1, 0.9), (3, 0.4)]);
        let df = v.calibration_frame().unwrap();
        assert_eq!(df.column("Brier").unwrap().f64().unwrap().into_no_null_iter().collect::<Vec<_>>(), [0.3, 0.2]);
        let html = v.to_html().into_string();
        assert_eq!(html.matches("<svg").count(), 2, "reliability and loss charts");
        std::fs::write(dir.path().join("calibration.json"), "{\"base\": {\"n\": 1}}").unwrap();
        let err = format!("{:#}", RerankView::open(dir.path()).unwrap_err());
        assert!(err.contains("calibration.json") && err.contains("`base`"), "{err}");
    }
}

//! `tunelab experiment --pipeline` (library entry point) end to end on a tiny dataset: two random
//! encoders as base and tuned embedder, two expansion files, a fake base and tuned reranker.

use std::path::Path;

use burn::tensor::Device;
use tunelab::data::trec::Run;
use tunelab::device::DeviceChoice;
use tunelab::eval::search::qmd::Scorer;
use tunelab::experiment::pipeline::{PipelineExperimentConfig, Rerankers, run};
use tunelab::export::sentence_transformers::write_folder;
use tunelab::model::bert::SentenceEncoder;

const WORDS: [&str; 14] =
    ["tide", "tables", "moon", "bread", "starter", "flour", "water", "river", "salt", "boat", "task", "search", "title", "text"];

/// P(yes) = share of the document's words that occur in the query (the tuned one squares it).
struct Overlap {
    squared: bool,
}

impl Scorer for Overlap {
    fn score(&self, query: &str, docs: &[&str]) -> anyhow::Result<Vec<f32>> {
        let q: Vec<String> = query.split_whitespace().map(str::to_lowercase).collect();
        Ok(docs
            .iter()
            .map(|d| {
                let words: Vec<String> = d.split_whitespace().map(str::to_lowercase).collect();
                let hit = words.iter().filter(|w| q.contains(w)).count() as f32 / words.len().max(1) as f32;
                if self.squared { hit * hit } else { hit }
            })
            .collect())
    }
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::create_dir_all(dir.join(name).parent().unwrap()).unwrap();
    std::fs::write(dir.join(name), text).unwrap();
}

#[test]
fn every_system_and_stage_lands_in_one_report() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = tmp.path().join("datasets");
    write(&ds, "corpus/tides.md", "# Tide tables\nThe moon pulls the tide.\n");
    write(&ds, "corpus/bread.md", "# Sourdough\nA starter of flour and water.\n");
    write(&ds, "corpus/river.md", "# River\nRiver water rises with the tide.\n");
    write(&ds, "corpus/salt.md", "# Salt\nSalt from sea water, dried on a boat.\n");
    write(
        &ds,
        "queries/test.jsonl",
        "{\"qid\": \"q1\", \"query\": \"moon tide\"}\n{\"qid\": \"q2\", \"query\": \"bread starter\"}\n{\"qid\": \"q3\", \"query\": \"salt boat\"}\n",
    );
    write(&ds, "qrels/test.qrels", "q1 0 tides 2\nq1 0 river 1\nq2 0 bread 1\nq3 0 salt 1\n");
    write(&ds, "exp/base.jsonl", "{\"query\": \"moon tide\", \"text\": \"lex: tide\"}\n{\"query\": \"bread starter\", \"text\": \"vec: flour starter\"}\n{\"query\": \"salt boat\", \"text\": \"lex: salt\"}\n");
    write(&ds, "exp/tuned.jsonl", "{\"query\": \"moon tide\", \"text\": \"lex: tide tables\\nvec: moon and tide\"}\n{\"query\": \"bread starter\", \"text\": \"lex: starter\"}\n{\"query\": \"salt boat\", \"text\": \"hyde: salt dried on a boat\"}\n");
    let (base, tuned) = (tmp.path().join("base"), tmp.path().join("tuned"));
    write_folder(&SentenceEncoder::random_tiny(&WORDS, 1, &Device::flex()), &base, serde_json::Value::Null).unwrap();
    write_folder(&SentenceEncoder::random_tiny(&WORDS, 2, &Device::flex()), &tuned, serde_json::Value::Null).unwrap();
    let cfg = PipelineExperimentConfig {
        datasets: ds.clone(),
        reports: tmp.path().join("reports"),
        permutations: 200,
        base_embedder: base,
        tuned_embedder: Some(tuned),
        base_expansions: Some(ds.join("exp/base.jsonl")),
        tuned_expansions: Some(ds.join("exp/tuned.jsonl")),
        ..PipelineExperimentConfig::default()
    };
    let (rb, rt) = (Overlap { squared: false }, Overlap { squared: true });
    let out = run(&cfg, DeviceChoice::Cpu, Some(Rerankers { base: &rb, tuned: Some(&rt) })).unwrap();
    assert!(out.report_html.is_file());
    let systems: Vec<&str> = out.means.keys().map(String::as_str).collect();
    assert_eq!(systems, ["base", "tuned-all", "tuned-embedder", "tuned-expansion", "tuned-reranker"]);
    // 4 tuned systems × 5 stages × 4 measures (MRR@10, MRR, nDCG@10, recall@20), each labelled
    // `system · stage · measure`.
    assert_eq!(out.comparison.len(), 4 * 5 * 4);
    for r in &out.comparison {
        assert_eq!(r.measure.split(" · ").count(), 3, "{}", r.measure);
        assert!(r.p_holm >= r.p_value && r.p_holm <= 1.0, "{}", r.measure);
    }
    // MRR@10 never exceeds MRR, and equals it where the first relevant document is in the top 10.
    for (s, stages) in &out.means {
        for (stage, m) in stages {
            assert!(m["recip_rank_cut_10"] <= m["recip_rank"] + 1e-12, "{s} {stage}");
        }
    }
    let mean = |s: &str, stage: &str| out.means[s][stage]["recip_rank"];
    // Changing only the expansions or the reranker cannot move the stages before them.
    for s in ["tuned-expansion", "tuned-reranker"] {
        for stage in ["bm25", "vector", "hybrid"] {
            assert_eq!(mean(s, stage), mean("base", stage), "{s} {stage}");
        }
    }
    assert_eq!(mean("tuned-reranker", "hybrid+expansion"), mean("base", "hybrid+expansion"));
    // The embedder does not move BM25.
    assert_eq!(mean("tuned-embedder", "bm25"), mean("base", "bm25"));
    // Each system's stage runs are stored.
    for s in &systems {
        for stage in ["bm25", "vector", "hybrid", "hybrid+expansion", "full"] {
            assert!(Run::read(out.run_dir.join("runs").join(s).join(format!("{stage}.run"))).is_ok(), "{s} {stage}");
        }
    }
    // Compare the runs themselves, not only a mean: what a part cannot change stays identical.
    let results = |s: &str, stage: &str| Run::read(out.run_dir.join("runs").join(s).join(format!("{stage}.run"))).unwrap().results;
    for stage in ["bm25", "vector", "hybrid"] {
        assert_eq!(results("tuned-expansion", stage), results("base", stage), "{stage}");
        assert_eq!(results("tuned-reranker", stage), results("base", stage), "{stage}");
    }
    assert_eq!(results("tuned-reranker", "hybrid+expansion"), results("base", "hybrid+expansion"));
    assert_ne!(results("tuned-expansion", "hybrid+expansion"), results("base", "hybrid+expansion"), "the expansions are used");
    assert_ne!(results("tuned-reranker", "full"), results("base", "full"), "the reranker is used");
    assert_ne!(results("tuned-embedder", "vector"), results("base", "vector"), "the embedder is used");
    assert!(out.queries_per_second.values().all(|q| *q > 0.0));
    // Without any tuned model there is nothing to compare.
    let none = PipelineExperimentConfig { tuned_embedder: None, tuned_expansions: None, ..cfg };
    assert!(run(&none, DeviceChoice::Cpu, None).unwrap_err().to_string().contains("tuned"));
}

/// `tunelab experiment --pipeline --base-reranker M --tuned-reranker-adapter DIR` end to end: the
/// tiny random Qwen3 reranker, an adapter trained for a few steps by `tunelab train rerank`; each
/// system's `full` run is QMD's blend of its `hybrid+expansion` rank with that system's P(yes).
#[test]
fn cli_base_and_tuned_rerankers_give_the_full_stage() {
    use std::process::Command;
    use tunelab::data::corpus::read_corpus;
    use tunelab::data::jsonl::BadLines;
    use tunelab::eval::search::qmd::{QmdConfig, blend, rerank_chunk_for};
    use tunelab::model::reranker::Reranker;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ds = dir.join("datasets");
    write(&ds, "corpus/tides.md", "# Tide tables\nThe moon pulls the tide.\n");
    write(&ds, "corpus/bread.md", "# Sourdough\nA starter of flour and water.\n");
    write(&ds, "corpus/river.md", "# River\nRiver water rises with the tide.\n");
    write(&ds, "queries/test.jsonl", "{\"qid\": \"q1\", \"query\": \"moon tide\"}\n{\"qid\": \"q2\", \"query\": \"flour water\"}\n");
    write(&ds, "qrels/test.qrels", "q1 0 tides 1\nq2 0 bread 1\n");
    let base = dir.join("base");
    write_folder(&SentenceEncoder::random_tiny(&WORDS, 1, &Device::flex()), &base, serde_json::Value::Null).unwrap();
    let rr = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reranker/tiny_qwen3_reranker");
    let mut lines = Vec::new();
    for q in 0..8 {
        for (g, doc) in [(1, format!("Answer {q}: the moon pulls the tide.")), (0, format!("Unrelated {q}: flour and water."))] {
            lines.push(serde_json::json!({"id": format!("j{q}-{g}"), "query": format!("question {q} about the tide"), "document": doc, "relevant": g, "classification": "public"}).to_string());
        }
    }
    write(dir, "judgments.jsonl", &(lines.join("\n") + "\n"));
    let tunelab = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_tunelab")).args(args).current_dir(dir).env("TUNELAB_DEVICE", "cpu").output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{args:?}:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        stdout
    };
    let rr_s = rr.to_str().unwrap();
    // Hard negatives mined through the pipeline with the base embedder, as the reranker meets them.
    tunelab(&["train", "rerank", "--model", rr_s, "--data", "judgments.jsonl", "--iters", "4", "--batch-size", "2", "--learning-rate", "0.05", "--valid-fraction", "0.25", "--mined-negatives", "1", "--mining-embedder", base.to_str().unwrap(), "--negatives", "1", "--adapter-path", "adapter", "--seed", "1"]);
    let written: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("adapter/adapter_config.json")).unwrap()).unwrap();
    assert_eq!(written["tunelab_rerank"]["mining_embedder"].as_str(), base.to_str(), "{written}");
    write(dir, "pipe.toml", &format!("datasets = {:?}\nreports = {:?}\npermutations = 100\nbase_embedder = {:?}\n", ds.to_str().unwrap(), dir.join("reports").to_str().unwrap(), base.to_str().unwrap()));
    let stdout = tunelab(&["experiment", "--pipeline", "--config", "pipe.toml", "--base-reranker", rr_s, "--tuned-reranker-adapter", "adapter"]);
    let run_dir = Path::new(stdout.lines().find_map(|l| l.strip_prefix("run directory: ")).expect(&stdout)).to_path_buf();
    let run_dir = if run_dir.is_absolute() { run_dir } else { dir.join(run_dir) };
    let texts: std::collections::BTreeMap<String, String> =
        read_corpus(&ds.join("corpus"), BadLines::Fail).unwrap().records.into_iter().map(|d| (d.id, d.text)).collect();
    let results = |s: &str, stage: &str| Run::read(run_dir.join("runs").join(s).join(format!("{stage}.run"))).unwrap().results;
    let base_rr = Reranker::load_merged(&rr, None, &Device::flex()).unwrap();
    let tuned_rr = Reranker::load_merged(&rr, Some(&dir.join("adapter")), &Device::flex()).unwrap();
    let mut moved = false;
    for (system, scorer) in [("base", &base_rr), ("tuned-reranker", &tuned_rr)] {
        let cands = results(system, "hybrid+expansion");
        let full = results(system, "full");
        for (qid, query) in [("q1", "moon tide"), ("q2", "flour water")] {
            assert!(cands[qid].len() >= 2, "{system} {qid}");
            assert_eq!(full[qid].len(), cands[qid].len());
            for (rank, c) in cands[qid].iter().enumerate() {
                let chunk = rerank_chunk_for(&texts[&c.doc_id], query, &QmdConfig::default()).unwrap();
                let p = f64::from(scorer.score(query, &[&chunk]).unwrap()[0]);
                let got = full[qid].iter().find(|x| x.doc_id == c.doc_id).unwrap().score;
                assert!((got - blend(rank + 1, p)).abs() < 1e-5, "{system} {qid} {}: {got} vs {}", c.doc_id, blend(rank + 1, p));
                let p_base = f64::from(base_rr.score(query, &[&chunk]).unwrap()[0]);
                moved |= (p - p_base).abs() > 1e-6;
            }
        }
    }
    assert!(moved, "the tuned adapter changes P(yes)");
    assert_eq!(results("tuned-reranker", "hybrid"), results("base", "hybrid"));
    let report_path = stdout.lines().find_map(|l| l.strip_prefix("report: ")).expect(&stdout);
    let report = std::fs::read_to_string(dir.join(report_path)).unwrap();
    assert!(report.contains("tuned-reranker · full"), "the report compares the full stage");

    // The same experiment with the rerankers' scores computed elsewhere (as on a GPU): `tunelab
    // rerank` on the candidate run the first experiment wrote, then `--base-rerank-run` and
    // `--tuned-rerank-run`. The `full` runs are the same, to the last digit.
    let cands = run_dir.join("runs/base/hybrid+expansion.run");
    let (cands_s, corpus_s, queries_s) =
        (cands.to_str().unwrap(), ds.join("corpus"), ds.join("queries/test.jsonl"));
    let (corpus_s, queries_s) = (corpus_s.to_str().unwrap(), queries_s.to_str().unwrap());
    let rerank = |adapter: Option<&str>, out: &str, depth: &str| {
        let mut args = vec!["rerank", "--model", rr_s, "--queries", queries_s, "--run", cands_s, "--corpus", corpus_s, "--out", out, "--depth", depth];
        if let Some(a) = adapter {
            args.extend(["--adapter-path", a]);
        }
        tunelab(&args);
    };
    rerank(None, "scores/base.run", "40");
    rerank(Some("adapter"), "scores/tuned.run", "40");
    let stdout2 = tunelab(&["experiment", "--pipeline", "--config", "pipe.toml", "--base-rerank-run", "scores/base.run", "--tuned-rerank-run", "scores/tuned.run"]);
    let run_dir2 = Path::new(stdout2.lines().find_map(|l| l.strip_prefix("run directory: ")).expect(&stdout2)).to_path_buf();
    let run_dir2 = if run_dir2.is_absolute() { run_dir2 } else { dir.join(run_dir2) };
    assert_ne!(run_dir, run_dir2);
    for system in ["base", "tuned-reranker"] {
        for stage in ["hybrid+expansion", "full"] {
            let file = |d: &Path| std::fs::read_to_string(d.join("runs").join(system).join(format!("{stage}.run"))).unwrap();
            assert_eq!(file(&run_dir2), file(&run_dir), "{system} {stage}: scores from files vs in process");
        }
    }
    // Scores of too few candidates name the run and say which run `tunelab rerank` needs.
    rerank(None, "scores/shallow.run", "1");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tunelab"))
        .args(["experiment", "--pipeline", "--config", "pipe.toml", "--base-rerank-run", "scores/shallow.run", "--tuned-rerank-run", "scores/tuned.run"])
        .current_dir(dir)
        .env("TUNELAB_DEVICE", "cpu")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("scores/shallow.run") && err.contains("hybrid+expansion.run"), "{err}");
}

//! `tunelab rerank` and `tunelab train rerank` end to end on the tiny random Qwen3 reranker
//! fixture (tests/fixtures/reranker/tiny_qwen3_reranker, byte-level BPE vocabulary of 512).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use burn::tensor::Device;
use tunelab::data::trec::Run;
use tunelab::eval::search::qmd::{QmdConfig, rerank_chunk_for};
use tunelab::model::reranker::Reranker;

fn tiny() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reranker/tiny_qwen3_reranker")
}

fn tunelab(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tunelab"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run tunelab")
}

fn ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "failed:\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn docs() -> Vec<(&'static str, &'static str)> {
    vec![
        (
            "d1",
            "The drawing happens at the autumn gathering, after ossenday.",
        ),
        (
            "d2",
            "A wood-fired pizza oven was built behind the community centre.",
        ),
        (
            "d3",
            "Members serve for one year and cannot be drawn again.",
        ),
        ("d4", "Dough is available from the café."),
        ("d5", "Children play at the drawing with pebbles."),
    ]
}

#[test]
fn rerank_rescores_the_top_of_a_run_with_p_yes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let corpus: Vec<String> = docs()
        .iter()
        .map(|(id, text)| serde_json::json!({"id": id, "text": text}).to_string())
        .collect();
    std::fs::write(dir.join("corpus.jsonl"), corpus.join("\n") + "\n").unwrap();
    std::fs::write(dir.join("q.jsonl"), "{\"qid\": \"q1\", \"query\": \"when is the drawing\"}\n{\"qid\": \"q2\", \"query\": \"pizza oven\"}\n").unwrap();
    // q1 ranks all five (depth 3 keeps d1, d2, d3); q2 ranks two.
    let run = "q1 Q0 d1 1 5.0 bm25\nq1 Q0 d2 2 4.0 bm25\nq1 Q0 d3 3 3.0 bm25\nq1 Q0 d4 4 2.0 bm25\nq1 Q0 d5 5 1.0 bm25\nq2 Q0 d2 1 2.0 bm25\nq2 Q0 d4 2 1.0 bm25\n";
    std::fs::write(dir.join("in.run"), run).unwrap();
    let model = tiny().display().to_string();
    ok(&tunelab(
        &[
            "rerank",
            "--model",
            &model,
            "--queries",
            "q.jsonl",
            "--run",
            "in.run",
            "--corpus",
            "corpus.jsonl",
            "--out",
            "out/rr.run",
            "--depth",
            "3",
            "--batch-size",
            "2",
        ],
        dir,
    ));
    let out = Run::read(dir.join("out/rr.run")).unwrap();
    assert_eq!(out.results["q1"].len(), 3);
    assert_eq!(out.results["q2"].len(), 2);
    let mut kept: Vec<&str> = out.results["q1"]
        .iter()
        .map(|r| r.doc_id.as_str())
        .collect();
    kept.sort();
    assert_eq!(kept, ["d1", "d2", "d3"], "the top 3 of the input run");
    // Scores are P(yes) of the library scorer on the best chunk (short documents: one chunk, the
    // whole text), the run sorted by them.
    let r = Reranker::load(&tiny(), None, &Device::flex()).unwrap();
    let text: BTreeMap<&str, &str> = docs().into_iter().collect();
    let cfg = QmdConfig::default();
    for (qid, query) in [("q1", "when is the drawing"), ("q2", "pizza oven")] {
        let rows = &out.results[qid];
        let chunks: Vec<String> = rows
            .iter()
            .map(|x| rerank_chunk_for(text[x.doc_id.as_str()], query, &cfg).unwrap())
            .collect();
        let want = r
            .score(query, &chunks.iter().map(String::as_str).collect::<Vec<_>>())
            .unwrap();
        for (row, w) in rows.iter().zip(want) {
            assert!(
                (row.score - w as f64).abs() < 1e-6,
                "{qid} {}: {} vs {w}",
                row.doc_id,
                row.score
            );
            assert!(row.score > 0.0 && row.score < 1.0);
        }
        assert!(rows.windows(2).all(|w| w[0].score >= w[1].score));
    }
    // A document missing from the corpus is named.
    std::fs::write(dir.join("bad.run"), "q1 Q0 d9 1 1.0 bm25\n").unwrap();
    let bad = tunelab(
        &[
            "rerank",
            "--model",
            &model,
            "--queries",
            "q.jsonl",
            "--run",
            "bad.run",
            "--corpus",
            "corpus.jsonl",
            "--out",
            "x.run",
        ],
        dir,
    );
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("d9"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

/// A document longer than one rerank chunk (3600 characters) is sent as QMD sends it: the chunk
/// with the most query words, not the document's head.
#[test]
fn rerank_sends_the_best_chunk_of_a_long_document() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // ~6000 characters: filler paragraphs, the answer near the end.
    let mut long = String::new();
    for i in 0..100 {
        long.push_str(&format!("Paragraph {i} tells of pizza dough, stone trays and ovens.\n\n"));
    }
    long.push_str("The lot drawing happens at the autumn gathering, after ossenday.\n");
    assert!(long.len() > 3600 * 3 / 2);
    let corpus = [
        serde_json::json!({"id": "long", "text": long}).to_string(),
        serde_json::json!({"id": "short", "text": "Children play at the drawing with pebbles."})
            .to_string(),
    ];
    std::fs::write(dir.join("corpus.jsonl"), corpus.join("\n") + "\n").unwrap();
    let query = "when is the lot drawing";
    std::fs::write(
        dir.join("q.jsonl"),
        format!("{{\"qid\": \"q1\", \"query\": \"{query}\"}}\n"),
    )
    .unwrap();
    std::fs::write(dir.join("in.run"), "q1 Q0 long 1 2.0 x\nq1 Q0 short 2 1.0 x\n").unwrap();
    let model = tiny().display().to_string();
    ok(&tunelab(
        &[
            "rerank", "--model", &model, "--queries", "q.jsonl", "--run", "in.run", "--corpus",
            "corpus.jsonl", "--out", "rr.run", "--max-length", "512",
        ],
        dir,
    ));
    let out = Run::read(dir.join("rr.run")).unwrap();
    let got = |id: &str| {
        out.results["q1"]
            .iter()
            .find(|r| r.doc_id == id)
            .unwrap()
            .score
    };
    let chunk = rerank_chunk_for(&long, query, &QmdConfig::default()).unwrap();
    assert!(chunk.contains("lot drawing") && !chunk.starts_with("Paragraph 0 "), "{chunk:.80}");
    let mut r = Reranker::load(&tiny(), None, &Device::flex()).unwrap();
    r.max_length = 512;
    let want = r.score(query, &[&chunk, &long]).unwrap();
    assert!((got("long") - want[0] as f64).abs() < 1e-6, "{} vs chunk {}", got("long"), want[0]);
    assert!((got("long") - want[1] as f64).abs() > 1e-6, "the whole document would score {}", want[1]);
}

/// Judgments: 12 queries, each with one relevant (grade 2), one partly relevant (1) and one
/// irrelevant (0) document; one sacred record that governance must drop.
fn write_judgments(path: &Path) {
    let mut lines = Vec::new();
    for q in 0..12 {
        for (g, doc) in [
            (
                2,
                format!("Answer {q}: the drawing is held at the gathering."),
            ),
            (1, format!("Related {q}: the lot council meets in autumn.")),
            (0, format!("Unrelated {q}: pizza dough and stone trays.")),
        ] {
            lines.push(serde_json::json!({"id": format!("j{q}-{g}"), "query": format!("question {q} about the drawing"), "document": doc, "relevant": g, "classification": "public"}).to_string());
        }
    }
    lines.push(serde_json::json!({"id": "sacred", "query": "q", "document": "[SACRED]", "relevant": 2, "classification": "sacred"}).to_string());
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

#[test]
fn train_rerank_pointwise_and_listwise() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_judgments(&dir.join("judgments.jsonl"));
    let model = tiny().display().to_string();
    for loss in ["pointwise", "listwise"] {
        let out_dir = format!("adapters-{loss}");
        let stdout = ok(&tunelab(
            &[
                "train",
                "rerank",
                "--model",
                &model,
                "--data",
                "judgments.jsonl",
                "--loss",
                loss,
                "--iters",
                "30",
                "--batch-size",
                "4",
                "--learning-rate",
                "0.01",
                "--save-every",
                "15",
                "--valid-fraction",
                "0.25",
                "--mined-negatives",
                "1",
                "--negatives",
                "2",
                "--adapter-path",
                &out_dir,
                "--seed",
                "3",
            ],
            dir,
        ));
        assert!(
            stdout.contains("base ") && stdout.contains("tuned"),
            "{stdout}"
        );
        let out = dir.join(&out_dir);
        for f in [
            "adapters.safetensors",
            "adapter_config.json",
            "loss.jsonl",
            "calibration.json",
            "governance_audit.json",
        ] {
            assert!(out.join(f).is_file(), "{loss}: {f} missing");
        }
        assert!(out.join("checkpoints").is_dir());
        let audit: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join("governance_audit.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(audit["kept"], 36, "the sacred record is dropped: {audit}");
        let cal: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("calibration.json")).unwrap())
                .unwrap();
        for side in ["base", "tuned"] {
            let b = cal[side]["brier"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&b), "{loss} {side} brier {b}");
        }
        // Training fits the training judgments: the mean loss of the last iterations is below the first ones'.
        let losses: Vec<f64> = std::fs::read_to_string(out.join("loss.jsonl"))
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["loss"].as_f64())
            .collect();
        assert_eq!(losses.len(), 30);
        let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
        assert!(
            mean(&losses[24..]) < mean(&losses[..6]),
            "{loss}: {losses:?}"
        );
        // The adapter loads back for scoring.
        let rr = dir.join(format!("{loss}.run"));
        std::fs::write(
            dir.join("q.jsonl"),
            "{\"qid\": \"q0\", \"query\": \"question 0 about the drawing\"}\n",
        )
        .unwrap();
        std::fs::write(dir.join("c.jsonl"), "{\"id\": \"a\", \"text\": \"Answer 0: the drawing is held at the gathering.\"}\n{\"id\": \"b\", \"text\": \"Unrelated 0: pizza dough and stone trays.\"}\n").unwrap();
        std::fs::write(dir.join("in.run"), "q0 Q0 a 1 1 x\nq0 Q0 b 2 0.5 x\n").unwrap();
        ok(&tunelab(
            &[
                "rerank",
                "--model",
                &model,
                "--adapter-path",
                &out_dir,
                "--queries",
                "q.jsonl",
                "--run",
                "in.run",
                "--corpus",
                "c.jsonl",
                "--out",
                rr.to_str().unwrap(),
            ],
            dir,
        ));
        let run = Run::read(&rr).unwrap();
        assert_eq!(
            run.results["q0"][0].doc_id, "a",
            "{loss}: the tuned reranker puts the answer first"
        );
    }
}

/// `train rerank --dtype f16` on the tiny Qwen3 reranker (tied head, q/k norms), listwise, with
/// and without `--grad-checkpoint`: the losses follow the f32 run within 0.02 over 30
/// iterations (measured 0.0026-0.0032 at a start scale of 256, where nothing overflows), each
/// update line carries the scale; at GradScaler's default 2^16 the first updates overflow, are
/// skipped and logged, and training still lowers the loss. The learning rate is 0.003: at 0.01
/// this tiny model's training is chaotic, and a change of one f16 rounding (sigmoid's last f32
/// bits) moved the f16-vs-f32 gap from 0.012 to 0.096, which measures the chaos, not f16.
#[test]
fn train_rerank_f16_follows_f32() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_judgments(&dir.join("judgments.jsonl"));
    let model = tiny().display().to_string();
    let run = |out: &str, extra: &[&str]| -> Vec<serde_json::Value> {
        let args = ["train", "rerank", "--model", &model, "--data", "judgments.jsonl", "--loss", "listwise", "--iters", "30", "--batch-size", "4", "--learning-rate", "0.003", "--save-every", "15", "--valid-fraction", "0.25", "--mined-negatives", "1", "--negatives", "2", "--seed", "3", "--adapter-path", out];
        ok(&tunelab(&[&args[..], extra].concat(), dir));
        std::fs::read_to_string(dir.join(out).join("loss.jsonl")).unwrap().lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).filter(|l| l.get("loss").is_some()).collect()
    };
    let loss = |log: &[serde_json::Value]| log.iter().map(|l| l["loss"].as_f64().unwrap()).collect::<Vec<_>>();
    let f32_log = run("f32", &[]);
    for (out, extra) in [("f16", &["--dtype", "f16", "--init-loss-scale", "256"][..]), ("f16-ckpt", &["--dtype", "f16", "--init-loss-scale", "256", "--grad-checkpoint"][..])] {
        let log = run(out, extra);
        let worst = loss(&f32_log).iter().zip(loss(&log)).map(|(a, b)| (a - b).abs()).fold(0f64, f64::max);
        eprintln!("{out} vs f32, 30 iterations: max |Δloss| {worst:.5}");
        assert!(worst <= 0.02 && worst > 0.0, "{out}: {worst}");
        assert!(log.iter().all(|l| l["loss_scale"].as_f64() == Some(256.0) && l["skipped"] == false), "{:?}", log[0]);
    }
    let log = run("f16-default", &["--dtype", "f16"]);
    assert_eq!((log[0]["skipped"].as_bool(), log[0]["loss_scale"].as_f64()), (Some(true), Some(65_536.0)), "{}", log[0]);
    let l = loss(&log);
    assert!(l[24..].iter().sum::<f64>() < l[..6].iter().sum::<f64>(), "{l:?}");
    assert!(log.last().unwrap()["skipped_steps"].as_u64().unwrap() >= 1);
}

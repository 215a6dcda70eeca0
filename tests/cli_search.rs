//! `tunelab search --pipeline qmd` end to end on a tiny random encoder and a markdown folder.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use burn::tensor::Device;
use tunelab::data::trec::Run;
use tunelab::export::sentence_transformers::write_folder;
use tunelab::model::bert::SentenceEncoder;

const WORDS: [&str; 12] = [
    "tide", "tables", "moon", "bread", "starter", "flour", "water", "river", "task", "search",
    "title", "text",
];

fn setup(tmp: &Path) -> (PathBuf, PathBuf) {
    let model = tmp.join("model");
    write_folder(
        &SentenceEncoder::random_tiny(&WORDS, 3, &Device::flex()),
        &model,
        serde_json::Value::Null,
    )
    .unwrap();
    let corpus = tmp.join("corpus");
    std::fs::create_dir_all(corpus.join("sub")).unwrap();
    std::fs::write(
        corpus.join("tides.md"),
        "# Tide tables\nThe moon pulls the tide.\n\n## Spring tides\nBig tides at full moon.\n",
    )
    .unwrap();
    std::fs::write(
        corpus.join("bread.md"),
        "# Sourdough\nA starter of flour and water.\n",
    )
    .unwrap();
    std::fs::write(
        corpus.join("sub/river.md"),
        "River water rises with the tide at the mouth.\n",
    )
    .unwrap();
    (model, corpus)
}

fn search(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tunelab"))
        .arg("search")
        .args(args)
        .env("TUNELAB_DEVICE", "cpu")
        .output()
        .unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn answers_a_query_with_titles_and_scores() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, corpus) = setup(tmp.path());
    let out = search(&[
        "--pipeline",
        "qmd",
        "--corpus",
        s(&corpus),
        "--model",
        s(&model),
        "moon tide",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The title comes from the first heading; the best hit carries both terms.
    let first = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("1."))
        .expect(&stdout);
    assert!(
        first.contains("Tide tables") && first.contains("(tides)"),
        "{stdout}"
    );
    assert!(stdout.contains("stage hybrid"), "{stdout}");
}

#[test]
fn batch_mode_writes_a_run_per_stage() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, corpus) = setup(tmp.path());
    let queries = tmp.path().join("q.jsonl");
    std::fs::write(
        &queries,
        "{\"qid\": \"q1\", \"query\": \"starter flour\"}\n{\"id\": 2, \"query\": \"river\"}\n",
    )
    .unwrap();
    let exp = tmp.path().join("e.jsonl");
    std::fs::write(
        &exp,
        "{\"query\": \"starter flour\", \"text\": \"lex: sourdough starter\\nvec: flour and water starter\"}\n{\"query\": \"river\", \"expansions\": [{\"type\": \"lex\", \"query\": \"river tide\"}]}\n",
    )
    .unwrap();
    let qrels = tmp.path().join("q.qrels");
    std::fs::write(&qrels, "q1 0 bread 1\n2 0 sub/river 1\n").unwrap();
    let dir = tmp.path().join("runs");
    let out = search(&[
        "--corpus",
        s(&corpus),
        "--model",
        s(&model),
        "--expansions",
        s(&exp),
        "--queries",
        s(&queries),
        "--out",
        s(&dir),
        "--qrels",
        s(&qrels),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for stage in ["bm25", "vector", "hybrid", "hybrid+expansion"] {
        let run = Run::read(dir.join(format!("{stage}.run"))).unwrap();
        assert!(run.results.contains_key("q1"), "{stage}");
    }
    assert!(!dir.join("full.run").exists(), "no reranker, no full stage");
    let bm25 = Run::read(dir.join("bm25.run")).unwrap();
    assert_eq!(bm25.results["q1"][0].doc_id, "bread");
    // The lex expansion "river tide" adds documents BM25 alone (all terms ANDed) cannot find.
    let exp_run = Run::read(dir.join("hybrid+expansion.run")).unwrap();
    assert!(exp_run.results["2"].len() >= bm25.results["2"].len());
    let answers = std::fs::read_to_string(dir.join("answers.jsonl")).unwrap();
    assert!(answers.contains("river tide"), "{answers}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("hybrid+expansion") && stdout.contains("recip_rank="),
        "{stdout}"
    );
}

#[test]
fn bad_inputs_name_the_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, corpus) = setup(tmp.path());
    let queries = tmp.path().join("q.jsonl");
    std::fs::write(
        &queries,
        "{\"qid\": \"q1\", \"query\": \"x\"}\n{\"qid\": \"q2\"}\n",
    )
    .unwrap();
    let dir = tmp.path().join("runs");
    let out = search(&[
        "--corpus",
        s(&corpus),
        "--model",
        s(&model),
        "--queries",
        s(&queries),
        "--out",
        s(&dir),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("q.jsonl:2") && err.contains("query"), "{err}");
    // An expansion file without the query.
    std::fs::write(&queries, "{\"qid\": \"q1\", \"query\": \"tide\"}\n").unwrap();
    let exp = tmp.path().join("e.jsonl");
    std::fs::write(&exp, "{\"query\": \"other\", \"text\": \"lex: other\"}\n").unwrap();
    let out = search(&[
        "--corpus",
        s(&corpus),
        "--model",
        s(&model),
        "--expansions",
        s(&exp),
        "--queries",
        s(&queries),
        "--out",
        s(&dir),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("e.jsonl") && err.contains("tide"), "{err}");
}

#[test]
fn an_expansion_model_generates_the_expansions() {
    // The tiny random Llama fixture (word-level vocabulary w3..w127) writes no `lex:`/`vec:` lines,
    // so QMD's fallback applies: `hyde: Information about {q}` (kept), `lex: {q}` and `vec: {q}`
    // (dropped: equal to the query).
    let tmp = tempfile::tempdir().unwrap();
    let (model, corpus) = setup(tmp.path());
    let lm = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/decoder/tiny_llama");
    let queries = tmp.path().join("q.jsonl");
    std::fs::write(&queries, "{\"qid\": \"q1\", \"query\": \"moon tide\"}\n").unwrap();
    let dir = tmp.path().join("runs");
    let out = search(&[
        "--corpus", s(&corpus), "--model", s(&model), "--expansion-model", s(&lm), "--expansion-max-tokens", "6", "--queries", s(&queries), "--out", s(&dir),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let answers = std::fs::read_to_string(dir.join("answers.jsonl")).unwrap();
    let a: serde_json::Value = serde_json::from_str(answers.lines().next().unwrap()).unwrap();
    // One BM25 hit on a three-document corpus is far below QMD's strong-signal score (0.85).
    assert_eq!(a["strong_signal"], false, "{answers}");
    assert_eq!(a["expansions"], serde_json::json!([{"type": "hyde", "query": "Information about moon tide"}]), "{answers}");
    assert_eq!(a["lists"].as_array().unwrap().iter().filter(|l| l["query_type"] == "hyde").count(), 1, "{answers}");
}

/// `--reranker`: the tiny random Qwen3 yes/no reranker adds the `full` stage, each score QMD's
/// blend of the document's rank in `hybrid+expansion` with P(yes) of its best rerank chunk.
#[test]
fn a_reranker_adds_the_full_stage_as_qmd_blends_it() {
    use tunelab::data::corpus::read_corpus;
    use tunelab::data::jsonl::BadLines;
    use tunelab::eval::search::qmd::{QmdConfig, blend, rerank_chunk_for};
    use tunelab::model::reranker::Reranker;
    let tmp = tempfile::tempdir().unwrap();
    let (model, corpus) = setup(tmp.path());
    let rr = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/reranker/tiny_qwen3_reranker");
    let queries = tmp.path().join("q.jsonl");
    std::fs::write(&queries, "{\"qid\": \"q1\", \"query\": \"moon tide\"}\n{\"qid\": \"q2\", \"query\": \"starter flour water\"}\n").unwrap();
    let dir = tmp.path().join("runs");
    let out = search(&[
        "--corpus", s(&corpus), "--model", s(&model), "--reranker", s(&rr), "--queries", s(&queries), "--out", s(&dir),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let hybrid = Run::read(dir.join("hybrid+expansion.run")).unwrap();
    let full = Run::read(dir.join("full.run")).unwrap();
    let texts: std::collections::BTreeMap<String, String> = read_corpus(&corpus, BadLines::Fail)
        .unwrap()
        .records
        .into_iter()
        .map(|d| (d.id, d.text))
        .collect();
    let r = Reranker::load(&rr, None, &Device::flex()).unwrap();
    for (qid, query) in [("q1", "moon tide"), ("q2", "starter flour water")] {
        let cands = &hybrid.results[qid];
        assert!(cands.len() >= 2, "{qid}: {cands:?}");
        let rows = &full.results[qid];
        assert_eq!(rows.len(), cands.len(), "{qid}");
        for (rank, c) in cands.iter().enumerate() {
            let chunk = rerank_chunk_for(&texts[&c.doc_id], query, &QmdConfig::default()).unwrap();
            let p = r.score(query, &[&chunk]).unwrap()[0];
            assert!(p > 0.0 && p < 1.0);
            let want = blend(rank + 1, f64::from(p));
            let got = rows.iter().find(|x| x.doc_id == c.doc_id).unwrap().score;
            assert!((got - want).abs() < 1e-5, "{qid} {}: full {got} vs blend {want}", c.doc_id);
        }
    }
    // One query in the terminal answers from the full stage.
    let one = search(&["--corpus", s(&corpus), "--model", s(&model), "--reranker", s(&rr), "moon tide"]);
    assert!(one.status.success(), "{}", String::from_utf8_lossy(&one.stderr));
    assert!(String::from_utf8_lossy(&one.stdout).contains("stage full"), "{}", String::from_utf8_lossy(&one.stdout));
}

/// QMD's own embedder in the pipeline: EmbeddingGemma as a sentence-transformers folder and as the
/// GGUF llama.cpp writes (what QMD downloads): the pipeline's embedder gives the Gemma encoder's own
/// vectors, and `tunelab search` answers with it.
#[test]
fn embeddinggemma_folder_and_gguf_serve_as_the_pipeline_embedder() {
    use tunelab::eval::search::qmd::load_embedder;
    use tunelab::model::gemma::GemmaEncoder;
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gemma");
    let tmp = tempfile::tempdir().unwrap();
    let (_, corpus) = setup(tmp.path());
    let dev = Device::flex();
    let texts = ["task: search result | query: moon tide", "title: Sourdough | text: A starter of flour and water."];
    for (model, direct) in [
        (fixtures.join("tiny"), GemmaEncoder::load(fixtures.join("tiny"), &dev).unwrap()),
        (
            fixtures.join("tiny_gguf/tiny-f32.gguf"),
            GemmaEncoder::load_gguf(fixtures.join("tiny_gguf/tiny-f32.gguf"), false, &dev).unwrap(),
        ),
    ] {
        let embedder = load_embedder(&model, &dev).unwrap();
        let got = embedder.embed(&texts).unwrap();
        let want = direct.embed_with_prompt(&texts, None, 8).unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.len(), w.len(), "{}", model.display());
            let diff = g.iter().zip(w).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(diff < 1e-6, "{}: max |Δ| {diff}", model.display());
        }
        let out = search(&["--pipeline", "qmd", "--corpus", s(&corpus), "--model", s(&model), "moon tide"]);
        assert!(out.status.success(), "{}: {}", model.display(), String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.lines().any(|l| l.trim_start().starts_with("1.")), "{stdout}");
    }
}

//! `tunelab embed` end to end on a tiny random model folder.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use burn::tensor::Device;
use tunelab::export::sentence_transformers::write_folder;
use tunelab::model::bert::SentenceEncoder;

const WORDS: [&str; 10] = ["the", "cat", "sat", "on", "mat", "dog", "ran", "query", "title", "text"];

fn tiny_model(tmp: &Path) -> PathBuf {
    let dir = tmp.join("model");
    write_folder(&SentenceEncoder::random_tiny(&WORDS, 5, &Device::flex()), &dir, serde_json::Value::Null).unwrap();
    dir
}

fn embed(model: &Path, input: &Path, output: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tunelab"))
        .args(["embed", "--model"])
        .arg(model)
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output)
        .args(extra)
        .env("TUNELAB_DEVICE", "cpu")
        .output()
        .unwrap()
}

fn read_output(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn vector(v: &serde_json::Value) -> Vec<f32> {
    serde_json::from_value(v["embedding"].clone()).unwrap()
}

fn close(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6)
}

#[test]
fn embeds_in_input_order_with_ids_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let input = tmp.path().join("in.jsonl");
    std::fs::write(
        &input,
        "{\"id\": \"a\", \"text\": \"the cat sat on the mat\"}\n\n{\"id\": 7, \"text\": \"dog\"}\n{\"id\": \"c\", \"text\": \"\"}\n",
    )
    .unwrap();
    let output = tmp.path().join("out.jsonl");
    let out = embed(&model, &input, &output, &["--batch-size", "2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows = read_output(&output);
    assert_eq!(rows.len(), 3, "the blank line is skipped");
    assert_eq!(rows[0]["id"], "a");
    assert_eq!(rows[1]["id"], 7, "numeric ids stay numbers");
    assert_eq!(rows[2]["id"], "c");
    // The CLI must give what the library gives for the same folder and texts.
    let enc = SentenceEncoder::load(&model, &Device::flex()).unwrap();
    let lib = enc.embed(&["the cat sat on the mat", "dog", ""], 32).unwrap();
    for (row, v) in rows.iter().zip(&lib) {
        assert!(close(&vector(row), v), "CLI and library differ for {}", row["id"]);
    }
    assert!(!close(&vector(&rows[0]), &vector(&rows[1])), "different texts, different vectors");
}

#[test]
fn prompt_prefix_and_template_are_applied() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let input = tmp.path().join("in.jsonl");
    std::fs::write(&input, "{\"id\": 1, \"text\": \"cat\", \"title\": \"dog\"}\n").unwrap();
    let enc = SentenceEncoder::load(&model, &Device::flex()).unwrap();

    let output = tmp.path().join("prefix.jsonl");
    let out = embed(&model, &input, &output, &["--prompt", "query "]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let expected = enc.embed(&["query cat"], 1).unwrap();
    assert!(close(&vector(&read_output(&output)[0]), &expected[0]));

    let output = tmp.path().join("template.jsonl");
    let out = embed(&model, &input, &output, &["--prompt", "title {title} text {text}"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let expected = enc.embed(&["title dog text cat"], 1).unwrap();
    assert!(close(&vector(&read_output(&output)[0]), &expected[0]));
}

#[test]
fn bad_line_is_named_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let input = tmp.path().join("in.jsonl");
    let output = tmp.path().join("out.jsonl");
    std::fs::write(&output, "previous results\n").unwrap();

    std::fs::write(
        &input,
        "{\"id\": 1, \"text\": \"cat\"}\n{\"id\": 2, \"text\": \"dog\"}\n{\"id\": 3, \"txt\": \"mat\"}\n",
    )
    .unwrap();
    let out = embed(&model, &input, &output, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in.jsonl:3") && err.contains("\"text\""), "{err}");
    assert_eq!(std::fs::read_to_string(&output).unwrap(), "previous results\n", "old output untouched");

    std::fs::write(&input, "{\"id\": 1, \"text\": \"cat\"}\n{not json\n").unwrap();
    let err = String::from_utf8_lossy(&embed(&model, &input, &output, &[]).stderr).to_string();
    assert!(err.contains("in.jsonl:2") && err.contains("invalid JSON"), "{err}");

    std::fs::write(&input, "{\"id\": [1], \"text\": \"cat\"}\n").unwrap();
    let err = String::from_utf8_lossy(&embed(&model, &input, &output, &[]).stderr).to_string();
    assert!(err.contains("in.jsonl:1") && err.contains("\"id\""), "{err}");
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "no temporary files left behind");
}

#[test]
fn missing_model_folder_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.jsonl");
    std::fs::write(&input, "{\"id\": 1, \"text\": \"cat\"}\n").unwrap();
    let missing = tmp.path().join("no-such-model");
    let out = embed(&missing, &input, &tmp.path().join("out.jsonl"), &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-such-model"), "{err}");
}

/// The output may not be the input, however the path spells it (same name, `./`, `dir/../`, a
/// symlink); a BOM-started input reads as the plain one; stale `.partial-` files of a killed run
/// are removed.
#[test]
fn output_over_the_input_is_refused_and_bom_input_is_read() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let input = tmp.path().join("in.jsonl");
    let text = "{\"id\": 1, \"text\": \"the cat\"}\n{\"id\": 2, \"text\": \"the dog\"}\n";
    std::fs::write(&input, text).unwrap();
    std::os::unix::fs::symlink(&input, tmp.path().join("link.jsonl")).unwrap();
    std::fs::create_dir(tmp.path().join("sub")).unwrap();
    for same in [input.clone(), tmp.path().join("./in.jsonl"), tmp.path().join("sub/../in.jsonl"), tmp.path().join("link.jsonl")] {
        let out = embed(&model, &input, &same, &[]);
        assert!(!out.status.success(), "{}", same.display());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("is the input file"), "{err}");
        assert_eq!(std::fs::read_to_string(&input).unwrap(), text, "input untouched");
    }
    // A BOM at the start of the input: the first record is read, not reported as bad JSON.
    let bom = tmp.path().join("bom.jsonl");
    std::fs::write(&bom, format!("\u{feff}{}", text.replace('\n', "\r\n"))).unwrap();
    let stale = tmp.path().join(".out.jsonl.partial-999999");
    std::fs::write(&stale, "half").unwrap();
    let out_path = tmp.path().join("out.jsonl");
    let out = embed(&model, &bom, &out_path, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows = read_output(&out_path);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["id"], 1);
    assert!(!stale.exists(), "stale partial file removed");
}

fn gemma_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gemma/tiny")
}

#[test]
fn gemma_folder_prompt_names_qmd_formats_and_matryoshka_dim() {
    use tunelab::model::gemma::GemmaEncoder;
    let tmp = tempfile::tempdir().unwrap();
    let model = gemma_fixture();
    let input = tmp.path().join("in.jsonl");
    std::fs::write(
        &input,
        "{\"id\": 1, \"text\": \"how do I reset my password\", \"title\": \"Accounts\"}\n",
    )
    .unwrap();
    let enc = GemmaEncoder::load(&model, &Device::flex()).unwrap();
    let text = "how do I reset my password";

    // The model's own prompt, by name.
    let output = tmp.path().join("query.jsonl");
    let out = embed(&model, &input, &output, &["--prompt-name", "query"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = enc
        .embed_with_prompt(&[text], Some("task: search result | query: "), 1)
        .unwrap();
    assert!(close(&vector(&read_output(&output)[0]), &expected[0]));
    let names_prompt = enc
        .embed_with_prompt(&[text], enc.prompt("Clustering"), 1)
        .unwrap();
    let output = tmp.path().join("clustering.jsonl");
    assert!(
        embed(&model, &input, &output, &["--prompt-name", "Clustering"])
            .status
            .success()
    );
    assert!(close(&vector(&read_output(&output)[0]), &names_prompt[0]));

    // QMD's document format: the record's title goes into the template.
    let output = tmp.path().join("qmd.jsonl");
    let out = embed(&model, &input, &output, &["--prompt-name", "qmd-document"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = enc
        .embed_with_prompt(
            &["title: Accounts | text: how do I reset my password"],
            None,
            1,
        )
        .unwrap();
    assert!(close(&vector(&read_output(&output)[0]), &expected[0]));

    // Matryoshka: the first 16 values of the full vector, re-normalised.
    let output = tmp.path().join("dim.jsonl");
    let out = embed(
        &model,
        &input,
        &output,
        &["--prompt-name", "qmd-document", "--dim", "16"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = vector(&read_output(&output)[0]);
    assert_eq!(v.len(), 16);
    let norm = expected[0][..16].iter().map(|x| x * x).sum::<f32>().sqrt();
    let by_hand: Vec<f32> = expected[0][..16].iter().map(|x| x / norm).collect();
    assert!(close(&v, &by_hand));

    let out = embed(
        &model,
        &input,
        &tmp.path().join("x.jsonl"),
        &["--prompt-name", "nope"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("nope")
            && err.contains("qmd-query")
            && err.contains("document"),
        "{err}"
    );
    let out = embed(
        &model,
        &input,
        &tmp.path().join("x.jsonl"),
        &["--dim", "65"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--dim 65") && err.contains("64"),
        "{err}"
    );
}

#[test]
fn qmd_prompt_names_work_for_a_bert_model_too() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let input = tmp.path().join("in.jsonl");
    std::fs::write(&input, "{\"id\": 1, \"text\": \"cat\"}\n").unwrap();
    let output = tmp.path().join("q.jsonl");
    let out = embed(&model, &input, &output, &["--prompt-name", "qmd-query"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let enc = SentenceEncoder::load(&model, &Device::flex()).unwrap();
    let expected = enc.embed(&["task: search result | query: cat"], 1).unwrap();
    assert!(close(&vector(&read_output(&output)[0]), &expected[0]));
}

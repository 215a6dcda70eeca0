//! BERT encoder against sentence-transformers, exports, and bad model folders.
//!
//! The reference vectors in tests/fixtures/bert/minilm_reference.json were computed by
//! sentence-transformers on the CPU in f32 (scripts/make-bert-fixtures.py; versions recorded in
//! the file). The real weights come from `scripts/fetch-models.sh`; without them these tests fail
//! and say so, unless TUNELAB_SKIP_MODELS=1.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use tunelab::export::sentence_transformers::write_folder;
use tunelab::io::safetensors::write_f32;
use tunelab::model::bert::SentenceEncoder;

/// Sentence-transformers agreement required by issue 4.
const MIN_COSINE: f64 = 0.9999;

fn minilm_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2");
    if dir.join("model.safetensors").exists() && dir.join("tokenizer.json").exists() {
        return Some(dir);
    }
    if std::env::var("TUNELAB_SKIP_MODELS").as_deref() == Ok("1") {
        eprintln!("skipping: {} is missing and TUNELAB_SKIP_MODELS=1", dir.display());
        return None;
    }
    panic!(
        "{} is missing: run scripts/fetch-models.sh first (or set TUNELAB_SKIP_MODELS=1 to skip real-model tests)",
        dir.display()
    );
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-30)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

struct Reference {
    max_seq_length: usize,
    texts: Vec<String>,
    token_ids: Vec<Vec<i64>>,
    embeddings: Vec<Vec<f32>>,
}

fn reference() -> Reference {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bert/minilm_reference.json");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let sentences = v["sentences"].as_array().unwrap();
    let strings = |k: &str| -> Vec<serde_json::Value> { sentences.iter().map(|s| s[k].clone()).collect() };
    Reference {
        max_seq_length: v["max_seq_length"].as_u64().unwrap() as usize,
        texts: strings("text").iter().map(|t| t.as_str().unwrap().to_string()).collect(),
        token_ids: strings("token_ids").iter().map(|t| serde_json::from_value(t.clone()).unwrap()).collect(),
        embeddings: strings("embedding").iter().map(|t| serde_json::from_value(t.clone()).unwrap()).collect(),
    }
}

#[test]
fn minilm_matches_sentence_transformers() {
    let Some(dir) = minilm_dir() else { return };
    let r = reference();
    assert!(r.texts.len() >= 50, "fixture must hold at least 50 sentences");
    let enc = SentenceEncoder::load(&dir, &Device::flex()).unwrap();
    assert_eq!(enc.max_seq_len(), r.max_seq_length, "max_seq_length from sentence_bert_config.json");
    assert_eq!(enc.dim(), 384);
    assert!(enc.normalize, "2_Normalize is listed in modules.json");

    // Tokens first: a tokenizer difference would otherwise show up as a vague embedding mismatch.
    for (text, expected) in r.texts.iter().zip(&r.token_ids) {
        let b = enc.tokenizer.encode_batch(&[text.as_str()]).unwrap();
        assert_eq!(&b.input_ids, expected, "token ids differ for {text:?}");
    }
    assert!(
        r.token_ids.iter().filter(|t| t.len() == r.max_seq_length).count() >= 3,
        "fixture must exercise truncation"
    );

    let texts: Vec<&str> = r.texts.iter().map(String::as_str).collect();
    let ours = enc.embed(&texts, 16).unwrap();
    let mut min_cos = f64::MAX;
    let mut worst = 0.0f32;
    for ((text, a), b) in r.texts.iter().zip(&ours).zip(&r.embeddings) {
        let c = cosine(a, b);
        let d = max_abs_diff(a, b);
        min_cos = min_cos.min(c);
        worst = worst.max(d);
        assert!(c >= MIN_COSINE, "cosine {c} < {MIN_COSINE} for {text:?} (max abs diff {d})");
    }
    eprintln!("parity over {} sentences: min cosine {min_cos:.9}, max abs diff {worst:.3e}", r.texts.len());
}

#[test]
fn minilm_batching_does_not_change_embeddings() {
    // Padding invariance on the real model: one at a time vs mixed-length batches of 7.
    let Some(dir) = minilm_dir() else { return };
    let r = reference();
    let enc = SentenceEncoder::load(&dir, &Device::flex()).unwrap();
    let texts: Vec<&str> = r.texts.iter().take(20).map(String::as_str).collect();
    let batched = enc.embed(&texts, 7).unwrap();
    for (t, b) in texts.iter().zip(&batched) {
        let alone = &enc.embed(&[t], 1).unwrap()[0];
        let d = max_abs_diff(alone, b);
        assert!(d < 1e-5, "{t:?}: alone vs batched differ by {d}");
    }
}

#[test]
fn minilm_export_round_trips_and_loads_in_sentence_transformers() {
    let Some(dir) = minilm_dir() else { return };
    let dev = Device::flex();
    let enc = SentenceEncoder::load(&dir, &dev).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("minilm-export");
    write_folder(&enc, &out, serde_json::json!({"test": "round trip"})).unwrap();

    // Our loader: the same numbers (same weights, same tokenizer files). A sample keeps this fast.
    let back = SentenceEncoder::load(&out, &dev).unwrap();
    let r = reference();
    let sample: Vec<&str> = r.texts.iter().step_by(6).map(String::as_str).collect();
    let a = enc.embed(&sample, 16).unwrap();
    let b = back.embed(&sample, 16).unwrap();
    for (x, y) in a.iter().zip(&b) {
        assert!(max_abs_diff(x, y) < 1e-6);
    }

    // sentence-transformers itself, when a reference Python is given (TUNELAB_REF_PYTHON=/work/venv-ref/bin/python).
    let Ok(python) = std::env::var("TUNELAB_REF_PYTHON") else {
        eprintln!("TUNELAB_REF_PYTHON unset: skipping the sentence-transformers load check of the export");
        return;
    };
    let texts: Vec<&str> = r.texts.iter().map(String::as_str).collect();
    let b = back.embed(&texts, 16).unwrap();
    let jsonl = tmp.path().join("ours.jsonl");
    let lines: Vec<String> =
        texts.iter().zip(&b).map(|(t, v)| serde_json::json!({"text": t, "embedding": v}).to_string()).collect();
    std::fs::write(&jsonl, lines.join("\n") + "\n").unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/check-st-export.py");
    let status = std::process::Command::new(python).arg(script).arg(&out).arg(&jsonl).status().unwrap();
    assert!(status.success(), "sentence-transformers disagrees with our embeddings of the export (see output above)");
}

// ---------------------------------------------------------------------------------------------
// Tiny random models: fast, no downloads.
// ---------------------------------------------------------------------------------------------

const WORDS: [&str; 16] =
    ["the", "cat", "sat", "on", "mat", "dog", "ran", "far", "a", "red", "ball", "fast", "blue", "sky", "is", "big"];

fn tiny_folder(tmp: &Path) -> PathBuf {
    let enc = SentenceEncoder::random_tiny(&WORDS, 9, &Device::flex());
    let dir = tmp.join("tiny");
    write_folder(&enc, &dir, serde_json::Value::Null).unwrap();
    dir
}

#[test]
fn tiny_encoder_shapes_and_padding_invariance() {
    let enc = SentenceEncoder::random_tiny(&WORDS, 3, &Device::flex());
    let alone = enc.embed(&["the cat sat"], 1).unwrap();
    let batched = enc.embed(&["the big red dog ran far on the blue mat", "the cat sat", ""], 3).unwrap();
    assert_eq!(batched.len(), 3);
    assert!(batched.iter().all(|v| v.len() == 32));
    let d = max_abs_diff(&alone[0], &batched[1]);
    assert!(d < 1e-5, "padding changed the embedding by {d}");
    // Normalised output: unit length (the empty text included: [CLS] [SEP] still pool).
    for v in &batched {
        let n: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((n - 1.0).abs() < 1e-5, "norm {n}");
    }
}

/// GPU back-ends pad encoder batches to a multiple of 128 columns (at most the truncation length)
/// (`EncodedBatch::to_tensors` through `device::padded_width`); the extra columns are masked
/// padding, so the vectors stay those of the longest-row batch.
#[test]
fn padding_wider_leaves_embeddings_unchanged() {
    let enc = SentenceEncoder::random_tiny(&WORDS, 3, &Device::flex());
    let batch = enc.tokenizer.encode_batch(&["the big red dog ran far", "the cat sat", ""]).unwrap();
    let values = |t| enc.encode_tokens(t).into_data().try_into_vec_as::<f32>().unwrap();
    assert!(batch.max_len > batch.seq_len, "room to pad");
    let tight = values(batch.to_tensors(&Device::flex()));
    let wide = values(batch.to_tensors_padded(batch.max_len, &Device::flex()));
    let d = max_abs_diff(&tight, &wide);
    assert!(d < 1e-5, "padding to {} columns changed the vectors by {d}", batch.max_len);
}

#[test]
fn missing_tokenizer_names_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_folder(tmp.path());
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let msg = SentenceEncoder::load(&dir, &Device::flex()).unwrap_err().to_string();
    assert!(msg.contains("tokenizer.json") && msg.contains(&dir.display().to_string()), "{msg}");
}

#[test]
fn wrong_shape_names_tensor_and_both_shapes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_folder(tmp.path());
    // Rewrite the weights with the layer-1 value projection as [32, 16] instead of [32, 32].
    let enc = SentenceEncoder::random_tiny(&WORDS, 9, &Device::flex());
    let mut tensors = enc.model.hf_tensors();
    let name = "encoder.layer.1.attention.self.value.weight";
    let t = tensors.iter_mut().find(|(n, _, _)| n == name).unwrap();
    t.1 = vec![32, 16];
    t.2.truncate(32 * 16);
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    write_f32(dir.join("model.safetensors"), &tensors, None).unwrap();
    let msg = SentenceEncoder::load(&dir, &Device::flex()).unwrap_err().to_string();
    assert!(msg.contains(name), "{msg}");
    assert!(msg.contains("[32, 16]") && msg.contains("[32, 32]"), "{msg}");
    assert!(msg.contains("model.safetensors"), "{msg}");
}

#[test]
fn truncated_weights_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_folder(tmp.path());
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let msg = SentenceEncoder::load(&dir, &Device::flex()).unwrap_err().to_string();
    assert!(msg.contains(&path.display().to_string()) && msg.contains("truncated"), "{msg}");
}

#[test]
fn missing_tensor_names_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_folder(tmp.path());
    let enc = SentenceEncoder::random_tiny(&WORDS, 9, &Device::flex());
    let tensors: Vec<_> =
        enc.model.hf_tensors().into_iter().filter(|(n, _, _)| n != "encoder.layer.0.output.LayerNorm.bias").collect();
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    write_f32(dir.join("model.safetensors"), &tensors, None).unwrap();
    let msg = SentenceEncoder::load(&dir, &Device::flex()).unwrap_err().to_string();
    assert!(msg.contains("encoder.layer.0.output.LayerNorm.bias") && msg.contains("not found"), "{msg}");
}

#[test]
fn bge_and_e5_style_folders_configure_from_their_files() {
    // Nothing MiniLM-specific: a folder written the way bge-small-en-v1.5 (CLS pooling, new-style
    // pooling config) and e5-small-v2 (named query/passage prompts, no Normalize module) are,
    // with weights under a `bert.` prefix and no sentence_bert_config.json.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_folder(tmp.path());
    std::fs::write(dir.join("1_Pooling/config.json"), r#"{"embedding_dimension": 32, "pooling_mode": "cls"}"#).unwrap();
    std::fs::write(
        dir.join("modules.json"),
        r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
            {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"}]"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("config_sentence_transformers.json"),
        r#"{"prompts": {"query": "query: ", "passage": "passage: "}}"#,
    )
    .unwrap();
    std::fs::remove_file(dir.join("sentence_bert_config.json")).unwrap();
    std::fs::write(dir.join("tokenizer_config.json"), r#"{"model_max_length": 16}"#).unwrap();
    let enc = SentenceEncoder::random_tiny(&WORDS, 9, &Device::flex());
    let prefixed: Vec<_> = enc.model.hf_tensors().into_iter().map(|(n, s, v)| (format!("bert.{n}"), s, v)).collect();
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    write_f32(dir.join("model.safetensors"), &prefixed, None).unwrap();

    let e = SentenceEncoder::load(&dir, &Device::flex()).unwrap();
    assert_eq!(e.pooling, tunelab::model::bert::Pooling::cls());
    assert!(!e.normalize, "no Normalize module listed");
    assert_eq!(
        e.max_seq_len(),
        16,
        "tokenizer_config.json's model_max_length when sentence_bert_config.json is absent"
    );
    assert_eq!(e.prompts.query.as_deref(), Some("query: "));
    assert_eq!(e.prompts.document.as_deref(), Some("passage: "));
    // The query prompt is a plain prefix: embedding "cat" as a query = embedding "query: cat".
    let q = e.embed_queries(&["cat"], 1).unwrap();
    let p = e.embed(&["query: cat"], 1).unwrap();
    assert!(max_abs_diff(&q[0], &p[0]) < 1e-6);
    let d = e.embed_documents(&["cat"], 1).unwrap();
    assert!(max_abs_diff(&d[0], &e.embed(&["passage: cat"], 1).unwrap()[0]) < 1e-6);
    assert!(max_abs_diff(&d[0], &e.embed(&["cat"], 1).unwrap()[0]) > 1e-4, "the prompt changes the input");
    // CLS pooling of an unnormalised model: the vector is the first token's hidden state.
    let tokens = e.tokenizer.encode_batch(&["the cat"]).unwrap().to_tensors(&Device::flex());
    let hidden = e.model.forward(tokens.input_ids, tokens.token_type_ids, tokens.attention_mask);
    let first: Vec<f32> = hidden.slice([0..1, 0..1]).into_data().try_into_vec_as::<f32>().unwrap();
    assert!(max_abs_diff(&first, &e.embed(&["the cat"], 1).unwrap()[0]) < 1e-6);
}

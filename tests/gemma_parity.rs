//! EmbeddingGemma encoder (src/model/gemma.rs) against sentence-transformers.
//!
//! tests/fixtures/gemma/ holds a tiny random model of EmbeddingGemma's architecture saved by
//! sentence-transformers and the vectors `SentenceTransformer.encode` gave for 54 texts with no
//! prompt, the `query` prompt and the `document` prompt (scripts/make-gemma-fixtures.py; versions
//! recorded in the file). Most texts are longer than the sliding window (9 tokens), some longer
//! than max_seq_length (48).

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use tunelab::model::gemma::GemmaEncoder;

/// Agreement required by issue 14.
const MIN_COSINE: f64 = 0.9999;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gemma")
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-30)
}

fn reference() -> serde_json::Value {
    let path = fixture_dir().join("reference.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn vectors(v: &serde_json::Value) -> Vec<Vec<f32>> {
    serde_json::from_value(v.clone()).unwrap()
}

#[test]
fn tiny_embeddinggemma_matches_sentence_transformers() {
    let r = reference();
    let texts: Vec<String> = serde_json::from_value(r["texts"].clone()).unwrap();
    assert!(texts.len() >= 50);
    let enc = GemmaEncoder::load(fixture_dir().join("tiny"), &Device::flex()).unwrap();
    assert_eq!(
        enc.max_seq_len(),
        r["max_seq_length"].as_u64().unwrap() as usize
    );
    assert_eq!(enc.dim(), 64);
    assert_eq!(enc.model.dense.len(), 2, "2_Dense and 3_Dense");
    assert!(enc.normalize);

    // Tokens first, so a tokenizer difference is not mistaken for an architecture one.
    let token_ids: Vec<Vec<i64>> = serde_json::from_value(r["token_ids"].clone()).unwrap();
    for (text, expected) in texts.iter().zip(&token_ids) {
        let b = enc.tokenizer.encode_batch(&[text.as_str()]).unwrap();
        assert_eq!(&b.input_ids, expected, "token ids differ for {text:?}");
    }
    let window = enc.model.transformer.config.window_radius() * 2 + 1;
    assert!(
        token_ids.iter().filter(|t| t.len() > window).count() >= 20,
        "texts must exceed the window"
    );

    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let mut worst = Vec::new();
    for (name, prompt) in [
        ("plain", None),
        ("query", enc.prompt("query")),
        ("document", enc.prompt("document")),
    ] {
        assert!(
            name == "plain" || prompt.is_some(),
            "the folder names a {name} prompt"
        );
        // Batches of 5 mix lengths, so padding is exercised too.
        let ours = enc.embed_with_prompt(&refs, prompt, 5).unwrap();
        let expected = vectors(&r[name]);
        let mut min = f64::MAX;
        for (i, (a, b)) in ours.iter().zip(&expected).enumerate() {
            let c = cosine(a, b);
            assert!(
                c >= MIN_COSINE,
                "{name}: text {i} {:?}: cosine {c}",
                texts[i]
            );
            min = min.min(c);
        }
        worst.push(format!("{name} {min:.7}"));
    }
    eprintln!("min cosine vs sentence-transformers: {}", worst.join(", "));
}

/// GPU back-ends pad encoder batches to a multiple of 128 columns (at most the truncation length)
/// (`EncodedBatch::to_tensors` through `device::padded_width`); the extra columns are masked
/// padding (bidirectional and sliding-window layers alike), so the vectors stay the same.
#[test]
fn padding_wider_leaves_embeddings_unchanged() {
    let enc = GemmaEncoder::load(fixture_dir().join("tiny"), &Device::flex()).unwrap();
    let texts = ["a longer text than the sliding window of nine tokens, by some way", "short", ""];
    let batch = enc.tokenizer.encode_batch(&texts).unwrap();
    let values = |t| enc.encode_tokens(t).into_data().try_into_vec_as::<f32>().unwrap();
    assert!(batch.max_len > batch.seq_len, "room to pad");
    let tight = values(batch.to_tensors(&Device::flex()));
    let wide = values(batch.to_tensors_padded(batch.max_len, &Device::flex()));
    let d = tight.iter().zip(&wide).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(d < 1e-5, "padding to {} columns changed the vectors by {d}", batch.max_len);
}

#[test]
fn wrong_dense_shape_and_missing_dense_weights_are_named() {
    let src = fixture_dir().join("tiny");
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&src, dir.path());
    let cfg = dir.path().join("3_Dense/config.json");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("\"in_features\": 256", "\"in_features\": 128");
    std::fs::write(&cfg, text).unwrap();
    let msg = GemmaEncoder::load(dir.path(), &Device::flex())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("linear.weight") && msg.contains("3_Dense"),
        "{msg}"
    );

    copy_dir(&src, dir.path());
    std::fs::remove_file(dir.path().join("2_Dense/model.safetensors")).unwrap();
    std::fs::write(dir.path().join("2_Dense/pytorch_model.bin"), b"").unwrap();
    let msg = GemmaEncoder::load(dir.path(), &Device::flex())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("2_Dense")
            && msg.contains("model.safetensors")
            && msg.contains("pytorch_model.bin"),
        "{msg}"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// llama.cpp (`gemma-embedding`, Dense layers as `dense_2`/`dense_3`) on the tiny model converted by
/// its own converter, recorded by scripts/make-gemma-gguf-fixtures.py: tunelab's embeddings of the
/// same sentence-transformers folder agree with llama.cpp's f32 and f16 GGUFs to cosine ≥ 0.999 and
/// with its q8_0 to ≥ 0.99, and with sentence-transformers' own vectors of that model to ≥ 0.9999.
#[test]
fn tiny_embeddinggemma_matches_llama_cpp() {
    let path = fixture_dir().join("llamacpp.json");
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let texts: Vec<String> = serde_json::from_value(r["texts"].clone()).unwrap();
    let enc = GemmaEncoder::load(fixture_dir().join("tiny_llamacpp"), &Device::flex()).unwrap();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let ours = enc.embed_with_prompt(&refs, None, 5).unwrap();
    let mut report = Vec::new();
    for (name, min_cos) in [("sentence_transformers", MIN_COSINE), ("f32", 0.999), ("f16", 0.999), ("q8_0", 0.99)] {
        let theirs = vectors(&r[name]);
        assert_eq!(theirs.len(), ours.len());
        let min = ours.iter().zip(&theirs).map(|(a, b)| cosine(a, b)).fold(f64::MAX, f64::min);
        assert!(min >= min_cos, "{name}: min cosine {min} < {min_cos}");
        report.push(format!("{name} {min:.7}"));
    }
    eprintln!("min cosine vs llama.cpp / sentence-transformers: {}", report.join(", "));
}

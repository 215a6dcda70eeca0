//! `tunelab export gguf` for EmbeddingGemma (src/export/gguf_gemma.rs) against llama.cpp.
//!
//! tests/fixtures/gemma/tuned/ is a model tunelab fine-tuned (LoRA r4 over the Q8_0 blocks of
//! tiny_gguf/tiny-q8_0.gguf, merged: `tunelab train embed --model …q8_0.gguf --lora-rank 4`, see
//! scripts/make-gemma-gguf-fixtures.py). scripts/make-gemma-gguf-fixtures.py --export exported it with
//! tunelab to f32, f16 and q8_0, recorded each file's sha256, and had llama.cpp (llama-cpp-python,
//! its own tokenizer from the GGUF, mean pooling, dense_2/dense_3, L2 norm) embed the fixture texts
//! from it into tests/fixtures/gemma/export.json. Here the export is redone: the bytes must hash the
//! same (so the recorded llama.cpp vectors are of this very file), and tunelab loading the file must
//! agree with them. The same for tiny_llamacpp/ (its own Metaspace BPE tokenizer.json rebuilt as a
//! SentencePiece vocabulary).

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use sha2::{Digest, Sha256};
use tunelab::export::gguf_bert::GgufOutType;
use tunelab::export::gguf_gemma::write_gemma_gguf;
use tunelab::io::gguf::GgufFile;
use tunelab::model::gemma::GemmaEncoder;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gemma")
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-30)
}

fn recorded() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture_dir().join("export.json")).unwrap())
        .unwrap()
}

/// The manifest the CLI stores: the folder's own `tunelab_manifest.json`, else null.
fn folder_manifest(dir: &Path) -> serde_json::Value {
    std::fs::read_to_string(dir.join("tunelab_manifest.json"))
        .map(|t| serde_json::from_str(&t).unwrap())
        .unwrap_or(serde_json::Value::Null)
}

fn export(model: &str, ty: GgufOutType, out: &Path) -> String {
    let dir = fixture_dir().join(model);
    let enc = GemmaEncoder::load(&dir, &Device::flex()).unwrap();
    let s = write_gemma_gguf(&enc, out, ty, folder_manifest(&dir)).unwrap();
    let bytes = std::fs::read(out).unwrap();
    assert_eq!(s.sha256, hex::encode(Sha256::digest(&bytes)));
    s.sha256
}

#[test]
fn exported_ggufs_are_the_recorded_files_and_agree_with_llama_cpp() {
    let r = recorded();
    let texts: Vec<String> = serde_json::from_value(r["texts"].clone()).unwrap();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let tmp = tempfile::tempdir().unwrap();
    let mut report = Vec::new();
    for model in ["tuned", "tiny_llamacpp"] {
        // Issue 14: >= 0.999 for f16, >= 0.99 for q8_0 (f32: the same arithmetic, 1e-4).
        for (ty, name, min) in [
            (GgufOutType::F32, "f32", 0.9999),
            (GgufOutType::F16, "f16", 0.999),
            (GgufOutType::Q8_0, "q8_0", 0.99),
        ] {
            let rec = &r[model][name];
            if rec.is_null() {
                continue;
            }
            let out = tmp.path().join(format!("{model}-{name}.gguf"));
            let sha = export(model, ty, &out);
            assert_eq!(
                sha,
                rec["sha256"].as_str().unwrap(),
                "{model} {name}: the export's bytes changed; if on purpose, rerun scripts/make-gemma-gguf-fixtures.py --export"
            );
            let enc = GemmaEncoder::load_gguf(&out, false, &Device::flex())
                .unwrap()
                .with_max_seq_len(1024)
                .unwrap();
            let tokens: Vec<Vec<i64>> = serde_json::from_value(rec["tokens"].clone()).unwrap();
            for (t, expected) in texts.iter().zip(&tokens) {
                let ours = enc.tokenizer.encode_batch(&[t.as_str()]).unwrap().input_ids;
                assert_eq!(
                    &ours, expected,
                    "{model} {name}: tokens differ from llama.cpp's for {t:?}"
                );
            }
            let expected: Vec<Vec<f32>> =
                serde_json::from_value(rec["embeddings"].clone()).unwrap();
            let ours = enc.embed_with_prompt(&refs, None, 5).unwrap();
            let worst = ours
                .iter()
                .zip(&expected)
                .map(|(a, b)| cosine(a, b))
                .fold(f64::MAX, f64::min);
            report.push(format!(
                "{model} {name}: worst cosine vs llama.cpp {worst:.7}"
            ));
            assert!(worst >= min, "{model} {name}: worst cosine {worst} < {min}");
        }
    }
    eprintln!("{}", report.join("\n"));
}

/// tunelab reading its own f32 export computes what the folder computes, tokenizer included.
#[test]
fn f32_export_round_trips_through_load_gguf() {
    let tmp = tempfile::tempdir().unwrap();
    let texts: Vec<String> = serde_json::from_value(recorded()["texts"].clone()).unwrap();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    for model in ["tuned", "tiny_llamacpp"] {
        let folder = GemmaEncoder::load(fixture_dir().join(model), &Device::flex())
            .unwrap()
            .with_max_seq_len(1024)
            .unwrap();
        let out = tmp.path().join(format!("{model}.gguf"));
        export(model, GgufOutType::F32, &out);
        let back = GemmaEncoder::load_gguf(&out, false, &Device::flex())
            .unwrap()
            .with_max_seq_len(1024)
            .unwrap();
        let mut same = Vec::new();
        let mut differing = Vec::new();
        for t in &refs {
            let (a, b) = (
                folder.tokenizer.encode_batch(&[t]).unwrap(),
                back.tokenizer.encode_batch(&[t]).unwrap(),
            );
            if a.input_ids == b.input_ids {
                same.push(*t)
            } else {
                differing.push(*t)
            }
        }
        // The GGUF-sourced folder (tuned/) round-trips exactly. tiny_llamacpp/'s own tokenizer is a
        // Metaspace BPE that prepends '▁' only when a text does not already start with a space;
        // SentencePiece's add_space_prefix (llama.cpp) always prepends one, so texts starting with
        // whitespace tokenize differently there, and only those (llama.cpp agrees with the GGUF: see
        // the test above). Gemma's own tokenizer adds no prefix, so this never concerns the real model.
        let allowed = |t: &&str| model == "tiny_llamacpp" && t.starts_with(char::is_whitespace);
        assert!(
            differing.iter().all(allowed),
            "{model}: the GGUF's vocabulary tokenizes differently: {differing:?}"
        );
        let (a, b) = (
            folder.embed_with_prompt(&same, None, 5).unwrap(),
            back.embed_with_prompt(&same, None, 5).unwrap(),
        );
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| cosine(x, y))
            .fold(f64::MAX, f64::min);
        assert!(
            same.len() >= 50 && worst >= 0.99999,
            "{model}: round trip worst cosine {worst} over {} texts",
            same.len()
        );
        // The metadata llama.cpp reads.
        let g = GgufFile::open(&out).unwrap();
        assert_eq!(g.architecture().unwrap(), "gemma-embedding");
        assert_eq!(g.get_int("gemma-embedding.dense_2_feat_out").unwrap(), 128);
        assert_eq!(g.get_int("gemma-embedding.pooling_type").unwrap(), 1);
        assert!(
            g.get_str("tunelab.manifest")
                .unwrap()
                .contains("\"architecture\":\"gemma-embedding\"")
        );
    }
}

#[test]
fn what_llama_cpp_cannot_run_is_refused_naming_the_model() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture_dir().join("tiny");
    // tiny/ scales queries by query_pre_attn_scalar 20 with head_dim 24: llama.cpp would not.
    let enc = GemmaEncoder::load(&dir, &Device::flex()).unwrap();
    assert_ne!(
        enc.model.transformer.config.query_pre_attn_scalar,
        enc.model.transformer.config.head_dim as f64
    );
    let out = tmp.path().join("x.gguf");
    let msg = write_gemma_gguf(&enc, &out, GgufOutType::F16, serde_json::Value::Null)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("query_pre_attn_scalar") && msg.contains("tiny"),
        "{msg}"
    );
    assert!(!out.exists(), "nothing written");
    // An existing file is never overwritten.
    std::fs::write(&out, b"keep").unwrap();
    let ok = GemmaEncoder::load(fixture_dir().join("tiny_llamacpp"), &Device::flex()).unwrap();
    let msg = write_gemma_gguf(&ok, &out, GgufOutType::F16, serde_json::Value::Null)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("x.gguf") && msg.contains("exists"), "{msg}");
    assert_eq!(std::fs::read(&out).unwrap(), b"keep");
}

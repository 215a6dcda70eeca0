//! GGUF reading and dequantisation against gguf-py (ggml's own Python package).
//!
//! `tests/fixtures/decoder/quant_blocks.gguf` was written by gguf-py's `GGUFWriter` with random
//! blocks of every tensor type we dequantize, and `quant_blocks.json` holds gguf-py's
//! `quants.dequantize` of each tensor (`scripts/make-decoder-fixtures.py quants`). Dequantisation
//! follows ggml's C operation for operation, so the comparison is exact.

use std::path::Path;

use tunelab::io::gguf::{GgmlType, GgufFile, GgufWriter, MetaValue};

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/decoder")
        .join(name)
}

fn expected() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("quant_blocks.json")).unwrap()).unwrap()
}

#[test]
fn dequantization_matches_gguf_py_bit_for_bit() {
    let g = GgufFile::open(fixture("quant_blocks.gguf")).unwrap();
    let exp = expected();
    let tensors = exp["tensors"].as_object().unwrap();
    assert_eq!(tensors.len(), 8);
    for (name, t) in tensors {
        let info = g.tensor_info(name).unwrap();
        assert_eq!(info.ggml_type.name(), t["type"].as_str().unwrap(), "{name}");
        let (shape, values) = g.tensor_f32(name).unwrap();
        let want_shape: Vec<usize> = t["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(shape, want_shape, "{name}");
        let want: Vec<f32> = t["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(values.len(), want.len(), "{name}");
        for (i, (a, b)) in values.iter().zip(&want).enumerate() {
            assert!(
                a.to_bits() == b.to_bits(),
                "{name}[{i}]: ours {a} vs gguf-py {b}"
            );
        }
    }
}

#[test]
fn metadata_of_every_value_type_reads_as_gguf_py_wrote_it() {
    let g = GgufFile::open(fixture("quant_blocks.gguf")).unwrap();
    let exp = expected();
    assert_eq!(g.architecture().unwrap(), "llama");
    let m = exp["metadata"].as_object().unwrap();
    for key in [
        "test.u8", "test.i8", "test.u16", "test.i16", "test.u32", "test.i32", "test.i64",
    ] {
        assert_eq!(g.get_int(key).unwrap(), m[key].as_i64().unwrap(), "{key}");
    }
    assert!(
        matches!(g.get("test.u64"), Some(MetaValue::U64(v)) if *v == m["test.u64"].as_u64().unwrap())
    );
    assert_eq!(
        g.get_f64("test.f32").unwrap(),
        m["test.f32"].as_f64().unwrap()
    );
    assert_eq!(
        g.get_f64("test.f64").unwrap(),
        m["test.f64"].as_f64().unwrap()
    );
    assert_eq!(g.get("test.bool").unwrap().as_bool(), Some(true));
    assert_eq!(
        g.get_str("test.string").unwrap(),
        m["test.string"].as_str().unwrap()
    );
    assert_eq!(
        g.get_string_array("test.array_str").unwrap(),
        vec!["a", "bc", ""]
    );
    assert_eq!(
        g.get("test.array_i32").unwrap().as_i64_array().unwrap(),
        vec![1, -2, 3]
    );
    assert_eq!(
        g.get("test.array_f32").unwrap().as_f32_array().unwrap(),
        vec![0.5, -1.25]
    );
}

#[test]
fn rewriting_the_fixture_preserves_metadata_and_raw_blocks() {
    // Copy every metadata entry and tensor (raw blocks) into a new file with our writer: the
    // reader must see the same values and the same dequantized tensors.
    let src = GgufFile::open(fixture("quant_blocks.gguf")).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in &src.metadata {
        w.add_metadata(k, v.clone());
    }
    for t in &src.tensors {
        w.add_raw_tensor(
            &t.name,
            &t.shape(),
            t.ggml_type,
            src.tensor_bytes(&t.name).unwrap().to_vec(),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("copy.gguf");
    w.write(&path).unwrap();
    let copy = GgufFile::open(&path).unwrap();
    assert_eq!(copy.metadata, src.metadata);
    for t in &src.tensors {
        assert_eq!(
            copy.tensor_f32(&t.name).unwrap(),
            src.tensor_f32(&t.name).unwrap()
        );
    }
    assert_eq!(
        copy.tensor_info("t_q4_k").unwrap().ggml_type,
        GgmlType::Q4_K
    );
}

/// A SentencePiece vocabulary (`tokenizer.ggml.model = "llama"`: pieces, scores, byte tokens,
/// control and user-defined tokens) written by gguf-py; expected ids from llama.cpp's tokenizer on
/// the same file (`scripts/make-decoder-fixtures.py spm`). Covers score-ordered merges, the `▁`
/// prefix after each special token, byte fallback for characters outside the vocabulary, and BOS.
#[test]
fn sentencepiece_vocabulary_tokenizes_as_llama_cpp() {
    use tunelab::io::gguf::GgufTokenizer;
    let g = GgufFile::open(fixture("spm_vocab.gguf")).unwrap();
    let tok = GgufTokenizer::from_gguf(&g).unwrap();
    assert!(tok.add_bos);
    let fx: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("spm_tokens.json")).unwrap())
            .unwrap();
    let cases = fx["cases"].as_array().unwrap();
    assert!(cases.len() >= 20);
    let mut failures = Vec::new();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let got = tok.tokenizer.encode(text, true).unwrap().get_ids().to_vec();
        if got != want {
            failures.push(format!("{text:?}: ours {got:?} llama.cpp {want:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

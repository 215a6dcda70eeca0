//! EmbeddingGemma loaded from llama.cpp GGUFs (`gemma-embedding`), as QMD's
//! `embeddinggemma-300M-Q8_0.gguf` is, against llama.cpp's own embeddings of the same files.
//!
//! tests/fixtures/gemma/tiny_gguf/ holds the tiny EmbeddingGemma-shaped model of tiny_llamacpp/
//! converted by llama.cpp's `convert_hf_to_gguf.py --sentence-transformers-dense-modules` to f32,
//! f16 and q8_0, with a SentencePiece tokenizer (BPE + byte fallback, `<bos>`…`<eos>`);
//! tests/fixtures/gemma/gguf.json holds llama.cpp's tokens and L2-normalised embeddings of 54 texts,
//! tokenized by llama.cpp from the GGUF (scripts/make-gemma-gguf-fixtures.py --gguf). The texts run
//! up to 388 tokens: far beyond the 8-token sliding window and beyond the file's context_length (256).

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use tunelab::io::gguf::{GgufFile, GgufWriter, MetaValue};
use tunelab::model::gemma::GemmaEncoder;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gemma")
}

fn gguf(ty: &str) -> PathBuf {
    fixture_dir().join(format!("tiny_gguf/tiny-{ty}.gguf"))
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-30)
}

fn reference() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture_dir().join("gguf.json")).unwrap())
        .unwrap()
}

/// Worst cosine of tunelab's embeddings of the GGUF against llama.cpp's.
fn worst_cosine(enc: &GemmaEncoder, texts: &[&str], expected: &[Vec<f32>]) -> f64 {
    // Batches of 5 mix lengths: padding must not change a text's vector.
    let ours = enc.embed_with_prompt(texts, None, 5).unwrap();
    ours.iter()
        .zip(expected)
        .map(|(a, b)| cosine(a, b))
        .fold(f64::MAX, f64::min)
}

#[test]
fn gguf_tokenizer_matches_llama_cpp() {
    let r = reference();
    let texts: Vec<String> = serde_json::from_value(r["texts"].clone()).unwrap();
    let tokens: Vec<Vec<i64>> = serde_json::from_value(r["tokens"].clone()).unwrap();
    let enc = GemmaEncoder::load_gguf(gguf("f32"), false, &Device::flex())
        .unwrap()
        .with_max_seq_len(1024)
        .unwrap();
    for (text, expected) in texts.iter().zip(&tokens) {
        let b = enc.tokenizer.encode_batch(&[text.as_str()]).unwrap();
        assert_eq!(
            &b.input_ids, expected,
            "token ids differ from llama.cpp's for {text:?}"
        );
    }
    assert!(
        tokens.iter().filter(|t| t.len() > 9).count() >= 40,
        "texts must exceed the sliding window"
    );
    assert!(
        tokens.iter().any(|t| t.len() > 256),
        "some texts exceed context_length"
    );
}

#[test]
fn gguf_embeddings_match_llama_cpp() {
    let r = reference();
    let texts: Vec<String> = serde_json::from_value(r["texts"].clone()).unwrap();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let mut report = Vec::new();
    // f32/f16 to 0.999 as issue 14 asks (f16 is what QMD-style users export); q8_0 is stated.
    for (ty, min) in [("f32", 0.9999), ("f16", 0.999), ("q8_0", 0.999)] {
        let expected: Vec<Vec<f32>> = serde_json::from_value(r[ty]["embeddings"].clone()).unwrap();
        for keep in [false, true] {
            let enc = GemmaEncoder::load_gguf(gguf(ty), keep, &Device::flex())
                .unwrap()
                .with_max_seq_len(1024)
                .unwrap();
            assert_eq!(enc.dim(), 32);
            assert_eq!(enc.model.dense.len(), 2, "dense_2 and dense_3");
            assert_eq!(enc.prompt("query"), Some("task: search result | query: "));
            let worst = worst_cosine(&enc, &refs, &expected);
            report.push(format!(
                "{ty} keep_quantized={keep}: worst cosine {worst:.7}"
            ));
            assert!(
                worst >= min,
                "{ty} (keep_quantized {keep}): worst cosine {worst} < {min}"
            );
        }
    }
    eprintln!("{}", report.join("\n"));
}

#[test]
fn q8_0_projections_stay_quantized_for_lora() {
    use tunelab::lora::AdaptableLinear;
    let enc = GemmaEncoder::load_gguf(gguf("q8_0"), true, &Device::flex()).unwrap();
    let l = &enc.model.transformer.layers[0];
    assert!(
        matches!(l.self_attn.q_proj, AdaptableLinear::Quantized(_)),
        "Q8_0 in the file, kept"
    );
    // ffn_down (48 columns, not a multiple of 32) is F16 in the file: f32 here.
    assert!(matches!(l.mlp.down_proj, AdaptableLinear::Base(_)));
    let plain = GemmaEncoder::load_gguf(gguf("q8_0"), false, &Device::flex()).unwrap();
    assert!(matches!(
        plain.model.transformer.layers[0].self_attn.q_proj,
        AdaptableLinear::Base(_)
    ));
    // Same weights either way (ggml's dequantization, bit for bit); the matmuls run on differently
    // laid out matrices, so the sums may round differently: 1e-5 absolute.
    let (a, b) = (
        enc.embed(&["A man is eating food."], 1).unwrap(),
        plain.embed(&["A man is eating food."], 1).unwrap(),
    );
    let diff = a[0]
        .iter()
        .zip(&b[0])
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(diff < 1e-5, "kept blocks vs dequantized: max |diff| {diff}");
}

/// Rewrite `src` with metadata and tensors changed by `edit`.
fn rewrite(
    src: &Path,
    dst: &Path,
    edit: impl Fn(&str, &mut Option<MetaValue>),
    drop_tensor: Option<&str>,
    reshape: Option<&str>,
) {
    let g = GgufFile::open(src).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in &g.metadata {
        let mut v = Some(v.clone());
        edit(k, &mut v);
        if let Some(v) = v {
            w.add_metadata(k, v);
        }
    }
    for t in &g.tensors {
        if Some(t.name.as_str()) == drop_tensor {
            continue;
        }
        let (shape, values) = g.tensor_f32(&t.name).unwrap();
        if Some(t.name.as_str()) == reshape {
            // Same values, rows and columns swapped in the header: a wrong shape.
            let swapped: Vec<usize> = shape.iter().rev().copied().collect();
            w.add_tensor(&t.name, &swapped, tunelab::io::gguf::GgmlType::F32, &values);
        } else {
            w.add_tensor(&t.name, &shape, tunelab::io::gguf::GgmlType::F32, &values);
        }
    }
    w.write(dst).unwrap();
}

#[test]
fn bad_ggufs_are_refused_naming_file_and_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let err = |p: &Path| {
        GemmaEncoder::load_gguf(p, false, &Device::flex())
            .unwrap_err()
            .to_string()
    };

    let wrong_arch = dir.path().join("llama.gguf");
    rewrite(
        &gguf("f32"),
        &wrong_arch,
        |k, v| {
            if k == "general.architecture" {
                *v = Some("llama".into())
            }
        },
        None,
        None,
    );
    let msg = err(&wrong_arch);
    assert!(
        msg.contains("llama.gguf") && msg.contains("'llama'") && msg.contains("gemma-embedding"),
        "{msg}"
    );

    for missing in [
        "blk.3.attn_q.weight",
        "blk.0.post_ffw_norm.weight",
        "output_norm.weight",
        "token_embd.weight",
    ] {
        let p = dir.path().join("missing.gguf");
        rewrite(&gguf("f32"), &p, |_, _| {}, Some(missing), None);
        let msg = err(&p);
        assert!(
            msg.contains("missing.gguf") && msg.contains(missing),
            "{missing}: {msg}"
        );
    }
    for wrong in [
        "blk.2.ffn_up.weight",
        "blk.5.attn_k.weight",
        "dense_3.weight",
    ] {
        let p = dir.path().join("shape.gguf");
        rewrite(&gguf("f32"), &p, |_, _| {}, None, Some(wrong));
        let msg = err(&p);
        assert!(
            msg.contains("shape.gguf") && msg.contains(wrong) && msg.contains("shape"),
            "{wrong}: {msg}"
        );
    }
    let p = dir.path().join("nokey.gguf");
    rewrite(
        &gguf("f32"),
        &p,
        |k, v| {
            if k == "gemma-embedding.attention.sliding_window" {
                *v = None
            }
        },
        None,
        None,
    );
    let msg = err(&p);
    assert!(
        msg.contains("nokey.gguf") && msg.contains("gemma-embedding.attention.sliding_window"),
        "{msg}"
    );
}

/// `tunelab embed --model FILE.gguf` runs the GGUF with EmbeddingGemma's prompts; `tunelab export
/// gguf` accepts the GGUF as its model; another architecture's GGUF is refused naming the file.
#[test]
fn cli_embeds_and_exports_from_a_gguf() {
    use std::process::Command;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"id\": \"a\", \"text\": \"A man is eating food.\"}\n{\"id\": 2, \"text\": \"A monkey is playing drums.\"}\n").unwrap();
    let output = dir.path().join("out.jsonl");
    let run = |args: &[&std::ffi::OsStr]| {
        Command::new(env!("CARGO_BIN_EXE_tunelab"))
            .args(args)
            .output()
            .unwrap()
    };
    let o = run(&[
        "embed".as_ref(),
        "--model".as_ref(),
        gguf("q8_0").as_os_str(),
        "--input".as_ref(),
        input.as_os_str(),
        "--output".as_ref(),
        output.as_os_str(),
        "--prompt-name".as_ref(),
        "query".as_ref(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let enc = GemmaEncoder::load_gguf(gguf("q8_0"), false, &Device::flex()).unwrap();
    let want = enc
        .embed_with_prompt(
            &["A man is eating food.", "A monkey is playing drums."],
            enc.prompt("query"),
            8,
        )
        .unwrap();
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (row, w) in rows.iter().zip(&want) {
        let got: Vec<f32> = serde_json::from_value(row["embedding"].clone()).unwrap();
        assert!(cosine(&got, w) > 0.999999, "CLI and library agree");
    }
    let out = dir.path().join("again.gguf");
    let o = run(&[
        "export".as_ref(),
        "gguf".as_ref(),
        "--model".as_ref(),
        gguf("q8_0").as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
        "--type".as_ref(),
        "f16".as_ref(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        GgufFile::open(&out).unwrap().architecture().unwrap(),
        "gemma-embedding"
    );

    let llama = dir.path().join("llama.gguf");
    rewrite(
        &gguf("f32"),
        &llama,
        |k, v| {
            if k == "general.architecture" {
                *v = Some("llama".into())
            }
        },
        None,
        None,
    );
    let o = run(&[
        "embed".as_ref(),
        "--model".as_ref(),
        llama.as_os_str(),
        "--input".as_ref(),
        input.as_os_str(),
        "--output".as_ref(),
        dir.path().join("x.jsonl").as_os_str(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("llama.gguf") && err.contains("gemma-embedding"),
        "{err}"
    );
}

/// `tunelab train embed --model FILE.gguf`: LoRA over the file's Q8_0 blocks and full fine-tuning
/// (dequantized) both run, lower nothing they should not, and export a folder that loads.
#[test]
fn train_embed_from_a_gguf_with_lora_and_in_full() {
    use std::process::Command;
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/pairs/pairs.jsonl");
    for (ty, lora) in [("q8_0", true), ("f16", false)] {
        let reports = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tunelab"));
        cmd.args(["train", "embed", "--model"])
            .arg(gguf(ty))
            .arg("--data")
            .arg(&data)
            .arg("--reports")
            .arg(reports.path());
        cmd.args([
            "--max-steps",
            "2",
            "--batch-size",
            "4",
            "--max-seq-length",
            "32",
            "--name",
            "g",
        ]);
        if lora {
            cmd.args(["--lora-rank", "4"]);
        }
        let o = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "{ty}: {}\n{stdout}",
            String::from_utf8_lossy(&o.stderr)
        );
        // LoRA trains a few thousand adapter weights; full fine-tuning every parameter.
        let line = stdout
            .lines()
            .find(|l| l.starts_with("memory estimate"))
            .expect("estimate printed");
        let counts: Vec<u64> = line
            .split(['(', ','])
            .filter_map(|p| p.split_whitespace().next().and_then(|n| n.parse().ok()))
            .collect();
        let [params, trainable] = counts[..] else {
            panic!("{line}")
        };
        assert_eq!(trainable == params, !lora, "{line}");
        assert!(trainable > 0, "{line}");
        let model = std::fs::read_dir(reports.path().join("g"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path()
            .join("model");
        let back = GemmaEncoder::load(&model, &Device::flex()).unwrap();
        assert_eq!(back.dim(), 32);
        assert_eq!(
            back.prompt("query"),
            Some("task: search result | query: "),
            "EmbeddingGemma's prompts travel"
        );
        let manifest = std::fs::read_to_string(model.join("tunelab_manifest.json")).unwrap();
        assert!(
            manifest.contains(&format!("tiny-{ty}.gguf")),
            "source recorded"
        );
    }
}

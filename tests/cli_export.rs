//! `tunelab export gguf` / `export gguf-lora` end to end. The encoder case runs on the bundled
//! all-MiniLM-L6-v2 (scripts/fetch-models.sh); llama.cpp's own parity checks are
//! scripts/check-gguf-embeddings.py and scripts/check-gguf-lora.py.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tunelab::io::gguf::{GgmlType, GgufFile};
use tunelab::io::safetensors::{SafetensorsFile, write_f32};

fn minilm() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2")
}

fn tunelab(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tunelab")).args(args).env("TUNELAB_DEVICE", "cpu").output().unwrap()
}

#[test]
fn exports_minilm_as_llama_cpp_bert_gguf_with_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let manifest = tmp.path().join("manifest.json");
    std::fs::write(&manifest, r#"{"governance": {"refused": 2, "trained_on": 40}}"#).unwrap();
    let out = tmp.path().join("minilm-q8.gguf");
    let o = tunelab(&[
        "export".as_ref(),
        "gguf".as_ref(),
        "--model".as_ref(),
        minilm().as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
        "--type".as_ref(),
        "q8_0".as_ref(),
        "--manifest".as_ref(),
        manifest.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["tensors"], 5 + 6 * 16, "embeddings (5) + 16 per block, no pooler");

    let g = GgufFile::open(&out).unwrap();
    assert_eq!(g.architecture().unwrap(), "bert");
    assert_eq!(g.get_int("bert.block_count").unwrap(), 6);
    assert_eq!(g.get_int("bert.context_length").unwrap(), 512);
    assert_eq!(g.get_int("bert.pooling_type").unwrap(), 1, "mean pooling from 1_Pooling/config.json");
    assert_eq!(g.get_int("tokenizer.ggml.cls_token_id").unwrap(), 101);
    assert_eq!(g.get_int("tokenizer.ggml.seperator_token_id").unwrap(), 102);
    let tokens = g.get_string_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(tokens.len(), 30522);
    assert_eq!(tokens[2003], "\u{2581}is");
    let m: serde_json::Value = serde_json::from_str(g.get_str("tunelab.manifest").unwrap()).unwrap();
    assert_eq!(m["manifest"]["governance"]["refused"], 2);

    // Weights: Q8_0 matrices close to the checkpoint, norms exactly it.
    let st = SafetensorsFile::open(minilm().join("model.safetensors")).unwrap();
    let (want, _) = st.read_f32("encoder.layer.3.attention.output.LayerNorm.weight").unwrap();
    assert_eq!(g.tensor_f32("blk.3.attn_output_norm.weight").unwrap().1, want);
    assert_eq!(g.tensor_info("blk.3.ffn_up.weight").unwrap().ggml_type, GgmlType::Q8_0);
    let (want, _) = st.read_f32("encoder.layer.3.intermediate.dense.weight").unwrap();
    let (shape, got) = g.tensor_f32("blk.3.ffn_up.weight").unwrap();
    assert_eq!(shape, vec![1536, 384]);
    let err = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    let amax = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(err > 0.0 && err <= amax / 127.0, "Q8_0 error {err} (max |w| {amax})");

    // A second export to the same file is refused and leaves it intact.
    let before = std::fs::read(&out).unwrap();
    let o = tunelab(&[
        "export".as_ref(),
        "gguf".as_ref(),
        "--model".as_ref(),
        minilm().as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists"));
    assert_eq!(std::fs::read(&out).unwrap(), before);
}

#[test]
fn exports_a_peft_adapter_for_a_gguf_base() {
    let tmp = tempfile::tempdir().unwrap();
    // A tiny llama-shaped base: hidden 8, 2 heads, 2 kv heads, one block.
    let base = tmp.path().join("base.gguf");
    let mut w = tunelab::io::gguf::GgufWriter::new();
    w.add_metadata("general.architecture", "llama");
    w.add_metadata("llama.attention.head_count", 2u32);
    w.add_metadata("llama.attention.head_count_kv", 2u32);
    w.add_tensor("blk.0.attn_q.weight", &[8, 32], GgmlType::F32, &[0.0; 256]);
    w.write(&base).unwrap();
    let peft = tmp.path().join("peft");
    std::fs::create_dir(&peft).unwrap();
    std::fs::write(peft.join("adapter_config.json"), r#"{"peft_type": "LORA", "r": 1, "lora_alpha": 2}"#).unwrap();
    let a: Vec<f32> = (0..32).map(|i| i as f32).collect();
    let b: Vec<f32> = (0..8).map(|i| i as f32).collect();
    write_f32(
        peft.join("adapter_model.safetensors"),
        &[
            ("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight".into(), vec![1, 32], a.clone()),
            ("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight".into(), vec![8, 1], b),
        ],
        None,
    )
    .unwrap();
    let out = tmp.path().join("adapter.gguf");
    let o = tunelab(&[
        "export".as_ref(),
        "gguf-lora".as_ref(),
        "--adapter".as_ref(),
        peft.as_os_str(),
        "--base".as_ref(),
        base.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let g = GgufFile::open(&out).unwrap();
    assert_eq!(g.get_str("general.type").unwrap(), "adapter");
    assert_eq!(g.get_f64("adapter.lora.alpha").unwrap(), 2.0);
    assert_eq!(g.tensor_f32("blk.0.attn_q.weight.lora_a").unwrap().1, a);
    // B's rows in llama.cpp's q permutation: per head of 4 rows, HF [0 1 2 3] -> [0 2 1 3].
    assert_eq!(g.tensor_f32("blk.0.attn_q.weight.lora_b").unwrap().1, vec![0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]);
}

//! tunelab's MLX-LM adapters against MLX-LM itself (fixtures from scripts/make-mlx-fixture.py:
//! MLX 0.32.4 CPU build, mlx-lm 0.32.2, on the tiny Llama).
//!
//! * tunelab's LoRA and DoRA adapters, loaded by `mlx_lm.tuner.utils.load_adapters`, gave the
//!   logits in reference.json; tunelab gives the same (≤ 1e-4 absolute), and `tunelab train lora
//!   --iters 0 --test` reports the test loss `mlx_lm.lora --test` computed (≤ 1e-3 relative,
//!   with and without `--mask-prompt`).
//! * tunelab's fused DoRA model (what `tunelab fuse` writes), loaded by `mlx_lm.load`, gave
//!   MLX-LM's logits; tunelab's merged model gives the same.
//! * Adapters MLX-LM trained (`mlx_lm.lora --train --fine-tune-type lora|dora`) read by
//!   `export::mlx::read` give MLX-LM's logits and test loss in tunelab.
//! * Full fine-tunes (`--fine-tune-type full`): tunelab's trained block weights loaded by
//!   `load_adapters`, and tunelab's model folder loaded by `mlx_lm.load` (its config.json as
//!   tunelab writes it, legacy RoPE keys included), give tunelab's logits; MLX-LM's own full
//!   fine-tune loads in tunelab with MLX-LM's logits and test loss.

use std::path::{Path, PathBuf};
use std::process::Command;

use burn::tensor::{Device, Int, Tensor, TensorData};
use tunelab::export::mlx;
use tunelab::model::decoder::CausalLm;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn fixtures() -> PathBuf {
    root().join("tests/fixtures/mlx")
}

fn reference() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("reference.json")).unwrap()).unwrap()
}

fn flat(v: &serde_json::Value) -> Vec<f32> {
    match v {
        serde_json::Value::Array(a) => a.iter().flat_map(flat).collect(),
        other => vec![other.as_f64().unwrap() as f32],
    }
}

fn tiny() -> CausalLm {
    CausalLm::load(root().join("tests/fixtures/decoder/tiny_llama"), &Device::flex()).unwrap()
}

fn logits(lm: &CausalLm, r: &serde_json::Value) -> Vec<f32> {
    let ids: Vec<i64> = flat(&r["ids"]).iter().map(|&v| v as i64).collect();
    let x = Tensor::<2, Int>::from_data(TensorData::new(ids, [2, 8]), &Device::flex());
    lm.model.forward(x, None, None).into_data().try_into_vec_as::<f32>().unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max)
}

/// `tunelab train lora --iters 0 --test` on the fixture's data with the adapter `dir`: the
/// `test_loss` line of its loss.jsonl.
fn tunelab_test_loss(dir: &Path, mask_prompt: bool) -> f64 {
    let out = tempfile::tempdir().unwrap();
    let (tiny, data, file) = (root().join("tests/fixtures/decoder/tiny_llama"), fixtures().join("data"), dir.join(mlx::WEIGHTS_FILE));
    let mut args = vec!["train", "lora", "--model", tiny.to_str().unwrap(), "--data", data.to_str().unwrap(), "--iters", "0", "--test", "--test-batches", "-1", "--batch-size", "2", "--resume-adapter-file", file.to_str().unwrap(), "--adapter-path", out.path().to_str().unwrap()];
    if mask_prompt {
        args.push("--mask-prompt");
    }
    let run = Command::new(env!("CARGO_BIN_EXE_tunelab")).args(&args).current_dir(root()).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let log = std::fs::read_to_string(out.path().join("loss.jsonl")).unwrap();
    let line = log.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).find(|v| v.get("test_loss").is_some()).expect("a test_loss line");
    line["test_loss"].as_f64().unwrap()
}

fn check_logits(name: &str, lm: &CausalLm, want: &serde_json::Value, r: &serde_json::Value, base: &[f32]) {
    let ours = logits(lm, r);
    let want = flat(want);
    let (d, effect) = (max_diff(&ours, &want), max_diff(&want, base));
    eprintln!("{name}: ours vs MLX-LM max |logit diff| {d:e}; adapter effect {effect}");
    assert!(effect > 0.05, "{name}: the adapter moves the logits ({effect})");
    assert!(d <= 1e-4, "{name}: ours vs MLX-LM {d}");
}

fn check_test_loss(name: &str, dir: &Path, mask_prompt: bool, want: f64) {
    let ours = tunelab_test_loss(dir, mask_prompt);
    let rel = (ours - want).abs() / want.abs();
    eprintln!("{name} (mask_prompt {mask_prompt}): test loss ours {ours:.6}, MLX-LM {want:.6}, relative diff {rel:e}; test ppl {:.4} vs {:.4}", ours.exp(), want.exp());
    assert!(rel <= 1e-3 && (ours.exp() - want.exp()).abs() / want.exp() <= 1e-3, "{name}: test loss {ours} vs MLX-LM {want}");
}

#[test]
fn our_lora_and_dora_adapters_give_mlx_lm_logits_and_test_loss() {
    let r = reference();
    let base = logits(&tiny(), &r);
    for kind in ["lora", "dora"] {
        let name = format!("tunelab_{kind}");
        let dir = fixtures().join(&name);
        let adapter = mlx::read(&dir).unwrap();
        assert_eq!(adapter.config.use_dora, kind == "dora");
        let mut lm = tiny();
        lm.model = lm.model.apply_adapter(&adapter).unwrap();
        check_logits(&name, &lm, &r[&name]["logits"], &r, &base);
        check_test_loss(&name, &dir, false, r[&name]["test_loss"].as_f64().unwrap());
        check_test_loss(&name, &dir, true, r[&name]["test_loss_mask_prompt"].as_f64().unwrap());
        if kind == "dora" {
            // What `tunelab fuse` writes, as MLX-LM loaded it.
            lm.model = lm.model.merged();
            check_logits("fused tunelab_dora", &lm, &r["fused_dora_logits"], &r, &base);
        }
    }
}

#[test]
fn adapters_mlx_lm_trained_load_in_tunelab() {
    let r = reference();
    let base = logits(&tiny(), &r);
    for kind in ["lora", "dora"] {
        let name = format!("mlx_{kind}");
        let dir = fixtures().join(&name);
        let adapter = mlx::read(&dir).unwrap();
        assert_eq!(adapter.config.use_dora, kind == "dora");
        assert_eq!(adapter.magnitudes.len(), if kind == "dora" { adapter.layers.len() } else { 0 });
        let mut lm = tiny();
        lm.model = lm.model.apply_adapter(&adapter).unwrap();
        check_logits(&name, &lm, &r[&name]["logits"], &r, &base);
        check_test_loss(&name, &dir, false, r[&name]["test_loss"].as_f64().unwrap());
    }
}

#[test]
fn full_fine_tunes_go_both_ways() {
    let r = reference();
    let base = logits(&tiny(), &r);
    for name in ["tunelab_full", "mlx_full"] {
        let dir = fixtures().join(name);
        let file = dir.join(mlx::WEIGHTS_FILE);
        let weights = mlx::read_full(&dir, &file).unwrap();
        assert!(weights.tensors.keys().all(|k| k.starts_with("model.layers.1.")), "{name}: the top block only");
        let mut lm = tiny();
        lm.model = lm.model.with_block_tensors(weights.tensors, &file).unwrap();
        check_logits(name, &lm, &r[name]["logits"], &r, &base);
        // `--iters 0 --test` reads the file as a full fine-tune from its own config.
        check_test_loss(name, &dir, false, r[name]["test_loss"].as_f64().unwrap());
        if name == "tunelab_full" {
            check_test_loss(name, &dir, true, r[name]["test_loss_mask_prompt"].as_f64().unwrap());
            // The model folder the run wrote beside it, as mlx_lm.load read it.
            check_logits("tunelab_full model folder", &lm, &r[name]["model_folder_logits"], &r, &base);
        }
    }
}

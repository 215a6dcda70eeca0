//! tunelab's PEFT adapters against PEFT itself (fixtures from scripts/make-peft-fixture.py:
//! PEFT 0.21's `save_pretrained` output on the tiny Llama, with PEFT's logits).
//!
//! * Reading: PEFT's folder, read by `export::peft::read` and applied by
//!   `Decoder::apply_adapter`, gives PEFT's logits (rsLoRA scale, one block of seven
//!   projections, `[r, in]` / `[out, r]` factors).
//! * Writing: our folder for the same adapter has PEFT's tensor names, shapes and dtype, and the
//!   config fields PEFT reads to rebuild the same layers.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor, TensorData};
use tunelab::export::peft;
use tunelab::io::safetensors::SafetensorsFile;
use tunelab::model::decoder::CausalLm;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/decoder")
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn flat(v: &serde_json::Value) -> Vec<f32> {
    match v {
        serde_json::Value::Array(a) => a.iter().flat_map(flat).collect(),
        other => vec![other.as_f64().unwrap() as f32],
    }
}

#[test]
fn peft_adapter_gives_peft_logits_and_our_writer_matches_peft_files() {
    let dir = fixtures().join("peft_tiny_llama");
    let reference = json(&dir.join("logits.json"));
    let adapter = peft::read(&dir).unwrap();
    assert!(adapter.config.use_rslora && adapter.config.rank == 4 && adapter.config.alpha == 8.0);
    assert_eq!(adapter.config.scale(), 4.0, "rsLoRA: alpha / sqrt(r)");
    assert_eq!(adapter.layers.len(), 7);
    assert!(adapter.layers.keys().all(|k| k.starts_with("model.layers.1.")));

    let mut lm = CausalLm::load(fixtures().join("tiny_llama"), &Device::flex()).unwrap();
    lm.model = lm.model.apply_adapter(&adapter).unwrap();
    let ids: Vec<i64> = flat(&reference["ids"]).iter().map(|&v| v as i64).collect();
    let x = Tensor::<2, Int>::from_data(TensorData::new(ids, [2, 8]), &Device::flex());
    let ours: Vec<f32> = lm.model.forward(x, None, None).into_data().try_into_vec_as::<f32>().unwrap();
    let (want, base) = (flat(&reference["logits"]), flat(&reference["base_logits"]));
    let worst = ours.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    let effect = want.iter().zip(&base).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    eprintln!("PEFT {} adapter: ours vs PEFT max |diff| {worst:e}; adapter effect {effect}", reference["peft"]);
    assert!(effect > 1.0, "the fixture's adapter moves the logits ({effect})");
    assert!(worst < 1e-4, "ours vs PEFT: {worst}");

    // Our writer: the same names, shapes and dtype as PEFT's file, and the config fields PEFT uses.
    let tmp = tempfile::tempdir().unwrap();
    peft::write(tmp.path(), &adapter, "tests/fixtures/decoder/tiny_llama").unwrap();
    let (theirs, mine) = (SafetensorsFile::open(dir.join(peft::WEIGHTS_FILE)).unwrap(), SafetensorsFile::open(tmp.path().join(peft::WEIGHTS_FILE)).unwrap());
    assert_eq!(mine.names(), theirs.names());
    for n in theirs.names() {
        assert_eq!(mine.shape(&n), theirs.shape(&n), "{n}");
        assert_eq!(mine.read_f32(&n).unwrap(), theirs.read_f32(&n).unwrap(), "{n}");
    }
    let (c_theirs, c_mine) = (json(&dir.join(peft::CONFIG_FILE)), json(&tmp.path().join(peft::CONFIG_FILE)));
    for field in ["peft_type", "task_type", "r", "use_rslora", "use_dora", "bias", "fan_in_fan_out", "layers_to_transform", "lora_dropout"] {
        assert_eq!(c_mine[field], c_theirs[field], "adapter_config.json field {field}");
    }
    assert_eq!(c_mine["lora_alpha"].as_f64(), c_theirs["lora_alpha"].as_f64());
    let sorted = |v: &serde_json::Value| {
        let mut s: Vec<String> = v.as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect();
        s.sort();
        s
    };
    assert_eq!(sorted(&c_mine["target_modules"]), sorted(&c_theirs["target_modules"]));
}

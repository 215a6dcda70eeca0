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

/// Largest |a - b| and largest |b| (the scale the difference is judged against).
fn max_diff(a: &[f32], b: &[f32]) -> (f32, f32) {
    assert_eq!(a.len(), b.len());
    let d = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    (d, b.iter().map(|v| v.abs()).fold(0.0f32, f32::max))
}

/// PEFT's DoRA adapter (scripts/make-peft-fixture.py --dora: both blocks, seven projections,
/// magnitudes moved away from the row norms) read by `peft::read` and applied by
/// `Decoder::apply_adapter`: PEFT's logits (≤ 1e-4), PEFT's merged logits after `merged()`, and
/// PEFT's gradients for the factors and magnitudes (the norm detached; relative 1e-3 of the
/// largest gradient). Our writer gives PEFT's names, shapes and values back.
#[test]
fn peft_dora_adapter_gives_peft_logits_gradients_and_merge() {
    use tunelab::lora::AdaptableLinear;
    let dir = fixtures().join("peft_dora_tiny_llama");
    let reference = json(&dir.join("logits.json"));
    let adapter = peft::read(&dir).unwrap();
    assert!(adapter.config.use_dora && !adapter.config.use_rslora && adapter.config.rank == 4);
    assert_eq!((adapter.layers.len(), adapter.magnitudes.len()), (14, 14));
    assert_eq!(adapter.magnitudes["model.layers.1.mlp.down_proj"].len(), 64, "one magnitude per output row");

    let device = Device::flex().autodiff();
    let mut lm = CausalLm::load(fixtures().join("tiny_llama"), &device).unwrap();
    lm.model = lm.model.apply_adapter(&adapter).unwrap();
    let ids: Vec<i64> = flat(&reference["ids"]).iter().map(|&v| v as i64).collect();
    let x = Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [2, 8]), &device);
    let logits = lm.model.forward(x, None, None);
    let ours: Vec<f32> = logits.clone().into_data().try_into_vec_as::<f32>().unwrap();
    let (want, base) = (flat(&reference["logits"]), flat(&reference["base_logits"]));
    let (worst, _) = max_diff(&ours, &want);
    let (effect, _) = max_diff(&want, &base);
    eprintln!("PEFT {} DoRA adapter: ours vs PEFT max |diff| {worst:e}; adapter effect {effect}", reference["peft"]);
    assert!(effect > 1.0, "the fixture's adapter moves the logits ({effect})");
    assert!(worst <= 1e-4, "DoRA logits, ours vs PEFT: {worst}");

    // Gradients of sum(logits * sin(0.37 k)).
    let n = ours.len();
    let w: Vec<f32> = (0..n).map(|k| (0.37 * k as f64).sin() as f32).collect();
    let weights = Tensor::<1>::from_data(TensorData::new(w, [n]), &device).reshape(logits.dims());
    let grads = (logits * weights).sum().backward();
    let mut checked = 0;
    for (i, layer) in lm.model.layers.iter().enumerate() {
        for (rel, slot) in layer.projections() {
            let path = format!("model.layers.{i}.{rel}");
            let AdaptableLinear::Lora(l) = slot else { panic!("{path} is adapted") };
            let m = l.magnitude.as_ref().expect("DoRA magnitude");
            for (kind, got) in [
                ("lora_A", l.lora_a.val().grad(&grads).map(|g| g.into_data().try_into_vec_as::<f32>().unwrap())),
                ("lora_B", l.lora_b.val().grad(&grads).map(|g| g.into_data().try_into_vec_as::<f32>().unwrap())),
                ("lora_magnitude_vector", m.val().grad(&grads).map(|g| g.into_data().try_into_vec_as::<f32>().unwrap())),
            ] {
                let got = got.unwrap_or_else(|| panic!("{path}.{kind} has a gradient"));
                let Some(r) = reference["grads"].get(format!("{path}.{kind}")) else { continue };
                let (d, scale) = max_diff(&got, &flat(r));
                eprintln!("{path}.{kind}: gradient max |diff| {d:e} (largest {scale:e})");
                assert!(d <= 1e-3 * scale, "{path}.{kind}: gradient differs from PEFT's by {d} (largest {scale})");
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 6, "two layers x (A, B, m) compared");

    // Merged (what `tunelab fuse` writes) against PEFT's merge_and_unload.
    let merged = lm.model.clone().merged();
    let x = Tensor::<2, Int>::from_data(TensorData::new(ids, [2, 8]), &device);
    let fused: Vec<f32> = merged.forward(x, None, None).into_data().try_into_vec_as::<f32>().unwrap();
    let (d, _) = max_diff(&fused, &flat(&reference["merged_logits"]));
    eprintln!("merged: ours vs PEFT merge_and_unload max |diff| {d:e}");
    assert!(d <= 1e-4, "merged DoRA, ours vs PEFT: {d}");

    // Our writer: PEFT's names, shapes and values, and use_dora in the config.
    let tmp = tempfile::tempdir().unwrap();
    peft::write(tmp.path(), &adapter, "tests/fixtures/decoder/tiny_llama").unwrap();
    let (theirs, mine) = (SafetensorsFile::open(dir.join(peft::WEIGHTS_FILE)).unwrap(), SafetensorsFile::open(tmp.path().join(peft::WEIGHTS_FILE)).unwrap());
    assert_eq!(mine.names(), theirs.names());
    for n in theirs.names() {
        assert_eq!(mine.shape(&n), theirs.shape(&n), "{n}");
        assert_eq!(mine.read_f32(&n).unwrap(), theirs.read_f32(&n).unwrap(), "{n}");
    }
    assert_eq!(json(&tmp.path().join(peft::CONFIG_FILE))["use_dora"], true);
}

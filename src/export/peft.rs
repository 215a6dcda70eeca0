//! PEFT LoRA folders: `adapter_config.json` + `adapter_model.safetensors`, what
//! `PeftModel.from_pretrained(base, dir)` loads.
//!
//! Tensor keys are `base_model.model.{path}.lora_A.weight` (`[r, in]`) and `...lora_B.weight`
//! (`[out, r]`), where `path` is the module path inside the transformers model
//! (`model.layers.0.self_attn.q_proj`). PEFT computes `W·x + (lora_alpha / r)·B·A·x`
//! (`lora_alpha / √r` with `use_rslora`). A DoRA adapter (`use_dora: true`) adds
//! `...{path}.lora_magnitude_vector` (`[out]`, no `.weight` suffix) per layer. [`AdapterWeights::metadata`] (our manifest: training
//! config, governance audit) goes into the safetensors header next to `format: pt`.
//!
//! ```
//! use tunelab::export::peft;
//! use tunelab::lora::{AdapterWeights, LoraConfig, LoraFactors};
//! let mut a = AdapterWeights::new(LoraConfig { rank: 1, alpha: 2.0, ..LoraConfig::default() });
//! a.insert("model.layers.0.self_attn.q_proj", LoraFactors { a: vec![1.0, 2.0], a_shape: [1, 2], b: vec![3.0], b_shape: [1, 1] }).unwrap();
//! let dir = tempfile::tempdir().unwrap();
//! peft::write(dir.path(), &a, "HuggingFaceTB/SmolLM2-135M-Instruct").unwrap();
//! assert_eq!(peft::read(dir.path()).unwrap().layers, a.layers);
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use super::{AdapterFileError, read_json, write_json};
use crate::io::safetensors::{SafetensorsFile, write_f32};
use crate::lora::{AdapterWeights, LoraConfig, LoraFactors};

/// The config file PEFT reads.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// The weights file PEFT reads.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
const PREFIX: &str = "base_model.model.";

/// Layer index and module name of `model.layers.{i}.self_attn.q_proj` → `(i, "q_proj")`.
fn layer_and_name(path: &str) -> Option<(usize, &str)> {
    let rest = path.split(".layers.").nth(1).or_else(|| path.strip_prefix("layers."))?;
    let (i, _) = rest.split_once('.')?;
    Some((i.parse().ok()?, path.rsplit('.').next()?))
}

/// `target_modules` and `layers_to_transform` that select exactly the adapted layers: module
/// names plus layer indices when every adapted layer has the same set, else the full paths
/// (PEFT matches a target as a suffix of the module path).
fn targets(adapter: &AdapterWeights) -> (Vec<String>, Option<Vec<usize>>) {
    let mut per_layer: BTreeMap<usize, BTreeSet<&str>> = BTreeMap::new();
    for path in adapter.layers.keys() {
        match layer_and_name(path) {
            Some((i, name)) => {
                per_layer.entry(i).or_default().insert(name);
            }
            None => return (adapter.layers.keys().cloned().collect(), None),
        }
    }
    let sets: BTreeSet<&BTreeSet<&str>> = per_layer.values().collect();
    if sets.len() == 1 {
        let names = sets.into_iter().next().unwrap().iter().map(|s| s.to_string()).collect();
        (names, Some(per_layer.keys().copied().collect()))
    } else {
        (adapter.layers.keys().cloned().collect(), None)
    }
}

/// Write `adapter` as a PEFT folder in `dir` (created if missing; the two files are replaced),
/// for a causal LM (`task_type: CAUSAL_LM`).
pub fn write(dir: &Path, adapter: &AdapterWeights, base_model: &str) -> Result<(), AdapterFileError> {
    write_task(dir, adapter, base_model, "CAUSAL_LM")
}

/// [`write()`] with PEFT's `task_type` (`FEATURE_EXTRACTION` for an encoder's adapter, which PEFT
/// then wraps as `PeftModelForFeatureExtraction`).
pub fn write_task(dir: &Path, adapter: &AdapterWeights, base_model: &str, task_type: &str) -> Result<(), AdapterFileError> {
    std::fs::create_dir_all(dir).map_err(|source| AdapterFileError::Io { path: dir.to_path_buf(), source })?;
    let c = &adapter.config;
    let (target_modules, layers_to_transform) = targets(adapter);
    let config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": task_type,
        "base_model_name_or_path": base_model,
        "r": c.rank,
        "lora_alpha": c.alpha,
        "lora_dropout": c.dropout,
        "use_rslora": c.use_rslora,
        "use_dora": c.use_dora,
        "target_modules": target_modules,
        "layers_to_transform": layers_to_transform,
        "bias": "none",
        "fan_in_fan_out": false,
        "init_lora_weights": true,
        "inference_mode": true,
        "modules_to_save": null,
    });
    write_json(&dir.join(CONFIG_FILE), &config)?;
    adapter.check_dora().map_err(|source| AdapterFileError::Lora { path: dir.join(WEIGHTS_FILE), source })?;
    let mut tensors = Vec::with_capacity(3 * adapter.layers.len());
    for (path, f) in &adapter.layers {
        tensors.push((format!("{PREFIX}{path}.lora_A.weight"), f.a_shape.to_vec(), f.a.clone()));
        tensors.push((format!("{PREFIX}{path}.lora_B.weight"), f.b_shape.to_vec(), f.b.clone()));
        if let Some(m) = adapter.magnitudes.get(path) {
            tensors.push((format!("{PREFIX}{path}.lora_magnitude_vector"), vec![m.len()], m.clone()));
        }
    }
    let mut meta: HashMap<String, String> = adapter.metadata.clone().into_iter().collect();
    // transformers / PEFT refuse safetensors files without `format` metadata.
    meta.insert("format".into(), "pt".into());
    write_f32(dir.join(WEIGHTS_FILE), &tensors, Some(meta))?;
    Ok(())
}

/// Read a PEFT LoRA folder. `num_layers` is -1 (PEFT does not record it); the header metadata
/// other than `format` comes back as [`AdapterWeights::metadata`].
pub fn read(dir: &Path) -> Result<AdapterWeights, AdapterFileError> {
    let config_path = dir.join(CONFIG_FILE);
    let json = read_json(&config_path)?;
    let field = |name: &str, reason: &str| AdapterFileError::Field { path: config_path.clone(), field: name.into(), reason: reason.into() };
    if json["peft_type"].as_str() != Some("LORA") {
        return Err(field("peft_type", "only LORA adapters are supported"));
    }
    if json["fan_in_fan_out"].as_bool() == Some(true) {
        return Err(field("fan_in_fan_out", "transposed (Conv1D) layers are not supported"));
    }
    let rank = json["r"].as_u64().ok_or_else(|| field("r", "missing or not a positive integer"))? as usize;
    let alpha = json["lora_alpha"].as_f64().ok_or_else(|| field("lora_alpha", "missing or not a number"))?;
    let config = LoraConfig {
        rank,
        alpha,
        dropout: json["lora_dropout"].as_f64().unwrap_or(0.0),
        use_rslora: json["use_rslora"].as_bool().unwrap_or(false),
        target_modules: match &json["target_modules"] {
            serde_json::Value::Array(a) => a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
            serde_json::Value::String(s) => vec![s.clone()],
            _ => Vec::new(),
        },
        num_layers: -1,
        use_dora: json["use_dora"].as_bool().unwrap_or(false),
    };
    let weights_path = dir.join(WEIGHTS_FILE);
    let file = SafetensorsFile::open(&weights_path)?;
    let mut adapter = AdapterWeights::new(config);
    let bad = |tensor: &str, reason: String| AdapterFileError::Tensor { path: weights_path.clone(), tensor: tensor.into(), reason };
    let mut pending: BTreeMap<String, (Option<(Vec<f32>, [usize; 2])>, Option<(Vec<f32>, [usize; 2])>)> = BTreeMap::new();
    let mut magnitudes: Vec<(String, String)> = Vec::new();
    for name in file.names() {
        if let Some(path) = name.strip_prefix(PREFIX).and_then(|n| n.strip_suffix(".lora_magnitude_vector")) {
            magnitudes.push((path.to_string(), name.clone()));
            continue;
        }
        let (path, which) = match name.strip_prefix(PREFIX).and_then(|n| {
            n.strip_suffix(".lora_A.weight").map(|p| (p, 0)).or_else(|| n.strip_suffix(".lora_B.weight").map(|p| (p, 1)))
        }) {
            Some(x) => x,
            None => return Err(bad(&name, "not a LoRA factor (expected base_model.model.<module>.lora_A/lora_B.weight or .lora_magnitude_vector)".into())),
        };
        let (values, shape) = file.read_f32(&name)?;
        let shape: [usize; 2] = shape.try_into().map_err(|s: Vec<usize>| bad(&name, format!("shape {s:?} is not 2-D")))?;
        let slot = pending.entry(path.to_string()).or_default();
        if which == 0 { slot.0 = Some((values, shape)) } else { slot.1 = Some((values, shape)) }
    }
    for (path, (a, b)) in pending {
        let (Some((a, a_shape)), Some((b, b_shape))) = (a, b) else {
            return Err(bad(&format!("{PREFIX}{path}"), "has only one of lora_A / lora_B".into()));
        };
        adapter
            .insert(&path, LoraFactors { a, a_shape, b, b_shape })
            .map_err(|source| AdapterFileError::Lora { path: weights_path.clone(), source })?;
    }
    for (path, name) in magnitudes {
        let (values, shape) = file.read_f32(&name)?;
        if shape.len() != 1 {
            return Err(bad(&name, format!("shape {shape:?} is not 1-D")));
        }
        adapter.insert_magnitude(&path, values).map_err(|source| AdapterFileError::Lora { path: weights_path.clone(), source })?;
    }
    adapter.check_dora().map_err(|source| AdapterFileError::Lora { path: weights_path.clone(), source })?;
    if let Some(meta) = file.header_metadata() {
        adapter.metadata = meta.iter().filter(|(k, _)| *k != "format").map(|(k, v)| (k.clone(), v.clone())).collect();
    }
    Ok(adapter)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adapter() -> AdapterWeights {
        let mut a = AdapterWeights::new(LoraConfig { rank: 2, alpha: 16.0, dropout: 0.05, use_rslora: true, ..LoraConfig::default() });
        for (i, path) in ["model.layers.2.self_attn.q_proj", "model.layers.2.mlp.down_proj", "model.layers.3.self_attn.q_proj", "model.layers.3.mlp.down_proj"].iter().enumerate() {
            let v = |n: usize, k: usize| (0..n).map(|j| (j as f32 + 0.5) * 0.1 - k as f32).collect::<Vec<_>>();
            a.insert(path, LoraFactors { a: v(6, i), a_shape: [2, 3], b: v(8, i + 7), b_shape: [4, 2] }).unwrap();
        }
        a.metadata.insert("tunelab_manifest".into(), r#"{"audit":{"kept":3}}"#.into());
        a
    }

    #[test]
    fn round_trip_keeps_factors_config_and_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let a = adapter();
        write(dir.path(), &a, "tiny").unwrap();
        let back = read(dir.path()).unwrap();
        assert_eq!(back.layers, a.layers, "factors identical");
        assert_eq!(back.metadata, a.metadata, "manifest travels in the header");
        assert_eq!((back.config.rank, back.config.alpha, back.config.dropout, back.config.use_rslora), (2, 16.0, 0.05, true));
        // PEFT's names and layouts.
        let f = SafetensorsFile::open(dir.path().join(WEIGHTS_FILE)).unwrap();
        assert_eq!(f.shape("base_model.model.model.layers.2.self_attn.q_proj.lora_A.weight"), Some(&[2usize, 3][..]));
        assert_eq!(f.shape("base_model.model.model.layers.3.mlp.down_proj.lora_B.weight"), Some(&[4usize, 2][..]));
        assert_eq!(f.header_metadata().unwrap()["format"], "pt");
        let cfg = read_json(&dir.path().join(CONFIG_FILE)).unwrap();
        assert_eq!(cfg["target_modules"], serde_json::json!(["down_proj", "q_proj"]));
        assert_eq!(cfg["layers_to_transform"], serde_json::json!([2, 3]));
        assert_eq!((cfg["peft_type"].as_str(), cfg["task_type"].as_str(), cfg["r"].as_u64()), (Some("LORA"), Some("CAUSAL_LM"), Some(2)));
    }

    #[test]
    fn uneven_targets_use_full_paths_and_bad_files_are_named() {
        let mut a = adapter();
        a.layers.remove("model.layers.3.mlp.down_proj");
        assert_eq!(targets(&a).0.len(), 3);
        assert_eq!(targets(&a).1, None);
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &a, "tiny").unwrap();
        let mut cfg = read_json(&dir.path().join(CONFIG_FILE)).unwrap();
        cfg["use_dora"] = serde_json::json!(true);
        write_json(&dir.path().join(CONFIG_FILE), &cfg).unwrap();
        let err = read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("adapter_model.safetensors") && err.contains("magnitude vector"), "DoRA config without magnitudes: {err}");
        cfg["use_dora"] = serde_json::json!(false);
        cfg["fan_in_fan_out"] = serde_json::json!(true);
        write_json(&dir.path().join(CONFIG_FILE), &cfg).unwrap();
        let err = read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("adapter_config.json") && err.contains("fan_in_fan_out"), "{err}");
    }

    #[test]
    fn dora_round_trip_keeps_magnitudes_under_peft_names() {
        let mut a = adapter();
        a.config.use_dora = true;
        for (i, (path, f)) in a.layers.clone().iter().enumerate() {
            a.insert_magnitude(path, (0..f.b_shape[0]).map(|j| 1.0 + (i * 10 + j) as f32 * 0.01).collect()).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &a, "tiny").unwrap();
        let back = read(dir.path()).unwrap();
        assert!(back.config.use_dora);
        assert_eq!(back.magnitudes, a.magnitudes);
        let f = SafetensorsFile::open(dir.path().join(WEIGHTS_FILE)).unwrap();
        assert_eq!(f.shape("base_model.model.model.layers.2.mlp.down_proj.lora_magnitude_vector"), Some(&[4usize][..]));
        assert_eq!(read_json(&dir.path().join(CONFIG_FILE)).unwrap()["use_dora"], true);
        // A magnitude missing for one layer is named.
        a.magnitudes.remove("model.layers.3.mlp.down_proj");
        let err = write(tempfile::tempdir().unwrap().path(), &a, "tiny").unwrap_err().to_string();
        assert!(err.contains("model.layers.3.mlp.down_proj"), "{err}");
    }
}

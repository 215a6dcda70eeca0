//! MLX-LM LoRA folders: `adapter_config.json` + `adapters.safetensors`, what
//! `mlx_lm.generate --adapter-path DIR` and `mlx_lm.fuse` load (`mlx_lm/tuner/utils.py`,
//! `load_adapters`).
//!
//! MLX-LM's `LoRALinear` computes `y = W·x + scale·(x·lora_a)·lora_b` with `lora_a` `[in, r]`
//! and `lora_b` `[r, out]`: PEFT's factors transposed, and a `scale` that multiplies directly
//! (PEFT's `alpha / r`). Keys are `{path}.lora_a` / `{path}.lora_b` with the module path inside
//! the model (`model.layers.0.self_attn.q_proj`). The config carries `fine_tune_type`,
//! `num_layers` (blocks counted from the top) and `lora_parameters: {rank, scale, dropout,
//! keys}`, `keys` being module paths inside a block (`self_attn.q_proj`). Extra fields (our
//! training options) may be added by the caller; MLX-LM ignores what it does not use.
//! A DoRA adapter has `fine_tune_type: "dora"` and a magnitude `{path}.m` (`[out]`) per layer
//! (`mlx_lm/tuner/dora.py`'s `DoRALinear.m`).
//!
//! ```
//! use tunelab::export::mlx;
//! use tunelab::lora::{AdapterWeights, LoraConfig, LoraFactors};
//! let mut a = AdapterWeights::new(LoraConfig { rank: 1, alpha: 2.0, ..LoraConfig::default() });
//! a.insert("model.layers.0.self_attn.q_proj", LoraFactors { a: vec![1.0, 2.0], a_shape: [1, 2], b: vec![3.0], b_shape: [1, 1] }).unwrap();
//! let dir = tempfile::tempdir().unwrap();
//! mlx::write(dir.path(), &a, serde_json::json!({})).unwrap();
//! assert_eq!(mlx::read(dir.path()).unwrap().layers, a.layers);
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use super::{AdapterFileError, read_json, transpose, write_json};
use crate::io::safetensors::{SafetensorsFile, write_f32};
use crate::lora::{AdapterWeights, LoraConfig, LoraFactors};

/// The config file MLX-LM reads.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// The weights file MLX-LM reads.
pub const WEIGHTS_FILE: &str = "adapters.safetensors";

/// The module path inside a block: `model.layers.3.mlp.up_proj` → `mlp.up_proj`.
fn block_key(path: &str) -> &str {
    match path.split_once(".layers.").or_else(|| path.strip_prefix("layers.").map(|r| ("", r))) {
        Some((_, rest)) => rest.split_once('.').map_or(rest, |(_, k)| k),
        None => path,
    }
}

/// Write only the weights (`adapters.safetensors`-style) to `path`: what the trainer saves
/// every `save_every` iterations.
pub fn write_weights(path: &Path, adapter: &AdapterWeights) -> Result<(), AdapterFileError> {
    adapter.check_dora().map_err(|source| AdapterFileError::Lora { path: path.to_path_buf(), source })?;
    let mut tensors = Vec::with_capacity(3 * adapter.layers.len());
    for (p, f) in &adapter.layers {
        let ([r, in_f], [out_f, _]) = (f.a_shape, f.b_shape);
        tensors.push((format!("{p}.lora_a"), vec![in_f, r], transpose(&f.a, r, in_f)));
        tensors.push((format!("{p}.lora_b"), vec![r, out_f], transpose(&f.b, out_f, r)));
        if let Some(m) = adapter.magnitudes.get(p) {
            tensors.push((format!("{p}.m"), vec![m.len()], m.clone()));
        }
    }
    let mut meta: HashMap<String, String> = adapter.metadata.clone().into_iter().collect();
    meta.insert("format".into(), "mlx".into());
    write_f32(path, &tensors, Some(meta))?;
    Ok(())
}

/// The `adapter_config.json` MLX-LM needs, merged over `extra` (fields of `extra` that MLX-LM
/// also sets are overwritten).
pub fn config_json(adapter: &AdapterWeights, extra: serde_json::Value) -> serde_json::Value {
    let keys: BTreeSet<&str> = adapter.layers.keys().map(|p| block_key(p)).collect();
    let c = &adapter.config;
    let mut json = match extra {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    json.insert("fine_tune_type".into(), if c.use_dora { "dora" } else { "lora" }.into());
    json.insert("num_layers".into(), c.num_layers.into());
    json.insert(
        "lora_parameters".into(),
        serde_json::json!({ "rank": c.rank, "scale": c.scale(), "dropout": c.dropout, "keys": keys }),
    );
    serde_json::Value::Object(json)
}

/// Write `adapter` as an MLX-LM folder in `dir` (created if missing; the two files are
/// replaced). `extra` adds fields to `adapter_config.json` (the training options, as
/// `mlx_lm.lora` saves its arguments there).
pub fn write(dir: &Path, adapter: &AdapterWeights, extra: serde_json::Value) -> Result<(), AdapterFileError> {
    std::fs::create_dir_all(dir).map_err(|source| AdapterFileError::Io { path: dir.to_path_buf(), source })?;
    write_json(&dir.join(CONFIG_FILE), &config_json(adapter, extra))?;
    write_weights(&dir.join(WEIGHTS_FILE), adapter)
}

/// Read an MLX-LM LoRA folder (`dir/adapter_config.json` + `dir/adapters.safetensors`).
pub fn read(dir: &Path) -> Result<AdapterWeights, AdapterFileError> {
    read_with_weights(dir, &dir.join(WEIGHTS_FILE))
}

/// Read the config of `dir` with the weights of another file of the same run (a numbered
/// `0000100_adapters.safetensors` or a checkpoint's).
///
/// The scale is stored as `alpha = scale · rank` without rsLoRA, so [`LoraConfig::scale`]
/// gives MLX-LM's scale back.
pub fn read_with_weights(dir: &Path, weights_path: &Path) -> Result<AdapterWeights, AdapterFileError> {
    let config_path = dir.join(CONFIG_FILE);
    let json = read_json(&config_path)?;
    let field = |name: &str, reason: &str| AdapterFileError::Field { path: config_path.clone(), field: name.into(), reason: reason.into() };
    let use_dora = match json["fine_tune_type"].as_str().unwrap_or("lora") {
        "lora" => false,
        "dora" => true,
        other => return Err(field("fine_tune_type", &format!("'{other}' is not an adapter (lora or dora); a full fine-tune's weights are read by mlx::read_full"))),
    };
    let p = &json["lora_parameters"];
    let rank = p["rank"].as_u64().ok_or_else(|| field("lora_parameters.rank", "missing or not a positive integer"))? as usize;
    let scale = p["scale"].as_f64().ok_or_else(|| field("lora_parameters.scale", "missing or not a number"))?;
    let config = LoraConfig {
        rank,
        alpha: scale * rank as f64,
        dropout: p["dropout"].as_f64().unwrap_or(0.0),
        use_rslora: false,
        target_modules: p["keys"].as_array().map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect()).unwrap_or_default(),
        num_layers: json["num_layers"].as_i64().unwrap_or(-1),
        use_dora,
    };
    let file = SafetensorsFile::open(weights_path)?;
    let bad = |tensor: &str, reason: String| AdapterFileError::Tensor { path: weights_path.to_path_buf(), tensor: tensor.into(), reason };
    let mut pending: BTreeMap<String, [Option<(Vec<f32>, [usize; 2])>; 2]> = BTreeMap::new();
    let mut magnitudes = Vec::new();
    for name in file.names() {
        if let Some(path) = name.strip_suffix(".m") {
            let (values, shape) = file.read_f32(&name)?;
            if shape.len() != 1 {
                return Err(bad(&name, format!("shape {shape:?} is not 1-D")));
            }
            magnitudes.push((path.to_string(), values));
            continue;
        }
        let Some((path, which)) = name.strip_suffix(".lora_a").map(|p| (p, 0)).or_else(|| name.strip_suffix(".lora_b").map(|p| (p, 1))) else {
            return Err(bad(&name, "not a LoRA factor (expected <module>.lora_a / <module>.lora_b / <module>.m)".into()));
        };
        let (values, shape) = file.read_f32(&name)?;
        let shape: [usize; 2] = shape.try_into().map_err(|s: Vec<usize>| bad(&name, format!("shape {s:?} is not 2-D")))?;
        pending.entry(path.to_string()).or_default()[which] = Some((values, shape));
    }
    let mut adapter = AdapterWeights::new(config);
    for (path, [a, b]) in pending {
        let (Some((a, [in_f, r])), Some((b, [r2, out_f]))) = (a, b) else {
            return Err(bad(&path, "has only one of lora_a / lora_b".into()));
        };
        // Back to PEFT's layout: A [r, in], B [out, r].
        let f = LoraFactors { a: transpose(&a, in_f, r), a_shape: [r, in_f], b: transpose(&b, r2, out_f), b_shape: [out_f, r2] };
        adapter.insert(&path, f).map_err(|source| AdapterFileError::Lora { path: weights_path.to_path_buf(), source })?;
    }
    let lora_err = |source| AdapterFileError::Lora { path: weights_path.to_path_buf(), source };
    for (path, m) in magnitudes {
        adapter.insert_magnitude(&path, m).map_err(lora_err)?;
    }
    adapter.check_dora().map_err(lora_err)?;
    if let Some(meta) = file.header_metadata() {
        adapter.metadata = meta.iter().filter(|(k, _)| *k != "format").map(|(k, v)| (k.clone(), v.clone())).collect();
    }
    Ok(adapter)
}

/// The weights of a full fine-tune (`fine_tune_type: "full"`): MLX-LM saves the trainable
/// parameters themselves in `adapters.safetensors`, under their names in the model
/// (`model.layers.29.self_attn.q_proj.weight`, `[out, in]`), and its `load_adapters` loads them
/// over the base with `load_weights(strict=False)`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FullWeights {
    /// Blocks trained, counted from the top (-1: all).
    pub num_layers: i64,
    /// Tensor name → (shape, values).
    pub tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    /// Header metadata (our manifest).
    pub metadata: BTreeMap<String, String>,
}

/// `fine_tune_type` of the MLX-LM folder `dir` (`lora` when the config does not say).
pub fn fine_tune_type(dir: &Path) -> Result<String, AdapterFileError> {
    let json = read_json(&dir.join(CONFIG_FILE))?;
    Ok(json["fine_tune_type"].as_str().unwrap_or("lora").to_string())
}

/// Write a full fine-tune's weights as `mlx_lm.lora` does (`adapters.safetensors` + an
/// `adapter_config.json` with `fine_tune_type: "full"`, `num_layers` and no `lora_parameters`),
/// merged over `extra` (the training options).
pub fn write_full(dir: &Path, weights: &FullWeights, extra: serde_json::Value) -> Result<(), AdapterFileError> {
    std::fs::create_dir_all(dir).map_err(|source| AdapterFileError::Io { path: dir.to_path_buf(), source })?;
    let mut json = match extra {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    json.insert("fine_tune_type".into(), "full".into());
    json.insert("num_layers".into(), weights.num_layers.into());
    json.insert("lora_parameters".into(), serde_json::Value::Null);
    write_json(&dir.join(CONFIG_FILE), &serde_json::Value::Object(json))?;
    write_full_weights(&dir.join(WEIGHTS_FILE), weights)
}

/// Only the weights file of [`write_full`].
pub fn write_full_weights(path: &Path, weights: &FullWeights) -> Result<(), AdapterFileError> {
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = weights.tensors.iter().map(|(n, (s, v))| (n.clone(), s.clone(), v.clone())).collect();
    let mut meta: HashMap<String, String> = weights.metadata.clone().into_iter().collect();
    meta.insert("format".into(), "mlx".into());
    write_f32(path, &tensors, Some(meta))?;
    Ok(())
}

/// Read a full fine-tune folder (config of `dir`, weights of `weights_path`). A folder of
/// another `fine_tune_type` is refused naming the field.
pub fn read_full(dir: &Path, weights_path: &Path) -> Result<FullWeights, AdapterFileError> {
    let config_path = dir.join(CONFIG_FILE);
    let json = read_json(&config_path)?;
    match json["fine_tune_type"].as_str().unwrap_or("lora") {
        "full" => {}
        other => return Err(AdapterFileError::Field { path: config_path, field: "fine_tune_type".into(), reason: format!("'{other}' is an adapter, not a full fine-tune") }),
    }
    let file = SafetensorsFile::open(weights_path)?;
    let mut tensors = BTreeMap::new();
    for name in file.names() {
        let (values, shape) = file.read_f32(&name)?;
        tensors.insert(name, (shape, values));
    }
    let metadata = file.header_metadata().map(|m| m.iter().filter(|(k, _)| *k != "format").map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default();
    Ok(FullWeights { num_layers: json["num_layers"].as_i64().unwrap_or(-1), tensors, metadata })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adapter() -> AdapterWeights {
        let mut a = AdapterWeights::new(LoraConfig { rank: 2, alpha: 6.0, dropout: 0.1, num_layers: 2, ..LoraConfig::default() });
        for (i, path) in ["model.layers.4.self_attn.v_proj", "model.layers.5.self_attn.v_proj", "model.layers.5.mlp.gate_proj"].iter().enumerate() {
            let v = |n: usize, k: usize| (0..n).map(|j| (j as f32 * 0.37 - k as f32).sin()).collect::<Vec<_>>();
            a.insert(path, LoraFactors { a: v(6, i), a_shape: [2, 3], b: v(10, i + 3), b_shape: [5, 2] }).unwrap();
        }
        a.metadata.insert("tunelab_manifest".into(), "{}".into());
        a
    }

    #[test]
    fn round_trip_transposes_and_keeps_factors() {
        let dir = tempfile::tempdir().unwrap();
        let a = adapter();
        write(dir.path(), &a, serde_json::json!({ "iters": 10, "num_layers": 99 })).unwrap();
        let back = read(dir.path()).unwrap();
        assert_eq!(back.layers, a.layers, "factors identical after the transposes");
        assert_eq!(back.metadata, a.metadata);
        assert_eq!(back.config.scale(), a.config.scale());
        assert_eq!((back.config.rank, back.config.num_layers, back.config.dropout), (2, 2, 0.1));
        // MLX-LM's layout: lora_a [in, r] = Aᵀ, lora_b [r, out] = Bᵀ.
        let f = SafetensorsFile::open(dir.path().join(WEIGHTS_FILE)).unwrap();
        let (la, shape) = f.read_f32("model.layers.4.self_attn.v_proj.lora_a").unwrap();
        assert_eq!(shape, vec![3, 2]);
        let pa = &a.layers["model.layers.4.self_attn.v_proj"].a; // [2, 3]
        assert_eq!(la[1], pa[3], "lora_a[0][1] = A[1][0]");
        assert_eq!(f.shape("model.layers.5.mlp.gate_proj.lora_b"), Some(&[2usize, 5][..]));
        let cfg = read_json(&dir.path().join(CONFIG_FILE)).unwrap();
        assert_eq!(cfg["lora_parameters"]["scale"], 3.0, "scale = alpha / rank, multiplied directly");
        assert_eq!(cfg["lora_parameters"]["keys"], serde_json::json!(["mlp.gate_proj", "self_attn.v_proj"]));
        assert_eq!(cfg["num_layers"], 2, "the adapter's num_layers wins over extra fields");
        assert_eq!(cfg["iters"], 10);
    }

    #[test]
    fn dora_round_trip_uses_mlx_names() {
        let mut a = adapter();
        a.config.use_dora = true;
        for (path, f) in a.layers.clone() {
            a.insert_magnitude(&path, (0..f.b_shape[0]).map(|j| 0.5 + j as f32).collect()).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &a, serde_json::json!({})).unwrap();
        let back = read(dir.path()).unwrap();
        assert!(back.config.use_dora);
        assert_eq!((back.layers, back.magnitudes), (a.layers.clone(), a.magnitudes.clone()));
        assert_eq!(read_json(&dir.path().join(CONFIG_FILE)).unwrap()["fine_tune_type"], "dora");
        let f = SafetensorsFile::open(dir.path().join(WEIGHTS_FILE)).unwrap();
        assert_eq!(f.shape("model.layers.5.mlp.gate_proj.m"), Some(&[5usize][..]));
        // A DoRA config whose file lacks the magnitudes is refused, naming the layer.
        write_weights(&dir.path().join(WEIGHTS_FILE), &AdapterWeights { magnitudes: Default::default(), config: LoraConfig { use_dora: false, ..a.config.clone() }, ..a }).unwrap();
        let err = read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("magnitude vector") && err.contains("model.layers.4.self_attn.v_proj"), "{err}");
    }

    #[test]
    fn a_lonely_factor_is_named() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &adapter(), serde_json::json!({})).unwrap();
        let path = dir.path().join(WEIGHTS_FILE);
        write_f32(&path, &[("model.layers.4.self_attn.v_proj.lora_a".into(), vec![3, 2], vec![0.0; 6])], None).unwrap();
        let err = read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("model.layers.4.self_attn.v_proj") && err.contains("adapters.safetensors"), "{err}");
    }
}

//! Fused models: adapters folded into the base weights (`W + scale·B·A`; DoRA's
//! `m ⊙ (W + scale·B·A) / ‖W + scale·B·A‖`, rows) and written as a
//! Hugging Face folder that transformers, MLX-LM and `tunelab generate` load as a plain model
//! (what `mlx_lm.fuse --save-path` produces).
//!
//! The folder holds `config.json` (the base's own, or written from GGUF metadata), `model.safetensors` (f32; our manifest in the header under
//! `tunelab_manifest`), and the tokenizer files: copied unchanged from a Hugging Face base
//! folder, or, for a GGUF base, `tokenizer.json` saved from the GGUF vocabulary plus a
//! `tokenizer_config.json` carrying its chat template and special tokens.

use std::collections::HashMap;
use std::path::Path;

use super::{AdapterFileError, write_json};
use crate::io::safetensors::write_f32;
use crate::model::decoder::CausalLm;

/// Tokenizer files copied from a Hugging Face base folder when present.
const TOKENIZER_FILES: [&str; 5] = ["tokenizer.json", "tokenizer_config.json", "generation_config.json", "special_tokens_map.json", "chat_template.jinja"];

/// Add `rope_theta` / `rope_scaling` beside transformers 5's `rope_parameters` when they are
/// missing: mlx-lm (0.32) and older transformers read only these, and would run the model
/// without its RoPE scaling or base. Keys already present are left alone.
///
/// ```
/// let mut c = serde_json::json!({ "rope_parameters": { "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0 } });
/// tunelab::export::fused::with_legacy_rope_keys(&mut c);
/// assert_eq!(c["rope_theta"], 500000.0);
/// assert_eq!(c["rope_scaling"], serde_json::json!({ "rope_type": "llama3", "factor": 8.0 }));
/// ```
pub fn with_legacy_rope_keys(config: &mut serde_json::Value) {
    let Some(p) = config.get("rope_parameters").and_then(|p| p.as_object()).cloned() else { return };
    let Some(obj) = config.as_object_mut() else { return };
    if !obj.contains_key("rope_theta")
        && let Some(theta) = p.get("rope_theta")
    {
        obj.insert("rope_theta".into(), theta.clone());
    }
    if obj.get("rope_scaling").is_none_or(|v| v.is_null()) {
        let scaling: serde_json::Map<String, serde_json::Value> = p.into_iter().filter(|(k, _)| k != "rope_theta").collect();
        // transformers 5 writes `rope_type: default` for no scaling: the old form of that is null.
        let none = scaling.get("rope_type").and_then(|t| t.as_str()).is_none_or(|t| t == "default");
        obj.insert("rope_scaling".into(), if none { serde_json::Value::Null } else { serde_json::Value::Object(scaling) });
    }
}

/// Write `lm` (its adapters merged first) as a Hugging Face folder at `dir`, which must not
/// exist or be empty. `manifest` (JSON) goes into the safetensors header.
pub fn write(dir: &Path, lm: &CausalLm, manifest: &serde_json::Value) -> Result<(), AdapterFileError> {
    write_model(dir, lm, &lm.model, manifest)
}

/// [`write()`] with the weights of `model` (same architecture as `lm`'s: a fully fine-tuned copy)
/// and the config and tokenizer of `lm`.
pub fn write_model(dir: &Path, lm: &CausalLm, model: &crate::model::decoder::Decoder, manifest: &serde_json::Value) -> Result<(), AdapterFileError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| AdapterFileError::Io { path, source }
    };
    if dir.read_dir().is_ok_and(|mut d| d.next().is_some()) {
        return Err(AdapterFileError::Io { path: dir.to_path_buf(), source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, "not empty: choose a new folder (fuse never overwrites)") });
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    // A Hugging Face base keeps its own config.json (every field transformers knows, unchanged);
    // a GGUF base gets one written from its metadata.
    let base_config = lm.source.join("config.json");
    if lm.source.is_dir() && base_config.is_file() {
        let mut config = super::read_json(&base_config)?;
        with_legacy_rope_keys(&mut config);
        write_json(&dir.join("config.json"), &config)?;
    } else {
        let config = lm.config.to_hf_json().map_err(|reason| AdapterFileError::Field { path: lm.source.clone(), field: "rope_scaling".into(), reason })?;
        write_json(&dir.join("config.json"), &config)?;
    }
    let merged = model.clone().merged();
    let meta = HashMap::from([("format".to_string(), "pt".to_string()), ("tunelab_manifest".to_string(), manifest.to_string())]);
    write_f32(dir.join("model.safetensors"), &merged.hf_tensors(), Some(meta))?;
    if lm.source.is_dir() {
        for f in TOKENIZER_FILES {
            let from = lm.source.join(f);
            if from.is_file() {
                std::fs::copy(&from, dir.join(f)).map_err(io(&dir.join(f)))?;
            }
        }
        return Ok(());
    }
    let tok_path = dir.join("tokenizer.json");
    lm.tokenizer.save(&tok_path, false).map_err(|e| AdapterFileError::Io { path: tok_path.clone(), source: std::io::Error::other(e.to_string()) })?;
    let g = crate::io::gguf::GgufFile::open(&lm.source).map_err(|e| AdapterFileError::Io { path: lm.source.clone(), source: std::io::Error::other(e.to_string()) })?;
    let template = g.get("tokenizer.chat_template").and_then(|v| v.as_str()).map(str::to_string);
    let eos = lm.chat_template.as_ref().and_then(|t| t.eos_token.clone());
    write_json(
        &dir.join("tokenizer_config.json"),
        &serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": lm.bos_token, "eos_token": eos, "add_bos_token": lm.add_bos,
            "chat_template": template,
        }),
    )?;
    write_json(&dir.join("generation_config.json"), &serde_json::json!({ "eos_token_id": lm.eos_token_ids }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lora::{AdapterWeights, LoraConfig, LoraFactors};
    use burn::tensor::{Device, Int, Tensor, TensorData};
    use rand::{Rng, SeedableRng};

    fn logits(lm: &CausalLm) -> Vec<f32> {
        let ids = Tensor::<2, Int>::from_data(TensorData::new(vec![1i64, 5, 17, 99, 3, 42], [1, 6]), &Device::flex());
        lm.model.forward(ids, None, None).into_data().try_into_vec_as::<f32>().unwrap()
    }

    /// A Hugging Face base whose config.json has only transformers 5's `rope_parameters` (the
    /// tiny Llama, llama3 scaling): the fused folder also carries `rope_theta` / `rope_scaling`
    /// (what mlx-lm 0.32 reads), the same values, and loads back to the same config.
    #[test]
    fn fused_config_carries_the_legacy_rope_keys() {
        let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/decoder/tiny_llama");
        let lm = CausalLm::load(&tiny, &Device::flex()).unwrap();
        let src = crate::export::read_json(&tiny.join("config.json")).unwrap();
        assert!(src.get("rope_theta").is_none() && src.get("rope_scaling").is_none(), "the fixture has the new form only");
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("fused"), &lm, &serde_json::json!({})).unwrap();
        let cfg = crate::export::read_json(&dir.path().join("fused/config.json")).unwrap();
        let p = &src["rope_parameters"];
        assert_eq!(cfg["rope_theta"], p["rope_theta"]);
        assert_eq!((cfg["rope_scaling"]["rope_type"].as_str(), &cfg["rope_scaling"]["factor"]), (Some("llama3"), &p["factor"]));
        assert!(cfg["rope_scaling"].get("rope_theta").is_none());
        assert_eq!(CausalLm::load(dir.path().join("fused"), &Device::flex()).unwrap().config, lm.config);
        // No scaling in the new form ("default") is null in the old one; keys present stay.
        let mut c = serde_json::json!({ "rope_parameters": { "rope_type": "default", "rope_theta": 1e6 }, "rope_theta": 5.0 });
        with_legacy_rope_keys(&mut c);
        assert_eq!((c["rope_theta"].as_f64(), c["rope_scaling"].is_null()), (Some(5.0), true));
    }

    /// A GGUF base (tiny Qwen3: q/k norms, tied embeddings) with a random LoRA or DoRA adapter,
    /// fused: the folder loads as a Hugging Face model and computes the adapted logits (DoRA:
    /// magnitudes away from the row norms, so the rescaling must be merged to match).
    #[test]
    fn gguf_base_fuses_into_a_loadable_hf_folder() {
        for dora in [false, true] {
            fuse_gguf_base(dora);
        }
    }

    fn fuse_gguf_base(dora: bool) {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/decoder");
        let gguf = fixtures.join("tiny_qwen3.gguf");
        // The tiny GGUFs carry weights only; the tokenizer comes from the HF copy of the model.
        let (model, config) = crate::model::decoder::Decoder::from_gguf(&crate::io::gguf::GgufFile::open(&gguf).unwrap(), &Device::flex()).unwrap();
        let tokenizer = tokenizers::Tokenizer::from_file(fixtures.join("tiny_qwen3/tokenizer.json")).unwrap();
        let mut lm = CausalLm { model, config, tokenizer, chat_template: None, eos_token_ids: vec![2], add_bos: false, bos_token: None, source: gguf };
        let cfg = LoraConfig { rank: 2, alpha: 4.0, use_dora: dora, ..LoraConfig::default() };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let zero = lm.model.clone().with_lora(&cfg, &mut rng).unwrap().adapter_weights(&cfg);
        assert_eq!(zero.magnitudes.len(), if dora { zero.layers.len() } else { 0 });
        let mut adapter = AdapterWeights::new(cfg);
        for (path, f) in zero.layers {
            let b = (0..f.b.len()).map(|_| rng.random_range(-0.2f32..0.2)).collect();
            adapter.insert(&path, LoraFactors { b, ..f }).unwrap();
            if let Some(m) = zero.magnitudes.get(&path) {
                adapter.insert_magnitude(&path, m.iter().map(|v| v * rng.random_range(0.5f32..1.5)).collect()).unwrap();
            }
        }
        let base = logits(&lm);
        lm.model = lm.model.apply_adapter(&adapter).unwrap();
        let want = logits(&lm);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("fused");
        write(&out, &lm, &serde_json::json!({"test": true})).unwrap();
        let fused = CausalLm::load(&out, &Device::flex()).unwrap();
        assert_eq!(fused.config, lm.config);
        let got = logits(&fused);
        let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        let moved = want.iter().zip(&base).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        eprintln!("fused (dora {dora}) vs adapted {worst:e}, adapted vs base {moved}");
        assert!(worst < 1e-4 && moved > 1e-3, "dora {dora}: fused vs adapted {worst}, adapted vs base {moved}");
        assert_eq!(fused.chat_template.is_some(), lm.chat_template.is_some());
        assert_eq!(fused.eos_token_ids, lm.eos_token_ids);
        assert!(write(&out, &lm, &serde_json::json!({})).unwrap_err().to_string().contains("fused"), "never overwrites");
    }
}

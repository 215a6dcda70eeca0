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

/// Write `lm` (its adapters merged first) as a Hugging Face folder at `dir`, which must not
/// exist or be empty. `manifest` (JSON) goes into the safetensors header.
pub fn write(dir: &Path, lm: &CausalLm, manifest: &serde_json::Value) -> Result<(), AdapterFileError> {
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
        std::fs::copy(&base_config, dir.join("config.json")).map_err(io(&dir.join("config.json")))?;
    } else {
        let config = lm.config.to_hf_json().map_err(|reason| AdapterFileError::Field { path: lm.source.clone(), field: "rope_scaling".into(), reason })?;
        write_json(&dir.join("config.json"), &config)?;
    }
    let merged = lm.model.clone().merged();
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

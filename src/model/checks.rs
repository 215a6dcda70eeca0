//! Load-time checks of a model's config against its weights, kept apart from the architectures
//! so every loader calls the same ones. A config that disagrees with its weights must stop the
//! load, naming the file and field: loaded anyway it gives a different model (fewer layers) or
//! silent NaN outputs (a norm epsilon <= 0).
use std::path::Path;

use crate::model::decoder::{DecoderConfig, DecoderError};

/// Number of blocks the tensor names hold: one more than the largest `{prefix}{i}.` index.
pub fn layers_held<'a>(names: impl Iterator<Item = &'a str>, prefix: &str) -> usize {
    names
        .filter_map(|n| {
            n.strip_prefix(prefix)?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .max()
        .map_or(0, |i| i + 1)
}

/// Check a decoder config's numbers and its layer count against the weights' tensor names
/// (`layer_prefix`: `model.layers.` for Hugging Face folders, `blk.` for GGUF).
pub fn decoder_config<'a>(
    cfg: &DecoderConfig,
    path: &Path,
    tensor_names: impl Iterator<Item = &'a str>,
    layer_prefix: &str,
) -> Result<(), DecoderError> {
    let bad = |field: &str, reason: String| {
        Err(DecoderError::Config {
            path: path.to_path_buf(),
            field: field.into(),
            reason,
        })
    };
    if !(cfg.rms_norm_eps.is_finite() && cfg.rms_norm_eps > 0.0) {
        return bad(
            "rms_norm_eps",
            format!("{} must be a finite number above 0", cfg.rms_norm_eps),
        );
    }
    if !(cfg.rope_theta.is_finite() && cfg.rope_theta > 0.0) {
        return bad(
            "rope_theta",
            format!("{} must be a finite number above 0", cfg.rope_theta),
        );
    }
    for (field, v) in [
        ("vocab_size", cfg.vocab_size),
        ("hidden_size", cfg.hidden_size),
        ("intermediate_size", cfg.intermediate_size),
        ("num_hidden_layers", cfg.num_hidden_layers),
        ("num_attention_heads", cfg.num_attention_heads),
        ("head_dim", cfg.head_dim),
    ] {
        if v == 0 {
            return bad(field, "must be at least 1".into());
        }
    }
    let held = layers_held(tensor_names, layer_prefix);
    if held != cfg.num_hidden_layers {
        return bad(
            "num_hidden_layers",
            format!(
                "{} declared, but the weights hold {held} layers ({layer_prefix}N tensors)",
                cfg.num_hidden_layers
            ),
        );
    }
    Ok(())
}

/// The first non-finite value of a tensor, as an error naming it (a corrupt or diverged
/// checkpoint would otherwise give NaN logits and garbage text with exit 0).
pub fn finite_tensor(values: &[f32], tensor: &str, path: &Path) -> Result<(), DecoderError> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(DecoderError::Weights {
            path: path.to_path_buf(),
            reason: format!("tensor '{tensor}' holds {} at index {i}", values[i]),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_layers_from_names() {
        let names = [
            "model.layers.0.mlp.up_proj.weight",
            "model.layers.11.mlp.up_proj.weight",
            "model.norm.weight",
        ];
        assert_eq!(layers_held(names.into_iter(), "model.layers."), 12);
        assert_eq!(layers_held(["blk.3.ffn_up.weight"].into_iter(), "blk."), 4);
        assert_eq!(layers_held(std::iter::empty(), "blk."), 0);
    }

    /// The tiny Llama fixture copied to a temporary folder, with its config.json as JSON.
    fn tiny_llama_copy(dir: &Path) -> (std::path::PathBuf, serde_json::Value) {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/decoder/tiny_llama");
        let dst = dir.join("tiny");
        std::fs::create_dir_all(&dst).unwrap();
        for f in [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
        ] {
            std::fs::copy(src.join(f), dst.join(f)).unwrap();
        }
        let config =
            serde_json::from_str(&std::fs::read_to_string(dst.join("config.json")).unwrap())
                .unwrap();
        (dst, config)
    }

    #[test]
    fn decoder_configs_that_disagree_with_the_weights_are_refused() {
        use crate::model::decoder::CausalLm;
        let dir = tempfile::tempdir().unwrap();
        let (folder, config) = tiny_llama_copy(dir.path());
        let dev = burn::tensor::Device::flex();
        let load = |field: &str, v: serde_json::Value| {
            let mut c = config.clone();
            c[field] = v;
            std::fs::write(folder.join("config.json"), c.to_string()).unwrap();
            CausalLm::load(&folder, &dev)
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        for n in [1, 3] {
            let err = load("num_hidden_layers", serde_json::json!(n)).unwrap_err();
            assert!(
                err.contains("num_hidden_layers") && err.contains("hold 2 layers"),
                "{n}: {err}"
            );
        }
        for eps in [-1.0, 0.0] {
            let err = load("rms_norm_eps", serde_json::json!(eps)).unwrap_err();
            assert!(
                err.contains("config.json") && err.contains("rms_norm_eps"),
                "{eps}: {err}"
            );
        }
        load("num_hidden_layers", serde_json::json!(2)).unwrap();
    }

    /// Property: random numeric garbage in random fields of a decoder's config.json gives an
    /// error or a model with finite logits; never a panic.
    #[test]
    fn random_numeric_garbage_in_a_decoder_config() {
        use crate::model::decoder::CausalLm;
        use burn::tensor::{Int, Tensor, TensorData};
        use rand::{Rng, SeedableRng};
        let dir = tempfile::tempdir().unwrap();
        let (folder, config) = tiny_llama_copy(dir.path());
        let fields = [
            "rms_norm_eps",
            "num_hidden_layers",
            "hidden_size",
            "vocab_size",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "intermediate_size",
            "rope_theta",
            "max_position_embeddings",
        ];
        let garbage = [
            serde_json::json!(-1),
            serde_json::json!(0),
            serde_json::json!(1e308),
            serde_json::json!(-1e-12),
            serde_json::json!(u64::MAX),
            serde_json::json!(1u64 << 40),
            serde_json::json!(2.5),
            serde_json::json!("NaN"),
            serde_json::json!(null),
            serde_json::json!(3),
        ];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        for case in 0..40 {
            let mut c = config.clone();
            let field = fields[rng.random_range(0..fields.len())];
            c[field] = garbage[rng.random_range(0..garbage.len())].clone();
            std::fs::write(folder.join("config.json"), c.to_string()).unwrap();
            let outcome = std::panic::catch_unwind(|| {
                let dev = burn::tensor::Device::flex();
                CausalLm::load(&folder, &dev).map(|lm| {
                    let x = Tensor::<2, Int>::from_data(
                        TensorData::new(vec![3i64, 4, 5], [1, 3]),
                        &dev,
                    );
                    lm.model
                        .forward(x, None, None)
                        .into_data()
                        .try_into_vec_as::<f32>()
                        .unwrap()
                })
            })
            .unwrap_or_else(|_| panic!("case {case}: {field} = {} panicked", c[field]));
            if let Ok(logits) = outcome {
                assert!(
                    logits.iter().all(|v| v.is_finite()),
                    "case {case}: {field} = {}",
                    c[field]
                );
            }
        }
    }
}

use super::*;
use std::collections::HashMap;

use burn::tensor::Device;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::load::unpermute_rows;
use crate::lora::{AdapterWeights, LoraConfig, LoraError, LoraFactors, QuantType, QuantizeBase};

/// `tiny_llama.gguf` (llama.cpp's conversion, q/k rows permuted) rewritten with Q4_0
/// attention and Q8_0 MLP projections (ggml's reference quantizers); other tensors as they were.
fn quantized_tiny_gguf(dir: &Path) -> PathBuf {
    use crate::io::gguf::{GgmlType, GgufWriter, quantize_q4_0};
    let src = GgufFile::open(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/decoder/tiny_llama.gguf")).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in src.metadata.iter().filter(|(k, _)| k != "general.alignment") {
        w.add_metadata(k, v.clone());
    }
    for t in &src.tensors {
        let (shape, values) = src.tensor_f32(&t.name).unwrap();
        let proj = t.name.starts_with("blk.") && t.name.ends_with(".weight") && shape.len() == 2;
        if proj && t.name.contains(".attn_") {
            w.add_raw_tensor(&t.name, &shape, GgmlType::Q4_0, quantize_q4_0(&values));
        } else if proj && t.name.contains(".ffn_") {
            w.add_tensor(&t.name, &shape, GgmlType::Q8_0, &values);
        } else {
            w.add_tensor(&t.name, &shape, GgmlType::F32, &values);
        }
    }
    let path = dir.join("tiny_q.gguf");
    w.write(&path).unwrap();
    path
}

/// `keep` holds the file's blocks (the permuted q/k rows restored on whole rows of blocks)
/// and dequantizes to exactly the f32 model loaded from the same file; `q8_0` keeps the
/// Q8_0 tensors and requantizes the others.
#[test]
fn kept_gguf_blocks_are_the_dequantized_model() {
    let dir = tempfile::tempdir().unwrap();
    let g = GgufFile::open(quantized_tiny_gguf(dir.path())).unwrap();
    let device = Device::flex();
    let (dense, _) = Decoder::from_gguf(&g, &device).unwrap();
    let (kept, _) = Decoder::from_gguf_with(&g, &device, QuantizeBase::Keep).unwrap();
    let kinds = |m: &Decoder| {
        m.layers[0].projections().iter().map(|(_, s)| match s {
            AdaptableLinear::Quantized(q) => Some(q.weight.ty),
            _ => None,
        }).collect::<Vec<_>>()
    };
    let (q4, q8) = (Some(QuantType::Q4_0), Some(QuantType::Q8_0));
    assert_eq!(kinds(&kept), vec![q4, q4, q4, q4, q8, q8, q8]);
    assert!(kinds(&dense).iter().all(Option::is_none));
    let (kt, dt) = (kept.hf_tensors(), dense.hf_tensors());
    assert_eq!(kt.len(), dt.len());
    for ((name, shape, k), (dname, dshape, d)) in kt.iter().zip(&dt) {
        let same = k.iter().zip(d).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(name == dname && shape == dshape && same, "{name}: not the f32 load's values bit for bit");
    }
    assert!(kept.projection_bytes() * 3 < dense.projection_bytes(), "{} vs {}", kept.projection_bytes(), dense.projection_bytes());
    let (q8_all, _) = Decoder::from_gguf_with(&g, &device, QuantizeBase::Q8_0).unwrap();
    assert_eq!(kinds(&q8_all), vec![q8; 7]);
    let q8_mlp = |m: &Decoder| m.hf_tensors().into_iter().filter(|(n, _, _)| n.contains(".mlp.")).collect::<Vec<_>>();
    assert_eq!(q8_mlp(&q8_all), q8_mlp(&dense), "Q8_0 blocks kept, not requantized");
    // Same logits (up to matmul order) and an adapter attaches over the blocks.
    let ids = Tensor::<2, Int>::from_data(TensorData::new(vec![1i64, 5, 9, 3], [1, 4]), &device);
    let (a, b) = (flat(kept.forward(ids.clone(), None, None)), flat(dense.forward(ids, None, None)));
    let diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(diff < 1e-5, "logits differ by {diff}");
    let cfg = LoraConfig { rank: 2, alpha: 4.0, ..LoraConfig::default() };
    let adapted = kept.with_lora(&cfg, &mut ChaCha8Rng::seed_from_u64(0)).unwrap();
    assert_eq!(adapted.lora_layer_count(), 14);
    let AdaptableLinear::Lora(l) = &adapted.layers[1].self_attn.q_proj else { panic!() };
    assert!(l.weight.is_quantized());
}

#[test]
fn unpermute_inverts_llama_cpp_permute() {
    // llama.cpp: w.reshape(n_head, 2, hd/2, cols).swapaxes(1, 2). With hd = 4 and one head,
    // HF rows [r0, r1, r2, r3] (halves [r0 r1], [r2 r3]) become GGUF rows [r0, r2, r1, r3].
    let gguf = vec![0.0, 2.0, 1.0, 3.0, 10.0, 12.0, 11.0, 13.0]; // 2 heads, 1 column
    assert_eq!(
        unpermute_rows(&gguf, 2, 1),
        vec![0.0, 1.0, 2.0, 3.0, 10.0, 11.0, 12.0, 13.0]
    );
}

#[test]
fn gguf_names_follow_llama_cpp() {
    assert_eq!(
        gguf_name("model.layers.12.self_attn.k_proj.bias").unwrap(),
        "blk.12.attn_k.bias"
    );
    assert_eq!(
        gguf_name("model.layers.0.mlp.down_proj.weight").unwrap(),
        "blk.0.ffn_down.weight"
    );
    assert_eq!(
        gguf_name("model.embed_tokens.weight").unwrap(),
        "token_embd.weight"
    );
    assert!(gguf_name("model.layers.0.unknown.weight").is_none());
}

#[test]
fn llama3_rope_scaling_matches_transformers_formula() {
    // Llama 3.1 8B: theta 500000, factor 8, low 1, high 4, original 8192, head_dim 128.
    // transformers keeps frequencies with wavelength < 8192/4 = 2048 and divides those with
    // wavelength > 8192 by 8. i = 0: wavelength 2*pi -> unchanged; i = 63: divided by 8.
    let cfg = DecoderConfig {
        architecture: Architecture::Llama,
        vocab_size: 1,
        hidden_size: 128,
        intermediate_size: 1,
        num_hidden_layers: 0,
        num_attention_heads: 1,
        num_key_value_heads: 1,
        head_dim: 128,
        max_position_embeddings: 1,
        rms_norm_eps: 1e-5,
        rope_theta: 500_000.0,
        rope_scaling: Some(RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192.0,
        }),
        tie_word_embeddings: true,
        qkv_bias: false,
        o_bias: false,
        qk_norm: false,
    };
    let f = cfg.rope_inv_freq();
    assert_eq!(f[0], 1.0);
    let base63 = 1.0 / 500_000f64.powf(126.0 / 128.0);
    assert!((f[63] as f64 - base63 / 8.0).abs() < 1e-12);
    // A middle frequency (wavelength between 2048 and 8192, i = 28..=35) is blended.
    let i = 32;
    let base = 1.0 / 500_000f64.powf(2.0 * i as f64 / 128.0);
    let wavelen = 2.0 * std::f64::consts::PI / base;
    assert!(wavelen > 2048.0 && wavelen < 8192.0, "{wavelen}");
    assert!((f[i] as f64) < base && (f[i] as f64) > base / 8.0);
}

#[test]
fn greedy_and_seeded_sampling() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    assert_eq!(
        sample(&[0.0, 3.0, 3.0, -1.0], 0.0, 1.0, &mut rng),
        1,
        "ties go to the lowest id"
    );
    // top_p tiny keeps only the most likely token, whatever the draw.
    for _ in 0..20 {
        assert_eq!(sample(&[0.0, 5.0, 1.0], 1.0, 0.01, &mut rng), 1);
    }
    // Same seed, same draws.
    let draws = |seed| {
        let mut r = ChaCha8Rng::seed_from_u64(seed);
        (0..50)
            .map(|_| sample(&[0.0, 0.5, 1.0, 0.2], 1.0, 1.0, &mut r))
            .collect::<Vec<_>>()
    };
    assert_eq!(draws(7), draws(7));
    // Frequencies follow softmax: token 2 has p = e^1 / (1 + e^.5 + e + e^.2) ~ 0.42.
    let mut r = ChaCha8Rng::seed_from_u64(3);
    let n = 4000;
    let hits = (0..n)
        .filter(|_| sample(&[0.0, 0.5, 1.0, 0.2], 1.0, 1.0, &mut r) == 2)
        .count();
    let p = 1f64.exp() / (1.0 + 0.5f64.exp() + 1f64.exp() + 0.2f64.exp());
    assert!(((hits as f64 / n as f64) - p).abs() < 0.03, "{hits}");
}

// ---- LoRA

use burn::tensor::activation::log_softmax;

fn ids(device: &Device) -> Tensor<2, Int> {
    Tensor::<2, Int>::from_data(
        TensorData::new(vec![5i64, 17, 99, 3, 42, 8, 1, 77, 23, 64, 0, 101], [2, 6]),
        device,
    )
}

/// Mean next-token cross-entropy of `ids` (the SFT loss without masking).
fn next_token_loss(m: &Decoder, ids: Tensor<2, Int>) -> Tensor<1> {
    let [b, t] = ids.dims();
    let logits = m.forward(ids.clone().narrow(1, 0, t - 1), None, None);
    let targets = ids.narrow(1, 1, t - 1).reshape([b, t - 1, 1]);
    let logp = log_softmax(logits, 2).gather(2, targets);
    logp.mean().neg().reshape([1])
}

fn flat<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec_as::<f32>().unwrap()
}

/// An adapter on `model` with random (non-zero) A and B, so every factor has a gradient.
fn random_adapter(model: &Decoder, config: &LoraConfig, seed: u64) -> AdapterWeights {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let zero = model
        .clone()
        .with_lora(config, &mut rng)
        .unwrap()
        .adapter_weights(config);
    let mut out = AdapterWeights::new(config.clone());
    for (path, f) in zero.layers {
        let b = (0..f.b.len())
            .map(|_| rng.random_range(-0.3f32..0.3))
            .collect();
        out.insert(&path, LoraFactors { b, ..f }).unwrap();
    }
    out
}

#[test]
fn lora_trains_only_adapters() {
    let device = Device::flex().autodiff();
    let cfg = LoraConfig {
        rank: 2,
        alpha: 4.0,
        num_layers: 1,
        ..LoraConfig::default()
    };
    let m = Decoder::random(&DecoderConfig::tiny_llama(), &device, 1)
        .with_lora(&cfg, &mut ChaCha8Rng::seed_from_u64(0))
        .unwrap();
    // num_layers = 1 counts from the top: only the last block is adapted, all 7 projections.
    assert!(m.layers[0].projections().iter().all(|(_, s)| !s.is_lora()));
    assert!(m.layers[1].projections().iter().all(|(_, s)| s.is_lora()));
    assert_eq!(m.lora_layer_count(), 7);
    let grads = next_token_loss(&m, ids(&device)).backward();

    struct WithGrad<'a>(&'a burn::tensor::Gradients, Vec<String>, Vec<String>);
    impl burn::module::ModuleVisitor for WithGrad<'_> {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.1.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.1.pop();
        }
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            if p.val().grad(self.0).is_some() {
                self.2.push(self.1.join("."));
            }
        }
    }
    let mut v = WithGrad(&grads, Vec::new(), Vec::new());
    m.visit(&mut v);
    assert_eq!(
        v.2.len(),
        14,
        "A and B of 7 projections, nothing else: {:?}",
        v.2
    );
    assert!(
        v.2.iter()
            .all(|p| p.ends_with("lora_a") || p.ends_with("lora_b")),
        "{:?}",
        v.2
    );
    // The adapted model starts as its base (B = 0).
    let base = Decoder::random(&DecoderConfig::tiny_llama(), &Device::flex(), 1);
    let adapted = m.valid();
    let (x, y) = (
        flat(base.forward(ids(&Device::flex()), None, None)),
        flat(adapted.forward(ids(&Device::flex()), None, None)),
    );
    assert!(x.iter().zip(&y).all(|(a, b)| (a - b).abs() < 1e-5));
}

#[test]
fn merged_and_reloaded_adapters_give_the_adapted_logits() {
    let device = Device::flex();
    let cfg = LoraConfig {
        rank: 4,
        alpha: 8.0,
        ..LoraConfig::default()
    };
    let base = Decoder::random(&DecoderConfig::tiny_llama(), &device, 2);
    let adapter = random_adapter(&base, &cfg, 3);
    assert_eq!(adapter.layers.len(), 14);
    assert!(adapter.layers.contains_key("model.layers.1.mlp.down_proj"));
    let adapted = base.clone().apply_adapter(&adapter).unwrap();
    assert_eq!(
        adapted.adapter_weights(&cfg),
        adapter,
        "adapter_weights returns what was applied"
    );
    let want = flat(adapted.forward(ids(&device), None, None));
    let plain = flat(base.forward(ids(&device), None, None));
    let moved = want
        .iter()
        .zip(&plain)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(moved > 1e-2, "the adapter changes the logits ({moved})");
    let merged = adapted.merged();
    assert_eq!(merged.lora_layer_count(), 0);
    let got = flat(merged.forward(ids(&device), None, None));
    let worst = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(worst < 1e-4, "merged vs adapted: max |diff| {worst}");
    // hf_tensors of the merged and of the adapted model are the same fused weights.
    let fused: HashMap<String, (Vec<usize>, Vec<f32>)> = merged
        .hf_tensors()
        .into_iter()
        .map(|(n, s, v)| (n, (s, v)))
        .collect();
    let rebuilt = Decoder::from_tensors(
        &DecoderConfig::tiny_llama(),
        TensorSource::map(Path::new("(fused)"), fused),
        &device,
    )
    .unwrap();
    let again = flat(rebuilt.forward(ids(&device), None, None));
    assert!(again.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-4));
}

#[test]
fn lora_gradients_match_finite_differences() {
    let device = Device::flex().autodiff();
    let cfg = LoraConfig {
        rank: 2,
        alpha: 4.0,
        num_layers: 1,
        ..LoraConfig::default()
    };
    let base = Decoder::random(&DecoderConfig::tiny_llama(), &device, 4);
    let adapter = random_adapter(&base, &cfg, 5);
    let m = base.apply_adapter(&adapter).unwrap();
    let x = ids(&device);
    let report = crate::train::gradcheck::check_module_gradients(
        &m,
        |m| next_token_loss(m, x.clone()),
        1e-2,
        2,
    );
    eprintln!("decoder LoRA grad check: {report:?}");
    assert_eq!(report.checked, 28, "2 entries of A and B in 7 projections");
    assert!(report.max_rel_err < 1e-2, "{report:?}");
}

#[test]
fn lora_targets_are_matched_or_named() {
    let device = Device::flex();
    let m = || Decoder::random(&DecoderConfig::tiny_llama(), &device, 6);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let cfg = |t: &[&str]| LoraConfig {
        target_modules: t.iter().map(|s| s.to_string()).collect(),
        ..LoraConfig::default()
    };
    let err = m()
        .with_lora(&cfg(&["q_proj", "query"]), &mut rng)
        .unwrap_err();
    assert!(
        matches!(&err, LoraError::NoMatch { target, .. } if target == "query"),
        "{err}"
    );
    assert!(err.to_string().contains("'query'"), "{err}");
    let a = m()
        .with_lora(
            &cfg(&["self_attn.v_proj", "model.layers.0.mlp.up_proj"]),
            &mut rng,
        )
        .unwrap();
    let paths: Vec<String> = a
        .adapter_weights(&LoraConfig::default())
        .layers
        .into_keys()
        .collect();
    assert_eq!(
        paths,
        [
            "model.layers.0.mlp.up_proj",
            "model.layers.0.self_attn.v_proj",
            "model.layers.1.self_attn.v_proj"
        ]
    );
    // A saved adapter whose path is not a projection of the model is named.
    let mut bad = random_adapter(&m(), &LoraConfig::default(), 1);
    let f = bad.layers["model.layers.0.self_attn.q_proj"].clone();
    bad.layers
        .insert("model.layers.7.self_attn.q_proj".into(), f);
    let err = m().apply_adapter(&bad).unwrap_err().to_string();
    assert!(err.contains("model.layers.7.self_attn.q_proj"), "{err}");
}

#[test]
fn hf_config_round_trips() {
    let mut cfg = DecoderConfig::tiny_llama();
    cfg.rope_scaling = Some(RopeScaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8.0,
    });
    let json = cfg.to_hf_json().unwrap();
    assert_eq!(
        DecoderConfig::from_hf_json(Path::new("config.json"), &json).unwrap(),
        cfg
    );
    let qwen = DecoderConfig {
        architecture: Architecture::Qwen3,
        qk_norm: true,
        qkv_bias: false,
        o_bias: false,
        tie_word_embeddings: true,
        ..DecoderConfig::tiny_llama()
    };
    let json = qwen.to_hf_json().unwrap();
    assert_eq!(
        DecoderConfig::from_hf_json(Path::new("config.json"), &json).unwrap(),
        qwen
    );
}

/// `Decoder::random_with` (`tunelab bench lora --quantize-base`): every block projection in
/// ggml blocks of the asked type, the same values as quantizing the f32 random model afterwards,
/// everything else the f32 random model's.
#[test]
fn random_with_quantizes_the_projections_of_the_same_random_model() {
    let device = Device::flex();
    let cfg = DecoderConfig::tiny_llama();
    let dense = Decoder::random(&cfg, &device, 7);
    for (quantize, ty) in [(QuantizeBase::Q4_0, QuantType::Q4_0), (QuantizeBase::Q8_0, QuantType::Q8_0)] {
        let q = Decoder::random_with(&cfg, &device, 7, quantize);
        let after = dense.clone().quantize_projections(ty).unwrap();
        for (i, layer) in q.layers.iter().enumerate() {
            for (rel, p) in layer.projections() {
                let AdaptableLinear::Quantized(l) = p else { panic!("{quantize:?}: layer {i} {rel} is not quantized") };
                assert_eq!(l.weight.ty, ty, "layer {i} {rel}");
            }
        }
        assert_eq!(q.hf_tensors(), after.hf_tensors(), "{quantize:?}: not the f32 random model quantized");
    }
    assert_eq!(Decoder::random_with(&cfg, &device, 7, QuantizeBase::None).hf_tensors(), dense.hf_tensors());
}

/// `Decoder::random` starts where a transformers model built from its config starts (embeddings
/// with standard deviation 0.02): near-uniform next-token predictions, a loss within 1 of ln(vocab)
/// and logits far from the range where the softmax underflows into subnormal floats (which x86
/// cores multiply slowly: `bench lora`'s head gradient ran 2.4x slower under `U(-1, 1)` embeddings,
/// whose tied logits spread with a standard deviation of ~14). Tied and untied heads, Llama and
/// Qwen3 blocks, two widths and two vocabularies.
#[test]
fn random_decoder_starts_near_uniform_predictions_like_transformers() {
    let device = Device::flex();
    for tied in [true, false] {
        for qwen3 in [false, true] {
            for (hidden, vocab) in [(64, 128), (256, 4096)] {
                let cfg = DecoderConfig {
                    architecture: if qwen3 { Architecture::Qwen3 } else { Architecture::Llama },
                    vocab_size: vocab,
                    hidden_size: hidden,
                    intermediate_size: hidden * 3 / 2,
                    tie_word_embeddings: tied,
                    qk_norm: qwen3,
                    ..DecoderConfig::tiny_llama()
                };
                let what = format!("tied {tied}, qwen3 {qwen3}, hidden {hidden}, vocab {vocab}");
                let model = Decoder::random(&cfg, &device, 3);
                let e = flat(model.embed_tokens.val());
                let std = (e.iter().map(|x| x * x).sum::<f32>() / e.len() as f32).sqrt();
                assert!((std - 0.02).abs() < 0.002, "{what}: embedding std {std}");
                let mut rng = ChaCha8Rng::seed_from_u64(5);
                let (b, t) = (2, 16);
                let ids: Vec<i64> = (0..b * t).map(|_| rng.random_range(0..vocab as i64)).collect();
                let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, t]), &device);
                let largest = model.forward(ids.clone(), None, None).abs().max().into_scalar::<f32>();
                assert!(largest < 20.0, "{what}: |logit| up to {largest}");
                let loss = next_token_loss(&model, ids).into_scalar::<f32>();
                let uniform = (vocab as f32).ln();
                assert!((loss - uniform).abs() < 1.0, "{what}: loss {loss}, ln(vocab) {uniform}");
            }
        }
    }
}

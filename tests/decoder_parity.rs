//! Decoder parity against reference implementations (fixtures made by
//! `scripts/make-decoder-fixtures.py`, never by tunelab):
//!
//! * SmolLM2-135M-Instruct Q4_1 GGUF: next-token logits vs llama.cpp on the same file (22 prompts),
//!   token ids vs llama.cpp's tokenizer (22 strings).
//! * Tiny random Llama (GQA, Llama 3 RoPE scaling, attention bias) and Qwen3 (q/k norm, tied
//!   embeddings, head_dim != hidden/heads) saved by transformers: logits vs transformers to 1e-4,
//!   with a KV cache, with a right-padded batch, and (Llama) through a GGUF with llama.cpp's q/k
//!   permutation.
//! * The tiny models as GGUFs written by gguf-py the way llama.cpp's converter writes them: logits
//!   vs llama.cpp on the same files and vs transformers.
//! * Chat templates (SmolLM2's, from the bundled GGUF) vs transformers' rendering. Third-party
//!   templates (Qwen3, Llama 3, Mistral) are not committed; see scripts/make-decoder-fixtures.py.
//! * Errors: unsupported architecture, unsupported tensor type, templates that fail.
//!
//! The SmolLM2 tests need `models/SmolLM2-135M-Instruct.Q4_1.gguf` (`scripts/fetch-models.sh`).

use std::path::{Path, PathBuf};

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use serde_json::Value;
use tunelab::data::chat_template::ChatTemplate;
use tunelab::io::gguf::{GgmlType, GgufFile, GgufTokenizer, GgufWriter};
use tunelab::model::decoder::{CausalLm, Decoder, DecoderError, GenerateOptions, KvCache};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures/decoder").join(name)
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn smollm_path() -> PathBuf {
    let p = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-models.sh",
        p.display()
    );
    p
}

fn ids_tensor(ids: &[u32], device: &Device) -> Tensor<2, Int> {
    Tensor::from_data(
        TensorData::new(
            ids.iter().map(|&i| i as i64).collect::<Vec<_>>(),
            [1, ids.len()],
        ),
        device,
    )
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn argmax(x: &[f32]) -> u32 {
    x.iter()
        .enumerate()
        .fold(0, |b, (i, &v)| if v > x[b] { i } else { b }) as u32
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

// ------------------------------------------------------------------------------------- SmolLM2

/// Per-prompt comparison of our last-position logits with a llama.cpp fixture.
struct Comparison {
    /// Max |ours - llama.cpp| over the stored logits (top 20 and 256 sampled ids), per prompt.
    max_diff: Vec<f32>,
    /// llama.cpp's margin between its first and second logit, per prompt.
    margin: Vec<f32>,
    /// Whether our argmax equals llama.cpp's, per prompt.
    top1_same: Vec<bool>,
}

fn compare_with_llama_cpp(lm: &CausalLm, fixture_name: &str) -> Comparison {
    let device = Device::flex();
    let fx = json(&fixture(fixture_name));
    let sample_ids = u32s(&fx["sample_ids"]);
    let cases = fx["cases"].as_array().unwrap();
    assert!(cases.len() >= 20);
    let mut c = Comparison {
        max_diff: vec![],
        margin: vec![],
        top1_same: vec![],
    };
    for case in cases {
        let prompt = case["prompt"].as_str().unwrap();
        let tokens = u32s(&case["tokens"]);
        // Our tokenizer must give llama.cpp's tokens; the logits then use exactly the same input.
        assert_eq!(
            lm.encode(prompt, false).unwrap(),
            tokens,
            "tokens of {prompt:?}"
        );
        let ours: Vec<f32> = lm
            .model
            .forward_last(ids_tensor(&tokens, &device), None)
            .into_data()
            .try_into_vec_as::<f32>()
            .unwrap();
        let top_ids = u32s(&case["top20_ids"]);
        let top_vals = f32s(&case["top20_logits"]);
        let samples = f32s(&case["sample_logits"]);
        let diff = top_ids
            .iter()
            .zip(&top_vals)
            .chain(sample_ids.iter().zip(&samples))
            .map(|(&id, &v)| (ours[id as usize] - v).abs())
            .fold(0f32, f32::max);
        eprintln!(
            "{fixture_name} {prompt:?}: max |diff| {diff:.4}, llama.cpp top-1 margin {:.4}, top-1 {} vs {}",
            top_vals[0] - top_vals[1],
            argmax(&ours),
            top_ids[0]
        );
        c.max_diff.push(diff);
        c.margin.push(top_vals[0] - top_vals[1]);
        c.top1_same.push(argmax(&ours) == top_ids[0]);
    }
    c
}

/// llama.cpp on an F32 copy of the same file (every tensor dequantized by gguf-py): same weights,
/// f32 matmuls on both sides. Measured: max 0.019 over 22 prompts, top-1 identical on all 22
/// (including a prompt whose top-2 are 0.039 apart). llama.cpp keeps its KV cache in f16 (its
/// default `type_k`/`type_v`), which accounts for differences of this size; 0.05 leaves headroom.
const SMOLLM_F32_TOL: f32 = 0.05;

/// llama.cpp on the Q4_1 file quantises activations to Q8_1 before each Q4_1 matmul (and to Q8_0
/// for the Q8_0 output matrix); we multiply the same dequantised weights in f32. Measured: max 1.30
/// over 22 prompts. The same 1.30 separates llama.cpp's Q4_1 logits from llama.cpp's own logits on
/// the F32 copy (the two fixtures), so this is llama.cpp's activation rounding, not ours; it also
/// flips llama.cpp's own top-1 on one prompt whose top-2 are 0.12 apart. Bound: 2.0.
const SMOLLM_Q4_TOL: f32 = 2.0;

#[test]
fn smollm2_logits_match_llama_cpp() {
    let lm = CausalLm::load(smollm_path(), &Device::flex()).unwrap();
    let f32_ref = compare_with_llama_cpp(&lm, "smollm2_f32_llamacpp.json");
    let worst = f32_ref.max_diff.iter().cloned().fold(0f32, f32::max);
    eprintln!(
        "vs llama.cpp (F32 weights): max abs diff {worst:.5} over {} prompts",
        f32_ref.max_diff.len()
    );
    assert!(
        f32_ref.top1_same.iter().all(|&s| s),
        "top-1 differs from llama.cpp (F32 weights)"
    );
    assert!(worst < SMOLLM_F32_TOL, "{worst}");

    let q4 = compare_with_llama_cpp(&lm, "smollm2_llamacpp.json");
    let worst = q4.max_diff.iter().cloned().fold(0f32, f32::max);
    let same = q4.top1_same.iter().filter(|&&s| s).count();
    eprintln!(
        "vs llama.cpp (Q4_1, Q8 activations): max abs diff {worst:.4}; top-1 identical on {same}/{}",
        q4.top1_same.len()
    );
    assert!(worst < SMOLLM_Q4_TOL, "{worst}");
    // A prompt may only disagree when llama.cpp's own top-2 are closer than the rounding noise.
    for ((&s, &m), &d) in q4.top1_same.iter().zip(&q4.margin).zip(&q4.max_diff) {
        assert!(
            s || m < 2.0 * d,
            "top-1 differs although llama.cpp's margin {m} exceeds twice the noise {d}"
        );
    }
}

#[test]
fn smollm2_tokenizer_matches_llama_cpp() {
    let g = GgufFile::open(smollm_path()).unwrap();
    let tok = GgufTokenizer::from_gguf(&g).unwrap();
    assert!(!tok.add_bos, "SmolLM2's GGUF sets add_bos_token = false");
    let fx = json(&fixture("smollm2_tokens.json"));
    let cases = fx["cases"].as_array().unwrap();
    assert!(cases.len() >= 20);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want = u32s(&case["ids"]);
        let got = tok
            .tokenizer
            .encode(text, false)
            .unwrap()
            .get_ids()
            .to_vec();
        assert_eq!(got, want, "ids of {text:?}");
        // Byte-level BPE decodes back to the exact text (special tokens kept).
        assert_eq!(tok.tokenizer.decode(&got, false).unwrap(), text);
    }
}

#[test]
fn smollm2_generates_greedily_and_reproducibly() {
    let device = Device::flex();
    let lm = CausalLm::load(smollm_path(), &device).unwrap();
    let tpl = lm
        .chat_template
        .as_ref()
        .expect("SmolLM2's GGUF has a chat template");
    let prompt = tpl
        .render(
            &[tunelab::data::chat_template::ChatMessage::new(
                "user",
                "What is the capital of France?",
            )],
            true,
        )
        .unwrap();
    let ids = lm.encode(&prompt, true).unwrap();
    let greedy = GenerateOptions {
        max_tokens: 8,
        ..Default::default()
    };
    let out = lm.generate(&ids, &greedy, |_| {});
    // Greedy decoding equals repeatedly taking the argmax of a full (cache-free) forward pass.
    let mut seq = ids.clone();
    for &t in &out {
        let logits: Vec<f32> = lm
            .model
            .forward_last(ids_tensor(&seq, &device), None)
            .into_data()
            .try_into_vec_as::<f32>()
            .unwrap();
        assert_eq!(t, argmax(&logits));
        seq.push(t);
    }
    let text = lm.decode(&out).unwrap();
    assert!(text.contains("Paris"), "{text:?}");
    // Sampling with a seed is reproducible.
    let sampled = GenerateOptions {
        max_tokens: 6,
        temperature: 0.8,
        top_p: 0.9,
        seed: 42,
        ..Default::default()
    };
    assert_eq!(
        lm.generate(&ids, &sampled, |_| {}),
        lm.generate(&ids, &sampled, |_| {})
    );
}

// ------------------------------------------------------------------------------------ tiny models

/// transformers computes in f32 too; differences come from summation order only.
const TINY_TOL: f32 = 1e-4;

fn check_tiny(model: &Decoder, expected: &Value, name: &str) {
    let device = Device::flex();
    for case in expected["cases"].as_array().unwrap() {
        let ids = u32s(&case["input_ids"]);
        let want: Vec<Vec<f32>> = case["logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(f32s)
            .collect();
        let logits = model.forward(ids_tensor(&ids, &device), None, None);
        let got: Vec<f32> = logits.into_data().try_into_vec_as::<f32>().unwrap();
        let v = want[0].len();
        let mut diff = 0f32;
        for (t, row) in want.iter().enumerate() {
            for (j, &w) in row.iter().enumerate() {
                diff = diff.max((got[t * v + j] - w).abs());
            }
        }
        eprintln!("{name}: max |ours - transformers| = {diff:e}");
        assert!(diff < TINY_TOL, "{name}: {diff}");

        // Same logits one token at a time through the KV cache.
        let mut cache = KvCache::new(model.num_layers());
        let mut inc = 0f32;
        for (t, &id) in ids.iter().enumerate() {
            let l: Vec<f32> = model
                .forward_last(ids_tensor(&[id], &device), Some(&mut cache))
                .into_data()
                .try_into_vec_as::<f32>()
                .unwrap();
            for j in 0..v {
                inc = inc.max((l[j] - want[t][j]).abs());
            }
        }
        assert!(inc < TINY_TOL, "{name} with KV cache: {inc}");
    }
    // Right-padded batch: the padded row's valid positions match transformers.
    let padded = &expected["padded_batch"];
    let rows: Vec<Vec<u32>> = padded["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(u32s)
        .collect();
    let mask: Vec<Vec<u32>> = padded["attention_mask"]
        .as_array()
        .unwrap()
        .iter()
        .map(u32s)
        .collect();
    let (b, t) = (rows.len(), rows[0].len());
    let flat: Vec<i64> = rows.iter().flatten().map(|&i| i as i64).collect();
    let pad: Vec<bool> = mask.iter().flatten().map(|&m| m == 0).collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(flat, [b, t]), &device);
    let pad = Tensor::<2, Bool>::from_data(TensorData::new(pad, [b, t]), &device);
    let got: Vec<f32> = model
        .forward(ids, None, Some(pad))
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap();
    let want: Vec<Vec<f32>> = padded["logits_row1_valid"]
        .as_array()
        .unwrap()
        .iter()
        .map(f32s)
        .collect();
    let v = want[0].len();
    let mut diff = 0f32;
    for (p, row) in want.iter().enumerate() {
        for (j, &w) in row.iter().enumerate() {
            diff = diff.max((got[(t + p) * v + j] - w).abs());
        }
    }
    assert!(diff < TINY_TOL, "{name} padded batch: {diff}");
}

#[test]
fn tiny_llama_matches_transformers() {
    let (model, cfg) = Decoder::from_hf_dir(&fixture("tiny_llama"), &Device::flex()).unwrap();
    assert!(cfg.qkv_bias && cfg.o_bias && !cfg.tie_word_embeddings && cfg.rope_scaling.is_some());
    check_tiny(
        &model,
        &json(&fixture("tiny_llama/expected.json")),
        "tiny_llama",
    );
}

#[test]
fn tiny_qwen3_matches_transformers() {
    let (model, cfg) = Decoder::from_hf_dir(&fixture("tiny_qwen3"), &Device::flex()).unwrap();
    assert!(cfg.qk_norm && cfg.tie_word_embeddings && cfg.head_dim == 24);
    check_tiny(
        &model,
        &json(&fixture("tiny_qwen3/expected.json")),
        "tiny_qwen3",
    );
}

#[test]
fn tiny_hf_folders_load_whole_and_generate_as_transformers() {
    // config + safetensors + tokenizer.json + tokenizer_config.json (chat template, bos/eos):
    // greedy generation with the KV cache equals transformers' `generate(do_sample=False)`.
    for name in ["tiny_llama", "tiny_qwen3"] {
        let lm = CausalLm::load(fixture(name), &Device::flex()).unwrap();
        assert_eq!(
            lm.eos_token_ids,
            vec![2],
            "{name}: eos from tokenizer_config.json"
        );
        let tpl = lm.chat_template.as_ref().unwrap();
        let text = tpl
            .render(
                &[tunelab::data::chat_template::ChatMessage::new(
                    "user", "w5 w9",
                )],
                true,
            )
            .unwrap();
        assert_eq!(text, "<s>w5 w9 ");
        assert_eq!(lm.encode(&text, false).unwrap(), vec![1, 5, 9]);
        let g = &json(&fixture(&format!("{name}/expected.json")))["generate"];
        let prompt = u32s(&g["prompt_ids"]);
        let out = lm.generate(
            &prompt,
            &GenerateOptions {
                max_tokens: 8,
                ..Default::default()
            },
            |_| {},
        );
        assert_eq!(out, u32s(&g["greedy_new_ids"]), "{name}");
    }
}

/// llama.cpp keeps K/V in f16; its logits on these F32 GGUFs differ from transformers' by up to
/// 0.008 (measured on the fixtures, |logits| <= 6). Ours must be as close to llama.cpp.
const TINY_LLAMA_CPP_TOL: f32 = 0.02;

#[test]
fn tiny_ggufs_from_gguf_py_match_llama_cpp_and_transformers() {
    // GGUFs written by gguf-py as convert_hf_to_gguf.py would (permuted Llama q/k, rope_freqs,
    // Qwen3 q/k norms, tied output): our loader against llama.cpp's logits on the same files, and
    // against transformers' logits on the original weights.
    let device = Device::flex();
    for name in ["tiny_llama", "tiny_qwen3"] {
        let g = GgufFile::open(fixture(&format!("{name}.gguf"))).unwrap();
        let (model, _) = Decoder::from_gguf(&g, &device).unwrap();
        check_tiny(
            &model,
            &json(&fixture(&format!("{name}/expected.json"))),
            &format!("{name}.gguf"),
        );
        let mut worst = 0f32;
        for case in json(&fixture(&format!("{name}/llamacpp.json")))["cases"]
            .as_array()
            .unwrap()
        {
            let ids = u32s(&case["input_ids"]);
            let got: Vec<f32> = model
                .forward(ids_tensor(&ids, &device), None, None)
                .into_data()
                .try_into_vec_as::<f32>()
                .unwrap();
            let want: Vec<f32> = case["logits"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(f32s)
                .collect();
            worst = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(worst, f32::max);
        }
        eprintln!("{name}.gguf: max |ours - llama.cpp| = {worst:.5}");
        assert!(worst < TINY_LLAMA_CPP_TOL, "{name}: {worst}");
    }
}

/// llama.cpp's `LlamaModel.permute` (convert_hf_to_gguf.py), applied here the way the converter
/// does, so loading the GGUF must undo it: `w.reshape(n_head, 2, rows/n_head/2, cols).swapaxes(1, 2)`.
fn llama_cpp_permute(w: &[f32], n_head: usize, cols: usize) -> Vec<f32> {
    let rows = w.len() / cols;
    let half = rows / n_head / 2;
    let mut out = vec![0.0; w.len()];
    for h in 0..n_head {
        for i in 0..2 {
            for j in 0..half {
                let src = h * 2 * half + i * half + j;
                let dst = h * 2 * half + j * 2 + i;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

#[test]
fn tiny_llama_through_gguf_with_permuted_qk_matches_transformers() {
    // Convert the tiny Llama to GGUF as llama.cpp's converter would (names, permuted q/k, RoPE
    // factors as `rope_freqs.weight`), then load it with the GGUF path.
    let dir = fixture("tiny_llama");
    let cfg_json = json(&dir.join("config.json"));
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", "llama")
        .add_metadata("llama.block_count", 2u32)
        .add_metadata("llama.context_length", 256u32)
        .add_metadata("llama.embedding_length", 64u32)
        .add_metadata("llama.feed_forward_length", 96u32)
        .add_metadata("llama.attention.head_count", 4u32)
        .add_metadata("llama.attention.head_count_kv", 2u32)
        .add_metadata("llama.rope.freq_base", 10000f32)
        .add_metadata("llama.attention.layer_norm_rms_epsilon", 1e-5f32);
    // Llama 3 frequency factors as llama.cpp's converter computes them (wavelength rule).
    let rp = &cfg_json["rope_parameters"];
    let (factor, lo, hi, orig) = (
        rp["factor"].as_f64().unwrap(),
        rp["low_freq_factor"].as_f64().unwrap(),
        rp["high_freq_factor"].as_f64().unwrap(),
        rp["original_max_position_embeddings"].as_f64().unwrap(),
    );
    let factors: Vec<f32> = (0..8)
        .map(|i| {
            let freq = 1.0 / 10000f64.powf(2.0 * i as f64 / 16.0);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            if wavelen < orig / hi {
                1.0
            } else if wavelen > orig / lo {
                factor as f32
            } else {
                let smooth = (orig / wavelen - lo) / (hi - lo);
                (1.0 / ((1.0 - smooth) / factor + smooth)) as f32
            }
        })
        .collect();
    w.add_tensor("rope_freqs.weight", &[8], GgmlType::F32, &factors);
    for (name, view) in st.tensors() {
        let shape = view.shape().to_vec();
        let mut vals: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let cols = if shape.len() == 2 { shape[1] } else { 1 };
        if name.contains("q_proj") {
            vals = llama_cpp_permute(&vals, 4, cols);
        } else if name.contains("k_proj") {
            vals = llama_cpp_permute(&vals, 2, cols);
        }
        let gname = tunelab::model::decoder::gguf_name(&name).unwrap();
        w.add_tensor(&gname, &shape, GgmlType::F32, &vals);
    }
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("tiny_llama.gguf");
    w.write(&path).unwrap();
    let g = GgufFile::open(&path).unwrap();
    let (model, cfg) = Decoder::from_gguf(&g, &Device::flex()).unwrap();
    assert!(cfg.qkv_bias && cfg.o_bias && !cfg.tie_word_embeddings);
    check_tiny(
        &model,
        &json(&dir.join("expected.json")),
        "tiny_llama (GGUF)",
    );
}

// ------------------------------------------------------------------------------------ templates

#[test]
fn chat_templates_render_as_transformers() {
    let fx = json(&fixture("chat_templates.json"));
    let cases = fx["cases"].as_array().unwrap();
    let mut files = std::collections::BTreeSet::new();
    for (i, case) in cases.iter().enumerate() {
        let file = case["template"].as_str().unwrap();
        files.insert(file.to_string());
        let src = std::fs::read_to_string(fixture("templates").join(file)).unwrap();
        let s = |k: &str| case[k].as_str().map(str::to_string);
        let tpl = ChatTemplate::new(&src, s("bos_token"), s("eos_token"), file).unwrap();
        let got = tpl.render_with(
            &case["messages"],
            case["add_generation_prompt"].as_bool().unwrap(),
            &case["kwargs"],
        );
        match (case.get("expected"), case.get("error")) {
            (Some(want), _) => {
                assert_eq!(got.unwrap(), want.as_str().unwrap(), "case {i} ({file})")
            }
            (_, Some(err)) => {
                let msg = got.unwrap_err().to_string();
                assert!(
                    msg.contains(err.as_str().unwrap()) && msg.contains(file),
                    "case {i}: {msg}"
                );
            }
            _ => unreachable!(),
        }
    }
    assert_eq!(files.len(), 1, "SmolLM2 (the template inside the bundled GGUF)");
}

// ------------------------------------------------------------------------------------ errors

fn minimal_gguf(path: &Path, arch: &str, ffn_type: GgmlType) {
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", arch);
    for (k, v) in [
        ("block_count", 1u32),
        ("embedding_length", 32),
        ("feed_forward_length", 32),
        ("attention.head_count", 2),
    ] {
        w.add_metadata(&format!("{arch}.{k}"), v);
    }
    w.add_metadata(&format!("{arch}.attention.layer_norm_rms_epsilon"), 1e-5f32);
    let z = vec![0.0f32; 32 * 32];
    w.add_tensor("token_embd.weight", &[32, 32], GgmlType::F32, &z);
    w.add_tensor("output_norm.weight", &[32], GgmlType::F32, &z[..32]);
    w.add_tensor("blk.0.attn_norm.weight", &[32], GgmlType::F32, &z[..32]);
    w.add_tensor("blk.0.ffn_norm.weight", &[32], GgmlType::F32, &z[..32]);
    for t in [
        "attn_q",
        "attn_k",
        "attn_v",
        "attn_output",
        "ffn_up",
        "ffn_down",
    ] {
        w.add_tensor(&format!("blk.0.{t}.weight"), &[32, 32], GgmlType::F32, &z);
    }
    // ffn_gate in the requested type (Q5_K: 32x256 elements of zeros = 32 blocks of 176 bytes).
    if ffn_type == GgmlType::F32 {
        w.add_tensor("blk.0.ffn_gate.weight", &[32, 32], GgmlType::F32, &z);
    } else {
        w.add_raw_tensor(
            "blk.0.ffn_gate.weight",
            &[32, 256],
            ffn_type,
            vec![0; 32 * 176],
        );
    }
    w.write(path).unwrap();
}

#[test]
fn unsupported_architecture_names_file_and_architecture() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("falcon.gguf");
    minimal_gguf(&path, "falcon", GgmlType::F32);
    let err = match CausalLm::load(&path, &Device::flex()) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("falcon must be refused"),
    };
    eprintln!("{err}");
    assert!(
        err.contains("falcon.gguf")
            && err.contains("general.architecture")
            && err.contains("'falcon'"),
        "{err}"
    );

    // HF folder with an unsupported model_type.
    let dir = tmp.path().join("gpt2");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("config.json"), r#"{"model_type": "gpt2"}"#).unwrap();
    let err = Decoder::from_hf_dir(&dir, &Device::flex()).unwrap_err();
    assert!(matches!(err, DecoderError::UnsupportedArchitecture { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("config.json") && msg.contains("model_type") && msg.contains("'gpt2'"),
        "{msg}"
    );
}

#[test]
fn unsupported_tensor_type_names_tensor_and_type() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("q5k.gguf");
    minimal_gguf(&path, "llama", GgmlType::Q5_K);
    let g = GgufFile::open(&path).unwrap();
    let err = Decoder::from_gguf(&g, &Device::flex())
        .unwrap_err()
        .to_string();
    eprintln!("{err}");
    assert!(
        err.contains("q5k.gguf") && err.contains("blk.0.ffn_gate.weight") && err.contains("Q5_K"),
        "{err}"
    );
}

#[test]
fn template_that_fails_to_render_names_where() {
    // A template error raised while rendering through the model bundle names the GGUF file and key.
    let tmp = tempfile::tempdir().unwrap();
    let src = "{% for m in messages %}{{ m.content }}{% endfor %}\n{{ raise_exception('no system role allowed') if messages[0].role == 'system' }}";
    let tpl = ChatTemplate::new(
        src,
        None,
        None,
        format!(
            "{} (tokenizer.chat_template)",
            tmp.path().join("m.gguf").display()
        ),
    )
    .unwrap();
    let err = tpl
        .render(
            &[tunelab::data::chat_template::ChatMessage::new(
                "system", "x",
            )],
            false,
        )
        .unwrap_err()
        .to_string();
    eprintln!("{err}");
    assert!(
        err.contains("m.gguf (tokenizer.chat_template)")
            && err.contains("no system role allowed")
            && err.contains("line 2"),
        "{err}"
    );
    // An undefined attribute access fails too, with the line.
    let tpl = ChatTemplate::new(
        "ok\n{{ messages[0].content.missing.deeper }}",
        None,
        None,
        "cfg.json (chat_template)",
    )
    .unwrap();
    let err = tpl
        .render(
            &[tunelab::data::chat_template::ChatMessage::new("user", "x")],
            false,
        )
        .unwrap_err()
        .to_string();
    eprintln!("{err}");
    assert!(
        err.contains("cfg.json (chat_template)") && err.contains("line 2"),
        "{err}"
    );
}

// ------------------------------------------------------------------------------------ CLI

#[test]
fn generate_cli_greedy_through_the_chat_template() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tunelab"))
        .args(["generate", "--model"])
        .arg(smollm_path())
        .args([
            "--prompt",
            "What is the capital of France?",
            "--max-tokens",
            "8",
            "--temp",
            "0",
            "--seed",
            "1",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("Paris"), "{stdout}");
    assert!(
        stderr.contains("Prompt:") && stderr.contains("tokens/s"),
        "{stderr}"
    );

    // An unsupported adapter flag and a missing model fail with messages naming them.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tunelab"))
        .args([
            "generate",
            "--model",
            "/nonexistent/model.gguf",
            "--prompt",
            "x",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/model.gguf"));
}

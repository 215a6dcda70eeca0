//! Decoder LoRA adapters ([`AdapterWeights`]) as GGUF adapters that llama.cpp applies at run time
//! (`llama-cli -m base.gguf --lora adapter.gguf`, llama-cpp-python `Llama(lora_path=...)`).
//!
//! The layout is what llama.cpp's `convert_lora_to_gguf.py` writes and `llama-adapter.cpp` reads:
//!
//! * metadata `general.type = "adapter"`, `general.architecture` = the base model's (llama.cpp
//!   refuses a mismatch), `adapter.type = "lora"`, `adapter.lora.alpha` (f32);
//! * per adapted linear layer `blk.N.<tensor>.weight.lora_a` with PEFT's `A` `[rank, in]` (ggml
//!   dims `[in, rank]`) and `….lora_b` with `B` `[out, rank]` (ggml dims `[rank, out]`); llama.cpp
//!   checks these against the base tensor's `[in, out]` and computes `scale·B·(A·x)`.
//!
//! Two details make the adapter match the base file rather than the Hugging Face checkpoint:
//!
//! * llama.cpp's converter permutes the rows of `q_proj` / `k_proj` of Llama-architecture models
//!   (`LlamaModel.permute`, for its interleaved RoPE). The delta `B·A` must be permuted the same
//!   way, which is a permutation of `B`'s rows; `A` is unchanged.
//! * llama.cpp's scale is `alpha / rank`. rsLoRA's `alpha / √rank` is written as the equivalent
//!   alpha (`scale · rank`), so the applied scale is the trained one.
//!
//! ```no_run
//! use tunelab::export::gguf_lora::{write_lora_gguf, LoraBase};
//! use tunelab::export::gguf_bert::GgufOutType;
//! use tunelab::io::gguf::GgufFile;
//! let adapter = tunelab::export::read_adapter_dir("runs/smollm-lora/adapter".as_ref()).unwrap();
//! let base = LoraBase::from_gguf(&GgufFile::open("models/SmolLM2-135M-Instruct.Q4_1.gguf").unwrap()).unwrap();
//! write_lora_gguf(&adapter, &base, "adapter.gguf".as_ref(), GgufOutType::F16).unwrap();
//! ```

use std::path::Path;

use super::gguf_bert::{GgufExportError, GgufExportSummary, GgufOutType};
use crate::io::gguf::{GgmlType, GgufFile, GgufWriter, MetaValue};
use crate::lora::{AdapterWeights, LoraConfig, LoraFactors};
use crate::model::decoder::{Architecture, gguf_name, permute_rows};

/// What the adapter needs to know about the GGUF base model it will be applied to.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraBase {
    /// `general.architecture` of the base file (`llama`, `qwen2`, …).
    pub architecture: String,
    /// Attention heads and key/value heads (`{arch}.attention.head_count[_kv]`).
    pub n_head: usize,
    pub n_head_kv: usize,
    /// Base tensors' shapes in PyTorch order, by GGUF name, for checking the factors against
    /// them (empty: not checked).
    pub shapes: std::collections::BTreeMap<String, Vec<usize>>,
}

impl LoraBase {
    /// Read the architecture, head counts and tensor shapes of a base GGUF.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, GgufExportError> {
        let arch = file.architecture()?.to_string();
        let n_head = file.get_int(&format!("{arch}.attention.head_count"))? as usize;
        let n_head_kv = file.opt_int(&format!("{arch}.attention.head_count_kv"))?.map_or(n_head, |v| v as usize);
        let shapes = file.tensors.iter().map(|t| (t.name.clone(), t.shape())).collect();
        Ok(Self { architecture: arch, n_head, n_head_kv, shapes })
    }

    /// Whether llama.cpp's converter permuted this architecture's q/k rows (as
    /// `model::decoder` undoes when it loads a GGUF).
    fn permutes_qk(&self) -> Result<bool, String> {
        match Architecture::parse(&self.architecture) {
            Some(Architecture::Llama | Architecture::Mistral) => Ok(true),
            Some(Architecture::Qwen2 | Architecture::Qwen3) => Ok(false),
            None => Err(format!(
                "base architecture '{}' is not one tunelab's decoder supports (llama, mistral, qwen2, qwen3)",
                self.architecture
            )),
        }
    }
}


/// The alpha to write so that llama.cpp's `alpha / rank` equals the trained scale.
pub fn llama_cpp_alpha(config: &LoraConfig) -> f32 {
    (config.scale() * config.rank as f64) as f32
}

/// Write `adapter` as a llama.cpp LoRA GGUF for `base`, factors stored as F32 or F16.
/// Refuses an existing `path`, Q8_0, layers llama.cpp cannot adapt from a GGUF LoRA (anything but
/// the attention and MLP projections), and factors whose shapes disagree with the base tensors.
pub fn write_lora_gguf(
    adapter: &AdapterWeights,
    base: &LoraBase,
    path: &Path,
    ty: GgufOutType,
) -> Result<GgufExportSummary, GgufExportError> {
    if path.exists() {
        return Err(GgufExportError::Exists { path: path.to_path_buf() });
    }
    let unsupported = |reason: String| GgufExportError::Unsupported { path: path.to_path_buf(), reason };
    let gty = match ty {
        GgufOutType::F32 => GgmlType::F32,
        GgufOutType::F16 => GgmlType::F16,
        GgufOutType::Q8_0 => return Err(unsupported("LoRA adapters are written as f32 or f16, not q8_0".into())),
    };
    let permute = base.permutes_qk().map_err(unsupported)?;
    if adapter.layers.is_empty() {
        return Err(unsupported("the adapter has no layers".into()));
    }
    if adapter.config.use_dora || !adapter.magnitudes.is_empty() {
        // llama.cpp adds scale·B·A; DoRA's row rescaling has no place in a GGUF adapter.
        return Err(unsupported("a DoRA adapter cannot be a llama.cpp LoRA adapter (it only adds B·A): fold it into the model with `tunelab fuse` instead".into()));
    }
    let cfg = &adapter.config;

    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", base.architecture.as_str());
    w.add_metadata("general.type", "adapter");
    w.add_metadata("general.name", adapter.metadata.get("name").cloned().unwrap_or_else(|| "tunelab-lora".into()));
    w.add_metadata("general.quantization_version", 2u32);
    w.add_metadata("adapter.type", "lora");
    w.add_metadata("adapter.lora.alpha", llama_cpp_alpha(cfg));
    let record = serde_json::json!({
        "tunelab_version": crate::version(),
        "created": chrono::Utc::now().to_rfc3339(),
        "format": "gguf-lora",
        "out_type": ty,
        "lora_config": cfg,
        "metadata": adapter.metadata,
    });
    w.add_metadata("tunelab.version", crate::version());
    w.add_metadata("tunelab.manifest", MetaValue::String(record.to_string()));

    let mut n = 0;
    for (module, f) in &adapter.layers {
        let tensor_err = |reason: String| GgufExportError::Tensor {
            path: path.to_path_buf(),
            tensor: module.clone(),
            reason,
        };
        let target = gguf_name(&format!("{module}.weight"))
            .filter(|g| !g.ends_with("_norm.weight") && g.starts_with("blk."))
            .ok_or_else(|| {
                tensor_err("not an attention or MLP projection (model.layers.N.self_attn.q_proj, …) of a llama.cpp decoder".into())
            })?;
        let LoraFactors { a, a_shape, b, b_shape } = f;
        let [rank, in_f] = *a_shape;
        let [out_f, rank_b] = *b_shape;
        if rank != rank_b || a.len() != rank * in_f || b.len() != out_f * rank {
            return Err(tensor_err(format!("A {a_shape:?} and B {b_shape:?} do not fit together")));
        }
        if let Some(shape) = base.shapes.get(&target)
            && shape.as_slice() != [out_f, in_f]
        {
            return Err(tensor_err(format!("B·A is [{out_f}, {in_f}] but the base tensor {target} is {shape:?}")));
        }
        if let Some(i) = a.iter().chain(b.iter()).position(|v| !v.is_finite()) {
            return Err(tensor_err(format!("factor value {i} is not finite")));
        }
        let b_gguf = if permute && target.ends_with(".attn_q.weight") {
            permute_rows(b, base.n_head, rank)
        } else if permute && target.ends_with(".attn_k.weight") {
            permute_rows(b, base.n_head_kv, rank)
        } else {
            b.clone()
        };
        w.add_tensor(&format!("{target}.lora_a"), &[rank, in_f], gty, a);
        w.add_tensor(&format!("{target}.lora_b"), &[out_f, rank], gty, &b_gguf);
        n += 2;
    }
    w.write(path)?;
    GgufExportSummary::of_written(path, n, ty)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn factors(rank: usize, in_f: usize, out_f: usize, seed: f32) -> LoraFactors {
        let a = (0..rank * in_f).map(|i| ((i as f32 + seed) * 0.37).sin()).collect();
        let b = (0..out_f * rank).map(|i| ((i as f32 + seed) * 0.71).cos()).collect();
        LoraFactors { a, a_shape: [rank, in_f], b, b_shape: [out_f, rank] }
    }

    /// A llama-shaped base: hidden 8, 2 heads of 4, 1 kv head, mlp 16.
    fn base(arch: &str) -> LoraBase {
        let mut shapes = BTreeMap::new();
        shapes.insert("blk.0.attn_q.weight".to_string(), vec![8, 8]);
        shapes.insert("blk.0.attn_k.weight".to_string(), vec![4, 8]);
        shapes.insert("blk.0.ffn_down.weight".to_string(), vec![8, 16]);
        LoraBase { architecture: arch.into(), n_head: 2, n_head_kv: 1, shapes }
    }

    fn adapter(rslora: bool) -> AdapterWeights {
        let cfg = LoraConfig { rank: 2, alpha: 4.0, use_rslora: rslora, ..LoraConfig::default() };
        let mut ad = AdapterWeights::new(cfg);
        ad.insert("model.layers.0.self_attn.q_proj", factors(2, 8, 8, 0.0)).unwrap();
        ad.insert("model.layers.0.self_attn.k_proj", factors(2, 8, 4, 1.0)).unwrap();
        ad.insert("model.layers.0.mlp.down_proj", factors(2, 16, 8, 2.0)).unwrap();
        ad.metadata.insert("audit".into(), "{\"ok\":true}".into());
        ad
    }

    /// Row-major `B·A` scaled: what llama.cpp adds to the base weight.
    fn delta(b: &[f32], a: &[f32], out_f: usize, rank: usize, in_f: usize, scale: f32) -> Vec<f32> {
        let mut d = vec![0.0; out_f * in_f];
        for o in 0..out_f {
            for k in 0..rank {
                for i in 0..in_f {
                    d[o * in_f + i] += scale * b[o * rank + k] * a[k * in_f + i];
                }
            }
        }
        d
    }

    #[test]
    fn llama_adapter_has_llama_cpp_layout_and_permuted_delta() {
        let ad = adapter(false);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lora.gguf");
        let s = write_lora_gguf(&ad, &base("llama"), &path, GgufOutType::F32).unwrap();
        assert_eq!(s.tensors, 6);
        let g = GgufFile::open(&path).unwrap();
        assert_eq!(g.get_str("general.type").unwrap(), "adapter");
        assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
        assert_eq!(g.get_str("adapter.type").unwrap(), "lora");
        assert_eq!(g.get_f64("adapter.lora.alpha").unwrap(), 4.0);
        let m: serde_json::Value = serde_json::from_str(g.get_str("tunelab.manifest").unwrap()).unwrap();
        assert_eq!(m["metadata"]["audit"], "{\"ok\":true}");
        // ggml dims as llama-adapter.cpp checks them: a [in, rank], b [rank, out].
        assert_eq!(g.tensor_info("blk.0.attn_k.weight.lora_a").unwrap().dims, vec![8, 2]);
        assert_eq!(g.tensor_info("blk.0.attn_k.weight.lora_b").unwrap().dims, vec![2, 4]);
        // The applied delta equals the HF delta with llama.cpp's q/k row permutation.
        let scale = 4.0 / 2.0;
        for (module, target, heads, out_f, in_f) in [
            ("model.layers.0.self_attn.q_proj", "blk.0.attn_q.weight", Some(2), 8, 8),
            ("model.layers.0.self_attn.k_proj", "blk.0.attn_k.weight", Some(1), 4, 8),
            ("model.layers.0.mlp.down_proj", "blk.0.ffn_down.weight", None, 8, 16),
        ] {
            let (_, a) = g.tensor_f32(&format!("{target}.lora_a")).unwrap();
            let (_, b) = g.tensor_f32(&format!("{target}.lora_b")).unwrap();
            let got = delta(&b, &a, out_f, 2, in_f, scale);
            let hf = ad.delta(module).unwrap();
            let want = match heads {
                Some(h) => permute_rows(&hf, h, in_f),
                None => hf,
            };
            for (x, y) in got.iter().zip(&want) {
                assert!((x - y).abs() < 1e-5, "{target}: {x} vs {y}");
            }
            if heads == Some(2) {
                assert_ne!(got, ad.delta(module).unwrap(), "q rows must be permuted for llama");
            }
        }
    }

    #[test]
    fn qwen_is_not_permuted_and_rslora_alpha_keeps_the_scale() {
        let ad = adapter(true);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.gguf");
        write_lora_gguf(&ad, &base("qwen2"), &path, GgufOutType::F16).unwrap();
        let g = GgufFile::open(&path).unwrap();
        assert_eq!(g.tensor_info("blk.0.attn_q.weight.lora_b").unwrap().ggml_type, GgmlType::F16);
        // rsLoRA scale 4/√2; llama.cpp divides the stored alpha by rank 2.
        let alpha = g.get_f64("adapter.lora.alpha").unwrap();
        assert!((alpha / 2.0 - 4.0 / 2f64.sqrt()).abs() < 1e-6, "alpha {alpha}");
        let (_, b) = g.tensor_f32("blk.0.attn_q.weight.lora_b").unwrap();
        let want = &ad.layers["model.layers.0.self_attn.q_proj"].b;
        for (x, y) in b.iter().zip(want) {
            assert!((x - y).abs() <= y.abs() * 1e-3, "F16 B, unpermuted: {x} vs {y}");
        }
    }

    #[test]
    fn refuses_bad_targets_shapes_types_and_architectures() {
        let dir = tempfile::tempdir().unwrap();
        let mut ad = adapter(false);
        let e = write_lora_gguf(&ad, &base("llama"), &dir.path().join("a.gguf"), GgufOutType::Q8_0).unwrap_err();
        assert!(e.to_string().contains("f32 or f16"), "{e}");
        let e = write_lora_gguf(&ad, &base("gpt2"), &dir.path().join("b.gguf"), GgufOutType::F32).unwrap_err();
        assert!(e.to_string().contains("gpt2"), "{e}");
        let mut wrong = base("llama");
        wrong.shapes.insert("blk.0.ffn_down.weight".into(), vec![8, 32]);
        let e = write_lora_gguf(&ad, &wrong, &dir.path().join("c.gguf"), GgufOutType::F32).unwrap_err();
        assert!(e.to_string().contains("model.layers.0.mlp.down_proj"), "{e}");
        ad.insert("lm_head", factors(2, 8, 8, 0.0)).unwrap();
        let e = write_lora_gguf(&ad, &base("llama"), &dir.path().join("d.gguf"), GgufOutType::F32).unwrap_err();
        assert!(e.to_string().contains("lm_head"), "{e}");
        let mut dora = adapter(false);
        dora.config.use_dora = true;
        let e = write_lora_gguf(&dora, &base("llama"), &dir.path().join("e.gguf"), GgufOutType::F32).unwrap_err();
        assert!(e.to_string().contains("DoRA") && e.to_string().contains("tunelab fuse"), "{e}");
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none(), "nothing written on error");
    }

    #[test]
    fn permute_rows_matches_llama_cpp_permute() {
        // convert_hf_to_gguf.py: w.reshape(n_head, 2, rows/n_head/2, cols).swapaxes(1, 2).reshape(w.shape)
        // for one head of 4 rows: HF rows [0, 1, 2, 3] -> [0, 2, 1, 3].
        let x: Vec<f32> = (0..8).map(|v| v as f32).collect(); // [4 rows, 2 cols]
        assert_eq!(permute_rows(&x, 1, 2), vec![0.0, 1.0, 4.0, 5.0, 2.0, 3.0, 6.0, 7.0]);
    }
}

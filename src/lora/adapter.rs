//! [`AdapterWeights`]: a trained adapter as plain host arrays, the hand-over point between
//! training (`src/train`) and the exporters (`src/export`: PEFT, MLX-LM, GGUF LoRA, fuse).
//!
//! Module paths use Hugging Face names without the `base_model.model.` prefix, e.g.
//! `model.layers.3.self_attn.q_proj` or `encoder.layer.0.attention.self.query`; factors keep
//! PEFT's shapes: `A` `[rank, in]`, `B` `[out, rank]`, and the update is `scale·B·A`.
//!
//! ```
//! use tunelab::lora::{AdapterWeights, LoraConfig, LoraFactors};
//!
//! let config = LoraConfig { rank: 1, alpha: 2.0, ..LoraConfig::default() };
//! let mut adapter = AdapterWeights::new(config);
//! adapter.insert("model.layers.0.self_attn.q_proj", LoraFactors {
//!     a: vec![1.0, 2.0], a_shape: [1, 2], b: vec![3.0, 4.0], b_shape: [2, 1],
//! }).unwrap();
//! // delta = scale · B·A = 2 · [[3, 6], [4, 8]]
//! assert_eq!(adapter.delta("model.layers.0.self_attn.q_proj").unwrap(), vec![6.0, 12.0, 8.0, 16.0]);
//! ```

use std::collections::BTreeMap;

use super::{LoraConfig, LoraError, LoraLinear};

/// The two factors of one adapted linear layer, row-major f32.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraFactors {
    /// `A`, `[rank, in]`.
    pub a: Vec<f32>,
    pub a_shape: [usize; 2],
    /// `B`, `[out, rank]`.
    pub b: Vec<f32>,
    pub b_shape: [usize; 2],
}

/// A whole adapter: its configuration and the factors of every adapted layer, keyed by module
/// path (sorted, so exports are byte-for-byte reproducible).
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterWeights {
    pub config: LoraConfig,
    pub layers: BTreeMap<String, LoraFactors>,
    /// DoRA's magnitude vector `m` `[out]` of each adapted layer (same keys as `layers`), empty
    /// for a plain LoRA adapter.
    pub magnitudes: BTreeMap<String, Vec<f32>>,
    /// Free-form metadata that travels into every export (training manifest, governance audit,
    /// base model name), as JSON strings.
    pub metadata: BTreeMap<String, String>,
}

impl AdapterWeights {
    /// An empty adapter with this configuration.
    pub fn new(config: LoraConfig) -> Self {
        AdapterWeights { config, layers: BTreeMap::new(), magnitudes: BTreeMap::new(), metadata: BTreeMap::new() }
    }

    /// Adds one layer's factors; shapes must agree with each other and with the rank.
    pub fn insert(&mut self, path: &str, f: LoraFactors) -> Result<(), LoraError> {
        let [r, in_f] = f.a_shape;
        let [out_f, r2] = f.b_shape;
        let bad = |reason: String| Err(LoraError::Config { field: "layers", reason: format!("{path}: {reason}") });
        if r != self.config.rank || r2 != self.config.rank {
            return bad(format!("A {:?} / B {:?} do not have rank {}", f.a_shape, f.b_shape, self.config.rank));
        }
        if f.a.len() != r * in_f || f.b.len() != out_f * r2 {
            return bad(format!("data lengths {} / {} do not match shapes {:?} / {:?}", f.a.len(), f.b.len(), f.a_shape, f.b_shape));
        }
        self.layers.insert(path.to_string(), f);
        Ok(())
    }

    /// Adds the factors of a [`LoraLinear`] (and its DoRA magnitude, if any), copied to the host.
    pub fn insert_linear(&mut self, path: &str, l: &LoraLinear) -> Result<(), LoraError> {
        let host = |t: burn::tensor::Tensor<2>| t.into_data().try_into_vec_as::<f32>().expect("f32 parameters");
        let (a, b) = (l.lora_a.val(), l.lora_b.val());
        let (a_shape, b_shape) = (a.dims(), b.dims());
        self.insert(path, LoraFactors { a: host(a), a_shape, b: host(b), b_shape })?;
        if let Some(m) = &l.magnitude {
            self.insert_magnitude(path, m.val().into_data().try_into_vec_as::<f32>().expect("f32 parameters"))?;
        }
        Ok(())
    }

    /// Adds DoRA's magnitude `m` of a layer already inserted; its length must be the layer's
    /// output size.
    pub fn insert_magnitude(&mut self, path: &str, m: Vec<f32>) -> Result<(), LoraError> {
        let bad = |reason: String| Err(LoraError::Config { field: "layers", reason: format!("{path}: {reason}") });
        let Some(f) = self.layers.get(path) else {
            return bad("a magnitude vector without lora_A / lora_B".into());
        };
        if m.len() != f.b_shape[0] {
            return bad(format!("magnitude has {} entries, the layer has {} outputs", m.len(), f.b_shape[0]));
        }
        self.magnitudes.insert(path.to_string(), m);
        Ok(())
    }

    /// Checks that a DoRA adapter has a magnitude for every layer and a LoRA adapter none; the
    /// error names the first layer that breaks this.
    pub fn check_dora(&self) -> Result<(), LoraError> {
        let bad = |reason: String| Err(LoraError::Config { field: "use_dora", reason });
        if !self.config.use_dora {
            if let Some(p) = self.magnitudes.keys().next() {
                return bad(format!("{p} has a DoRA magnitude vector but the adapter is not DoRA"));
            }
        } else if let Some(p) = self.layers.keys().find(|p| !self.magnitudes.contains_key(*p)) {
            return bad(format!("{p}: a DoRA adapter needs a magnitude vector for every layer"));
        }
        Ok(())
    }

    /// `scale·B·A`, `[out, in]` row-major: what fusing adds to the base weight (for a DoRA
    /// adapter the update before the magnitude rescaling; see [`super::dora_merge`]).
    pub fn delta(&self, path: &str) -> Option<Vec<f32>> {
        let f = self.layers.get(path)?;
        let ([r, in_f], [out_f, _]) = (f.a_shape, f.b_shape);
        let scale = self.config.scale() as f32;
        let mut d = vec![0.0f32; out_f * in_f];
        for o in 0..out_f {
            for k in 0..r {
                let bk = f.b[o * r + k] * scale;
                if bk == 0.0 {
                    continue;
                }
                let row = &f.a[k * in_f..(k + 1) * in_f];
                for (x, a) in d[o * in_f..(o + 1) * in_f].iter_mut().zip(row) {
                    *x += bk * a;
                }
            }
        }
        Some(d)
    }
}

//! LoRA wiring of a [`Decoder`]: attach, read, merge and load adapters on the seven block
//! projections, under PEFT's module paths.


use burn::module::{Module, Param, ParamId};
use burn::tensor::{Tensor, TensorData};
use rand::Rng;

use crate::lora::{
    AdaptableLinear, AdapterWeights, BaseWeight, LoraConfig, LoraError, LoraFactors, LoraLinear,
    QuantError, QuantLinear, QuantType, QuantWeight,
};

use super::*;

// ------------------------------------------------------------------------------------------ LoRA

/// Module paths of the seven projections of a block, relative to `model.layers.{i}` (PEFT's
/// and MLX-LM's names).
pub const PROJECTIONS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

/// Which input each of [`PROJECTIONS`] reads, numbered per block: q/k/v read the attention's
/// input and gate/up the MLP's (`Attention::forward` and `Mlp::forward` hand each of those to
/// their projections as one `lora::SharedInput`), o and down read their own.
pub const PROJECTION_INPUTS: [usize; 7] = [0, 0, 0, 1, 2, 2, 3];

impl DecoderLayer {
    /// The seven projections with their paths relative to the block.
    pub fn projections(&self) -> [(&'static str, &AdaptableLinear); 7] {
        let (a, m) = (&self.self_attn, &self.mlp);
        [
            (PROJECTIONS[0], &a.q_proj),
            (PROJECTIONS[1], &a.k_proj),
            (PROJECTIONS[2], &a.v_proj),
            (PROJECTIONS[3], &a.o_proj),
            (PROJECTIONS[4], &m.gate_proj),
            (PROJECTIONS[5], &m.up_proj),
            (PROJECTIONS[6], &m.down_proj),
        ]
    }

    /// Rebuild the block with each projection passed through `f(relative path, projection)`.
    pub(super) fn map_projections<E>(
        self,
        mut f: impl FnMut(&'static str, AdaptableLinear) -> Result<AdaptableLinear, E>,
    ) -> Result<Self, E> {
        let DecoderLayer {
            input_layernorm,
            self_attn,
            post_attention_layernorm,
            mlp,
        } = self;
        let Attention {
            q_proj,
            k_proj,
            v_proj,
            o_proj,
            q_norm,
            k_norm,
            n_heads,
            n_kv_heads,
            head_dim,
        } = self_attn;
        let self_attn = Attention {
            q_proj: f(PROJECTIONS[0], q_proj)?,
            k_proj: f(PROJECTIONS[1], k_proj)?,
            v_proj: f(PROJECTIONS[2], v_proj)?,
            o_proj: f(PROJECTIONS[3], o_proj)?,
            q_norm,
            k_norm,
            n_heads,
            n_kv_heads,
            head_dim,
        };
        let mlp = Mlp {
            gate_proj: f(PROJECTIONS[4], mlp.gate_proj)?,
            up_proj: f(PROJECTIONS[5], mlp.up_proj)?,
            down_proj: f(PROJECTIONS[6], mlp.down_proj)?,
        };
        Ok(DecoderLayer {
            input_layernorm,
            self_attn,
            post_attention_layernorm,
            mlp,
        })
    }
}

/// A fixed parameter id for adapter factor `factor` (`lora_A`/`lora_B`) of the layer at `path`
/// (FNV-1a of both). Optimizer state is keyed by parameter id, so fixed ids let a resumed run
/// match the saved AdamW moments to adapters rebuilt from a saved adapter file.
pub fn adapter_param_id(path: &str, factor: &str) -> ParamId {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in path.bytes().chain([b'.']).chain(factor.bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    ParamId::from(h)
}

pub(super) fn with_id<const D: usize>(p: Param<Tensor<D>>, id: ParamId) -> Param<Tensor<D>> {
    let (_, value, mapper) = p.consume();
    Param::from_mapped_value(id, value, mapper)
}

/// Give a freshly built adapter the fixed ids of [`adapter_param_id`].
fn fix_ids(mut l: LoraLinear, path: &str) -> LoraLinear {
    l.lora_a = with_id(l.lora_a, adapter_param_id(path, "lora_A"));
    l.lora_b = with_id(l.lora_b, adapter_param_id(path, "lora_B"));
    l.magnitude = l.magnitude.map(|m| with_id(m, adapter_param_id(path, "lora_magnitude_vector")));
    l
}

pub(super) fn host(t: Tensor<2>) -> Vec<f32> {
    t.into_data()
        .try_into_vec_as::<f32>()
        .expect("f32 parameters")
}

impl Decoder {
    /// What MLX-LM adapts when no keys are given: every linear layer of the blocks.
    pub const DEFAULT_LORA_TARGETS: [&'static str; 7] = [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ];

    /// Freeze every weight and attach LoRA adapters where `config` says: targets by name
    /// (`q_proj`), relative path (`self_attn.q_proj`) or full path
    /// (`model.layers.3.mlp.up_proj`); all seven projections by default (MLX-LM's choice);
    /// `num_layers` blocks counted from the top. `A` is drawn from `rng`, `B` is zero.
    /// Fails with [`LoraError::NoMatch`] when a listed target matches no adapted layer.
    pub fn with_lora<R: Rng>(self, config: &LoraConfig, rng: &mut R) -> Result<Self, LoraError> {
        config.validate()?;
        let mut m = self.no_grad();
        let n = m.layers.len();
        let mut hit = std::collections::BTreeSet::new();
        let mut layers = Vec::with_capacity(n);
        for (i, layer) in std::mem::take(&mut m.layers).into_iter().enumerate() {
            if !config.adapts_layer(i, n) {
                layers.push(layer);
                continue;
            }
            layers.push(layer.map_projections(|rel, slot| {
                let path = format!("model.layers.{i}.{rel}");
                let named: Vec<&String> = config
                    .target_modules
                    .iter()
                    .filter(|t| path == **t || path.ends_with(&format!(".{t}")))
                    .collect();
                hit.extend(named.iter().map(|t| t.to_string()));
                let wanted = if config.target_modules.is_empty() {
                    config.targets(&path, &Self::DEFAULT_LORA_TARGETS)
                } else {
                    !named.is_empty()
                };
                match slot {
                    AdaptableLinear::Base(l) if wanted => Ok(AdaptableLinear::Lora(fix_ids(
                        LoraLinear::from_linear(&l, config, &mut *rng)?,
                        &path,
                    ))),
                    AdaptableLinear::Quantized(l) if wanted => Ok(AdaptableLinear::Lora(fix_ids(
                        LoraLinear::from_quantized(&l, config, &mut *rng)?,
                        &path,
                    ))),
                    other => Ok(other),
                }
            })?);
        }
        m.layers = layers;
        if let Some(t) = config.target_modules.iter().find(|t| !hit.contains(*t)) {
            return Err(LoraError::NoMatch {
                target: t.clone(),
                model: format!(
                    "this {n}-block decoder (num_layers = {})",
                    config.num_layers
                ),
            });
        }
        Ok(m)
    }

    /// The adapters as plain arrays, keyed `model.layers.{i}.self_attn.q_proj` (PEFT's paths).
    pub fn adapter_weights(&self, config: &LoraConfig) -> AdapterWeights {
        let mut out = AdapterWeights::new(config.clone());
        for (i, layer) in self.layers.iter().enumerate() {
            for (rel, slot) in layer.projections() {
                if let AdaptableLinear::Lora(l) = slot {
                    out.insert_linear(&format!("model.layers.{i}.{rel}"), l)
                        .expect("factors of a LoraLinear have consistent shapes");
                }
            }
        }
        out
    }

    /// Number of adapted projections.
    pub fn lora_layer_count(&self) -> usize {
        self.layers
            .iter()
            .flat_map(|l| l.projections())
            .filter(|(_, s)| s.is_lora())
            .count()
    }

    /// Quantize every f32 projection without an adapter to `ty` with ggml's reference quantizer
    /// (QLoRA on a model loaded as f32); already quantized ones are left as they are. The error
    /// names the layer whose rows are not whole blocks of 32.
    pub fn quantize_projections(mut self, ty: QuantType) -> Result<Self, QuantError> {
        let layers = std::mem::take(&mut self.layers);
        let mut out = Vec::with_capacity(layers.len());
        for (i, layer) in layers.into_iter().enumerate() {
            out.push(layer.map_projections(|rel, slot| match slot {
                AdaptableLinear::Base(l) => {
                    let w = l.weight.val().transpose();
                    let shape = w.dims();
                    let q = QuantWeight::quantize_named(&format!("model.layers.{i}.{rel}.weight"), ty, &host(w), shape, &l.weight.val().device())?;
                    Ok(AdaptableLinear::Quantized(QuantLinear::new(q, l.bias.map(|b| b.val()))))
                }
                other => Ok(other),
            })?);
        }
        self.layers = out;
        Ok(self)
    }

    /// Bytes the block projections' frozen weights take on the device (f32 or quantized;
    /// adapters not counted): what QLoRA shrinks.
    pub fn projection_bytes(&self) -> usize {
        let dense = |dims: [usize; 2]| dims[0] * dims[1] * 4;
        self.layers
            .iter()
            .flat_map(|l| l.projections())
            .map(|(_, s)| match s {
                AdaptableLinear::Base(l) => dense(l.weight.dims()),
                AdaptableLinear::Lora(l) => match &l.weight {
                    BaseWeight::Dense(w) => dense(w.dims()),
                    BaseWeight::Quantized(q) => q.bytes_at_rest(),
                },
                AdaptableLinear::Quantized(l) => l.weight.bytes_at_rest(),
            })
            .sum()
    }

    /// Every adapter folded into its base weight (`W + scale·B·A`): a plain model again.
    pub fn merged(mut self) -> Self {
        self.layers = std::mem::take(&mut self.layers)
            .into_iter()
            .map(|l| {
                l.map_projections(|_, s| Ok::<_, std::convert::Infallible>(s.merged()))
                    .unwrap_or_else(|e| match e {})
            })
            .collect();
        self
    }

    /// Freeze the model and attach the saved factors of `adapter` (scale and dropout from its
    /// config). An already adapted projection gets the new factors on its base weight. Fails,
    /// naming the layer, when a path is not a projection of this model or a shape disagrees.
    pub fn apply_adapter(self, adapter: &AdapterWeights) -> Result<Self, LoraError> {
        adapter.config.validate()?;
        let mut m = self.no_grad();
        let n = m.layers.len();
        let bad = |path: &str, reason: String| LoraError::Config {
            field: "layers",
            reason: format!("{path}: {reason}"),
        };
        let mut by_layer: Vec<Vec<(&'static str, &str, &LoraFactors)>> = vec![Vec::new(); n];
        for (path, f) in &adapter.layers {
            let parsed = path
                .strip_prefix("model.layers.")
                .and_then(|r| r.split_once('.'))
                .and_then(|(i, rel)| Some((i.parse::<usize>().ok()?, rel)))
                .and_then(|(i, rel)| Some((i, *PROJECTIONS.iter().find(|p| **p == rel)?)));
            match parsed {
                Some((i, rel)) if i < n => by_layer[i].push((rel, path.as_str(), f)),
                _ => {
                    return Err(bad(
                        path,
                        format!("not a projection of this {n}-block decoder"),
                    ));
                }
            }
        }
        let device = m.embed_tokens.val().device();
        let (scale, dropout) = (adapter.config.scale(), adapter.config.dropout);
        let mut layers = Vec::with_capacity(n);
        for (i, layer) in std::mem::take(&mut m.layers).into_iter().enumerate() {
            let wanted = &by_layer[i];
            layers.push(layer.map_projections(|rel, slot| {
                let Some((_, path, f)) = wanted.iter().find(|(r, _, _)| *r == rel) else {
                    return Ok(slot);
                };
                // Base weights are `[in, out]`; LoRA keeps `[out, in]` as PEFT does. A quantized
                // base stays quantized (QLoRA).
                let (weight, bias) = match slot {
                    AdaptableLinear::Base(l) => (
                        BaseWeight::Dense(Param::from_tensor(l.weight.val().transpose().detach()).set_require_grad(false)),
                        l.bias.map(|b| b.val()),
                    ),
                    AdaptableLinear::Lora(l) => (l.weight, l.bias.map(|b| b.val())),
                    AdaptableLinear::Quantized(l) => (BaseWeight::Quantized(l.weight), l.bias.map(|b| b.val())),
                };
                let [out_f, in_f] = weight.dims();
                if f.a_shape[1] != in_f || f.b_shape[0] != out_f {
                    return Err(bad(
                        path,
                        format!(
                            "lora_A {:?} / lora_B {:?} do not fit a [{out_f}, {in_f}] weight",
                            f.a_shape, f.b_shape
                        ),
                    ));
                }
                let t = |v: &[f32], s: [usize; 2]| {
                    Tensor::<2>::from_data(TensorData::new(v.to_vec(), s), &device)
                };
                let l = LoraLinear::from_base(
                    weight,
                    bias,
                    t(&f.a, f.a_shape),
                    t(&f.b, f.b_shape),
                    scale,
                    dropout,
                );
                // DoRA: the saved magnitude, or for a LoRA adapter applied as DoRA the row norms
                // of the adapted weight (the layer then computes what the LoRA adapter did).
                let l = match adapter.magnitudes.get(*path) {
                    Some(m) if m.len() != out_f => {
                        return Err(bad(path, format!("magnitude has {} entries, the weight has {out_f} rows", m.len())));
                    }
                    Some(m) => l.with_magnitude(Some(Tensor::<1>::from_data(TensorData::new(m.clone(), [out_f]), &device))),
                    None => l.with_dora_init(adapter.config.use_dora),
                };
                Ok(AdaptableLinear::Lora(fix_ids(l, path)))
            })?);
        }
        m.layers = layers;
        Ok(m)
    }
}

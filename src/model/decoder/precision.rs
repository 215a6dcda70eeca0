//! Mixed precision for decoder training (`--dtype f16`), as `torch.autocast` + `GradScaler`
//! arrange it for a LoRA fine-tune: the frozen base weights (embedding, the seven block
//! projections, the output head, their biases) are cast once to f16, so the activations that
//! flow between them and the big matmuls are f16 (tensor cores on a GPU: Vulkan exposes them
//! for f16 only, bf16 is not supported there); everything that accumulates or is small stays f32:
//! RMSNorm (its weights and its mean of squares), the attention softmax (scores are cast up before
//! the mask and the softmax), the LoRA factors and their branch ([`crate::lora::LoraLinear`]),
//! the logits and the cross-entropy ([`Decoder::logits`] returns f32), the optimizer state and
//! the loss scale ([`crate::train::loss_scale`]).
//!
//! The compute dtype is not stored anywhere: every operation follows the dtype of the tensor it
//! receives, and the activations are f16 exactly when the embedding table is. An f32 model
//! therefore runs exactly the operations it ran before this file existed (a cast to a tensor's own
//! dtype is a no-op in burn, not even an autodiff node).

use std::str::FromStr;

use burn::module::Param;
use burn::nn::RmsNorm;
use burn::tensor::{DType, FloatDType, Tensor};
use serde::{Deserialize, Serialize};

use crate::lora::{AdaptableLinear, BaseWeight};

use super::{Decoder, Projection};

/// The dtype of a model's frozen base weights and activations during training.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// The default: f16 where it runs and pays, f32 elsewhere ([`Dtype::resolve`]): on a GPU
    /// whose backend computes f16 (tensor cores) for a run that can take it, f32 on the CPU
    /// (no f16 SIMD there: slower) and for runs that need f32 weights. A run resolves it once,
    /// before anything else, and records what it resolved to.
    #[default]
    Auto,
    /// Everything in f32 (bit-identical to training before mixed precision).
    F32,
    /// Base weights and activations in f16, reductions, adapters and loss in f32, with dynamic
    /// loss scaling (module notes).
    F16,
}

impl Dtype {
    /// `Auto` made concrete for a run on `device`: `F16` on a GPU that computes f16 when
    /// `f16_ok` (the run can train in f16: a LoRA adapter over a frozen base, or a BERT-family
    /// encoder; not DoRA, a full decoder fine-tune or EmbeddingGemma), else `F32`. On the CPU
    /// always `F32`. `F32` and `F16` stay as given (an explicit f16 the run cannot take is
    /// refused by its config's validation, naming the option).
    ///
    /// ```
    /// use tunelab::model::decoder::Dtype;
    /// let cpu = burn::tensor::Device::flex();
    /// assert_eq!(Dtype::Auto.resolve(&cpu, true), Dtype::F32);
    /// assert_eq!(Dtype::F16.resolve(&cpu, true), Dtype::F16);
    /// ```
    pub fn resolve(self, device: &burn::tensor::Device, f16_ok: bool) -> Dtype {
        self.resolve_with(!crate::device::is_cpu(device) && device.supports_dtype(DType::F16), f16_ok)
    }

    /// [`Self::resolve`] with the device reduced to whether it is a GPU that computes f16.
    pub fn resolve_with(self, gpu_computes_f16: bool, f16_ok: bool) -> Dtype {
        match self {
            Self::Auto if gpu_computes_f16 && f16_ok => Self::F16,
            Self::Auto => Self::F32,
            given => given,
        }
    }

    /// burn's dtype for the base weights and activations (of a resolved dtype).
    pub fn float_dtype(self) -> FloatDType {
        match self {
            Self::F32 => FloatDType::F32,
            Self::F16 => FloatDType::F16,
            // Every run resolves its dtype before building anything: reaching this is a bug.
            Self::Auto => panic!("Dtype::Auto is resolved against the device (Dtype::resolve) before it is used"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::F32 => "f32",
            Self::F16 => "f16",
        }
    }

    /// Whether `device` can hold and compute this dtype; the error says why not (burn-wgpu
    /// without the `shader-f16` feature, e.g.), for the trainers to refuse the option up front.
    pub fn check_device(self, device: &burn::tensor::Device) -> Result<(), String> {
        if self == Self::F16 && !device.supports_dtype(DType::F16) {
            return Err(format!("f16 is not supported by the device {device:?}; use --dtype f32 (or auto)"));
        }
        Ok(())
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Dtype {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            other => Err(format!("'{other}' is not a training dtype (auto, f32, f16; bf16 is not supported by burn's Vulkan backend)")),
        }
    }
}

/// `norm(x)` computed in f32 whatever `x`'s dtype, returned in `x`'s dtype: the mean of squares
/// of an f16 row overflows f16 (max 65,504) as soon as its entries pass ~256 in magnitude, and
/// the norm weights stay f32 (they are cast by nothing). One operation (`model::rms_norm`).
pub(super) fn rms_norm_f32<const D: usize>(norm: &RmsNorm, x: Tensor<D>) -> Tensor<D> {
    crate::model::rms_norm::rms_norm(norm, x)
}

/// Values of a parameter.
fn numel<const D: usize>(p: &Param<Tensor<D>>) -> usize {
    p.shape().dims::<D>().iter().product()
}

/// A frozen parameter cast to `dtype` (same id, still frozen).
fn cast_param<const D: usize>(p: Param<Tensor<D>>, dtype: FloatDType) -> Param<Tensor<D>> {
    p.map(|t| t.cast(dtype))
}

impl AdaptableLinear {
    /// The frozen weight and bias in `dtype`; LoRA factors and DoRA magnitudes untouched (f32).
    /// A quantized base keeps its blocks: it is dequantized (to f32, bit-exact with ggml) and
    /// cast to the activations' dtype at each use, as PEFT's QLoRA dequantizes to its compute dtype.
    /// (Also the BERT encoder's, `model::bert::BertModel::with_dtype`, for its frozen layers.)
    pub(crate) fn with_frozen_dtype(self, dtype: FloatDType) -> Self {
        match self {
            Self::Base(mut l) => {
                l.weight = cast_param(l.weight, dtype);
                l.bias = l.bias.map(|b| cast_param(b, dtype));
                Self::Base(l)
            }
            Self::Lora(mut l) => {
                if let BaseWeight::Dense(w) = l.weight {
                    l.weight = BaseWeight::Dense(cast_param(w, dtype));
                }
                l.bias = l.bias.map(|b| cast_param(b, dtype));
                Self::Lora(l)
            }
            Self::Quantized(mut q) => {
                q.bias = q.bias.map(|b| cast_param(b, dtype));
                Self::Quantized(q)
            }
        }
    }

    /// Values [`Self::with_frozen_dtype`] casts (a quantized base's blocks are not cast).
    fn frozen_dtype_values(&self) -> usize {
        let bias = |b: &Option<Param<Tensor<1>>>| b.as_ref().map_or(0, numel);
        match self {
            Self::Base(l) => numel(&l.weight) + bias(&l.bias),
            Self::Lora(l) => (if let BaseWeight::Dense(w) = &l.weight { numel(w) } else { 0 }) + bias(&l.bias),
            Self::Quantized(q) => bias(&q.bias),
        }
    }
}

impl Decoder {
    /// How many values [`Decoder::with_frozen_dtype`] casts: the memory estimate counts them
    /// at 2 bytes under `--dtype f16` (`train::sft::memory_estimate`).
    pub fn frozen_dtype_values(&self) -> usize {
        let head = self.lm_head.as_ref().map_or(0, |h| numel(&h.weight) + h.bias.as_ref().map_or(0, numel));
        let layers: usize = self.layers.iter().flat_map(|l| l.projections()).map(|(_, p)| p.frozen_dtype_values()).sum();
        numel(&self.embed_tokens) + head + layers
    }

    /// Cast the frozen base weights (embedding, projections, output head and their biases) to
    /// `dtype`, once, after adapters are attached: the activations then run in `dtype` (module
    /// notes). Norm weights, RoPE frequencies and every trainable parameter stay f32. With
    /// [`Dtype::F32`] the model is returned as it is.
    ///
    /// Only frozen weights are cast: a model whose base trains (full fine-tune) must keep f32
    /// master weights, and the trainers refuse `f16` for it.
    pub fn with_frozen_dtype(self, dtype: Dtype) -> Self {
        if dtype == Dtype::F32 {
            return self;
        }
        let dt = dtype.float_dtype();
        let Decoder { embed_tokens, layers, norm, lm_head, inv_freq } = self;
        let layers = layers
            .into_iter()
            .map(|l| l.map_projections(|_, p| Ok::<_, std::convert::Infallible>(p.with_frozen_dtype(dt))).expect("infallible"))
            .collect();
        Decoder {
            embed_tokens: cast_param(embed_tokens, dt),
            layers,
            norm,
            lm_head: lm_head.map(|h| Projection { weight: cast_param(h.weight, dt), bias: h.bias.map(|b| cast_param(b, dt)) }),
            inv_freq,
        }
    }

    /// The final RMSNorm applied as [`Decoder::forward_hidden`] applies it (in f32, returned in
    /// `x`'s dtype): for losses that take the last block's output themselves
    /// (`train::block_checkpoint`).
    pub fn final_norm<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        rms_norm_f32(&self.norm, x)
    }

    /// The dtype of the base weights and activations ([`Decoder::with_frozen_dtype`]).
    pub fn activation_dtype(&self) -> DType {
        self.embed_tokens.val().dtype()
    }
}

#[cfg(test)]
mod tests {
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::tensor::{DType, Device, Int, Tensor, TensorData};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::Dtype;
    use crate::lora::{AdaptableLinear, BaseWeight, LoraConfig, QuantType};
    use crate::model::decoder::{Architecture, Decoder, DecoderConfig};

    /// Every float parameter's dtype, split by whether it trains.
    fn dtypes<M: Module>(m: &M) -> (Vec<DType>, Vec<DType>) {
        struct V(Vec<DType>, Vec<DType>);
        impl ModuleVisitor for V {
            fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
                let t = p.val();
                if t.is_require_grad() { self.0.push(t.dtype()) } else { self.1.push(t.dtype()) }
            }
        }
        let mut v = V(Vec::new(), Vec::new());
        m.visit(&mut v);
        (v.0, v.1)
    }

    /// `auto` resolves to f16 exactly when the device is a GPU that computes f16 and the run can
    /// take f16; explicit dtypes pass through; on the CPU (plain and autodiff) `auto` is f32; the
    /// three spellings parse (any case refused but lower, as the CLI and TOML write them).
    #[test]
    fn auto_resolves_by_device_and_run() {
        for gpu in [false, true] {
            for ok in [false, true] {
                let want = if gpu && ok { Dtype::F16 } else { Dtype::F32 };
                assert_eq!(Dtype::Auto.resolve_with(gpu, ok), want, "gpu {gpu} ok {ok}");
                assert_eq!(Dtype::F32.resolve_with(gpu, ok), Dtype::F32);
                assert_eq!(Dtype::F16.resolve_with(gpu, ok), Dtype::F16);
            }
        }
        for device in [Device::flex(), Device::flex().autodiff()] {
            assert_eq!(Dtype::Auto.resolve(&device, true), Dtype::F32, "{device:?}");
            assert_eq!(Dtype::F16.resolve(&device, false), Dtype::F16, "{device:?}");
        }
        for (text, want) in [("auto", Some(Dtype::Auto)), ("f32", Some(Dtype::F32)), ("f16", Some(Dtype::F16)), ("Auto", None), (" f16", None), ("bf16", None), ("", None)] {
            assert_eq!(text.parse::<Dtype>().ok(), want, "{text:?}");
        }
        assert_eq!(Dtype::default(), Dtype::Auto);
        let toml_value: std::collections::BTreeMap<String, Dtype> = toml::from_str("d = \"auto\"").unwrap();
        assert_eq!(toml_value["d"], Dtype::Auto);
    }

    /// Which runs `auto` may give f16: LoRA decoders (not DoRA, not full fine-tunes), BERT-family
    /// encoders (not under DoRA), never EmbeddingGemma (its activations overflow f16).
    #[test]
    fn runs_that_can_train_in_f16() {
        use crate::lora::FineTuneType;
        use crate::train::sft::SftConfig;
        for (ft, want) in [(FineTuneType::Lora, true), (FineTuneType::Dora, false), (FineTuneType::Full, false)] {
            let cfg = SftConfig { fine_tune_type: ft, ..SftConfig::default() };
            assert_eq!(cfg.trains_in_f16(), want, "{ft:?}");
            assert_eq!(Dtype::Auto.resolve_with(true, cfg.trains_in_f16()), if want { Dtype::F16 } else { Dtype::F32 });
            // An explicit f16 for a run that cannot take it is refused by validation, naming dtype.
            let explicit = SftConfig { dtype: Dtype::F16, ..cfg.clone() }.validate();
            assert_eq!(explicit.is_err(), !want, "{ft:?}: {explicit:?}");
            assert!(SftConfig { dtype: Dtype::Auto, ..cfg }.validate().is_ok(), "{ft:?}: auto is always valid");
        }
        use crate::train::contrastive_trainer::ContrastiveConfig;
        use crate::train::encoder::TrainableEncoder;
        let bert = crate::model::bert::SentenceEncoder::random_tiny(&["a", "b"], 0, &Device::flex());
        let gemma = crate::model::gemma::GemmaEncoder::random_tiny(&["a", "b"], 0, &Device::flex());
        let dora = LoraConfig { rank: 2, alpha: 4.0, use_dora: true, ..LoraConfig::default() };
        let plain = ContrastiveConfig::default();
        let with_dora = ContrastiveConfig { lora: Some(dora), ..ContrastiveConfig::default() };
        assert!(bert.trains_in_f16() && plain.trains_in_f16(&bert));
        assert!(!with_dora.trains_in_f16(&bert));
        assert!(!gemma.trains_in_f16() && !plain.trains_in_f16(&gemma));
        assert_eq!(plain.resolved_dtype(&bert), Dtype::F32, "the CPU resolves auto to f32");
    }

    #[test]
    #[should_panic(expected = "resolved")]
    fn an_unresolved_auto_is_never_a_float_dtype() {
        let _ = Dtype::Auto.float_dtype();
    }

    /// `--dtype f16` on a tiny Llama (untied head, biases) and a Qwen3 (tied head, q/k norms),
    /// dense and QLoRA: the frozen base weights are F16 on the device, the adapters, norms and
    /// quantization scales stay F32, activations are F16, logits F32, and the adapters'
    /// gradients are F32 and finite.
    #[test]
    fn f16_casts_the_frozen_base_only() {
        let device = Device::flex().autodiff();
        let qwen3 = DecoderConfig { architecture: Architecture::Qwen3, qk_norm: true, qkv_bias: false, o_bias: false, tie_word_embeddings: true, ..DecoderConfig::tiny_llama() };
        for (cfg, quant) in [(DecoderConfig::tiny_llama(), None), (qwen3, None), (DecoderConfig::tiny_llama(), Some(QuantType::Q8_0))] {
            let base = Decoder::random(&cfg, &device, 1);
            let base = match quant {
                Some(ty) => base.quantize_projections(ty).unwrap(),
                None => base,
            };
            let lora = LoraConfig { rank: 4, alpha: 8.0, ..LoraConfig::default() };
            let model = base.with_lora(&lora, &mut ChaCha8Rng::seed_from_u64(0)).unwrap().train().with_frozen_dtype(Dtype::F16);
            assert_eq!(model.embed_tokens.val().dtype(), DType::F16);
            assert_eq!(model.activation_dtype(), DType::F16);
            if let Some(h) = &model.lm_head {
                assert_eq!(h.weight.val().dtype(), DType::F16, "untied head");
            }
            assert_eq!(model.norm.gamma.val().dtype(), DType::F32, "final norm stays f32");
            for layer in &model.layers {
                assert_eq!(layer.input_layernorm.gamma.val().dtype(), DType::F32);
                for (path, p) in layer.projections() {
                    let AdaptableLinear::Lora(l) = p else { panic!("{path} adapted") };
                    match &l.weight {
                        BaseWeight::Dense(w) => assert_eq!(w.val().dtype(), DType::F16, "{path} base weight"),
                        BaseWeight::Quantized(q) => assert_eq!(q.dequantize().dtype(), DType::F32, "{path}: blocks kept, dequantized in f32 (cast at use)"),
                    }
                    if let Some(b) = &l.bias {
                        assert_eq!(b.val().dtype(), DType::F16, "{path} bias");
                    }
                    assert_eq!((l.lora_a.val().dtype(), l.lora_b.val().dtype()), (DType::F32, DType::F32), "{path} adapters");
                }
            }
            let (trainable, frozen) = dtypes(&model);
            assert!(trainable.len() == 2 * 7 * cfg.num_hidden_layers && trainable.iter().all(|d| *d == DType::F32), "{trainable:?}");
            assert!(frozen.contains(&DType::F16) && frozen.contains(&DType::F32), "f16 weights and f32 norms: {frozen:?}");

            let ids = Tensor::<2, Int>::from_data(TensorData::new((0..16).map(|i| (i * 7 % 128) as i64).collect::<Vec<_>>(), [2, 8]), &device);
            let hidden = model.forward_hidden(ids.clone(), None, None);
            assert_eq!(hidden.dtype(), DType::F16, "activations in f16");
            let logits = model.logits(hidden);
            assert_eq!(logits.dtype(), DType::F32, "logits in f32");
            let grads = logits.square().mean().backward();
            for layer in &model.layers {
                for (path, p) in layer.projections() {
                    let AdaptableLinear::Lora(l) = p else { unreachable!() };
                    let g = l.lora_b.val().grad(&grads).expect("B gradient");
                    assert_eq!(g.dtype(), DType::F32, "{path}");
                    assert!(g.into_data().try_to_vec::<f32>().unwrap().iter().all(|v| v.is_finite()));
                }
            }
        }
    }

    /// `f32` leaves the model untouched: the same tensors, so the f32 path is the old one.
    #[test]
    fn f32_is_the_identity() {
        let device = Device::flex();
        let model = Decoder::random(&DecoderConfig::tiny_llama(), &device, 1);
        let before = dtypes(&model);
        let w = model.embed_tokens.val().into_data();
        let model = model.with_frozen_dtype(Dtype::F32);
        assert_eq!(dtypes(&model), before);
        assert_eq!(model.embed_tokens.val().into_data(), w);
        assert_eq!("f16".parse::<Dtype>().unwrap(), Dtype::F16);
        assert!("bf16".parse::<Dtype>().unwrap_err().contains("f32, f16"));
    }
}

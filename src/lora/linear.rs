//! `LoraLinear`: a frozen linear layer plus a trainable low-rank update (PEFT's `lora.Linear`);
//! with a [`QuantWeight`] base it is QLoRA's layer (the base dequantized inside `forward`).

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::tensor::module::linear;
use burn::tensor::{DType, FloatDType, Tensor, TensorData};
use rand::Rng;

use super::quant::QuantWeight;
use super::{LoraConfig, LoraError};

/// The frozen base weight `[out, in]` of a [`LoraLinear`]: f32, or ggml blocks (QLoRA).
#[derive(Module, Debug)]
pub enum BaseWeight {
    /// A parameter that never requires a gradient.
    Dense(Param<Tensor<2>>),
    /// Dequantized at every use; nothing of it is a parameter.
    Quantized(QuantWeight),
}

impl BaseWeight {
    /// The f32 weight `[out, in]` (dequantized for a quantized base).
    pub fn val(&self) -> Tensor<2> {
        match self {
            Self::Dense(w) => w.val(),
            Self::Quantized(q) => q.dequantize(),
        }
    }

    /// `[out, in]`.
    pub fn dims(&self) -> [usize; 2] {
        match self {
            Self::Dense(w) => w.dims(),
            Self::Quantized(q) => q.dims(),
        }
    }

    pub fn is_quantized(&self) -> bool {
        matches!(self, Self::Quantized(_))
    }
}

/// PEFT's `kaiming_uniform_(a=√5)` for `A` `[rank, in]`: `U(-1/√in, 1/√in)`, drawn on the host.
fn kaiming_a(rank: usize, in_features: usize, device: &burn::tensor::Device, rng: &mut impl Rng) -> Tensor<2> {
    let bound = 1.0 / (in_features as f32).sqrt();
    let a: Vec<f32> = (0..rank * in_features).map(|_| rng.random_range(-bound..bound)).collect();
    Tensor::<2>::from_data(TensorData::new(a, [rank, in_features]), device)
}

/// `y = x·Wᵀ + b + scale·(dropout(x)·Aᵀ)·Bᵀ` with `W` and `b` frozen.
///
/// Shapes follow PEFT (and Hugging Face checkpoints): `W` `[out, in]`, `A` `[rank, in]`,
/// `B` `[out, rank]`, so adapters export to `lora_A.weight` / `lora_B.weight` unchanged.
#[derive(Module, Debug)]
pub struct LoraLinear {
    /// Frozen base weight `[out, in]`: no gradient, never updated by an optimizer.
    pub weight: BaseWeight,
    /// Frozen base bias `[out]`.
    pub bias: Option<Param<Tensor<1>>>,
    /// `A` `[rank, in]`, Kaiming-uniform initialised as PEFT does.
    pub lora_a: Param<Tensor<2>>,
    /// `B` `[out, rank]`, zero at the start.
    pub lora_b: Param<Tensor<2>>,
    /// Dropout on the input of `A` (PEFT's `lora_dropout`).
    pub dropout: Dropout,
    /// `alpha / rank` (or `alpha / √rank` with rsLoRA).
    pub scale: f64,
    /// DoRA's magnitude `m` `[out]` (trainable; PEFT's `lora_magnitude_vector`, MLX-LM's `m`);
    /// `None` for plain LoRA.
    pub magnitude: Option<Param<Tensor<1>>>,
}

impl LoraLinear {
    /// Adapt a base layer (`weight` `[out, in]`, `bias` `[out]`) on the weight's device.
    ///
    /// `A` is drawn from `rng` as PEFT's `kaiming_uniform_(a=√5)` draws it, `U(-1/√in, 1/√in)`,
    /// so the same seed gives the same adapter on every device; `B` is zero.
    pub fn new(weight: Tensor<2>, bias: Option<Tensor<1>>, config: &LoraConfig, rng: &mut impl Rng) -> Result<Self, LoraError> {
        config.validate()?;
        let [out_features, in_features] = weight.dims();
        let device = weight.device();
        let lora_a = kaiming_a(config.rank, in_features, &device, rng);
        let lora_b = Tensor::<2>::zeros([out_features, config.rank], &device);
        Ok(Self::from_parts(weight, bias, lora_a, lora_b, config.scale(), config.dropout).with_dora_init(config.use_dora))
    }

    /// With `on`, make this a DoRA layer whose magnitude is the row norms of `W + scale·B·A`
    /// (`‖W‖` for a fresh adapter, as PEFT and MLX-LM initialise it), so the layer computes
    /// exactly what it did before. With `on` false the layer is returned unchanged.
    pub fn with_dora_init(self, on: bool) -> Self {
        if !on {
            return self;
        }
        let norms = self.adapted_row_norms();
        self.with_magnitude(Some(norms))
    }

    /// Set (or with `None` remove) DoRA's magnitude vector `[out]`; it is trainable.
    pub fn with_magnitude(mut self, magnitude: Option<Tensor<1>>) -> Self {
        if let Some(m) = &magnitude {
            assert_eq!(m.dims(), [self.out_features()], "DoRA magnitude must be [out]");
        }
        self.magnitude = magnitude.map(|m| Param::from_tensor(m.detach()));
        self
    }

    /// `‖W + scale·B·A‖` over each output row, `[out]`, detached (DoRA's denominator: a
    /// constant for the gradient, as PEFT and MLX-LM treat it).
    pub fn adapted_row_norms(&self) -> Tensor<1> {
        let adapted = self.weight.val() + self.lora_b.val().matmul(self.lora_a.val()).mul_scalar(self.scale);
        let adapted = adapted.detach();
        let out = self.out_features();
        adapted.clone().mul(adapted).sum_dim(1).sqrt().reshape([out])
    }

    /// Assemble from known factors (loading a saved adapter, tests). `W` and `b` are frozen;
    /// `A` and `B` are trainable.
    pub fn from_parts(weight: Tensor<2>, bias: Option<Tensor<1>>, lora_a: Tensor<2>, lora_b: Tensor<2>, scale: f64, dropout: f64) -> Self {
        // Detached: each becomes a leaf of its own (a transposed or computed input is not one).
        Self::from_base(BaseWeight::Dense(Param::from_tensor(weight.detach()).set_require_grad(false)), bias, lora_a, lora_b, scale, dropout)
    }

    /// Like [`LoraLinear::from_parts`] over any base, e.g. a quantized one (QLoRA).
    pub fn from_base(weight: BaseWeight, bias: Option<Tensor<1>>, lora_a: Tensor<2>, lora_b: Tensor<2>, scale: f64, dropout: f64) -> Self {
        let [out_features, in_features] = weight.dims();
        let rank = lora_a.dims()[0];
        assert_eq!(lora_a.dims(), [rank, in_features], "lora_a must be [rank, in]");
        assert_eq!(lora_b.dims(), [out_features, rank], "lora_b must be [out, rank]");
        Self {
            weight,
            bias: bias.map(|b| Param::from_tensor(b.detach()).set_require_grad(false)),
            lora_a: Param::from_tensor(lora_a.detach()),
            lora_b: Param::from_tensor(lora_b.detach()),
            dropout: DropoutConfig::new(dropout).init(),
            scale,
            magnitude: None,
        }
    }

    /// Adapt a burn [`Linear`] (which stores its weight `[in, out]`).
    pub fn from_linear(base: &Linear, config: &LoraConfig, rng: &mut impl Rng) -> Result<Self, LoraError> {
        Self::new(base.weight.val().transpose(), base.bias.as_ref().map(|b| b.val()), config, rng)
    }

    /// QLoRA: adapt a quantized layer, whose blocks stay as they are. `A` is drawn exactly as
    /// [`LoraLinear::new`] draws it, so one seed gives the same adapter over either base.
    pub fn from_quantized(base: &QuantLinear, config: &LoraConfig, rng: &mut impl Rng) -> Result<Self, LoraError> {
        config.validate()?;
        let [out_features, in_features] = base.weight.dims();
        let device = base.weight.scales.device();
        let lora_a = kaiming_a(config.rank, in_features, &device, rng);
        let lora_b = Tensor::<2>::zeros([out_features, config.rank], &device);
        let bias = base.bias.as_ref().map(|b| b.val());
        Ok(Self::from_base(BaseWeight::Quantized(base.weight.clone()), bias, lora_a, lora_b, config.scale(), config.dropout).with_dora_init(config.use_dora))
    }

    pub fn rank(&self) -> usize {
        self.lora_a.dims()[0]
    }

    pub fn in_features(&self) -> usize {
        self.weight.dims()[1]
    }

    pub fn out_features(&self) -> usize {
        self.weight.dims()[0]
    }

    /// `[..., in]` → `[..., out]`.
    ///
    /// LoRA: `x·Wᵀ + b + scale·(dropout(x)·Aᵀ)·Bᵀ`. DoRA, with `g = m / ‖W + scale·B·A‖`
    /// (rows, detached): `g ⊙ (x·Wᵀ + scale·(x·Aᵀ)·Bᵀ) + b`. With dropout active it follows
    /// PEFT's `DoraLinearVariant`: `x·Wᵀ + b + (g - 1) ⊙ (x̃·Wᵀ) + g ⊙ scale·(x̃·Aᵀ)·Bᵀ`
    /// where `x̃ = dropout(x)` (MLX-LM instead rescales `x·Wᵀ + scale·(x̃·Aᵀ)·Bᵀ`; the two agree
    /// whenever dropout is off, i.e. in evaluation and at `dropout = 0`).
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.forward_with(x, None)
    }

    /// [`Self::forward`] with the input already widened to f32 for the LoRA branch (`wide`, from a
    /// [`SharedInput`]); `None` widens `x` here. DoRA layers (f32 only) ignore it.
    fn forward_with<const D: usize>(&self, x: Tensor<D>, wide: Option<Tensor<D>>) -> Tensor<D> {
        let bias = self.bias.as_ref().map(|b| b.val());
        let Some(m) = &self.magnitude else {
            // Mixed precision (`--dtype f16`, `model::decoder::Dtype`): the base matmul runs in
            // the activations' dtype; the LoRA branch runs in f32 from the (exactly widened)
            // input, so `x·Aᵀ`, `·Bᵀ` and the gradients of A and B are formed and accumulated in
            // f32 (A and B are f32 master weights, never rounded to f16), and only the small
            // update `scale·x·Aᵀ·Bᵀ` is rounded once to f16, relative to its own size, when added.
            // In f32 every cast below is a no-op, so the f32 path is the one it always was.
            let dtype = x.dtype();
            let base = match (&self.weight, bias) {
                (BaseWeight::Quantized(q), None) => quant_rows(q, x.clone()),
                (BaseWeight::Quantized(q), Some(b)) => quant_rows(q, x.clone()) + b.cast(dtype).unsqueeze::<D>(),
                (BaseWeight::Dense(_), bias) => linear(x.clone(), self.weight.val().cast(dtype).transpose(), bias),
            };
            let wide = wide.unwrap_or_else(|| x.cast(FloatDType::F32));
            let down = linear(self.dropout.forward(wide), self.lora_a.val().transpose(), None);
            // The scale goes on B (`[out, rank]`), not on the product (`[rows, out]`): one pass
            // over the layer's output fewer forward and one fewer backward.
            let up = linear(down, self.lora_b.val().mul_scalar(self.scale).transpose(), None);
            return base + up.cast(dtype);
        };
        // DoRA in f16 is refused by the trainers (its row norms mix the base with B·A).
        assert_eq!(x.dtype(), DType::F32, "DoRA layers run in f32 only");
        let w = self.weight.val().transpose();
        let base = linear(x.clone(), w.clone(), None);
        // The same test burn's `Dropout::forward` makes: is a mask drawn at all?
        let dropped = self.dropout.prob > 0.0 && self.dropout.training.is_enabled() && x.device().is_autodiff();
        let xd = if dropped { self.dropout.forward(x) } else { x };
        let up = linear(linear(xd.clone(), self.lora_a.val().transpose(), None), self.lora_b.val().transpose(), None).mul_scalar(self.scale);
        let g = (m.val() / self.adapted_row_norms()).unsqueeze::<D>();
        let y = if dropped {
            let base_d = linear(xd, w, None);
            base + base_d * g.clone().sub_scalar(1.0) + up * g
        } else {
            (base + up) * g
        };
        match bias {
            Some(b) => y + b.unsqueeze::<D>(),
            None => y,
        }
    }

    /// The fused weight `[out, in]` (detached), for a merged export: `W + scale·B·A`, or for
    /// DoRA `m ⊙ (W + scale·B·A) / ‖W + scale·B·A‖` (rows), as PEFT's `merge_and_unload`
    /// and `mlx_lm.fuse` compute it.
    pub fn merge(&self) -> Tensor<2> {
        let delta = self.lora_b.val().matmul(self.lora_a.val()).mul_scalar(self.scale);
        let adapted = (self.weight.val() + delta).detach();
        match &self.magnitude {
            None => adapted,
            Some(m) => {
                let g = (m.val().detach() / self.adapted_row_norms()).reshape([self.out_features(), 1]);
                adapted * g
            }
        }
    }
}

/// `t` copied into its own row-major buffer. A transposed view would be read strided by every
/// matmul that uses it: generation with a merged adapter ran ~6x slower per token than the base.
fn contiguous(t: Tensor<2>) -> Tensor<2> {
    let device = t.device();
    Tensor::from_data(t.into_data(), &device)
}

/// A linear layer that may carry an adapter: what a model holds where LoRA can be attached
/// (`with_lora` swaps the plain layer for a [`LoraLinear`], `merged` folds it back).
#[derive(Module, Debug)]
pub enum AdaptableLinear {
    Base(Linear),
    Lora(LoraLinear),
    /// A frozen layer kept in ggml blocks (QLoRA's untargeted layers).
    Quantized(QuantLinear),
}

/// A frozen linear layer over a [`QuantWeight`] `[out, in]`: `y = x·Wᵀ + b`, `W` dequantized
/// at every call (the f32 matrix lives only while an op or autodiff holds it).
#[derive(Module, Debug)]
pub struct QuantLinear {
    pub weight: QuantWeight,
    /// Frozen bias `[out]`.
    pub bias: Option<Param<Tensor<1>>>,
}

impl QuantLinear {
    /// `bias` is frozen (no gradient).
    pub fn new(weight: QuantWeight, bias: Option<Tensor<1>>) -> Self {
        Self { weight, bias: bias.map(|b| Param::from_tensor(b.detach()).set_require_grad(false)) }
    }

    /// `[..., in]` → `[..., out]`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        // QuantWeight::matmul_t: dequantized in f32 (bit-exact with ggml), in the activations' dtype.
        let y = quant_rows(&self.weight, x);
        match &self.bias {
            Some(b) => y.clone() + b.val().cast(y.dtype()).unsqueeze::<D>(),
            None => y,
        }
    }
}

/// `x` `[..., in]` · `Wᵀ` for a quantized `W`, leading dims folded into rows
/// ([`QuantWeight::matmul_t`]: the CPU backend's step keeps the blocks, not the f32 matrix).
fn quant_rows<const D: usize>(w: &QuantWeight, x: Tensor<D>) -> Tensor<D> {
    on_rows(x, |rows| w.matmul_t(rows))
}

/// An input that several projections read (attention's q/k/v, the MLP's gate and up), for
/// [`AdaptableLinear::forward_shared`]: under `--dtype f16` each LoRA branch reads its input
/// widened to f32, and the autodiff graph keeps that widened copy for the gradient of `A`. Widened
/// once here (on first use) and shared, it is kept once instead of once per projection: 3 copies
/// fewer per decoder block, 2.8 GB at Qwen3-1.7B's shape, seq 512, batch 8 (PEFT casts in each
/// layer and keeps them all). In f32 the widening is a no-op and nothing changes.
pub struct SharedInput<const D: usize> {
    x: Tensor<D>,
    wide: std::cell::OnceCell<Tensor<D>>,
}

impl<const D: usize> SharedInput<D> {
    pub fn new(x: Tensor<D>) -> Self {
        Self { x, wide: std::cell::OnceCell::new() }
    }

    /// The input as given.
    pub fn x(&self) -> Tensor<D> {
        self.x.clone()
    }

    /// The input in f32 (the same tensor when it is f32), made once.
    fn wide(&self) -> Tensor<D> {
        self.wide.get_or_init(|| self.x.clone().cast(FloatDType::F32)).clone()
    }
}

/// Leading dims of `x` `[..., in]` folded into rows: `[rows, in]`.
fn fold_rows<const D: usize>(x: Tensor<D>) -> Tensor<2> {
    let dims = x.dims();
    x.reshape([dims[..D - 1].iter().product::<usize>(), dims[D - 1]])
}

/// `f` on `x` `[..., in]` with its leading dims folded into rows (`[rows, in]` → `[rows, out]`),
/// then unfolded to `[..., out]`.
fn on_rows<const D: usize>(x: Tensor<D>, f: impl FnOnce(Tensor<2>) -> Tensor<2>) -> Tensor<D> {
    let mut out = x.dims();
    let y = f(fold_rows(x));
    out[D - 1] = y.dims()[1];
    y.reshape(out)
}

impl AdaptableLinear {
    /// `[..., in]` → `[..., out]`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        if D <= 2 {
            return self.forward_rows(x);
        }
        // Leading dims folded into rows: one `[rows, in]·[in, out]` matmul. burn keeps
        // `[batch, seq, in]` as a batched matmul when `seq` is a multiple of 32, and the CPU
        // backend then packs the weight once per batch item: MiniLM training ran 15% slower.
        on_rows(x, |rows| self.forward_rows(rows))
    }

    /// [`Self::forward`] of an input other projections read too: a LoRA layer takes the shared
    /// f32 copy of it for its branch ([`SharedInput`]); every other layer reads the input as given.
    /// The same values as [`Self::forward`] (bit for bit in f32; under f16 the input's gradient
    /// sums the branches in f32 before the one cast back instead of after one cast each).
    ///
    /// ```
    /// use burn::tensor::{Device, Tensor};
    /// use tunelab::lora::{AdaptableLinear, LoraConfig, SharedInput};
    /// let device = Device::flex();
    /// let layer = AdaptableLinear::Base(burn::nn::LinearConfig::new(4, 3).init(&device));
    /// let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
    /// let layer = layer.with_lora(&LoraConfig { rank: 2, alpha: 4.0, ..Default::default() }, &mut rng).unwrap();
    /// let x = Tensor::<3>::ones([2, 5, 4], &device);
    /// let shared = SharedInput::new(x.clone());
    /// layer.forward_shared(&shared).into_data().assert_eq(&layer.forward(x).into_data(), true);
    /// ```
    pub fn forward_shared<const D: usize>(&self, input: &SharedInput<D>) -> Tensor<D> {
        // A DoRA layer (f32 only) takes the shared copy too and ignores it (`forward_with`).
        let Self::Lora(l) = self else { return self.forward(input.x()) };
        on_rows(input.x(), |rows| l.forward_with(rows, Some(fold_rows(input.wide()))))
    }

    fn forward_rows<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self {
            // A trainable f32 layer under f16 activations (full fine-tuning with `--dtype f16`,
            // `train embed`): the weights are cast at each use, as `torch.autocast` does, so the
            // matmul runs in f16 and the gradients flow back through the cast to the f32 master
            // weights. Same dtypes (every f32 run, frozen layers cast once) take burn's path unchanged.
            Self::Base(l) if l.weight.val().dtype() != x.dtype() => {
                let dtype = x.dtype();
                linear(x, l.weight.val().cast(dtype), l.bias.as_ref().map(|b| b.val().cast(dtype)))
            }
            Self::Base(l) => l.forward(x),
            Self::Lora(l) => l.forward(x),
            Self::Quantized(l) => l.forward(x),
        }
    }

    /// Attach an adapter (the base becomes frozen). An adapted layer is returned unchanged.
    pub fn with_lora(self, config: &LoraConfig, rng: &mut impl Rng) -> Result<Self, LoraError> {
        match self {
            Self::Base(l) => Ok(Self::Lora(LoraLinear::from_linear(&l, config, rng)?)),
            Self::Quantized(l) => Ok(Self::Lora(LoraLinear::from_quantized(&l, config, rng)?)),
            lora => Ok(lora),
        }
    }

    /// Attach known factors (and DoRA's magnitude) to a plain layer: loading a saved adapter.
    /// `path` names the layer in errors.
    pub fn with_factors(self, path: &str, f: &crate::lora::LoraFactors, magnitude: Option<&[f32]>, config: &LoraConfig) -> Result<Self, LoraError> {
        let bad = |reason: String| LoraError::Config { field: "layers", reason: format!("{path}: {reason}") };
        let Self::Base(l) = self else {
            return Err(bad("the layer already carries an adapter or is quantized".into()));
        };
        let weight = l.weight.val().transpose();
        let [out_f, in_f] = weight.dims();
        if f.a_shape[1] != in_f || f.b_shape[0] != out_f {
            return Err(bad(format!("lora_A {:?} / lora_B {:?} do not fit a [{out_f}, {in_f}] weight", f.a_shape, f.b_shape)));
        }
        let device = weight.device();
        let t = |v: &[f32], s: [usize; 2]| Tensor::<2>::from_data(TensorData::new(v.to_vec(), s), &device);
        let lora = LoraLinear::from_parts(weight, l.bias.as_ref().map(|b| b.val()), t(&f.a, f.a_shape), t(&f.b, f.b_shape), config.scale(), config.dropout);
        let lora = match magnitude {
            Some(m) if m.len() != out_f => return Err(bad(format!("magnitude has {} entries, the weight has {out_f} rows", m.len()))),
            Some(m) => lora.with_magnitude(Some(Tensor::<1>::from_data(TensorData::new(m.to_vec(), [out_f]), &device))),
            None => lora.with_dora_init(config.use_dora),
        };
        Ok(Self::Lora(lora))
    }

    /// Fold an adapter into a plain layer with weight `W + scale·B·A` (trainable again; a
    /// quantized base is dequantized first). A quantized layer without adapter stays quantized.
    pub fn merged(self) -> Self {
        match self {
            Self::Lora(l) => Self::Base(Linear {
                weight: Param::from_tensor(contiguous(l.merge().transpose())),
                bias: l.bias.as_ref().map(|b| Param::from_tensor(b.val().detach())),
            }),
            base => base,
        }
    }

    /// The f32 weight `[out, in]` and bias, adapters fused (what a merged checkpoint holds).
    pub fn fused_weight(&self) -> (Tensor<2>, Option<Tensor<1>>) {
        match self {
            Self::Base(l) => (l.weight.val().transpose(), l.bias.as_ref().map(|b| b.val())),
            Self::Lora(l) => (l.merge(), l.bias.as_ref().map(|b| b.val())),
            Self::Quantized(l) => (l.weight.dequantize(), l.bias.as_ref().map(|b| b.val())),
        }
    }

    /// `[out, in]` of the (base) weight.
    pub fn fused_dims(&self) -> [usize; 2] {
        match self {
            Self::Base(l) => {
                let [i, o] = l.weight.dims();
                [o, i]
            }
            Self::Lora(l) => l.weight.dims(),
            Self::Quantized(l) => l.weight.dims(),
        }
    }

    /// Whether the frozen base weight is kept in ggml blocks (with or without an adapter).
    pub fn is_quantized_base(&self) -> bool {
        match self {
            Self::Base(_) => false,
            Self::Lora(l) => l.weight.is_quantized(),
            Self::Quantized(_) => true,
        }
    }

    /// Whether the layer adds a bias.
    pub fn has_bias(&self) -> bool {
        match self {
            Self::Base(l) => l.bias.is_some(),
            Self::Lora(l) => l.bias.is_some(),
            Self::Quantized(l) => l.bias.is_some(),
        }
    }

    /// Whether an adapter is attached.
    pub fn is_lora(&self) -> bool {
        matches!(self, Self::Lora(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::optim::{AdamWConfig, GradientsParams};
    use burn::tensor::Device;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    fn random(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    /// `forward_shared` (one f32 copy of an input read by several adapters) against `forward`
    /// (one copy each), in f32 and under f16 mixed precision, for 2-D and 3-D inputs, with a plain
    /// layer among the readers: the same outputs and adapter gradients bit for bit, and the same
    /// input gradient up to summation order (f32) or f16 rounding (the branches now meet in f32
    /// before the one cast back).
    #[test]
    fn shared_input_gives_the_same_outputs_and_gradients() {
        let device = Device::flex().autodiff();
        let (inp, outs, rank) = (8, [6, 3, 5], 2);
        for dtype in [FloatDType::F32, FloatDType::F16] {
            for leading in [vec![7], vec![2, 5]] {
                let mut rng = ChaCha8Rng::seed_from_u64(11);
                let t2 = |v: Vec<f32>, s: [usize; 2]| Tensor::<2>::from_data(TensorData::new(v, s), &device);
                let layers: Vec<AdaptableLinear> = outs
                    .iter()
                    .enumerate()
                    .map(|(i, &o)| {
                        let w = t2(random(&mut rng, o * inp), [o, inp]);
                        let l = if i == 1 {
                            AdaptableLinear::Base(Linear { weight: Param::from_tensor(w.transpose()).set_require_grad(false), bias: None })
                        } else {
                            let (a, b) = (t2(random(&mut rng, rank * inp), [rank, inp]), t2(random(&mut rng, o * rank), [o, rank]));
                            AdaptableLinear::Lora(LoraLinear::from_parts(w, None, a, b, 1.5, 0.0))
                        };
                        l.with_frozen_dtype(dtype)
                    })
                    .collect();
                let rows: usize = leading.iter().product();
                let x = Tensor::<2>::from_data(TensorData::new(random(&mut rng, rows * inp), [rows, inp]), &device).cast(dtype);
                // Σ over readers of Σ y ⊙ r, r fixed: every output element reaches the loss.
                let run = |shared: bool| {
                    let x = x.clone().require_grad();
                    let outputs: Vec<Tensor<2>> = if leading.len() == 1 {
                        let input = SharedInput::new(x.clone());
                        layers.iter().map(|l| if shared { l.forward_shared(&input) } else { l.forward(x.clone()) }).collect()
                    } else {
                        let x3 = x.clone().reshape([leading[0], leading[1], inp]);
                        let input = SharedInput::new(x3.clone());
                        layers
                            .iter()
                            .map(|l| if shared { l.forward_shared(&input) } else { l.forward(x3.clone()) })
                            .map(|y: Tensor<3>| {
                                let o = y.dims()[2];
                                y.reshape([rows, o])
                            })
                            .collect()
                    };
                    let mut loss = Tensor::<1>::zeros([1], &device);
                    let mut ys = Vec::new();
                    for (k, y) in outputs.into_iter().enumerate() {
                        let r = Tensor::<2>::ones(y.dims(), &device).mul_scalar(0.5 + k as f32);
                        ys.push(values(y.clone().cast(FloatDType::F32)));
                        loss = loss + (y.cast(FloatDType::F32) * r).sum();
                    }
                    let grads = loss.backward();
                    let adapters: Vec<Vec<f32>> = layers
                        .iter()
                        .filter_map(|l| match l {
                            AdaptableLinear::Lora(l) => Some(l),
                            _ => None,
                        })
                        .flat_map(|l| [values(l.lora_a.val().grad(&grads).unwrap()), values(l.lora_b.val().grad(&grads).unwrap())])
                        .collect();
                    (ys, adapters, values(x.grad(&grads).unwrap().cast(FloatDType::F32)))
                };
                let (ys, adapters, gx) = run(false);
                let (ys_shared, adapters_shared, gx_shared) = run(true);
                let case = format!("{dtype:?}, leading dims {leading:?}");
                assert_eq!(ys, ys_shared, "outputs, {case}");
                assert_eq!(adapters, adapters_shared, "adapter gradients, {case}");
                let tol = if dtype == FloatDType::F32 { 1e-5 } else { 2e-2 };
                for (a, b) in gx.iter().zip(&gx_shared) {
                    assert!(a.is_finite() && (a - b).abs() <= tol * a.abs().max(1.0), "input gradient {a} vs {b}, {case}");
                }
            }
        }
    }

    /// A layer with non-zero `B` (so `A` gets a gradient): in 3, out 2, rank 2, scale 1.5.
    fn layer(device: &Device) -> (LoraLinear, [Vec<f32>; 4]) {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let (w, b, a, bb) = (random(&mut rng, 6), random(&mut rng, 2), random(&mut rng, 6), random(&mut rng, 4));
        let t2 = |v: &Vec<f32>, s: [usize; 2]| Tensor::<2>::from_data(TensorData::new(v.clone(), s), device);
        let l = LoraLinear::from_parts(
            t2(&w, [2, 3]),
            Some(Tensor::<1>::from_data(TensorData::new(b.clone(), [2]), device)),
            t2(&a, [2, 3]),
            t2(&bb, [2, 2]),
            1.5,
            0.0,
        );
        (l, [w, b, a, bb])
    }

    /// y = x·Wᵀ + b + scale·(x·Aᵀ)·Bᵀ written out with loops over the row-major values.
    fn by_hand(x: &[f32], rows: usize, [w, b, a, bb]: &[Vec<f32>; 4], scale: f32) -> Vec<f32> {
        let (inp, out, r) = (3, 2, 2);
        let mut y = vec![0.0; rows * out];
        for i in 0..rows {
            let xa: Vec<f32> = (0..r).map(|k| (0..inp).map(|j| x[i * inp + j] * a[k * inp + j]).sum()).collect();
            for o in 0..out {
                let base: f32 = (0..inp).map(|j| x[i * inp + j] * w[o * inp + j]).sum::<f32>() + b[o];
                let delta: f32 = (0..r).map(|k| xa[k] * bb[o * r + k]).sum();
                y[i * out + o] = base + scale * delta;
            }
        }
        y
    }

    #[test]
    fn forward_matches_the_formula_and_merge() {
        let device = Device::flex();
        let (l, parts) = layer(&device);
        let x = vec![0.5, -1.0, 2.0, 1.5, 0.25, -0.75];
        let y = values(l.forward(Tensor::<2>::from_data(TensorData::new(x.clone(), [2, 3]), &device)));
        let want = by_hand(&x, 2, &parts, 1.5);
        for (g, w) in y.iter().zip(&want) {
            assert!((g - w).abs() < 1e-5, "{y:?} vs {want:?}");
        }
        // The merged plain layer computes the same function.
        let merged = AdaptableLinear::Lora(l).merged();
        assert!(!merged.is_lora());
        let ym = values(merged.forward(Tensor::<2>::from_data(TensorData::new(x, [2, 3]), &device)));
        for (g, w) in ym.iter().zip(&y) {
            assert!((g - w).abs() < 1e-5, "{ym:?} vs {y:?}");
        }
    }

    /// DoRA: the layer computes `m ⊙ (x·(W + s·B·A)ᵀ) / ‖W + s·B·A‖ + b` (rows), as the host
    /// reference `dora_merge` writes it out, its merge computes the same, and a fresh DoRA layer
    /// computes what its base does (m = ‖W‖). Tolerance 1e-5 absolute.
    #[test]
    fn dora_forward_matches_the_formula_merge_and_starts_as_the_base() {
        let device = Device::flex();
        let (l, [w, b, a, bb]) = layer(&device);
        let m = vec![0.7f32, 2.5];
        let l = l.with_magnitude(Some(Tensor::<1>::from_data(TensorData::new(m.clone(), [2]), &device)));
        let x = vec![0.5, -1.0, 2.0, 1.5, 0.25, -0.75];
        let y = values(l.forward(Tensor::<2>::from_data(TensorData::new(x.clone(), [2, 3]), &device)));
        // W' = dora_merge(W, 1.5·B·A, m); y = x·W'ᵀ + b.
        let delta: Vec<f32> = (0..2).flat_map(|o| (0..3).map(move |j| (o, j))).map(|(o, j)| 1.5 * (0..2).map(|k| bb[o * 2 + k] * a[k * 3 + j]).sum::<f32>()).collect();
        let wm = crate::lora::dora_merge(&w, &delta, &m, 3);
        let want: Vec<f32> = (0..2).flat_map(|i| (0..2).map(move |o| (i, o))).map(|(i, o)| (0..3).map(|j| x[i * 3 + j] * wm[o * 3 + j]).sum::<f32>() + b[o]).collect();
        for (g, e) in y.iter().zip(&want) {
            assert!((g - e).abs() < 1e-5, "{y:?} vs {want:?}");
        }
        for (g, e) in values(l.merge()).iter().zip(&wm) {
            assert!((g - e).abs() < 1e-5, "merge");
        }
        let merged = AdaptableLinear::Lora(l).merged();
        let ym = values(merged.forward(Tensor::<2>::from_data(TensorData::new(x.clone(), [2, 3]), &device)));
        for (g, e) in ym.iter().zip(&y) {
            assert!((g - e).abs() < 1e-5, "{ym:?} vs {y:?}");
        }
        // A fresh DoRA layer (B = 0, m = ‖W‖ per output row) is its base.
        let cfg = LoraConfig { rank: 2, alpha: 4.0, use_dora: true, ..LoraConfig::default() };
        let base = Tensor::<2>::from_data(TensorData::new(w.clone(), [2, 3]), &device);
        let fresh = LoraLinear::new(base, None, &cfg, &mut ChaCha8Rng::seed_from_u64(1)).unwrap();
        let (m0, norms) = (values(fresh.magnitude.as_ref().unwrap().val()), crate::lora::row_norms(&w, 3));
        assert!(m0.iter().zip(&norms).all(|(a, b)| (a - b).abs() < 1e-6), "m starts as the row norms of W: {m0:?} vs {norms:?}");
        let y0 = values(fresh.forward(Tensor::<2>::from_data(TensorData::new(x.clone(), [2, 3]), &device)));
        let plain: Vec<f32> = (0..2).flat_map(|i| (0..2).map(move |o| (i, o))).map(|(i, o)| (0..3).map(|j| x[i * 3 + j] * w[o * 3 + j]).sum::<f32>()).collect();
        for (g, e) in y0.iter().zip(&plain) {
            assert!((g - e).abs() < 1e-5, "{y0:?} vs {plain:?}");
        }
    }

    /// With dropout active DoRA follows PEFT: `x·Wᵀ + b + (g - 1)(x̃·Wᵀ) + g·s·(x̃·Aᵀ)·Bᵀ`. With
    /// p → the kept inputs scaled by 1/(1-p): checked through the identity that the output minus
    /// the base output is linear in the dropped input, i.e. the same function as without
    /// dropout applied to x̃ minus `(x̃·Wᵀ)` plus `x·Wᵀ`. Seeded, so it is one fixed mask.
    #[test]
    fn dora_dropout_follows_peft() {
        let device = Device::flex().autodiff();
        let (l, _) = layer(&device);
        let m = Tensor::<1>::from_floats([0.7, 2.5], &device);
        let mut l = l.with_magnitude(Some(m));
        let no_drop = LoraLinear { dropout: DropoutConfig::new(0.0).init(), ..l.clone() };
        l.dropout = DropoutConfig::new(0.5).init();
        let x = Tensor::<2>::from_floats([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]], &device);
        device.seed(3);
        let y = values(l.forward(x.clone()));
        device.seed(3);
        let xd = l.dropout.forward(x.clone());
        // f(x̃) - x̃·Wᵀ + x·Wᵀ, where f is the layer without dropout.
        let w = l.weight.val().transpose();
        let want = values(no_drop.forward(xd.clone()) - linear(xd, w.clone(), None) + linear(x, w, None));
        for (g, e) in y.iter().zip(&want) {
            assert!((g - e).abs() < 1e-5, "{y:?} vs {want:?}");
        }
    }

    #[test]
    fn new_adapter_starts_as_the_base_and_a_is_kaiming_bounded() {
        let device = Device::flex();
        let base = Tensor::<2>::from_floats([[1.0, 2.0, 3.0, 4.0], [0.5, 0.0, -1.0, 2.0]], &device);
        let cfg = LoraConfig { rank: 3, alpha: 6.0, ..LoraConfig::default() };
        let l = LoraLinear::new(base.clone(), None, &cfg, &mut ChaCha8Rng::seed_from_u64(1)).unwrap();
        assert_eq!((l.rank(), l.in_features(), l.out_features(), l.scale), (3, 4, 2, 2.0));
        let a = values(l.lora_a.val());
        assert!(a.iter().all(|v| v.abs() <= 0.5), "A within 1/sqrt(4): {a:?}"); // PEFT bound 1/√in
        assert!(a.iter().any(|v| *v != 0.0));
        assert!(values(l.lora_b.val()).iter().all(|v| *v == 0.0));
        assert_eq!(values(l.merge()), values(base));
        // Same seed, same A.
        let again = LoraLinear::new(Tensor::<2>::zeros([2, 4], &device), None, &cfg, &mut ChaCha8Rng::seed_from_u64(1)).unwrap();
        assert_eq!(values(again.lora_a.val()), a);
    }

    /// Loss = Σ y ⊙ R. It is linear in each single entry of A and of B, so central differences
    /// are exact up to f32 rounding; eps = 1e-2 keeps that rounding small (≈1e-5 / 1e-2).
    #[test]
    fn gradients_match_finite_differences_and_base_gets_none() {
        let device = Device::flex().autodiff();
        let (l, _) = layer(&device);
        let x = Tensor::<2>::from_floats([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]], &device);
        let r = Tensor::<2>::from_floats([[1.0, -2.0], [0.5, 3.0]], &device);
        let loss = |l: &LoraLinear| (l.forward(x.clone()) * r.clone()).sum();
        let grads = loss(&l).backward();
        assert!(l.weight.val().grad(&grads).is_none(), "frozen base weight has no gradient");
        assert!(l.bias.as_ref().unwrap().val().grad(&grads).is_none(), "frozen bias has no gradient");
        let ga = values(l.lora_a.val().grad(&grads).expect("A gradient"));
        let gb = values(l.lora_b.val().grad(&grads).expect("B gradient"));

        let eps = 1e-2f32;
        let mut worst = 0.0f32;
        for (which, analytic) in [("a", &ga), ("b", &gb)] {
            for (i, g) in analytic.iter().enumerate() {
                let shifted = |delta: f32| {
                    let (_, [w, b, mut a, mut bb]) = layer(&Device::flex());
                    if which == "a" { a[i] += delta } else { bb[i] += delta }
                    let dev = Device::flex();
                    let t2 = |v: Vec<f32>, s: [usize; 2]| Tensor::<2>::from_data(TensorData::new(v, s), &dev);
                    let (ra, rb) = (a.len() / 3, 2);
                    let l = LoraLinear::from_parts(t2(w, [2, 3]), Some(Tensor::<1>::from_data(TensorData::new(b, [2]), &dev)), t2(a, [ra, 3]), t2(bb, [2, rb]), 1.5, 0.0);
                    let xs = Tensor::<2>::from_floats([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]], &dev);
                    let rs = Tensor::<2>::from_floats([[1.0, -2.0], [0.5, 3.0]], &dev);
                    (l.forward(xs) * rs).sum().into_scalar::<f32>()
                };
                let fd = (shifted(eps) - shifted(-eps)) / (2.0 * eps);
                let err = (fd - g).abs() / g.abs().max(1e-3);
                worst = worst.max(err);
                assert!(err < 1e-3, "d loss / d {which}[{i}]: autodiff {g}, finite difference {fd}");
            }
        }
        eprintln!("lora grad check: max relative error {worst:e}");
    }

    #[test]
    fn optimizer_step_leaves_the_base_unchanged() {
        let device = Device::flex().autodiff();
        let cfg = LoraConfig { rank: 2, alpha: 2.0, ..LoraConfig::default() };
        let base = Tensor::<2>::from_floats([[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0]], &device);
        let bias = Tensor::<1>::from_floats([0.1, -0.2], &device);
        let l = LoraLinear::new(base, Some(bias), &cfg, &mut ChaCha8Rng::seed_from_u64(3)).unwrap();
        let (w0, b0, a0, bb0) = (values(l.weight.val()), values(l.bias.as_ref().unwrap().val()), values(l.lora_a.val()), values(l.lora_b.val()));
        let x = Tensor::<2>::from_floats([[0.5, -1.0, 2.0]], &device);
        let grads = l.forward(x).sum().backward();
        let grads = GradientsParams::from_grads(grads, &l);
        let mut optim = AdamWConfig::new().with_weight_decay(0.1).init();
        let l = optim.step(1e-2, l, grads);
        assert_eq!(values(l.weight.val()), w0, "base weight unchanged (weight decay included)");
        assert_eq!(values(l.bias.as_ref().unwrap().val()), b0, "base bias unchanged");
        assert_ne!(values(l.lora_b.val()), bb0, "B moved");
        // A's gradient is zero while B is zero, so only weight decay moves it: A·(1 - lr·wd).
        for (a1, a0) in values(l.lora_a.val()).iter().zip(&a0) {
            assert!((a1 - a0 * (1.0 - 1e-3)).abs() < 1e-6, "{a1} vs {a0}");
        }
    }

    /// QLoRA against LoRA on the dequantized weight: same outputs, same gradients for `A`, `B`
    /// and the input, and nothing else gets a gradient. Tolerance 1e-6 absolute (the two compute
    /// the same f32 products in the same order; observed difference 0).
    #[test]
    fn qlora_matches_lora_on_the_dequantized_weight() {
        use crate::lora::quant::{QuantType, QuantWeight};
        let device = Device::flex().autodiff();
        let mut rng = ChaCha8Rng::seed_from_u64(21);
        let (out, inp, r) = (8, 64, 3);
        let w = random(&mut rng, out * inp);
        let t2 = |v: Vec<f32>, s: [usize; 2]| Tensor::<2>::from_data(TensorData::new(v, s), &device);
        let (a, b, bias) = (random(&mut rng, r * inp), random(&mut rng, out * r), random(&mut rng, out));
        let xv = random(&mut rng, 3 * inp);
        let rv = random(&mut rng, 3 * out);
        for ty in [QuantType::Q8_0, QuantType::Q4_0] {
            let q = QuantWeight::quantize(ty, &w, [out, inp], &device).unwrap();
            let dense_w = q.dequantize();
            let bias_t = || Some(Tensor::<1>::from_data(TensorData::new(bias.clone(), [out]), &device));
            let ql = LoraLinear::from_base(BaseWeight::Quantized(q), bias_t(), t2(a.clone(), [r, inp]), t2(b.clone(), [out, r]), 0.75, 0.0);
            let dl = LoraLinear::from_parts(dense_w, bias_t(), t2(a.clone(), [r, inp]), t2(b.clone(), [out, r]), 0.75, 0.0);
            let run = |l: &LoraLinear| {
                let x = t2(xv.clone(), [3, inp]).require_grad();
                let y = l.forward(x.clone());
                let grads = (y.clone() * t2(rv.clone(), [3, out])).sum().backward();
                let g = |t: Option<Tensor<2>>| values(t.expect("gradient"));
                let (ga, gb, gx) = (g(l.lora_a.val().grad(&grads)), g(l.lora_b.val().grad(&grads)), g(x.grad(&grads)));
                let params = GradientsParams::from_grads(grads, l);
                (values(y), ga, gb, gx, params.len())
            };
            let (qy, qa, qb, qx, qn) = run(&ql);
            let (dy, da, db, dx, dn) = run(&dl);
            let diff = |p: &[f32], q: &[f32]| p.iter().zip(q).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            for (what, p, q) in [("output", &qy, &dy), ("dA", &qa, &da), ("dB", &qb, &db), ("dx", &qx, &dx)] {
                assert!(diff(p, q) <= 1e-6, "{ty} {what}: max difference {}", diff(p, q));
            }
            assert!(qa.iter().any(|v| *v != 0.0) && qx.iter().any(|v| *v != 0.0));
            assert_eq!((qn, dn), (2, 2), "{ty}: only A and B get gradients");
            assert_eq!(ql.num_params(), r * inp + out * r + out, "{ty}: the quantized base is not a parameter");
            assert!(ql.weight.is_quantized());
        }
    }

    #[test]
    fn qlora_optimizer_step_leaves_the_blocks_unchanged() {
        use crate::lora::quant::{QuantType, QuantWeight};
        let device = Device::flex().autodiff();
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let w = random(&mut rng, 4 * 32);
        let q = QuantLinear::new(QuantWeight::quantize(QuantType::Q4_0, &w, [4, 32], &device).unwrap(), None);
        let cfg = LoraConfig { rank: 2, alpha: 2.0, ..LoraConfig::default() };
        let l = AdaptableLinear::Quantized(q).with_lora(&cfg, &mut ChaCha8Rng::seed_from_u64(3)).unwrap();
        let AdaptableLinear::Lora(l) = l else { panic!("adapter attached") };
        let (w0, v0) = (values(l.weight.val()), l.lora_b.val());
        let grads = l.forward(Tensor::<2>::ones([2, 32], &device)).sum().backward();
        let grads = GradientsParams::from_grads(grads, &l);
        let mut optim = AdamWConfig::new().with_weight_decay(0.1).init();
        let l = optim.step(1e-2, l, grads);
        assert_eq!(values(l.weight.val()), w0, "quantized base unchanged");
        assert_ne!(values(l.lora_b.val()), values(v0), "B moved");
        // Same seed, same A as over a dense base.
        let dense = LoraLinear::new(Tensor::<2>::zeros([4, 32], &device), None, &cfg, &mut ChaCha8Rng::seed_from_u64(3)).unwrap();
        let qa = AdaptableLinear::Quantized(QuantLinear::new(QuantWeight::quantize(QuantType::Q4_0, &w, [4, 32], &device).unwrap(), None));
        let AdaptableLinear::Lora(qa) = qa.with_lora(&cfg, &mut ChaCha8Rng::seed_from_u64(3)).unwrap() else { unreachable!() };
        assert_eq!(values(qa.lora_a.val()), values(dense.lora_a.val()));
    }
}

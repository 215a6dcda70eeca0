//! BERT-family sentence encoders: all-MiniLM-L6-v2, bge-small-en-v1.5, e5-small-v2,
//! paraphrase-multilingual-MiniLM — any Hugging Face `BertModel` checkpoint.
//!
//! The layer structure and tensor names follow `transformers`' `modeling_bert.py`
//! (`embeddings.*`, `encoder.layer.{i}.attention.self.query`, …), so checkpoints load by name and
//! exports write the same names back. Pooling and normalisation follow sentence-transformers'
//! `Pooling` and `Normalize` modules. All parameters are burn [`Param`]s: put the model on
//! `device.autodiff()` and [`SentenceEncoder::encode`] is differentiable.
//!
//! ```no_run
//! use tunelab::model::bert::SentenceEncoder;
//! let device = burn::tensor::Device::flex();
//! let encoder = SentenceEncoder::load("models/all-MiniLM-L6-v2", &device).unwrap();
//! let vectors = encoder.embed(&["A man is eating food.", "Someone is eating."], 32).unwrap();
//! assert_eq!(vectors[0].len(), 384);
//! ```

use std::path::Path;

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Embedding, LayerNorm, LayerNormConfig, Linear};
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, DType, Device, FloatDType, Int, Tensor, TensorData, activation};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::io::hf::{HfError, ModelFolder, PoolingConfig};
use crate::lora::{AdaptableLinear, AdapterWeights, LoraConfig, LoraError};
use crate::model::decoder::Dtype;
use crate::io::safetensors::{Weights, WeightsError};
use crate::io::tokenizer::{TextTokenizer, TokenTensors, TokenizerError};

/// `config.json` of a Hugging Face BERT model. Fields we do not use are kept in `extra` so an
/// export writes them back unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "defaults::hidden_act")]
    pub hidden_act: String,
    #[serde(default = "defaults::dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "defaults::dropout")]
    pub attention_probs_dropout_prob: f64,
    #[serde(default = "defaults::max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default = "defaults::type_vocab_size")]
    pub type_vocab_size: usize,
    #[serde(default = "defaults::layer_norm_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: usize,
    #[serde(default = "defaults::position_embedding_type")]
    pub position_embedding_type: String,
    #[serde(default)]
    pub model_type: Option<String>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

mod defaults {
    pub fn hidden_act() -> String {
        "gelu".into()
    }
    pub fn dropout() -> f64 {
        0.1
    }
    pub fn max_position_embeddings() -> usize {
        512
    }
    pub fn type_vocab_size() -> usize {
        2
    }
    pub fn layer_norm_eps() -> f64 {
        1e-12
    }
    pub fn position_embedding_type() -> String {
        "absolute".into()
    }
}

impl BertConfig {
    /// Read and check `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, BertError> {
        let path = path.as_ref();
        let config: Self = crate::io::hf::read_json(path)?;
        config.validate().map_err(|(field, reason)| BertError::Config {
            path: path.display().to_string(),
            field,
            reason,
        })?;
        Ok(config)
    }

    /// A small configuration for tests: random weights of this shape run in milliseconds.
    pub fn tiny(vocab_size: usize, hidden_size: usize, num_hidden_layers: usize, num_attention_heads: usize) -> Self {
        Self {
            vocab_size,
            hidden_size,
            num_hidden_layers,
            num_attention_heads,
            intermediate_size: 4 * hidden_size,
            hidden_act: defaults::hidden_act(),
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            max_position_embeddings: 64,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            pad_token_id: 0,
            position_embedding_type: defaults::position_embedding_type(),
            model_type: Some("bert".into()),
            extra: Default::default(),
        }
    }

    /// Per-head width.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Check what this implementation supports; returns `(field, reason)` on failure.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let fail = |f: &str, r: String| Err((f.to_string(), r));
        if let Some(t) = &self.model_type
            && t != "bert"
        {
            // RoBERTa/XLM-R number positions from padding_idx + 1 and name tensors differently.
            return fail("model_type", format!("'{t}' is not supported (expected 'bert')"));
        }
        if self.num_attention_heads == 0 || !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return fail(
                "num_attention_heads",
                format!("hidden_size {} is not divisible by {} heads", self.hidden_size, self.num_attention_heads),
            );
        }
        if self.position_embedding_type != "absolute" {
            return fail("position_embedding_type", format!("'{}' is not supported", self.position_embedding_type));
        }
        if let Err(reason) = HiddenAct::parse(&self.hidden_act) {
            return fail("hidden_act", reason);
        }
        // A zero-variance row divided by sqrt(eps <= 0) is NaN or inf: every embedding would be null.
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return fail("layer_norm_eps", format!("{} must be a finite number above 0", self.layer_norm_eps));
        }
        for (field, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return fail(field, "must be at least 1".into());
            }
        }
        for (field, p) in
            [("hidden_dropout_prob", self.hidden_dropout_prob), ("attention_probs_dropout_prob", self.attention_probs_dropout_prob)]
        {
            if !(0.0..1.0).contains(&p) {
                return fail(field, format!("{p} is not a probability in [0, 1)"));
            }
        }
        Ok(())
    }
}

/// The feed-forward activation, by its `transformers` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HiddenAct {
    /// `gelu`: exact, erf-based.
    Gelu,
    /// `gelu_new`, `gelu_pytorch_tanh`, `gelu_fast`: the tanh approximation.
    GeluTanh,
    Relu,
    /// `silu` / `swish`.
    Silu,
}

impl HiddenAct {
    pub fn parse(name: &str) -> Result<Self, String> {
        match name {
            "gelu" => Ok(Self::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Self::GeluTanh),
            "relu" => Ok(Self::Relu),
            "silu" | "swish" => Ok(Self::Silu),
            other => Err(format!("activation '{other}' is not supported")),
        }
    }

    fn forward<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Self::Gelu => activation::gelu(x),
            Self::GeluTanh => activation::gelu_approximate(x),
            Self::Relu => activation::relu(x),
            Self::Silu => activation::silu(x),
        }
    }
}

/// Why an encoder could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum BertError {
    #[error(transparent)]
    Folder(#[from] HfError),
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("{path}: {field}: {reason}")]
    Config { path: String, field: String, reason: String },
    /// NaN or infinity in weights or outputs; nothing was written.
    #[error("non-finite values: {what}")]
    NonFinite { what: String },
}

// ---------------------------------------------------------------------------------------------
// Parameter sources: a checkpoint, or seeded random values for tests.
// ---------------------------------------------------------------------------------------------

/// Where parameter values come from, by Hugging Face tensor name and shape (`[out, in]` for
/// linear weights, as `transformers` stores them).
pub trait ParamSource {
    /// f32 values of exactly `shape`.
    fn get(&mut self, name: &str, shape: &[usize]) -> Result<TensorData, BertError>;
    fn has(&self, name: &str) -> bool;
}

/// Parameters from a checkpoint, under a name prefix (`""`, `"bert."`, …).
pub struct CheckpointSource<'a> {
    pub weights: &'a Weights,
    pub prefix: String,
}

impl<'a> CheckpointSource<'a> {
    /// Detect the prefix from where `embeddings.word_embeddings.weight` is found, so checkpoints
    /// saved from `BertModel` (no prefix) and from task heads (`bert.`) both load.
    pub fn new(weights: &'a Weights) -> Self {
        let anchor = "embeddings.word_embeddings.weight";
        let prefix = if weights.contains(anchor) {
            String::new()
        } else {
            weights
                .names()
                .into_iter()
                .filter_map(|n| n.strip_suffix(anchor).map(str::to_string))
                .min_by_key(|p| p.len())
                .unwrap_or_default()
        };
        Self { weights, prefix }
    }
}

impl ParamSource for CheckpointSource<'_> {
    fn get(&mut self, name: &str, shape: &[usize]) -> Result<TensorData, BertError> {
        let full = format!("{}{name}", self.prefix);
        // Old TF-converted checkpoints call LayerNorm's parameters gamma/beta.
        if !self.weights.contains(&full) {
            let legacy =
                full.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta");
            if legacy != full && self.weights.contains(&legacy) {
                let data = self.weights.read_data_checked(&legacy, shape)?;
                check_finite(&data, &legacy, self.weights.path())?;
                return Ok(data);
            }
        }
        let data = self.weights.read_data_checked(&full, shape)?;
        check_finite(&data, &full, self.weights.path())?;
        Ok(data)
    }

    fn has(&self, name: &str) -> bool {
        self.weights.contains(&format!("{}{name}", self.prefix))
    }
}

/// The weights must hold exactly the layers `config.json` declares: with fewer declared, the
/// extra layers would be silently dropped (a different model); with more, loading would fail on
/// the first missing tensor without saying why.
fn check_layer_count(config: &BertConfig, weights: &Weights, prefix: &str, config_path: &Path) -> Result<(), BertError> {
    let layer_prefix = format!("{prefix}encoder.layer.");
    let held = weights
        .names()
        .iter()
        .filter_map(|n| n.strip_prefix(&layer_prefix)?.split('.').next()?.parse::<usize>().ok())
        .max()
        .map_or(0, |i| i + 1);
    if held != config.num_hidden_layers {
        return Err(BertError::Config {
            path: config_path.display().to_string(),
            field: "num_hidden_layers".into(),
            reason: format!(
                "{} declared, but {} holds {held} layers ({layer_prefix}0..{})",
                config.num_hidden_layers,
                weights.path().display(),
                held.saturating_sub(1)
            ),
        });
    }
    Ok(())
}

/// Refuse a checkpoint tensor holding NaN or infinity (a corrupt or diverged checkpoint): it would
/// turn every embedding into NaN, written out as `null`.
fn check_finite(data: &TensorData, name: &str, file: &Path) -> Result<(), BertError> {
    if let Ok(values) = data.as_slice::<f32>()
        && let Some(i) = values.iter().position(|v| !v.is_finite())
    {
        return Err(BertError::NonFinite {
            what: format!("{}: tensor '{name}' holds {} at index {i}", file.display(), values[i]),
        });
    }
    Ok(())
}

/// Seeded random parameters: LayerNorm scales near 1, everything else uniform in ±`scale`.
/// Same seed → same model.
pub struct RandomSource {
    rng: ChaCha8Rng,
    scale: f32,
}

impl RandomSource {
    pub fn new(seed: u64, scale: f32) -> Self {
        Self { rng: ChaCha8Rng::seed_from_u64(seed), scale }
    }
}

impl ParamSource for RandomSource {
    fn get(&mut self, name: &str, shape: &[usize]) -> Result<TensorData, BertError> {
        let n: usize = shape.iter().product();
        let offset = if name.ends_with("LayerNorm.weight") { 1.0 } else { 0.0 };
        let values: Vec<f32> = (0..n).map(|_| offset + self.rng.random_range(-self.scale..self.scale)).collect();
        Ok(TensorData::new(values, shape.to_vec()))
    }

    fn has(&self, _name: &str) -> bool {
        true
    }
}

/// A linear layer from `{name}.weight` `[out, in]` and `{name}.bias`; burn stores `[in, out]`.
fn load_linear(
    src: &mut dyn ParamSource,
    name: &str,
    d_in: usize,
    d_out: usize,
    device: &Device,
) -> Result<Linear, BertError> {
    let w = Tensor::<2>::from_data(src.get(&format!("{name}.weight"), &[d_out, d_in])?, device);
    // Materialise the transpose once at load rather than on every forward pass.
    let w = Tensor::<2>::from_data(w.transpose().into_data(), device);
    let b = Tensor::<1>::from_data(src.get(&format!("{name}.bias"), &[d_out])?, device);
    Ok(Linear { weight: Param::from_tensor(w), bias: Some(Param::from_tensor(b)) })
}

fn load_layer_norm(
    src: &mut dyn ParamSource,
    name: &str,
    d: usize,
    eps: f64,
    device: &Device,
) -> Result<LayerNorm, BertError> {
    // burn's LayerNorm is (x - mean) / sqrt(biased var + eps) * gamma + beta, as BERT's.
    // Read (and shape-check) the checkpoint's values before allocating anything of size `d`.
    let (gamma, beta) = (src.get(&format!("{name}.weight"), &[d])?, src.get(&format!("{name}.bias"), &[d])?);
    let mut ln = LayerNormConfig::new(d).with_epsilon(eps).init(device);
    ln.gamma = Param::from_tensor(Tensor::from_data(gamma, device));
    ln.beta = Some(Param::from_tensor(Tensor::from_data(beta, device)));
    Ok(ln)
}

fn load_embedding(
    src: &mut dyn ParamSource,
    name: &str,
    n: usize,
    d: usize,
    device: &Device,
) -> Result<Embedding, BertError> {
    Ok(Embedding {
        weight: Param::from_tensor(Tensor::from_data(src.get(&format!("{name}.weight"), &[n, d])?, device)),
    })
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_into_vec_as::<f32>().expect("f32 tensor data")
}

fn export_linear(out: &mut Vec<(String, Vec<usize>, Vec<f32>)>, name: &str, l: &Linear) {
    let [d_in, d_out] = l.weight.val().dims();
    out.push((format!("{name}.weight"), vec![d_out, d_in], values(l.weight.val().transpose())));
    if let Some(b) = &l.bias {
        out.push((format!("{name}.bias"), vec![d_out], values(b.val())));
    }
}

/// An adapted layer exports fused (`W + scale·B·A`): a plain checkpoint every tool loads.
fn export_adaptable(out: &mut Vec<(String, Vec<usize>, Vec<f32>)>, name: &str, l: &AdaptableLinear) {
    match l {
        AdaptableLinear::Base(l) => export_linear(out, name, l),
        other => {
            let (w, bias) = other.fused_weight();
            let [d_out, d_in] = w.dims();
            out.push((format!("{name}.weight"), vec![d_out, d_in], values(w)));
            if let Some(b) = bias {
                out.push((format!("{name}.bias"), vec![d_out], values(b)));
            }
        }
    }
}

fn export_layer_norm(out: &mut Vec<(String, Vec<usize>, Vec<f32>)>, name: &str, ln: &LayerNorm) {
    let d = ln.gamma.val().dims()[0];
    out.push((format!("{name}.weight"), vec![d], values(ln.gamma.val())));
    if let Some(b) = &ln.beta {
        out.push((format!("{name}.bias"), vec![d], values(b.val())));
    }
}

// ---------------------------------------------------------------------------------------------
// The network.
// ---------------------------------------------------------------------------------------------

/// Word + position + token-type embeddings, then LayerNorm.
#[derive(Module, Debug)]
pub struct BertEmbeddings {
    pub word_embeddings: Embedding,
    pub position_embeddings: Embedding,
    pub token_type_embeddings: Embedding,
    pub layer_norm: LayerNorm,
    pub dropout: Dropout,
}

impl BertEmbeddings {
    fn load(c: &BertConfig, src: &mut dyn ParamSource, device: &Device) -> Result<Self, BertError> {
        let h = c.hidden_size;
        Ok(Self {
            word_embeddings: load_embedding(src, "embeddings.word_embeddings", c.vocab_size, h, device)?,
            position_embeddings: load_embedding(
                src,
                "embeddings.position_embeddings",
                c.max_position_embeddings,
                h,
                device,
            )?,
            token_type_embeddings: load_embedding(
                src,
                "embeddings.token_type_embeddings",
                c.type_vocab_size,
                h,
                device,
            )?,
            layer_norm: load_layer_norm(src, "embeddings.LayerNorm", h, c.layer_norm_eps, device)?,
            dropout: DropoutConfig::new(c.hidden_dropout_prob).init(),
        })
    }

    /// `[batch, seq]` ids → `[batch, seq, hidden]` in f32. Positions count from 0 (absolute
    /// embeddings). Tables cast to f16 (frozen, `--dtype f16`) are summed and normalised in f32,
    /// as under `torch.autocast` (lookups and LayerNorm are not autocast to f16 there).
    ///
    /// Only the words are looked up by index. Positions `0..seq` are the position table's first
    /// rows, taken as a slice, and token types go through a one-hot product with their table
    /// (2 rows in BERT): the same values, but their gradients are a slice and a product. A lookup's
    /// gradient is a scatter-add of every token's row, which the GPU backends run one index after
    /// another per column: 2.5-4 ms a launch on an H100 (Vulkan) for 4,096-8,192 tokens, a sixth
    /// of a MiniLM MNRL step's kernel time (scripts/profile-gpu-step.sh, case `mnrl:f16`).
    pub fn forward(&self, input_ids: Tensor<2, Int>, token_type_ids: Tensor<2, Int>) -> Tensor<3> {
        let [b, seq] = input_ids.dims();
        let device = input_ids.device();
        let f32 = |t: Tensor<3>| t.cast(FloatDType::F32);
        let table = self.position_embeddings.weight.val();
        let [max_positions, h] = table.dims();
        assert!(seq <= max_positions, "{seq} tokens, but the model has {max_positions} position embeddings");
        let positions = table.slice([0..seq]).reshape([1, seq, h]);
        let types = self.token_type_embeddings.weight.val();
        let n_types = types.dims()[0];
        let ids = token_type_ids.reshape([b * seq, 1]).expand([b * seq, n_types]);
        let classes = Tensor::<1, Int>::arange(0..n_types as i64, &device).reshape([1, n_types]).expand([b * seq, n_types]);
        let one_hot = ids.equal(classes).float().cast(types.dtype());
        let token_types = one_hot.matmul(types).reshape([b, seq, h]);
        let x = f32(self.word_embeddings.forward(input_ids)) + f32(token_types) + f32(positions);
        self.dropout.forward(self.layer_norm.forward(x))
    }
}

/// Multi-head self-attention (`attention.self` in `transformers`).
#[derive(Module, Debug)]
pub struct BertSelfAttention {
    pub query: AdaptableLinear,
    pub key: AdaptableLinear,
    pub value: AdaptableLinear,
    pub dropout: Dropout,
    pub num_heads: usize,
}

impl BertSelfAttention {
    fn load(c: &BertConfig, src: &mut dyn ParamSource, p: &str, device: &Device) -> Result<Self, BertError> {
        let h = c.hidden_size;
        Ok(Self {
            query: AdaptableLinear::Base(load_linear(src, &format!("{p}.query"), h, h, device)?),
            key: AdaptableLinear::Base(load_linear(src, &format!("{p}.key"), h, h, device)?),
            value: AdaptableLinear::Base(load_linear(src, &format!("{p}.value"), h, h, device)?),
            dropout: DropoutConfig::new(c.attention_probs_dropout_prob).init(),
            num_heads: c.num_attention_heads,
        })
    }

    /// `x`: `[batch, seq, hidden]`; `pad`: `[batch, heads, seq, seq]`, true where the key is padding.
    pub fn forward(&self, x: Tensor<3>, pad: Tensor<4, Bool>) -> Tensor<3> {
        let [b, s, h] = x.dims();
        let (nh, d) = (self.num_heads, h / self.num_heads);
        let heads = |t: Tensor<3>| t.reshape([b, s, nh, d]).swap_dims(1, 2);
        let q = heads(self.query.forward(x.clone()));
        let k = heads(self.key.forward(x.clone()));
        let v = heads(self.value.forward(x));
        // f16 activations (`--dtype f16`) take the spelled-out path too: its softmax is in f32.
        let context = if records_graph(&q) || q.dtype() != DType::F32 {
            // Spelled out so dropout can act on the attention probabilities, as in BERT training.
            // Scores leave the matmul in the activations' dtype and are scaled, masked and
            // softmaxed in f32 (f32::MIN and the exponentials are out of f16's range); the
            // probabilities go back to that dtype for the second matmul. No-ops in f32.
            let scores = q.matmul(k.swap_dims(2, 3)).cast(FloatDType::F32).mul_scalar(1.0 / (d as f64).sqrt());
            // HF uses the dtype's minimum rather than -inf: identical after softmax, never NaN.
            let probs = activation::softmax(scores.mask_fill(pad, f32::MIN), 3).cast(v.dtype());
            self.dropout.forward(probs).matmul(v)
        } else {
            burn::tensor::module::attention(q, k, v, Some(pad), None, AttentionModuleOptions::default())
        };
        context.swap_dims(1, 2).reshape([b, s, h])
    }
}

/// Whether this forward pass records a graph (then burn's fused attention kernel is not used).
fn records_graph<const D: usize>(t: &Tensor<D>) -> bool {
    t.device().is_autodiff()
}

/// Dense → dropout → LayerNorm(· + residual): `attention.output` and `output` in `transformers`.
#[derive(Module, Debug)]
pub struct BertOutput {
    pub dense: AdaptableLinear,
    pub layer_norm: LayerNorm,
    pub dropout: Dropout,
}

impl BertOutput {
    fn load(
        c: &BertConfig,
        src: &mut dyn ParamSource,
        p: &str,
        d_in: usize,
        device: &Device,
    ) -> Result<Self, BertError> {
        Ok(Self {
            dense: AdaptableLinear::Base(load_linear(src, &format!("{p}.dense"), d_in, c.hidden_size, device)?),
            layer_norm: load_layer_norm(src, &format!("{p}.LayerNorm"), c.hidden_size, c.layer_norm_eps, device)?,
            dropout: DropoutConfig::new(c.hidden_dropout_prob).init(),
        })
    }

    /// The sum and the LayerNorm run in `residual`'s dtype (f32 under `--dtype f16`, where the
    /// dense layer's output is f16: cast up, as `torch.autocast` promotes the sum).
    pub fn forward(&self, x: Tensor<3>, residual: Tensor<3>) -> Tensor<3> {
        let y = self.dropout.forward(self.dense.forward(x)).cast(residual.dtype());
        self.layer_norm.forward(y + residual)
    }
}

/// One transformer block (post-LayerNorm, as in BERT).
#[derive(Module, Debug)]
pub struct BertLayer {
    pub attention: BertSelfAttention,
    pub attention_output: BertOutput,
    pub intermediate: AdaptableLinear,
    pub output: BertOutput,
    #[module(skip)]
    pub act: HiddenAct,
}

impl BertLayer {
    fn load(c: &BertConfig, src: &mut dyn ParamSource, i: usize, device: &Device) -> Result<Self, BertError> {
        let p = format!("encoder.layer.{i}");
        Ok(Self {
            attention: BertSelfAttention::load(c, src, &format!("{p}.attention.self"), device)?,
            attention_output: BertOutput::load(c, src, &format!("{p}.attention.output"), c.hidden_size, device)?,
            intermediate: AdaptableLinear::Base(load_linear(
                src,
                &format!("{p}.intermediate.dense"),
                c.hidden_size,
                c.intermediate_size,
                device,
            )?),
            output: BertOutput::load(c, src, &format!("{p}.output"), c.intermediate_size, device)?,
            act: HiddenAct::parse(&c.hidden_act).map_err(|r| BertError::Config {
                path: "config.json".into(),
                field: "hidden_act".into(),
                reason: r,
            })?,
        })
    }

    pub fn forward(&self, x: Tensor<3>, pad: Tensor<4, Bool>) -> Tensor<3> {
        self.forward_in(x, pad, FloatDType::F32)
    }

    /// [`forward`](Self::forward) with the matmuls in `dtype` (`BertModel::with_dtype`), as
    /// `torch.autocast` runs it: the input of each linear layer is cast to `dtype` where it is
    /// used (the attention and the feed-forward then run in `dtype`), while the residual stream
    /// and the LayerNorms stay in `x`'s dtype, f32, so the sums between layers are never rounded
    /// to f16. (all-MiniLM-L6-v2, 20 steps of batch 16, dropout off: the f16 losses stay within
    /// 0.0007 of the f32 run with LoRA and 0.0005 in full fine-tuning; torch.autocast + GradScaler
    /// on the same model: 0.0007 and 0.0003.) No-ops in f32.
    pub fn forward_in(&self, x: Tensor<3>, pad: Tensor<4, Bool>, dtype: FloatDType) -> Tensor<3> {
        let attended = self.attention_output.forward(self.attention.forward(x.clone().cast(dtype), pad), x);
        let hidden = self.act.forward(self.intermediate.forward(attended.clone().cast(dtype)));
        self.output.forward(hidden, attended)
    }
}

/// The stack of transformer blocks.
#[derive(Module, Debug)]
pub struct BertEncoder {
    pub layers: Vec<BertLayer>,
}

/// `BertModel`: embeddings and encoder; returns the last hidden state. The pooler
/// (`pooler.dense`, tanh on `[CLS]`) is not used by sentence embeddings; it is kept when the
/// checkpoint has it so exports stay complete.
#[derive(Module, Debug)]
pub struct BertModel {
    pub embeddings: BertEmbeddings,
    pub encoder: BertEncoder,
    pub pooler: Option<Linear>,
    #[module(skip)]
    pub config: BertConfig,
    /// The dtype the linear layers and attention run in ([`Self::with_dtype`]).
    #[module(skip)]
    pub dtype: Dtype,
}

impl BertModel {
    /// Build from a parameter source (a checkpoint or [`RandomSource`]).
    pub fn load(config: &BertConfig, src: &mut dyn ParamSource, device: &Device) -> Result<Self, BertError> {
        let embeddings = BertEmbeddings::load(config, src, device)?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| BertLayer::load(config, src, i, device))
            .collect::<Result<Vec<_>, _>>()?;
        let h = config.hidden_size;
        let pooler =
            if src.has("pooler.dense.weight") { Some(load_linear(src, "pooler.dense", h, h, device)?) } else { None };
        Ok(Self { embeddings, encoder: BertEncoder { layers }, pooler, config: config.clone(), dtype: Dtype::F32 })
    }

    /// The same model with every dropout probability set to 0: deterministic forward passes on an
    /// autodiff device (gradient checks, reproducibility tests).
    pub fn without_dropout(mut self) -> Self {
        let off = || DropoutConfig::new(0.0).init();
        self.embeddings.dropout = off();
        for l in &mut self.encoder.layers {
            l.attention.dropout = off();
            l.attention_output.dropout = off();
            l.output.dropout = off();
        }
        self.config.hidden_dropout_prob = 0.0;
        self.config.attention_probs_dropout_prob = 0.0;
        self
    }

    /// A randomly initialised model (seeded), for tests.
    pub fn random(config: &BertConfig, seed: u64, device: &Device) -> Self {
        Self::load(config, &mut RandomSource::new(seed, 0.1), device).expect("random source never fails")
    }

    /// `[batch, seq]` ids, type ids and attention mask (1 = token, 0 = padding) →
    /// `[batch, seq, hidden]`.
    pub fn forward(
        &self,
        input_ids: Tensor<2, Int>,
        token_type_ids: Tensor<2, Int>,
        attention_mask: Tensor<2, Int>,
    ) -> Tensor<3> {
        let [b, s] = input_ids.dims();
        let pad = attention_mask.equal_elem(0).reshape([b, 1, 1, s]).expand([b, self.config.num_attention_heads, s, s]);
        let mut x = self.embeddings.forward(input_ids, token_type_ids);
        for layer in &self.encoder.layers {
            x = layer.forward_in(x, pad.clone(), self.dtype.float_dtype());
        }
        x
    }

    /// Mixed precision for training (`train embed --dtype f16`), as `torch.autocast(float16)`
    /// arranges it: every linear layer's input is cast to `dtype` where it is used
    /// ([`BertLayer::forward_in`]), so every matmul is f16 (tensor cores on a GPU), and the
    /// attention runs in f16 but for its softmax; the residual stream, the LayerNorms, the
    /// embeddings' sum and, in [`SentenceEncoder::encode_tokens`], pooling and normalisation stay
    /// f32. Frozen weights (the base under LoRA: embedding tables, linear weights and biases) are
    /// cast to `dtype` once; trainable ones stay f32 master weights cast at each use
    /// ([`AdaptableLinear`]), so gradients and the optimizer see f32 in full fine-tuning too.
    /// LayerNorm weights stay f32. With [`Dtype::F32`] the model is returned unchanged.
    /// Call it after adapters are attached and the model is on its autodiff device (which
    /// parameters train decides what is cast).
    pub fn with_dtype(mut self, dtype: Dtype) -> Self {
        if dtype == Dtype::F32 {
            return self;
        }
        let dt = dtype.float_dtype();
        let frozen_table = |mut e: Embedding| {
            if !e.weight.val().is_require_grad() {
                e.weight = e.weight.map(|t| t.cast(dt));
            }
            e
        };
        let frozen_linear = |l: AdaptableLinear| match &l {
            AdaptableLinear::Base(b) if b.weight.val().is_require_grad() => l,
            _ => l.with_frozen_dtype(dt),
        };
        let e = self.embeddings;
        self.embeddings = BertEmbeddings {
            word_embeddings: frozen_table(e.word_embeddings),
            position_embeddings: frozen_table(e.position_embeddings),
            token_type_embeddings: frozen_table(e.token_type_embeddings),
            ..e
        };
        let layers = std::mem::take(&mut self.encoder.layers);
        self.encoder.layers = layers
            .into_iter()
            .map(|mut l| {
                l.attention.query = frozen_linear(l.attention.query);
                l.attention.key = frozen_linear(l.attention.key);
                l.attention.value = frozen_linear(l.attention.value);
                l.attention_output.dense = frozen_linear(l.attention_output.dense);
                l.intermediate = frozen_linear(l.intermediate);
                l.output.dense = frozen_linear(l.output.dense);
                l
            })
            .collect();
        self.dtype = dtype;
        self
    }

    /// Linear layers PEFT adapts in BERT models when no `target_modules` are given.
    pub const DEFAULT_LORA_TARGETS: [&'static str; 2] = ["query", "value"];

    /// Freeze every weight and attach LoRA adapters where `config` says (targets by Hugging Face
    /// name: `query`, `key`, `value`, `attention.output.dense`, `intermediate.dense`,
    /// `output.dense`, or a full path; default `query` and `value`, as PEFT; `num_layers` counted
    /// from the top). Adapters are drawn from `rng`. Fails when a target matches no layer.
    pub fn with_lora<R: Rng>(self, config: &LoraConfig, rng: &mut R) -> Result<Self, LoraError> {
        config.validate()?;
        let mut m = self.no_grad();
        let n = m.encoder.layers.len();
        let mut hit = std::collections::BTreeSet::new();
        let mut adapt = |slot: AdaptableLinear, path: String, rng: &mut R| {
            // `dense` alone is ambiguous in BERT: targets may also name a path tail (`output.dense`).
            let named: Vec<&String> =
                config.target_modules.iter().filter(|t| path == **t || path.ends_with(&format!(".{t}"))).collect();
            hit.extend(named.iter().map(|t| t.to_string()));
            if config.targets(&path, &Self::DEFAULT_LORA_TARGETS) || !named.is_empty() { slot.with_lora(config, rng) } else { Ok(slot) }
        };
        let mut layers = Vec::with_capacity(n);
        for (i, mut l) in std::mem::take(&mut m.encoder.layers).into_iter().enumerate() {
            if config.adapts_layer(i, n) {
                let p = format!("encoder.layer.{i}");
                l.attention.query = adapt(l.attention.query, format!("{p}.attention.self.query"), rng)?;
                l.attention.key = adapt(l.attention.key, format!("{p}.attention.self.key"), rng)?;
                l.attention.value = adapt(l.attention.value, format!("{p}.attention.self.value"), rng)?;
                l.attention_output.dense = adapt(l.attention_output.dense, format!("{p}.attention.output.dense"), rng)?;
                l.intermediate = adapt(l.intermediate, format!("{p}.intermediate.dense"), rng)?;
                l.output.dense = adapt(l.output.dense, format!("{p}.output.dense"), rng)?;
            }
            layers.push(l);
        }
        m.encoder.layers = layers;
        if let Some(t) = config.target_modules.iter().find(|t| !hit.contains(*t)) {
            return Err(LoraError::NoMatch { target: t.clone(), model: "BertModel".into() });
        }
        Ok(m)
    }

    /// The adapters as plain arrays (module paths as PEFT names them inside a `BertModel`).
    pub fn adapter_weights(&self, config: &LoraConfig) -> AdapterWeights {
        let mut out = AdapterWeights::new(config.clone());
        for (i, l) in self.encoder.layers.iter().enumerate() {
            let p = format!("encoder.layer.{i}");
            for (path, slot) in [
                (format!("{p}.attention.self.query"), &l.attention.query),
                (format!("{p}.attention.self.key"), &l.attention.key),
                (format!("{p}.attention.self.value"), &l.attention.value),
                (format!("{p}.attention.output.dense"), &l.attention_output.dense),
                (format!("{p}.intermediate.dense"), &l.intermediate),
                (format!("{p}.output.dense"), &l.output.dense),
            ] {
                if let AdaptableLinear::Lora(lora) = slot {
                    out.insert_linear(&path, lora).expect("factors of a LoraLinear have consistent shapes");
                }
            }
        }
        out
    }

    /// Attach a saved adapter (PEFT's layer paths inside a `BertModel`, as
    /// [`BertModel::adapter_weights`] writes them; DoRA magnitudes included), freezing the rest.
    /// Fails naming the first adapter layer that is not in the model or does not fit it.
    pub fn with_adapter(self, adapter: &AdapterWeights) -> Result<Self, LoraError> {
        let mut m = self.no_grad();
        let mut used = 0;
        let mut layers = Vec::with_capacity(m.encoder.layers.len());
        for (i, mut l) in std::mem::take(&mut m.encoder.layers).into_iter().enumerate() {
            let p = format!("encoder.layer.{i}");
            let mut attach = |slot: AdaptableLinear, path: String| match adapter.layers.get(&path) {
                Some(f) => {
                    used += 1;
                    slot.with_factors(&path, f, adapter.magnitudes.get(&path).map(Vec::as_slice), &adapter.config)
                }
                None => Ok(slot),
            };
            l.attention.query = attach(l.attention.query, format!("{p}.attention.self.query"))?;
            l.attention.key = attach(l.attention.key, format!("{p}.attention.self.key"))?;
            l.attention.value = attach(l.attention.value, format!("{p}.attention.self.value"))?;
            l.attention_output.dense = attach(l.attention_output.dense, format!("{p}.attention.output.dense"))?;
            l.intermediate = attach(l.intermediate, format!("{p}.intermediate.dense"))?;
            l.output.dense = attach(l.output.dense, format!("{p}.output.dense"))?;
            layers.push(l);
        }
        m.encoder.layers = layers;
        if used != adapter.layers.len() {
            let known = |k: &String| k.starts_with("encoder.layer.") && m.encoder.layers.len() > k.split('.').nth(2).and_then(|n| n.parse::<usize>().ok()).unwrap_or(usize::MAX);
            let missing = adapter.layers.keys().find(|k| !known(k)).cloned().unwrap_or_default();
            return Err(LoraError::NoMatch { target: missing, model: "BertModel".into() });
        }
        Ok(m)
    }

    /// Every adapter folded into its base weight (`W + scale·B·A`): a plain model again.
    pub fn merged(mut self) -> Self {
        let layers = std::mem::take(&mut self.encoder.layers);
        self.encoder.layers = layers
            .into_iter()
            .map(|mut l| {
                l.attention.query = l.attention.query.merged();
                l.attention.key = l.attention.key.merged();
                l.attention.value = l.attention.value.merged();
                l.attention_output.dense = l.attention_output.dense.merged();
                l.intermediate = l.intermediate.merged();
                l.output.dense = l.output.dense.merged();
                l
            })
            .collect();
        self
    }

    /// All parameters under their Hugging Face names and layouts (`[out, in]` linear weights),
    /// for safetensors / GGUF export.
    pub fn hf_tensors(&self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let mut out = Vec::new();
        let e = &self.embeddings;
        for (name, emb) in [
            ("embeddings.word_embeddings", &e.word_embeddings),
            ("embeddings.position_embeddings", &e.position_embeddings),
            ("embeddings.token_type_embeddings", &e.token_type_embeddings),
        ] {
            let w = emb.weight.val();
            out.push((format!("{name}.weight"), w.dims().to_vec(), values(w)));
        }
        export_layer_norm(&mut out, "embeddings.LayerNorm", &e.layer_norm);
        for (i, l) in self.encoder.layers.iter().enumerate() {
            let p = format!("encoder.layer.{i}");
            export_adaptable(&mut out, &format!("{p}.attention.self.query"), &l.attention.query);
            export_adaptable(&mut out, &format!("{p}.attention.self.key"), &l.attention.key);
            export_adaptable(&mut out, &format!("{p}.attention.self.value"), &l.attention.value);
            export_adaptable(&mut out, &format!("{p}.attention.output.dense"), &l.attention_output.dense);
            export_layer_norm(&mut out, &format!("{p}.attention.output.LayerNorm"), &l.attention_output.layer_norm);
            export_adaptable(&mut out, &format!("{p}.intermediate.dense"), &l.intermediate);
            export_adaptable(&mut out, &format!("{p}.output.dense"), &l.output.dense);
            export_layer_norm(&mut out, &format!("{p}.output.LayerNorm"), &l.output.layer_norm);
        }
        if let Some(p) = &self.pooler {
            export_linear(&mut out, "pooler.dense", p);
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Pooling, normalisation, and the sentence encoder.
// ---------------------------------------------------------------------------------------------

/// One way of turning token vectors into a sentence vector (sentence-transformers' `Pooling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolingMode {
    /// The first token (`[CLS]`).
    Cls,
    /// Element-wise maximum over real tokens.
    Max,
    /// Mean over real tokens.
    Mean,
    /// Sum over real tokens divided by √(token count).
    MeanSqrtLen,
    /// The last real token.
    LastToken,
}

impl PoolingMode {
    /// The name sentence-transformers uses.
    pub fn st_name(self) -> &'static str {
        match self {
            Self::Cls => "cls",
            Self::Max => "max",
            Self::Mean => "mean",
            Self::MeanSqrtLen => "mean_sqrt_len_tokens",
            Self::LastToken => "lasttoken",
        }
    }
}

/// The pooling step; with several modes the pooled vectors are concatenated in `modes` order.
#[derive(Debug, Clone, PartialEq)]
pub struct Pooling {
    pub modes: Vec<PoolingMode>,
}

impl Pooling {
    pub fn mean() -> Self {
        Self { modes: vec![PoolingMode::Mean] }
    }

    pub fn cls() -> Self {
        Self { modes: vec![PoolingMode::Cls] }
    }

    /// From `1_Pooling/config.json` (either spelling). Weighted-mean pooling and
    /// `include_prompt: false` are refused.
    pub fn from_config(c: &PoolingConfig) -> Result<Self, String> {
        if !c.include_prompt {
            return Err("include_prompt: false is not supported".into());
        }
        let modes = c
            .mode_names()
            .iter()
            .map(|m| match m.as_str() {
                "cls" => Ok(PoolingMode::Cls),
                "max" => Ok(PoolingMode::Max),
                "mean" => Ok(PoolingMode::Mean),
                "mean_sqrt_len_tokens" => Ok(PoolingMode::MeanSqrtLen),
                "lasttoken" => Ok(PoolingMode::LastToken),
                other => Err(format!("pooling mode '{other}' is not supported")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { modes })
    }

    /// The `1_Pooling/config.json` that describes this pooling. Written in the legacy boolean
    /// spelling, which every sentence-transformers version reads, when the modes are in its
    /// fixed order; otherwise as a `pooling_mode` list (sentence-transformers >= 6).
    pub fn to_config(&self, word_embedding_dimension: usize) -> PoolingConfig {
        const ORDER: [PoolingMode; 5] =
            [PoolingMode::Cls, PoolingMode::Max, PoolingMode::Mean, PoolingMode::MeanSqrtLen, PoolingMode::LastToken];
        let canonical: Vec<PoolingMode> = ORDER.iter().copied().filter(|m| self.modes.contains(m)).collect();
        let mut c = PoolingConfig {
            word_embedding_dimension: Some(word_embedding_dimension),
            include_prompt: true,
            ..Default::default()
        };
        if canonical == self.modes {
            let has = |m| Some(self.modes.contains(&m));
            c.pooling_mode_cls_token = has(PoolingMode::Cls);
            c.pooling_mode_mean_tokens = has(PoolingMode::Mean);
            c.pooling_mode_max_tokens = has(PoolingMode::Max);
            c.pooling_mode_mean_sqrt_len_tokens = has(PoolingMode::MeanSqrtLen);
            c.pooling_mode_weightedmean_tokens = Some(false);
            c.pooling_mode_lasttoken = has(PoolingMode::LastToken);
        } else {
            c.pooling_mode =
                Some(crate::io::hf::OneOrMany::Many(self.modes.iter().map(|m| m.st_name().to_string()).collect()));
        }
        c
    }

    /// `[batch, seq, hidden]` token vectors and `[batch, seq]` mask → `[batch, modes × hidden]`.
    pub fn forward(&self, hidden: Tensor<3>, attention_mask: Tensor<2, Int>) -> Tensor<2> {
        let [b, s, h] = hidden.dims();
        let mask = attention_mask.float().reshape([b, s, 1]);
        let count = mask.clone().sum_dim(1).reshape([b, 1]);
        let pooled: Vec<Tensor<2>> = self
            .modes
            .iter()
            .map(|mode| match mode {
                PoolingMode::Cls => hidden.clone().slice([0..b, 0..1]).reshape([b, h]),
                PoolingMode::Max => {
                    // Padding set to -1e9 as sentence-transformers does, so it never wins.
                    let pad = mask.clone().equal_elem(0.0).expand([b, s, h]);
                    hidden.clone().mask_fill(pad, -1e9).max_dim(1).reshape([b, h])
                }
                PoolingMode::Mean => {
                    let sum = (hidden.clone() * mask.clone()).sum_dim(1).reshape([b, h]);
                    sum / count.clone().clamp_min(1e-9)
                }
                PoolingMode::MeanSqrtLen => {
                    let sum = (hidden.clone() * mask.clone()).sum_dim(1).reshape([b, h]);
                    sum / count.clone().clamp_min(1e-9).sqrt()
                }
                PoolingMode::LastToken => {
                    // One-hot at position (count - 1); right padding assumed, as our tokenizer pads.
                    let pos =
                        Tensor::<1, Int>::arange(0..s as i64, &hidden.device()).reshape([1, s]).float().expand([b, s]);
                    let last = pos.equal((count.clone() - 1.0).expand([b, s])).float().reshape([b, s, 1]);
                    (hidden.clone() * last).sum_dim(1).reshape([b, h])
                }
            })
            .collect();
        if pooled.len() == 1 { pooled.into_iter().next().expect("one mode") } else { Tensor::cat(pooled, 1) }
    }
}

/// L2 normalisation as `torch.nn.functional.normalize` (norm clamped at 1e-12).
pub fn l2_normalize(x: Tensor<2>) -> Tensor<2> {
    let norm = x.clone().powf_scalar(2.0).sum_dim(1).sqrt().clamp_min(1e-12);
    x / norm
}

/// Prompt text put before queries and documents (e5's `"query: "` / `"passage: "`, QMD's
/// nomic-style task prefixes). A prompt without `{text}` is a prefix; one with `{text}` is a
/// template, where `{title}` becomes the document title (or `none`, as QMD writes it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prompts {
    pub query: Option<String>,
    pub document: Option<String>,
}

impl Prompts {
    /// No prompts (all-MiniLM-L6-v2, bge for documents).
    pub fn none() -> Self {
        Self::default()
    }

    /// e5 models: `"query: "` and `"passage: "`.
    pub fn e5() -> Self {
        Self { query: Some("query: ".into()), document: Some("passage: ".into()) }
    }

    /// QMD's nomic-style prefixes (`formatQueryForEmbedding` / `formatDocForEmbedding` in
    /// tobi/qmd `src/llm.ts`).
    pub fn qmd() -> Self {
        Self {
            query: Some("task: search result | query: ".into()),
            document: Some("title: {title} | text: {text}".into()),
        }
    }

    /// Apply one prompt to a text.
    pub fn apply(prompt: Option<&str>, text: &str, title: Option<&str>) -> String {
        match prompt {
            None => text.to_string(),
            Some(p) if p.contains("{text}") => p.replace("{title}", title.unwrap_or("none")).replace("{text}", text),
            Some(p) => format!("{p}{text}"),
        }
    }
}

/// A sentence encoder: BERT + tokenizer + pooling + optional normalisation, configured from a
/// sentence-transformers folder. Cloning is cheap: parameters are shared tensor handles.
#[derive(Debug, Clone)]
pub struct SentenceEncoder {
    pub model: BertModel,
    pub tokenizer: TextTokenizer,
    pub pooling: Pooling,
    pub normalize: bool,
    pub prompts: Prompts,
    /// The prompt applied by [`embed`](Self::embed) (sentence-transformers' `default_prompt_name`).
    pub default_prompt: Option<String>,
    /// The folder this was loaded from (exports copy its tokenizer files); `None` for random models.
    pub source: Option<ModelFolder>,
}

impl SentenceEncoder {
    /// Load a Hugging Face / sentence-transformers folder onto `device`.
    pub fn load(dir: impl AsRef<Path>, device: &Device) -> Result<Self, BertError> {
        let folder = ModelFolder::open(dir)?;
        let config_path = folder.config_path();
        let config = BertConfig::from_file(&config_path)?;
        if let Some(d) = folder.dense.first() {
            // Dense layers after pooling are run by the Gemma encoder (model::gemma) only.
            return Err(BertError::Config {
                path: folder.root.join("modules.json").display().to_string(),
                field: format!("Dense module {}", d.display()),
                reason: "a BERT encoder with Dense layers after pooling is not supported".into(),
            });
        }
        let weights = Weights::open_dir(&folder.transformer_dir)?;
        let mut source = CheckpointSource::new(&weights);
        check_layer_count(&config, &weights, &source.prefix, &config_path)?;
        let model = BertModel::load(&config, &mut source, device)?;

        let max_len = folder.max_seq_length(config.max_position_embeddings);
        let tokenizer = TextTokenizer::from_file(&folder.tokenizer_json, max_len)?
            .with_lowercase(folder.sentence_bert.do_lower_case);
        let tok_vocab = tokenizer.inner().get_vocab_size(true);
        if tok_vocab > config.vocab_size {
            return Err(BertError::Config {
                path: folder.tokenizer_json.display().to_string(),
                field: "vocab".into(),
                reason: format!("tokenizer has {tok_vocab} tokens but the model's vocab_size is {}", config.vocab_size),
            });
        }

        let pooling = match &folder.pooling {
            Some(p) => {
                let pooling_path = folder.pooling_path.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
                if let Some(d) = p.word_embedding_dimension
                    && d != config.hidden_size
                {
                    return Err(BertError::Config {
                        path: pooling_path,
                        field: "word_embedding_dimension".into(),
                        reason: format!("{d} differs from the model's hidden_size {}", config.hidden_size),
                    });
                }
                Pooling::from_config(p).map_err(|reason| BertError::Config {
                    path: pooling_path,
                    field: "pooling".into(),
                    reason,
                })?
            }
            None => Pooling::mean(),
        };

        let named = &folder.st_config.prompts;
        let pick = |keys: &[&str]| keys.iter().find_map(|k| named.get(*k).filter(|p| !p.is_empty()).cloned());
        let prompts = Prompts { query: pick(&["query"]), document: pick(&["document", "passage", "corpus"]) };
        let default_prompt = folder.st_config.default_prompt_name.as_ref().and_then(|n| named.get(n).cloned());
        let normalize = folder.normalize;
        Ok(Self { model, tokenizer, pooling, normalize, prompts, default_prompt, source: Some(folder) })
    }

    /// A tiny random encoder for tests: `BertConfig::tiny` shapes (hidden 32, 2 layers, 4 heads),
    /// a lower-casing word-level tokenizer over `words` plus `[PAD] [UNK] [CLS] [SEP] [MASK]`,
    /// truncation at 32 tokens, mean pooling, normalisation. Same seed → same model.
    ///
    /// ```
    /// use tunelab::model::bert::SentenceEncoder;
    /// let enc = SentenceEncoder::random_tiny(&["hello", "world"], 0, &burn::tensor::Device::flex());
    /// let v = enc.embed(&["hello world", "world"], 8).unwrap();
    /// assert_eq!(v[0].len(), enc.dim());
    /// let norm: f32 = v[0].iter().map(|x| x * x).sum::<f32>().sqrt();
    /// assert!((norm - 1.0).abs() < 1e-5);
    /// ```
    pub fn random_tiny(words: &[&str], seed: u64, device: &Device) -> Self {
        let tokenizer_json = word_level_tokenizer_json(words);
        let inner: tokenizers::Tokenizer = tokenizer_json.to_string().parse().expect("valid tokenizer JSON");
        let vocab_size = inner.get_vocab_size(true);
        let config = BertConfig::tiny(vocab_size, 32, 2, 4);
        let tokenizer =
            TextTokenizer::new(inner, "tokenizer.json (random_tiny)".into(), 32).expect("truncation at 32 is valid");
        Self {
            model: BertModel::random(&config, seed, device),
            tokenizer,
            pooling: Pooling::mean(),
            normalize: true,
            prompts: Prompts::none(),
            default_prompt: None,
            source: None,
        }
    }

    /// Replace the query/document prompts (e.g. [`Prompts::e5`] or [`Prompts::qmd`]).
    pub fn with_prompts(mut self, prompts: Prompts) -> Self {
        self.prompts = prompts;
        self
    }

    /// Width of the sentence vectors.
    pub fn dim(&self) -> usize {
        self.model.config.hidden_size * self.pooling.modes.len()
    }

    /// Truncation length in tokens, special tokens included.
    pub fn max_seq_len(&self) -> usize {
        self.tokenizer.max_len()
    }

    /// The device the parameters live on.
    pub fn device(&self) -> Device {
        self.model.embeddings.word_embeddings.weight.val().device()
    }

    /// Tokenized batch → sentence vectors `[batch, dim]` (differentiable).
    pub fn encode_tokens(&self, tokens: TokenTensors) -> Tensor<2> {
        // Pooled and normalised in f32 under `--dtype f16` (a no-op cast in f32).
        let hidden = self.model.forward(tokens.input_ids, tokens.token_type_ids, tokens.attention_mask.clone()).cast(FloatDType::F32);
        let pooled = self.pooling.forward(hidden, tokens.attention_mask);
        if self.normalize { l2_normalize(pooled) } else { pooled }
    }

    /// Texts (as given: no prompt added) → sentence vectors `[batch, dim]` on the model's device.
    /// On an autodiff device the result carries the graph, for training.
    pub fn encode(&self, texts: &[&str]) -> Result<Tensor<2>, BertError> {
        let batch = self.tokenizer.encode_batch(texts)?;
        Ok(self.encode_tokens(batch.to_tensors(&self.device())))
    }

    /// Embed texts with the default prompt (none unless the folder names one).
    pub fn embed(&self, texts: &[&str], batch_size: usize) -> Result<Vec<Vec<f32>>, BertError> {
        self.embed_with_prompt(texts, self.default_prompt.as_deref(), batch_size)
    }

    /// Embed search queries with the query prompt.
    pub fn embed_queries(&self, texts: &[&str], batch_size: usize) -> Result<Vec<Vec<f32>>, BertError> {
        self.embed_with_prompt(texts, self.prompts.query.clone().as_deref(), batch_size)
    }

    /// Embed documents with the document prompt (`{title}` becomes `none`; see [`Prompts::apply`]).
    pub fn embed_documents(&self, texts: &[&str], batch_size: usize) -> Result<Vec<Vec<f32>>, BertError> {
        self.embed_with_prompt(texts, self.prompts.document.clone().as_deref(), batch_size)
    }

    /// Embed texts with an explicit prompt, in batches, longest texts first (as
    /// sentence-transformers sorts, so little padding is computed), returned in input order.
    /// Runs without recording a graph even when the model is on an autodiff device.
    pub fn embed_with_prompt(
        &self,
        texts: &[&str],
        prompt: Option<&str>,
        batch_size: usize,
    ) -> Result<Vec<Vec<f32>>, BertError> {
        let batch_size = batch_size.max(1);
        let prompted: Vec<String> = texts.iter().map(|t| Prompts::apply(prompt, t, None)).collect();
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(prompted[i].chars().count()));

        let device = self.device();
        let inference;
        let encoder = if device.is_autodiff() {
            inference = Self { model: self.model.valid(), ..self.clone() };
            &inference
        } else {
            self
        };
        let device = encoder.device();

        let progress = if texts.len() >= 8 * batch_size {
            let bar = indicatif::ProgressBar::new(texts.len() as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template("embedding {bar:40} {pos}/{len} texts ({per_sec}, eta {eta})")
                    .expect("valid template"),
            );
            Some(bar)
        } else {
            None
        };
        let dim = self.dim();
        let mut out = vec![Vec::new(); texts.len()];
        for chunk in order.chunks(batch_size) {
            let batch: Vec<&str> = chunk.iter().map(|&i| prompted[i].as_str()).collect();
            let tokens = encoder.tokenizer.encode_batch(&batch)?;
            let flat = values(encoder.encode_tokens(tokens.to_tensors(&device)));
            // Stop rather than hand back NaN (JSON `null`) vectors: name the first text affected.
            if let Some(k) = flat.iter().position(|v| !v.is_finite()) {
                let i = chunk[k / dim];
                return Err(BertError::NonFinite {
                    what: format!(
                        "the embedding of text {} ({:?}) holds {}",
                        i + 1,
                        texts[i].chars().take(40).collect::<String>(),
                        flat[k]
                    ),
                });
            }
            for (row, &i) in chunk.iter().enumerate() {
                out[i] = flat[row * dim..(row + 1) * dim].to_vec();
            }
            if let Some(bar) = &progress {
                bar.inc(chunk.len() as u64);
            }
        }
        if let Some(bar) = progress {
            bar.finish_and_clear();
        }
        Ok(out)
    }
}

/// `tokenizer.json` of a BERT-style word-level tokenizer: specials `[PAD]=0 [UNK]=1 [CLS]=2
/// [SEP]=3 [MASK]=4`, then `words` (lower-cased, duplicates dropped), `[CLS] … [SEP]` template.
pub fn word_level_tokenizer_json(words: &[&str]) -> serde_json::Value {
    use serde_json::json;
    let specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
    let mut vocab = serde_json::Map::new();
    for t in specials.iter().map(|s| s.to_string()).chain(words.iter().map(|w| w.to_lowercase())) {
        let id = vocab.len();
        vocab.entry(t).or_insert(json!(id));
    }
    let added: Vec<_> = specials
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
        .collect();
    let (cls, sep) = (
        json!({"SpecialToken": {"id": "[CLS]", "type_id": 0}}),
        json!({"SpecialToken": {"id": "[SEP]", "type_id": 0}}),
    );
    json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [cls, {"Sequence": {"id": "A", "type_id": 0}}, sep],
            "pair": [cls, {"Sequence": {"id": "A", "type_id": 0}}, sep, {"Sequence": {"id": "B", "type_id": 1}}, {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {
                "[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}
            }
        },
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_config() -> BertConfig {
        BertConfig::tiny(50, 32, 2, 4)
    }

    fn ids(rows: &[&[i64]], pad_to: usize) -> (Tensor<2, Int>, Tensor<2, Int>, Tensor<2, Int>) {
        let dev = Device::flex();
        let b = rows.len();
        let mut input = Vec::new();
        let mut mask = Vec::new();
        for r in rows {
            input.extend(r.iter().copied().chain(std::iter::repeat_n(0, pad_to - r.len())));
            mask.extend(std::iter::repeat_n(1i64, r.len()).chain(std::iter::repeat_n(0, pad_to - r.len())));
        }
        let t = |v: Vec<i64>| Tensor::<2, Int>::from_data(TensorData::new(v, [b, pad_to]), &dev);
        (t(input), t(vec![0; b * pad_to]), t(mask))
    }

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    /// Positions as a slice of their table and token types as a one-hot product give the same
    /// embeddings and the same gradients for all three tables as looking each up by index (what
    /// `transformers` does), over batch sizes, lengths up to the table's end, and token types all
    /// 0 or mixed.
    #[test]
    fn embeddings_match_lookups_in_values_and_gradients() {
        use rand::{Rng, SeedableRng};
        let device = Device::flex().autodiff();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let mut config = tiny_config();
        config.hidden_dropout_prob = 0.0;
        for (b, seq, mixed_types) in [(1usize, 1usize, false), (3, 7, true), (2, 64, true), (4, 16, false)] {
            let m = BertModel::random(&config, rng.random(), &device);
            let e = &m.embeddings;
            let int = |v: Vec<i64>| Tensor::<2, Int>::from_data(TensorData::new(v, [b, seq]), &device);
            let ids = int((0..b * seq).map(|_| rng.random_range(0..50)).collect());
            let types = int((0..b * seq).map(|_| if mixed_types { rng.random_range(0..2) } else { 0 }).collect());
            let weights = Tensor::<3>::from_data(TensorData::new((0..b * seq * 32).map(|_| rng.random_range(-1.0f32..1.0)).collect::<Vec<_>>(), [b, seq, 32]), &device);
            let ours = e.forward(ids.clone(), types.clone());
            let positions = Tensor::<1, Int>::arange(0..seq as i64, &device).reshape([1, seq]);
            let lookups = e.layer_norm.forward(e.word_embeddings.forward(ids) + e.token_type_embeddings.forward(types) + e.position_embeddings.forward(positions));
            let values = |t: &Tensor<3>| t.clone().into_data().try_to_vec::<f32>().unwrap();
            let diff = max_abs_diff(&values(&ours), &values(&lookups));
            assert!(diff <= 1e-6, "b={b} seq={seq}: embeddings differ by {diff}");
            let g1 = (ours * weights.clone()).sum().backward();
            let g2 = (lookups * weights).sum().backward();
            for (name, table) in [("word", &e.word_embeddings), ("position", &e.position_embeddings), ("token type", &e.token_type_embeddings)] {
                let grad = |g| table.weight.grad(g).unwrap_or_else(|| panic!("no {name} gradient")).into_data().try_to_vec::<f32>().unwrap();
                let diff = max_abs_diff(&grad(&g1), &grad(&g2));
                assert!(diff <= 1e-5, "b={b} seq={seq}: {name} table gradients differ by {diff}");
            }
        }
    }

    #[test]
    #[should_panic(expected = "65 tokens, but the model has 64 position embeddings")]
    fn more_tokens_than_positions_is_named() {
        let device = Device::flex();
        let m = BertModel::random(&tiny_config(), 0, &device);
        let ids = Tensor::<2, Int>::zeros([1, 65], &device);
        m.embeddings.forward(ids.clone(), ids);
    }

    #[test]
    fn shapes_and_seeded_reproducibility() {
        let dev = Device::flex();
        let m = BertModel::random(&tiny_config(), 7, &dev);
        let (i, t, a) = ids(&[&[2, 5, 9, 3], &[2, 7, 3]], 4);
        let h = m.forward(i.clone(), t.clone(), a.clone());
        assert_eq!(h.dims(), [2, 4, 32]);
        let again = BertModel::random(&tiny_config(), 7, &dev).forward(i, t, a);
        assert_eq!(values(h), values(again), "same seed, same numbers");
    }

    #[test]
    fn padding_does_not_change_a_sentence() {
        // The sentence [2 5 9 3] alone (no padding) and in a batch padded to 7 tokens next to a
        // longer one must pool to the same vector: the mask must hide padding from attention and
        // from pooling. Checked for every pooling mode.
        let dev = Device::flex();
        let m = BertModel::random(&tiny_config(), 11, &dev);
        let (i1, t1, a1) = ids(&[&[2, 5, 9, 3]], 4);
        let (i2, t2, a2) = ids(&[&[2, 8, 8, 8, 8, 8, 3], &[2, 5, 9, 3]], 7);
        let h1 = m.forward(i1, t1, a1.clone());
        let h2 = m.forward(i2, t2, a2.clone());
        for mode in
            [PoolingMode::Cls, PoolingMode::Max, PoolingMode::Mean, PoolingMode::MeanSqrtLen, PoolingMode::LastToken]
        {
            let p = Pooling { modes: vec![mode] };
            let alone = values(p.forward(h1.clone(), a1.clone()));
            let batched = values(p.forward(h2.clone(), a2.clone()));
            assert_eq!(alone.len(), 32);
            let d = max_abs_diff(&alone, &batched[32..]);
            assert!(d < 1e-5, "{mode:?}: padded vs alone differ by {d}");
        }
    }

    #[test]
    fn pooling_by_hand() {
        // hidden rows for one sentence of 3 tokens, the third is padding:
        // t0 = [1, 4], t1 = [3, -2], t2 = [100, 100] (pad).
        let dev = Device::flex();
        let hidden =
            Tensor::<3>::from_data(TensorData::new(vec![1.0f32, 4.0, 3.0, -2.0, 100.0, 100.0], [1, 3, 2]), &dev);
        let mask = Tensor::<2, Int>::from_data(TensorData::new(vec![1i64, 1, 0], [1, 3]), &dev);
        let run = |modes: Vec<PoolingMode>| values(Pooling { modes }.forward(hidden.clone(), mask.clone()));
        assert_eq!(run(vec![PoolingMode::Cls]), vec![1.0, 4.0]);
        assert_eq!(run(vec![PoolingMode::Max]), vec![3.0, 4.0]);
        assert_eq!(run(vec![PoolingMode::Mean]), vec![2.0, 1.0]);
        assert_eq!(run(vec![PoolingMode::LastToken]), vec![3.0, -2.0]);
        let s = 2f32.sqrt();
        assert!(max_abs_diff(&run(vec![PoolingMode::MeanSqrtLen]), &[4.0 / s, 2.0 / s]) < 1e-6);
        assert_eq!(run(vec![PoolingMode::Cls, PoolingMode::Mean]), vec![1.0, 4.0, 2.0, 1.0]);
        // [3, 4] / 5 by hand.
        let n = values(l2_normalize(Tensor::<2>::from_data(TensorData::new(vec![3.0f32, 4.0], [1, 2]), &dev)));
        assert!(max_abs_diff(&n, &[0.6, 0.8]) < 1e-7);
    }

    use serde_json::json;

    /// A tiny encoder saved as a sentence-transformers folder, with its config.json as JSON.
    fn saved_tiny(dir: &Path) -> (std::path::PathBuf, serde_json::Value) {
        let enc = SentenceEncoder::random_tiny(&["the", "cat", "sat"], 1, &Device::flex());
        let folder = dir.join("enc");
        crate::export::sentence_transformers::write_folder(&enc, &folder, serde_json::json!({})).unwrap();
        let config = serde_json::from_str(&std::fs::read_to_string(folder.join("config.json")).unwrap()).unwrap();
        (folder, config)
    }

    #[test]
    fn configs_that_disagree_with_the_weights_or_make_no_sense_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (folder, config) = saved_tiny(dir.path());
        let dev = Device::flex();
        let with = |field: &str, v: serde_json::Value| {
            let mut c = config.clone();
            c[field] = v;
            std::fs::write(folder.join("config.json"), c.to_string()).unwrap();
            SentenceEncoder::load(&folder, &dev).map(|_| ()).map_err(|e| e.to_string())
        };
        let err = with("layer_norm_eps", json!(-1.0)).unwrap_err();
        assert!(err.contains("config.json") && err.contains("layer_norm_eps"), "{err}");
        // The weights hold 2 layers: declaring 1 must not silently drop one, declaring 3 says why.
        for n in [1, 3] {
            let err = with("num_hidden_layers", json!(n)).unwrap_err();
            assert!(err.contains("num_hidden_layers") && err.contains("holds 2 layers"), "{n}: {err}");
        }
        with("num_hidden_layers", json!(2)).unwrap();
    }

    #[test]
    fn nan_weights_are_refused_naming_the_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let (folder, _) = saved_tiny(dir.path());
        let path = folder.join("model.safetensors");
        let w = crate::io::safetensors::SafetensorsFile::open(&path).unwrap();
        let mut tensors: Vec<_> = w
            .names()
            .into_iter()
            .map(|n| {
                let (v, shape) = w.read_f32(&n).unwrap();
                (n, shape, v)
            })
            .collect();
        drop(w);
        let victim = "encoder.layer.1.output.dense.weight";
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            tensors.iter_mut().find(|t| t.0 == victim).unwrap().2[3] = bad;
            crate::io::safetensors::write_f32(&path, &tensors, None).unwrap();
            let err = SentenceEncoder::load(&folder, &Device::flex()).map(|_| ()).unwrap_err().to_string();
            assert!(err.contains(victim) && err.contains("model.safetensors"), "{err}");
        }
    }

    /// Property: random numeric garbage in random config.json fields gives a load error or a
    /// model whose embeddings are finite; never a panic, never null vectors with success.
    #[test]
    fn random_numeric_garbage_in_config_json() {
        use rand::{Rng, SeedableRng};
        let dir = tempfile::tempdir().unwrap();
        let (folder, config) = saved_tiny(dir.path());
        let fields = [
            "layer_norm_eps",
            "num_hidden_layers",
            "hidden_size",
            "vocab_size",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
            "hidden_dropout_prob",
        ];
        let garbage = [
            json!(-1),
            json!(0),
            json!(-0.0),
            json!(1e308),
            json!(-1e-12),
            json!(u64::MAX),
            json!(1u64 << 40),
            json!(2.5),
            json!("NaN"),
            json!(null),
            json!(1),
            json!(3),
        ];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for case in 0..60 {
            let mut c = config.clone();
            let field = fields[rng.random_range(0..fields.len())];
            c[field] = garbage[rng.random_range(0..garbage.len())].clone();
            std::fs::write(folder.join("config.json"), c.to_string()).unwrap();
            let outcome = std::panic::catch_unwind(|| {
                SentenceEncoder::load(&folder, &Device::flex()).and_then(|e| e.embed(&["the cat", "sat"], 2))
            })
            .unwrap_or_else(|_| panic!("case {case}: {field} = {} panicked", c[field]));
            if let Ok(vectors) = outcome {
                assert!(vectors.iter().flatten().all(|v| v.is_finite()), "case {case}: {field} = {}", c[field]);
            }
        }
    }

    #[test]
    fn export_names_round_trip_through_load() {
        // hf_tensors() must produce exactly the names and layouts load() reads: reload from them
        // and compare outputs.
        let dev = Device::flex();
        let cfg = tiny_config();
        let m = BertModel::random(&cfg, 3, &dev);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        crate::io::safetensors::write_f32(&path, &m.hf_tensors(), None).unwrap();
        let w = Weights::open_file(&path).unwrap();
        let m2 = BertModel::load(&cfg, &mut CheckpointSource::new(&w), &dev).unwrap();
        let (i, t, a) = ids(&[&[2, 5, 9, 3]], 4);
        assert_eq!(values(m.forward(i.clone(), t.clone(), a.clone())), values(m2.forward(i, t, a)));
    }

    #[test]
    fn prefixed_checkpoint_loads_and_wrong_shape_is_named() {
        let dev = Device::flex();
        let cfg = tiny_config();
        let m = BertModel::random(&cfg, 3, &dev);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let mut tensors: Vec<_> = m.hf_tensors().into_iter().map(|(n, s, v)| (format!("bert.{n}"), s, v)).collect();
        crate::io::safetensors::write_f32(&path, &tensors, None).unwrap();
        let w = Weights::open_file(&path).unwrap();
        assert_eq!(CheckpointSource::new(&w).prefix, "bert.");
        BertModel::load(&cfg, &mut CheckpointSource::new(&w), &dev).unwrap();

        // Layer 1's key bias with 31 values where 32 are expected.
        let bad = "bert.encoder.layer.1.attention.self.key.bias";
        let entry = tensors.iter_mut().find(|(n, _, _)| n == bad).unwrap();
        entry.1 = vec![31];
        entry.2.truncate(31);
        crate::io::safetensors::write_f32(&path, &tensors, None).unwrap();
        let w = Weights::open_file(&path).unwrap();
        let msg = BertModel::load(&cfg, &mut CheckpointSource::new(&w), &dev).unwrap_err().to_string();
        assert!(
            msg.contains(bad) && msg.contains("[31]") && msg.contains("[32]") && msg.contains("model.safetensors"),
            "{msg}"
        );
    }

    #[test]
    fn encode_is_differentiable() {
        // A loss on the pooled output must give a gradient to a parameter of the first layer.
        let dev = Device::flex().autodiff();
        let m = BertModel::random(&tiny_config(), 5, &dev);
        let (i, t, a) = ids(&[&[2, 5, 9, 3], &[2, 7, 3]], 4);
        let (i, t, a) = (i.to_device(&dev), t.to_device(&dev), a.to_device(&dev));
        let pooled = Pooling::mean().forward(m.forward(i, t, a.clone()), a);
        let loss = l2_normalize(pooled).sum();
        let grads = loss.backward();
        let AdaptableLinear::Base(q) = &m.encoder.layers[0].attention.query else { unreachable!("no adapter attached") };
        let g = q.weight.grad(&grads).expect("gradient for layer 0 query");
        assert_eq!(g.dims(), [32, 32]);
        let norm: f32 = values(g.powf_scalar(2.0).sum())[0];
        assert!(norm > 0.0 && norm.is_finite(), "gradient norm {norm}");
    }

    #[test]
    fn dropout_acts_only_when_training_and_can_be_switched_off() {
        // On an autodiff device dropout (p = 0.1) makes two passes differ; without_dropout makes
        // them equal, and equal to the plain-device (inference) pass of the same weights.
        let ad = Device::flex().autodiff();
        let m = BertModel::random(&tiny_config(), 5, &ad);
        let (i, t, a) = ids(&[&[2, 5, 9, 3]], 4);
        let (i, t, a) = (i.to_device(&ad), t.to_device(&ad), a.to_device(&ad));
        let run = |m: &BertModel| values(m.forward(i.clone(), t.clone(), a.clone()));
        assert_ne!(run(&m), run(&m), "dropout is active while training");
        let m = m.without_dropout();
        let inference = values(m.valid().forward(i.clone().inner(), t.clone().inner(), a.clone().inner()));
        assert_eq!(run(&m), run(&m));
        assert!(max_abs_diff(&run(&m), &inference) < 1e-5);
    }

    #[test]
    fn prompts_prefix_and_template() {
        assert_eq!(Prompts::apply(Prompts::e5().query.as_deref(), "how", None), "query: how");
        let qmd = Prompts::qmd();
        assert_eq!(Prompts::apply(qmd.document.as_deref(), "body", Some("T")), "title: T | text: body");
        assert_eq!(Prompts::apply(qmd.document.as_deref(), "body", None), "title: none | text: body");
        assert_eq!(Prompts::apply(None, "x", None), "x");
    }

    #[test]
    fn config_refuses_what_we_cannot_run() {
        let mut c = tiny_config();
        c.model_type = Some("xlm-roberta".into());
        assert_eq!(c.validate().unwrap_err().0, "model_type");
        let mut c = tiny_config();
        c.num_attention_heads = 5;
        assert_eq!(c.validate().unwrap_err().0, "num_attention_heads");
        let c: BertConfig = serde_json::from_str(
            r#"{"vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
                "intermediate_size": 16, "architectures": ["BertModel"]}"#,
        )
        .unwrap();
        assert_eq!(c.layer_norm_eps, 1e-12);
        assert_eq!(c.extra["architectures"][0], "BertModel", "unknown fields are kept for export");
    }

    #[test]
    fn lora_trains_only_adapters_and_merges_to_the_same_function() {
        let dev = Device::flex().autodiff();
        let cfg = LoraConfig { rank: 2, alpha: 4.0, num_layers: 1, ..LoraConfig::default() };
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let m = BertModel::random(&tiny_config(), 5, &dev).without_dropout().with_lora(&cfg, &mut rng).unwrap();
        // Defaults (query, value) on the top layer only, as PEFT and MLX-LM's num_layers mean.
        assert!(!m.encoder.layers[0].attention.query.is_lora());
        assert!(m.encoder.layers[1].attention.query.is_lora() && m.encoder.layers[1].attention.value.is_lora());
        assert!(!m.encoder.layers[1].attention.key.is_lora());

        let (i, t, a) = ids(&[&[2, 5, 9, 3], &[2, 7, 3]], 4);
        let (i, t, a) = (i.to_device(&dev), t.to_device(&dev), a.to_device(&dev));
        let loss = Pooling::mean().forward(m.forward(i.clone(), t.clone(), a.clone()), a.clone()).powf_scalar(2.0).sum();
        let grads = loss.backward();
        let AdaptableLinear::Lora(q) = &m.encoder.layers[1].attention.query else { unreachable!() };
        assert!(q.lora_b.grad(&grads).is_some(), "adapter B gets a gradient");
        assert!(q.weight.val().grad(&grads).is_none(), "frozen base weight gets none");
        assert!(m.embeddings.word_embeddings.weight.grad(&grads).is_none(), "embeddings are frozen too");

        // Give B non-zero values, then the fused model computes the same function.
        let mut m = m.valid();
        let layer = &mut m.encoder.layers[1];
        if let AdaptableLinear::Lora(q) = &mut layer.attention.query {
            let [o, r] = q.lora_b.val().dims();
            q.lora_b = Param::from_tensor(Tensor::<2>::random([o, r], burn::tensor::Distribution::Uniform(-0.5, 0.5), &q.lora_b.val().device()));
        }
        let adapter = m.adapter_weights(&cfg);
        assert_eq!(adapter.layers.keys().collect::<Vec<_>>(), ["encoder.layer.1.attention.self.query", "encoder.layer.1.attention.self.value"]);
        let dev = m.embeddings.word_embeddings.weight.val().device();
        let (i, t, a) = (i.to_device(&dev), t.to_device(&dev), a.to_device(&dev));
        let before = values(m.forward(i.clone(), t.clone(), a.clone()));
        let fused = m.clone().merged();
        assert!(!fused.encoder.layers[1].attention.query.is_lora());
        let after = values(fused.forward(i, t, a));
        assert!(max_abs_diff(&before, &after) < 1e-5, "merged differs by {}", max_abs_diff(&before, &after));
        // The exported (fused) weights equal W + scale·B·A from the adapter's own arrays.
        let exported = m.hf_tensors();
        let (_, _, w) = exported.iter().find(|(n, _, _)| n == "encoder.layer.1.attention.self.query.weight").unwrap();
        let AdaptableLinear::Lora(q) = &m.encoder.layers[1].attention.query else { unreachable!() };
        let base = values(q.weight.val());
        let delta = adapter.delta("encoder.layer.1.attention.self.query").unwrap();
        let expect: Vec<f32> = base.iter().zip(&delta).map(|(b, d)| b + d).collect();
        assert!(max_abs_diff(w, &expect) < 1e-5);
    }

    /// `--dtype f16` on the tiny BERT. LoRA: the frozen base (embedding tables, every linear
    /// weight and bias) is F16 on the device, the adapters and LayerNorms F32. Full fine-tuning:
    /// every parameter stays an F32 master weight. Either way the attention runs in F16, the
    /// residual stream and the pooled vectors are F32, and every trainable parameter's gradient
    /// is F32 and finite.
    #[test]
    fn f16_casts_frozen_weights_once_and_keeps_trainable_ones_f32() {
        use burn::module::ModuleVisitor;
        struct Dtypes(Vec<(bool, DType)>);
        impl ModuleVisitor for Dtypes {
            fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
                let t = p.val();
                self.0.push((t.is_require_grad(), t.dtype()));
            }
        }
        let dev = Device::flex().autodiff();
        let lora = LoraConfig { rank: 2, alpha: 4.0, ..LoraConfig::default() };
        let base = || BertModel::random(&tiny_config(), 5, &dev).without_dropout();
        let adapted = base().with_lora(&lora, &mut ChaCha8Rng::seed_from_u64(3)).unwrap().train().with_dtype(Dtype::F16);
        let full = base().train().with_dtype(Dtype::F16);
        for (name, m) in [("lora", adapted), ("full", full)] {
            let mut v = Dtypes(Vec::new());
            m.visit(&mut v);
            let trainable: Vec<DType> = v.0.iter().filter(|(g, _)| *g).map(|(_, d)| *d).collect();
            let frozen: Vec<DType> = v.0.iter().filter(|(g, _)| !*g).map(|(_, d)| *d).collect();
            assert!(!trainable.is_empty() && trainable.iter().all(|d| *d == DType::F32), "{name}: trainable {trainable:?}");
            assert_eq!(m.encoder.layers[0].output.layer_norm.gamma.val().dtype(), DType::F32, "{name}: LayerNorm stays f32");
            if name == "lora" {
                assert_eq!(m.embeddings.word_embeddings.weight.val().dtype(), DType::F16);
                let AdaptableLinear::Lora(q) = &m.encoder.layers[0].attention.query else { panic!("query adapted") };
                assert_eq!((q.weight.val().dtype(), q.lora_a.val().dtype()), (DType::F16, DType::F32));
                let AdaptableLinear::Base(k) = &m.encoder.layers[0].attention.key else { panic!("key not adapted") };
                assert_eq!(k.weight.val().dtype(), DType::F16, "untargeted layers are frozen base too");
                // 3 tables + 6 linears × (weight, bias) × 2 layers are f16; LayerNorms (and the pooler, unused) f32.
                assert_eq!(frozen.iter().filter(|d| **d == DType::F16).count(), 3 + 24, "{frozen:?}");
            } else {
                assert!(frozen.is_empty() && trainable.len() == v.0.len(), "full fine-tuning trains every weight");
            }
            let (i, t, a) = ids(&[&[2, 5, 9, 3], &[2, 7, 3]], 4);
            let (i, t, a) = (i.to_device(&dev), t.to_device(&dev), a.to_device(&dev));
            // The attention (and every linear layer) runs in f16 on its input cast at use; the
            // residual stream between the layers stays f32, as under torch.autocast.
            let pad = a.clone().equal_elem(0).reshape([2, 1, 1, 4]).expand([2, 4, 4, 4]);
            let x = m.embeddings.forward(i.clone(), t.clone());
            assert_eq!(m.encoder.layers[0].attention.forward(x.cast(FloatDType::F16), pad).dtype(), DType::F16, "{name}");
            let hidden = m.forward(i, t, a.clone());
            assert_eq!(hidden.dtype(), DType::F32, "{name}: the residual stream stays f32");
            let pooled = l2_normalize(Pooling::mean().forward(hidden, a));
            assert_eq!(pooled.dtype(), DType::F32);
            let grads = pooled.sum_dim(0).powf_scalar(2.0).sum().mul_scalar(256.0).backward();
            struct Grads<'a>(&'a burn::tensor::Gradients, usize);
            impl ModuleVisitor for Grads<'_> {
                fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
                    if let Some(g) = p.val().grad(self.0) {
                        assert_eq!(g.dtype(), DType::F32, "gradients of f32 parameters are f32");
                        assert!(g.into_data().try_to_vec::<f32>().unwrap().iter().all(|x| x.is_finite()));
                        self.1 += 1;
                    }
                }
            }
            let mut g = Grads(&grads, 0);
            m.visit(&mut g);
            // The pooler (`pooler.dense`) trains in full fine-tuning but sentence vectors never use it.
            let unused = if name == "full" { m.pooler.as_ref().map_or(0, |p| 1 + p.bias.is_some() as usize) } else { 0 };
            assert_eq!(g.1, trainable.len() - unused, "{name}: every trainable parameter in use gets a gradient");
        }
    }

    #[test]
    fn lora_target_that_matches_nothing_is_named() {
        let cfg = LoraConfig { target_modules: vec!["q_proj".into()], ..LoraConfig::default() };
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let err = BertModel::random(&tiny_config(), 5, &Device::flex()).with_lora(&cfg, &mut rng).unwrap_err();
        assert!(err.to_string().contains("q_proj"), "{err}");
        let ok = LoraConfig { target_modules: vec!["output.dense".into(), "key".into()], ..LoraConfig::default() };
        let m = BertModel::random(&tiny_config(), 5, &Device::flex()).with_lora(&ok, &mut rng).unwrap();
        assert!(m.encoder.layers[0].output.dense.is_lora() && m.encoder.layers[0].attention_output.dense.is_lora());
        assert!(m.encoder.layers[0].attention.key.is_lora() && !m.encoder.layers[0].attention.query.is_lora());
    }
}

//! What the contrastive trainer needs from a sentence encoder, and a tiny one to test with.
//!
//! [`TrainableEncoder`] is the seam between the training loop and a model: texts in,
//! differentiable sentence vectors out, plus access to the burn module that holds the
//! parameters (for gradients, the optimizer and checkpoints). The BERT `SentenceEncoder`
//! implements it by returning its `BertModel`; [`HashedBagEncoder`] (a bag of hashed words, as
//! fastText hashes n-grams) is small enough for gradient checks and fast tests.

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, Linear};
use burn::tensor::{Device, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::lora::{AdaptableLinear, LoraConfig, LoraError};
use crate::model::decoder::Dtype;

/// A sentence encoder the contrastive trainer can fine-tune.
///
/// `encode` must be differentiable with respect to the parameters of `model()` when they live on
/// an autodiff device (`Device::autodiff()`), and must not add prompts: the caller passes the
/// texts as they should be embedded.
pub trait TrainableEncoder: Clone + Send {
    /// The burn module holding every parameter (trainable or frozen).
    type Model: Module;
    /// Why encoding failed (a tokenizer error, for instance).
    type Error: std::error::Error + Send + Sync + 'static;

    fn model(&self) -> &Self::Model;

    /// Replace the parameters (after an optimizer step or a checkpoint load).
    fn set_model(&mut self, model: Self::Model);

    /// Texts → sentence vectors `[texts, dim]`, on the model's device.
    fn encode(&self, texts: &[&str]) -> Result<Tensor<2>, Self::Error>;

    /// Attach LoRA adapters as `config` says (freezing the rest); adapters drawn from `seed`.
    fn with_lora(self, config: &LoraConfig, seed: u64) -> Result<Self, LoraError> {
        let _ = (config, seed);
        Err(LoraError::Unsupported { model: std::any::type_name::<Self>().to_string() })
    }

    /// Mixed precision (`--dtype f16`): the encoder set up to run its activations in `dtype`,
    /// after [`for_training`](Self::for_training) and any adapters (the BERT encoder's split is
    /// in `BertModel::with_dtype`). `F32` is the encoder as it is; encoders without an f16 path
    /// refuse f16 with the reason.
    fn with_dtype(self, dtype: Dtype) -> Result<Self, String> {
        match dtype {
            Dtype::F16 => Err(format!("{} does not train in f16; use --dtype f32", std::any::type_name::<Self>())),
            _ => Ok(self),
        }
    }

    /// Whether [`with_dtype`](Self::with_dtype) takes f16: what `dtype = "auto"` asks before it
    /// picks f16 on a GPU ([`Dtype::resolve`]).
    fn trains_in_f16(&self) -> bool {
        false
    }

    /// The device of the parameters.
    fn device(&self) -> Device {
        self.model().devices().into_iter().next().unwrap_or_default()
    }

    /// The same encoder with autodiff enabled on its parameters (frozen ones stay frozen).
    fn for_training(mut self) -> Self {
        let model = self.model().clone().train();
        self.set_model(model);
        self
    }

    /// The same encoder with every parameter cut from the autograd graph (`no_grad` on a clone;
    /// the weights are shared, not copied). It stays on the autodiff device with its training
    /// flags, so dropout draws its masks exactly as [`encode`](Self::encode) does, but no
    /// operation is recorded for a backward pass. GradCache's first pass embeds with it: burn's
    /// autodiff frees a recorded graph only inside a backward, so graphs built there and merely
    /// dropped would all stay alive (tied together by the shared parameters) until the step's end.
    fn without_graph(&self) -> Self {
        let mut e = self.clone();
        e.set_model(self.model().clone().no_grad());
        e
    }

    /// A copy for evaluation: no autodiff, dropout off.
    fn for_inference(&self) -> Self {
        let mut e = self.clone();
        e.set_model(self.model().valid());
        e
    }
}

/// Sentence vectors from a bag of hashed words: lower-cased whitespace tokens are hashed
/// (FNV-1a) into `buckets` rows of an embedding table, averaged, passed through `tanh`, dropout
/// and a linear projection. Same seed → same weights.
///
/// ```
/// use burn::tensor::Device;
/// use tunelab::train::encoder::{HashedBagEncoder, TrainableEncoder};
/// let enc = HashedBagEncoder::new(64, 8, 4, 0.0, 42, &Device::flex());
/// let v = enc.encode(&["a red fox", "the sea"]).unwrap();
/// assert_eq!(v.dims(), [2, 4]);
/// ```
#[derive(Module, Debug)]
pub struct HashedBagEncoder {
    /// `[buckets, hidden]`.
    pub embedding: Param<Tensor<2>>,
    pub dropout: Dropout,
    /// `hidden → dim`; the one LoRA target (`proj`).
    pub proj: AdaptableLinear,
}

impl HashedBagEncoder {
    pub fn new(buckets: usize, hidden: usize, dim: usize, dropout: f64, seed: u64, device: &Device) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut uniform = |n: usize, bound: f32| -> Vec<f32> { (0..n).map(|_| rng.random_range(-bound..bound)).collect() };
        let table = uniform(buckets * hidden, 1.0);
        // burn's Linear layout [in, out], PyTorch's default bound 1/√in.
        let bound = 1.0 / (hidden as f32).sqrt();
        let (w, b) = (uniform(hidden * dim, bound), uniform(dim, bound));
        let proj = Linear {
            weight: Param::from_data(TensorData::new(w, [hidden, dim]), device),
            bias: Some(Param::from_data(TensorData::new(b, [dim]), device)),
        };
        Self {
            embedding: Param::from_data(TensorData::new(table, [buckets, hidden]), device),
            dropout: DropoutConfig::new(dropout).init(),
            proj: AdaptableLinear::Base(proj),
        }
    }

    pub fn buckets(&self) -> usize {
        self.embedding.dims()[0]
    }

    /// `[texts, buckets]` word frequencies (each row sums to 1; an empty text is all zeros).
    pub fn bag(&self, texts: &[&str], device: &Device) -> Tensor<2> {
        let buckets = self.buckets();
        let mut counts = vec![0.0f32; texts.len() * buckets];
        for (i, text) in texts.iter().enumerate() {
            let words: Vec<String> = text.split_whitespace().map(str::to_lowercase).collect();
            for w in &words {
                counts[i * buckets + (fnv1a(w.as_bytes()) % buckets as u64) as usize] += 1.0 / words.len() as f32;
            }
        }
        Tensor::from_data(TensorData::new(counts, [texts.len(), buckets]), device)
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

impl TrainableEncoder for HashedBagEncoder {
    type Model = Self;
    type Error = std::convert::Infallible;

    fn model(&self) -> &Self {
        self
    }

    fn set_model(&mut self, model: Self) {
        *self = model;
    }

    fn encode(&self, texts: &[&str]) -> Result<Tensor<2>, Self::Error> {
        let device = self.embedding.device();
        let hidden = self.bag(texts, &device).matmul(self.embedding.val()).tanh();
        Ok(self.proj.forward(self.dropout.forward(hidden)))
    }

    /// Adapts `proj` (the only target); the embedding table is frozen.
    fn with_lora(self, config: &LoraConfig, seed: u64) -> Result<Self, LoraError> {
        config.validate()?;
        if !config.targets("proj", &["proj"]) {
            let target = config.target_modules.join(", ");
            return Err(LoraError::NoMatch { target, model: "HashedBagEncoder".into() });
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        Ok(Self {
            embedding: self.embedding.set_require_grad(false),
            dropout: self.dropout,
            proj: self.proj.with_lora(config, &mut rng)?,
        })
    }
}

/// The BERT-family sentence encoder trains as is: its `encode` is differentiable.
impl TrainableEncoder for crate::model::bert::SentenceEncoder {
    type Model = crate::model::bert::BertModel;
    type Error = crate::model::bert::BertError;
    fn model(&self) -> &Self::Model {
        &self.model
    }
    fn set_model(&mut self, model: Self::Model) {
        self.model = model;
    }
    fn encode(&self, texts: &[&str]) -> Result<Tensor<2>, Self::Error> {
        crate::model::bert::SentenceEncoder::encode(self, texts)
    }
    fn with_lora(mut self, config: &LoraConfig, seed: u64) -> Result<Self, LoraError> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        self.model = self.model.with_lora(config, &mut rng)?;
        Ok(self)
    }
    fn with_dtype(mut self, dtype: Dtype) -> Result<Self, String> {
        self.model = self.model.with_dtype(dtype);
        Ok(self)
    }
    fn trains_in_f16(&self) -> bool {
        true
    }
}

/// EmbeddingGemma trains the same way; the Dense modules train with the transformer in full
/// fine-tuning and stay frozen under LoRA.
impl TrainableEncoder for crate::model::gemma::GemmaEncoder {
    type Model = crate::model::gemma::GemmaSentenceModel;
    type Error = crate::model::gemma::GemmaError;
    fn model(&self) -> &Self::Model {
        &self.model
    }
    fn set_model(&mut self, model: Self::Model) {
        self.model = model;
    }
    fn encode(&self, texts: &[&str]) -> Result<Tensor<2>, Self::Error> {
        crate::model::gemma::GemmaEncoder::encode(self, texts)
    }
    fn with_lora(mut self, config: &LoraConfig, seed: u64) -> Result<Self, LoraError> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        self.model = self.model.with_lora(config, &mut rng)?;
        Ok(self)
    }
    /// EmbeddingGemma's activations overflow f16 (its model card: "EmbeddingGemma activations do
    /// not support float16"; use float32 or bfloat16), and burn's Vulkan backend has no bf16.
    fn with_dtype(self, dtype: Dtype) -> Result<Self, String> {
        match dtype {
            Dtype::F32 | Dtype::Auto => Ok(self),
            Dtype::F16 => Err("EmbeddingGemma does not run in f16 (its activations overflow f16, as its model card warns; \
                 bf16 is not supported by burn's Vulkan backend): use --dtype f32"
                .into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bag_hashes_lowercased_words() {
        let enc = HashedBagEncoder::new(1024, 4, 2, 0.0, 1, &Device::flex());
        let bag = enc.bag(&["Fox fox", "", "FOX"], &Device::flex()).into_data().try_to_vec::<f32>().unwrap();
        let (a, b, c) = (&bag[..1024], &bag[1024..2048], &bag[2048..]);
        assert_eq!(a, c, "case-insensitive, frequencies");
        assert_eq!(a.iter().sum::<f32>(), 1.0);
        assert!(b.iter().all(|v| *v == 0.0));
    }

    #[test]
    fn lora_freezes_everything_but_the_adapter() {
        let device = Device::flex().autodiff();
        let enc = HashedBagEncoder::new(32, 4, 3, 0.0, 1, &device);
        let before = enc.encode(&["a b c"]).unwrap().into_data().try_to_vec::<f32>().unwrap();
        let lora = LoraConfig { rank: 2, alpha: 4.0, ..LoraConfig::default() };
        let enc = enc.with_lora(&lora, 9).unwrap();
        assert!(enc.proj.is_lora());
        // B = 0: same vectors as before the adapter.
        let after = enc.encode(&["a b c"]).unwrap();
        assert_eq!(after.clone().into_data().try_to_vec::<f32>().unwrap(), before);
        let grads = after.sum().backward();
        assert!(enc.embedding.val().grad(&grads).is_none());
        let bad = LoraConfig { target_modules: vec!["query".into()], ..lora };
        let err = HashedBagEncoder::new(32, 4, 3, 0.0, 1, &device).with_lora(&bad, 9).unwrap_err();
        assert!(err.to_string().contains("query"), "{err}");
    }
}

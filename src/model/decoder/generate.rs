//! Generation: sampling and [`CausalLm`], a decoder bundled with its tokenizer and chat template.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::data::chat_template::ChatTemplate;
use crate::io::gguf::GgufFile;
use crate::lora::QuantizeBase;

use super::*;

// ------------------------------------------------------------------------------------------ sampling

/// Options for [`CausalLm::generate`], named as MLX-LM's `generate` flags.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches `top_p` (1.0 = off).
    pub top_p: f32,
    pub seed: u64,
    /// Extra stop tokens (the model's end-of-sequence tokens always stop).
    pub stop_tokens: Vec<u32>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stop_tokens: Vec::new(),
        }
    }
}

/// Pick the next token from one row of logits: argmax at temperature 0, else a seeded draw from
/// softmax(logits / T) restricted to the top-p nucleus. Ties in argmax go to the lowest id.
pub fn sample(logits: &[f32], temperature: f32, top_p: f32, rng: &mut ChaCha8Rng) -> u32 {
    if temperature <= 0.0 {
        let mut best = 0;
        for (i, &v) in logits.iter().enumerate() {
            if v > logits[best] {
                best = i;
            }
        }
        return best as u32;
    }
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(usize, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &v)| (i, (((v - max) / temperature) as f64).exp()))
        .collect();
    let total: f64 = probs.iter().map(|p| p.1).sum();
    probs.iter_mut().for_each(|p| p.1 /= total);
    if top_p < 1.0 {
        probs.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap().then(a.0.cmp(&b.0)));
        let mut cum = 0.0;
        let mut keep = probs.len();
        for (k, p) in probs.iter().enumerate() {
            cum += p.1;
            if cum >= top_p as f64 {
                keep = k + 1;
                break;
            }
        }
        probs.truncate(keep);
    }
    let mass: f64 = probs.iter().map(|p| p.1).sum();
    let mut u = rng.random::<f64>() * mass;
    for &(i, p) in &probs {
        if u < p {
            return i as u32;
        }
        u -= p;
    }
    probs.last().map(|p| p.0 as u32).unwrap_or(0)
}

// ------------------------------------------------------------------------------------------ bundle

/// A decoder with its tokenizer, chat template and stop tokens: what `tunelab generate` loads.
pub struct CausalLm {
    pub model: Decoder,
    pub config: DecoderConfig,
    pub tokenizer: tokenizers::Tokenizer,
    /// The chat template, when the model has one.
    pub chat_template: Option<ChatTemplate>,
    /// Tokens that end generation (end-of-sequence and end-of-turn).
    pub eos_token_ids: Vec<u32>,
    /// Whether encoding adds a beginning-of-sequence token.
    pub add_bos: bool,
    pub bos_token: Option<String>,
    pub source: PathBuf,
}

impl CausalLm {
    /// Load a `.gguf` file or a Hugging Face folder.
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self, DecoderError> {
        Self::load_with(path, device, QuantizeBase::None)
    }

    /// [`CausalLm::load`] with the block projections kept or made quantized (QLoRA's frozen
    /// base, see [`QuantizeBase`]).
    pub fn load_with(path: impl AsRef<Path>, device: &Device, quantize: QuantizeBase) -> Result<Self, DecoderError> {
        let path = path.as_ref();
        if path.is_dir() {
            Self::load_hf_dir_with(path, device, quantize)
        } else {
            Self::load_gguf_with(path, device, quantize)
        }
    }

    /// Load model, tokenizer and chat template from one GGUF file.
    pub fn load_gguf(path: &Path, device: &Device) -> Result<Self, DecoderError> {
        Self::load_gguf_with(path, device, QuantizeBase::None)
    }

    fn load_gguf_with(path: &Path, device: &Device, quantize: QuantizeBase) -> Result<Self, DecoderError> {
        let g = GgufFile::open(path)?;
        let (model, config) = Decoder::from_gguf_with(&g, device, quantize)?;
        let tok = crate::io::gguf::GgufTokenizer::from_gguf(&g)?;
        let template_text = g
            .get("tokenizer.chat_template")
            .and_then(|v| v.as_str())
            .map(str::to_string);
        let token_text = |id: Option<u32>| id.and_then(|i| tok.tokenizer.id_to_token(i));
        let bos_token = token_text(tok.bos_token_id);
        let eos_token = token_text(tok.eos_token_id);
        let chat_template = template_text
            .map(|t| {
                ChatTemplate::new(
                    &t,
                    bos_token.clone(),
                    eos_token.clone(),
                    format!("{} (tokenizer.chat_template)", path.display()),
                )
            })
            .transpose()?;
        let mut eos = tok.eos_token_id.into_iter().collect::<Vec<_>>();
        eos.extend(tok.eot_token_id);
        // Chat models end a turn with a token the metadata may not name (`<|im_end|>`, `<|eot_id|>`).
        for t in ["<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"] {
            if let Some(id) = tok.tokenizer.token_to_id(t) {
                eos.push(id);
            }
        }
        eos.sort();
        eos.dedup();
        Ok(Self {
            model,
            config,
            tokenizer: tok.tokenizer,
            chat_template,
            eos_token_ids: eos,
            add_bos: tok.add_bos,
            bos_token,
            source: path.to_path_buf(),
        })
    }

    /// Load a Hugging Face folder: `config.json`, safetensors, `tokenizer.json`,
    /// `tokenizer_config.json` (chat template, bos/eos), `generation_config.json` (eos ids).
    pub fn load_hf_dir(dir: &Path, device: &Device) -> Result<Self, DecoderError> {
        Self::load_hf_dir_with(dir, device, QuantizeBase::None)
    }

    fn load_hf_dir_with(dir: &Path, device: &Device, quantize: QuantizeBase) -> Result<Self, DecoderError> {
        let (model, config) = Decoder::from_hf_dir_with(dir, device, quantize)?;
        let tok_path = dir.join("tokenizer.json");
        let tokenizer =
            tokenizers::Tokenizer::from_file(&tok_path).map_err(|e| DecoderError::Tokenizer {
                path: tok_path.clone(),
                reason: e.to_string(),
            })?;
        let read_json = |name: &str| -> Result<Option<serde_json::Value>, DecoderError> {
            let p = dir.join(name);
            if !p.exists() {
                return Ok(None);
            }
            let text = std::fs::read_to_string(&p).map_err(|source| DecoderError::Io {
                path: p.clone(),
                source,
            })?;
            serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| DecoderError::Config {
                    path: p.clone(),
                    field: "(file)".into(),
                    reason: format!("line {}: {e}", e.line()),
                })
        };
        let tc = read_json("tokenizer_config.json")?.unwrap_or_default();
        // Special tokens are strings or {"content": ...} objects.
        let token_str = |v: &serde_json::Value| {
            v.as_str()
                .map(str::to_string)
                .or_else(|| v["content"].as_str().map(str::to_string))
        };
        let bos_token = token_str(&tc["bos_token"]);
        let eos_token = token_str(&tc["eos_token"]);
        let mut template_text = tc["chat_template"].as_str().map(str::to_string);
        if template_text.is_none() {
            let jinja = dir.join("chat_template.jinja");
            if jinja.exists() {
                template_text =
                    Some(
                        std::fs::read_to_string(&jinja).map_err(|source| DecoderError::Io {
                            path: jinja.clone(),
                            source,
                        })?,
                    );
            }
        }
        let chat_template = template_text
            .map(|t| {
                ChatTemplate::new(
                    &t,
                    bos_token.clone(),
                    eos_token.clone(),
                    format!("{}", dir.join("tokenizer_config.json").display()),
                )
            })
            .transpose()?;
        let mut eos: Vec<u32> = eos_token
            .as_deref()
            .and_then(|t| tokenizer.token_to_id(t))
            .into_iter()
            .collect();
        if let Some(gc) = read_json("generation_config.json")? {
            match &gc["eos_token_id"] {
                serde_json::Value::Number(n) => eos.extend(n.as_u64().map(|v| v as u32)),
                serde_json::Value::Array(a) => {
                    eos.extend(a.iter().filter_map(|v| v.as_u64().map(|v| v as u32)))
                }
                _ => {}
            }
        }
        eos.sort();
        eos.dedup();
        let add_bos = tc["add_bos_token"].as_bool().unwrap_or(false);
        Ok(Self {
            model,
            config,
            tokenizer,
            chat_template,
            eos_token_ids: eos,
            add_bos,
            bos_token,
            source: dir.to_path_buf(),
        })
    }

    /// Token ids of `text`; special tokens written in the text (`<|im_start|>`) are recognised.
    /// `add_special` adds the BOS token when the model wants one.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, DecoderError> {
        let enc =
            self.tokenizer
                .encode(text, add_special)
                .map_err(|e| DecoderError::Tokenizer {
                    path: self.source.clone(),
                    reason: e.to_string(),
                })?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String, DecoderError> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| DecoderError::Tokenizer {
                path: self.source.clone(),
                reason: e.to_string(),
            })
    }

    /// Generate up to `max_tokens` new tokens after `prompt`, calling `on_token` for each.
    /// Stops at an end-of-sequence or stop token (not included in the result).
    pub fn generate(
        &self,
        prompt: &[u32],
        opts: &GenerateOptions,
        mut on_token: impl FnMut(u32),
    ) -> Vec<u32> {
        let device = self.model.embed_tokens.val().device();
        let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
        let mut cache = KvCache::new(self.model.num_layers());
        let mut out = Vec::new();
        let mut input: Vec<u32> = prompt.to_vec();
        while out.len() < opts.max_tokens && !input.is_empty() {
            let ids = Tensor::<2, Int>::from_data(
                TensorData::new(
                    input.iter().map(|&i| i as i64).collect::<Vec<_>>(),
                    [1, input.len()],
                ),
                &device,
            );
            let logits = self.model.forward_last(ids, Some(&mut cache));
            let row: Vec<f32> = logits
                .into_data()
                .try_into_vec_as::<f32>()
                .expect("f32 logits");
            let next = sample(&row, opts.temperature, opts.top_p, &mut rng);
            if self.eos_token_ids.contains(&next) || opts.stop_tokens.contains(&next) {
                break;
            }
            on_token(next);
            out.push(next);
            input = vec![next];
        }
        out
    }
}

//! LLM yes/no rerankers in the style of Qwen3-Reranker (QMD's second model): a decoder reads a
//! prompt holding the query and a document, and the relevance score is
//! `P(yes) = softmax([logit_yes, logit_no])[0]` at the prompt's last position.
//!
//! The prompt is the GGUF's `tokenizer.chat_template.rerank` when the file carries one (llama.cpp's
//! convention: plain text with `{query}` and `{document}` placeholders, not Jinja), else
//! [`QWEN3_RERANK_TEMPLATE`]. It is tokenized the way QMD sends it through node-llama-cpp
//! (`_getEvaluationInput`): the template pieces with special tokens recognised, the query and the
//! document as plain text, each piece on its own, then concatenated (BOS first when the model wants
//! one). Only the two head rows of `yes` and `no` are multiplied, and only at the last position of
//! each prompt: a full-vocabulary projection at every position would cost vocab/2 times more.
//!
//! A GGUF written for llama.cpp's rank pooling (`tunelab export gguf --reranker`, or llama.cpp's
//! converter on Qwen3-Reranker) carries the two head rows as `cls.output.weight`; scores are read
//! from it then, as llama.cpp does (such a file may have dropped an untied output head).
//!
//! Batches are right-padded: with a causal mask no real token attends to the padding after it,
//! and each row's score is read at its own last real position, so a batch scores exactly as its
//! rows one by one.
//!
//! ```no_run
//! use burn::tensor::Device;
//! use tunelab::model::reranker::Reranker;
//! let r = Reranker::load("models/SmolLM2-135M-Instruct.Q4_1.gguf".as_ref(), None, &Device::flex())?;
//! let scores = r.score("when is the drawing", &["The drawing happens at the autumn gathering.", "Pizza oven"])?;
//! assert_eq!(scores.len(), 2);
//! # Ok::<(), anyhow::Error>(())
//! ```

use std::path::Path;

use anyhow::{Context, bail};
use burn::tensor::activation::sigmoid;
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::io::gguf::GgufFile;
use crate::model::decoder::{CausalLm, Decoder};

/// Qwen3-Reranker's prompt as llama.cpp's converter writes it to `tokenizer.chat_template.rerank`
/// (and as QMD v2.8.3 sends it): the default instruction, the query, the document, then an empty
/// think block so the next token is the answer.
pub const QWEN3_RERANK_TEMPLATE: &str = "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n<Instruct>: Given a web search query, retrieve relevant passages that answer the query\n<Query>: {query}\n<Document>: {document}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n";

/// The GGUF metadata key holding the rerank prompt (llama.cpp's named chat template `rerank`).
pub const RERANK_TEMPLATE_KEY: &str = "tokenizer.chat_template.rerank";

/// A rerank prompt split at its placeholders: `prefix {query} middle {document} suffix`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RerankTemplate {
    pub prefix: String,
    pub middle: String,
    pub suffix: String,
}

impl RerankTemplate {
    /// Split a template with exactly one `{query}` followed by exactly one `{document}`.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let count = |p: &str| text.matches(p).count();
        if count("{query}") != 1 || count("{document}") != 1 {
            bail!("a rerank template needs exactly one {{query}} and one {{document}} placeholder");
        }
        let (prefix, rest) = text.split_once("{query}").expect("counted");
        let Some((middle, suffix)) = rest.split_once("{document}") else {
            bail!("a rerank template must put {{query}} before {{document}}");
        };
        Ok(Self {
            prefix: prefix.into(),
            middle: middle.into(),
            suffix: suffix.into(),
        })
    }

    /// The template text again (placeholders restored), as written to GGUF metadata.
    pub fn text(&self) -> String {
        format!(
            "{}{{query}}{}{{document}}{}",
            self.prefix, self.middle, self.suffix
        )
    }

    /// The prompt as one string (for display; scoring tokenizes the pieces separately).
    pub fn render(&self, query: &str, document: &str) -> String {
        format!(
            "{}{query}{}{document}{}",
            self.prefix, self.middle, self.suffix
        )
    }
}

impl Default for RerankTemplate {
    fn default() -> Self {
        Self::parse(QWEN3_RERANK_TEMPLATE).expect("the built-in template parses")
    }
}

/// A decoder used as a yes/no reranker. Implements [`Scorer`], the interface the search pipeline
/// calls.
pub struct Reranker {
    pub lm: CausalLm,
    pub template: RerankTemplate,
    /// Token ids of `yes` and `no` (the rows of the output head that are read).
    pub yes_id: u32,
    pub no_id: u32,
    /// Longest prompt in tokens; longer documents lose their tail (the template's end is kept).
    pub max_length: usize,
    /// Prompts per forward pass.
    pub batch_size: usize,
    /// llama.cpp's rank head when the GGUF carries one (`cls.output.weight`: the `yes` and `no`
    /// rows of the output head, as [`crate::export::gguf_decoder`] and llama.cpp's converter
    /// write it), `[hidden, 2]`. Scoring reads it instead of the output head, which such a file
    /// may lack (an untied head is dropped on export).
    pub cls_out: Option<Tensor<2>>,
}

/// The search pipeline's reranker interface, re-exported beside the model that implements it.
pub use crate::eval::search::qmd::Scorer;

impl Scorer for Reranker {
    fn score(&self, query: &str, documents: &[&str]) -> anyhow::Result<Vec<f32>> {
        Reranker::score(self, query, documents)
    }
}

impl Reranker {
    /// [`Reranker::load`] for scoring only: an adapter is folded into the weights once (forward
    /// passes then skip the LoRA branch).
    pub fn load_merged(
        model: &Path,
        adapter: Option<&Path>,
        device: &Device,
    ) -> anyhow::Result<Self> {
        let mut r = Self::load(model, adapter, device)?;
        r.lm.model = r.lm.model.merged();
        Ok(r)
    }

    /// Load a GGUF file or Hugging Face folder, optionally with a LoRA adapter folder (PEFT or
    /// MLX-LM). The prompt is the GGUF's `tokenizer.chat_template.rerank` when present, and the
    /// scores come from its rank head (`cls.output.weight`) when it has one (see [`rank_head`]).
    pub fn load(model: &Path, adapter: Option<&Path>, device: &Device) -> anyhow::Result<Self> {
        let mut lm = CausalLm::load(model, device)
            .with_context(|| format!("loading {}", model.display()))?;
        if let Some(dir) = adapter {
            let weights = crate::export::read_adapter_dir(dir)?;
            lm.model = lm.model.apply_adapter(&weights).with_context(|| {
                format!(
                    "applying the adapter in {} to {}",
                    dir.display(),
                    model.display()
                )
            })?;
        }
        let (template, cls_out) = if model.is_file() {
            let g =
                GgufFile::open(model).with_context(|| format!("reading {}", model.display()))?;
            let t = g
                .get(RERANK_TEMPLATE_KEY)
                .and_then(|v| v.as_str())
                .map(str::to_string);
            (t, rank_head(&g, device)?)
        } else {
            (None, None)
        };
        let template = match template {
            Some(t) => RerankTemplate::parse(&t)
                .with_context(|| format!("{}: {RERANK_TEMPLATE_KEY}", model.display()))?,
            None => RerankTemplate::default(),
        };
        let mut r = Self::new(lm, template)?;
        r.cls_out = cls_out;
        Ok(r)
    }

    /// Wrap a loaded model; fails when the vocabulary has no `yes` or `no` token.
    pub fn new(lm: CausalLm, template: RerankTemplate) -> anyhow::Result<Self> {
        let (yes_id, no_id) = yes_no_ids(&lm)?;
        let max_length = lm.config.max_position_embeddings.min(2048);
        Ok(Self {
            lm,
            template,
            yes_id,
            no_id,
            max_length,
            batch_size: 8,
            cls_out: None,
        })
    }

    /// The prompt's token ids as QMD sends them (see [`encode_pair`]).
    pub fn encode_pair(&self, query: &str, document: &str) -> anyhow::Result<Vec<u32>> {
        encode_pair(&self.lm, &self.template, self.max_length, query, document)
    }

    /// P(yes) for each document, in order, computed in batches of [`Reranker::batch_size`]
    /// (rows sorted by length first, so a batch holds little padding).
    pub fn score(&self, query: &str, documents: &[&str]) -> anyhow::Result<Vec<f32>> {
        let prompts = documents
            .iter()
            .map(|d| self.encode_pair(query, d))
            .collect::<anyhow::Result<Vec<_>>>()?;
        self.score_tokens(&prompts)
    }

    /// P(yes) for prompts already tokenized (see [`Reranker::encode_pair`]).
    pub fn score_tokens(&self, prompts: &[Vec<u32>]) -> anyhow::Result<Vec<f32>> {
        Ok(self
            .logit_margins(prompts)?
            .into_iter()
            .map(sigmoid_f32)
            .collect())
    }

    /// `logit_yes − logit_no` for each prompt (P(yes) is its logistic sigmoid).
    pub fn logit_margins(&self, prompts: &[Vec<u32>]) -> anyhow::Result<Vec<f32>> {
        if let Some(w) = &self.cls_out {
            let model = &self.lm.model;
            return batched_margins(prompts, self.batch_size, &w.device(), |ids, last| {
                let hidden = model.forward_hidden(ids, None, None);
                let [b, t, d] = hidden.dims();
                hidden.reshape([b * t, d]).select(0, last).matmul(w.clone())
            });
        }
        logit_margins(
            &self.lm.model,
            prompts,
            self.batch_size,
            self.yes_id,
            self.no_id,
        )
    }
}

/// The logistic sigmoid: P(yes) from `logit_yes − logit_no`.
pub fn sigmoid_f32(m: f32) -> f32 {
    1.0 / (1.0 + (-m).exp())
}

/// Token ids of `yes` and `no` in `lm`'s vocabulary; an error names the model when one is missing.
pub fn yes_no_ids(lm: &CausalLm) -> anyhow::Result<(u32, u32)> {
    let id = |t: &str| {
        lm.tokenizer.token_to_id(t).with_context(|| {
            format!(
                "{}: the vocabulary has no token '{t}' (a yes/no reranker reads its logit)",
                lm.source.display()
            )
        })
    };
    Ok((id("yes")?, id("no")?))
}

/// The prompt's token ids as QMD sends them: template pieces, query and document tokenized
/// each on its own, BOS first when the model adds one. A document too long for `max_length`
/// loses its tail; the template's end is always kept.
pub fn encode_pair(
    lm: &CausalLm,
    template: &RerankTemplate,
    max_length: usize,
    query: &str,
    document: &str,
) -> anyhow::Result<Vec<u32>> {
    let piece = |text: &str| -> anyhow::Result<Vec<u32>> { Ok(lm.encode(text, false)?) };
    let mut head = Vec::new();
    if lm.add_bos
        && let Some(bos) = lm
            .bos_token
            .as_deref()
            .and_then(|t| lm.tokenizer.token_to_id(t))
    {
        head.push(bos);
    }
    head.extend(piece(&template.prefix)?);
    head.extend(piece(query)?);
    head.extend(piece(&template.middle)?);
    let mut doc = piece(document)?;
    let tail = piece(&template.suffix)?;
    let room = max_length.saturating_sub(head.len() + tail.len());
    if room == 0 {
        bail!(
            "the rerank prompt for query {query:?} needs more than max_length = {max_length} tokens before any document text"
        );
    }
    doc.truncate(room);
    head.extend(doc);
    head.extend(tail);
    Ok(head)
}

/// `logit_yes − logit_no` of each prompt under `model`, in batches of `batch_size` rows of
/// similar length (sorted first, order restored). Forward only.
pub fn logit_margins(
    model: &Decoder,
    prompts: &[Vec<u32>],
    batch_size: usize,
    yes_id: u32,
    no_id: u32,
) -> anyhow::Result<Vec<f32>> {
    let device = model.embed_tokens.val().device();
    batched_margins(prompts, batch_size, &device, |ids, last| {
        yes_no_logits(model, ids, last, yes_id, no_id)
    })
}

/// llama.cpp's rank head of a GGUF reranker (`cls.output.weight`, `[2, hidden]`, rows labelled by
/// `{arch}.classifier.output_labels`) as `[hidden, 2]` with `yes` first; `None` when the file
/// has none. A head whose labels are not `yes`, `no` is refused: its scores would mean something
/// else.
pub fn rank_head(g: &GgufFile, device: &Device) -> anyhow::Result<Option<Tensor<2>>> {
    if g.tensor_info("cls.output.weight").is_none() {
        return Ok(None);
    }
    let arch = g.architecture()?;
    let labels = g
        .get(&format!("{arch}.classifier.output_labels"))
        .and_then(|v| v.as_string_array());
    if let Some(l) = &labels
        && l != &["yes", "no"]
    {
        bail!(
            "{}: cls.output.weight is labelled {l:?}; a yes/no reranker needs [\"yes\", \"no\"]",
            g.path().display()
        );
    }
    let (shape, values) = g.tensor_f32("cls.output.weight")?;
    if shape.len() != 2 || shape[0] != 2 {
        bail!(
            "{}: cls.output.weight has shape {shape:?}; a yes/no head is [2, hidden]",
            g.path().display()
        );
    }
    let w = Tensor::<2>::from_data(TensorData::new(values, [2, shape[1]]), device);
    Ok(Some(w.transpose()))
}

/// Run `head` (`[batch, 2]` yes/no logits of right-padded ids at their last positions) over
/// `prompts` in batches of similar length; `logit_yes − logit_no` in the prompts' order.
fn batched_margins(
    prompts: &[Vec<u32>],
    batch_size: usize,
    device: &Device,
    head: impl Fn(Tensor<2, Int>, Tensor<1, Int>) -> Tensor<2>,
) -> anyhow::Result<Vec<f32>> {
    let device = device.clone();
    let mut order: Vec<usize> = (0..prompts.len()).collect();
    order.sort_by_key(|&i| prompts[i].len());
    let mut out = vec![0f32; prompts.len()];
    for chunk in order.chunks(batch_size.max(1)) {
        let rows: Vec<&[u32]> = chunk.iter().map(|&i| prompts[i].as_slice()).collect();
        let (ids, last) = right_padded(&rows, &device)?;
        let logits = head(ids, last);
        let m: Vec<f32> = logits
            .into_data()
            .try_into_vec_as::<f32>()
            .expect("f32 logits");
        for (k, &i) in chunk.iter().enumerate() {
            out[i] = m[2 * k] - m[2 * k + 1];
        }
    }
    Ok(out)
}

/// Right-padded `[batch, width]` ids (width: the longest row, rounded up on GPU back-ends by
/// [`crate::device::padded_width`]) and the index of each row's last real token in the
/// flattened `[batch · width]` positions. Padding repeats the row's last token (any id would
/// do: causal attention never lets a real position see it).
pub fn right_padded(
    rows: &[&[u32]],
    device: &Device,
) -> anyhow::Result<(Tensor<2, Int>, Tensor<1, Int>)> {
    let longest = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    // GPU back-ends compile per shape: a few padded widths there, the longest row on the CPU.
    right_padded_to(rows, crate::device::padded_width(longest, device), device)
}

/// [`right_padded`] to a given `width` (at least the longest row).
pub fn right_padded_to(
    rows: &[&[u32]],
    width: usize,
    device: &Device,
) -> anyhow::Result<(Tensor<2, Int>, Tensor<1, Int>)> {
    let t = width;
    if let Some(r) = rows.iter().find(|r| r.len() > t) {
        bail!("a rerank prompt of {} tokens does not fit the padded width {t}", r.len());
    }
    if rows.iter().any(|r| r.is_empty()) {
        bail!("an empty rerank prompt cannot be scored");
    }
    let mut ids = Vec::with_capacity(rows.len() * t);
    let mut last = Vec::with_capacity(rows.len());
    for (b, r) in rows.iter().enumerate() {
        ids.extend(r.iter().map(|&i| i as i64));
        ids.extend(std::iter::repeat_n(
            *r.last().expect("non-empty") as i64,
            t - r.len(),
        ));
        last.push((b * t + r.len() - 1) as i64);
    }
    let n = rows.len();
    Ok((
        Tensor::from_data(TensorData::new(ids, [n, t]), device),
        Tensor::from_data(TensorData::new(last, [n]), device),
    ))
}

/// `[batch, 2]` logits of `yes` and `no` at the positions `last` (flattened `[batch · seq]`
/// indices) of right-padded `ids`: only those two rows of the output head, only there. Works on
/// an autodiff device (training).
pub fn yes_no_logits(
    model: &Decoder,
    ids: Tensor<2, Int>,
    last: Tensor<1, Int>,
    yes_id: u32,
    no_id: u32,
) -> Tensor<2> {
    let hidden = model.forward_hidden(ids, None, None);
    yes_no_head(model, hidden, last, yes_id, no_id)
}

/// [`yes_no_logits`] from the final-norm hidden states `[batch, seq, hidden]`: the `yes` and
/// `no` rows of the output head at the positions `last`, `[batch, 2]`. Training with
/// `--grad-checkpoint` runs it as the head segment after the recomputed blocks.
pub fn yes_no_head(
    model: &Decoder,
    hidden: Tensor<3>,
    last: Tensor<1, Int>,
    yes_id: u32,
    no_id: u32,
) -> Tensor<2> {
    let device = hidden.device();
    let [b, t, d] = hidden.dims();
    let h = hidden.reshape([b * t, d]).select(0, last); // [batch, hidden]
    let rows = Tensor::<1, Int>::from_data(
        TensorData::new(vec![yes_id as i64, no_id as i64], [2]),
        &device,
    );
    let head = match &model.lm_head {
        // `[hidden, vocab]` → the two columns, `[hidden, 2]`.
        Some(p) => {
            let w = p.weight.val().select(1, rows.clone());
            let out = h.matmul(w);
            match &p.bias {
                Some(bias) => out + bias.val().select(0, rows).unsqueeze::<2>(),
                None => out,
            }
        }
        // Tied: the embedding rows, `[2, hidden]`.
        None => h.matmul(model.embed_tokens.val().select(0, rows).transpose()),
    };
    // f32 whatever the activations' dtype (`--dtype f16`): the margins and losses are f32.
    head.cast(burn::tensor::FloatDType::F32)
}

/// P(yes) from `[batch, 2]` yes/no logits: `softmax(...)[:, 0] = sigmoid(yes − no)`, `[batch]`.
pub fn p_yes(logits: Tensor<2>) -> Tensor<1> {
    sigmoid(yes_no_margin(logits))
}

/// `logit_yes − logit_no` from `[batch, 2]` yes/no logits, `[batch]`: what P(yes) is the
/// sigmoid of, and what `train rerank`'s losses read.
pub fn yes_no_margin(logits: Tensor<2>) -> Tensor<1> {
    let [b, _] = logits.dims();
    (logits.clone().narrow(1, 0, 1) - logits.narrow(1, 1, 1)).reshape([b])
}

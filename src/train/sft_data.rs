//! SFT examples: governed records rendered to token ids, then grouped into padded batches, as
//! MLX-LM's `tuner/datasets.py` and `iterate_batches` do.
//!
//! * `{"messages"}`: the chat template renders the conversation; with `mask_prompt` the loss
//!   starts after the template's rendering of all messages but the last (with the generation
//!   prompt when the last is the assistant's), exactly MLX-LM's `offset`.
//! * `{"prompt", "completion"}`: a user turn and an assistant turn, then as chat.
//! * `{"text"}`: tokenized with the tokenizer's specials, EOS appended; no prompt to mask
//!   (MLX-LM refuses `mask_prompt` here, and so do we).
//! * QMD query expansion `{"query", "output"}`: rendered as QMD's `finetune/dataset/prepare_data.py`
//!   does: user `/no_think Expand this search query: {query}`, assistant lines `kind: text`
//!   (hyde first, then lex, then vec), and the template's empty `<think>\n\n</think>\n\n` removed.
//!
//! Batches: examples sorted by length, cut into `batch_size` groups (an incomplete last group is
//! dropped, as MLX-LM does), visited in a seeded random order per epoch. Sequences are
//! right-padded to the longest in the batch (capped at `max_seq_length`), not to MLX-LM's
//! multiple of 32: on a CPU every padded position costs time.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::data::chat_template::{ChatMessage, ChatTemplate, TemplateError};
use crate::data::formats::{ChatRecord, CompletionRecord, ExpansionKind, QueryExpansion, TextRecord};
use crate::data::governance::{Governed, GovernedDataset};
use crate::model::decoder::CausalLm;

/// What a record becomes before tokenization.
#[derive(Clone, Debug, PartialEq)]
pub enum Sample {
    /// A conversation for the chat template. `strip_empty_think` removes the empty thinking block
    /// Qwen3's template writes (QMD's training data has none).
    Chat { messages: Vec<ChatMessage>, strip_empty_think: bool },
    /// Plain text.
    Text(String),
}

/// A governed record type the SFT trainer learns from.
pub trait SftRecord: Governed + Clone {
    fn sample(&self) -> Sample;
}

impl SftRecord for ChatRecord {
    fn sample(&self) -> Sample {
        let messages = self.messages.iter().map(|m| ChatMessage::new(m.role.as_str(), m.content.clone())).collect();
        Sample::Chat { messages, strip_empty_think: false }
    }
}

impl SftRecord for CompletionRecord {
    fn sample(&self) -> Sample {
        let messages = vec![ChatMessage::new("user", self.prompt.clone()), ChatMessage::new("assistant", self.completion.clone())];
        Sample::Chat { messages, strip_empty_think: false }
    }
}

impl SftRecord for TextRecord {
    fn sample(&self) -> Sample {
        Sample::Text(self.text.clone())
    }
}

/// QMD's user prompt for a query.
pub fn qmd_prompt(query: &str) -> String {
    format!("/no_think Expand this search query: {query}")
}

/// QMD's assistant text for expansions: `kind: text` lines, hyde first, then lex, then vec
/// (order kept within a kind), texts trimmed, empty ones left out.
pub fn qmd_output_text(output: &[crate::data::formats::Expansion]) -> String {
    let mut lines = Vec::new();
    for kind in [ExpansionKind::Hyde, ExpansionKind::Lex, ExpansionKind::Vec] {
        for e in output.iter().filter(|e| e.kind == kind) {
            let t = e.text.trim();
            if !t.is_empty() {
                lines.push(format!("{}: {t}", kind.as_str()));
            }
        }
    }
    lines.join("\n")
}

impl SftRecord for QueryExpansion {
    fn sample(&self) -> Sample {
        let messages = vec![ChatMessage::new("user", qmd_prompt(&self.query)), ChatMessage::new("assistant", qmd_output_text(&self.output))];
        Sample::Chat { messages, strip_empty_think: true }
    }
}

/// One tokenized example: the loss covers target positions `offset..tokens.len()` (position
/// 0 is never a target).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    pub tokens: Vec<u32>,
    /// Tokens of the prompt (0 without `mask_prompt`).
    pub offset: usize,
}

/// A record could not become an example; names the split and the record.
#[derive(Debug, thiserror::Error)]
pub enum ExampleError {
    #[error("{part}: record {record}: the model has no chat template, so chat, completions and query-expansion records cannot be rendered (use {{\"text\"}} records)")]
    NoTemplate { part: String, record: String },
    #[error("{part}: record {record}: {reason}")]
    Record { part: String, record: String, reason: String },
    #[error("{part}: mask_prompt needs a prompt, and {{\"text\"}} records have none (as in mlx_lm.lora)")]
    MaskText { part: String },
}

const EMPTY_THINK: &str = "<think>\n\n</think>\n\n";

/// Render `messages` through the template as the trainer does (`strip_empty_think`: without
/// Qwen3's empty thinking block).
fn render_chat(tpl: &ChatTemplate, messages: &[ChatMessage], gen_prompt: bool, strip_empty_think: bool) -> Result<String, TemplateError> {
    let text = tpl.render(messages, gen_prompt)?;
    Ok(if strip_empty_think { text.replace(EMPTY_THINK, "") } else { text })
}

/// The prompt of a conversation: every message but the last, rendered with the generation prompt
/// when the last is the assistant's. It is what `mask_prompt` keeps out of the loss, and so what
/// a model trained here is prompted with when it generates (`tunelab eval expansions`).
pub fn prompt_text(tpl: &ChatTemplate, messages: &[ChatMessage], strip_empty_think: bool) -> Result<String, TemplateError> {
    let gen_prompt = messages.last().is_some_and(|m| m.role == "assistant");
    render_chat(tpl, &messages[..messages.len().saturating_sub(1)], gen_prompt, strip_empty_think)
}

/// The prompt the SFT trainer's QMD query-expansion examples start with for `query`.
pub fn qmd_generation_prompt(tpl: &ChatTemplate, query: &str) -> Result<String, TemplateError> {
    let Sample::Chat { messages, strip_empty_think } = QueryExpansion { query: query.to_string(), ..QueryExpansion::default() }.sample() else {
        unreachable!("query-expansion records are chats")
    };
    prompt_text(tpl, &messages, strip_empty_think)
}

/// Render and tokenize every record of `data` (`part` names the split in errors).
pub fn tokenize<T: SftRecord>(lm: &CausalLm, data: &GovernedDataset<T>, mask_prompt: bool, part: &str) -> Result<Vec<Example>, ExampleError> {
    let eos = lm
        .chat_template
        .as_ref()
        .and_then(|t| t.eos_token.as_deref())
        .and_then(|t| lm.tokenizer.token_to_id(t))
        .or_else(|| lm.eos_token_ids.first().copied());
    let mut out = Vec::with_capacity(data.len());
    for (i, rec) in data.iter().enumerate() {
        let record = rec.record_id().map_or_else(|| format!("#{}", i + 1), str::to_string);
        let fail = |reason: String| ExampleError::Record { part: part.to_string(), record: record.clone(), reason };
        let encode = |text: &str, special: bool| lm.encode(text, special).map_err(|e| fail(e.to_string()));
        let example = match rec.sample() {
            Sample::Text(text) => {
                if mask_prompt {
                    return Err(ExampleError::MaskText { part: part.to_string() });
                }
                let mut tokens = encode(&text, true)?;
                if let Some(eos) = eos.filter(|e| tokens.last() != Some(e)) {
                    tokens.push(eos);
                }
                Example { tokens, offset: 0 }
            }
            Sample::Chat { messages, strip_empty_think } => {
                let Some(tpl) = &lm.chat_template else {
                    return Err(ExampleError::NoTemplate { part: part.to_string(), record });
                };
                // The template writes BOS itself; transformers tokenizes its output without specials.
                let full = render_chat(tpl, &messages, false, strip_empty_think).map_err(|e| fail(e.to_string()))?;
                let tokens = encode(&full, false)?;
                let offset = if mask_prompt && messages.len() > 1 {
                    encode(&prompt_text(tpl, &messages, strip_empty_think).map_err(|e| fail(e.to_string()))?, false)?.len()
                } else {
                    0
                };
                Example { tokens, offset }
            }
        };
        if example.tokens.len() < 2 {
            return Err(fail(format!("{} token(s): nothing to predict", example.tokens.len())));
        }
        out.push(example);
    }
    Ok(out)
}

/// Example indices grouped by length: sorted (ties by position), cut into `batch_size` groups;
/// an incomplete last group is dropped.
pub fn length_batches(examples: &[Example], batch_size: usize) -> Vec<Vec<usize>> {
    let mut idx: Vec<usize> = (0..examples.len()).collect();
    idx.sort_by_key(|&i| (examples[i].tokens.len(), i));
    idx.chunks_exact(batch_size.max(1)).map(<[usize]>::to_vec).collect()
}

/// The order in which epoch `epoch` visits `n` batches: a permutation seeded by `seed` and the
/// epoch, so iteration `k` of a run is known without replaying the ones before (resume).
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    order.shuffle(&mut rng);
    order
}

/// A padded batch on the host: `inputs` and `targets` `[rows, cols]`, `mask` 1 where a target
/// counts in the loss.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub rows: usize,
    pub cols: usize,
    pub inputs: Vec<i64>,
    pub targets: Vec<i64>,
    pub mask: Vec<f32>,
    /// Targets in the loss (the mask's sum).
    pub ntoks: usize,
    /// Tokens of the rows without padding (what a forward pass reads).
    pub seq_tokens: usize,
}

/// Pad the examples `idx` into a batch: inputs are tokens `0..L-1`, targets `1..L`, with `L`
/// the longest length in the batch after truncation to `max_seq_length`. A target at position
/// `p` counts when `p >= offset` and `p < length`. Padding (id 0) sits after each row's tokens,
/// where the causal mask already hides it from the real positions.
pub fn make_batch(examples: &[Example], idx: &[usize], max_seq_length: usize) -> Batch {
    let lens: Vec<usize> = idx.iter().map(|&i| examples[i].tokens.len().min(max_seq_length)).collect();
    let cols = lens.iter().copied().max().unwrap_or(2).max(2) - 1;
    let rows = idx.len();
    let (mut inputs, mut targets, mut mask) = (vec![0i64; rows * cols], vec![0i64; rows * cols], vec![0f32; rows * cols]);
    let mut ntoks = 0;
    for (r, (&i, &len)) in idx.iter().zip(&lens).enumerate() {
        let ex = &examples[i];
        for j in 0..cols {
            if j < len {
                inputs[r * cols + j] = ex.tokens[j] as i64;
            }
            let p = j + 1;
            if p < len {
                targets[r * cols + j] = ex.tokens[p] as i64;
                if p >= ex.offset {
                    mask[r * cols + j] = 1.0;
                    ntoks += 1;
                }
            }
        }
    }
    Batch { rows, cols, inputs, targets, mask, ntoks, seq_tokens: lens.iter().sum() }
}

/// The batch `mlx_lm.tuner.trainer.evaluate` scores (MLX-LM 0.32's `iterate_batches` +
/// `default_loss`): rows padded with id 0 to `W = min(1 + 32·⌈L_max/32⌉, max_seq_length)`
/// columns, and a target at step `p` (the index of the predicted token) counts when
/// `offset ≤ p ≤ length` and `p < W`. `p = length` predicts the padding id 0 after the row's
/// last token: MLX-LM counts that one extra target per row that has padding after it (the
/// `steps <= lengths` in `default_loss`; ml-explore/mlx-lm PR #1697 proposed `<`), so its test
/// loss and token count differ from [`make_batch`]'s. Used for `--test`, to report what
/// `mlx_lm.lora --test` reports.
pub fn make_batch_mlx_eval(examples: &[Example], idx: &[usize], max_seq_length: usize) -> Batch {
    let raw_max = idx.iter().map(|&i| examples[i].tokens.len()).max().unwrap_or(0);
    let width = (1 + 32 * raw_max.div_ceil(32)).min(max_seq_length);
    let lens: Vec<usize> = idx.iter().map(|&i| examples[i].tokens.len().min(max_seq_length)).collect();
    // The last step any row counts is min(length, width - 1); inputs reach one position before it.
    let cols = lens.iter().map(|&l| l.min(width.saturating_sub(1))).max().unwrap_or(1).max(1);
    let rows = idx.len();
    let (mut inputs, mut targets, mut mask) = (vec![0i64; rows * cols], vec![0i64; rows * cols], vec![0f32; rows * cols]);
    let mut ntoks = 0;
    for (r, (&i, &len)) in idx.iter().zip(&lens).enumerate() {
        let ex = &examples[i];
        for j in 0..cols {
            if j < len {
                inputs[r * cols + j] = ex.tokens[j] as i64;
            }
            let p = j + 1;
            if p <= len && p < width && p >= ex.offset {
                targets[r * cols + j] = if p < len { ex.tokens[p] as i64 } else { 0 };
                mask[r * cols + j] = 1.0;
                ntoks += 1;
            }
        }
    }
    Batch { rows, cols, inputs, targets, mask, ntoks, seq_tokens: lens.iter().sum() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::formats::Expansion;

    /// MLX-LM's evaluation batch, written out for two rows (lengths 5 and 3, offsets 0 and 2):
    /// width 1 + 32 = 33, targets at steps 1..=5 (the 5th is the padding id 0) and 2..=3.
    /// Truncated to 4 tokens (max_seq_length 4 = width), the long row has no padding target.
    #[test]
    fn mlx_eval_batch_counts_the_trailing_pad_target_as_mlx_lm_does() {
        let ex = vec![Example { tokens: vec![1, 10, 11, 12, 13], offset: 0 }, Example { tokens: vec![1, 20, 21], offset: 2 }];
        let b = make_batch_mlx_eval(&ex, &[0, 1], 2048);
        assert_eq!((b.rows, b.cols, b.ntoks), (2, 5, 5 + 2));
        assert_eq!(&b.targets[..5], &[10, 11, 12, 13, 0]);
        assert_eq!(&b.mask[5..], &[0.0, 1.0, 1.0, 0.0, 0.0]);
        assert_eq!(&b.targets[5..8], &[0, 21, 0]);
        assert_eq!(make_batch(&ex, &[0, 1], 2048).ntoks, 4 + 1, "tunelab's own count: real targets only");
        let t = make_batch_mlx_eval(&ex, &[0, 1], 4);
        // Width 4: steps 1..=3. Row 0 (truncated to 4 tokens): 10, 11, 12. Row 1: 21 and the pad.
        assert_eq!((t.cols, t.ntoks), (3, 3 + 2));
        assert_eq!(&t.targets[..3], &[10, 11, 12]);
    }

    #[test]
    fn qmd_records_render_as_qmd_prepares_them() {
        let q = QueryExpansion {
            query: "tide times".into(),
            output: vec![
                Expansion { kind: ExpansionKind::Lex, text: "tide table ".into() },
                Expansion { kind: ExpansionKind::Vec, text: "when is high tide".into() },
                Expansion { kind: ExpansionKind::Hyde, text: "Tides rise twice a day.".into() },
                Expansion { kind: ExpansionKind::Lex, text: "  ".into() },
            ],
            ..QueryExpansion::default()
        };
        let Sample::Chat { messages, strip_empty_think } = q.sample() else { panic!() };
        assert!(strip_empty_think);
        assert_eq!(messages[0].content, "/no_think Expand this search query: tide times");
        assert_eq!(messages[1].content, "hyde: Tides rise twice a day.\nlex: tide table\nvec: when is high tide");
    }

    #[test]
    fn the_generation_prompt_is_the_masked_prefix_of_a_training_example() {
        let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/decoder/templates/smollm2.jinja")).unwrap();
        let tpl = ChatTemplate::new(&src, None, Some("<|im_end|>".into()), "smollm2.jinja").unwrap();
        let q = QueryExpansion {
            query: "tide times".into(),
            output: vec![Expansion { kind: ExpansionKind::Lex, text: "tide table".into() }],
            ..QueryExpansion::default()
        };
        let Sample::Chat { messages, strip_empty_think } = q.sample() else { panic!() };
        let full = render_chat(&tpl, &messages, false, strip_empty_think).unwrap();
        let prompt = qmd_generation_prompt(&tpl, "tide times").unwrap();
        assert_eq!(prompt, prompt_text(&tpl, &messages, strip_empty_think).unwrap());
        assert!(prompt.ends_with("Expand this search query: tide times<|im_end|>\n<|im_start|>assistant\n"), "{prompt:?}");
        assert_eq!(full.strip_prefix(prompt.as_str()), Some("lex: tide table<|im_end|>\n"), "{full:?}");
    }

    fn ex(n: usize, offset: usize) -> Example {
        Example { tokens: (1..=n as u32).collect(), offset }
    }

    #[test]
    fn batches_group_lengths_and_mask_prompts() {
        let examples = vec![ex(5, 0), ex(2, 0), ex(9, 0), ex(3, 0), ex(6, 0)];
        assert_eq!(length_batches(&examples, 2), vec![vec![1, 3], vec![0, 4]], "sorted by length, last odd one dropped");
        let order = epoch_order(10, 7, 3);
        assert_eq!(order, epoch_order(10, 7, 3));
        assert_ne!(order, epoch_order(10, 7, 4));

        // Offsets: row 0 has a 2-token prompt, so its first target (position 1) is masked.
        let examples = vec![ex(4, 2), ex(3, 0)];
        let b = make_batch(&examples, &[0, 1], 100);
        assert_eq!((b.rows, b.cols), (2, 3));
        assert_eq!(b.inputs, vec![1, 2, 3, 1, 2, 3], "row 1 ends at its last token (its target is masked)");
        assert_eq!(b.targets, vec![2, 3, 4, 2, 3, 0]);
        assert_eq!(b.mask, vec![0.0, 1.0, 1.0, 1.0, 1.0, 0.0]);
        assert_eq!(b.ntoks, 4);
        // Truncation to max_seq_length.
        let b = make_batch(&examples, &[0, 1], 3);
        assert_eq!((b.cols, b.ntoks), (2, 1 + 2));
    }
}

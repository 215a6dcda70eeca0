//! SFT examples: governed records rendered to token ids, then grouped into padded batches, as
//! MLX-LM's `tuner/datasets.py` and `iterate_batches` do.
//!
//! * `{"messages", "tools"?}`: the chat template renders the conversation with the record's
//!   function definitions and the assistants' `tool_calls`, as `apply_chat_template(messages,
//!   tools=tools)` does in MLX-LM and transformers. With `mask_prompt` the loss covers the
//!   assistant turns only, every one of them ([`assistant_spans`]). MLX-LM's `ChatDataset`
//!   instead starts the loss after the rendering of all messages but the last (its `offset`):
//!   for a record with one assistant turn, at the end (every record of `mlx_lm.lora`'s examples,
//!   every completions record), the two are the same tokens; in a multi-turn record MLX-LM
//!   learns only the last assistant turn (and, if the record ends with a user or tool message,
//!   that message), tunelab every assistant turn and nothing else.
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
use crate::data::ordered_json::OrderedJson;
use crate::model::decoder::CausalLm;

/// What a record becomes before tokenization.
#[derive(Clone, Debug, PartialEq)]
pub enum Sample {
    /// A conversation for the chat template. `strip_empty_think` removes the empty thinking block
    /// Qwen3's template writes (QMD's training data has none).
    Chat { messages: Vec<ChatMessage>, tools: Option<Vec<OrderedJson>>, strip_empty_think: bool },
    /// Plain text.
    Text(String),
}

/// A governed record type the SFT trainer learns from.
pub trait SftRecord: Governed + Clone {
    fn sample(&self) -> Sample;
}

impl SftRecord for ChatRecord {
    fn sample(&self) -> Sample {
        let messages = self
            .messages
            .iter()
            .map(|m| ChatMessage {
                // Through JSON text: the arguments keep the order they were written in.
                tool_calls: m.tool_calls.iter().map(|c| OrderedJson::of(c).expect("tool calls serialise")).collect(),
                tool_call_id: m.tool_call_id.clone(),
                name: m.name.clone(),
                ..ChatMessage::new(m.role.as_str(), m.content.clone())
            })
            .collect();
        Sample::Chat { messages, tools: self.tools.clone(), strip_empty_think: false }
    }
}

impl SftRecord for CompletionRecord {
    fn sample(&self) -> Sample {
        let messages = vec![ChatMessage::new("user", self.prompt.clone()), ChatMessage::new("assistant", self.completion.clone())];
        Sample::Chat { messages, tools: None, strip_empty_think: false }
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
        Sample::Chat { messages, tools: None, strip_empty_think: true }
    }
}

/// One tokenized example: the loss covers target positions `offset..tokens.len()` (position
/// 0 is never a target).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    pub tokens: Vec<u32>,
    /// Tokens of the prompt (0 without `mask_prompt`): the first target position counted.
    pub offset: usize,
    /// Target positions after `offset` kept out of the loss (`[start, end)`): with `mask_prompt`,
    /// the non-assistant turns between and after assistant turns. A range past the end also
    /// covers MLX-LM's padding target ([`make_batch_mlx_eval`]).
    pub masked: Vec<(usize, usize)>,
}

impl Example {
    /// Whether the target at position `p` counts in the loss.
    pub fn counts(&self, p: usize) -> bool {
        p >= self.offset && !self.masked.iter().any(|&(a, b)| a <= p && p < b)
    }
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
    render_chat_tools(tpl, messages, None, gen_prompt, strip_empty_think)
}

fn render_chat_tools(tpl: &ChatTemplate, messages: &[ChatMessage], tools: Option<&[OrderedJson]>, gen_prompt: bool, strip_empty_think: bool) -> Result<String, TemplateError> {
    let text = tpl.render_tools(messages, tools, gen_prompt)?;
    Ok(if strip_empty_think { text.replace(EMPTY_THINK, "") } else { text })
}

/// Where each assistant turn sits in the rendering `full` of the whole conversation, as byte
/// ranges `[start, end)`.
///
/// A turn starts where the rendering of the messages before it, with the generation prompt,
/// ends (MLX-LM's `offset`, for every turn rather than the last only); that rendering must be a
/// prefix of `full`. It ends where its own text ends: the rendering of the messages up to it,
/// minus the part it shares with the prompt, is the turn's text `t`, and the turn covers the
/// longest stretch of `full` from `start` that is a suffix of `t`. Matching a suffix rather than
/// all of `t` is what lets templates that write a turn differently when it is the last one
/// (Qwen3 adds an empty `<think>` block there) find it inside the conversation; where
/// rendering up to the turn is a prefix of `full` (SmolLM2, Llama, ...), the suffix is all of `t`.
pub fn assistant_spans(
    tpl: &ChatTemplate,
    messages: &[ChatMessage],
    tools: Option<&[OrderedJson]>,
    strip_empty_think: bool,
    full: &str,
) -> Result<Vec<(usize, usize)>, String> {
    let mut spans = Vec::new();
    for (i, _) in messages.iter().enumerate().filter(|(_, m)| m.role == "assistant") {
        let render = |n: usize, generation_prompt: bool| render_chat_tools(tpl, &messages[..n], tools, generation_prompt, strip_empty_think).map_err(|e| e.to_string());
        let prompt = render(i, true)?;
        if !full.starts_with(&prompt) {
            return Err(format!(
                "the chat template renders the messages before assistant message {i} (with the generation prompt) differently from \
                 how it renders them inside the whole conversation, so the turn cannot be located for mask_prompt"
            ));
        }
        let upto = render(i + 1, false)?;
        let shared = prompt.bytes().zip(upto.bytes()).take_while(|(a, b)| a == b).count();
        let turn = &upto[floor_char(&upto, shared)..];
        let rest = &full[prompt.len()..];
        let len = (1..=turn.len().min(rest.len()))
            .rev()
            .find(|&l| turn.is_char_boundary(turn.len() - l) && rest.is_char_boundary(l) && rest[..l] == turn[turn.len() - l..])
            .ok_or_else(|| format!("assistant message {i}'s rendering does not occur in the rendered conversation, so it cannot be located for mask_prompt"))?;
        spans.push((prompt.len(), prompt.len() + len));
    }
    Ok(spans)
}

/// The largest char boundary of `s` at or before byte `i`.
fn floor_char(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
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
    let Sample::Chat { messages, strip_empty_think, .. } = QueryExpansion { query: query.to_string(), ..QueryExpansion::default() }.sample() else {
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
                Example { tokens, offset: 0, masked: Vec::new() }
            }
            Sample::Chat { messages, tools, strip_empty_think } => {
                let Some(tpl) = &lm.chat_template else {
                    return Err(ExampleError::NoTemplate { part: part.to_string(), record });
                };
                let tools = tools.as_deref();
                // The template writes BOS itself; transformers tokenizes its output without specials.
                let full = render_chat_tools(tpl, &messages, tools, false, strip_empty_think).map_err(|e| fail(e.to_string()))?;
                let tokens = encode(&full, false)?;
                if !mask_prompt {
                    Example { tokens, offset: 0, masked: Vec::new() }
                } else {
                    let spans = assistant_spans(tpl, &messages, tools, strip_empty_think, &full).map_err(fail)?;
                    if spans.is_empty() {
                        return Err(fail("mask_prompt trains on assistant turns only, and this record has none".into()));
                    }
                    // A boundary in tokens: the length of the tokenized text before it, as MLX-LM
                    // counts its offset (the prompt tokenized on its own).
                    let at = |c: usize| if c == full.len() { Ok(tokens.len()) } else { encode(&full[..c], false).map(|t| t.len()) };
                    let mut bounds = Vec::with_capacity(spans.len());
                    for (a, b) in spans {
                        bounds.push((at(a)?, at(b)?));
                    }
                    let mut masked: Vec<(usize, usize)> = bounds.windows(2).map(|w| (w[0].1, w[1].0)).filter(|(a, b)| a < b).collect();
                    let end = bounds.last().expect("spans is not empty").1;
                    if end < tokens.len() {
                        masked.push((end, usize::MAX));
                    }
                    Example { tokens, offset: bounds[0].0, masked }
                }
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
                if ex.counts(p) {
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
            if p <= len && p < width && ex.counts(p) {
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
        let ex = vec![Example { tokens: vec![1, 10, 11, 12, 13], offset: 0, masked: vec![] }, Example { tokens: vec![1, 20, 21], offset: 2, masked: vec![] }];
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
        let Sample::Chat { messages, strip_empty_think, .. } = q.sample() else { panic!() };
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
        let Sample::Chat { messages, strip_empty_think, .. } = q.sample() else { panic!() };
        let full = render_chat(&tpl, &messages, false, strip_empty_think).unwrap();
        let prompt = qmd_generation_prompt(&tpl, "tide times").unwrap();
        assert_eq!(prompt, prompt_text(&tpl, &messages, strip_empty_think).unwrap());
        assert!(prompt.ends_with("Expand this search query: tide times<|im_end|>\n<|im_start|>assistant\n"), "{prompt:?}");
        assert_eq!(full.strip_prefix(prompt.as_str()), Some("lex: tide table<|im_end|>\n"), "{full:?}");
    }

    /// Assistant turns are found inside the conversation, also where the template writes a
    /// turn differently when it is the last one (the Qwen3-style empty thinking block).
    #[test]
    fn assistant_spans_cover_each_assistant_turn_and_nothing_else() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
        let m = |role: &str, content: &str| ChatMessage::new(role, content);
        let call = ChatMessage {
            tool_calls: vec![serde_json::from_str(r#"{"type": "function", "function": {"name": "f", "arguments": "{\"x\": \"é\"}"}}"#).unwrap()],
            ..m("assistant", "")
        };
        let messages = vec![m("system", "s"), m("user", "u1"), call, m("tool", "r"), m("assistant", "a1"), m("user", "u2"), m("assistant", "a2")];
        let tools: [OrderedJson; 1] = [serde_json::from_str(r#"{"type": "function", "function": {"name": "f"}}"#).unwrap()];
        for (file, want) in [
            ("decoder/templates/smollm2.jinja", vec!["<|im_end|>\n", "a1<|im_end|>\n", "a2<|im_end|>\n"]),
            (
                "chat_tools/qwen3_style_tools.jinja",
                vec!["<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": \"é\"}}\n</tool_call><|im_end|>\n", "a1<|im_end|>\n", "<think>\n\n</think>\n\na2<|im_end|>\n"],
            ),
        ] {
            let tpl = ChatTemplate::new(&std::fs::read_to_string(format!("{dir}/{file}")).unwrap(), None, None, file).unwrap();
            let full = tpl.render_tools(&messages, Some(&tools), false).unwrap();
            let spans = assistant_spans(&tpl, &messages, Some(&tools), false, &full).unwrap();
            let got: Vec<&str> = spans.iter().map(|&(a, b)| &full[a..b]).collect();
            assert_eq!(got, want, "{file}");
        }
        // A template that hides earlier turns from a later prompt cannot be masked: named, not guessed.
        let tpl = ChatTemplate::new("{% if add_generation_prompt %}P{% else %}{% for m in messages %}{{ m.content }}{% endfor %}{% endif %}", None, None, "odd").unwrap();
        let two = [m("user", "u"), m("assistant", "a")];
        let full = tpl.render(&two, false).unwrap();
        let err = assistant_spans(&tpl, &two, None, false, &full).unwrap_err();
        assert!(err.contains("assistant message 1"), "{err}");
    }

    fn ex(n: usize, offset: usize) -> Example {
        Example { tokens: (1..=n as u32).collect(), offset, masked: vec![] }
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

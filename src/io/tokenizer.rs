//! Tokenizing text batches for encoders, the way sentence-transformers does.
//!
//! Wraps a Hugging Face `tokenizers::Tokenizer` from `tokenizer.json`, replacing whatever
//! truncation and padding the file stores (all-MiniLM-L6-v2's says "truncate at 128, pad to 128")
//! with the model's `max_seq_length` and padding to the longest text of each batch.
//!
//! ```no_run
//! use tunelab::io::tokenizer::TextTokenizer;
//! let tok = TextTokenizer::from_file("models/all-MiniLM-L6-v2/tokenizer.json", 256).unwrap();
//! let batch = tok.encode_batch(&["hello world", "a longer piece of text"]).unwrap();
//! assert_eq!(batch.batch_size(), 2);
//! assert_eq!(batch.attention_mask[0], 1); // [CLS]
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::{Device, Int, Tensor, TensorData};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams, TruncationStrategy};

/// Why a tokenizer could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("cannot load tokenizer {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("tokenizer {path}: {reason}")]
    Encode { path: PathBuf, reason: String },
}

/// A tokenizer configured for an encoder: truncation at `max_len` tokens (special tokens
/// included), right padding to the longest sequence in the batch.
#[derive(Clone)]
pub struct TextTokenizer {
    /// Shared, so cloning an encoder (GradCache's graph-free copy every step, inference copies)
    /// does not copy a 262k-entry vocabulary.
    inner: Arc<Tokenizer>,
    path: PathBuf,
    max_len: usize,
    lowercase: bool,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer").field("path", &self.path).field("max_len", &self.max_len).finish()
    }
}

/// Token ids of a padded batch, row-major `[batch, seq]`, on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedBatch {
    pub input_ids: Vec<i64>,
    pub token_type_ids: Vec<i64>,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Vec<i64>,
    /// Number of real tokens of each row.
    pub lengths: Vec<usize>,
    pub seq_len: usize,
    /// The id padding positions hold (also for the extra columns [`Self::to_tensors`] adds).
    pub pad_id: i64,
    /// The tokenizer's truncation length: [`Self::to_tensors`] pads no wider (BERT's learned
    /// position table ends there or a little after).
    pub max_len: usize,
}

/// The same batch as burn tensors on a device.
#[derive(Debug, Clone)]
pub struct TokenTensors {
    pub input_ids: Tensor<2, Int>,
    pub token_type_ids: Tensor<2, Int>,
    pub attention_mask: Tensor<2, Int>,
}

impl EncodedBatch {
    /// Number of rows.
    pub fn batch_size(&self) -> usize {
        self.lengths.len()
    }

    /// Upload to `device` as `[batch, width]` integer tensors, `width` being
    /// [`crate::device::padded_width`] of the batch's longest row: the row length itself on the
    /// CPU, a multiple of 128 on GPU back-ends (which compile kernels per shape). The extra
    /// columns are padding (pad id, type 0, attention mask 0), so attention and pooling, which
    /// both read the mask, see the same real tokens. Never wider than the truncation length.
    pub fn to_tensors(&self, device: &Device) -> TokenTensors {
        self.to_tensors_padded(crate::device::padded_width(self.seq_len, device).min(self.max_len), device)
    }

    /// Upload right-padded to `width` columns (at least `seq_len`).
    pub fn to_tensors_padded(&self, width: usize, device: &Device) -> TokenTensors {
        // An empty batch (no tokens at all) stays empty.
        let width = if self.seq_len == 0 { 0 } else { width.max(self.seq_len) };
        let shape = [self.batch_size(), width];
        let t = |v: &Vec<i64>, fill: i64| {
            Tensor::<2, Int>::from_data(TensorData::new(crate::device::pad_rows(v, self.seq_len, width, fill), shape), device)
        };
        TokenTensors {
            input_ids: t(&self.input_ids, self.pad_id),
            token_type_ids: t(&self.token_type_ids, 0),
            attention_mask: t(&self.attention_mask, 0),
        }
    }
}

impl TextTokenizer {
    /// Load `tokenizer.json` and configure truncation at `max_len` tokens.
    pub fn from_file(path: impl AsRef<Path>, max_len: usize) -> Result<Self, TokenizerError> {
        let path = path.as_ref().to_path_buf();
        let inner = Tokenizer::from_file(&path)
            .map_err(|e| TokenizerError::Load { path: path.clone(), reason: e.to_string() })?;
        Self::new(inner, path, max_len)
    }

    /// Configure an already loaded tokenizer; `path` is only used in error messages.
    pub fn new(mut inner: Tokenizer, path: PathBuf, max_len: usize) -> Result<Self, TokenizerError> {
        // Keep the file's pad token if it names one; otherwise look for the usual spellings.
        let mut padding = inner.get_padding().cloned().unwrap_or_else(|| {
            let mut p = PaddingParams::default();
            for tok in ["[PAD]", "<pad>", "<|pad|>"] {
                if let Some(id) = inner.token_to_id(tok) {
                    p.pad_id = id;
                    p.pad_token = tok.to_string();
                    break;
                }
            }
            p
        });
        padding.strategy = PaddingStrategy::BatchLongest;
        padding.pad_to_multiple_of = None;
        inner.with_padding(Some(padding));
        inner
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                ..Default::default()
            }))
            .map_err(|e| TokenizerError::Load {
                path: path.clone(),
                reason: format!("truncation at {max_len}: {e}"),
            })?;
        Ok(Self { inner: Arc::new(inner), path, max_len, lowercase: false })
    }

    /// Lower-case texts before tokenizing (sentence-transformers' `do_lower_case`).
    pub fn with_lowercase(mut self, lowercase: bool) -> Self {
        self.lowercase = lowercase;
        self
    }

    /// The truncation length, special tokens included.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// The wrapped Hugging Face tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// Where the tokenizer was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tokenize a batch: add special tokens, truncate, pad to the longest row. Texts are not
    /// stripped: sentence-transformers 6 passes them to the tokenizer as they are (BERT's
    /// pre-tokenizer drops surrounding whitespace anyway).
    pub fn encode_batch(&self, texts: &[&str]) -> Result<EncodedBatch, TokenizerError> {
        let prepared: Vec<String> =
            texts.iter().map(|t| if self.lowercase { t.to_lowercase() } else { t.to_string() }).collect();
        let encodings = self
            .inner
            .encode_batch(prepared, true)
            .map_err(|e| TokenizerError::Encode { path: self.path.clone(), reason: e.to_string() })?;
        let seq_len = encodings.first().map_or(0, |e| e.len());
        let mut out = EncodedBatch {
            input_ids: Vec::with_capacity(texts.len() * seq_len),
            token_type_ids: Vec::with_capacity(texts.len() * seq_len),
            attention_mask: Vec::with_capacity(texts.len() * seq_len),
            lengths: Vec::with_capacity(texts.len()),
            seq_len,
            pad_id: self.inner.get_padding().map_or(0, |p| p.pad_id as i64),
            max_len: self.max_len,
        };
        for e in &encodings {
            debug_assert_eq!(e.len(), seq_len, "batch padding gives equal lengths");
            out.input_ids.extend(e.get_ids().iter().map(|&i| i as i64));
            out.token_type_ids.extend(e.get_type_ids().iter().map(|&i| i as i64));
            out.attention_mask.extend(e.get_attention_mask().iter().map(|&i| i as i64));
            out.lengths.push(e.get_attention_mask().iter().filter(|&&m| m == 1).count());
        }
        Ok(out)
    }

    /// Number of tokens (special tokens included, before truncation) of one text.
    pub fn count_tokens(&self, text: &str) -> Result<usize, TokenizerError> {
        let mut t = Tokenizer::clone(&self.inner);
        t.with_truncation(None).ok();
        t.with_padding(None);
        let e = t
            .encode(text, true)
            .map_err(|e| TokenizerError::Encode { path: self.path.clone(), reason: e.to_string() })?;
        Ok(e.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::models::wordlevel::WordLevel;
    use tokenizers::pre_tokenizers::whitespace::Whitespace;
    use tokenizers::processors::template::TemplateProcessing;

    /// A word-level tokenizer over a 6-word vocabulary with BERT's `[CLS] … [SEP]` template.
    fn tiny() -> Tokenizer {
        let vocab = [("[PAD]", 0), ("[UNK]", 1), ("[CLS]", 2), ("[SEP]", 3), ("hello", 4), ("world", 5)]
            .into_iter()
            .map(|(w, i)| (w.to_string(), i))
            .collect();
        let model = WordLevel::builder().vocab(vocab).unk_token("[UNK]".into()).build().unwrap();
        let mut tok = Tokenizer::new(model);
        tok.with_pre_tokenizer(Some(Whitespace {}));
        tok.with_post_processor(Some(
            TemplateProcessing::builder()
                .try_single("[CLS] $A [SEP]")
                .unwrap()
                .special_tokens(vec![("[CLS]", 2), ("[SEP]", 3)])
                .build()
                .unwrap(),
        ));
        tok
    }

    #[test]
    fn pads_to_longest_and_truncates_with_special_tokens() {
        let tok = TextTokenizer::new(tiny(), "tiny".into(), 4).unwrap();
        let b = tok.encode_batch(&["hello", "hello world world world", "  "]).unwrap();
        // Expected by hand: [CLS] hello [SEP] pad / [CLS] hello world [SEP] (cut at 4) / [CLS] [SEP] pad pad
        assert_eq!(b.seq_len, 4);
        assert_eq!(b.input_ids, vec![2, 4, 3, 0, 2, 4, 5, 3, 2, 3, 0, 0]);
        assert_eq!(b.attention_mask, vec![1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 0, 0]);
        assert_eq!(b.lengths, vec![3, 4, 2]);
        assert_eq!(tok.count_tokens("hello world world world").unwrap(), 6);
    }

    #[test]
    fn lowercase_option_applies_before_tokenizing() {
        let tok = TextTokenizer::new(tiny(), "tiny".into(), 8).unwrap().with_lowercase(true);
        assert_eq!(tok.encode_batch(&["HELLO"]).unwrap().input_ids, vec![2, 4, 3]);
    }

    #[test]
    fn missing_file_is_named() {
        let msg = TextTokenizer::from_file("/nonexistent/tokenizer.json", 8).unwrap_err().to_string();
        assert!(msg.contains("/nonexistent/tokenizer.json"), "{msg}");
    }
}

//! Loading weights and tokenizers: safetensors, GGUF, Hugging Face model folders.
pub mod gguf;
pub mod hf;
pub mod text;
#[cfg(feature = "models")]
pub mod safetensors;
#[cfg(feature = "models")]
pub mod tokenizer;

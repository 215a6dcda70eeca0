//! Loading weights and tokenizers: safetensors, GGUF, Hugging Face model folders.
pub mod gguf;
pub mod hf;
pub mod safetensors;
pub mod tokenizer;

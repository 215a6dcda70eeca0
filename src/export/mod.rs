//! Exports: PEFT, MLX-LM, GGUF and sentence-transformers artifacts.
pub mod gguf_bert;
pub mod gguf_lora;
pub mod sentence_transformers;

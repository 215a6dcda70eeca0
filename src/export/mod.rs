//! Exports: PEFT, MLX-LM, GGUF and sentence-transformers artifacts.
pub mod sentence_transformers;

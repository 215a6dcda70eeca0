//! Exports: PEFT, MLX-LM, GGUF and sentence-transformers artifacts.

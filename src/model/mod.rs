//! Model architectures, one file each.
pub mod bert;
pub mod checks;
pub mod decoder;
pub mod gemma;
pub mod gemma_gguf;
pub mod reranker;
pub mod rms_norm;
pub mod rope;
pub mod sdpa;
pub mod swiglu;

//! Every integration test, linked into one binary: 28 binaries of ~70 MB each (each with all of burn,
//! polars and tokenizers) filled ~2 GB of disk and spent minutes linking on CI's 2 cores, and a CI run
//! failed with "No space left on device". Each file is still its own module: run one with
//! `cargo test --test integration cli_lora::`. `gradcache_memory` stays its own binary: it counts the
//! heap with its own global allocator and must be the only test in its process.

mod bert_parity;
mod bundled_reranker_data;
mod chat_tools;
mod cli_data;
mod cli_embed;
mod cli_eval;
mod cli_export;
mod cli_lora;
mod cli_rerank;
mod cli_search;
mod cli_train_embed;
mod decoder_parity;
mod experiment_pipeline;
mod gate;
mod gemma_gguf;
mod gemma_gguf_export;
mod gemma_parity;
mod gguf;
mod mlx_parity;
mod notebooks;
mod peft_parity;
mod qmd_pipeline_parity;
mod report;
mod reranker_gguf;
mod reranker_parity;
mod scripts_portable;
mod train_contrastive;
mod trec_eval_parity;

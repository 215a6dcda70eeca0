//! Training loops and their shared pieces.
//!
//! * [`contrastive`]: MultipleNegativesRankingLoss, its GradCache variant, the no-duplicates sampler.
//! * [`contrastive_trainer`]: the embedding-model training loop (`tunelab train embed`).
//! * [`cross_entropy`]: the language-model loss as one operation (`F.cross_entropy`'s two passes).
//! * [`embed_job`]: `tunelab train embed`: govern, mine, train, validate, export, manifest.
//! * [`encoder`]: the [`encoder::TrainableEncoder`] seam between loops and models.
//! * `lora_loop`: the optimizer loop `sft` and `rerank` share (one batch → loss → AdamW, checkpoints).
//! * [`hard_negatives`]: mining hard negatives from a governed corpus (BM25 or dense).
//! * [`memory`]: what a run will hold in memory, estimated (and refused) before it starts.
//! * [`gradcheck`]: finite-difference checks of parameter gradients for any encoder and loss.
//! * [`rerank`]: LoRA fine-tuning of a yes/no LLM reranker (`tunelab train rerank`), calibration.
//! * [`schedule`]: warm-up + linear/cosine learning rates, clipping by global norm.
//! * [`sft`]: LoRA supervised fine-tuning of decoders (`tunelab train lora`), MLX-LM's options.
//! * [`sft_data`]: SFT records rendered and tokenized, length-grouped padded batches.
//! * `block_checkpoint`: `--grad-checkpoint` for decoders (blocks recomputed, chunked output head).
//! * [`checkpoint`]: model + optimizer + loop state on disk, for resume.
//! * [`validation`]: validation callbacks (retrieval metrics through `eval::metrics`).
pub(crate) mod block_checkpoint;
pub mod checkpoint;
pub mod contrastive;
pub mod contrastive_trainer;
pub mod cross_entropy;
pub mod embed_job;
pub mod encoder;
pub mod gradcheck;
pub mod hard_negatives;
pub(crate) mod lora_loop;
pub mod loss_scale;
pub mod memory;
pub mod rerank;
pub mod run_folder;
pub mod schedule;
pub mod sft;
pub mod sft_data;
pub mod validation;

//! Training loops and their shared pieces.
pub mod contrastive;
pub mod schedule;
pub mod sft;

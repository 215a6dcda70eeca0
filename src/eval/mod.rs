//! Retrieval evaluation: trec_eval-exact metrics, search engines, A/B statistics.
pub mod compare;
pub mod metrics;
pub mod search;

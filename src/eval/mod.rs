//! Retrieval evaluation: trec_eval-exact metrics, search engines, A/B statistics, QMD's query-expansion reward.
pub mod compare;
pub mod expansion;
pub mod metrics;
pub mod search;

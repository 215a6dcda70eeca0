//! Datasets: readers and writers for every format tunelab accepts, governance, splits, statistics,
//! record checks.
pub mod chat_template;
pub mod corpus;
pub mod formats;
pub mod governance;
pub mod jsonl;
pub mod lint;
pub mod mining;
pub mod ordered_json;
pub mod split;
pub mod stats;
pub mod trec;

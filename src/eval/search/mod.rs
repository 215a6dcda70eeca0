//! Search engines that produce TREC runs: exact dense search, BM25 (SQLite FTS5), hybrid RRF.
pub mod bm25;
pub mod dense;
pub mod fusion;

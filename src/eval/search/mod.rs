//! Search engines that produce TREC runs: exact dense search, BM25 (SQLite FTS5), hybrid RRF, and
//! QMD's whole pipeline ([`qmd`]: chunking, expansions, fusion, reranking).
//!
//! Every engine returns a [`Run`](crate::data::trec::Run) whose per-query lists are already in the order trec_eval
//! evaluates them in ([`trec_order`]: score descending, ties broken by document id descending),
//! so the rank column written to a run file agrees with the rank trec_eval uses, and fusion
//! reads the same ranks trec_eval would.
//!
//! ```
//! use tunelab::data::corpus::Document;
//! use tunelab::eval::search::{bm25::{Bm25Config, Bm25Index}, fusion::{reciprocal_rank_fusion, RrfConfig}};
//!
//! let docs = vec![
//!     Document { id: "d1".into(), title: "Sourdough".into(), text: "bread starter".into(), governance: Default::default() },
//!     Document { id: "d2".into(), title: "Pasta".into(), text: "fresh egg pasta".into(), governance: Default::default() },
//! ];
//! let index = Bm25Index::in_memory(&docs, &Bm25Config::default()).unwrap();
//! let queries = vec![("q1".to_string(), "bread".to_string())];
//! let lexical = index.run(&queries, 10, "bm25").unwrap();
//! assert_eq!(lexical.results["q1"][0].doc_id, "d1");
//! let hybrid = reciprocal_rank_fusion(&[&lexical, &lexical], &RrfConfig::default(), "hybrid");
//! assert_eq!(hybrid.results["q1"][0].doc_id, "d1");
//! ```

use std::cmp::Ordering;

use crate::data::trec::Retrieved;

pub mod bm25;
pub mod chunk;
#[cfg(feature = "models")]
pub mod dense;
pub mod fusion;
pub mod qmd;

/// Why a search could not run.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("SQLite error {context}: {source}")]
    Sqlite {
        context: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("duplicate document id '{0}' in the corpus")]
    DuplicateDocId(String),
    #[error("index file {0} already exists; open it with Bm25Index::open or choose another path")]
    IndexExists(std::path::PathBuf),
    #[error("{0} is not a tunelab BM25 index (no table `docs_fts`)")]
    NotAnIndex(std::path::PathBuf),
    #[error("tensor shape mismatch: {0}")]
    Shape(String),
    #[error("non-finite similarity for query '{qid}' (NaN or infinite values in the embeddings?)")]
    NonFinite { qid: String },
}

impl SearchError {
    pub(crate) fn sqlite(context: impl Into<String>) -> impl FnOnce(rusqlite::Error) -> Self {
        let context = context.into();
        move |source| SearchError::Sqlite { context, source }
    }
}

/// trec_eval's ordering of a query's results: score descending, then document id descending
/// (byte-wise), as `comp_sim_docno` in trec_eval's `form_res_rels.c` does
/// (`strcmp (ptr2->docno, ptr1->docno)`). Scores are compared with `total_cmp`.
pub fn trec_order(a: &Retrieved, b: &Retrieved) -> Ordering {
    // One definition of trec_eval's order for the whole crate (it also ties -0.0 with 0.0).
    crate::data::trec::trec_eval_order(a, b)
}

/// Sort one query's results into [`trec_order`].
pub fn sort_trec(results: &mut [Retrieved]) {
    results.sort_by(trec_order);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(id: &str, score: f64) -> Retrieved {
        Retrieved { doc_id: id.into(), score }
    }

    #[test]
    fn ties_break_by_descending_doc_id() {
        // trec_eval: higher score first; equal scores -> larger docno (strcmp) first.
        let mut v = vec![r("a", 1.0), r("c", 1.0), r("b", 2.0), r("B", 1.0)];
        sort_trec(&mut v);
        let ids: Vec<&str> = v.iter().map(|x| x.doc_id.as_str()).collect();
        // 'c' > 'a' > 'B' in byte order (uppercase sorts before lowercase).
        assert_eq!(ids, ["b", "c", "a", "B"]);
    }
}

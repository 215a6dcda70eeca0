//! TREC qrels (`qid 0 docid rel`) and run files (`qid Q0 docid rank score tag`).
//!
//! (Readers/writers to be written by the evaluation work; the types are shared with search.)

use std::collections::BTreeMap;

/// Relevance judgments: query id → document id → graded relevance (trec_eval reads integers).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Qrels {
    pub judgments: BTreeMap<String, BTreeMap<String, i32>>,
}

/// One retrieved document of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct Retrieved {
    pub doc_id: String,
    pub score: f64,
}

/// A ranked run: query id → retrieved documents (order as produced; trec_eval re-sorts by score).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Run {
    /// The run tag (last column of a run file).
    pub tag: String,
    pub results: BTreeMap<String, Vec<Retrieved>>,
}

//! Hard-negative mining for contrastive training, as sentence-transformers'
//! `util.mine_hard_negatives` does it: retrieve candidates for each pair's query from the corpus
//! (BM25 through FTS5, or exact dense search with the base encoder), skip what is judged
//! relevant, and keep the best-ranked rest (`sampling_strategy="top"`) within
//! `[range_min, range_max)`.
//!
//! Only documents the governance policy allows become negatives: a negative is training data
//! too, so a sacred or unconsented document never enters a batch this way.
//!
//! ```
//! use tunelab::data::corpus::parse_markdown;
//! use tunelab::data::formats::EmbeddingPair;
//! use tunelab::data::governance::Policy;
//! use tunelab::train::hard_negatives::{mine_hard_negatives, Miner, MiningOptions};
//!
//! let policy = Policy { treat_unclassified_as_public: true, ..Policy::default() };
//! let docs = ["# Tides\nThe sea rises twice a day.", "# Tide tables\nTables list the sea level.",
//!             "# Bread\nFlour and water."]
//!     .iter().enumerate().map(|(i, t)| parse_markdown(&format!("d{i}"), t).unwrap()).collect();
//! let pair = EmbeddingPair { query: "sea tides".into(), positive: "The sea rises twice a day.".into(),
//!                            doc_id: Some("d0".into()), ..Default::default() };
//! let (mined, report) = mine_hard_negatives(&[pair], &policy.apply(docs), &Miner::Bm25,
//!                                           &MiningOptions::default(), None).unwrap();
//! // d0 is the pair's own document: skipped. d1 shares "sea"; d2 matches nothing.
//! assert_eq!(mined[0].negatives, vec!["Tide tables\n\nTables list the sea level."]);
//! assert_eq!(report.skipped_relevant, 1);
//! ```

use std::collections::{BTreeMap, BTreeSet};

use burn::tensor::{Tensor, TensorData};
use serde::Serialize;

use crate::data::corpus::Document;
use crate::data::formats::EmbeddingPair;
use crate::data::governance::GovernedDataset;
use crate::data::mining::body_without_title;
use crate::eval::search::bm25::{Bm25Config, Bm25Index};
use crate::eval::search::dense::DenseIndex;
use crate::model::bert::SentenceEncoder;

/// Where candidates come from.
pub enum Miner<'a> {
    /// BM25 through SQLite FTS5, QMD's query syntax (lexical negatives).
    Bm25,
    /// Exact cosine search with an encoder (usually the base model being fine-tuned).
    Dense(&'a SentenceEncoder),
}

/// sentence-transformers' `mine_hard_negatives` options that apply here.
#[derive(Clone, Debug, Serialize)]
pub struct MiningOptions {
    /// Negatives kept per pair (added after any the pair already has).
    pub num_negatives: usize,
    /// Skip this many top candidates first (they are often unjudged positives).
    pub range_min: usize,
    /// Consider candidates ranked below this only.
    pub range_max: usize,
    /// Dense only: a candidate must score at most `(1 - relative_margin)·score(query, positive)`.
    pub relative_margin: Option<f32>,
    /// Texts per forward pass when embedding.
    pub batch_size: usize,
}

impl Default for MiningOptions {
    fn default() -> Self {
        MiningOptions { num_negatives: 1, range_min: 0, range_max: 50, relative_margin: None, batch_size: 32 }
    }
}

/// What mining did, for the run manifest.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct MiningReport {
    pub pairs: usize,
    /// Negatives added in all.
    pub negatives_added: usize,
    /// Pairs that got fewer than `num_negatives` (too few candidates).
    pub pairs_short: usize,
    /// Candidates skipped because they were judged relevant (the pair's document, a qrels
    /// judgment, or a document containing the positive).
    pub skipped_relevant: usize,
    /// Candidates skipped by the relative margin.
    pub skipped_margin: usize,
    /// Documents the policy allowed as negatives, of the corpus given.
    pub documents_allowed: usize,
}

/// The text a document contributes as a negative: `title`, a blank line, the body (the shape of
/// the bundled pairs' positives).
pub fn negative_text(doc: &Document) -> String {
    let body = body_without_title(doc);
    if doc.title.is_empty() { body } else { format!("{}\n\n{}", doc.title, body) }
}

/// Add up to `num_negatives` mined negatives to each pair. `relevant` optionally maps a query
/// text to documents judged relevant for it (from qrels), which are never used as negatives.
/// Pairs keep their order, ids and governance fields; apply the policy again to train on them.
pub fn mine_hard_negatives(
    pairs: &[EmbeddingPair],
    corpus: &GovernedDataset<Document>,
    miner: &Miner,
    opts: &MiningOptions,
    relevant: Option<&BTreeMap<String, BTreeSet<String>>>,
) -> anyhow::Result<(Vec<EmbeddingPair>, MiningReport)> {
    let docs = corpus.records();
    let texts: Vec<String> = docs.iter().map(negative_text).collect();
    let by_id: BTreeMap<&str, usize> = docs.iter().enumerate().map(|(i, d)| (d.id.as_str(), i)).collect();
    let depth = opts.range_max.min(docs.len());
    let queries: Vec<(String, String)> = pairs.iter().enumerate().map(|(i, p)| (format!("p{i}"), p.query.clone())).collect();

    // Candidates per pair, best first, with their scores; and the positive's score (dense only).
    let (candidates, positive_scores): (Vec<Vec<(String, f64)>>, Vec<Option<f64>>) = match miner {
        Miner::Bm25 => {
            let index = Bm25Index::in_memory(docs, &Bm25Config::default())?;
            let mut c = Vec::with_capacity(pairs.len());
            for (_, q) in &queries {
                c.push(index.search(q, depth)?.into_iter().map(|r| (r.doc_id, r.score)).collect());
            }
            (c, vec![None; pairs.len()])
        }
        Miner::Dense(encoder) => {
            let device = encoder.device();
            let to_tensor = |rows: &[Vec<f32>]| -> Tensor<2> {
                let (n, dim) = (rows.len(), rows.first().map_or(0, Vec::len));
                Tensor::from_data(TensorData::new(rows.concat(), [n, dim]), &device)
            };
            let doc_refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let d = encoder.embed_documents(&doc_refs, opts.batch_size)?;
            let q_refs: Vec<&str> = pairs.iter().map(|p| p.query.as_str()).collect();
            let q = encoder.embed_queries(&q_refs, opts.batch_size)?;
            let pos_refs: Vec<&str> = pairs.iter().map(|p| p.positive.as_str()).collect();
            let pos = encoder.embed_documents(&pos_refs, opts.batch_size)?;
            let positive_scores = q.iter().zip(&pos).map(|(a, b)| Some(cosine(a, b))).collect();
            let ids: Vec<String> = docs.iter().map(|d| d.id.clone()).collect();
            let qids: Vec<String> = queries.iter().map(|(id, _)| id.clone()).collect();
            let run = DenseIndex::new(to_tensor(&d), ids)?.search(to_tensor(&q), &qids, depth, "mining")?;
            let c = qids
                .iter()
                .map(|id| run.results.get(id).map(|r| r.iter().map(|x| (x.doc_id.clone(), x.score)).collect()).unwrap_or_default())
                .collect();
            (c, positive_scores)
        }
    };

    let mut report = MiningReport { pairs: pairs.len(), documents_allowed: docs.len(), ..MiningReport::default() };
    let mut out = Vec::with_capacity(pairs.len());
    for ((pair, cands), pos_score) in pairs.iter().zip(candidates).zip(positive_scores) {
        let judged = relevant.and_then(|r| r.get(&pair.query));
        let positive = pair.positive.trim();
        let mut mined = pair.clone();
        let mut added = 0;
        for (rank, (doc_id, score)) in cands.into_iter().enumerate() {
            if added == opts.num_negatives {
                break;
            }
            if rank < opts.range_min {
                continue;
            }
            let text = &texts[by_id[doc_id.as_str()]];
            let is_relevant = pair.doc_id.as_deref() == Some(doc_id.as_str())
                || judged.is_some_and(|j| j.contains(&doc_id))
                || (!positive.is_empty() && text.contains(positive));
            if is_relevant {
                report.skipped_relevant += 1;
                continue;
            }
            if let (Some(m), Some(p)) = (opts.relative_margin, pos_score)
                && score > (1.0 - m as f64) * p
            {
                report.skipped_margin += 1;
                continue;
            }
            if mined.negatives.iter().any(|n| n == text) {
                continue;
            }
            mined.negatives.push(text.clone());
            added += 1;
        }
        report.negatives_added += added;
        if added < opts.num_negatives {
            report.pairs_short += 1;
        }
        out.push(mined);
    }
    Ok((out, report))
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    (dot / (na * nb).max(1e-12)) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::corpus::parse_markdown;
    use crate::data::governance::{Classification, Policy};
    use burn::tensor::Device;

    fn corpus(texts: &[&str]) -> Vec<Document> {
        texts.iter().enumerate().map(|(i, t)| parse_markdown(&format!("d{i}"), t).unwrap()).collect()
    }

    fn pair(q: &str, pos: &str, doc: &str) -> EmbeddingPair {
        EmbeddingPair { query: q.into(), positive: pos.into(), doc_id: Some(doc.into()), ..Default::default() }
    }

    #[test]
    fn sacred_documents_never_become_negatives() {
        let mut docs = corpus(&["# Ice\nice ice ice lake", "# Lake ice\nice on the lake", "# Rites\nice lake ice lake ice"]);
        docs[2].governance.classification = Some(Classification::Sacred);
        let policy = Policy { treat_unclassified_as_public: true, ..Policy::default() };
        let governed = policy.apply(docs);
        assert_eq!(governed.len(), 2);
        let opts = MiningOptions { num_negatives: 3, ..MiningOptions::default() };
        let (mined, report) = mine_hard_negatives(&[pair("ice lake", "ice ice ice lake", "d0")], &governed, &Miner::Bm25, &opts, None).unwrap();
        assert_eq!(mined[0].negatives, vec!["Lake ice\n\nice on the lake"]);
        assert_eq!((report.negatives_added, report.pairs_short, report.documents_allowed), (1, 1, 2));
    }

    #[test]
    fn qrels_judgments_range_and_existing_negatives_are_respected() {
        let docs = corpus(&["# A\nfox den lair", "# B\nfox fox den", "# C\nfox fox fox den", "# D\nfox"]);
        let policy = Policy { treat_unclassified_as_public: true, ..Policy::default() };
        let governed = policy.apply(docs);
        let judged: BTreeMap<String, BTreeSet<String>> = [("fox".to_string(), BTreeSet::from(["d2".to_string()]))].into();
        let mut p = pair("fox", "fox den lair", "d0");
        p.negatives = vec!["D\n\nfox".into()];
        let opts = MiningOptions { num_negatives: 2, ..MiningOptions::default() };
        let (mined, report) = mine_hard_negatives(&[p.clone()], &governed, &Miner::Bm25, &opts, Some(&judged)).unwrap();
        // d2 is judged relevant, d0 is the pair's document; d1 is mined; d3 was already there.
        assert_eq!(mined[0].negatives, vec!["D\n\nfox".to_string(), "B\n\nfox fox den".to_string()]);
        assert_eq!(report.skipped_relevant, 2);
        // range_min skips the best candidates.
        let skip = MiningOptions { num_negatives: 1, range_min: 4, ..MiningOptions::default() };
        let (mined, _) = mine_hard_negatives(&[p], &governed, &Miner::Bm25, &skip, None).unwrap();
        assert_eq!(mined[0].negatives.len(), 1, "nothing beyond rank 4 of 4 candidates");
    }

    #[test]
    fn dense_mining_ranks_by_cosine_and_applies_the_margin() {
        let words = ["red", "fox", "den", "blue", "sea", "salt"];
        let enc = SentenceEncoder::random_tiny(&words, 4, &Device::flex());
        let docs = corpus(&["# one\nred fox den", "# two\nred fox", "# three\nblue sea salt"]);
        let policy = Policy { treat_unclassified_as_public: true, ..Policy::default() };
        let governed = policy.apply(docs);
        let p = pair("red fox", "red fox den", "d0");
        let opts = MiningOptions { num_negatives: 2, ..MiningOptions::default() };
        let (mined, _) = mine_hard_negatives(&[p.clone()], &governed, &Miner::Dense(&enc), &opts, None).unwrap();
        // Two candidates remain after skipping d0, in cosine order.
        let q = enc.embed_queries(&["red fox"], 4).unwrap();
        let d = enc.embed_documents(&["two\n\nred fox", "three\n\nblue sea salt"], 4).unwrap();
        let (s1, s2) = (cosine(&q[0], &d[0]), cosine(&q[0], &d[1]));
        let expect: Vec<String> =
            if s1 >= s2 { vec!["two\n\nred fox".into(), "three\n\nblue sea salt".into()] } else { vec!["three\n\nblue sea salt".into(), "two\n\nred fox".into()] };
        assert_eq!(mined[0].negatives, expect);
        // A margin of -10 requires scores below 11× the positive's: none is skipped; a margin of
        // 2 requires scores below -1× the positive's, which a cosine above -|p| fails.
        let keep_all = MiningOptions { relative_margin: Some(-10.0), ..opts.clone() };
        assert_eq!(mine_hard_negatives(&[p.clone()], &governed, &Miner::Dense(&enc), &keep_all, None).unwrap().1.skipped_margin, 0);
        let strict = MiningOptions { relative_margin: Some(2.0), ..opts };
        let (_, r) = mine_hard_negatives(&[p], &governed, &Miner::Dense(&enc), &strict, None).unwrap();
        assert!(r.skipped_margin >= 1, "{r:?}");
    }
}

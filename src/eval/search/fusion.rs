//! Reciprocal Rank Fusion (Cormack, Clarke & Büttcher, SIGIR 2009), as QMD's hybrid search does it.
//!
//! Matched against tobi/qmd `src/store.ts` (commit dbfd0b47), `reciprocalRankFusion`:
//! * a document at 0-based position `r` of list `i` contributes `weight_i / (k + r + 1)`, k = 60,
//!   weights default to 1.0;
//! * top-rank bonus: +0.05 if the document is first in any list, else +0.02 if it is within the
//!   top 3 of any list (best position 1 or 2);
//! * QMD's `hybridQuery` passes weight 2.0 for lists retrieved with the original query and 1.0 for
//!   expansion lists (`getHybridRrfWeights`); [`RrfConfig::qmd_hybrid`] sets that up.
//!
//! Positions are read in trec_eval's order of each input run (score descending, ties by doc id
//! descending), the order our engines already produce. The fused list is ordered the same way
//! by fused score; QMD's stable JS sort keeps first-seen order on exact ties instead — the only
//! difference, and it only affects exactly equal fused scores.

use std::collections::{BTreeSet, HashMap};

use super::sort_trec;
use crate::data::trec::{Retrieved, Run};

/// Fusion settings. `Default` is QMD's `reciprocalRankFusion` defaults (k = 60, weight 1, bonus on).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RrfConfig {
    /// The RRF constant.
    pub k: f64,
    /// One weight per input run; missing entries count as 1.0.
    pub weights: Vec<f64>,
    /// QMD's top-rank bonus (+0.05 for a first place, +0.02 for a second or third place).
    pub top_rank_bonus: bool,
    /// Keep only the best `depth` documents per query (QMD slices to its candidate limit).
    pub depth: Option<usize>,
}

impl Default for RrfConfig {
    fn default() -> Self {
        Self { k: 60.0, weights: Vec::new(), top_rank_bonus: true, depth: None }
    }
}

impl RrfConfig {
    /// Plain RRF as published: k = 60, equal weights, no bonus.
    pub fn plain() -> Self {
        Self { top_rank_bonus: false, ..Self::default() }
    }

    /// QMD's `hybridQuery` weighting: the first `original` lists (retrieved with the user's own
    /// query, e.g. BM25 and dense) weigh 2.0, the next `expansions` lists 1.0.
    pub fn qmd_hybrid(original: usize, expansions: usize) -> Self {
        let weights = std::iter::repeat_n(2.0, original)
            .chain(std::iter::repeat_n(1.0, expansions))
            .collect();
        Self { weights, ..Self::default() }
    }
}

/// Fuse `runs` query by query; the result holds every query present in any run.
///
/// ```
/// use tunelab::data::trec::{Retrieved, Run};
/// use tunelab::eval::search::fusion::{reciprocal_rank_fusion, RrfConfig};
///
/// let run = |ids: &[&str]| Run {
///     tag: "x".into(),
///     results: [("q".to_string(), ids.iter().enumerate()
///         .map(|(i, d)| Retrieved { doc_id: d.to_string(), score: -(i as f64) }).collect())]
///         .into_iter().collect(),
/// };
/// let fused = reciprocal_rank_fusion(&[&run(&["a", "b"]), &run(&["b", "c"])], &RrfConfig::plain(), "rrf");
/// assert_eq!(fused.results["q"][0].doc_id, "b"); // 1/62 + 1/61 beats 1/61
/// ```
pub fn reciprocal_rank_fusion(runs: &[&Run], config: &RrfConfig, tag: &str) -> Run {
    let qids: BTreeSet<&String> = runs.iter().flat_map(|r| r.results.keys()).collect();
    let mut fused = Run {
        tag: tag.to_string(),
        ..Default::default()
    };
    for qid in qids {
        let ordered: Vec<Vec<Retrieved>> = runs
            .iter()
            .map(|run| {
                let mut list = run.results.get(qid).cloned().unwrap_or_default();
                sort_trec(&mut list);
                list
            })
            .collect();
        let lists: Vec<(&[Retrieved], f64)> = ordered
            .iter()
            .enumerate()
            .map(|(i, l)| (l.as_slice(), config.weights.get(i).copied().unwrap_or(1.0)))
            .collect();
        let mut list = fuse_ranked_lists(&lists, config.k, config.top_rank_bonus);
        sort_trec(&mut list);
        if let Some(depth) = config.depth {
            list.truncate(depth);
        }
        fused.results.insert(qid.clone(), list);
    }
    fused
}

/// QMD's `reciprocalRankFusion` itself, on lists already in rank order, each with its weight:
/// the fused list in QMD's order — fused score descending, exact ties in first-seen order (JS's
/// stable sort over a `Map`'s insertion order). Duplicates within one list count once per
/// occurrence, as in QMD.
///
/// ```
/// use tunelab::data::trec::Retrieved;
/// use tunelab::eval::search::fusion::fuse_ranked_lists;
/// let l = |ids: &[&str]| ids.iter().map(|d| Retrieved { doc_id: d.to_string(), score: 0.0 }).collect::<Vec<_>>();
/// let (a, b) = (l(&["doc1"]), l(&["doc2"]));
/// // QMD test "RRF respects weights": weight 2 puts doc1 first.
/// let fused = fuse_ranked_lists(&[(&a, 2.0), (&b, 1.0)], 60.0, true);
/// assert_eq!(fused[0].doc_id, "doc1");
/// assert!((fused[0].score - (2.0 / 61.0 + 0.05)).abs() < 1e-15);
/// ```
pub fn fuse_ranked_lists(
    lists: &[(&[Retrieved], f64)],
    k: f64,
    top_rank_bonus: bool,
) -> Vec<Retrieved> {
    // doc -> index into `acc` (first-seen order), acc = (doc, score, best 0-based position).
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut acc: Vec<(&str, f64, usize)> = Vec::new();
    for (list, weight) in lists {
        for (rank, r) in list.iter().enumerate() {
            let contribution = weight / (k + rank as f64 + 1.0);
            match index.get(r.doc_id.as_str()) {
                Some(&i) => {
                    acc[i].1 += contribution;
                    acc[i].2 = acc[i].2.min(rank);
                }
                None => {
                    index.insert(r.doc_id.as_str(), acc.len());
                    acc.push((r.doc_id.as_str(), contribution, rank));
                }
            }
        }
    }
    let mut out: Vec<Retrieved> = acc
        .into_iter()
        .map(|(doc, mut score, top)| {
            if top_rank_bonus {
                score += match top {
                    0 => 0.05,
                    1 | 2 => 0.02,
                    _ => 0.0,
                };
            }
            Retrieved {
                doc_id: doc.to_string(),
                score,
            }
        })
        .collect();
    // Stable, like Array.prototype.sort: exact ties keep first-seen order.
    out.sort_by(|a, b| b.score.total_cmp(&a.score));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(tag: &str, q: &[(&str, &[(&str, f64)])]) -> Run {
        Run {
            tag: tag.into(),
            results: q
                .iter()
                .map(|(qid, docs)| {
                    let v = docs
                        .iter()
                        .map(|(d, s)| Retrieved { doc_id: d.to_string(), score: *s })
                        .collect();
                    (qid.to_string(), v)
                })
                .collect(),
        }
    }

    fn score(r: &Run, q: &str, d: &str) -> f64 {
        r.results[q].iter().find(|x| x.doc_id == d).unwrap().score
    }

    #[test]
    fn qmd_scores_by_hand() {
        // List A (by score): a, b, c. List B: c, d. Input order is scrambled on purpose: positions
        // come from the scores. Weights 2 and 1 (QMD's original + one expansion list).
        let a = run("A", &[("q", &[("c", 1.0), ("a", 3.0), ("b", 2.0)])]);
        let b = run("B", &[("q", &[("d", 0.5), ("c", 0.9)])]);
        let cfg = RrfConfig::qmd_hybrid(1, 1);
        let f = reciprocal_rank_fusion(&[&a, &b], &cfg, "hybrid");
        // a: 2/61 + 0.05 (first in A)
        // b: 2/62 + 0.02 (second in A)
        // c: 2/63 + 1/61 + 0.05 (first in B)
        // d: 1/62 + 0.02 (second in B)
        let expect = [
            ("c", 2.0 / 63.0 + 1.0 / 61.0 + 0.05),
            ("a", 2.0 / 61.0 + 0.05),
            ("b", 2.0 / 62.0 + 0.02),
            ("d", 1.0 / 62.0 + 0.02),
        ];
        let got: Vec<&str> = f.results["q"].iter().map(|r| r.doc_id.as_str()).collect();
        assert_eq!(got, ["c", "a", "b", "d"]);
        for (d, s) in expect {
            assert!((score(&f, "q", d) - s).abs() < 1e-15, "{d}");
        }
    }

    #[test]
    fn plain_rrf_without_bonus_and_ties_by_doc_id() {
        // x first in A, y first in B, both second in the other list: equal scores 1/61 + 1/62,
        // so trec_eval's order puts "y" before "x".
        let a = run("A", &[("q", &[("x", 2.0), ("y", 1.0)]), ("only_a", &[("z", 1.0)])]);
        let b = run("B", &[("q", &[("y", 2.0), ("x", 1.0)])]);
        let f = reciprocal_rank_fusion(&[&a, &b], &RrfConfig::plain(), "rrf");
        let ids: Vec<&str> = f.results["q"].iter().map(|r| r.doc_id.as_str()).collect();
        assert_eq!(ids, ["y", "x"]);
        assert!((score(&f, "q", "x") - (1.0 / 61.0 + 1.0 / 62.0)).abs() < 1e-15);
        // A query present in one run only is kept.
        assert!((score(&f, "only_a", "z") - 1.0 / 61.0).abs() < 1e-15);
        let cut = reciprocal_rank_fusion(
            &[&a, &b],
            &RrfConfig { depth: Some(1), ..RrfConfig::plain() },
            "t",
        );
        assert_eq!(cut.results["q"].len(), 1);
    }
}

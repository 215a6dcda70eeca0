//! Exact dense search: top-k documents by cosine similarity, on any burn device.
//!
//! Embeddings are L2-normalised on the device (`x / max(‖x‖, 1e-12)`, as PyTorch's
//! `F.normalize`), so a zero vector has similarity 0 to everything. Similarities are computed
//! one batch of queries at a time (`batch × n_docs` floats on the device and on the host), and
//! each row's top k is chosen on the host in trec_eval's order (score descending, ties by
//! document id descending), so the result does not depend on a device's sort stability.
//!
//! ```
//! use burn::tensor::{Device, Tensor};
//! use tunelab::eval::search::dense::DenseIndex;
//!
//! let device = Device::flex();
//! let docs = Tensor::<2>::from_floats([[1.0, 0.0], [0.0, 1.0]], &device);
//! let index = DenseIndex::new(docs, vec!["d1".into(), "d2".into()]).unwrap();
//! let queries = Tensor::<2>::from_floats([[0.1, 0.9]], &device);
//! let run = index.search(queries, &["q1".to_string()], 1, "dense").unwrap();
//! assert_eq!(run.results["q1"][0].doc_id, "d2");
//! ```

use std::collections::HashSet;

use burn::tensor::{DType, Tensor};
use indicatif::ProgressBar;

use super::SearchError;
use crate::data::trec::{Retrieved, Run};

/// Document embeddings ready for exact cosine search.
pub struct DenseIndex {
    /// Normalised document embeddings, transposed to `[dim, n_docs]` for the similarity matmul.
    docs_t: Tensor<2>,
    doc_ids: Vec<String>,
    dim: usize,
    /// Queries scored per batch; bounds memory at `batch_size × n_docs` floats.
    pub batch_size: usize,
}

/// `x / max(‖x‖₂, 1e-12)` row-wise, in f32.
pub fn l2_normalize(x: Tensor<2>) -> Tensor<2> {
    let x = x.cast(DType::F32);
    let norm = x.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-12);
    x / norm
}

impl DenseIndex {
    /// Build from a `[n_docs, dim]` embedding matrix (normalised here) and its row ids.
    pub fn new(doc_embeddings: Tensor<2>, doc_ids: Vec<String>) -> Result<Self, SearchError> {
        let [n, dim] = doc_embeddings.dims();
        if n != doc_ids.len() {
            return Err(SearchError::Shape(format!(
                "document embeddings have {n} rows but {} ids were given",
                doc_ids.len()
            )));
        }
        let mut seen = HashSet::with_capacity(n);
        if let Some(dup) = doc_ids.iter().find(|id| !seen.insert(id.as_str())) {
            return Err(SearchError::DuplicateDocId(dup.clone()));
        }
        Ok(Self { docs_t: l2_normalize(doc_embeddings).transpose(), doc_ids, dim, batch_size: 256 })
    }

    /// Set how many queries are scored at once.
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// Number of indexed documents.
    pub fn len(&self) -> usize {
        self.doc_ids.len()
    }

    /// Whether no documents are indexed.
    pub fn is_empty(&self) -> bool {
        self.doc_ids.is_empty()
    }

    /// The top `k` documents by cosine for each row of `queries` (`[n_queries, dim]`, moved to
    /// the index's device), as a run tagged `tag`. Scores are the cosines (f32, widened).
    pub fn search(
        &self,
        queries: Tensor<2>,
        query_ids: &[String],
        k: usize,
        tag: &str,
    ) -> Result<Run, SearchError> {
        let [nq, dim] = queries.dims();
        if nq != query_ids.len() {
            return Err(SearchError::Shape(format!(
                "query embeddings have {nq} rows but {} ids were given",
                query_ids.len()
            )));
        }
        if dim != self.dim {
            return Err(SearchError::Shape(format!(
                "query embeddings have dimension {dim}, documents {}",
                self.dim
            )));
        }
        let mut run = Run { tag: tag.to_string(), ..Default::default() };
        let n_docs = self.doc_ids.len();
        let k = k.min(n_docs);
        if nq == 0 || k == 0 {
            return Ok(run);
        }
        let queries = l2_normalize(queries.to_device(&self.docs_t.device()));
        let progress = ProgressBar::new(nq as u64);
        let mut order: Vec<usize> = Vec::with_capacity(n_docs);
        for start in (0..nq).step_by(self.batch_size) {
            let len = self.batch_size.min(nq - start);
            let sims = queries.clone().narrow(0, start, len).matmul(self.docs_t.clone());
            let sims: Vec<f32> = sims.into_data().try_into_vec_as::<f32>().map_err(|e| {
                SearchError::Shape(format!("reading similarities back from the device: {e:?}"))
            })?;
            for (row, qid) in sims.chunks_exact(n_docs).zip(&query_ids[start..start + len]) {
                if row.iter().any(|s| !s.is_finite()) {
                    return Err(SearchError::NonFinite { qid: qid.clone() });
                }
                order.clear();
                order.extend(0..n_docs);
                let ids = &self.doc_ids;
                let cmp = |a: &usize, b: &usize| {
                    row[*b]
                        .total_cmp(&row[*a])
                        .then_with(|| ids[*b].as_bytes().cmp(ids[*a].as_bytes()))
                };
                if k < n_docs {
                    order.select_nth_unstable_by(k - 1, cmp);
                    order.truncate(k);
                }
                order.sort_unstable_by(cmp);
                let hits = order
                    .iter()
                    .map(|&i| Retrieved { doc_id: ids[i].clone(), score: f64::from(row[i]) })
                    .collect();
                run.results.insert(qid.clone(), hits);
            }
            progress.inc(len as u64);
        }
        progress.finish_and_clear();
        Ok(run)
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::Device;

    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn hand_made_vectors_rank_by_cosine_with_doc_id_ties() {
        let device = Device::flex();
        // d4 = 2·d1 (same direction: both cosines are exactly equal), d3 at 45°, d2 orthogonal.
        let docs =
            Tensor::<2>::from_floats([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0]], &device);
        let index =
            DenseIndex::new(docs, ids(&["d1", "d2", "d3", "d4"])).unwrap().with_batch_size(2);
        // Three queries with batch size 2: the second batch is partial.
        let queries = Tensor::<2>::from_floats([[1.0, 0.0], [0.0, -3.0], [0.0, 0.0]], &device);
        let run = index.search(queries, &ids(&["q1", "q2", "q3"]), 3, "dense").unwrap();
        let got = |q: &str| -> Vec<(String, f64)> {
            run.results[q].iter().map(|r| (r.doc_id.clone(), r.score)).collect()
        };
        let h = std::f64::consts::FRAC_1_SQRT_2;
        // q1 = e1: cos d1 = d4 = 1 (tie: larger id first), d3 = 1/√2, d2 = 0 (cut by k = 3).
        let expect_q1 = [("d4", 1.0), ("d1", 1.0), ("d3", h)];
        // q2 = -e2: d1 = d4 = 0, d3 = -1/√2, d2 = -1.
        let expect_q2 = [("d4", 0.0), ("d1", 0.0), ("d3", -h)];
        // q3 = 0 vector: every cosine is 0, so order is by id descending.
        let expect_q3 = [("d4", 0.0), ("d3", 0.0), ("d2", 0.0)];
        for (q, expect) in [("q1", expect_q1), ("q2", expect_q2), ("q3", expect_q3)] {
            let g = got(q);
            assert_eq!(g.len(), 3, "{q}");
            for ((gid, gs), (eid, es)) in g.iter().zip(expect) {
                assert_eq!(gid, eid, "{q}: {g:?}");
                assert!((gs - es).abs() < 1e-6, "{q}: {g:?}");
            }
        }
        assert_eq!(run.tag, "dense");
    }

    #[test]
    fn shapes_and_ids_are_checked() {
        let device = Device::flex();
        let docs = Tensor::<2>::from_floats([[1.0, 0.0], [0.0, 1.0]], &device);
        assert!(matches!(
            DenseIndex::new(docs.clone(), ids(&["a", "a"])),
            Err(SearchError::DuplicateDocId(_))
        ));
        assert!(matches!(DenseIndex::new(docs.clone(), ids(&["a"])), Err(SearchError::Shape(_))));
        let index = DenseIndex::new(docs, ids(&["a", "b"])).unwrap();
        let q3 = Tensor::<2>::from_floats([[1.0, 0.0, 0.0]], &device);
        assert!(matches!(index.search(q3, &ids(&["q"]), 1, "t"), Err(SearchError::Shape(_))));
        // k larger than the corpus returns every document.
        let q = Tensor::<2>::from_floats([[1.0, 0.0]], &device);
        assert_eq!(index.search(q, &ids(&["q"]), 10, "t").unwrap().results["q"].len(), 2);
    }
}

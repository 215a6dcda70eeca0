//! Validation during training: a callback the loop runs every `eval_every` steps, and the
//! retrieval one used for embedding models (exact dense search, then `eval::metrics`).

use std::collections::BTreeMap;

use crate::data::trec::{Qrels, Retrieved, Run};
use crate::eval::metrics::{EvalOptions, Measure, evaluate};

use super::encoder::TrainableEncoder;

/// Metric name → value; higher is better for every metric the trainer keeps the best of.
pub type Metrics = BTreeMap<String, f64>;

/// Why validation failed.
pub type ValidationError = Box<dyn std::error::Error + Send + Sync>;

/// Scores an encoder on held-out data. The trainer passes an inference copy (no autodiff,
/// dropout off). Closures `FnMut(&E) -> Result<Metrics, ValidationError>` qualify.
pub trait Validation<E> {
    fn validate(&mut self, encoder: &E) -> Result<Metrics, ValidationError>;
}

impl<E, F: FnMut(&E) -> Result<Metrics, ValidationError>> Validation<E> for F {
    fn validate(&mut self, encoder: &E) -> Result<Metrics, ValidationError> {
        self(encoder)
    }
}

/// Retrieval validation: embed queries and documents, rank every document by cosine for each
/// query (exact search), keep the top `depth`, and compute `measures` as trec_eval does.
/// With `depth` 10, `recip_rank` is MRR@10. Texts are embedded as given: add query/document
/// prompts before building this.
#[derive(Clone, Debug)]
pub struct RetrievalValidation {
    /// (query id, text).
    pub queries: Vec<(String, String)>,
    /// (document id, text).
    pub documents: Vec<(String, String)>,
    pub qrels: Qrels,
    pub measures: Vec<Measure>,
    pub depth: usize,
    pub batch_size: usize,
}

impl RetrievalValidation {
    /// MRR@10, NDCG@10, P@5 and P@10 over the top 10.
    pub fn new(queries: Vec<(String, String)>, documents: Vec<(String, String)>, qrels: Qrels) -> Self {
        let measures = vec![Measure::RecipRank, Measure::NdcgCut(10), Measure::P(5), Measure::P(10)];
        Self { queries, documents, qrels, measures, depth: 10, batch_size: 64 }
    }

    /// The ranked run of `encoder` (top `depth` per query).
    pub fn run<E: TrainableEncoder>(&self, encoder: &E) -> Result<Run, ValidationError> {
        let docs = embed(encoder, &self.documents, self.batch_size)?;
        let queries = embed(encoder, &self.queries, self.batch_size)?;
        let mut run = Run { tag: "validation".into(), results: BTreeMap::new() };
        for ((qid, _), q) in self.queries.iter().zip(&queries) {
            let mut scored: Vec<Retrieved> = self
                .documents
                .iter()
                .zip(&docs)
                .map(|((id, _), d)| Retrieved { doc_id: id.clone(), score: q.iter().zip(d).map(|(a, b)| (a * b) as f64).sum() })
                .collect();
            // Same order trec_eval uses (score, then docno descending), so truncation keeps what it would rank first.
            scored.sort_by(crate::data::trec::trec_eval_order);
            scored.truncate(self.depth);
            run.results.insert(qid.clone(), scored);
        }
        Ok(run)
    }
}

/// Unit-length vectors of `items`' texts, in batches.
fn embed<E: TrainableEncoder>(encoder: &E, items: &[(String, String)], batch_size: usize) -> Result<Vec<Vec<f32>>, ValidationError> {
    let mut out = Vec::with_capacity(items.len());
    for chunk in items.chunks(batch_size.max(1)) {
        let texts: Vec<&str> = chunk.iter().map(|(_, t)| t.as_str()).collect();
        let v = encoder.encode(&texts)?;
        let dim = v.dims()[1];
        let flat = v.into_data().try_to_vec::<f32>().map_err(|e| format!("{e:?}"))?;
        for row in flat.chunks(dim) {
            let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            out.push(row.iter().map(|x| x / norm).collect());
        }
    }
    Ok(out)
}

impl<E: TrainableEncoder> Validation<E> for RetrievalValidation {
    fn validate(&mut self, encoder: &E) -> Result<Metrics, ValidationError> {
        let run = self.run(encoder)?;
        let ev = evaluate(&self.qrels, &run, &self.measures, &EvalOptions::default());
        Ok(self.measures.iter().filter_map(|m| ev.summary(m).map(|v| (m.trec_name(), v))).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::encoder::HashedBagEncoder;
    use burn::tensor::Device;

    #[test]
    fn identical_texts_rank_first() {
        // Each query is the exact text of its relevant document, so cosine 1 puts it at rank 1.
        let docs: Vec<(String, String)> = (0..5).map(|i| (format!("d{i}"), format!("word{i} other{i} thing{i}"))).collect();
        let queries: Vec<(String, String)> = docs.iter().map(|(id, t)| (format!("q-{id}"), t.clone())).collect();
        let qrels_text: String = docs.iter().map(|(id, _)| format!("q-{id} 0 {id} 1\n")).collect();
        let qrels = Qrels::parse_str(&qrels_text, "inline").unwrap();
        let mut v = RetrievalValidation::new(queries, docs, qrels);
        let enc = HashedBagEncoder::new(256, 16, 8, 0.0, 1, &Device::flex());
        let m = v.validate(&enc).unwrap();
        assert_eq!(m["recip_rank"], 1.0);
        assert_eq!(m["ndcg_cut_10"], 1.0);
        assert_eq!(m["P_5"], 0.2);
    }
}

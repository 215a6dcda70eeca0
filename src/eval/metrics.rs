//! Retrieval measures computed exactly as trec_eval computes them (usnistgov/trec_eval 9.0.8 / 10.0:
//! `form_res_rels.c`, `m_P.c`, `m_recall.c`, `m_map.c`, `m_recip_rank.c`, `m_ndcg.c`,
//! `m_ndcg_cut.c`, `m_success.c`, `m_num_*.c`, `meas_avg.c`).
//!
//! How trec_eval sees a query, and so how we do:
//! * The run's documents are re-sorted by score descending; equal scores are ordered by docno
//!   *descending* (byte-wise, `strcmp(p2, p1)`); the rank column is ignored
//!   ([`crate::data::trec::trec_eval_order`]).
//! * A retrieved document missing from the qrels has relevance -1 ("not in pool"); one judged with a
//!   negative value has -2 ("in pool, unjudged"). Both are never relevant and have gain 0.
//! * Binary measures (P, recall, map, recip_rank, success, num_rel, num_rel_ret) count a document
//!   as relevant when its judgment is `>= relevance_level` (trec_eval `-l`, default 1).
//!   `num_rel` counts judged documents (`rel >= 0`) at or above the level.
//! * `ndcg` and `ndcg_cut` ignore the level: the gain of a document is its judgment (0 if negative or
//!   unjudged), the discount `log2(rank + 1)`, and the ideal ranking sorts all positive judgments of
//!   the query. `ndcg` runs over the whole ranking and the whole ideal list, `ndcg_cut.k` truncates
//!   both at k. A query without positive judgments scores 0.
//! * `P.k` divides by k even when fewer than k documents were retrieved, `recall.k` by the number of
//!   relevant documents (0 when there are none), `success.k` is 1 if a relevant document is in the
//!   top k, `recip_rank` is 1/rank of the first relevant document (0 if none), `map` divides the sum
//!   of precisions at relevant ranks by `num_rel`.
//! * Queries: only queries present in both the qrels and the run are evaluated and averaged. With
//!   `complete` (trec_eval `-c`) every qrels query counts; one the run lacks is evaluated on an empty
//!   ranking (trec_eval 10 prints those per-query lines too). Run queries without judgments are
//!   ignored. Summary ("all") values are means, except `num_ret`, `num_rel`, `num_rel_ret` (sums)
//!   and `num_q` (count). With `complete`, trec_eval's summary `num_rel` counts every judgment with
//!   rel > 0 in the qrels, whatever the level (`m_num_rel.c`): we copy that too.
//!
//! Difference from trec_eval worth knowing: `-m P.5 -m P.10` gives P_5 and P_10 here; trec_eval
//! keeps only the first parameter list given for a measure.
//!
//! ```
//! use tunelab::data::trec::{Qrels, Run};
//! use tunelab::eval::metrics::{evaluate, EvalOptions, Measure};
//! let qrels = Qrels::parse_str("q1 0 a 1\nq1 0 b 2\n", "q").unwrap();
//! let run = Run::parse_str("q1 Q0 x 1 3 t\nq1 Q0 a 2 2 t\n", "r").unwrap();
//! let measures = Measure::parse_list(&["recip_rank", "P.5", "map"]).unwrap();
//! let ev = evaluate(&qrels, &run, &measures, &EvalOptions::default());
//! assert_eq!(ev.summary(&Measure::RecipRank), Some(0.5));
//! assert_eq!(ev.summary(&Measure::P(5)), Some(0.2));
//! assert_eq!(ev.summary(&Measure::Map), Some(0.25)); // (1/2) / 2 relevant
//! print!("{}", ev.to_trec_eval(true));
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use polars::prelude::*;

use crate::data::trec::{Qrels, Retrieved, Run, fnv1a, trec_eval_ranking};

/// trec_eval's default cutoffs for P, recall and ndcg_cut.
pub const DEFAULT_CUTOFFS: [usize; 9] = [5, 10, 15, 20, 30, 100, 200, 500, 1000];
/// trec_eval's default cutoffs for success.
pub const DEFAULT_SUCCESS_CUTOFFS: [usize; 3] = [1, 5, 10];

/// A trec_eval measure. Parsed from trec_eval's names (`P.5`, `P_5`, `ndcg_cut.10`, `P.5,10`);
/// displayed as trec_eval prints it (`P_5`, `ndcg_cut_10`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum Measure {
    /// Number of queries averaged over (summary only).
    NumQ,
    /// Number of documents retrieved (summary: sum).
    NumRet,
    /// Number of relevant documents (summary: sum).
    NumRel,
    /// Number of relevant documents retrieved (summary: sum).
    NumRelRet,
    /// Mean average precision.
    Map,
    /// Reciprocal rank of the first relevant document (MRR when averaged).
    RecipRank,
    /// Reciprocal rank of the first relevant document within the top k, 0 below (MRR@k when
    /// averaged): trec_eval's `-M k -m recip_rank`, ir_measures' `RR@k`. Not a trec_eval measure
    /// name; tunelab spells it `recip_rank_cut.k` after `ndcg_cut.k`.
    RecipRankCut(usize),
    /// Precision at k.
    P(usize),
    /// Recall at k.
    Recall(usize),
    /// nDCG over the whole ranking.
    Ndcg,
    /// nDCG at k.
    NdcgCut(usize),
    /// 1 if a relevant document is in the top k (hit rate).
    Success(usize),
}

/// A measure name that is not one of ours.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MeasureError {
    #[error(
        "unknown or unsupported measure {0:?} (supported: map, recip_rank, recip_rank_cut.k, ndcg, num_q, num_ret, num_rel, num_rel_ret, P.k, recall.k, ndcg_cut.k, success.k, runid)"
    )]
    Unknown(String),
    #[error("measure {measure:?}: cutoff {value:?} is not a positive integer")]
    BadCutoff { measure: String, value: String },
    #[error("measure {measure:?}: cutoff {value} given twice")]
    DuplicateCutoff { measure: String, value: usize },
    #[error("measure {0:?} takes no parameters here (custom ndcg gains are not supported)")]
    NoParameters(String),
}

impl Measure {
    /// Parse one trec_eval measure spec, which may name several cutoffs (`P.5,10`) or none
    /// (`P`: trec_eval's default cutoffs).
    pub fn parse_spec(spec: &str) -> Result<Vec<Measure>, MeasureError> {
        let spec = spec.trim();
        let (name, params) = match spec.split_once('.') {
            Some((n, p)) => (n, Some(p)),
            None => match spec.rsplit_once('_') {
                // `P_5`, `ndcg_cut_10`: pytrec_eval's and trec_eval's output spelling.
                Some((n, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit() || b == b',') => (n, Some(p)),
                _ => (spec, None),
            },
        };
        let single = |m: Measure| match params {
            None => Ok(vec![m]),
            Some(_) => Err(MeasureError::NoParameters(spec.to_owned())),
        };
        let family: fn(usize) -> Measure = match name {
            "num_q" => return single(Measure::NumQ),
            "num_ret" => return single(Measure::NumRet),
            "num_rel" => return single(Measure::NumRel),
            "num_rel_ret" => return single(Measure::NumRelRet),
            "map" => return single(Measure::Map),
            "recip_rank" => return single(Measure::RecipRank),
            "ndcg" => return single(Measure::Ndcg),
            "P" => Measure::P,
            "recall" => Measure::Recall,
            "ndcg_cut" => Measure::NdcgCut,
            "recip_rank_cut" => Measure::RecipRankCut,
            "success" => Measure::Success,
            _ => return Err(MeasureError::Unknown(spec.to_owned())),
        };
        let cutoffs: Vec<usize> = match params {
            None if name == "success" => DEFAULT_SUCCESS_CUTOFFS.to_vec(),
            None => DEFAULT_CUTOFFS.to_vec(),
            Some(p) => {
                let mut v = Vec::new();
                for s in p.split(',') {
                    let k: usize = s
                        .trim()
                        .parse()
                        .ok()
                        .filter(|&k| k > 0)
                        .ok_or_else(|| MeasureError::BadCutoff { measure: spec.into(), value: s.into() })?;
                    if v.contains(&k) {
                        return Err(MeasureError::DuplicateCutoff { measure: spec.into(), value: k });
                    }
                    v.push(k);
                }
                v
            }
        };
        Ok(cutoffs.into_iter().map(family).collect())
    }

    /// Parse several specs, dropping repeats (first occurrence wins the position).
    pub fn parse_list<S: AsRef<str>>(specs: &[S]) -> Result<Vec<Measure>, MeasureError> {
        let mut out: Vec<Measure> = Vec::new();
        for s in specs {
            for m in Measure::parse_spec(s.as_ref())? {
                if !out.contains(&m) {
                    out.push(m);
                }
            }
        }
        Ok(out)
    }

    /// The name trec_eval prints (`P_5`, `ndcg_cut_10`, `recip_rank`) — also pytrec_eval's key.
    pub fn trec_name(&self) -> String {
        match self {
            Measure::NumQ => "num_q".into(),
            Measure::NumRet => "num_ret".into(),
            Measure::NumRel => "num_rel".into(),
            Measure::NumRelRet => "num_rel_ret".into(),
            Measure::Map => "map".into(),
            Measure::RecipRank => "recip_rank".into(),
            Measure::RecipRankCut(k) => format!("recip_rank_cut_{k}"),
            Measure::P(k) => format!("P_{k}"),
            Measure::Recall(k) => format!("recall_{k}"),
            Measure::Ndcg => "ndcg".into(),
            Measure::NdcgCut(k) => format!("ndcg_cut_{k}"),
            Measure::Success(k) => format!("success_{k}"),
        }
    }

    /// Integer-valued counts, printed by trec_eval with `%ld` and summed (not averaged) over queries.
    pub fn is_count(&self) -> bool {
        matches!(self, Measure::NumQ | Measure::NumRet | Measure::NumRel | Measure::NumRelRet)
    }

    /// Position in trec_eval's output: its measure table order (`measures.c`), cutoffs ascending.
    pub fn trec_eval_rank(&self) -> (u8, usize) {
        match *self {
            Measure::NumQ => (1, 0),
            Measure::NumRet => (2, 0),
            Measure::NumRel => (3, 0),
            Measure::NumRelRet => (4, 0),
            Measure::Map => (5, 0),
            Measure::RecipRank => (9, 0),
            Measure::RecipRankCut(k) => (10, k),
            Measure::P(k) => (11, k),
            Measure::Recall(k) => (13, k),
            Measure::Ndcg => (23, 0),
            Measure::NdcgCut(k) => (26, k),
            Measure::Success(k) => (29, k),
        }
    }

    /// Sort measures into the order trec_eval prints them.
    pub fn sort_trec_eval(measures: &mut [Measure]) {
        measures.sort_by_key(|m| m.trec_eval_rank());
    }
}

impl fmt::Display for Measure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.trec_name())
    }
}

impl FromStr for Measure {
    type Err = MeasureError;
    /// One measure; a spec naming several (`P.5,10`, `P`) is an error here — use [`Measure::parse_spec`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let v = Measure::parse_spec(s)?;
        match v.as_slice() {
            [m] => Ok(*m),
            _ => Err(MeasureError::Unknown(format!("{s} (names {} measures; use parse_spec)", v.len()))),
        }
    }
}

/// trec_eval's command-line switches that change values.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EvalOptions {
    /// `-l`: judgments at or above this level are relevant for binary measures (default 1).
    pub relevance_level: i32,
    /// `-c`: average over every qrels query, scoring queries missing from the run as empty rankings.
    pub complete: bool,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions { relevance_level: 1, complete: false }
    }
}

/// Relevance of a retrieved document not in the qrels (trec_eval's RELVALUE_NONPOOL).
const NOT_IN_POOL: i32 = -1;
/// Relevance of a document judged with a negative value (trec_eval's RELVALUE_UNJUDGED).
const UNJUDGED: i32 = -2;

/// One query's ranking reduced to what the measures need (trec_eval's `RES_RELS`).
struct RankedRels {
    /// Relevance of each retrieved document in trec_eval's rank order.
    rels: Vec<i32>,
    /// Judged documents at or above the relevance level.
    num_rel: usize,
    /// Positive judgments, descending: the ideal ranking's gains.
    ideal: Vec<i32>,
}

fn rank_query(judged: &BTreeMap<String, i32>, docs: &[Retrieved], level: i32) -> RankedRels {
    let index = JudgedIndex::new(judged);
    let order = trec_eval_ranking(docs);
    let mut rels = Vec::with_capacity(order.len());
    for &i in &order {
        rels.push(match index.get(&docs[i].doc_id) {
            None => NOT_IN_POOL,
            Some(r) if r < 0 => UNJUDGED,
            Some(r) => r,
        });
    }
    let mut num_rel = 0;
    let mut ideal = Vec::new();
    for &(_, r) in &index.entries {
        if r >= 0 && r >= level {
            num_rel += 1;
        }
        if r > 0 {
            ideal.push(r);
        }
    }
    ideal.sort_unstable_by(|a, b| b.cmp(a));
    RankedRels { rels, num_rel, ideal }
}

/// A query's judgments in an open-addressing hash table: one probe per retrieved document instead
/// of a `BTreeMap` walk (generic code that the dev profile leaves unoptimised in this crate).
struct JudgedIndex<'a> {
    entries: Vec<(&'a str, i32)>,
    slots: Vec<usize>,
}

impl<'a> JudgedIndex<'a> {
    fn new(judged: &'a BTreeMap<String, i32>) -> Self {
        let entries: Vec<(&str, i32)> = judged.iter().map(|(d, &r)| (d.as_str(), r)).collect();
        let cap = (entries.len() * 2).next_power_of_two().max(16);
        let mut slots = vec![usize::MAX; cap];
        for (i, (d, _)) in entries.iter().enumerate() {
            let mut s = fnv1a(d.as_bytes()) as usize & (cap - 1);
            while slots[s] != usize::MAX {
                s = (s + 1) & (cap - 1);
            }
            slots[s] = i;
        }
        JudgedIndex { entries, slots }
    }

    fn get(&self, doc: &str) -> Option<i32> {
        let mask = self.slots.len() - 1;
        let mut s = fnv1a(doc.as_bytes()) as usize & mask;
        loop {
            let i = self.slots[s];
            if i == usize::MAX {
                return None;
            }
            if self.entries[i].0 == doc {
                return Some(self.entries[i].1);
            }
            s = (s + 1) & mask;
        }
    }
}

/// Relevant documents among the first `k` retrieved.
fn rel_in_top(r: &RankedRels, k: usize, level: i32) -> usize {
    let n = r.rels.len().min(k);
    let (mut c, mut i) = (0, 0);
    while i < n {
        if r.rels[i] >= level {
            c += 1;
        }
        i += 1;
    }
    c
}

/// DCG of gains in rank order, summed as trec_eval sums (rank i+1 discounted by log2(i+2)).
fn dcg(gains: &[i32], k: usize) -> f64 {
    let n = gains.len().min(k);
    let (mut sum, mut i) = (0.0, 0);
    while i < n {
        if gains[i] > 0 {
            sum += gains[i] as f64 / ((i + 2) as f64).log2();
        }
        i += 1;
    }
    sum
}

/// 1 / rank of the first relevant document among the first `k`, 0 when there is none.
fn recip_rank_within(r: &RankedRels, k: usize, level: i32) -> f64 {
    let n = r.rels.len().min(k);
    let mut i = 0;
    while i < n && r.rels[i] < level {
        i += 1;
    }
    if i < n { 1.0 / (i + 1) as f64 } else { 0.0 }
}

fn value_of(m: Measure, r: &RankedRels, level: i32) -> f64 {
    match m {
        Measure::NumQ => 1.0,
        Measure::NumRet => r.rels.len() as f64,
        Measure::NumRel => r.num_rel as f64,
        Measure::NumRelRet => rel_in_top(r, usize::MAX, level.max(0)) as f64,
        Measure::Map => {
            let (mut so_far, mut sum, mut i) = (0usize, 0.0, 0);
            while i < r.rels.len() {
                if r.rels[i] >= level {
                    so_far += 1;
                    sum += so_far as f64 / (i + 1) as f64;
                }
                i += 1;
            }
            if so_far > 0 { sum / r.num_rel as f64 } else { 0.0 }
        }
        Measure::RecipRank => recip_rank_within(r, usize::MAX, level),
        Measure::RecipRankCut(k) => recip_rank_within(r, k, level),
        Measure::P(k) => rel_in_top(r, k, level) as f64 / k as f64,
        Measure::Recall(k) => {
            if r.num_rel == 0 {
                0.0
            } else {
                rel_in_top(r, k, level) as f64 / r.num_rel as f64
            }
        }
        Measure::Success(k) => {
            if rel_in_top(r, k, level) > 0 {
                1.0
            } else {
                0.0
            }
        }
        Measure::Ndcg => {
            let ideal = dcg(&r.ideal, usize::MAX);
            if ideal > 0.0 { dcg(&r.rels, usize::MAX) / ideal } else { 0.0 }
        }
        Measure::NdcgCut(k) => {
            let ideal = dcg(&r.ideal, k);
            let got = dcg(&r.rels, k);
            if ideal > 0.0 { got / ideal } else { got }
        }
    }
}

/// Values of `measures` for one query: `judged` is the query's qrels, `docs` its retrieved
/// documents in any order (empty for a query the run lacks).
pub fn evaluate_query(
    judged: &BTreeMap<String, i32>,
    docs: &[Retrieved],
    measures: &[Measure],
    relevance_level: i32,
) -> Vec<f64> {
    let r = rank_query(judged, docs, relevance_level);
    measures.iter().map(|&m| value_of(m, &r, relevance_level)).collect()
}

/// Per-query values and summaries of a run, as trec_eval computes them.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Evaluation {
    /// Measures, in the order requested.
    pub measures: Vec<Measure>,
    /// The run's tag (trec_eval's `runid`).
    pub run_tag: String,
    /// Query id → one value per measure, queries in trec_eval's (byte-wise) order.
    pub per_query: BTreeMap<String, Vec<f64>>,
    /// The summary ("all") value of each measure: means, sums for counts, `num_q` for `NumQ`.
    pub summaries: Vec<f64>,
}

/// Evaluate `run` against `qrels` on `measures` (see the module notes for trec_eval's rules).
/// A run query present with an empty document list (possible in memory, never in a file) is
/// evaluated as an empty ranking.
pub fn evaluate(qrels: &Qrels, run: &Run, measures: &[Measure], opts: &EvalOptions) -> Evaluation {
    let level = opts.relevance_level;
    let empty: Vec<Retrieved> = Vec::new();
    let mut per_query = BTreeMap::new();
    for (qid, judged) in &qrels.judgments {
        let docs = match run.results.get(qid) {
            Some(d) => d,
            None if opts.complete => &empty,
            None => continue,
        };
        per_query.insert(qid.clone(), evaluate_query(judged, docs, measures, level));
    }
    let n = per_query.len();
    let summaries = measures
        .iter()
        .enumerate()
        .map(|(j, m)| {
            let sum: f64 = per_query.values().map(|v| v[j]).sum();
            match m {
                Measure::NumQ => n as f64,
                // m_num_rel.c: with -c the summary counts every positive judgment in the qrels.
                Measure::NumRel if opts.complete => {
                    qrels.judgments.values().flat_map(|d| d.values()).filter(|&&r| r > 0).count() as f64
                }
                m if m.is_count() => sum,
                _ if n == 0 => f64::NAN,
                _ => sum / n as f64,
            }
        })
        .collect();
    Evaluation { measures: measures.to_vec(), run_tag: run.tag.clone(), per_query, summaries }
}

impl Evaluation {
    /// Number of queries evaluated (trec_eval's `num_q`).
    pub fn num_queries(&self) -> usize {
        self.per_query.len()
    }

    /// The summary value of `m`, if it was evaluated and some query was evaluated.
    pub fn summary(&self, m: &Measure) -> Option<f64> {
        if self.per_query.is_empty() {
            return None;
        }
        self.measures.iter().position(|x| x == m).map(|j| self.summaries[j])
    }

    /// One query's value of `m`.
    pub fn value(&self, qid: &str, m: &Measure) -> Option<f64> {
        let j = self.measures.iter().position(|x| x == m)?;
        self.per_query.get(qid).map(|v| v[j])
    }

    /// Per-query values as a long table: columns `qid` (str), `measure` (str, trec_eval's name),
    /// `value` (f64); rows by query, then measure in requested order.
    pub fn per_query_frame(&self) -> PolarsResult<DataFrame> {
        let rows = self.per_query.len() * self.measures.len();
        let (mut q, mut m, mut v) = (Vec::with_capacity(rows), Vec::with_capacity(rows), Vec::with_capacity(rows));
        let names: Vec<String> = self.measures.iter().map(Measure::trec_name).collect();
        for (qid, vals) in &self.per_query {
            for (name, &x) in names.iter().zip(vals) {
                q.push(qid.as_str());
                m.push(name.as_str());
                v.push(x);
            }
        }
        df!("qid" => q, "measure" => m, "value" => v)
    }

    /// Summary values as a table: columns `measure`, `value`.
    pub fn summary_frame(&self) -> PolarsResult<DataFrame> {
        let names: Vec<String> = self.measures.iter().map(Measure::trec_name).collect();
        df!("measure" => names, "value" => self.summaries.clone())
    }

    /// Full-precision values as JSON: `{"runid", "num_q", "per_query": {qid: {measure: value}},
    /// "all": {measure: value}}` with trec_eval's measure names (the shape of
    /// `scripts/trec_eval_reference.py`'s output, for parity checks beyond 4 printed decimals).
    pub fn to_json(&self) -> serde_json::Value {
        let names: Vec<String> = self.measures.iter().map(Measure::trec_name).collect();
        let row = |vals: &[f64]| -> serde_json::Map<String, serde_json::Value> {
            names.iter().zip(vals).map(|(n, &v)| (n.clone(), serde_json::json!(v))).collect()
        };
        let per_query: serde_json::Map<String, serde_json::Value> =
            self.per_query.iter().map(|(q, v)| (q.clone(), serde_json::Value::Object(row(v)))).collect();
        serde_json::json!({
            "runid": self.run_tag,
            "num_q": self.num_queries(),
            "per_query": per_query,
            "all": row(&self.summaries),
        })
    }

    /// trec_eval's output: per-query lines (with `per_query`, like `-q`) then the `all` lines,
    /// measures in trec_eval's order, `%-22s\t%s\t%6.4f` (counts as integers).
    pub fn to_trec_eval(&self, per_query: bool) -> String {
        self.to_trec_eval_with_runid(per_query, false)
    }

    /// As [`Evaluation::to_trec_eval`], with trec_eval's `runid` line (the run tag) first among
    /// the `all` lines when `runid` is set.
    pub fn to_trec_eval_with_runid(&self, per_query: bool, runid: bool) -> String {
        let mut order: Vec<usize> = (0..self.measures.len()).collect();
        order.sort_by_key(|&j| self.measures[j].trec_eval_rank());
        let mut out = String::new();
        let line = |out: &mut String, m: &Measure, qid: &str, x: f64| {
            use std::fmt::Write;
            let name = m.trec_name();
            let _ = if m.is_count() {
                writeln!(out, "{name:<22}\t{qid}\t{}", x as i64)
            } else {
                writeln!(out, "{name:<22}\t{qid}\t{x:6.4}")
            };
        };
        if per_query {
            for (qid, vals) in &self.per_query {
                for &j in &order {
                    // trec_eval prints num_q only in the summary (te_print_single_meas_empty).
                    if self.measures[j] != Measure::NumQ {
                        line(&mut out, &self.measures[j], qid, vals[j]);
                    }
                }
            }
        }
        if runid {
            out.push_str(&format!("{:<22}\tall\t{}\n", "runid", self.run_tag));
        }
        for &j in &order {
            line(&mut out, &self.measures[j], "all", self.summaries[j]);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qrels(text: &str) -> Qrels {
        Qrels::parse_str(text, "test.qrels").unwrap()
    }
    fn run(text: &str) -> Run {
        Run::parse_str(text, "test.run").unwrap()
    }
    fn eval1(q: &str, r: &str, specs: &[&str], opts: EvalOptions) -> Evaluation {
        evaluate(&qrels(q), &run(r), &Measure::parse_list(specs).unwrap(), &opts)
    }
    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn parses_trec_eval_names() {
        use Measure::*;
        let cases: [(&str, &[Measure]); 14] = [
            ("recip_rank", &[RecipRank]),
            ("map", &[Map]),
            ("ndcg", &[Ndcg]),
            ("P.5", &[P(5)]),
            ("P_5", &[P(5)]),
            ("P.5,10", &[P(5), P(10)]),
            ("ndcg_cut.10", &[NdcgCut(10)]),
            ("ndcg_cut_10", &[NdcgCut(10)]),
            ("recall.100", &[Recall(100)]),
            ("success.1", &[Success(1)]),
            ("success", &[Success(1), Success(5), Success(10)]),
            ("num_rel_ret", &[NumRelRet]),
            ("recip_rank_cut.10", &[RecipRankCut(10)]),
            ("recip_rank_cut_3,10", &[RecipRankCut(3), RecipRankCut(10)]),
        ];
        for (s, want) in cases {
            assert_eq!(Measure::parse_spec(s).unwrap(), want, "{s}");
        }
        assert_eq!(Measure::parse_spec("P").unwrap().len(), 9);
        assert_eq!(Measure::parse_spec("ndcg_cut").unwrap()[0], NdcgCut(5));
        assert!(matches!(Measure::parse_spec("bpref"), Err(MeasureError::Unknown(_))));
        assert!(matches!(Measure::parse_spec("P.0"), Err(MeasureError::BadCutoff { .. })));
        assert!(matches!(Measure::parse_spec("P.x"), Err(MeasureError::BadCutoff { .. })));
        assert!(matches!(Measure::parse_spec("P.5,5"), Err(MeasureError::DuplicateCutoff { .. })));
        assert!(matches!(Measure::parse_spec("ndcg.1=3"), Err(MeasureError::NoParameters(_))));
        assert_eq!(Measure::parse_list(&["P.5", "P_5", "map"]).unwrap(), vec![P(5), Map]);
        assert_eq!("ndcg_cut.10".parse::<Measure>().unwrap().to_string(), "ndcg_cut_10");
        assert_eq!(Success(1).trec_name(), "success_1");
        assert_eq!(Recall(100).trec_name(), "recall_100");
    }

    /// Ties: d1, d2, d3 all score 1.0; trec_eval ranks equal scores by docno descending, so the
    /// ranking is d3, d2, d1 (the rank column, which says otherwise, is ignored).
    #[test]
    fn ties_are_broken_by_descending_docno() {
        let q = "q 0 d1 1\n";
        let r = "q Q0 d1 1 1.0 t\nq Q0 d2 2 1.0 t\nq Q0 d3 3 1.0 t\n";
        let ev = eval1(q, r, &["recip_rank", "P.1", "P.3", "success.2", "success.3", "map"], EvalOptions::default());
        // d1 is at rank 3: recip_rank = 1/3; P@1 = 0/1; P@3 = 1/3; success@2 = 0, @3 = 1;
        // map = (1/3) / 1 relevant = 1/3.
        let want = [1.0 / 3.0, 0.0, 1.0 / 3.0, 0.0, 1.0, 1.0 / 3.0];
        for (got, w) in ev.per_query["q"].iter().zip(want) {
            assert!(close(*got, w), "{:?} vs {want:?}", ev.per_query["q"]);
        }
        // A higher score beats docno order: d1 scored 2.0 comes first.
        let ev =
            eval1(q, "q Q0 d1 3 2.0 t\nq Q0 d2 2 1.0 t\nq Q0 d3 1 1.0 t\n", &["recip_rank"], EvalOptions::default());
        assert_eq!(ev.per_query["q"], [1.0]);
    }

    /// Graded qrels: a=3, b=2, c=1, e=0 judged; run order (by score) x, c, a, e, b
    /// (x is unjudged).
    #[test]
    fn graded_ndcg_and_binary_levels() {
        let q = "q 0 a 3\nq 0 b 2\nq 0 c 1\nq 0 e 0\n";
        let r = "q Q0 x 1 5 t\nq Q0 c 2 4 t\nq Q0 a 3 3 t\nq Q0 e 4 2 t\nq Q0 b 5 1 t\n";
        let ev = eval1(
            q,
            r,
            &["ndcg", "ndcg_cut.3", "map", "P.5", "recall.3", "num_rel", "num_rel_ret"],
            EvalOptions::default(),
        );
        let l2 = |x: f64| x.log2();
        // DCG: gains [0,1,3,0,2] at ranks 1..5: 1/log2(3) + 3/log2(4) + 2/log2(6).
        let dcg = 1.0 / l2(3.0) + 3.0 / 2.0 + 2.0 / l2(6.0);
        // Ideal: [3,2,1]: 3/1 + 2/log2(3) + 1/2.
        let idcg = 3.0 + 2.0 / l2(3.0) + 0.5;
        // Cut at 3: DCG gains [0,1,3]; ideal [3,2,1] (all three fit).
        let dcg3 = 1.0 / l2(3.0) + 1.5;
        // map at level 1: relevant at ranks 2 (c), 3 (a), 5 (b): (1/2 + 2/3 + 3/5) / 3.
        let map = (0.5 + 2.0 / 3.0 + 0.6) / 3.0;
        let want = [dcg / idcg, dcg3 / idcg, map, 3.0 / 5.0, 2.0 / 3.0, 3.0, 3.0];
        for (got, w) in ev.per_query["q"].iter().zip(want) {
            assert!(close(*got, w), "{:?} vs {want:?}", ev.per_query["q"]);
        }

        // -l 2: only a (3) and b (2) are relevant; ndcg does not change (it ignores the level).
        let ev2 =
            eval1(q, r, &["ndcg", "map", "recip_rank", "num_rel"], EvalOptions { relevance_level: 2, complete: false });
        // Relevant at ranks 3 (a) and 5 (b): map = (1/3 + 2/5) / 2; recip_rank = 1/3.
        let want2 = [dcg / idcg, (1.0 / 3.0 + 0.4) / 2.0, 1.0 / 3.0, 2.0];
        for (got, w) in ev2.per_query["q"].iter().zip(want2) {
            assert!(close(*got, w), "{:?} vs {want2:?}", ev2.per_query["q"]);
        }
    }

    /// ndcg_cut truncates the ideal list at k too: qrels a=1, b=1, c=1, run retrieves only b.
    #[test]
    fn ndcg_cut_truncates_ideal_and_full_ndcg_does_not() {
        let ev = eval1(
            "q 0 a 1\nq 0 b 1\nq 0 c 1\n",
            "q Q0 b 1 1 t\n",
            &["ndcg_cut.1", "ndcg_cut.2", "ndcg"],
            EvalOptions::default(),
        );
        let l2 = |x: f64| x.log2();
        // @1: DCG 1, ideal 1 → 1. @2: DCG 1, ideal 1 + 1/log2(3). Full: ideal 1 + 1/log2(3) + 1/2.
        let want = [1.0, 1.0 / (1.0 + 1.0 / l2(3.0)), 1.0 / (1.5 + 1.0 / l2(3.0))];
        for (got, w) in ev.per_query["q"].iter().zip(want) {
            assert!(close(*got, w), "{:?} vs {want:?}", ev.per_query["q"]);
        }
    }

    /// Fewer than k retrieved: trec_eval fills the rest with non-relevant documents.
    #[test]
    fn fewer_than_k_retrieved() {
        let ev = eval1(
            "q 0 a 1\nq 0 b 1\n",
            "q Q0 a 1 2 t\nq Q0 z 2 1 t\n",
            &["P.5", "P.1", "recall.10", "success.10", "num_ret"],
            EvalOptions::default(),
        );
        // 1 relevant in 2 retrieved: P@5 = 1/5 (not 1/2); P@1 = 1; recall@10 = 1/2; success@10 = 1.
        assert_eq!(ev.per_query["q"], [0.2, 1.0, 0.5, 1.0, 2.0]);
    }

    /// A query with judgments but no relevant document: every measure is 0 and it still counts
    /// in the mean (it is in both qrels and run).
    #[test]
    fn query_without_relevant_documents() {
        let q = "q1 0 a 0\nq2 0 b 1\n";
        let r = "q1 Q0 a 1 1 t\nq2 Q0 b 1 1 t\n";
        let ev = eval1(q, r, &["map", "recall.5", "ndcg", "ndcg_cut.5", "recip_rank", "num_q"], EvalOptions::default());
        assert_eq!(ev.per_query["q1"], [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]);
        assert_eq!(ev.per_query["q2"], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]);
        // Means over both queries: 0.5 each, num_q = 2.
        assert_eq!(ev.summaries, [0.5, 0.5, 0.5, 0.5, 0.5, 2.0]);
    }

    /// Queries missing from the run are skipped, unless `complete`, where they score 0 and count.
    /// Run queries without judgments are always ignored.
    #[test]
    fn missing_queries_and_complete() {
        let q = "q1 0 a 1\nq2 0 b 1\nq2 0 c 2\n";
        let r = "q1 Q0 a 1 1 t\nq9 Q0 a 1 1 t\n";
        let ev = eval1(q, r, &["P.1", "num_q", "num_rel"], EvalOptions::default());
        assert_eq!(ev.per_query.keys().collect::<Vec<_>>(), ["q1"]);
        assert_eq!(ev.summaries, [1.0, 1.0, 1.0]);
        let ev = eval1(q, r, &["P.1", "num_q", "num_rel"], EvalOptions { relevance_level: 1, complete: true });
        // q2 scores P@1 = 0: mean (1 + 0) / 2; num_q = 2; num_rel = 3 judgments > 0.
        assert_eq!(ev.per_query["q2"], [0.0, 1.0, 2.0]);
        assert_eq!(ev.summaries, [0.5, 2.0, 3.0]);
    }

    /// An empty run evaluates no query (trec_eval refuses to average nothing); with `complete`
    /// every judged query scores 0.
    #[test]
    fn empty_run() {
        let q = qrels("q1 0 a 1\nq2 0 b 1\n");
        let ms = Measure::parse_list(&["map", "P.5", "ndcg"]).unwrap();
        let ev = evaluate(&q, &Run::default(), &ms, &EvalOptions::default());
        assert_eq!(ev.num_queries(), 0);
        assert_eq!(ev.summary(&Measure::Map), None);
        let ev = evaluate(&q, &Run::default(), &ms, &EvalOptions { relevance_level: 1, complete: true });
        assert_eq!(ev.num_queries(), 2);
        assert_eq!(ev.summaries, [0.0, 0.0, 0.0]);
    }

    /// Negative judgments are "unjudged in pool": not relevant, no gain, not counted in num_rel.
    #[test]
    fn negative_judgments_are_never_relevant() {
        let ev = eval1(
            "q 0 a -1\nq 0 b 1\n",
            "q Q0 a 1 2 t\nq Q0 b 2 1 t\n",
            &["recip_rank", "num_rel", "num_rel_ret"],
            EvalOptions { relevance_level: 0, complete: false },
        );
        // Level 0 makes judged-nonrelevant (0) documents relevant, but not a (-1 → unjudged):
        // first relevant is b at rank 2.
        assert_eq!(ev.per_query["q"], [0.5, 1.0, 1.0]);
    }

    #[test]
    fn prints_trec_eval_format() {
        let ev = eval1(
            "q1 0 a 1\nq2 0 b 1\n",
            "q1 Q0 a 1 1 t\nq2 Q0 x 1 1 t\nq2 Q0 b 2 0 t\n",
            &["P.5", "map", "num_q", "num_ret"],
            EvalOptions::default(),
        );
        // Order follows trec_eval's table (num_q, num_ret, map, P), not the request order.
        let want = "\
num_ret               \tq1\t1
map                   \tq1\t1.0000
P_5                   \tq1\t0.2000
num_ret               \tq2\t2
map                   \tq2\t0.5000
P_5                   \tq2\t0.2000
num_q                 \tall\t2
num_ret               \tall\t3
map                   \tall\t0.7500
P_5                   \tall\t0.2000
";
        assert_eq!(ev.to_trec_eval(true), want);
        let df = ev.per_query_frame().unwrap();
        assert_eq!(df.shape(), (8, 3));
        assert_eq!(ev.summary_frame().unwrap().shape(), (4, 2));
    }
}

//! QMD's whole search pipeline as an engine: BM25 + vectors + query expansions + RRF + reranking,
//! with each of its three models pluggable, so a tuned model is measured where it will serve.
//!
//! Ported from tobi/qmd v2.8.3 (`src/store.ts` `hybridQuery`, `searchFTS`, `searchVec`,
//! `reciprocalRankFusion`, `getHybridRrfWeights`, `rerank`; `src/llm.ts` `expandQuery`; HEAD
//! `dbfd0b4736aeaf761d1a16ca8e424f071df8feb9`). For one query:
//!
//! 1. **BM25 probe**: the original query through FTS5 ([`super::bm25`], QMD's table, weights and
//!    query syntax), 20 results, score `|x| / (1 + |x|)` of `bm25()`. If the top score is ≥ 0.85 and
//!    leads the second by ≥ 0.15 (a *strong signal*), QMD skips query expansion.
//! 2. **Expansion** (a [`QueryExpander`]): typed sub-queries `lex` / `vec` / `hyde`, parsed as
//!    `llm.ts` parses the expansion model's lines ([`parse_expansion_output`]); those equal to the
//!    query are dropped.
//! 3. **Routing**: `lex` → BM25 only, `vec` and `hyde` → vectors only, the original → both. List
//!    order: original FTS, each lex FTS, original vector, each vec/hyde vector; empty lists are
//!    left out.
//! 4. **Vectors** (an [`Embedder`]): documents are chunked by tokens (900 / 135, see
//!    [`super::chunk`]) and embedded as `title: {title} | text: {chunk}`; queries as
//!    `task: search result | query: {q}`. Vector search takes the 60 nearest chunks (3 × the
//!    limit, cosine distance as sqlite-vec computes it), keeps the best chunk per document and
//!    returns 20 documents with score `1 − distance`.
//! 5. **RRF**: k = 60, weight 2.0 for lists of the original query and 1.0 for expansions, +0.05
//!    for a document first in any list, +0.02 for one second or third; the best 40 are the
//!    candidates.
//! 6. **Rerank** (a [`Scorer`]): each candidate's chunk (QMD's 3600-character chunking)
//!    with the most query terms longer than two characters (the first on ties) is scored once per
//!    distinct text; the blend is `w / rrf_rank + (1 − w) · P(yes)` with w = 0.75 for ranks 1–3,
//!    0.60 for 4–10, 0.40 after.
//!
//! Each stage is a TREC run ([`STAGES`]): `bm25` (step 1's list), `vector` (the original query's
//! vector list), `hybrid` (RRF of those two, no expansion), `hybrid+expansion` (step 5's 40
//! candidates with their fused scores) and `full` (step 6, when a reranker is given). The
//! `hybrid+expansion` and `full` runs keep all 40 candidates, so deeper measures can be computed;
//! QMD shows the first `limit` (10 by default) of the same order.
//!
//! Differences from QMD, on purpose: documents are ids of a tunelab corpus, not
//! `qmd://collection/path` (the FTS `filepath` column holds the id); the title is QMD's
//! `extractTitle` of the text, falling back to the corpus title and then the id's last component
//! (QMD falls back to the file name); exact ties in a run file are ordered as trec_eval orders
//! them; no LLM cache (QMD's caches only save time); a markdown file's text is its body without
//! the front matter (tunelab reads governance fields from it), where QMD indexes the whole file.
//!
//! ```
//! use tunelab::data::corpus::Document;
//! use tunelab::eval::search::qmd::{FnEmbedder, QmdConfig, QmdPipeline, parse_expansion_output};
//!
//! // A toy embedder: letter counts (any closure works; BERT plugs in through `BertEmbedder`).
//! let embed = |texts: &[&str]| -> anyhow::Result<Vec<Vec<f32>>> {
//!     Ok(texts.iter().map(|t| (b'a'..=b'z').map(|c| t.bytes().filter(|&b| b == c).count() as f32).collect()).collect())
//! };
//! let count = |t: &str| -> anyhow::Result<usize> { Ok(t.split_whitespace().count()) };
//! let docs = vec![
//!     Document { id: "bread".into(), title: String::new(), text: "# Sourdough\nA starter of flour and water.".into(), governance: Default::default() },
//!     Document { id: "pasta".into(), title: String::new(), text: "# Pasta\nFresh egg pasta.".into(), governance: Default::default() },
//! ];
//! let pipeline = QmdPipeline::build(&docs, Box::new(FnEmbedder::new(embed, count)), QmdConfig::default()).unwrap();
//! let expansions = parse_expansion_output("sourdough", "lex: sourdough starter\nvec: how to keep a sourdough starter");
//! let answer = pipeline.search("sourdough", Some(&expansions), None).unwrap();
//! assert_eq!(answer.bm25[0].doc_id, "bread");
//! assert_eq!(answer.hybrid_expansion[0].doc_id, "bread");
//! assert_eq!(pipeline.title("bread"), Some("Sourdough"));
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use super::bm25::{Bm25Config, Bm25Index};
use super::chunk::{
    CHUNK_OVERLAP_CHARS, CHUNK_OVERLAP_TOKENS, CHUNK_SIZE_CHARS, CHUNK_SIZE_TOKENS,
    CHUNK_WINDOW_CHARS, CHUNK_WINDOW_TOKENS, Chunk, chunk_document, chunk_document_by_tokens,
    extract_title, format_doc_for_embedding, format_query_for_embedding,
};
use super::fusion::fuse_ranked_lists;
use crate::data::corpus::Document;
use crate::data::trec::{Retrieved, Run};

/// The stage runs, in pipeline order.
pub const STAGES: [&str; 5] = ["bm25", "vector", "hybrid", "hybrid+expansion", "full"];

/// Embeds texts for vector search. The pipeline applies QMD's text formats itself, so `embed`
/// receives the final strings (`task: search result | query: …`, `title: … | text: …`).
pub trait Embedder {
    /// One vector per text, in order (any scale: the pipeline compares by cosine).
    fn embed(&self, texts: &[&str]) -> anyhow::Result<Vec<Vec<f32>>>;
    /// Tokens in `text` as the model's tokenizer counts them without special tokens (QMD's
    /// `llm.tokenize(text).length`, which sizes the 900-token chunks).
    fn count_tokens(&self, text: &str) -> anyhow::Result<usize>;
}

/// An [`Embedder`] made of two closures.
pub struct FnEmbedder<E, C> {
    embed: E,
    count: C,
}

impl<E, C> FnEmbedder<E, C>
where
    E: Fn(&[&str]) -> anyhow::Result<Vec<Vec<f32>>>,
    C: Fn(&str) -> anyhow::Result<usize>,
{
    pub fn new(embed: E, count: C) -> Self {
        Self { embed, count }
    }
}

impl<E, C> Embedder for FnEmbedder<E, C>
where
    E: Fn(&[&str]) -> anyhow::Result<Vec<Vec<f32>>>,
    C: Fn(&str) -> anyhow::Result<usize>,
{
    fn embed(&self, texts: &[&str]) -> anyhow::Result<Vec<Vec<f32>>> {
        (self.embed)(texts)
    }
    fn count_tokens(&self, text: &str) -> anyhow::Result<usize> {
        (self.count)(text)
    }
}

/// What the search pipeline needs from a reranker: one relevance score per document, in order
/// (QMD's is P(yes), in 0..1; higher = more relevant). `tunelab::model::reranker::Reranker`
/// implements it. It lives here, not with the model, because the pipeline builds without burn
/// (the `models` feature), as the notebooks build the library.
pub trait Scorer {
    /// Scores of `documents` for `query`, in the order given (higher = more relevant).
    fn score(&self, query: &str, documents: &[&str]) -> anyhow::Result<Vec<f32>>;

    /// Scores of the documents `ids` (sent as `texts`, the same length) for `query`. The pipeline
    /// calls this one; a model ignores the ids ([`Scorer::score`]), scores read from a file
    /// ([`RunScores`]) are looked up by them.
    fn score_documents(
        &self,
        query: &str,
        ids: &[&str],
        texts: &[&str],
    ) -> anyhow::Result<Vec<f32>> {
        debug_assert_eq!(ids.len(), texts.len());
        self.score(query, texts)
    }
}

/// Reranker scores read from a TREC run (`tunelab rerank --out`'s, P(yes) per query and
/// document), so the `full` stage can blend scores computed elsewhere, e.g. on a GPU, exactly as
/// it blends a model's. The run must hold every candidate the pipeline reranks: give
/// `tunelab rerank --run` the `hybrid+expansion.run` the pipeline wrote for the same system
/// (its 40 fused candidates) with `--depth 40`.
///
/// ```
/// use tunelab::data::trec::{Retrieved, Run};
/// use tunelab::eval::search::qmd::{RunScores, Scorer};
/// let mut run = Run::default();
/// run.results.insert("q1".into(), vec![Retrieved { doc_id: "a".into(), score: 0.75 }]);
/// let queries = vec![("q1".to_string(), "moon tide".to_string())];
/// let scores = RunScores::new("rerank.run", &run, &queries).unwrap();
/// assert_eq!(scores.score_documents("moon tide", &["a"], &["any text"]).unwrap(), [0.75]);
/// assert!(scores.score_documents("moon tide", &["b"], &["..."]).is_err()); // not reranked
/// ```
#[derive(Clone, Debug)]
pub struct RunScores {
    path: PathBuf,
    /// Query text → (qid, document id → score).
    by_query: HashMap<String, (String, HashMap<String, f32>)>,
}

impl RunScores {
    /// Read `path` (a TREC run); `queries` (`(qid, text)`) maps the pipeline's query texts to the
    /// run's qids. Queries absent from the run have no scores (an error if one is reranked).
    pub fn read(path: &Path, queries: &[(String, String)]) -> anyhow::Result<Self> {
        let run = Run::read(path)?;
        Self::new(path, &run, queries)
    }

    /// Scores from `run`; `path` names it in errors.
    pub fn new(
        path: impl Into<PathBuf>,
        run: &Run,
        queries: &[(String, String)],
    ) -> anyhow::Result<Self> {
        let path = path.into();
        let mut by_query: HashMap<String, (String, HashMap<String, f32>)> = HashMap::new();
        for (qid, text) in queries {
            let Some(list) = run.results.get(qid) else {
                continue;
            };
            let scores: HashMap<String, f32> = list
                .iter()
                .map(|r| (r.doc_id.clone(), r.score as f32))
                .collect();
            // Two qids with the same text are one query to the pipeline: their scores must agree.
            if let Some((other, known)) = by_query.get(text)
                && let Some((doc, _)) = scores
                    .iter()
                    .find(|(d, s)| known.get(*d).is_some_and(|k| k != *s))
            {
                bail!(
                    "{}: queries {other} and {qid} have the same text {text:?} but different scores for document {doc}",
                    path.display()
                );
            }
            by_query
                .entry(text.clone())
                .or_insert_with(|| (qid.clone(), HashMap::new()))
                .1
                .extend(scores);
        }
        Ok(Self { path, by_query })
    }
}

impl Scorer for RunScores {
    fn score(&self, _query: &str, _documents: &[&str]) -> anyhow::Result<Vec<f32>> {
        bail!(
            "{}: scores read from a run are looked up by document id (Scorer::score_documents)",
            self.path.display()
        )
    }

    fn score_documents(
        &self,
        query: &str,
        ids: &[&str],
        _texts: &[&str],
    ) -> anyhow::Result<Vec<f32>> {
        let hint = "rerank the candidates the pipeline reranks: `tunelab rerank --run <run dir>/runs/<system>/hybrid+expansion.run --depth 40`";
        let Some((qid, scores)) = self.by_query.get(query) else {
            bail!(
                "{} has no scores for the query {query:?}; {hint}",
                self.path.display()
            );
        };
        ids.iter()
            .map(|id| {
                scores.get(*id).copied().with_context(|| {
                    format!(
                        "{} has no score for document {id} of query {qid} ({query:?}); {hint}",
                        self.path.display()
                    )
                })
            })
            .collect()
    }
}

/// Where a query's expansions come from (an expansion model, or a file of them).
pub trait QueryExpander {
    /// The typed sub-queries for `query` (QMD's `expandQuery`, before dropping echoes).
    fn expand(&self, query: &str) -> anyhow::Result<Vec<ExpandedQuery>>;
}

/// A fixed list of expansions answers every query (handy for one query in the terminal).
impl QueryExpander for Vec<ExpandedQuery> {
    fn expand(&self, _query: &str) -> anyhow::Result<Vec<ExpandedQuery>> {
        Ok(self.clone())
    }
}

/// QMD's query types for expansions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueryType {
    Lex,
    Vec,
    Hyde,
}

/// One typed sub-query.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpandedQuery {
    #[serde(rename = "type")]
    pub kind: QueryType,
    #[serde(alias = "text")]
    pub query: String,
}

/// Parse an expansion model's output as QMD's `LlamaCpp.expandQuery` does: each line
/// `type: text` with type `lex`, `vec` or `hyde` (trimmed), kept only if its text contains a
/// term of the query (query lower-cased, non-`[a-z0-9\s]` replaced by spaces; no terms → all kept).
/// If nothing survives, QMD's fallback: `hyde: Information about {q}`, `lex: {q}`, `vec: {q}`.
///
/// ```
/// use tunelab::eval::search::qmd::{parse_expansion_output, QueryType};
/// let e = parse_expansion_output("tide tables", "lex: tide chart\nvec: ocean tides\nnote: x\nhyde: Tide tables list high water.");
/// assert_eq!(e.iter().map(|q| q.kind).collect::<Vec<_>>(), [QueryType::Lex, QueryType::Vec, QueryType::Hyde]);
/// assert_eq!(parse_expansion_output("tide", "lex: moon")[0].query, "Information about tide"); // fallback
/// ```
pub fn parse_expansion_output(query: &str, output: &str) -> Vec<ExpandedQuery> {
    let lower = query.to_lowercase();
    let cleaned: String = lower
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || is_js_space(c) {
                c
            } else {
                ' '
            }
        })
        .collect();
    let terms: Vec<&str> = cleaned
        .split(is_js_space)
        .filter(|t| !t.is_empty())
        .collect();
    let has_term = |text: &str| {
        let l = text.to_lowercase();
        terms.is_empty() || terms.iter().any(|t| l.contains(t))
    };
    let parsed: Vec<ExpandedQuery> = js_trim(output)
        .split('\n')
        .filter_map(|line| {
            let (kind, text) = line.split_once(':')?;
            let kind = match js_trim(kind) {
                "lex" => QueryType::Lex,
                "vec" => QueryType::Vec,
                "hyde" => QueryType::Hyde,
                _ => return None,
            };
            let text = js_trim(text);
            has_term(text).then(|| ExpandedQuery {
                kind,
                query: text.to_string(),
            })
        })
        .collect();
    if !parsed.is_empty() {
        return parsed;
    }
    vec![
        ExpandedQuery {
            kind: QueryType::Hyde,
            query: format!("Information about {query}"),
        },
        ExpandedQuery {
            kind: QueryType::Lex,
            query: query.to_string(),
        },
        ExpandedQuery {
            kind: QueryType::Vec,
            query: query.to_string(),
        },
    ]
}

fn is_js_space(c: char) -> bool {
    matches!(
        c,
        '\t' | '\n' | '\u{b}' | '\u{c}' | '\r' | ' ' | '\u{a0}' | '\u{1680}' | '\u{2000}'
            ..='\u{200a}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202f}'
                | '\u{205f}'
                | '\u{3000}'
                | '\u{feff}'
    )
}

fn js_trim(s: &str) -> &str {
    s.trim_matches(is_js_space)
}

/// Expansions read from a JSONL file, one query per line, keyed by the query text. A line is
/// either `{"query", "text"}` with the expansion model's raw output (what `tunelab eval
/// expansions` writes; parsed with [`parse_expansion_output`]) or `{"query", "expansions":
/// [{"type": "lex"|"vec"|"hyde", "query": …}]}`, used as given.
#[derive(Clone, Debug, Default)]
pub struct PrecomputedExpansions {
    pub path: PathBuf,
    pub by_query: HashMap<String, Vec<ExpandedQuery>>,
}

#[derive(Deserialize)]
struct ExpansionLine {
    query: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    expansions: Option<Vec<ExpandedQuery>>,
}

impl PrecomputedExpansions {
    /// Read the file; errors name the file and line. The first line for a query wins.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut by_query = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let l: ExpansionLine = serde_json::from_str(line)
                .with_context(|| format!("{}:{}: not an expansion line", path.display(), i + 1))?;
            let expansions = match (l.expansions, l.text) {
                (Some(e), _) => e,
                (None, Some(t)) => parse_expansion_output(&l.query, &t),
                (None, None) => bail!(
                    "{}:{}: needs \"text\" (model output) or \"expansions\"",
                    path.display(),
                    i + 1
                ),
            };
            by_query.entry(l.query).or_insert(expansions);
        }
        Ok(Self {
            path: path.to_path_buf(),
            by_query,
        })
    }
}

impl QueryExpander for PrecomputedExpansions {
    fn expand(&self, query: &str) -> anyhow::Result<Vec<ExpandedQuery>> {
        self.by_query.get(query).cloned().with_context(|| {
            format!(
                "{} has no expansion for the query {query:?}",
                self.path.display()
            )
        })
    }
}

/// The pipeline's constants; `Default` is QMD's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct QmdConfig {
    /// Results per BM25 and vector list (QMD: 20).
    pub list_limit: usize,
    /// Nearest chunks fetched per vector list, as a multiple of `list_limit` (QMD: 3).
    pub vector_overfetch: usize,
    /// RRF candidates kept and reranked (QMD's `RERANK_CANDIDATE_LIMIT`: 40).
    pub candidate_limit: usize,
    /// RRF constant (60).
    pub rrf_k: f64,
    /// Weight of lists retrieved with the original query (2.0); expansions weigh 1.0.
    pub original_weight: f64,
    /// `STRONG_SIGNAL_MIN_SCORE` (0.85) and `STRONG_SIGNAL_MIN_GAP` (0.15): skip expansion.
    pub strong_signal_min_score: f64,
    pub strong_signal_min_gap: f64,
    /// Embedding chunks: 900 tokens, 135 overlap, 200-token window.
    pub chunk_tokens: usize,
    pub chunk_overlap_tokens: usize,
    pub chunk_window_tokens: usize,
    /// Rerank chunks (characters): 3600, 540, 800.
    pub rerank_chunk_chars: usize,
    pub rerank_overlap_chars: usize,
    pub rerank_window_chars: usize,
    /// Texts per embedder call while indexing.
    pub embed_batch: usize,
}

impl Default for QmdConfig {
    fn default() -> Self {
        Self {
            list_limit: 20,
            vector_overfetch: 3,
            candidate_limit: 40,
            rrf_k: 60.0,
            original_weight: 2.0,
            strong_signal_min_score: 0.85,
            strong_signal_min_gap: 0.15,
            chunk_tokens: CHUNK_SIZE_TOKENS,
            chunk_overlap_tokens: CHUNK_OVERLAP_TOKENS,
            chunk_window_tokens: CHUNK_WINDOW_TOKENS,
            rerank_chunk_chars: CHUNK_SIZE_CHARS,
            rerank_overlap_chars: CHUNK_OVERLAP_CHARS,
            rerank_window_chars: CHUNK_WINDOW_CHARS,
            embed_batch: 64,
        }
    }
}

/// The words QMD matches against rerank chunks: `query.toLowerCase().split(/\s+/).filter(t =>
/// t.length > 2)` (length in UTF-16 units).
pub fn rerank_terms(query: &str) -> Vec<String> {
    query
        .to_lowercase()
        .split(is_js_space)
        .filter(|t| t.encode_utf16().count() > 2)
        .map(String::from)
        .collect()
}

/// QMD's keyword-best chunk among a document's rerank chunks: the first with the most
/// [`rerank_terms`] contained in its lowercased text (the first chunk when none matches).
pub fn best_chunk<'a>(chunks: &'a [Chunk], terms: &[String]) -> Option<&'a Chunk> {
    let (mut best, mut best_score) = (0, -1i64);
    for (i, c) in chunks.iter().enumerate() {
        let lower = c.text.to_lowercase();
        let s = terms.iter().filter(|t| lower.contains(t.as_str())).count() as i64;
        if s > best_score {
            (best, best_score) = (i, s);
        }
    }
    chunks.get(best)
}

/// The text QMD sends the reranker for one document: `text` cut into rerank chunks
/// (`config.rerank_chunk_chars`, overlap and window: 3600/540/800 characters), the one with the
/// most query words. `None` for a document with no chunk (empty text).
///
/// ```
/// use tunelab::eval::search::qmd::{QmdConfig, rerank_chunk_for};
/// let cfg = QmdConfig { rerank_chunk_chars: 40, rerank_overlap_chars: 0, rerank_window_chars: 10, ..Default::default() };
/// let text = "apples grow on trees in the orchard.\n\nPears are sweet and grow slowly too.\n";
/// let chunk = rerank_chunk_for(text, "sweet pears", &cfg).unwrap();
/// assert!(chunk.contains("Pears") && !chunk.contains("apples"));
/// ```
pub fn rerank_chunk_for(text: &str, query: &str, config: &QmdConfig) -> Option<String> {
    let chunks = chunk_document(
        text,
        config.rerank_chunk_chars,
        config.rerank_overlap_chars,
        config.rerank_window_chars,
    );
    best_chunk(&chunks, &rerank_terms(query)).map(|c| c.text.clone())
}

/// QMD's position-aware blend: w = 0.75 for fused ranks 1–3, 0.60 for 4–10, 0.40 after;
/// `w · (1 / rank) + (1 − w) · rerank_score`.
///
/// ```
/// use tunelab::eval::search::qmd::blend;
/// assert!((blend(1, 0.5) - (0.75 + 0.125)).abs() < 1e-12);
/// assert!((blend(11, 1.0) - (0.4 / 11.0 + 0.6)).abs() < 1e-12);
/// ```
pub fn blend(rrf_rank: usize, rerank_score: f64) -> f64 {
    let w = match rrf_rank {
        0..=3 => 0.75,
        4..=10 => 0.60,
        _ => 0.40,
    };
    w * (1.0 / rrf_rank as f64) + (1.0 - w) * rerank_score
}

/// QMD's `searchFTS` score: `|x| / (1 + |x|)` of `bm25()`.
pub fn fts_score(bm25: f64) -> f64 {
    bm25.abs() / (1.0 + bm25.abs())
}

/// Which list a ranked list came from (QMD's `RankedListMeta`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ListSource {
    /// `fts` or `vec`.
    pub source: &'static str,
    /// `original`, `lex`, `vec` or `hyde`.
    pub query_type: &'static str,
    pub query: String,
    pub weight: f64,
}

/// One query through every stage.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QmdAnswer {
    pub bm25: Vec<Retrieved>,
    pub vector: Vec<Retrieved>,
    pub hybrid: Vec<Retrieved>,
    pub hybrid_expansion: Vec<Retrieved>,
    /// Present when a reranker was given.
    pub full: Option<Vec<Retrieved>>,
    /// The expansions used (after dropping echoes of the query); empty on a strong signal.
    pub expansions: Vec<ExpandedQuery>,
    /// BM25 alone was decisive, so expansion was skipped.
    pub strong_signal: bool,
    /// The lists fused in `hybrid_expansion`, in order.
    pub lists: Vec<ListSource>,
    /// For `full`: the chunk sent to the reranker per document, and its score.
    pub reranked: Vec<(String, String, f64)>,
}

impl QmdAnswer {
    /// A stage's list by its [`STAGES`] name.
    pub fn stage(&self, name: &str) -> Option<&[Retrieved]> {
        match name {
            "bm25" => Some(&self.bm25),
            "vector" => Some(&self.vector),
            "hybrid" => Some(&self.hybrid),
            "hybrid+expansion" => Some(&self.hybrid_expansion),
            "full" => self.full.as_deref(),
            _ => None,
        }
    }
}

/// A document as the pipeline sees it.
#[derive(Clone, Debug)]
struct QmdDoc {
    id: String,
    title: String,
    rerank_chunks: Vec<Chunk>,
}

/// The indexed corpus with its embedder: BM25 index, chunk vectors, rerank chunks.
pub struct QmdPipeline {
    pub config: QmdConfig,
    docs: Vec<QmdDoc>,
    by_id: HashMap<String, usize>,
    bm25: Bm25Index,
    embedder: Box<dyn Embedder>,
    /// L2-normalised chunk vectors, row-major `[n_chunks, dim]`.
    vectors: Vec<f32>,
    dim: usize,
    /// Document index of each chunk row.
    chunk_doc: Vec<usize>,
}

/// The title the pipeline gives a document: QMD's `extractTitle` of its text, else the corpus
/// title, else the id's last component.
pub fn qmd_title(doc: &Document) -> String {
    let stem = doc.id.rsplit('/').next().unwrap_or(&doc.id);
    let from_text = extract_title(&doc.text, &format!("{}.md", doc.id));
    if from_text != stem || doc.title.is_empty() {
        from_text
    } else {
        doc.title.clone()
    }
}

fn normalize(v: &mut [f32]) {
    // sqlite-vec's cosine distance divides by both norms; a zero vector gives NaN there (no
    // match); here it stays zero (distance 1).
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

impl QmdPipeline {
    /// Index `docs`: BM25 over `(id, title, text)`, token chunks embedded with `embedder`.
    pub fn build(
        docs: &[Document],
        embedder: Box<dyn Embedder>,
        config: QmdConfig,
    ) -> anyhow::Result<Self> {
        let titled: Vec<Document> = docs
            .iter()
            .map(|d| Document {
                title: qmd_title(d),
                ..d.clone()
            })
            .collect();
        let bm25 = Bm25Index::in_memory(&titled, &Bm25Config::default())?;
        let mut qdocs = Vec::with_capacity(docs.len());
        let mut by_id = HashMap::new();
        let (mut texts, mut chunk_doc) = (Vec::new(), Vec::new());
        let mut count = |t: &str| embedder.count_tokens(t);
        for (i, d) in titled.iter().enumerate() {
            by_id.insert(d.id.clone(), i);
            // QMD embeds nothing for a blank body.
            if !d.text.trim().is_empty() {
                let chunks = chunk_document_by_tokens(
                    &d.text,
                    config.chunk_tokens,
                    config.chunk_overlap_tokens,
                    config.chunk_window_tokens,
                    &mut count,
                )
                .with_context(|| format!("chunking document '{}'", d.id))?;
                for (c, _) in chunks {
                    texts.push(format_doc_for_embedding(&c.text, Some(&d.title)));
                    chunk_doc.push(i);
                }
            }
            let rerank_chunks = chunk_document(
                &d.text,
                config.rerank_chunk_chars,
                config.rerank_overlap_chars,
                config.rerank_window_chars,
            );
            qdocs.push(QmdDoc {
                id: d.id.clone(),
                title: d.title.clone(),
                rerank_chunks,
            });
        }
        let mut vectors = Vec::new();
        let mut dim = 0;
        for batch in texts.chunks(config.embed_batch.max(1)) {
            let refs: Vec<&str> = batch.iter().map(String::as_str).collect();
            let out = embedder.embed(&refs)?;
            if out.len() != refs.len() {
                bail!(
                    "the embedder returned {} vectors for {} texts",
                    out.len(),
                    refs.len()
                );
            }
            for mut v in out {
                if dim == 0 {
                    dim = v.len();
                }
                if v.len() != dim || v.iter().any(|x| !x.is_finite()) {
                    bail!(
                        "the embedder returned a vector of length {} (expected {dim}) or with non-finite values",
                        v.len()
                    );
                }
                normalize(&mut v);
                vectors.extend(v);
            }
        }
        Ok(Self {
            config,
            docs: qdocs,
            by_id,
            bm25,
            embedder,
            vectors,
            dim,
            chunk_doc,
        })
    }

    /// Number of documents.
    pub fn len(&self) -> usize {
        self.docs.len()
    }

    /// Whether the corpus is empty.
    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    /// Number of embedded chunks.
    pub fn n_chunks(&self) -> usize {
        self.chunk_doc.len()
    }

    /// A document's title as the pipeline indexed it.
    pub fn title(&self, id: &str) -> Option<&str> {
        self.by_id.get(id).map(|&i| self.docs[i].title.as_str())
    }

    /// QMD's `searchFTS`: up to `list_limit` documents, score `|x|/(1+|x|)`.
    pub fn search_fts(&self, query: &str) -> anyhow::Result<Vec<Retrieved>> {
        let hits = self.bm25.search(query, self.config.list_limit)?;
        // Our index scores `-bm25()`; QMD's transform is symmetric in the sign.
        Ok(hits
            .into_iter()
            .map(|r| Retrieved {
                score: fts_score(r.score),
                ..r
            })
            .collect())
    }

    /// QMD's `searchVec` for an already embedded query.
    pub fn search_vec(&self, query_vector: &[f32]) -> anyhow::Result<Vec<Retrieved>> {
        if self.chunk_doc.is_empty() {
            return Ok(Vec::new());
        }
        if query_vector.len() != self.dim {
            bail!(
                "query vector has {} dimensions, the index {}",
                query_vector.len(),
                self.dim
            );
        }
        let mut q = query_vector.to_vec();
        normalize(&mut q);
        // Cosine distance per chunk, in f32 as sqlite-vec computes it.
        let mut dist: Vec<(f32, usize)> = self
            .vectors
            .chunks_exact(self.dim)
            .enumerate()
            .map(|(i, v)| (1.0 - v.iter().zip(&q).map(|(a, b)| a * b).sum::<f32>(), i))
            .collect();
        let k = (self.config.list_limit * self.config.vector_overfetch)
            .max(1)
            .min(dist.len());
        let cmp = |a: &(f32, usize), b: &(f32, usize)| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1));
        if k < dist.len() {
            dist.select_nth_unstable_by(k - 1, cmp);
            dist.truncate(k);
        }
        dist.sort_by(cmp);
        // Best (smallest) distance per document.
        let mut best: HashMap<usize, f32> = HashMap::new();
        for (d, i) in dist {
            let doc = self.chunk_doc[i];
            best.entry(doc).and_modify(|b| *b = b.min(d)).or_insert(d);
        }
        let mut out: Vec<Retrieved> = best
            .into_iter()
            .map(|(doc, d)| Retrieved {
                doc_id: self.docs[doc].id.clone(),
                score: 1.0 - f64::from(d),
            })
            .collect();
        super::sort_trec(&mut out);
        out.truncate(self.config.list_limit);
        Ok(out)
    }

    fn embed_queries(&self, texts: &[&str]) -> anyhow::Result<Vec<Vec<f32>>> {
        let formatted: Vec<String> = texts
            .iter()
            .map(|t| format_query_for_embedding(t))
            .collect();
        let refs: Vec<&str> = formatted.iter().map(String::as_str).collect();
        let v = self.embedder.embed(&refs)?;
        if v.len() != texts.len() {
            bail!(
                "the embedder returned {} vectors for {} queries",
                v.len(),
                texts.len()
            );
        }
        Ok(v)
    }

    /// Run one query through every stage. `expander`: QMD's expansion model (none: the
    /// `hybrid+expansion` stage equals `hybrid`); `reranker`: the `full` stage.
    pub fn search(
        &self,
        query: &str,
        expander: Option<&dyn QueryExpander>,
        reranker: Option<&dyn Scorer>,
    ) -> anyhow::Result<QmdAnswer> {
        let cfg = &self.config;
        let mut answer = QmdAnswer::default();
        // Step 1: the BM25 probe.
        let fts = self.search_fts(query)?;
        let top = fts.first().map_or(0.0, |r| r.score);
        let second = fts.get(1).map_or(0.0, |r| r.score);
        answer.strong_signal = !fts.is_empty()
            && top >= cfg.strong_signal_min_score
            && top - second >= cfg.strong_signal_min_gap;
        // Step 2: expansions (store.ts drops those equal to the query).
        if !answer.strong_signal
            && let Some(e) = expander
        {
            answer.expansions = e
                .expand(query)?
                .into_iter()
                .filter(|q| q.query != query)
                .collect();
        }
        // Step 3: route. FTS lists first (original, then lex), then vector lists.
        let mut lists: Vec<(Vec<Retrieved>, ListSource)> = Vec::new();
        let src = |source, query_type, q: &str, weight| ListSource {
            source,
            query_type,
            query: q.to_string(),
            weight,
        };
        if !fts.is_empty() {
            lists.push((
                fts.clone(),
                src("fts", "original", query, cfg.original_weight),
            ));
        }
        for q in answer
            .expansions
            .iter()
            .filter(|q| q.kind == QueryType::Lex)
        {
            let hits = self.search_fts(&q.query)?;
            if !hits.is_empty() {
                lists.push((hits, src("fts", "lex", &q.query, 1.0)));
            }
        }
        let mut vec_queries: Vec<(&str, &'static str)> = vec![(query, "original")];
        for q in &answer.expansions {
            match q.kind {
                QueryType::Vec => vec_queries.push((&q.query, "vec")),
                QueryType::Hyde => vec_queries.push((&q.query, "hyde")),
                QueryType::Lex => {}
            }
        }
        let texts: Vec<&str> = vec_queries.iter().map(|q| q.0).collect();
        let vectors = if self.chunk_doc.is_empty() {
            Vec::new()
        } else {
            self.embed_queries(&texts)?
        };
        let mut original_vec = Vec::new();
        for (&(text, kind), v) in vec_queries.iter().zip(&vectors) {
            let hits = self.search_vec(v)?;
            if kind == "original" {
                original_vec = hits.clone();
            }
            if !hits.is_empty() {
                let w = if kind == "original" {
                    cfg.original_weight
                } else {
                    1.0
                };
                lists.push((hits, src("vec", kind, text, w)));
            }
        }
        // `hybrid`: the original query's two lists only.
        let base: Vec<(&[Retrieved], f64)> = [&fts, &original_vec]
            .into_iter()
            .filter(|l| !l.is_empty())
            .map(|l| (l.as_slice(), cfg.original_weight))
            .collect();
        answer.hybrid = fuse_ranked_lists(&base, cfg.rrf_k, true);
        answer.hybrid.truncate(cfg.candidate_limit);
        // Step 4: RRF over every list.
        let weighted: Vec<(&[Retrieved], f64)> = lists
            .iter()
            .map(|(l, s)| (l.as_slice(), s.weight))
            .collect();
        let mut candidates = fuse_ranked_lists(&weighted, cfg.rrf_k, true);
        candidates.truncate(cfg.candidate_limit);
        answer.lists = lists.into_iter().map(|(_, s)| s).collect();
        answer.bm25 = fts;
        answer.vector = original_vec;
        // Steps 5-7: best chunk, rerank, blend.
        if let Some(r) = reranker {
            let (full, reranked) = self.rerank(query, &candidates, r)?;
            answer.full = Some(full);
            answer.reranked = reranked;
        }
        answer.hybrid_expansion = candidates;
        Ok(answer)
    }

    #[allow(clippy::type_complexity)]
    fn rerank(
        &self,
        query: &str,
        candidates: &[Retrieved],
        scorer: &dyn Scorer,
    ) -> anyhow::Result<(Vec<Retrieved>, Vec<(String, String, f64)>)> {
        let terms = rerank_terms(query);
        let mut sent: Vec<(usize, String)> = Vec::new(); // (candidate index, chunk text)
        for (i, c) in candidates.iter().enumerate() {
            let doc = self.by_id[&c.doc_id];
            if let Some(chunk) = best_chunk(&self.docs[doc].rerank_chunks, &terms) {
                sent.push((i, chunk.text.clone()));
            }
        }
        // Each distinct chunk text is scored once (QMD caches by chunk text).
        let mut unique: Vec<&str> = Vec::new();
        let mut unique_ids: Vec<&str> = Vec::new();
        let mut seen = HashMap::new();
        for (i, t) in &sent {
            if !seen.contains_key(t.as_str()) {
                seen.insert(t.as_str(), unique.len());
                unique.push(t.as_str());
                unique_ids.push(candidates[*i].doc_id.as_str());
            }
        }
        let scores = if unique.is_empty() {
            Vec::new()
        } else {
            scorer.score_documents(query, &unique_ids, &unique)?
        };
        if scores.len() != unique.len() {
            bail!(
                "the reranker returned {} scores for {} documents",
                scores.len(),
                unique.len()
            );
        }
        if let Some(s) = scores.iter().find(|s| !s.is_finite()) {
            bail!("the reranker returned a non-finite score ({s}) for query {query:?}");
        }
        // `rerank()` returns documents sorted by score (stable), then the blend is sorted again.
        let mut reranked: Vec<(usize, f64, &str)> = sent
            .iter()
            .map(|(i, t)| (*i, f64::from(scores[seen[t.as_str()]]), t.as_str()))
            .collect();
        reranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        let mut blended: Vec<Retrieved> = reranked
            .iter()
            .map(|&(i, s, _)| Retrieved {
                doc_id: candidates[i].doc_id.clone(),
                score: blend(i + 1, s),
            })
            .collect();
        blended.sort_by(|a, b| b.score.total_cmp(&a.score));
        let detail = reranked
            .iter()
            .map(|&(i, s, t)| (candidates[i].doc_id.clone(), t.to_string(), s))
            .collect();
        Ok((blended, detail))
    }

    /// Run every query (`(id, text)`) and collect one TREC run per stage ([`STAGES`]; `full`
    /// only with a reranker). Queries with an empty list are absent from that run.
    pub fn run_stages(
        &self,
        queries: &[(String, String)],
        expander: Option<&dyn QueryExpander>,
        reranker: Option<&dyn Scorer>,
        tag_prefix: &str,
    ) -> anyhow::Result<StageRuns> {
        let mut runs: BTreeMap<String, Run> = STAGES
            .iter()
            .filter(|s| **s != "full" || reranker.is_some())
            .map(|s| {
                (
                    s.to_string(),
                    Run {
                        tag: format!("{tag_prefix}{s}"),
                        ..Default::default()
                    },
                )
            })
            .collect();
        let bar = indicatif::ProgressBar::new(queries.len() as u64);
        let mut answers = BTreeMap::new();
        for (qid, text) in queries {
            let a = self
                .search(text, expander, reranker)
                .with_context(|| format!("query {qid} ({text:?})"))?;
            for (stage, run) in runs.iter_mut() {
                if let Some(list) = a.stage(stage).filter(|l| !l.is_empty()) {
                    run.results.insert(qid.clone(), list.to_vec());
                }
            }
            answers.insert(qid.clone(), a);
            bar.inc(1);
        }
        bar.finish_and_clear();
        Ok(StageRuns { runs, answers })
    }
}

/// One run per stage, and every query's full answer.
#[derive(Clone, Debug, Default)]
pub struct StageRuns {
    /// Stage name → run.
    pub runs: BTreeMap<String, Run>,
    pub answers: BTreeMap<String, QmdAnswer>,
}

impl StageRuns {
    /// Write `<dir>/<stage>.run` for each stage and `<dir>/answers.jsonl` (expansions, lists,
    /// reranked chunks per query). Returns the run paths.
    pub fn write(&self, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut paths = Vec::new();
        for (stage, run) in &self.runs {
            let p = dir.join(format!("{stage}.run"));
            run.write(&p)
                .with_context(|| format!("writing {}", p.display()))?;
            paths.push(p);
        }
        let mut lines = String::new();
        for (qid, a) in &self.answers {
            let v = serde_json::json!({ "qid": qid, "strong_signal": a.strong_signal, "expansions": a.expansions, "lists": a.lists,
                "reranked": a.reranked.iter().map(|(d, t, s)| serde_json::json!({"doc": d, "chunk": t, "score": s})).collect::<Vec<_>>() });
            lines.push_str(&serde_json::to_string(&v)?);
            lines.push('\n');
        }
        let p = dir.join("answers.jsonl");
        std::fs::write(&p, lines).with_context(|| format!("writing {}", p.display()))?;
        Ok(paths)
    }
}

/// A sentence encoder as QMD's embedder: texts embedded as given (the pipeline adds QMD's
/// formats), tokens counted with its tokenizer without special tokens or truncation. The encoder
/// still truncates what it embeds at its own limit (all-MiniLM-L6-v2: 256 tokens; EmbeddingGemma
/// reads 2048, as QMD does).
#[cfg(feature = "models")]
pub struct EncoderEmbedder<E> {
    pub encoder: E,
    counter: tokenizers::Tokenizer,
    pub batch_size: usize,
}

/// A BERT-family encoder (all-MiniLM-L6-v2) in the pipeline.
#[cfg(feature = "models")]
pub type BertEmbedder = EncoderEmbedder<crate::model::bert::SentenceEncoder>;
/// QMD's own embedder, EmbeddingGemma (a sentence-transformers folder or QMD's GGUF), in the pipeline.
#[cfg(feature = "models")]
pub type GemmaEmbedder = EncoderEmbedder<crate::model::gemma::GemmaEncoder>;

/// What [`EncoderEmbedder`] needs of an encoder: its tokenizer and prompt-free embedding.
#[cfg(feature = "models")]
pub trait SentenceEncoding {
    fn tokenizer(&self) -> &tokenizers::Tokenizer;
    fn embed_texts(&self, texts: &[&str], batch_size: usize) -> anyhow::Result<Vec<Vec<f32>>>;
}

#[cfg(feature = "models")]
impl SentenceEncoding for crate::model::bert::SentenceEncoder {
    fn tokenizer(&self) -> &tokenizers::Tokenizer {
        self.tokenizer.inner()
    }
    fn embed_texts(&self, texts: &[&str], batch_size: usize) -> anyhow::Result<Vec<Vec<f32>>> {
        Ok(self.embed_with_prompt(texts, None, batch_size)?)
    }
}

#[cfg(feature = "models")]
impl SentenceEncoding for crate::model::gemma::GemmaEncoder {
    fn tokenizer(&self) -> &tokenizers::Tokenizer {
        self.tokenizer.inner()
    }
    fn embed_texts(&self, texts: &[&str], batch_size: usize) -> anyhow::Result<Vec<Vec<f32>>> {
        Ok(self.embed_with_prompt(texts, None, batch_size)?)
    }
}

#[cfg(feature = "models")]
impl<E: SentenceEncoding> EncoderEmbedder<E> {
    pub fn new(encoder: E) -> Self {
        let mut counter = encoder.tokenizer().clone();
        counter.with_truncation(None).ok();
        counter.with_padding(None);
        Self {
            encoder,
            counter,
            batch_size: 32,
        }
    }
}

#[cfg(feature = "models")]
impl<E: SentenceEncoding> Embedder for EncoderEmbedder<E> {
    fn embed(&self, texts: &[&str]) -> anyhow::Result<Vec<Vec<f32>>> {
        self.encoder.embed_texts(texts, self.batch_size)
    }
    fn count_tokens(&self, text: &str) -> anyhow::Result<usize> {
        Ok(self
            .counter
            .encode(text, false)
            .map_err(|e| anyhow::anyhow!("tokenizing: {e}"))?
            .len())
    }
}

/// The pipeline's embedder for `--model`: QMD's EmbeddingGemma from the GGUF QMD downloaded or
/// from a sentence-transformers folder (`model_type` gemma3), else a BERT-family folder.
#[cfg(feature = "models")]
pub fn load_embedder(model: &Path, device: &burn::tensor::Device) -> anyhow::Result<Box<dyn Embedder>> {
    use crate::model::gemma::{GemmaEncoder, is_gemma_folder};
    let context = || format!("loading {}", model.display());
    Ok(if crate::model::gemma_gguf::is_gguf(model) {
        Box::new(GemmaEmbedder::new(GemmaEncoder::load_gguf(model, false, device).with_context(context)?))
    } else if is_gemma_folder(model) {
        Box::new(GemmaEmbedder::new(GemmaEncoder::load(model, device).with_context(context)?))
    } else {
        Box::new(BertEmbedder::new(crate::model::bert::SentenceEncoder::load(model, device).with_context(context)?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(id: &str, text: &str) -> Document {
        Document {
            id: id.into(),
            title: String::new(),
            text: text.into(),
            governance: Default::default(),
        }
    }

    /// A deterministic embedder: hashed bag of lower-cased words (16 dims); one token per word.
    fn bow() -> Box<dyn Embedder> {
        Box::new(FnEmbedder::new(
            |texts: &[&str]| {
                Ok(texts
                    .iter()
                    .map(|t| {
                        let mut v = vec![0f32; 16];
                        // Skip QMD's format prefixes so they do not dominate.
                        let body = t.rsplit(['|', ':']).next().unwrap_or(t);
                        for w in body.split_whitespace() {
                            let h = w
                                .to_lowercase()
                                .bytes()
                                .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
                            v[(h % 16) as usize] += 1.0;
                        }
                        v
                    })
                    .collect())
            },
            |t: &str| Ok(t.split_whitespace().count()),
        ))
    }

    /// Scores documents by how often "gold" occurs, capped at 1.
    struct FakeScorer;
    impl Scorer for FakeScorer {
        fn score(&self, _query: &str, docs: &[&str]) -> anyhow::Result<Vec<f32>> {
            Ok(docs
                .iter()
                .map(|d| (d.matches("gold").count() as f32 / 4.0).min(1.0))
                .collect())
        }
    }

    #[test]
    fn expansion_parsing_matches_llm_ts() {
        // Lines without a colon or with an unknown type are dropped; types are trimmed; lines
        // without a query term are dropped (terms: "api", "v2" after replacing "-").
        let out = " lex : api-v2 docs\nvec: the API in version two\nhyde: nothing relevant\nsummary: api\nno colon api";
        let e = parse_expansion_output("API-v2", out);
        assert_eq!(
            e,
            [
                ExpandedQuery {
                    kind: QueryType::Lex,
                    query: "api-v2 docs".into()
                },
                ExpandedQuery {
                    kind: QueryType::Vec,
                    query: "the API in version two".into()
                }
            ]
        );
        // No terms in the query (only punctuation / non-ASCII) → every typed line is kept.
        assert_eq!(parse_expansion_output("東京?", "vec: tokyo").len(), 1);
        // Fallback when nothing parses.
        let f = parse_expansion_output("q1 x", "garbage");
        assert_eq!(
            f.iter()
                .map(|q| (q.kind, q.query.as_str()))
                .collect::<Vec<_>>(),
            [
                (QueryType::Hyde, "Information about q1 x"),
                (QueryType::Lex, "q1 x"),
                (QueryType::Vec, "q1 x")
            ]
        );
    }

    #[test]
    fn blend_weights_by_rank() {
        // The three bands, at their edges (store.ts hybridQuery step 7).
        for (rank, w) in [
            (1, 0.75),
            (3, 0.75),
            (4, 0.6),
            (10, 0.6),
            (11, 0.4),
            (40, 0.4),
        ] {
            let got = blend(rank, 0.3);
            assert!(
                (got - (w / rank as f64 + (1.0 - w) * 0.3)).abs() < 1e-15,
                "{rank}"
            );
        }
        assert_eq!(fts_score(-4.0), 0.8);
        assert_eq!(fts_score(4.0), 0.8);
    }

    fn corpus() -> Vec<Document> {
        vec![
            doc("a", "# Alpha\nred apples and green pears"),
            doc("b", "# Beta\nred wine and cheese. gold gold gold gold"),
            doc("c", "## Gamma\nblue sky over green hills. gold"),
            doc("d", "Delta text about apples pie recipes"),
            doc("e", "   "),
        ]
    }

    #[test]
    fn stages_route_and_fuse_as_qmd() {
        let p = QmdPipeline::build(&corpus(), bow(), QmdConfig::default()).unwrap();
        assert_eq!(p.title("a"), Some("Alpha"));
        assert_eq!(p.title("c"), Some("Gamma"));
        assert_eq!(p.title("d"), Some("d"));
        assert_eq!(p.n_chunks(), 4, "blank documents are not embedded");
        let exp = vec![
            ExpandedQuery {
                kind: QueryType::Lex,
                query: "cheese".into(),
            },
            ExpandedQuery {
                kind: QueryType::Vec,
                query: "blue sky".into(),
            },
            ExpandedQuery {
                kind: QueryType::Lex,
                query: "apples".into(),
            }, // the query itself: dropped
        ];
        let a = p.search("apples", Some(&exp), Some(&FakeScorer)).unwrap();
        // BM25 matches a and d; neither is a strong signal with two close hits.
        assert_eq!(
            a.bm25
                .iter()
                .map(|r| r.doc_id.as_str())
                .collect::<Vec<_>>()
                .len(),
            2
        );
        assert!(!a.strong_signal);
        assert_eq!(a.expansions.len(), 2);
        // Lists: original fts, lex "cheese" fts, original vec, vec "blue sky".
        let kinds: Vec<_> = a
            .lists
            .iter()
            .map(|l| (l.source, l.query_type, l.weight))
            .collect();
        assert_eq!(
            kinds,
            [
                ("fts", "original", 2.0),
                ("fts", "lex", 1.0),
                ("vec", "original", 2.0),
                ("vec", "vec", 1.0)
            ]
        );
        // The fused list is fuse_ranked_lists of exactly those lists.
        let fts_cheese = p.search_fts("cheese").unwrap();
        let v = p.embed_queries(&["apples", "blue sky"]).unwrap();
        let (v0, v1) = (p.search_vec(&v[0]).unwrap(), p.search_vec(&v[1]).unwrap());
        assert_eq!(v0, a.vector);
        let want = fuse_ranked_lists(
            &[(&a.bm25, 2.0), (&fts_cheese, 1.0), (&v0, 2.0), (&v1, 1.0)],
            60.0,
            true,
        );
        assert_eq!(a.hybrid_expansion, want);
        let hybrid = fuse_ranked_lists(&[(&a.bm25, 2.0), (&v0, 2.0)], 60.0, true);
        assert_eq!(a.hybrid, hybrid);
        // Full: every candidate blended with its fused rank.
        let full = a.full.as_ref().unwrap();
        assert_eq!(full.len(), a.hybrid_expansion.len());
        for r in full {
            let rank = a
                .hybrid_expansion
                .iter()
                .position(|c| c.doc_id == r.doc_id)
                .unwrap()
                + 1;
            let text = &corpus()
                .into_iter()
                .find(|d| d.id == r.doc_id)
                .unwrap()
                .text;
            let p_yes = f64::from((text.matches("gold").count() as f32 / 4.0).min(1.0));
            assert!((r.score - blend(rank, p_yes)).abs() < 1e-12, "{}", r.doc_id);
        }
        assert!(full.windows(2).all(|w| w[0].score >= w[1].score));
    }

    #[test]
    fn vector_search_keeps_the_best_chunk_per_document() {
        // Chunks of 5 tokens: document "long" has many chunks; only its best counts, once.
        let cfg = QmdConfig {
            chunk_tokens: 5,
            chunk_overlap_tokens: 1,
            chunk_window_tokens: 2,
            list_limit: 3,
            ..QmdConfig::default()
        };
        let docs = vec![
            doc("long", &"zebra lion tiger\n".repeat(20)),
            doc("short", "zebra"),
            doc("other", "pears"),
        ];
        let p = QmdPipeline::build(&docs, bow(), cfg).unwrap();
        assert!(p.n_chunks() > 5);
        let q = p.embed_queries(&["zebra"]).unwrap();
        let hits = p.search_vec(&q[0]).unwrap();
        let ids: Vec<_> = hits.iter().map(|r| r.doc_id.as_str()).collect();
        assert_eq!(ids.iter().filter(|&&d| d == "long").count(), 1);
        assert_eq!(ids[0], "short"); // exactly the query's words: cosine 1
        assert!((hits[0].score - 1.0).abs() < 1e-6);
    }

    #[test]
    fn strong_signal_skips_expansion() {
        struct Panics;
        impl QueryExpander for Panics {
            fn expand(&self, _: &str) -> anyhow::Result<Vec<ExpandedQuery>> {
                bail!("expander called")
            }
        }
        assert_eq!(
            (
                QmdConfig::default().strong_signal_min_score,
                QmdConfig::default().strong_signal_min_gap
            ),
            (0.85, 0.15)
        );
        let docs = vec![
            doc("x", "# Quasar\nquasar quasar"),
            doc("x2", "# Quasar\nquasar quasar"),
            doc("y", "plain"),
        ];
        let cfg = |min_score, min_gap| QmdConfig {
            strong_signal_min_score: min_score,
            strong_signal_min_gap: min_gap,
            ..QmdConfig::default()
        };
        // A single decisive hit ("plain": one document) with thresholds it meets: no expansion.
        let p = QmdPipeline::build(&docs, bow(), cfg(0.0, 0.0)).unwrap();
        let a = p.search("plain", Some(&Panics), None).unwrap();
        assert!(a.strong_signal && a.expansions.is_empty());
        // Two equally good hits: the gap (0) is below 0.15, so the expander runs.
        let p = QmdPipeline::build(&docs, bow(), cfg(0.0, 0.15)).unwrap();
        assert!(
            format!("{:#}", p.search("quasar", Some(&Panics), None).unwrap_err())
                .contains("expander called")
        );
        // A top score below the minimum: the expander runs.
        let p = QmdPipeline::build(&docs, bow(), cfg(0.9999, 0.0)).unwrap();
        assert!(p.search("plain", Some(&Panics), None).is_err());
        // No BM25 hit at all is never a strong signal.
        let p = QmdPipeline::build(&docs, bow(), cfg(0.0, 0.0)).unwrap();
        assert!(p.search("absent", Some(&Panics), None).is_err());
    }

    #[test]
    fn precomputed_expansions_read_both_formats_and_name_lines() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("e.jsonl");
        std::fs::write(
            &f,
            "{\"query\":\"red apples\",\"text\":\"lex: apples\\nvec: red apples in autumn\"}\n\n{\"query\":\"q2\",\"expansions\":[{\"type\":\"hyde\",\"query\":\"a q2 passage\"}]}\n",
        )
        .unwrap();
        let e = PrecomputedExpansions::read(&f).unwrap();
        assert_eq!(e.expand("red apples").unwrap().len(), 2);
        assert_eq!(e.expand("q2").unwrap()[0].kind, QueryType::Hyde);
        let err = e.expand("missing").unwrap_err().to_string();
        assert!(err.contains("e.jsonl") && err.contains("missing"), "{err}");
        std::fs::write(
            &f,
            "{\"query\":\"x\",\"text\":\"lex: x\"}\n{\"query\": 3}\n",
        )
        .unwrap();
        let err = format!("{:#}", PrecomputedExpansions::read(&f).unwrap_err());
        assert!(err.contains("e.jsonl:2"), "{err}");
    }

    #[test]
    fn stage_runs_are_written_per_stage() {
        let p = QmdPipeline::build(&corpus(), bow(), QmdConfig::default()).unwrap();
        let queries = vec![
            ("q1".to_string(), "apples".to_string()),
            ("q2".to_string(), "gold".to_string()),
        ];
        let runs = p
            .run_stages(&queries, None, Some(&FakeScorer), "qmd-")
            .unwrap();
        assert_eq!(
            runs.runs.keys().map(String::as_str).collect::<Vec<_>>(),
            ["bm25", "full", "hybrid", "hybrid+expansion", "vector"]
        );
        // Without an expander the expansion stage is the plain hybrid.
        assert_eq!(
            runs.runs["hybrid"].results,
            runs.runs["hybrid+expansion"].results
        );
        let dir = tempfile::tempdir().unwrap();
        let paths = p
            .run_stages(&queries, None, None, "")
            .unwrap()
            .write(dir.path())
            .unwrap();
        assert_eq!(paths.len(), 4);
        let back = Run::read(dir.path().join("bm25.run")).unwrap();
        assert_eq!(
            back.results["q1"].len(),
            runs.runs["bm25"].results["q1"].len()
        );
    }
}

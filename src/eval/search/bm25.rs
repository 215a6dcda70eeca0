//! BM25 over a corpus through SQLite FTS5, the way QMD's lexical search does it.
//!
//! Matched against tobi/qmd `src/store.ts` (commit dbfd0b47): the `documents_fts` table is
//! `fts5(filepath, title, body, tokenize='porter unicode61')`, CJK runs are spaced out one
//! character per token before indexing (`normalizeCjkForFTS`), the user query becomes an FTS5
//! MATCH expression through `buildFTS5Query` (ported as [`fts5_query`]), and results are ranked by
//! `bm25(documents_fts, 1.5, 4.0, 1.0)` ascending (`searchFTS`). SQLite's FTS5 fixes k1 = 1.2 and
//! b = 0.75.
//!
//! Differences from QMD, on purpose:
//! * the score in the run is `-bm25()` (higher is better, as trec_eval expects) rather than QMD's
//!   display transform `|x| / (1 + |x|)`; both are monotonic, so the ranking is the same;
//! * ties are ordered by document id descending (trec_eval's order), not left to SQLite;
//! * the `filepath` column holds our document id (QMD: `collection/path`; for a markdown-folder
//!   corpus the id is the relative path, so this is the same text). Switch it off with
//!   [`Bm25Config::index_doc_id`].
//!
//! QMD joins every query term with AND ([`QueryMode::QmdLex`], the default), so long
//! natural-language queries often match nothing. [`QueryMode::AnyTerm`] joins the same sanitized
//! terms with OR, the classic bag-of-words BM25 baseline.

use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use rusqlite::{Connection, OpenFlags, params};

use super::SearchError;
use crate::data::corpus::Document;
use crate::data::trec::{Retrieved, Run};

/// How the user query becomes an FTS5 MATCH expression.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueryMode {
    /// QMD's `buildFTS5Query`: prefix terms, phrases, hyphen/dot handling, negation, all ANDed.
    #[default]
    QmdLex,
    /// The same sanitized terms, ORed (negations still exclude).
    AnyTerm,
}

/// Index and ranking settings. `Default` is QMD's.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Bm25Config {
    /// `bm25()` column weights for (document id / path, title, body). QMD: 1.5, 4.0, 1.0.
    pub weights: [f64; 3],
    /// The FTS5 `tokenize` option. QMD: `porter unicode61`.
    pub tokenizer: String,
    /// Index the document id as the `filepath` column (QMD indexes `collection/path`).
    pub index_doc_id: bool,
    pub query_mode: QueryMode,
}

impl Default for Bm25Config {
    fn default() -> Self {
        Self {
            weights: [1.5, 4.0, 1.0],
            tokenizer: "porter unicode61".into(),
            index_doc_id: true,
            query_mode: QueryMode::QmdLex,
        }
    }
}

/// A BM25 index: an SQLite database (in memory or in a file) holding an FTS5 table.
pub struct Bm25Index {
    conn: Connection,
    config: Bm25Config,
}

impl Bm25Index {
    /// Index `docs` in an in-memory database.
    pub fn in_memory(docs: &[Document], config: &Bm25Config) -> Result<Self, SearchError> {
        let conn =
            Connection::open_in_memory().map_err(SearchError::sqlite("opening memory db"))?;
        let mut index = Self { conn, config: config.clone() };
        index.build(docs)?;
        Ok(index)
    }

    /// Index `docs` into a new database file at `path`. Refuses to touch an existing file; a
    /// file left half-built by an error is removed.
    pub fn create(
        path: &Path,
        docs: &[Document],
        config: &Bm25Config,
    ) -> Result<Self, SearchError> {
        if path.exists() {
            return Err(SearchError::IndexExists(path.to_path_buf()));
        }
        let built = Connection::open(path)
            .map_err(SearchError::sqlite(format!("creating {}", path.display())))
            .and_then(|conn| {
                let mut index = Self { conn, config: config.clone() };
                index.build(docs).map(|_| index)
            });
        if built.is_err() {
            let _ = std::fs::remove_file(path);
        }
        built
    }

    /// Open an index built by [`Bm25Index::create`], read-only. `config` supplies the query-time
    /// settings (weights, query mode); the tokenizer is the one the index was built with.
    pub fn open(path: &Path, config: &Bm25Config) -> Result<Self, SearchError> {
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(SearchError::sqlite(format!("opening {}", path.display())))?;
        let has_table: bool = conn
            .query_row("SELECT count(*) FROM sqlite_master WHERE name = 'docs_fts'", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n > 0)
            .unwrap_or(false);
        if !has_table {
            return Err(SearchError::NotAnIndex(PathBuf::from(path)));
        }
        Ok(Self { conn, config: config.clone() })
    }

    fn build(&mut self, docs: &[Document]) -> Result<(), SearchError> {
        // The tokenizer string lands inside an SQL literal: double its quotes.
        let tokenizer = self.config.tokenizer.replace('\'', "''");
        self.conn
            .execute_batch(&format!(
                "CREATE TABLE docs (rowid INTEGER PRIMARY KEY, doc_id TEXT NOT NULL UNIQUE);
                 CREATE VIRTUAL TABLE docs_fts USING fts5(filepath, title, body, tokenize = '{tokenizer}');"
            ))
            .map_err(SearchError::sqlite("creating the FTS5 table"))?;
        let progress = progress_bar(docs.len() as u64, "indexing");
        let tx = self.conn.transaction().map_err(SearchError::sqlite("starting a transaction"))?;
        {
            let mut ins_doc = tx
                .prepare("INSERT INTO docs (rowid, doc_id) VALUES (?1, ?2)")
                .map_err(SearchError::sqlite("preparing insert"))?;
            let mut ins_fts = tx
                .prepare(
                    "INSERT INTO docs_fts (rowid, filepath, title, body) VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(SearchError::sqlite("preparing insert"))?;
            for (i, d) in docs.iter().enumerate() {
                let rowid = i as i64 + 1;
                ins_doc.execute(params![rowid, d.id]).map_err(|e| match e {
                    rusqlite::Error::SqliteFailure(f, _)
                        if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                    {
                        SearchError::DuplicateDocId(d.id.clone())
                    }
                    e => {
                        SearchError::Sqlite { context: format!("inserting '{}'", d.id), source: e }
                    }
                })?;
                let path =
                    if self.config.index_doc_id { normalize_cjk(&d.id) } else { String::new() };
                ins_fts
                    .execute(params![rowid, path, normalize_cjk(&d.title), normalize_cjk(&d.text)])
                    .map_err(SearchError::sqlite(format!("indexing '{}'", d.id)))?;
                progress.inc(1);
            }
        }
        tx.commit().map_err(SearchError::sqlite("committing the index"))?;
        progress.finish_and_clear();
        Ok(())
    }

    /// Number of indexed documents.
    pub fn len(&self) -> Result<usize, SearchError> {
        self.conn
            .query_row("SELECT count(*) FROM docs", [], |r| r.get::<_, i64>(0))
            .map(|n| n as usize)
            .map_err(SearchError::sqlite("counting documents"))
    }

    /// Whether the index holds no documents.
    pub fn is_empty(&self) -> Result<bool, SearchError> {
        self.len().map(|n| n == 0)
    }

    /// The top `k` documents for one query, score `-bm25()`, in trec_eval's order. A query with
    /// no searchable term (only punctuation, only negations) returns nothing.
    pub fn search(&self, query: &str, k: usize) -> Result<Vec<Retrieved>, SearchError> {
        let Some(expr) = build_query(query, self.config.query_mode) else {
            return Ok(Vec::new());
        };
        let [w0, w1, w2] = self.config.weights;
        // The CTE makes FTS5 run first (as QMD does); ties are ordered by doc id descending so
        // the LIMIT cut is deterministic and agrees with trec_eval's order.
        let sql = format!(
            "WITH m AS (SELECT rowid, bm25(docs_fts, {w0:?}, {w1:?}, {w2:?}) AS s \
                        FROM docs_fts WHERE docs_fts MATCH ?1) \
             SELECT d.doc_id, m.s FROM m JOIN docs d ON d.rowid = m.rowid \
             ORDER BY m.s ASC, d.doc_id DESC LIMIT ?2"
        );
        let mut stmt =
            self.conn.prepare_cached(&sql).map_err(SearchError::sqlite("preparing the search"))?;
        let rows = stmt
            .query_map(params![expr, k as i64], |r| {
                // `+ 0.0` turns -0.0 into 0.0 so equal scores stay equal under total_cmp.
                Ok(Retrieved { doc_id: r.get(0)?, score: -r.get::<_, f64>(1)? + 0.0 })
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(SearchError::sqlite(format!("searching {query:?} (MATCH {expr})")))?;
        Ok(rows)
    }

    /// Search every `(query id, query text)` and collect a run tagged `tag`. Queries without
    /// results are absent from the run, as they would be from a run file.
    pub fn run(
        &self,
        queries: &[(String, String)],
        k: usize,
        tag: &str,
    ) -> Result<Run, SearchError> {
        let progress = progress_bar(queries.len() as u64, "bm25");
        let mut run = Run { tag: tag.to_string(), ..Default::default() };
        for (qid, text) in queries {
            let hits = self.search(text, k)?;
            if !hits.is_empty() {
                run.results.insert(qid.clone(), hits);
            }
            progress.inc(1);
        }
        progress.finish_and_clear();
        Ok(run)
    }
}

fn progress_bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} ({eta})") {
        bar.set_style(style);
    }
    bar.set_message(what.to_string());
    bar
}

/// CJK scripts (Han, Hiragana, Katakana, Hangul) by code-point block; QMD's
/// `CJK_CHAR_PATTERN` uses the Unicode Script property, which these blocks cover except for a
/// few scattered symbols.
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x1100..=0x11FF | 0x2E80..=0x2FDF | 0x3005 | 0x3007 | 0x3021..=0x3029 | 0x3038..=0x303B
        | 0x3041..=0x309F | 0x30A1..=0x30FF | 0x3130..=0x318F | 0x31F0..=0x31FF
        | 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xA960..=0xA97F | 0xAC00..=0xD7FF
        | 0xF900..=0xFAFF | 0xFF66..=0xFF9F | 0xFFA0..=0xFFDC | 0x20000..=0x3134F)
}

/// QMD's `normalizeCjkForFTS`: every CJK run becomes ` c1 c2 ... ` so unicode61 indexes each
/// character as a token.
pub fn normalize_cjk(text: &str) -> String {
    if !text.chars().any(is_cjk) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() * 2);
    let mut in_run = false;
    for c in text.chars() {
        if is_cjk(c) {
            out.push(' ');
            out.push(c);
            in_run = true;
        } else {
            if in_run {
                out.push(' ');
                in_run = false;
            }
            out.push(c);
        }
    }
    if in_run {
        out.push(' ');
    }
    out
}

fn is_word(c: char) -> bool {
    c.is_alphabetic() || c.is_numeric()
}

/// QMD's `sanitizeFTS5Term`: keep letters, digits, `'` and `_`; lowercase. (Rust's
/// `is_alphabetic` is Unicode Alphabetic, a superset of JS `\p{L}` by a few combining marks.)
fn sanitize_term(term: &str) -> String {
    term.chars().filter(|&c| is_word(c) || c == '\'' || c == '_').collect::<String>().to_lowercase()
}

/// QMD's `isHyphenatedToken`: `^[\p{L}\p{N}][\p{L}\p{N}'-]*-[\p{L}\p{N}][\p{L}\p{N}'-]*$`.
fn is_hyphenated(token: &str) -> bool {
    let chars: Vec<char> = token.chars().collect();
    let Some(&first) = chars.first() else { return false };
    is_word(first)
        && chars.iter().all(|&c| is_word(c) || c == '\'' || c == '-')
        && (1..chars.len().saturating_sub(1)).any(|i| chars[i] == '-' && is_word(chars[i + 1]))
}

/// QMD's `isDottedToken`: at least two non-empty dot-separated parts of `[\p{L}\p{N}_]`.
fn is_dotted(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() >= 2
        && parts.iter().all(|p| !p.is_empty() && p.chars().all(|c| is_word(c) || c == '_'))
}

/// QMD's `sanitizeFTS5Phrase`.
fn sanitize_phrase(phrase: &str) -> String {
    normalize_cjk(phrase)
        .split_whitespace()
        .flat_map(|t| {
            if is_dotted(t) {
                t.split('.').map(sanitize_term).filter(|p| !p.is_empty()).collect::<Vec<_>>()
            } else {
                let s = sanitize_term(t);
                if s.is_empty() { vec![] } else { vec![s] }
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The FTS5 MATCH expression QMD's `buildFTS5Query` makes of a user query, or `None` when the
/// query has no positive term. Every term ends up inside double quotes after sanitizing, so no
/// user input can form FTS5 syntax: `"exact phrase"` stays a phrase, `-term` excludes,
/// `multi-agent` becomes the phrase `"multi agent"`, `2026.4.10` becomes
/// `"2026"* AND "4"* AND "10"*`, plain terms become prefix terms `"term"*`.
///
/// ```
/// use tunelab::eval::search::bm25::fts5_query;
/// assert_eq!(fts5_query("performance -sports").unwrap(), r#""performance"* NOT "sports"*"#);
/// assert_eq!(fts5_query("multi-agent memory").unwrap(), r#""multi agent" AND "memory"*"#);
/// assert_eq!(fts5_query("-only -negations"), None);
/// ```
pub fn fts5_query(query: &str) -> Option<String> {
    build_query(query, QueryMode::QmdLex)
}

fn build_query(query: &str, mode: QueryMode) -> Option<String> {
    let mut positive: Vec<String> = Vec::new();
    let mut negative: Vec<String> = Vec::new();
    let s: Vec<char> = query.trim().chars().collect();
    let n = s.len();
    let mut i = 0;
    while i < n {
        while i < n && s[i].is_whitespace() {
            i += 1;
        }
        if i >= n {
            break;
        }
        let negated = s[i] == '-';
        if negated {
            i += 1;
        }
        let target = if negated { &mut negative } else { &mut positive };
        if i < n && s[i] == '"' {
            i += 1;
            let start = i;
            while i < n && s[i] != '"' {
                i += 1;
            }
            let phrase: String = s[start..i.min(n)].iter().collect();
            i += 1; // closing quote
            let sanitized = sanitize_phrase(phrase.trim());
            if !sanitized.is_empty() {
                target.push(format!("\"{sanitized}\"")); // exact phrase, no prefix
            }
        } else {
            let start = i;
            while i < n && !(s[i].is_whitespace() || s[i] == '"') {
                i += 1;
            }
            let term: String = s[start..i].iter().collect();
            if is_hyphenated(&term) {
                let parts: Vec<String> =
                    term.split('-').map(sanitize_term).filter(|t| !t.is_empty()).collect();
                if !parts.is_empty() {
                    target.push(format!("\"{}\"", parts.join(" ")));
                }
            } else if is_dotted(&term) {
                let parts: Vec<String> = term
                    .split('.')
                    .map(sanitize_term)
                    .filter(|t| !t.is_empty())
                    .map(|t| format!("\"{t}\"*"))
                    .collect();
                if !parts.is_empty() {
                    if negated || mode == QueryMode::AnyTerm {
                        target.push(format!("({})", parts.join(" AND ")));
                    } else {
                        // QMD flattens the parts into the ANDed positive list.
                        target.extend(parts);
                    }
                }
            } else if term.chars().any(is_cjk) {
                let sanitized = sanitize_phrase(&term);
                if !sanitized.is_empty() {
                    target.push(format!("\"{sanitized}\""));
                }
            } else {
                let sanitized = sanitize_term(&term);
                if !sanitized.is_empty() {
                    target.push(format!("\"{sanitized}\"*")); // prefix match
                }
            }
        }
    }
    if positive.is_empty() {
        return None; // FTS5 NOT is binary: negations alone cannot search
    }
    let mut result = match mode {
        QueryMode::QmdLex => positive.join(" AND "),
        QueryMode::AnyTerm if positive.len() == 1 => positive.remove(0),
        // NOT binds tighter than OR in FTS5: parenthesise the disjunction.
        QueryMode::AnyTerm => format!("({})", positive.join(" OR ")),
    };
    for neg in negative {
        result = format!("{result} NOT {neg}");
    }
    Some(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(id: &str, title: &str, text: &str) -> Document {
        Document {
            id: id.into(),
            title: title.into(),
            text: text.into(),
            governance: Default::default(),
        }
    }

    #[test]
    fn query_translation_matches_qmd_docstring_examples() {
        // Expected strings are the examples in QMD's buildFTS5Query doc comment (src/store.ts).
        assert_eq!(fts5_query("performance -sports").unwrap(), r#""performance"* NOT "sports"*"#);
        assert_eq!(fts5_query(r#""machine learning""#).unwrap(), r#""machine learning""#);
        assert_eq!(fts5_query("multi-agent memory").unwrap(), r#""multi agent" AND "memory"*"#);
        assert_eq!(fts5_query("DEC-0054").unwrap(), r#""dec 0054""#);
        assert_eq!(fts5_query("-multi-agent"), None);
        assert_eq!(fts5_query("2026.4.10").unwrap(), r#""2026"* AND "4"* AND "10"*"#);
        assert_eq!(fts5_query("v1.2 -3.0").unwrap(), r#""v1"* AND "2"* NOT ("3"* AND "0"*)"#);
        assert_eq!(fts5_query("Don't PANIC!").unwrap(), r#""don't"* AND "panic"*"#);
        assert_eq!(fts5_query("東京 tower").unwrap(), r#""東 京" AND "tower"*"#);
        assert_eq!(fts5_query("  ?!  "), None);
    }

    #[test]
    fn any_term_mode_ors_terms() {
        assert_eq!(
            build_query("a b -c", QueryMode::AnyTerm).unwrap(),
            r#"("a"* OR "b"*) NOT "c"*"#
        );
        assert_eq!(build_query("solo", QueryMode::AnyTerm).unwrap(), r#""solo"*"#);
    }

    #[test]
    fn hostile_queries_never_raise_fts5_syntax_errors() {
        let docs =
            vec![doc("d1", "quotes", "a \"quoted\" word and NEAR stuff"), doc("d2", "", "x")];
        for mode in [QueryMode::QmdLex, QueryMode::AnyTerm] {
            let cfg = Bm25Config { query_mode: mode, ..Default::default() };
            let index = Bm25Index::in_memory(&docs, &cfg).unwrap();
            for q in [
                "\"unbalanced",
                "a OR b",
                "NEAR(x y)",
                "title:quotes",
                "*",
                "^start",
                "\"\"",
                "'",
                "'''",
                "AND",
                "OR NOT",
                "(",
                ")",
                "-",
                "--",
                "\"a\" \"b",
                "a\"b",
                "{x}",
                "x -",
                "-\"",
                "🙂",
                "東京",
                "a.b.",
                ".a",
                "a-",
                "-a-b",
                "col : x",
                "\\",
                "NOT quoted",
                "x:*",
            ] {
                index.search(q, 10).unwrap_or_else(|e| panic!("query {q:?} ({mode:?}): {e}"));
            }
            // Operators in the user query are plain words: "NEAR" matches the document text.
            assert_eq!(index.search("near", 10).unwrap()[0].doc_id, "d1");
        }
    }

    #[test]
    fn scores_equal_hand_computed_bm25() {
        // Five documents, id column off, weights (1.5, 4, 1). Token counts: d1 3, d2 2, d3 1, d4 1,
        // d5 3 -> N = 5, avgdl = 10/5 = 2. "cat" occurs in 2 rows: IDF = ln((5-2+0.5)/(2+0.5)) = ln 1.4.
        // d1: title hit, f = 4.0, |D| = 3: IDF * 4*2.2 / (4 + 1.2*(0.25 + 0.75*3/2)) = IDF * 8.8/5.65
        // d2: body hit,  f = 1.0, |D| = 2: IDF * 1*2.2 / (1 + 1.2*(0.25 + 0.75*2/2)) = IDF * 1
        let docs = vec![
            doc("d1", "cat", "dog dog"),
            doc("d2", "", "cat dog"),
            doc("d3", "", "fish"),
            doc("d4", "", "bird"),
            doc("d5", "", "fish bird bird"),
        ];
        let cfg = Bm25Config { index_doc_id: false, ..Default::default() };
        let index = Bm25Index::in_memory(&docs, &cfg).unwrap();
        assert_eq!(index.len().unwrap(), 5);
        let hits = index.search("cat", 10).unwrap();
        let idf = 1.4f64.ln();
        assert_eq!(hits.len(), 2);
        assert_eq!(hits[0].doc_id, "d1");
        assert!((hits[0].score - idf * 8.8 / 5.65).abs() < 1e-12, "{}", hits[0].score);
        assert_eq!(hits[1].doc_id, "d2");
        assert!((hits[1].score - idf).abs() < 1e-12, "{}", hits[1].score);
        // k truncates.
        assert_eq!(index.search("cat", 1).unwrap().len(), 1);
    }

    #[test]
    fn ties_are_ordered_by_doc_id_descending_and_cut_deterministically() {
        // Identical documents get identical scores; trec_eval's order puts the larger id first.
        let docs =
            vec![doc("a", "", "same text"), doc("c", "", "same text"), doc("b", "", "same text")];
        let cfg = Bm25Config { index_doc_id: false, ..Default::default() };
        let index = Bm25Index::in_memory(&docs, &cfg).unwrap();
        let ids: Vec<String> =
            index.search("same", 2).unwrap().into_iter().map(|r| r.doc_id).collect();
        assert_eq!(ids, ["c", "b"]);
    }

    #[test]
    fn porter_stemming_and_prefix_matching() {
        let docs = vec![doc("d1", "", "running shoes"), doc("d2", "", "a swimmer swims")];
        let index = Bm25Index::in_memory(&docs, &Bm25Config::default()).unwrap();
        assert_eq!(index.search("run", 5).unwrap()[0].doc_id, "d1"); // "running" -> "run"
        assert_eq!(index.search("swim", 5).unwrap()[0].doc_id, "d2");
        // QMD ANDs terms: both words must appear.
        assert!(index.search("running swimmer", 5).unwrap().is_empty());
        let any = Bm25Config { query_mode: QueryMode::AnyTerm, ..Default::default() };
        let index = Bm25Index::in_memory(&docs, &any).unwrap();
        assert_eq!(index.search("running swimmer", 5).unwrap().len(), 2);
    }

    #[test]
    fn file_index_round_trips_and_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bm25.sqlite");
        let docs = vec![doc("d1", "Title", "hello world"), doc("d2", "", "goodbye")];
        Bm25Index::create(&path, &docs, &Bm25Config::default()).unwrap();
        assert!(matches!(
            Bm25Index::create(&path, &docs, &Bm25Config::default()),
            Err(SearchError::IndexExists(_))
        ));
        let index = Bm25Index::open(&path, &Bm25Config::default()).unwrap();
        let run = index
            .run(&[("q1".into(), "hello".into()), ("q2".into(), "nothing".into())], 10, "bm25")
            .unwrap();
        assert_eq!(run.tag, "bm25");
        assert_eq!(run.results["q1"][0].doc_id, "d1");
        assert!(!run.results.contains_key("q2"));
    }

    #[test]
    fn duplicate_ids_are_refused() {
        let docs = vec![doc("d1", "", "x"), doc("d1", "", "y")];
        let err = Bm25Index::in_memory(&docs, &Bm25Config::default()).err().unwrap();
        assert!(matches!(err, SearchError::DuplicateDocId(ref id) if id == "d1"), "{err}");
    }

    #[test]
    fn cjk_runs_are_spaced() {
        assert_eq!(normalize_cjk("ab東京cd"), "ab 東 京 cd");
        assert_eq!(normalize_cjk("plain"), "plain");
    }
}

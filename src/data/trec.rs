//! TREC qrels (`qid 0 docid rel`) and run files (`qid Q0 docid rank score tag`), read and written
//! the way trec_eval reads them.
//!
//! What trec_eval does, and what we do (usnistgov/trec_eval `get_qrels.c`, `get_trec_results.c`,
//! `form_res_rels.c`):
//! * Fields are separated by any run of whitespace. Blank lines and lines starting with `#` are
//!   skipped (trec_eval 10 skips `#` comments too). Line numbers in errors are 1-based physical lines.
//! * qrels lines have exactly four fields; the second (iteration) is ignored. The relevance is an
//!   integer (trec_eval uses `atol`, which would silently read `x` as 0: we refuse non-integers).
//!   Negative values are kept: trec_eval treats them as "in the pool but unjudged" (never relevant,
//!   gain 0). Two judgments of the same (qid, docid) are an error in trec_eval and here.
//! * run lines have exactly six fields; the iteration (`Q0`) and the rank are ignored. trec_eval
//!   ignores fields after the tag; we refuse them (file:line), since a seventh column means the
//!   columns are not the ones we think (a split docid, a stray score). The score is a float (trec_eval uses `atof`: we refuse non-numbers and NaN).
//!   The run tag trec_eval reports (`runid`) is the one on the last line.
//! * A UTF-8 byte-order mark at the start of a file is removed ([`crate::io::text::strip_bom`]);
//!   left in, it would glue itself to the first query id and drop that line from evaluation.
//! * The same docid twice within one query of a run: trec_eval stops with
//!   `trec_eval.form_res_qrels: duplicate docs ...` and evaluates nothing (`form_res_rels.c` sorts
//!   the query's documents by docno and rejects equal neighbours). We reject the file at read time,
//!   naming both lines.
//!
//! ```
//! use tunelab::data::trec::{Qrels, Run};
//! let qrels = Qrels::parse_str("q1 0 d1 2\nq1 0 d2 0\n", "inline.qrels").unwrap();
//! let run = Run::parse_str("q1 Q0 d2 1 3.5 bm25\nq1 Q0 d1 2 1.0 bm25\n", "inline.run").unwrap();
//! assert_eq!(qrels.judgments["q1"]["d1"], 2);
//! assert_eq!(run.tag, "bm25");
//! assert_eq!(run.results["q1"][0].doc_id, "d2");
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

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

/// Errors reading or writing qrels and run files. Each names the file and, for content errors,
/// the 1-based line.
#[derive(Debug, thiserror::Error)]
pub enum TrecError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: missing column `{field}` (a {kind} line is `{layout}`)")]
    MissingColumn { path: PathBuf, line: usize, field: &'static str, kind: &'static str, layout: &'static str },
    #[error("{path}:{line}: unexpected extra column {value:?} (a {kind} line is `{layout}`)")]
    ExtraColumn { path: PathBuf, line: usize, value: String, kind: &'static str, layout: &'static str },
    #[error("{path}:{line}: field `{field}` is not {expected}: {value:?}")]
    NotANumber { path: PathBuf, line: usize, field: &'static str, expected: &'static str, value: String },
    #[error(
        "{path}:{line}: duplicate judgment for query {qid:?} document {doc_id:?} (first judged at line {first_line})"
    )]
    DuplicateJudgment { path: PathBuf, line: usize, first_line: usize, qid: String, doc_id: String },
    #[error(
        "{path}:{line}: document {doc_id:?} retrieved twice for query {qid:?} (first at line {first_line}); trec_eval rejects such runs"
    )]
    DuplicateRetrieved { path: PathBuf, line: usize, first_line: usize, qid: String, doc_id: String },
    #[error("{path}: not UTF-8 text: {source}")]
    NotUtf8 {
        path: PathBuf,
        #[source]
        source: std::str::Utf8Error,
    },
}

const QRELS_LAYOUT: &str = "qid 0 docid rel";
const RUN_LAYOUT: &str = "qid Q0 docid rank score tag";

/// trec_eval splits on C `isspace`: space, \t, \n, \v, \f, \r.
const fn whitespace_table() -> [bool; 256] {
    let mut t = [false; 256];
    t[b' ' as usize] = true;
    t[b'\t' as usize] = true;
    t[b'\n' as usize] = true;
    t[0x0b] = true;
    t[0x0c] = true;
    t[b'\r' as usize] = true;
    t
}
static WHITESPACE: [bool; 256] = whitespace_table();

/// Most fields a record keeps (a qrels line needs to see a fifth to reject it).
const MAX_FIELDS: usize = 7;

/// The whitespace-separated fields of each non-blank, non-comment line, with its 1-based number.
/// A plain byte loop: runs have millions of lines and this crate is built unoptimised in the dev
/// profile, where iterator adaptors (`split_ascii_whitespace`) cost ~15x more than here.
struct Records<'a> {
    text: &'a str,
    pos: usize,
    line: usize,
}

struct Record<'a> {
    line: usize,
    fields: [&'a str; MAX_FIELDS],
    len: usize,
}

impl<'a> Records<'a> {
    fn new(text: &'a str) -> Self {
        Records { text, pos: 0, line: 0 }
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Record<'a>;
    fn next(&mut self) -> Option<Record<'a>> {
        let b = self.text.as_bytes();
        let n = b.len();
        while self.pos < n {
            // One pass over the line: fields are cut at whitespace, the line at '\n'.
            self.line += 1;
            let mut rec = Record { line: self.line, fields: [""; MAX_FIELDS], len: 0 };
            let mut i = self.pos;
            loop {
                while i < n && b[i] != b'\n' && WHITESPACE[b[i] as usize] {
                    i += 1;
                }
                if i >= n || b[i] == b'\n' {
                    break;
                }
                let start = i;
                while i < n && !WHITESPACE[b[i] as usize] {
                    i += 1;
                }
                if rec.len < MAX_FIELDS {
                    // Fields end at ASCII whitespace, so they are valid UTF-8 slices of `text`.
                    rec.fields[rec.len] = &self.text[start..i];
                    rec.len += 1;
                }
            }
            self.pos = i + 1;
            if rec.len > 0 && !rec.fields[0].starts_with('#') {
                return Some(rec);
            }
        }
        None
    }
}

impl<'a> Record<'a> {
    fn field(
        &self,
        i: usize,
        name: &'static str,
        kind: &'static str,
        layout: &'static str,
        path: &Path,
    ) -> Result<&'a str, TrecError> {
        if i < self.len {
            Ok(self.fields[i])
        } else {
            Err(TrecError::MissingColumn { path: path.into(), line: self.line, field: name, kind, layout })
        }
    }
}

fn read_text(path: &Path) -> Result<String, TrecError> {
    crate::io::text::read_text(path).map_err(|e| match e {
        crate::io::text::TextError::Io { source, .. } => TrecError::Io { path: path.into(), source },
        crate::io::text::TextError::NotUtf8 { source, .. } => TrecError::NotUtf8 { path: path.into(), source },
    })
}

/// Write to `path.tmp` then rename, so a failed write never leaves a truncated file behind.
fn write_atomically(path: &Path, text: &str) -> Result<(), TrecError> {
    let io = |source| TrecError::Io { path: path.into(), source };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

impl Qrels {
    /// Read a qrels file (`qid 0 docid rel`).
    pub fn read(path: impl AsRef<Path>) -> Result<Self, TrecError> {
        let path = path.as_ref();
        Self::parse_str(&read_text(path)?, path)
    }

    /// Parse qrels text; `path` only names the source in errors.
    pub fn parse_str(text: &str, path: impl AsRef<Path>) -> Result<Self, TrecError> {
        let text = crate::io::text::strip_bom(text);
        let path = path.as_ref();
        let mut judgments: BTreeMap<String, BTreeMap<String, i32>> = BTreeMap::new();
        for rec in Records::new(text) {
            let line = rec.line;
            let next = |i, field| rec.field(i, field, "qrels", QRELS_LAYOUT, path);
            let qid = next(0, "qid")?;
            next(1, "iteration")?;
            let doc_id = next(2, "docid")?;
            let rel_s = next(3, "rel")?;
            if rec.len > 4 {
                return Err(TrecError::ExtraColumn {
                    path: path.into(),
                    line,
                    value: rec.fields[4].into(),
                    kind: "qrels",
                    layout: QRELS_LAYOUT,
                });
            }
            let rel: i32 = rel_s.parse().map_err(|_| TrecError::NotANumber {
                path: path.into(),
                line,
                field: "rel",
                expected: "an integer",
                value: rel_s.into(),
            })?;
            let docs = judgments.entry(qid.to_owned()).or_default();
            if docs.insert(doc_id.to_owned(), rel).is_some() {
                let first_line = first_line_with(text, |g| g.first() == Some(&qid) && g.get(2) == Some(&doc_id));
                return Err(TrecError::DuplicateJudgment {
                    path: path.into(),
                    line,
                    first_line,
                    qid: qid.into(),
                    doc_id: doc_id.into(),
                });
            }
        }
        Ok(Qrels { judgments })
    }

    /// Write as a qrels file (`qid 0 docid rel`, sorted by qid then docid).
    pub fn write(&self, path: impl AsRef<Path>) -> Result<(), TrecError> {
        write_atomically(path.as_ref(), &self.to_trec_string())
    }

    /// The qrels as qrels-file text.
    pub fn to_trec_string(&self) -> String {
        let mut out = String::new();
        for (qid, docs) in &self.judgments {
            for (doc, rel) in docs {
                let _ = writeln!(out, "{qid} 0 {doc} {rel}");
            }
        }
        out
    }

    /// Number of judged queries.
    pub fn num_queries(&self) -> usize {
        self.judgments.len()
    }
}

/// The first content line whose fields satisfy `pred` (only used to enrich error messages).
fn first_line_with(text: &str, pred: impl Fn(&[&str]) -> bool) -> usize {
    Records::new(text).find(|r| pred(&r.fields[..r.len])).map_or(0, |r| r.line)
}

impl Run {
    /// Read a run file (`qid Q0 docid rank score tag`).
    pub fn read(path: impl AsRef<Path>) -> Result<Self, TrecError> {
        let path = path.as_ref();
        Self::parse_str(&read_text(path)?, path)
    }

    /// Parse run text; `path` only names the source in errors. Documents keep file order.
    pub fn parse_str(text: &str, path: impl AsRef<Path>) -> Result<Self, TrecError> {
        let text = crate::io::text::strip_bom(text);
        let path = path.as_ref();
        let mut results: BTreeMap<String, Vec<Retrieved>> = BTreeMap::new();
        // Line of each retrieved document, for the duplicate check after reading.
        let mut lines: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        let mut tag = String::new();
        // Runs list a query's documents together: batch them to avoid a map look-up per line.
        let mut cur_qid = String::new();
        let mut cur_docs: Vec<Retrieved> = Vec::new();
        let mut cur_lines: Vec<usize> = Vec::new();
        let mut last_tag = "";
        for rec in Records::new(text) {
            let line = rec.line;
            let next = |i, field| rec.field(i, field, "run", RUN_LAYOUT, path);
            let qid = next(0, "qid")?;
            next(1, "iteration")?;
            let doc_id = next(2, "docid")?;
            next(3, "rank")?;
            let score_s = next(4, "score")?;
            last_tag = next(5, "tag")?;
            if rec.len > 6 {
                return Err(TrecError::ExtraColumn {
                    path: path.into(),
                    line,
                    value: rec.fields[6].into(),
                    kind: "run",
                    layout: RUN_LAYOUT,
                });
            }
            let score: f64 =
                score_s.parse().ok().filter(|s: &f64| !s.is_nan()).ok_or_else(|| TrecError::NotANumber {
                    path: path.into(),
                    line,
                    field: "score",
                    expected: "a number",
                    value: score_s.into(),
                })?;
            if qid != cur_qid {
                flush(&mut results, &mut lines, &mut cur_qid, &mut cur_docs, &mut cur_lines);
                cur_qid.push_str(qid);
            }
            cur_docs.push(Retrieved { doc_id: doc_id.to_owned(), score });
            cur_lines.push(line);
        }
        flush(&mut results, &mut lines, &mut cur_qid, &mut cur_docs, &mut cur_lines);
        tag.push_str(last_tag);
        for (qid, docs) in &results {
            check_no_duplicates(path, qid, docs, &lines[qid])?;
        }
        Ok(Run { tag, results })
    }

    /// Write as a run file. Documents are written in stored order with ranks 1, 2, …; scores are
    /// written in Rust's shortest round-trip form, so reading the file back gives the same run.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<(), TrecError> {
        write_atomically(path.as_ref(), &self.to_trec_string())
    }

    /// The run as run-file text (see [`Run::write`]). An empty tag is written as `tunelab`.
    pub fn to_trec_string(&self) -> String {
        let tag = if self.tag.is_empty() { "tunelab" } else { &self.tag };
        let mut out = String::new();
        for (qid, docs) in &self.results {
            for (i, d) in docs.iter().enumerate() {
                let _ = writeln!(out, "{qid} Q0 {} {} {:?} {tag}", d.doc_id, i + 1, d.score);
            }
        }
        out
    }

    /// Sort every query's documents the way trec_eval ranks them (see [`trec_eval_order`]).
    pub fn sort_trec_eval(&mut self) {
        for docs in self.results.values_mut() {
            docs.sort_by(trec_eval_order);
        }
    }
}

/// trec_eval's ranking order (`form_res_rels.c`, `comp_sim_docno`): score descending, and among
/// equal scores docno *descending* (`strcmp(p2->docno, p1->docno)`), i.e. "d9" before "d10" before "d1".
/// As in C, `-0.0 == 0.0`; a NaN score (files never hold one: the reader refuses it) ranks last.
pub fn trec_eval_order(a: &Retrieved, b: &Retrieved) -> std::cmp::Ordering {
    score_key(b.score).total_cmp(&score_key(a.score)).then_with(|| b.doc_id.as_bytes().cmp(a.doc_id.as_bytes()))
}

/// The score as trec_eval compares it: `-0.0` equals `0.0`, NaN ranks below everything.
pub(crate) fn score_key(s: f64) -> f64 {
    if s.is_nan() {
        f64::NEG_INFINITY
    } else {
        s + 0.0 // -0.0 + 0.0 == +0.0
    }
}

/// Indices of `docs` in trec_eval's rank order ([`trec_eval_order`]).
///
/// Runs are normally written by descending score; then only groups of tied scores are sorted
/// (by docno). Anything else is sorted in full.
pub fn trec_eval_ranking(docs: &[Retrieved]) -> Vec<usize> {
    let n = docs.len();
    let mut idx: Vec<usize> = (0..n).collect();
    let mut i = 1;
    while i < n && score_key(docs[i].score) <= score_key(docs[i - 1].score) {
        i += 1;
    }
    if i < n {
        idx.sort_by(|&a, &b| trec_eval_order(&docs[a], &docs[b]));
        return idx;
    }
    let mut start = 0;
    while start < n {
        let key = score_key(docs[start].score);
        let mut end = start + 1;
        while end < n && score_key(docs[end].score) == key {
            end += 1;
        }
        if end - start > 1 {
            idx[start..end].sort_by(|&a, &b| docs[b].doc_id.as_bytes().cmp(docs[a].doc_id.as_bytes()));
        }
        start = end;
    }
    idx
}

fn flush(
    results: &mut BTreeMap<String, Vec<Retrieved>>,
    lines: &mut BTreeMap<String, Vec<usize>>,
    qid: &mut String,
    docs: &mut Vec<Retrieved>,
    doc_lines: &mut Vec<usize>,
) {
    if docs.is_empty() {
        qid.clear();
        return;
    }
    match results.get_mut(qid.as_str()) {
        Some(v) => {
            v.append(docs);
            lines.get_mut(qid.as_str()).expect("lines follow results").append(doc_lines);
        }
        None => {
            results.insert(qid.clone(), std::mem::take(docs));
            lines.insert(qid.clone(), std::mem::take(doc_lines));
        }
    }
    qid.clear();
}

fn check_no_duplicates(path: &Path, qid: &str, docs: &[Retrieved], lines: &[usize]) -> Result<(), TrecError> {
    if let Some((first, dup)) = find_duplicate(docs) {
        return Err(TrecError::DuplicateRetrieved {
            path: path.into(),
            line: lines[dup],
            first_line: lines[first],
            qid: qid.into(),
            doc_id: docs[dup].doc_id.clone(),
        });
    }
    Ok(())
}

/// Indices (first, second) of the first repeated docid, by an open-addressing hash set.
/// Hand-rolled (FNV-1a, linear probing) rather than `HashSet`/sorting, which are generic code
/// compiled unoptimised into this crate in the dev profile and ~10x slower on 10M-line runs.
pub(crate) fn find_duplicate(docs: &[Retrieved]) -> Option<(usize, usize)> {
    let cap = (docs.len() * 2).next_power_of_two().max(16);
    let mask = cap - 1;
    let mut table = vec![usize::MAX; cap];
    for (i, d) in docs.iter().enumerate() {
        let mut slot = fnv1a(d.doc_id.as_bytes()) as usize & mask;
        loop {
            let j = table[slot];
            if j == usize::MAX {
                table[slot] = i;
                break;
            }
            if docs[j].doc_id == d.doc_id {
                return Some((j, i));
            }
            slot = (slot + 1) & mask;
        }
    }
    None
}

/// FNV-1a, 64 bit.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_qrels_with_comments_and_blank_lines() {
        let q = Qrels::parse_str("# header\nq1 0 d1 1\n\nq1 0 d2 0\nq2\t0\td9\t3\n", "x.qrels").unwrap();
        assert_eq!(q.judgments.len(), 2);
        assert_eq!(q.judgments["q1"]["d1"], 1);
        assert_eq!(q.judgments["q1"]["d2"], 0);
        assert_eq!(q.judgments["q2"]["d9"], 3);
    }

    #[test]
    fn qrels_errors_name_file_line_and_field() {
        let e = Qrels::parse_str("q1 0 d1 1\nq1 0 d2\n", "a.qrels").unwrap_err();
        assert!(matches!(e, TrecError::MissingColumn { line: 2, field: "rel", .. }), "{e:?}");
        assert!(e.to_string().starts_with("a.qrels:2: missing column `rel`"), "{e}");

        let e = Qrels::parse_str("q1 0 d1 yes\n", "a.qrels").unwrap_err();
        assert!(matches!(e, TrecError::NotANumber { line: 1, field: "rel", .. }), "{e:?}");

        let e = Qrels::parse_str("q1 0 d1 1 extra\n", "a.qrels").unwrap_err();
        assert!(matches!(e, TrecError::ExtraColumn { line: 1, .. }), "{e:?}");

        let e = Qrels::parse_str("q1 0 d1 1\n# c\nq2 0 d1 1\nq1 0 d1 0\n", "a.qrels").unwrap_err();
        assert!(matches!(e, TrecError::DuplicateJudgment { line: 4, first_line: 1, .. }), "{e:?}");
        assert!(e.to_string().contains("a.qrels:4: duplicate judgment"), "{e}");
    }

    #[test]
    fn reads_runs_keeping_file_order_and_last_tag() {
        let r = Run::parse_str("q2 Q0 a 1 1.5 x\nq1 Q0 b 1 2 x\nq2 Q0 c 2 -1e3 y\nq1 Q0 d 2 0 y\n", "r").unwrap();
        assert_eq!(r.tag, "y");
        let docs: Vec<_> = r.results["q2"].iter().map(|d| (d.doc_id.as_str(), d.score)).collect();
        assert_eq!(docs, [("a", 1.5), ("c", -1000.0)]);
        assert_eq!(r.results["q1"].len(), 2);
    }

    #[test]
    fn a_bom_is_stripped_and_a_seventh_run_column_is_refused() {
        let q = Qrels::parse_str("\u{feff}q1 0 d1 1\n", "a.qrels").unwrap();
        assert_eq!(q.judgments["q1"]["d1"], 1);
        let r = Run::parse_str("\u{feff}q1 Q0 d1 1 2 t\n", "a.run").unwrap();
        assert!(r.results.contains_key("q1"), "{r:?}");
        let e = Run::parse_str("q1 Q0 d1 1 2 t\nq1 Q0 d2 2 1 t extra\n", "a.run").unwrap_err();
        assert!(e.to_string().starts_with("a.run:2: unexpected extra column \"extra\""), "{e}");
    }

    /// Property: any mix of BOM, CRLF, tabs, trailing whitespace and blank lines reads as the plain
    /// file; any line given one extra column is refused naming that line.
    #[test]
    fn whitespace_bom_and_column_variants_of_random_files() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(16);
        for case in 0..300 {
            let nq = rng.random_range(1..4);
            let mut qrels_lines = Vec::new();
            let mut run_lines = Vec::new();
            for q in 0..nq {
                for d in 0..rng.random_range(1..4) {
                    qrels_lines.push(vec![format!("q{q}"), "0".into(), format!("d{d}"), format!("{}", rng.random_range(0..3))]);
                    run_lines.push(vec![format!("q{q}"), "Q0".into(), format!("d{d}"), format!("{}", d + 1), format!("{}", 10 - d), "t".into()]);
                }
            }
            let render = |lines: &[Vec<String>], rng: &mut rand_chacha::ChaCha8Rng| {
                let mut out = String::new();
                if rng.random_bool(0.5) {
                    out.push('\u{feff}');
                }
                let eol = if rng.random_bool(0.5) { "\r\n" } else { "\n" };
                for l in lines {
                    let sep = [" ", "\t", "  ", " \t"][rng.random_range(0..4)];
                    out.push_str(&l.join(sep));
                    out.push_str(["", " ", "\t", "  "][rng.random_range(0..4)]);
                    out.push_str(eol);
                    if rng.random_bool(0.1) {
                        out.push_str(eol);
                    }
                }
                out
            };
            let plain_q = Qrels::parse_str(&qrels_lines.iter().map(|l| l.join(" ") + "\n").collect::<String>(), "p").unwrap();
            let plain_r = Run::parse_str(&run_lines.iter().map(|l| l.join(" ") + "\n").collect::<String>(), "p").unwrap();
            let text = render(&qrels_lines, &mut rng);
            assert_eq!(Qrels::parse_str(&text, "v.qrels").unwrap(), plain_q, "case {case}: {text:?}");
            let text = render(&run_lines, &mut rng);
            assert_eq!(Run::parse_str(&text, "v.run").unwrap(), plain_r, "case {case}: {text:?}");
            // One extra column on a random line: refused, naming that line (no blank lines here).
            let bad = rng.random_range(0..run_lines.len());
            let mut lines = run_lines.clone();
            lines[bad].push("x".into());
            let text: String = lines.iter().map(|l| l.join(" ") + "\n").collect();
            let e = Run::parse_str(&text, "v.run").unwrap_err().to_string();
            assert!(e.starts_with(&format!("v.run:{}: unexpected extra column", bad + 1)), "case {case}: {e}");
            let mut lines = qrels_lines.clone();
            let last = lines.len() - 1;
            lines[bad.min(last)].push("x".into());
            let text: String = lines.iter().map(|l| l.join(" ") + "\n").collect();
            let e = Qrels::parse_str(&text, "v.qrels").unwrap_err().to_string();
            assert!(e.contains("unexpected extra column"), "case {case}: {e}");
        }
    }

    #[test]
    fn run_errors_name_file_line_and_field() {
        let e = Run::parse_str("q1 Q0 d1 1 0.5 t\nq1 Q0 d2 2 0.4\n", "b.run").unwrap_err();
        assert!(matches!(e, TrecError::MissingColumn { line: 2, field: "tag", .. }), "{e:?}");
        assert!(e.to_string().starts_with("b.run:2: missing column `tag`"), "{e}");

        let e = Run::parse_str("q1 Q0 d1 1 high t\n", "b.run").unwrap_err();
        assert!(matches!(e, TrecError::NotANumber { line: 1, field: "score", .. }), "{e:?}");
        assert!(e.to_string().contains("b.run:1: field `score` is not a number: \"high\""), "{e}");

        let e = Run::parse_str("q1 Q0 d1 1 nan t\n", "b.run").unwrap_err();
        assert!(matches!(e, TrecError::NotANumber { .. }), "{e:?}");

        // Duplicate docid within a query, even when the query's lines are not contiguous.
        let e =
            Run::parse_str("q1 Q0 d1 1 3 t\nq2 Q0 d1 1 3 t\nq1 Q0 d2 2 2 t\nq1 Q0 d1 3 1 t\n", "b.run").unwrap_err();
        assert!(matches!(e, TrecError::DuplicateRetrieved { line: 4, first_line: 1, .. }), "{e:?}");
    }

    #[test]
    fn round_trips_through_files() {
        let dir = tempfile::tempdir().unwrap();
        let q = Qrels::parse_str("q1 0 d1 1\nq1 0 d2 0\nq2 0 d3 -1\n", "x").unwrap();
        let r = Run::parse_str("q1 Q0 d1 1 0.1 t\nq1 Q0 d2 2 0.30000000000000004 t\n", "x").unwrap();
        q.write(dir.path().join("q")).unwrap();
        r.write(dir.path().join("r")).unwrap();
        assert_eq!(Qrels::read(dir.path().join("q")).unwrap(), q);
        assert_eq!(Run::read(dir.path().join("r")).unwrap(), r);
        let e = Run::read(dir.path().join("missing")).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }

    #[test]
    fn trec_eval_order_breaks_ties_by_descending_docno() {
        // comp_sim_docno returns strcmp(p2, p1) on equal sims: larger docno first.
        let mut v = vec![
            Retrieved { doc_id: "d1".into(), score: 1.0 },
            Retrieved { doc_id: "d10".into(), score: 1.0 },
            Retrieved { doc_id: "d9".into(), score: 1.0 },
            Retrieved { doc_id: "a".into(), score: 2.0 },
        ];
        v.sort_by(trec_eval_order);
        let ids: Vec<_> = v.iter().map(|d| d.doc_id.as_str()).collect();
        assert_eq!(ids, ["a", "d9", "d10", "d1"]);
    }

    #[test]
    fn trec_eval_ranking_agrees_with_a_full_sort() {
        // Already by descending score (only ties to fix), unsorted, -0.0 vs 0.0, NaN.
        let cases: [&[(&str, f64)]; 4] = [
            &[("a", 3.0), ("b", 2.0), ("c", 2.0), ("z", 2.0), ("d", 1.0)],
            &[("a", 1.0), ("b", 2.0), ("c", 2.0), ("d", 0.5)],
            &[("a", 0.0), ("b", -0.0), ("c", 0.0)],
            &[("a", f64::NAN), ("b", 1.0), ("c", f64::NEG_INFINITY)],
        ];
        for case in cases {
            let docs: Vec<Retrieved> =
                case.iter().map(|(d, s)| Retrieved { doc_id: d.to_string(), score: *s }).collect();
            let mut want: Vec<usize> = (0..docs.len()).collect();
            want.sort_by(|&a, &b| trec_eval_order(&docs[a], &docs[b]));
            assert_eq!(trec_eval_ranking(&docs), want, "{case:?}");
        }
        // -0.0 ties 0.0: c, b, a by descending docno.
        let docs: Vec<Retrieved> =
            cases[2].iter().map(|(d, s)| Retrieved { doc_id: d.to_string(), score: *s }).collect();
        assert_eq!(trec_eval_ranking(&docs), [2, 1, 0]);
    }
}

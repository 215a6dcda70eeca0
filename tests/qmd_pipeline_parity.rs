//! Our port of QMD's pipeline pieces against QMD's own functions: `tests/fixtures/qmd/pipeline.json`
//! holds what tobi/qmd v2.8.3's `chunkDocument`, `scanBreakPoints`, `findCodeFences`,
//! `buildFTS5Query`, `reciprocalRankFusion` + `getHybridRrfWeights` and `extractTitle` return
//! on generated inputs (markdown with headings, fences, rules, lists, CRLF, CJK, emoji, NBSP), as
//! `scripts/make-qmd-fixtures.mjs` evaluated them. Exact agreement is required (positions and
//! strings equal; fused scores to 1e-15).

use serde::Deserialize;
use tunelab::data::trec::Retrieved;
use tunelab::eval::search::bm25::fts5_query;
use tunelab::eval::search::chunk::{
    chunk_document, extract_title, find_code_fences, scan_break_points,
};
use tunelab::eval::search::fusion::fuse_ranked_lists;

#[derive(Deserialize)]
struct Fixture {
    chunks: Vec<ChunkText>,
    breakpoints: Vec<BreakCase>,
    fts: Vec<FtsCase>,
    rrf: Vec<RrfCase>,
    titles: Vec<TitleCase>,
}

#[derive(Deserialize)]
struct ChunkText {
    text: String,
    cases: Vec<ChunkCase>,
}

#[derive(Deserialize)]
struct ChunkCase {
    max: usize,
    overlap: usize,
    window: usize,
    /// `(pos, text.length)` in UTF-16 units.
    chunks: Vec<(usize, usize)>,
}

#[derive(Deserialize)]
struct BreakCase {
    text: String,
    points: Vec<(usize, f64, String)>,
    fences: Vec<(usize, usize)>,
}

#[derive(Deserialize)]
struct FtsCase {
    query: String,
    fts: Option<String>,
}

#[derive(Deserialize)]
struct RrfCase {
    lists: Vec<Vec<String>>,
    weights: Vec<f64>,
    query_types: Vec<String>,
    fused: Vec<(String, f64)>,
}

#[derive(Deserialize)]
struct TitleCase {
    content: String,
    file: String,
    title: String,
}

fn fixture() -> Fixture {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/qmd/pipeline.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn chunk_boundaries_equal_qmds() {
    let f = fixture();
    let mut n = 0;
    for t in &f.chunks {
        for c in &t.cases {
            let ours: Vec<(usize, usize)> = chunk_document(&t.text, c.max, c.overlap, c.window)
                .iter()
                .map(|ch| (ch.pos, ch.text.encode_utf16().count()))
                .collect();
            assert_eq!(
                ours, c.chunks,
                "max {} overlap {} window {} on {:?}",
                c.max, c.overlap, c.window, &t.text
            );
            n += c.chunks.len();
        }
    }
    assert!(n > 500, "the fixture exercises many boundaries ({n})");
}

#[test]
fn break_points_and_fences_equal_qmds() {
    for case in fixture().breakpoints {
        let ours: Vec<(usize, f64, String)> = scan_break_points(&case.text)
            .into_iter()
            .map(|b| (b.pos, b.score, b.kind.to_string()))
            .collect();
        assert_eq!(ours, case.points, "{:?}", case.text);
        let fences: Vec<(usize, usize)> = find_code_fences(&case.text)
            .into_iter()
            .map(|f| (f.start, f.end))
            .collect();
        assert_eq!(fences, case.fences, "{:?}", case.text);
    }
}

#[test]
fn fts5_queries_equal_qmds() {
    for case in fixture().fts {
        assert_eq!(fts5_query(&case.query), case.fts, "{:?}", case.query);
    }
}

#[test]
fn fused_order_and_scores_equal_qmds() {
    for case in fixture().rrf {
        // getHybridRrfWeights: original → 2.0, expansions → 1.0.
        let weights: Vec<f64> = case
            .query_types
            .iter()
            .map(|t| if t == "original" { 2.0 } else { 1.0 })
            .collect();
        assert_eq!(weights, case.weights);
        let lists: Vec<Vec<Retrieved>> = case
            .lists
            .iter()
            .map(|l| {
                l.iter()
                    .map(|d| Retrieved {
                        doc_id: d.clone(),
                        score: 0.0,
                    })
                    .collect()
            })
            .collect();
        let weighted: Vec<(&[Retrieved], f64)> = lists
            .iter()
            .zip(&weights)
            .map(|(l, w)| (l.as_slice(), *w))
            .collect();
        let ours = fuse_ranked_lists(&weighted, 60.0, true);
        let ids: Vec<&str> = ours.iter().map(|r| r.doc_id.as_str()).collect();
        let want: Vec<&str> = case.fused.iter().map(|(d, _)| d.as_str()).collect();
        assert_eq!(ids, want, "{:?}", case.lists);
        for (r, (_, s)) in ours.iter().zip(&case.fused) {
            assert!(
                (r.score - s).abs() < 1e-15,
                "{} {} vs {s}",
                r.doc_id,
                r.score
            );
        }
    }
}

#[test]
fn titles_equal_qmds() {
    for case in fixture().titles {
        assert_eq!(
            extract_title(&case.content, &case.file),
            case.title,
            "{:?} {:?}",
            case.content,
            case.file
        );
    }
}

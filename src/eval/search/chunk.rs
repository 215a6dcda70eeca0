//! QMD's markdown chunking, titles and embedding text formats.
//!
//! Ported from tobi/qmd `src/store.ts` and `src/llm.ts` at v2.8.3 (repository HEAD
//! `dbfd0b4736aeaf761d1a16ca8e424f071df8feb9`); every constant and rule is QMD's:
//!
//! * **Break points** (`BREAK_PATTERNS`, `scanBreakPoints`): `\n#` h1 100, `\n##` h2 90,
//!   `\n###` h3 80, h4 70, h5 60, h6 50, `` \n``` `` code fence 80, `\n---`/`***`/`___` rule 60,
//!   `\n\n+` blank line 20, `\n- ` / `\n* ` / `\n1. ` list items 5, `\n` 1. Each pattern is
//!   scanned like a JS global regex (`matchAll`: non-overlapping, left to right); the highest
//!   score wins at a position. A break point's position is its `\n`, so a cut there leaves the
//!   newline to the next chunk.
//! * **Code fences** (`findCodeFences`): `` \n``` `` markers pair up; an unclosed one runs to
//!   the end. No cut is made strictly inside a fence.
//! * **Best cut** (`findBestCutoff`): within `window` characters before the target end, the break
//!   point with the highest `score × (1 − (d/window)²·0.7)`, d = distance to the target; the
//!   target itself when there is none.
//! * **Chunks** (`chunkDocumentWithBreakPoints`): a document of at most `max` characters is one
//!   chunk; otherwise chunks end at the best cut, and the next starts `overlap` characters before
//!   that end (or at the end if that would not move forward). Surrogate pairs are never split.
//! * **Sizes**: 900 tokens with 135 overlap (`CHUNK_SIZE_TOKENS`, `CHUNK_OVERLAP_TOKENS`), window
//!   200 tokens. QMD's synchronous `chunkDocument` approximates 4 characters per token (3600 /
//!   540 / 800 characters): this is what `hybridQuery` uses to pick the chunk it sends to the
//!   reranker. What QMD *embeds* comes from `chunkDocumentByTokens`: 3 characters per token
//!   (2700 / 405 / 600), then every chunk is tokenized with the embedding model's tokenizer and a
//!   chunk over 900 tokens is chunked again at its measured characters per token
//!   ([`chunk_document_by_tokens`]).
//!
//! Positions and lengths are in UTF-16 code units, as JavaScript counts them, so boundaries agree
//! with QMD's on any text; each [`Chunk`] also carries its byte range in the Rust string.
//!
//! ```
//! use tunelab::eval::search::chunk::{chunk_document, extract_title, format_doc_for_embedding};
//! let chunks = chunk_document("# Tides\nSmall note.", 3600, 540, 800);
//! assert_eq!(chunks.len(), 1);
//! assert_eq!(extract_title("# Tides\nSmall note.", "notes/tides.md"), "Tides");
//! assert_eq!(format_doc_for_embedding("Small note.", Some("Tides")), "title: Tides | text: Small note.");
//! ```

/// QMD's `CHUNK_SIZE_TOKENS`.
pub const CHUNK_SIZE_TOKENS: usize = 900;
/// QMD's `CHUNK_OVERLAP_TOKENS` = floor(900 × 0.15).
pub const CHUNK_OVERLAP_TOKENS: usize = 135;
/// QMD's `CHUNK_WINDOW_TOKENS`.
pub const CHUNK_WINDOW_TOKENS: usize = 200;
/// QMD's `CHUNK_SIZE_CHARS` (4 characters per token): `chunkDocument`'s default.
pub const CHUNK_SIZE_CHARS: usize = CHUNK_SIZE_TOKENS * 4;
/// QMD's `CHUNK_OVERLAP_CHARS`.
pub const CHUNK_OVERLAP_CHARS: usize = CHUNK_OVERLAP_TOKENS * 4;
/// QMD's `CHUNK_WINDOW_CHARS`.
pub const CHUNK_WINDOW_CHARS: usize = CHUNK_WINDOW_TOKENS * 4;
/// `findBestCutoff`'s decay factor.
pub const DECAY_FACTOR: f64 = 0.7;

/// A place a chunk may end: the position of a `\n` (UTF-16 units), its score and pattern name.
#[derive(Clone, Debug, PartialEq)]
pub struct BreakPoint {
    pub pos: usize,
    pub score: f64,
    pub kind: &'static str,
}

/// A fenced code block: from its opening `` \n``` `` to just after its closing one (or the end).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodeFence {
    pub start: usize,
    pub end: usize,
}

/// One chunk: its text, its start in UTF-16 units (QMD's `pos`) and its byte range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub text: String,
    pub pos: usize,
    pub bytes: std::ops::Range<usize>,
}

const NL: u16 = b'\n' as u16;
const HASH: u16 = b'#' as u16;

/// JavaScript's `\s` (ECMAScript WhiteSpace and LineTerminator).
fn js_space(c: u16) -> bool {
    matches!(c, 0x09..=0x0d | 0x20 | 0xa0 | 0x1680 | 0x2000..=0x200a | 0x2028 | 0x2029 | 0x202f | 0x205f | 0x3000 | 0xfeff)
}

fn at(t: &[u16], i: usize) -> Option<u16> {
    t.get(i).copied()
}

/// `\n#{n}(?!#)`: a newline, exactly `n` hashes.
fn heading(t: &[u16], i: usize, n: usize) -> Option<usize> {
    let hashes = t.get(i + 1..i + 1 + n)?;
    (t[i] == NL && hashes.iter().all(|&c| c == HASH) && at(t, i + 1 + n) != Some(HASH))
        .then_some(1 + n)
}

fn starts_with(t: &[u16], i: usize, s: &str) -> bool {
    s.bytes()
        .enumerate()
        .all(|(k, b)| at(t, i + k) == Some(b as u16))
}

/// `` \n``` ``.
fn fence(t: &[u16], i: usize) -> Option<usize> {
    (t[i] == NL && starts_with(t, i + 1, "```")).then_some(4)
}

/// `\n(?:---|\*\*\*|___)\s*\n`: `\s*` is greedy and gives back until a `\n` follows.
fn rule(t: &[u16], i: usize) -> Option<usize> {
    if t[i] != NL
        || !["---", "***", "___"]
            .iter()
            .any(|s| starts_with(t, i + 1, s))
    {
        return None;
    }
    let j = i + 4;
    let mut e = j;
    while e < t.len() && js_space(t[e]) {
        e += 1;
    }
    (j..e).rev().find(|&k| t[k] == NL).map(|k| k + 1 - i)
}

/// `\n\n+` (greedy).
fn blank(t: &[u16], i: usize) -> Option<usize> {
    let n = t[i..].iter().take_while(|&&c| c == NL).count();
    (n >= 2).then_some(n)
}

/// `\n[-*]\s`.
fn list(t: &[u16], i: usize) -> Option<usize> {
    (t[i] == NL && matches!(at(t, i + 1), Some(0x2d | 0x2a)) && at(t, i + 2).is_some_and(js_space))
        .then_some(3)
}

/// `\n\d+\.\s` (`\d` is ASCII in JavaScript).
fn numlist(t: &[u16], i: usize) -> Option<usize> {
    if t[i] != NL {
        return None;
    }
    let digits = t[i + 1..]
        .iter()
        .take_while(|&&c| (0x30..=0x39).contains(&c))
        .count();
    let k = i + 1 + digits;
    (digits > 0 && at(t, k) == Some(b'.' as u16) && at(t, k + 1).is_some_and(js_space))
        .then_some(digits + 3)
}

fn newline(t: &[u16], i: usize) -> Option<usize> {
    (t[i] == NL).then_some(1)
}

type Pattern = (fn(&[u16], usize) -> Option<usize>, f64, &'static str);

/// QMD's `BREAK_PATTERNS`, in its order.
const PATTERNS: [Pattern; 12] = [
    (|t, i| heading(t, i, 1), 100.0, "h1"),
    (|t, i| heading(t, i, 2), 90.0, "h2"),
    (|t, i| heading(t, i, 3), 80.0, "h3"),
    (|t, i| heading(t, i, 4), 70.0, "h4"),
    (|t, i| heading(t, i, 5), 60.0, "h5"),
    (|t, i| heading(t, i, 6), 50.0, "h6"),
    (fence, 80.0, "codeblock"),
    (rule, 60.0, "hr"),
    (blank, 20.0, "blank"),
    (list, 5.0, "list"),
    (numlist, 5.0, "numlist"),
    (newline, 1.0, "newline"),
];

/// Start positions of `pattern`'s matches, as `String.prototype.matchAll` finds them.
fn match_all(t: &[u16], pattern: fn(&[u16], usize) -> Option<usize>) -> Vec<usize> {
    let (mut out, mut i) = (Vec::new(), 0);
    while i < t.len() {
        match pattern(t, i) {
            Some(len) => {
                out.push(i);
                i += len.max(1);
            }
            None => i += 1,
        }
    }
    out
}

fn utf16(text: &str) -> Vec<u16> {
    text.encode_utf16().collect()
}

/// QMD's `scanBreakPoints` over UTF-16 code units.
pub fn scan_break_points_utf16(t: &[u16]) -> Vec<BreakPoint> {
    let mut best: std::collections::BTreeMap<usize, BreakPoint> = Default::default();
    for (pattern, score, kind) in PATTERNS {
        for pos in match_all(t, pattern) {
            // A later pattern replaces an earlier one only with a strictly higher score.
            if best.get(&pos).is_none_or(|b| score > b.score) {
                best.insert(pos, BreakPoint { pos, score, kind });
            }
        }
    }
    best.into_values().collect()
}

/// QMD's `scanBreakPoints`: every break point, sorted by position (UTF-16 units).
///
/// ```
/// use tunelab::eval::search::chunk::scan_break_points;
/// let b = scan_break_points("Intro\n# Heading 1\nMore text");
/// assert_eq!((b[0].pos, b[0].score, b[0].kind), (5, 100.0, "h1"));
/// ```
pub fn scan_break_points(text: &str) -> Vec<BreakPoint> {
    scan_break_points_utf16(&utf16(text))
}

/// QMD's `findCodeFences` over UTF-16 code units.
pub fn find_code_fences_utf16(t: &[u16]) -> Vec<CodeFence> {
    let mut out = Vec::new();
    let mut open = None;
    for pos in match_all(t, fence) {
        match open.take() {
            None => open = Some(pos),
            Some(start) => out.push(CodeFence {
                start,
                end: pos + 4,
            }),
        }
    }
    if let Some(start) = open {
        out.push(CodeFence {
            start,
            end: t.len(),
        });
    }
    out
}

/// QMD's `findCodeFences`.
pub fn find_code_fences(text: &str) -> Vec<CodeFence> {
    find_code_fences_utf16(&utf16(text))
}

/// QMD's `isInsideCodeFence`: strictly between a fence's start and end.
pub fn is_inside_code_fence(pos: usize, fences: &[CodeFence]) -> bool {
    fences.iter().any(|f| pos > f.start && pos < f.end)
}

/// QMD's `findBestCutoff`.
pub fn find_best_cutoff(
    break_points: &[BreakPoint],
    target: usize,
    window: usize,
    decay: f64,
    fences: &[CodeFence],
) -> usize {
    let window_start = target as f64 - window as f64;
    let (mut best_score, mut best_pos) = (-1.0, target);
    for bp in break_points {
        if (bp.pos as f64) < window_start {
            continue;
        }
        if bp.pos > target {
            break;
        }
        if is_inside_code_fence(bp.pos, fences) {
            continue;
        }
        // JS divides by 0 when the window is 0 (NaN score, never > best); only a break point
        // at the target (d = 0) then gives 0/0 = NaN too, so none is chosen. Keep that.
        let d = (target - bp.pos) as f64 / window as f64;
        let score = bp.score * (1.0 - d * d * decay);
        if score > best_score {
            best_score = score;
            best_pos = bp.pos;
        }
    }
    best_pos
}

fn is_pair_boundary(t: &[u16], pos: usize) -> bool {
    pos > 0
        && pos < t.len()
        && (0xd800..=0xdbff).contains(&t[pos - 1])
        && (0xdc00..=0xdfff).contains(&t[pos])
}

/// QMD's `adjustSurrogateBoundary`.
fn adjust_surrogate(t: &[u16], pos: usize, floor: usize) -> usize {
    if !is_pair_boundary(t, pos) {
        return pos;
    }
    if pos - 1 > floor { pos - 1 } else { pos + 1 }
}

/// QMD's `chunkDocumentWithBreakPoints` on UTF-16 units: `(pos, end)` ranges.
pub fn chunk_ranges_utf16(
    t: &[u16],
    break_points: &[BreakPoint],
    fences: &[CodeFence],
    max: usize,
    overlap: usize,
    window: usize,
) -> Vec<(usize, usize)> {
    let n = t.len();
    if n <= max {
        return vec![(0, n)];
    }
    let mut out: Vec<(usize, usize)> = Vec::new();
    let mut pos = 0usize;
    while pos < n {
        let target = (pos + max).min(n);
        let mut end = target;
        if end < n {
            let cut = find_best_cutoff(break_points, target, window, DECAY_FACTOR, fences);
            if cut > pos && cut <= target {
                end = cut;
            }
        }
        if end <= pos {
            end = (pos + max).min(n);
        }
        end = adjust_surrogate(t, end, pos);
        out.push((pos, end));
        if end >= n {
            break;
        }
        let last = pos;
        // JS: `endPos - overlapChars` may go negative; it then fails `> lastChunkPos`.
        let next = end as i64 - overlap as i64;
        pos = if next <= last as i64 {
            end
        } else {
            next as usize
        };
        pos = adjust_surrogate(t, pos, last);
    }
    out
}

/// Map UTF-16 ranges of `text` to [`Chunk`]s.
fn to_chunks(text: &str, t: &[u16], ranges: &[(usize, usize)], base: usize) -> Vec<Chunk> {
    // byte offset of each UTF-16 boundary (index = UTF-16 position).
    let mut byte_at = vec![usize::MAX; t.len() + 1];
    let mut u = 0;
    for (b, c) in text.char_indices() {
        byte_at[u] = b;
        u += c.len_utf16();
    }
    byte_at[t.len()] = text.len();
    ranges
        .iter()
        .map(|&(s, e)| Chunk {
            text: String::from_utf16_lossy(&t[s..e]),
            pos: base + s,
            bytes: byte_at[s]..byte_at[e],
        })
        .collect()
}

/// QMD's `chunkDocument` (regex break points; sizes in UTF-16 units). QMD's defaults are
/// [`CHUNK_SIZE_CHARS`], [`CHUNK_OVERLAP_CHARS`], [`CHUNK_WINDOW_CHARS`].
pub fn chunk_document(text: &str, max: usize, overlap: usize, window: usize) -> Vec<Chunk> {
    let t = utf16(text);
    let ranges = chunk_ranges_utf16(
        &t,
        &scan_break_points_utf16(&t),
        &find_code_fences_utf16(&t),
        max,
        overlap,
        window,
    );
    to_chunks(text, &t, &ranges, 0)
}

/// QMD's `chunkDocumentByTokens` with the embedding model's tokenizer as `count_tokens`
/// (`llm.tokenize(text).length`). Defaults: `max_tokens` 900, `overlap_tokens` 135,
/// `window_tokens` 200. Returns each chunk with its token count.
///
/// Character chunking at 3 characters per token first; a chunk with more than `max_tokens`
/// tokens is chunked again with `max = floor(max_tokens × chars_per_token × 0.95)`, half the
/// overlap and window scaled by its measured characters per token, or halved outright when that
/// makes no progress. (QMD's last resort, truncating by detokenizing, cannot be reached: a
/// half-size chunking of a text of two or more units always splits it.)
pub fn chunk_document_by_tokens(
    text: &str,
    max_tokens: usize,
    overlap_tokens: usize,
    window_tokens: usize,
    count_tokens: &mut dyn FnMut(&str) -> anyhow::Result<usize>,
) -> anyhow::Result<Vec<(Chunk, usize)>> {
    const AVG_CHARS_PER_TOKEN: usize = 3;
    let (max, overlap, window) = (
        max_tokens * AVG_CHARS_PER_TOKEN,
        overlap_tokens * AVG_CHARS_PER_TOKEN,
        window_tokens * AVG_CHARS_PER_TOKEN,
    );
    let mut out = Vec::new();
    for c in chunk_document(text, max, overlap, window) {
        push_within_limit(
            &c.text,
            c.pos,
            max_tokens,
            overlap as f64,
            window as f64,
            count_tokens,
            &mut out,
        )?;
    }
    // Byte ranges of the full text, from the UTF-16 positions.
    let t = utf16(text);
    let ranges: Vec<(usize, usize)> = out
        .iter()
        .map(|(c, _)| (c.pos, c.pos + c.text.encode_utf16().count()))
        .collect();
    let chunks = to_chunks(text, &t, &ranges, 0);
    Ok(chunks
        .into_iter()
        .zip(out)
        .map(|(c, (_, n))| (c, n))
        .collect())
}

fn push_within_limit(
    text: &str,
    pos: usize,
    max_tokens: usize,
    overlap: f64,
    window: f64,
    count_tokens: &mut dyn FnMut(&str) -> anyhow::Result<usize>,
    out: &mut Vec<(Chunk, usize)>,
) -> anyhow::Result<()> {
    let tokens = count_tokens(text)?;
    let t = utf16(text);
    if tokens <= max_tokens || t.len() <= 1 {
        if !t.is_empty() {
            out.push((
                Chunk {
                    text: text.to_string(),
                    pos,
                    bytes: 0..0,
                },
                tokens,
            ));
        }
        return Ok(());
    }
    let per_token = t.len() as f64 / tokens as f64;
    let mut safe_max = (max_tokens as f64 * per_token * 0.95).floor();
    if !safe_max.is_finite() || safe_max < 1.0 {
        safe_max = (t.len() / 2) as f64;
    }
    let safe_max = (safe_max as usize).clamp(1, t.len() - 1);
    let clamp_overlap = |v: f64, max: usize| {
        if max <= 1 {
            0
        } else {
            (v.floor().max(0.0) as usize).min(max - 1)
        }
    };
    let sub_overlap = clamp_overlap(overlap * per_token / 2.0, safe_max);
    let sub_window = (window * per_token / 2.0).floor().max(0.0) as usize;
    let bps = scan_break_points_utf16(&t);
    let fences = find_code_fences_utf16(&t);
    let mut ranges = chunk_ranges_utf16(&t, &bps, &fences, safe_max, sub_overlap, sub_window);
    if ranges.len() <= 1 || ranges[0].1 - ranges[0].0 == t.len() {
        ranges = chunk_ranges_utf16(&t, &bps, &fences, (t.len() / 2).max(1), 0, 0);
    }
    for (s, e) in ranges {
        push_within_limit(
            &String::from_utf16_lossy(&t[s..e]),
            pos + s,
            max_tokens,
            overlap,
            window,
            count_tokens,
            out,
        )?;
    }
    Ok(())
}

/// QMD's `extractTitle` for markdown: the first line that is a `#` or `##` heading (skipping a
/// generic `Notes` / `📝 Notes` heading for the first `##` heading), else the file name without
/// its extension.
///
/// ```
/// use tunelab::eval::search::chunk::extract_title;
/// assert_eq!(extract_title("# Notes\n\n## Actual Title\n\nContent", "file.md"), "Actual Title");
/// assert_eq!(extract_title("plain", "dir/my-document.md"), "my-document");
/// ```
pub fn extract_title(content: &str, filename: &str) -> String {
    // `/^##?\s+(.+)$/m`: `\s+` may run over newlines and `.+` stops at a line terminator.
    let heading = |two_only: bool| -> Option<String> {
        let t: Vec<char> = content.chars().collect();
        let line_start =
            |i: usize| i == 0 || matches!(t[i - 1], '\n' | '\r' | '\u{2028}' | '\u{2029}');
        let is_term = |c: char| matches!(c, '\n' | '\r' | '\u{2028}' | '\u{2029}');
        let is_space = |c: char| c.len_utf16() == 1 && js_space(c as u32 as u16);
        for i in 0..t.len() {
            if !line_start(i) || t[i] != '#' {
                continue;
            }
            let mut j = i + 1;
            if two_only {
                if t.get(j) != Some(&'#') {
                    continue;
                }
                j += 1;
            } else if t.get(j) == Some(&'#') {
                j += 1;
            }
            // `\s+` then `.+` up to the end of a line: backtracking gives the last space run
            // position from which `.+$` matches; greedy `\s+` takes the longest such run.
            let mut k = j;
            while k < t.len() && is_space(t[k]) {
                k += 1;
            }
            // Try the longest `\s+` first, shrinking until `.+$` matches (needs ≥1 non-terminator
            // char, then a line end or end of input).
            for s in (j + 1..=k).rev() {
                let mut e = s;
                while e < t.len() && !is_term(t[e]) {
                    e += 1;
                }
                if e > s {
                    return Some(t[s..e].iter().collect::<String>());
                }
            }
        }
        None
    };
    if let Some(title) = heading(false) {
        let title = title.trim().to_string();
        if (title == "📝 Notes" || title == "Notes")
            && let Some(next) = heading(true)
        {
            return next.trim().to_string();
        }
        return title;
    }
    // `filename.replace(/\.[^.]+$/, "").split("/").pop() || filename`
    let no_ext = match filename.rfind('.') {
        Some(dot) if dot + 1 < filename.len() => &filename[..dot],
        _ => filename,
    };
    let stem = no_ext.rsplit('/').next().unwrap_or(no_ext).to_string();
    if stem.is_empty() {
        filename.to_string()
    } else {
        stem
    }
}

/// QMD's `formatQueryForEmbedding` (non-Qwen3 embedding models): `task: search result | query: {q}`.
pub fn format_query_for_embedding(query: &str) -> String {
    format!("task: search result | query: {query}")
}

/// QMD's `formatDocForEmbedding` (non-Qwen3 embedding models): `title: {t or none} | text: {x}`.
pub fn format_doc_for_embedding(text: &str, title: Option<&str>) -> String {
    let title = title.filter(|t| !t.is_empty()).unwrap_or("none");
    format!("title: {title} | text: {text}")
}

#[cfg(test)]
mod tests {
    //! Expected values marked "QMD test" are copied from tobi/qmd `test/store.test.ts` (v2.8.3,
    //! HEAD dbfd0b47), with the test's name.
    use super::*;

    fn bp(pos: usize, score: f64) -> BreakPoint {
        BreakPoint {
            pos,
            score,
            kind: "",
        }
    }

    #[test]
    fn scan_break_points_matches_qmd_tests() {
        // QMD test "detects h1 headings": h1 at 5, score 100.
        let b = scan_break_points("Intro\n# Heading 1\nMore text");
        let h1 = b.iter().find(|b| b.kind == "h1").unwrap();
        assert_eq!((h1.pos, h1.score), (5, 100.0));
        // "detects multiple heading levels": 100 / 90 / 80.
        let b = scan_break_points("Text\n# H1\n## H2\n### H3\nMore");
        for (k, s) in [("h1", 100.0), ("h2", 90.0), ("h3", 80.0)] {
            assert_eq!(b.iter().find(|b| b.kind == k).unwrap().score, s, "{k}");
        }
        // "detects code blocks": two, score 80.
        let b = scan_break_points("Before\n```js\ncode\n```\nAfter");
        let code: Vec<_> = b.iter().filter(|b| b.kind == "codeblock").collect();
        assert_eq!(code.len(), 2);
        assert_eq!(code[0].score, 80.0);
        // "detects horizontal rules": 60.
        assert_eq!(
            scan_break_points("Text\n---\nMore text")
                .iter()
                .find(|b| b.kind == "hr")
                .unwrap()
                .score,
            60.0
        );
        // "detects blank lines": 20.
        assert_eq!(
            scan_break_points("First paragraph.\n\nSecond paragraph.")
                .iter()
                .find(|b| b.kind == "blank")
                .unwrap()
                .score,
            20.0
        );
        // "detects list items": 2 list, 1 numlist, score 5.
        let b = scan_break_points("Intro\n- Item 1\n- Item 2\n1. Numbered");
        assert_eq!(b.iter().filter(|b| b.kind == "list").count(), 2);
        assert_eq!(b.iter().filter(|b| b.kind == "numlist").count(), 1);
        assert!(
            b.iter()
                .filter(|b| b.kind.ends_with("list"))
                .all(|b| b.score == 5.0)
        );
        // "detects newlines as fallback": 2 newlines, score 1.
        let b = scan_break_points("Line 1\nLine 2\nLine 3");
        assert_eq!(
            b.iter()
                .filter(|b| b.kind == "newline")
                .map(|b| b.score)
                .collect::<Vec<_>>(),
            [1.0, 1.0]
        );
        // "higher-scoring pattern wins at same position": one point at 4, h1.
        let b = scan_break_points("Text\n# Heading");
        let at4: Vec<_> = b.iter().filter(|b| b.pos == 4).collect();
        assert_eq!((at4.len(), at4[0].kind, at4[0].score), (1, "h1", 100.0));
    }

    #[test]
    fn js_regex_semantics_of_the_patterns() {
        // `\n#{1}(?!#)` does not match `\n##`; the lookahead consumes nothing, so two headings on
        // consecutive lines both match.
        let b = scan_break_points("a\n#\n# b\n## c");
        let kinds: Vec<_> = b.iter().map(|b| (b.pos, b.kind)).collect();
        assert_eq!(kinds, [(1, "h1"), (3, "h1"), (7, "h2")]);
        // `\n\n+` is greedy and matches once per run: the second newline is no break point of its own
        // (only `newline`, score 1, matches there).
        let b = scan_break_points("a\n\n\nb");
        assert_eq!(
            b.iter().map(|b| (b.pos, b.kind)).collect::<Vec<_>>(),
            [(1, "blank"), (2, "newline"), (3, "newline")]
        );
        // The rule's `\s*\n` swallows the next line's `\n`, so a rule right after a rule is not
        // matched again (matchAll does not overlap).
        let b = scan_break_points("x\n---\n---\ny");
        assert_eq!(
            b.iter()
                .filter(|b| b.kind == "hr")
                .map(|b| b.pos)
                .collect::<Vec<_>>(),
            [1]
        );
        // `\d` is ASCII only: an Arabic-Indic digit list item is not `numlist`.
        assert!(
            scan_break_points("a\n١. x")
                .iter()
                .all(|b| b.kind != "numlist")
        );
        // `\s` includes U+00A0.
        assert!(
            scan_break_points("a\n-\u{a0}x")
                .iter()
                .any(|b| b.kind == "list")
        );
    }

    #[test]
    fn code_fences_match_qmd_tests() {
        // QMD test "finds single code fence": start 6, end 26.
        assert_eq!(
            find_code_fences("Before\n```js\ncode here\n```\nAfter"),
            [CodeFence { start: 6, end: 26 }]
        );
        // "finds multiple code fences": 2.
        assert_eq!(
            find_code_fences("Intro\n```\nblock1\n```\nMiddle\n```\nblock2\n```\nEnd").len(),
            2
        );
        // "handles unclosed code fence": end = text.length.
        let t = "Before\n```\nunclosed code block";
        assert_eq!(find_code_fences(t)[0].end, t.len());
        assert!(find_code_fences("No code fences here").is_empty());
        // isInsideCodeFence tests: strict inequalities.
        let f = [
            CodeFence { start: 10, end: 30 },
            CodeFence { start: 50, end: 70 },
        ];
        assert!(is_inside_code_fence(15, &f) && is_inside_code_fence(60, &f));
        assert!(
            !is_inside_code_fence(10, &f)
                && !is_inside_code_fence(30, &f)
                && !is_inside_code_fence(40, &f)
        );
    }

    #[test]
    fn best_cutoff_matches_qmd_tests() {
        // "prefers higher-scoring break points": 150.
        assert_eq!(
            find_best_cutoff(
                &[bp(100, 1.0), bp(150, 100.0), bp(180, 20.0)],
                200,
                100,
                0.7,
                &[]
            ),
            150
        );
        // "h2 at window edge beats blank at target": 90·0.3 = 27 > 20·0.998 → 100.
        assert_eq!(
            find_best_cutoff(&[bp(100, 90.0), bp(195, 20.0)], 200, 100, 0.7, &[]),
            100
        );
        // "high score easily overcomes distance": 150.
        assert_eq!(
            find_best_cutoff(&[bp(150, 100.0), bp(195, 1.0)], 200, 100, 0.7, &[]),
            150
        );
        // "returns target position when no breaks in window": 200.
        assert_eq!(find_best_cutoff(&[bp(10, 100.0)], 200, 100, 0.7, &[]), 200);
        // "skips break points inside code fences": 180.
        assert_eq!(
            find_best_cutoff(
                &[bp(150, 100.0), bp(180, 20.0)],
                200,
                100,
                0.7,
                &[CodeFence {
                    start: 140,
                    end: 160
                }]
            ),
            180
        );
        // "handles empty break points array": 200.
        assert_eq!(find_best_cutoff(&[], 200, 100, 0.7, &[]), 200);
        // The decay by hand: an h3 (80) 100 back in a 200 window: 80·(1 − 0.25·0.7) = 66 beats
        // a blank line (20) at the target.
        assert_eq!(
            find_best_cutoff(&[bp(100, 80.0), bp(200, 20.0)], 200, 200, 0.7, &[]),
            100
        );
        // ...but a list item (5) 100 back: 4.125 loses to a blank line (20) 150 back: 20·(1 − 0.5625·0.7) = 12.1.
        assert_eq!(
            find_best_cutoff(&[bp(50, 20.0), bp(100, 5.0)], 200, 200, 0.7, &[]),
            50
        );
    }

    #[test]
    fn chunk_boundaries_match_qmd_tests() {
        // "chunkDocument returns single chunk for small documents".
        let c = chunk_document("Small document content", 1000, 0, CHUNK_WINDOW_CHARS);
        assert_eq!(
            (c.len(), c[0].text.as_str(), c[0].pos),
            (1, "Small document content", 0)
        );
        // "chunkDocument prefers headings over arbitrary breaks": the first chunk ends at the heading.
        let content = format!(
            "{}\n# Main Section\n{}",
            "Introduction text here. ".repeat(70),
            "Main content text here. ".repeat(50)
        );
        let c = chunk_document(&content, 2000, 0, 800);
        assert!(c.len() >= 2);
        assert_eq!(c[0].text.len(), content.find("\n# Main Section").unwrap());
        // "chunkDocument with default params uses 900-token chunks": 2800 < first ≤ 3600.
        let c = chunk_document(
            &"Word ".repeat(2500),
            CHUNK_SIZE_CHARS,
            CHUNK_OVERLAP_CHARS,
            CHUNK_WINDOW_CHARS,
        );
        assert!(c.len() > 1 && c[0].text.len() > 2800 && c[0].text.len() <= 3600);
        // No break point at all ("A" × 3000, max 1000, overlap 150): hard cuts at the target,
        // each next chunk 150 before the previous end.
        let c = chunk_document(&"A".repeat(3000), 1000, 150, CHUNK_WINDOW_CHARS);
        assert_eq!(
            c.iter().map(|c| (c.pos, c.text.len())).collect::<Vec<_>>(),
            [(0, 1000), (850, 1000), (1700, 1000), (2550, 450)]
        );
    }

    #[test]
    fn chunk_boundaries_by_hand() {
        // 10-char paragraphs "aaaaaaaaa\n" ... with a heading: max 30, overlap 5, window 20.
        // text: p0 "xxxxxxxxxx" (0..10), "\n## h\n" (10..16), "yyyyyyyyyyyyyyyyyyyy" (16..36), "\n\n" blank at 36, "zzzz…"
        let text = format!(
            "{}\n## h\n{}\n\n{}",
            "x".repeat(10),
            "y".repeat(20),
            "z".repeat(20)
        );
        // Break points: h2 at 10 (90), newline at 15 (1), blank at 36 (20), newline at 37 (1).
        let b = scan_break_points(&text);
        assert_eq!(
            b.iter().map(|b| (b.pos, b.kind)).collect::<Vec<_>>(),
            [(10, "h2"), (15, "newline"), (36, "blank"), (37, "newline")]
        );
        // Chunk 1: target 30, window 10..30: h2 at 10: d = 20/20 → 90·0.3 = 27; newline at 15:
        // d = .75 → 1·0.606. Cut at 10. Next start 10 − 5 = 5.
        // Chunk 2: target 35, window 15..35: newline at 15 → 0.3·1 = 0.3 (the only one). Cut 15; next 10.
        // Chunk 3: target 40, window 20..40: blank at 36 (d=.2 → 20·0.972 = 19.44), newline at 37. Cut 36; next 31.
        // Chunk 4: 31 + 30 = 61 > len 58: to the end.
        let c = chunk_document(&text, 30, 5, 20);
        assert_eq!(
            c.iter()
                .map(|c| (c.pos, c.pos + c.text.len()))
                .collect::<Vec<_>>(),
            [(0, 10), (5, 15), (10, 36), (31, 58)]
        );
    }

    #[test]
    fn titles_match_qmd_tests() {
        // QMD tests "extractTitle ...".
        assert_eq!(
            extract_title("# My Title\n\nSome content here.", "file.md"),
            "My Title"
        );
        assert_eq!(
            extract_title("## My Subtitle\n\nSome content here.", "file.md"),
            "My Subtitle"
        );
        assert_eq!(
            extract_title("Just some plain text without headings.", "my-document.md"),
            "my-document"
        );
        assert_eq!(
            extract_title("# Notes\n\n## Actual Title\n\nContent", "file.md"),
            "Actual Title"
        );
        assert_eq!(
            extract_title("# 📝 Notes\n\n## Meeting Summary\n\nContent", "file.md"),
            "Meeting Summary"
        );
        // `###` is no title; the first `#`/`##` line wins whatever its level.
        assert_eq!(
            extract_title("### deep\ntext\n## Second\n# First", "a/b.md"),
            "Second"
        );
        assert_eq!(extract_title("#NoSpace", "dir/x.y.md"), "x.y");
    }

    #[test]
    fn embedding_formats_match_qmd_tests() {
        // QMD test "formatQueryForEmbedding adds search task prefix" / "formatDocForEmbedding ...".
        assert_eq!(
            format_query_for_embedding("how to deploy"),
            "task: search result | query: how to deploy"
        );
        assert_eq!(
            format_doc_for_embedding("some content", Some("My Doc")),
            "title: My Doc | text: some content"
        );
        assert_eq!(
            format_doc_for_embedding("some content", None),
            "title: none | text: some content"
        );
        assert_eq!(
            format_doc_for_embedding("x", Some("")),
            "title: none | text: x"
        );
    }

    /// Deterministic pseudo-random texts mixing every break-point kind, fences, CRLF and
    /// astral/BMP Unicode.
    fn variants() -> Vec<String> {
        let pieces = [
            "# Title\n",
            "## Sub\n",
            "### h3\n",
            "plain words here ",
            "\n\n",
            "- item\n",
            "12. num\n",
            "---\n",
            "```rust\nlet x = 1;\n\n# not a heading\n```\n",
            "é",
            "東京",
            "😀",
            "a\r\n",
            "\r\n\r\n",
            "```\nunclosed",
            "\u{a0}",
            "***\n",
        ];
        let mut out = Vec::new();
        let mut state = 0x9e3779b97f4a7c15u64;
        for n in 0..60 {
            let mut s = String::new();
            let len = 20 + n * 7;
            for _ in 0..len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                s.push_str(pieces[(state % pieces.len() as u64) as usize]);
            }
            out.push(s);
        }
        out
    }

    #[test]
    fn chunker_invariants_on_variants() {
        for text in variants() {
            let t = utf16(&text);
            let fences = find_code_fences(&text);
            for (max, overlap, window) in [(60, 9, 40), (200, 30, 80), (97, 0, 13), (40, 39, 40)] {
                let chunks = chunk_document(&text, max, overlap, window);
                assert!(!chunks.is_empty());
                // Every chunk is the exact slice its byte range and UTF-16 position say.
                for c in &chunks {
                    assert_eq!(&text[c.bytes.clone()], c.text);
                    assert_eq!(
                        String::from_utf16(&t[c.pos..c.pos + c.text.encode_utf16().count()])
                            .unwrap(),
                        c.text
                    );
                }
                // Coverage: starts at 0, ends at the end, no gaps, strictly forward.
                assert_eq!(chunks[0].pos, 0);
                let last = chunks.last().unwrap();
                assert_eq!(last.bytes.end, text.len());
                for w in chunks.windows(2) {
                    let (a, b) = (&w[0], &w[1]);
                    assert!(b.pos > a.pos, "forward progress");
                    assert!(b.bytes.start <= a.bytes.end, "no gap");
                    let a_end = a.pos + a.text.encode_utf16().count();
                    // Overlap honoured: the next chunk starts `overlap` units before the end (±1 for
                    // a surrogate pair), unless that would not move past the previous start.
                    let want = a_end as i64 - overlap as i64;
                    if want > a.pos as i64 + 1 {
                        assert!(
                            (b.pos as i64 - want).abs() <= 1,
                            "overlap: {} vs {want}",
                            b.pos
                        );
                    }
                    // A chunk that ends before the text's end never ends inside a code fence
                    // unless the hard cut at the target was forced (no break point in the window
                    // outside fences): then it ends exactly at the target.
                    if is_inside_code_fence(a_end, &fences) {
                        assert!(
                            a_end >= a.pos + max - 1 && a_end <= a.pos + max + 1,
                            "cut inside a fence at {a_end}"
                        );
                    }
                    assert!(a.text.encode_utf16().count() <= max + 1);
                }
            }
        }
    }

    #[test]
    fn crlf_and_unicode() {
        // `\r\n` lines: the break point is the `\n` (so `\r` stays in the previous chunk) and
        // headings after `\r\n` are seen.
        let b = scan_break_points("a\r\n# T\r\nb");
        assert_eq!(
            b[0],
            BreakPoint {
                pos: 2,
                score: 100.0,
                kind: "h1"
            }
        );
        // A surrogate pair is never split: 😀 is 2 UTF-16 units; hard cuts at odd targets move back.
        let text = "😀".repeat(50);
        let c = chunk_document(&text, 7, 2, 3);
        for ch in &c {
            assert!(ch.text.chars().all(|x| x == '😀'));
        }
        assert!(c.windows(2).all(|w| w[1].pos > w[0].pos));
        // Japanese (QMD test "handles UTF-8 characters correctly"): valid text, lengths in UTF-16.
        let c = chunk_document(&"こんにちは世界".repeat(500), 1000, 0, CHUNK_WINDOW_CHARS);
        assert_eq!(c[0].text.chars().count(), 1000);
        assert_eq!(c[1].pos, 1000);
    }

    #[test]
    fn token_chunking_resplits_long_chunks() {
        // A counter of one token per character: 2700-char first pass chunks are 2700 tokens >
        // 900, so each is split again at 0.95·900 = 855 chars, until every chunk fits.
        let text = "word ".repeat(1500);
        let mut count = |s: &str| -> anyhow::Result<usize> { Ok(s.encode_utf16().count()) };
        let chunks = chunk_document_by_tokens(&text, 900, 135, 200, &mut count).unwrap();
        assert!(chunks.len() > 8);
        for (c, n) in &chunks {
            assert!(*n <= 900, "{n}");
            assert_eq!(&text[c.bytes.clone()], c.text);
        }
        // One token per 5 chars: the first pass (2700 chars = 540 tokens) already fits.
        let mut count5 = |s: &str| -> anyhow::Result<usize> { Ok(s.len().div_ceil(5)) };
        let chunks = chunk_document_by_tokens(&text, 900, 135, 200, &mut count5).unwrap();
        let plain = chunk_document(&text, 2700, 405, 600);
        assert_eq!(
            chunks.iter().map(|(c, _)| c.pos).collect::<Vec<_>>(),
            plain.iter().map(|c| c.pos).collect::<Vec<_>>()
        );
    }
}

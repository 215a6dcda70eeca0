//! QMD's query-expansion reward, ported from `finetune/reward.py` of
//! [tobi/qmd](https://github.com/tobi/qmd) at commit
//! `4511b9bd4db0ae854eb88e68978305718c1f3bbf` (the last commit touching the file; repository
//! HEAD `dbfd0b4736aeaf761d1a16ca8e424f071df8feb9`). reward.py is QMD's "single source of truth
//! for scoring query expansions": the GRPO reward and its evaluation score. Every function keeps
//! reward.py's name, and every component, weight and threshold is reward.py's:
//!
//! | component    | range       | what                                                          |
//! |--------------|-------------|---------------------------------------------------------------|
//! | format       | 0..30       | no invalid lines (10), a `lex:` line (10), a `vec:` line (10)  |
//! | diversity    | -10..30     | both types, ≥2 lines, no near-duplicates, no query echo       |
//! | hyde         | 0..20       | optional `hyde:` passage: present, 50–200 chars, no repetition |
//! | quality      | ..23        | lex shorter than vec, natural vec, key terms, quotes, no filler |
//! | entity       | -∞..20      | named entities of the query kept in lex/vec lines             |
//! | think_bonus  | 0 or 20     | no `<think>` block                                            |
//!
//! `total` is their sum, `max_possible` 140 with a hyde line and 120 without, and the RL reward
//! ([`score_expansion`]) is `clamp(total / max_possible, 0, 1)`. Queries ending in
//! ` /only:lex|vec|hyde` are scored by reward.py's `_score_only_mode` rules.
//!
//! **Hard fails** (all components 0, `max_possible` 100): the cleaned output still holds a chat
//! template token (`<|im_start|>`, `<|im_end|>`, `<|endoftext|>`, `\nassistant\n`, `\nuser\n`),
//! or a non-empty line lacks a `lex:`/`vec:`/`hyde:` prefix. Cleaning first drops `<|im_end|>`
//! and, when both tags occur, every `<think>…</think>` block (costing the think bonus).
//!
//! **Valid expansion** (our aggregate, built only from reward.py's checks): no hard fail and the
//! full format score of 30 — every line prefixed, at least one `lex:` and one `vec:` line (for
//! `/only:` queries: the requested type present and no other type). Echoes and duplicates do not
//! make an expansion invalid; they lower its reward, as in reward.py.
//!
//! Not ported: reward.py's TRL wrapper (`QMDRewardFunction`, `extract_query_from_prompt`), which
//! only feeds these functions during GRPO training.
//!
//! Python semantics kept: lengths count code points, `str.split()`/`strip()` use Python's
//! whitespace (Unicode White_Space plus U+001C..U+001F), `isupper()` needs a cased character,
//! `\w` is a letter, digit or `_`. Set-valued deductions print their elements sorted (Python's
//! order depends on string hashing). `scripts/reward-parity.py` compares this port with
//! reward.py itself.
//!
//! ```
//! use tunelab::eval::expansion::{score_expansion, score_expansion_detailed};
//! let good = "lex: React hooks tutorial\nlex: useEffect useState\nvec: how to use React hooks in functional components";
//! let s = score_expansion_detailed("how to use React hooks", good);
//! assert!(s.valid && s.hard_fail.is_none());
//! assert_eq!(score_expansion("auth", "auth is important for security"), 0.0); // no prefix: hard fail
//! ```
use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

/// The reward.py commit this module ports.
pub const REWARD_PY_COMMIT: &str = "4511b9bd4db0ae854eb88e68978305718c1f3bbf";

/// `STOPWORDS`: ignored by the hyde repetition penalty.
const STOPWORDS: &[&str] = &["the", "a", "an", "is", "are", "to", "for", "of", "in", "and", "or", "it", "this", "that", "be", "with", "as", "on", "by"];

/// `KEY_TERM_STOPWORDS`: words that are neither key terms nor entities.
const KEY_TERM_STOPWORDS: &[&str] = &[
    "what", "is", "how", "to", "the", "a", "an", "in", "on", "for", "of", "and", "or", "with", "my", "your", "do", "does", "can", "i", "me", "we", "who", "where",
    "when", "why", "which", "find", "get", "show", "tell", "about", "from", "into", "between", "through", "during", "after", "before", "like", "than", "then",
    "that", "this", "their", "its", "was", "were", "has", "had", "been", "being", "have", "not", "but", "just", "also", "very", "so", "if", "at", "by", "up", "out",
    "all", "some", "any", "no", "each", "every", "both", "few", "more", "most", "other", "only", "same", "such", "here", "there", "asked", "said", "notes",
    "meeting", "email", "discussion", "conversation", "call",
];

/// `QUERY_VERB_STOPWORDS`: capitalised first words that are not entities ("Configure nginx").
const QUERY_VERB_STOPWORDS: &[&str] = &[
    "configure", "setup", "install", "build", "create", "make", "run", "start", "stop", "check", "test", "debug", "fix", "update", "change", "add", "remove",
    "delete", "use", "using", "need", "want", "should", "would", "could", "help", "please", "best", "good", "new", "old", "latest", "recent", "setting",
    "settings", "compare", "comparing", "implement", "implementing", "deploy", "deploying", "migrate", "migrating", "optimize", "optimizing", "understand",
    "understanding", "explain", "list", "describe", "define", "convert", "connecting", "performance", "overview", "introduction", "tutorial", "example",
    "difference", "between", "about", "review", "resolve", "resolving", "troubleshoot", "troubleshooting", "monitor", "monitoring", "manage", "managing",
    "enable", "disable", "set", "write", "read", "search", "possible", "common", "typical", "recommended", "alternative",
];

/// `GENERIC_LEX_PHRASES`: lex lines that are only these are useless.
const GENERIC_LEX_PHRASES: &[&str] = &[
    "find information about", "search for", "look up", "get information", "learn about", "information on", "details about", "find out about", "what is",
    "how to", "guide to", "help with",
];

/// `INTERIOR_FILLER_WORDS`: template filler, penalised in lex lines when the query lacks it.
const INTERIOR_FILLER_WORDS: &[&str] = &["overview", "basics"];

/// `CHAT_TEMPLATE_TOKENS`: any of these left in the output is a hard fail.
const CHAT_TEMPLATE_TOKENS: &[&str] = &["<|im_start|>", "<|im_end|>", "<|endoftext|>", "\nassistant\n", "\nuser\n"];

/// Python's `str.isspace` (White_Space plus the information separators U+001C..U+001F).
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `s.strip()`.
fn strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

/// Python's `s.split()`.
fn split_words(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_py_space).filter(|w| !w.is_empty())
}

/// Python's `len(s)`: code points.
fn py_len(s: &str) -> usize {
    s.chars().count()
}

/// Python's `s[:n]`.
fn head(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// Python's `str.isupper()`: at least one cased character and no lowercase one.
fn py_isupper(s: &str) -> bool {
    s.chars().any(char::is_uppercase) && !s.chars().any(char::is_lowercase)
}

/// Python's repr of a set of strings, elements sorted: `{'bob', 'c++'}`.
fn py_set_repr<'a>(items: impl IntoIterator<Item = &'a String>) -> String {
    let items: BTreeSet<&String> = items.into_iter().collect();
    format!("{{{}}}", items.iter().map(|s| format!("'{s}'")).collect::<Vec<_>>().join(", "))
}

/// One of QMD's expansion types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LineKind {
    Lex,
    Vec,
    Hyde,
}

impl LineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LineKind::Lex => "lex",
            LineKind::Vec => "vec",
            LineKind::Hyde => "hyde",
        }
    }
}

/// `parse_expansion`'s result: the texts after each prefix (trimmed) and the unprefixed lines.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parsed {
    pub lex: Vec<String>,
    pub vec: Vec<String>,
    pub hyde: Vec<String>,
    pub invalid: Vec<String>,
}

impl Parsed {
    fn of(&self, kind: LineKind) -> &[String] {
        match kind {
            LineKind::Lex => &self.lex,
            LineKind::Vec => &self.vec,
            LineKind::Hyde => &self.hyde,
        }
    }
}

/// `parse_expansion`: split into lines, trim, sort `lex:`/`vec:`/`hyde:` lines (case-sensitive
/// prefixes) by type; any other non-empty line is invalid.
pub fn parse_expansion(text: &str) -> Parsed {
    let mut p = Parsed::default();
    for line in strip(text).split('\n') {
        let line = strip(line);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("lex:") {
            p.lex.push(strip(rest).to_string());
        } else if let Some(rest) = line.strip_prefix("vec:") {
            p.vec.push(strip(rest).to_string());
        } else if let Some(rest) = line.strip_prefix("hyde:") {
            p.hyde.push(strip(rest).to_string());
        } else {
            p.invalid.push(line.to_string());
        }
    }
    p
}

/// `detect_only_mode`: a query ending in whitespace then `/only:lex|vec|hyde` (any case, trailing
/// whitespace allowed) asks for that type only. Returns the type and the query before it.
pub fn detect_only_mode(query: &str) -> (Option<LineKind>, &str) {
    let t = query.trim_end_matches(is_py_space);
    for kind in [LineKind::Lex, LineKind::Vec, LineKind::Hyde] {
        let tag = format!("/only:{}", kind.as_str());
        let Some(start) = t.len().checked_sub(tag.len()) else { continue };
        if !t.is_char_boundary(start) || !t[start..].eq_ignore_ascii_case(&tag) {
            continue;
        }
        // `\s+` before the tag: the match starts where that whitespace run starts.
        let before = &t[..start];
        let base = before.trim_end_matches(is_py_space);
        if base.len() < before.len() {
            return (Some(kind), strip(base));
        }
    }
    (None, query)
}

/// `clean_model_output`: drop `<|im_end|>`, trim, and when both `<think>` and `</think>` occur,
/// remove every `<think>…</think>` block (non-greedy, as `re.sub(r'<think>.*?</think>', '')`).
/// Returns the text and whether thinking was used.
pub fn clean_model_output(text: &str) -> (String, bool) {
    let mut text = strip(&text.replace("<|im_end|>", "")).to_string();
    let used_thinking = text.contains("<think>") && text.contains("</think>");
    if used_thinking {
        let (mut out, mut rest) = (String::new(), text.as_str());
        while let Some(open) = rest.find("<think>") {
            let Some(close) = rest[open + "<think>".len()..].find("</think>") else { break };
            out.push_str(&rest[..open]);
            rest = &rest[open + "<think>".len() + close + "</think>".len()..];
        }
        out.push_str(rest);
        text = strip(&out).to_string();
    }
    (text, used_thinking)
}

/// `extract_named_entities`: lowercased acronyms, capitalised words (the first word only when it
/// is not a query verb), words with `.+-#@`, CamelCase, and the word right after one of those.
pub fn extract_named_entities(query: &str) -> BTreeSet<String> {
    let mut entities = BTreeSet::new();
    let mut prev_was_base_entity = false;
    for (i, word) in split_words(query).enumerate() {
        let clean = word.trim_matches(|c| ".,!?:;()[]\"'".contains(c));
        let Some(first) = clean.chars().next() else {
            prev_was_base_entity = false;
            continue;
        };
        let lower = clean.to_lowercase();
        let mut is_base_entity = false;
        if py_isupper(clean) && py_len(clean) >= 2 {
            entities.insert(lower);
            is_base_entity = true;
        } else if first.is_uppercase() && !KEY_TERM_STOPWORDS.contains(&lower.as_str()) {
            if i > 0 || !QUERY_VERB_STOPWORDS.contains(&lower.as_str()) {
                entities.insert(lower);
                is_base_entity = true;
            }
        } else if clean.contains(['.', '+', '-', '#', '@']) && py_len(clean) >= 2 {
            entities.insert(lower);
            is_base_entity = true;
        } else if py_len(clean) > 1 && clean.chars().skip(1).any(char::is_uppercase) && first.is_uppercase() {
            // Only reached by stopwords written in CamelCase ("WhAt"): the branch above took the rest.
            entities.insert(lower);
            is_base_entity = true;
        } else if prev_was_base_entity && !KEY_TERM_STOPWORDS.contains(&lower.as_str()) {
            entities.insert(lower);
        }
        prev_was_base_entity = is_base_entity;
    }
    entities
}

/// `get_key_terms`: the query's lowercased words minus the key-term stopwords.
fn get_key_terms(query: &str) -> BTreeSet<String> {
    let lower = query.to_lowercase();
    split_words(&lower).filter(|w| !KEY_TERM_STOPWORDS.contains(w)).map(str::to_string).collect()
}

/// `lex_preserves_key_terms`: the line shares a word with the query's key terms (or there are none).
fn lex_preserves_key_terms(lex_line: &str, query: &str) -> bool {
    let key_terms = get_key_terms(query);
    if key_terms.is_empty() {
        return true;
    }
    let lower = lex_line.to_lowercase();
    split_words(&lower).any(|w| key_terms.contains(w))
}

/// `lex_preserves_entities`: some entity occurs in the line as a substring (or there are none).
fn lex_preserves_entities(line: &str, entities: &BTreeSet<String>) -> bool {
    if entities.is_empty() {
        return true;
    }
    let lower = line.to_lowercase();
    entities.iter().any(|e| lower.contains(e.as_str()))
}

/// `lex_has_filler`: the line holds a filler word the query does not.
fn lex_has_filler(lex_line: &str, query: &str) -> bool {
    let ql = query.to_lowercase();
    let query_words: BTreeSet<&str> = split_words(&ql).collect();
    let lower = lex_line.to_lowercase();
    split_words(&lower).any(|w| INTERIOR_FILLER_WORDS.contains(&w) && !query_words.contains(w))
}

/// `lex_is_generic`: the line is (nearly) nothing but a generic phrase such as "search for".
fn lex_is_generic(lex_line: &str) -> bool {
    let lower = strip(&lex_line.to_lowercase()).to_string();
    GENERIC_LEX_PHRASES.iter().any(|phrase| {
        let first = phrase.split(' ').next().expect("phrases are non-empty");
        if !(lower.contains(phrase) || lower.starts_with(first)) {
            return false;
        }
        let mut remaining = lower.clone();
        for word in phrase.split(' ') {
            remaining = strip(&remaining.replacen(word, "", 1)).to_string();
        }
        py_len(&remaining) < 3
    })
}

/// `word_set_distance`: size of the symmetric difference of the two lowercased word sets.
fn word_set_distance(a: &str, b: &str) -> usize {
    let (la, lb) = (a.to_lowercase(), b.to_lowercase());
    let sa: BTreeSet<&str> = split_words(&la).collect();
    let sb: BTreeSet<&str> = split_words(&lb).collect();
    sa.symmetric_difference(&sb).count()
}

/// `is_diverse`: not equal, neither contains the other, and at least `min_distance` words differ.
fn is_diverse(a: &str, b: &str, min_distance: usize) -> bool {
    let (la, lb) = (a.to_lowercase(), b.to_lowercase());
    let (a, b) = (strip(&la), strip(&lb));
    if a == b || b.contains(a) || a.contains(b) {
        return false;
    }
    word_set_distance(a, b) >= min_distance
}

/// `echoes_query`: the line is the query, or contains it with fewer than 10 extra characters.
fn echoes_query(expansion: &str, query: &str) -> bool {
    let (le, lq) = (expansion.to_lowercase(), query.to_lowercase());
    let (exp, q) = (strip(&le), strip(&lq));
    exp == q || (exp.contains(q) && py_len(exp) < py_len(q) + 10)
}

/// `word_repetition_penalty`: 2 per repetition beyond the second of any word (`\w+` run) longer
/// than 2 characters that is not a stopword.
fn word_repetition_penalty(text: &str) -> i64 {
    let lower = text.to_lowercase();
    let mut counts: HashMap<&str, i64> = HashMap::new();
    for w in lower.split(|c: char| !(c.is_alphanumeric() || c == '_')).filter(|w| !w.is_empty()) {
        *counts.entry(w).or_default() += 1;
    }
    counts.iter().filter(|(w, c)| **c >= 3 && !STOPWORDS.contains(w) && py_len(w) > 2).map(|(_, c)| (c - 2) * 2).sum()
}

/// `score_expansion_detailed`'s breakdown of one expansion, plus its reward and validity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExpansionScore {
    pub format: i64,
    pub diversity: i64,
    pub hyde: i64,
    pub quality: i64,
    /// Clamped at 0 in the report, as reward.py does (the total uses the unclamped value).
    pub entity: i64,
    pub think_bonus: i64,
    /// The sum of the components (reward.py clamps it at 0 outside `/only:` mode).
    pub total: i64,
    /// 140 with a hyde line, 120 without, 100 for hard fails.
    pub max_possible: i64,
    /// `total / max_possible` in percent, clamped to 0..100, capped at 50 when a lex line echoes
    /// the query, rounded to one decimal.
    pub percentage: f64,
    /// Excellent (≥80%), Good (≥60), Acceptable (≥40), Poor (≥20), Failed.
    pub rating: String,
    pub deductions: Vec<String>,
    pub parsed: Parsed,
    /// Sorted (reward.py returns them in set order).
    pub entities_detected: Vec<String>,
    pub only_mode: Option<LineKind>,
    /// `score_expansion`: `clamp(total / max_possible, 0, 1)` (the echo cap does not apply).
    pub reward: f64,
    /// Why reward.py hard-failed the output (chat-template leakage or an unprefixed line).
    pub hard_fail: Option<String>,
    /// No hard fail and the full format score of 30 (see the module notes).
    pub valid: bool,
}

/// reward.py's rating bands of a percentage.
fn rating(percentage: f64) -> &'static str {
    if percentage >= 80.0 {
        "Excellent"
    } else if percentage >= 60.0 {
        "Good"
    } else if percentage >= 40.0 {
        "Acceptable"
    } else if percentage >= 20.0 {
        "Poor"
    } else {
        "Failed"
    }
}

/// Python's `round(x, 1)` (no ties are reachable: percentages are multiples of 100/120, 100/140
/// or 1 before the clamp and cap).
fn round1(x: f64) -> f64 {
    format!("{x:.1}").parse().expect("a formatted float parses")
}

/// Components as reward.py's two scorers compute them; finished by [`finish`].
struct Raw {
    format: i64,
    diversity: i64,
    hyde: i64,
    quality: i64,
    entity: i64,
    think_bonus: i64,
    total: i64,
    max_possible: i64,
    percentage: f64,
    deductions: Vec<String>,
    parsed: Parsed,
    entities: BTreeSet<String>,
    only_mode: Option<LineKind>,
    hard_fail: Option<String>,
}

fn finish(r: Raw) -> ExpansionScore {
    let reward = (r.total as f64 / r.max_possible as f64).clamp(0.0, 1.0);
    let full_format = r.format == 30;
    ExpansionScore {
        format: r.format,
        diversity: r.diversity,
        hyde: r.hyde,
        quality: r.quality,
        entity: r.entity,
        think_bonus: r.think_bonus,
        total: r.total,
        max_possible: r.max_possible,
        percentage: round1(r.percentage),
        rating: rating(r.percentage).to_string(),
        deductions: r.deductions,
        parsed: r.parsed,
        entities_detected: r.entities.into_iter().collect(),
        only_mode: r.only_mode,
        reward,
        valid: r.hard_fail.is_none() && full_format,
        hard_fail: r.hard_fail,
    }
}

/// reward.py's `_fail` (and only mode's missing-type failure): everything 0, max 100.
fn failed(reason: String, parsed: Parsed, only_mode: Option<LineKind>, hard: bool) -> ExpansionScore {
    finish(Raw {
        format: 0,
        diversity: 0,
        hyde: 0,
        quality: 0,
        entity: 0,
        think_bonus: 0,
        total: 0,
        max_possible: 100,
        percentage: 0.0,
        hard_fail: hard.then(|| reason.clone()),
        deductions: vec![reason],
        parsed,
        entities: BTreeSet::new(),
        only_mode,
    })
}

/// Count the near-duplicate pairs of `items` (`not is_diverse`), noting each in `deductions`.
fn duplicates(items: &[String], threshold: usize, label: &str, deductions: &mut Vec<String>) -> i64 {
    let mut n = 0;
    for (i, a) in items.iter().enumerate() {
        for b in &items[i + 1..] {
            if !is_diverse(a, b, threshold) {
                n += 1;
                deductions.push(format!("{label} duplicate: {}...", head(a, 20)));
            }
        }
    }
    n
}

/// `_score_only_mode`: a `/only:TYPE` query expects lines of that type only.
fn score_only_mode(base_query: &str, text: &str, used_thinking: bool, only: LineKind) -> ExpansionScore {
    let parsed = parse_expansion(text);
    let mut deductions = Vec::new();
    let expected = parsed.of(only).to_vec();
    if expected.is_empty() {
        return failed(format!("missing expected {}: output", only.as_str()), parsed, Some(only), false);
    }
    let unwanted: i64 = [LineKind::Lex, LineKind::Vec, LineKind::Hyde].into_iter().filter(|k| *k != only).map(|k| parsed.of(k).len() as i64).sum();
    if unwanted > 0 {
        deductions.push(format!("contains unwanted types (expected only {})", only.as_str()));
    }
    let format = if unwanted == 0 { 30 } else { (30 - unwanted * 10).max(0) };

    let mut diversity = 0;
    let threshold = if split_words(base_query).count() >= 5 { 3 } else { 2 };
    if expected.len() >= 2 {
        diversity += 15;
        let dups = duplicates(&expected, threshold, only.as_str(), &mut deductions);
        diversity += (15 - 5 * dups).max(0);
    } else if expected.len() == 1 {
        diversity = 15;
    }
    for e in &expected {
        if echoes_query(e, base_query) {
            diversity -= 5;
            deductions.push(format!("echoes query: {}...", head(e, 20)));
        }
    }
    let diversity = diversity.max(0);

    let mut quality = 10;
    let entities = extract_named_entities(base_query);
    match only {
        LineKind::Lex => {
            if expected.iter().all(|l| lex_preserves_key_terms(l, base_query)) {
                quality += 5;
            }
            let generic = expected.iter().filter(|l| lex_is_generic(l)).count();
            if generic == 0 {
                quality += 5;
            } else {
                deductions.push(format!("{generic} generic lex phrases"));
            }
            let filler = expected.iter().filter(|l| lex_has_filler(l, base_query)).count() as i64;
            if filler > 0 {
                quality -= filler * 3;
                deductions.push(format!("{filler} lex line(s) with filler words"));
            }
        }
        LineKind::Vec => {
            if expected.iter().all(|v| v.contains(' ') && py_len(v) > 15) {
                quality += 10;
            } else {
                quality += 5;
                deductions.push("vec not all natural language".into());
            }
        }
        LineKind::Hyde => {
            let n = py_len(&expected[0]);
            if (50..=200).contains(&n) {
                quality += 10;
            } else if (30..=300).contains(&n) {
                quality += 5;
                deductions.push(format!("hyde length {n} (ideal: 50-200)"));
            } else {
                deductions.push(format!("hyde length {n} out of range"));
            }
        }
    }

    let mut entity = 10;
    if !entities.is_empty() {
        let with = expected.iter().filter(|e| lex_preserves_entities(e, &entities)).count();
        if with == expected.len() {
            entity += 10;
        } else if with > 0 {
            entity += 5;
        } else {
            entity = 0;
            deductions.push(format!("missing entities: {}", py_set_repr(&entities)));
        }
    }
    let think_bonus = if used_thinking { 0 } else { 20 };
    let total = format + diversity + quality + entity + think_bonus;
    let max_possible = 120;
    finish(Raw {
        format,
        diversity,
        hyde: 0,
        quality,
        entity,
        think_bonus,
        total,
        max_possible,
        percentage: (total as f64 / max_possible as f64 * 100.0).clamp(0.0, 100.0),
        deductions,
        parsed,
        entities,
        only_mode: Some(only),
        hard_fail: None,
    })
}

/// `score_expansion_detailed`: score `expansion` (raw model output) for `query`.
pub fn score_expansion_detailed(query: &str, expansion: &str) -> ExpansionScore {
    let (text, used_thinking) = clean_model_output(strip(expansion));
    let (only, base_query) = detect_only_mode(query);
    let hard_fail = |reason: String| failed(reason, parse_expansion(expansion), only, true);
    if CHAT_TEMPLATE_TOKENS.iter().any(|t| text.contains(t)) {
        return hard_fail("CHAT TEMPLATE LEAKAGE".into());
    }
    for line in text.split('\n') {
        let line = strip(line);
        if !line.is_empty() && !["lex:", "vec:", "hyde:"].iter().any(|p| line.starts_with(p)) {
            return hard_fail(format!("INVALID LINE: {}", head(line, 50)));
        }
    }
    if let Some(only) = only {
        return score_only_mode(base_query, &text, used_thinking, only);
    }

    let parsed = parse_expansion(&text);
    let mut deductions: Vec<String> = Vec::new();

    // Format (0-30): no invalid lines is guaranteed by the hard fail.
    let mut format = 10;
    for (lines, name) in [(&parsed.lex, "lex"), (&parsed.vec, "vec")] {
        if lines.is_empty() {
            deductions.push(format!("missing {name}:"));
        } else {
            format += 10;
        }
    }

    // Diversity (0-30; the echo part can go to -10).
    let mut diversity = 0;
    if !parsed.lex.is_empty() && !parsed.vec.is_empty() {
        diversity += 10;
    } else {
        deductions.push("only one type".into());
    }
    if parsed.lex.len() + parsed.vec.len() >= 2 {
        diversity += 5;
    }
    let threshold = if split_words(query).count() >= 5 { 3 } else { 2 };
    diversity += (5 - 2 * duplicates(&parsed.lex, threshold, "lex", &mut deductions)).max(0);
    diversity += (5 - 2 * duplicates(&parsed.vec, threshold, "vec", &mut deductions)).max(0);
    let mut echo = 5;
    let mut lex_echo_count = 0;
    for e in &parsed.lex {
        if echoes_query(e, query) {
            lex_echo_count += 1;
            deductions.push(format!("lex echoes query: {}...", head(e, 20)));
        }
    }
    // A lex echo is useless to a keyword index: -10 each.
    echo -= lex_echo_count * 10;
    for e in &parsed.vec {
        if echoes_query(e, query) {
            echo -= 3;
            deductions.push(format!("vec echoes query: {}...", head(e, 20)));
        }
    }
    diversity += echo.max(-10);

    // HyDE (0-20, optional).
    let mut hyde = 0;
    if let Some(h) = parsed.hyde.first() {
        hyde += 5;
        let n = py_len(h);
        if (50..=200).contains(&n) {
            hyde += 5;
        } else if n < 50 {
            hyde += 2;
            deductions.push(format!("hyde too short ({n})"));
        } else {
            deductions.push(format!("hyde too long ({n})"));
        }
        if !h.contains('\n') {
            hyde += 5;
        }
        hyde += (5 - word_repetition_penalty(h)).max(0);
    }

    let entities = extract_named_entities(query);

    // Quality (0-20, +3 bonus, minus filler).
    let mut quality = 5;
    if !parsed.lex.is_empty() && !parsed.vec.is_empty() {
        let avg = |v: &[String]| v.iter().map(|s| py_len(s)).sum::<usize>() as f64 / v.len() as f64;
        if avg(&parsed.lex) <= avg(&parsed.vec) {
            quality += 5;
        } else {
            deductions.push("lex longer than vec".into());
        }
    }
    if !parsed.vec.is_empty() {
        let natural = parsed.vec.iter().filter(|v| v.contains(' ') && py_len(v) > 15).count();
        quality += if natural == parsed.vec.len() { 5 } else { 2 };
    }
    if !parsed.lex.is_empty() {
        let with_terms = parsed.lex.iter().filter(|l| lex_preserves_key_terms(l, query)).count();
        if with_terms == parsed.lex.len() {
            quality += 5;
        } else if with_terms > 0 {
            quality += 2;
        } else {
            deductions.push("lex missing key terms".into());
        }
        let filler = parsed.lex.iter().filter(|l| lex_has_filler(l, query)).count() as i64;
        if filler > 0 {
            quality -= filler * 3;
            deductions.push(format!("{filler} lex line(s) with filler words"));
        }
        // Quoted phrases in lex lines for multi-word queries.
        if split_words(query).count() >= 2 && parsed.lex.join(" ").contains('"') {
            quality += 3;
        }
    }

    // Entity preservation (unbounded below, +20 at most).
    let mut entity: i64 = 0;
    if !entities.is_empty() && !parsed.lex.is_empty() {
        let with = parsed.lex.iter().filter(|l| lex_preserves_entities(l, &entities)).count();
        if with == parsed.lex.len() {
            entity += 15;
        } else if with > 0 {
            entity += 5;
        } else {
            entity -= 30;
            deductions.push(format!("lex missing entities: {}", py_set_repr(&entities)));
        }
        let all_output = parsed.lex.iter().chain(&parsed.vec).cloned().collect::<Vec<_>>().join(" ").to_lowercase();
        let missing: Vec<&String> = entities.iter().filter(|e| !all_output.contains(e.as_str())).collect();
        if !missing.is_empty() {
            entity -= missing.len() as i64 * 20;
            deductions.push(format!("entities dropped: {}", py_set_repr(missing)));
        }
        let generic = parsed.lex.iter().filter(|l| lex_is_generic(l)).count() as i64;
        if generic > 0 {
            entity -= generic * 15;
            deductions.push(format!("{generic} generic lex phrases"));
        }
        if parsed.vec.iter().any(|v| lex_preserves_entities(v, &entities)) {
            entity += 5;
        }
    } else if entities.is_empty() {
        entity = 10;
    }

    let think_bonus = if used_thinking { 0 } else { 20 };
    let total = format + diversity + hyde + quality + entity + think_bonus;
    let max_possible = if parsed.hyde.is_empty() { 120 } else { 140 };
    let mut percentage = (total as f64 / max_possible as f64 * 100.0).clamp(0.0, 100.0);
    if lex_echo_count > 0 {
        percentage = percentage.min(50.0);
        deductions.insert(0, format!("CAPPED: {lex_echo_count} lex echo(es)"));
    }
    finish(Raw {
        format,
        diversity,
        hyde,
        quality,
        entity: entity.max(0),
        think_bonus,
        total: total.max(0),
        max_possible,
        percentage,
        deductions,
        parsed,
        entities,
        only_mode: None,
        hard_fail: None,
    })
}

/// `score_expansion`: the RL reward in `[0, 1]`.
pub fn score_expansion(query: &str, expansion: &str) -> f64 {
    score_expansion_detailed(query, expansion).reward
}

/// Names of the per-expansion numbers an evaluation reports, in report order.
pub const MEASURES: [&str; 9] = ["reward", "valid", "format", "diversity", "hyde", "quality", "entity", "think_bonus", "percentage"];

impl ExpansionScore {
    /// The value of one of [`MEASURES`] (`valid` as 0/1).
    pub fn measure(&self, name: &str) -> Option<f64> {
        Some(match name {
            "reward" => self.reward,
            "valid" => f64::from(u8::from(self.valid)),
            "format" => self.format as f64,
            "diversity" => self.diversity as f64,
            "hyde" => self.hyde as f64,
            "quality" => self.quality as f64,
            "entity" => self.entity as f64,
            "think_bonus" => self.think_bonus as f64,
            "percentage" => self.percentage,
            _ => return None,
        })
    }
}

/// The aggregate of a set of scored expansions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExpansionSummary {
    pub n: usize,
    /// Mean of [`ExpansionScore::reward`].
    pub mean_reward: f64,
    /// Fraction of valid expansions (see the module notes).
    pub valid_rate: f64,
    /// Fraction that reward.py hard-failed.
    pub hard_fail_rate: f64,
    /// Mean of every one of [`MEASURES`].
    pub means: BTreeMap<String, f64>,
    /// Count per rating.
    pub ratings: BTreeMap<String, usize>,
}

impl ExpansionSummary {
    /// Aggregate `scores` (NaN means for none).
    pub fn of(scores: &[ExpansionScore]) -> Self {
        let n = scores.len();
        let mean = |f: &dyn Fn(&ExpansionScore) -> f64| if n == 0 { f64::NAN } else { scores.iter().map(f).sum::<f64>() / n as f64 };
        let means = MEASURES.iter().map(|m| (m.to_string(), mean(&|s| s.measure(m).expect("a known measure")))).collect();
        let mut ratings = BTreeMap::new();
        for s in scores {
            *ratings.entry(s.rating.clone()).or_default() += 1;
        }
        ExpansionSummary {
            n,
            mean_reward: mean(&|s| s.reward),
            valid_rate: mean(&|s| f64::from(u8::from(s.valid))),
            hard_fail_rate: mean(&|s| f64::from(u8::from(s.hard_fail.is_some()))),
            means,
            ratings,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// reward.py's scores of 40 strings (its own self-test cases first), written by
    /// `scripts/reward-parity.py` from QMD's reward.py at [`REWARD_PY_COMMIT`].
    const REWARD_PY_SCORES: &str = include_str!("../../tests/fixtures/expansion/reward_py_scores.jsonl");

    #[test]
    fn matches_reward_py_on_its_fixture() {
        let mut n = 0;
        for (i, line) in REWARD_PY_SCORES.lines().enumerate() {
            let want: serde_json::Value = serde_json::from_str(line).unwrap();
            let (query, expansion) = (want["query"].as_str().unwrap(), want["expansion"].as_str().unwrap());
            let got = score_expansion_detailed(query, expansion);
            let case = format!("case {}: {query:?} / {expansion:?}", i + 1);
            assert!((got.reward - want["reward"].as_f64().unwrap()).abs() <= 1e-9, "{case}: reward {} vs {}", got.reward, want["reward"]);
            for (name, ours) in [
                ("format", got.format),
                ("diversity", got.diversity),
                ("hyde", got.hyde),
                ("quality", got.quality),
                ("entity", got.entity),
                ("think_bonus", got.think_bonus),
                ("total", got.total),
                ("max_possible", got.max_possible),
            ] {
                assert_eq!(ours, want[name].as_i64().unwrap(), "{case}: {name}");
            }
            assert!((got.percentage - want["percentage"].as_f64().unwrap()).abs() <= 1e-9, "{case}: percentage");
            assert_eq!(got.rating, want["rating"].as_str().unwrap(), "{case}: rating");
            assert_eq!(serde_json::to_value(&got.deductions).unwrap(), want["deductions"], "{case}: deductions");
            assert_eq!(serde_json::to_value(&got.parsed).unwrap(), want["parsed"], "{case}: parsed");
            assert_eq!(serde_json::to_value(&got.entities_detected).unwrap(), want["entities_detected"], "{case}: entities");
            assert_eq!(serde_json::to_value(got.only_mode).unwrap(), want["only_mode"], "{case}: only mode");
            n += 1;
        }
        assert_eq!(n, 40, "every fixture case checked");
    }

    const GOOD: &str = "lex: mastmeal porridge stories\nlex: parrin acorn hazelnut sayings\nvec: what stories and sayings are told about mastmeal porridge\nhyde: Parrin is a porridge of roasted hazelnut and leached acorn meal; children are told it makes them stubborn.";

    #[test]
    fn a_good_expansion_is_valid_and_scores_high() {
        let s = score_expansion_detailed("mastmeal folklore", GOOD);
        assert!(s.valid, "{s:?}");
        assert_eq!((s.format, s.max_possible), (30, 140));
        assert!(s.reward > 0.8, "{}", s.reward);
        assert!(s.deductions.is_empty(), "{:?}", s.deductions);
    }

    #[test]
    fn echoing_the_query_costs_and_caps() {
        let good = score_expansion_detailed("mastmeal folklore", GOOD);
        let echo = score_expansion_detailed("mastmeal folklore", &GOOD.replacen("lex: mastmeal porridge stories", "lex: Mastmeal folklore", 1));
        assert!(echo.reward < good.reward - 0.05, "{} vs {}", echo.reward, good.reward);
        assert!(echo.percentage <= 50.0 && echo.deductions[0].starts_with("CAPPED"), "{echo:?}");
        // Still well-formed: an echo lowers the reward, it does not make the format invalid.
        assert!(echo.valid);
    }

    #[test]
    fn missing_lex_empty_and_junk_are_invalid() {
        let no_lex = score_expansion_detailed("mastmeal folklore", "vec: what stories are told about mastmeal porridge");
        assert!(!no_lex.valid && no_lex.hard_fail.is_none() && no_lex.format == 20);
        assert!(no_lex.deductions.contains(&"missing lex:".to_string()));
        for empty in ["", "  \n \n", "<think>nothing</think>"] {
            let s = score_expansion_detailed("mastmeal folklore", empty);
            assert!(!s.valid && s.format == 10, "{empty:?}: {s:?}");
        }
        for junk in ["Sure, here you go:\nlex: a b\nvec: c d e f", "lex: a\n<|im_start|>user\nvec: b", "**lex**: a\nvec: b"] {
            let s = score_expansion_detailed("q", junk);
            assert!(!s.valid && s.hard_fail.is_some() && s.reward == 0.0 && s.max_possible == 100, "{junk:?}: {s:?}");
        }
    }

    #[test]
    fn thinking_is_stripped_but_costs_the_bonus() {
        let plain = score_expansion_detailed("mastmeal folklore", GOOD);
        let thought = score_expansion_detailed("mastmeal folklore", &format!("<think>\nlet me see\n</think>\n{GOOD}<|im_end|>"));
        assert!(thought.valid && thought.parsed == plain.parsed);
        assert_eq!((plain.think_bonus, thought.think_bonus), (20, 0));
        assert_eq!(thought.total, plain.total - 20);
    }

    #[test]
    fn duplicates_lower_diversity() {
        let dup = "lex: mastmeal porridge stories\nlex: mastmeal porridge stories\nvec: what stories are told about mastmeal\nvec: what stories are told about mastmeal";
        let div = "lex: mastmeal porridge stories\nlex: parrin acorn sayings\nvec: what stories are told about mastmeal\nvec: folk sayings about nut-meal porridge in the valley";
        let (d, v) = (score_expansion_detailed("mastmeal folklore", dup), score_expansion_detailed("mastmeal folklore", div));
        assert_eq!(v.diversity - d.diversity, 4, "{:?}", d.deductions);
        assert!(d.deductions.iter().any(|x| x.starts_with("lex duplicate")) && d.deductions.iter().any(|x| x.starts_with("vec duplicate")));
    }

    #[test]
    fn parser_and_helpers_follow_python() {
        let p = parse_expansion("  lex:  a b \n\nVEC: x\nvec:y\nhyde:\tz\t");
        assert_eq!((p.lex, p.vec, p.hyde, p.invalid), (vec!["a b".to_string()], vec!["y".to_string()], vec!["z".to_string()], vec!["VEC: x".to_string()]));
        assert_eq!(detect_only_mode("auth /only:lex"), (Some(LineKind::Lex), "auth"));
        assert_eq!(detect_only_mode("auth \t/ONLY:Hyde \n"), (Some(LineKind::Hyde), "auth"));
        assert_eq!(detect_only_mode("auth/only:lex"), (None, "auth/only:lex"), "needs whitespace before the slash");
        assert_eq!(clean_model_output("<think>a</think>x<think>b</think>y<|im_end|>"), ("xy".to_string(), true));
        assert_eq!(clean_model_output("<think>open\nlex: a"), ("<think>open\nlex: a".to_string(), false));
        let e = extract_named_entities("who is TDS motorsports team");
        assert_eq!(e.into_iter().collect::<Vec<_>>(), ["motorsports", "tds"], "one level of compound chaining");
        let e = extract_named_entities("Configure nginx for C++ and node.js");
        assert_eq!(e.into_iter().collect::<Vec<_>>(), ["c++", "node.js"], "query verbs are not entities");
        assert!(py_isupper("C++") && !py_isupper("++") && !py_isupper("Cpp"));
        assert_eq!(word_repetition_penalty("Tide tide TIDE tide, the the the the"), 4);
        assert!(lex_is_generic("search for") && lex_is_generic("How to") && !lex_is_generic("search for tide tables"));
        assert!(echoes_query("Tide times now", "tide times") && !echoes_query("tide times at Ostrel harbour", "tide times"));
        assert!(!is_diverse("a b c", "a b c d", 2) && is_diverse("a b c", "a d e", 2));
    }

    #[test]
    fn summary_counts_valid_and_means() {
        let scores = vec![score_expansion_detailed("mastmeal folklore", GOOD), score_expansion_detailed("q", "no prefix"), score_expansion_detailed("q", "")];
        let s = ExpansionSummary::of(&scores);
        assert_eq!(s.n, 3);
        assert!((s.valid_rate - 1.0 / 3.0).abs() < 1e-12 && (s.hard_fail_rate - 1.0 / 3.0).abs() < 1e-12);
        let mean = scores.iter().map(|x| x.reward).sum::<f64>() / 3.0;
        assert!((s.mean_reward - mean).abs() < 1e-12 && (s.means["reward"] - mean).abs() < 1e-12);
        assert_eq!(s.ratings.values().sum::<usize>(), 3);
        assert!(ExpansionSummary::of(&[]).mean_reward.is_nan());
    }
}

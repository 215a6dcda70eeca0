//! Corpora: documents from JSONL (`{"id","title","text"}`) or a folder of markdown files.
//!
//! Markdown follows how a markdown search engine (QMD) indexes a folder: one document per file,
//! files found recursively and sorted (so the order is deterministic), the title taken from the first
//! `# ` heading. Governance fields come from simple front matter (`key: value` lines between `---`).
//!
//! ```
//! use tunelab::data::corpus::{parse_markdown, sections};
//! let doc = parse_markdown("notes/tides", "---\nclassification: public\n---\n# Tides\nIntro.\n## Spring tides\nBig ones.\n").unwrap();
//! assert_eq!((doc.id.as_str(), doc.title.as_str()), ("notes/tides", "Tides"));
//! let s = sections(&doc.text);
//! assert_eq!(s[1].heading_path, ["Tides", "Spring tides"]);
//! assert_eq!(s[1].text, "Big ones.");
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::governance::{Classification, Governance, Governed};
use super::jsonl::{BadLines, DataError, Read, from_value, read_with};

/// One searchable document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Document {
    pub id: String,
    #[serde(default)]
    pub title: String,
    pub text: String,
    /// Governance fields carried with the record (classification, contributor, consent, source).
    #[serde(flatten)]
    pub governance: Governance,
}

impl Governed for Document {
    fn record_id(&self) -> Option<&str> {
        Some(&self.id)
    }
    fn governance(&self) -> Governance {
        self.governance.clone()
    }
}

/// A corpus line as read (no `flatten`, so serde can name the failing field).
#[derive(Deserialize)]
struct DocumentLine {
    id: String,
    #[serde(default)]
    title: String,
    text: String,
    #[serde(default)]
    classification: Option<Classification>,
    #[serde(default)]
    contributor: Option<String>,
    #[serde(default)]
    consent: Option<String>,
    #[serde(default)]
    source: Option<String>,
}

impl From<DocumentLine> for Document {
    fn from(d: DocumentLine) -> Self {
        Document {
            id: d.id,
            title: d.title,
            text: d.text,
            governance: Governance {
                classification: d.classification,
                contributor: d.contributor,
                consent: d.consent,
                source: d.source,
            },
        }
    }
}

/// Parses one corpus JSONL line (via a flat wire type, so errors name the field).
pub(crate) fn parse_line(file: &Path, line: usize, value: serde_json::Value) -> Result<Document, DataError> {
    from_value::<DocumentLine>(file, line, value).map(Document::from)
}

/// Reads a JSONL corpus (`{"id","title","text"}` plus governance fields).
pub fn read_corpus_jsonl(path: &Path, bad: BadLines) -> Result<Read<Document>, DataError> {
    read_with(path, bad, |line, v| parse_line(path, line, v))
}

/// Reads a corpus from a JSONL file or a folder of markdown files (`.md`, `.markdown`).
pub fn read_corpus(path: &Path, bad: BadLines) -> Result<Read<Document>, DataError> {
    if path.is_dir() {
        read_markdown_dir(path, bad)
    } else {
        read_corpus_jsonl(path, bad)
    }
}

/// Markdown files under `dir`, recursively, sorted by relative path (hidden entries skipped).
pub fn markdown_files(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), DataError> {
        for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
            let path = entry.map_err(|e| DataError::io(dir, e))?.path();
            if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
                continue;
            }
            if path.is_dir() {
                walk(&path, out)?;
            } else if path.extension().is_some_and(|e| e == "md" || e == "markdown") {
                out.push(path);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, &mut out)?;
    out.sort();
    Ok(out)
}

/// Reads every markdown file under `dir` as one document; ids default to the relative path without
/// extension (with `/` separators).
pub fn read_markdown_dir(dir: &Path, bad: BadLines) -> Result<Read<Document>, DataError> {
    read_markdown_files(dir, bad).map(|(read, _)| read)
}

/// [`read_markdown_dir`], with the file each document came from.
pub(crate) fn read_markdown_files(dir: &Path, bad: BadLines) -> Result<(Read<Document>, Vec<PathBuf>), DataError> {
    let mut out = Read::default();
    let mut files = Vec::new();
    for path in markdown_files(dir)? {
        let text = std::fs::read_to_string(&path).map_err(|e| DataError::io(&path, e))?;
        let rel = path.strip_prefix(dir).unwrap_or(&path).with_extension("");
        let rel: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        let doc =
            parse_markdown(&rel.join("/"), &text).map_err(|(line, field, msg)| DataError::at(&path, line, field, msg));
        if doc.is_ok() {
            files.push(path.clone());
        }
        out.push(1, doc, bad)?;
    }
    Ok((out, files))
}

/// A markdown parse error: 1-based line, field (when known), message.
pub type MarkdownError = (usize, Option<&'static str>, String);

/// Parses one markdown file. `default_id` is used when the front matter has no `id`; the title is the
/// first `# ` heading, else the front matter `title`, else the last component of `default_id`.
pub fn parse_markdown(default_id: &str, text: &str) -> Result<Document, MarkdownError> {
    let (front, body) = split_front_matter(text)?;
    let mut governance = Governance::default();
    let (mut id, mut fm_title) = (None, None);
    // A repeated key would otherwise keep its last value (`classification: sacred`, then `public`).
    let mut seen: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for (line, key, value) in front {
        if let Some(first) = seen.insert(key, line) {
            return Err((
                line,
                None,
                format!("duplicate front matter key `{key}` (first given at line {first}): give each field once"),
            ));
        }
        // YAML spells "no value" as `null`, `~` or nothing.
        let value = Some(value.to_string()).filter(|v| !matches!(v.as_str(), "" | "null" | "~"));
        match key {
            "id" => id = value,
            "title" => fm_title = value,
            "contributor" => governance.contributor = value,
            "consent" => governance.consent = value,
            "source" => governance.source = value,
            "classification" => {
                governance.classification = match value {
                    None => None,
                    Some(v) => Some(v.parse().map_err(|e| (line, Some("classification"), e))?),
                }
            }
            _ => {} // other metadata (tags, dates) is not ours to judge
        }
    }
    let heading = headings(body)
        .find(|(level, _)| *level == 1)
        .map(|(_, t)| t.to_string());
    let stem = default_id.rsplit('/').next().unwrap_or(default_id).to_string();
    Ok(Document {
        id: id.unwrap_or_else(|| default_id.to_string()),
        title: heading.or(fm_title).unwrap_or(stem),
        text: body.trim().to_string(),
        governance,
    })
}

/// Front matter `key: value` pairs (with their 1-based line numbers, quotes stripped) and the body.
type FrontMatter<'a> = Vec<(usize, &'a str, &'a str)>;

fn split_front_matter(text: &str) -> Result<(FrontMatter<'_>, &str), MarkdownError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let Some(rest) = text.strip_prefix("---\n").or_else(|| text.strip_prefix("---\r\n")) else {
        return Ok((Vec::new(), text));
    };
    let mut pairs = Vec::new();
    let mut offset = text.len() - rest.len();
    for (i, raw) in rest.split_inclusive('\n').enumerate() {
        offset += raw.len();
        let line = raw.trim_end();
        if line == "---" || line == "..." {
            return Ok((pairs, &text[offset..]));
        }
        if line.trim().is_empty() || line.trim_start().starts_with('#') || line.starts_with([' ', '\t', '-']) {
            continue; // blank, comment, or a nested/list value we do not need
        }
        let Some((key, value)) = line.split_once(':') else {
            return Err((i + 2, None, format!("front matter line is not `key: value`: {line:?}")));
        };
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value);
        pairs.push((i + 2, key.trim(), value));
    }
    Err((1, None, "front matter is not closed by `---`".into()))
}

/// ATX headings `(level, text)` outside fenced code blocks.
fn headings(body: &str) -> impl Iterator<Item = (usize, &str)> {
    let mut fence = false;
    body.lines().filter_map(move |line| {
        if line.trim_start().starts_with("```") || line.trim_start().starts_with("~~~") {
            fence = !fence;
            return None;
        }
        if fence { None } else { heading(line) }
    })
}

fn heading(line: &str) -> Option<(usize, &str)> {
    let level = line.bytes().take_while(|&b| b == b'#').count();
    let rest = &line[level..];
    if !(1..=6).contains(&level) || !(rest.is_empty() || rest.starts_with([' ', '\t'])) {
        return None;
    }
    // Closing hashes ("## Title ##") are decoration.
    Some((level, rest.trim().trim_end_matches('#').trim_end()))
}

/// A section of a markdown document: the headings above it (outermost first) and its own text
/// (up to the next heading of any level), trimmed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Section {
    pub heading_path: Vec<String>,
    pub text: String,
}

impl Section {
    /// The innermost heading (empty for text before the first heading).
    pub fn heading(&self) -> &str {
        self.heading_path.last().map_or("", String::as_str)
    }
}

/// Splits a markdown body into sections at every ATX heading (headings in code fences are text).
/// Text before the first heading becomes a section with an empty heading path; empty sections are kept
/// (callers such as mining skip them).
pub fn sections(body: &str) -> Vec<Section> {
    let mut out = Vec::new();
    let mut path: Vec<(usize, String)> = Vec::new();
    let mut text = String::new();
    let mut fence = false;
    let flush = |path: &[(usize, String)], text: &mut String, out: &mut Vec<Section>| {
        let t = text.trim();
        if !(path.is_empty() && t.is_empty()) {
            out.push(Section {
                heading_path: path.iter().map(|(_, h)| h.clone()).collect(),
                text: t.to_string(),
            });
        }
        text.clear();
    };
    for line in body.lines() {
        if line.trim_start().starts_with("```") || line.trim_start().starts_with("~~~") {
            fence = !fence;
        }
        match heading(line).filter(|_| !fence) {
            Some((level, title)) => {
                flush(&path, &mut text, &mut out);
                path.retain(|(l, _)| *l < level);
                path.push((level, title.to_string()));
            }
            None => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    flush(&path, &mut text, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn front_matter_title_and_governance() {
        let md = "---\nid: \"tide-001\"\nclassification: community\ncontributor: \"ana\"\nconsent: c-12\nsource: field notes\ntags:\n  - sea\n---\n\nSome preface.\n\n# Tide tables\n\nBody.\n";
        let d = parse_markdown("coast/tides", md).unwrap();
        assert_eq!(d.id, "tide-001");
        assert_eq!(d.title, "Tide tables");
        assert!(d.text.starts_with("Some preface.") && d.text.ends_with("Body."));
        assert_eq!(d.governance.classification, Some(Classification::Community));
        assert_eq!(d.governance.contributor.as_deref(), Some("ana"));
        assert_eq!(d.governance.consent.as_deref(), Some("c-12"));
        assert_eq!(d.governance.source.as_deref(), Some("field notes"));
    }

    #[test]
    fn without_front_matter_or_heading_id_and_title_come_from_the_path() {
        let d = parse_markdown(
            "coast/tides",
            "---\nconsent: null\ncontributor: ~\nsource:\n---\n## Only a subheading\ntext\n",
        )
        .unwrap();
        assert_eq!((d.id.as_str(), d.title.as_str()), ("coast/tides", "tides"));
        assert_eq!(d.governance, Governance::default());
        // `#hashtag` is not a heading; a heading inside a code fence is not a title.
        let d = parse_markdown("x", "```\n# not a title\n```\n#hashtag\n# Real\n").unwrap();
        assert_eq!(d.title, "Real");
    }

    #[test]
    fn bad_classification_names_line_and_field() {
        let e = parse_markdown("x", "---\nid: a\nclassification: holy\n---\n# T\n").unwrap_err();
        assert_eq!((e.0, e.1), (3, Some("classification")));
        assert!(e.2.contains("holy"));
        let e = parse_markdown("x", "---\nid: a\n# T\n").unwrap_err();
        assert!(e.2.contains("not closed"));
    }

    #[test]
    fn sections_track_the_heading_path() {
        let body = "intro\n# A\na text\n## B\nb text\n### C\n\n## D\n```\n# code\n```\n# E\ne\n";
        let s = sections(body);
        let got: Vec<(Vec<&str>, &str)> = s
            .iter()
            .map(|s| (s.heading_path.iter().map(String::as_str).collect(), s.text.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (vec![], "intro"),
                (vec!["A"], "a text"),
                (vec!["A", "B"], "b text"),
                (vec!["A", "B", "C"], ""),
                (vec!["A", "D"], "```\n# code\n```"),
                (vec!["E"], "e"),
            ]
        );
    }

    #[test]
    fn markdown_dir_is_recursive_sorted_and_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("b/sub")).unwrap();
        std::fs::write(root.join("b/sub/z.md"), "# Z\nz").unwrap();
        std::fs::write(root.join("a.md"), "---\nid: first\n---\n# A\na").unwrap();
        std::fs::write(root.join("b/c.markdown"), "c only").unwrap();
        std::fs::write(root.join("notes.txt"), "ignored").unwrap();
        let r = read_corpus(root, BadLines::Fail).unwrap();
        let ids: Vec<&str> = r.records.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["first", "b/c", "b/sub/z"]);

        std::fs::write(root.join("b/bad.md"), "---\nclassification: secret\n---\n").unwrap();
        let e = read_corpus(root, BadLines::Fail).unwrap_err();
        assert!(e.file.ends_with("b/bad.md") && e.line == Some(2), "{e}");
        let r = read_corpus(root, BadLines::SkipBad).unwrap();
        assert_eq!((r.records.len(), r.skipped.len()), (3, 1));
    }

    #[test]
    fn jsonl_corpus_errors_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.jsonl");
        std::fs::write(&p, "{\"id\":\"a\",\"title\":\"A\",\"text\":\"t\",\"classification\":\"public\"}\n{\"id\":\"b\",\"text\":\"t\",\"classification\":\"secret\"}\n").unwrap();
        let e = read_corpus(&p, BadLines::Fail).unwrap_err();
        assert_eq!((e.line, e.field.as_deref()), (Some(2), Some("classification")), "{e}");
        let r = read_corpus(&p, BadLines::SkipBad).unwrap();
        assert_eq!(r.records[0].governance.classification, Some(Classification::Public));
    }
    #[test]
    fn property_a_repeated_front_matter_key_is_an_error_at_its_line() {
        use rand::{Rng, SeedableRng};
        let fields = [
            ("id", "a"),
            ("classification", "sacred"),
            ("contributor", "\"Corwin Ashby\""),
            ("consent", "c-010"),
            ("source", "tape"),
            ("title", "T"),
        ];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(16);
        for _ in 0..200 {
            let mut lines: Vec<String> = fields.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            let (key, _) = fields[rng.random_range(0..fields.len())];
            let first = lines.iter().position(|l| l.starts_with(&format!("{key}:"))).unwrap();
            let at = rng.random_range(first + 1..=lines.len());
            let value = if key == "classification" { "public" } else { "other" };
            lines.insert(at, format!("{key}:{}{value}", " ".repeat(rng.random_range(0..3))));
            let md = format!("---\n{}\n---\n# T\nbody\n", lines.join("\n"));
            let e = parse_markdown("x", &md).unwrap_err();
            // Line 1 is `---`: the copy at index `at` is on line at + 2.
            assert_eq!(e.0, at + 2, "{md}");
            assert!(e.2.contains(&format!("duplicate front matter key `{key}`")), "{}", e.2);
        }
    }
}

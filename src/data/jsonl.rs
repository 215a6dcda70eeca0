//! Line-oriented JSONL reading and atomic writing.
//!
//! Every bad line becomes a [`DataError`] naming the file, the 1-based line and, when serde can tell,
//! the field (a path such as `output[1][0]`). With [`BadLines::SkipBad`] bad lines are collected as
//! [`SkippedLine`]s instead, so the caller can report every one of them. Blank lines are ignored.
//!
//! An object that repeats a key, at any depth, is an error naming the key's path: serde would keep the
//! last value, so `{"classification":"sacred", ..., "classification":"public"}` would read as public
//! ([`parse_strict`], used by every reader here).
//!
//! ```
//! use tunelab::data::jsonl::{read_jsonl, write_jsonl, BadLines};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
//! struct Pair { query: String, positive: String }
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("pairs.jsonl");
//! std::fs::write(&path, "{\"query\":\"q\",\"positive\":\"p\"}\n\n{\"query\":3}\n")?;
//!
//! // Failing is the default: the error names file, line and field.
//! let err = read_jsonl::<Pair>(&path, BadLines::Fail).unwrap_err();
//! assert_eq!((err.line, err.field.as_deref()), (Some(3), Some("query")));
//!
//! // SkipBad keeps the good lines and reports the bad ones.
//! let read = read_jsonl::<Pair>(&path, BadLines::SkipBad)?;
//! assert_eq!(read.records.len(), 1);
//! assert_eq!(read.skipped[0].line, 3);
//!
//! write_jsonl(&dir.path().join("out.jsonl"), &read.records)?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use std::cell::RefCell;

use serde::de::{DeserializeOwned, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

/// A data error, located as precisely as we can: file, 1-based line, field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}{}: {message}", .file.display(), line_suffix(.line), field_suffix(.field))]
pub struct DataError {
    pub file: PathBuf,
    /// 1-based line number; `None` for errors about the whole file (I/O, empty file).
    pub line: Option<usize>,
    /// The field (serde path, e.g. `output[1][0]`) when known.
    pub field: Option<String>,
    pub message: String,
}

fn line_suffix(line: &Option<usize>) -> String {
    line.map(|l| format!(":{l}")).unwrap_or_default()
}

fn field_suffix(field: &Option<String>) -> String {
    field.as_ref().map(|f| format!(": field `{f}`")).unwrap_or_default()
}

impl DataError {
    /// An error about one line (and maybe one field) of a file.
    pub fn at(file: &Path, line: usize, field: Option<&str>, message: impl Into<String>) -> Self {
        DataError {
            file: file.to_path_buf(),
            line: Some(line),
            field: field.map(str::to_string),
            message: message.into(),
        }
    }

    /// An error about a whole file.
    pub fn file(file: &Path, message: impl Into<String>) -> Self {
        DataError {
            file: file.to_path_buf(),
            line: None,
            field: None,
            message: message.into(),
        }
    }

    pub(crate) fn io(file: &Path, err: std::io::Error) -> Self {
        Self::file(file, err.to_string())
    }
}

/// What to do with a line that does not parse.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BadLines {
    /// Stop at the first bad line with a [`DataError`].
    #[default]
    Fail,
    /// Skip bad lines, reporting each in [`Read::skipped`].
    SkipBad,
}

/// A line left out under [`BadLines::SkipBad`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedLine {
    pub file: PathBuf,
    pub line: usize,
    pub reason: String,
}

impl From<DataError> for SkippedLine {
    fn from(e: DataError) -> Self {
        let reason = match &e.field {
            Some(field) => format!("field `{field}`: {}", e.message),
            None => e.message.clone(),
        };
        SkippedLine {
            file: e.file,
            line: e.line.unwrap_or(0),
            reason,
        }
    }
}

impl fmt::Display for SkippedLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.reason)
    }
}

/// Records read from a file, with their 1-based line numbers and any skipped lines.
#[derive(Clone, Debug)]
pub struct Read<T> {
    pub records: Vec<T>,
    pub lines: Vec<usize>,
    pub skipped: Vec<SkippedLine>,
}

impl<T> Default for Read<T> {
    fn default() -> Self {
        Read {
            records: Vec::new(),
            lines: Vec::new(),
            skipped: Vec::new(),
        }
    }
}

impl<T> Read<T> {
    /// Keeps a good record or handles a bad one according to `bad`.
    pub(crate) fn push(&mut self, line: usize, rec: Result<T, DataError>, bad: BadLines) -> Result<(), DataError> {
        match rec {
            Ok(r) => {
                self.records.push(r);
                self.lines.push(line);
            }
            Err(e) if bad == BadLines::SkipBad => self.skipped.push(e.into()),
            Err(e) => return Err(e),
        }
        Ok(())
    }
}

/// Reads a JSONL file in one pass: each non-blank line is parsed as JSON and handed to `parse` with
/// its 1-based line number. Errors come in line order; under [`BadLines::SkipBad`] they are collected.
pub fn read_with<T>(
    path: &Path,
    bad: BadLines,
    mut parse: impl FnMut(usize, Value) -> Result<T, DataError>,
) -> Result<Read<T>, DataError> {
    read_with_text(path, bad, |line, v, _| parse(line, v))
}

/// [`read_with`], handing `parse` the line's text too (BOM removed): a [`Value`] has its object
/// keys sorted, and chat records keep their tool schemas in the order written.
pub fn read_with_text<T>(
    path: &Path,
    bad: BadLines,
    mut parse: impl FnMut(usize, Value, &str) -> Result<T, DataError>,
) -> Result<Read<T>, DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut out = Read::default();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line_no = i + 1;
        let text = line.map_err(|e| DataError::at(path, line_no, None, e.to_string()))?;
        // A byte-order mark starts some Windows-saved files: accepted and removed (crate::io::text).
        let text = if line_no == 1 { crate::io::text::strip_bom(&text).to_string() } else { text };
        if text.trim().is_empty() {
            continue;
        }
        let record = parse_strict_at(&text)
            .map_err(|(e, dup)| match dup {
                Some(key) => DataError::at(
                    path,
                    line_no,
                    Some(&key),
                    format!("duplicate key (column {}): a record must give each field once", e.column()),
                ),
                None => DataError::at(
                    path,
                    line_no,
                    None,
                    if text.starts_with(crate::io::text::BOM) {
                        // Only line 1 may start with a BOM (it is removed there): one further
                        // down means files were concatenated.
                        "the line starts with a UTF-8 byte-order mark (U+FEFF; files concatenated?); remove it".to_string()
                    } else {
                        format!("invalid JSON at column {}: {}", e.column(), strip_position(&e))
                    },
                )
            })
            .and_then(|v| parse(line_no, v, &text));
        out.push(line_no, record, bad)?;
    }
    Ok(out)
}

/// Parses one JSON text into a [`Value`], refusing an object that repeats a key at any depth (the
/// error names the key's path, e.g. ``duplicate key `messages[1].role` ``).
///
/// ```
/// use tunelab::data::jsonl::parse_strict;
/// assert!(parse_strict(r#"{"a": {"b": 1, "c": 2}}"#).is_ok());
/// let e = parse_strict(r#"{"a": [{"b": 1, "b": 2}]}"#).unwrap_err();
/// assert!(e.to_string().contains("duplicate key `a[0].b`"), "{e}");
/// ```
pub fn parse_strict(text: &str) -> Result<Value, serde_json::Error> {
    parse_strict_at(text).map_err(|(e, _)| e)
}

/// [`parse_strict`] into a typed value (for JSON config files).
pub fn from_str_strict<T: DeserializeOwned>(text: &str) -> Result<T, serde_json::Error> {
    serde_json::from_value(parse_strict(text)?)
}

/// [`parse_strict`], with the duplicate key's path on its own when that was the error.
fn parse_strict_at(text: &str) -> Result<Value, (serde_json::Error, Option<String>)> {
    let dup = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_str(text);
    let value = StrictValue { path: String::new(), dup: &dup }
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v));
    value.map_err(|e| (e, dup.into_inner()))
}

/// Builds a [`Value`] as serde_json's own visitor does, but fails on a repeated object key; `path` is
/// where this value sits (`a.b[2]`), `dup` receives the duplicate's path.
struct StrictValue<'a> {
    path: String,
    dup: &'a RefCell<Option<String>>,
}

impl StrictValue<'_> {
    fn child(&self, path: String) -> Self {
        StrictValue { path, dup: self.dup }
    }
}

impl<'de> DeserializeSeed<'de> for StrictValue<'_> {
    type Value = Value;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(self.child(format!("{}[{}]", self.path, items.len())))? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = if self.path.is_empty() { key.clone() } else { format!("{}.{key}", self.path) };
            if out.contains_key(&key) {
                let message = format!("duplicate key `{path}`");
                *self.dup.borrow_mut() = Some(path);
                return Err(serde::de::Error::custom(message));
            }
            let value = map.next_value_seed(self.child(path))?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

/// Reads every non-blank line of a JSONL file as a JSON value (syntax only).
pub fn read_values(path: &Path, bad: BadLines) -> Result<Read<Value>, DataError> {
    read_with(path, bad, |_, v| Ok(v))
}

/// Deserialises one parsed line into `T`, naming the failing field when serde can tell.
pub fn from_value<T: DeserializeOwned>(file: &Path, line: usize, value: Value) -> Result<T, DataError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let mut field = (path != ".").then_some(path);
        let message = strip_position(e.inner());
        // serde reports a missing field at its parent; name the field itself.
        if let Some(missing) = message
            .strip_prefix("missing field `")
            .and_then(|m| m.split('`').next())
        {
            field = Some(match field {
                Some(parent) => format!("{parent}.{missing}"),
                None => missing.to_string(),
            });
        }
        DataError::at(file, line, field.as_deref(), message)
    })
}

/// Reads a JSONL file of `T` records. Blank lines are ignored.
pub fn read_jsonl<T: DeserializeOwned>(path: &Path, bad: BadLines) -> Result<Read<T>, DataError> {
    read_with(path, bad, |line, v| from_value(path, line, v))
}

/// Writes records as JSONL, atomically: to a temporary file beside `path`, renamed over it at the end,
/// so a failure never leaves a half-written file (nor clobbers the old one).
pub fn write_jsonl<'a, T: Serialize + 'a>(
    path: &Path,
    records: impl IntoIterator<Item = &'a T>,
) -> Result<(), DataError> {
    write_atomic(path, |w| {
        for r in records {
            serde_json::to_writer(&mut *w, r).map_err(std::io::Error::other)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })
}

/// Writes a file atomically (temporary file in the same directory + rename).
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<(), DataError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut w = BufWriter::new(File::create(&tmp)?);
        write(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        DataError::io(path, e)
    })
}

/// serde_json appends " at line L column C" (positions inside the one-line string); we report the file line.
fn strip_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Rec {
        query: String,
        #[serde(default)]
        tags: Vec<String>,
    }

    fn file(content: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.jsonl");
        std::fs::write(&path, content).unwrap();
        (dir, path)
    }

    /// Property: BOM, CRLF, trailing whitespace and blank-line variants of a file read as the
    /// plain file, with the same line numbers; a BOM further down is named as one.
    #[test]
    fn bom_crlf_and_whitespace_variants_read_as_the_plain_file() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(16);
        for case in 0..200 {
            let n = rng.random_range(1..5);
            let lines: Vec<String> = (0..n).map(|i| format!("{{\"query\":\"q{i}\"}}")).collect();
            let eol = if rng.random_bool(0.5) { "\r\n" } else { "\n" };
            let mut text = String::new();
            if rng.random_bool(0.7) {
                text.push('\u{feff}');
            }
            let mut expected_lines = Vec::new();
            let mut line_no = 0;
            for l in &lines {
                if rng.random_bool(0.2) {
                    text.push_str(eol);
                    line_no += 1;
                }
                text.push_str(l);
                text.push_str(["", " ", "\t", "  "][rng.random_range(0..4)]);
                text.push_str(eol);
                line_no += 1;
                expected_lines.push(line_no);
            }
            let (_d, p) = file(&text);
            let r = read_jsonl::<Rec>(&p, BadLines::Fail).unwrap_or_else(|e| panic!("case {case}: {e}: {text:?}"));
            let queries: Vec<String> = r.records.iter().map(|r| r.query.clone()).collect();
            assert_eq!(queries, (0..n).map(|i| format!("q{i}")).collect::<Vec<_>>(), "case {case}");
            assert_eq!(r.lines, expected_lines, "case {case}");
        }
        let (_d, p) = file("{\"query\":\"a\"}\n\u{feff}{\"query\":\"b\"}\n");
        let err = read_jsonl::<Rec>(&p, BadLines::Fail).unwrap_err().to_string();
        assert!(err.contains(":2") && err.contains("byte-order mark"), "{err}");
    }

    #[test]
    fn reads_good_lines_and_ignores_blank_ones() {
        let (_d, p) = file("{\"query\":\"a\"}\n   \n\n{\"query\":\"b\",\"tags\":[\"t\"]}\n");
        let r = read_jsonl::<Rec>(&p, BadLines::Fail).unwrap();
        assert_eq!(r.records.len(), 2);
        assert_eq!(r.lines, vec![1, 4]);
        assert_eq!(r.records[1].tags, vec!["t".to_string()]);
    }

    #[test]
    fn syntax_error_names_file_and_line() {
        let (_d, p) = file("{\"query\":\"a\"}\n{\"query\": \"b\"\n");
        let e = read_jsonl::<Rec>(&p, BadLines::Fail).unwrap_err();
        assert_eq!(e.file, p);
        assert_eq!(e.line, Some(2));
        assert_eq!(e.field, None);
        assert!(e.to_string().contains("x.jsonl:2: invalid JSON"), "{e}");
    }

    #[test]
    fn type_errors_name_the_field_path() {
        let (_d, p) = file("{\"query\":\"a\",\"tags\":[\"x\",7]}\n");
        let e = read_jsonl::<Rec>(&p, BadLines::Fail).unwrap_err();
        assert_eq!((e.line, e.field.as_deref()), (Some(1), Some("tags[1]")));
        let (_d, p) = file("\n{\"tags\":[]}\n");
        let e = read_jsonl::<Rec>(&p, BadLines::Fail).unwrap_err();
        assert_eq!((e.line, e.field.as_deref()), (Some(2), Some("query")));
        assert!(e.message.contains("missing field"), "{e}");
    }

    #[test]
    fn the_first_bad_line_is_reported_whatever_its_kind() {
        // Line 2 has a type error, line 3 a syntax error: line 2 comes first.
        let (_d, p) = file("{\"query\":\"a\"}\n{\"query\":2}\n{\"query\"\n");
        assert_eq!(read_jsonl::<Rec>(&p, BadLines::Fail).unwrap_err().line, Some(2));
    }

    #[test]
    fn skip_bad_reports_every_skipped_line() {
        let (_d, p) = file("{\"query\":\"a\"}\nnot json\n{\"query\":1}\n{\"query\":\"d\"}\n");
        let r = read_jsonl::<Rec>(&p, BadLines::SkipBad).unwrap();
        assert_eq!(
            r.records.iter().map(|r| r.query.as_str()).collect::<Vec<_>>(),
            ["a", "d"]
        );
        assert_eq!(r.skipped.iter().map(|s| s.line).collect::<Vec<_>>(), [2, 3]);
        assert!(r.skipped[1].reason.contains("query"));
    }

    #[test]
    fn missing_file_is_an_error_naming_it() {
        let e = read_jsonl::<Rec>(Path::new("/nonexistent/a.jsonl"), BadLines::SkipBad).unwrap_err();
        assert_eq!(e.line, None);
        assert!(e.to_string().starts_with("/nonexistent/a.jsonl"));
    }

    #[test]
    fn write_round_trips_and_failure_keeps_old_file() {
        let (d, p) = file("{\"query\":\"old\"}\n");
        let recs = vec![
            Rec {
                query: "a".into(),
                tags: vec![],
            },
            Rec {
                query: "b".into(),
                tags: vec!["t".into()],
            },
        ];
        write_jsonl(&p, &recs).unwrap();
        assert_eq!(read_jsonl::<Rec>(&p, BadLines::Fail).unwrap().records, recs);

        // A writer failing half-way leaves the previous content and no temporary file.
        let err = write_atomic(&p, |w| {
            w.write_all(b"{\"query\":\"partial\"")?;
            Err(std::io::Error::other("disk full"))
        });
        assert!(err.is_err());
        assert_eq!(read_jsonl::<Rec>(&p, BadLines::Fail).unwrap().records, recs);
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }
    // ---- duplicate keys (issue 16, class 2) ----

    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    const KEYS: [&str; 8] = ["id", "classification", "contributor", "messages", "role", "content", "a b", "ünï"];

    fn random_value(rng: &mut ChaCha8Rng, depth: usize) -> Value {
        match rng.random_range(0..if depth == 0 { 4 } else { 6 }) {
            0 => Value::Null,
            1 => Value::Bool(rng.random_bool(0.5)),
            2 => Value::from(rng.random_range(-1000i64..1000)),
            3 => Value::String(["sacred", "public", "x\"y", "ünï\n"][rng.random_range(0..4)].into()),
            4 => Value::Array((0..rng.random_range(0..4)).map(|_| random_value(rng, depth - 1)).collect()),
            _ => random_object(rng, depth - 1),
        }
    }

    fn random_object(rng: &mut ChaCha8Rng, depth: usize) -> Value {
        let mut m = Map::new();
        for _ in 0..rng.random_range(1..5) {
            m.insert(KEYS[rng.random_range(0..KEYS.len())].to_string(), random_value(rng, depth));
        }
        Value::Object(m)
    }

    /// Paths of every non-empty object in `v` (as the error names them: `a.b[2]`, the root is "").
    fn object_paths(v: &Value, path: &str, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                out.push(path.to_string());
                for (k, c) in m {
                    object_paths(c, &if path.is_empty() { k.clone() } else { format!("{path}.{k}") }, out);
                }
            }
            Value::Array(items) => {
                for (i, c) in items.iter().enumerate() {
                    object_paths(c, &format!("{path}[{i}]"), out);
                }
            }
            _ => {}
        }
    }

    /// A key as JSON, some characters written as `\uXXXX` escapes (the same key to a parser).
    fn key_text(k: &str, rng: &mut ChaCha8Rng) -> String {
        let mut s = String::from("\"");
        for c in k.chars() {
            if rng.random_bool(0.3) && (c as u32) < 0x10000 {
                s.push_str(&format!("\\u{:04x}", c as u32));
            } else if c == '"' || c == '\\' {
                s.push('\\');
                s.push(c);
            } else {
                s.push(c);
            }
        }
        s.push('"');
        s
    }

    /// Writes `v` as JSON with random spacing; the object at `dup.0` gets its key `dup.1` twice (the
    /// copy, with another value, before or after the original).
    fn write(v: &Value, path: &str, dup: Option<(&str, &str, bool)>, rng: &mut ChaCha8Rng, out: &mut String) {
        let ws = |rng: &mut ChaCha8Rng| ["", "", "", " ", "  ", "\t"][rng.random_range(0..6)];
        match v {
            Value::Object(m) => {
                out.push('{');
                let mut entries: Vec<(String, Value)> = m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                if let Some((_, key, before)) = dup.filter(|d| d.0 == path) {
                    let at = entries.iter().position(|(k, _)| k == key).unwrap();
                    let copy = (key.to_string(), Value::from("public"));
                    entries.insert(if before { at } else { at + 1 }, copy);
                }
                for (i, (k, c)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(ws(rng));
                    out.push_str(&key_text(k, rng));
                    out.push_str(ws(rng));
                    out.push(':');
                    out.push_str(ws(rng));
                    write(c, &if path.is_empty() { k.clone() } else { format!("{path}.{k}") }, dup, rng, out);
                }
                out.push('}');
            }
            Value::Array(items) => {
                out.push('[');
                for (i, c) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(ws(rng));
                    write(c, &format!("{path}[{i}]"), dup, rng, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }

    #[test]
    fn a_repeated_key_is_an_error_not_the_last_value() {
        // The example of issue 16: read with serde's default this record is public.
        let (_d, p) = file(
            "{\"id\":\"ok\",\"classification\":\"public\"}\n{\"id\":\"x\",\"classification\":\"sacred\",\"text\":\"t\",\"classification\":\"public\"}\n",
        );
        let e = read_values(&p, BadLines::Fail).unwrap_err();
        assert_eq!((e.line, e.field.as_deref()), (Some(2), Some("classification")), "{e}");
        assert!(e.to_string().contains("duplicate key"), "{e}");
        // Skipping bad lines skips it (and says why), it does not keep it with either value.
        let r = read_values(&p, BadLines::SkipBad).unwrap();
        assert_eq!((r.records.len(), r.skipped[0].line), (1, 2));
        assert!(r.skipped[0].reason.contains("duplicate key"), "{}", r.skipped[0].reason);
    }

    #[test]
    fn property_duplicate_keys_are_found_at_any_depth_and_line() {
        let mut rng = ChaCha8Rng::seed_from_u64(16);
        for round in 0..300 {
            let lines: Vec<Value> = (0..rng.random_range(1..6)).map(|_| random_object(&mut rng, 3)).collect();
            let bad = rng.random_range(0..lines.len());
            let mut paths = Vec::new();
            object_paths(&lines[bad], "", &mut paths);
            let target = paths[rng.random_range(0..paths.len())].clone();
            let obj = lines[bad].pointer(&pointer_of(&target)).unwrap().as_object().unwrap();
            let key = obj.keys().nth(rng.random_range(0..obj.len())).unwrap().clone();
            let before = rng.random_bool(0.5);
            let mut text = String::new();
            for (i, v) in lines.iter().enumerate() {
                let dup = (i == bad).then_some((target.as_str(), key.as_str(), before));
                write(v, "", dup, &mut rng, &mut text);
                text.push('\n');
                // Without the duplicate every line reads as serde_json reads it.
                let mut clean = String::new();
                write(v, "", None, &mut rng, &mut clean);
                assert_eq!(parse_strict(&clean).unwrap(), serde_json::from_str::<Value>(&clean).unwrap(), "{clean}");
            }
            let (_d, p) = file(&text);
            let e = read_values(&p, BadLines::Fail).unwrap_err();
            let want = if target.is_empty() { key.clone() } else { format!("{target}.{key}") };
            assert_eq!((e.line, e.field.as_deref()), (Some(bad + 1), Some(want.as_str())), "round {round}: {text}");
        }
    }

    /// `a.b[2]` as a JSON pointer `/a/b/2` (test keys contain no `.`, `[` or `/`).
    fn pointer_of(path: &str) -> String {
        if path.is_empty() {
            return String::new();
        }
        let mut out = String::new();
        for part in path.split('.') {
            let mut it = part.split('[');
            out.push('/');
            out.push_str(it.next().unwrap());
            for idx in it {
                out.push('/');
                out.push_str(idx.trim_end_matches(']'));
            }
        }
        out
    }
}

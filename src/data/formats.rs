//! Typed training records, their JSONL formats, and typed polars DataFrames.
//!
//! | format | one JSONL line |
//! |---|---|
//! | MLX-LM chat | `{"messages": [{"role", "content"}, ...]}` |
//! | MLX-LM completions | `{"prompt", "completion"}` |
//! | MLX-LM text | `{"text"}` |
//! | QMD query expansion | `{"query", "output": [["lex"\|"vec"\|"hyde", text], ...]}` |
//! | embedding pairs | `{"query", "positive", "negatives"?: [...], "doc_id"?}` |
//! | reranker judgments | `{"query", "document", "relevant": bool \| grade}` |
//! | corpus ([`Document`]) | `{"id", "title", "text"}` |
//!
//! Every record may also carry an `id` and the governance fields `classification`, `contributor`,
//! `consent`, `source` at the top level. (They are plain fields rather than a flattened struct because
//! serde loses field names in errors inside `#[serde(flatten)]`, and a bad line must name its field.)
//!
//! [`load`] reads a file (format detected per line; mixing formats in one file is an error) or a
//! folder (MLX-LM layout `train/valid/test.jsonl`, or a markdown corpus).
//!
//! ```
//! use tunelab::data::formats::{load, Dataset};
//! use tunelab::data::jsonl::BadLines;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("qe.jsonl");
//! std::fs::write(&path, r#"{"query":"tide","output":[["lex","tide table"],["hyde","Tides rise twice a day."]]}"#)?;
//! let loaded = load(&path, BadLines::Fail)?;
//! let Dataset::QueryExpansion(records) = &loaded.parts[0].data else { panic!() };
//! assert_eq!(records[0].output[1].text, "Tides rise twice a day.");
//! println!("{}", loaded.parts[0].data.to_frame()?);
//! # Ok(()) }
//! ```

use std::fmt;
use std::path::{Path, PathBuf};

use polars::prelude::*;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::corpus::{Document, read_markdown_files};
use super::governance::{Classification, Governance, Governed};
use super::jsonl::{BadLines, DataError, Read, SkippedLine, from_value, read_with_text, write_jsonl};
use super::ordered_json::OrderedJson;

/// A record type tunelab reads, writes, governs, splits and summarises.
pub trait Record: Governed + DeserializeOwned + Clone {
    const FORMAT: Format;

    /// Text fields as `(field, text)`, for statistics and duplicate detection.
    fn texts(&self) -> Vec<(&str, &str)>;

    /// Texts that must not occur in two splits (the query, the positive, ...).
    fn leak_keys(&self) -> Vec<(&'static str, &str)>;

    /// This record as a one-line JSON value's typed form (override for better errors).
    fn parse(file: &Path, line: usize, value: Value) -> Result<Self, DataError> {
        from_value(file, line, value)
    }

    /// [`Record::parse`] with the line's JSON text at hand, for records that keep part of it in
    /// the order written (`value`'s objects have their keys sorted).
    fn parse_line(file: &Path, line: usize, value: Value, text: &str) -> Result<Self, DataError> {
        let _ = text;
        Self::parse(file, line, value)
    }

    /// The records as a typed DataFrame, one row per record.
    fn to_frame(records: &[Self]) -> PolarsResult<DataFrame>;

    /// The records back from a frame made by [`Record::to_frame`].
    fn from_frame(df: &DataFrame) -> PolarsResult<Vec<Self>>;

    /// The records of this type inside a [`Dataset`] (`None` if it holds another format).
    fn slice(d: &Dataset) -> Option<&[Self]>;

    fn into_dataset(records: Vec<Self>) -> Dataset;
}

/// The [`Dataset`] variant of a record type.
macro_rules! variant {
    ($v:ident) => {
        fn slice(d: &Dataset) -> Option<&[Self]> {
            match d {
                Dataset::$v(r) => Some(r),
                _ => None,
            }
        }
        fn into_dataset(records: Vec<Self>) -> Dataset {
            Dataset::$v(records)
        }
    };
}

/// The record formats, as detected from a line's keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Chat,
    Completions,
    Text,
    QueryExpansion,
    Pairs,
    Reranker,
    Corpus,
}

impl Format {
    /// Detects the format of one JSON line from its keys (`None` if it matches none).
    pub fn detect(v: &Value) -> Option<Format> {
        let o = v.as_object()?;
        let has = |k: &str| o.contains_key(k);
        Some(if has("messages") {
            Format::Chat
        } else if has("prompt") && has("completion") {
            Format::Completions
        } else if has("query") && has("output") {
            Format::QueryExpansion
        } else if has("query") && has("positive") {
            Format::Pairs
        } else if has("query") && has("document") {
            Format::Reranker
        } else if has("text") && has("title") {
            Format::Corpus
        } else if has("text") {
            Format::Text
        } else {
            return None;
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Chat => "chat (messages)",
            Format::Completions => "completions (prompt/completion)",
            Format::Text => "text",
            Format::QueryExpansion => "query expansion (query/output)",
            Format::Pairs => "embedding pairs (query/positive)",
            Format::Reranker => "reranker judgments (query/document/relevant)",
            Format::Corpus => "corpus (id/title/text)",
        }
    }

    /// Whether MLX-LM trains on this format directly.
    pub fn is_mlx(self) -> bool {
        matches!(self, Format::Chat | Format::Completions | Format::Text)
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A chat role (MLX-LM / Hugging Face chat templates).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    #[default]
    User,
    Assistant,
    Tool,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

/// One chat turn, in the OpenAI / transformers shape: `role`, `content`, and for tool use an
/// assistant's `tool_calls`, a tool reply's `tool_call_id` and `name`. The template sees exactly
/// these fields (transformers passes the message dicts through as they are).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    /// The text; `null` (an assistant turn that only calls tools, as OpenAI writes it) reads as "".
    #[serde(default, deserialize_with = "null_as_empty")]
    pub content: String,
    /// Function calls of an assistant turn.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// The call a `tool` message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// The tool's name on a `tool` message (some templates print it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ChatMessage {
    /// A plain turn without tool fields.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        ChatMessage { role, content: content.into(), ..ChatMessage::default() }
    }

    /// The fields besides `role` and `content` as one JSON object ("" when there are none),
    /// for the frame's `extras` column. Written straight to text (not through
    /// `serde_json::Value`), so the tool calls' arguments keep their key order.
    fn extras_json(&self) -> String {
        let extras = MessageExtras { tool_calls: self.tool_calls.clone(), tool_call_id: self.tool_call_id.clone(), name: self.name.clone() };
        if extras == MessageExtras::default() { String::new() } else { serde_json::to_string(&extras).expect("messages serialise") }
    }
}

/// A [`ChatMessage`]'s fields besides `role` and `content`: the frame's `extras` column.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageExtras {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolCall>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
}

/// An assistant's function call, OpenAI's shape `{"type": "function", "function": {"name",
/// "arguments"}, "id"?}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolCall {
    #[serde(rename = "type", default = "function_kind")]
    pub kind: String,
    pub function: FunctionCall,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

fn function_kind() -> String {
    "function".into()
}

/// The called function: `arguments` is a JSON object, or a string holding one (OpenAI's wire
/// form); both are kept as given, an object with its keys in the order written, so the template
/// renders them as transformers does (Qwen3's prints a string as it is and an object through
/// `tojson`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionCall {
    pub name: String,
    pub arguments: OrderedJson,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

/// The governance keys, which a chat record carries at its top level only.
const GOVERNANCE_KEYS: [&str; 4] = ["classification", "contributor", "consent", "source"];

/// The governance fields written at the top level of every record.
macro_rules! governance_fields {
    ($(#[$meta:meta])* pub struct $name:ident { $($(#[$fmeta:meta])* pub $field:ident: $ty:ty,)* }) => {
        $(#[$meta])*
        #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
        pub struct $name {
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub id: Option<String>,
            $($(#[$fmeta])* pub $field: $ty,)*
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub classification: Option<Classification>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub contributor: Option<String>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub consent: Option<String>,
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub source: Option<String>,
        }

        impl Governed for $name {
            fn record_id(&self) -> Option<&str> {
                self.id.as_deref()
            }
            fn governance(&self) -> Governance {
                Governance {
                    classification: self.classification,
                    contributor: self.contributor.clone(),
                    consent: self.consent.clone(),
                    source: self.source.clone(),
                }
            }
        }

        impl $name {
            /// Sets the id and governance fields (e.g. carried from a source document).
            pub fn with_meta(mut self, id: Option<String>, g: Governance) -> Self {
                self.id = id;
                self.classification = g.classification;
                self.contributor = g.contributor;
                self.consent = g.consent;
                self.source = g.source;
                self
            }
        }
    };
}

governance_fields! {
    /// MLX-LM chat record: `{"messages": [{"role", "content"}, ...], "tools"?: [...]}`; `tools`
    /// are function definitions the chat template renders (`apply_chat_template(messages,
    /// tools=tools)`, as MLX-LM's `ChatDataset` passes them), keys in the order written.
    pub struct ChatRecord {
        pub messages: Vec<ChatMessage>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub tools: Option<Vec<OrderedJson>>,
    }
}

governance_fields! {
    /// MLX-LM completions record: `{"prompt", "completion"}`.
    pub struct CompletionRecord {
        pub prompt: String,
        pub completion: String,
    }
}

governance_fields! {
    /// MLX-LM text record: `{"text"}`.
    pub struct TextRecord {
        pub text: String,
    }
}

governance_fields! {
    /// QMD query-expansion record: `{"query", "output": [[kind, text], ...]}`.
    pub struct QueryExpansion {
        pub query: String,
        pub output: Vec<Expansion>,
    }
}

governance_fields! {
    /// Embedding training pair: `{"query", "positive", "negatives"?}`; `doc_id` groups pairs mined
    /// from one document (splits keep a group together).
    pub struct EmbeddingPair {
        pub query: String,
        pub positive: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub negatives: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub doc_id: Option<String>,
    }
}

governance_fields! {
    /// Reranker judgment: `{"query", "document", "relevant": bool | grade}`.
    pub struct RerankerJudgment {
        pub query: String,
        pub document: String,
        pub relevant: Relevance,
    }
}

/// The kind of a QMD query expansion: keyword query, semantic query, or hypothetical document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExpansionKind {
    Lex,
    Vec,
    Hyde,
}

impl ExpansionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ExpansionKind::Lex => "lex",
            ExpansionKind::Vec => "vec",
            ExpansionKind::Hyde => "hyde",
        }
    }
}

/// One `[kind, text]` element of a query expansion's `output`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "(ExpansionKind, String)", into = "(ExpansionKind, String)")]
pub struct Expansion {
    pub kind: ExpansionKind,
    pub text: String,
}

impl From<(ExpansionKind, String)> for Expansion {
    fn from((kind, text): (ExpansionKind, String)) -> Self {
        Expansion { kind, text }
    }
}

impl From<Expansion> for (ExpansionKind, String) {
    fn from(e: Expansion) -> Self {
        (e.kind, e.text)
    }
}

/// A relevance label: binary (`true`/`false`) or a graded integer (as in TREC qrels).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Relevance {
    Binary(bool),
    Grade(i64),
}

impl Default for Relevance {
    fn default() -> Self {
        Relevance::Grade(0)
    }
}

impl Relevance {
    /// The gain: `true` → 1, `false` → 0, a grade as given.
    pub fn grade(self) -> i64 {
        match self {
            Relevance::Binary(b) => b as i64,
            Relevance::Grade(g) => g,
        }
    }
}

// ---- DataFrame helpers -------------------------------------------------------------------------

fn str_col(name: &str, values: Vec<String>) -> Column {
    Column::new(name.into(), values)
}

fn opt_str_col(name: &str, values: Vec<Option<String>>) -> Column {
    Column::new(name.into(), values)
}

/// A `list[str]` column (typed even when empty).
fn list_col(name: &str, rows: &[Vec<&str>]) -> Column {
    let mut b = ListStringChunkedBuilder::new(name.into(), rows.len(), rows.iter().map(Vec::len).sum());
    for r in rows {
        b.append_values_iter(r.iter().copied());
    }
    b.finish().into_series().into_column()
}

/// `id` first, then the record's own columns, then the governance columns.
fn frame<T: Governed>(records: &[T], own: Vec<Column>) -> PolarsResult<DataFrame> {
    let gov: Vec<Governance> = records.iter().map(Governed::governance).collect();
    let mut cols = vec![opt_str_col(
        "id",
        records.iter().map(|r| r.record_id().map(str::to_string)).collect(),
    )];
    cols.extend(own);
    cols.push(opt_str_col(
        "classification",
        gov.iter()
            .map(|g| g.classification.map(|c| c.as_str().to_string()))
            .collect(),
    ));
    cols.push(opt_str_col(
        "contributor",
        gov.iter().map(|g| g.contributor.clone()).collect(),
    ));
    cols.push(opt_str_col("consent", gov.iter().map(|g| g.consent.clone()).collect()));
    cols.push(opt_str_col("source", gov.iter().map(|g| g.source.clone()).collect()));
    DataFrame::new_infer_height(cols)
}

fn frame_err(msg: String) -> PolarsError {
    PolarsError::ComputeError(msg.into())
}

fn opt_str(df: &DataFrame, name: &str, i: usize) -> PolarsResult<Option<String>> {
    Ok(df.column(name)?.str()?.get(i).map(str::to_string))
}

fn req_str(df: &DataFrame, name: &str, i: usize) -> PolarsResult<String> {
    opt_str(df, name, i)?.ok_or_else(|| frame_err(format!("row {i}: `{name}` is null")))
}

fn list_str(df: &DataFrame, name: &str, i: usize) -> PolarsResult<Vec<String>> {
    match df.column(name)?.list()?.get_as_series(i) {
        None => Ok(Vec::new()),
        Some(s) => Ok(s.str()?.iter().map(|v| v.unwrap_or_default().to_string()).collect()),
    }
}

/// Reads `id` and the governance columns of row `i`.
fn meta(df: &DataFrame, i: usize) -> PolarsResult<(Option<String>, Governance)> {
    let classification = match opt_str(df, "classification", i)? {
        None => None,
        Some(c) => Some(c.parse::<Classification>().map_err(frame_err)?),
    };
    let g = Governance {
        classification,
        contributor: opt_str(df, "contributor", i)?,
        consent: opt_str(df, "consent", i)?,
        source: opt_str(df, "source", i)?,
    };
    Ok((opt_str(df, "id", i)?, g))
}

fn parse_enum<T: DeserializeOwned>(s: &str) -> PolarsResult<T> {
    serde_json::from_value(Value::String(s.to_string())).map_err(|e| frame_err(e.to_string()))
}

// ---- Record impls ------------------------------------------------------------------------------

impl Record for ChatRecord {
    const FORMAT: Format = Format::Chat;
    variant!(Chat);

    /// Governance is decided once per record, from its top-level fields, and covers every
    /// message field (tool calls and tool definitions included: they are kept or dropped with
    /// the record and hashed with it). A governance key inside a message would be silently
    /// ignored by that rule, so it is refused, naming the message.
    fn parse(file: &Path, line: usize, value: Value) -> Result<Self, DataError> {
        if let Some(messages) = value.get("messages").and_then(Value::as_array) {
            for (i, m) in messages.iter().enumerate() {
                if let Some(k) = GOVERNANCE_KEYS.iter().find(|k| m.get(**k).is_some()) {
                    return Err(DataError::at(
                        file,
                        line,
                        Some(&format!("messages[{i}].{k}")),
                        "governance fields apply to the whole record: put `classification`, `contributor`, `consent` \
                         and `source` at the top level (a record mixing classifications must be split)",
                    ));
                }
            }
        }
        let record: Self = from_value(file, line, value)?;
        for (i, m) in record.messages.iter().enumerate() {
            for (j, c) in m.tool_calls.iter().enumerate() {
                let field = format!("messages[{i}].tool_calls[{j}].function.arguments");
                match &c.function.arguments {
                    OrderedJson::Object(_) => {}
                    OrderedJson::String(s) => {
                        if let Err(e) = serde_json::from_str::<Value>(s) {
                            return Err(DataError::at(file, line, Some(&field), format!("a string of arguments must hold JSON: {e}")));
                        }
                    }
                    other => return Err(DataError::at(file, line, Some(&field), format!("expected a JSON object or a string holding one, found {other}"))),
                }
            }
            if !m.tool_calls.is_empty() && m.role != Role::Assistant {
                return Err(DataError::at(file, line, Some(&format!("messages[{i}].tool_calls")), format!("only assistant turns call tools, this is a {} turn", m.role.as_str())));
            }
        }
        Ok(record)
    }

    /// [`Record::parse`] for the checks and their errors, then, for a record with tools or tool
    /// calls, the record again from the line's text: `value` has its object keys sorted, and
    /// the tool schemas and arguments must reach the template in the order written.
    fn parse_line(file: &Path, line: usize, value: Value, text: &str) -> Result<Self, DataError> {
        let record = Self::parse(file, line, value)?;
        if record.tools.is_none() && record.messages.iter().all(|m| m.tool_calls.is_empty()) {
            return Ok(record);
        }
        serde_json::from_str(text).map_err(|e| DataError::at(file, line, None, format!("record re-read in key order: {e}")))
    }

    /// Contents, then each tool call's name and (string) arguments.
    fn texts(&self) -> Vec<(&str, &str)> {
        let mut out: Vec<(&str, &str)> = self.messages.iter().map(|m| (m.role.as_str(), m.content.as_str())).collect();
        for c in self.messages.iter().flat_map(|m| &m.tool_calls) {
            out.push(("tool_call", c.function.name.as_str()));
            if let OrderedJson::String(a) = &c.function.arguments {
                out.push(("tool_call_arguments", a.as_str()));
            }
        }
        out
    }

    fn leak_keys(&self) -> Vec<(&'static str, &str)> {
        // The first user turn plays the part of the query.
        self.messages
            .iter()
            .find(|m| m.role == Role::User)
            .map(|m| ("user", m.content.as_str()))
            .into_iter()
            .collect()
    }

    fn to_frame(records: &[Self]) -> PolarsResult<DataFrame> {
        let roles: Vec<Vec<&str>> = records
            .iter()
            .map(|r| r.messages.iter().map(|m| m.role.as_str()).collect())
            .collect();
        let contents: Vec<Vec<&str>> = records
            .iter()
            .map(|r| r.messages.iter().map(|m| m.content.as_str()).collect())
            .collect();
        // Tool fields as JSON text: a message's fields besides role and content ("" when none),
        // and the record's tool definitions.
        let extras: Vec<Vec<String>> = records.iter().map(|r| r.messages.iter().map(ChatMessage::extras_json).collect()).collect();
        let extras: Vec<Vec<&str>> = extras.iter().map(|r| r.iter().map(String::as_str).collect()).collect();
        let tools = records.iter().map(|r| r.tools.as_ref().map(|t| OrderedJson::Array(t.clone()).to_string())).collect();
        frame(
            records,
            vec![list_col("roles", &roles), list_col("contents", &contents), list_col("extras", &extras), opt_str_col("tools", tools)],
        )
    }

    fn from_frame(df: &DataFrame) -> PolarsResult<Vec<Self>> {
        (0..df.height())
            .map(|i| {
                let roles = list_str(df, "roles", i)?;
                let contents = list_str(df, "contents", i)?;
                let extras = list_str(df, "extras", i)?;
                let messages = roles
                    .iter()
                    .zip(contents)
                    .zip(extras.into_iter().chain(std::iter::repeat(String::new())))
                    .map(|((r, content), extra)| {
                        // Read from the text itself, not a serde_json::Value: arguments keep their key order.
                        let extras: MessageExtras = if extra.is_empty() {
                            MessageExtras::default()
                        } else {
                            serde_json::from_str(&extra).map_err(|e| frame_err(format!("row {i}: `extras`: {e}")))?
                        };
                        Ok(ChatMessage {
                            role: parse_enum(r)?,
                            content,
                            tool_calls: extras.tool_calls,
                            tool_call_id: extras.tool_call_id,
                            name: extras.name,
                        })
                    })
                    .collect::<PolarsResult<_>>()?;
                let tools = opt_str(df, "tools", i)?
                    .map(|t| serde_json::from_str::<Vec<OrderedJson>>(&t).map_err(|e| frame_err(format!("row {i}: `tools`: {e}"))))
                    .transpose()?;
                let (id, g) = meta(df, i)?;
                Ok(ChatRecord {
                    messages,
                    tools,
                    ..Default::default()
                }
                .with_meta(id, g))
            })
            .collect()
    }
}

impl Record for CompletionRecord {
    const FORMAT: Format = Format::Completions;
    variant!(Completions);

    fn texts(&self) -> Vec<(&str, &str)> {
        vec![
            ("prompt", self.prompt.as_str()),
            ("completion", self.completion.as_str()),
        ]
    }

    fn leak_keys(&self) -> Vec<(&'static str, &str)> {
        vec![("prompt", self.prompt.as_str())]
    }

    fn to_frame(records: &[Self]) -> PolarsResult<DataFrame> {
        frame(
            records,
            vec![
                str_col("prompt", records.iter().map(|r| r.prompt.clone()).collect()),
                str_col("completion", records.iter().map(|r| r.completion.clone()).collect()),
            ],
        )
    }

    fn from_frame(df: &DataFrame) -> PolarsResult<Vec<Self>> {
        (0..df.height())
            .map(|i| {
                let (id, g) = meta(df, i)?;
                Ok(CompletionRecord {
                    prompt: req_str(df, "prompt", i)?,
                    completion: req_str(df, "completion", i)?,
                    ..Default::default()
                }
                .with_meta(id, g))
            })
            .collect()
    }
}

impl Record for TextRecord {
    const FORMAT: Format = Format::Text;
    variant!(Text);

    fn texts(&self) -> Vec<(&str, &str)> {
        vec![("text", self.text.as_str())]
    }

    fn leak_keys(&self) -> Vec<(&'static str, &str)> {
        vec![("text", self.text.as_str())]
    }

    fn to_frame(records: &[Self]) -> PolarsResult<DataFrame> {
        frame(
            records,
            vec![str_col("text", records.iter().map(|r| r.text.clone()).collect())],
        )
    }

    fn from_frame(df: &DataFrame) -> PolarsResult<Vec<Self>> {
        (0..df.height())
            .map(|i| {
                let (id, g) = meta(df, i)?;
                Ok(TextRecord {
                    text: req_str(df, "text", i)?,
                    ..Default::default()
                }
                .with_meta(id, g))
            })
            .collect()
    }
}

impl Record for QueryExpansion {
    const FORMAT: Format = Format::QueryExpansion;
    variant!(QueryExpansion);

    fn texts(&self) -> Vec<(&str, &str)> {
        let mut t = vec![("query", self.query.as_str())];
        t.extend(self.output.iter().map(|e| (e.kind.as_str(), e.text.as_str())));
        t
    }

    fn leak_keys(&self) -> Vec<(&'static str, &str)> {
        vec![("query", self.query.as_str())]
    }

    fn to_frame(records: &[Self]) -> PolarsResult<DataFrame> {
        let kinds: Vec<Vec<&str>> = records
            .iter()
            .map(|r| r.output.iter().map(|e| e.kind.as_str()).collect())
            .collect();
        let texts: Vec<Vec<&str>> = records
            .iter()
            .map(|r| r.output.iter().map(|e| e.text.as_str()).collect())
            .collect();
        frame(
            records,
            vec![
                str_col("query", records.iter().map(|r| r.query.clone()).collect()),
                list_col("kinds", &kinds),
                list_col("texts", &texts),
            ],
        )
    }

    fn from_frame(df: &DataFrame) -> PolarsResult<Vec<Self>> {
        (0..df.height())
            .map(|i| {
                let output = list_str(df, "kinds", i)?
                    .iter()
                    .zip(list_str(df, "texts", i)?)
                    .map(|(k, text)| {
                        Ok(Expansion {
                            kind: parse_enum(k)?,
                            text,
                        })
                    })
                    .collect::<PolarsResult<_>>()?;
                let (id, g) = meta(df, i)?;
                Ok(QueryExpansion {
                    query: req_str(df, "query", i)?,
                    output,
                    ..Default::default()
                }
                .with_meta(id, g))
            })
            .collect()
    }
}

impl Record for EmbeddingPair {
    const FORMAT: Format = Format::Pairs;
    variant!(Pairs);

    fn texts(&self) -> Vec<(&str, &str)> {
        let mut t = vec![("query", self.query.as_str()), ("positive", self.positive.as_str())];
        t.extend(self.negatives.iter().map(|n| ("negative", n.as_str())));
        t
    }

    fn leak_keys(&self) -> Vec<(&'static str, &str)> {
        vec![("query", self.query.as_str()), ("positive", self.positive.as_str())]
    }

    fn to_frame(records: &[Self]) -> PolarsResult<DataFrame> {
        let negatives: Vec<Vec<&str>> = records
            .iter()
            .map(|r| r.negatives.iter().map(String::as_str).collect())
            .collect();
        frame(
            records,
            vec![
                str_col("query", records.iter().map(|r| r.query.clone()).collect()),
                str_col("positive", records.iter().map(|r| r.positive.clone()).collect()),
                list_col("negatives", &negatives),
                opt_str_col("doc_id", records.iter().map(|r| r.doc_id.clone()).collect()),
            ],
        )
    }

    fn from_frame(df: &DataFrame) -> PolarsResult<Vec<Self>> {
        (0..df.height())
            .map(|i| {
                let (id, g) = meta(df, i)?;
                Ok(EmbeddingPair {
                    query: req_str(df, "query", i)?,
                    positive: req_str(df, "positive", i)?,
                    negatives: list_str(df, "negatives", i)?,
                    doc_id: opt_str(df, "doc_id", i)?,
                    ..Default::default()
                }
                .with_meta(id, g))
            })
            .collect()
    }
}

impl Record for RerankerJudgment {
    const FORMAT: Format = Format::Reranker;
    variant!(Reranker);

    fn texts(&self) -> Vec<(&str, &str)> {
        vec![("query", self.query.as_str()), ("document", self.document.as_str())]
    }

    fn leak_keys(&self) -> Vec<(&'static str, &str)> {
        vec![("query", self.query.as_str())]
    }

    /// `relevant` becomes an Int64 grade; `binary` remembers whether it was written as a bool.
    fn to_frame(records: &[Self]) -> PolarsResult<DataFrame> {
        frame(
            records,
            vec![
                str_col("query", records.iter().map(|r| r.query.clone()).collect()),
                str_col("document", records.iter().map(|r| r.document.clone()).collect()),
                Column::new(
                    "relevant".into(),
                    records.iter().map(|r| r.relevant.grade()).collect::<Vec<i64>>(),
                ),
                Column::new(
                    "binary".into(),
                    records
                        .iter()
                        .map(|r| matches!(r.relevant, Relevance::Binary(_)))
                        .collect::<Vec<bool>>(),
                ),
            ],
        )
    }

    fn from_frame(df: &DataFrame) -> PolarsResult<Vec<Self>> {
        let grades = df.column("relevant")?.i64()?;
        let binary = df.column("binary")?.bool()?;
        (0..df.height())
            .map(|i| {
                let grade = grades
                    .get(i)
                    .ok_or_else(|| frame_err(format!("row {i}: `relevant` is null")))?;
                let relevant = if binary.get(i) == Some(true) {
                    Relevance::Binary(grade != 0)
                } else {
                    Relevance::Grade(grade)
                };
                let (id, g) = meta(df, i)?;
                Ok(RerankerJudgment {
                    query: req_str(df, "query", i)?,
                    document: req_str(df, "document", i)?,
                    relevant,
                    ..Default::default()
                }
                .with_meta(id, g))
            })
            .collect()
    }
}

impl Record for Document {
    const FORMAT: Format = Format::Corpus;
    variant!(Corpus);

    fn texts(&self) -> Vec<(&str, &str)> {
        vec![("title", self.title.as_str()), ("text", self.text.as_str())]
    }

    fn leak_keys(&self) -> Vec<(&'static str, &str)> {
        vec![("text", self.text.as_str())]
    }

    fn parse(file: &Path, line: usize, value: Value) -> Result<Self, DataError> {
        super::corpus::parse_line(file, line, value)
    }

    fn to_frame(records: &[Self]) -> PolarsResult<DataFrame> {
        frame(
            records,
            vec![
                str_col("title", records.iter().map(|r| r.title.clone()).collect()),
                str_col("text", records.iter().map(|r| r.text.clone()).collect()),
            ],
        )
    }

    fn from_frame(df: &DataFrame) -> PolarsResult<Vec<Self>> {
        (0..df.height())
            .map(|i| {
                let (id, governance) = meta(df, i)?;
                let id = id.ok_or_else(|| frame_err(format!("row {i}: `id` is null")))?;
                Ok(Document {
                    id,
                    title: req_str(df, "title", i)?,
                    text: req_str(df, "text", i)?,
                    governance,
                })
            })
            .collect()
    }
}

// ---- Reading and writing -----------------------------------------------------------------------

/// Reads a JSONL file of one known record type (no format detection).
pub fn read_records<T: Record>(path: &Path, bad: BadLines) -> Result<Read<T>, DataError> {
    read_with_text(path, bad, |line, v, text| T::parse_line(path, line, v, text))
}

/// Writes records as JSONL (atomically).
pub fn write_records<T: Serialize>(path: &Path, records: &[T]) -> Result<(), DataError> {
    write_jsonl(path, records)
}

/// Records of any one format.
#[derive(Clone, Debug, PartialEq)]
pub enum Dataset {
    Chat(Vec<ChatRecord>),
    Completions(Vec<CompletionRecord>),
    Text(Vec<TextRecord>),
    QueryExpansion(Vec<QueryExpansion>),
    Pairs(Vec<EmbeddingPair>),
    Reranker(Vec<RerankerJudgment>),
    Corpus(Vec<Document>),
}

/// Runs `$body` with `$records` bound to the typed `Vec` inside a [`Dataset`] (whatever its format).
macro_rules! with_records {
    ($data:expr, $records:ident => $body:expr) => {
        match $data {
            $crate::data::formats::Dataset::Chat($records) => $body,
            $crate::data::formats::Dataset::Completions($records) => $body,
            $crate::data::formats::Dataset::Text($records) => $body,
            $crate::data::formats::Dataset::QueryExpansion($records) => $body,
            $crate::data::formats::Dataset::Pairs($records) => $body,
            $crate::data::formats::Dataset::Reranker($records) => $body,
            $crate::data::formats::Dataset::Corpus($records) => $body,
        }
    };
}
#[allow(unused_imports)] // exported for the CLI and notebooks
pub(crate) use with_records;

/// Runs `$body` with the type alias `$t` set to the record type of a [`Format`].
#[cfg(feature = "models")] // only the CLI uses it
macro_rules! with_format {
    ($format:expr, $t:ident => $body:expr) => {{
        use $crate::data::formats as f;
        match $format {
            f::Format::Chat => {
                type $t = f::ChatRecord;
                $body
            }
            f::Format::Completions => {
                type $t = f::CompletionRecord;
                $body
            }
            f::Format::Text => {
                type $t = f::TextRecord;
                $body
            }
            f::Format::QueryExpansion => {
                type $t = f::QueryExpansion;
                $body
            }
            f::Format::Pairs => {
                type $t = f::EmbeddingPair;
                $body
            }
            f::Format::Reranker => {
                type $t = f::RerankerJudgment;
                $body
            }
            f::Format::Corpus => {
                type $t = $crate::data::corpus::Document;
                $body
            }
        }
    }};
}
#[cfg(feature = "models")]
pub(crate) use with_format;

impl Dataset {
    pub fn format(&self) -> Format {
        match self {
            Dataset::Chat(_) => Format::Chat,
            Dataset::Completions(_) => Format::Completions,
            Dataset::Text(_) => Format::Text,
            Dataset::QueryExpansion(_) => Format::QueryExpansion,
            Dataset::Pairs(_) => Format::Pairs,
            Dataset::Reranker(_) => Format::Reranker,
            Dataset::Corpus(_) => Format::Corpus,
        }
    }

    pub fn len(&self) -> usize {
        with_records!(self, r => r.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// An empty dataset of a format.
    pub fn empty(format: Format) -> Dataset {
        match format {
            Format::Chat => Dataset::Chat(Vec::new()),
            Format::Completions => Dataset::Completions(Vec::new()),
            Format::Text => Dataset::Text(Vec::new()),
            Format::QueryExpansion => Dataset::QueryExpansion(Vec::new()),
            Format::Pairs => Dataset::Pairs(Vec::new()),
            Format::Reranker => Dataset::Reranker(Vec::new()),
            Format::Corpus => Dataset::Corpus(Vec::new()),
        }
    }

    /// The records as a typed DataFrame.
    pub fn to_frame(&self) -> PolarsResult<DataFrame> {
        with_records!(self, r => Record::to_frame(r))
    }

    /// Writes the records as JSONL (atomically).
    pub fn write(&self, path: &Path) -> Result<(), DataError> {
        with_records!(self, r => write_records(path, r))
    }

    /// Appends another dataset of the same format (`Err` with both formats otherwise).
    pub fn extend(&mut self, other: Dataset) -> Result<(), (Format, Format)> {
        match (self, other) {
            (Dataset::Chat(a), Dataset::Chat(b)) => a.extend(b),
            (Dataset::Completions(a), Dataset::Completions(b)) => a.extend(b),
            (Dataset::Text(a), Dataset::Text(b)) => a.extend(b),
            (Dataset::QueryExpansion(a), Dataset::QueryExpansion(b)) => a.extend(b),
            (Dataset::Pairs(a), Dataset::Pairs(b)) => a.extend(b),
            (Dataset::Reranker(a), Dataset::Reranker(b)) => a.extend(b),
            (Dataset::Corpus(a), Dataset::Corpus(b)) => a.extend(b),
            (a, b) => return Err((a.format(), b.format())),
        }
        Ok(())
    }

    /// Parses one JSON line as a record of this dataset's format and appends it.
    pub fn push_value(&mut self, file: &Path, line: usize, value: Value) -> Result<(), DataError> {
        with_records!(self, r => r.push(Record::parse(file, line, value)?));
        Ok(())
    }

    /// [`Dataset::push_value`] with the line's text, which chat records read their tool schemas and
    /// arguments from (in the order written).
    pub fn push_line(&mut self, file: &Path, line: usize, value: Value, text: &str) -> Result<(), DataError> {
        with_records!(self, r => r.push(Record::parse_line(file, line, value, text)?));
        Ok(())
    }
}

/// Reads a JSONL file whose format is detected from its lines. All lines must share the format of
/// the first record; a line of another format (or of none) is a [`DataError`] naming it.
/// Returns `None` for a file without records.
pub fn read_detected(path: &Path, bad: BadLines) -> Result<(Option<Dataset>, Vec<SkippedLine>), DataError> {
    read_detected_lines(path, bad).map(|(data, skipped, _)| (data, skipped))
}

/// What [`read_detected_lines`] returns: the records, the skipped lines, each record's 1-based line.
type DetectedLines = (Option<Dataset>, Vec<SkippedLine>, Vec<usize>);

/// [`read_detected`], with the 1-based line of each record read.
fn read_detected_lines(path: &Path, bad: BadLines) -> Result<DetectedLines, DataError> {
    let mut first: Option<(Format, usize)> = None;
    let mut data: Option<Dataset> = None;
    let read = read_with_text(path, bad, |line, v, text| {
        let format = Format::detect(&v).ok_or_else(|| {
            DataError::at(
                path,
                line,
                None,
                "unrecognised record: expected `messages`, `prompt`+`completion`, `text`, `query`+`output`, \
                 `query`+`positive`, `query`+`document`, or `id`+`title`+`text`",
            )
        })?;
        match first {
            None => first = Some((format, line)),
            Some((f0, l0)) if f0 != format => {
                return Err(DataError::at(
                    path,
                    line,
                    None,
                    format!("mixed formats: this line is {format} but line {l0} is {f0}; use one format per file"),
                ));
            }
            Some(_) => {}
        }
        data.get_or_insert_with(|| Dataset::empty(format))
            .push_line(path, line, v, text)
    })?;
    Ok((data, read.skipped, read.lines))
}

/// One file of a loaded dataset: `train`/`valid`/`test` in the MLX-LM layout, else the file stem.
#[derive(Clone, Debug, PartialEq)]
pub struct Part {
    pub name: String,
    pub path: PathBuf,
    pub data: Dataset,
    /// Where each record came from (file and 1-based line), in record order.
    pub origins: Vec<Origin>,
}

/// A record's place in its file, printed `file:line`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Origin {
    pub file: PathBuf,
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

fn origins(file: &Path, lines: Vec<usize>) -> Vec<Origin> {
    lines.into_iter().map(|line| Origin { file: file.to_path_buf(), line }).collect()
}

/// A dataset file or folder, read and typed.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded {
    pub format: Format,
    pub parts: Vec<Part>,
    pub skipped: Vec<SkippedLine>,
}

impl Loaded {
    /// All parts' records in one dataset (parts share a format by construction).
    pub fn combined(&self) -> Dataset {
        let mut all = Dataset::empty(self.format);
        for p in &self.parts {
            all.extend(p.data.clone()).expect("parts share one format");
        }
        all
    }

    pub fn len(&self) -> usize {
        self.parts.iter().map(|p| p.data.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The MLX-LM split files, in order.
pub const MLX_SPLITS: [&str; 3] = ["train", "valid", "test"];

/// Loads a dataset from a JSONL file (format detected), an MLX-LM folder (`train/valid/test.jsonl`,
/// one format across files), or a folder of markdown files (a corpus).
pub fn load(path: &Path, bad: BadLines) -> Result<Loaded, DataError> {
    if !path.is_dir() {
        let (data, skipped, lines) = read_detected_lines(path, bad)?;
        let data = data.ok_or_else(|| DataError::file(path, "no records"))?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        return Ok(Loaded {
            format: data.format(),
            parts: vec![Part {
                name,
                path: path.to_path_buf(),
                data,
                origins: origins(path, lines),
            }],
            skipped,
        });
    }
    let mlx: Vec<PathBuf> = MLX_SPLITS
        .iter()
        .map(|s| path.join(format!("{s}.jsonl")))
        .filter(|p| p.is_file())
        .collect();
    if mlx.is_empty() {
        let (read, files) = read_markdown_files(path, bad)?;
        if read.records.is_empty() && read.skipped.is_empty() {
            return Err(DataError::file(
                path,
                "neither train/valid/test.jsonl nor markdown files found",
            ));
        }
        let data = Dataset::Corpus(read.records);
        return Ok(Loaded {
            format: Format::Corpus,
            parts: vec![Part {
                name: "corpus".into(),
                path: path.to_path_buf(),
                data,
                origins: files.into_iter().map(|file| Origin { file, line: 1 }).collect(),
            }],
            skipped: read.skipped,
        });
    }
    read_mlx_files(&mlx, bad)
}

/// Reads an MLX-LM folder (`train.jsonl`, `valid.jsonl`, `test.jsonl`; missing files are skipped).
pub fn read_mlx_folder(dir: &Path, bad: BadLines) -> Result<Loaded, DataError> {
    let files: Vec<PathBuf> = MLX_SPLITS
        .iter()
        .map(|s| dir.join(format!("{s}.jsonl")))
        .filter(|p| p.is_file())
        .collect();
    if files.is_empty() {
        return Err(DataError::file(dir, "no train.jsonl, valid.jsonl or test.jsonl"));
    }
    read_mlx_files(&files, bad)
}

fn read_mlx_files(files: &[PathBuf], bad: BadLines) -> Result<Loaded, DataError> {
    let mut parts: Vec<Part> = Vec::new();
    let mut skipped = Vec::new();
    let mut empty = Vec::new();
    for path in files {
        let (data, mut s, lines) = read_detected_lines(path, bad)?;
        skipped.append(&mut s);
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        match data {
            None => empty.push((name, path.clone())),
            Some(data) => {
                if let Some(first) = parts.first().filter(|p| p.data.format() != data.format()) {
                    return Err(DataError::file(
                        path,
                        format!(
                            "this file is {} but {} is {}; the splits of a folder share one format",
                            data.format(),
                            first.path.display(),
                            first.data.format()
                        ),
                    ));
                }
                parts.push(Part {
                    name,
                    path: path.clone(),
                    data,
                    origins: origins(path, lines),
                });
            }
        }
    }
    let format = parts
        .first()
        .map(|p| p.data.format())
        .ok_or_else(|| DataError::file(&files[0], "no records in any split"))?;
    for (name, path) in empty {
        parts.push(Part {
            name,
            path,
            data: Dataset::empty(format),
            origins: Vec::new(),
        });
    }
    parts.sort_by_key(|p| MLX_SPLITS.iter().position(|s| *s == p.name));
    Ok(Loaded { format, parts, skipped })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        p
    }

    fn load_one(content: &str) -> Result<Loaded, DataError> {
        let dir = tempfile::tempdir().unwrap();
        load(&write(dir.path(), "f.jsonl", content), BadLines::Fail)
    }

    #[test]
    fn detects_each_format() {
        let cases = [
            (r#"{"messages":[{"role":"user","content":"hi"}]}"#, Format::Chat),
            (r#"{"prompt":"p","completion":"c"}"#, Format::Completions),
            (r#"{"text":"t"}"#, Format::Text),
            (r#"{"query":"q","output":[["vec","v"]]}"#, Format::QueryExpansion),
            (r#"{"query":"q","positive":"p"}"#, Format::Pairs),
            (r#"{"query":"q","document":"d","relevant":true}"#, Format::Reranker),
            (r#"{"id":"d1","title":"T","text":"t"}"#, Format::Corpus),
        ];
        for (line, format) in cases {
            let l = load_one(line).unwrap();
            assert_eq!(l.format, format, "{line}");
            assert_eq!(l.len(), 1);
        }
        assert!(load_one(r#"{"foo":1}"#).unwrap_err().message.contains("unrecognised"));
    }

    #[test]
    fn mixed_formats_in_a_file_name_the_line() {
        let e = load_one("{\"text\":\"a\"}\n{\"prompt\":\"p\",\"completion\":\"c\"}\n").unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(
            e.message.contains("mixed formats") && e.message.contains("line 1"),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "f.jsonl",
            "{\"text\":\"a\"}\n{\"prompt\":\"p\",\"completion\":\"c\"}\n{\"text\":\"b\"}\n",
        );
        let l = load(&p, BadLines::SkipBad).unwrap();
        assert_eq!((l.len(), l.skipped.len(), l.skipped[0].line), (2, 1, 2));
    }

    #[test]
    fn query_expansion_kinds_are_validated() {
        let e = load_one("{\"query\":\"q\",\"output\":[[\"lex\",\"a\"],[\"bm25\",\"b\"]]}\n").unwrap_err();
        assert_eq!((e.line, e.field.as_deref()), (Some(1), Some("output[1][0]")), "{e}");
        assert!(e.message.contains("bm25"));
        let e = load_one("{\"query\":\"q\",\"output\":[[\"lex\"]]}\n").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("output[0]"), "{e}");
    }

    #[test]
    fn bad_fields_are_named() {
        let e =
            load_one("{\"messages\":[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"robot\",\"content\":\"b\"}]}")
                .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("messages[1].role"), "{e}");
        let e = load_one("{\"query\":\"q\",\"document\":\"d\",\"relevant\":\"yes\"}").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("relevant"), "{e}");
        let e = load_one("{\"query\":\"q\",\"positive\":\"p\",\"negatives\":\"n\"}").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("negatives"), "{e}");
        let e = load_one("{\"text\":\"t\",\"classification\":\"secret\"}").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("classification"), "{e}");
        let e = load_one("{\"prompt\":\"p\",\"completion\":null}").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("completion"), "{e}");
    }

    fn round_trip<T: Record + PartialEq + fmt::Debug + Serialize>(records: Vec<T>, columns: &[&str]) {
        let df = T::to_frame(&records).unwrap();
        assert_eq!(df.height(), records.len());
        let names: Vec<&str> = df.get_column_names().into_iter().map(|n| n.as_str()).collect();
        for c in columns {
            assert!(names.contains(c), "{c} not in {names:?}");
        }
        assert_eq!(T::from_frame(&df).unwrap(), records);
        // JSONL round trip through the writer and the typed reader.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.jsonl");
        write_records(&p, &records).unwrap();
        assert_eq!(read_records::<T>(&p, BadLines::Fail).unwrap().records, records);
        // Empty frames keep their types.
        assert_eq!(T::to_frame(&[]).unwrap().width(), df.width());
    }

    fn gov() -> Governance {
        Governance {
            classification: Some(Classification::Community),
            contributor: Some("ana".into()),
            consent: Some("c1".into()),
            source: None,
        }
    }

    /// A tool-use conversation: tool definitions, a call with object arguments and one with
    /// string arguments (Unicode inside), the tool's reply.
    fn tool_record() -> ChatRecord {
        let line = r#"{"messages":[{"role":"user","content":"Wetter in Zürich?"},
            {"role":"assistant","content":null,"tool_calls":[{"type":"function","function":{"name":"get_weather","arguments":{"city":"Zürich"}}},
              {"id":"c2","function":{"name":"get_time","arguments":"{\"tz\": \"Europe/Zürich ☀\"}"}}]},
            {"role":"tool","name":"get_weather","tool_call_id":"c1","content":"{\"temp_c\": 21}"},
            {"role":"assistant","content":"21 °C."}],
            "tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}}],
            "classification":"public"}"#;
        let line = line.replace('\n', " ");
        ChatRecord::parse_line(Path::new("t.jsonl"), 1, serde_json::from_str(&line).unwrap(), &line).unwrap()
    }

    #[test]
    fn tool_fields_are_read_and_bad_ones_named() {
        let r = tool_record();
        assert_eq!(r.tools.as_ref().map(Vec::len), Some(1));
        let calls = &r.messages[1].tool_calls;
        assert_eq!((r.messages[1].content.as_str(), calls.len(), calls[1].kind.as_str()), ("", 2, "function"));
        assert_eq!(calls[0].function.arguments.to_value(), serde_json::json!({"city": "Zürich"}));
        assert_eq!(r.messages[2].tool_call_id.as_deref(), Some("c1"));
        assert!(r.texts().contains(&("tool_call_arguments", "{\"tz\": \"Europe/Zürich ☀\"}")));

        let bad = |line: &str| ChatRecord::parse(Path::new("t.jsonl"), 7, serde_json::from_str(line).unwrap()).unwrap_err();
        let e = bad(r#"{"messages":[{"role":"user","content":"a","classification":"sacred"}],"classification":"public"}"#);
        assert_eq!((e.line, e.field.as_deref()), (Some(7), Some("messages[0].classification")), "{e}");
        assert!(e.to_string().contains("top level"), "{e}");
        let e = bad(r#"{"messages":[{"role":"assistant","content":"","tool_calls":[{"type":"function","function":{"name":"f","arguments":"{oops"}}]}]}"#);
        assert_eq!(e.field.as_deref(), Some("messages[0].tool_calls[0].function.arguments"), "{e}");
        let e = bad(r#"{"messages":[{"role":"assistant","content":"","tool_calls":[{"type":"function","function":{"name":"f","arguments":[1]}}]}]}"#);
        assert_eq!(e.field.as_deref(), Some("messages[0].tool_calls[0].function.arguments"), "{e}");
        let e = bad(r#"{"messages":[{"role":"user","content":"","tool_calls":[{"type":"function","function":{"name":"f","arguments":{}}}]}]}"#);
        assert_eq!(e.field.as_deref(), Some("messages[0].tool_calls"), "{e}");
        let e = bad(r#"{"messages":[{"role":"assistant","content":"","tool_calls":[{"type":"function","function":{"name":"f"}}]}]}"#);
        assert!(e.field.as_deref().is_some_and(|f| f.ends_with("function.arguments")), "{e}");
    }

    /// Tool schemas and object arguments keep the key order of the file through both readers
    /// and the data frame (serde_json::Value, which the lines are parsed into first, sorts it).
    #[test]
    fn tool_schemas_and_arguments_keep_the_written_key_order() {
        let tool = r#"{"type":"function","function":{"name":"search","description":"d","parameters":{"type":"object","properties":{"query":{"type":"string"},"größe":{"type":"integer"},"filters":{"type":"object","properties":{"year":{"type":"integer"},"author":{"type":"string"}}}},"required":["query"]}}}"#;
        let args = r#"{"query":"mill","größe":2,"filters":{"year":1902,"author":"Ås"}}"#;
        let line = format!(
            r#"{{"tools":[{tool}],"messages":[{{"role":"user","content":"q"}},{{"role":"assistant","content":"","tool_calls":[{{"type":"function","function":{{"name":"search","arguments":{args}}}}}]}}]}}"#
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train.jsonl");
        std::fs::write(&path, format!("{line}\n")).unwrap();
        let check = |r: &ChatRecord, how: &str| {
            assert_eq!(r.tools.as_ref().unwrap()[0].to_string(), tool, "{how}: tools");
            assert_eq!(r.messages[1].tool_calls[0].function.arguments.to_string(), args, "{how}: arguments");
        };
        let typed = read_records::<ChatRecord>(&path, BadLines::Fail).unwrap().records;
        check(&typed[0], "read_records");
        let (detected, _) = read_detected(&path, BadLines::Fail).unwrap();
        let Some(Dataset::Chat(detected)) = detected else { panic!("not chat") };
        check(&detected[0], "read_detected");
        check(&ChatRecord::from_frame(&ChatRecord::to_frame(&typed).unwrap()).unwrap()[0], "frame");
        let written = dir.path().join("out.jsonl");
        write_records(&written, &typed).unwrap();
        check(&read_records::<ChatRecord>(&written, BadLines::Fail).unwrap().records[0], "written and read again");
    }

    #[test]
    fn frames_round_trip_every_format() {
        let msg = |role, content: &str| ChatMessage::new(role, content);
        round_trip(
            vec![
                ChatRecord {
                    messages: vec![msg(Role::System, "s"), msg(Role::User, "u"), msg(Role::Assistant, "a")],
                    ..Default::default()
                }
                .with_meta(Some("c1".into()), gov()),
                ChatRecord {
                    messages: vec![],
                    ..Default::default()
                },
                tool_record(),
            ],
            &["id", "roles", "contents", "extras", "tools", "classification"],
        );
        round_trip(
            vec![CompletionRecord {
                prompt: "p".into(),
                completion: "c".into(),
                ..Default::default()
            }],
            &["prompt", "completion"],
        );
        round_trip(
            vec![
                TextRecord {
                    text: "t".into(),
                    ..Default::default()
                }
                .with_meta(None, gov()),
            ],
            &["text", "consent"],
        );
        round_trip(
            vec![QueryExpansion {
                query: "q".into(),
                output: vec![
                    Expansion {
                        kind: ExpansionKind::Lex,
                        text: "l".into(),
                    },
                    Expansion {
                        kind: ExpansionKind::Hyde,
                        text: "h".into(),
                    },
                ],
                ..Default::default()
            }],
            &["query", "kinds", "texts"],
        );
        round_trip(
            vec![
                EmbeddingPair {
                    query: "q".into(),
                    positive: "p".into(),
                    negatives: vec!["n1".into(), "n2".into()],
                    doc_id: Some("d".into()),
                    ..Default::default()
                },
                EmbeddingPair {
                    query: "q2".into(),
                    positive: "p2".into(),
                    ..Default::default()
                },
            ],
            &["query", "positive", "negatives", "doc_id"],
        );
        round_trip(
            vec![
                RerankerJudgment {
                    query: "q".into(),
                    document: "d".into(),
                    relevant: Relevance::Binary(true),
                    ..Default::default()
                },
                RerankerJudgment {
                    query: "q".into(),
                    document: "e".into(),
                    relevant: Relevance::Grade(2),
                    ..Default::default()
                },
            ],
            &["relevant", "binary"],
        );
        round_trip(
            vec![Document {
                id: "d".into(),
                title: "T".into(),
                text: "x".into(),
                governance: gov(),
            }],
            &["title", "text"],
        );
    }

    #[test]
    fn frame_columns_are_typed() {
        let df = RerankerJudgment::to_frame(&[RerankerJudgment {
            relevant: Relevance::Binary(true),
            ..Default::default()
        }])
        .unwrap();
        assert_eq!(df.column("relevant").unwrap().dtype(), &DataType::Int64);
        assert_eq!(df.column("relevant").unwrap().i64().unwrap().get(0), Some(1));
        let df = EmbeddingPair::to_frame(&[]).unwrap();
        assert_eq!(
            df.column("negatives").unwrap().dtype(),
            &DataType::List(Box::new(DataType::String))
        );
    }

    #[test]
    fn mlx_folder_reads_splits_in_order_and_rejects_mixed_formats() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "valid.jsonl", "{\"text\":\"v\"}\n");
        write(dir.path(), "train.jsonl", "{\"text\":\"t1\"}\n{\"text\":\"t2\"}\n");
        write(dir.path(), "test.jsonl", "\n");
        let l = read_mlx_folder(dir.path(), BadLines::Fail).unwrap();
        assert_eq!(l.format, Format::Text);
        let names: Vec<(&str, usize)> = l.parts.iter().map(|p| (p.name.as_str(), p.data.len())).collect();
        assert_eq!(names, [("train", 2), ("valid", 1), ("test", 0)]);
        assert_eq!(l.combined().len(), 3);

        write(dir.path(), "test.jsonl", "{\"prompt\":\"p\",\"completion\":\"c\"}\n");
        let e = load(dir.path(), BadLines::Fail).unwrap_err();
        assert!(
            e.file.ends_with("test.jsonl") && e.message.contains("share one format"),
            "{e}"
        );
    }
}

//! Chat templates: render a model's Jinja `chat_template` with `minijinja` the way transformers'
//! `apply_chat_template` renders it with Jinja2.
//!
//! What transformers sets up (`utils/chat_template_utils.py`), reproduced here:
//! * `trim_blocks` and `lstrip_blocks` on, the `loopcontrols` extension (`{% break %}`);
//! * globals `raise_exception(msg)` (fails the render with `msg`) and `strftime_now(fmt)`;
//! * `tojson` as Python's `json.dumps(x, ensure_ascii=False, indent=indent, sort_keys=False)`
//!   (Jinja's own `tojson` would HTML-escape `<`, `>`, `&`, `'`);
//! * Python string/dict methods in templates (`.strip()`, `.startswith()`, `.split()`,
//!   `.items()`, ...) through minijinja-contrib's `pycompat`;
//! * variables `messages`, `add_generation_prompt`, `bos_token`, `eos_token`, `tools` and
//!   `documents` (None unless given), plus any extra keyword arguments (`enable_thinking`,
//!   `date_string`, ...).
//!
//! Key order: `tools` and the messages' `tool_calls` come in as [`OrderedJson`] and reach the
//! template as maps that keep their keys in the order written ([`OrderedMap`]), so `tool | tojson`
//! prints a schema as Python's `json.dumps` prints the dict `json.loads` made of the same text.
//! JSON passed in through [`ChatTemplate::render_with`] as `serde_json::Value` has its keys sorted
//! (serde_json without `preserve_order`).
//!
//! ```
//! use tunelab::data::chat_template::{ChatMessage, ChatTemplate};
//! let tpl = ChatTemplate::new(
//!     "{% for m in messages %}<|{{ m.role }}|>{{ m.content | trim }}\n{% endfor %}\
//!      {% if add_generation_prompt %}<|assistant|>{% endif %}",
//!     None, None, "example",
//! ).unwrap();
//! let text = tpl.render(&[ChatMessage::new("user", " hi ")], true).unwrap();
//! assert_eq!(text, "<|user|>hi\n<|assistant|>");
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use minijinja::value::{Enumerator, Kwargs, Object, ObjectRepr, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind};
use serde::{Deserialize, Serialize};

use super::ordered_json::OrderedJson;

/// One chat turn as the template sees it (`message.role`, `message.content`, and for tool use
/// `message.tool_calls`, `message.tool_call_id`, `message.name`; absent fields are undefined in
/// the template, as keys missing from transformers' message dicts are).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    /// OpenAI-shaped calls `{"type": "function", "function": {"name", "arguments"}}`, keys in
    /// the order written (`arguments | tojson` prints them so).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<OrderedJson>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
            name: None,
        }
    }
}

/// A template that does not compile or fails to render; names where the template came from
/// (a file and key) and the template line.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("chat template from {origin} does not compile (template line {line}): {detail}")]
    Compile {
        origin: String,
        line: usize,
        detail: String,
    },
    #[error("chat template from {origin} failed to render (template line {line}): {detail}")]
    Render {
        origin: String,
        line: usize,
        detail: String,
    },
}

const NAME: &str = "chat_template";

/// A compiled chat template with the special tokens it is rendered with.
pub struct ChatTemplate {
    env: Environment<'static>,
    /// Where the template came from, for error messages (`model.gguf (tokenizer.chat_template)`).
    pub origin: String,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("origin", &self.origin)
            .finish()
    }
}

fn describe(e: &Error) -> String {
    // minijinja's Display already carries the kind and the detail (e.g. the raise_exception text).
    let mut s = e.to_string();
    if let Some(name) = e.name() {
        s = s.replace(&format!(" (in {name}:{})", e.line().unwrap_or(0)), "");
    }
    s
}

impl ChatTemplate {
    /// Compile `source`. `origin` names where it came from, for errors.
    pub fn new(
        source: &str,
        bos_token: Option<String>,
        eos_token: Option<String>,
        origin: impl Into<String>,
    ) -> Result<Self, TemplateError> {
        let origin = origin.into();
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", |fmt: String| -> String {
            chrono::Local::now().format(&fmt).to_string()
        });
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| TemplateError::Compile {
                origin: origin.clone(),
                line: e.line().unwrap_or(0),
                detail: describe(&e),
            })?;
        Ok(Self {
            env,
            origin,
            bos_token,
            eos_token,
        })
    }

    /// Render `messages` (`add_generation_prompt` opens the assistant's turn).
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        self.render_tools(messages, None, add_generation_prompt)
    }

    /// Render `messages` with function definitions `tools` (`apply_chat_template(messages,
    /// tools=tools)`; `None` leaves the template's `tools` undefined-as-None, as transformers does).
    /// Objects in `tools` and in the messages' tool calls keep their key order.
    pub fn render_tools(
        &self,
        messages: &[ChatMessage],
        tools: Option<&[OrderedJson]>,
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        let mut ctx = BTreeMap::new();
        // Through JSON text rather than serde_json::Value, which would sort the tool calls' keys.
        let messages = OrderedJson::of(&messages).expect("messages serialise");
        ctx.insert("messages".to_string(), template_value(&messages));
        if let Some(t) = tools {
            ctx.insert("tools".to_string(), Value::from(t.iter().map(template_value).collect::<Vec<_>>()));
        }
        self.render_ctx(ctx, add_generation_prompt)
    }

    /// Render arbitrary JSON messages (tool calls, content parts) with extra template variables
    /// (`{"tools": [...], "enable_thinking": false}`), as `apply_chat_template(..., **kwargs)`.
    /// Object keys arrive sorted (`serde_json::Value`); [`ChatTemplate::render_tools`] keeps them
    /// in the order written.
    pub fn render_with(
        &self,
        messages: &serde_json::Value,
        add_generation_prompt: bool,
        extra: &serde_json::Value,
    ) -> Result<String, TemplateError> {
        let mut ctx = BTreeMap::new();
        if let Some(obj) = extra.as_object() {
            ctx.extend(obj.iter().map(|(k, v)| (k.clone(), Value::from_serialize(v))));
        }
        ctx.insert("messages".into(), Value::from_serialize(messages));
        self.render_ctx(ctx, add_generation_prompt)
    }

    /// Render with the variables in `ctx` plus what transformers always passes.
    fn render_ctx(&self, mut ctx: BTreeMap<String, Value>, add_generation_prompt: bool) -> Result<String, TemplateError> {
        let tpl = self
            .env
            .get_template(NAME)
            .expect("template was added in new()");
        // transformers always passes `tools` and `documents` (None when not given).
        for k in ["tools", "documents"] {
            ctx.entry(k.to_string()).or_insert(Value::from(()));
        }
        ctx.insert("add_generation_prompt".into(), Value::from(add_generation_prompt));
        for (k, v) in [
            ("bos_token", &self.bos_token),
            ("eos_token", &self.eos_token),
        ] {
            if let Some(v) = v {
                ctx.entry(k.to_string()).or_insert_with(|| Value::from(v.clone()));
            }
        }
        tpl.render(Value::from_object(ctx))
            .map_err(|e| TemplateError::Render {
                origin: self.origin.clone(),
                line: e.line().unwrap_or(0),
                detail: describe(&e),
            })
    }
}

/// A JSON object as the template sees it, keys in the order written: minijinja's own maps sort
/// their keys (minijinja without `preserve_order`, which would also reorder every map of the
/// report templates), and `tojson`, `items()` and `for k in` list an object's keys in the order
/// it enumerates them.
#[derive(Debug)]
pub struct OrderedMap(Vec<(String, Value)>);

impl Object for OrderedMap {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let key = key.as_str()?;
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Values(self.0.iter().map(|(k, _)| Value::from(k.as_str())).collect())
    }

    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        Some(self.0.len())
    }
}

/// `j` as a template value: objects as [`OrderedMap`]s, numbers as minijinja's integers or floats
/// (what `Value::from_serialize` makes of the same number).
pub fn template_value(j: &OrderedJson) -> Value {
    match j {
        OrderedJson::Null => Value::from(()),
        OrderedJson::Bool(b) => Value::from(*b),
        OrderedJson::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::from(i),
            (None, Some(u)) => Value::from(u),
            _ => Value::from(n.as_f64().unwrap_or(f64::NAN)),
        },
        OrderedJson::String(s) => Value::from(s.as_str()),
        OrderedJson::Array(items) => Value::from(items.iter().map(template_value).collect::<Vec<_>>()),
        OrderedJson::Object(entries) => {
            Value::from_object(OrderedMap(entries.iter().map(|(k, v)| (k.clone(), template_value(v))).collect()))
        }
    }
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=indent, sort_keys=sort_keys)`.
fn tojson(value: Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let _: Option<Value> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    dump(
        &value,
        indent,
        sort_keys.unwrap_or(false),
        ensure_ascii.unwrap_or(false),
        0,
        &mut out,
    )?;
    Ok(Value::from_safe_string(out))
}

fn dump_str(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && (c as u32) > 0x7e) => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `json.dumps` layout: `", "` and `": "` without indent; newlines, `","` and `": "` with.
fn dump(
    v: &Value,
    indent: Option<usize>,
    sort: bool,
    ascii: bool,
    depth: usize,
    out: &mut String,
) -> Result<(), Error> {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if let Some(i) = v.as_i64().filter(|_| v.is_integer()) {
                out.push_str(&i.to_string());
            } else {
                let f = f64::try_from(v.clone()).unwrap_or(f64::NAN);
                if f.is_nan() {
                    out.push_str("NaN");
                } else if f.is_infinite() {
                    out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
                } else if f.fract() == 0.0 && f.abs() < 1e16 {
                    out.push_str(&format!("{f:.1}")); // Python writes 1.0, not 1
                } else {
                    out.push_str(&f.to_string());
                }
            }
        }
        ValueKind::String => dump_str(v.as_str().unwrap_or_default(), ascii, out),
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if sort {
                keys.sort();
            }
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                dump_str(&k.to_string(), ascii, out);
                out.push_str(": ");
                dump(&v.get_item(k)?, indent, sort, ascii, depth + 1, out)?;
            }
            newline(out, depth);
            out.push('}');
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                dump(item, indent, sort, ascii, depth + 1, out)?;
            }
            newline(out, depth);
            out.push(']');
        }
        _ => dump_str(&v.to_string(), ascii, out),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tpl(src: &str) -> ChatTemplate {
        ChatTemplate::new(
            src,
            Some("<s>".into()),
            Some("</s>".into()),
            "test.json (chat_template)",
        )
        .unwrap()
    }

    #[test]
    fn tojson_follows_python_json_dumps() {
        // Expected strings are what Python prints for
        // json.dumps({"b": [1, 2.0, None, True], "a": "é<&>\n"}, ensure_ascii=False) and with indent=2.
        let t = tpl("{{ x | tojson }}|{{ x | tojson(indent=2) }}");
        let x = serde_json::json!({"b": [1, 2.0, null, true], "a": "é<&>\n"});
        let mut map = serde_json::Map::new();
        map.insert("x".into(), x);
        let out = t
            .render_with(
                &serde_json::json!([]),
                false,
                &serde_json::Value::Object(map),
            )
            .unwrap();
        let (compact, indented) = out.split_once('|').unwrap();
        // serde_json's map is sorted, so "a" comes first here.
        assert_eq!(compact, r#"{"a": "é<&>\n", "b": [1, 2.0, null, true]}"#);
        assert_eq!(
            indented,
            "{\n  \"a\": \"é<&>\\n\",\n  \"b\": [\n    1,\n    2.0,\n    null,\n    true\n  ]\n}"
        );
    }

    #[test]
    fn raise_exception_names_origin_and_message() {
        let t = tpl(
            "{% if messages[0].role != 'user' %}\n{{ raise_exception('Conversation must start with user') }}\n{% endif %}",
        );
        let err = t
            .render(&[ChatMessage::new("assistant", "x")], false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("test.json (chat_template)")
                && err.contains("Conversation must start with user"),
            "{err}"
        );
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn compile_error_names_origin_and_line() {
        let err = ChatTemplate::new(
            "ok\n{% for m in messages %}",
            None,
            None,
            "m.gguf (tokenizer.chat_template)",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("m.gguf (tokenizer.chat_template)") && err.contains("does not compile"),
            "{err}"
        );
    }

    #[test]
    fn python_string_methods_and_trim_blocks() {
        // lstrip_blocks removes the indentation before a block tag, trim_blocks the newline after
        // every block tag (also after `{% endif %}`). Expected output from Python's jinja2 with
        // trim_blocks=True, lstrip_blocks=True on the same template and input.
        let t = tpl(
            "  {% for m in messages %}\n{{ m.content.strip().upper() }}{% if m.content.startswith(' h') %}!{% endif %}\n  {% endfor %}\n{{ bos_token }}",
        );
        let out = t
            .render(&[ChatMessage::new("user", " hi ")], false)
            .unwrap();
        assert_eq!(out, "HI!<s>");
    }
}

//! JSON that keeps object keys in the order they were written, for the parts of a record a chat
//! template prints as JSON (tool definitions, tool-call arguments).
//!
//! transformers renders `tools | tojson` with `json.dumps(sort_keys=False)` over Python dicts,
//! which keep the file's order, so a model meets a tool's parameters in the order its author
//! wrote them. `serde_json::Value` sorts keys (the crate builds serde_json without
//! `preserve_order`: turning it on would reorder every JSON file tunelab writes, the GGUF metadata
//! whose SHA-256 the fixtures check among them), and so does minijinja's own map. [`OrderedJson`]
//! is the order-preserving value used in those fields only; it must be deserialised from JSON
//! text (or from another order-preserving source), since a `serde_json::Value` has already lost
//! the order.
//!
//! ```
//! use tunelab::data::ordered_json::OrderedJson;
//! let v: OrderedJson = serde_json::from_str(r#"{"b": 1, "a": {"z": [true, null], "y": 2.5}}"#).unwrap();
//! assert_eq!(serde_json::to_string(&v).unwrap(), r#"{"b":1,"a":{"z":[true,null],"y":2.5}}"#);
//! ```

use std::fmt;

use serde::de::{MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Number;

/// A JSON value whose objects list their keys in the order they were read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum OrderedJson {
    #[default]
    Null,
    Bool(bool),
    Number(Number),
    String(String),
    Array(Vec<OrderedJson>),
    /// Keys in the order written; a key repeated later keeps its first place and takes the last
    /// value, as Python's `json.loads` builds a dict (tunelab's JSONL reader refuses repeats before
    /// this point).
    Object(Vec<(String, OrderedJson)>),
}

impl OrderedJson {
    /// `x` as JSON, its struct fields and ordered maps in serialisation order.
    pub fn of<T: Serialize>(x: &T) -> serde_json::Result<Self> {
        serde_json::from_str(&serde_json::to_string(x)?)
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            OrderedJson::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn is_object(&self) -> bool {
        matches!(self, OrderedJson::Object(_))
    }

    /// The value as a `serde_json::Value` (keys sorted again).
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("JSON serialises")
    }
}

impl fmt::Display for OrderedJson {
    /// Compact JSON text, keys in order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&serde_json::to_string(self).map_err(|_| fmt::Error)?)
    }
}

impl Serialize for OrderedJson {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            OrderedJson::Null => s.serialize_unit(),
            OrderedJson::Bool(b) => s.serialize_bool(*b),
            OrderedJson::Number(n) => n.serialize(s),
            OrderedJson::String(v) => s.serialize_str(v),
            OrderedJson::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            OrderedJson::Object(entries) => {
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for OrderedJson {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(OrderedVisitor)
    }
}

struct OrderedVisitor;

impl<'de> Visitor<'de> for OrderedVisitor {
    type Value = OrderedJson;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<OrderedJson, E> {
        Ok(OrderedJson::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<OrderedJson, E> {
        Ok(OrderedJson::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<OrderedJson, E> {
        Ok(OrderedJson::Number(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<OrderedJson, E> {
        // JSON text has no NaN or infinity; serde_json::Value maps them to null too.
        Ok(Number::from_f64(v).map_or(OrderedJson::Null, OrderedJson::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<OrderedJson, E> {
        Ok(OrderedJson::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<OrderedJson, E> {
        Ok(OrderedJson::String(v))
    }
    fn visit_unit<E>(self) -> Result<OrderedJson, E> {
        Ok(OrderedJson::Null)
    }
    fn visit_none<E>(self) -> Result<OrderedJson, E> {
        Ok(OrderedJson::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<OrderedJson, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OrderedJson, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element()? {
            items.push(v);
        }
        Ok(OrderedJson::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedJson, A::Error> {
        let mut entries: Vec<(String, OrderedJson)> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value()?;
            match entries.iter_mut().find(|(k, _)| *k == key) {
                Some(slot) => slot.1 = value,
                None => entries.push((key, value)),
            }
        }
        Ok(OrderedJson::Object(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Generated objects with keys in every order of a few names (Unicode among them), nested:
    /// reading and writing keeps the order, where serde_json::Value sorts it.
    #[test]
    fn keys_keep_the_written_order_at_every_depth() {
        let names = ["zeta", "alpha", "größe", "城市", "Beta", "_id"];
        for rot in 0..names.len() {
            let keys: Vec<&str> = names.iter().cycle().skip(rot).take(names.len()).copied().collect();
            let inner = keys.iter().enumerate().map(|(i, k)| format!("\"{k}\":{i}")).collect::<Vec<_>>().join(",");
            let text = format!(
                "{{{},\"nested\":{{{inner}}},\"list\":[{{{inner}}},1.5,-7,\"é\",null,true]}}",
                keys.iter().rev().map(|k| format!("\"{k}\":\"v\"")).collect::<Vec<_>>().join(",")
            );
            let v: OrderedJson = serde_json::from_str(&text).unwrap();
            assert_eq!(v.to_string(), text, "rotation {rot}");
            assert_eq!(OrderedJson::of(&v).unwrap(), v);
            assert_eq!(v.to_value(), serde_json::from_str::<serde_json::Value>(&text).unwrap());
            if rot == 0 {
                assert_ne!(serde_json::from_str::<serde_json::Value>(&text).unwrap().to_string(), text, "serde_json::Value sorts");
            }
        }
    }

    #[test]
    fn a_repeated_key_keeps_its_first_place_and_last_value_as_python_does() {
        let v: OrderedJson = serde_json::from_str(r#"{"b": 1, "a": 2, "b": 3}"#).unwrap();
        assert_eq!(v.to_string(), r#"{"b":3,"a":2}"#);
    }
}

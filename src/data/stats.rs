//! Summary statistics as DataFrames: records per split/file, text lengths per field, class mix,
//! and the governance audit in table form.
//!
//! ```
//! use tunelab::data::formats::TextRecord;
//! use tunelab::data::stats::length_stats;
//! let recs = vec![TextRecord { text: "a bc".into(), ..Default::default() }, TextRecord { text: "defgh".into(), ..Default::default() }];
//! let df = length_stats(&[("train", &recs[..])]).unwrap();
//! println!("{df}");
//! assert_eq!(df.column("chars_max").unwrap().u32().unwrap().get(0), Some(5));
//! ```

use std::collections::BTreeMap;

use polars::prelude::*;

use super::formats::{Loaded, Record};
use super::governance::{Audit, Governed, class_key};

/// Records per file: `split`, `file`, `format`, `records`, `skipped` (bad lines left out).
pub fn file_counts(loaded: &Loaded) -> PolarsResult<DataFrame> {
    let mut split = vec![];
    let mut file = vec![];
    let mut format = vec![];
    let mut records = vec![];
    let mut skipped = vec![];
    for p in &loaded.parts {
        split.push(p.name.clone());
        file.push(p.path.display().to_string());
        format.push(p.data.format().name().to_string());
        records.push(p.data.len() as u32);
        skipped.push(loaded.skipped.iter().filter(|s| s.file.starts_with(&p.path)).count() as u32);
    }
    df!("split" => split, "file" => file, "format" => format, "records" => records, "skipped" => skipped)
}

/// Text lengths per split and field: count, min/mean/max characters and whitespace tokens.
pub fn length_stats<T: Record>(parts: &[(&str, &[T])]) -> PolarsResult<DataFrame> {
    let mut cols: [Vec<String>; 2] = Default::default();
    let mut nums: Vec<[f64; 7]> = Vec::new();
    for (name, records) in parts {
        // Field order: first appearance.
        let mut fields: Vec<String> = Vec::new();
        let mut lengths: BTreeMap<String, Vec<(usize, usize)>> = BTreeMap::new();
        for r in records.iter() {
            for (f, t) in r.texts() {
                if !lengths.contains_key(f) {
                    fields.push(f.to_string());
                }
                lengths
                    .entry(f.to_string())
                    .or_default()
                    .push((t.chars().count(), t.split_whitespace().count()));
            }
        }
        for f in fields {
            let l = &lengths[&f];
            let (chars, tokens): (Vec<f64>, Vec<f64>) = l.iter().map(|&(c, t)| (c as f64, t as f64)).unzip();
            let (cmin, cmean, cmax) = min_mean_max(&chars);
            let (tmin, tmean, tmax) = min_mean_max(&tokens);
            cols[0].push(name.to_string());
            cols[1].push(f);
            nums.push([l.len() as f64, cmin, cmean, cmax, tmin, tmean, tmax]);
        }
    }
    let u = |k: usize| nums.iter().map(|n| n[k] as u32).collect::<Vec<u32>>();
    let f = |k: usize| nums.iter().map(|n| (n[k] * 10.0).round() / 10.0).collect::<Vec<f64>>();
    let [split, field] = cols;
    df!(
        "split" => split, "field" => field, "count" => u(0),
        "chars_min" => u(1), "chars_mean" => f(2), "chars_max" => u(3),
        "tokens_min" => u(4), "tokens_mean" => f(5), "tokens_max" => u(6),
    )
}

fn min_mean_max(v: &[f64]) -> (f64, f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (min, v.iter().sum::<f64>() / v.len() as f64, max)
}

const CLASSES: [&str; 5] = ["public", "community", "personal", "sacred", "unclassified"];

/// Class mix per split: one row per split, a count column per class, and `total`.
pub fn class_mix<T: Governed>(parts: &[(&str, &[T])]) -> PolarsResult<DataFrame> {
    let mut columns = vec![Column::new(
        "split".into(),
        parts.iter().map(|p| p.0.to_string()).collect::<Vec<_>>(),
    )];
    for class in CLASSES {
        let counts: Vec<u32> = parts
            .iter()
            .map(|(_, recs)| {
                recs.iter()
                    .filter(|r| class_key(r.governance().classification) == class)
                    .count() as u32
            })
            .collect();
        columns.push(Column::new(class.into(), counts));
    }
    columns.push(Column::new(
        "total".into(),
        parts.iter().map(|p| p.1.len() as u32).collect::<Vec<_>>(),
    ));
    DataFrame::new_infer_height(columns)
}

/// The audit's counts: `classification`, `total`, `kept`, `excluded`.
pub fn audit_counts(audit: &Audit) -> PolarsResult<DataFrame> {
    let c: Vec<_> = CLASSES
        .iter()
        .map(|k| audit.counts.get(*k).copied().unwrap_or_default())
        .collect();
    df!(
        "classification" => CLASSES.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        "total" => c.iter().map(|c| c.total as u32).collect::<Vec<_>>(),
        "kept" => c.iter().map(|c| c.kept as u32).collect::<Vec<_>>(),
        "excluded" => c.iter().map(|c| (c.total - c.kept) as u32).collect::<Vec<_>>(),
    )
}

/// The audit's excluded records: `id`, `reason`, `detail`.
pub fn audit_excluded(audit: &Audit) -> PolarsResult<DataFrame> {
    let reason = |r| {
        serde_json::to_value(r)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    };
    df!(
        "id" => audit.excluded.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
        "reason" => audit.excluded.iter().map(|e| reason(e.reason)).collect::<Vec<_>>(),
        "detail" => audit.excluded.iter().map(|e| e.detail.clone()).collect::<Vec<_>>(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::formats::{ChatMessage, ChatRecord, EmbeddingPair, Role};
    use crate::data::governance::{Classification, Policy};

    fn u32s(df: &DataFrame, c: &str) -> Vec<u32> {
        df.column(c)
            .unwrap()
            .u32()
            .unwrap()
            .iter()
            .map(Option::unwrap)
            .collect()
    }

    #[test]
    fn length_stats_by_hand() {
        let p = |q: &str, pos: &str| EmbeddingPair {
            query: q.into(),
            positive: pos.into(),
            ..Default::default()
        };
        // queries: "a b" (3 chars, 2 tokens), "hello" (5, 1); positives: "x" (1, 1), "one two three" (13, 3).
        let train = [p("a b", "x"), p("hello", "one two three")];
        let test = [p("q", "")];
        let df = length_stats(&[("train", &train[..]), ("test", &test[..])]).unwrap();
        let fields: Vec<&str> = df.column("field").unwrap().str().unwrap().iter().flatten().collect();
        assert_eq!(fields, ["query", "positive", "query", "positive"]);
        assert_eq!(u32s(&df, "count"), [2, 2, 1, 1]);
        assert_eq!(u32s(&df, "chars_min"), [3, 1, 1, 0]);
        assert_eq!(u32s(&df, "chars_max"), [5, 13, 1, 0]);
        assert_eq!(u32s(&df, "tokens_max"), [2, 3, 1, 0]);
        let means: Vec<f64> = df
            .column("chars_mean")
            .unwrap()
            .f64()
            .unwrap()
            .iter()
            .flatten()
            .collect();
        assert_eq!(means, [4.0, 7.0, 1.0, 0.0]); // (3+5)/2, (1+13)/2
        let tmeans: Vec<f64> = df
            .column("tokens_mean")
            .unwrap()
            .f64()
            .unwrap()
            .iter()
            .flatten()
            .collect();
        assert_eq!(tmeans, [1.5, 2.0, 1.0, 0.0]);
    }

    #[test]
    fn chat_fields_are_roles() {
        let m = |role, c: &str| ChatMessage::new(role, c);
        let recs = [ChatRecord {
            messages: vec![m(Role::User, "hi there"), m(Role::Assistant, "hello")],
            ..Default::default()
        }];
        let df = length_stats(&[("train", &recs[..])]).unwrap();
        let fields: Vec<&str> = df.column("field").unwrap().str().unwrap().iter().flatten().collect();
        assert_eq!(fields, ["user", "assistant"]);
    }

    #[test]
    fn class_mix_and_audit_tables() {
        let p = |c: Option<Classification>| EmbeddingPair {
            classification: c,
            ..Default::default()
        };
        let recs = vec![
            p(Some(Classification::Public)),
            p(Some(Classification::Public)),
            p(Some(Classification::Sacred)),
            p(None),
        ];
        let df = class_mix(&[("all", &recs[..])]).unwrap();
        assert_eq!(
            (
                u32s(&df, "public"),
                u32s(&df, "sacred"),
                u32s(&df, "unclassified"),
                u32s(&df, "total")
            ),
            (vec![2], vec![1], vec![1], vec![4])
        );

        let g = Policy::default().apply(recs);
        let counts = audit_counts(g.audit()).unwrap();
        assert_eq!(u32s(&counts, "kept"), [2, 0, 0, 0, 0]);
        assert_eq!(u32s(&counts, "excluded"), [0, 0, 0, 1, 1]);
        let ex = audit_excluded(g.audit()).unwrap();
        let reasons: Vec<&str> = ex.column("reason").unwrap().str().unwrap().iter().flatten().collect();
        assert_eq!(reasons, ["sacred", "unclassified"]);
    }
}

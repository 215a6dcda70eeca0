//! Seeded, group-aware train/valid/test splits of a [`GovernedDataset`], written in the MLX-LM folder
//! layout with an `audit.json`; duplicate and train/test leakage detection.
//!
//! Records sharing a group key (by default their `doc_id`; any top-level field with
//! [`SplitConfig::group_by`]) always land in the same split, so pairs mined from one document never
//! straddle train and test. Groups are shuffled with `ChaCha8Rng::seed_from_u64(seed)` and each is
//! given to the split furthest below its target size.
//!
//! ```
//! use tunelab::data::formats::EmbeddingPair;
//! use tunelab::data::governance::{Classification, Policy};
//! use tunelab::data::split::{split, SplitConfig};
//!
//! let pairs: Vec<EmbeddingPair> = (0..50)
//!     .map(|i| EmbeddingPair {
//!         query: format!("q{i}"), positive: format!("p{i}"), doc_id: Some(format!("doc{}", i / 5)),
//!         classification: Some(Classification::Public), ..Default::default()
//!     })
//!     .collect();
//! let governed = Policy::default().apply(pairs);
//! let s = split(&governed, &SplitConfig { seed: 7, ..SplitConfig::default() });
//! assert_eq!(s.train.len() + s.valid.len() + s.test.len(), 50);
//! assert_eq!((s.train.len(), s.valid.len(), s.test.len()), (40, 5, 5));
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use polars::prelude::*;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::formats::Record;
use super::governance::{Audit, GovernedDataset};
use super::jsonl::{DataError, write_atomic, write_jsonl};

/// How to split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SplitConfig {
    pub seed: u64,
    /// Shares of train, valid, test (normalised; need not sum to 1).
    pub ratios: [f64; 3],
    /// Top-level field whose value groups records; records without it form groups of one.
    pub group_by: Option<String>,
}

impl Default for SplitConfig {
    fn default() -> Self {
        SplitConfig {
            seed: 42,
            ratios: [0.8, 0.1, 0.1],
            group_by: Some("doc_id".into()),
        }
    }
}

/// The three splits (each still a [`GovernedDataset`], sharing the policy's audit).
#[derive(Clone, Debug)]
pub struct Splits<T> {
    pub train: GovernedDataset<T>,
    pub valid: GovernedDataset<T>,
    pub test: GovernedDataset<T>,
    pub config: SplitConfig,
}

impl<T> Splits<T> {
    /// `[("train", ..), ("valid", ..), ("test", ..)]`.
    pub fn parts(&self) -> [(&'static str, &GovernedDataset<T>); 3] {
        [("train", &self.train), ("valid", &self.valid), ("test", &self.test)]
    }

    /// The splits as named record slices (the input of [`duplicates`], [`leakage`] and the statistics).
    pub fn slices(&self) -> Vec<(&'static str, &[T])> {
        self.parts().into_iter().map(|(n, d)| (n, d.records())).collect()
    }
}

/// The group key of a record: the value of `field` (strings as they are, other values as JSON), or
/// `#<index>` (a group of its own) when there is no such field.
pub fn group_key<T: Serialize>(record: &T, field: Option<&str>, index: usize) -> String {
    let value = field.and_then(|f| match serde_json::to_value(record) {
        Ok(Value::Object(mut o)) => o.remove(f),
        _ => None,
    });
    match value {
        Some(Value::String(s)) => s,
        Some(Value::Null) | None => format!("#{index}"),
        Some(v) => v.to_string(),
    }
}

/// Splits a governed dataset; same seed and input → same splits.
pub fn split<T: Record>(data: &GovernedDataset<T>, cfg: &SplitConfig) -> Splits<T> {
    // Groups in key order (independent of input order), then shuffled by the seed.
    let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, r) in data.iter().enumerate() {
        groups
            .entry(group_key(r, cfg.group_by.as_deref(), i))
            .or_default()
            .push(i);
    }
    let mut groups: Vec<Vec<usize>> = groups.into_values().collect();
    groups.shuffle(&mut ChaCha8Rng::seed_from_u64(cfg.seed));

    let total: f64 = cfg.ratios.iter().map(|r| r.max(0.0)).sum();
    let targets: Vec<f64> = cfg
        .ratios
        .iter()
        .map(|r| r.max(0.0) / total.max(f64::MIN_POSITIVE) * data.len() as f64)
        .collect();
    let mut members: [Vec<usize>; 3] = Default::default();
    for g in groups {
        // The split furthest below its target (ties: the earlier split); zero-share splits get nothing.
        let deficit = |s: usize| targets[s] - members[s].len() as f64;
        let s = (0..3)
            .filter(|&s| targets[s] > 0.0)
            .fold(None, |best: Option<usize>, s| match best {
                Some(b) if deficit(b) >= deficit(s) => Some(b),
                _ => Some(s),
            });
        members[s.unwrap_or(0)].extend(g);
    }
    let [train, valid, test] = members.map(|mut m| {
        m.sort_unstable(); // keep the input order inside a split
        data.select(&m)
    });
    Splits {
        train,
        valid,
        test,
        config: cfg.clone(),
    }
}

/// Size and hash of one written split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SplitInfo {
    pub records: usize,
    pub groups: usize,
    pub sha256: String,
}

/// `audit.json`: the governance audit plus how the data was split and what the checks found.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SplitAudit {
    pub governance: Audit,
    pub config: SplitConfig,
    pub splits: BTreeMap<String, SplitInfo>,
    /// Records that duplicate an earlier record (normalised text).
    pub duplicate_records: usize,
    /// Texts (query, positive, ...) found in more than one split.
    pub leaked_texts: usize,
}

/// Writes `train.jsonl`, `valid.jsonl`, `test.jsonl` and `audit.json` into `dir` (each atomically).
pub fn write_split<T: Record>(splits: &Splits<T>, dir: &Path) -> Result<SplitAudit, DataError> {
    let frame_error = |e: PolarsError| DataError::file(dir, e.to_string());
    let slices = splits.slices();
    let dups = duplicates(&slices).map_err(frame_error)?;
    let leaks = leakage(&slices).map_err(frame_error)?;
    let mut infos = BTreeMap::new();
    for (name, d) in splits.parts() {
        write_jsonl(&dir.join(format!("{name}.jsonl")), d.records())?;
        let groups: BTreeSet<String> = d
            .iter()
            .enumerate()
            .map(|(i, r)| group_key(r, splits.config.group_by.as_deref(), i))
            .collect();
        infos.insert(
            name.to_string(),
            SplitInfo {
                records: d.len(),
                groups: groups.len(),
                sha256: d.sha256(),
            },
        );
    }
    let audit = SplitAudit {
        governance: splits.train.audit().clone(),
        config: splits.config.clone(),
        splits: infos,
        duplicate_records: dups.height() - count_unique(&dups, "dup_group"),
        leaked_texts: leaks.height(),
    };
    let path = dir.join("audit.json");
    write_atomic(&path, |w| {
        serde_json::to_writer_pretty(&mut *w, &audit).map_err(std::io::Error::other)?;
        std::io::Write::write_all(w, b"\n")
    })?;
    Ok(audit)
}

fn count_unique(df: &DataFrame, col: &str) -> usize {
    df.column(col)
        .ok()
        .and_then(|c| c.u32().ok().map(|c| c.iter().collect::<BTreeSet<_>>().len()))
        .unwrap_or(0)
}

/// Text normalised for duplicate and leakage checks: lower case, letters and digits only, single spaces.
pub fn normalise(text: &str) -> String {
    let kept: String = text
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { ' ' })
        .collect();
    kept.to_lowercase().split_whitespace().collect::<Vec<_>>().join(" ")
}

fn preview(text: &str) -> String {
    let t: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if t.chars().count() > 60 {
        format!("{}…", t.chars().take(59).collect::<String>())
    } else {
        t
    }
}

fn id_or_position<T: Record>(r: &T, i: usize) -> String {
    r.record_id().map_or_else(|| format!("#{}", i + 1), str::to_string)
}

/// Records whose texts (all fields, normalised) equal another record's. One row per record in a
/// duplicate group: `dup_group`, `split`, `index` (0-based within its split), `id`, `text` (preview).
pub fn duplicates<T: Record>(parts: &[(&str, &[T])]) -> PolarsResult<DataFrame> {
    let mut by_text: BTreeMap<String, Vec<(usize, usize)>> = BTreeMap::new();
    for (p, (_, records)) in parts.iter().enumerate() {
        for (i, r) in records.iter().enumerate() {
            let key: Vec<String> = r
                .texts()
                .iter()
                .map(|(f, t)| format!("{f}\u{1f}{}", normalise(t)))
                .collect();
            by_text.entry(key.join("\u{1e}")).or_default().push((p, i));
        }
    }
    let mut groups: Vec<&Vec<(usize, usize)>> = by_text.values().filter(|v| v.len() > 1).collect();
    groups.sort(); // by first occurrence
    let (mut group, mut split, mut index, mut id, mut text) = (vec![], vec![], vec![], vec![], vec![]);
    for (g, members) in groups.into_iter().enumerate() {
        for &(p, i) in members {
            let r = &parts[p].1[i];
            group.push(g as u32);
            split.push(parts[p].0.to_string());
            index.push(i as u32);
            id.push(id_or_position(r, i));
            text.push(preview(r.texts().first().map_or("", |t| t.1)));
        }
    }
    df!("dup_group" => group, "split" => split, "index" => index, "id" => id, "text" => text)
}

/// Texts that occur in more than one split (same normalised query, positive, ...): one row per text
/// with `field`, `text` (preview), `splits` and `ids` (comma-separated, in split order).
pub fn leakage<T: Record>(parts: &[(&str, &[T])]) -> PolarsResult<DataFrame> {
    let mut seen: BTreeMap<(&'static str, String), Vec<(usize, String, String)>> = BTreeMap::new();
    for (p, (_, records)) in parts.iter().enumerate() {
        for (i, r) in records.iter().enumerate() {
            for (field, t) in r.leak_keys() {
                seen.entry((field, normalise(t)))
                    .or_default()
                    .push((p, id_or_position(r, i), t.to_string()));
            }
        }
    }
    let (mut field, mut text, mut splits, mut ids) = (vec![], vec![], vec![], vec![]);
    for ((f, _), hits) in seen {
        let in_parts: BTreeSet<usize> = hits.iter().map(|h| h.0).collect();
        if in_parts.len() < 2 {
            continue;
        }
        field.push(f.to_string());
        text.push(preview(&hits[0].2));
        splits.push(in_parts.iter().map(|&p| parts[p].0).collect::<Vec<_>>().join(","));
        ids.push(hits.iter().map(|h| h.1.as_str()).collect::<Vec<_>>().join(","));
    }
    df!("field" => field, "text" => text, "splits" => splits, "ids" => ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::formats::EmbeddingPair;
    use crate::data::governance::{Classification, Policy};
    use crate::data::jsonl::{BadLines, read_jsonl};

    /// 200 documents with 1..=5 pairs each (sizes cycle), 600 pairs in all, plus one sacred pair.
    fn pairs() -> Vec<EmbeddingPair> {
        let mut out = Vec::new();
        for d in 0..200 {
            for k in 0..(d % 5 + 1) {
                out.push(EmbeddingPair {
                    id: Some(format!("d{d}-{k}")),
                    query: format!("query {d} {k}"),
                    positive: format!("positive {d} {k}"),
                    doc_id: Some(format!("d{d}")),
                    classification: Some(Classification::Public),
                    ..Default::default()
                });
            }
        }
        out.push(EmbeddingPair {
            id: Some("holy".into()),
            query: "q".into(),
            positive: "p".into(),
            classification: Some(Classification::Sacred),
            ..Default::default()
        });
        out
    }

    fn ids(d: &GovernedDataset<EmbeddingPair>) -> Vec<String> {
        d.iter().map(|r| r.id.clone().unwrap()).collect()
    }

    fn split_with(seed: u64) -> Splits<EmbeddingPair> {
        split(
            &Policy::default().apply(pairs()),
            &SplitConfig {
                seed,
                ..SplitConfig::default()
            },
        )
    }

    #[test]
    fn same_seed_same_split_other_seed_other_split() {
        let (a, b, c) = (split_with(1), split_with(1), split_with(2));
        for ((_, x), (_, y)) in a.parts().into_iter().zip(b.parts()) {
            assert_eq!(ids(x), ids(y));
        }
        assert_ne!(ids(&a.test), ids(&c.test));
    }

    #[test]
    fn no_group_straddles_splits_and_nothing_is_lost() {
        let s = split_with(3);
        let mut home: BTreeMap<String, &str> = BTreeMap::new();
        let mut n = 0;
        for (name, d) in s.parts() {
            for r in d.iter() {
                n += 1;
                let prev = home.insert(r.doc_id.clone().unwrap(), name);
                assert!(
                    prev.is_none() || prev == Some(name),
                    "{:?} in {prev:?} and {name}",
                    r.doc_id
                );
            }
        }
        assert_eq!(n, 600); // the sacred pair is gone, every other pair is somewhere
        assert_eq!(home.len(), 200);
    }

    #[test]
    fn ratios_are_roughly_respected() {
        // Groups have at most 5 records, so greedy filling misses a target by less than one group.
        for seed in 0..5 {
            let s = split_with(seed);
            for (len, target) in [(s.train.len(), 480.0), (s.valid.len(), 60.0), (s.test.len(), 60.0)] {
                assert!((len as f64 - target).abs() <= 5.0, "seed {seed}: {len} vs {target}");
            }
        }
        let s = split(
            &Policy::default().apply(pairs()),
            &SplitConfig {
                ratios: [0.5, 0.0, 0.5],
                ..SplitConfig::default()
            },
        );
        assert!(s.valid.is_empty());
        assert!((s.train.len() as i64 - 300).abs() <= 5);
    }

    #[test]
    fn group_by_any_field_or_singletons() {
        let p = pairs();
        assert_eq!(group_key(&p[0], Some("doc_id"), 0), "d0");
        assert_eq!(group_key(&p[0], Some("nope"), 9), "#9");
        assert_eq!(group_key(&p[0], None, 3), "#3");
        // Grouping by classification puts every public pair in one split.
        let s = split(
            &Policy::default().apply(p),
            &SplitConfig {
                group_by: Some("classification".into()),
                ..SplitConfig::default()
            },
        );
        assert_eq!((s.train.len(), s.valid.len(), s.test.len()), (600, 0, 0));
    }

    #[test]
    fn writes_mlx_layout_and_audit() {
        let dir = tempfile::tempdir().unwrap();
        let s = split_with(5);
        let audit = write_split(&s, dir.path()).unwrap();
        for (name, d) in s.parts() {
            let back = read_jsonl::<EmbeddingPair>(&dir.path().join(format!("{name}.jsonl")), BadLines::Fail).unwrap();
            assert_eq!(back.records, d.records());
        }
        let text = std::fs::read_to_string(dir.path().join("audit.json")).unwrap();
        let parsed: SplitAudit = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed, audit);
        assert_eq!(parsed.governance.excluded[0].id, "holy");
        assert_eq!(parsed.splits["train"].records, s.train.len());
        assert_eq!((parsed.duplicate_records, parsed.leaked_texts), (0, 0));
    }

    #[test]
    fn finds_duplicates_and_leaks() {
        let pair = |id: &str, q: &str, p: &str| EmbeddingPair {
            id: Some(id.into()),
            query: q.into(),
            positive: p.into(),
            ..Default::default()
        };
        let train = vec![
            pair("a", "Tide tables?", "x"),
            pair("b", "tide   TABLES", "x"),
            pair("c", "moon", "y"),
        ];
        let test = vec![pair("d", "sun", "Y."), pair("e", "other", "z")];
        let parts: Vec<(&str, &[EmbeddingPair])> = vec![("train", &train), ("test", &test)];

        let d = duplicates(&parts).unwrap();
        // a and b normalise to the same query and positive; nothing else repeats.
        assert_eq!(
            d.column("id")
                .unwrap()
                .str()
                .unwrap()
                .iter()
                .flatten()
                .collect::<Vec<_>>(),
            ["a", "b"]
        );

        let l = leakage(&parts).unwrap();
        // Only positive "y" (c in train, d in test) crosses splits; "tide tables" stays inside train.
        assert_eq!(l.height(), 1);
        assert_eq!(l.column("field").unwrap().str().unwrap().get(0), Some("positive"));
        assert_eq!(l.column("ids").unwrap().str().unwrap().get(0), Some("c,d"));
        assert_eq!(l.column("splits").unwrap().str().unwrap().get(0), Some("train,test"));
    }
}

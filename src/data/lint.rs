//! Record checks for `tunelab data inspect`: duplicate ids, duplicate texts, missing ids, empty texts,
//! and contributor names close to a withdrawn contributor's, each located by file and line.
//!
//! They are warnings (the policy decides what is used); `inspect --strict` turns them into errors.
//!
//! ```
//! use tunelab::data::formats::{load, EmbeddingPair};
//! use tunelab::data::governance::{Policy, Withdrawal, Withdrawals};
//! use tunelab::data::jsonl::BadLines;
//! use tunelab::data::lint::{check, CheckKind};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("pairs.jsonl");
//! std::fs::write(&path, concat!(
//!     r#"{"id":"a","query":"q","positive":"p","contributor":"Corwin Ashbey"}"#, "\n",
//!     r#"{"query":"q","positive":"p"}"#, "\n",
//! ))?;
//! let policy = Policy {
//!     withdrawn: Withdrawals::from_entries([Withdrawal { contributor: "Corwin Ashby".into(), withdrawn: None, reason: None }]),
//!     ..Policy::default()
//! };
//! let findings = check::<EmbeddingPair>(&load(&path, BadLines::Fail)?, &policy);
//! let kinds: Vec<(usize, CheckKind)> = findings.iter().map(|f| (f.origin.line, f.kind)).collect();
//! assert_eq!(kinds, [(1, CheckKind::NearWithdrawn), (2, CheckKind::MissingId), (2, CheckKind::DuplicateText)]);
//! # Ok(()) }
//! ```
use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use super::formats::{Loaded, Origin, Record};
use super::governance::Policy;
use super::split::normalise;

/// What a check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    /// A contributor name within a few edits of a withdrawn contributor's (not excluded: maybe
    /// someone else, maybe a misspelling of the withdrawn person).
    NearWithdrawn,
    /// The record has no `id`, so audits can name it only by position.
    MissingId,
    /// Another record has the same `id`.
    DuplicateId,
    /// A text field is empty or only whitespace.
    EmptyText,
    /// Another record has the same texts (compared normalised, as `data split` does).
    DuplicateText,
}

impl CheckKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NearWithdrawn => "near-withdrawn name",
            Self::MissingId => "missing id",
            Self::DuplicateId => "duplicate id",
            Self::EmptyText => "empty text",
            Self::DuplicateText => "duplicate text",
        }
    }
}

/// One finding: where, what, and the details.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub origin: Origin,
    pub kind: CheckKind,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.origin, self.kind.as_str(), self.message)
    }
}

/// Runs every check over all parts of `loaded` (records of type `T`), sorted by file and line.
/// Near-matches use `policy`'s withdrawal list.
pub fn check<T: Record>(loaded: &Loaded, policy: &Policy) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut ids: BTreeMap<&str, &Origin> = BTreeMap::new();
    let mut texts: BTreeMap<String, (&Origin, Option<&str>)> = BTreeMap::new();
    for part in &loaded.parts {
        let records = T::slice(&part.data).expect("parts share the loaded format");
        for (r, origin) in records.iter().zip(&part.origins) {
            let mut found = |kind, message: String| {
                out.push(Finding { origin: origin.clone(), kind, message });
            };
            if let Some(who) = r.governance().contributor.as_deref()
                && let Some((w, d)) = policy.withdrawn.near_match(who)
            {
                found(
                    CheckKind::NearWithdrawn,
                    format!(
                        "contributor {who:?} is {d} edit(s) from withdrawn {:?}; kept, check whether it is the same person",
                        w.contributor
                    ),
                );
            }
            match r.record_id() {
                None => found(CheckKind::MissingId, "no `id`".into()),
                Some(id) => match ids.get(id) {
                    Some(first) => found(CheckKind::DuplicateId, format!("id {id:?} also at {first}")),
                    None => {
                        ids.insert(id, origin);
                    }
                },
            }
            let fields = r.texts();
            if fields.is_empty() {
                found(CheckKind::EmptyText, "no text at all".into());
            }
            for (field, text) in &fields {
                if *field != "title" && text.trim().is_empty() {
                    found(CheckKind::EmptyText, format!("`{field}` is empty"));
                }
            }
            let key: Vec<String> = fields
                .iter()
                .map(|(f, t)| format!("{f}\u{1f}{}", normalise(t)))
                .collect();
            match texts.get(&key.join("\u{1e}")) {
                Some((first, first_id)) => {
                    let named = first_id.map(|i| format!(" (id {i:?})")).unwrap_or_default();
                    found(CheckKind::DuplicateText, format!("same text as {first}{named}"));
                }
                None => {
                    texts.insert(key.join("\u{1e}"), (origin, r.record_id()));
                }
            }
        }
    }
    out.sort_by(|a, b| (&a.origin, a.kind).cmp(&(&b.origin, b.kind)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::formats::{EmbeddingPair, load};
    use crate::data::governance::{Withdrawal, Withdrawals};
    use crate::data::jsonl::BadLines;

    #[test]
    fn each_check_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.jsonl");
        std::fs::write(
            &path,
            [
                r#"{"id":"a","query":"Tide","positive":"High tide.","contributor":"Corwin Ashby"}"#,
                r#"{"id":"b","query":"tide!","positive":"high  TIDE","contributor":"Korwin Ashbi"}"#,
                "",
                r#"{"id":"a","query":"kelp","positive":"Kelp grows."}"#,
                r#"{"query":"storm","positive":"   "}"#,
            ]
            .join("\n"),
        )
        .unwrap();
        let policy = Policy {
            withdrawn: Withdrawals::from_entries([Withdrawal {
                contributor: "corwin ashby".into(),
                withdrawn: None,
                reason: None,
            }]),
            ..Policy::default()
        };
        let found: Vec<(usize, CheckKind)> = check::<EmbeddingPair>(&load(&path, BadLines::Fail).unwrap(), &policy)
            .iter()
            .map(|f| (f.origin.line, f.kind))
            .collect();
        // Line 1 is the withdrawn name itself (excluded by the policy, not a near-match).
        assert_eq!(
            found,
            [
                (2, CheckKind::NearWithdrawn),
                (2, CheckKind::DuplicateText),
                (4, CheckKind::DuplicateId),
                (5, CheckKind::MissingId),
                (5, CheckKind::EmptyText),
            ]
        );
    }
    #[test]
    fn property_injected_problems_are_each_found_at_their_line() {
        use crate::data::formats::TextRecord;
        use rand::{Rng, SeedableRng};
        let policy = Policy {
            withdrawn: Withdrawals::from_entries([Withdrawal { contributor: "Corwin Ashby".into(), withdrawn: None, reason: None }]),
            ..Policy::default()
        };
        // Names 1-2 edits from the withdrawn one, and spellings of it (excluded, so not warned about).
        let near = ["Corwin Ashbey", "Korwin Ashbi", "CorwinAshby", "corwin ashbyy", "Corwin Asby"];
        let same = ["corwin ashby", " CORWIN  ASHBY ", "Ｃｏｒｗｉｎ Ａｓｈｂｙ"];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(16);
        let dir = tempfile::tempdir().unwrap();
        for round in 0..60 {
            let mut lines: Vec<String> = Vec::new();
            let mut want: Vec<(usize, CheckKind)> = Vec::new();
            let mut texts: Vec<String> = Vec::new();
            let mut ids: Vec<String> = Vec::new();
            let n = rng.random_range(3..20);
            for i in 0..n {
                let line = lines.len() + 1;
                let mut rec = serde_json::json!({"id": format!("r{i}"), "text": format!("text number {i}"), "classification": "public"});
                match rng.random_range(0..8) {
                    0 if !ids.is_empty() => {
                        rec["id"] = ids[rng.random_range(0..ids.len())].clone().into();
                        want.push((line, CheckKind::DuplicateId));
                    }
                    1 => {
                        rec.as_object_mut().unwrap().remove("id");
                        want.push((line, CheckKind::MissingId));
                    }
                    2 => {
                        rec["text"] = ["", " ", "\t", "\u{a0}\u{3000}"][rng.random_range(0..4)].into();
                        want.push((line, CheckKind::EmptyText));
                    }
                    3 if !texts.is_empty() => {
                        // An earlier text with other case and punctuation.
                        let t = &texts[rng.random_range(0..texts.len())];
                        rec["text"] = format!("{}!", t.to_uppercase().replace(' ', "  ")).into();
                        want.push((line, CheckKind::DuplicateText));
                    }
                    4 => {
                        rec["contributor"] = near[rng.random_range(0..near.len())].into();
                        want.push((line, CheckKind::NearWithdrawn));
                    }
                    5 => rec["contributor"] = same[rng.random_range(0..same.len())].into(),
                    _ => {}
                }
                if let Some(id) = rec["id"].as_str() {
                    ids.push(id.to_string());
                }
                if let Some(t) = rec["text"].as_str().filter(|t| !t.trim().is_empty()) {
                    texts.push(t.to_string());
                }
                lines.push(rec.to_string());
                if rng.random_bool(0.2) {
                    lines.push(String::new()); // blank lines still count
                }
            }
            // Two empty texts are also the same text: expect that too.
            let empties: Vec<usize> = want.iter().filter(|w| w.1 == CheckKind::EmptyText).map(|w| w.0).collect();
            want.extend(empties.iter().skip(1).map(|&l| (l, CheckKind::DuplicateText)));
            want.sort();
            let path = dir.path().join(format!("t{round}.jsonl"));
            std::fs::write(&path, lines.join("\n")).unwrap();
            let mut found: Vec<(usize, CheckKind)> =
                check::<TextRecord>(&load(&path, BadLines::Fail).unwrap(), &policy).iter().map(|f| (f.origin.line, f.kind)).collect();
            found.sort();
            assert_eq!(found, want, "round {round}:\n{}", lines.join("\n"));
        }
    }
}

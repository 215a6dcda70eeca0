//! Data governance: classification, consent, withdrawal; what may enter training.
//!
//! A [`Policy`] (from `policy.toml`) decides which records may be used: sacred never; classes listed in
//! `require_consent` only with a consent id recorded in the consent ledger (and granted to that
//! contributor); contributors on the withdrawal list never; unclassified records only when the user
//! opts to treat them as public. [`Policy::apply`] is the only way to obtain a [`GovernedDataset`],
//! the type that training and export code accept, so nothing reaches a model without passing here.
//!
//! ```
//! use tunelab::data::corpus::Document;
//! use tunelab::data::governance::{Classification, ExclusionReason, Governance, Policy};
//!
//! let doc = |id: &str, class| Document {
//!     id: id.into(), title: String::new(), text: "…".into(),
//!     governance: Governance { classification: class, ..Governance::default() },
//! };
//! let records = vec![doc("a", Some(Classification::Public)), doc("b", Some(Classification::Sacred)), doc("c", None)];
//!
//! let governed = Policy::default().apply(records);
//! assert_eq!(governed.records().len(), 1);
//! let audit = governed.audit();
//! assert_eq!(audit.excluded[0].id, "b");
//! assert_eq!(audit.excluded[0].reason, ExclusionReason::Sacred);
//! assert_eq!(audit.excluded[1].reason, ExclusionReason::Unclassified);
//! ```
//!
//! A `GovernedDataset` cannot be built any other way, neither by struct literal:
//!
//! ```compile_fail,E0451
//! use tunelab::data::corpus::Document;
//! use tunelab::data::governance::{Audit, GovernedDataset, Policy};
//! let audit: Audit = Policy::default().apply(Vec::<Document>::new()).audit().clone();
//! let bypass = GovernedDataset { records: Vec::<Document>::new(), audit };
//! ```
//!
//! nor by deserialising one:
//!
//! ```compile_fail,E0277
//! use tunelab::data::corpus::Document;
//! use tunelab::data::governance::GovernedDataset;
//! let bypass: GovernedDataset<Document> = serde_json::from_str("{}").unwrap();
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::jsonl::{BadLines, DataError, read_jsonl};

/// Sensitivity class of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Classification {
    Public,
    Community,
    Personal,
    Sacred,
}

impl Classification {
    pub const ALL: [Classification; 4] = [Self::Public, Self::Community, Self::Personal, Self::Sacred];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::Community => "community",
            Self::Personal => "personal",
            Self::Sacred => "sacred",
        }
    }
}

impl fmt::Display for Classification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Classification {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| format!("unknown classification `{s}`, expected one of public, community, personal, sacred"))
    }
}

/// Governance fields any record may carry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Governance {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classification: Option<Classification>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contributor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// A record the policy can judge: it has an optional id and governance fields.
pub trait Governed: Serialize {
    fn record_id(&self) -> Option<&str>;
    fn governance(&self) -> Governance;
}

/// Audit key for a record's class (`unclassified` when it has none).
pub fn class_key(c: Option<Classification>) -> &'static str {
    c.map_or("unclassified", Classification::as_str)
}

/// One consent given by a contributor (a line of the consent ledger).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConsentEntry {
    pub consent: String,
    #[serde(default)]
    pub contributor: Option<String>,
    #[serde(default)]
    pub scope: Option<String>,
    /// When (or whether) consent was granted; `false` records a refusal or revocation.
    #[serde(default)]
    pub granted: Option<Value>,
}

/// Consents by id. The ledger is append-only: a later line for the same id supersedes an earlier one.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConsentLedger {
    entries: BTreeMap<String, ConsentEntry>,
}

impl ConsentLedger {
    pub fn from_entries(entries: impl IntoIterator<Item = ConsentEntry>) -> Self {
        ConsentLedger {
            entries: entries.into_iter().map(|e| (e.consent.clone(), e)).collect(),
        }
    }

    /// Reads a JSONL ledger (`{"consent","contributor","scope","granted"}` per line).
    pub fn load(path: &Path) -> Result<Self, DataError> {
        Ok(Self::from_entries(
            read_jsonl::<ConsentEntry>(path, BadLines::Fail)?.records,
        ))
    }

    pub fn get(&self, consent: &str) -> Option<&ConsentEntry> {
        self.entries.get(consent)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A contributor's withdrawal (a line of the withdrawal list).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Withdrawal {
    pub contributor: String,
    #[serde(default)]
    pub withdrawn: Option<Value>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// Contributors who withdrew: none of their records may be used.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Withdrawals {
    contributors: BTreeSet<String>,
}

impl Withdrawals {
    pub fn from_entries(entries: impl IntoIterator<Item = Withdrawal>) -> Self {
        Withdrawals {
            contributors: entries.into_iter().map(|w| w.contributor).collect(),
        }
    }

    /// Reads a JSONL withdrawal list (`{"contributor","withdrawn","reason"}` per line).
    pub fn load(path: &Path) -> Result<Self, DataError> {
        Ok(Self::from_entries(
            read_jsonl::<Withdrawal>(path, BadLines::Fail)?.records,
        ))
    }

    pub fn contains(&self, contributor: &str) -> bool {
        self.contributors.contains(contributor)
    }

    pub fn len(&self) -> usize {
        self.contributors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.contributors.is_empty()
    }
}

/// What may enter training. Loaded from TOML; `consent_ledger` and `withdrawals` are paths relative to
/// the policy file. Sacred records are refused whatever `forbid` says.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default = "default_forbid")]
    pub forbid: Vec<Classification>,
    #[serde(default = "default_require_consent")]
    pub require_consent: Vec<Classification>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent_ledger: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub withdrawals: Option<PathBuf>,
    #[serde(default)]
    pub treat_unclassified_as_public: bool,
    /// The consents loaded from `consent_ledger`.
    #[serde(skip)]
    pub ledger: ConsentLedger,
    /// The contributors loaded from `withdrawals`.
    #[serde(skip)]
    pub withdrawn: Withdrawals,
    /// The file this policy was loaded from.
    #[serde(skip)]
    pub file: Option<PathBuf>,
}

fn default_forbid() -> Vec<Classification> {
    vec![Classification::Sacred]
}

fn default_require_consent() -> Vec<Classification> {
    vec![Classification::Community, Classification::Personal]
}

impl Default for Policy {
    /// The bundled `datasets/governance/policy.toml` with an empty ledger and no withdrawals.
    fn default() -> Self {
        Policy {
            forbid: default_forbid(),
            require_consent: default_require_consent(),
            consent_ledger: None,
            withdrawals: None,
            treat_unclassified_as_public: false,
            ledger: ConsentLedger::default(),
            withdrawn: Withdrawals::default(),
            file: None,
        }
    }
}

/// Why a record was kept out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExclusionReason {
    /// Classified sacred: never used.
    Sacred,
    /// Another class the policy forbids.
    Forbidden,
    /// The class needs consent and the record names none.
    MissingConsent,
    /// The consent id is not in the ledger, belongs to someone else, or was not granted.
    UnknownConsent,
    /// The contributor withdrew.
    Withdrawn,
    /// No classification, and the user did not opt to treat unclassified records as public.
    Unclassified,
}

/// An excluded record: its id (or `#N`, its 1-based position, when it has none) and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Excluded {
    pub id: String,
    pub reason: ExclusionReason,
    pub detail: String,
}

/// Records seen and kept for one class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassCount {
    pub total: usize,
    pub kept: usize,
}

/// What the policy did: counts by class, excluded records, and a hash of what was kept.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Audit {
    pub policy: Policy,
    pub policy_file: Option<PathBuf>,
    pub ledger_entries: usize,
    pub withdrawn_contributors: usize,
    pub total: usize,
    pub kept: usize,
    /// Keys: public, community, personal, sacred, unclassified (always all five).
    pub counts: BTreeMap<String, ClassCount>,
    pub excluded: Vec<Excluded>,
    /// SHA-256 (hex) over the kept records, see [`records_sha256`].
    pub sha256: String,
}

/// Records that passed a [`Policy`], with the audit of that decision.
///
/// Only [`Policy::apply`] creates one (plus subsets of an existing one, [`GovernedDataset::select`]);
/// training and export take `&GovernedDataset<T>`, so ungoverned data cannot reach them.
#[derive(Clone, Debug)]
pub struct GovernedDataset<T> {
    records: Vec<T>,
    audit: Audit,
}

impl<T> GovernedDataset<T> {
    pub fn records(&self) -> &[T] {
        &self.records
    }

    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        self.records.iter()
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The audit of the policy decision that produced this dataset (shared by its subsets).
    pub fn audit(&self) -> &Audit {
        &self.audit
    }

    /// Gives the records up (they leave governance: nothing accepts them back without the policy).
    pub fn into_records(self) -> Vec<T> {
        self.records
    }

    /// SHA-256 over these records (equal to `audit().sha256` unless this is a subset).
    pub fn sha256(&self) -> String
    where
        T: Serialize,
    {
        records_sha256(&self.records)
    }

    /// A subset (by position, in the order given): still governed, as it holds only governed records.
    pub fn select(&self, indices: &[usize]) -> Self
    where
        T: Clone,
    {
        GovernedDataset {
            records: indices.iter().map(|&i| self.records[i].clone()).collect(),
            audit: self.audit.clone(),
        }
    }
}

impl<'a, T> IntoIterator for &'a GovernedDataset<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.records.iter()
    }
}

impl Policy {
    /// Reads a TOML policy and the ledger and withdrawal files it names (relative to the policy file).
    pub fn load(path: &Path) -> Result<Policy, DataError> {
        let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
        let mut policy: Policy = toml::from_str(&text).map_err(|e| {
            let line = e.span().map_or(1, |s| text[..s.start].matches('\n').count() + 1);
            DataError::at(path, line, None, e.message().to_string())
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        if let Some(ledger) = &policy.consent_ledger {
            policy.ledger = ConsentLedger::load(&base.join(ledger))?;
        }
        if let Some(w) = &policy.withdrawals {
            policy.withdrawn = Withdrawals::load(&base.join(w))?;
        }
        policy.file = Some(path.to_path_buf());
        Ok(policy)
    }

    /// Why `g` may not be used, or `None` if it may.
    pub fn judge(&self, g: &Governance) -> Option<(ExclusionReason, String)> {
        use ExclusionReason::*;
        let class = g.classification;
        if class == Some(Classification::Sacred) {
            return Some((Sacred, "sacred records are never used".into()));
        }
        if let Some(c) = class.filter(|c| self.forbid.contains(c)) {
            return Some((Forbidden, format!("the policy forbids {c} records")));
        }
        if let Some(who) = g.contributor.as_deref().filter(|w| self.withdrawn.contains(w)) {
            return Some((Withdrawn, format!("contributor {who} withdrew")));
        }
        let class = match class {
            Some(c) => c,
            None if self.treat_unclassified_as_public => Classification::Public,
            None => return Some((Unclassified, "no classification (not treated as public)".into())),
        };
        if !self.require_consent.contains(&class) {
            return None;
        }
        let Some(id) = g.consent.as_deref() else {
            return Some((MissingConsent, format!("{class} records need a consent id")));
        };
        match self.ledger.get(id) {
            None => Some((UnknownConsent, format!("consent {id} is not in the ledger"))),
            Some(e) if matches!(e.granted, Some(Value::Bool(false)) | Some(Value::Null)) => {
                Some((UnknownConsent, format!("consent {id} was not granted")))
            }
            Some(e) if e.contributor.is_some() && e.contributor != g.contributor => Some((
                UnknownConsent,
                format!(
                    "consent {id} belongs to {}, not {}",
                    e.contributor.as_deref().unwrap_or(""),
                    g.contributor.as_deref().unwrap_or("nobody")
                ),
            )),
            Some(_) => None,
        }
    }

    /// Applies the policy: the kept records (in input order) as a [`GovernedDataset`] with its [`Audit`].
    pub fn apply<T: Governed>(&self, records: Vec<T>) -> GovernedDataset<T> {
        let mut counts: BTreeMap<String, ClassCount> = ["public", "community", "personal", "sacred", "unclassified"]
            .map(|k| (k.to_string(), ClassCount::default()))
            .into();
        let mut excluded = Vec::new();
        let mut kept = Vec::new();
        let total = records.len();
        for (i, rec) in records.into_iter().enumerate() {
            let g = rec.governance();
            let count = counts
                .get_mut(class_key(g.classification))
                .expect("all classes present");
            count.total += 1;
            match self.judge(&g) {
                None => {
                    count.kept += 1;
                    kept.push(rec);
                }
                Some((reason, detail)) => {
                    let id = rec.record_id().map_or_else(|| format!("#{}", i + 1), str::to_string);
                    excluded.push(Excluded { id, reason, detail });
                }
            }
        }
        let audit = Audit {
            policy: self.clone(),
            policy_file: self.file.clone(),
            ledger_entries: self.ledger.len(),
            withdrawn_contributors: self.withdrawn.len(),
            total,
            kept: kept.len(),
            counts,
            excluded,
            sha256: records_sha256(&kept),
        };
        GovernedDataset { records: kept, audit }
    }
}

/// SHA-256 (hex) over records in order, each as canonical JSON (keys sorted, no spaces) plus `\n`:
/// the same bytes as a JSONL file of the records with sorted keys, so `sha256sum` can check it.
pub fn records_sha256<T: Serialize>(records: &[T]) -> String {
    let mut hasher = Sha256::new();
    let mut buf = String::new();
    for r in records {
        buf.clear();
        let value = serde_json::to_value(r).expect("records serialise to JSON");
        canonical_json(&value, &mut buf);
        buf.push('\n');
        hasher.update(buf.as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// JSON with object keys sorted at every level (independent of serde_json's map ordering feature).
pub fn canonical_json(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            out.push('{');
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical_json(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::corpus::Document;
    use Classification::*;
    use ExclusionReason as R;

    fn doc(id: &str, class: Option<Classification>, contributor: Option<&str>, consent: Option<&str>) -> Document {
        Document {
            id: id.into(),
            title: String::new(),
            text: format!("text of {id}"),
            governance: Governance {
                classification: class,
                contributor: contributor.map(Into::into),
                consent: consent.map(Into::into),
                source: None,
            },
        }
    }

    fn ledger_policy() -> Policy {
        Policy {
            ledger: ConsentLedger::from_entries([
                ConsentEntry {
                    consent: "c-ana".into(),
                    contributor: Some("ana".into()),
                    scope: None,
                    granted: Some("2025-01-01".into()),
                },
                ConsentEntry {
                    consent: "c-no".into(),
                    contributor: Some("ana".into()),
                    scope: None,
                    granted: Some(false.into()),
                },
            ]),
            withdrawn: Withdrawals::from_entries([Withdrawal {
                contributor: "ben".into(),
                withdrawn: None,
                reason: None,
            }]),
            ..Policy::default()
        }
    }

    fn reasons(g: &GovernedDataset<Document>) -> Vec<(String, ExclusionReason)> {
        g.audit().excluded.iter().map(|e| (e.id.clone(), e.reason)).collect()
    }

    fn kept_ids(g: &GovernedDataset<Document>) -> Vec<&str> {
        g.records().iter().map(|d| d.id.as_str()).collect()
    }

    #[test]
    fn each_classification() {
        let p = ledger_policy();
        let g = p.apply(vec![
            doc("pub", Some(Public), None, None),
            doc("com", Some(Community), Some("ana"), Some("c-ana")),
            doc("per", Some(Personal), Some("ana"), Some("c-ana")),
            doc("sac", Some(Sacred), Some("ana"), Some("c-ana")),
        ]);
        assert_eq!(kept_ids(&g), ["pub", "com", "per"]);
        // Sacred is refused even with valid consent, and the audit names it.
        assert_eq!(reasons(&g), [("sac".to_string(), R::Sacred)]);
        let c = &g.audit().counts;
        assert_eq!(c["sacred"], ClassCount { total: 1, kept: 0 });
        assert_eq!(c["community"], ClassCount { total: 1, kept: 1 });
        assert_eq!(c["unclassified"], ClassCount { total: 0, kept: 0 });
        assert_eq!((g.audit().total, g.audit().kept), (4, 3));
    }

    #[test]
    fn sacred_is_refused_even_if_policy_forgets_it() {
        let p = Policy {
            forbid: vec![],
            require_consent: vec![],
            treat_unclassified_as_public: true,
            ..Policy::default()
        };
        let g = p.apply(vec![
            doc("s", Some(Sacred), None, None),
            doc("p", Some(Personal), None, None),
        ]);
        assert_eq!(kept_ids(&g), ["p"]);
        assert_eq!(reasons(&g), [("s".to_string(), R::Sacred)]);
    }

    #[test]
    fn consent_present_absent_unknown_refused_or_foreign() {
        let p = ledger_policy();
        let g = p.apply(vec![
            doc("ok", Some(Personal), Some("ana"), Some("c-ana")),
            doc("absent", Some(Personal), Some("ana"), None),
            doc("unknown", Some(Community), Some("ana"), Some("c-missing")),
            doc("refused", Some(Community), Some("ana"), Some("c-no")),
            doc("foreign", Some(Community), Some("carl"), Some("c-ana")),
        ]);
        assert_eq!(kept_ids(&g), ["ok"]);
        assert_eq!(
            reasons(&g),
            [
                ("absent".to_string(), R::MissingConsent),
                ("unknown".to_string(), R::UnknownConsent),
                ("refused".to_string(), R::UnknownConsent),
                ("foreign".to_string(), R::UnknownConsent),
            ]
        );
    }

    #[test]
    fn withdrawn_contributor_is_refused_whatever_the_class() {
        let g = ledger_policy().apply(vec![
            doc("b1", Some(Public), Some("ben"), None),
            doc("a1", Some(Public), Some("ana"), None),
        ]);
        assert_eq!(kept_ids(&g), ["a1"]);
        assert_eq!(reasons(&g), [("b1".to_string(), R::Withdrawn)]);
    }

    #[test]
    fn unclassified_needs_the_opt_in() {
        let recs = || vec![doc("u", None, None, None), doc("p", Some(Public), None, None)];
        let g = Policy::default().apply(recs());
        assert_eq!(kept_ids(&g), ["p"]);
        assert_eq!(reasons(&g), [("u".to_string(), R::Unclassified)]);
        let g = Policy {
            treat_unclassified_as_public: true,
            ..Policy::default()
        }
        .apply(recs());
        assert_eq!(kept_ids(&g), ["u", "p"]);
        assert_eq!(g.audit().counts["unclassified"], ClassCount { total: 1, kept: 1 });
    }

    #[test]
    fn forbid_other_classes() {
        let p = Policy {
            forbid: vec![Personal],
            ..ledger_policy()
        };
        let g = p.apply(vec![doc("per", Some(Personal), Some("ana"), Some("c-ana"))]);
        assert_eq!(reasons(&g), [("per".to_string(), R::Forbidden)]);
    }

    #[test]
    fn hash_is_sha256_of_sorted_key_jsonl_of_kept_records() {
        let mut u = doc("u", None, None, None);
        u.title = "T".into();
        u.text = "y".into();
        let mut a = doc("a", Some(Public), None, None);
        a.text = "x".into();
        let g = Policy {
            treat_unclassified_as_public: true,
            ..Policy::default()
        }
        .apply(vec![a, doc("s", Some(Sacred), None, None), u]);
        // printf '{"classification":"public","id":"a","text":"x","title":""}\n{"id":"u","text":"y","title":"T"}\n' | sha256sum
        assert_eq!(
            g.audit().sha256,
            "26fa2d124624c4d6ed5584054ee5053737802c57acc4f94487f98d9d53f8b96c"
        );
        assert_eq!(g.sha256(), g.audit().sha256);
        // A subset hashes differently but keeps the policy's audit.
        let sub = g.select(&[1]);
        assert_eq!(sub.records()[0].id, "u");
        assert_ne!(sub.sha256(), g.audit().sha256);
        assert_eq!(sub.audit(), g.audit());
    }

    #[test]
    fn records_without_id_are_named_by_position() {
        #[derive(Serialize)]
        struct Anon {
            classification: Option<Classification>,
        }
        impl Governed for Anon {
            fn record_id(&self) -> Option<&str> {
                None
            }
            fn governance(&self) -> Governance {
                Governance {
                    classification: self.classification,
                    ..Governance::default()
                }
            }
        }
        let g = Policy::default().apply(vec![
            Anon {
                classification: Some(Public),
            },
            Anon {
                classification: Some(Sacred),
            },
        ]);
        assert_eq!(g.audit().excluded[0].id, "#2");
    }

    #[test]
    fn policy_loads_with_paths_relative_to_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let gov = dir.path().join("governance");
        std::fs::create_dir(&gov).unwrap();
        std::fs::write(
            gov.join("policy.toml"),
            "forbid = [\"sacred\"]\nrequire_consent = [\"community\", \"personal\"]\nconsent_ledger = \"consent-ledger.jsonl\"\nwithdrawals = \"withdrawals.jsonl\"\ntreat_unclassified_as_public = false\n",
        )
        .unwrap();
        std::fs::write(
            gov.join("consent-ledger.jsonl"),
            "{\"consent\":\"c1\",\"contributor\":\"ana\",\"scope\":\"training\",\"granted\":\"2025-03-01\"}\n",
        )
        .unwrap();
        std::fs::write(
            gov.join("withdrawals.jsonl"),
            "{\"contributor\":\"ben\",\"withdrawn\":\"2025-04-01\",\"reason\":\"asked\"}\n",
        )
        .unwrap();
        let p = Policy::load(&gov.join("policy.toml")).unwrap();
        assert_eq!((p.ledger.len(), p.withdrawn.len()), (1, 1));
        assert!(p.ledger.get("c1").is_some() && p.withdrawn.contains("ben"));
        // Same rules as the built-in default.
        assert_eq!(
            (p.forbid.clone(), p.require_consent.clone()),
            (Policy::default().forbid, Policy::default().require_consent)
        );
    }

    #[test]
    fn policy_typos_and_bad_ledgers_are_errors_naming_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, "forbid = [\"sacred\"]\nrequire_concent = [\"personal\"]\n").unwrap();
        let e = Policy::load(&path).unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        std::fs::write(&path, "consent_ledger = \"l.jsonl\"\n").unwrap();
        std::fs::write(
            dir.path().join("l.jsonl"),
            "{\"consent\":\"c1\"}\n{\"contributor\":\"x\"}\n",
        )
        .unwrap();
        let e = Policy::load(&path).unwrap_err();
        assert_eq!((e.line, e.field.as_deref()), (Some(2), Some("consent")), "{e}");
        assert!(e.file.ends_with("l.jsonl"));
    }
}

//! Data governance: classification, consent, withdrawal; what may enter training.
//!
//! A [`Policy`] (from `policy.toml`) decides which records may be used: sacred never; classes listed in
//! `require_consent` only with a consent id recorded in the consent ledger (and granted to that
//! contributor); contributors on the withdrawal list never; unclassified records only when the user
//! opts to treat them as public. [`Policy::apply`] is the only way to obtain a [`GovernedDataset`],
//! the type that training and export code accept, so nothing reaches a model without passing here.
//!
//! **Identity.** Contributor names and consent ids are compared through one function, [`identity_key`]
//! (Unicode NFKC, case folding, whitespace collapsed, invisible characters dropped), so `Corwin Ashby`,
//! ` corwin  ashby `, `ＣＯＲＷＩＮ ＡＳＨＢＹ` or `Corwin\u{a0}Ashby` are one person. Names within two
//! edits of a withdrawn name are not excluded (they may be someone else) but listed in the audit as
//! [`NearMatch`] warnings.
//!
//! **Consent terms.** A ledger entry admits a record only if its `scope` includes `training`, its
//! `granted` date has come (on or before the policy's `as_of` date, today unless set) and its
//! `expires` date (optional) has not. The audit records which consent admitted each record.
//!
//! **Withdrawal.** A withdrawal covers every record of the contributor whatever the record's or the
//! withdrawal's date: a person who withdrew withdrew their words, including those given before, and a
//! withdrawal dated in the future was still asked for, so it applies at once. A record that names no
//! contributor but a consent belonging to a withdrawn contributor is excluded too.
//!
//! **Which policy.** [`Policy::resolve`] takes an explicit file, else the first `governance/policy.toml`
//! (or a `tunelab.toml` naming a `policy`) found walking up from the data's location, never from the
//! working directory. When none is found, only public records pass (see [`ExclusionReason::NoPolicy`]).
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

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use chrono::NaiveDate;

use super::jsonl::{BadLines, DataError, from_value, read_with};

/// The key two spellings of one contributor name or consent id share; every match of names and ids in
/// tunelab goes through it. Unicode NFKC (fullwidth letters, ligatures, composed and decomposed accents,
/// non-breaking spaces fold to one form), case folding (lower case, `ß` as `ss`, final `ς` as `σ`),
/// invisible format characters (zero-width joiners, word joiner, byte-order mark, soft hyphen,
/// direction marks) dropped, whitespace (zero-width space included) collapsed to one space and trimmed.
///
/// ```
/// use tunelab::data::governance::identity_key;
/// let key = identity_key("Corwin Ashby");
/// assert_eq!(key, "corwin ashby");
/// for variant in [" corwin  ashby ", "CORWIN\tASHBY", "Corwin\u{a0}Ashby", "Ｃｏｒｗｉｎ Ａｓｈｂｙ", "Corwin\u{200b}Ashby", "Cor\u{200d}win Ashby"] {
///     assert_eq!(identity_key(variant), key, "{variant:?}");
/// }
/// assert_eq!(identity_key("Zo\u{eb}"), identity_key("Zoe\u{308}")); // NFC and NFD
/// assert_ne!(identity_key("Corwin Ashby"), identity_key("Corwin Ashbey"));
/// ```
pub fn identity_key(s: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    // Invisible characters go first: one between a letter and its combining accent would keep NFKC
    // from composing them.
    let visible: String = s.chars().filter(|c| !is_invisible(*c)).collect();
    let mut lower = String::with_capacity(s.len());
    for c in visible.nfkc().flat_map(char::to_lowercase) {
        match c {
            'ß' => lower.push_str("ss"),
            'ς' => lower.push('σ'),
            _ => lower.push(c),
        }
    }
    let folded: String = lower.nfkc().collect();
    let mut out = String::with_capacity(folded.len());
    let mut space = false;
    for c in folded.chars() {
        if c.is_whitespace() || c == '\u{200b}' {
            space = true;
        } else {
            if space && !out.is_empty() {
                out.push(' ');
            }
            space = false;
            out.push(c);
        }
    }
    out
}

/// Format characters that render as nothing (Unicode Cf ones a name could carry by copy and paste).
fn is_invisible(c: char) -> bool {
    matches!(c, '\u{ad}' | '\u{34f}' | '\u{61c}' | '\u{180e}' | '\u{200c}'..='\u{200f}' | '\u{202a}'..='\u{202e}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
}

/// How far a contributor's key is from a withdrawn one, if near enough to warn about: at most two edits
/// (Levenshtein over characters) and at most a quarter of the withdrawn key's length (so three-letter
/// names do not all warn about each other), or equal once spaces are removed (`CorwinAshby`).
fn near_distance(key: &str, withdrawn: &str) -> Option<usize> {
    if key == withdrawn || key.is_empty() {
        return None;
    }
    let d = strsim::levenshtein(key, withdrawn);
    let limit = 2.min(withdrawn.chars().count() / 4);
    let squash = |s: &str| s.chars().filter(|c| *c != ' ').collect::<String>();
    (d <= limit || squash(key) == squash(withdrawn)).then_some(d)
}

/// A date in the ledger or withdrawal list: `YYYY-MM-DD`, or an RFC 3339 time (its date is used).
fn parse_date(s: &str) -> Option<NaiveDate> {
    let s = s.trim();
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .or_else(|| chrono::DateTime::parse_from_rfc3339(s).ok().map(|t| t.date_naive()))
}

/// The date a JSON value holds: `Ok(None)` for absent/null/false, an error for anything else.
fn value_date(v: Option<&Value>) -> Result<Option<NaiveDate>, String> {
    match v {
        None | Some(Value::Null) | Some(Value::Bool(false)) => Ok(None),
        Some(Value::String(s)) => parse_date(s)
            .map(Some)
            .ok_or_else(|| format!("{s:?} is not a date (YYYY-MM-DD)")),
        Some(other) => Err(format!("{other} is not a date (YYYY-MM-DD), nor false")),
    }
}

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
    /// When consent was granted (`YYYY-MM-DD`); `false` or `null` records a refusal or revocation.
    #[serde(default)]
    pub granted: Option<Value>,
    /// The first day the consent no longer holds (`YYYY-MM-DD`), if it ends.
    #[serde(default, alias = "expiry", alias = "expires_on", skip_serializing_if = "Option::is_none")]
    pub expires: Option<Value>,
}

impl ConsentEntry {
    /// Whether `scope` includes training: a scope is one word or a comma-separated list of them,
    /// compared through [`identity_key`]; a missing scope does not.
    pub fn allows_training(&self) -> bool {
        self.scope
            .as_deref()
            .is_some_and(|s| s.split([',', ';']).any(|w| identity_key(w) == "training"))
    }

    /// Why this consent does not admit training records on `today`, or `None` if it does.
    pub fn refusal(&self, today: NaiveDate) -> Option<String> {
        let id = &self.consent;
        let granted = match value_date(self.granted.as_ref()) {
            Err(e) => return Some(format!("consent {id}: granted {e}")),
            Ok(None) => return Some(format!("consent {id} was not granted")),
            Ok(Some(d)) => d,
        };
        if !self.allows_training() {
            return Some(match &self.scope {
                Some(s) => format!("consent {id} has scope {s:?}, not training"),
                None => format!("consent {id} names no scope (training needs scope = \"training\")"),
            });
        }
        if granted > today {
            return Some(format!("consent {id} is granted from {granted}, after {today}"));
        }
        match value_date(self.expires.as_ref()) {
            Err(e) => Some(format!("consent {id}: expires {e}")),
            Ok(Some(end)) if end <= today => Some(format!("consent {id} expired on {end}")),
            _ => None,
        }
    }
}

/// Consents by id ([`identity_key`] of it). The ledger is append-only: a later line for the same id
/// supersedes an earlier one.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConsentLedger {
    entries: BTreeMap<String, ConsentEntry>,
}

impl ConsentLedger {
    pub fn from_entries(entries: impl IntoIterator<Item = ConsentEntry>) -> Self {
        ConsentLedger {
            entries: entries.into_iter().map(|e| (identity_key(&e.consent), e)).collect(),
        }
    }

    /// Reads a JSONL ledger (`{"consent","contributor","scope","granted","expires"?}` per line). Dates
    /// that are not dates are errors naming the line and field.
    pub fn load(path: &Path) -> Result<Self, DataError> {
        let read = read_with(path, BadLines::Fail, |line, v| {
            let e: ConsentEntry = from_value(path, line, v)?;
            for (field, value) in [("granted", &e.granted), ("expires", &e.expires)] {
                value_date(value.as_ref()).map_err(|m| DataError::at(path, line, Some(field), m))?;
            }
            if identity_key(&e.consent).is_empty() {
                return Err(DataError::at(path, line, Some("consent"), "empty consent id"));
            }
            Ok(e)
        })?;
        Ok(Self::from_entries(read.records))
    }

    /// The entry for a consent id, however it is spelled (see [`identity_key`]).
    pub fn get(&self, consent: &str) -> Option<&ConsentEntry> {
        self.entries.get(&identity_key(consent))
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

/// Contributors who withdrew (by [`identity_key`] of their names): none of their records may be used.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Withdrawals {
    contributors: BTreeMap<String, Withdrawal>,
}

impl Withdrawals {
    pub fn from_entries(entries: impl IntoIterator<Item = Withdrawal>) -> Self {
        Withdrawals {
            contributors: entries
                .into_iter()
                .map(|w| (identity_key(&w.contributor), w))
                .collect(),
        }
    }

    /// Reads a JSONL withdrawal list (`{"contributor","withdrawn","reason"}` per line); a `withdrawn`
    /// that is not a date, or an empty name, is an error naming the line.
    pub fn load(path: &Path) -> Result<Self, DataError> {
        let read = read_with(path, BadLines::Fail, |line, v| {
            let w: Withdrawal = from_value(path, line, v)?;
            value_date(w.withdrawn.as_ref()).map_err(|m| DataError::at(path, line, Some("withdrawn"), m))?;
            if identity_key(&w.contributor).is_empty() {
                return Err(DataError::at(path, line, Some("contributor"), "empty contributor name"));
            }
            Ok(w)
        })?;
        Ok(Self::from_entries(read.records))
    }

    /// Whether `contributor`, however spelled (see [`identity_key`]), withdrew.
    pub fn contains(&self, contributor: &str) -> bool {
        self.get(contributor).is_some()
    }

    /// The withdrawal of `contributor`, however spelled.
    pub fn get(&self, contributor: &str) -> Option<&Withdrawal> {
        self.contributors.get(&identity_key(contributor))
    }

    /// The nearest withdrawn name `contributor` is close to without being it (see [`NearMatch`]), with
    /// the edit distance between the keys.
    pub fn near_match(&self, contributor: &str) -> Option<(&Withdrawal, usize)> {
        let key = identity_key(contributor);
        self.contributors
            .iter()
            .filter_map(|(k, w)| near_distance(&key, k).map(|d| (w, d)))
            .min_by_key(|(_, d)| *d)
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
    /// The day consent dates are judged against (today, UTC, when `None`).
    #[serde(skip)]
    pub as_of: Option<NaiveDate>,
    /// Set when no policy file was found for the data ([`Policy::not_found`]): why, and how to give one.
    /// Then only public records pass.
    #[serde(skip)]
    pub not_found: Option<String>,
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
            as_of: None,
            not_found: None,
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
    /// The contributor withdrew (or the record's consent belongs to a contributor who withdrew).
    Withdrawn,
    /// No classification, and the user did not opt to treat unclassified records as public.
    Unclassified,
    /// The consent is in the ledger but does not cover this use now: its scope is not training, it is
    /// granted from a later date, or it has expired.
    ConsentTerms,
    /// No policy file was found for the data: only public records pass.
    NoPolicy,
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
    /// The day consent dates were judged against (`YYYY-MM-DD`).
    #[serde(default)]
    pub as_of: String,
    /// Which consent admitted which kept records (by the ledger's spelling of the consent id).
    #[serde(default)]
    pub admitted_by_consent: BTreeMap<String, ConsentUse>,
    /// Kept records whose contributor is close to a withdrawn name: warnings, not exclusions.
    #[serde(default)]
    pub near_matches: Vec<NearMatch>,
}

/// The records one consent admitted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentUse {
    pub contributor: Option<String>,
    pub records: usize,
    /// Ids of the admitted records (`#N` for records without one).
    pub ids: Vec<String>,
}

/// A kept record whose contributor is within a few edits of a withdrawn contributor's name (see
/// [`Withdrawals::near_match`]): perhaps a misspelling of the withdrawn person, perhaps someone else.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NearMatch {
    pub id: String,
    pub contributor: String,
    pub withdrawn: String,
    /// Edit distance between the two names' [`identity_key`]s.
    pub distance: usize,
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

/// The file names [`Policy::discover`] looks for in each folder, in order.
pub const POLICY_FILE: &str = "governance/policy.toml";
/// A project config whose `policy = "..."` (relative to it) names the policy file.
pub const PROJECT_CONFIG: &str = "tunelab.toml";

/// How to give a policy, for messages.
pub const HOW_TO_GIVE_A_POLICY: &str = "give one with --policy FILE (or `policy = ...` in the job's config), put it at \
     governance/policy.toml in the data's folder or a folder above it, or name it in a tunelab.toml there (`policy = \"path\"`)";

impl Policy {
    /// Reads a TOML policy and the ledger and withdrawal files it names (relative to the policy file).
    pub fn load(path: &Path) -> Result<Policy, DataError> {
        let text = crate::io::text::read_to_string(path).map_err(|e| DataError::io(path, e))?;
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

    /// The policy file that governs data at `data` (a file or folder), found from the data's location and
    /// never from the working directory: in the data's folder and each folder above it, the first
    /// `governance/policy.toml`, or a `tunelab.toml` whose `policy` key names one (relative to it).
    pub fn discover(data: &Path) -> Result<Option<PathBuf>, DataError> {
        let abs = std::fs::canonicalize(data)
            .or_else(|_| std::path::absolute(data))
            .map_err(|e| DataError::io(data, e))?;
        let start = if abs.is_dir() { abs.as_path() } else { abs.parent().unwrap_or(&abs) };
        for dir in start.ancestors() {
            let candidate = dir.join(POLICY_FILE);
            if candidate.is_file() {
                return Ok(Some(candidate));
            }
            let config = dir.join(PROJECT_CONFIG);
            if config.is_file() {
                let text = crate::io::text::read_to_string(&config).map_err(|e| DataError::io(&config, e))?;
                let table: toml::Table = toml::from_str(&text).map_err(|e| {
                    let line = e.span().map_or(1, |s| text[..s.start].matches('\n').count() + 1);
                    DataError::at(&config, line, None, e.message().to_string())
                })?;
                let named = table
                    .get("policy")
                    .or_else(|| table.get("governance").and_then(|g| g.get("policy")));
                match named {
                    Some(toml::Value::String(p)) => return Ok(Some(dir.join(p))),
                    Some(_) => return Err(DataError::file(&config, "`policy` must be a path (a string)")),
                    None => {}
                }
            }
        }
        Ok(None)
    }

    /// The policy for data at `data`: `explicit` if given, else the one [`Policy::discover`] finds, else
    /// [`Policy::not_found`] (only public records pass).
    pub fn resolve(explicit: Option<&Path>, data: &Path) -> Result<Policy, DataError> {
        match explicit {
            Some(p) => Policy::load(p),
            None => match Policy::discover(data)? {
                Some(p) => Policy::load(&p),
                None => Ok(Policy::not_found(data)),
            },
        }
    }

    /// The policy used when none was found for `data`: sacred refused, public passes, and community,
    /// personal and unclassified records refused with [`ExclusionReason::NoPolicy`] saying how to give
    /// a policy (even with `treat_unclassified_as_public`: without a policy nothing vouches for them).
    pub fn not_found(data: &Path) -> Policy {
        Policy {
            not_found: Some(format!("no governance policy found for {}; {HOW_TO_GIVE_A_POLICY}", data.display())),
            ..Policy::default()
        }
    }

    /// The day consent dates are judged against.
    pub fn today(&self) -> NaiveDate {
        self.as_of.unwrap_or_else(|| chrono::Utc::now().date_naive())
    }

    /// Why `g` may not be used, or `None` if it may.
    pub fn judge(&self, g: &Governance) -> Option<(ExclusionReason, String)> {
        self.decide(g, self.today()).err()
    }

    /// `Ok(consent)` when `g` may be used (with the ledger entry that admitted it, if one did), else why not.
    fn decide(&self, g: &Governance, today: NaiveDate) -> Result<Option<&ConsentEntry>, (ExclusionReason, String)> {
        use ExclusionReason::*;
        let class = g.classification;
        if class == Some(Classification::Sacred) {
            return Err((Sacred, "sacred records are never used".into()));
        }
        if let Some(c) = class.filter(|c| self.forbid.contains(c)) {
            return Err((Forbidden, format!("the policy forbids {c} records")));
        }
        if let Some(who) = g.contributor.as_deref()
            && let Some(w) = self.withdrawn.get(who)
        {
            return Err((Withdrawn, format!("contributor {who} withdrew (as {})", w.contributor)));
        }
        let entry = g.consent.as_deref().and_then(|id| self.ledger.get(id));
        if let Some(w) = entry
            .and_then(|e| e.contributor.as_deref())
            .and_then(|c| self.withdrawn.get(c))
        {
            return Err((
                Withdrawn,
                format!("consent {} belongs to {}, who withdrew", g.consent.as_deref().unwrap_or(""), w.contributor),
            ));
        }
        if let Some(why) = &self.not_found
            && class != Some(Classification::Public)
        {
            return Err((NoPolicy, why.clone()));
        }
        let class = match class {
            Some(c) => c,
            None if self.treat_unclassified_as_public => Classification::Public,
            None => return Err((Unclassified, "no classification (not treated as public)".into())),
        };
        if !self.require_consent.contains(&class) {
            return Ok(None);
        }
        let Some(id) = g.consent.as_deref() else {
            return Err((MissingConsent, format!("{class} records need a consent id")));
        };
        let Some(e) = entry else {
            return Err((UnknownConsent, format!("consent {id} is not in the ledger")));
        };
        if matches!(e.granted, None | Some(Value::Bool(false)) | Some(Value::Null)) {
            return Err((UnknownConsent, format!("consent {id} was not granted")));
        }
        if let Some(owner) = e.contributor.as_deref()
            && g.contributor.as_deref().map(identity_key) != Some(identity_key(owner))
        {
            return Err((
                UnknownConsent,
                format!("consent {id} belongs to {owner}, not {}", g.contributor.as_deref().unwrap_or("nobody")),
            ));
        }
        match e.refusal(today) {
            Some(why) => Err((ConsentTerms, why)),
            None => Ok(Some(e)),
        }
    }

    /// Applies the policy: the kept records (in input order) as a [`GovernedDataset`] with its [`Audit`].
    pub fn apply<T: Governed>(&self, records: Vec<T>) -> GovernedDataset<T> {
        let today = self.today();
        let mut counts: BTreeMap<String, ClassCount> = ["public", "community", "personal", "sacred", "unclassified"]
            .map(|k| (k.to_string(), ClassCount::default()))
            .into();
        let mut excluded = Vec::new();
        let mut kept = Vec::new();
        let mut admitted_by_consent: BTreeMap<String, ConsentUse> = BTreeMap::new();
        let mut near_matches = Vec::new();
        // Near-matches by contributor key: a dataset repeats a few names many times.
        let mut near_cache: BTreeMap<String, Option<(String, usize)>> = BTreeMap::new();
        let total = records.len();
        for (i, rec) in records.into_iter().enumerate() {
            let g = rec.governance();
            let count = counts
                .get_mut(class_key(g.classification))
                .expect("all classes present");
            count.total += 1;
            let id = || rec.record_id().map_or_else(|| format!("#{}", i + 1), str::to_string);
            match self.decide(&g, today) {
                Ok(consent) => {
                    count.kept += 1;
                    if let Some(e) = consent {
                        let used = admitted_by_consent.entry(e.consent.clone()).or_default();
                        used.contributor.clone_from(&e.contributor);
                        used.records += 1;
                        used.ids.push(id());
                    }
                    if let Some(who) = g.contributor.as_deref() {
                        let near = near_cache.entry(identity_key(who)).or_insert_with(|| {
                            self.withdrawn
                                .near_match(who)
                                .map(|(w, d)| (w.contributor.clone(), d))
                        });
                        if let Some((withdrawn, distance)) = near.clone() {
                            near_matches.push(NearMatch { id: id(), contributor: who.to_string(), withdrawn, distance });
                        }
                    }
                    kept.push(rec);
                }
                Err((reason, detail)) => {
                    excluded.push(Excluded { id: id(), reason, detail });
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
            as_of: today.to_string(),
            admitted_by_consent,
            near_matches,
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
                    scope: Some("training".into()),
                    granted: Some("2025-01-01".into()),
                    expires: None,
                },
                ConsentEntry {
                    consent: "c-no".into(),
                    contributor: Some("ana".into()),
                    scope: Some("training".into()),
                    granted: Some(false.into()),
                    expires: None,
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
    // ---- identity matching (issue 16, class 1) ----

    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use unicode_normalization::UnicodeNormalization;

    /// Spaces a name may carry between or around its words: ASCII, tab, no-break, em, ideographic,
    /// narrow no-break, zero-width space.
    const SPACES: [&str; 7] = [" ", "\t", "\u{a0}", "\u{2003}", "\u{3000}", "\u{202f}", "\u{200b}"];
    /// Invisible characters a copy and paste can put inside a word.
    const INVISIBLE: [char; 5] = ['\u{200d}', '\u{200c}', '\u{2060}', '\u{feff}', '\u{ad}'];

    /// A random spelling of `name` that a person would read as the same name: random case per letter,
    /// fullwidth letters, NFC or NFD, invisible characters inside words, random runs of spaces between
    /// and around words.
    fn variant(name: &str, rng: &mut ChaCha8Rng) -> String {
        let form: String = match rng.random_range(0..3) {
            0 => name.nfc().collect(),
            1 => name.nfd().collect(),
            _ => name.nfkc().collect(),
        };
        let mut out = String::new();
        let spaces = |rng: &mut ChaCha8Rng, min: usize| -> String {
            (0..rng.random_range(min..=3)).map(|_| SPACES[rng.random_range(0..SPACES.len())]).collect()
        };
        out.push_str(&spaces(rng, 0));
        for (w, word) in form.split(' ').enumerate() {
            if w > 0 {
                // At least one real space between words (a zero-width space also separates words).
                out.push_str(SPACES[rng.random_range(0..SPACES.len())]);
                out.push_str(&spaces(rng, 0));
            }
            for c in word.chars() {
                let c = match rng.random_range(0..3) {
                    0 => c.to_uppercase().next().unwrap_or(c),
                    1 => c.to_lowercase().next().unwrap_or(c),
                    _ => c,
                };
                if c.is_ascii_alphabetic() && rng.random_bool(0.2) {
                    out.push(char::from_u32(c as u32 - 0x21 + 0xff01).unwrap()); // fullwidth form
                } else {
                    out.push(c);
                }
                if rng.random_bool(0.05) {
                    out.push(INVISIBLE[rng.random_range(0..INVISIBLE.len())]);
                }
            }
        }
        out.push_str(&spaces(rng, 0));
        out
    }

    fn withdrawing(names: &[&str]) -> Policy {
        Policy {
            withdrawn: Withdrawals::from_entries(names.iter().map(|n| Withdrawal {
                contributor: n.to_string(),
                withdrawn: Some("2026-02-11".into()),
                reason: None,
            })),
            ..ledger_policy()
        }
    }

    #[test]
    fn withdrawn_contributor_written_differently_is_refused() {
        // The examples of issue 16.
        let p = withdrawing(&["Corwin Ashby"]);
        let g = p.apply(vec![
            doc("a", Some(Public), Some("corwin ashby"), None),
            doc("b", Some(Public), Some(" Corwin Ashby "), None),
            doc("c", Some(Public), Some("Corwin  Ashby"), None),
            doc("d", Some(Public), Some("Ｃｏｒｗｉｎ Ａｓｈｂｙ"), None),
            doc("e", Some(Public), Some("Corwin\u{a0}Ashby"), None),
            doc("keep", Some(Public), Some("Corwin Ashcroft"), None),
        ]);
        assert_eq!(kept_ids(&g), ["keep"]);
        assert!(g.audit().excluded.iter().all(|e| e.reason == R::Withdrawn));
    }

    #[test]
    fn property_every_spelling_of_a_withdrawn_name_or_consent_id_matches() {
        let names = ["Corwin Ashby", "Zoë Ångström-Nuñez", "Þórunn Ægisdóttir", "Maren Tolliver", "ana"];
        let p = Policy {
            ledger: ConsentLedger::from_entries([ConsentEntry {
                consent: "C-Ana-1".into(),
                contributor: Some("Ana María".into()),
                scope: Some("training".into()),
                granted: Some("2025-01-01".into()),
                expires: None,
            }]),
            ..withdrawing(&names)
        };
        let mut rng = ChaCha8Rng::seed_from_u64(16);
        for round in 0..300 {
            let name = names[round % names.len()];
            let v = variant(name, &mut rng);
            assert_eq!(identity_key(&v), identity_key(name), "{v:?} vs {name:?}");
            assert!(p.withdrawn.contains(&v), "{v:?}");
            let g = p.apply(vec![doc("w", Some(Public), Some(&v), None)]);
            assert_eq!(reasons(&g), [("w".to_string(), R::Withdrawn)], "{v:?}");
            // The same spellings of a consent's owner and id admit a community record.
            let who = variant("Ana María", &mut rng);
            let id = variant("c-ana-1", &mut rng);
            let g = p.apply(vec![doc("c", Some(Community), Some(&who), Some(&id))]);
            assert_eq!(kept_ids(&g), ["c"], "{who:?} {id:?}: {:?}", g.audit().excluded);
            assert_eq!(g.audit().admitted_by_consent["C-Ana-1"].ids, ["c"]);
        }
        // Different names stay different.
        for other in ["Corwin Ashbury", "Zoe Angstrom-Nunez", "Maren Tolliverson", "anna"] {
            assert!(!p.withdrawn.contains(other), "{other}");
        }
    }

    #[test]
    fn a_consent_of_a_withdrawn_contributor_excludes_records_naming_no_contributor() {
        let mut p = withdrawing(&["Ana"]);
        p.require_consent = vec![];
        let g = p.apply(vec![doc("x", Some(Public), None, Some("c-ana"))]);
        assert_eq!(reasons(&g), [("x".to_string(), R::Withdrawn)]);
    }

    #[test]
    fn near_matches_of_withdrawn_names_are_kept_and_listed_in_the_audit() {
        let p = withdrawing(&["Corwin Ashby", "ben"]);
        let g = p.apply(vec![
            doc("typo", Some(Public), Some("Corwin Ashbey"), None),
            doc("swap", Some(Public), Some("Korwin Ashbi"), None),
            doc("glued", Some(Public), Some("CorwinAshby"), None),
            doc("far", Some(Public), Some("Carwen Ashford"), None),
            doc("short", Some(Public), Some("bea"), None), // 3 letters: 1 edit is another name
        ]);
        assert_eq!(kept_ids(&g), ["typo", "swap", "glued", "far", "short"]);
        let near: Vec<(&str, usize)> = g.audit().near_matches.iter().map(|n| (n.id.as_str(), n.distance)).collect();
        assert_eq!(near, [("typo", 1), ("swap", 2), ("glued", 1)]);
        assert!(g.audit().near_matches.iter().all(|n| n.withdrawn == "Corwin Ashby"));
    }

    // ---- consent terms (issue 16, class 3) ----

    fn entry(id: &str, scope: Option<&str>, granted: Value, expires: Option<&str>) -> ConsentEntry {
        ConsentEntry {
            consent: id.into(),
            contributor: Some("ana".into()),
            scope: scope.map(Into::into),
            granted: Some(granted),
            expires: expires.map(Into::into),
        }
    }

    #[test]
    fn consent_scope_and_dates_are_honoured() {
        let p = Policy {
            ledger: ConsentLedger::from_entries([
                entry("ok", Some("training"), "2026-01-01".into(), None),
                entry("both", Some("Display-only, TRAINING"), "2026-01-01".into(), Some("2026-07-01")),
                entry("today", Some("training"), "2026-03-01".into(), None),
                entry("display", Some("display-only"), "2026-01-01".into(), None),
                entry("noscope", None, "2026-01-01".into(), None),
                entry("future", Some("training"), "2026-03-02".into(), None),
                entry("expired", Some("training"), "2025-01-01".into(), Some("2026-03-01")),
                entry("baddate", Some("training"), "soon".into(), None),
            ]),
            as_of: NaiveDate::from_ymd_opt(2026, 3, 1),
            ..Policy::default()
        };
        let ids = ["ok", "both", "today", "display", "noscope", "future", "expired", "baddate"];
        let g = p.apply(ids.iter().map(|c| doc(&format!("r-{c}"), Some(Community), Some("ana"), Some(*c))).collect());
        assert_eq!(kept_ids(&g), ["r-ok", "r-both", "r-today"]);
        assert!(g.audit().excluded.iter().all(|e| e.reason == R::ConsentTerms), "{:?}", g.audit().excluded);
        let detail = |id: &str| g.audit().excluded.iter().find(|e| e.id == id).unwrap().detail.clone();
        assert!(detail("r-display").contains("display-only"));
        assert!(detail("r-future").contains("2026-03-02"));
        assert!(detail("r-expired").contains("expired"));
        assert_eq!(g.audit().as_of, "2026-03-01");
        let used: Vec<(&str, usize)> =
            g.audit().admitted_by_consent.iter().map(|(k, u)| (k.as_str(), u.records)).collect();
        assert_eq!(used, [("both", 1), ("ok", 1), ("today", 1)]);
        // Public records need no consent and are not listed.
        let g = p.apply(vec![doc("pub", Some(Public), None, None)]);
        assert!(g.audit().admitted_by_consent.is_empty());
    }

    #[test]
    fn property_consent_terms_over_random_scopes_and_dates() {
        let today = NaiveDate::from_ymd_opt(2026, 3, 1).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(16);
        let spell = |rng: &mut ChaCha8Rng, w: &str| -> String {
            let cased: String = w
                .chars()
                .map(|c| if rng.random_bool(0.5) { c.to_ascii_uppercase() } else { c })
                .collect();
            format!("{}{cased}{}", SPACES[rng.random_range(0..3)], SPACES[rng.random_range(0..3)])
        };
        let mut admitted_any = (false, false);
        for i in 0..400 {
            // Scopes: one or two words, `training` spelled any way or another use altogether.
            let others = ["display-only", "research", "archive", "train", "trainings", "no training", ""];
            let has_training = rng.random_bool(0.5);
            let mut words = vec![if has_training { spell(&mut rng, "training") } else { others[rng.random_range(0..others.len())].to_string() }];
            if rng.random_bool(0.4) {
                let (at, other) = (rng.random_range(0..2), others[rng.random_range(0..3)]);
                let extra = spell(&mut rng, other);
                words.insert(at, extra);
            }
            let scope = words.join(if rng.random_bool(0.5) { "," } else { ";" });
            let granted = today + chrono::Duration::days(rng.random_range(-400..40));
            let expires = rng.random_bool(0.5).then(|| today + chrono::Duration::days(rng.random_range(-40..400)));
            let e = ConsentEntry {
                consent: format!("c{i}"),
                contributor: Some("ana".into()),
                scope: Some(scope.clone()),
                granted: Some(granted.to_string().into()),
                expires: expires.map(|d| d.to_string().into()),
            };
            let p = Policy { ledger: ConsentLedger::from_entries([e]), as_of: Some(today), ..Policy::default() };
            let g = p.apply(vec![doc("r", Some(Personal), Some("ana"), Some(&format!("c{i}")))]);
            let want = has_training && granted <= today && expires.is_none_or(|x| x > today);
            assert_eq!(g.len() == 1, want, "scope {scope:?} granted {granted} expires {expires:?}: {:?}", g.audit().excluded);
            if want {
                assert_eq!(g.audit().admitted_by_consent[&format!("c{i}")].ids, ["r"]);
            } else {
                assert_eq!(reasons(&g), [("r".to_string(), R::ConsentTerms)]);
            }
            admitted_any = (admitted_any.0 | want, admitted_any.1 | !want);
        }
        assert_eq!(admitted_any, (true, true), "both outcomes were generated");
    }

    #[test]
    fn ledger_and_withdrawal_dates_must_be_dates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.jsonl");
        std::fs::write(
            &path,
            "{\"consent\":\"c1\",\"scope\":\"training\",\"granted\":\"2025-01-01\"}\n{\"consent\":\"c2\",\"scope\":\"training\",\"granted\":\"next week\"}\n",
        )
        .unwrap();
        let e = ConsentLedger::load(&path).unwrap_err();
        assert_eq!((e.line, e.field.as_deref()), (Some(2), Some("granted")), "{e}");
        std::fs::write(&path, "{\"contributor\":\"x\",\"withdrawn\":\"2025-13-01\"}\n").unwrap();
        let e = Withdrawals::load(&path).unwrap_err();
        assert_eq!((e.line, e.field.as_deref()), (Some(1), Some("withdrawn")), "{e}");
    }

    #[test]
    fn a_policy_that_repeats_a_key_is_refused() {
        // TOML forbids it; this pins that our reader keeps refusing (a second `forbid = []` would
        // otherwise let everything through).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, "forbid = [\"sacred\", \"personal\"]\ntreat_unclassified_as_public = false\nforbid = []\n").unwrap();
        let e = Policy::load(&path).unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");
    }

    #[test]
    fn policy_and_project_config_are_read_whatever_their_bom_and_line_endings() {
        // Windows editors save TOML with a byte-order mark and CRLF; a BOM that broke parsing would make
        // the policy unreadable (refused), one silently skipped would lose the first key (`forbid`).
        // The toml crate already accepts a leading BOM (this passed with plain `std::fs` reads too); the
        // test pins that for both files whichever reader is used.
        let body = "forbid = [\"sacred\", \"personal\"]\ntreat_unclassified_as_public = false\n";
        for (bom, crlf) in [(false, false), (true, false), (false, true), (true, true)] {
            let dir = tempfile::tempdir().unwrap();
            let mut text = if crlf { body.replace('\n', "\r\n") } else { body.to_string() };
            if bom {
                text.insert(0, crate::io::text::BOM);
            }
            std::fs::create_dir_all(dir.path().join("rules")).unwrap();
            std::fs::write(dir.path().join("rules/p.toml"), &text).unwrap();
            let policy = Policy::load(&dir.path().join("rules/p.toml")).unwrap();
            assert_eq!(policy.forbid, vec![Classification::Sacred, Classification::Personal], "bom {bom} crlf {crlf}");
            let config = if bom { "\u{feff}policy = \"rules/p.toml\"\n" } else { "policy = \"rules/p.toml\"\n" };
            std::fs::write(dir.path().join("tunelab.toml"), config).unwrap();
            std::fs::create_dir_all(dir.path().join("data")).unwrap();
            let found = Policy::discover(&dir.path().join("data")).unwrap().unwrap();
            assert!(found.ends_with("rules/p.toml"), "bom {bom}: {}", found.display());
        }
    }

    // ---- which policy applies (issue 16, class 4) ----

    #[test]
    fn policy_is_found_from_the_data_not_the_working_directory() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("archive/governance")).unwrap();
        std::fs::create_dir_all(root.join("archive/pairs/deep")).unwrap();
        std::fs::write(root.join("archive/governance/policy.toml"), "").unwrap();
        std::fs::write(root.join("archive/pairs/deep/p.jsonl"), "").unwrap();
        let found = Policy::discover(&root.join("archive/pairs/deep/p.jsonl")).unwrap().unwrap();
        assert!(found.ends_with("archive/governance/policy.toml"), "{}", found.display());
        assert!(Policy::discover(&root.join("archive/pairs")).unwrap().is_some());
        // A project config names it.
        std::fs::create_dir_all(root.join("other/data")).unwrap();
        std::fs::write(root.join("other/tunelab.toml"), "policy = \"rules/p.toml\"\n").unwrap();
        std::fs::create_dir_all(root.join("other/rules")).unwrap();
        std::fs::write(root.join("other/rules/p.toml"), "treat_unclassified_as_public = true\n").unwrap();
        let p = Policy::resolve(None, &root.join("other/data")).unwrap();
        assert!(p.file.as_ref().unwrap().ends_with("rules/p.toml") && p.treat_unclassified_as_public);
        // An explicit file wins.
        let p = Policy::resolve(Some(&root.join("other/rules/p.toml")), &root.join("archive/pairs")).unwrap();
        assert!(p.treat_unclassified_as_public);
    }

    #[test]
    fn without_a_policy_only_public_records_pass() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Policy::resolve(None, dir.path()).unwrap();
        assert!(p.file.is_none() && p.not_found.is_some());
        p.treat_unclassified_as_public = true; // the opt-in does not help without a policy
        let g = p.apply(vec![
            doc("pub", Some(Public), Some("ana"), None),
            doc("com", Some(Community), Some("ana"), Some("c-ana")),
            doc("per", Some(Personal), Some("ana"), Some("c-ana")),
            doc("unc", None, None, None),
            doc("sac", Some(Sacred), None, None),
        ]);
        assert_eq!(kept_ids(&g), ["pub"]);
        assert_eq!(
            reasons(&g),
            [
                ("com".to_string(), R::NoPolicy),
                ("per".to_string(), R::NoPolicy),
                ("unc".to_string(), R::NoPolicy),
                ("sac".to_string(), R::Sacred),
            ]
        );
        assert!(g.audit().excluded[0].detail.contains("--policy"), "{}", g.audit().excluded[0].detail);
    }
}

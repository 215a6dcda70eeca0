//! Corpora: documents from JSONL (`{"id","title","text"}`) or a folder of markdown files.
//!
//! (Readers to be written by the data work; the [`Document`] type is shared by search and mining.)

use serde::{Deserialize, Serialize};

use super::governance::Governance;

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

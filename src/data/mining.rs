//! Training pairs mined from a corpus, as a starting set for contrastive fine-tuning:
//! title → body and heading → section (`{"query": heading, "positive": section text, "doc_id"}`).
//! Each pair carries its document's governance fields, and its `doc_id` so splits keep a document's
//! pairs together. Empty sections give no pair.
//!
//! ```
//! use tunelab::data::corpus::parse_markdown;
//! use tunelab::data::mining::mine_pairs;
//! let doc = parse_markdown("tides", "# Tides\nThe sea rises.\n## Neap tides\nSmall ones.\n## Empty\n").unwrap();
//! let pairs = mine_pairs(&[doc]);
//! let got: Vec<(&str, &str)> = pairs.iter().map(|p| (p.query.as_str(), p.positive.as_str())).collect();
//! assert_eq!(got, [("Tides", "The sea rises.\n## Neap tides\nSmall ones.\n## Empty"), ("Neap tides", "Small ones.")]);
//! ```

use super::corpus::{Document, sections};
use super::formats::EmbeddingPair;

/// The document's body without its title heading (the text a title should retrieve).
pub(crate) fn body_without_title(doc: &Document) -> String {
    let mut removed = false;
    let lines: Vec<&str> = doc
        .text
        .lines()
        .filter(|l| {
            let is_title = !removed && l.trim_start_matches('#').trim() == doc.title && l.starts_with("# ");
            removed |= is_title;
            !is_title
        })
        .collect();
    lines.join("\n").trim().to_string()
}

fn pair(doc: &Document, id: String, query: &str, positive: String) -> EmbeddingPair {
    EmbeddingPair {
        query: query.to_string(),
        positive,
        doc_id: Some(doc.id.clone()),
        ..Default::default()
    }
    .with_meta(Some(id), doc.governance.clone())
}

/// The title → body pair of a document (`None` when title or body is empty). Id: `<doc id>#title`.
pub fn title_pair(doc: &Document) -> Option<EmbeddingPair> {
    let body = body_without_title(doc);
    (!doc.title.trim().is_empty() && !body.is_empty())
        .then(|| pair(doc, format!("{}#title", doc.id), doc.title.trim(), body))
}

/// Heading → section pairs for every non-empty section under a heading, except the title's own
/// section (the title pair covers it). Ids: `<doc id>#s<n>`, numbering the document's sections.
pub fn section_pairs(doc: &Document) -> Vec<EmbeddingPair> {
    sections(&doc.text)
        .into_iter()
        .enumerate()
        .filter(|(_, s)| !s.heading_path.is_empty() && !s.text.is_empty())
        .filter(|(_, s)| !(s.heading_path.len() == 1 && s.heading() == doc.title))
        .map(|(n, s)| pair(doc, format!("{}#s{n}", doc.id), s.heading(), s.text.clone()))
        .collect()
}

/// Title → body and heading → section pairs for every document, in corpus order.
pub fn mine_pairs(docs: &[Document]) -> Vec<EmbeddingPair> {
    docs.iter()
        .flat_map(|d| title_pair(d).into_iter().chain(section_pairs(d)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::corpus::parse_markdown;
    use crate::data::governance::Classification;

    #[test]
    fn pairs_carry_doc_id_and_governance_and_skip_empty_sections() {
        let md = "---\nid: kelp\nclassification: community\ncontributor: ana\nconsent: c-1\n---\n# Kelp forests\n\nKelp grows fast.\n\n## Where\n\nCold water.\n\n### Depth\n\n## Uses\n\nFood and fertiliser.\n";
        let doc = parse_markdown("x", md).unwrap();
        let pairs = mine_pairs(std::slice::from_ref(&doc));
        let got: Vec<(&str, &str, &str)> = pairs
            .iter()
            .map(|p| (p.id.as_deref().unwrap(), p.query.as_str(), p.positive.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "kelp#title",
                    "Kelp forests",
                    "Kelp grows fast.\n\n## Where\n\nCold water.\n\n### Depth\n\n## Uses\n\nFood and fertiliser."
                ),
                ("kelp#s1", "Where", "Cold water."),
                ("kelp#s3", "Uses", "Food and fertiliser."),
            ]
        );
        for p in &pairs {
            assert_eq!(p.doc_id.as_deref(), Some("kelp"));
            assert_eq!(p.classification, Some(Classification::Community));
            assert_eq!(
                (p.contributor.as_deref(), p.consent.as_deref()),
                (Some("ana"), Some("c-1"))
            );
        }
    }

    #[test]
    fn document_without_body_gives_nothing() {
        let doc = parse_markdown("empty", "# Just a title\n").unwrap();
        assert!(mine_pairs(&[doc]).is_empty());
    }
}

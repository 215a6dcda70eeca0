//! Reading text files the same way everywhere: one place decides what a byte-order mark means.
//!
//! Editors on Windows (Notepad, Excel's "CSV UTF-8") start UTF-8 files with a byte-order mark,
//! U+FEFF. Left in place it becomes part of the first field — a qrels file's first query id
//! reads `\u{feff}q1` and silently matches nothing. Every reader of qrels, runs, JSONL, TOML and
//! corpus markdown goes through [`strip_bom`] (or [`read_text`]), so a BOM is accepted and removed,
//! never half-handled. CRLF line ends are left to the parsers (each treats `\r` as whitespace).
//!
//! ```
//! use tunelab::io::text::strip_bom;
//! assert_eq!(strip_bom("\u{feff}q1 0 d1 1\n"), "q1 0 d1 1\n");
//! assert_eq!(strip_bom("q1 0 d1 1\n"), "q1 0 d1 1\n");
//! ```
use std::path::Path;

/// The UTF-8 byte-order mark (U+FEFF, bytes EF BB BF).
pub const BOM: char = '\u{feff}';

/// `text` without one leading byte-order mark.
pub fn strip_bom(text: &str) -> &str {
    text.strip_prefix(BOM).unwrap_or(text)
}

/// `bytes` without one leading UTF-8 byte-order mark.
pub fn strip_bom_bytes(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(bytes)
}

/// Why [`read_text`] failed.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    #[error("{}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not UTF-8 text: {source}", path.display())]
    NotUtf8 {
        path: std::path::PathBuf,
        source: std::str::Utf8Error,
    },
}

/// Read a UTF-8 text file, dropping a leading byte-order mark (see the module docs).
pub fn read_text(path: &Path) -> Result<String, TextError> {
    let mut bytes = std::fs::read(path).map_err(|source| TextError::Io {
        path: path.into(),
        source,
    })?;
    let bom = bytes.len() - strip_bom_bytes(&bytes).len();
    bytes.drain(..bom);
    String::from_utf8(bytes).map_err(|e| TextError::NotUtf8 {
        path: path.into(),
        source: e.utf8_error(),
    })
}

/// Read a UTF-8 text file like `std::fs::read_to_string`, dropping a leading byte-order mark.
/// The `io::Error` form, for readers that wrap I/O errors in their own type.
pub fn read_to_string(path: &Path) -> std::io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    Ok(match text.strip_prefix(BOM) {
        Some(rest) => rest.to_string(),
        None => text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_one_leading_bom_is_removed() {
        assert_eq!(strip_bom("\u{feff}\u{feff}a"), "\u{feff}a");
        assert_eq!(strip_bom("a\u{feff}"), "a\u{feff}");
        assert_eq!(strip_bom(""), "");
    }

    #[test]
    fn read_text_drops_the_bom_and_names_the_file_on_bad_utf8() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.txt");
        std::fs::write(&p, b"\xef\xbb\xbfhello\r\n").unwrap();
        assert_eq!(read_text(&p).unwrap(), "hello\r\n");
        assert_eq!(read_to_string(&p).unwrap(), "hello\r\n");
        std::fs::write(&p, b"\xef\xbb\xbf\xff").unwrap();
        assert!(read_text(&p).unwrap_err().to_string().contains("x.txt"));
    }
}

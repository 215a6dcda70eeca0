//! sentence-transformers folders and plain safetensors files for (tuned) BERT and EmbeddingGemma encoders.
//!
//! The folder is what `SentenceTransformer(dir)` loads: `config.json`, `model.safetensors` with
//! Hugging Face `BertModel` tensor names, the tokenizer files, `modules.json` (Transformer →
//! Pooling → Normalize), `1_Pooling/config.json`, `sentence_bert_config.json` and
//! `config_sentence_transformers.json`. `tunelab_manifest.json` records where the weights came
//! from, the caller's manifest (training run, governance audit) and a SHA-256 of every file.
//!
//! The folder is written under a temporary name beside the target and renamed into place when
//! complete, so an error never leaves a half-written model, and an existing folder is never
//! overwritten.
//!
//! ```no_run
//! use tunelab::export::sentence_transformers::write_folder;
//! use tunelab::model::bert::SentenceEncoder;
//! let encoder = SentenceEncoder::load("models/all-MiniLM-L6-v2", &burn::tensor::Device::flex()).unwrap();
//! let summary = write_folder(&encoder, "out/minilm-tuned".as_ref(), serde_json::json!({"run": "demo"})).unwrap();
//! assert!(summary.files.contains_key("model.safetensors"));
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::io::hf::{HfError, ModuleEntry, SentenceBertConfig, write_json};
use crate::io::safetensors::{WeightsError, write_f32};
use crate::model::bert::SentenceEncoder;
use crate::model::gemma::GemmaEncoder;

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{path} already exists: choose a new folder (exports never overwrite)")]
    Exists { path: PathBuf },
    #[error("cannot write {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error(transparent)]
    Json(#[from] HfError),
    #[error("cannot save tokenizer to {path}: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
}

/// What was written.
#[derive(Debug, Clone, Serialize)]
pub struct ExportSummary {
    pub dir: PathBuf,
    /// Relative file name → SHA-256 (hex).
    pub files: BTreeMap<String, String>,
}

/// Tokenizer files copied from the source folder when present. `tokenizer.model` (SentencePiece:
/// Gemma) is what llama.cpp's converter reads a Gemma vocabulary from.
const TOKENIZER_FILES: [&str; 6] =
    ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "tokenizer.model", "added_tokens.json"];

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Io { path: path.to_path_buf(), source }
}

/// Write `encoder` as a sentence-transformers folder at `dir` (which must not exist yet).
/// `manifest` is stored under `"manifest"` in `tunelab_manifest.json` (e.g. the training run's
/// config and governance audit).
pub fn write_folder(
    encoder: &SentenceEncoder,
    dir: &Path,
    manifest: serde_json::Value,
) -> Result<ExportSummary, ExportError> {
    write_atomically(dir, |tmp| write_contents(encoder, tmp, manifest))
}

/// Write an EmbeddingGemma encoder as a sentence-transformers folder at `dir` (which must not
/// exist yet): `Gemma3TextModel` weights, the tokenizer, `modules.json` with Transformer →
/// Pooling → one `N_Dense` folder per Dense module (`config.json` + `model.safetensors`) →
/// Normalize, and the named prompts. Adapters are fused. Reloads in sentence-transformers and in
/// [`GemmaEncoder::load`].
pub fn write_gemma_folder(
    encoder: &GemmaEncoder,
    dir: &Path,
    manifest: serde_json::Value,
) -> Result<ExportSummary, ExportError> {
    write_atomically(dir, |tmp| write_gemma_contents(encoder, tmp, manifest))
}

/// Run `write` on a temporary folder beside `dir` and rename it into place when it succeeds.
fn write_atomically(
    dir: &Path,
    write: impl FnOnce(&Path) -> Result<BTreeMap<String, String>, ExportError>,
) -> Result<ExportSummary, ExportError> {
    if dir.exists() {
        return Err(ExportError::Exists { path: dir.to_path_buf() });
    }
    let name = dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "export".into());
    let tmp = dir.with_file_name(format!(".{name}.partial-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    match write(&tmp) {
        Ok(files) => {
            std::fs::rename(&tmp, dir).map_err(io_err(dir))?;
            Ok(ExportSummary { dir: dir.to_path_buf(), files })
        }
        Err(e) => {
            // Only our own temporary folder is removed; nothing the user had is touched.
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

/// Copy the source folder's tokenizer files, or save the in-memory tokenizer.
fn write_tokenizer(
    source: Option<&crate::io::hf::ModelFolder>,
    tokenizer: &crate::io::tokenizer::TextTokenizer,
    dir: &Path,
) -> Result<(), ExportError> {
    let copied = match source {
        Some(src) => {
            let mut any = false;
            for f in TOKENIZER_FILES {
                let from = src.transformer_dir.join(f);
                if from.exists() {
                    std::fs::copy(&from, dir.join(f)).map_err(io_err(&dir.join(f)))?;
                    any = true;
                }
            }
            any
        }
        None => false,
    };
    if !copied {
        let path = dir.join("tokenizer.json");
        tokenizer.inner().save(&path, false).map_err(|e| ExportError::Tokenizer { path: path.clone(), reason: e.to_string() })?;
        write_json(
            &dir.join("tokenizer_config.json"),
            &serde_json::json!({"model_max_length": tokenizer.max_len(), "tokenizer_class": "PreTrainedTokenizerFast"}),
        )?;
    }
    Ok(())
}

fn write_gemma_contents(
    encoder: &GemmaEncoder,
    dir: &Path,
    manifest: serde_json::Value,
) -> Result<BTreeMap<String, String>, ExportError> {
    let model = &encoder.model.transformer;
    let config_path = dir.join("config.json");
    let mut config = serde_json::to_value(&model.config).map_err(|e| HfError::Json { path: config_path.clone(), source: e })?;
    if let Some(obj) = config.as_object_mut() {
        obj.insert("architectures".into(), serde_json::json!(["Gemma3TextModel"]));
        obj.insert("model_type".into(), serde_json::json!("gemma3_text"));
    }
    write_json(&config_path, &config)?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    write_f32(dir.join("model.safetensors"), &model.hf_tensors(), Some(meta.clone()))?;
    write_tokenizer(encoder.source.as_ref(), &encoder.tokenizer, dir)?;

    let module = |idx: usize, path: String, class: &str| ModuleEntry {
        idx,
        name: idx.to_string(),
        path,
        kind: format!("sentence_transformers.models.{class}"),
    };
    let mut modules = vec![module(0, String::new(), "Transformer"), module(1, "1_Pooling".into(), "Pooling")];
    std::fs::create_dir_all(dir.join("1_Pooling")).map_err(io_err(&dir.join("1_Pooling")))?;
    write_json(&dir.join("1_Pooling/config.json"), &encoder.pooling.to_config(model.config.hidden_size))?;
    for dense in &encoder.model.dense {
        let idx = modules.len();
        let sub = format!("{idx}_Dense");
        let path = dir.join(&sub);
        std::fs::create_dir_all(&path).map_err(io_err(&path))?;
        let (cfg, tensors) = dense.st_files();
        write_json(&path.join("config.json"), &cfg)?;
        write_f32(path.join("model.safetensors"), &tensors, Some(meta.clone()))?;
        modules.push(module(idx, sub, "Dense"));
    }
    if encoder.normalize {
        let idx = modules.len();
        let sub = format!("{idx}_Normalize");
        std::fs::create_dir_all(dir.join(&sub)).map_err(io_err(&dir.join(&sub)))?;
        modules.push(module(idx, sub, "Normalize"));
    }
    write_json(&dir.join("modules.json"), &modules)?;
    let lowercase = encoder.source.as_ref().is_some_and(|s| s.sentence_bert.do_lower_case);
    write_json(
        &dir.join("sentence_bert_config.json"),
        &SentenceBertConfig { max_seq_length: Some(encoder.max_seq_len()), do_lower_case: lowercase },
    )?;
    let default_name = encoder.source.as_ref().and_then(|s| s.st_config.default_prompt_name.clone());
    write_json(
        &dir.join("config_sentence_transformers.json"),
        &serde_json::json!({
            "__version__": {"tunelab": crate::version()},
            "prompts": encoder.prompts,
            "default_prompt_name": default_name,
            "similarity_fn_name": "cosine",
        }),
    )?;

    let mut files = BTreeMap::new();
    hash_tree(dir, dir, &mut files)?;
    let record = serde_json::json!({
        "tunelab_version": crate::version(),
        "created": chrono::Utc::now().to_rfc3339(),
        "format": "sentence-transformers",
        "architecture": "EmbeddingGemma (Gemma3TextModel)",
        "source_model": encoder.source.as_ref().map(|s| s.root.display().to_string()).or_else(|| encoder.gguf.as_ref().map(|p| p.display().to_string())),
        "prompts": encoder.prompts,
        "files_sha256": files,
        "manifest": manifest,
    });
    write_json(&dir.join("tunelab_manifest.json"), &record)?;
    Ok(files)
}

fn write_contents(
    encoder: &SentenceEncoder,
    dir: &Path,
    manifest: serde_json::Value,
) -> Result<BTreeMap<String, String>, ExportError> {
    let model = &encoder.model;
    let hidden = model.config.hidden_size;

    // config.json: the model's own config (unknown fields preserved), marked as a BertModel.
    let mut config =
        serde_json::to_value(&model.config).map_err(|e| HfError::Json { path: dir.join("config.json"), source: e })?;
    if let Some(obj) = config.as_object_mut() {
        obj.insert("architectures".into(), serde_json::json!(["BertModel"]));
        obj.insert("model_type".into(), serde_json::json!("bert"));
    }
    write_json(&dir.join("config.json"), &config)?;

    // model.safetensors: transformers refuses files without `format` metadata.
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    write_f32(dir.join("model.safetensors"), &model.hf_tensors(), Some(meta))?;

    // Tokenizer: copy the original files (byte-identical behaviour in Python); a model built in
    // memory saves its tokenizer.json and a minimal tokenizer_config.json.
    write_tokenizer(encoder.source.as_ref(), &encoder.tokenizer, dir)?;

    // The sentence-transformers pipeline.
    let module = |idx: usize, path: &str, class: &str| ModuleEntry {
        idx,
        name: idx.to_string(),
        path: path.into(),
        kind: format!("sentence_transformers.models.{class}"),
    };
    let mut modules = vec![module(0, "", "Transformer"), module(1, "1_Pooling", "Pooling")];
    std::fs::create_dir_all(dir.join("1_Pooling")).map_err(io_err(&dir.join("1_Pooling")))?;
    write_json(&dir.join("1_Pooling/config.json"), &encoder.pooling.to_config(hidden))?;
    if encoder.normalize {
        modules.push(module(2, "2_Normalize", "Normalize"));
        std::fs::create_dir_all(dir.join("2_Normalize")).map_err(io_err(&dir.join("2_Normalize")))?;
    }
    write_json(&dir.join("modules.json"), &modules)?;
    let lowercase = encoder.source.as_ref().is_some_and(|s| s.sentence_bert.do_lower_case);
    write_json(
        &dir.join("sentence_bert_config.json"),
        &SentenceBertConfig { max_seq_length: Some(encoder.max_seq_len()), do_lower_case: lowercase },
    )?;

    // Prompts: sentence-transformers only prepends, so templates (`{text}`) are left out.
    let mut prompts = serde_json::Map::new();
    for (k, v) in [("query", &encoder.prompts.query), ("document", &encoder.prompts.document)] {
        if let Some(p) = v.as_ref().filter(|p| !p.contains("{text}")) {
            prompts.insert(k.into(), serde_json::json!(p));
        }
    }
    write_json(
        &dir.join("config_sentence_transformers.json"),
        &serde_json::json!({
            "__version__": {"tunelab": crate::version()},
            "prompts": prompts,
            "default_prompt_name": null,
            "similarity_fn_name": "cosine",
        }),
    )?;

    let mut files = BTreeMap::new();
    hash_tree(dir, dir, &mut files)?;
    let record = serde_json::json!({
        "tunelab_version": crate::version(),
        "created": chrono::Utc::now().to_rfc3339(),
        "format": "sentence-transformers",
        "source_model": encoder.source.as_ref().map(|s| s.root.display().to_string()),
        "prompts": encoder.prompts,
        "files_sha256": files,
        "manifest": manifest,
    });
    write_json(&dir.join("tunelab_manifest.json"), &record)?;
    Ok(files)
}

fn hash_tree(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) -> Result<(), ExportError> {
    let mut entries: Vec<_> = std::fs::read_dir(dir).map_err(io_err(dir))?.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        if path.is_dir() {
            hash_tree(root, &path, out)?;
        } else {
            let bytes = std::fs::read(&path).map_err(io_err(&path))?;
            let rel = path.strip_prefix(root).unwrap_or(&path).to_string_lossy().replace('\\', "/");
            out.insert(rel, hex::encode(Sha256::digest(&bytes)));
        }
    }
    Ok(())
}

/// Write the encoder's weights alone as one safetensors file with Hugging Face names; the
/// manifest (JSON) goes into the header's `__metadata__` under `tunelab_manifest`.
pub fn write_safetensors(
    encoder: &SentenceEncoder,
    path: &Path,
    manifest: serde_json::Value,
) -> Result<(), ExportError> {
    let meta = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("tunelab_manifest".to_string(), manifest.to_string()),
    ]);
    Ok(write_f32(path, &encoder.model.hf_tensors(), Some(meta))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::safetensors::SafetensorsFile;
    use burn::tensor::Device;

    const WORDS: [&str; 12] = ["the", "cat", "sat", "on", "mat", "dog", "ran", "far", "a", "red", "ball", "fast"];

    #[test]
    fn folder_round_trips_through_our_loader() {
        let dev = Device::flex();
        let enc = SentenceEncoder::random_tiny(&WORDS, 42, &dev);
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("tiny-st");
        let summary = write_folder(&enc, &dir, serde_json::json!({"seed": 42})).unwrap();
        for f in [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "modules.json",
            "1_Pooling/config.json",
            "sentence_bert_config.json",
        ] {
            assert!(summary.files.contains_key(f), "{f} missing from {:?}", summary.files.keys());
        }
        let back = SentenceEncoder::load(&dir, &dev).unwrap();
        assert!(back.normalize);
        assert_eq!(back.pooling, enc.pooling);
        assert_eq!(back.max_seq_len(), enc.max_seq_len());
        let texts = ["the cat sat on the mat", "a red ball", "dog ran far fast", ""];
        let a = enc.embed(&texts, 2).unwrap();
        let b = back.embed(&texts, 3).unwrap();
        for (x, y) in a.iter().zip(&b) {
            let d = x.iter().zip(y).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max);
            assert!(d < 1e-6, "reloaded export differs by {d}");
        }
        let manifest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("tunelab_manifest.json")).unwrap()).unwrap();
        assert_eq!(manifest["manifest"]["seed"], 42);
        // The hash recorded for the weights is the hash of the file on disk.
        let on_disk = hex::encode(Sha256::digest(std::fs::read(dir.join("model.safetensors")).unwrap()));
        assert_eq!(manifest["files_sha256"]["model.safetensors"], on_disk);
    }

    #[test]
    fn never_overwrites() {
        let dev = Device::flex();
        let enc = SentenceEncoder::random_tiny(&WORDS, 1, &dev);
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("keep.txt"), "user data").unwrap();
        let err = write_folder(&enc, tmp.path(), serde_json::Value::Null).unwrap_err().to_string();
        assert!(err.contains("already exists"), "{err}");
        assert_eq!(std::fs::read_to_string(tmp.path().join("keep.txt")).unwrap(), "user data");
    }

    #[test]
    fn plain_safetensors_has_hf_names_and_manifest() {
        let dev = Device::flex();
        let enc = SentenceEncoder::random_tiny(&WORDS, 1, &dev);
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("w.safetensors");
        write_safetensors(&enc, &path, serde_json::json!({"audit": "ok"})).unwrap();
        let f = SafetensorsFile::open(&path).unwrap();
        assert_eq!(f.shape("encoder.layer.1.attention.self.query.weight"), Some(&[32usize, 32][..]));
        assert_eq!(
            f.shape("encoder.layer.0.intermediate.dense.weight"),
            Some(&[128usize, 32][..]),
            "[out, in] as in transformers"
        );
        assert!(f.header_metadata().unwrap()["tunelab_manifest"].contains("audit"));
    }
}

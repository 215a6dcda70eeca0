//! Hugging Face and sentence-transformers model folders.
//!
//! A sentence-transformers folder is a Hugging Face model (`config.json`, `model.safetensors`,
//! `tokenizer.json`) plus `modules.json`, which lists the pipeline: `Transformer` → `Pooling`
//! (`1_Pooling/config.json`) → optional `Normalize`. The `Normalize` module has no files, so its
//! entry in `modules.json` is the only sign of it. `sentence_bert_config.json` sets the maximum
//! sequence length; `config_sentence_transformers.json` may name prompts.
//!
//! A plain Hugging Face folder without `modules.json` is read the way sentence-transformers reads
//! one: mean pooling, no normalisation.
//!
//! ```no_run
//! use tunelab::io::hf::ModelFolder;
//! let folder = ModelFolder::open("models/all-MiniLM-L6-v2").unwrap();
//! assert!(folder.normalize);
//! assert_eq!(folder.sentence_bert.max_seq_length, Some(256));
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Why a model folder could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HfError {
    #[error("model folder {dir} does not exist")]
    NoFolder { dir: PathBuf },
    #[error("model folder {dir} has no {file}{hint}")]
    MissingFile { dir: PathBuf, file: String, hint: String },
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: invalid JSON: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("{path}: {field}: {reason}")]
    Invalid { path: PathBuf, field: String, reason: String },
}

/// Read and deserialize a JSON file, naming the file (and serde's line/column) on error; a key given
/// twice in one object is an error.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, HfError> {
    let text = crate::io::text::read_to_string(path).map_err(|source| HfError::Io { path: path.to_path_buf(), source })?;
    // A config that gives a key twice is ambiguous (serde would keep the last): refuse it, naming the key.
    crate::data::jsonl::parse_strict(&text).map_err(|source| HfError::Json { path: path.to_path_buf(), source })?;
    serde_json::from_str(&text).map_err(|source| HfError::Json { path: path.to_path_buf(), source })
}

/// Serialize to pretty JSON and write (atomically: temp file, then rename).
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), HfError> {
    let text =
        serde_json::to_string_pretty(value).map_err(|source| HfError::Json { path: path.to_path_buf(), source })?;
    let tmp = path.with_extension("json.part");
    std::fs::write(&tmp, text + "\n").map_err(|source| HfError::Io { path: tmp.clone(), source })?;
    std::fs::rename(&tmp, path).map_err(|source| HfError::Io { path: path.to_path_buf(), source })
}

/// One entry of `modules.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleEntry {
    pub idx: usize,
    pub name: String,
    pub path: String,
    #[serde(rename = "type")]
    pub kind: String,
}

impl ModuleEntry {
    /// The class name without its Python module path (`sentence_transformers.models.Pooling` → `Pooling`).
    pub fn class(&self) -> &str {
        self.kind.rsplit('.').next().unwrap_or(&self.kind)
    }
}

/// `1_Pooling/config.json`, in either spelling sentence-transformers has used: the legacy
/// `pooling_mode_*_token(s)` booleans with `word_embedding_dimension` (concatenated in the fixed
/// order cls, max, mean, mean_sqrt_len_tokens, weightedmean, lasttoken), or, since version 6,
/// `pooling_mode` (a name or a list, concatenated in list order) with `embedding_dimension`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PoolingConfig {
    #[serde(alias = "embedding_dimension", default, skip_serializing_if = "Option::is_none")]
    pub word_embedding_dimension: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooling_mode: Option<OneOrMany>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooling_mode_cls_token: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooling_mode_mean_tokens: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooling_mode_max_tokens: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooling_mode_mean_sqrt_len_tokens: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooling_mode_weightedmean_tokens: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooling_mode_lasttoken: Option<bool>,
    /// Whether prompt tokens take part in pooling (default true).
    #[serde(default = "default_true")]
    pub include_prompt: bool,
}

/// A JSON value that is one string or a list of strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl PoolingConfig {
    /// The sentence-transformers mode names (`cls`, `max`, `mean`, `mean_sqrt_len_tokens`,
    /// `weightedmean`, `lasttoken`) in concatenation order. Like sentence-transformers, a legacy
    /// config with no mode switched on means `mean`.
    pub fn mode_names(&self) -> Vec<String> {
        match &self.pooling_mode {
            Some(OneOrMany::One(m)) => vec![m.clone()],
            Some(OneOrMany::Many(ms)) => ms.clone(),
            None => {
                let legacy = [
                    (self.pooling_mode_cls_token, "cls"),
                    (self.pooling_mode_max_tokens, "max"),
                    (self.pooling_mode_mean_tokens, "mean"),
                    (self.pooling_mode_mean_sqrt_len_tokens, "mean_sqrt_len_tokens"),
                    (self.pooling_mode_weightedmean_tokens, "weightedmean"),
                    (self.pooling_mode_lasttoken, "lasttoken"),
                ];
                let on: Vec<String> =
                    legacy.iter().filter(|(b, _)| b.unwrap_or(false)).map(|(_, n)| n.to_string()).collect();
                if on.is_empty() { vec!["mean".into()] } else { on }
            }
        }
    }
}

fn default_true() -> bool {
    true
}

/// `sentence_bert_config.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SentenceBertConfig {
    pub max_seq_length: Option<usize>,
    #[serde(default)]
    pub do_lower_case: bool,
}

/// `config_sentence_transformers.json` (only the fields we use; others are ignored).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SentenceTransformersConfig {
    /// Named prompts, e.g. `{"query": "query: ", "passage": "passage: "}`.
    #[serde(default)]
    pub prompts: BTreeMap<String, String>,
    /// A prompt sentence-transformers applies when `encode` is called without one.
    #[serde(default)]
    pub default_prompt_name: Option<String>,
}

/// `tokenizer_config.json` (only the fields we use).
#[derive(Debug, Clone, Default, Deserialize)]
struct TokenizerConfig {
    /// Often a huge sentinel (1e30) meaning "no limit"; kept as f64 to parse it.
    model_max_length: Option<f64>,
}

/// A model folder, its files found and its sentence-transformers configuration read.
#[derive(Debug, Clone)]
pub struct ModelFolder {
    /// The folder given.
    pub root: PathBuf,
    /// Where the Hugging Face model lives (the root, or e.g. `0_Transformer/` in old folders).
    pub transformer_dir: PathBuf,
    /// `modules.json`, empty for a plain Hugging Face folder.
    pub modules: Vec<ModuleEntry>,
    /// The pooling configuration, if `modules.json` lists a `Pooling` module.
    pub pooling: Option<PoolingConfig>,
    /// Where `pooling` was read from.
    pub pooling_path: Option<PathBuf>,
    /// Folders of the `Dense` modules between pooling and normalisation, in pipeline order
    /// (EmbeddingGemma's `2_Dense`, `3_Dense`). Only encoders that run them accept them.
    pub dense: Vec<PathBuf>,
    /// Whether `modules.json` lists a `Normalize` module.
    pub normalize: bool,
    pub sentence_bert: SentenceBertConfig,
    pub st_config: SentenceTransformersConfig,
    /// `tokenizer.json` (checked to exist).
    pub tokenizer_json: PathBuf,
    /// `tokenizer_config.json`'s `model_max_length`, when it is a real limit.
    pub tokenizer_max_length: Option<usize>,
}

impl ModelFolder {
    /// Find and read the configuration files of a model folder.
    ///
    /// Fails, naming the folder and file, when `config.json` or `tokenizer.json` is missing, when
    /// `modules.json` lists a module we cannot run (e.g. `LSTM`), or when a JSON file is invalid.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, HfError> {
        let root = dir.as_ref().to_path_buf();
        if !root.is_dir() {
            return Err(HfError::NoFolder { dir: root });
        }
        let modules_path = root.join("modules.json");
        let modules: Vec<ModuleEntry> = if modules_path.exists() { read_json(&modules_path)? } else { Vec::new() };

        let mut transformer_dir = root.clone();
        let mut pooling = None;
        let mut pooling_path = None;
        let mut normalize = false;
        let mut dense = Vec::new();
        for m in &modules {
            match m.class() {
                "Transformer" => transformer_dir = root.join(&m.path),
                "Pooling" => {
                    let dir = root.join(&m.path);
                    let path = dir.join("config.json");
                    if !path.exists() {
                        return Err(HfError::MissingFile {
                            dir,
                            file: "config.json".into(),
                            hint: " (listed as the Pooling module in modules.json)".into(),
                        });
                    }
                    pooling = Some(read_json::<PoolingConfig>(&path)?);
                    pooling_path = Some(path);
                }
                "Normalize" => normalize = true,
                "Dense" => {
                    let dir = root.join(&m.path);
                    if !dir.join("config.json").exists() {
                        return Err(HfError::MissingFile {
                            dir,
                            file: "config.json".into(),
                            hint: " (listed as a Dense module in modules.json)".into(),
                        });
                    }
                    dense.push(dir);
                }
                other => {
                    return Err(HfError::Invalid {
                        path: modules_path.clone(),
                        field: format!("module {} ({})", m.idx, m.kind),
                        reason: format!("module type '{other}' is not supported (Transformer, Pooling, Dense, Normalize are)"),
                    });
                }
            }
        }

        if !transformer_dir.join("config.json").exists() {
            return Err(HfError::MissingFile { dir: transformer_dir, file: "config.json".into(), hint: String::new() });
        }
        let tokenizer_json = transformer_dir.join("tokenizer.json");
        if !tokenizer_json.exists() {
            let hint = if transformer_dir.join("vocab.txt").exists() {
                " (vocab.txt alone is not enough: save the fast tokenizer, e.g. `AutoTokenizer.from_pretrained(dir).save_pretrained(dir)`)"
            } else {
                " (the tokenizer is needed to embed text)"
            };
            return Err(HfError::MissingFile {
                dir: transformer_dir,
                file: "tokenizer.json".into(),
                hint: hint.into(),
            });
        }

        let optional = |name: &str| -> Option<PathBuf> {
            [transformer_dir.join(name), root.join(name)].into_iter().find(|p| p.exists())
        };
        let sentence_bert = match optional("sentence_bert_config.json") {
            Some(p) => read_json(&p)?,
            None => SentenceBertConfig::default(),
        };
        let st_config = match optional("config_sentence_transformers.json") {
            Some(p) => read_json(&p)?,
            None => SentenceTransformersConfig::default(),
        };
        let tokenizer_max_length = match optional("tokenizer_config.json") {
            Some(p) => {
                read_json::<TokenizerConfig>(&p)?.model_max_length.filter(|&n| n > 0.0 && n < 1e9).map(|n| n as usize)
            }
            None => None,
        };

        // A folder without modules.json: sentence-transformers falls back to mean pooling.
        if modules.is_empty() {
            pooling = None;
            pooling_path = None;
        }
        Ok(Self {
            root,
            transformer_dir,
            modules,
            pooling,
            pooling_path,
            dense,
            normalize,
            sentence_bert,
            st_config,
            tokenizer_json,
            tokenizer_max_length,
        })
    }

    /// `config.json` of the transformer.
    pub fn config_path(&self) -> PathBuf {
        self.transformer_dir.join("config.json")
    }

    /// The maximum sequence length the way sentence-transformers picks it:
    /// `sentence_bert_config.json`'s `max_seq_length`, else the smaller of the model's position
    /// limit and the tokenizer's `model_max_length`; never above the position limit.
    pub fn max_seq_length(&self, max_position_embeddings: usize) -> usize {
        let fallback = self.tokenizer_max_length.map_or(max_position_embeddings, |t| t.min(max_position_embeddings));
        self.sentence_bert.max_seq_length.unwrap_or(fallback).min(max_position_embeddings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn st_folder() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "config.json", r#"{"max_position_embeddings": 512}"#);
        write(d, "tokenizer.json", "{}");
        write(
            d,
            "modules.json",
            r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
                {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"},
                {"idx":2,"name":"2","path":"2_Normalize","type":"sentence_transformers.models.Normalize"}]"#,
        );
        write(
            d,
            "1_Pooling/config.json",
            r#"{"word_embedding_dimension": 8, "pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false}"#,
        );
        write(d, "sentence_bert_config.json", r#"{"max_seq_length": 128, "do_lower_case": false}"#);
        dir
    }

    #[test]
    fn reads_modules_pooling_and_normalize_without_its_folder() {
        let dir = st_folder();
        let f = ModelFolder::open(dir.path()).unwrap();
        assert!(f.normalize, "2_Normalize is listed in modules.json even though its folder is absent");
        let p = f.pooling.clone().unwrap();
        assert_eq!(p.mode_names(), vec!["cls"]);
        assert_eq!(p.word_embedding_dimension, Some(8));
        assert!(p.include_prompt);
        assert_eq!(f.max_seq_length(512), 128);
        assert_eq!(f.max_seq_length(64), 64, "never above the position limit");
    }

    #[test]
    fn pooling_config_both_spellings() {
        // sentence-transformers >= 6 writes `pooling_mode` + `embedding_dimension`.
        let new: PoolingConfig =
            serde_json::from_str(r#"{"embedding_dimension": 4, "pooling_mode": ["mean", "cls"]}"#).unwrap();
        assert_eq!(new.mode_names(), vec!["mean", "cls"]);
        assert_eq!(new.word_embedding_dimension, Some(4));
        let one: PoolingConfig = serde_json::from_str(r#"{"embedding_dimension": 4, "pooling_mode": "max"}"#).unwrap();
        assert_eq!(one.mode_names(), vec!["max"]);
        // Legacy booleans concatenate in the fixed order, whatever order the keys are written in.
        let legacy: PoolingConfig = serde_json::from_str(
            r#"{"word_embedding_dimension": 4, "pooling_mode_mean_tokens": true, "pooling_mode_cls_token": true}"#,
        )
        .unwrap();
        assert_eq!(legacy.mode_names(), vec!["cls", "mean"]);
        let none: PoolingConfig = serde_json::from_str(r#"{"word_embedding_dimension": 4}"#).unwrap();
        assert_eq!(none.mode_names(), vec!["mean"]);
    }

    #[test]
    fn missing_tokenizer_names_folder_and_file() {
        let dir = st_folder();
        std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
        let msg = ModelFolder::open(dir.path()).unwrap_err().to_string();
        assert!(msg.contains("tokenizer.json") && msg.contains(&dir.path().display().to_string()), "{msg}");
    }

    #[test]
    fn unsupported_module_is_refused() {
        let dir = st_folder();
        write(
            dir.path(),
            "modules.json",
            r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
                {"idx":1,"name":"1","path":"1_LSTM","type":"sentence_transformers.models.LSTM"}]"#,
        );
        let msg = ModelFolder::open(dir.path()).unwrap_err().to_string();
        assert!(msg.contains("modules.json") && msg.contains("LSTM"), "{msg}");
        // A Dense module is read (its folder must hold config.json).
        write(
            dir.path(),
            "modules.json",
            r#"[{"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
                {"idx":1,"name":"1","path":"2_Dense","type":"sentence_transformers.models.Dense"}]"#,
        );
        let msg = ModelFolder::open(dir.path()).unwrap_err().to_string();
        assert!(msg.contains("2_Dense") && msg.contains("config.json"), "{msg}");
        write(dir.path(), "2_Dense/config.json", "{}");
        assert_eq!(ModelFolder::open(dir.path()).unwrap().dense, vec![dir.path().join("2_Dense")]);
    }

    #[test]
    fn bad_json_names_file() {
        let dir = st_folder();
        write(dir.path(), "1_Pooling/config.json", "{not json");
        let msg = ModelFolder::open(dir.path()).unwrap_err().to_string();
        assert!(msg.contains("1_Pooling") && msg.contains("config.json"), "{msg}");
    }
    #[test]
    fn a_config_giving_a_key_twice_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "config.json", r#"{"num_hidden_layers": 2, "hidden_size": 8, "num_hidden_layers": 6}"#);
        let e = read_json::<serde_json::Value>(&dir.path().join("config.json")).unwrap_err();
        assert!(e.to_string().contains("duplicate key `num_hidden_layers`"), "{e}");
    }
}

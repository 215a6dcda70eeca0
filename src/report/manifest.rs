//! Run directories and their `manifest.json`: everything needed to say what produced a run.
//!
//! A run directory is `reports/<experiment>/<run-id>/` with a `plots/` and (when inputs are
//! stored) an `inputs/` subdirectory. Run ids are `<UTC timestamp>-<8 hex>`; the hex part is a
//! SHA-256 of the experiment name, the clock in nanoseconds, the process id and an attempt
//! counter, so two runs started in the same second still get distinct directories. Nothing in a
//! run directory is ever overwritten: directories are created with `create_dir` and files with
//! `create_new`, and an existing path is an error.
//!
//! ```
//! use tunelab::report::manifest::{Manifest, RunDir};
//!
//! let root = tempfile::tempdir().unwrap();
//! let run = RunDir::create(root.path(), "bm25-vs-hybrid").unwrap();
//! let mut manifest = Manifest::new(&run, 42, serde_json::json!({"k": 100}), "cpu");
//! manifest.record_timing("search", std::time::Duration::from_millis(1500));
//! let path = manifest.write(&run).unwrap();
//! assert_eq!(Manifest::read(&path).unwrap(), manifest);
//! assert!(manifest.write(&run).is_err()); // never overwritten
//! ```

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ReportError;

/// Current manifest layout version.
pub const MANIFEST_SCHEMA: u32 = 1;

/// A freshly created `reports/<experiment>/<run-id>/` directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunDir {
    pub experiment: String,
    pub run_id: String,
    path: PathBuf,
}

impl RunDir {
    /// Create `<reports_root>/<experiment>/<new run id>/` and its `plots/` subdirectory.
    /// `experiment` may contain ASCII letters, digits, `.`, `_` and `-` (a single path component).
    pub fn create(reports_root: &Path, experiment: &str) -> Result<Self, ReportError> {
        let valid = !experiment.is_empty()
            && !experiment.starts_with('.')
            && experiment.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !valid {
            return Err(ReportError::Invalid(format!(
                "experiment name {experiment:?}: use ASCII letters, digits, '.', '_' or '-' (not leading '.')"
            )));
        }
        let parent = reports_root.join(experiment);
        fs::create_dir_all(&parent).map_err(ReportError::io(&parent))?;
        let now = chrono::Utc::now();
        for attempt in 0u32..64 {
            let mut h = Sha256::new();
            h.update(experiment.as_bytes());
            h.update(now.timestamp_nanos_opt().unwrap_or_default().to_le_bytes());
            h.update(std::process::id().to_le_bytes());
            h.update(attempt.to_le_bytes());
            let run_id =
                format!("{}-{}", now.format("%Y%m%dT%H%M%SZ"), &hex::encode(h.finalize())[..8]);
            let path = parent.join(&run_id);
            match fs::create_dir(&path) {
                Ok(()) => {
                    let plots = path.join("plots");
                    fs::create_dir(&plots).map_err(ReportError::io(&plots))?;
                    return Ok(Self { experiment: experiment.to_string(), run_id, path });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(ReportError::Io { path, source: e }),
            }
        }
        Err(ReportError::Invalid(format!(
            "could not find a free run id under {}",
            parent.display()
        )))
    }

    /// The run directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `plots/` inside the run directory.
    pub fn plots_dir(&self) -> PathBuf {
        self.path.join("plots")
    }

    /// Copy an input file into `inputs/<name>` (never overwriting) and describe it for the
    /// manifest's [`EvaluationSpec`]. `name` must be a plain file name.
    pub fn store_input(&self, src: &Path, name: &str) -> Result<StoredInput, ReportError> {
        if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
            return Err(ReportError::Invalid(format!(
                "stored input name {name:?} must be a plain file name"
            )));
        }
        let dir = self.path.join("inputs");
        if !dir.exists() {
            fs::create_dir(&dir).map_err(ReportError::io(&dir))?;
        }
        let bytes = fs::read(src).map_err(ReportError::io(src))?;
        let dest = dir.join(name);
        super::write_new(&dest, &bytes)?;
        Ok(StoredInput {
            path: format!("inputs/{name}"),
            sha256: hex::encode(Sha256::digest(&bytes)),
            bytes: bytes.len() as u64,
            source: Some(src.display().to_string()),
        })
    }
}

/// Where the code came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitInfo {
    pub commit: String,
    /// Uncommitted changes to tracked or untracked (not ignored) files.
    pub dirty: bool,
}

impl GitInfo {
    /// `git rev-parse HEAD` and `git status --porcelain` in `dir`; `None` outside a repository
    /// or without git.
    pub fn detect(dir: &Path) -> Option<Self> {
        let out = Command::new("git").args(["rev-parse", "HEAD"]).current_dir(dir).output().ok()?;
        if !out.status.success() {
            return None;
        }
        let commit = String::from_utf8(out.stdout).ok()?.trim().to_string();
        let status =
            Command::new("git").args(["status", "--porcelain"]).current_dir(dir).output().ok()?;
        let dirty = !status.status.success() || !status.stdout.iter().all(u8::is_ascii_whitespace);
        Some(Self { commit, dirty })
    }
}

/// SHA-256 of one input file or directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputHash {
    /// The path as given.
    pub path: String,
    pub sha256: String,
    /// Total size in bytes (all files, for a directory).
    pub bytes: u64,
    /// Number of files, for a directory (see [`hash_dir`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<u64>,
}

impl InputHash {
    /// Hash a file ([`hash_file`]) or a directory ([`hash_dir`]).
    pub fn of(path: &Path) -> Result<Self, ReportError> {
        let meta = fs::metadata(path).map_err(ReportError::io(path))?;
        Ok(if meta.is_dir() {
            let d = hash_dir(path)?;
            InputHash { path: path.display().to_string(), sha256: d.sha256, bytes: d.bytes, files: Some(d.files) }
        } else {
            InputHash { path: path.display().to_string(), sha256: hash_file(path)?, bytes: meta.len(), files: None }
        })
    }
}

/// A file copied into the run directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredInput {
    /// Relative to the run directory, `/`-separated.
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
    /// Where it was copied from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// One system's run file for `tunelab report rerun`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemRun {
    /// The system name used in `metrics.arrow`.
    pub system: String,
    pub run: StoredInput,
}

/// What `tunelab report rerun` needs to recompute the metrics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvaluationSpec {
    pub qrels: StoredInput,
    pub runs: Vec<SystemRun>,
    /// trec_eval measure names (`ndcg_cut.10`, `recip_rank`, ...).
    pub measures: Vec<String>,
    /// Seed of the randomization test and bootstrap.
    pub seed: u64,
    /// Permutations of the paired randomization test.
    pub permutations: u64,
    /// Bootstrap resamples for the confidence intervals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<u64>,
    /// trec_eval's switches the metrics were computed with (`-c`, `-l`): a re-run without them
    /// computes different values (queries a run does not answer drop out without `-c`).
    /// Manifests written before this field read as trec_eval's defaults.
    #[serde(default)]
    pub options: crate::eval::metrics::EvalOptions,
}

/// A named duration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    pub name: String,
    pub seconds: f64,
}

/// `manifest.json`: seed, configuration, code and data provenance of one run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub schema: u32,
    pub experiment: String,
    pub run_id: String,
    /// RFC 3339, UTC.
    pub created_at: String,
    pub seed: u64,
    /// The full configuration of the run, as given.
    pub config: serde_json::Value,
    /// `None` outside a git checkout.
    pub git: Option<GitInfo>,
    pub crate_version: String,
    /// The device the run used (e.g. `cpu`).
    pub device: String,
    /// SHA-256 of every input file or directory.
    pub inputs: Vec<InputHash>,
    /// The governance audit of the data used (counts by class, excluded ids, hash).
    pub governance: serde_json::Value,
    pub timings: Vec<Timing>,
    /// Versions of tools the numbers depend on (SQLite, trec_eval, ...).
    pub tools: std::collections::BTreeMap<String, String>,
    /// Present when the run can be re-evaluated by `tunelab report rerun`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<EvaluationSpec>,
}

impl Manifest {
    /// A manifest for `run`, with the git state of the current directory, the crate version,
    /// the SQLite version and the current time filled in.
    pub fn new(
        run: &RunDir,
        seed: u64,
        config: serde_json::Value,
        device: impl Into<String>,
    ) -> Self {
        let mut tools = std::collections::BTreeMap::new();
        tools.insert("sqlite".to_string(), rusqlite::version().to_string());
        Self {
            schema: MANIFEST_SCHEMA,
            experiment: run.experiment.clone(),
            run_id: run.run_id.clone(),
            created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            seed,
            config,
            git: std::env::current_dir().ok().and_then(|d| GitInfo::detect(&d)),
            crate_version: crate::version().to_string(),
            device: device.into(),
            inputs: Vec::new(),
            governance: serde_json::Value::Null,
            timings: Vec::new(),
            tools,
            evaluation: None,
        }
    }

    /// Hash an input file or directory and record it.
    pub fn add_input(&mut self, path: &Path) -> Result<&InputHash, ReportError> {
        self.inputs.push(InputHash::of(path)?);
        Ok(self.inputs.last().expect("just pushed"))
    }

    /// Record a named duration.
    pub fn record_timing(&mut self, name: impl Into<String>, duration: Duration) {
        self.timings.push(Timing { name: name.into(), seconds: duration.as_secs_f64() });
    }

    /// Run `f`, record how long it took under `name`, return its result.
    pub fn time<T>(&mut self, name: impl Into<String>, f: impl FnOnce() -> T) -> T {
        let start = std::time::Instant::now();
        let out = f();
        self.record_timing(name, start.elapsed());
        out
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a manifest always serializes")
    }

    /// Write `manifest.json` into the run directory (never overwriting); returns its path.
    pub fn write(&self, run: &RunDir) -> Result<PathBuf, ReportError> {
        if run.run_id != self.run_id || run.experiment != self.experiment {
            return Err(ReportError::Invalid(format!(
                "manifest is for {}/{} but the run directory is {}/{}",
                self.experiment, self.run_id, run.experiment, run.run_id
            )));
        }
        let path = run.path().join("manifest.json");
        super::write_new(&path, (self.to_json() + "\n").as_bytes())?;
        Ok(path)
    }

    /// Read a `manifest.json`; JSON errors name the file, line and column.
    pub fn read(path: &Path) -> Result<Self, ReportError> {
        let text = fs::read_to_string(path).map_err(ReportError::io(path))?;
        serde_json::from_str(&text)
            .map_err(|source| ReportError::Json { path: path.to_path_buf(), source })
    }
}

/// SHA-256 of a file's bytes, lowercase hex.
pub fn hash_file(path: &Path) -> Result<String, ReportError> {
    let mut f = fs::File::open(path).map_err(ReportError::io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(ReportError::io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// The digest of a directory tree (see [`hash_dir`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirHash {
    pub sha256: String,
    pub files: u64,
    pub bytes: u64,
}

/// Deterministic SHA-256 of a directory: every regular file below it (symlinks followed) is
/// listed as `<sha256 of its bytes>  <relative path with '/'>\n`, the lines sorted by path
/// bytes, and the digest is the SHA-256 of that listing — the same text `sha256sum` prints, so
/// `find . -type f | LC_ALL=C sort | sed 's|^\./||' | xargs sha256sum | sha256sum` agrees.
pub fn hash_dir(dir: &Path) -> Result<DirHash, ReportError> {
    let mut files = Vec::new();
    collect_files(dir, dir, &mut files)?;
    files.sort();
    let mut listing = String::new();
    let mut bytes = 0u64;
    for rel in &files {
        let full = dir.join(rel);
        bytes += fs::metadata(&full).map_err(ReportError::io(&full))?.len();
        listing.push_str(&format!("{}  {}\n", hash_file(&full)?, rel));
    }
    Ok(DirHash {
        sha256: hex::encode(Sha256::digest(listing.as_bytes())),
        files: files.len() as u64,
        bytes,
    })
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<(), ReportError> {
    for entry in fs::read_dir(dir).map_err(ReportError::io(dir))? {
        let entry = entry.map_err(ReportError::io(dir))?;
        let path = entry.path();
        let meta = fs::metadata(&path).map_err(ReportError::io(&path))?;
        if meta.is_dir() {
            collect_files(root, &path, out)?;
        } else if meta.is_file() {
            let rel = path.strip_prefix(root).expect("below root");
            let rel: Vec<String> =
                rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
            out.push(rel.join("/"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn put(path: &Path, bytes: &[u8]) {
        fs::File::create(path).unwrap().write_all(bytes).unwrap();
    }

    #[test]
    fn sha256_matches_the_fips_test_vector() {
        // FIPS 180-2 appendix B.1: SHA-256("abc").
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("abc.txt");
        put(&p, b"abc");
        assert_eq!(
            hash_file(&p).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn dir_hash_is_the_sorted_sha256sum_listing() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        put(&dir.path().join("b.txt"), b"abc");
        put(&dir.path().join("sub/a.txt"), b"");
        put(&dir.path().join("A.txt"), b"abc");
        // Listing in byte order "A.txt" < "b.txt" < "sub/a.txt"; SHA-256("") is the FIPS empty vector.
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let listing = format!("{abc}  A.txt\n{abc}  b.txt\n{empty}  sub/a.txt\n");
        let d = hash_dir(dir.path()).unwrap();
        assert_eq!(d.sha256, hex::encode(Sha256::digest(listing.as_bytes())));
        assert_eq!((d.files, d.bytes), (3, 6));
    }

    #[test]
    fn run_dirs_are_unique_and_names_validated() {
        let root = tempfile::tempdir().unwrap();
        let a = RunDir::create(root.path(), "exp").unwrap();
        let b = RunDir::create(root.path(), "exp").unwrap();
        assert_ne!(a.run_id, b.run_id);
        assert!(a.plots_dir().is_dir() && b.path().starts_with(root.path().join("exp")));
        for bad in ["", "../x", "a/b", ".hidden", "sp ace"] {
            assert!(RunDir::create(root.path(), bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn manifest_round_trips_and_records_inputs() {
        let root = tempfile::tempdir().unwrap();
        let run = RunDir::create(root.path(), "exp").unwrap();
        let src = root.path().join("qrels.txt");
        put(&src, b"q1 0 d1 1\n");
        let mut m = Manifest::new(&run, 7, serde_json::json!({"a": [1, 2]}), "cpu");
        m.add_input(&src).unwrap();
        let data = tempfile::tempdir().unwrap();
        put(&data.path().join("x"), b"abc");
        assert_eq!(m.add_input(data.path()).unwrap().files, Some(1));
        assert!(m.add_input(&root.path().join("missing")).is_err());
        let stored = run.store_input(&src, "qrels.txt").unwrap();
        assert_eq!(stored.sha256, m.inputs[0].sha256);
        assert!(run.store_input(&src, "qrels.txt").is_err(), "second copy must not overwrite");
        m.evaluation = Some(EvaluationSpec {
            qrels: stored,
            runs: vec![],
            measures: vec!["map".into()],
            seed: 7,
            permutations: 10_000,
            bootstrap: Some(1000),
            options: Default::default(),
        });
        let x = m.time("sleep", || 3);
        assert_eq!(x, 3);
        let path = m.write(&run).unwrap();
        assert_eq!(Manifest::read(&path).unwrap(), m);
    }

    #[test]
    fn bad_manifest_json_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("manifest.json");
        put(&p, b"{\n  \"schema\": 1,\n  oops\n}");
        let err = Manifest::read(&p).unwrap_err().to_string();
        assert!(err.contains("manifest.json") && err.contains("line 3"), "{err}");
    }
}

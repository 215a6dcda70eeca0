//! A training run's output folder belongs to one run.
//!
//! Training into a folder that holds another run's files mixes them: its numbered adapters and
//! checkpoints stay beside the new ones, its `loss.jsonl` continues, and a later resume picks
//! up its latest checkpoint (other layers, other rank). So a folder with files in it is refused
//! unless the run continues the run in it (resume) or replaces it (overwrite), and the files a
//! killed run left half-written (`*.tmp`, `*.part`) are removed first: nothing reads them, and
//! left in place they would make an empty folder look used.
//!
//! ```
//! use tunelab::train::run_folder::{claim, Claim};
//! let dir = tempfile::tempdir().unwrap();
//! claim(dir.path(), Claim::Fresh).unwrap(); // empty: fine
//! std::fs::write(dir.path().join("adapters.safetensors"), b"old").unwrap();
//! assert!(claim(dir.path(), Claim::Fresh).is_err()); // another run's files
//! claim(dir.path(), Claim::Overwrite).unwrap(); // replaced
//! assert!(!dir.path().join("adapters.safetensors").exists());
//! ```
use std::path::{Path, PathBuf};

/// How a run means to use its output folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// A new run: the folder must be missing or empty.
    Fresh,
    /// Continue the run whose files are in the folder.
    Resume,
    /// Replace the run in the folder: its run files are removed first.
    Overwrite,
}

/// Why the folder cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RunFolderError {
    #[error(
        "{}: already holds another run's files ({}); pass --resume to continue that run, --overwrite to replace it, or choose an empty folder",
        path.display(), found.join(", ")
    )]
    NotEmpty { path: PathBuf, found: Vec<String> },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RunFolderError + '_ {
    move |source| RunFolderError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Whether a name is a temporary that an interrupted write leaves behind (checkpoint folders
/// `step-N.tmp`, safetensors `*.safetensors.part`, atomic text writes `*.tmp`).
pub fn is_stale_temporary(name: &str) -> bool {
    name.ends_with(".tmp") || name.ends_with(".part") || name.contains(".partial-")
}

/// Remove interrupted-write temporaries in `dir` and `dir/checkpoints`; returns what was removed.
pub fn remove_stale_temporaries(dir: &Path) -> Result<Vec<PathBuf>, RunFolderError> {
    let mut removed = Vec::new();
    for d in [dir.to_path_buf(), dir.join("checkpoints")] {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let e = e.map_err(io(&d))?;
            let path = e.path();
            if !is_stale_temporary(&e.file_name().to_string_lossy()) {
                continue;
            }
            if path.is_dir() {
                std::fs::remove_dir_all(&path).map_err(io(&path))?;
            } else {
                std::fs::remove_file(&path).map_err(io(&path))?;
            }
            removed.push(path);
        }
    }
    Ok(removed)
}

/// Whether a file or folder name is one a training run writes (what `Overwrite` removes).
fn is_run_file(name: &str) -> bool {
    matches!(
        name,
        "adapters.safetensors"
            | "adapter_config.json"
            | "loss.jsonl"
            | "governance_audit.json"
            | "checkpoints"
            | "best"
            | "final"
            | "model"
    ) || name
        .strip_suffix("_adapters.safetensors")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Make `dir` ready for a run as `how` says (see the module docs); creates it when missing.
pub fn claim(dir: &Path, how: Claim) -> Result<(), RunFolderError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    remove_stale_temporaries(dir)?;
    let mut found: Vec<String> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()
        .map_err(io(dir))?;
    found.sort();
    match how {
        Claim::Resume => Ok(()),
        Claim::Fresh if found.is_empty() => Ok(()),
        Claim::Fresh => Err(RunFolderError::NotEmpty {
            path: dir.to_path_buf(),
            found,
        }),
        Claim::Overwrite => {
            // Only what a run writes is removed; anything else of the user's stays.
            for name in found.iter().filter(|n| is_run_file(n)) {
                let path = dir.join(name);
                if path.is_dir() {
                    std::fs::remove_dir_all(&path).map_err(io(&path))?;
                } else {
                    std::fs::remove_file(&path).map_err(io(&path))?;
                }
            }
            Ok(())
        }
    }
}

/// Whether `resume_from` (a checkpoint folder, a file in one, or a run folder) lies in `dir`.
pub fn is_inside(resume_from: &Path, dir: &Path) -> bool {
    let (Ok(from), Ok(dir)) = (
        std::fs::canonicalize(resume_from),
        std::fs::canonicalize(dir),
    ) else {
        return false;
    };
    from.starts_with(&dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_temporaries_are_removed_and_do_not_count_as_a_run() {
        let dir = tempfile::tempdir().unwrap();
        let ck = dir.path().join("checkpoints");
        std::fs::create_dir_all(ck.join("step-00000004.tmp")).unwrap();
        std::fs::write(ck.join("step-00000004.tmp/state.json"), b"{").unwrap();
        std::fs::write(dir.path().join("adapters.safetensors.part"), b"half").unwrap();
        std::fs::write(dir.path().join("loss.jsonl.tmp"), b"half").unwrap();
        claim(dir.path(), Claim::Resume).unwrap();
        assert!(!ck.join("step-00000004.tmp").exists());
        // The folder still holds `checkpoints/` (empty): a run's folder.
        assert!(matches!(
            claim(dir.path(), Claim::Fresh),
            Err(RunFolderError::NotEmpty { .. })
        ));
        assert!(!dir.path().join("adapters.safetensors.part").exists());
        assert!(!dir.path().join("loss.jsonl.tmp").exists());
    }

    #[test]
    fn overwrite_removes_run_files_only() {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "adapters.safetensors",
            "0000100_adapters.safetensors",
            "loss.jsonl",
            "notes.txt",
        ] {
            std::fs::write(dir.path().join(f), b"x").unwrap();
        }
        std::fs::create_dir_all(dir.path().join("checkpoints/step-00000100")).unwrap();
        let err = claim(dir.path(), Claim::Fresh).unwrap_err().to_string();
        assert!(
            err.contains("--overwrite") && err.contains("adapters.safetensors"),
            "{err}"
        );
        claim(dir.path(), Claim::Overwrite).unwrap();
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["notes.txt"]);
    }
}

//! Training checkpoints: model parameters, optimizer state and loop state in one folder.
//!
//! `checkpoints/step-00000120/` holds `model.bpk` (burn's burnpack record of every parameter,
//! with its id), `optimizer.bpk` (AdamW moments, keyed by those ids) and `state.json`
//! ([`TrainState`]: step, position in the epoch, seed, best metric). A checkpoint is written to
//! a `.tmp` folder and renamed into place, so a crash never leaves a half-written one behind.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::ModuleOptimizer;
use serde::{Deserialize, Serialize};

/// Where the loop stands. Randomness is derived from `seed` and the position (the sampler's
/// permutation from `seed + epoch`, dropout from `seed` and `step`), so this is the whole RNG
/// state: a resumed run draws exactly what an uninterrupted one would.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps taken.
    pub step: usize,
    /// The epoch in progress and how many of its batches are done.
    pub epoch: usize,
    pub batch_in_epoch: usize,
    pub seed: u64,
    /// Best validation value so far: (metric, value, step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best: Option<(String, f64, usize)>,
    /// `--dtype f16`'s loss scaler, so a resumed run continues with the scale it had.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scaler: Option<super::loss_scale::LossScaler>,
}

/// A checkpoint could not be written or read; names the file.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {reason}")]
    Record { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    State { path: PathBuf, source: serde_json::Error },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io { path: path.to_path_buf(), source }
}

/// The folder of the checkpoint after `step` steps under `output_dir`.
pub fn checkpoint_dir(output_dir: &Path, step: usize) -> PathBuf {
    output_dir.join("checkpoints").join(format!("step-{step:08}"))
}

/// The most advanced complete checkpoint under `output_dir`, if any.
pub fn latest(output_dir: &Path) -> Option<PathBuf> {
    let entries = std::fs::read_dir(output_dir.join("checkpoints")).ok()?;
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let step: usize = name.strip_prefix("step-")?.parse().ok()?;
            e.path().join("state.json").is_file().then(|| (step, e.path()))
        })
        .max_by_key(|(step, _)| *step)
        .map(|(_, p)| p)
}

/// Write model, optimizer (when given) and state to `dir`, replacing an older copy atomically.
pub fn save<M: Module>(dir: &Path, model: &M, optim: Option<&ModuleOptimizer>, state: &TrainState) -> Result<(), CheckpointError> {
    let tmp = dir.with_extension("tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let model_path = tmp.join("model.bpk");
    model.clone().save_file(&model_path).map_err(|e| CheckpointError::Record { path: model_path.clone(), reason: e.to_string() })?;
    if let Some(optim) = optim {
        let optim_path = tmp.join("optimizer.bpk");
        optim.save(&optim_path).map_err(|e| CheckpointError::Record { path: optim_path.clone(), reason: e.to_string() })?;
    }
    let state_path = tmp.join("state.json");
    let json = serde_json::to_string_pretty(state).map_err(|source| CheckpointError::State { path: state_path.clone(), source })?;
    std::fs::write(&state_path, json).map_err(io(&state_path))?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io(dir))?;
    }
    std::fs::rename(&tmp, dir).map_err(io(dir))
}

/// Write the optimizer state and the loop state into `dir` (created if missing), for a model
/// saved there in its own format (a LoRA run saves only its adapter, not the frozen base).
/// `state.json` is written last: a folder without it is not a complete checkpoint ([`latest`]).
pub fn save_optimizer_and_state(dir: &Path, optim: &ModuleOptimizer, state: &TrainState) -> Result<(), CheckpointError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let state_path = dir.join("state.json");
    if state_path.exists() {
        std::fs::remove_file(&state_path).map_err(io(&state_path))?;
    }
    let optim_path = dir.join("optimizer.bpk");
    optim.save(&optim_path).map_err(|e| CheckpointError::Record { path: optim_path.clone(), reason: e.to_string() })?;
    let json = serde_json::to_string_pretty(state).map_err(|source| CheckpointError::State { path: state_path.clone(), source })?;
    std::fs::write(&state_path, json).map_err(io(&state_path))
}

/// Read a checkpoint's state.
pub fn load_state(dir: &Path) -> Result<TrainState, CheckpointError> {
    let path = dir.join("state.json");
    let text = crate::io::text::read_to_string(&path).map_err(io(&path))?;
    serde_json::from_str(&text).map_err(|source| CheckpointError::State { path, source })
}

/// Load parameters into `model` (same architecture; parameter ids restored, so optimizer state
/// applies to them).
pub fn load_model<M: Module>(dir: &Path, model: M) -> Result<M, CheckpointError> {
    let path = dir.join("model.bpk");
    if !path.is_file() {
        return Err(CheckpointError::Io { path, source: std::io::ErrorKind::NotFound.into() });
    }
    model.try_load_file(&path).map_err(|e| CheckpointError::Record { path, reason: e.to_string() })
}

/// Load optimizer state into `optim` (built with the same configuration and groups).
pub fn load_optimizer(dir: &Path, optim: ModuleOptimizer) -> Result<ModuleOptimizer, CheckpointError> {
    let path = dir.join("optimizer.bpk");
    if !path.is_file() {
        return Err(CheckpointError::Io { path, source: std::io::ErrorKind::NotFound.into() });
    }
    optim.load(&path).map_err(|e| CheckpointError::Record { path, reason: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::encoder::{HashedBagEncoder, TrainableEncoder};
    use burn::optim::{AdamWConfig, GradientsParams};
    use burn::tensor::Device;

    #[test]
    fn round_trip_continues_like_the_original() {
        let dir = tempfile::tempdir().unwrap();
        let device = Device::flex().autodiff();
        let step = |enc: &HashedBagEncoder, optim: &mut ModuleOptimizer| {
            let loss = enc.encode(&["a b", "c d e"]).unwrap().square().sum();
            let grads = GradientsParams::from_grads(loss.backward(), enc);
            optim.step(1e-2, enc.clone(), grads)
        };
        let mut optim = AdamWConfig::new().init();
        let enc = HashedBagEncoder::new(16, 4, 3, 0.0, 2, &device);
        let enc = step(&enc, &mut optim);
        let state = TrainState { step: 1, epoch: 0, batch_in_epoch: 1, seed: 2, best: Some(("ndcg_cut_10".into(), 0.5, 1)), loss_scaler: None };
        let ckpt = checkpoint_dir(dir.path(), 1);
        save(&ckpt, &enc, Some(&optim), &state).unwrap();
        assert_eq!(latest(dir.path()), Some(ckpt.clone()));
        assert_eq!(load_state(&ckpt).unwrap(), state);

        // A fresh model with other weights, loaded from the checkpoint, takes the same next step
        // (the second Adam step depends on the saved moments).
        let fresh = HashedBagEncoder::new(16, 4, 3, 0.0, 99, &device);
        let loaded = load_model(&ckpt, fresh).unwrap();
        let mut optim2 = load_optimizer(&ckpt, AdamWConfig::new().init()).unwrap();
        let a = step(&enc, &mut optim).embedding.val().into_data().try_to_vec::<f32>().unwrap();
        let b = step(&loaded, &mut optim2).embedding.val().into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(a, b);
        // A missing file is named.
        let err = load_optimizer(dir.path(), AdamWConfig::new().init()).err().expect("no optimizer.bpk there").to_string();
        assert!(err.contains("optimizer.bpk"), "{err}");
    }
}

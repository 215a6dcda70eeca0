//! Run-time backend selection.
//!
//! burn 0.22 dispatches on the device at run time, so one binary can hold several backends; the
//! cargo features `cpu`, `vulkan`, `metal` and `wgpu` decide which are compiled in, and
//! `--device` / `TUNELAB_DEVICE` picks one when the program runs.
//!
//! ```
//! use tunelab::device::DeviceChoice;
//! let choice: DeviceChoice = "cpu".parse().unwrap();
//! let device = choice.device().unwrap();
//! assert_eq!(choice.to_string(), "cpu");
//! # let _ = device;
//! ```

use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;

/// A backend the user can ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// burn's pure-Rust `flex` CPU backend (the default; reproducible bit for bit).
    #[default]
    Cpu,
    /// wgpu pinned to Vulkan (Linux, Windows).
    Vulkan,
    /// wgpu pinned to Metal (macOS).
    Metal,
    /// wgpu on whichever graphics API it settles on.
    Wgpu,
}

impl DeviceChoice {
    /// Every choice, in the order `doctor` reports them.
    pub const ALL: [DeviceChoice; 4] = [Self::Cpu, Self::Vulkan, Self::Metal, Self::Wgpu];

    /// The cargo feature that compiles this backend in.
    pub fn feature(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Vulkan => "vulkan",
            Self::Metal => "metal",
            Self::Wgpu => "wgpu",
        }
    }

    /// Whether this binary was built with the backend.
    pub fn compiled(self) -> bool {
        match self {
            Self::Cpu => cfg!(feature = "cpu"),
            Self::Vulkan => cfg!(feature = "vulkan"),
            Self::Metal => cfg!(feature = "metal"),
            Self::Wgpu => cfg!(feature = "wgpu"),
        }
    }

    /// The choice from `TUNELAB_DEVICE`, or the CPU when it is unset.
    pub fn from_env() -> Result<Self, DeviceError> {
        match std::env::var("TUNELAB_DEVICE") {
            Ok(v) if !v.trim().is_empty() => v.parse(),
            _ => Ok(Self::Cpu),
        }
    }

    /// The burn device for this choice (without autodiff; call `.autodiff()` to train).
    ///
    /// Fails with a message naming the cargo feature when the backend was not compiled in.
    pub fn device(self) -> Result<Device, DeviceError> {
        if !self.compiled() {
            return Err(DeviceError::NotCompiled { choice: self });
        }
        match self {
            #[cfg(feature = "cpu")]
            Self::Cpu => Ok(Device::flex()),
            #[cfg(feature = "vulkan")]
            Self::Vulkan => Ok(Device::vulkan(burn::tensor::DeviceKind::DefaultDevice)),
            #[cfg(feature = "metal")]
            Self::Metal => Ok(Device::metal(burn::tensor::DeviceKind::DefaultDevice)),
            #[cfg(feature = "wgpu")]
            Self::Wgpu => Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
            #[allow(unreachable_patterns)]
            _ => Err(DeviceError::NotCompiled { choice: self }),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.feature())
    }
}

impl FromStr for DeviceChoice {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" | "flex" => Ok(Self::Cpu),
            "vulkan" => Ok(Self::Vulkan),
            "metal" => Ok(Self::Metal),
            "wgpu" | "gpu" => Ok(Self::Wgpu),
            other => Err(DeviceError::Unknown(other.to_string())),
        }
    }
}

/// Why a device cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("unknown device '{0}': expected one of cpu, vulkan, metal, wgpu")]
    Unknown(String),
    #[error(
        "device '{choice}' is not compiled into this build: rebuild with `cargo build --features {}`",
        choice.feature()
    )]
    NotCompiled { choice: DeviceChoice },
    #[error("device '{choice}' failed to start: {reason}")]
    Failed { choice: DeviceChoice, reason: String },
}

/// What `tunelab doctor` found for one backend.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceReport {
    pub choice: DeviceChoice,
    pub compiled: bool,
    /// `None` when the device works; otherwise why not.
    pub error: Option<String>,
    /// Float dtypes with full arithmetic support on the device.
    pub dtypes: Vec<String>,
}

/// Probe a backend: start it, run a tiny matmul, list the float dtypes it computes in.
///
/// Device start-up failures in wgpu can panic; they are caught and reported as an error string.
pub fn probe(choice: DeviceChoice) -> DeviceReport {
    use burn::tensor::{DType, Tensor};
    let mut report =
        DeviceReport { choice, compiled: choice.compiled(), error: None, dtypes: Vec::new() };
    let device = match choice.device() {
        Ok(d) => d,
        Err(e) => {
            report.error = Some(e.to_string());
            return report;
        }
    };
    let outcome = std::panic::catch_unwind(|| {
        let a = Tensor::<2>::from_floats([[1.0, 2.0], [3.0, 4.0]], &device);
        let s: f32 = a.clone().matmul(a).sum().into_scalar::<f32>();
        let dtypes: Vec<String> = [("f32", DType::F32), ("f16", DType::F16), ("bf16", DType::BF16)]
            .into_iter()
            .filter(|(_, d)| device.supports_dtype(*d))
            .map(|(n, _)| n.to_string())
            .collect();
        (s, dtypes)
    });
    match outcome {
        Ok((s, dtypes)) if (s - 54.0).abs() < 1e-4 => report.dtypes = dtypes,
        Ok((s, _)) => report.error = Some(format!("self-test matmul gave {s}, expected 54")),
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panicked while starting".into());
            report.error = Some(msg)
        }
    }
    report
}

/// Total and available system memory in bytes, where the OS tells (Linux `/proc/meminfo`).
pub fn system_memory() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    };
    Some((field("MemTotal:")?, field("MemAvailable:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        assert_eq!("CPU".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
        assert_eq!("vulkan".parse::<DeviceChoice>().unwrap(), DeviceChoice::Vulkan);
        let err = "tpu".parse::<DeviceChoice>().unwrap_err().to_string();
        assert!(err.contains("tpu") && err.contains("cpu, vulkan"), "{err}");
    }

    #[test]
    fn cpu_probe_runs_a_matmul() {
        let r = probe(DeviceChoice::Cpu);
        assert!(r.error.is_none(), "{:?}", r.error);
        assert!(r.dtypes.contains(&"f32".to_string()));
    }

    #[test]
    fn uncompiled_backend_names_the_feature() {
        if !DeviceChoice::Metal.compiled() {
            let err = DeviceChoice::Metal.device().unwrap_err().to_string();
            assert!(err.contains("--features metal"), "{err}");
        }
    }
}

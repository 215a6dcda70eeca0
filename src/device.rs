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

    /// The burn device for this choice (without autodiff; call `.autodiff()` to train), started
    /// and checked with a tiny computation.
    ///
    /// Fails with a message naming the cargo feature when the backend was not compiled in, and
    /// with one line saying what is missing when it does not start: wgpu/cubecl start a GPU in
    /// their own threads and panic there (the caller then sees `RecvError`); those panics are
    /// caught and their messages kept, not printed ([`start_with`]).
    pub fn device(self) -> Result<Device, DeviceError> {
        let choice = self;
        let device = start_with(self, move || {
            let device = choice.raw_device()?;
            self_test(&device)?;
            Ok(device)
        })?;
        if choice != Self::Cpu {
            GPU_STARTED.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(device)
    }

    /// The device handle alone (GPU back-ends start lazily, at the first computation).
    fn raw_device(self) -> Result<Device, DeviceError> {
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

/// Whether this process has started a GPU device ([`DeviceChoice::device`]).
static GPU_STARTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Ends the process with `code`, for the CLI's `main` once its work is done: stdout and stderr
/// flushed, then, after a GPU device was started, `_exit` instead of `exit`.
///
/// Why: on the NVIDIA machine (H100, Vulkan, driver 580.159), `train lora --dtype f16` on the
/// tiny Qwen3 fixture printed "Adapter saved", with everything on disk, then died with SIGSEGV
/// (exit status 139) after `main` had returned, i.e. in what `exit` runs (the C libraries' exit
/// handlers, the Vulkan driver's among them, and thread-local destructors); f32 exited with 0.
/// The same run through this function exits with 0 (2026-12-07, one run each). `_exit` skips those
/// handlers; every file tunelab writes is closed before this point, and the OS releases the GPU
/// context as at any process end.
pub fn exit(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    if GPU_STARTED.load(std::sync::atomic::Ordering::SeqCst) {
        // SAFETY: `_exit` ends the process at once; nothing after it runs.
        unsafe { libc::_exit(code) }
    }
    std::process::exit(code)
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

/// Sequence width to pad a batch whose longest row has `longest` tokens to, on `device`.
///
/// GPU back-ends (cubecl: wgpu, Vulkan, Metal) compile, and with `burn/autotune` benchmark,
/// kernels for every new tensor shape. A batch padded to its own longest row is a new shape
/// almost every step: `train rerank` on an H100 (Vulkan) ran 4 iterations in 400 s, nearly all of
/// it compiling. There the width is rounded up to a multiple of [`GPU_PAD_MULTIPLE`], which bounds
/// the shapes to `max_length / 128` (MLX-LM pads to multiples of 32 for the same reason). On the
/// CPU every padded position costs time and nothing is compiled, so the width stays `longest`.
///
/// ```
/// # #[cfg(feature = "cpu")] {
/// use tunelab::device::padded_width;
/// assert_eq!(padded_width(77, &burn::tensor::Device::flex()), 77);
/// # }
/// ```
pub fn padded_width(longest: usize, device: &Device) -> usize {
    if compiles_per_shape(device) {
        longest.div_ceil(GPU_PAD_MULTIPLE).max(1) * GPU_PAD_MULTIPLE
    } else {
        longest
    }
}

/// The rows of a row-major `[rows, cols]` buffer right-padded with `fill` to `width` columns
/// (`width ≥ cols`; the buffer as it is when they are equal). Token batches widened to
/// [`padded_width`] go through it.
///
/// ```
/// # #[cfg(feature = "cpu")] {
/// assert_eq!(tunelab::device::pad_rows(&[1, 2, 3, 4], 2, 3, 0), [1, 2, 0, 3, 4, 0]);
/// # }
/// ```
pub fn pad_rows(flat: &[i64], cols: usize, width: usize, fill: i64) -> Vec<i64> {
    if width == cols || cols == 0 {
        return flat.to_vec();
    }
    flat.chunks(cols).flat_map(|row| row.iter().copied().chain(std::iter::repeat_n(fill, width - cols))).collect()
}

/// Batches on GPU back-ends are padded to multiples of this many tokens ([`padded_width`]).
pub const GPU_PAD_MULTIPLE: usize = 128;

/// Whether every tensor is f32: the CPU backend's kernels for tunelab's one-operation layers
/// (`model::swiglu`, `model::rms_norm`, `model::rope`) take f32 only; other dtypes take the
/// ordinary-op route.
#[cfg(feature = "cpu")]
pub(crate) fn flex_all_f32(tensors: &[&burn_flex::FlexTensor]) -> bool {
    tensors.iter().all(|t| t.dtype() == burn::tensor::DType::F32)
}

/// Whether `device` is burn's `flex` CPU back-end, with or without autodiff (false in a build
/// without the CPU back-end). The CPU-only routes (QLoRA's and attention's recomputing autodiff
/// operations) and the shape padding ask this.
pub fn is_cpu(device: &Device) -> bool {
    #[cfg(feature = "cpu")]
    {
        // Equality compares the hardware and ignores autodiff, so a training device matches too.
        *device == Device::flex()
    }
    #[cfg(not(feature = "cpu"))]
    {
        let _ = device;
        false
    }
}

/// The layers that run as one autodiff operation with their own kernels on the CPU
/// (`model::swiglu`, `model::rms_norm`, `model::rope`).
pub const ONE_OP_LAYERS: [&str; 3] = ["swiglu", "rms_norm", "rope"];

/// Whether the layer `op` (one of [`ONE_OP_LAYERS`]) runs as one autodiff operation on `device`.
/// Always on the CPU, where burn-flex kernels make one pass each way. On the GPU backends the
/// one operation is built from ordinary ops, and burn's fusion ran the written-out layers faster
/// (H100, Vulkan, f16 LoRA: 14-22% of the step; environment.md); `TUNELAB_GPU_ONE_OP` names the
/// layers to run as one operation on the GPU anyway (`swiglu,rms_norm,rope`, `all` or `none`, the
/// default), for comparisons.
///
/// ```
/// use burn::tensor::Device;
/// use tunelab::device::{one_op, ONE_OP_LAYERS};
/// for layer in ONE_OP_LAYERS {
///     assert!(one_op(&Device::flex().autodiff(), layer));
/// }
/// ```
pub fn one_op(device: &Device, op: &str) -> bool {
    debug_assert!(ONE_OP_LAYERS.contains(&op), "unknown layer {op}");
    is_cpu(device) || gpu_one_op().contains(&op)
}

/// `TUNELAB_GPU_ONE_OP`, read once; a name that is not a layer is said once and ignored.
fn gpu_one_op() -> &'static [&'static str] {
    static LAYERS: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    LAYERS.get_or_init(|| parse_one_op_layers(&std::env::var("TUNELAB_GPU_ONE_OP").unwrap_or_default()))
}

fn parse_one_op_layers(value: &str) -> Vec<&'static str> {
    let mut layers = Vec::new();
    for name in value.split(',').map(|n| n.trim().to_ascii_lowercase()).filter(|n| !n.is_empty()) {
        match name.as_str() {
            "all" => layers.extend(ONE_OP_LAYERS),
            "none" => {}
            _ => match ONE_OP_LAYERS.iter().find(|l| **l == name) {
                Some(l) => layers.push(*l),
                None => eprintln!("warning: TUNELAB_GPU_ONE_OP names {name:?}, not one of {}; ignored", ONE_OP_LAYERS.join(", ")),
            },
        }
    }
    layers
}

/// Whether `device` compiles kernels per tensor shape (every back-end but the `flex` CPU one).
pub fn compiles_per_shape(device: &Device) -> bool {
    !is_cpu(device)
}

/// A 2x2 matmul whose answer is known: a device that starts but computes garbage is not usable.
fn self_test(device: &Device) -> Result<(), DeviceError> {
    use burn::tensor::Tensor;
    let a = Tensor::<2>::from_floats([[1.0, 2.0], [3.0, 4.0]], device);
    let s: f32 = a.clone().matmul(a).sum().into_scalar::<f32>();
    if (s - 54.0).abs() < 1e-4 {
        Ok(())
    } else {
        Err(DeviceError::Failed { choice: DeviceChoice::Cpu, reason: format!("self-test matmul gave {s}, expected 54") })
    }
}

/// Start a device with `init`, turning panics (in `init` or in threads it starts) into one
/// [`DeviceError::Failed`] line. A temporary panic hook records every panic message silently
/// while `init` runs (no backtraces on the terminal); the previous hook is put back after.
/// The error says what is missing and what to install when the messages tell (no adapter).
///
/// `init` is a parameter so that tests can inject an initialiser that fails as wgpu does.
pub fn start_with<T>(
    choice: DeviceChoice,
    init: impl FnOnce() -> Result<T, DeviceError> + std::panic::UnwindSafe,
) -> Result<T, DeviceError> {
    use std::sync::{Arc, Mutex};
    // The hook is process-wide: one start at a time.
    static STARTING: Mutex<()> = Mutex::new(());
    let _one = STARTING.lock().unwrap_or_else(|e| e.into_inner());
    let messages: Arc<Mutex<Vec<String>>> = Arc::default();
    let previous = std::panic::take_hook();
    let sink = Arc::clone(&messages);
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panicked".into());
        sink.lock().unwrap_or_else(|e| e.into_inner()).push(msg);
    }));
    let outcome = std::panic::catch_unwind(init);
    std::panic::set_hook(previous);
    let messages = std::mem::take(&mut *messages.lock().unwrap_or_else(|e| e.into_inner()));
    match outcome {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(DeviceError::Failed { reason, .. })) => Err(DeviceError::Failed { choice, reason }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(DeviceError::Failed { choice, reason: explain_start_failure(choice, &messages) }),
    }
}

/// One line from the panic messages of a failed start: the root cause (a worker thread's
/// message, not the `RecvError` the caller got when that thread died) and what to install.
fn explain_start_failure(choice: DeviceChoice, messages: &[String]) -> String {
    let first_line = |m: &String| m.lines().next().unwrap_or("").trim().to_string();
    let root = messages
        .iter()
        .find(|m| !m.contains("RecvError") && !m.trim().is_empty())
        .or(messages.first())
        .map(first_line)
        .unwrap_or_else(|| "the backend panicked while starting".into());
    let lower = messages.join(" ").to_lowercase();
    let no_adapter = lower.contains("adapter") || lower.contains("recverror") || lower.contains("no suitable");
    match (choice, no_adapter) {
        (DeviceChoice::Vulkan, true) => format!(
            "no Vulkan adapter found ({root}); install a Vulkan driver (Linux: mesa-vulkan-drivers, or your GPU vendor's driver; check with `vulkaninfo --summary`), or use --device cpu"
        ),
        (DeviceChoice::Metal, true) => format!("no Metal device found ({root}); Metal needs macOS on Apple or AMD GPUs, or use --device cpu"),
        (DeviceChoice::Wgpu, true) => format!(
            "no GPU adapter found ({root}); install a Vulkan, Metal or DirectX 12 driver, or use --device cpu"
        ),
        _ => root,
    }
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
    probe_with(choice, move || choice.raw_device())
}

/// [`probe`] with the device handle made by `init` (tests inject a failing one).
pub fn probe_with(
    choice: DeviceChoice,
    init: impl FnOnce() -> Result<Device, DeviceError> + std::panic::UnwindSafe,
) -> DeviceReport {
    use burn::tensor::DType;
    let mut report = DeviceReport { choice, compiled: choice.compiled(), error: None, dtypes: Vec::new() };
    let started = start_with(choice, move || {
        let device = init()?;
        self_test(&device)?;
        let dtypes: Vec<String> = [("f32", DType::F32), ("f16", DType::F16), ("bf16", DType::BF16)]
            .into_iter()
            .filter(|(_, d)| device.supports_dtype(*d))
            .map(|(n, _)| n.to_string())
            .collect();
        Ok(dtypes)
    });
    match started {
        Ok(dtypes) => report.dtypes = dtypes,
        Err(e) => report.error = Some(e.to_string()),
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

/// Tells the C allocator to keep freed buffers for reuse instead of handing them back to the kernel.
///
/// A training step frees and reallocates the same few hundred MiB of tensors every time. glibc by
/// default serves blocks over its mmap threshold (at most 32 MiB) with fresh `mmap`s and trims the
/// heap top, so each step pays page faults and page zeroing on the main thread while the worker
/// threads wait. On the 2-core bench (MiniLM, MNRL, batch 32) that was 2.1–2.8 M page faults per run;
/// after this call 0.56 M, and 5–8% more pairs/s at the same peak memory. The cost: the process keeps
/// its high-water mark until it exits. Returns whether the setting was applied; on other platforms
/// (macOS's allocator already caches large blocks) it does nothing and returns `false`.
///
/// The CLI calls this at start-up; notebooks and programs that train can call it once themselves.
///
/// ```
/// let applied = tunelab::device::keep_freed_memory();
/// assert_eq!(applied, cfg!(all(target_os = "linux", target_env = "gnu")));
/// ```
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // mallopt takes an int: 1 GiB for the threshold (blocks above it are rare and short-lived
        // anyway), i32::MAX so the heap top is never trimmed.
        // SAFETY: mallopt only changes allocator parameters; any thread may call it at any time.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30) == 1 && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `TUNELAB_GPU_ONE_OP`'s list in its variants: case, spaces, repeats, `all`/`none`, empty
    /// items and unknown names (ignored).
    #[test]
    fn gpu_one_op_list_reads_names_all_and_none() {
        let cases: [(&str, &[&str]); 9] = [
            ("", &[]),
            ("none", &[]),
            ("all", &ONE_OP_LAYERS),
            (" ALL ", &ONE_OP_LAYERS),
            ("rope", &["rope"]),
            ("RMS_NORM , swiglu", &["rms_norm", "swiglu"]),
            ("rope,,rope", &["rope", "rope"]),
            ("rmsnorm,rope", &["rope"]),
            ("none,swiglu", &["swiglu"]),
        ];
        for (value, want) in cases {
            assert_eq!(parse_one_op_layers(value), want.to_vec(), "{value:?}");
        }
        // The CPU always takes the one operation, whatever the GPU list says.
        #[cfg(feature = "cpu")]
        for op in ONE_OP_LAYERS {
            assert!(one_op(&Device::flex(), op));
            assert!(one_op(&Device::flex().autodiff(), op));
        }
    }

    /// An initialiser failing as wgpu does without an adapter: the worker thread panics with the
    /// cause, the caller's `recv` then panics with `RecvError`.
    fn failing_like_wgpu() -> Result<Device, DeviceError> {
        let (tx, rx) = std::sync::mpsc::channel::<Device>();
        let worker = std::thread::spawn(move || {
            let _tx = tx;
            panic!("No possible adapter available for backend. Falling back to first available.");
        });
        let _ = worker.join();
        Ok(rx.recv().unwrap())
    }

    #[test]
    fn a_backend_that_panics_while_starting_is_one_clean_line() {
        // A hook of the caller's, to check it is put back afterwards.
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = std::sync::Arc::clone(&seen);
        let original = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |_| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }));
        let report = probe_with(DeviceChoice::Vulkan, failing_like_wgpu);
        let err = start_with(DeviceChoice::Vulkan, failing_like_wgpu).unwrap_err().to_string();
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 0, "the panics were printed by the outer hook");
        let _ = std::panic::catch_unwind(|| panic!("after"));
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 1, "the caller's hook is back");
        std::panic::set_hook(original);
        for msg in [report.error.clone().unwrap(), err] {
            assert!(msg.contains("no Vulkan adapter found") && msg.contains("mesa-vulkan-drivers"), "{msg}");
            assert!(msg.contains("No possible adapter"), "the root cause, not RecvError: {msg}");
            assert!(!msg.contains('\n') && !msg.contains("RecvError"), "{msg}");
        }
        assert!(report.dtypes.is_empty());
        // Other start-up panics keep their own first line.
        let err = start_with(DeviceChoice::Wgpu, || -> Result<Device, DeviceError> { panic!("shader compiler crashed\nbacktrace") })
            .unwrap_err()
            .to_string();
        assert_eq!(err, "device 'wgpu' failed to start: shader compiler crashed");
        // The CPU starts.
        #[cfg(feature = "cpu")]
        assert!(probe(DeviceChoice::Cpu).error.is_none());
    }

    /// The element-wise kernels of the CPU backend (vendor/burn-flex, patched to split large
    /// loops over threads) give exactly element-by-element arithmetic, on every path the patch
    /// touches, whatever the number of threads.
    #[test]
    #[cfg(feature = "cpu")]
    fn flex_elementwise_kernels_match_scalar_arithmetic() {
        use burn::tensor::{Tensor, TensorData};
        let (rows, cols) = (771, 131); // 101,001 elements: over the parallel threshold, odd chunks
        let n = rows * cols;
        let a: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0).collect();
        let b: Vec<f32> = (0..n).map(|i| ((i * 104729) % 997) as f32 / 500.0 + 0.5).collect();
        let row: Vec<f32> = (0..cols).map(|j| j as f32 * 0.25 - 3.0).collect();
        let col: Vec<f32> = (0..rows).map(|i| 1.0 + i as f32 / 1000.0).collect();
        let run = || {
            let device = Device::flex();
            let t = |v: &[f32], shape: [usize; 2]| Tensor::<2>::from_data(TensorData::new(v.to_vec(), shape), &device);
            let vals = |x: Tensor<2>| x.into_data().try_to_vec::<f32>().unwrap();
            let a_t = t(&a, [rows, cols]);
            let shared = a_t.clone(); // keeps `a_t` shared: the allocating paths
            vec![
                vals(t(&a, [rows, cols]) * t(&b, [rows, cols])),      // in place, SIMD
                vals(a_t.clone() - t(&b, [rows, cols])),              // swapped in place, SIMD
                vals(t(&a, [rows, cols]).cos()),                       // unary in place
                vals(shared.clone().transpose().cos()),                // unary, allocating
                vals(t(&a, [rows, cols]).add_scalar(1.5)),             // scalar in place
                vals(shared.clone().mul_scalar(-0.75)),                // scalar, allocating
                vals(t(&a, [rows, cols]) + t(&row, [1, cols])),        // broadcast row, in place
                vals(t(&a, [rows, cols]) * t(&col, [rows, 1])),        // broadcast column, in place
                vals(t(&a, [rows, cols]).powf(t(&b, [rows, cols]))),   // generic binary in place
            ]
        };
        let got = run();
        let expect: Vec<Vec<f32>> = vec![
            (0..n).map(|i| a[i] * b[i]).collect(),
            (0..n).map(|i| a[i] - b[i]).collect(),
            a.iter().map(|x| x.cos()).collect(),
            (0..n).map(|k| a[(k % rows) * cols + k / rows].cos()).collect(),
            a.iter().map(|x| x + 1.5).collect(),
            a.iter().map(|x| x * -0.75).collect(),
            (0..n).map(|i| a[i] + row[i % cols]).collect(),
            (0..n).map(|i| a[i] * col[i / cols]).collect(),
            (0..n).map(|i| a[i].powf(b[i])).collect(),
        ];
        for (k, (g, e)) in got.iter().zip(&expect).enumerate() {
            let bad = g.iter().zip(e).position(|(x, y)| x.to_bits() != y.to_bits() && !(x.is_nan() && y.is_nan()));
            assert!(bad.is_none(), "case {k}: element {:?}: {} vs {}", bad, g[bad.unwrap()], e[bad.unwrap()]);
        }
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let three = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        let bits = |r: Vec<Vec<f32>>| r.into_iter().map(|v| v.into_iter().map(f32::to_bits).collect::<Vec<_>>()).collect::<Vec<_>>();
        assert!(bits(one.install(run)) == bits(three.install(run)), "results depend on the thread count");
    }

    /// Matrix products on the CPU (vendor/burn-flex changes 8 and 9): outputs are written into
    /// buffers that are never zero-filled, and skinny products (a side of 32 or less, LoRA's rank)
    /// are split over the threads by output rows or columns. With every output buffer filled with
    /// NaN first, each product of a set of shapes (skinny on each side, split and unsplit, k = 0,
    /// one row or column, transposed operands, batched and broadcast) matches an f64 reference
    /// within 1e-5 of the sum of |a·b| terms (1e-3 in f16), on 1 and 3 threads.
    #[test]
    #[cfg(feature = "cpu")]
    fn flex_matmul_writes_every_output_element_and_splits_skinny_products() {
        use burn::tensor::{Tensor, TensorData};
        // (batch of lhs, batch of rhs, m, k, n, lhs given transposed, rhs given transposed)
        let cases: &[(usize, usize, usize, usize, usize, bool, bool)] = &[
            (1, 1, 1024, 576, 16, false, true),  // x·Aᵀ: split by rows
            (1, 1, 1024, 16, 576, false, true),  // (x·Aᵀ)·Bᵀ: k skinny, split by rows
            (1, 1, 16, 1024, 576, true, false),  // gradient of A: m skinny, split by columns
            (1, 1, 576, 1024, 16, true, false),  // gradient of B
            (1, 1, 97, 2000, 31, false, false),  // skinny, odd sizes
            (1, 1, 40, 33, 7, false, false),     // small: one gemm
            (1, 1, 300, 200, 260, false, true),  // large: gemm's own threads
            (1, 1, 1, 300, 500, false, false),   // one row
            (1, 1, 500, 300, 1, false, false),   // one column
            (1, 1, 64, 0, 48, false, false),     // k = 0: zeros
            (3, 3, 64, 32, 48, false, false),    // batched
            (4, 1, 70, 24, 90, false, true),     // batched, rhs broadcast
            (2, 2, 5, 0, 6, false, false),       // batched, k = 0
            // A side of at most 16, LoRA's rank: narrow widths 1-16, odd row counts either side of
            // the thread split, every layout of both operands.
            (1, 1, 37, 70, 1, false, false),
            (1, 1, 9, 33, 15, true, true),
            (1, 1, 2049, 40, 16, true, false),
            (1, 1, 1, 5, 16, false, true),
            (1, 1, 7, 513, 300, false, true),    // m narrow: split by columns
            (1, 1, 16, 300, 1000, true, true),
            (1, 1, 1, 1000, 17, false, false),
            (1, 1, 301, 1, 40, false, false),    // k narrow
            (1, 1, 1000, 16, 17, true, true),
            (1, 1, 63, 9, 1537, false, true),
        ];
        // In f16 too (`--dtype f16` on the CPU: gemm's f16 kernels, also given unwritten outputs):
        // inputs rounded to f16, the result within 1e-3 of the sum of |a·b| terms.
        let run = |&(ba, bb, m, k, n, ta, tb): &(usize, usize, usize, usize, usize, bool, bool), f16: bool| {
            let device = Device::flex();
            let round = |x: f32| if f16 { half::f16::from_f32(x).to_f32() } else { x };
            let a: Vec<f32> = (0..ba * m * k).map(|i| round(((i * 7919) % 1000) as f32 / 500.0 - 1.0)).collect();
            let b: Vec<f32> = (0..bb * k * n).map(|i| round(((i * 104729) % 997) as f32 / 498.5 - 1.0)).collect();
            let dtype = if f16 { burn::tensor::FloatDType::F16 } else { burn::tensor::FloatDType::F32 };
            let tensor = |v: &[f32], dims: [usize; 3]| Tensor::<3>::from_data(TensorData::new(v.to_vec(), dims), &device).cast(dtype);
            let lhs = if ta { tensor(&a, [ba, k, m]).swap_dims(1, 2) } else { tensor(&a, [ba, m, k]) };
            let rhs = if tb { tensor(&b, [bb, n, k]).swap_dims(1, 2) } else { tensor(&b, [bb, k, n]) };
            let f32_values = |t: Tensor<3>| t.cast(burn::tensor::FloatDType::F32).into_data().try_to_vec::<f32>().unwrap();
            // One matrix each: the 2-D path (where the skinny split is); else the batched one.
            let got = if ba == 1 && bb == 1 {
                let lhs: Tensor<2> = lhs.squeeze_dim(0);
                f32_values(lhs.matmul(rhs.squeeze_dim(0)).unsqueeze_dim(0))
            } else {
                f32_values(lhs.matmul(rhs))
            };
            let tolerance = if f16 { 1e-3 } else { 1e-5 };
            let at = |bi: usize, i: usize, p: usize| if ta { a[bi * m * k + p * m + i] } else { a[bi * m * k + i * k + p] };
            let bt = |bi: usize, p: usize, j: usize| if tb { b[bi * k * n + j * k + p] } else { b[bi * k * n + p * n + j] };
            let batches = ba.max(bb);
            assert_eq!(got.len(), batches * m * n);
            for q in 0..batches {
                for i in 0..m {
                    for j in 0..n {
                        let (mut want, mut scale) = (0f64, 0f64);
                        for p in 0..k {
                            let t = at(q % ba, i, p) as f64 * bt(q % bb, p, j) as f64;
                            want += t;
                            scale += t.abs();
                        }
                        let g = got[(q * m + i) * n + j] as f64;
                        // In f16 a result below 2^-14 is subnormal, its spacing 2^-24.
                        let spacing = if f16 { 2f64.powi(-24) } else { 0.0 };
                        assert!((g - want).abs() <= tolerance * scale.max(1e-30) + spacing, "case {:?}, f16 {f16}: [{q}, {i}, {j}] = {g}, want {want}", (ba, bb, m, k, n, ta, tb));
                    }
                }
            }
            got
        };
        burn_flex::ops::matmul::poison_matmul_outputs(true);
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let three = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        for case in cases {
            for f16 in [false, true] {
                one.install(|| run(case, f16));
                three.install(|| run(case, f16));
            }
        }
        burn_flex::ops::matmul::poison_matmul_outputs(false);
    }

    /// GELU and its gradient on the CPU (the patched burn-flex computes erf and exp with
    /// vectorizable approximations) against the exact f64 formulas on [-10, 10]: within 1.5e-6
    /// (erf's 4.2e-7 times x/2 at its worst, near x = 4.7).
    #[test]
    #[cfg(feature = "cpu")]
    fn flex_gelu_and_its_gradient_match_the_exact_formulas() {
        use burn::tensor::{Tensor, TensorData, activation};
        let device = Device::flex().autodiff();
        let xs: Vec<f32> = (0..40_001).map(|i| -10.0 + i as f32 * 0.0005).collect();
        let x = Tensor::<1>::from_data(TensorData::new(xs.clone(), [xs.len()]), &device).require_grad();
        let y = activation::gelu(x.clone());
        let grads = y.clone().sum().backward();
        let got_y = y.into_data().try_to_vec::<f32>().unwrap();
        let got_g = x.grad(&grads).unwrap().into_data().try_to_vec::<f32>().unwrap();
        for (i, &xf) in xs.iter().enumerate() {
            let v = xf as f64;
            let cdf = 0.5 * (1.0 + erf_reference(v / std::f64::consts::SQRT_2));
            let pdf = (-0.5 * v * v).exp() / (2.0 * std::f64::consts::PI).sqrt();
            assert!((got_y[i] as f64 - v * cdf).abs() < 1.5e-6, "gelu({v}) = {} vs {}", got_y[i], v * cdf);
            assert!((got_g[i] as f64 - (cdf + v * pdf)).abs() < 1.5e-6, "gelu'({v}) = {} vs {}", got_g[i], cdf + v * pdf);
        }
    }

    /// exp on the CPU (the patched burn-flex uses a vectorizable Cephes expf, not libm's) within
    /// 2 ulp of the exact value on [-87.3, 88.3] and exactly 0 below it; softmax, fused for
    /// inference and decomposed into exp / sum under autodiff, within 1e-6 of exact f64, with
    /// masked (-1e4 and -inf) positions exactly 0.
    #[test]
    #[cfg(feature = "cpu")]
    fn flex_exp_and_softmax_match_exact_values() {
        use burn::tensor::{Tensor, TensorData, activation};
        let device = Device::flex();
        let xs: Vec<f32> = (0..100_001).map(|i| -100.0 + i as f32 * 0.00188).collect();
        let got = Tensor::<1>::from_data(TensorData::new(xs.clone(), [xs.len()]), &device).exp();
        for (&x, &y) in xs.iter().zip(&got.into_data().try_to_vec::<f32>().unwrap()) {
            if x < -87.3 {
                assert_eq!(y, 0.0, "exp({x})");
            } else {
                let exact = (x as f64).exp();
                let ulp = (exact as f32).abs() * f32::EPSILON; // one ulp near `exact`, within 2x
                assert!((y as f64 - exact).abs() <= 2.0 * ulp as f64, "exp({x}) = {y} vs {exact}");
            }
        }
        // 64 rows of 128 scores in [-8, 8], every 5th position masked like attention does.
        let (rows, cols) = (64, 128);
        let scores: Vec<f32> = (0..rows * cols)
            .map(|i| match i % 5 {
                0 if i % 10 == 0 => f32::NEG_INFINITY,
                0 => -1e4,
                _ => ((i * 7919) % 1601) as f32 / 100.0 - 8.0,
            })
            .collect();
        let exact: Vec<f64> = scores
            .chunks(cols)
            .flat_map(|r| {
                let m = r.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
                let e: Vec<f64> = r.iter().map(|&v| (v as f64 - m).exp()).collect();
                let s: f64 = e.iter().sum();
                e.into_iter().map(move |v| v / s)
            })
            .collect();
        for (name, dev) in [("fused", Device::flex()), ("autodiff", Device::flex().autodiff())] {
            let x = Tensor::<2>::from_data(TensorData::new(scores.clone(), [rows, cols]), &dev);
            let p = activation::softmax(x, 1).into_data().try_to_vec::<f32>().unwrap();
            for (i, (&g, &e)) in p.iter().zip(&exact).enumerate() {
                if i % 5 == 0 {
                    assert_eq!(g, 0.0, "{name}: masked position {i}");
                } else {
                    assert!((g as f64 - e).abs() < 1e-6, "{name}: softmax[{i}] = {g} vs {e}");
                }
            }
        }
    }

    /// sigmoid on the CPU (the patched burn-flex computes it from the vectorizable expf, without
    /// a branch around it) within 2 ulp of 1/(1 + e^-x) in f64 on [-100, 100], exactly 0 below
    /// -87.3 (as exp), 0 and 1 at the infinities, NaN for NaN; and SiLU's gradient under autodiff
    /// (x·σ(x), differentiated through σ's output) within 1e-6 of σ(x)(1 + x(1 - σ(x))).
    #[test]
    #[cfg(feature = "cpu")]
    fn flex_sigmoid_and_silu_gradient_match_exact_values() {
        use burn::tensor::{Tensor, TensorData, activation};
        let mut xs: Vec<f32> = (0..100_001).map(|i| -100.0 + i as f32 * 0.002).collect();
        xs.extend([0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, f32::MIN_POSITIVE, -f32::MIN_POSITIVE]);
        let got = activation::sigmoid(Tensor::<1>::from_data(TensorData::new(xs.clone(), [xs.len()]), &Device::flex()));
        for (&x, &y) in xs.iter().zip(&got.into_data().try_to_vec::<f32>().unwrap()) {
            if x.is_nan() {
                assert!(y.is_nan(), "sigmoid(NaN) = {y}");
            } else if x < -87.3 {
                assert_eq!(y, 0.0, "sigmoid({x})");
            } else {
                let exact = 1.0 / (1.0 + (-(x as f64)).exp());
                let ulp = (exact as f32).abs() * f32::EPSILON;
                assert!((y as f64 - exact).abs() <= 2.0 * ulp as f64, "sigmoid({x}) = {y} vs {exact}");
            }
        }
        let device = Device::flex().autodiff();
        let xs: Vec<f32> = (0..20_001).map(|i| -20.0 + i as f32 * 0.002).collect();
        let x = Tensor::<1>::from_data(TensorData::new(xs.clone(), [xs.len()]), &device).require_grad();
        let grads = activation::silu(x.clone()).sum().backward();
        let g = x.grad(&grads).unwrap().into_data().try_to_vec::<f32>().unwrap();
        for (&x, &g) in xs.iter().zip(&g) {
            let s = 1.0 / (1.0 + (-(x as f64)).exp());
            let exact = s * (1.0 + x as f64 * (1.0 - s));
            assert!((g as f64 - exact).abs() < 1e-6, "silu'({x}) = {g} vs {exact}");
        }
    }

    /// erf to 1e-13 by its Maclaurin series (|x| < 3) or the continued fraction of erfc, for
    /// the reference above; std has no erf.
    fn erf_reference(x: f64) -> f64 {
        let a = x.abs();
        let r = if a < 3.0 {
            let (mut term, mut sum, mut n) = (a, a, 0.0f64);
            while term.abs() > 1e-17 * sum.abs() {
                n += 1.0;
                term *= -a * a / n;
                sum += term / (2.0 * n + 1.0);
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            // erfc(a) = exp(-a²)/√π · 1/(a + 1/2/(a + 1/(a + 3/2/(a + ...))))
            let mut f = a;
            for k in (1..60).rev() {
                f = a + (k as f64 / 2.0) / f;
            }
            1.0 - (-a * a).exp() / std::f64::consts::PI.sqrt() / f
        };
        r.copysign(x)
    }

    /// Dropout masks on the CPU (drawn in parallel chunks by the patched burn-flex): the right
    /// fraction dropped, kept values scaled, fixed by `device.seed`, independent of threads.
    #[test]
    #[cfg(feature = "cpu")]
    fn flex_dropout_masks_follow_the_seed_not_the_thread_count() {
        use burn::nn::DropoutConfig;
        use burn::tensor::Tensor;
        let device = Device::flex().autodiff();
        let layer = DropoutConfig::new(0.25).init();
        let draw = |seed: u64| {
            device.seed(seed);
            let x = Tensor::<2>::ones([300, 300], &device);
            layer.forward(x).into_data().try_to_vec::<f32>().unwrap()
        };
        let a = draw(7);
        // 90,000 draws at p = 0.25: the dropped fraction has standard deviation 0.0014.
        let dropped = a.iter().filter(|&&v| v == 0.0).count() as f64 / a.len() as f64;
        assert!((dropped - 0.25).abs() < 0.01, "dropped fraction {dropped}");
        assert!(a.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6), "kept values are scaled by 1/(1-p)");
        assert_eq!(draw(7), a);
        assert_ne!(draw(8), a);
        // Neighbouring chunks of 64 Ki elements come from different generators.
        assert_ne!(a[..20_000], a[65_536..85_536]);
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        assert_eq!(one.install(|| draw(7)), a, "masks depend on the thread count");
    }

    /// burn-flex change 10 draws each dropout chunk's u32s a block at a time (`fill`) instead of one
    /// `random::<u32>()` at a time: the masks must not move. Lengths around the 1 Ki block and the
    /// 64 Ki chunk, probabilities at and between the ends, several seeds.
    #[test]
    #[cfg(feature = "cpu")]
    fn flex_dropout_masks_drawn_by_block_equal_the_one_by_one_draws() {
        for n in [0, 1, 15, 1023, 1024, 1025, 65_535, 65_536, 65_537, 200_003] {
            for prob in [0.0, 1e-9, 0.1, 0.5, 0.75, 1.0 - 1e-9, 1.0] {
                for seed in [0, 7, u64::MAX] {
                    let (block, one_by_one) = burn_flex::bernoulli_f32_and_one_by_one(n, prob, seed);
                    assert_eq!(block.len(), n);
                    assert!(block == one_by_one, "n {n}, prob {prob}, seed {seed}: {} of {n} differ", block.iter().zip(&one_by_one).filter(|(a, b)| a != b).count());
                }
            }
        }
    }

    /// Reallocating a 40 MiB buffer reuses the freed block: no new page faults. 40 MiB is above glibc's
    /// largest dynamic mmap threshold (32 MiB), so without `keep_freed_memory` every allocation is a
    /// fresh mmap whose 10,240 pages fault again when written. Counted per thread, on a thread of its
    /// own; the best of 5 reallocations, since other tests allocate concurrently.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn freed_large_buffers_are_reused_without_page_faults() {
        assert!(keep_freed_memory());
        let fewest = std::thread::spawn(|| {
            let minor_faults = || {
                // SAFETY: getrusage writes into the zeroed struct it is given.
                let mut u: libc::rusage = unsafe { std::mem::zeroed() };
                assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) }, 0);
                u.ru_minflt
            };
            let write_40_mib = || std::hint::black_box(vec![1u8; 40 << 20]).len();
            write_40_mib(); // the first one faults its pages in either way
            (0..5)
                .map(|_| {
                    let before = minor_faults();
                    write_40_mib();
                    minor_faults() - before
                })
                .min()
                .unwrap()
        })
        .join()
        .unwrap();
        assert!(fewest < 256, "{fewest} page faults to reallocate 40 MiB (10,240 pages) at best of 5");
    }

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

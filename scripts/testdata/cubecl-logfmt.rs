//! How scripts/testdata/cubecl-0.11.3-profile.log was made: cubecl-runtime 0.11.3's own
//! ServerLogger writes it, configured by the cubecl.toml it finds from the working directory
//! upwards (the one scripts/profile-gpu-step.sh writes), so the summarizer's self-test reads
//! the format cubecl really emits. Not part of the build; to re-make it, put this file in a
//! scratch crate's src/main.rs with
//!   [dependencies]
//!   cubecl-runtime = { version = "=0.11.3", default-features = false, features = ["std"] }
//!   cubecl-common = "=0.11.3"
//!   cubecl-environment = "=0.11.3"
//! and run it from a folder below such a cubecl.toml with kernel type names on stdin (one a
//! line, as `core::any::type_name` spells them; these were taken from the vk17 tunelab binary).
//! The timings are made up; the launch order mimics bench lora: device start-up, warm-up
//! (with compilation lines), sync, timed steps, sync.
use cubecl_common::profile::{ProfileDuration, ProfileTicks, TimingMethod};
use cubecl_environment::time::{Duration, Instant};
use cubecl_runtime::config::{CubeClRuntimeConfig, RuntimeConfig, TypeNameFormatLevel, type_name_format};
use cubecl_runtime::logging::ServerLogger;

fn timed(ns: u64) -> ProfileDuration {
    let start = Instant::now();
    let end = start + Duration::from_nanos(ns);
    ProfileDuration::new(Box::pin(async move { Some(ProfileTicks::from_start_end(start, end)) }), TimingMethod::Device)
}

fn main() {
    let cfg = CubeClRuntimeConfig::get();
    eprintln!("profiling logger: {:?}", cfg.profiling.logger);
    eprintln!("compilation logger: {:?}", cfg.compilation.logger);
    let logger = ServerLogger::default();
    eprintln!("profile level: {:?}", logger.profile_level());
    let names: Vec<String> = std::io::stdin().lines().map(|l| l.unwrap()).filter(|l| !l.is_empty()).collect();
    // client.rs, profile_label: the Balanced type name, then KernelId::entrypoint_name's "_{:08x}".
    let label = |i: usize| format!("{}_{:08x}", type_name_format(&names[i], TypeNameFormatLevel::Balanced), 0x5eed_0000u32 + i as u32);
    // Device start-up: two launches, then a sync (its summary table).
    logger.register_profiled(label(0), timed(4_000));
    logger.register_profiled(label(1), timed(850));
    logger.profile_summary();
    // Warm-up: one launch that could not be measured, then every kernel compiled once
    // (cubecl-server's format_basic: the type name up to '<') and launched in a step's order,
    // then the sync after the warm-up.
    logger.register_profiled(label(0), ProfileDuration::new(Box::pin(async { None }), TimingMethod::Device));
    for (i, n) in names.iter().enumerate() {
        logger.log_compilation(&format!("[Compiling kernel] {}", n.split('<').next().unwrap()));
        logger.register_profiled(label(i), timed(100_000 + i as u64 * 1_000));
    }
    logger.profile_summary();
    // Two timed steps, the same launches in the same order: kernel i takes (i + 1) * 10 µs plus
    // 1 µs in step 2, except the last kernel of step 2, which takes 1.25 s (Duration's Debug
    // prints it in seconds).
    let n = names.len();
    for step in 0..2u64 {
        for i in 0..n {
            let ns = if step == 1 && i == n - 1 { 1_250_000_000 } else { (i as u64 + 1) * 10_000 + step * 1_000 };
            logger.register_profiled(label(i), timed(ns));
        }
    }
    logger.profile_summary();
    if std::env::var_os("EXIT_AT_ONCE").is_none() {
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

fn main() {
    // Training frees and reallocates the same large tensors every step: keep them (see the docs).
    tunelab::device::keep_freed_memory();
    if let Err(e) = tunelab::cli::main() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

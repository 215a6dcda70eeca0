fn main() {
    // Training frees and reallocates the same large tensors every step: keep them (see the docs).
    tunelab::device::keep_freed_memory();
    let code = match tunelab::cli::main() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    // After a GPU run, past the driver's exit handlers (`device::exit` says why).
    tunelab::device::exit(code)
}

fn main() {
    if let Err(e) = tunelab::cli::main() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

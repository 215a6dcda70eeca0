//! The scripts run for a new user as they stand: their defaults are the repository's own paths
//! (`.venv`, `../shared`, `target/...`), never the absolute paths of the machine a script was
//! written on. A comment that reports where a past measurement ran may name such a path; one that
//! gives a default may not.

use std::path::Path;

/// What a default must not name: this project machine's reference venv and its `/work` tree.
const MACHINE_PATHS: [&str; 2] = ["venv-ref", "/work/"];

/// Lines of `text` that name a machine path outside a measurement report (a comment within five
/// lines after one that says `Measured`), and shell defaults `${VAR:-/absolute}`.
fn offending(text: &str) -> Vec<(usize, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let comment = line.trim_start().starts_with('#');
        let in_report = comment && lines[i.saturating_sub(5)..=i].iter().any(|l| l.contains("Measured"));
        let names_machine = MACHINE_PATHS.iter().any(|p| line.contains(p));
        let absolute_default = line.contains(":-/");
        if (names_machine && !in_report) || absolute_default {
            out.push((i + 1, line.to_string()));
        }
    }
    out
}

#[test]
fn script_defaults_are_repository_relative() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts");
    let mut bad = Vec::new();
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        checked += 1;
        for (n, line) in offending(&text) {
            bad.push(format!("{}:{n}: {line}", path.display()));
        }
    }
    assert!(checked > 20, "only {checked} scripts read from {}", dir.display());
    assert!(bad.is_empty(), "machine-specific defaults (use .venv, ../shared or a path relative to the repository):\n{}", bad.join("\n"));
}

#[test]
fn the_check_sees_what_it_forbids() {
    assert_eq!(offending("PY=${PYTHON_REF:-/work/venv-ref/bin/python}").len(), 1);
    assert_eq!(offending("# Env: PYTHON_REF  a Python (default /work/venv-ref/bin/python)").len(), 1);
    assert_eq!(offending("X=${X:-/opt/thing}").len(), 1);
    assert!(offending("# Measured 2026-12-01 on this machine,\n# `TORCH_ANCHOR=/work/shared/bench/torch_anchor.py`").is_empty());
    assert!(offending("PY=${PYTHON_REF:-.venv/bin/python}\nANCHOR=${TORCH_ANCHOR:-../shared/bench/torch_anchor.py}").is_empty());
}

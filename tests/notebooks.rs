//! The notebooks under `notebooks/` follow the conventions the batch runner relies on
//! (`scripts/run_notebooks.py`, `notebooks/README.md`). Executing them needs the evcxr kernel and a
//! long first build, so that happens in `scripts/run-notebooks`, not here.

use std::path::{Path, PathBuf};

fn notebooks() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("notebooks");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "ipynb"))
        .collect();
    v.sort();
    v
}

fn source(cell: &serde_json::Value) -> String {
    match &cell["source"] {
        serde_json::Value::Array(lines) => lines.iter().filter_map(|l| l.as_str()).collect(),
        serde_json::Value::String(s) => s.clone(),
        _ => String::new(),
    }
}

fn code_cells(nb: &serde_json::Value) -> Vec<&serde_json::Value> {
    nb["cells"].as_array().unwrap().iter().filter(|c| c["cell_type"] == "code").collect()
}

#[test]
fn the_six_notebooks_exist() {
    let names: Vec<String> = notebooks().iter().map(|p| p.file_stem().unwrap().to_string_lossy().into_owned()).collect();
    for want in [
        "00-kernel-check",
        "01-datasets",
        "02-embedding-finetune",
        "03-query-expansion-lora",
        "04-ab-comparison",
        "05-persona-adapter",
        "06-search-pipeline",
        "07-embeddinggemma-finetune",
        "08-reranker",
    ] {
        assert!(names.iter().any(|n| n == want), "notebooks/{want}.ipynb is missing (have {names:?})");
    }
}

#[test]
fn notebooks_follow_the_runner_conventions() {
    // The declaration form the runner parses: `let NAME: TYPE = ...;` (scripts/run_notebooks.py DECL).
    let is_decl = |line: &str| {
        let l = line.trim_start();
        let after_semicolon = l.rfind(';').map(|i| l[i + 1..].trim());
        l.starts_with("let ") && l.contains(':') && l.contains('=') && after_semicolon.is_some_and(|a| a.is_empty() || a.starts_with("//"))
    };
    for path in notebooks() {
        let name = path.display();
        let nb: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(nb["metadata"]["kernelspec"]["name"], "rust", "{name}: kernel must be `rust`");
        let code = code_cells(&nb);
        // Outputs are not committed.
        for c in &code {
            assert!(c["outputs"].as_array().is_none_or(|o| o.is_empty()), "{name}: commit notebooks with cleared outputs");
            assert!(c["execution_count"].is_null(), "{name}: commit notebooks with cleared execution counts");
        }
        // Exactly one parameters cell, the first code cell, declaring typed parameters only.
        let tagged: Vec<usize> = code
            .iter()
            .enumerate()
            .filter(|(_, c)| c["metadata"]["tags"].as_array().is_some_and(|t| t.iter().any(|t| t == "parameters")))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(tagged, vec![0], "{name}: one cell tagged `parameters`, the first code cell");
        for line in source(code[0]).lines().filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with("//")) {
            assert!(is_decl(line), "{name}: parameters cell line is not `let NAME: TYPE = VALUE;`: {line}");
        }
        // The setup cell loads tunelab from this checkout with explicit features (the runner's
        // --features rewrites that line) and installs the fail-fast hook.
        let setup = source(code[1]);
        assert!(
            setup.lines().any(|l| l.starts_with(":dep tunelab = { path = \"..\"") && l.contains("features = [")),
            "{name}: second code cell must `:dep tunelab = {{ path = \"..\", ... features = [...] }}`"
        );
        assert!(setup.contains("tunelab::notebook::init()"), "{name}: setup cell must call tunelab::notebook::init()");
        // No `?` at the top level of a cell: evcxr reports such an error as a successful cell.
        for c in &code {
            for line in source(c).lines() {
                let l = line.trim_end();
                assert!(!(l.ends_with(")?;") || l.ends_with("?;")), "{name}: use .or_fail(..) instead of `?`: {l}");
            }
        }
    }
}

#[test]
fn notebooks_that_write_reports_let_the_runner_choose_where() {
    for path in notebooks() {
        let text = std::fs::read_to_string(&path).unwrap();
        if text.contains("RunDir::create") {
            let nb: serde_json::Value = serde_json::from_str(&text).unwrap();
            let params = source(code_cells(&nb)[0]);
            assert!(
                params.contains("let reports_root: String"),
                "{}: writes a report, so it declares `reports_root: String` for the batch runner",
                path.display()
            );
        }
    }
}

/// evcxr keeps every top-level variable of a cell for the later cells, so it must name its type;
/// it asks rust-analyzer when the type is not written, which fails for many library types
/// ("Couldn't automatically determine type of variable `policy`", seen in a headless run of 01),
/// and a closure has no type to name at all. So: a written type on every top-level `let`, and
/// functions instead of top-level closures (variables inside `{ ... }` blocks are not kept).
#[test]
fn top_level_variables_have_written_types() {
    for path in notebooks() {
        let nb: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for (i, c) in code_cells(&nb).iter().enumerate() {
            for line in source(c).lines().filter(|l| l.starts_with("let ")) {
                let rest = line.trim_start_matches("let ").trim_start_matches("mut ");
                let pattern_end = if rest.starts_with('(') { rest.find(')').map(|j| j + 1) } else { rest.find(|ch: char| !(ch.is_alphanumeric() || ch == '_')) };
                let typed = pattern_end.is_some_and(|j| rest[j..].trim_start().starts_with(':'));
                assert!(typed, "{} code cell {}: top-level `let` without a written type: {line}", path.display(), i + 1);
                assert!(!line.contains("= |") && !line.contains("= move |"), "{} code cell {}: top-level closure (use a fn): {line}", path.display(), i + 1);
            }
        }
    }
}

/// The warm builds serve every notebook only if every notebook asks evcxr for exactly the crates,
/// features and paths that `scripts/setup-notebooks.sh` compiles: the setup cell's `:dep` lines are
/// those of `notebooks/evcxr/deps-data.evcxr` (tunelab without burn: the notebooks CI runs) or of
/// `notebooks/evcxr/deps.evcxr` (with burn), and no other cell adds one (a `:dep` later in a
/// notebook would rebuild the dependency graph mid-notebook).
#[test]
fn every_notebook_loads_one_of_the_warm_dep_sets() {
    let read = |name: &str| -> Vec<String> {
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("notebooks/evcxr").join(name))
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect()
    };
    let (data, models) = (read("deps-data.evcxr"), read("deps.evcxr"));
    for (name, set) in [("deps-data.evcxr", &data), ("deps.evcxr", &models)] {
        assert!(set.iter().any(|l| l.starts_with(":dep tunelab = { path = \"..\"")), "{name} loads tunelab from the checkout: {set:?}");
    }
    assert!(!data.iter().any(|l| l.contains("cpu")), "deps-data.evcxr is the burn-free set: {data:?}");
    for path in notebooks() {
        let nb: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for (i, c) in code_cells(&nb).iter().enumerate() {
            let deps: Vec<String> = source(c).lines().filter(|l| l.trim_start().starts_with(":dep")).map(|l| l.trim_end().to_string()).collect();
            if i == 1 {
                assert!(deps == data || deps == models, "{}: the setup cell's :dep lines are neither notebooks/evcxr/deps-data.evcxr nor deps.evcxr: {deps:?}", path.display());
            } else {
                assert!(deps.is_empty(), "{} code cell {}: :dep outside the setup cell: {deps:?}", path.display(), i + 1);
            }
        }
    }
}

/// Lines of a notebook cell that count towards its length: code, not blank lines, comments,
/// `use` declarations or evcxr commands (`:dep`).
fn counted_lines(cell: &str) -> usize {
    cell.lines()
        .map(str::trim)
        .filter(|l| !(l.is_empty() || l.starts_with("//") || l.starts_with("use ") || l.starts_with(':')))
        .count()
}

/// What building a data structure by hand looks like in a cell: assembling a table column by
/// column, a collection element by element, or walking a folder. (Composing a display with
/// `Html`'s builder, struct literals of a configuration and `json!` parameter records are fine.)
const HAND_BUILT: [&str; 15] = [
    "df!(",
    "DataFrame::new",
    "Column::new",
    "Series::new",
    "Vec::new()",
    "vec![",
    "HashMap::new",
    "BTreeMap::new",
    "HashSet::new",
    "BTreeSet::new",
    "::with_capacity(",
    ".collect",
    ".insert(",
    "read_dir(",
    "for ",
];

/// The markers of [`HAND_BUILT`] in a cell longer than `max_lines` counted lines (none for a
/// shorter cell: a few lines of glue are fine).
fn hand_built(cell: &str, max_lines: usize) -> Vec<&'static str> {
    if counted_lines(cell) <= max_lines {
        return Vec::new();
    }
    let code = without_strings(&cell.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n"));
    HAND_BUILT.iter().copied().filter(|m| code.contains(m)).collect()
}

/// `text` with the contents of its string literals blanked (`"indexing for A"` is no loop).
fn without_strings(text: &str) -> String {
    let (mut out, mut in_string, mut escaped) = (String::new(), false, false);
    for c in text.chars() {
        if in_string {
            match (escaped, c) {
                (false, '\\') => escaped = true,
                (false, '"') => {
                    in_string = false;
                    out.push(c);
                }
                _ => escaped = false,
            }
        } else {
            in_string = c == '"';
            out.push(c);
        }
    }
    out
}

#[test]
fn the_hand_built_rule_sees_tables_loops_and_folder_walks_in_long_cells_only() {
    let filler = "let a: usize = 1;\n".repeat(10);
    assert!(hand_built(&filler, 10).is_empty());
    for marker in HAND_BUILT {
        let long = format!("{filler}let x = {marker} y;\n");
        assert_eq!(hand_built(&long, 10), [marker], "{long}");
        // Ten counted lines with the marker: short enough to be glue.
        let short = format!("{}let x = {marker} y;\n// a comment\nuse a::b;\n\n:dep x = \"1\"\n", "let a: usize = 1;\n".repeat(9));
        assert_eq!(counted_lines(&short), 10);
        assert!(hand_built(&short, 10).is_empty(), "{short}");
        // In a comment or a string it is prose, not code.
        assert!(hand_built(&format!("{filler}// for each {marker}\n"), 10).is_empty());
        assert!(hand_built(&format!("{filler}x.or_fail(\"a \\\" {marker}\");\n"), 10).is_empty());
    }
}

/// Issue 19: a notebook reads as a short story of the experiment, every cell a call or two into the
/// library. A code cell longer than 10 counted lines ([`counted_lines`]) must not build data
/// structures by hand ([`HAND_BUILT`]): that logic belongs in `tunelab::notebook` (or the module
/// that computes the result), where the next notebook reuses it and tests cover it.
#[test]
fn long_notebook_cells_do_not_build_data_structures_by_hand() {
    let mut found = Vec::new();
    for path in notebooks() {
        let nb: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        // The parameters cell (the first) only declares values; notebooks_follow_the_runner_conventions checks it.
        for (i, c) in code_cells(&nb).iter().enumerate().skip(1) {
            let text = source(c);
            let markers = hand_built(&text, 10);
            if !markers.is_empty() {
                found.push(format!("{} code cell {} ({} lines): {markers:?}", path.display(), i + 1, counted_lines(&text)));
            }
        }
    }
    assert!(found.is_empty(), "long cells that build data structures by hand (move that into the library):\n{}", found.join("\n"));
}

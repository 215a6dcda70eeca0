"""Batch runner for tunelab's evcxr notebooks (called by scripts/run-notebooks).

Python only drives Jupyter here (nbclient); every number in the reports is computed by tunelab.

For each configuration it copies the notebook, injects the configuration's parameters as a new cell
right after the cell tagged `parameters` (papermill's convention; values are rendered as Rust
literals of the types declared in that cell), executes it headlessly with the `rust` kernel, and
writes the executed notebook next to the report the notebook wrote. A failing notebook is reported
with its cell and error, and the batch goes on. At the end `tunelab batch-summary` compares the
configurations' per-query metrics (A/B table with bootstrap CIs and paired randomization p-values).
The exit status is 1 if any configuration failed.

Layout of one batch:
    reports/<experiment>/<batch-id>/
        batch.json                       configurations, status, timings, failures
        summary.md, summary.html, summary.json
        <config>/<notebook>.ipynb        executed notebook (also when it failed)
        <config>/<notebook>.html         with --html
        <config>/<experiment>/<run-id>/  the report the notebook wrote (reports_root = <config>/)

Matrix file (TOML or JSON):
    notebook = "02-embedding-finetune.ipynb"    # relative to the matrix file, or to the repo root
    experiment = "lr-sweep"                      # default: the notebook's name
    [parameters]                                 # the same for every configuration
    epochs = 1
    [matrix]                                     # every combination of these lists
    learning_rate = [1e-5, 3e-5]
    [[configs]]                                  # named configurations (crossed with [matrix])
    name = "base"
    parameters = { train = false }
    [summary]
    primary = "recip_rank"                       # ranks the configurations
    measures = ["recip_rank", "ndcg_cut_10"]     # default: all measures
    baseline = "base"                            # default: the first configuration
    system = "B"                                 # which system of a metrics.arrow holding several
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

ROOT = Path(__file__).resolve().parent.parent
KERNEL = "rust"
RUNNER_PARAMS = ("reports_root",)  # filled in by the runner when the notebook declares them


def log(msg: str) -> None:
    print(f"[run-notebooks {dt.datetime.now():%H:%M:%S}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# Configurations


def slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "-", s).strip("-") or "run"


def load_spec(path: Path) -> dict:
    text = path.read_text()
    try:
        return tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        sys.exit(f"run-notebooks: {path}: {e}")


def resolve_notebook(name: str, base: Path) -> Path:
    for cand in (base / name, ROOT / name, ROOT / "notebooks" / name):
        if cand.is_file():
            return cand.resolve()
    sys.exit(f"run-notebooks: notebook {name!r} not found (looked next to the matrix file, in the repo root and notebooks/)")


def expand(spec: dict, base: Path) -> list[dict]:
    """Every configuration of a matrix spec: [[configs]] (or one unnamed) x product of [matrix]."""
    shared = spec.get("parameters", {})
    matrix = spec.get("matrix", {})
    for k, v in matrix.items():
        if not isinstance(v, list) or not v:
            sys.exit(f"run-notebooks: matrix.{k} must be a non-empty list")
    keys = list(matrix)
    combos = [dict(zip(keys, vals)) for vals in itertools.product(*(matrix[k] for k in keys))]
    named = spec.get("configs") or [{}]
    out, seen = [], set()
    for c in named:
        for m in combos:
            params = {**shared, **c.get("parameters", {}), **m}
            parts = ([c["name"]] if "name" in c else []) + [f"{k}={m[k]}" for k in keys]
            name = slug("_".join(parts) if parts else Path(c.get("notebook") or spec["notebook"]).stem)
            if name in seen:
                sys.exit(f"run-notebooks: two configurations are both named {name!r}")
            seen.add(name)
            nb = c.get("notebook") or spec.get("notebook")
            if not nb:
                sys.exit("run-notebooks: the matrix names no notebook")
            out.append({"name": name, "notebook": str(resolve_notebook(nb, base)), "parameters": params})
    return out


# ---------------------------------------------------------------------------------------------
# Parameter injection (Rust literals of the declared types)

DECL = re.compile(r"^\s*let\s+(?:mut\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*:\s*(.+?)\s*=", re.M)


def declared_parameters(cell_source: str) -> dict[str, str]:
    return {m.group(1): m.group(2).strip() for m in DECL.finditer(cell_source)}


def rust_str(s: str) -> str:
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{{{ord(ch):x}}}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


INT_TYPES = {"u8", "u16", "u32", "u64", "u128", "usize", "i8", "i16", "i32", "i64", "i128", "isize"}


def rust_literal(value, ty: str, name: str) -> str:
    ty = ty.replace(" ", "")
    bad = lambda: ValueError(f"parameter {name}: {value!r} does not fit the declared type {ty}")  # noqa: E731
    if ty.startswith("Option<") and ty.endswith(">"):
        return "None" if value is None else f"Some({rust_literal(value, ty[7:-1], name)})"
    if ty.startswith("Vec<") and ty.endswith(">"):
        if not isinstance(value, list):
            raise bad()
        return "vec![" + ", ".join(rust_literal(v, ty[4:-1], name) for v in value) + "]"
    if ty == "bool":
        if not isinstance(value, bool):
            raise bad()
        return "true" if value else "false"
    if ty in INT_TYPES:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
        if value < 0 and ty.startswith("u"):
            raise bad()
        return f"{value}_{ty}"
    if ty in ("f32", "f64"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad()
        v = float(value)
        if v != v:
            return f"{ty}::NAN"
        if v in (float("inf"), float("-inf")):
            return f"{'-' if v < 0 else ''}{ty}::INFINITY"
        return f"{v!r}_{ty}"
    if ty in ("String", "std::string::String"):
        if not isinstance(value, str):
            raise bad()
        return f"String::from({rust_str(value)})"
    if ty in ("&str", "&'staticstr"):
        if not isinstance(value, str):
            raise bad()
        return rust_str(value)
    if ty in ("PathBuf", "std::path::PathBuf"):
        if not isinstance(value, str):
            raise bad()
        return f"std::path::PathBuf::from({rust_str(value)})"
    raise ValueError(f"parameter {name}: cannot inject a value of type {ty} (use bool, integers, f32/f64, String, &str, PathBuf, Vec<_>, Option<_>)")


def inject(nb, params: dict, config_name: str) -> None:
    """Insert a cell with `params` after the cell tagged `parameters` (papermill's convention)."""
    idx = next((i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])), None)
    if idx is None:
        raise ValueError("no cell tagged `parameters`")
    declared = declared_parameters(nb.cells[idx].source)
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise ValueError(f"parameters not declared in the notebook's parameters cell: {', '.join(unknown)} (declared: {', '.join(declared)})")
    lines = [f"// Injected by scripts/run-notebooks: configuration `{config_name}`."]
    for k, v in params.items():
        lines.append(f"let {k}: {declared[k]} = {rust_literal(v, declared[k], k)};")
    cell = nbformat.v4.new_code_cell("\n".join(lines))
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(idx + 1, cell)


DEP_RE = re.compile(r"^(:dep\s+tunelab\s*=\s*\{)(.*)(\}\s*)$", re.M)


def set_features(nb, features: list[str]) -> None:
    """Rewrite the `:dep tunelab = {...}` line to build exactly `features` (no defaults).

    A notebook that asks for no features (`features = []`: no models, no burn) is left alone: a
    backend would only make its first build 20 minutes longer.
    """
    feats = ", ".join(f'"{f}"' for f in features)
    for c in nb.cells:
        if c.cell_type != "code":
            continue

        def repl(m):
            if re.search(r"features\s*=\s*\[\s*\]", m.group(2)):
                return m.group(0)
            body = re.sub(r",?\s*(default-features|features)\s*=\s*(\[[^\]]*\]|true|false)", "", m.group(2)).strip().rstrip(",")
            return f"{m.group(1)} {body}, default-features = false, features = [{feats}] {m.group(3)}"

        c.source = DEP_RE.sub(repl, c.source)


# ---------------------------------------------------------------------------------------------
# Execution


def cell_seconds(cell) -> float | None:
    ex = cell.get("metadata", {}).get("execution", {})
    a, b = ex.get("iopub.execute_input"), ex.get("shell.execute_reply")
    if not (a and b):
        return None
    parse = lambda s: dt.datetime.fromisoformat(s.replace("Z", "+00:00"))  # noqa: E731
    return (parse(b) - parse(a)).total_seconds()


def stderr_of(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream" and o.get("name") == "stderr")


def find_failure(nb, exc: BaseException | None) -> dict | None:
    """The first cell with an error output (or a panic on stderr), as a report entry."""
    code_no = 0
    for i, c in enumerate(nb.cells):
        if c.cell_type != "code":
            continue
        code_no += 1
        errors = [o for o in c.get("outputs", []) if o.get("output_type") == "error"]
        err = stderr_of(c)
        # evcxr reports a panic as a successful cell (see src/notebook.rs); count it as a failure.
        panicked = re.search(r"thread '.*' panicked at", err)
        if errors or panicked:
            e = errors[0] if errors else {"ename": "panic", "evalue": "a panic was reported on stderr"}
            return {
                "cell": i + 1,
                "code_cell": code_no,
                "source": "\n".join(c.source.splitlines()[:4]),
                "ename": e.get("ename", ""),
                "evalue": strip_ansi(str(e.get("evalue", ""))),
                "stderr_tail": strip_ansi("\n".join(err.strip().splitlines()[-12:])),
                # evcxr puts a failed build's compiler and linker output (the line that says why,
                # e.g. "No space left on device") in the traceback, not in evalue.
                "traceback": strip_ansi("\n".join(e.get("traceback", []))[-4000:]),
            }
    if exc is not None:
        return {"cell": None, "code_cell": None, "source": "", "ename": type(exc).__name__, "evalue": strip_ansi(str(exc))[-2000:], "stderr_tail": ""}
    return None


def strip_ansi(s: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", s)


def run_config(cfg: dict, batch_dir: Path, args) -> dict:
    nb_path = Path(cfg["notebook"])
    out_dir = batch_dir / cfg["name"]
    out_dir.mkdir(parents=True, exist_ok=True)
    nb = nbformat.read(nb_path, as_version=4)
    params = dict(cfg["parameters"])
    declared = {}
    for c in nb.cells:
        if "parameters" in c.get("metadata", {}).get("tags", []):
            declared = declared_parameters(c.source)
    if "reports_root" in declared and "reports_root" not in params:
        params["reports_root"] = str(out_dir)
    result = {"name": cfg["name"], "notebook": str(nb_path.relative_to(ROOT)) if nb_path.is_relative_to(ROOT) else str(nb_path),
              "parameters": cfg["parameters"], "status": "failed", "seconds": 0.0, "failure": None,
              "executed": None, "html": None, "report_dir": None, "metrics": None, "cells": []}
    try:
        if params:
            inject(nb, params, cfg["name"])
        if args.features:
            set_features(nb, args.features.split(","))
    except ValueError as e:
        result["failure"] = {"cell": None, "code_cell": None, "source": "", "ename": "ParameterError", "evalue": str(e), "stderr_tail": ""}
        log(f"{cfg['name']}: FAILED before running: {e}")
        return result

    # evcxr's build directory is chosen by the kernel launcher (scripts/evcxr_kernel.py): the first
    # free slot under target/evcxr/, warm after scripts/setup-notebooks.sh, with the repository's
    # Cargo.lock. One kernel per slot; this runner runs one notebook at a time, so it reuses slot 0.
    client = NotebookClient(
        nb,
        kernel_name=KERNEL,
        timeout=args.timeout,
        startup_timeout=300,
        record_timing=True,
        resources={"metadata": {"path": str(nb_path.parent)}},
    )
    exc = None
    start = time.monotonic()
    log(f"{cfg['name']}: executing {result['notebook']}")
    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError, DeadKernelError, RuntimeError) as e:
        exc = e
    except Exception as e:  # the kernel failed to start, a ZMQ error...: record and go on
        exc = e
    result["seconds"] = round(time.monotonic() - start, 1)
    executed = out_dir / nb_path.name
    nbformat.write(client.nb, executed)
    result["executed"] = str(executed)
    result["cells"] = [
        {"cell": i + 1, "seconds": s, "first_line": (c.source.splitlines() or [""])[0][:80]}
        for i, c in enumerate(client.nb.cells) if c.cell_type == "code" and (s := cell_seconds(c)) is not None
    ]
    failure = find_failure(client.nb, exc)
    result["rich"] = rich_outputs(client.nb)
    rich = result["rich"]
    if not failure and args.require_rich and (not (rich["tables"] and rich["svgs"] + rich["images"]) or rich["debug_fallbacks"]):
        failure = {"cell": None, "code_cell": None, "source": "", "ename": "NoRichOutput",
                   "evalue": f"--require-rich: the executed notebook shows {result['rich']} (want an HTML table and a plot, and no rich value shown as Debug text)", "stderr_tail": ""}
    if failure:
        result["failure"] = failure
        where = f"cell {failure['cell']} (code cell {failure['code_cell']})" if failure["cell"] else "before any cell"
        log(f"{cfg['name']}: FAILED at {where} after {result['seconds']}s: {failure['ename']}: {failure['evalue'][:300]}")
        if failure["stderr_tail"]:
            print("    stderr: " + failure["stderr_tail"].replace("\n", "\n    stderr: "), flush=True)
    else:
        result["status"] = "ok"
        log(f"{cfg['name']}: ok in {result['seconds']}s")
    if args.html:
        result["html"] = str(render_html(executed))
    metrics = sorted(out_dir.rglob("metrics.arrow"))
    if metrics:
        result["metrics"] = str(metrics[-1])
        result["report_dir"] = str(metrics[-1].parent)
    else:
        manifests = sorted(out_dir.rglob("manifest.json"))
        if manifests:
            result["report_dir"] = str(manifests[-1].parent)
    return result


def rich_outputs(nb) -> dict:
    """What the executed notebook shows: HTML outputs, the tables and SVG plots in them, PNG images."""
    html = [o["data"]["text/html"] for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.get("output_type") in ("display_data", "execute_result") and "text/html" in o.get("data", {})]
    html = ["".join(h) if isinstance(h, list) else h for h in html]
    images = sum(1 for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if "image/png" in o.get("data", {}))
    # A value whose rich display evcxr could not use comes out as its Debug text (e.g. `Html { markup: ... }`).
    plain = ["".join(o["data"]["text/plain"]) if isinstance(o["data"]["text/plain"], list) else o["data"]["text/plain"]
             for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
             if o.get("output_type") == "execute_result" and set(o.get("data", {})) == {"text/plain"}]
    debug = sum(1 for t in plain if re.match(r"(Html|NotebookReport|Progress|GateDecision) \{|shape: \(", t))
    return {"html_outputs": len(html), "tables": sum(h.count("<table") for h in html),
            "svgs": sum(h.count("<svg") for h in html), "images": images, "debug_fallbacks": debug}


# The notebooks' two `:dep` sets (notebooks/evcxr/): every bundled notebook's setup cell loads one of
# them verbatim (tests/notebooks.rs), so warming both into the kernel's build slot leaves every
# notebook warm. `data` is tunelab without burn (00, 01, 04: what CI runs), `models` adds burn.
DEP_SETS = {"data": "deps-data.evcxr", "models": "deps.evcxr"}


def lock_versions(path: Path) -> dict[str, set[str]]:
    """name -> versions of the registry packages in a Cargo.lock."""
    out: dict[str, set[str]] = {}
    for pkg in tomllib.loads(path.read_text()).get("package", []):
        if pkg.get("source", "").startswith("registry+"):
            out.setdefault(pkg["name"], set()).add(pkg["version"])
    return out


def lock_drift(slot_lock: Path, repo_lock: Path) -> list[str]:
    """Packages the kernel's build resolved to other versions than the repository's Cargo.lock
    (the tests' versions): each `name version` not in the repository's lock."""
    want = lock_versions(repo_lock)
    return sorted(f"{name} {v}" for name, vs in lock_versions(slot_lock).items() for v in vs - want.get(name, set()))


def warm(args) -> int:
    """Compile the notebooks' `:dep` sets (DEP_SETS, one kernel each, one after the other) into a
    kernel build slot (scripts/evcxr_kernel.py), so the first cell of any bundled notebook starts
    computing at once. Each runs a two-cell notebook in notebooks/ (where `path = ".."` is the
    repository) through the `rust` kernel: the `:dep` lines with the notebooks' `use` and `init()`,
    then one call into tunelab, which links it the way every notebook cell does. Then checks that
    the build used the repository's Cargo.lock versions (the kernel launcher seeds the slot with it)."""
    names = [n for n in args.warm.split(",") if n]
    unknown = [n for n in names if n not in DEP_SETS]
    if unknown:
        log(f"--warm: unknown :dep set(s) {unknown}; known: {', '.join(DEP_SETS)}")
        return 2
    for name in names:
        deps = (ROOT / "notebooks" / "evcxr" / DEP_SETS[name]).read_text()
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": "Rust", "language": "rust"}
        nb.cells = [
            nbformat.v4.new_code_cell(deps + "use polars::prelude::*;\nuse tunelab::notebook::*;\ntunelab::notebook::init();"),
            nbformat.v4.new_code_cell('println!("tunelab {} warm for notebooks in {}", tunelab::version(), '
                                      'std::env::var("EVCXR_TMPDIR").unwrap_or_default());'),
        ]
        client = NotebookClient(nb, kernel_name=KERNEL, timeout=args.timeout, startup_timeout=300, record_timing=True,
                                resources={"metadata": {"path": str(ROOT / "notebooks")}})
        start = time.monotonic()
        log(f"warming the notebooks' '{name}' build (notebooks/evcxr/{DEP_SETS[name]}; long when cold)")
        try:
            client.execute()
        except Exception as e:  # a failing :dep build, a dead kernel
            failure = find_failure(client.nb, e) or {}
            log(f"warm-up of '{name}' FAILED after {time.monotonic() - start:.0f}s: {failure.get('ename', type(e).__name__)}: "
                f"{failure.get('evalue', str(e))[-3000:]}\n{failure.get('traceback', '')}\n{failure.get('stderr_tail', '')}")
            free = shutil.disk_usage(ROOT).free
            log(f"disk: {free / 2**30:.1f} GiB free under {ROOT} (a linker that fails without a compiler error often means a full disk)")
            return 1
        cells = [cell_seconds(c) for c in client.nb.cells]
        text = "".join(o.get("text", "") for o in client.nb.cells[1].get("outputs", []) if o.get("output_type") == "stream")
        slot = Path(text.rsplit(" in ", 1)[-1].strip()) if " in " in text else None
        log(f"'{name}' warm in {time.monotonic() - start:.0f}s (build cell {cells[0]}s, first call {cells[1]}s) in {slot}")
        if slot and (slot / "Cargo.lock").exists():
            drift = lock_drift(slot / "Cargo.lock", ROOT / "Cargo.lock")
            if drift:
                log(f"the '{name}' build resolved versions that are not in Cargo.lock: {', '.join(drift)}")
                return 1
    return 0


def first_cells(args) -> int:
    """Time each notebook's start as a user sees it: the kernel's start, the parameters cell and the
    setup cell (`:dep` set, `use`, `init()`), executed in the notebook's folder and stopped there.
    After scripts/setup-notebooks.sh every notebook should be warm here (environment.md)."""
    failed = 0
    rows = []
    for nb_path in [Path(p).resolve() for p in args.notebooks]:
        nb = nbformat.read(nb_path, as_version=4)
        code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
        nb.cells = nb.cells[: code[1] + 1] if len(code) > 1 else nb.cells
        client = NotebookClient(nb, kernel_name=KERNEL, timeout=args.timeout, startup_timeout=300, record_timing=True,
                                resources={"metadata": {"path": str(nb_path.parent)}})
        start = time.monotonic()
        try:
            client.execute()
            status = "ok"
        except Exception as e:
            failure = find_failure(client.nb, e) or {}
            status = f"FAILED: {failure.get('ename', type(e).__name__)}: {failure.get('evalue', str(e))[-500:]}"
            failed += 1
        total = time.monotonic() - start
        setup = cell_seconds(client.nb.cells[code[1]]) if len(code) > 1 else None
        rows.append((nb_path.name, total, setup, status))
        log(f"{nb_path.name}: kernel start + first cells {total:.1f}s (setup cell {setup}s): {status}")
    print("| notebook | kernel start + parameters + setup cell (s) | setup cell alone (s) |")
    print("|---|---|---|")
    for name, total, setup, status in rows:
        print(f"| {name} | {total:.1f} | {setup} |" + ("" if status == "ok" else f" {status[:80]}"))
    return 1 if failed else 0


def render_html(executed: Path) -> Path:
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_filename(str(executed))
    out = executed.with_suffix(".html")
    out.write_text(body)
    return out


# ---------------------------------------------------------------------------------------------
# Summary


def tunelab_binary(args) -> Path | None:
    if args.tunelab:
        return Path(args.tunelab)
    log("building the tunelab CLI for the summary (cargo build, niced)")
    r = subprocess.run(["nice", "-n", "19", "cargo", "build", "--quiet", "--bin", "tunelab"], cwd=ROOT)
    exe = ROOT / "target" / "debug" / "tunelab"
    return exe if r.returncode == 0 and exe.exists() else None


def write_summary(batch_dir: Path, spec: dict, results: list[dict], args) -> None:
    summary = spec.get("summary", {})
    with_metrics = [r for r in results if r["status"] == "ok" and r["metrics"]]
    if not with_metrics:
        log("no configuration produced metrics.arrow: no comparison to summarise")
        return
    exe = tunelab_binary(args)
    if exe is None:
        log("could not build tunelab: summary not written")
        return
    cmd = [str(exe), "batch-summary", str(batch_dir / "batch.json"), "--out", str(batch_dir)]
    for key in ("primary", "baseline", "system"):
        if summary.get(key):
            cmd += [f"--{key}", str(summary[key])]
    if summary.get("measures"):
        cmd += ["--measures", ",".join(summary["measures"])]
    r = subprocess.run(cmd, cwd=ROOT)
    if r.returncode != 0:
        log(f"tunelab batch-summary failed (status {r.returncode})")


# ---------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("notebooks", nargs="*", help="notebooks to run once each with their own parameters")
    ap.add_argument("--matrix", type=Path, help="TOML or JSON matrix of configurations")
    ap.add_argument("--experiment", help="reports/<experiment>/ of this batch (default: matrix's, or 'notebooks')")
    ap.add_argument("--out", type=Path, help="batch directory (default: reports/<experiment>/<timestamp>-batch)")
    ap.add_argument("--timeout", type=int, default=int(os.environ.get("TUNELAB_NOTEBOOK_TIMEOUT", 5400)),
                    help="per-cell timeout in seconds (the first cell builds dependencies: default 5400)")
    ap.add_argument("--features", help="tunelab cargo features for the notebooks' :dep line, e.g. cpu,vulkan")
    ap.add_argument("--html", action="store_true", help="also render each executed notebook to HTML")
    ap.add_argument("--require-rich", action="store_true",
                    help="fail a notebook whose outputs hold no HTML table or no plot, or show a rich value as Debug text")
    ap.add_argument("--tunelab", help="tunelab binary for the summary (default: cargo build)")
    ap.add_argument("--no-summary", action="store_true")
    ap.add_argument("--warm", nargs="?", const=",".join(DEP_SETS), metavar="SETS",
                    help="only compile the notebooks' :dep sets (comma-separated, default all: "
                         f"{','.join(DEP_SETS)}) into a kernel build slot (scripts/setup-notebooks.sh)")
    ap.add_argument("--first-cells", action="store_true",
                    help="only time each notebook's kernel start, parameters and setup cells (environment.md's table)")
    args = ap.parse_args()

    if args.warm:
        return warm(args)
    if args.first_cells:
        return first_cells(args)

    if bool(args.matrix) == bool(args.notebooks):
        ap.error("give either notebooks or --matrix")
    if args.matrix:
        spec = load_spec(args.matrix)
        configs = expand(spec, args.matrix.resolve().parent)
        experiment = args.experiment or spec.get("experiment") or Path(configs[0]["notebook"]).stem
    else:
        spec = {}
        configs = [{"name": slug(Path(n).stem), "notebook": str(resolve_notebook(n, Path.cwd())), "parameters": {}} for n in args.notebooks]
        experiment = args.experiment or "notebooks"
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    batch_dir = (args.out or ROOT / "reports" / slug(experiment) / f"{stamp}-batch").resolve()
    batch_dir.mkdir(parents=True, exist_ok=True)
    log(f"{len(configs)} configuration(s) -> {batch_dir}")

    results = []
    started = time.monotonic()
    for cfg in configs:
        results.append(run_config(cfg, batch_dir, args))
        # Written after every configuration: a killed batch still leaves its record.
        (batch_dir / "batch.json").write_text(json.dumps(
            {"experiment": experiment, "started": stamp, "matrix": str(args.matrix) if args.matrix else None,
             "summary": spec.get("summary", {}), "runs": results}, indent=2) + "\n")
    total = time.monotonic() - started

    failed = [r for r in results if r["status"] != "ok"]
    if not args.no_summary:
        write_summary(batch_dir, spec, results, args)
    log(f"done in {total:.0f}s: {len(results) - len(failed)} ok, {len(failed)} failed; {batch_dir}")
    for r in failed:
        f = r["failure"] or {}
        where = f"cell {f.get('cell')}" if f.get("cell") else "setup"
        print(f"  FAILED {r['name']} ({where}): {f.get('ename', '')}: {f.get('evalue', '')[:200]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

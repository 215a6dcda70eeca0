#!/usr/bin/env bash
# Notebook set-up: the evcxr Jupyter kernel (Rust) and Jupyter's headless runner, project-local.
# Idempotent (each step is skipped when already done); Debian/Ubuntu and macOS.
#
#   scripts/setup-notebooks.sh
#
# What it leaves behind:
#   ~/.cargo/bin/evcxr_jupyter            evcxr_jupyter 0.22.x (cargo install --locked; ~15 min on 2 cores, once)
#   .venv/                                 Python venv shared with the reference tools (git-ignored)
#   .venv/share/jupyter/kernels/rust/      the `rust` kernel spec, visible only to this venv's Jupyter
#   notebooks/evcxr/init.evcxr             evcxr start-up commands (offline, no compilation cache), tracked in git;
#                                          the kernel spec points EVCXR_CONFIG_DIR at it
#   target/evcxr/kernel-0/                 evcxr's build of the notebooks' two :dep sets
#                                          (notebooks/evcxr/deps-data.evcxr, deps.evcxr), warm: first
#                                          cells start at once
# Then:
#   scripts/run-notebooks notebooks/01-datasets.ipynb          # headless, with a persistent build dir
#   .venv/bin/jupyter nbconvert --to notebook --execute notebooks/01-datasets.ipynb --output-dir target/nb
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

# evcxr 0.22 is the release line these notebooks are written against (its display protocol and
# error reporting are described in src/notebook.rs). Any 0.22.x already installed is accepted.
EVCXR_SERIES=0.22
EVCXR_VERSION=0.22.0
# The only Python packages the notebooks need: a kernel client, the executor and the converter.
# No `jupyter` metapackage, no ipykernel (the kernel is Rust); `pip install notebook` for the browser UI.
PY_PACKAGES=("jupyter-client>=8,<9" "nbclient>=0.10,<0.11" "nbconvert>=7.16,<8" "nbformat>=5.10,<6")

log() { printf '[setup-notebooks %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf '[setup-notebooks] error: %s\n' "$*" >&2; exit 1; }

command -v cargo >/dev/null || die "cargo not found: install Rust first (see environment.md)"

# 1. evcxr_jupyter, built from crates.io with its lock file.
cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
installed=$(cargo install --list | sed -n 's/^evcxr_jupyter v\([0-9][0-9.]*\):$/\1/p')
if [[ "$installed" == "$EVCXR_SERIES".* ]]; then
  log "evcxr_jupyter $installed already installed"
else
  log "building evcxr_jupyter $EVCXR_VERSION (cargo install --locked, niced; takes a while on a small machine)"
  start=$(date +%s)
  # The kernel only drives rustc; its own speed hardly matters, its build time does (CI builds it cold):
  # no LTO, more codegen units, opt-level 1 halve the release build on 2 cores.
  CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 CARGO_PROFILE_RELEASE_OPT_LEVEL=1 \
    CARGO_PROFILE_RELEASE_DEBUG=0 nice -n 19 cargo install --locked evcxr_jupyter --version "$EVCXR_VERSION"
  log "evcxr_jupyter installed in $(( $(date +%s) - start ))s"
fi
evcxr_jupyter="$cargo_bin/evcxr_jupyter"
[[ -x "$evcxr_jupyter" ]] || evcxr_jupyter=$(command -v evcxr_jupyter) || die "evcxr_jupyter not on PATH after install"

# Every package in Cargo.lock, for every platform: evcxr runs `cargo metadata`, which reads them all,
# and notebooks build offline (`:offline 1` in notebooks/evcxr/init.evcxr) from the pinned versions.
log "cargo fetch --locked (all platforms; a no-op when the registry cache has everything)"
cargo fetch --locked --quiet

# 2. The project venv (shared with scripts/setup-python.sh; created here if missing).
if [[ ! -x .venv/bin/python ]]; then
  python=${PYTHON:-python3}
  command -v "$python" >/dev/null || die "python3 not found (Debian: apt-get install python3 python3-venv; macOS: xcode-select --install)"
  log "creating .venv with $("$python" --version 2>&1)"
  "$python" -m venv .venv || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
fi
if .venv/bin/python -c 'import nbclient, nbconvert, nbformat, jupyter_client' 2>/dev/null; then
  log "Jupyter runner already in .venv"
else
  log "installing ${PY_PACKAGES[*]} into .venv"
  .venv/bin/python -m pip install --quiet "${PY_PACKAGES[@]}"
fi

# 3. The kernel spec, inside the venv so it does not touch the user's own Jupyter set-up.
# evcxr_jupyter --install writes $JUPYTER_PATH/kernels/rust (JUPYTER_PATH taken as one directory);
# the venv's Jupyter searches <venv>/share/jupyter first.
kernel_dir=.venv/share/jupyter/kernels/rust
JUPYTER_PATH="$root/.venv/share/jupyter" "$evcxr_jupyter" --install >/dev/null
# Point the kernel at the project's evcxr config dir (evcxr reads $EVCXR_CONFIG_DIR/init.evcxr at start).
# Start it through scripts/evcxr_kernel.py, which gives each kernel a kept build directory (slot
# target/evcxr/kernel-N/, warmed in step 5) and seeds it with the repository's Cargo.lock.
.venv/bin/python - "$kernel_dir/kernel.json" "$root/notebooks/evcxr" "$root/.venv/bin/python" "$root/scripts/evcxr_kernel.py" <<'PY'
import json, sys
path, config_dir, python, launcher = sys.argv[1:5]
spec = json.load(open(path))
spec.setdefault("env", {})["EVCXR_CONFIG_DIR"] = config_dir
spec["display_name"] = "Rust (tunelab)"
evcxr = spec["argv"][0] if spec["argv"][0] != python else spec["argv"][2]
spec["argv"] = [python, launcher, evcxr, "--control_file", "{connection_file}"]
json.dump(spec, open(path, "w"), indent=2)
PY
.venv/bin/jupyter kernelspec list | grep -q "$root/$kernel_dir" \
  || die "the venv's Jupyter does not see $kernel_dir"
log "kernel 'rust' -> $root/$kernel_dir (EVCXR_CONFIG_DIR=notebooks/evcxr)"

# 4. Hints, not installs: a faster linker shortens every cell's link step (evcxr picks up mold or lld).
# rustc >= 1.90 already links x86_64-unknown-linux-gnu with its own rust-lld (seen running in the
# cells' links), so there the hint would only cost a full rebuild of the warm set for nothing.
rustc_vv=$(rustc -vV)
rustc_minor=$(sed -n 's/^release: 1\.\([0-9]*\).*/\1/p' <<<"$rustc_vv")
bundled_lld=no
if grep -q '^host: x86_64-unknown-linux-gnu$' <<<"$rustc_vv" && (( ${rustc_minor:-0} >= 90 )); then bundled_lld=yes; fi
if [[ "$(uname -s)" != Darwin && $bundled_lld == no ]] && ! command -v mold >/dev/null && ! command -v lld >/dev/null; then
  log "tip: 'apt-get install lld' makes evcxr link cells faster (it uses lld automatically); install it before"
  log "     this warm-up: it changes evcxr's RUSTFLAGS, so installing it later makes the next kernel rebuild everything"
fi
# 5. Warm build: every bundled notebook loads one of two `:dep` sets (notebooks/evcxr/deps-data.evcxr:
# tunelab without burn, for 00/01/04; notebooks/evcxr/deps.evcxr: with burn, for the others), and both
# are compiled here into the kernel's build slot target/evcxr/kernel-0/ by cargo itself (evcxr's own
# compilation cache is off, see notebooks/evcxr/init.evcxr), so every notebook opened afterwards
# finds its dependencies built. Cold this is the long step (niced); when warm it only checks (and
# recompiles tunelab if its sources changed). TUNELAB_NOTEBOOK_WARM: `all` (default), `data` (only
# the burn-free set: what CI runs), `0` skips it.
warm=${TUNELAB_NOTEBOOK_WARM:-all}
case "$warm" in
  0) ;;
  all) warm_sets=data,models ;;
  data|models|data,models) warm_sets=$warm ;;
  *) die "TUNELAB_NOTEBOOK_WARM=$warm: want all, data, models or 0" ;;
esac
if [[ "$warm" != 0 ]]; then
  start=$(date +%s)
  nice -n 10 .venv/bin/python scripts/run_notebooks.py --warm "$warm_sets" || die "the notebooks' warm-up build failed (see above)"
  log "notebook build ($warm_sets) warm in $(( $(date +%s) - start ))s"
fi
log "done. Every notebook's first cell now starts computing at once (kernel build dir target/evcxr/kernel-0/)."

#!/usr/bin/env bash
# The test command (README, .ci/run): fetch bundled weights, set up the Python reference tools,
# then run every Rust test (unit, integration, doc) against them, then execute notebooks 01 and 04 through
# Jupyter (TUNELAB_SKIP_NOTEBOOKS=1 skips that). One dev build serves the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
scripts/fetch-models.sh
scripts/setup-python.sh
export TUNELAB_REFERENCE_PYTHON="$PWD/.venv/bin/python"
# Two cores: build and run tests with both, but keep test threads bounded so model tests don't thrash.
cargo test --locked --no-fail-fast -- --test-threads=2 2>&1
echo "cargo tests finished at $(( $(date +%s) - start ))s"
# The GPU backends (Vulkan on Linux, Metal on macOS) cannot run on this machine, but they must keep compiling:
# a type-check of the library, the CLI and the tests with both features on.
cargo check --locked --all-targets --features vulkan,metal 2>&1
echo "GPU features type-checked at $(( $(date +%s) - start ))s"
# Notebooks 01 and 04 end to end through Jupyter with the evcxr kernel: set-up (evcxr_jupyter is built
# once), headless execution, HTML copies; fails on any failing cell or a notebook that shows no table/plot.
# They need no models, so evcxr builds tunelab without burn (see Cargo.toml's `models` feature).
if [[ "${TUNELAB_SKIP_NOTEBOOKS:-0}" != 1 ]]; then
  scripts/setup-notebooks.sh
  rm -rf target/nb-ci
  scripts/run-notebooks --out target/nb-ci --html --require-rich --no-summary \
    notebooks/01-datasets.ipynb notebooks/04-ab-comparison.ipynb
fi
echo "tests finished in $(( $(date +%s) - start ))s"

#!/usr/bin/env bash
# The test command (README, .ci/run): fetch bundled weights, set up the Python reference tools,
# then run every Rust test (unit, integration, doc) against them, then execute the notebooks that fit CI's
# time through Jupyter (TUNELAB_SKIP_NOTEBOOKS=1 skips that). One dev build serves the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
# A cold build here needs about 8 GB under target/ (measured in environment.md); a CI run once died with
# "No space left on device" in the middle of compiling. Say up front how much there is.
avail_kb=$(df -Pk . | awk 'NR==2 {print $4}')
echo "disk: $((avail_kb / 1024 / 1024)) GiB free under $PWD (a cold build needs about 8)"
if (( avail_kb < 8 * 1024 * 1024 )); then
  echo "warning: less than 8 GiB free; the build may fail with 'No space left on device'" >&2
fi
scripts/fetch-models.sh
scripts/setup-python.sh
export TUNELAB_REFERENCE_PYTHON="$PWD/.venv/bin/python"
# Two cores: build and run tests with both, but keep test threads bounded so model tests don't thrash.
cargo test --locked --no-fail-fast -- --test-threads=2 2>&1
echo "cargo tests finished at $(( $(date +%s) - start ))s"
# The GPU backends (Vulkan on Linux, Metal on macOS) cannot run on this machine, but they must keep compiling:
# a type-check of the library, the CLI and the tests with both features on.
cargo check --locked --all-targets --features vulkan,metal 2>&1
# And the build a GPU-only user makes (no CPU backend: `--no-default-features --features vulkan`), where
# a stray `Device::flex()` compiles in every other build (it broke 43b0f7a's parent unseen).
cargo check --locked --no-default-features --features vulkan --lib --bins 2>&1
echo "GPU features type-checked at $(( $(date +%s) - start ))s"
# The library's documentation: every intra-doc link resolves and none points at a private item
# (rustdoc's warnings as errors; eleven had crept in unseen by 2026-12-07).
RUSTDOCFLAGS="-D warnings" cargo doc --locked --no-deps --lib 2>&1
echo "documentation built at $(( $(date +%s) - start ))s"
# The GPU profile summarizer (scripts/profile-gpu-step.sh) against a log cubecl's own logger wrote.
python3 scripts/summarize-cubecl-profile.py --self-test
# Notebooks end to end through Jupyter with the evcxr kernel: set-up (evcxr_jupyter is built once, then
# the burn-free :dep set is compiled into the kernel's build slot), headless execution, HTML copies;
# fails on any failing cell or a notebook that shows no table/plot. CI runs the notebooks that need no
# burn: 00 (kernel), 01 (data), 04 (A/B statistics). The burn notebooks' evcxr build (burn, burn-flex,
# the model code: ~40 more minutes cold on 2 cores, environment.md) would not fit CI's 90 minutes beside
# the cold cargo test and the GPU type-check; scripts/run-model-notebooks.sh runs them (07 and 08 on
# their tiny fixtures, checked the same way).
if [[ "${TUNELAB_SKIP_NOTEBOOKS:-0}" != 1 ]]; then
  # The notebooks' build (target/evcxr, about 1.1 GB) comes last, when the disk is fullest.
  avail_kb=$(df -Pk . | awk 'NR==2 {print $4}')
  echo "disk: $((avail_kb / 1024)) MiB free before the notebooks' build (it needs about 1200)"
  TUNELAB_NOTEBOOK_WARM=data scripts/setup-notebooks.sh
  echo "notebook set-up finished at $(( $(date +%s) - start ))s"
  rm -rf target/nb-ci
  scripts/run-notebooks --out target/nb-ci --html --require-rich --no-summary \
    notebooks/00-kernel-check.ipynb notebooks/01-datasets.ipynb notebooks/04-ab-comparison.ipynb
fi
echo "tests finished in $(( $(date +%s) - start ))s"

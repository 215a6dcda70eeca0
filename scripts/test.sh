#!/usr/bin/env bash
# The test command (README, .ci/run): fetch bundled weights, set up the Python reference tools,
# then run every Rust test (unit, integration, doc) against them. One dev build serves it all.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
scripts/fetch-models.sh
scripts/setup-python.sh
export TUNELAB_REFERENCE_PYTHON="$PWD/.venv/bin/python"
# Two cores: build and run tests with both, but keep test threads bounded so model tests don't thrash.
cargo test --locked --no-fail-fast -- --test-threads=2 2>&1
echo "tests finished in $(( $(date +%s) - start ))s"

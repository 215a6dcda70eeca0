#!/usr/bin/env bash
# The main job (README's first command): set up what a fresh machine lacks, then run the end-to-end
# experiment on the bundled datasets and models, on the CPU unless TUNELAB_DEVICE says otherwise.
#   scripts/run-experiment.sh [extra `tunelab experiment` flags, e.g. --seed 7]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-models.sh
scripts/setup-python.sh
# Same dev profile as `scripts/test.sh`: one build serves both.
cargo build --locked --bin tunelab
target/debug/tunelab doctor || true
exec target/debug/tunelab experiment "$@"

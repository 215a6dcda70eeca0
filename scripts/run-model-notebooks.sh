#!/usr/bin/env bash
# The notebooks that need burn and run in minutes on the CPU, the way CI runs the burn-free ones
# (scripts/test.sh): headless, HTML copies, failing on any failing cell or a notebook that shows no
# table or plot. 07 tunes EmbeddingGemma and 08 a yes/no reranker, both on their tiny fixtures.
# Not in CI: their evcxr build (burn) does not fit its 90 minutes (environment.md). The first run after
# a fresh clone compiles the burn :dep set (scripts/setup-notebooks.sh does it once; long when cold).
#
#   scripts/run-model-notebooks.sh [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/nb-models
if [[ "${1:-}" == --out ]]; then out=$2; fi
TUNELAB_NOTEBOOK_WARM=models scripts/setup-notebooks.sh
rm -rf "$out"
scripts/run-notebooks --out "$out" --html --require-rich --no-summary \
  notebooks/07-embeddinggemma-finetune.ipynb notebooks/08-reranker.ipynb

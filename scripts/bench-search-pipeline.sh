#!/usr/bin/env bash
# QMD's search pipeline on the CPU, queries per second, side by side on this machine:
#   tunelab  `tunelab search --pipeline qmd --queries ... --out ...` (BM25 via SQLite FTS5, BERT
#            vectors, RRF; no expansion, no reranker: what runs without the LLMs)
#   python   scripts/bench-search-pipeline.py: the same computation with sqlite3 FTS5,
#            sentence-transformers and numpy; it also reports how many queries get tunelab's fused top 10.
# Both time the per-query loop only (indexing reported separately by each).
#
#   scripts/bench-search-pipeline.sh [ROUNDS]       (default 2)
# Env: PYTHON_REF  a Python with torch + sentence-transformers (default .venv/bin/python; `scripts/setup-python.sh --heavy`
#                  installs them)
#      MODEL       encoder folder (default models/all-MiniLM-L6-v2)
#      THREADS     torch threads for the Python side (default 2 = this machine's cores)
#
# Measured 2026-12-06 on this 2-core machine (AMD EPYC, shared: load average ~17 during the run),
# bundled corpus (280 documents, one chunk each), 120 test queries, all-MiniLM-L6-v2, no expansion,
# no reranker:
#   tunelab 21.1 queries/s (indexing 62.8 s), python 2.36 queries/s (indexing 64.6 s, torch 2 threads)
#   -> 8.9x; the fused top 10 agree on 120 of 120 queries. (Python's per-query cost is one
#   sentence-transformers `encode` call per query; both ran under the same contention.)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-2}
PYTHON_REF=${PYTHON_REF:-.venv/bin/python}
MODEL=${MODEL:-models/all-MiniLM-L6-v2}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
cargo build --quiet --bin tunelab
for r in $(seq "$ROUNDS"); do
  rm -rf "$WORK/runs"
  ./target/debug/tunelab search --pipeline qmd --corpus datasets/corpus --model "$MODEL" \
    --queries datasets/queries/test.jsonl --out "$WORK/runs" 2>&1 | grep -E "indexed|queries/s"
  THREADS=${THREADS:-2} "$PYTHON_REF" scripts/bench-search-pipeline.py --corpus datasets/corpus --model "$MODEL" \
    --queries datasets/queries/test.jsonl --rust-hybrid "$WORK/runs/hybrid.run"
done

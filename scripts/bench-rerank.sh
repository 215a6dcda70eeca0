#!/usr/bin/env bash
# CPU rerank throughput (documents/s), side by side on this machine, same run, same work:
#   tunelab       `tunelab rerank` on SmolLM2-135M-Instruct (the bundled Q4_1 GGUF, dequantized
#                 to f32 on load), the Qwen3-Reranker prompt, batch 8, P(yes) at the last position
#   transformers  scripts/bench-rerank.py: LlamaForCausalLM on gguf-py's f32 dequantization of the
#                 same file, the same token ids (template pieces, query and document tokenized on
#                 their own, documents cut at --max-length), the same batches, torch's threads = cores
# The work: the first N_QUERIES test queries (default 8) and every document the qrels judge for
# them (9 each), as a run; the whole markdown body of each document is sent (no chunker yet).
# Prints both JSON summaries, the ratio, and the largest |P(yes) difference| between the runs.
#   scripts/bench-rerank.sh
# Env: PYTHON_REF  a Python with torch, transformers, gguf (default .venv/bin/python; `scripts/setup-python.sh --heavy`)
#      N_QUERIES   queries (default 8); MAX_LENGTH (default 1024); BATCH (default 8)
#      TUNELAB     the binary (default target/debug/tunelab; dependencies are built at opt-level 3)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON_REF:-.venv/bin/python}
N=${N_QUERIES:-8}
MAXLEN=${MAX_LENGTH:-1024}
BATCH=${BATCH:-8}
BIN=${TUNELAB:-target/debug/tunelab}
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
head -n "$N" datasets/queries/test.jsonl > "$TMP/q.jsonl"
python3 - "$TMP/q.jsonl" > "$TMP/in.run" <<'PY'
import json, sys
qids = {json.loads(l)["qid"] for l in open(sys.argv[1]) if l.strip()}
for line in open("datasets/qrels/test.qrels"):
    qid, _, doc, _ = line.split()
    if qid in qids:
        print(f"{qid} Q0 {doc} 0 0 judged")
PY
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //') ($(nproc) cores)"
start=$(date +%s.%N)
"$BIN" rerank --model "$MODEL" --queries "$TMP/q.jsonl" --run "$TMP/in.run" --corpus datasets/corpus \
  --out "$TMP/tunelab.run" --max-length "$MAXLEN" --batch-size "$BATCH" 2> "$TMP/tunelab.log"
tail -n 1 "$TMP/tunelab.log"
ours=$(tail -n 1 "$TMP/tunelab.log" | sed -E 's/.*\(([0-9.]+) documents\/s.*/\1/')
theirs_json=$("$PY" scripts/bench-rerank.py --model "$MODEL" --queries "$TMP/q.jsonl" --run "$TMP/in.run" \
  --corpus datasets/corpus --out "$TMP/transformers.run" --max-length "$MAXLEN" --batch-size "$BATCH" 2>/dev/null | tail -n 1)
echo "$theirs_json"
python3 - "$ours" "$theirs_json" "$TMP/tunelab.run" "$TMP/transformers.run" <<'PY'
import json, sys
ours, theirs = float(sys.argv[1]), json.loads(sys.argv[2])["documents_per_s"]
read = lambda p: {(l.split()[0], l.split()[2]): float(l.split()[4]) for l in open(p)}
a, b = read(sys.argv[3]), read(sys.argv[4])
assert a.keys() == b.keys(), "the two runs score different documents"
print(json.dumps({"tunelab_documents_per_s": ours, "transformers_documents_per_s": theirs, "ratio": ours / theirs,
                  "max_abs_p_yes_diff": max(abs(a[k] - b[k]) for k in a)}))
PY

#!/usr/bin/env bash
# Evaluation speed: `tunelab eval` vs pytrec_eval (trec_eval's C code behind Python's file parsing)
# on the same generated files: 10,000 queries x 1,000 retrieved documents (10M run lines) by default.
#
#   scripts/setup-python.sh && cargo build && scripts/bench-eval.sh [QUERIES] [DOCS_PER_QUERY]
#
# tunelab is timed as built by `cargo build`: the dev profile (our crate unoptimised, dependencies
# at opt-level 3) is the one build this project makes. Set TRECEVAL=/path/to/trec_eval to time a
# trec_eval binary as well (the PyPI sdist of pytrec-eval-terrier does not ship trec_eval's source,
# so this script does not build one). Files go to ${BENCH_DIR:-target/bench-eval} and are reused.
# PYTHON_REF (default .venv/bin/python) and TUNELAB_BIN (default target/debug/tunelab) override tools.
set -euo pipefail
cd "$(dirname "$0")/.."
Q=${1:-10000}
D=${2:-1000}
DIR=${BENCH_DIR:-target/bench-eval}
PY=${PYTHON_REF:-.venv/bin/python}
BIN=${TUNELAB_BIN:-target/debug/tunelab}
[ -x "$PY" ] || { echo "missing $PY: run scripts/setup-python.sh (or set PYTHON_REF)" >&2; exit 1; }
[ -x "$BIN" ] || { echo "missing $BIN: run cargo build" >&2; exit 1; }
mkdir -p "$DIR"
QRELS="$DIR/bench-$Q-$D.qrels"
RUN="$DIR/bench-$Q-$D.run"
MEASURES=(map recip_rank ndcg P.5,10,100 recall.100,1000 ndcg_cut.10,100 success.1,10)

if [ ! -s "$RUN" ] || [ ! -s "$QRELS" ]; then
  echo "generating $Q queries x $D documents in $DIR" >&2
  "$PY" - "$Q" "$D" "$QRELS" "$RUN" <<'PYEOF'
import random, sys
q, d, qrels_path, run_path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
rng = random.Random(12345)
with open(qrels_path + ".part", "w") as qrels, open(run_path + ".part", "w") as run:
    for i in range(q):
        qid = f"q{i}"
        docs = rng.sample(range(5_000_000), d + 20)
        # Up to 60 judgments: 40 among the retrieved documents, 20 never retrieved; grades 0-3.
        for doc in docs[:min(40, d)] + docs[d:]:
            qrels.write(f"{qid} 0 D{doc} {rng.choice((0, 0, 1, 1, 2, 3))}\n")
        ranked = docs[:d]
        rng.shuffle(ranked)
        lines = []
        for rank, doc in enumerate(ranked, 1):
            score = round(100.0 - rank * 0.09, 2)  # rounding to 2 decimals makes ties
            lines.append(f"{qid} Q0 D{doc} {rank} {score} bench\n")
        run.writelines(lines)
import os
os.replace(qrels_path + ".part", qrels_path)
os.replace(run_path + ".part", run_path)
PYEOF
fi
ls -la "$QRELS" "$RUN" >&2

margs=(); for m in "${MEASURES[@]}"; do margs+=(-m "$m"); done
# measure NAME OUT CMD...: run CMD with stdout to OUT; sets NAME_wall and NAME_cpu (user+sys seconds).
# CPU time is reported too because a shared machine's wall time depends on its load.
measure() {
  local name=$1 out=$2; shift 2
  local TIMEFORMAT='%R %U %S' t
  t=$( { time "$@" > "$out" 2> "$out.err"; } 2>&1 ) || { cat "$out.err" >&2; exit 1; }
  read -r w u s <<< "$t"
  printf -v "${name}_wall" '%s' "$w"
  printf -v "${name}_cpu" '%s' "$(awk "BEGIN{print $u + $s}")"
}

echo "timing tunelab eval ($BIN)" >&2
measure tunelab "$DIR/tunelab.out" "$BIN" eval "${margs[@]}" "$QRELS" "$RUN"

have_py=""
if "$PY" -c 'import pytrec_eval' 2>/dev/null; then
  have_py=1
  echo "timing pytrec_eval" >&2
  cat > "$DIR/pytrec_bench.py" <<'PYEOF'
import sys, time
t0 = time.perf_counter()
import pytrec_eval
qrels_path, run_path, *measures = sys.argv[1:]
with open(qrels_path) as f:
    qrels = pytrec_eval.parse_qrel(f)
with open(run_path) as f:
    run = pytrec_eval.parse_run(f)
t1 = time.perf_counter()
res = pytrec_eval.RelevanceEvaluator(qrels, set(measures)).evaluate(run)
t2 = time.perf_counter()
print(f"{t1 - t0} {t2 - t1}")
PYEOF
  measure pytrec "$DIR/pytrec.times" "$PY" "$DIR/pytrec_bench.py" "$QRELS" "$RUN" "${MEASURES[@]}"
  read -r py_parse py_eval < "$DIR/pytrec.times"
else
  echo "pytrec_eval is not importable with $PY: skipping it" >&2
fi

if [ -n "${TRECEVAL:-}" ]; then
  echo "timing $TRECEVAL" >&2
  measure te "$DIR/trec_eval.out" "$TRECEVAL" "${margs[@]}" "$QRELS" "$RUN"
fi

ratio() { awk "BEGIN{printf \"%.2f\", $1 / $2}"; }
lines=$(wc -l < "$RUN")
printf '\nmachine: %s cores, %s\n' "$(nproc)" "$(uptime | sed 's/.*load/load/')"
printf 'files: %s queries x %s docs (%s run lines), measures: %s\n' "$Q" "$D" "$lines" "${MEASURES[*]}"
printf '%-36s %9s %9s\n' "" "wall s" "cpu s"
printf '%-36s %9.2f %9.2f\n' "tunelab eval (dev profile)" "$tunelab_wall" "$tunelab_cpu"
if [ -n "$have_py" ]; then
  printf '%-36s %9.2f %9.2f   (parse %.2f s + evaluate %.2f s)\n' "pytrec_eval (Python + trec_eval C)" "$pytrec_wall" "$pytrec_cpu" "$py_parse" "$py_eval"
fi
if [ -n "${TRECEVAL:-}" ]; then
  printf '%-36s %9.2f %9.2f\n' "trec_eval binary" "$te_wall" "$te_cpu"
fi
echo "ratios (other / tunelab; >1 means tunelab is faster):"
if [ -n "$have_py" ]; then
  printf '  pytrec_eval: wall %s, cpu %s\n' "$(ratio "$pytrec_wall" "$tunelab_wall")" "$(ratio "$pytrec_cpu" "$tunelab_cpu")"
fi
if [ -n "${TRECEVAL:-}" ]; then
  printf '  trec_eval:   wall %s, cpu %s\n' "$(ratio "$te_wall" "$tunelab_wall")" "$(ratio "$te_cpu" "$tunelab_cpu")"
  if cmp -s "$DIR/tunelab.out" "$DIR/trec_eval.out"; then echo "outputs: byte-identical"; else echo "outputs: DIFFER (see $DIR/*.out)"; fi
fi
grep -E "^(map|ndcg_cut_10|P_10) " "$DIR/tunelab.out" >&2 || true

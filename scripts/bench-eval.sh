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
set -euo pipefail
cd "$(dirname "$0")/.."
Q=${1:-10000}
D=${2:-1000}
DIR=${BENCH_DIR:-target/bench-eval}
PY=.venv/bin/python
BIN=${TUNELAB_BIN:-target/debug/tunelab}
[ -x "$PY" ] || { echo "missing $PY: run scripts/setup-python.sh" >&2; exit 1; }
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
        docs = rng.sample(range(5_000_000), d + 40)
        # 60 judgments: 40 among the retrieved documents, 20 never retrieved; grades 0-3.
        for doc in docs[:40] + docs[d:d + 20]:
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
now() { date +%s.%N; }

echo "timing tunelab eval ($BIN)" >&2
t0=$(now); "$BIN" eval "${margs[@]}" "$QRELS" "$RUN" > "$DIR/tunelab.out"; t1=$(now)
tunelab_s=$(awk "BEGIN{print $t1 - $t0}")

echo "timing pytrec_eval" >&2
"$PY" - "$QRELS" "$RUN" "$DIR/pytrec.times" "${MEASURES[@]}" <<'PYEOF'
import sys, time
t0 = time.perf_counter()
import pytrec_eval
qrels_path, run_path, times_path, *measures = sys.argv[1:]
with open(qrels_path) as f:
    qrels = pytrec_eval.parse_qrel(f)
with open(run_path) as f:
    run = pytrec_eval.parse_run(f)
t1 = time.perf_counter()
res = pytrec_eval.RelevanceEvaluator(qrels, set(measures)).evaluate(run)
t2 = time.perf_counter()
with open(times_path, "w") as out:
    out.write(f"{t2 - t0} {t1 - t0} {t2 - t1}\n")
PYEOF
read -r py_total py_parse py_eval < "$DIR/pytrec.times"

if [ -n "${TRECEVAL:-}" ]; then
  echo "timing $TRECEVAL" >&2
  t0=$(now); "$TRECEVAL" "${margs[@]}" "$QRELS" "$RUN" > "$DIR/trec_eval.out"; t1=$(now)
  te_s=$(awk "BEGIN{print $t1 - $t0}")
fi

lines=$(wc -l < "$RUN")
printf '\nfiles: %s queries x %s docs (%s run lines), %s measures\n' "$Q" "$D" "$lines" "${#MEASURES[@]}"
printf '%-34s %8.2f s\n' "tunelab eval (dev profile)" "$tunelab_s"
printf '%-34s %8.2f s   (parse %.2f s + evaluate %.2f s)\n' "pytrec_eval (Python + trec_eval C)" "$py_total" "$py_parse" "$py_eval"
printf '%-34s %8.2f   (>1: tunelab faster)\n' "ratio pytrec_eval / tunelab" "$(awk "BEGIN{print $py_total / $tunelab_s}")"
if [ -n "${te_s:-}" ]; then
  printf '%-34s %8.2f s\n' "trec_eval binary" "$te_s"
  printf '%-34s %8.2f   (>1: tunelab faster)\n' "ratio trec_eval / tunelab" "$(awk "BEGIN{print $te_s / $tunelab_s}")"
fi
grep -E "^(map|ndcg_cut_10|P_10) " "$DIR/tunelab.out" >&2 || true

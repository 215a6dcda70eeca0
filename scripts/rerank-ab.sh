#!/usr/bin/env bash
# Tuned vs base yes/no LLM reranker inside QMD's whole search pipeline, on the bundled held-out
# test queries (issue 15): does a reranker LoRA move the `full` stage (MRR@10, nDCG@10)?
#
# Stages (run all, or some with --stage a,b; each reads the previous stages' files under OUT):
#   candidates  CPU  `tunelab search --pipeline qmd` over the test queries with the base embedder
#                    (and BASE_EXPANSIONS): OUT/candidates/hybrid+expansion.run holds the 40 fused
#                    candidates per query that QMD reranks.
#   train       GPU  `tunelab train rerank` on datasets/reranker/judgments.jsonl -> OUT/adapter
#                    (calibration.json: Brier and ECE on held-out training queries, base vs tuned).
#   rerank      GPU  `tunelab rerank` of those candidates (--depth 40) with the base reranker and
#                    with the adapter -> OUT/scores/{base,tuned}.run (P(yes) per query and document).
#   report      CPU  `tunelab experiment --pipeline --base-rerank-run --tuned-rerank-run`: the same
#                    pipeline again, the `full` stage blending those scores with the fused ranks,
#                    A/B report per stage (randomization tests, bootstrap CIs, Holm) under
#                    OUT/reports/rerank-ab/<run>/. It checks that its candidates are the ones reranked.
#   gpu = train,rerank; all = candidates,train,rerank,report (the default).
#
#   scripts/rerank-ab.sh                                # everything on one machine
#   OUT=reports/rerank-ab/x scripts/rerank-ab.sh --stage candidates           # here, CPU
#   OUT=reports/rerank-ab/x TUNELAB_DEVICE=vulkan TUNELAB=path/to/vulkan/tunelab \
#       scripts/rerank-ab.sh --stage gpu                                      # on the GPU machine
#   OUT=reports/rerank-ab/x scripts/rerank-ab.sh --stage report               # back here, CPU
#
# The candidates and report stages index the corpus with the embedder: run both on the same
# device (CPU by default, PIPELINE_DEVICE), so they compute the same candidates.
# Env: TUNELAB          the binary (default: target/release/tunelab, built with FEATURES if missing)
#      TUNELAB_DEVICE   device of the train and rerank stages (default cpu)
#      PIPELINE_DEVICE  device of the candidates and report stages (default cpu)
#      OUT              work folder (default reports/rerank-ab/<UTC timestamp>)
#      RERANKER         base reranker (default models/SmolLM2-135M-Instruct.Q4_1.gguf)
#      EMBEDDER         base embedder (default models/all-MiniLM-L6-v2)
#      BASE_EXPANSIONS  expansions of the test queries (optional; `tunelab eval expansions`' file)
#      DATASETS         bundled data (default datasets); QUERIES_LIMIT keeps the first N test queries
#      ITERS, BATCH, LR, RANK, ALPHA, LOSS, TARGETS, NEGATIVES, MINED, SEED, MAX_SEQ   training
#                       (defaults 900, 8, 5e-4, 16, 32, pointwise, binary, 3, 0, 42, 512: run E2's,
#                       reports/rerank-ab/20261206-gpu/README.md, the one that beat the base
#                       reranker; the bundled judgments carry the pipeline-mined negatives already)
#      DTYPE            train rerank --dtype (default f32, E2's; auto would pick f16 on a GPU)
#      MINING_EMBEDDER  mine MINED more negatives through QMD's pipeline (BM25 + vector, fused) with
#                       this embedder (e.g. models/all-MiniLM-L6-v2), as the candidates reranked at
#                       search time are found, instead of with BM25 alone
#      SAVE_EVERY       iterations between adapter saves (default ITERS: only the last)
#      VALID_FRACTION   training queries held out for calibration (default 0.05; each held-out
#                       judgment is scored twice, base and tuned)
#      DEPTH            candidates reranked per query (default 40, QMD's; the report's pipeline
#                       keeps as many, so a smaller DEPTH is a quick check, not QMD's pipeline)
#      RERANK_BATCH     prompts per forward pass (default 16); PERMUTATIONS (default 10000)
#      SYSTEMS          rerankers the rerank stage scores (default "base tuned"; "tuned" when
#                       OUT/scores/base.run comes from another run of the same candidates)
set -euo pipefail
for v in TUNELAB OUT RERANKER EMBEDDER BASE_EXPANSIONS DATASETS MINING_EMBEDDER; do
  # Paths given in the environment are taken from where the script was started.
  if [ -n "${!v:-}" ] && [ -e "${!v}" ]; then printf -v "$v" '%s' "$(realpath "${!v}")"; fi
done
cd "$(dirname "$0")/.."
STAGES=all
while [ $# -gt 0 ]; do
  case "$1" in
    --stage) STAGES=$2; shift 2 ;;
    --stage=*) STAGES=${1#--stage=}; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
STAGES=${STAGES//all/candidates,train,rerank,report}
STAGES=${STAGES//gpu/train,rerank}
has() { [[ ",$STAGES," == *",$1,"* ]]; }

OUT=${OUT:-reports/rerank-ab/$(date -u +%Y%m%dT%H%M%SZ)}
RERANKER=${RERANKER:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
EMBEDDER=${EMBEDDER:-models/all-MiniLM-L6-v2}
DATASETS=${DATASETS:-datasets}
ITERS=${ITERS:-900}; BATCH=${BATCH:-8}; LR=${LR:-5e-4}; RANK=${RANK:-16}; ALPHA=${ALPHA:-32}
LOSS=${LOSS:-pointwise}; TARGETS=${TARGETS:-binary}; NEGATIVES=${NEGATIVES:-3}; MINED=${MINED:-0}; SEED=${SEED:-42}
MAX_SEQ=${MAX_SEQ:-512}; VALID_FRACTION=${VALID_FRACTION:-0.05}; DTYPE=${DTYPE:-f32}; DEPTH=${DEPTH:-40}; RERANK_BATCH=${RERANK_BATCH:-16}
PERMUTATIONS=${PERMUTATIONS:-10000}; SYSTEMS=${SYSTEMS:-base tuned}
PIPELINE_DEVICE=${PIPELINE_DEVICE:-cpu}
if [ -z "${TUNELAB:-}" ]; then
  cargo build --locked --release ${FEATURES:+--features "$FEATURES"} --bin tunelab
  TUNELAB=target/release/tunelab
fi
T=$TUNELAB
mkdir -p "$OUT"
step() { echo "== $1 ($(date -u +%H:%M:%S))"; }

# The test queries (all, or the first QUERIES_LIMIT with their qrels: a quick check).
DS=$DATASETS
if [ -n "${QUERIES_LIMIT:-}" ]; then
  DS=$OUT/datasets
  mkdir -p "$DS/queries" "$DS/qrels"
  ln -sfn "$(realpath "$DATASETS/corpus")" "$DS/corpus"
  head -n "$QUERIES_LIMIT" "$DATASETS/queries/test.jsonl" > "$DS/queries/test.jsonl"
  python3 -c 'import json,sys; q={json.loads(l)["qid"] for l in open(sys.argv[1])}; sys.stdout.writelines(l for l in open(sys.argv[2]) if l.split()[0] in q)' \
    "$DS/queries/test.jsonl" "$DATASETS/qrels/test.qrels" > "$DS/qrels/test.qrels"
fi
CANDIDATES=$OUT/candidates/hybrid+expansion.run

if has candidates; then
  step "candidates: QMD's pipeline with the base embedder (device $PIPELINE_DEVICE)"
  TUNELAB_DEVICE=$PIPELINE_DEVICE $T search --pipeline qmd --corpus "$DS/corpus" --model "$EMBEDDER" \
    ${BASE_EXPANSIONS:+--expansions "$BASE_EXPANSIONS"} \
    --queries "$DS/queries/test.jsonl" --qrels "$DS/qrels/test.qrels" --out "$OUT/candidates"
fi

if has train; then
  [ -e "$RERANKER" ] || { echo "no reranker at $RERANKER (scripts/fetch-models.sh or RERANKER=...)" >&2; exit 1; }
  step "train rerank ($LOSS, $TARGETS targets, $ITERS iterations, batch $BATCH, lr $LR, r$RANK, device ${TUNELAB_DEVICE:-cpu})"
  $T train rerank --model "$RERANKER" --data "$DATASETS/reranker/judgments.jsonl" --loss "$LOSS" --targets "$TARGETS" \
    --negatives "$NEGATIVES" --mined-negatives "$MINED" ${MINING_EMBEDDER:+--mining-embedder "$MINING_EMBEDDER"} --valid-fraction "$VALID_FRACTION" --iters "$ITERS" --batch-size "$BATCH" \
    --learning-rate "$LR" --rank "$RANK" --alpha "$ALPHA" --max-seq-length "$MAX_SEQ" --dtype "$DTYPE" \
    --save-every "${SAVE_EVERY:-$ITERS}" --seed "$SEED" --adapter-path "$OUT/adapter" | tee "$OUT/train.txt"
fi

if has rerank; then
  [ -f "$CANDIDATES" ] || { echo "no $CANDIDATES: run --stage candidates first (or copy it here)" >&2; exit 1; }
  [[ " $SYSTEMS " != *" tuned "* ]] || [ -d "$OUT/adapter" ] || { echo "no $OUT/adapter: run --stage train first" >&2; exit 1; }
  mkdir -p "$OUT/scores"
  for sys in $SYSTEMS; do
    step "rerank the candidates: $sys reranker (device ${TUNELAB_DEVICE:-cpu})"
    adapter=(); [ "$sys" = tuned ] && adapter=(--adapter-path "$OUT/adapter")
    $T rerank --model "$RERANKER" "${adapter[@]}" --queries "$DS/queries/test.jsonl" \
      --run "$CANDIDATES" --corpus "$DS/corpus" --depth "$DEPTH" --max-length "$MAX_SEQ" \
      --batch-size "$RERANK_BATCH" --tag "$sys-rerank" --out "$OUT/scores/$sys.run" 2>&1 | tail -n 3
  done
fi

if has report; then
  for f in "$OUT/scores/base.run" "$OUT/scores/tuned.run"; do
    [ -f "$f" ] || { echo "no $f: run --stage rerank first" >&2; exit 1; }
  done
  step "report: the pipeline with the rerank scores (device $PIPELINE_DEVICE)"
  # train rerank's base vs tuned calibration on held-out training judgments, when the run finished.
  CALIBRATION=; [ -f "$OUT/adapter/calibration.json" ] && CALIBRATION=$OUT/adapter/calibration.json
  cat > "$OUT/pipeline.toml" <<EOF
name = "rerank-ab"
datasets = "$(realpath "$DS")"
reports = "$(realpath "$OUT")/reports"
seed = $SEED
permutations = $PERMUTATIONS
base_embedder = "$(realpath "$EMBEDDER")"
EOF
  [ -n "${BASE_EXPANSIONS:-}" ] && echo "base_expansions = \"$BASE_EXPANSIONS\"" >> "$OUT/pipeline.toml"
  # The pipeline reranks its first DEPTH fused candidates (QMD: 40), the ones `tunelab rerank` scored.
  printf '[qmd]\ncandidate_limit = %s\n' "$DEPTH" >> "$OUT/pipeline.toml"
  TUNELAB_DEVICE=$PIPELINE_DEVICE $T experiment --pipeline --config "$OUT/pipeline.toml" \
    --base-rerank-run "$OUT/scores/base.run" --tuned-rerank-run "$OUT/scores/tuned.run" \
    ${CALIBRATION:+--rerank-calibration "$CALIBRATION"} | tee "$OUT/report.txt"
  run_dir=$(sed -n 's/^run directory: //p' "$OUT/report.txt")
  # The candidates reranked are the ones this run fused (same ids, ranks and scores; tags differ).
  if ! cmp -s <(awk -v d="$DEPTH" '$4 <= d' "$CANDIDATES" | cut -d' ' -f1-5) \
              <(cut -d' ' -f1-5 "$run_dir/runs/base/hybrid+expansion.run"); then
    echo "warning: $CANDIDATES differs from $run_dir/runs/base/hybrid+expansion.run (another device or embedder?)" >&2
  fi
  [ -f "$OUT/adapter/calibration.json" ] && { echo "calibration (held-out training queries):"; cat "$OUT/adapter/calibration.json"; }
fi
step "done: $OUT"

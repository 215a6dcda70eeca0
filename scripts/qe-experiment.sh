#!/usr/bin/env bash
# Query-expansion LoRA, base vs tuned, on the bundled QMD records (issue 5 item 7):
#   1. split datasets/query-expansion/qe.jsonl (governed: sacred and unconsented records never
#      reach any split; seeded) into train/valid/test,
#   2. train a LoRA adapter on train (validation loss on valid, test loss on test),
#   3. generate expansions of the held-out test queries with the base model and with the adapter
#      (the training prompt, greedy), scored by QMD's reward (finetune/reward.py, ported),
#   4. write the A/B report: valid-expansion rate, mean reward, components, paired tests, examples.
#
#   scripts/qe-experiment.sh            (env below; ~15-25 min on 2 busy CPU cores)
# Env: MODEL      decoder (default models/SmolLM2-135M-Instruct.Q4_1.gguf, scripts/fetch-models.sh)
#      OUT        work folder (default reports/qe-experiment/<UTC timestamp>)
#      ITERS, LR, RANK, ALPHA, BATCH, SEED   training (defaults 48, 1e-3, 16, 32, 4, 42)
#      MAX_TOKENS tokens generated per query (default 160)
#      TUNELAB_DEVICE  backend (default cpu)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
OUT=${OUT:-reports/qe-experiment/$(date -u +%Y%m%dT%H%M%SZ)}
ITERS=${ITERS:-48}
LR=${LR:-1e-3}
RANK=${RANK:-16}
ALPHA=${ALPHA:-32}
BATCH=${BATCH:-4}
SEED=${SEED:-42}
MAX_TOKENS=${MAX_TOKENS:-160}
[ -e "$MODEL" ] || { echo "no model at $MODEL (run scripts/fetch-models.sh or set MODEL)" >&2; exit 1; }
cargo build --locked --bin tunelab
T=target/debug/tunelab
mkdir -p "$OUT"
step() { echo "== $1 ($(date -u +%H:%M:%S))"; }

step "split"
$T data split datasets/query-expansion/qe.jsonl --out "$OUT/split" --seed "$SEED"

step "train (LoRA r$RANK, $ITERS iterations, lr $LR)"
$T train lora --model "$MODEL" --data "$OUT/split" --iters "$ITERS" --batch-size "$BATCH" \
  --learning-rate "$LR" --warmup 4 --steps-per-eval $((ITERS / 2)) --val-batches -1 \
  --save-every "$ITERS" --num-layers -1 --mask-prompt --rank "$RANK" --alpha "$ALPHA" \
  --seed "$SEED" --test --test-batches -1 --adapter-path "$OUT/adapter" | tee "$OUT/train.txt"

step "evaluate the base model on the held-out queries"
$T eval expansions --model "$MODEL" --queries "$OUT/split/test.jsonl" -m "$MAX_TOKENS" --out "$OUT/eval-base"
step "evaluate the tuned model"
$T eval expansions --model "$MODEL" --adapter-path "$OUT/adapter" --queries "$OUT/split/test.jsonl" \
  -m "$MAX_TOKENS" --out "$OUT/eval-tuned"

step "report"
$T eval expansions-compare "$OUT/eval-base" "$OUT/eval-tuned" --reports-root "$OUT" \
  --experiment report --seed "$SEED"
step "done: $OUT"

#!/usr/bin/env bash
# Scheduled retraining of the embedding model (a weekend job; launchd example in scripts/launchd/):
#
#   governed data -> train from the current version -> evaluate current and candidate on the same
#   queries -> gate -> promote (atomic `current` switch) -> smoke-check, rolled back if it fails.
#
# A worse model never replaces a better one: `tunelab gate` must pass (not significantly worse on any
# gated measure, significantly better on the primary one) before `tunelab promote` runs. Every step
# is logged with UTC timestamps, commands, output and durations to
# reports/<experiment>/<run-id>/weekend-train.log.
#
# Training and evaluation go through the main job (`tunelab experiment`, see src/experiment.rs),
# started from the current version's model: its run compares that model (`dense-base`) with the
# tuned one (`dense-tuned`) on the bundled test queries in one run, so the gate pairs every query.
#
#   scripts/weekend-train.sh                 # settings below; override with env vars
#   EPOCHS=3 TUNELAB_DEVICE=metal scripts/weekend-train.sh
#
# Exit status: 0 promoted, or kept the current model because the gate refused the candidate;
# 1 a step failed (nothing promoted, or the promotion was rolled back); 3 a step is not available in
# this build of tunelab.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

# --- settings ---------------------------------------------------------------------------------
EXPERIMENT=${EXPERIMENT:-weekend-embed}
STORE=${TUNELAB_MODEL_STORE:-$root/models/store/embed}      # v1/, v2/, current -> vN
BASE_MODEL=${BASE_MODEL:-$root/models/all-MiniLM-L6-v2}      # used until a first version exists
DATASETS=${DATASETS:-$root/datasets}
POLICY=${POLICY:-$DATASETS/governance/policy.toml}
EPOCHS=${EPOCHS:-1}
MAX_STEPS=${MAX_STEPS:-}                                     # empty: whole epochs
PRIMARY=${PRIMARY:-recip_rank}
GATED=${GATED:-recip_rank,ndcg_cut_10,recall_10}
ALPHA=${ALPHA:-0.05}
SEED=${SEED:-42}
# ----------------------------------------------------------------------------------------------

run_id=$(date -u +%Y%m%dT%H%M%SZ)
work="$root/reports/$EXPERIMENT/$run_id"
mkdir -p "$work"
logfile="$work/weekend-train.log"
tunelab="$root/target/debug/tunelab"

log() { printf '%s %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" | tee -a "$logfile"; }

# step NAME CMD...: run CMD with its output appended to the log; log begin, end, status, duration.
# A tunelab command this build does not have yet (a stub saying "not implemented yet", or an
# unknown subcommand or flag) stops the job with status 3 and says which one.
step() {
  local name=$1; shift
  local start=$SECONDS rc=0 out
  out=$(mktemp)
  log "BEGIN $name: $*"
  "$@" >"$out" 2>&1 || rc=$?
  cat "$out" >>"$logfile"
  if (( rc == 0 )); then
    log "END   $name: ok ($(( SECONDS - start ))s)"
  elif grep -qE "is not implemented yet|unrecognized subcommand|unexpected argument" "$out"; then
    log "END   $name: UNAVAILABLE ($(( SECONDS - start ))s): this build of tunelab lacks it:"
    grep -E "is not implemented yet|unrecognized subcommand|unexpected argument" "$out" | head -3 | sed 's/^/      /' | tee -a "$logfile"
    log "STOP: nothing was promoted. The job runs end to end once that command lands."
    rm -f "$out"
    exit 3
  else
    log "END   $name: FAILED with status $rc ($(( SECONDS - start ))s); see $logfile"
  fi
  rm -f "$out"
  return $rc
}

log "weekend-train $run_id: experiment $EXPERIMENT, store $STORE, device ${TUNELAB_DEVICE:-cpu}, git $(git rev-parse --short HEAD 2>/dev/null || echo '?')"

# 0. Build (the dev profile: dependencies optimised; see environment.md).
step build nice -n 19 cargo build --locked --bin tunelab || exit 1

# 1. Governed data: the policy drops sacred, unconsented and withdrawn records; the split and its
#    audit (counts by class, excluded ids, hashes) are kept with this run. The main job applies the
#    same policy to the pairs it trains on and records the audit in its manifest.
step govern-and-split "$tunelab" data split "$DATASETS/pairs/pairs.jsonl" --out "$work/data" \
  --policy "$POLICY" --seed "$SEED" || exit 1

# 2+3. Train from the current version (or the base model the first time) and evaluate both.
current_model="$STORE/current/model"
[[ -f "$current_model/config.json" ]] || current_model="$BASE_MODEL"
cat >"$work/experiment.toml" <<EOF
name = "run"
datasets = "$DATASETS"
model = "$current_model"
reports = "$work"
seed = $SEED

[train]
epochs = $EPOCHS
seed = $SEED
${MAX_STEPS:+max_steps = $MAX_STEPS}
EOF
log "training from $current_model (config: $work/experiment.toml)"
step train-and-evaluate "$tunelab" experiment --config "$work/experiment.toml" || exit 1
run_dir=$(ls -d "$work"/run/*/ 2>/dev/null | tail -1)
run_dir=${run_dir%/}
[[ -f "$run_dir/metrics.arrow" && -d "$run_dir/model" ]] || { log "FAILED: no run directory with metrics.arrow and model/ under $work/run"; exit 1; }
log "run directory: $run_dir"

# 4. Gate: the tuned model (dense-tuned) against the model it started from (dense-base), query by
#    query. Status 2 = refused (not an error of the job: the current model stays).
gate_rc=0
step gate "$tunelab" gate --candidate "$run_dir" --candidate-system dense-tuned \
  --current "$run_dir" --current-system dense-base \
  --primary "$PRIMARY" --metrics "$GATED" --alpha "$ALPHA" --seed "$SEED" --out "$work/gate.json" || gate_rc=$?
if (( gate_rc == 2 )); then
  log "gate REFUSED the candidate; current stays $(readlink "$STORE/current" 2>/dev/null || echo '(none)'). Decision: $work/gate.json"
  exit 0
elif (( gate_rc != 0 )); then
  exit 1
fi

# 5. Promote the run (manifest, tuned model, metrics, report) as the next version; then a smoke
#    check: the promoted model must load and embed. Roll back if it does not.
step promote "$tunelab" promote "$run_dir" --store "$STORE" --gate "$work/gate.json" || exit 1
printf '{"id": "smoke-1", "text": "weather signs before the first frost"}\n' >"$work/smoke.jsonl"
if ! step smoke-check "$tunelab" embed --model "$STORE/current/model" --input "$work/smoke.jsonl" --output "$work/smoke.out.jsonl"; then
  step rollback "$tunelab" rollback --store "$STORE" || true
  log "the promoted version failed its smoke check and was rolled back; current is $(readlink "$STORE/current" 2>/dev/null || echo '(none)')"
  exit 1
fi
log "done: current is $(readlink "$STORE/current")"

#!/usr/bin/env bash
# Scheduled retraining of the embedding model (a weekend job; launchd example in scripts/launchd/):
#
#   governed data -> train -> evaluate (candidate and current, same queries) -> gate -> promote,
#   then a smoke check of the promoted version, rolled back if it fails.
#
# A worse model never replaces a better one: `tunelab gate` must pass (not significantly worse on any
# gated measure, significantly better on the primary one) before `tunelab promote` runs. Every step
# is logged with UTC timestamps and durations to reports/<experiment>/<run-id>/weekend-train.log.
#
#   scripts/weekend-train.sh                 # uses the settings below (override with env vars)
#   TUNELAB_DEVICE=metal scripts/weekend-train.sh
#
# Exit status: 0 promoted, or kept the current model because the gate refused the candidate;
# 1 a step failed (nothing promoted); 3 a step is not available in this build of tunelab.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

# --- settings ---------------------------------------------------------------------------------
EXPERIMENT=${EXPERIMENT:-weekend-embed}
STORE=${TUNELAB_MODEL_STORE:-$root/models/store/embed}      # v1/, v2/, current -> vN
BASE_MODEL=${BASE_MODEL:-$root/models/all-MiniLM-L6-v2}      # used until a first version exists
PAIRS=${PAIRS:-$root/datasets/pairs/pairs.jsonl}             # training pairs (governed below)
CORPUS=${CORPUS:-$root/datasets/corpus}
QUERIES=${QUERIES:-$root/datasets/queries/test.jsonl}
QRELS=${QRELS:-$root/datasets/qrels/test.qrels}
POLICY=${POLICY:-$root/datasets/governance/policy.toml}
PRIMARY=${PRIMARY:-recip_rank}
GATED=${GATED:-recip_rank,ndcg_cut_10,recall_100}
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
# unknown subcommand) stops the job with status 3 and says which one.
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

# 1. Governed data: the policy drops sacred, unconsented and withdrawn records; the audit
#    (counts, excluded ids, hash) lands in $work/data/audit.json and in the trained model's manifest.
step govern-and-split "$tunelab" data split "$PAIRS" --out "$work/data" --policy "$POLICY" --seed "$SEED" || exit 1

# 2. Train the candidate, starting from the current version (or the base model the first time).
current_model="$STORE/current/model"
[[ -d "$current_model" ]] || current_model="$BASE_MODEL"
step train "$tunelab" train embed --model "$current_model" --data "$work/data" --out "$work/model" --seed "$SEED" || exit 1

# 3. Evaluate candidate and current on the same test queries (a fresh evaluation of the current
#    model, so a changed test set cannot make the comparison unpaired).
# The evaluation command writes a run directory with metrics.arrow (per-query values) and a manifest.
# EVAL_CMD overrides it (same arguments appended).
evaluate() { # MODEL OUT_DIR SYSTEM
  ${EVAL_CMD:-"$tunelab" eval-model} --model "$1" --corpus "$CORPUS" --queries "$QUERIES" --qrels "$QRELS" \
    --out "$2" --system "$3" --seed "$SEED"
}
step evaluate-candidate evaluate "$work/model" "$work/eval-candidate" candidate || exit 1
if [[ ! -e "$STORE/current" ]]; then
  log "no current version in $STORE: the candidate becomes v1 without a gate"
  step promote "$tunelab" promote "$work/model" --store "$STORE" || exit 1
  exit 0
fi
step evaluate-current evaluate "$STORE/current/model" "$work/eval-current" current || exit 1

# 4. Gate. Status 2 = refused (not an error of the job: the current model stays).
gate_rc=0
step gate "$tunelab" gate --candidate "$work/eval-candidate" --current "$work/eval-current" \
  --primary "$PRIMARY" --metrics "$GATED" --alpha "$ALPHA" --seed "$SEED" --out "$work/gate.json" || gate_rc=$?
if (( gate_rc == 2 )); then
  log "gate REFUSED the candidate; current stays $(readlink "$STORE/current"). Decision: $work/gate.json"
  exit 0
elif (( gate_rc != 0 )); then
  exit 1
fi

# 5. Promote (atomic switch of `current`), then smoke-check the promoted version; roll back on failure.
step promote "$tunelab" promote "$work/model" --store "$STORE" --gate "$work/gate.json" || exit 1
if ! step smoke-check evaluate "$STORE/current/model" "$work/eval-promoted" promoted; then
  step rollback "$tunelab" rollback --store "$STORE" || true
  log "promoted version failed its smoke check and was rolled back; current is $(readlink "$STORE/current")"
  exit 1
fi
log "done: current is $(readlink "$STORE/current")"

#!/usr/bin/env bash
# Issue 15 A/B on the GPU machine, one call: base rerank in parallel with training, then the tuned
# rerank. Everything lands in $OUT as soon as it exists (a timed-out call still returns it).
# Env: DL (s, when everything must have stopped), TT (s, training limit), ITERS BATCH LR TARGETS SAVE_EVERY RERANK_BATCH
set -u
cd "$(dirname "$0")/../.."; cp .dev/run/rerank-ab.sh scripts/rerank-ab.sh
O=${OUT:?}; W=${W:-/tmp/ab}; mkdir -p $W/candidates; cp .dev/run/hybrid+expansion.run $W/candidates/
export TUNELAB=/tmp/tunelab TUNELAB_DEVICE=${TUNELAB_DEVICE:-vulkan}
if ldd /tmp/tunelab | grep -q "not found"; then mkdir -p /tmp/lib; tar xJf .dev/m2/lib.tar.xz -C /tmp/lib; export LD_LIBRARY_PATH=/tmp/lib:${LD_LIBRARY_PATH:-}; ldd /tmp/tunelab | grep "not found" >&2; fi
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader -l 5 > $W/smi.txt 2>&1 &
(
  el "base rerank start"
  SYSTEMS=base OUT=$W timeout $(( ${DL:-200} - 3 )) bash scripts/rerank-ab.sh --stage rerank
  el "base rerank rc=$?"; cp $W/scores/base.run $O/ 2>/dev/null
) > $O/base.log 2>&1 &
(
  el "train start"
  OUT=$W timeout ${TT:-150} bash scripts/rerank-ab.sh --stage train
  el "train rc=$?"
  cp $W/adapter/calibration.json $W/adapter/loss.jsonl $O/ 2>/dev/null
  if [ -f $W/adapter/adapters.safetensors ]; then
    SYSTEMS=tuned OUT=$W timeout $(( ${DL:-200} - $(date +%s) + t0 - 3 )) bash scripts/rerank-ab.sh --stage rerank
    el "tuned rerank rc=$?"; cp $W/scores/tuned.run $O/ 2>/dev/null
    (cd $W && tar cf - --exclude=checkpoints adapter | xz -T8 -1 | split -b 15M - $O/adapter.txz.)
    el "adapter packed"
  fi
) > $O/train.log 2>&1 &
wait %2 %3
el "all done"
kill %1 2>/dev/null
{ echo "== nvidia-smi every 5 s"; cat $W/smi.txt; } >> $O/base.log; ls -la $O

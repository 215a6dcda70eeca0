#!/usr/bin/env bash
# Issue 15 A/B on the GPU, one call. Primary (declared before the run): pointwise BCE, binary targets.
# Secondary, same call, on the same card: listwise. Base rerank runs beside both trainings.
# Needs /tmp/smol.gguf (calls 1-2). Env: DL (s until all must stop), TT (training limit, s).
set -u
cd "$(dirname "$0")/../.."
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
xz -dc .dev/vk/tunelab.xz > /tmp/tunelab; chmod +x /tmp/tunelab
if ldd /tmp/tunelab | grep -q "not found"; then mkdir -p /tmp/lib; tar xJf .dev/vk/lib.tar.xz -C /tmp/lib; export LD_LIBRARY_PATH=/tmp/lib; fi
cp .dev/run/rerank-ab.sh scripts/rerank-ab.sh
export TUNELAB=/tmp/tunelab TUNELAB_DEVICE=vulkan RERANKER=/tmp/smol.gguf ITERS=${ITERS:-400} BATCH=${BATCH:-8} SAVE_EVERY=100 RERANK_BATCH=${RERANK_BATCH:-32} TARGETS=binary
O=${OUT:?}; DL=${DL:-560}; TT=${TT:-380}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee $O/card.txt
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
left() { echo $(( DL - $(date +%s) + t0 - 3 )); }
nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader -l 5 > $O/smi.txt 2>&1 &
SMI=$!
for w in base A B; do mkdir -p /tmp/ab$w/candidates $O/$w; cp .dev/run/hybrid+expansion.run /tmp/ab$w/candidates/; done
( el "base rerank start"; SYSTEMS=base OUT=/tmp/abbase timeout $(left) bash scripts/rerank-ab.sh --stage rerank
  el "base rerank rc=$?"; cp /tmp/abbase/scores/base.run $O/base/ ) > $O/base/log 2>&1 &
arm() { # $1 = name, $2 = loss, $3 = batch
  el "train $1 ($2, batch $3) start"; BATCH=$3 LOSS=$2 OUT=/tmp/ab$1 timeout $TT bash scripts/rerank-ab.sh --stage train; el "train $1 rc=$?"
  cp /tmp/ab$1/adapter/calibration.json /tmp/ab$1/adapter/loss.jsonl /tmp/ab$1/adapter/adapter_config.json /tmp/ab$1/adapter/adapters.safetensors $O/$1/ 2>/dev/null
  if [ -f /tmp/ab$1/adapter/adapters.safetensors ]; then
    SYSTEMS=tuned OUT=/tmp/ab$1 timeout $(left) bash scripts/rerank-ab.sh --stage rerank; el "tuned rerank $1 rc=$?"
    cp /tmp/ab$1/scores/tuned.run $O/$1/
  fi
}
arm A pointwise $BATCH > $O/A/log 2>&1 &
arm B listwise 2 > $O/B/log 2>&1 &
wait %2 %3 %4
el "all done"; kill $SMI; ls -la $O/*

#!/usr/bin/env bash
# Issue 15, run D staged for a session with device time (after calls g1, g2 put /tmp/smol.gguf there).
#   call 1: bash .dev/run/gpu6.sh train     (carry .dev/vk17 .dev/run .dev/m2 .gl; timeout 600)
#   call 2: bash .dev/run/gpu6.sh rerank    (same machine, warm: within 30 s of call 1)
# Pre-registered: pointwise BCE, binary targets, LR 5e-4, 700 iterations, batch 8, on the regenerated
# judgments (600 training queries). 2026-12-06 15:48 the same run in one call stopped at iteration 31:
# ~207 s of loading, mining and base calibration, then ~130 s of kernel compiles in the first
# iterations (65 s, 50 s, ...), then ~0.3 s per iteration. So: training alone in call 1.
set -u
cd "$(dirname "$0")/../.."
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
[ -x /tmp/tunelab ] || { xz -dc .dev/vk17/tunelab.xz > /tmp/tunelab; chmod +x /tmp/tunelab; }
if ldd /tmp/tunelab | grep -q "not found"; then mkdir -p /tmp/lib; tar xJf .dev/m2/lib.tar.xz -C /tmp/lib; export LD_LIBRARY_PATH=/tmp/lib; fi
[ -d /tmp/ds ] || cp -r datasets /tmp/ds
export TUNELAB=/tmp/tunelab TUNELAB_DEVICE=vulkan RERANKER=/tmp/smol.gguf DATASETS=/tmp/ds SAVE_EVERY=100 RERANK_BATCH=32 TARGETS=binary LOSS=pointwise
export ITERS=${ITERS:-700} LR=${LR:-5e-4} VALID_FRACTION=${VALID_FRACTION:-0.05}
O=${OUT:?}; W=/tmp/abD; mkdir -p $W/candidates; cp .dev/run/hybrid+expansion.run $W/candidates/
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $O/card.txt
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
case "$1" in
train)
  { el "train D start"; OUT=$W timeout ${TT:-570} bash scripts/rerank-ab.sh --stage train; el "train D rc=$?"; } > $O/log 2>&1
  ( cd $W && tar cJf $O/train.txz train.txt adapter/loss.jsonl $(ls adapter/calibration.json 2>/dev/null) adapter/adapter_config.json )
  ( cd $W && tar cf - adapter/adapters.safetensors | xz -T8 -6 | split -b 9000000 - $O/ad. )
  # cubecl's autotune/compile cache (burn/persistence, under <repo>/target/environment): bring it
  # back and carry it next time, so later calls on the same card skip the first-iteration tuning.
  [ -d target/environment ] && tar cJf $O/cubecl-env.txz target/environment ;;
rerank)
  { for s in ${RS:-tuned base}; do SYSTEMS=$s OUT=$W timeout ${TR:-280} bash scripts/rerank-ab.sh --stage rerank; el "$s rerank rc=$?"; done; } > $O/log 2>&1
  ( cd $W && tar cJf $O/scores.txz scores ) ;;
esac
tail -5 $O/log

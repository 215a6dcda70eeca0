#!/usr/bin/env bash
# Issue 15, second GPU call: one training (pointwise, binary targets, LR/ITERS from env), then the
# tuned rerank of the same candidates (the base scores come from the first call, same binary).
set -u
cd "$(dirname "$0")/../.."
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
xz -dc .dev/vk/tunelab.xz > /tmp/tunelab; chmod +x /tmp/tunelab
if ldd /tmp/tunelab | grep -q "not found"; then mkdir -p /tmp/lib; tar xJf .dev/vk/lib.tar.xz -C /tmp/lib; export LD_LIBRARY_PATH=/tmp/lib; fi
cp .dev/run/rerank-ab.sh scripts/rerank-ab.sh
export TUNELAB=/tmp/tunelab TUNELAB_DEVICE=vulkan RERANKER=/tmp/smol.gguf SAVE_EVERY=100 RERANK_BATCH=32 TARGETS=binary LOSS=pointwise
O=${OUT:?}; DL=${DL:-540}; TT=${TT:-450}; W=/tmp/abC
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader -l 5 > $O/smi.txt 2>&1 &
SMI=$!
mkdir -p $W/candidates; cp .dev/run/hybrid+expansion.run $W/candidates/
{
el "train C (ITERS=$ITERS LR=$LR) start"; OUT=$W timeout $TT bash scripts/rerank-ab.sh --stage train; el "train C rc=$?"
if [ -f $W/adapter/adapters.safetensors ]; then
  SYSTEMS=tuned OUT=$W timeout $(( DL - $(date +%s) + t0 - 3 )) bash scripts/rerank-ab.sh --stage rerank; el "tuned rerank C rc=$?"
fi
} > $O/log 2>&1
kill $SMI
cd $W && tar cJf $O/small.txz scores train.txt adapter/loss.jsonl $(ls adapter/calibration.json 2>/dev/null) adapter/adapter_config.json
tar cf - adapter/adapters.safetensors | xz -T8 -6 | split -b 9000000 - $O/ad.
ls -la $O; tail -5 $O/log

#!/usr/bin/env bash
# Issue 15, run E, staged 2026-12-06 ~19:00 UTC for a session with device time (after calls g1, g2 put
# /tmp/smol.gguf there, as for gpu6.sh).
#   call 1: bash .dev/run/gpu8.sh train   (carry .dev/vk17 .dev/run .dev/m2 .gl .dev/e .dev/cc; timeout 600)
#   call 2: bash .dev/run/gpu8.sh rerank  (same carry, warm machine within 30 s; tuned only: the base
#           scores are byte-identical across runs, reports/rerank-ab/20261206-gpu/runs/base-rerank-scores.run)
# Declared before training: as D (pointwise BCE, binary targets, LR 5e-4, batch 8, r16, valid fraction
# 0.05, seed 42), 900 iterations, on the judgments plus 4 negatives per training query mined through
# QMD's pipeline (train rerank --mining-embedder models/all-MiniLM-L6-v2, same policy and split; mined on
# the CPU with that code, 2,288 records appended as relevance-0 judgments with their documents'
# governance fields), no BM25 mining (MINED=0). Why: D's judgments reward the opposite of what
# separates the pipeline's candidates (scripts/rerank-data-shift.py: word-overlap AUC 0.41 vs 0.80).
# Re-declared 2026-12-07 01:20 UTC, before any run: E2 (default JUDG=E2) = E's judgments less the 2,155
# BM25-mined negatives build_reranker/build_reranker_more baked into the bundled judgments (identified by
# re-running make_datasets.py with bm25_negatives recorded; 5,938 judgments left): training overlap AUC
# E 0.479 -> E2 0.608 (test candidates 0.797). Everything else as E.
set -u
cd "$(dirname "$0")/../.."
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
[ -x /tmp/tunelab ] || { xz -dc .dev/vk17/tunelab.xz > /tmp/tunelab; chmod +x /tmp/tunelab; }
if ldd /tmp/tunelab | grep -q "not found"; then mkdir -p /tmp/lib; tar xJf .dev/m2/lib.tar.xz -C /tmp/lib; export LD_LIBRARY_PATH=/tmp/lib; fi
[ -d target/environment ] || tar xJf .dev/cc/cubecl-env.txz 2>/dev/null
[ -d /tmp/dsE ] || { cp -r datasets /tmp/dsE; xz -dc .dev/e/judgments-${JUDG:-E2}.jsonl.xz > /tmp/dsE/reranker/judgments.jsonl; }
export TUNELAB=/tmp/tunelab TUNELAB_DEVICE=vulkan RERANKER=/tmp/smol.gguf DATASETS=/tmp/dsE SAVE_EVERY=300 RERANK_BATCH=32 TARGETS=binary LOSS=pointwise MINED=0
export ITERS=${ITERS:-900} LR=${LR:-5e-4} VALID_FRACTION=${VALID_FRACTION:-0.05}
O=${OUT:?}; W=/tmp/abE; mkdir -p $W/candidates; cp .dev/run/hybrid+expansion.run $W/candidates/
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $O/card.txt
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
case "$1" in
train)
  { el "train E start"; OUT=$W timeout ${TT:-575} bash scripts/rerank-ab.sh --stage train; el "train E rc=$?"; } > $O/log 2>&1
  ( cd $W && tar cJf $O/train.txz train.txt adapter/loss.jsonl $(ls adapter/calibration.json 2>/dev/null) adapter/adapter_config.json )
  ( cd $W && tar cf - adapter/adapters.safetensors | xz -T8 -6 | split -b 9000000 - $O/ad. ) ;;
rerank)
  { for s in ${RS:-tuned}; do SYSTEMS=$s OUT=$W timeout ${TR:-280} bash scripts/rerank-ab.sh --stage rerank; el "$s rerank rc=$?"; done; } > $O/log 2>&1
  ( cd $W && tar cJf $O/scores.txz scores ) ;;
esac
tail -5 $O/log

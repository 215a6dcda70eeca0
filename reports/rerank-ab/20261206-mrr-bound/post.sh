#!/usr/bin/env bash
# After the GPU call: $1 = folder holding the files that came back from $OUT.
set -euo pipefail
F=$1; A=${A:-/work/ab/main}; WT=/work/wt-rerank; DEST=${DEST:-$WT/reports/rerank-ab}
mkdir -p $A/scores $A/adapter
cp $F/base.run $F/tuned.run $A/scores/
cp $F/calibration.json $F/loss.jsonl $A/adapter/ 2>/dev/null || true
if ls $F/adapter.txz.* >/dev/null 2>&1; then cat $F/adapter.txz.* | xz -dc | tar xf - -C /tmp/ && cp /tmp/adapter/adapters.safetensors /tmp/adapter/adapter_config.json $A/adapter/ || true; fi
cd $WT
OUT=$A TUNELAB=target/debug/tunelab nice scripts/rerank-ab.sh --stage report 2>&1 | tee $A/report-stage.txt | grep -v "^ *[][0-9.,]*$"
R=$(sed -n 's/^run directory: //p' $A/report.txt)
python3 scripts/rerank-mrr-bound.py datasets/qrels/test.qrels $A/candidates/hybrid+expansion.run \
  --full base=$R/runs/base/full.run --full tuned=$R/runs/tuned-reranker/full.run --json $A/mrr-bound.json
D=$DEST/$(basename $R); mkdir -p $D/runs
cp $R/report.md $R/manifest.json $R/systems.json $D/; cp $A/mrr-bound.json $D/
cp $A/adapter/calibration.json $A/adapter/loss.jsonl $D/ 2>/dev/null || true
for s in base tuned-reranker; do cp $R/runs/$s/full.run $D/runs/$s-full.run; done
cp $R/runs/base/hybrid+expansion.run $D/runs/hybrid+expansion.run
cp $A/scores/base.run $D/runs/base-rerank-scores.run; cp $A/scores/tuned.run $D/runs/tuned-rerank-scores.run
cp $F/train.log $F/base.log $D/ 2>/dev/null || true
du -sh $D/*; echo "report folder: $D"

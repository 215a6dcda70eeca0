#!/usr/bin/env bash
# Training throughput on an NVIDIA machine: tunelab on its Vulkan device beside PyTorch CUDA
# (bench/torch_anchor.py), same shapes, same run. Prints JSON lines and the ratios.
#
#   TUNELAB=path/to/tunelab TORCH_ANCHOR=path/to/torch_anchor.py scripts/bench-gpu.sh
#
# TUNELAB must be built with `--features vulkan` (x86-64 Linux). The machine needs the Vulkan
# loader (libvulkan1) and NVIDIA's ICD; VK_DRIVER_FILES may point at the ICD JSON.
# Cases: MiniLM-L6 MNRL at seq 128, batch 64 and 32 (f32); SmolLM2-135M / Qwen3-0.6B-shaped
# LoRA r16 at seq 512, batch 8, when the binary has `bench lora`.
set -uo pipefail
TL=${TUNELAB:-target/debug/tunelab}
ANCHOR=${TORCH_ANCHOR:-../shared/bench/torch_anchor.py}
PY=${PYTHON:-python3}
STEPS=${STEPS:-20}
OUTF=$(mktemp)

"$TL" --device vulkan doctor || { echo "Vulkan device did not start" >&2; exit 1; }
for b in 64 32; do
  "$TL" --device vulkan bench train-embed --batch-size "$b" --seq 128 --steps "$STEPS" --warmup 3 | tee -a "$OUTF"
done
if "$TL" bench lora --help >/dev/null 2>&1; then
  for shape in smollm2-135m qwen3-0.6b; do
    "$TL" --device vulkan bench lora --shape "$shape" --seq 512 --batch-size 8 --rank 16 --steps 5 --warmup 2 | tee -a "$OUTF"
  done
fi
"$PY" "$ANCHOR" mnrl | tee -a "$OUTF"
if "$TL" bench lora --help >/dev/null 2>&1; then
  "$PY" "$ANCHOR" lora | tee -a "$OUTF"
fi
"$PY" - "$OUTF" <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
ours = {r["case"]: r for r in rows if r.get("framework") == "tunelab"}
peers = [r for r in rows if r.get("framework") != "tunelab"]
for case, r in ours.items():
    key = "pairs_per_s" if "pairs_per_s" in r else "tokens_per_s"
    # Match the peer by model and batch (the anchor's case names differ in dtype suffixes only).
    for p in peers:
        if key in p and p.get("batch") == r.get("batch") and p["case"].split()[0] == case.split()[0] and p.get("dtype", "f32") == "f32":
            print(f"{case}: tunelab {r[key]} vs {p['framework']} {p[key]} {key} -> ratio {r[key] / p[key]:.3f}")
PYEOF

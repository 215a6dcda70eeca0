#!/usr/bin/env bash
# Training throughput on an NVIDIA machine: tunelab on its Vulkan device beside PyTorch CUDA
# (bench/torch_anchor.py), same shapes, same run. Prints JSON lines and the ratios.
#
#   TUNELAB=path/to/tunelab TORCH_ANCHOR=path/to/torch_anchor.py scripts/bench-gpu.sh
#
# TUNELAB must be built with `--features vulkan` (x86-64 Linux). The machine needs the Vulkan
# loader (libvulkan1) and NVIDIA's ICD; VK_DRIVER_FILES may point at the ICD JSON.
# Cases: MiniLM-L6 MNRL at seq 128, batch 64 and 32 (f32); SmolLM2-135M / Qwen3-0.6B-shaped
# LoRA r16 at seq 512, batch 8, when the binary has `bench lora`, for each of SHAPES (default
# "smollm2-135m qwen3-0.6b qwen3-1.7b") at each of DTYPES (default "f32 f16": `--dtype f16` is
# mixed precision, base weights and activations in f16). MNRL=0 leaves the MiniLM cases out.
#
# Measured 2026-12-08 00:45-01:00 UTC on one H100 80GB HBM3 (driver 580.159.04), two calls on one machine,
# after SwiGLU, RMSNorm and RoPE became one autodiff operation each (d4cbc16) against the code before
# (4c2b4f1), the order reversed in the second call: SmolLM2-135M 10,603 / 10,710 tokens/s (5.63 GiB pool)
# against 13,553 / 12,505 (6.37 GiB); Qwen3-0.6B 8,400 (12.24 GiB) against 10,714 (13.24 GiB); torch+PEFT
# bf16 20,112 (7.28 GiB), 21,527 (19.31 GiB), Qwen3-1.7B 18,316 (27.83 GiB). So the GPU runs the layers
# written out again (device::one_op; TUNELAB_GPU_ONE_OP picks the one operation for comparisons):
# SmolLM2-135M 0.62-0.67x, Qwen3-0.6B 0.50x. MiniLM MNRL f16 b64 458.0 / 473.2 pairs/s vs torch bf16
# 1,853.8 -> 0.25x.
# Measured 2026-12-07 18:45-19:40 UTC on H100 80GB HBM3s (driver 580.159.04), after the loss became one
# operation (train::cross_entropy) and BERT's position and token-type embeddings stopped back-propagating
# through scatter-adds; with transformers-like random embeddings. Machine 1, second of two consecutive
# calls: SmolLM2-135M 17,638 tokens/s (6.37 GiB pool) vs torch+PEFT bf16 20,483 (7.28 GiB) -> 0.86x,
# memory 0.87x; Qwen3-0.6B 11,261 (13.24 GiB) vs 21,504 (19.31 GiB) -> 0.52x, memory 0.69x. Machine 2:
# MiniLM MNRL f16 b64 634.4 pairs/s (623.7 in the other round; the code before the embedding change
# 581.5 / 577.2) vs torch bf16 3,406.5 -> 0.19x (machine 1: 550.9 before that change vs 2,053.4 -> 0.27x).
# Every GPU number below was measured with `Decoder::random`'s earlier U(-1, 1) embeddings (final losses
# ~130-480 where ln(vocab) is ~11-12); since 2026-12-07 16:30 it draws them as transformers does (std
# 0.02), as the anchor's models are. Speed on a GPU does not depend on the values; the f16 runs' skipped
# (overflowed) updates may have.
# Measured 2026-12-07 16:00-16:20 UTC on another H100 80GB HBM3 (same driver), one machine, three calls,
# the shipped code (71f140f's, = ab9e98e's): Qwen3-1.7B 6,806 tokens/s, 26.70 GiB (26.9 GiB nvidia-smi) vs
# torch+PEFT bf16 16,122 (27.83 GiB) -> 0.42x, memory 0.96x; SmolLM2-135M 11,091 (7.12 GiB) vs 17,690
# (7.28 GiB) -> 0.63x; MiniLM MNRL f16 b64 462.8 pairs/s (5.8 GiB nvidia-smi) vs torch bf16 1,720.8
# (1.19 GiB) -> 0.27x; Qwen3-0.6B torch+PEFT bf16 16,731 (19.31 GiB), tunelab's case did not finish its
# random build and first compilation in 169 s. The f16 branches with a split reduction (not shipped):
# SmolLM2-135M 7,771 tokens/s, one timed update overflowed and skipped at 2^16.
# Measured 2026-12-07 12:55-13:05 UTC on one NVIDIA H100 80GB HBM3 (driver 580.159.04, Vulkan), one machine,
# two calls, bench lora f16 (5 timed steps after 2 for Qwen3-1.7B, 8 after 2 for SmolLM2, cubecl cache
# warm) and torch_anchor's lora_case (20 after 3), LoRA r16 seq512 b8, the adapters' products in f32
# (ab9e98e) and in f16 (ed6512c, reverted); tunelab memory is burn's pool (nvidia-smi's peak):
#   Qwen3-1.7B    f32 products 7,238 tokens/s 26.70 GiB (27.5 GB)  f16 products 8,240  24.40 GiB (25.2 GB)
#                 torch+PEFT bf16 18,625 (27.83 GiB) -> 0.39x, memory 0.96x; under torch.autocast 22,988 (23.90 GiB)
#   SmolLM2-135M  f32 products 19,618 7.12 GiB (7.5 GB)            f16 products 11,921  6.38 GiB (6.8 GB)
#                 torch+PEFT bf16 32,455 (7.28 GiB) -> 0.60x, memory 0.98x; under torch.autocast 31,032 (6.12 GiB)
#   (final losses f32/f16 products: 482.03357 / 482.03290; SmolLM2's f16-product run skipped its first update
#   at loss scale 2^16.)
#
# Measured 2026-12-07 09:55-10:05 UTC on one NVIDIA H100 80GB HBM3 (driver 580.159.04, Vulkan), same
# cases one at a time on one warm machine (bench lora, 5 timed steps after 2; torch_anchor's lora_case,
# 20 after 3), Qwen3-1.7B LoRA r16 seq512 b8 f16 vs bf16, before and after the adapters' widened inputs
# were shared (lora::SharedInput; tunelab memory is burn's pool reserved, in brackets nvidia-smi's peak):
#   before (9bd7f7b + bench changes)   6,769 tokens/s  30.18 GiB (31.1 GB)   final loss 482.03085
#   after                              7,013 tokens/s  26.70 GiB (27.5 GB)   final loss 482.03406
#   torch+PEFT bf16                   17,878 tokens/s  27.83 GiB allocated   -> 0.39x, memory 0.96x
#   (torch+PEFT bf16 SmolLM2-135M on that card: 21,946 tokens/s, 7.28 GiB; tunelab's SmolLM2 run did not
#   finish its first-run kernel tuning within the 170 s the call had left.)
#
# Measured 2026-12-07 05:40-06:00 UTC on one NVIDIA H200 (driver 580.159.04, Vulkan), tunelab Vulkan binary of
# 800bfea + attention recomputed on the GPU (src/model/sdpa.rs), torch 2.11 CUDA + PEFT 0.21.2, one warm machine,
# f16 vs bf16, LoRA r16 seq512 b8 (memory: burn's pool reserved vs torch max_memory_allocated):
#   SmolLM2-135M  tunelab 17,923 tokens/s (7.9 GiB; 8 timed steps)   torch+PEFT 21,754 (7.3 GiB) -> 0.82x, memory 1.08x
#                 with TUNELAB_ATTENTION=plain: 19,692 (13.1 GiB) -> 0.91x
#   Qwen3-0.6B    tunelab 11,913 (20.1 GiB)                         torch+PEFT 23,870 (19.3 GiB) -> 0.50x, memory 1.04x
#                 with TUNELAB_ATTENTION=plain: 12,065 (28.3 GiB)
#   Qwen3-1.7B    tunelab  6,860 (30.2 GiB)                         torch+PEFT 21,122 (27.8 GiB) -> 0.32x, memory 1.08x
#   (torch+PEFT Qwen3-0.6B f32: 11,798 tokens/s, 27.9 GiB.) First calls compile: Qwen3-1.7B's took ~200 s.
#
# Measured 2026-12-06 18:20-18:30 UTC on one NVIDIA H100 80GB HBM3 (driver 580.159.04, Vulkan;
# tunelab built --no-default-features --features vulkan, so with burn fusion + autotune + the
# persistent cubecl cache; torch 2.11 CUDA + PEFT 0.21.2), one warm machine, same calls, 5 timed
# steps after 2 warm-up (tunelab) and 10 after 3 (torch); tunelab memory is burn's pool (reserved):
#   SmolLM2-135M LoRA r16 seq512 b8: tunelab f32 11,338 tokens/s (14.8 GiB), f16 12,179 (13.1 GiB)
#     vs torch+PEFT f32 18,492 (10.9 GiB), bf16 18,813 (7.3 GiB) -> f32/f32 0.61x, f16/bf16 0.65x
#   Qwen3-0.6B LoRA r16 seq512 b8: tunelab f16 10,752 tokens/s (28.3 GiB) vs torch+PEFT bf16 21,283
#     (19.3 GiB) -> 0.51x (issue 17's f32 figure on an H100: 4,706 vs bf16 28,092, 0.17x)
#   f16 and f32 final losses after 7 steps: 129.59181 and 129.59161. The first f16 call spent ~170 s
#   compiling and autotuning kernels (f32: ~70 s); cubecl's cache keeps them for later runs.
#
# Measured 2026-12-01 on one NVIDIA H200 (driver's Vulkan ICD, burn 0.22 wgpu/Vulkan, f32; torch 2.11 CUDA),
# 20 timed steps for MNRL, 5 for LoRA; GPU memory for tunelab is nvidia-smi's peak (context included), for
# torch max_memory_allocated:
#   MiniLM MNRL seq128 b64: tunelab 239 pairs/s (4.5 GiB) vs torch f32 1706 (2.2 GiB) -> 0.14x; vs bf16 2099 -> 0.11x
#   MiniLM MNRL seq128 b32: tunelab 197 pairs/s (2.6 GiB)
#   SmolLM2-135M LoRA r16 seq512 b8: tunelab 5278 tokens/s (15.0 GiB) vs torch+peft bf16 15733 (7.3 GiB) -> 0.34x
#   Qwen3-0.6B LoRA r16 seq512 b8: first run failed (the logits of 4096 tokens x 151,936 words, 2.48 GB, exceed
#     wgpu's largest buffer); with the output head chunked (sft::batch_loss): tunelab 2756 tokens/s (32.8 GiB)
#     vs torch+peft f32 11512 (27.9 GiB) -> 0.24x; vs bf16 14868 -> 0.19x.
# Binaries built before 2026-12-07 link libfontconfig/libfreetype (plotters' system fonts then): carry them
# where they are missing; newer ones draw with a compiled-in font and need neither.
set -uo pipefail
# Paths given in the environment are taken from where the script was started; defaults are the repository's.
[ -n "${TUNELAB:-}" ] && TUNELAB=$(realpath "$TUNELAB")
[ -n "${TORCH_ANCHOR:-}" ] && TORCH_ANCHOR=$(realpath "$TORCH_ANCHOR")
cd "$(dirname "$0")/.."
TL=${TUNELAB:-target/debug/tunelab}
ANCHOR=${TORCH_ANCHOR:-../shared/bench/torch_anchor.py}
# The project's .venv (scripts/setup-python.sh --heavy; a CUDA torch on the GPU machine), else python3.
[ -x .venv/bin/python ] && PY_DEFAULT=.venv/bin/python || PY_DEFAULT=python3
PY=${PYTHON:-$PY_DEFAULT}
STEPS=${STEPS:-20}
OUTF=$(mktemp)
CASE_TIMEOUT=${CASE_TIMEOUT:-360}   # a first Qwen3-1.7B f16 call compiled for ~200 s (H200, 2026-12-07)

# Run one tunelab case under a time limit, sampling the GPU's memory in use (nvidia-smi, MiB)
# meanwhile; the peak is printed as its own JSON line after the case's line.
gpu_case() {
  local samples; samples=$(mktemp)
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$samples" 2>/dev/null &
  fi
  local sampler=$!
  timeout "$CASE_TIMEOUT" "$TL" --device vulkan "$@" | tee -a "$OUTF"
  kill "$sampler" 2>/dev/null
  echo "{\"gpu_peak_mib\": $(sort -n "$samples" | tail -1 || echo null), \"args\": \"$*\"}"
}

"$TL" --device vulkan doctor || { echo "Vulkan device did not start" >&2; exit 1; }
[ "${MNRL:-1}" = 0 ] || for b in 64 32; do
  gpu_case bench train-embed --batch-size "$b" --seq 128 --steps "$STEPS" --warmup 3
done
if "$TL" bench lora --help >/dev/null 2>&1; then
  for shape in ${SHAPES:-smollm2-135m qwen3-0.6b qwen3-1.7b}; do
    for dt in ${DTYPES:-f32 f16}; do
      gpu_case bench lora --shape "$shape" --dtype "$dt" --seq 512 --batch-size 8 --rank 16 --steps 5 --warmup 2
    done
  done
fi
[ "${MNRL:-1}" = 0 ] || "$PY" "$ANCHOR" mnrl | tee -a "$OUTF"
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
    # Match peers by model and batch; each peer dtype (f32, bf16) gets its own ratio.
    for p in peers:
        if key in p and p.get("batch") == r.get("batch") and p["case"].split()[0] == case.split()[0]:
            print(f"{case}: tunelab {r.get('dtype', 'f32')} {r[key]:.1f} vs {p['framework']} {p.get('dtype')} {p[key]} {key} -> ratio {r[key] / p[key]:.3f}")
PYEOF

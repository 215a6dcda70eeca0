#!/usr/bin/env bash
# The matrix products of one LoRA training step (`tunelab bench lora`'s), class by class, each timed
# alone, tunelab (burn-flex + gemm) beside PyTorch's torch.matmul on the same shapes and layouts,
# same machine, one after the other: where a CPU step's matmul time goes, and whether a gap to
# torch+PEFT is the products themselves or what surrounds them.
#   tunelab   `tunelab bench gemm` (src/cli/bench.rs `lora_step_gemms`: each projection's forward
#             x·Wᵀ and input gradient g·W, the adapter's six skinny products, attention's six batched
#             products with grouped query heads folded into rows, the tied head's two)
#   torch     the same list through torch.matmul, right operands transposed views where tunelab's are
#
#   scripts/bench-gemm-shapes.sh                  (SmolLM2-135M shape, seq 256, batch 4)
#   DEVICE=vulkan DTYPE=f16 SHAPE=qwen3-1.7b SEQ=512 BATCH=8 PYTHON_REF=python3 scripts/bench-gemm-shapes.sh
#             (the GPU: tunelab's products on Vulkan as `bench lora --dtype f16` runs them, projections,
#             attention and head in f16, adapters in f32; torch.matmul on CUDA in bf16 and f32 likewise,
#             as torch+PEFT runs them: a bf16 base with f32 adapters)
# Env: SHAPE (smollm2-135m | qwen3-0.6b | qwen3-1.7b), SEQ, BATCH, RANK (16), REPS (5),
#      DEVICE (cpu | vulkan | metal | wgpu; default cpu), DTYPE (f32 | f16; default f32)
#      TUNELAB    a tunelab binary (default: cargo build here, target/debug/tunelab)
#      PYTHON_REF a Python with torch (default .venv/bin/python)
# Prints one line per product: ms per call and GFLOP/s for both, the ratio torch/tunelab time, and
# the per-step total of each class (calls per step × ms).
#
# Measured 2026-12-06 22:48 UTC, Intel(R) Xeon(R) Processor (2 cores, AVX-512), load 1.5, REPS=10,
# torch 2.15 (2 threads), defaults; per step, tunelab vs torch ms (torch/tunelab time):
#   projection forward x·Wᵀ  1546 vs 1068 (0.69)   projection input grad g·W  1169 vs 1037 (0.89)
#   lora (rank 16, 6 per projection)  550 vs 238 (0.43)   attention  343 vs 300 (0.87)
#   head  668 vs 632 (0.95)   all products  4276 vs 3275 (0.77)
# gemm reads a transposed right operand (x·Wᵀ of an [out, in] weight) slower than a row-major one,
# and runs the skinny rank-16 products at 48-58 GFLOP/s on one thread, torch.matmul at 120-155.
# Again 2026-12-07 00:55 UTC, same kind of machine, REPS=5: all products 4017 vs 2410 ms (0.60;
# projection forward 0.52, input grad 0.60, lora 0.45, attention 0.79, head 0.81): torch.matmul
# ran the projections at 260-311 GFLOP/s, gemm at 139-215 (this VM's speed drifts by a third from
# run to run; compare within a run). perf on the `bench lora` step (seq 256, batch 4): gemm's
# micro-kernels and packing are ~70% of the CPU samples, burn-flex's element loops ~18%, memset 4%.
# Tried and reverted: faer 0.23's matmul (its private-gemm-x86 kernels) for f32 in burn-flex. Alone
# on these shapes it ran at 127-197 GFLOP/s against gemm 0.19's 174-228 with gemm's `x86-v4`
# kernels (which burn-flex turns on), and in `bench gemm` the head's x·Eᵀ fell from 166 to
# 95-109 GFLOP/s. The gap to torch on AVX-512 is the GEMM kernels themselves (gemm reaches about
# two thirds of this CPU's FMA peak where torch's oneDNN/MKL kernels reach about 90%).
# Tried and reverted 2026-12-07 13:20-13:40 UTC (same kind of Xeon; old and new binaries interleaved, 3 rounds,
# the best of each product): (a) a product with n <= 32 run as its transpose Cᵀ = Bᵀ·Aᵀ (m = rank instead
# of n = rank): LoRA's g·B and gradient of B no faster (gate/up g·B 0.250 -> 0.241 ms, grad B 0.248 ->
# 0.250; 0.93-1.17x over all 30 rank-16 products); (b) a transposed weight copied row-major before gemm
# (x·Wᵀ): down 6.33 -> 7.00 ms, gate/up 5.76 -> 5.61, o 2.25 -> 2.44: the copy costs what the layout
# saves. This VM's single samples are bimodal (a product's time doubles when a vCPU is taken): compare
# the best of several rounds, as above; the 75-115 GFLOP/s above for the rank-16 products were such
# slow samples (best of 3: ~200 for g·B on gate/up).
# Again 2026-12-08 01:00 UTC, SEQ=512 BATCH=1, same kind of Xeon, per step tunelab vs torch ms: projection
# forward 421.6 vs 297.7 (0.71), input grad 274.7 vs 286.1 (1.04), lora 144.5 vs 65.1 (0.45), attention
# 174.2 vs 221.5 (1.27), head 200.0 vs 168.4 (0.84), all products 1215.0 vs 1038.8 (0.85).
# Tried and reverted 2026-12-08 01:00-01:35 UTC (same kind of Xeon, seq 512 batch 1, in-process A/B through an
# environment switch, 3 interleaved rounds): (c) AVX-512 kernels for f32 products with a side of at most 16
# (one 16-lane register per row of the narrow side, eight rows per block; for m <= 16 sixteen output
# columns per block): the adapters' products summed per step 105.4-140.7 ms against gemm's 105.7-114.1.
# x·Aᵀ went 19.6-23.8 -> 16.5-17.2 ms a step, but the gradient of A 11.8-15.8 -> 26.2-29.6, the rest
# within the noise. (d) (b) again at seq 512 batch 1 (a column-major right operand copied row-major by
# burn-flex's tiled copy first), two rounds, with against without: q_proj x·Wᵀ 2.23 / 1.93 against 2.02 /
# 2.03 ms, gate/up 3.17 / 4.35 against 4.10 / 4.02, down 4.87 / 4.42 against 3.13 / 4.91: no consistent gain.
set -euo pipefail
case "${TUNELAB:-}" in "") ;; *) TUNELAB=$(realpath "$TUNELAB") ;; esac
# A path is taken from where the script was started; a bare name (python3) is looked up on PATH.
case "${PYTHON_REF:-}" in */*) PYTHON_REF=$(realpath -s "$PYTHON_REF") ;; esac
cd "$(dirname "$0")/.."
SHAPE=${SHAPE:-smollm2-135m}
SEQ=${SEQ:-256}
BATCH=${BATCH:-4}
RANK=${RANK:-16}
REPS=${REPS:-5}
DEVICE=${DEVICE:-cpu}
DTYPE=${DTYPE:-f32}
PY=${PYTHON_REF:-.venv/bin/python}
if [ -z "${TUNELAB:-}" ]; then
  cargo build --locked --quiet --bin tunelab
  TUNELAB=./target/debug/tunelab
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
echo "# $(date -u +%FT%TZ) $(lscpu | sed -n 's/^Model name: *//p') nproc=$(nproc) load:$(uptime | sed 's/.*load average: //')$(command -v nvidia-smi >/dev/null && echo "; $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)") device=$DEVICE dtype=$DTYPE" >&2
"$TUNELAB" --device "$DEVICE" bench gemm --shape "$SHAPE" --seq "$SEQ" --batch-size "$BATCH" --rank "$RANK" --reps "$REPS" --dtype "$DTYPE" > "$WORK/tunelab.jsonl"
"$PY" - "$WORK/tunelab.jsonl" "$REPS" "$DEVICE" > "$WORK/torch.jsonl" <<'PYEOF'
# The same products as tunelab's lines, through torch.matmul, timed the same way (one warm-up call).
# On a GPU run, CUDA: tunelab's f16 products in bf16 (what torch+PEFT trains in; Vulkan has no bf16),
# its f32 ones in f32 (torch's default, no TF32, as the adapters run under PEFT).
import json, sys, time
import torch
torch.manual_seed(0)
reps = int(sys.argv[2])
dev = "cpu" if sys.argv[3] == "cpu" else "cuda"
sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
for line in open(sys.argv[1]):
    c = json.loads(line)
    if "class" not in c:
        continue
    dt = {"f32": torch.float32, "f16": torch.bfloat16 if dev == "cuda" else torch.float16}[c.get("dtype", "f32")]
    b, m, k, n = c["batch"], c["m"], c["k"], c["n"]
    lhs = (torch.rand(b, m, k, device=dev) * 2 - 1).to(dt)
    rhs = (torch.rand(b, n, k, device=dev) * 2 - 1).to(dt).transpose(1, 2) if c["rhs_transposed"] else (torch.rand(b, k, n, device=dev) * 2 - 1).to(dt)
    if b == 1:
        lhs, rhs = lhs[0], rhs[0]
    torch.matmul(lhs, rhs)
    sync()
    t = time.perf_counter()
    for _ in range(reps):
        torch.matmul(lhs, rhs)
    sync()
    ms = (time.perf_counter() - t) * 1000 / reps
    print(json.dumps({"name": c["name"], "class": c["class"], "ms": ms, "gflops": 2 * b * m * k * n / ms / 1e6, "per_step": c["per_step"], "dtype": str(dt).replace("torch.", ""), "threads": torch.get_num_threads(), "torch": torch.__version__, "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu"}), flush=True)
PYEOF
python3 - "$WORK/tunelab.jsonl" "$WORK/torch.jsonl" <<'PYEOF'
import json, sys
ours = [json.loads(l) for l in open(sys.argv[1])]
theirs = {r["name"]: r for r in map(json.loads, open(sys.argv[2]))}
total = next((r for r in ours if "total_step_ms" in r), {})
first = next(iter(theirs.values()))
print(f"# {total.get('case', '')}; torch {first['torch']} on {first.get('device', 'cpu')} with {first['threads']} threads")
print(f"{'product':34s} {'batch':>5s} {'m':>6s} {'k':>6s} {'n':>6s} {'dtype':>9s}  {'tunelab ms':>10s} {'GFLOP/s':>8s}  {'torch ms':>9s} {'GFLOP/s':>8s}  {'torch/tunelab time':>18s}")
by_class = {}
for r in ours:
    if "class" not in r:
        continue
    t = theirs[r["name"]]
    print(f"{r['name']:34s} {r['batch']:5d} {r['m']:6d} {r['k']:6d} {r['n']:6d} {r.get('dtype', 'f32') + '/' + t.get('dtype', 'float32')[:4]:>9s}  {r['ms']:10.3f} {r['gflops']:8.1f}  {t['ms']:9.3f} {t['gflops']:8.1f}  {t['ms'] / r['ms']:18.2f}")
    a = by_class.setdefault(r["class"], [0.0, 0.0])
    a[0] += r["ms"] * r["per_step"]; a[1] += t["ms"] * t["per_step"]
print()
print(f"{'class (per step)':34s} {'tunelab ms':>10s} {'torch ms':>9s} {'torch/tunelab':>14s}")
for cls, (o, t) in by_class.items():
    print(f"{cls:34s} {o:10.1f} {t:9.1f} {t / o:14.2f}")
o = sum(v[0] for v in by_class.values()); t = sum(v[1] for v in by_class.values())
print(f"{'all products':34s} {o:10.1f} {t:9.1f} {t / o:14.2f}")
PYEOF

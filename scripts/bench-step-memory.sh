#!/usr/bin/env bash
# Step memory of decoder LoRA training with and without --grad-checkpoint, same run, this machine:
#   tunelab     `tunelab bench lora [--grad-checkpoint] [--quantize-base q4_0]` (train lora's step on a
#               fixed batch of a random decoder of the shape, LoRA r16 on the seven projections, the
#               projections f32 or quantized as QLoRA's base; see scripts/bench-lora.sh), one process per
#               case: its peak RSS (VmHWM) over the whole process and over the steps alone (the
#               high-water mark restarted after the random model is built), and its step time.
#               DEVICE=vulkan (or another GPU device): the GPU's memory in use, sampled by nvidia-smi
#               every 200 ms around each case, its peak minus the reading before the case.
#   torch+peft  (TORCH=1) bench/torch_anchor.py's lora_case, with and without
#               model.gradient_checkpointing_enable() (use_reentrant=False), its process's VmHWM.
# Each process builds its random model in f32 first, so every peak includes the weights
# (Qwen3-0.6B: 2.4 GB f32, tied head; SmolLM2-135M: 0.5 GB); the ratio printed is the whole
# process's peak with / without.
#
#   scripts/bench-step-memory.sh                 (defaults below; ~30-40 min on a 2-core CPU)
# Env: CASES      "shape seq batch [quant]" lines, quant none (default), q8_0 or q4_0 (`--quantize-base`)
#                 (default: smollm2-135m 512 4, qwen3-0.6b 512 1)
#      MODES      which steps per case: "plain ckpt" (default), "ckpt" or "plain"
#      STEPS      timed steps (default 1), WARMUP warm-up steps (default 1)
#      DTYPE      tunelab's --dtype: f32 (default) or f16 (f16 base weights and activations, as PEFT on an
#                 f16 checkpoint; with q4_0 the dequantized blocks are f16 too, as QLoRA's f16 compute dtype)
#      DEVICE     tunelab's --device (default cpu)
#      TUNELAB    a tunelab binary to run (no cargo needed; for a GPU device build it with its feature,
#                 e.g. --features vulkan); unset or 1: `cargo build` here and target/debug/tunelab; 0: tunelab left out
#      TORCH      1: also the torch+peft anchor (default 0, CPU only)
#      PYTHON_REF a Python with torch + transformers + peft (default .venv/bin/python)
#      TORCH_ANCHOR path to torch_anchor.py (default ../shared/bench/torch_anchor.py)
#
# Measured 2026-12-06 12:07-12:27 UTC, Intel(R) Xeon(R) Processor (2 cores, AVX-512), shared with other
# jobs (load 7-9; the plain SmolLM2 step also beside this branch's own compiles), WARMUP=0 STEPS=1:
#   smollm2-135m seq512 b4   plain 7.54 GiB  ckpt 0.95 GiB  -> 0.13x peak (final loss equal: 149.54710)
#   qwen3-0.6b   seq512 b1   plain 6.07 GiB  ckpt 2.55 GiB  -> 0.42x peak (2.4 GB of it the f32 weights)
# torch+peft, same machine 12:27-12:37 (load 3-5), TORCH=1 TUNELAB=0, 3 warm-up + 1 step:
#   smollm2-135m seq512 b4   plain 7.24 GiB  gradient_checkpointing_enable() 5.04 GiB -> 0.70x
#   (34.2 vs 63.4 s/step); tunelab's checkpointed peak is 0.19x torch+peft's checkpointed one.
# Step times (148.7 vs 85.3 s, 93.9 vs 23.8 s) were taken under that uneven load and compare nothing;
# Qwen3-0.6B at batch 4 was not run plain (~17 GiB expected on a 24 GiB machine shared by four jobs).
# (Those peaks are the whole process's, build included; the ones below are the step's own.)
#
# Measured 2026-12-06 14:49-15:30 UTC, same machine (load 2-5.5: other jobs' compiles), Qwen3-1.7B seq 512,
# WARMUP=0 STEPS=1, one case at a time (the two b1 ckpt cases overlapped for a minute; peaks are per
# process) under `prlimit --as=18GiB`, step peak RSS (estimate beside it):
#   f32 base     b1 plain 11.30 GiB (est 11.31)  b1 ckpt 6.83 GiB (est 7.06)  b4 ckpt 7.61 GiB (est 7.84)  b4 plain est 25.2
#   Q4_0 before  b1 plain 12.23 GiB (est 12.05)                              b4 ckpt 3.46 GiB (est 3.52)  b4 plain est 26.0
#   Q4_0 now     b1 plain  6.99 GiB (est  6.84)  b1 ckpt 2.51 GiB (est 2.59)  b4 ckpt 3.34 GiB (est 3.38)  b4 plain est 20.8
# ("before": autodiff kept every dequantized matrix; "now": the CPU's quantized matmul dequantizes again
# in the backward pass; final losses equal bit for bit.) Q4_0 b4: --grad-checkpoint 3.34 GiB against the
# plain step's estimated 20.8 GiB -> 0.16x. An f16 base holds the 6.4 GiB of f32 weights in 3.2 GiB
# (b4 ckpt about 4.4 GiB, b4 plain about 22 GiB est.), above Q4_0 in both.
#
# Measured 2026-12-06 21:05-22:45 UTC, same machine, Qwen3-1.7B seq 512 batch 4, DTYPE=f16 (f16 base
# weights and activations, as PEFT on an f16 checkpoint; with q4_0 the blocks are dequantized to f32
# and cast to f16, again in the backward pass), WARMUP=0 STEPS=1, after attention stopped keeping its
# scores on the CPU (src/model/sdpa.rs); step peak RSS (the estimate the run printed; the formula then
# gained the f32 adapter inputs and RMSNorms: +5.47 GiB plain, +0.17 GiB checkpointed):
#   f16 base   plain 16.09 GiB (est 11.49)  ckpt 4.55 GiB (est 4.21)  -> 0.28x
#   Q4_0 f16   plain 14.29 GiB (est  9.65)  ckpt 2.30 GiB (est 2.37)  -> 0.16x
# QLoRA Q4_0 peaks below LoRA on the f16 base in both modes (-1.80 and -2.25 GiB); final losses
# plain/ckpt 568.81738/568.81726 (f16 base), 577.57751/577.57758 (Q4_0). Step times (plain 294/990 s,
# ckpt 230/238 s) ran beside builds and compare nothing. Before the recomputed attention, with the
# same binary otherwise: ckpt 4.76 GiB (f16 base) and 2.44 GiB (Q4_0).
#
# GPU (the coordinator's machine; no cargo there), Qwen3-1.7B at seq 512 batch 4, QLoRA Q4_0 and f32 base,
# plain and checkpointed:
#   TUNELAB=/path/to/tunelab DEVICE=vulkan WARMUP=1 STEPS=2 CASES="qwen3-1.7b 512 4 q4_0
#   qwen3-1.7b 512 4 none" scripts/bench-step-memory.sh
set -euo pipefail
# A binary given in the environment is taken from where the script was started.
case "${TUNELAB:-1}" in 0 | 1) ;; *) TUNELAB=$(realpath "$TUNELAB") ;; esac
[ -n "${PYTHON_REF:-}" ] && PYTHON_REF=$(realpath -s "$PYTHON_REF")
cd "$(dirname "$0")/.."
CASES=${CASES:-"smollm2-135m 512 4
qwen3-0.6b 512 1"}
MODES=${MODES:-plain ckpt}
STEPS=${STEPS:-1}
DTYPE=${DTYPE:-f32}
WARMUP=${WARMUP:-1}
TORCH=${TORCH:-0}
TUNELAB=${TUNELAB:-1}
DEVICE=${DEVICE:-cpu}
PY=${PYTHON_REF:-.venv/bin/python}
ANCHOR=${TORCH_ANCHOR:-../shared/bench/torch_anchor.py}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
case "$TUNELAB" in
  0) TL= ;;
  1) nice cargo build --locked --quiet --bin tunelab; TL=./target/debug/tunelab ;;
  *) TL=$TUNELAB ;;
esac

# One tunelab case. On a GPU device, nvidia-smi samples the card's memory in use meanwhile; the
# peak minus the reading just before the case (other processes, if any) is added to the case's line
# as gpu_peak_mib.
tunelab_case() {
  if [ "$DEVICE" = cpu ] || ! command -v nvidia-smi >/dev/null; then
    nice "$TL" --device "$DEVICE" bench lora "$@" | tee -a "$WORK/results.jsonl" || echo "# case failed (rc $?): $*" >&2
    return 0
  fi
  local before samples sampler
  before=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
  samples=$(mktemp)
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$samples" &
  sampler=$!
  local rc=0
  "$TL" --device "$DEVICE" bench lora "$@" > "$WORK/line.json" || rc=$?
  kill "$sampler"; wait "$sampler" 2>/dev/null || true
  if [ "$rc" != 0 ]; then
    echo "# case failed (rc $rc, GPU peak $(sort -n "$samples" | tail -1) MiB): $*" >&2
    rm -f "$samples"; return 0
  fi
  python3 - "$WORK/line.json" "$samples" "$before" <<'PYEOF' | tee -a "$WORK/results.jsonl"
import json, sys
line, samples, before = sys.argv[1:4]
r = json.loads(open(line).read().strip().splitlines()[-1])
peak = max(int(l.split()[0]) for l in open(samples) if l.strip())
r["gpu_peak_mib"] = peak - int(before); r["gpu_before_mib"] = int(before)
print(json.dumps(r), flush=True)
PYEOF
  rm -f "$samples"
}

cat > "$WORK/anchor_ckpt.py" <<'PYEOF'
# lora_case with gradient checkpointing on (PEFT + transformers' own switch), peak RSS added.
import contextlib, importlib.util, io, json, sys
anchor, shape, seq, batch, steps, ckpt = sys.argv[1:7]
spec = importlib.util.spec_from_file_location("torch_anchor", anchor)
A = importlib.util.module_from_spec(spec); spec.loader.exec_module(A)
if ckpt == "1":
    import peft
    get = peft.get_peft_model
    def with_ckpt(model, *a, **k):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
        return get(model, *a, **k)
    peft.get_peft_model = with_ckpt
kind, cfg = {"smollm2-135m": ("llama", A.SMOLLM2_135M), "qwen3-0.6b": ("qwen3", A.QWEN3_06B)}[shape]
buf = io.StringIO()
with contextlib.redirect_stdout(buf):
    A.lora_case(f"{shape} lora r16 seq{seq} b{batch}{' ckpt' if ckpt == '1' else ''}", kind, cfg, int(seq), int(batch), int(steps), "f32")
hwm = int([l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]) / 2**20
for line in buf.getvalue().splitlines():
    r = json.loads(line); r["peak_rss_gib"] = hwm; r["grad_checkpoint"] = ckpt == "1"
    print(json.dumps(r), flush=True)
PYEOF

echo "# $(date -u +%FT%TZ) $(lscpu | sed -n 's/^Model name: *//p') nproc=$(nproc) load:$(uptime | sed 's/.*load average: //')" >&2
if [ "$DEVICE" != cpu ] && command -v nvidia-smi >/dev/null; then
  echo "# GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)" >&2
fi
while read -r shape seq batch quant; do
  [ -n "$shape" ] || continue
  quant=${quant:-none}
  for mode in $MODES; do
    [ -n "$TL" ] || continue
    ck=; [ "$mode" = ckpt ] && ck=--grad-checkpoint
    echo "# tunelab $shape seq $seq batch $batch base $quant $DTYPE $mode on $DEVICE (load:$(uptime | sed 's/.*load average: //'))" >&2
    tunelab_case --shape "$shape" --seq "$seq" --batch-size "$batch" --rank 16 --quantize-base "$quant" --dtype "$DTYPE" \
      --steps "$STEPS" --warmup "$WARMUP" $ck
  done
  if [ "$TORCH" = 1 ]; then
    for ck in 0 1; do
      echo "# torch+peft $shape seq $seq batch $batch ckpt=$ck (load:$(uptime | sed 's/.*load average: //'))" >&2
      nice "$PY" "$WORK/anchor_ckpt.py" "$ANCHOR" "$shape" "$seq" "$batch" "$STEPS" "$ck" | tee -a "$WORK/results.jsonl"
    done
  fi
done <<<"$CASES"
python3 - "$WORK/results.jsonl" <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
by = {}
for r in rows:
    by[(r["case"].removesuffix(" ckpt"), r["framework"], r["grad_checkpoint"])] = r
# The peak compared: the GPU's (nvidia-smi) on a GPU device, else the steps' own RSS peak where the
# binary reports it, else the whole process's.
def peak(r):
    if r.get("gpu_peak_mib") is not None:
        return r["gpu_peak_mib"] / 1024, "GPU"
    if r.get("step_peak_rss_gib") is not None:
        return r["step_peak_rss_gib"], "step RSS"
    return r["peak_rss_gib"], "RSS"
for (case, fw, ck), r in sorted(by.items()):
    p, what = peak(r)
    extra = f" (process {r['peak_rss_gib']:.2f} GiB)" if what == "step RSS" else ""
    print(f"{case:40s} {fw:10s} {'ckpt ' if ck else 'plain'} peak {what} {p:6.2f} GiB{extra}  step {r['step_ms']/1000:7.1f} s")
for (case, fw, ck), r in sorted(by.items()):
    if ck and (case, fw, False) in by:
        p = by[(case, fw, False)]
        print(f"{case:40s} {fw:10s} checkpointed / plain: peak {peak(r)[0]/peak(p)[0]:.2f}x, step time {r['step_ms']/p['step_ms']:.2f}x")
PYEOF

#!/usr/bin/env bash
# Step memory of decoder LoRA training with and without --grad-checkpoint, same run, this machine:
#   tunelab     `tunelab bench lora [--grad-checkpoint]` (train lora's step on a fixed batch of a random
#               decoder of the shape, LoRA r16 on the seven projections; see scripts/bench-lora.sh),
#               one process per case, its peak RSS (VmHWM) and step time.
#   torch+peft  (TORCH=1) bench/torch_anchor.py's lora_case, with and without
#               model.gradient_checkpointing_enable() (use_reentrant=False), its process's VmHWM.
# Each process builds its random model in f32 first, so every peak includes the weights
# (Qwen3-0.6B: 2.4 GB f32, tied head; SmolLM2-135M: 0.5 GB); the ratio printed is the whole
# process's peak with / without.
#
#   scripts/bench-step-memory.sh                 (defaults below; ~30-40 min on a 2-core CPU)
# Env: CASES      "shape seq batch" lines (default: smollm2-135m 512 4, qwen3-0.6b 512 1)
#      STEPS      timed steps (default 1), WARMUP warm-up steps (default 1)
#      TORCH      1: also the torch+peft anchor (default 0); TUNELAB=0 leaves tunelab out
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
set -euo pipefail
cd "$(dirname "$0")/.."
CASES=${CASES:-"smollm2-135m 512 4
qwen3-0.6b 512 1"}
STEPS=${STEPS:-1}
WARMUP=${WARMUP:-1}
TORCH=${TORCH:-0}
TUNELAB=${TUNELAB:-1}
PY=${PYTHON_REF:-.venv/bin/python}
ANCHOR=${TORCH_ANCHOR:-../shared/bench/torch_anchor.py}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
nice cargo build --locked --quiet --bin tunelab

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
while read -r shape seq batch; do
  [ -n "$shape" ] || continue
  for ck in "" --grad-checkpoint; do
    [ "$TUNELAB" = 1 ] || continue
    echo "# tunelab $shape seq $seq batch $batch ${ck:-plain} (load:$(uptime | sed 's/.*load average: //'))" >&2
    nice ./target/debug/tunelab bench lora --shape "$shape" --seq "$seq" --batch-size "$batch" --rank 16 \
      --steps "$STEPS" --warmup "$WARMUP" $ck | tee -a "$WORK/results.jsonl"
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
for (case, fw, ck), r in sorted(by.items()):
    print(f"{case:34s} {fw:10s} {'ckpt ' if ck else 'plain'} peak RSS {r['peak_rss_gib']:6.2f} GiB  step {r['step_ms']/1000:7.1f} s")
for (case, fw, ck), r in sorted(by.items()):
    if ck and (case, fw, False) in by:
        p = by[(case, fw, False)]
        print(f"{case:34s} {fw:10s} checkpointed / plain: peak {r['peak_rss_gib']/p['peak_rss_gib']:.2f}x, step time {r['step_ms']/p['step_ms']:.2f}x")
PYEOF

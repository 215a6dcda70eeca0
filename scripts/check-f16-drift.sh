#!/usr/bin/env bash
# How far `train embed --dtype f16` strays from the f32 run, beside torch.autocast(float16) +
# GradScaler on the same model: max |f16 loss - f32 loss| over the steps, LoRA and full fine-tuning.
# The encoder is copied with its dropout set to 0 (dropout masks would differ between the runs).
# tunelab and torch draw different batches from the same pairs: each compares its own f32 and
# f16 runs, and the two drifts are compared.
#
#   scripts/check-f16-drift.sh [STEPS]                  (default 20; batch 16, seq 64, lr 5e-5)
# Env: PYTHON_REF  a Python with torch, transformers and peft (default .venv/bin/python;
#                  `scripts/setup-python.sh --heavy` installs them)
#      MODEL       BERT-family encoder folder (default models/all-MiniLM-L6-v2)
#      DATA        pairs JSONL (default datasets/pairs/pairs.jsonl)
#      TUNELAB     the binary (default target/debug/tunelab; build it first)
#      INIT_SCALE  --init-loss-scale for tunelab's f16 runs (default 32768: at GradScaler's 2^16 the
#                  full fine-tune's first step overflows here and is skipped, AdamW untouched, and
#                  the run then follows another path: a skip, not precision)
#
# Measured 2026-12-06 (Intel Xeon, 2 cores, debug build, torch 2.15 CPU, 20 steps):
#   tunelab LoRA r16 0.0007, full 0.0005; torch LoRA 0.0007, full 0.0003.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-20}
PY=${PYTHON_REF:-.venv/bin/python}
MODEL=${MODEL:-models/all-MiniLM-L6-v2}
DATA=${DATA:-datasets/pairs/pairs.jsonl}
TUNELAB=${TUNELAB:-target/debug/tunelab}
INIT_SCALE=${INIT_SCALE:-32768}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

cp -rL "$MODEL" "$WORK/model"
"$PY" - "$WORK/model/config.json" <<'PYEOF'
import json, sys
c = json.load(open(sys.argv[1]))
c["hidden_dropout_prob"] = 0.0
c["attention_probs_dropout_prob"] = 0.0
json.dump(c, open(sys.argv[1], "w"), indent=2)
PYEOF

for ft in lora full; do
    for dt in f32 f16; do
        extra=()
        [ "$ft" = lora ] && extra+=(--lora-rank 16)
        [ "$dt" = f16 ] && extra+=(--init-loss-scale "$INIT_SCALE")
        TUNELAB_DEVICE=cpu "$TUNELAB" train embed --model "$WORK/model" --data "$DATA" --reports "$WORK/runs" --name "$ft-$dt" \
            --max-steps "$STEPS" --batch-size 16 --max-seq-length 64 --learning-rate 5e-5 --fine-tune-type "$ft" --dtype "$dt" "${extra[@]}" >/dev/null
    done
done

"$PY" - "$WORK" "$DATA" "$STEPS" <<'PYEOF'
import glob, json, random, sys
work, data, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])

def drift(a, b):
    d = [abs(x - y) for x, y in zip(a, b)]
    return f"max |dloss| {max(d):.4f} (step {d.index(max(d)) + 1} of {len(d)})"

def log(name):
    lines = [json.loads(l) for l in open(glob.glob(f"{work}/runs/{name}/*/training/loss.jsonl")[0])]
    skipped = lines[-1].get("skipped_steps", 0)
    return [l["loss"] for l in lines], skipped

for ft in ["lora", "full"]:
    (a, _), (b, skipped) = log(f"{ft}-f32"), log(f"{ft}-f16")
    print(f"tunelab {ft:4}: {drift(a, b)}; f16 steps skipped: {skipped}")

import torch
from transformers import AutoModel, AutoTokenizer, get_linear_schedule_with_warmup
model_dir = f"{work}/model"
pairs = [json.loads(l) for l in open(data)]
pairs = [(p["query"], p["positive"]) for p in pairs]
random.Random(0).shuffle(pairs)
tok = AutoTokenizer.from_pretrained(model_dir)

def run(fp16, lora):
    torch.manual_seed(0)
    model = AutoModel.from_pretrained(model_dir)
    if lora:
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=["query", "value"]))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=5e-5, weight_decay=0.01)
    sched = get_linear_schedule_with_warmup(opt, max(1, steps // 10), steps)
    scaler = torch.amp.GradScaler("cpu", enabled=fp16)
    losses = []
    for step in range(steps):
        batch = pairs[step * 16:(step + 1) * 16]
        def emb(texts):
            t = tok(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
            with torch.autocast("cpu", dtype=torch.float16, enabled=fp16):
                h = model(**t).last_hidden_state
            m = t["attention_mask"].unsqueeze(-1).float()
            return torch.nn.functional.normalize((h.float() * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)
        a, p = emb([q for q, _ in batch]), emb([d for _, d in batch])
        loss = torch.nn.functional.cross_entropy(a @ p.T * 20.0, torch.arange(len(batch)))
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(opt)
        scaler.update()
        sched.step()
        losses.append(loss.item())
    return losses

for ft in ["lora", "full"]:
    print(f"torch {torch.__version__} {ft:4}: {drift(run(False, ft == 'lora'), run(True, ft == 'lora'))}", flush=True)
PYEOF

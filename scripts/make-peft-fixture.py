#!/usr/bin/env python3
"""PEFT's own LoRA (or DoRA) adapter on the tiny Llama fixture, with PEFT's logits: the
reference that tests/peft_parity.rs holds tunelab's PEFT reader, writer and LoRA / DoRA
arithmetic to.

    python3 scripts/make-peft-fixture.py [--dora] [SRC] [OUT]

SRC defaults to tests/fixtures/decoder/tiny_llama; OUT to tests/fixtures/decoder/peft_tiny_llama
(peft_dora_tiny_llama with --dora).

LoRA: rank 4, lora_alpha 8, rsLoRA (scale alpha/sqrt(r) = 4), all seven projections of block 1
only (layers_to_transform), B drawn N(0, 0.2) so the adapter moves the logits.
DoRA (--dora, use_dora=True): rank 4, lora_alpha 8 (scale 2), the seven projections of both
blocks, B drawn N(0, 0.2), and the magnitude vectors multiplied by U(0.5, 1.5) so that m differs
from the row norms of W + scale*B*A (a wrong norm axis, a missing norm or an ignored m all show).
logits.json also holds the logits after merge_and_unload (PEFT's fused weights).
Saved with save_pretrained; logits of two fixed sequences with and without the adapter.
With --dora, logits.json also holds the gradients of sum(logits * sin(0.37 k)) for the
factors and magnitude of two layers (the norm detached, as PEFT trains DoRA).
The committed LoRA files were made with torch 2.11.0, transformers 5.17.0, peft 0.21.0; the DoRA
files with torch 2.15.0, transformers 5.25.0, peft 0.21.2 (CPU, f32).
"""
import copy
import json
import sys
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

ROOT = Path(__file__).resolve().parent.parent
args = [a for a in sys.argv[1:] if a != "--dora"]
dora = "--dora" in sys.argv[1:]
src = args[0] if args else str(ROOT / "tests/fixtures/decoder/tiny_llama")
out = args[1] if len(args) > 1 else str(ROOT / "tests/fixtures/decoder" / ("peft_dora_tiny_llama" if dora else "peft_tiny_llama"))

torch.manual_seed(0)
m = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
ids = [[1, 5, 17, 99, 3, 42, 8, 77], [1, 23, 64, 101, 9, 9, 12, 4]]
x = torch.tensor(ids)
with torch.no_grad():
    base = m(x).logits
targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
if dora:
    c = LoraConfig(r=4, lora_alpha=8, use_dora=True, target_modules=targets, lora_dropout=0.0, task_type="CAUSAL_LM")
else:
    c = LoraConfig(r=4, lora_alpha=8, use_rslora=True, target_modules=targets, layers_to_transform=[1],
                   lora_dropout=0.0, task_type="CAUSAL_LM")
p = get_peft_model(m, c).eval()
with torch.no_grad():
    for n, t in p.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(t, std=0.2)
        if "lora_magnitude_vector" in n:
            t.mul_(torch.empty_like(t).uniform_(0.5, 1.5))
with torch.no_grad():
    y = p(x).logits
p.save_pretrained(out)
# Keep the committed config free of this machine's paths, and without PEFT's model card.
cfg_path = Path(out) / "adapter_config.json"
cfg = json.loads(cfg_path.read_text())
try:
    cfg["base_model_name_or_path"] = str(Path(src).resolve().relative_to(ROOT))
except ValueError:
    pass
cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
(Path(out) / "README.md").unlink(missing_ok=True)
record = {"ids": ids, "logits": y.tolist(), "base_logits": base.tolist(), "torch": torch.__version__,
          "peft": __import__("peft").__version__}
if dora:
    # Gradients of loss = sum(logits * sin(0.37 * k)) (k the flat index) for two layers: they
    # show whether the norm ||W + s*B*A|| is treated as a constant (PEFT detaches it).
    weights = torch.sin(0.37 * torch.arange(y.numel(), dtype=torch.float32)).reshape(y.shape)
    p.zero_grad()
    (p(x).logits * weights).sum().backward()
    grads = {}
    for n, t in p.named_parameters():
        for layer in ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"]:
            if f".{layer}." in n and t.grad is not None:
                kind = "lora_A" if "lora_A" in n else "lora_B" if "lora_B" in n else "lora_magnitude_vector"
                grads[f"{layer}.{kind}"] = t.grad.tolist()
    record["grads"] = grads
    merged = copy.deepcopy(p).merge_and_unload().eval()
    with torch.no_grad():
        record["merged_logits"] = merged(x).logits.tolist()
    print("merged vs adapted", (torch.tensor(record["merged_logits"]) - y).abs().max().item())
json.dump(record, open(out + "/logits.json", "w"))
print("max effect", (y - base).abs().max().item())

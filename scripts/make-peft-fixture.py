#!/usr/bin/env python3
"""PEFT's own LoRA adapter on the tiny Llama fixture, with PEFT's logits: the reference that
tests/peft_parity.rs holds tunelab's PEFT reader, writer and LoRA arithmetic to.

    python3 scripts/make-peft-fixture.py tests/fixtures/decoder/tiny_llama tests/fixtures/decoder/peft_tiny_llama

rank 4, lora_alpha 8, rsLoRA (scale alpha/sqrt(r) = 4), all seven projections of block 1 only
(layers_to_transform), B drawn N(0, 0.2) so the adapter moves the logits; saved with
save_pretrained, logits of two fixed sequences with and without the adapter in logits.json.
The committed files were made with torch 2.11.0, transformers 5.17.0, peft 0.21.0 (CPU, f32).
"""
import json
import sys

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

torch.manual_seed(0)
src, out = sys.argv[1], sys.argv[2]
m = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
ids = [[1, 5, 17, 99, 3, 42, 8, 77], [1, 23, 64, 101, 9, 9, 12, 4]]
x = torch.tensor(ids)
with torch.no_grad():
    base = m(x).logits
c = LoraConfig(r=4, lora_alpha=8, use_rslora=True,
               target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
               layers_to_transform=[1], lora_dropout=0.0, task_type="CAUSAL_LM")
p = get_peft_model(m, c).eval()
for n, t in p.named_parameters():
    if "lora_B" in n:
        torch.nn.init.normal_(t, std=0.2)
with torch.no_grad():
    y = p(x).logits
p.save_pretrained(out)
json.dump({"ids": ids, "logits": y.tolist(), "base_logits": base.tolist(), "torch": torch.__version__,
           "peft": __import__("peft").__version__}, open(out + "/logits.json", "w"))
print("max effect", (y - base).abs().max().item())

#!/usr/bin/env python3
"""Check that tunelab's PEFT export means in PEFT what it means in tunelab.

    python scripts/peft-parity.py BASE_HF_DIR PEFT_DIR FUSED_DIR [TOL]

BASE_HF_DIR  the base model as a Hugging Face folder (e.g. tests/fixtures/decoder/tiny_llama)
PEFT_DIR     `tunelab export adapter --adapter-path ADAPTERS --format peft --output PEFT_DIR`
FUSED_DIR    `tunelab fuse --model BASE_HF_DIR --adapter-path ADAPTERS --save-path FUSED_DIR`
             (tunelab's own W + scale*B*A, written as plain weights)

transformers + PEFT load the base model with the PEFT adapter; transformers loads the fused
folder; both run the same token ids and the largest |logit difference| must stay under TOL
(default 1e-4, f32). A wrong key, a transposed factor or a wrong scale (alpha/r, rsLoRA) shows
up as a difference of the size of the adapter's effect, which is also printed.

End to end on the tiny fixture (writes to /tmp/peft-parity):
    scripts/peft-parity.py --demo
Environment: python3 -m venv .venv && .venv/bin/pip install torch transformers peft safetensors
"""
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IDS = [[1, 5, 17, 99, 3, 42, 8, 77], [1, 23, 64, 101, 9, 9, 12, 4]]


def logits(model, ids):
    import torch

    with torch.no_grad():
        return model(torch.tensor(ids)).logits.float()


def compare(base_dir: str, peft_dir: str, fused_dir: str, tol: float) -> int:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, torch_dtype=torch.float32).eval()
    plain = logits(base, IDS)
    adapted = PeftModel.from_pretrained(base, peft_dir).eval()
    with_peft = logits(adapted, IDS)
    fused = AutoModelForCausalLM.from_pretrained(fused_dir, torch_dtype=torch.float32).eval()
    ours = logits(fused, IDS)
    diff = (with_peft - ours).abs().max().item()
    effect = (with_peft - plain).abs().max().item()
    cfg = json.loads((Path(peft_dir) / "adapter_config.json").read_text())
    print(f"PEFT ({cfg['r']=}, {cfg['lora_alpha']=}, {cfg.get('use_rslora')=}) vs tunelab fused: "
          f"max |diff| {diff:.3e} (tolerance {tol:g}); adapter effect max |diff| {effect:.3e}")
    if effect < 10 * tol:
        print("the adapter barely changes the logits: this check would not see a wrong scale")
        return 1
    return 0 if diff <= tol else 1


def demo() -> int:
    out = Path(tempfile.gettempdir()) / "peft-parity"
    subprocess.run(["rm", "-rf", str(out)], check=True)
    data = out / "data"
    data.mkdir(parents=True)
    for name, n, start in [("train", 16, 0), ("valid", 4, 50)]:
        with open(data / f"{name}.jsonl", "w") as f:
            for i in range(n):
                k = 3 + (start + i * 7) % 100
                rec = {"prompt": f"w{k} w{3 + (k * 3) % 120}", "completion": f"w{k} w{k + 1}", "classification": "public"}
                f.write(json.dumps(rec) + "\n")
    tiny = str(ROOT / "tests/fixtures/decoder/tiny_llama")
    tl = ["cargo", "run", "--quiet", "--"]
    subprocess.run(tl + ["train", "lora", "--model", tiny, "--data", str(data), "--iters", "20", "--batch-size", "2",
                         "--learning-rate", "0.02", "--num-layers", "-1", "--rank", "4", "--alpha", "8",
                         "--adapter-path", str(out / "adapters")], check=True, cwd=ROOT)
    subprocess.run(tl + ["export", "adapter", "--adapter-path", str(out / "adapters"), "--format", "peft",
                         "--output", str(out / "peft"), "--base-model", tiny], check=True, cwd=ROOT)
    subprocess.run(tl + ["fuse", "--model", tiny, "--adapter-path", str(out / "adapters"),
                         "--save-path", str(out / "fused")], check=True, cwd=ROOT)
    return compare(tiny, str(out / "peft"), str(out / "fused"), 1e-4)


if __name__ == "__main__":
    if sys.argv[1:] == ["--demo"]:
        sys.exit(demo())
    if len(sys.argv) not in (4, 5):
        print(__doc__)
        sys.exit(2)
    sys.exit(compare(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]) if len(sys.argv) > 4 else 1e-4))

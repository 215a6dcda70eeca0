#!/usr/bin/env python3
"""Parity of `tunelab export gguf-lora` with llama.cpp: a LoRA adapter exported by tunelab and
applied by llama.cpp at run time (`--lora`) must give the logits of the same adapter merged into
the weights.

Steps (all in a temporary folder):
  1. base: an F32 copy of SmolLM2-135M-Instruct (Q4_1, from scripts/fetch-models.sh), dequantised
     by gguf-py, so base+adapter and the merged model share exact weights.
  2. adapter: random PEFT LoRA factors (rank 8, alpha 16) on q/k/v/o/gate/up/down of every layer,
     written as a PEFT folder (adapter_config.json + adapter_model.safetensors); or, with
     --adapter DIR, a given PEFT folder.
  3. tunelab export gguf-lora --adapter PEFT --base base.gguf --out adapter-{f32,f16}.gguf
  4. merged: base + scale·B·A per layer, computed here with numpy in Hugging Face row order and
     put into the GGUF row order with llama.cpp's own q/k permutation (convert_hf_to_gguf.py
     LlamaModel.permute), written with gguf-py. Independent of tunelab's exporter.
  5. llama.cpp (llama-cpp-python, logits_all) on a few prompts: logits of base+adapter vs merged,
     max abs difference over every position and vocabulary entry; also base vs merged, to show
     the adapter changes the logits by far more than the parity error.
Exits 1 when the f32 adapter's max abs difference exceeds --tolerance.

Environment (once): scripts/setup-llama-cpp.sh (see check-gguf-embeddings.py).
Run (after `cargo build`): .venv/bin/python scripts/check-gguf-lora.py

Measured (2026-12-01, SmolLM2-135M-Instruct F32 copy, rank 8 / alpha 16 on all 210 projections,
3 prompts (every position), llama.cpp from llama-cpp-python 0.3.36, CPU):
  adapter effect, max |merged - base|            4.23
  f32 adapter, max |base+--lora - merged|        8.9e-05 (F32 KV cache), 1.6e-02 (default F16 KV cache)
  f16 adapter, max |base+--lora - merged|        2.3e-03 (F32 KV cache), 2.0e-02 (default F16 KV cache)
  argmax identical at every position for both. With the reference's q/k permutation left out
  (a deliberate layout error) the f32 difference is 1.58, so the check does see layout mistakes.
  The f32 adapter on the original Q4_1 file loads and runs; against the merged F32 model it
  differs by the base's quantisation (max 1.42, argmax agreement 97.3%).
  A real adapter from `tunelab train lora` (4 iterations on datasets/completions, rank 4, top 4
  blocks, 28 modules; MLX output converted with `tunelab export adapter --format peft`, then
  --adapter DIR): effect 0.344; f32 adapter 2.9e-05, f16 adapter 1.0e-04 (F32 KV cache).
"""
import argparse
import json
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SMOLLM = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPTS = [
    "The capital of France is",
    "<|im_start|>user\nWhat is BM25?<|im_end|>\n<|im_start|>assistant\n",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
]
MODULES = {  # PEFT module -> llama.cpp tensor
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def run(cmd):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"command failed ({r.returncode}): {' '.join(map(str, cmd))}\n{r.stderr}")
    return r.stdout


def write_safetensors(path, tensors):
    """A minimal safetensors writer (F32 only): 8-byte header length, JSON header, data."""
    header, blobs, off = {}, [], 0
    for name, arr in tensors.items():
        b = arr.astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    """The tensors of a safetensors file (F32 / F16) as numpy arrays."""
    import numpy as np
    raw = Path(path).read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    dtypes = {"F32": "<f4", "F16": "<f2"}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        lo, hi = info["data_offsets"]
        out[name] = np.frombuffer(raw[8 + n + lo:8 + n + hi], dtype=dtypes[info["dtype"]]).reshape(info["shape"])
    return out


def llama_permute(w, n_head):
    """convert_hf_to_gguf.py LlamaModel.permute: HF q/k rows -> llama.cpp's interleaved order."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def copy_with(src, dst, replace):
    """Write `src` (every tensor dequantised to F32) to `dst`, metadata unchanged, tensors in
    `replace` (name -> array in PyTorch order) substituted."""
    import gguf
    from gguf.quants import dequantize
    r = gguf.GGUFReader(str(src))
    w = gguf.GGUFWriter(str(dst), arch=r.fields["general.architecture"].contents())
    for name, field in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(name, field.contents(), vtype, sub_type=sub)
    for t in r.tensors:
        shape = [int(d) for d in reversed(t.shape.tolist())]
        arr = replace.get(t.name)
        if arr is None:
            arr = dequantize(t.data, t.tensor_type).reshape(shape)
        w.add_tensor(t.name, arr.astype("float32"))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()


def logits(model, lora=None, kv_f32=True):
    """llama.cpp's logits at every position of every prompt. The KV cache is F32 by default: with
    llama.cpp's default F16 cache, the two ways of computing the same K/V round differently to
    f16, which alone moves logits by ~1e-2 and would hide a small layout error."""
    import numpy as np
    from llama_cpp import Llama
    kw = {"lora_path": str(lora)} if lora else {}
    if kv_f32:
        kw.update(type_k=0, type_v=0)  # GGML_TYPE_F32
    llm = Llama(model_path=str(model), n_ctx=256, n_batch=256, logits_all=True, n_threads=2, seed=0,
                verbose=False, **kw)
    out = []
    for p in PROMPTS:
        toks = llm.tokenize(p.encode(), add_bos=False, special=True)
        llm.reset()
        llm.eval(toks)
        out.append(np.array(llm.scores[: len(toks)], dtype=np.float64))
    del llm
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default=str(SMOLLM))
    ap.add_argument("--tunelab", default=str(ROOT / "target" / "debug" / "tunelab"))
    ap.add_argument("--adapter", help="a PEFT adapter folder to check instead of random factors")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--tolerance", type=float, default=1e-3)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    import numpy as np
    import gguf
    import llama_cpp_env
    llama_cpp = llama_cpp_env.import_llama_cpp()

    reader = gguf.GGUFReader(args.base)
    arch = reader.fields["general.architecture"].contents()
    n_layer = int(reader.fields[f"{arch}.block_count"].contents())
    n_head = int(reader.fields[f"{arch}.attention.head_count"].contents())
    n_head_kv = int(reader.fields[f"{arch}.attention.head_count_kv"].contents())
    shapes = {t.name: [int(d) for d in reversed(t.shape.tolist())] for t in reader.tensors}
    del reader

    rng = np.random.default_rng(20240607)
    scale = args.alpha / args.rank
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = tmp / "base-f32.gguf"
        copy_with(args.base, base, {})

        if args.adapter:
            # A given PEFT adapter (e.g. `tunelab train lora` output converted with
            # `tunelab export adapter --format peft`).
            adir = Path(args.adapter)
            cfg = json.loads((adir / "adapter_config.json").read_text())
            rank, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
            scale = alpha / (np.sqrt(rank) if cfg.get("use_rslora") else rank)
            peft = read_safetensors(adir / "adapter_model.safetensors")
        else:
            rank, alpha = args.rank, args.alpha
            scale = alpha / rank
            peft = {}
            for layer in range(n_layer):
                for module in MODULES:
                    out_f, in_f = shapes[f"blk.{layer}.{MODULES[module]}.weight"]
                    key = f"base_model.model.model.layers.{layer}.{module}"
                    peft[f"{key}.lora_A.weight"] = rng.normal(0, 1 / np.sqrt(in_f), size=(rank, in_f)).astype(np.float32)
                    peft[f"{key}.lora_B.weight"] = rng.normal(0, 0.02, size=(out_f, rank)).astype(np.float32)
            adir = tmp / "peft"
            adir.mkdir()
            (adir / "adapter_config.json").write_text(json.dumps({
                "peft_type": "LORA", "r": rank, "lora_alpha": alpha, "lora_dropout": 0.0,
                "target_modules": [m.split(".")[-1] for m in MODULES], "base_model_name_or_path": Path(args.base).name}))
            write_safetensors(adir / "adapter_model.safetensors", peft)

        # delta = scale·B·A per adapted module, in HF row order, then llama.cpp's q/k permutation.
        deltas = {}
        for name, a in peft.items():
            if not name.endswith(".lora_A.weight"):
                continue
            key = name[: -len(".lora_A.weight")]
            b = peft[key + ".lora_B.weight"]
            layer, module = key.split("model.layers.")[1].split(".", 1)
            gname = MODULES[module]
            d = scale * (b.astype(np.float64) @ a.astype(np.float64))
            if arch == "llama" and gname == "attn_q":
                d = llama_permute(d, n_head)
            elif arch == "llama" and gname == "attn_k":
                d = llama_permute(d, n_head_kv)
            deltas[f"blk.{layer}.{gname}.weight"] = d

        # Merged = dequantised base + delta, in float64 then rounded once to f32.
        r = gguf.GGUFReader(str(base))
        replace = {}
        for t in r.tensors:
            if t.name in deltas:
                w = np.array(t.data, dtype=np.float64).reshape(shapes[t.name])
                replace[t.name] = w + deltas[t.name]
        del r
        merged = tmp / "merged-f32.gguf"
        copy_with(base, merged, replace)

        ref = logits(merged)
        ref16 = logits(merged, kv_f32=False)
        plain = logits(base)
        effect = max(float(np.abs(x - y).max()) for x, y in zip(ref, plain))
        results = {"base": Path(args.base).name + " (F32 copy, gguf-py dequantised)",
                   "reference": f"llama.cpp via llama-cpp-python {llama_cpp.__version__} (CPU, logits_all)",
                   "adapter": args.adapter or "random", "rank": rank, "alpha": alpha, "layers_adapted": len(deltas),
                   "max_abs_logit_change_from_adapter": effect, "adapters": {}}
        print(f"adapter effect: max |logits(merged) - logits(base)| = {effect:.4f}")
        failed = False
        for ty in ("f32", "f16"):
            out = tmp / f"adapter-{ty}.gguf"
            run([args.tunelab, "export", "gguf-lora", "--adapter", adir, "--base", base, "--out", out, "--type", ty])
            got = logits(base, out)
            diff = max(float(np.abs(x - y).max()) for x, y in zip(got, ref))
            same_top = all((x.argmax(-1) == y.argmax(-1)).all() for x, y in zip(got, ref))
            got16 = logits(base, out, kv_f32=False)
            diff16 = max(float(np.abs(x - y).max()) for x, y in zip(got16, ref16))
            results["adapters"][ty] = {"max_abs_logit_diff_vs_merged": diff, "same_argmax_everywhere": bool(same_top),
                                       "max_abs_logit_diff_vs_merged_f16_kv_cache": diff16}
            print(f"{ty}: max |logits(base + --lora) - logits(merged)| = {diff:.3e} (F32 KV cache), "
                  f"{diff16:.3e} (llama.cpp's default F16 KV cache); same argmax at every position: {same_top}")
            if ty == "f32" and diff > args.tolerance:
                failed = True
        # The deployment case: the same f32 adapter on the original quantised file. Its weights
        # differ from the F32 copy's by the quantisation, so this is informational (no threshold).
        if Path(args.base).resolve() != base.resolve():
            got = logits(args.base, tmp / "adapter-f32.gguf")
            diff = max(float(np.abs(x - y).max()) for x, y in zip(got, ref))
            agree = float(np.mean(np.concatenate([x.argmax(-1) == y.argmax(-1) for x, y in zip(got, ref)])))
            results["quantised_base_with_f32_adapter"] = {"max_abs_logit_diff_vs_merged_f32": diff,
                                                          "argmax_agreement": agree}
            print(f"{Path(args.base).name} + f32 adapter vs merged F32: max |dlogit| {diff:.3f}, "
                  f"argmax agreement {agree:.1%} (quantisation, not the adapter)")
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
        sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""A random EmbeddingGemma-300M-shaped sentence-transformers folder and long training pairs, for
measuring what `tunelab train embed` needs in memory:

  python scripts/make-gemma-300m-random.py /tmp/gemma300m
  /usr/bin/time -v tunelab train embed --model /tmp/gemma300m --data /tmp/gemma300m-pairs.jsonl \
      --batch-size 32 --mini-batch-size 8 --max-seq-length 256 --max-steps 1 --reports /tmp/memrun

Shape of google/embeddinggemma-300m: hidden 768, 24 layers (every 6th global), 3 heads / 1 KV
head of width 256, FFN 1152, vocab 262144, window 512, Dense 768→3072→768. Weights are random
(the real ones are gated and not needed for memory), stored as bf16 to halve the file (tunelab
loads them as f32, as it would the real checkpoint). The tokenizer is the tiny fixture's (400
words): the token ids never exceed the vocabulary, and texts are long enough that every one is cut
at --max-seq-length.

Run:  .venv/bin/python scripts/make-gemma-300m-random.py OUT_DIR [--vocab 262144]   (scripts/setup-python.sh --heavy)
"""
import argparse
import json
import random
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--vocab", type=int, default=262144)
    ap.add_argument("--pairs", type=int, default=64)
    a = ap.parse_args()

    import torch
    from safetensors.torch import save_file
    from transformers import Gemma3TextConfig

    tiny = ROOT / "tests" / "fixtures" / "gemma" / "tiny_llamacpp"
    out = a.out
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(tiny, out)
    config = Gemma3TextConfig(
        vocab_size=a.vocab, hidden_size=768, intermediate_size=1152, num_hidden_layers=24,
        num_attention_heads=3, num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256,
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}},
        sliding_window=512, max_position_embeddings=2048, use_bidirectional_attention=True,
        pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )
    cfg = config.to_dict()
    cfg["architectures"] = ["Gemma3TextModel"]
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    # Random tensors of every shape, written directly (no model object: 1.2 GB less to hold).
    g = torch.Generator().manual_seed(0)
    h, f, hd = 768, 1152, 256
    tensors = {"embed_tokens.weight": torch.randn(a.vocab, h, generator=g) * 0.02, "norm.weight": torch.zeros(h)}
    for i in range(24):
        p = f"layers.{i}."
        shapes = {
            "self_attn.q_proj.weight": (3 * hd, h), "self_attn.k_proj.weight": (hd, h),
            "self_attn.v_proj.weight": (hd, h), "self_attn.o_proj.weight": (h, 3 * hd),
            "mlp.gate_proj.weight": (f, h), "mlp.up_proj.weight": (f, h), "mlp.down_proj.weight": (h, f),
        }
        for k, s in shapes.items():
            tensors[p + k] = torch.randn(*s, generator=g) * 0.02
        for k in ["input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                  "post_feedforward_layernorm"]:
            tensors[p + k + ".weight"] = torch.zeros(h)
        tensors[p + "self_attn.q_norm.weight"] = torch.zeros(hd)
        tensors[p + "self_attn.k_norm.weight"] = torch.zeros(hd)
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in tensors.items()}, str(out / "model.safetensors"))
    for sub, (i, o) in [("2_Dense", (768, 3072)), ("3_Dense", (3072, 768))]:
        (out / sub / "config.json").write_text(json.dumps(
            {"in_features": i, "out_features": o, "bias": False,
             "activation_function": "torch.nn.modules.linear.Identity"}))
        save_file({"linear.weight": (torch.randn(o, i, generator=g) * 0.02).contiguous()},
                  str(out / sub / "model.safetensors"))
    st = json.loads((out / "sentence_bert_config.json").read_text())
    st["max_seq_length"] = 2048
    (out / "sentence_bert_config.json").write_text(json.dumps(st))

    texts = json.loads((ROOT / "tests" / "fixtures" / "gemma" / "reference.json").read_text())["texts"]
    words = " ".join(texts).split()
    rng = random.Random(1)
    with open(out.parent / (out.name + "-pairs.jsonl"), "w") as fh:
        for k in range(a.pairs):
            q = " ".join(rng.choice(words) for _ in range(400))
            d = " ".join(rng.choice(words) for _ in range(400))
            fh.write(json.dumps({"query": q, "positive": d, "doc_id": f"d{k}", "classification": "public"}) + "\n")
    print(out)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Peak memory of a full fine-tune of a SmolLM2-135M-shaped Llama in PyTorch on the CPU: the
reference beside `tunelab train lora --fine-tune-type full` (README, "Full fine-tuning").

    /path/to/venv/bin/python scripts/torch-full-ft-memory.py [--batch 4] [--seq 128] [--steps 3] [--num-layers -1]

Same setting as tunelab's run: f32 weights (random, SmolLM2-135M-Instruct's shape: 30 blocks,
hidden 576, 9 heads / 3 KV heads, MLP 1536, vocab 49152, tied embeddings), the top
`--num-layers` blocks trainable and everything else frozen (the embedding, the final norm and the
tied head, as mlx_lm.lora's `full` and tunelab train), AdamW (no weight decay), gradient
clipping at 1.0, eager attention, a batch of `--batch` rows of exactly `--seq` tokens and the
loss over every next token. Prints one JSON line: the peak RSS of the process (ru_maxrss), the
RSS after building the model, and seconds per step. Needs torch and transformers.
"""
import argparse
import json
import resource
import time


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--num-layers", type=int, default=-1)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    cfg = LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
        rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True,
        attn_implementation="eager", torch_dtype=torch.float32,
    )
    model = LlamaForCausalLM(cfg).float()
    model.train()
    model.requires_grad_(False)
    layers = model.model.layers
    trained = layers if args.num_layers < 0 else layers[-args.num_layers:]
    for block in trained:
        block.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    n_all = sum(p.numel() for p in model.parameters())
    n_trained = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0)
    after_load = rss_mib()
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq))
    times = []
    for _ in range(args.steps):
        t0 = time.time()
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.time() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({
        "tool": "pytorch", "torch": torch.__version__, "batch": args.batch, "seq": args.seq,
        "params": n_all, "trainable": n_trained, "rss_after_load_mib": round(after_load),
        "peak_rss_mib": round(peak), "s_per_step": [round(t, 1) for t in times],
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

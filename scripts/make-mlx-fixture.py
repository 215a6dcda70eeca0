#!/usr/bin/env python3
"""tunelab adapters in MLX-LM and MLX-LM adapters in tunelab: the fixtures of tests/mlx_parity.rs.

    PYTHONPATH=... python3 scripts/make-mlx-fixture.py [OUT]

OUT defaults to tests/fixtures/mlx. Needs mlx and mlx-lm (the CPU build installs from PyPI on
Linux x86-64: `pip install "mlx[cpu]" mlx-lm`), transformers, and cargo (it runs tunelab).

1. Writes a small completions data folder (OUT/data: train, valid, test; words of the tiny
   Llama's vocabulary).
2. tunelab trains a LoRA and a DoRA adapter on the tiny Llama (tests/fixtures/decoder/tiny_llama;
   20 iterations, rank 4, scale 2) and fuses the DoRA one (`tunelab fuse`), and fully fine-tunes
   its top block (`--fine-tune-type full --num-layers 1`, 20 iterations). The adapter folders
   are kept as OUT/tunelab_lora, OUT/tunelab_dora and OUT/tunelab_full (the full fine-tune's
   trained block weights, as mlx_lm.lora saves them).
3. MLX-LM loads each tunelab adapter (`mlx_lm.tuner.utils.load_adapters`, which refuses unknown
   or misshapen tensors) and records its logits on two fixed sequences and its test loss as
   `mlx_lm.lora --test` computes it (`mlx_lm.tuner.trainer.evaluate` over all test batches,
   batch size 2, with and without --mask-prompt). MLX-LM also loads the fused folder and the
   full fine-tune's model folder (`mlx_lm.load`, config.json as tunelab wrote it) and records
   their logits.
4. MLX-LM trains its own LoRA and DoRA adapters (`mlx_lm.lora --train`, 10 iterations, its
   default rank 8 and scale 20, two blocks) and a full fine-tune of the top block (lr 0.002),
   kept as OUT/mlx_lora, OUT/mlx_dora and OUT/mlx_full, with their logits under MLX-LM.

Everything MLX-LM computed goes into OUT/reference.json; the Rust test recomputes it with
tunelab. Committed files made with mlx 0.32.4 (CPU), mlx-lm 0.32.2, transformers 5.25.0.
"""
import json
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests/fixtures/decoder/tiny_llama"
IDS = [[1, 5, 17, 99, 3, 42, 8, 77], [1, 23, 64, 101, 9, 9, 12, 4]]


def write_data(data: Path) -> None:
    data.mkdir(parents=True, exist_ok=True)
    for name, n, start in [("train", 16, 0), ("valid", 4, 50), ("test", 7, 90)]:
        with open(data / f"{name}.jsonl", "w") as f:
            for i in range(n):
                k = 3 + (start + i * 7) % 100
                # Prompts and completions of different lengths, so batches pad differently.
                prompt = " ".join(f"w{3 + (k * (j + 3)) % 120}" for j in range(1 + i % 4))
                completion = " ".join(f"w{3 + (k + j) % 120}" for j in range(2 + (i * 5) % 7))
                rec = {"prompt": prompt, "completion": completion, "classification": "public"}
                f.write(json.dumps(rec) + "\n")


def tunelab(*args: str) -> None:
    subprocess.run(["cargo", "run", "--locked", "--quiet", "--", *args], check=True, cwd=ROOT)


def keep_adapter(run: Path, to: Path) -> None:
    to.mkdir(parents=True, exist_ok=True)
    for f in ["adapter_config.json", "adapters.safetensors"]:
        shutil.copy(run / f, to / f)


def logits(model) -> list:
    import mlx.core as mx

    return model(mx.array(IDS)).astype(mx.float32).tolist()


def test_loss(model, tokenizer, data: Path, mask_prompt: bool) -> float:
    from mlx_lm.tuner.datasets import CacheDataset, load_dataset
    from mlx_lm.tuner.trainer import evaluate

    args = types.SimpleNamespace(data=str(data), train=False, test=True, mask_prompt=mask_prompt, hf_dataset=False)
    _, _, test = load_dataset(args, tokenizer)
    # What mlx_lm.lora's evaluate_model passes, with every batch (--test-batches -1).
    return evaluate(model=model, dataset=CacheDataset(test), batch_size=2, num_batches=-1, max_seq_length=2048)


def legacy_rope_copy(src: Path, dst: Path) -> Path:
    """`src` with `rope_theta` / `rope_scaling` beside transformers 5's `rope_parameters`:
    mlx-lm 0.32.2 reads only the older keys and would otherwise run the tiny Llama without its
    llama3 RoPE scaling (logits off by up to 5 from position 1 on)."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    p = cfg.get("rope_parameters")
    if p:
        cfg["rope_theta"] = p["rope_theta"]
        cfg["rope_scaling"] = {k: v for k, v in p.items() if k != "rope_theta"}
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


MLX_TINY = None


def with_adapter(adapter: Path):
    from mlx_lm import load
    from mlx_lm.tuner.utils import load_adapters

    model, tokenizer = load(str(MLX_TINY))
    load_adapters(model, str(adapter))
    model.eval()
    return model, tokenizer


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "tests/fixtures/mlx"
    data = out / "data"
    write_data(data)
    ref = {"ids": IDS, "batch_size": 2, "max_seq_length": 2048}
    import mlx.core as mx
    import mlx_lm

    ref["mlx"], ref["mlx_lm"] = mx.__version__, mlx_lm.__version__
    global MLX_TINY
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        MLX_TINY = legacy_rope_copy(TINY, tmp / "tiny_llama")
        for kind in ["lora", "dora"]:
            run = tmp / f"run_{kind}"
            tunelab("train", "lora", "--model", str(TINY), "--data", str(data), "--iters", "20", "--batch-size", "2",
                    "--learning-rate", "0.02", "--num-layers", "-1", "--rank", "4", "--scale", "2",
                    "--fine-tune-type", kind, "--steps-per-eval", "20", "--adapter-path", str(run))
            keep_adapter(run, out / f"tunelab_{kind}")
            model, tok = with_adapter(out / f"tunelab_{kind}")
            ref[f"tunelab_{kind}"] = {
                "logits": logits(model),
                "test_loss": test_loss(model, tok, data, False),
                "test_loss_mask_prompt": test_loss(model, tok, data, True),
            }
            print(kind, "test loss under mlx-lm", ref[f"tunelab_{kind}"]["test_loss"])
        fused = tmp / "fused_dora"
        tunelab("fuse", "--model", str(TINY), "--adapter-path", str(out / "tunelab_dora"), "--save-path", str(fused))
        # Loaded as tunelab wrote it: its config.json carries the legacy RoPE keys mlx-lm reads.
        model, _ = mlx_lm.load(str(fused))
        ref["fused_dora_logits"] = logits(model)

        # Full fine-tuning of the top block: MLX-LM loads the weights file over the base
        # (load_adapters, fine_tune_type "full") and the model folder tunelab writes beside it.
        run = tmp / "run_full"
        tunelab("train", "lora", "--model", str(TINY), "--data", str(data), "--iters", "20", "--batch-size", "2",
                "--learning-rate", "0.002", "--num-layers", "1", "--fine-tune-type", "full", "--steps-per-eval", "20",
                "--adapter-path", str(run))
        keep_adapter(run, out / "tunelab_full")
        model, tok = with_adapter(out / "tunelab_full")
        ref["tunelab_full"] = {
            "logits": logits(model),
            "test_loss": test_loss(model, tok, data, False),
            "test_loss_mask_prompt": test_loss(model, tok, data, True),
        }
        model, _ = mlx_lm.load(str(run / "model"))
        ref["tunelab_full"]["model_folder_logits"] = logits(model)
        print("full test loss under mlx-lm", ref["tunelab_full"]["test_loss"])

        for kind in ["lora", "dora", "full"]:
            adapters = tmp / f"mlx_{kind}"
            # Adam on whole weights moves every entry by about the learning rate: a smaller one for full.
            lr = "0.002" if kind == "full" else "0.02"
            subprocess.run([sys.executable, "-m", "mlx_lm", "lora", "--model", str(MLX_TINY), "--train", "--data", str(data),
                            "--iters", "10", "--batch-size", "2", "--learning-rate", lr, "--num-layers", "1" if kind == "full" else "2",
                            "--fine-tune-type", kind, "--steps-per-eval", "10", "--adapter-path", str(adapters),
                            "--seed", "0"], check=True)
            keep_adapter(adapters, out / f"mlx_{kind}")
            model, tok = with_adapter(out / f"mlx_{kind}")
            ref[f"mlx_{kind}"] = {"logits": logits(model), "test_loss": test_loss(model, tok, data, False)}
    (out / "reference.json").write_text(json.dumps(ref) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

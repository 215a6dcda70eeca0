#!/usr/bin/env python3
"""Parity of `tunelab export gguf` with llama.cpp: the exported BERT GGUF, run by llama.cpp, must
embed like tunelab embeds from the sentence-transformers folder.

For each type (f32, f16, q8_0), and for f16 once more with the pooling switched to CLS: export
the model with `tunelab export gguf`, embed ~20 varied
sentences with llama.cpp (llama-cpp-python, pooling from the GGUF's bert.pooling_type), embed the
same sentences with `tunelab embed`, and report the cosine similarity per sentence (min / mean),
and whether llama.cpp's token ids equal tunelab's (Hugging Face tokenizers) where `tokenizers`
is installed. The f16 / q8_0 tensors are also compared byte for byte with gguf-py's rounding of
the f32 export. Exits 1 when a minimum cosine is below its threshold or blocks differ.

Environment (once): scripts/setup-llama-cpp.sh builds llama.cpp's `llama` library from the
llama-cpp-python sdist into .venv/llama-cpp (about 15 min on 2 cores; LLAMA_CPP_DIR elsewhere).
Run (after `cargo build`; models from scripts/fetch-models.sh):
  .venv/bin/python scripts/check-gguf-embeddings.py [--model models/all-MiniLM-L6-v2] [--types f32 f16 q8_0]

Measured (2026-12-01, all-MiniLM-L6-v2, llama.cpp from llama-cpp-python 0.3.36, CPU, 20 sentences;
token ids identical to Hugging Face tokenizers for all 20):
  f32   min cosine 0.999998  mean 0.999999  (86.7 MiB)
  f16   min cosine 0.999998  mean 0.999999  (44.1 MiB)
  q8_0  min cosine 0.998691  mean 0.999574  (24.1 MiB)
  f16 with CLS pooling (bert.pooling_type 2)  min cosine 0.999999
  f16 and q8_0 blocks byte-identical to gguf-py's rounding/quantisation of the f32 values.
  A model tuned by `tunelab train embed` (10 steps on datasets/pairs, --model <run>/model): f32 and
  f16 min cosine 0.999998, q8_0 0.999113; its governance audit is in the GGUF's tunelab.manifest.
"""
import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Varied on purpose: case, punctuation, digits, accents (BertNormalizer strips them), CJK (split
# per character), an emoji (unknown token), subword splits, a long sentence, a one-word text.
SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "How do I reset my password?",
    "BM25 ranks documents by term frequency & inverse document frequency (k1=1.2, b=0.75).",
    "Café crème brûlée à la française, naïve façade.",
    "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG!!!",
    "東京は日本の首都です。",
    "I love this 😀 so much",
    "unbelievably antidisestablishmentarianism hyperparameterization",
    "retrieval",
    "In 2023, the quarterly revenue grew 14.7% year-over-year to $3.2B, driven by cloud services "
    "and a strong holiday season; analysts had expected growth of roughly 12%, and the stock rose "
    "in after-hours trading as management raised its full-year outlook for the third time.",
    "e-mail: someone@example.com, phone +1 (555) 010-0199",
    "What's the difference between a list and a tuple in Python?",
]

THRESHOLDS = {"f32": 0.9999, "f16": 0.999, "q8_0": 0.995}


def run(cmd):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"command failed ({r.returncode}): {' '.join(map(str, cmd))}\n{r.stderr}")
    return r.stdout


def tunelab_embeddings(tunelab, model, tmp):
    import numpy as np
    inp, out = tmp / "in.jsonl", tmp / "out.jsonl"
    inp.write_text("".join(json.dumps({"id": i, "text": s}, ensure_ascii=False) + "\n"
                           for i, s in enumerate(SENTENCES)))
    run([tunelab, "embed", "--model", model, "--input", inp, "--output", out])
    return [np.array(json.loads(l)["embedding"], dtype=np.float64) for l in out.read_text().splitlines()]


def llama_cpp_check(gguf_path, ours, hf_ids):
    """Cosines of llama.cpp's embeddings against ours, and llama.cpp's token ids against HF's."""
    import numpy as np
    from llama_cpp import Llama
    llm = Llama(model_path=str(gguf_path), embedding=True, n_ctx=512, n_batch=512, n_ubatch=512,
                n_threads=2, verbose=False)
    cos, mismatch = [], []
    for i, s in enumerate(SENTENCES):
        theirs = np.array(llm.embed(s, normalize=False), dtype=np.float64)
        a = ours[i]
        cos.append(float(a @ theirs / (np.linalg.norm(a) * np.linalg.norm(theirs))))
        if hf_ids is not None:
            ids = llm.tokenize(s.encode("utf-8"), add_bos=True, special=False)
            if ids != hf_ids[i]:
                mismatch.append({"text": s, "llama_cpp": ids, "hf": hf_ids[i]})
    del llm
    return cos, mismatch


def blocks_differ(gguf_path, ref_f32, ty):
    """Tensors of `ty` whose bytes differ from ggml's own rounding of the f32 export's values
    (gguf-py's quantize: numpy's f16 cast, ggml's Q8_0 reference quantiser)."""
    import numpy as np
    import gguf
    from gguf.quants import quantize
    qt = {"f16": gguf.GGMLQuantizationType.F16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[ty]
    return [t.name for t in gguf.GGUFReader(str(gguf_path)).tensors
            if t.tensor_type == qt and quantize(ref_f32[t.name], qt).tobytes() != np.array(t.data).tobytes()]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(ROOT / "models" / "all-MiniLM-L6-v2"))
    ap.add_argument("--tunelab", default=str(ROOT / "target" / "debug" / "tunelab"))
    ap.add_argument("--types", nargs="+", default=["f32", "f16", "q8_0"])
    ap.add_argument("--no-cls", action="store_true", help="skip the CLS-pooling variant (f16)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    import numpy as np
    import gguf
    import llama_cpp_env
    llama_cpp = llama_cpp_env.import_llama_cpp()

    hf_ids = None
    try:
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(str(Path(args.model) / "tokenizer.json"))
        tok.no_padding()  # the file pads to a fixed length; compare the real tokens
        tok.no_truncation()
        hf_ids = [tok.encode(s).ids for s in SENTENCES]
    except ImportError:
        print("(tokenizers not installed: token ids not compared)")

    results = {"model": args.model, "reference": f"llama.cpp via llama-cpp-python {llama_cpp.__version__} (CPU)",
               "variants": {}}
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        variants = [("mean", Path(args.model), ty) for ty in args.types]
        if not args.no_cls:
            # The same weights with CLS pooling: checks bert.pooling_type = 2 end to end.
            cls_dir = tmp / "cls-model"
            shutil.copytree(args.model, cls_dir)
            pooling = json.loads((cls_dir / "1_Pooling" / "config.json").read_text())
            pooling.update(pooling_mode_cls_token=True, pooling_mode_mean_tokens=False)
            (cls_dir / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
            variants.append(("cls", cls_dir, "f16"))
        ours = {}
        ref_f32 = None
        for pooling, model, ty in variants:
            if pooling not in ours:
                ours[pooling] = tunelab_embeddings(args.tunelab, model, tmp)
            name = ty if pooling == "mean" else f"{ty}-{pooling}"
            gguf_path = tmp / f"model-{name}.gguf"
            summary = json.loads(run([args.tunelab, "export", "gguf", "--model", model, "--out", gguf_path,
                                      "--type", ty]))
            entry = {"bytes": summary["bytes"], "pooling": pooling}
            if ty == "f32" and pooling == "mean":
                ref_f32 = {t.name: np.array(t.data) for t in gguf.GGUFReader(str(gguf_path)).tensors}
            elif ref_f32 is not None and pooling == "mean":
                differ = blocks_differ(gguf_path, ref_f32, ty)
                entry["blocks_differing_from_gguf_py"] = differ
                failed |= bool(differ)
                print(f"{name:8s} blocks identical to gguf-py's {ty} rounding of the f32 values: "
                      f"{'all' if not differ else 'NO: ' + ', '.join(differ[:5])}")
            cos, mismatch = llama_cpp_check(gguf_path, ours[pooling], hf_ids)
            worst = int(np.argmin(cos))
            threshold = THRESHOLDS.get(ty, 0.999)
            ok = min(cos) >= threshold
            failed |= not ok
            entry.update(min_cosine=min(cos), mean_cosine=float(np.mean(cos)), worst_sentence=SENTENCES[worst],
                         token_mismatches=mismatch if hf_ids is not None else None, threshold=threshold, ok=ok)
            results["variants"][name] = entry
            print(f"{name:8s} min cos {min(cos):.6f}  mean {np.mean(cos):.6f}  size {summary['bytes'] / 2**20:.1f} MiB  "
                  f"token-id mismatches {len(mismatch) if hf_ids is not None else 'n/a'}  "
                  f"{'ok' if ok else 'BELOW ' + str(threshold)}  (worst: {SENTENCES[worst][:40]!r})")
            for m in mismatch:
                print(f"   tokens differ for {m['text'][:50]!r}:\n     llama.cpp {m['llama_cpp']}\n     hf        {m['hf']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Parity of `tunelab export gguf` with llama.cpp: the exported BERT GGUF, run by llama.cpp, must
embed like tunelab embeds from the sentence-transformers folder.

For each type (f32, f16, q8_0): export the model with `tunelab export gguf`, embed ~20 varied
sentences with llama.cpp (llama-cpp-python, pooling from the GGUF's bert.pooling_type), embed the
same sentences with `tunelab embed`, and report the cosine similarity per sentence (min / mean),
and whether llama.cpp's token ids equal tunelab's (Hugging Face tokenizers) where `tokenizers`
is installed. Exits 1 when a type's minimum cosine is below its threshold.

Environment (once; llama.cpp is built from the llama-cpp-python sdist, ~15 min on 2 cores):
  python3 -m venv .venv && .venv/bin/pip install numpy
  mkdir -p /work/tools && cd /work/tools && pip download --no-deps --no-binary llama-cpp-python llama-cpp-python
  tar xzf llama_cpp_python-*.tar.gz && cd llama_cpp_python-*/vendor/llama.cpp
  cmake -S . -B /work/tools/llama-build -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
        -DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF \
        -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF -DGGML_OPENMP=OFF
  nice -n 15 cmake --build /work/tools/llama-build -j2 --target llama
Run (after `cargo build`; models from scripts/fetch-models.sh):
  PYTHONPATH=/work/tools/llama_cpp_python-0.3.36 LLAMA_CPP_LIB_PATH=/work/tools/llama-build/bin \\
    .venv/bin/python scripts/check-gguf-embeddings.py [--model models/all-MiniLM-L6-v2] [--types f32 f16 q8_0]

Measured (2026-12-01, all-MiniLM-L6-v2, llama.cpp from llama-cpp-python 0.3.36, CPU, 20 sentences;
token ids identical to Hugging Face tokenizers for all 20):
  f32   min cosine 0.999998  mean 0.999999  (86.7 MiB)
  f16   min cosine 0.999998  mean 0.999999  (44.1 MiB)
  q8_0  min cosine 0.998691  mean 0.999574  (24.1 MiB)
"""
import argparse
import json
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
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"command failed ({r.returncode}): {' '.join(map(str, cmd))}\n{r.stderr}")
    return r.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(ROOT / "models" / "all-MiniLM-L6-v2"))
    ap.add_argument("--tunelab", default=str(ROOT / "target" / "debug" / "tunelab"))
    ap.add_argument("--types", nargs="+", default=["f32", "f16", "q8_0"])
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    import numpy as np
    import llama_cpp
    from llama_cpp import Llama

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inp, out = tmp / "in.jsonl", tmp / "out.jsonl"
        inp.write_text("".join(json.dumps({"id": i, "text": s}, ensure_ascii=False) + "\n"
                               for i, s in enumerate(SENTENCES)))
        run([args.tunelab, "embed", "--model", args.model, "--input", inp, "--output", out])
        ours = [np.array(json.loads(l)["embedding"], dtype=np.float64) for l in out.read_text().splitlines()]

        hf_ids = None
        try:
            from tokenizers import Tokenizer
            tok = Tokenizer.from_file(str(Path(args.model) / "tokenizer.json"))
            tok.no_padding()  # the file pads to a fixed length; compare the real tokens
            hf_ids = [tok.encode(s).ids for s in SENTENCES]
        except ImportError:
            print("(tokenizers not installed: token ids not compared)")

        results = {"model": args.model, "reference": f"llama.cpp via llama-cpp-python {llama_cpp.__version__} (CPU)",
                   "types": {}}
        failed = False
        for ty in args.types:
            gguf = tmp / f"model-{ty}.gguf"
            summary = json.loads(run([args.tunelab, "export", "gguf", "--model", args.model, "--out", gguf,
                                      "--type", ty]))
            llm = Llama(model_path=str(gguf), embedding=True, n_ctx=512, n_batch=512, n_ubatch=512,
                        n_threads=2, verbose=False)
            cos, tok_mismatch = [], []
            for i, s in enumerate(SENTENCES):
                theirs = np.array(llm.embed(s, normalize=False), dtype=np.float64)
                a = ours[i]
                cos.append(float(a @ theirs / (np.linalg.norm(a) * np.linalg.norm(theirs))))
                if hf_ids is not None:
                    ids = llm.tokenize(s.encode("utf-8"), add_bos=True, special=False)
                    if ids != hf_ids[i]:
                        tok_mismatch.append({"text": s, "llama_cpp": ids, "hf": hf_ids[i]})
            del llm
            worst = int(np.argmin(cos))
            ok = min(cos) >= THRESHOLDS.get(ty, 0.999)
            failed |= not ok
            results["types"][ty] = {"min_cosine": min(cos), "mean_cosine": float(np.mean(cos)),
                                    "worst_sentence": SENTENCES[worst], "bytes": summary["bytes"],
                                    "token_mismatches": tok_mismatch if hf_ids is not None else None,
                                    "threshold": THRESHOLDS.get(ty, 0.999), "pass": ok}
            print(f"{ty:5s} min cos {min(cos):.6f}  mean {np.mean(cos):.6f}  size {summary['bytes'] / 2**20:.1f} MiB  "
                  f"token-id mismatches {len(tok_mismatch) if hf_ids is not None else 'n/a'}  "
                  f"{'ok' if ok else 'BELOW ' + str(THRESHOLDS.get(ty))}  (worst: {SENTENCES[worst][:40]!r})")
            for m in tok_mismatch:
                print(f"   tokens differ for {m['text'][:50]!r}:\n     llama.cpp {m['llama_cpp']}\n     hf        {m['hf']}")
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
        sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

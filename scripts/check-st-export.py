#!/usr/bin/env python3
"""Check that a tunelab sentence-transformers export loads in sentence-transformers and gives our embeddings.

    .venv/bin/python scripts/check-st-export.py EXPORT_DIR OURS.jsonl [MIN_COSINE]

OURS.jsonl: lines {"text": ..., "embedding": [...]} computed by tunelab from EXPORT_DIR.
Prints the minimum cosine and maximum absolute difference; exits 1 if any cosine < MIN_COSINE (0.9999).
"""
import json
import sys

import numpy as np
from sentence_transformers import SentenceTransformer


def main() -> int:
    folder, ours_path = sys.argv[1], sys.argv[2]
    min_required = float(sys.argv[3]) if len(sys.argv) > 3 else 0.9999
    rows = [json.loads(line) for line in open(ours_path, encoding="utf-8") if line.strip()]
    texts = [r["text"] for r in rows]
    ours = np.array([r["embedding"] for r in rows], dtype=np.float64)
    model = SentenceTransformer(folder, device="cpu")
    ref = model.encode(texts, batch_size=16, convert_to_numpy=True).astype(np.float64)
    if ref.shape != ours.shape:
        print(f"shape mismatch: sentence-transformers {ref.shape}, ours {ours.shape}")
        return 1
    cos = (ref * ours).sum(1) / np.maximum(np.linalg.norm(ref, axis=1) * np.linalg.norm(ours, axis=1), 1e-30)
    worst = int(np.argmin(cos))
    print(
        f"sentence-transformers load of {folder}: {len(texts)} texts, min cosine {cos.min():.9f} "
        f"(text {worst}: {texts[worst][:40]!r}), max abs diff {np.abs(ref - ours).max():.3e}"
    )
    return 0 if cos.min() >= min_required else 1


if __name__ == "__main__":
    sys.exit(main())

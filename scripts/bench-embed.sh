#!/usr/bin/env bash
# Embedding throughput on the CPU: tunelab (`tunelab embed`) vs sentence-transformers, same machine,
# same run, same texts: batch 32, every text exactly 128 tokens (special tokens included).
#   scripts/bench-embed.sh [N_TEXTS]     (default 512; needs models/ and the reference venv)
# Env: PYTHON_REF (default /work/venv-ref/bin/python), MODEL (default models/all-MiniLM-L6-v2).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-512}
PY=${PYTHON_REF:-/work/venv-ref/bin/python}
MODEL=${MODEL:-models/all-MiniLM-L6-v2}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

"$PY" - "$MODEL" "$N" "$WORK/texts.jsonl" <<'PYEOF'
import json, random, sys, time
import torch
from sentence_transformers import SentenceTransformer
model_dir, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
model = SentenceTransformer(model_dir, device="cpu")
tok = model.tokenizer
# Words that are single WordPiece tokens, so 126 words + [CLS] + [SEP] = 128 tokens exactly.
rng = random.Random(0)
pool = [w for w in "the of and to in is was for on that with as by at from his her an be this which or had are not but were they their one all has been when there who more can".split()
        if len(tok.tokenize(w)) == 1]
texts = [" ".join(rng.choice(pool) for _ in range(126)) for _ in range(n)]
assert all(len(tok(t)["input_ids"]) == 128 for t in texts[:8])
with open(out, "w") as f:
    for i, t in enumerate(texts):
        f.write(json.dumps({"id": i, "text": t}) + "\n")
model.encode(texts[:32], batch_size=32)  # warm-up
t0 = time.perf_counter()
model.encode(texts, batch_size=32, convert_to_numpy=True)
dt = time.perf_counter() - t0
print(f"sentence-transformers: {n / dt:.1f} sentences/s ({n} texts, batch 32, seq 128, torch {torch.__version__}, {torch.get_num_threads()} threads)")
with open(out + ".st", "w") as f:
    f.write(f"{n / dt}\n")
PYEOF

cargo build --quiet --bin tunelab
./target/debug/tunelab embed --model "$MODEL" --input "$WORK/texts.jsonl" --output "$WORK/out.jsonl" --batch-size 32 2> "$WORK/ours.log"
ours=$(grep -o '([0-9.]* texts/s)' "$WORK/ours.log" | tr -d '(' | cut -d' ' -f1)
st=$(cat "$WORK/texts.jsonl.st")
echo "tunelab (burn flex, CPU): $ours sentences/s"
python3 -c "print(f'ratio tunelab / sentence-transformers: {float($ours) / float($st):.2f}')"

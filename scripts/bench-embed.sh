#!/usr/bin/env bash
# Embedding throughput on the CPU: tunelab (`tunelab embed`) vs sentence-transformers, same machine,
# same run, same texts: batch 32, every text exactly 128 tokens (special tokens included).
# The two alternate for ROUNDS rounds and the best round of each counts, which damps the noise of a
# shared machine.
#   scripts/bench-embed.sh [N_TEXTS] [ROUNDS]     (defaults 256, 3; needs models/ and the reference venv)
# Env: PYTHON_REF (default .venv/bin/python; `scripts/setup-python.sh --heavy` installs them), MODEL (default models/all-MiniLM-L6-v2).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-256}
ROUNDS=${2:-3}
PY=${PYTHON_REF:-.venv/bin/python}
MODEL=${MODEL:-models/all-MiniLM-L6-v2}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

cat > "$WORK/st.py" <<'PYEOF'
import json, random, sys, time
import torch
from sentence_transformers import SentenceTransformer
model_dir, n, texts_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
model = SentenceTransformer(model_dir, device="cpu")
tok = model.tokenizer
try:
    texts = [json.loads(l)["text"] for l in open(texts_path)]
except FileNotFoundError:
    # Words that are single WordPiece tokens: 126 words + [CLS] + [SEP] = 128 tokens exactly.
    rng = random.Random(0)
    pool = [w for w in ("the of and to in is was for on that with as by at from his her an be this which or had "
                        "are not but were they their one all has been when there who more can").split()
            if len(tok.tokenize(w)) == 1]
    texts = [" ".join(rng.choice(pool) for _ in range(126)) for _ in range(n)]
    assert all(len(tok(t)["input_ids"]) == 128 for t in texts)
    with open(texts_path, "w") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"id": i, "text": t}) + "\n")
    print(f"sentence-transformers: torch {torch.__version__}, {torch.get_num_threads()} threads", file=sys.stderr)
model.encode(texts[:32], batch_size=32)  # warm-up
t0 = time.perf_counter()
model.encode(texts, batch_size=32, convert_to_numpy=True)
print(f"{n / (time.perf_counter() - t0):.2f}")
PYEOF

cargo build --quiet --bin tunelab
best_st=0; best_ours=0
for r in $(seq "$ROUNDS"); do
  st=$("$PY" "$WORK/st.py" "$MODEL" "$N" "$WORK/texts.jsonl" 2> >(grep -v "Loading weights" >&2))
  ./target/debug/tunelab embed --model "$MODEL" --input "$WORK/texts.jsonl" --output "$WORK/out.jsonl" --batch-size 32 2> "$WORK/ours.log"
  ours=$(grep -o '([0-9.]* texts/s)' "$WORK/ours.log" | tr -d '(' | cut -d' ' -f1)
  echo "round $r: sentence-transformers $st sentences/s, tunelab $ours sentences/s"
  best_st=$(python3 -c "print(max($best_st, $st))"); best_ours=$(python3 -c "print(max($best_ours, $ours))")
done
echo "best of $ROUNDS ($N texts, batch 32, seq 128, CPU, $(nproc) cores): sentence-transformers $best_st, tunelab $best_ours sentences/s"
python3 -c "print(f'ratio tunelab / sentence-transformers: {$best_ours / $best_st:.2f}')"

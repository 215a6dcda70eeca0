#!/usr/bin/env bash
# Create (or update) the git-ignored .venv at the repository root with the reference tools that
# tunelab's parity tests run (see scripts/requirements-reference.txt). Idempotent: an existing .venv
# is reused and pip only installs what is missing, so a second run is fast and works offline once
# everything is installed.
#   PYTHON=python3.12 scripts/setup-python.sh    # pick the interpreter (default: python3)
#   scripts/setup-python.sh --heavy              # also torch, transformers, sentence-transformers, peft,
#                                                # gguf (scripts/requirements-heavy.txt, ~5 GB): what the
#                                                # benchmarks and the fixture-making scripts run; CI needs none
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
REQ=scripts/requirements-reference.txt
HEAVY=0
for arg in "$@"; do
  case "$arg" in
    --heavy) HEAVY=1 ;;
    *) echo "usage: scripts/setup-python.sh [--heavy]" >&2; exit 2 ;;
  esac
done

if [ ! -x "$VENV/bin/python" ]; then
  echo "creating $VENV with $($PY --version 2>&1)" >&2
  "$PY" -m venv "$VENV"
fi

# Skip pip entirely when every requirement is already satisfied (fast, offline-safe re-runs).
if "$VENV/bin/python" - "$REQ" <<'PYEOF' 2>/dev/null
import sys
from importlib.metadata import version, PackageNotFoundError
ok = True
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    name, _, want = line.partition("==")
    try:
        have = version(name.strip())
    except PackageNotFoundError:
        ok = False
        continue
    if want and have != want.strip():
        ok = False
sys.exit(0 if ok else 1)
PYEOF
then
  echo "$VENV already has everything in $REQ" >&2
else
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQ"
fi

"$VENV/bin/python" -c 'import pytrec_eval; print("pytrec_eval", pytrec_eval.__version__, "ready in .venv")'

if [ "$HEAVY" = 1 ]; then
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r scripts/requirements-heavy.txt
  "$VENV/bin/python" -c 'import torch, transformers, sentence_transformers, peft; print("torch", torch.__version__, "transformers", transformers.__version__, "sentence-transformers", sentence_transformers.__version__, "peft", peft.__version__, "ready in .venv")'
fi

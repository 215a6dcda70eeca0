"""Import llama-cpp-python for the GGUF parity scripts: installed normally, or from the source tree
and library that scripts/setup-llama-cpp.sh builds under $LLAMA_CPP_DIR (default .venv/llama-cpp)."""
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def import_llama_cpp():
    d = Path(os.environ.get("LLAMA_CPP_DIR", ROOT / ".venv" / "llama-cpp"))
    sources = sorted(d.glob("llama_cpp_python-*/llama_cpp"))
    # The library path must be set before llama_cpp is first imported (it loads libllama then).
    if sources and (d / "llama-build" / "bin").is_dir():
        os.environ.setdefault("LLAMA_CPP_LIB_PATH", str(d / "llama-build" / "bin"))
        sys.path.insert(0, str(sources[-1].parent))
    try:
        import llama_cpp
    except ImportError as e:
        sys.exit(f"llama-cpp-python is not importable ({e}): run scripts/setup-llama-cpp.sh first")
    return llama_cpp

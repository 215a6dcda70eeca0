#!/usr/bin/env bash
# Build llama.cpp (the `llama` shared library) from the llama-cpp-python sdist, for the GGUF parity
# scripts (check-gguf-embeddings.py, check-gguf-lora.py), which use llama-cpp-python straight from
# its source tree with this build. Everything goes under $LLAMA_CPP_DIR (default .venv/llama-cpp,
# git-ignored). Idempotent: a finished build is reused. About 15 minutes on 2 cores; runs `nice`d
# so Rust builds keep priority.
#   scripts/setup-llama-cpp.sh            # then run the check scripts as usual
#   LLAMA_CPP_DIR=$HOME/llama-cpp scripts/setup-llama-cpp.sh   # elsewhere; the check scripts take the same variable
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
DIR=${LLAMA_CPP_DIR:-$PWD/.venv/llama-cpp}
SRC="$DIR/llama_cpp_python-$VERSION"
BUILD="$DIR/llama-build"
scripts/setup-python.sh
PY=$PWD/.venv/bin/python
if [ -e "$BUILD/bin/libllama.so" ] || [ -e "$BUILD/bin/libllama.dylib" ]; then
  echo "llama.cpp already built in $BUILD" >&2
  exit 0
fi
mkdir -p "$DIR"
# The Python side of llama-cpp-python and the build tools; scikit-build-core only so that pip can
# read the sdist's metadata while downloading it.
"$PY" -m pip install --quiet numpy typing-extensions diskcache jinja2 tokenizers cmake ninja scikit-build-core
if [ ! -d "$SRC" ]; then
  "$PY" -m pip download --quiet --no-deps --no-binary llama-cpp-python --no-build-isolation -d "$DIR" \
    "llama-cpp-python==$VERSION"
  tar xzf "$DIR/llama_cpp_python-$VERSION.tar.gz" -C "$DIR"
fi
export PATH="$PWD/.venv/bin:$PATH"
nice -n 15 cmake -S "$SRC/vendor/llama.cpp" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DBUILD_SHARED_LIBS=ON -DGGML_NATIVE=OFF -DGGML_OPENMP=OFF -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF >&2
nice -n 15 cmake --build "$BUILD" -j"$(nproc)" --target llama >&2
echo "llama.cpp built in $BUILD" >&2

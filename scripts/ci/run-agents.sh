#!/usr/bin/env bash
# CI: a real third-party agent CLI under `safe-coder run` (docs/run.md). Installs
# OpenAI's Codex CLI from the npm registry (its linux-x64 binary is an npm package too,
# nothing is fetched from GitHub) into a cache, then runs the end-to-end test that has
# it talk to the in-repo mock model server through the network allow-list and change
# files inside the sandbox (on bubblewrap, then on the in-process fallback). About 6 s
# to install the first time (420 MB unpacked), nothing afterwards; the test itself
# takes seconds.
set -euo pipefail
cd "$(dirname "$0")/../.."

VERSION=0.171.0
CACHE="${SAFE_CODER_CACHE:-$HOME/.cache/safe-coder-ci}"
DIR="$CACHE/codex-$VERSION"
CODEX="$DIR/node_modules/.bin/codex"

if [ ! -x "$CODEX" ]; then
  if ! command -v npm >/dev/null; then
    echo "installing: nodejs npm"
    apt-get update -qq
    apt-get install -y -qq nodejs npm >/dev/null
  fi
  mkdir -p "$DIR"
  npm install --no-audit --no-fund --prefix "$DIR" "@openai/codex@$VERSION"
fi
"$CODEX" --version

SAFE_CODER_REQUIRE_SANDBOX=1 SAFE_CODER_CODEX="$CODEX" \
  cargo test -p safe-coder-cli --test all --locked run_agents

# The same on the process backend's in-process fallback (bwrap hidden, as
# scripts/ci/fallback.sh does): --allow-net through the socket pair and `mux`, the
# writable ~/.codex mount by a Landlock rule. Seconds; nothing is rebuilt.
SAFE_CODER_REQUIRE_SANDBOX=1 SAFE_CODER_CODEX="$CODEX" \
  unshare -m --propagation private -- bash -ec '
    mount --bind /dev/null "$(command -v bwrap)"
    if bwrap --version >/dev/null 2>&1; then echo "bwrap is still usable" >&2; exit 1; fi
    cargo test -p safe-coder-cli --test all --locked run_agents'

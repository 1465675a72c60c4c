#!/usr/bin/env bash
# CI: third-party agent CLIs in the images (docs/images.md): `safe-coder sandbox image
# build --agent-cli` installs them from the npm registry and PyPI, then
# crates/cli/tests/suite/image_agents.rs runs them
#   - in a docker image (tag safe-coder-sandbox:agents-test, never the backend's default
#     image) with codex, gemini and aider, through `safe-coder run --backend docker`;
#   - in the microVM image with codex, through Safe Coder's agent and the guest agent,
#     with the VM sized by [vm] vcpus/memory_mb.
# Which CLIs: codex (a native binary from an npm platform package), gemini (a Node 20+
# JavaScript CLI: proves the registry's Node 22) and aider (a pip venv): the three ways
# a CLI is installed. Claude Code installs like codex (a native binary from npm) and
# would add ~400 MB and ~12 s cold, so CI leaves it out.
#
# Runs after scripts/ci/vm-image.sh (the debootstrap tree, the kernel package,
# vhost-device-vsock and the guest agent in the cache) and scripts/ci/docker.sh (the
# engine's storage). docker.sh stops its engines at its end, so this starts dockerd
# (runc only) the same way on the same storage, unless one already answers there, and
# stops what it started.
#
# Cached under ${SAFE_CODER_CACHE:-$HOME/.cache/safe-coder-ci}: the agent layers and the
# trees with them (images/agents, images/rootfs-*-*), the imported image (docker/), the
# VM image with codex (vm-agents-data/). Cold: about 2.5 minutes (npm and PyPI
# downloads ~1 min, the docker import of ~1.6 GB, one VM image and boot); warm: the
# engine's start, one `run` in a container and one VM boot, about 30 s.
set -euo pipefail
cd "$(dirname "$0")/../.."
echo "== agent CLIs in the images (scripts/ci/images-agents.sh)"
CACHE="${SAFE_CODER_CACHE:-$HOME/.cache/safe-coder-ci}"
D=$CACHE/docker
mkdir -p "$D/data" "$D/exec"
DOCKER_SOCK=$D/docker.sock

ping_engine() {
  python3 - "$1" <<'PY' 2>/dev/null
import socket, sys
s = socket.socket(socket.AF_UNIX); s.settimeout(2); s.connect(sys.argv[1])
s.sendall(b"GET /_ping HTTP/1.0\r\nHost: engine\r\n\r\n")
assert b" 200 " in s.recv(200)
PY
}

started=""
if ! ping_engine "$DOCKER_SOCK"; then
  command -v dockerd >/dev/null || { apt-get update -qq && apt-get install -y -qq docker.io >/dev/null; }
  rm -f "$DOCKER_SOCK"
  dockerd --iptables=false --ip6tables=false --bridge=none \
    --data-root "$D/data" --exec-root "$D/exec" --pidfile "$D/dockerd-agents.pid" \
    -H "unix://$DOCKER_SOCK" >"$D/dockerd-agents.log" 2>&1 &
  started=$!
  trap 'kill "$started" 2>/dev/null || true; wait "$started" 2>/dev/null || true' EXIT
  for _ in $(seq 150); do ping_engine "$DOCKER_SOCK" && break; sleep 0.2; done
  ping_engine "$DOCKER_SOCK" || { echo "dockerd did not come up:" >&2; tail -20 "$D/dockerd-agents.log" >&2; exit 1; }
fi

SAFE_CODER_GUEST_AGENT=$(nice ./scripts/build-guest-agent.sh)
export SAFE_CODER_GUEST_AGENT
export DOCKER_HOST=unix://$DOCKER_SOCK
export PATH="$CACHE/cargo/bin:$PATH"
export SAFE_CODER_REQUIRE_SANDBOX=1 SAFE_CODER_TEST_DOCKER=1
export SAFE_CODER_TEST_IMAGE_AGENTS="$CACHE/images"
export SAFE_CODER_TEST_AGENTS_VM_DATA="$CACHE/vm-agents-data"
export SAFE_CODER_TEST_AGENTS_IMAGE=safe-coder-sandbox:agents-test
export SAFE_CODER_TEST_IMAGE_AGENT_CLIS=codex,gemini,aider
# --workspace: the features scripts/test.sh built with, so nothing rebuilds.
cargo test --workspace --locked --test all image_agents -- --test-threads 1

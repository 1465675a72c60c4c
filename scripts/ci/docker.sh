#!/usr/bin/env bash
# The docker backend against real engines (docs/docker.md): Docker with runc and with
# gVisor (runsc), and Podman through its Docker-compatible API. Installs the engines
# from Debian's packages when missing, starts them by hand (these machines run no init
# system) on private sockets under the cache, builds the test image locally with
# `safe-coder sandbox image build` (no registry), and runs the docker test suites with
# SAFE_CODER_REQUIRE_SANDBOX=1 and SAFE_CODER_TEST_DOCKER=1: here nothing may skip.
#
# The engines are stopped again at the end, so later CI steps (and `auto`) see the
# machine as before. Cached under ${SAFE_CODER_CACHE:-$HOME/.cache/safe-coder-ci}:
# the root filesystem (rootfs-*), both engines' storage (docker/), so a warm run
# neither debootstraps nor imports again.
#
# It runs the test executables `./scripts/test.sh` built, like scripts/ci/fallback.sh:
# `cargo test -p` would unify features for one crate and rebuild half the tree.
set -euo pipefail
cd "$(dirname "$0")/../.."
export DEBIAN_FRONTEND=noninteractive
CACHE=${SAFE_CODER_CACHE:-$HOME/.cache/safe-coder-ci}
D=$CACHE/docker
mkdir -p "$D/data" "$D/exec" "$D/podman/root" "$D/podman/run"

missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v runsc >/dev/null || missing+=(runsc)
command -v podman >/dev/null || missing+=(podman)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# An engine an earlier, interrupted run of this script left behind (by its pid file).
stop_pidfile() {
  local f=$1 pid
  pid=$(cat "$f" 2>/dev/null || true)
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  fi
  rm -f "$f"
}
stop_pidfile "$D/dockerd.pid"
stop_pidfile "$D/podman.pid"

# gVisor works with --network none only when runsc itself is told there is no network.
cat > "$D/daemon.json" <<'JSON'
{"runtimes": {"runsc": {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=none"]}}}
JSON
DOCKER_SOCK=$D/docker.sock
PODMAN_SOCK=$D/podman.sock
rm -f "$DOCKER_SOCK" "$PODMAN_SOCK"
dockerd --config-file "$D/daemon.json" --iptables=false --ip6tables=false --bridge=none \
  --data-root "$D/data" --exec-root "$D/exec" --pidfile "$D/dockerd.pid" \
  -H "unix://$DOCKER_SOCK" >"$D/dockerd.log" 2>&1 &
# Podman here needs a private mount namespace without the hybrid cgroup v2 mount.
unshare -m --propagation private -- sh -c '
  echo $$ > "$1"
  umount /sys/fs/cgroup/unified 2>/dev/null || true
  exec podman --root "$2/podman/root" --runroot "$2/podman/run" system service --time=0 "unix://$3"
' sh "$D/podman.pid" "$D" "$PODMAN_SOCK" >"$D/podman.log" 2>&1 &
cleanup() {
  stop_pidfile "$D/podman.pid"
  stop_pidfile "$D/dockerd.pid"
}
trap cleanup EXIT

wait_socket() {
  for _ in $(seq 150); do
    if python3 - "$1" <<'PY' 2>/dev/null; then return 0; fi
import socket, sys
s = socket.socket(socket.AF_UNIX); s.settimeout(2); s.connect(sys.argv[1])
s.sendall(b"GET /_ping HTTP/1.0\r\nHost: engine\r\n\r\n")
assert b" 200 " in s.recv(200)
PY
    sleep 0.2
  done
  echo "$2 did not come up; its log:" >&2
  tail -20 "$3" >&2
  return 1
}
wait_socket "$DOCKER_SOCK" dockerd "$D/dockerd.log"
wait_socket "$PODMAN_SOCK" "podman system service" "$D/podman.log"

# The resident agent of the containers (docs/docker.md): the VM image step built it
# already, so this is a no-op check then.
SAFE_CODER_GUEST_AGENT=$(nice ./scripts/build-guest-agent.sh)
export SAFE_CODER_GUEST_AGENT
bin=target/debug/safe-coder
[ -x "$bin" ] || cargo build --locked --bin safe-coder
echo "-- the test image (cached root filesystem; imported once per engine)"
DOCKER_HOST=unix://$DOCKER_SOCK "$bin" sandbox image build --minimal --cache-dir "$CACHE/rootfs"
DOCKER_HOST=unix://$PODMAN_SOCK "$bin" sandbox image build --minimal --cache-dir "$CACHE/rootfs"
DOCKER_HOST=unix://$DOCKER_SOCK "$bin" sandbox doctor

export DOCKER_HOST=unix://$DOCKER_SOCK
export SAFE_CODER_TEST_PODMAN_HOST=unix://$PODMAN_SOCK
export SAFE_CODER_REQUIRE_SANDBOX=1 SAFE_CODER_TEST_DOCKER=1

mapfile -t tests < <(cargo test --workspace --locked --no-run --message-format=json 2>/dev/null |
  python3 -c '
import json, os, sys
root = os.getcwd()
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") != "compiler-artifact" or not m.get("executable") or not m["profile"]["test"]:
        continue
    crate = os.path.relpath(os.path.dirname(m["manifest_path"]), root)
    target = m["target"]["name"]
    if crate == "crates/sandbox" and target.startswith("docker_"):
        print(crate + " " + m["executable"] + " ")
    elif crate == "crates/sandbox" and target == "safe_coder_sandbox":
        print(crate + " " + m["executable"] + " docker::")
    elif crate == "crates/cli" and target == "all":
        print(crate + " " + m["executable"] + " docker::")
')
if [ ${#tests[@]} -lt 4 ]; then
  echo "docker: expected the docker test executables, found: ${tests[*]:-none}" >&2
  exit 1
fi
for t in "${tests[@]}"; do
  read -r crate exe filter <<<"$t"
  echo "-- $exe ${filter}"
  (cd "$crate" && "$exe" $filter)
done

#!/usr/bin/env bash
# CI: the microVM backends' suites, after scripts/ci/vm-image.sh built the guest image
# (docs/microvm.md). With SAFE_CODER_REQUIRE_SANDBOX=1 nothing may skip:
#   - crates/sandbox tests vm_qemu (a real microVM under TCG with the image: boot, save
#     the state, restore it, commands, files, timeout/cancel, memory hog, interactive
#     commands of `safe-coder run`, the shared workspace over virtio-fs) and vm_firecracker (the fake Firecracker API with
#     the real guest agent);
#   - the end-to-end suite `suite::vm` of the binary (keep/sync, accept/reject/conflict,
#     SIGKILL recovery, confinement, timeout, doctor, `safe-coder run`, the shared
#     workspace) on qemu and firecracker.
# The shared-workspace tests boot (a vhost-user-fs device cannot be snapshotted): three
# boots, ~20 s in all under TCG.
# The first qemu test boots once and saves the VM state beside the image; every later
# session of the run restores it (well under a second instead of 6-20 s of TCG boot).
#
# The test executables are the ones ./scripts/test.sh built; they are run directly (as
# scripts/ci/fallback.sh does) so nothing is rebuilt. Warm budget: ~1-2 minutes.
set -euo pipefail
cd "$(dirname "$0")/../.."
echo "== microVM backends (scripts/ci/vm.sh)"
CACHE="${SAFE_CODER_CACHE:-$HOME/.cache/safe-coder-ci}"
export SAFE_CODER_TEST_VM_IMAGE="${SAFE_CODER_TEST_VM_IMAGE:-$CACHE/vm-data}"
export SAFE_CODER_REQUIRE_SANDBOX=1
# vhost-device-vsock and virtiofsd (cargo-installed by vm-image.sh) for VMs booted with
# vsock and for the shared workspace.
export PATH="$CACHE/cargo/bin:$PATH"

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
    if (crate, target) in (("crates/sandbox", "vm_qemu"), ("crates/sandbox", "vm_firecracker"), ("crates/cli", "all")):
        print(target + " " + m["executable"])
')
declare -A exe
for t in "${tests[@]}"; do exe[${t%% *}]=${t#* }; done
for want in vm_qemu vm_firecracker all; do
  [ -n "${exe[$want]:-}" ] || { echo "vm.sh: test executable $want not found; run ./scripts/test.sh first" >&2; exit 1; }
done
# The binaries the tests drive (already built by scripts/test.sh; quick when so).
cargo build --workspace --bins --locked -q

start=$(date +%s)
# First alone: it boots and saves the state the rest restore.
(cd crates/sandbox && "${exe[vm_qemu]}" --test-threads 1)
(cd crates/sandbox && "${exe[vm_firecracker]}")
(cd crates/cli && "${exe[all]}" suite::vm:: --test-threads 2)
echo "vm.sh: done in $(( $(date +%s) - start )) s"

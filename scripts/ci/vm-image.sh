#!/usr/bin/env bash
# CI: the microVM guest image, built from the package registries and proven by booting
# it (docs/vm-image.md): QEMU's microvm under TCG, vhost-device-vsock for vsock, the
# guest agent answering over vsock and virtio-serial.
#
# Cached under ${SAFE_CODER_CACHE:-$HOME/.cache/safe-coder-ci}: vhost-device-vsock and
# virtiofsd (cargo/bin), the kernel package and the debootstrap tree (images/), the image itself
# (vm-data/vm/). Cold: about 9 minutes on a busy 2-core machine (image 4 min, mostly
# debootstrap; cargo install ~3 min + ~1.5 min for virtiofsd; agent build; one boot); warm: 20-60 s (the agent
# build and one boot, plus ~10 s to remake the disk when the agent changed).
#
# It exports what the VM tests read, so a later step can reuse the image:
#   SAFE_CODER_TEST_VM_IMAGE       data dir whose vm/ holds the image
#   SAFE_CODER_TEST_ROOTFS_CACHE   kernel packages and root trees
#   SAFE_CODER_GUEST_AGENT         the static agent
#   SAFE_CODER_VHOST_DEVICE_VSOCK  vhost-device-vsock
set -euo pipefail
cd "$(dirname "$0")/../.."
echo "== VM guest image (scripts/ci/vm-image.sh)"
CACHE="${SAFE_CODER_CACHE:-$HOME/.cache/safe-coder-ci}"
export DEBIAN_FRONTEND=noninteractive

missing=()
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v mkfs.ext4 >/dev/null || missing+=(e2fsprogs)
command -v cc >/dev/null || missing+=(gcc)
updated=""
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq && updated=1
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The kernel comes from `apt-get download`, which needs the package lists.
if ! apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1 && [ -z "$updated" ]; then
  apt-get update -qq
fi

VHOST="$CACHE/cargo/bin/vhost-device-vsock"
if [ ! -x "$VHOST" ]; then
  echo "cargo install vhost-device-vsock (once; cached in $CACHE/cargo)"
  nice -n 10 cargo install --locked --quiet vhost-device-vsock --root "$CACHE/cargo"
fi
# virtiofsd for qemu's shared workspace (docs/microvm.md); it links libseccomp and
# libcap-ng. Cold: ~1.5 min of cargo install; cached in $CACHE/cargo afterwards.
VIRTIOFSD="$CACHE/cargo/bin/virtiofsd"
if [ ! -x "$VIRTIOFSD" ]; then
  if ! dpkg -s libseccomp-dev libcap-ng-dev >/dev/null 2>&1; then
    [ -n "$updated" ] || { apt-get update -qq && updated=1; }
    apt-get install -y -qq --no-install-recommends libseccomp-dev libcap-ng-dev >/dev/null
  fi
  echo "cargo install virtiofsd (once; cached in $CACHE/cargo)"
  nice -n 10 cargo install --locked --quiet virtiofsd --root "$CACHE/cargo"
fi

AGENT="$(./scripts/build-guest-agent.sh)"

export SAFE_CODER_TEST_VM_IMAGE="$CACHE/vm-data"
export SAFE_CODER_TEST_ROOTFS_CACHE="$CACHE/images"
export SAFE_CODER_GUEST_AGENT="$AGENT"
export SAFE_CODER_VHOST_DEVICE_VSOCK="$VHOST"
export SAFE_CODER_REQUIRE_SANDBOX=1
# --workspace (not -p): the features scripts/test.sh built with, so nothing rebuilds.
cargo test --workspace --locked --test vm_boot -- --nocapture

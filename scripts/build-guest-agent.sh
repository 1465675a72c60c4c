#!/usr/bin/env bash
# Builds the guest agent as a static executable (it is the initramfs's /init, where no
# libc exists) and prints its path. glibc's static libraries come with the Rust
# toolchain's usual target; no musl target is needed.
#   target/x86_64-unknown-linux-gnu/release/safe-coder-guest-agent
set -euo pipefail
cd "$(dirname "$0")/.."
# --target keeps the static flag off build scripts and proc macros.
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  cargo build --release --locked -p safe-coder-guest-agent --target x86_64-unknown-linux-gnu >&2
bin="$(pwd)/target/x86_64-unknown-linux-gnu/release/safe-coder-guest-agent"
if ldd "$bin" 2>&1 | grep -q '=>'; then
  echo "the agent is linked dynamically: $bin" >&2
  exit 1
fi
echo "$bin"

#!/usr/bin/env bash
# The whole test suite: every crate's unit and integration tests, including the
# end-to-end tests that drive the real `safe-coder` binary against the in-repo mock
# model servers, real git, real bubblewrap sandboxes and a real terminal (tmux).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --bins --locked
cargo test --workspace --locked "$@"
# Sessions run on an overlay workspace wherever it mounts; the copy it falls back to
# gets the end-to-end lifecycle tests (accept, reject, conflict, SIGKILL recovery) too.
SAFE_CODER_WORKSPACE=copy cargo test -p safe-coder-cli --test all --locked "$@" backends

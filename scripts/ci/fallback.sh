#!/usr/bin/env bash
# The process backend's fallback (Landlock + seccomp + namespaces applied in-process),
# tested as hard as the main path: the sandbox crate's tests and every end-to-end test
# of the binary run again in a private mount namespace where bwrap is hidden (/dev/null
# bound over it), so `auto` must pick the in-process confiner, and the tests check it.
#
# The test executables are the ones `./scripts/test.sh` built (`cargo test --workspace`);
# they are run directly, because `cargo test -p <crate>` would unify features for that
# crate alone and rebuild half the dependency tree.
set -euo pipefail
cd "$(dirname "$0")/../.."

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
    if crate == "crates/sandbox" or (crate == "crates/cli" and target == "all"):
        print(crate + " " + m["executable"])
')
if [ ${#tests[@]} -lt 2 ]; then
  echo "fallback: expected the sandbox and end-to-end test executables, found: ${tests[*]:-none}" >&2
  exit 1
fi

export SAFE_CODER_EXPECT_CONFINER=in-process
printf '%s\n' "${tests[@]}" | unshare -m --propagation private -- bash -ec '
  mount --bind /dev/null "$(command -v bwrap)"
  if bwrap --version >/dev/null 2>&1; then echo "bwrap is still usable" >&2; exit 1; fi
  while read -r crate exe; do
    echo "-- $exe (in $crate, bwrap hidden)"
    (cd "$crate" && "$exe")
  done
'

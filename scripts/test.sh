#!/usr/bin/env bash
# The test command: installs what the tests need, checks the code's form (rustfmt, clippy with
# every warning an error, and scripts/check-docs.sh: the docs name no code that is gone), then
# runs every test, FUSE mounts included, on
# /dev/fuse, then the tests again on FUSE over io_uring where the kernel has it (setting its global
# switch, enable_uring, for that pass and putting it back), and closes with one summary line over
# all test binaries of both passes.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
scripts/check-docs.sh
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
MAXLOFS_TRANSPORT=dev-fuse cargo test --workspace --all-targets "$@" 2>&1 | tee "$log" || status=$?
cargo test --workspace --doc 2>&1 | tee -a "$log" || status=$?
switch=/sys/module/fuse/parameters/enable_uring
if [ -w "$switch" ]; then
  was=$(cat "$switch")
  trap 'echo "$was" >"$switch"; rm -f "$log"' EXIT
  echo 1 >"$switch"
  echo "== the tests again on FUSE over io_uring"
  MAXLOFS_TRANSPORT=io-uring cargo test --workspace --tests "$@" 2>&1 | tee -a "$log" || status=$?
  echo "$was" >"$switch"
else
  echo "== no io_uring pass: $switch is missing or not writable (needs root and Linux 6.14+)"
fi
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit "$status"

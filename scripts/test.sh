#!/usr/bin/env bash
# The test command: installs what the tests need, then runs every test, FUSE mounts included.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo test --all-targets "$@"

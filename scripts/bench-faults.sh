#!/usr/bin/env bash
# The fault-run target of "the catalog tells the truth": against an emulator that merges parallel
# creates, fails 30 % of calls, drops 20 % after doing them and answers after 20 ms, how long
# `rm -rf` of 100 synced files and then 150 renames take to reach the catalog (target: 60 s
# each). Runs the end-to-end test that drives it (real mount, real rm and mv) ROUNDS times and
# prints each round's figures.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-3}
for round in $(seq "$rounds"); do
  MAXLOFS_REQUIRE_FUSE=1 cargo test -q --release --test catalog_truth \
    under_faults_deletes_and_renames_converge_and_nothing_comes_back -- --nocapture 2>&1 |
    sed -n "s/^fault run: /round $round: /p"
done

#!/usr/bin/env bash
# Small files reaching the catalog with their content through a maxlofs mount, against the
# emulator's capacity for records alone (issue #24), every API call answered after LATENCY_MS
# (default 20 ms, the emulator's --latency-ms: a service over a real network), side by side:
#  1. FILES_4K files of 4 KiB (default 2,000);
#  2. FILES_256K files of 256 KiB (default 1,000).
# Per size, three columns, each against a fresh emulator (objects on a fresh ext4):
#  - direct: 8 threads creating records only, no content, through maxlofs's own HTTP client
#    (the time the program reports, from its first create to its last answer):
#      direct_creates $api N 8
#  - mount: the files are in BACKING when the mount starts, as on bench-catalog.sh's mount side
#    ("sync engine alone"), so the time is the engine's, not cp's through FUSE; timed from the
#    mount command to the emulator's last_updated of the last record (then `status --wait` and a
#    check that all N records are live). The mount's defaults otherwise (--concurrency 64,
#    --small-upload-concurrency 32): hash, `upload` (asked for several files at once), PUT,
#    `s3_object` and the create for each file:
#      maxlofs mount BACKING MNT --foreground --api $api --state-dir STATE --settle-ms 0
#      maxlofs status MNT --wait
#  - no-upload (for reference): the same mount with --no-upload, records only, as direct.
# The three alternate within each round. Prints per size the best and the median of ROUNDS
# rounds for each column, and the ratios of times mount/direct (target <= 1.5) and
# no-upload/direct.
# A bound from the settings: a file's way up is about four round trips after one another
# (`upload`, shared with other files, PUT, `s3_object`, the create), so P paths in flight take
# N x 4 x LATENCY_MS / P, against N x LATENCY_MS / 8 for 8 threads of creates: 64 paths (the
# default --concurrency) leave room to spare (docs/performance.md, "Uploads: fair baselines").
#
# Usage: [FILES_4K=2000] [FILES_256K=1000] [LATENCY_MS=20] [ROUNDS=3] scripts/bench-smallfiles.sh
# Full size: scripts/bench-smallfiles.sh
# A check of the script: FILES_4K=100 FILES_256K=50 ROUNDS=1 scripts/bench-smallfiles.sh
set -euo pipefail
cd "$(dirname "$0")/.."
files_4k=${FILES_4K:-2000}
files_256k=${FILES_256K:-1000}
latency_ms=${LATENCY_MS:-20}
rounds=${ROUNDS:-3}
threads=8
cargo build --release --quiet --bin maxlofs && cargo build --release --quiet -p maxlofs-api --example direct_creates
bin=$PWD/target/release/maxlofs
direct=$PWD/target/release/examples/direct_creates
. scripts/bench-lib.sh
bench_work smallfiles
service_args=(--latency-ms "$latency_ms")

make_files() { # make_files DIR N KIB
  mkdir -p "$1"
  python3 -c "
import os, sys
d, n, kib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    open(os.path.join(d, f'f{i:05d}.jpg'), 'wb').write(os.urandom(kib * 1024))" "$1" "$2" "$3"
}
sizes=("4 $files_4k" "256 $files_256k")
for s in "${sizes[@]}"; do
  read -r kib n <<<"$s"
  make_files "$work/src$kib/files" "$n" "$kib"
done

# One run of each column; `took` is set to its seconds (in this shell, not in $(...): the
# emulator must stay this shell's child).
objects_gib=$(((files_256k * 256 >> 20) * 3 + 2))
direct_once() { # direct_once N
  start_fresh_emulator "$objects_gib"
  took=$("$direct" "$api" "$1" "$threads")
}
mount_once() { # mount_once KIB N [MOUNT OPTIONS...]
  local kib=$1 n=$2
  shift 2
  start_fresh_emulator "$objects_gib"
  mount_until_sent "$work/src$kib" "$@"
  took=$(seconds "$(last_record)" "$t0")
  check_live "$n"
}

declare -A times
for round in $(seq "$rounds"); do
  for s in "${sizes[@]}"; do
    read -r kib n <<<"$s"
    direct_once "$n"
    times[$kib-direct]+=" $took"
    mount_once "$kib" "$n"
    times[$kib-mount]+=" $took"
    mount_once "$kib" "$n" --no-upload
    times[$kib-records]+=" $took"
    echo "round $round, $n x $kib KiB: direct ${times[$kib-direct]##* } s, mount ${times[$kib-mount]##* } s, mount --no-upload ${times[$kib-records]##* } s"
  done
done
for s in "${sizes[@]}"; do
  read -r kib n <<<"$s"
  echo "== $n files of $kib KiB, every call answered after $latency_ms ms, $rounds rounds"
  # shellcheck disable=SC2086 # the lists are space-separated on purpose
  {
    summarize "direct: $threads threads creating records only" 0 ${times[$kib-direct]}
    summarize "maxlofs mount, content and records (mount command to last record)" 0 ${times[$kib-mount]}
    summarize "maxlofs mount --no-upload, records only (reference)" 0 ${times[$kib-records]}
  }
  times_ratio "mount/direct (times; target <= 1.5)" "${times[$kib-mount]}" "${times[$kib-direct]}"
  times_ratio "mount --no-upload/direct (times)" "${times[$kib-records]}" "${times[$kib-direct]}"
done

#!/usr/bin/env bash
# The metadata round trip on each transport (issue 15): scripts/smallfiles.c (FILES x 4 KiB files
# created, stat'ed, renamed, unlinked) on the backing ext4 used directly ("native"), through the
# real `maxlofs mount` (syncing to the emulator) on /dev/fuse and on io_uring, and through the
# passthrough alone (examples/passthrough_mount.rs, no sync engine) on both. Targets interleaved
# per round, each in a fresh ext4 filesystem; prints the median µs per operation over ROUNDS and
# the ratio to native (higher is better; targets with io_uring: create >= 0.25, stat >= 0.15,
# rename >= 0.45, unlink >= 0.35).
#
# PASSTHROUGH_HP=/path/to/libfuse/build/example/passthrough_hp adds libfuse's high-performance
# passthrough example on both transports (targets hp-dev-fuse and hp-io-uring), built from
# libfuse's sources (meson with liburing), as the reference the targets were set from.
#
# FUSE over io_uring is a global, root-only switch (/sys/module/fuse/parameters/enable_uring):
# this script turns it on for its own run and puts back what it found on exit.
#   sudo [FILES=3000] [ROUNDS=20] [TARGETS="native maxlofs-dev-fuse maxlofs-io-uring
#        fsonly-dev-fuse fsonly-io-uring"] scripts/bench-transport.sh
set -euo pipefail
cd "$(dirname "$0")/.."
files=${FILES:-3000}
rounds=${ROUNDS:-20}
targets=${TARGETS:-native maxlofs-dev-fuse maxlofs-io-uring fsonly-dev-fuse fsonly-io-uring}
hp=${PASSTHROUGH_HP:-}
[ -z "$hp" ] || targets="$targets hp-dev-fuse hp-io-uring"
# BASELINE=/path/to/an/older/target/release adds that build's passthrough_mount (target
# baseline-dev-fuse): whether /dev/fuse got slower.
baseline=${BASELINE:-}
[ -z "$baseline" ] || targets="$targets baseline-dev-fuse"
cargo build --release --quiet --bin maxlofs && cargo build --release --quiet -p maxlofs-fs --example passthrough_mount
bin=$PWD/target/release/maxlofs
fsonly_bin=$PWD/target/release/examples/passthrough_mount
. scripts/bench-lib.sh
bench_work transport
uring_on_for_this_run
cc -O2 -o "$work/smallfiles" scripts/smallfiles.c
serve_in_background() { # serve_in_background DAEMON ARGS...: a FUSE daemon that stays in the foreground
  "$@" 2>"$work/mount.log" &
  mount_pid=$!
  wait_mounted "$mnt"
  dir=$mnt
}
: >"$work/results"

for round in $(seq "$rounds"); do
  for target in $targets; do
    fresh_fs "$work/fs" 2
    back=$work/fs/backing mnt=$work/mnt
    mkdir -p "$back" "$mnt"
    transport=${target#*-}
    case $target in
    native) dir=$back ;;
    maxlofs-*)
      [ -n "${emulator_pid:-}" ] || start_emulator
      mount_maxlofs "$back" "$mnt" "$work/state-$round-$transport" --transport "$transport"
      dir=$mnt
      ;;
    fsonly-*) serve_in_background "$fsonly_bin" "$back" "$mnt" --transport "$transport" ;;
    baseline-dev-fuse) serve_in_background "$baseline/examples/passthrough_mount" "$back" "$mnt" ;;
    hp-dev-fuse) serve_in_background "$hp" --foreground "$back" "$mnt" ;;
    hp-io-uring) serve_in_background "$hp" --foreground -o io_uring "$back" "$mnt" ;;
    esac
    sync
    while read -r phase secs; do
      echo "$target $phase $secs" >>"$work/results"
    done < <("$work/smallfiles" "$dir/small" "$files")
    if [ "$dir" = "$mnt" ]; then
      umount "$mnt"
      wait "$mount_pid" || true
    fi
    drop_fs "$work/fs"
  done
  echo "round $round of $rounds done, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
done

python3 - "$work/results" "$files" "$targets" <<'PY'
import statistics, sys
results, files, targets = sys.argv[1], int(sys.argv[2]), sys.argv[3].split()
us = {}
for line in open(results):
    target, phase, secs = line.split()
    us.setdefault((target, phase), []).append(float(secs) * 1e6 / files)
phases = ["create", "stat", "rename", "unlink"]
print(f"median µs per operation, {files} files, {len(us[(targets[0], 'create')])} rounds; "
      "ratio to native in brackets (higher is better)")
print(f"| target | {' | '.join(phases)} |")
print("|---|" + "---:|" * len(phases))
for target in targets:
    cells = []
    for phase in phases:
        median = statistics.median(us[(target, phase)])
        native = statistics.median(us[("native", phase)]) if ("native", phase) in us else None
        cells.append(f"{median:.1f}" + (f" ({native / median:.2f}×)" if native else ""))
    print(f"| {target} | {' | '.join(cells)} |")
PY

#!/usr/bin/env bash
# Where a FUSE metadata round trip's time goes on this machine: the small-file workload of
# bench.sh (scripts/smallfiles.c), natively and through maxlofs' passthrough layer alone
# (examples/passthrough_mount, no sync engine), each on a fresh ext4, with the guest's halt
# polling as the machine has it and then on (guest_halt_poll_ns = POLL_NS), interleaved.
#
# Native create/stat/rename/unlink involve no hand-off between CPUs; every FUSE request is two
# (client -> daemon thread, reply -> client), and where the idle virtual CPU halts, each one is a
# wake-up through the hypervisor. If the FUSE times fall with halt polling on while the native
# ones do not, the missing metadata speed is that wake-up, not work in the daemon.
# The parameter is restored on exit; it needs root and the haltpoll cpuidle driver.
#
#   sudo scripts/bench-wakeups.sh [FILES] [ROUNDS]     (defaults 3000 and 3)
set -euo pipefail
cd "$(dirname "$0")/.."
files=${1:-3000}
rounds=${2:-3}
POLL_NS=${POLL_NS:-200000}
param=/sys/module/haltpoll/parameters/guest_halt_poll_ns
if [ ! -w "$param" ]; then
  echo "no writable $param here (not root, or no haltpoll cpuidle driver): nothing to compare" >&2
  exit 2
fi
original=$(cat "$param")
scripts/setup.sh
cargo build --release --quiet -p maxlofs-fs --example passthrough_mount
mount_bin=$PWD/target/release/examples/passthrough_mount
work=$(mktemp -d /var/tmp/maxlofs-wakeups.XXXXXX)
. scripts/bench-lib.sh
cleanup() {
  echo "$original" >"$param"
  mountpoint -q "$work/mnt" && umount "$work/mnt"
  wait 2>/dev/null || true
  drop_fs "$work/fs"
  rm -rf "$work"
}
trap cleanup EXIT
cc -O2 -o "$work/smallfiles" scripts/smallfiles.c

declare -A SUM # SUM[poll,target,phase] = seconds, summed over rounds
run() {        # run POLL TARGET
  fresh_fs "$work/fs" 2
  mkdir -p "$work/fs/b" "$work/mnt"
  local dir=$work/fs/b pid=
  if [ "$2" = fuse ]; then
    "$mount_bin" "$work/fs/b" "$work/mnt" &
    pid=$!
    wait_mounted "$work/mnt"
    dir=$work/mnt
  fi
  while read -r phase seconds; do
    SUM[$1,$2,$phase]=$(echo "${SUM[$1,$2,$phase]:-0} + $seconds" | bc -l)
  done < <("$work/smallfiles" "$dir/small" "$files")
  if [ -n "$pid" ]; then umount "$work/mnt"; wait "$pid" || true; fi
  drop_fs "$work/fs"
}
for _ in $(seq "$rounds"); do
  for poll in "$original" "$POLL_NS"; do
    echo "$poll" >"$param"
    run "$poll" native
    run "$poll" fuse
  done
done
echo "$files files x $rounds rounds; µs per operation (mean), load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-8s %-22s %10s %10s %8s\n' phase guest_halt_poll_ns native fuse ratio
for phase in create stat rename unlink; do
  for poll in "$original" "$POLL_NS"; do
    n=${SUM[$poll,native,$phase]} f=${SUM[$poll,fuse,$phase]}
    printf '%-8s %-22s %10.1f %10.1f %7.2fx\n' "$phase" "$poll" \
      "$(echo "$n * 1000000 / ($files * $rounds)" | bc -l)" \
      "$(echo "$f * 1000000 / ($files * $rounds)" | bc -l)" "$(echo "$n / $f" | bc -l)"
  done
done

# Shared helpers of scripts/bench*.sh (sourced, not run). The caller sets `bin` (the release
# maxlofs binary) and `work` (a scratch directory; `bench_work` makes one).

# bench_work NAME: a scratch directory in $work, removed on exit with whatever is mounted in it
# and the emulator started here.
bench_work() {
  work=$(mktemp -d "${BENCH_DIR:-/tmp}/maxlofs-bench-$1.XXXXXX")
  trap bench_cleanup EXIT
}
bench_cleanup() {
  for m in "$work"/mnt*; do mountpoint -q "$m" && umount "$m"; done 2>/dev/null || true
  # The emulator first: `wait` would otherwise wait for it forever.
  stop_emulator
  wait 2>/dev/null || true
  # Then the filesystems of fresh_fs, which the emulator's objects may be on.
  for m in "$work"/*; do mountpoint -q "$m" && umount "$m"; done 2>/dev/null || true
  rm -rf "$work"
  [ -z "${uring_was:-}" ] || echo "$uring_was" >"$URING_SWITCH"
}

# FUSE over io_uring is a global, root-only kernel switch. `uring_on_for_this_run` turns it on
# (after `bench_work`); bench_cleanup puts back what it found.
URING_SWITCH=/sys/module/fuse/parameters/enable_uring
uring_on_for_this_run() {
  [ -w "$URING_SWITCH" ] || { echo "needs root and a kernel with $URING_SWITCH" >&2; exit 2; }
  uring_was=$(cat "$URING_SWITCH")
  echo 1 >"$URING_SWITCH"
}

# Starts (or restarts) an emulator on a free loopback port; sets emulator_pid and api. It runs at
# nice 10: it stands in for a remote service, whose work is not done on the user's CPUs, so it
# takes only what the workload being measured leaves idle. `service_pin` (an array, empty by
# default) prefixes its command, and `client_pin` that of `maxlofs mount`: `taskset -c N` gives
# each CPUs of its own. `service_args` (an array) are more `maxlofs emulator` options.
service_pin=() client_pin=() service_args=()
start_emulator() {
  stop_emulator
  coproc EMULATOR { exec "${service_pin[@]}" nice -n 10 "$bin" emulator --listen 127.0.0.1:0 "${service_args[@]}" 2>/dev/null; }
  emulator_pid=$EMULATOR_PID
  local line
  read -r line <&"${EMULATOR[0]}"
  api=${line#listening on }
}
stop_emulator() {
  if [ -n "${emulator_pid:-}" ]; then
    kill "$emulator_pid" 2>/dev/null && wait "$emulator_pid" 2>/dev/null || true
  fi
}

# mount_maxlofs BACKING MNT STATE_DIR [MOUNT OPTIONS...]: the real `maxlofs mount` in the
# foreground, syncing to $api; sets mount_pid once MNT is mounted. Its log is $work/mount.log.
mount_maxlofs() {
  local backing=$1 mnt=$2 state=$3
  shift 3
  mkdir -p "$backing" "$mnt"
  MAXLO_DEVICE_SESSION_KEY=demo-device-key "${client_pin[@]}" "$bin" mount "$backing" "$mnt" --foreground \
    --api "$api" --state-dir "$state" "$@" 2>"$work/mount.log" &
  mount_pid=$!
  for _ in $(seq 6000); do mountpoint -q "$mnt" && return; sleep 0.01; done
  echo "mount at $mnt did not appear" >&2
  cat "$work/mount.log" >&2
  exit 1
}

now() { date +%s.%N; }

# Each target works in a fresh ext4 filesystem of its own (a sparse image on a loop device), so
# none inherits another's allocator state: ext4 passes over inodes freed in the last minute when
# it allocates, and creates right after another round's deletions cost up to ten times more.
FS_IMAGES=1
fresh_fs() { # fresh_fs DIR GIB: DIR becomes the root of a new, empty ext4 filesystem of GIB GiB
  mkdir -p "$1"
  [ $FS_IMAGES = 1 ] || return 0
  truncate -s "$2G" "$1.img"
  mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$1.img"
  if ! mount -o loop "$1.img" "$1" 2>/dev/null; then
    echo "cannot loop-mount ext4 images here; every target shares one filesystem" >&2
    FS_IMAGES=0
    rm -f "$1.img"
  fi
}
drop_fs() { # drop_fs DIR
  if mountpoint -q "$1"; then umount "$1"; fi
  rm -rf "$1" "$1.img"
}

wait_mounted() {
  for _ in $(seq 300); do mountpoint -q "$1" && return 0; sleep 0.1; done
  echo "mount at $1 did not come up" >&2
  exit 1
}

# Shared helpers of scripts/bench*.sh (sourced, not run). The caller sets `bin` (the release
# maxlofs binary) and `work` (a scratch directory).

# Starts (or restarts) an emulator on a free loopback port; sets emulator_pid and api. It runs at
# nice 10: it stands in for a remote service, whose work is not done on the user's CPUs, so it
# takes only what the workload being measured leaves idle.
start_emulator() {
  if [ -n "${emulator_pid:-}" ]; then
    kill "$emulator_pid" 2>/dev/null && wait "$emulator_pid" 2>/dev/null || true
  fi
  coproc EMULATOR { exec nice -n 10 "$bin" emulator --listen 127.0.0.1:0 2>/dev/null; }
  emulator_pid=$EMULATOR_PID
  local line
  read -r line <&"${EMULATOR[0]}"
  api=${line#listening on }
}

# mount_maxlofs BACKING MNT STATE_DIR [MOUNT OPTIONS...]: the real `maxlofs mount` in the
# foreground, syncing to $api; sets mount_pid once MNT is mounted. Its log is $work/mount.log.
mount_maxlofs() {
  local backing=$1 mnt=$2 state=$3
  shift 3
  mkdir -p "$backing" "$mnt"
  MAXLO_DEVICE_SESSION_KEY=demo-device-key "$bin" mount "$backing" "$mnt" --foreground \
    --api "$api" --state-dir "$state" "$@" 2>"$work/mount.log" &
  mount_pid=$!
  for _ in $(seq 6000); do mountpoint -q "$mnt" && return; sleep 0.01; done
  echo "mount at $mnt did not appear" >&2
  cat "$work/mount.log" >&2
  exit 1
}

now() { date +%s.%N; }

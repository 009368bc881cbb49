#!/usr/bin/env bash
# The main job, end to end: start the emulator, mount a folder, write a file, and show its record
# arriving in the catalog. Leaves nothing mounted or running.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== checking what the demo needs (scripts/setup.sh)"
scripts/setup.sh
echo "== building target/release/maxlofs: the first build compiles about 250 crates, several"
echo "   minutes on two cores; later ones take seconds"
cargo build --release
bin=$PWD/target/release/maxlofs
work=$(mktemp -d /tmp/maxlofs-demo.XXXXXX)
mkdir -p "$work/backing" "$work/mnt"
printf 'demo-device-key\n' >"$work/device.key"
printf 'demo-user-key\n' >"$work/user.key"
chmod 600 "$work"/*.key

cleanup() {
  mountpoint -q "$work/mnt" && umount "$work/mnt" 2>/dev/null || true
  [ -n "${mount_pid:-}" ] && wait "$mount_pid" 2>/dev/null || true
  [ -n "${emulator_pid:-}" ] && kill "$emulator_pid" 2>/dev/null || true
}
trap cleanup EXIT

echo "== starting the emulator"
coproc EMULATOR { exec "$bin" emulator --listen 127.0.0.1:0 --db "$work/emulator.db" 2>"$work/emulator.log"; }
emulator_pid=$EMULATOR_PID
read -r line <&"${EMULATOR[0]}"
api=${line#listening on }
echo "   $line"

echo "== mounting $work/backing at $work/mnt"
"$bin" mount "$work/backing" "$work/mnt" --foreground --api "$api" --grant 1 \
  --device-key-file "$work/device.key" --user-key-file "$work/user.key" \
  --state-dir "$work/state" --settle-ms 200 2>"$work/mount.log" &
mount_pid=$!
for _ in $(seq 100); do mountpoint -q "$work/mnt" && break; sleep 0.1; done
mountpoint -q "$work/mnt" || { cat "$work/mount.log"; exit 1; }

echo "== writing photos/hello.txt through the mount"
mkdir -p "$work/mnt/photos"
echo "hello, Maxlo" >"$work/mnt/photos/hello.txt"
"$bin" hash "$work/mnt/photos/hello.txt"

echo "== waiting for the sync engine"
"$bin" status "$work/mnt" --wait --timeout 30

echo "== the catalog of grant 1, from the emulator"
curl -fsS "$api/_emulator/media_grant/1/media" | python3 -m json.tool

echo "== unmounting"
umount "$work/mnt"
wait "$mount_pid"
mount_pid=
echo "done; logs and state in $work"

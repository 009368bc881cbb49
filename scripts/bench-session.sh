#!/usr/bin/env bash
# One whole user session, for paired timings of two builds (farm-bench --vs): an emulator, a
# mount, `cp -r` of FILES (default 2,000) files of 4 KiB into it, `status --wait` until all are
# in the catalog, unmount. BIN is the maxlofs that mounts; EMULATOR_BIN (default BIN) serves, so
# that two clients can be timed against the same emulator. Root only (it mounts).
#   farm-bench -n 7 --vs "scripts/bench-session.sh OLD OLD" -- scripts/bench-session.sh NEW OLD
set -euo pipefail
bin=${1:?usage: bench-session.sh BIN [EMULATOR_BIN]}
emulator_bin=${2:-$bin}
files=${FILES:-2000}
# The tree to copy, made once per size and kept (its making is not what is timed).
tree=${TMPDIR:-/tmp}/maxlofs-bench-session-$files
if [ ! -d "$tree" ]; then
  mkdir -p "$tree.new"
  for i in $(seq 1 "$files"); do
    dir="$tree.new/d$((i % 20))"
    mkdir -p "$dir"
    head -c 4096 /dev/urandom >"$dir/f$i.jpg"
  done
  mv "$tree.new" "$tree"
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/maxlofs-session.XXXXXX")
cleanup() {
  mountpoint -q "$work/mnt" && umount "$work/mnt"
  kill "$emulator_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
"$emulator_bin" emulator --listen 127.0.0.1:0 >"$work/emulator.out" 2>/dev/null &
emulator_pid=$!
for _ in $(seq 250); do grep -q listening "$work/emulator.out" && break; sleep 0.02; done
api=$(sed -n 's/.*listening on //p' "$work/emulator.out")
echo demo-device-key >"$work/key"
mkdir "$work/backing" "$work/mnt"
"$bin" mount "$work/backing" "$work/mnt" --foreground --api "$api" --device-key-file "$work/key" \
  --state-dir "$work/state" --grant 1 2>"$work/mount.log" &
for _ in $(seq 500); do mountpoint -q "$work/mnt" && break; sleep 0.02; done
cp -r "$tree" "$work/mnt/tree"
"$bin" status --wait --timeout 300 "$work/mnt" >/dev/null

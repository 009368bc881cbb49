#!/usr/bin/env bash
# Time from close to record: writes N files (default 1000) through a real mount against the
# emulator on loopback, one after another, and for each file compares the time its close returned
# with the record's last_updated at the emulator. Prints median, p95 and worst.
# Usage: scripts/bench-sync.sh [FILES] [SETTLE_MS]
set -euo pipefail
cd "$(dirname "$0")/.."
files=${1:-1000}
settle=${2:-500}
scripts/setup.sh
cargo build --release --quiet
bin=$PWD/target/release/maxlofs
work=$(mktemp -d /tmp/maxlofs-bench-sync.XXXXXX)
cleanup() {
  mountpoint -q "$work/mnt" && umount "$work/mnt" || true
  [ -n "${mount_pid:-}" ] && wait "$mount_pid" 2>/dev/null || true
  [ -n "${emulator_pid:-}" ] && kill "$emulator_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
. scripts/bench-lib.sh
start_emulator
mount_maxlofs "$work/backing" "$work/mnt" "$work/state" --settle-ms "$settle"
python3 - "$work/mnt" "$api" "$files" "$settle" "$bin" <<'PY'
import json, os, statistics, subprocess, sys, time, urllib.request
from datetime import datetime
mnt, api, n, settle, binary = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
closed = {}
for i in range(n):
    name = f"f{i:05d}.bin"
    with open(os.path.join(mnt, name), "wb") as f:
        f.write(os.urandom(4096))
    closed[name] = time.time()
    time.sleep(0.002)
subprocess.run([binary, "status", mnt, "--wait", "--timeout", "300"], check=True, stdout=subprocess.DEVNULL)
records = json.load(urllib.request.urlopen(f"{api}/_emulator/media_grant/1/media"))["media_list"]
lat = []
for r in records:
    t = datetime.fromisoformat(r["last_updated"].replace("Z", "+00:00")).timestamp()
    lat.append((t - closed[r["media_path"]]) * 1000)
lat.sort()
assert len(lat) == n, f"{len(lat)} records for {n} files"
p95 = lat[int(len(lat) * 0.95) - 1]
print(f"close-to-record over {n} files, settle {settle} ms: median {statistics.median(lat):.0f} ms, "
      f"p95 {p95:.0f} ms, worst {lat[-1]:.0f} ms, beyond the settle window: median "
      f"{statistics.median(lat) - int(settle):.0f} ms")
PY

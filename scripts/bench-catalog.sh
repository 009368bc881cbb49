#!/usr/bin/env bash
# The catalog side of performance, against the emulator on loopback:
#  1. 2,000 new files reaching the catalog through a mount, against the emulator's own capacity
#     for 2,000 direct creates with the same concurrency (target: within 2x);
#  2. the daemon's peak RSS with one million indexed files and a bounded LRU (target: <= 200 MiB).
# Usage: scripts/bench-catalog.sh [FILES] [INDEXED] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
files=${1:-2000}
indexed=${2:-1000000}
rounds=${3:-5}
concurrency=8
scripts/setup.sh
cargo build --release --quiet --bin maxlofs && cargo build --release --quiet -p maxlofs-api --example direct_creates
bin=$PWD/target/release/maxlofs
direct=$PWD/target/release/examples/direct_creates
. scripts/bench-lib.sh
bench_work catalog
# Records only: this bench weighs the record path against direct creates; the content's way up
# is scripts/bench-upload.sh's.
mount_at() { # backing mnt state settle
  mount_maxlofs "$1" "$2" "$3" --settle-ms "$4" --concurrency "$concurrency" --no-upload
}

echo "== $files files: direct creates vs through the mount (concurrency $concurrency)"
mkdir -p "$work/src"
python3 -c "
import os,sys
for i in range($files):
    open(os.path.join('$work/src', f'f{i:05d}'), 'wb').write(os.urandom(4096))"
ratio() { # ratio LABEL SECONDS
  python3 -c "d=$direct_s; m=$2; print(f'$1: direct {d:.2f} s, through maxlofs {m:.2f} s, ratio {m/d:.2f}x')"
}
# The sync engine alone: the files are already in the backing folder when the mount starts, and
# the time runs from the mount command to the last record (the start-up reconcile sends them).
# ROUNDS rounds, each against a fresh emulator and its own direct creates just before: on two
# shared cores one round's ratio swings by +-30 %, so the median is the figure to quote.
ratios=()
for round in $(seq "$rounds"); do
  start_emulator
  direct_s=$("$direct" "$api" "$files" "$concurrency")
  start_emulator
  mkdir -p "$work/backing-pre$round"
  cp -r "$work/src" "$work/backing-pre$round/files"
  t0=$(now)
  mount_at "$work/backing-pre$round" "$work/mnt-pre" "$work/state-pre$round" 0
  "$bin" status "$work/mnt-pre" --wait --timeout 600 >/dev/null
  t1=$(last_record)
  check_live "$files"
  umount "$work/mnt-pre"; wait "$mount_pid"
  ratio "round $round: sync engine alone (files present at mount)" "$t1 - $t0"
  ratios+=("$(python3 -c "print(($t1 - $t0) / $direct_s)")")
done
python3 -c "
import statistics, sys
r = sorted(float(x) for x in sys.argv[1:])
print(f'sync engine alone, median of {len(r)} rounds: {statistics.median(r):.2f}x (range {r[0]:.2f}-{r[-1]:.2f}x)')" "${ratios[@]}"
# Files copied in through the mount: cp's own time through FUSE counts too.
for settle in 0 500; do
  start_emulator
  direct_s=$("$direct" "$api" "$files" "$concurrency")
  start_emulator
  mount_at "$work/backing$settle" "$work/mnt$settle" "$work/state$settle" "$settle"
  t0=$(now)
  cp -r "$work/src" "$work/mnt$settle/files"
  "$bin" status "$work/mnt$settle" --wait --timeout 600 >/dev/null
  t1=$(last_record)
  check_live "$files"
  umount "$work/mnt$settle"; wait "$mount_pid"
  ratio "cp -r into the mount + sync, settle $settle ms" "$t1 - $t0"
done

echo "== peak RSS with $indexed indexed files"
start_emulator
back="$work/big"; mkdir -p "$back"
python3 - "$back" "$work/bigstate" "$api" "$indexed" <<'PY'
# Makes INDEXED empty files and an index that already holds them all, as after a full sync, so the
# daemon's start (reconcile of every file against the index) and steady state are measured.
import os, sqlite3, sys
back, state, api, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
os.makedirs(state, exist_ok=True)
db = sqlite3.connect(os.path.join(state, "index.db"))
db.executescript("""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS synced (path TEXT PRIMARY KEY, media_id INTEGER NOT NULL, hash TEXT NOT NULL,
  size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL, ino INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS synced_ino ON synced (ino);""")
db.execute("INSERT OR REPLACE INTO meta VALUES ('identity', ?)", (f'{api} grant 1 prefix ""',))
empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
rows = []
for i in range(n):
    d = os.path.join(back, f"d{i // 1000:04d}")
    if i % 1000 == 0:
        os.makedirs(d, exist_ok=True)
    p = os.path.join(d, f"f{i % 1000:04d}")
    open(p, "wb").close()
    st = os.stat(p)
    rows.append((os.path.relpath(p, back), i + 1, empty, 0, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
    if len(rows) == 50000:
        db.executemany("INSERT INTO synced VALUES (?,?,?,?,?,?,?)", rows); rows = []
db.executemany("INSERT INTO synced VALUES (?,?,?,?,?,?,?)", rows)
db.commit()
PY
mount_at "$back" "$work/mntbig" "$work/bigstate" 500
t0=$(now)
"$bin" status "$work/mntbig" --wait --timeout 1200 >/dev/null
t1=$(now)
stat_files=$((indexed < 200000 ? indexed : 200000))
# Names come from the backing directory, so only the stats go through the mount.
find "$back" -type f | awk -v n="$stat_files" -v b="$back" -v m="$work/mntbig" \
  'NR <= n { print m substr($0, length(b) + 1) }' | xargs stat >/dev/null
hwm=$(awk '/VmHWM/ {print $2}' /proc/$mount_pid/status)
sent=$(curl -fsS "$api/_emulator/stats")
umount "$work/mntbig"; wait "$mount_pid"
python3 - "$indexed" "$t0" "$t1" "$hwm" "$stat_files" "$sent" <<'PY'
import sys
indexed, t0, t1, hwm, stat_files, sent = sys.argv[1:]
print(f"reconcile of {indexed} indexed files: {float(t1) - float(t0):.1f} s; daemon peak RSS "
      f"{int(hwm) / 1024:.0f} MiB (after reconcile and stat of {stat_files} files through the "
      f"mount); calls sent: {sent}")
PY

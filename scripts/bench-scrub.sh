#!/usr/bin/env bash
# Scrub (issue #26): how fast `maxlofs scrub MNT` re-reads a synced library, and what a running
# scrub costs the mount's users.
#
# The library: FILES files of FILE_KIB KiB (default 2,000 of 256 KiB) and BIG_FILES files of
# BIG_MIB MiB (default 2 of 64 MiB, multipart), random bytes, in BACKING on a fresh ext4 (a
# sparse image on a loop device, bench-lib's fresh_fs) before the first mount; the mount sends
# them to the emulator on loopback and the bench waits for `status --wait`, untimed.
# Each round, against the same state folder (so nothing is sent again):
#  a. scrub speed: `maxlofs scrub MNT` timed from the command to its exit, on a mount with no
#     cap (`--scrub-rate 0`), then on one with the default rate (32M, 32 MiB/s);
#     files per second and MiB/s from what the job reports (status --json: heal.files_checked,
#     heal.bytes_read). The command polls the job every 0.1 s, so each time carries up to 0.1 s
#     more than the pass: nothing at full size, most of it in a check of the script;
#  b. the effect on the mount's users: a workload in the mount (WORK_FILES times: create a file,
#     write 64 KiB, close, open, read it back, close, delete; one python3 process, timed inside it
#     so its start-up is not counted) run alone, then again while a scrub runs at the default
#     rate (started just before; the bench checks it is still running when the workload ends).
# As root the page cache is dropped (`sync; echo 3 >/proc/sys/vm/drop_caches`) before each scrub
# and each workload, so the scrub reads from the disk, not from memory; DROP_CACHES=0 skips it
# (other users' builds on the machine lose their cache too). Without root the scrub reads what
# the page cache holds and the figures say little about the disk.
# Prints per figure the best and the median of ROUNDS rounds, and the ratio of the workload's
# times with and without the scrub.
#
# Usage: [FILES=2000] [FILE_KIB=256] [BIG_FILES=2] [BIG_MIB=64] [WORK_FILES=2000] [ROUNDS=3]
#        [DROP_CACHES=1] scripts/bench-scrub.sh
# Full size (as root): scripts/bench-scrub.sh
# A check of the script: FILES=20 BIG_FILES=1 BIG_MIB=9 WORK_FILES=50 ROUNDS=1 scripts/bench-scrub.sh
set -euo pipefail
cd "$(dirname "$0")/.."
files=${FILES:-2000}
file_kib=${FILE_KIB:-256}
big_files=${BIG_FILES:-2}
big_mib=${BIG_MIB:-64}
work_files=${WORK_FILES:-2000}
rounds=${ROUNDS:-3}
drop_caches=${DROP_CACHES:-1}
# A rate no disk reaches: the pace then never waits.
no_cap=0
[ "$(id -u)" = 0 ] || drop_caches=0
cargo build --release --quiet --bin maxlofs
bin=$PWD/target/release/maxlofs
. scripts/bench-lib.sh
bench_work scrub

total_files=$((files + big_files))
total_bytes=$((files * file_kib * 1024 + big_files * (big_mib << 20)))
gib=$((total_bytes * 3 / 2 / (1 << 30) + 1))
fresh_fs "$work/disk" "$gib"
backing=$work/disk/backing
mnt=$work/mnt
state=$work/state
mkdir -p "$backing"
python3 - "$backing" "$files" "$file_kib" "$big_files" "$big_mib" <<'PY'
import os, sys
d, n, kib, big, mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
os.makedirs(os.path.join(d, "small"))
os.makedirs(os.path.join(d, "big"))
for i in range(n):
    open(os.path.join(d, "small", f"f{i:05d}.jpg"), "wb").write(os.urandom(kib * 1024))
for i in range(big):
    with open(os.path.join(d, "big", f"v{i:02d}.mp4"), "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(1 << 20))
PY
start_fresh_emulator "$gib"

drop() { # the page cache, when allowed: the next reads come from the disk
  [ "$drop_caches" = 1 ] || return 0
  sync
  echo 3 >/proc/sys/vm/drop_caches
}
mount_at() { # mount_at [MOUNT OPTIONS...]: BACKING at MNT, everything sent
  mount_maxlofs "$backing" "$mnt" "$state" "$@"
  "$bin" status "$mnt" --wait --timeout "${SYNC_TIMEOUT:-3600}" >/dev/null
}
unmount() {
  umount "$mnt"
  wait "$mount_pid"
}
heal_field() { # heal_field NAME: the field NAME of the status's scrub/restore job
  "$bin" status "$mnt" --json | python3 -c "import json,sys; print(json.load(sys.stdin)['heal']['$1'])"
}
# One timed scrub; `took` is its seconds. Checks that it read every file and found nothing.
scrub_once() {
  drop
  local t0 t1 code=0
  t0=$(now)
  "$bin" scrub "$mnt" >"$work/scrub.out" || code=$?
  t1=$(now)
  [ "$code" = 0 ] || { echo "scrub exited $code:" >&2; cat "$work/scrub.out" >&2; exit 1; }
  local checked
  checked=$(heal_field files_checked)
  [ "$checked" = "$total_files" ] || { echo "scrub checked $checked files of $total_files" >&2; exit 1; }
  took=$(seconds "$t1" "$t0")
}
# One workload run in the mount; `took` is its seconds (timed inside python3).
workload() {
  took=$(python3 - "$mnt/bench-workload" "$work_files" <<'PY'
import os, sys, time
d, n = sys.argv[1], int(sys.argv[2])
os.makedirs(d, exist_ok=True)
data = os.urandom(64 * 1024)
t0 = time.monotonic()
for i in range(n):
    path = os.path.join(d, f"w{i:06d}.dat")
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    os.write(fd, data)
    os.close(fd)
    fd = os.open(path, os.O_RDONLY)
    got = os.read(fd, len(data))
    os.close(fd)
    assert got == data, "read back other bytes"
    os.unlink(path)
print(f"{time.monotonic() - t0:.4f}")
PY
  )
}

echo "== $total_files files ($files x $file_kib KiB, $big_files x $big_mib MiB, $((total_bytes >> 20)) MiB), $rounds rounds; page cache dropped before each run: $([ "$drop_caches" = 1 ] && echo yes || echo 'no (not root, or DROP_CACHES=0)')"
t0=$(now)
mount_at
echo "first sync: $(seconds "$(now)" "$t0") s (not part of the figures)"
unmount
declare -A times
for round in $(seq "$rounds"); do
  mount_at --scrub-rate "$no_cap"
  scrub_once
  times[free]+=" $took"
  unmount
  mount_at # the default --scrub-rate, 32M
  scrub_once
  times[paced]+=" $took"
  drop
  workload
  times[alone]+=" $took"
  drop
  "$bin" scrub "$mnt" >"$work/scrub-bg.out" &
  scrub_pid=$!
  # The job is running before the workload starts.
  for _ in $(seq 100); do
    [ "$("$bin" status "$mnt" --json | python3 -c "import json,sys; h=json.load(sys.stdin).get('heal'); print(bool(h and h['running']))")" = True ] && break
    sleep 0.05
  done
  workload
  times[with]+=" $took"
  running=$(heal_field running)
  [ "$running" = True ] || echo "  warning: the scrub ended before the workload did; raise FILES or BIG_FILES for a fair figure" >&2
  wait "$scrub_pid" || { echo "the background scrub exited $?:" >&2; cat "$work/scrub-bg.out" >&2; exit 1; }
  unmount
  echo "round $round: scrub uncapped ${times[free]##* } s, at 32M ${times[paced]##* } s; workload alone ${times[alone]##* } s, with a scrub ${times[with]##* } s"
done

# scrub_summary LABEL TIMES...: best and median, in files/s and MiB/s.
scrub_summary() {
  python3 - "$total_files" "$total_bytes" "$@" <<'PY'
import statistics, sys
files, size, label = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
times = sorted(float(t) for t in sys.argv[4:])
def show(t):
    return f"{t:.2f} s = {files / t:.0f} files/s, {size / 1048576 / t:.1f} MiB/s"
print(f"  {label}: best {show(times[0])}, median {show(statistics.median(times))}")
PY
}
echo "== scrub of $total_files files, $((total_bytes >> 20)) MiB"
# shellcheck disable=SC2086 # the lists are space-separated on purpose
{
  scrub_summary "scrub, no cap (--scrub-rate $no_cap)" ${times[free]}
  scrub_summary "scrub, --scrub-rate 32M (default)" ${times[paced]}
}
echo "== workload in the mount: $work_files x (create, write 64 KiB, read back, delete)"
# shellcheck disable=SC2086
{
  summarize "workload alone" 0 ${times[alone]}
  summarize "workload while a scrub runs at 32M" 0 ${times[with]}
}
times_ratio "with scrub/alone (times)" "${times[with]}" "${times[alone]}"

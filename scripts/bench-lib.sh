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

# Starts (or restarts) an emulator on a free port, on loopback unless `emulator_listen` says
# otherwise; sets emulator_pid and api. It runs at nice 10: it stands in for a remote service,
# whose work is not done on the user's CPUs, so it takes only what the workload being measured
# leaves idle. `service_pin` (an array, empty by default) prefixes its command, and `client_pin`
# that of `maxlofs mount`: `taskset -c N` gives each CPUs of its own (`ip netns exec NS` puts the
# emulator in a network namespace). `service_args` (an array) are more `maxlofs emulator` options;
# `emulator_listen` its address (port 0: a free one).
service_pin=() client_pin=() service_args=() emulator_listen=127.0.0.1:0
start_emulator() {
  stop_emulator
  coproc EMULATOR { exec "${service_pin[@]}" nice -n 10 "$bin" emulator --listen "$emulator_listen" "${service_args[@]}" 2>/dev/null; }
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

# --- Uploads and records: shared by bench-upload.sh, bench-smallfiles.sh and bench-link.sh ---

# An emulator with an empty object store on a new filesystem of GIB GiB ($work/objects): on a
# long-used /tmp, creating each object file costs ext4 a scan past recently freed inodes, a
# quarter of the emulator's CPU and a source of run-to-run noise. Keeps the caller's
# `service_args` and adds `--objects`.
start_fresh_emulator() { # start_fresh_emulator GIB
  stop_emulator
  drop_fs "$work/objects"
  fresh_fs "$work/objects" "$1"
  local args=("${service_args[@]}")
  service_args+=(--objects "$work/objects")
  start_emulator
  service_args=("${args[@]}")
}

# The calls a client makes, run as maxlofs's sync threads run: at nice 10, on `client_pin`'s CPUs.
client() { "${client_pin[@]}" nice -n 10 "$@"; }

# api_post CALL BODY: POSTs BODY (a JSON object) to grant 1's CALL (`upload`, `multipart`,
# `media`, ...) at $api with the demo device key put in front of BODY's keys; the answer on
# stdout. No process but curl, so that it costs a timed run no more than the round trip.
api_post() {
  client curl -fsS "$api/device/1/media_grant/1/$1" -H 'content-type: application/json' \
    -d "{\"device_session_key\":\"demo-device-key\",${2#\{}"
}

# create_record PATH HASH SIZE: the record a mount makes once the content is up.
create_record() {
  api_post media "{\"media_path\":\"$1\",\"file_hash\":\"$2\",\"file_size\":$3,\"ctime\":\"2026-11-26T00:00:00.000Z\",\"mtime\":\"2026-11-26T00:00:00.000Z\"}" >/dev/null
}

# s3_bucket_of ANSWER: the s3_bucket_id of the first entry of an `upload` answer.
s3_bucket_of() {
  [[ $1 =~ \"s3_bucket_id\":\"([^\"]*)\" ]] || { echo "no s3_bucket_id in $1" >&2; return 1; }
  echo "${BASH_REMATCH[1]}"
}

# prepare_parts FILE DIR: the File Hashing parts of FILE as maxlofs sends them (8 MiB, doubled
# while there would be more than 900): DIR/parts/N (curl's inputs), DIR/multipart.json (the
# `multipart` body: file_size, file_hash, part_list) and DIR/file_hash. Not timed: a client reads
# the parts from the file itself; the hashes are timed where a bench makes them (`maxlofs hash`).
prepare_parts() {
  python3 - "$1" "$2" <<'PY'
import hashlib, json, os, sys
path, out = sys.argv[1], sys.argv[2]
size = os.path.getsize(path)
part = 8 << 20
while -(-size // part) > 900:
    part *= 2
os.makedirs(os.path.join(out, "parts"))
parts, digests = [], b""
with open(path, "rb") as f:
    n = 0
    while chunk := f.read(part):
        n += 1
        open(os.path.join(out, "parts", str(n)), "wb").write(chunk)
        d = hashlib.sha256(chunk).digest()
        digests += d
        parts.append({"part_num": n, "part_size": len(chunk), "part_hash": d.hex()})
file_hash = hashlib.sha256(digests).hexdigest()
open(os.path.join(out, "file_hash"), "w").write(file_hash)
json.dump({"file_size": size, "file_hash": file_hash, "part_list": parts},
          open(os.path.join(out, "multipart.json"), "w"))
PY
}

# multipart_urls DIR: the `multipart` call for DIR's parts (prepare_parts); its answer in
# DIR/urls.json.
multipart_urls() {
  api_post multipart "$(<"$1/multipart.json")" >"$1/urls.json"
}

# put_parts_complete DIR BUCKET: PUTs DIR's parts to the URLs of DIR/urls.json, $concurrency at
# once, then `multipart_complete` with the ETags the PUTs answered. Sets t_puts (when the last PUT
# was answered).
put_parts_complete() {
  local dir=$1 bucket=$2 upload_id size hash
  jq -r --arg d "$dir/parts" '.signed_url_list[] |
    "upload-file = \"\($d)/\(.part_num)\"\nurl = \"\(.url)\"\noutput = \"/dev/null\""' \
    "$dir/urls.json" >"$dir/curl.cfg"
  client curl -sS --fail --no-progress-meter --parallel --parallel-max "$concurrency" \
    -K "$dir/curl.cfg" -w '%{url} %header{etag}\n' >"$dir/etags"
  t_puts=$(now)
  upload_id=$(jq -r .upload_id "$dir/urls.json")
  size=$(jq -r .file_size "$dir/multipart.json")
  hash=$(<"$dir/file_hash")
  # Each part's ETag, by the part number that ends its URL's path, in part_num order.
  api_post multipart_complete "{\"file_size\":$size,\"file_hash\":\"$hash\",\"s3_bucket_id\":\"$bucket\",\"upload_id\":\"$upload_id\",\"part_list\":[$(
    awk '{ url = $1; sub(/\?.*/, "", url); n = url; sub(/.*\//, "", n); etag = $2
           gsub(/\r/, "", etag); gsub(/"/, "\\\"", etag); print n, etag }' "$dir/etags" |
      sort -n | awk '{ printf "%s{\"part_num\":%s,\"etag\":\"%s\"}", (NR > 1 ? "," : ""), $1, $2 }'
  )]}" >/dev/null
}

# mount_until_sent BACKING [MOUNT OPTIONS...]: mounts BACKING (its files already there) at
# $work/mnt with a new state folder and --settle-ms 0, waits for `status --wait`, unmounts. Sets
# t0 (just before the mount command) and t_sent (when `status --wait` returned).
mount_until_sent() {
  local backing=$1
  shift
  rm -rf "$work/state"
  t0=$(now)
  mount_maxlofs "$backing" "$work/mnt" "$work/state" --settle-ms 0 "$@"
  "$bin" status "$work/mnt" --wait --timeout "${SYNC_TIMEOUT:-3600}" >/dev/null
  t_sent=$(now)
  umount "$work/mnt"
  wait "$mount_pid"
}

# live_records: how many records of grant 1 are not deleted.
live_records() {
  curl -fsS "$api/_emulator/media_grant/1/media" |
    python3 -c 'import json,sys; print(sum(not r["is_deleted"] for r in json.load(sys.stdin)["media_list"]))'
}
check_live() { # check_live N: exits unless grant 1 holds N live records
  local live
  live=$(live_records)
  [ "$live" = "$1" ] || { echo "only $live of $1 records" >&2; exit 1; }
}
# last_record: when the last record reached the catalog (epoch seconds), by the emulator's own
# last_updated, so that neither the mount's start-up polling nor `status --wait`'s is counted.
last_record() {
  curl -fsS "$api/_emulator/media_grant/1/media" | python3 -c '
import json, sys
from datetime import datetime
records = json.load(sys.stdin)["media_list"]
print(max(datetime.fromisoformat(r["last_updated"].replace("Z", "+00:00")).timestamp() for r in records))'
}

# seconds T1 T0: T1 - T0, for epoch seconds with fractions.
seconds() { python3 -c "print(f'{$1 - $2:.4f}')"; }

# summarize LABEL BYTES TIMES...: the best and the median of TIMES (seconds, one per round), with
# the rate when BYTES is not 0.
summarize() {
  python3 - "$@" <<'PY'
import statistics, sys
label, size, times = sys.argv[1], int(sys.argv[2]), sorted(float(t) for t in sys.argv[3:])
def show(t):
    return f"{t:.2f} s" + (f" = {size / 1048576 / t:.1f} MiB/s" if size else "")
print(f"  {label}: best {show(times[0])}, median {show(statistics.median(times))}")
PY
}
# times_ratio LABEL "TOP TIMES" "BOTTOM TIMES": TOP/BOTTOM for the best of each and the median of
# each, and round by round (both lists in round order). For a ratio of rates (mount / baseline,
# higher is better) pass the baseline's times on top; for a ratio of times, the mount's.
times_ratio() {
  python3 - "$@" <<'PY'
import statistics, sys
label, top, bottom = sys.argv[1], [float(t) for t in sys.argv[2].split()], [float(t) for t in sys.argv[3].split()]
rounds = " ".join(f"{t / b:.2f}" for t, b in zip(top, bottom))
print(f"  ratio {label}: best {min(top) / min(bottom):.2f}, median "
      f"{statistics.median(top) / statistics.median(bottom):.2f} (rounds: {rounds})")
PY
}

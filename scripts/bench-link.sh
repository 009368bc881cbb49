#!/usr/bin/env bash
# Uploads over a real link (issue #24): the emulator in a network namespace of its own, behind a
# veth pair whose egress is shaped with tc tbf to LINK_MBIT (default 200 Mbit/s) in both
# directions, every API call and PUT answered after LATENCY_MS (default 20 ms, the emulator's
# --latency-ms, for the round trip). Side by side, per round:
#  1. PHOTOS files (default 300) of 2-6 MiB of random bytes (photo-sized: one PUT each);
#  2. one video of VIDEO_MIB (default 1024): multipart, 8 MiB parts.
# Each against a fresh emulator (objects on a fresh ext4), two sides:
#  - the link's rate: `curl -T` of the same bytes over the same link, 4 at a time, to URLs asked
#    for before its clock starts (`upload` for the photos, `upload` + `multipart` for the video):
#      curl --parallel --parallel-max 4 -T FILE_OR_PART URL ...
#    and, for the video, then (a multipart upload is not done until it answers; the emulator
#    joins and checks the parts there, for the mount as well):
#      curl -d '{..., s3_bucket_id, upload_id, part_list: [{part_num, etag}]}' .../multipart_complete
#  - the mount: the files in BACKING when it starts; timed from the mount command to
#    `status --wait` returning (so it counts the hashing, every API call and the records too):
#      maxlofs mount BACKING MNT --foreground --api http://ADDR:PORT --state-dir STATE \
#        --settle-ms 0 --upload-concurrency 4
#      maxlofs status MNT --wait
# Prints for the photos and for the video the best and the median of ROUNDS rounds of each side
# in MiB/s and the ratio mount/curl of the rates (target >= 0.9).
#
# The network: a namespace maxlofs-bench-PID, a veth pair mlbPIDh (here, 10.213.B.1/30) and
# mlbPIDn (in the namespace, 10.213.B.2/30), where 10.213.B.0/24 is the first block from
# B = PID mod 256 with no address and no route of this host in it. The emulator listens on
# 10.213.B.2 only, and its signed URLs name that address, which the mount follows because its
# --api is there itself (api::answer::check_signed_url: a signed URL may lead to a private
# address only at the API's own host). The namespace and the pair are removed on exit, failures
# and interruptions included. Needs root.
#
# Usage: [LINK_MBIT=200] [PHOTOS=300] [VIDEO_MIB=1024] [LATENCY_MS=20] [ROUNDS=3] scripts/bench-link.sh
# Full size: scripts/bench-link.sh
# A check of the script: PHOTOS=10 VIDEO_MIB=64 ROUNDS=1 scripts/bench-link.sh
set -euo pipefail
cd "$(dirname "$0")/.."
link_mbit=${LINK_MBIT:-200}
photos=${PHOTOS:-300}
video_mib=${VIDEO_MIB:-1024}
latency_ms=${LATENCY_MS:-20}
rounds=${ROUNDS:-3}
concurrency=4
[ "$(id -u)" = 0 ] || { echo "needs root (a network namespace, tc)" >&2; exit 2; }
[ "$video_mib" -gt 16 ] || { echo "VIDEO_MIB must be over 16 (a multipart upload)" >&2; exit 2; }
for tool in curl jq ip tc; do command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 2; }; done
cargo build --release --quiet --bin maxlofs
bin=$PWD/target/release/maxlofs
. scripts/bench-lib.sh
bench_work link

# --- The link ---
ns=maxlofs-bench-$$
host_if=mlb$$h
ns_if=mlb$$n
block=
for i in $(seq 0 255); do
  b=$((($$ + i) % 256))
  # Free: no address of this host in 10.213.B.0/24, no route into it or over it but the default.
  if [ -z "$(ip -4 -o addr show to "10.213.$b.0/24")" ] &&
    [ -z "$(ip -4 route show table all root "10.213.$b.0/24")" ] &&
    [ -z "$(ip -4 route show table all match "10.213.$b.0/24" | grep -v '^default ' || true)" ]; then
    block=10.213.$b
    break
  fi
done
[ -n "$block" ] || { echo "no unused 10.213.B.0/24 on this host" >&2; exit 2; }
host_addr=$block.1
ns_addr=$block.2
remove_link() {
  # The emulator (in the namespace) is stopped by bench_cleanup, which runs first.
  ip netns del "$ns" 2>/dev/null || true # takes the pair's other end, and so the pair, with it
  ip link del "$host_if" 2>/dev/null || true
}
trap 'bench_cleanup; remove_link' EXIT
trap 'exit 130' INT TERM
ip netns add "$ns"
ip link add "$host_if" type veth peer name "$ns_if" netns "$ns"
ip addr add "$host_addr/30" dev "$host_if"
ip link set "$host_if" up
ip -n "$ns" addr add "$ns_addr/30" dev "$ns_if"
ip -n "$ns" link set "$ns_if" up
ip -n "$ns" link set lo up
# tbf on the egress of each end: here->namespace is the upload direction. The bucket holds 4 ms
# at the rate (at least 64 KiB, one GSO packet); a packet waits at most 50 ms in the queue.
burst=$((link_mbit * 1000000 / 8 / 250))
[ "$burst" -ge 65536 ] || burst=65536
tc qdisc add dev "$host_if" root tbf rate "${link_mbit}mbit" burst "$burst" latency 50ms
tc -n "$ns" qdisc add dev "$ns_if" root tbf rate "${link_mbit}mbit" burst "$burst" latency 50ms
echo "link: $host_if $host_addr -> namespace $ns $ns_if $ns_addr, tbf ${link_mbit} Mbit/s each way, API latency $latency_ms ms"
service_pin=(ip netns exec "$ns")
emulator_listen=$ns_addr:0
service_args=(--latency-ms "$latency_ms")

# --- The bytes ---
mkdir -p "$work/photos/files" "$work/video"
python3 - "$work/photos/files" "$photos" "$work/photos.json" <<'PY'
import hashlib, json, os, random, sys
out, n, index = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rng = random.Random(24)
files = []
for i in range(n):
    data = os.urandom(rng.randint(2 << 20, 6 << 20))
    name = f"IMG_{i:04d}.jpg"
    open(os.path.join(out, name), "wb").write(data)
    # At most 16 MiB: the Maxlo hash is the SHA-256 of the whole file.
    files.append({"name": name, "file_hash": hashlib.sha256(data).hexdigest(), "file_size": len(data)})
json.dump(files, open(index, "w"))
PY
photo_bytes=$(jq '[.[].file_size] | add' "$work/photos.json")
video=$work/video/VID_0001.mp4
video_bytes=$((video_mib << 20))
head -c "$video_bytes" /dev/urandom >"$video"
prepare_parts "$video" "$work/spec"
objects_gib=$(((photo_bytes + video_bytes) * 3 / (1 << 30) + 2))

# --- One run of each side; `took` is set to its seconds (in this shell: the emulator must stay
# its child) ---
photos_curl() {
  start_fresh_emulator "$objects_gib"
  : >"$work/photos.cfg"
  local start t_start t_end
  # `upload` for up to 100 files at a time, as maxlofs asks; each answer's signed URL by hash.
  for ((start = 0; start < photos; start += 100)); do
    api_post upload "{\"file_list\":$(jq -c ".[$start:$((start + 100))] | map({file_hash, file_size})" "$work/photos.json")}" |
      jq -r --slurpfile files "$work/photos.json" --arg d "$work/photos/files" '
        ($files[0] | map({(.file_hash): .name}) | add) as $names
        | .upload_list[] | "upload-file = \"\($d)/\($names[.file_hash])\"\nurl = \"\(.signed_opts.url)\"\noutput = \"/dev/null\""' \
        >>"$work/photos.cfg"
  done
  [ "$(grep -c '^url' "$work/photos.cfg")" = "$photos" ] || { echo "not one signed URL per photo" >&2; exit 1; }
  t_start=$(now)
  client curl -sS --fail --no-progress-meter --parallel --parallel-max "$concurrency" -K "$work/photos.cfg"
  t_end=$(now)
  took=$(seconds "$t_end" "$t_start")
}
video_curl() {
  start_fresh_emulator "$objects_gib"
  local bucket t_start t_end
  bucket=$(s3_bucket_of "$(api_post upload "{\"file_list\":[{\"file_hash\":\"$(<"$work/spec/file_hash")\",\"file_size\":$video_bytes}]}")")
  multipart_urls "$work/spec"
  t_start=$(now)
  put_parts_complete "$work/spec" "$bucket"
  t_end=$(now)
  took=$(seconds "$t_end" "$t_start")
  echo "  curl video: PUTs $(seconds "$t_puts" "$t_start") s, multipart_complete $(seconds "$t_end" "$t_puts") s"
}
mount_once() { # mount_once BACKING FILES
  start_fresh_emulator "$objects_gib"
  mount_until_sent "$1" --upload-concurrency "$concurrency"
  took=$(seconds "$t_sent" "$t0")
  check_live "$2"
}

declare -A times
for round in $(seq "$rounds"); do
  photos_curl
  times[photos-curl]+=" $took"
  mount_once "$work/photos" "$photos"
  times[photos-mount]+=" $took"
  video_curl
  times[video-curl]+=" $took"
  mount_once "$work/video" 1
  times[video-mount]+=" $took"
  echo "round $round: photos curl ${times[photos-curl]##* } s, mount ${times[photos-mount]##* } s; video curl ${times[video-curl]##* } s, mount ${times[video-mount]##* } s"
done
link_mib_s=$(python3 -c "print(f'{$link_mbit * 1e6 / 8 / 1048576:.1f}')")
for what in photos video; do
  if [ "$what" = photos ]; then
    bytes=$photo_bytes
    echo "== $photos photos, $((photo_bytes >> 20)) MiB, over $link_mbit Mbit/s ($link_mib_s MiB/s) with $latency_ms ms per call, $rounds rounds"
  else
    bytes=$video_bytes
    echo "== one video of $video_mib MiB over $link_mbit Mbit/s ($link_mib_s MiB/s) with $latency_ms ms per call, $rounds rounds"
  fi
  # shellcheck disable=SC2086 # the lists are space-separated on purpose
  {
    summarize "curl -T, $concurrency at a time (the link's rate)" "$bytes" ${times[$what-curl]}
    summarize "maxlofs mount (mount command to status --wait)" "$bytes" ${times[$what-mount]}
  }
  times_ratio "mount/curl (rates; target >= 0.9)" "${times[$what-curl]}" "${times[$what-mount]}"
done

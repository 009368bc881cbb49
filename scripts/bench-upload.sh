#!/usr/bin/env bash
# One large file through a maxlofs mount against the least work any client of the Maxlo API must
# do to send it (issue #24), side by side against the emulator on loopback.
#
# The mount (timed from the mount command to `status --wait` returning; the file is in BACKING
# when the mount starts):
#   maxlofs mount BACKING MNT --foreground --api $api --state-dir STATE --settle-ms 0 \
#     --upload-concurrency 4
#   maxlofs status MNT --wait
# The least-work client (timed end to end, every step after the one before, since each needs what
# the one before answered; each step at nice 10 on the client's CPUs, as maxlofs's sync threads):
#   maxlofs hash FILE                        # `upload` and `multipart` need the hashes first
#   curl -d '{..., "file_list": [{file_hash, file_size}]}' $api/device/1/media_grant/1/upload
#   curl -d '{..., file_size, file_hash, part_list}' $api/device/1/media_grant/1/multipart
#   curl --parallel --parallel-max 4 -T parts/N URL_N ...   # the 8 MiB File Hashing parts
#   curl -d '{..., s3_bucket_id, upload_id, part_list: [{part_num, etag}]}' .../multipart_complete
#   curl -d '{..., media_path, file_hash, file_size, ctime, mtime}' .../media   # the record
# `upload` gives the s3_bucket_id `multipart_complete` needs (docs/contract.md, "Content calls:
# the order"), and the record is what `status --wait` waits for, so both are part of the least.
# What is prepared before the clock: the parts as files (curl cannot send a range of one file)
# and the `multipart` body's part hashes (`maxlofs hash` computes them all to make the file hash,
# but prints only that; the body's file hash is checked against what it printed). The
# `multipart_complete` body is built inside the clock from the ETags the PUTs answered.
#
# Each round runs both sides in two placements, side by side:
#  - shared: emulator and client on all CPUs, so the emulator's work (an MD5 and a SHA-256 of
#    every byte, the object store, the assembly in `multipart_complete`) competes with the
#    client's;
#  - own-cpu: the emulator pinned to the last CPU and the client (the mount, or every command
#    above) to the others, as with a real service, whose work is done on its own machines.
# Every run gets a fresh emulator with its objects on a fresh ext4 (bench-lib's
# start_fresh_emulator). Prints, per placement, the best and the median of ROUNDS rounds for each
# side and the ratio mount / least-work of the rates (target >= 0.95).
# Small files are scripts/bench-smallfiles.sh's: for them the least any client must do is
# dominated by calls per file, which that script weighs against direct creates.
#
# Usage: [SIZE_MIB=1024] [ROUNDS=3] scripts/bench-upload.sh
# Full size: scripts/bench-upload.sh; a check of the script: SIZE_MIB=64 ROUNDS=1 scripts/bench-upload.sh
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${SIZE_MIB:-1024}
rounds=${ROUNDS:-3}
concurrency=4
command -v curl >/dev/null || apt-get install -y curl >/dev/null
command -v jq >/dev/null || apt-get install -y jq >/dev/null
cargo build --release --quiet --bin maxlofs
bin=$PWD/target/release/maxlofs
. scripts/bench-lib.sh
bench_work upload

mkdir -p "$work/big"
file=$work/big/big.bin
size=$((size_mib << 20))
head -c "$size" /dev/urandom >"$file"
prepare_parts "$file" "$work/spec"
objects_gib=$((size_mib * 3 / 1024 + 2))

# One run of each side; `took` is set to its seconds (run in this shell, not in $(...): the
# emulator must stay this shell's child).
least_work() {
  start_fresh_emulator "$objects_gib"
  rm -f "$work/spec/urls.json"
  local t_start t_hash t_asked t_end hash bucket
  t_start=$(now)
  hash=$(client "$bin" hash "$file")
  hash=${hash%% *}
  t_hash=$(now)
  [ "$hash" = "$(<"$work/spec/file_hash")" ] || { echo "maxlofs hash says $hash" >&2; exit 1; }
  bucket=$(s3_bucket_of "$(api_post upload "{\"file_list\":[{\"file_hash\":\"$hash\",\"file_size\":$size}]}")")
  multipart_urls "$work/spec"
  t_asked=$(now)
  put_parts_complete "$work/spec" "$bucket"
  create_record big.bin "$hash" "$size"
  t_end=$(now)
  took=$(seconds "$t_end" "$t_start")
  python3 -c "print(f'  least-work: hash {$t_hash - $t_start:.2f} s, upload + multipart {$t_asked - $t_hash:.3f} s, PUTs {$t_puts - $t_asked:.2f} s, multipart_complete + record {$t_end - $t_puts:.2f} s')"
  check_live 1
}
mount_once() {
  start_fresh_emulator "$objects_gib"
  mount_until_sent "$work/big" --upload-concurrency "$concurrency"
  took=$(seconds "$t_sent" "$t0")
  check_live 1
}

last_cpu=$(($(nproc) - 1))
[ "$last_cpu" -ge 1 ] || { echo "the own-cpu placement needs 2 CPUs" >&2; exit 2; }
place() { # place shared|own-cpu: sets the pins start_emulator, mount_maxlofs and `client` use
  case $1 in
  shared) service_pin=() client_pin=() ;;
  own-cpu) service_pin=(taskset -c "$last_cpu") client_pin=(taskset -c "0-$((last_cpu - 1))") ;;
  esac
}
declare -A times
for round in $(seq "$rounds"); do
  for placement in shared own-cpu; do
    place "$placement"
    least_work
    times[$placement-least]+=" $took"
    mount_once
    times[$placement-mount]+=" $took"
    echo "round $round, $placement: least-work ${times[$placement-least]##* } s, mount ${times[$placement-mount]##* } s"
  done
done
for placement in shared own-cpu; do
  echo "== one file of $size_mib MiB ($(jq '.part_list | length' "$work/spec/multipart.json") parts), placement $placement, $rounds rounds"
  # shellcheck disable=SC2086 # the lists are space-separated on purpose
  {
    summarize "least-work client (hash, upload, multipart, $concurrency parallel PUTs, complete, record)" "$size" ${times[$placement-least]}
    summarize "maxlofs mount (mount command to status --wait)" "$size" ${times[$placement-mount]}
  }
  times_ratio "mount/least-work (rates; target >= 0.95)" "${times[$placement-least]}" "${times[$placement-mount]}"
done

#!/usr/bin/env bash
# Upload throughput against the emulator on loopback: the same bytes sent by `curl -T` to the
# same emulator's signed URLs (the baseline: the PUTs, and for the large file the
# multipart_complete that assembles it; URLs, part hashes and that call's body prepared
# beforehand, not timed) and through a maxlofs mount (the files already in BACKING when the mount
# starts; timed from the mount command until `status --wait` says all is sent, so the mount's figure
# includes hashing every byte, the `upload`/`multipart`/`s3_object` calls and the records).
#  1. one file of SIZE_MIB (default 1024): multipart, 8 MiB parts;
#  2. FILES small files (default 1000) of SMALL_KIB (default 256): whole-object PUTs.
# Both sides send with the same concurrency (4, maxlofs's default --upload-concurrency) and at the
# same CPU priority: curl runs at nice 10, as maxlofs's sync threads do (and the emulator).
# Each round runs both in two placements, side by side:
#  - shared: emulator and client on all CPUs, so the emulator's work (an MD5 and a SHA-256 of
#    every byte, the object store) competes with the client's;
#  - own-cpu: the emulator pinned to the last CPU and the client (curl, or the mount) to the
#    others, as with a real service, whose work is done on its own machines.
# Each emulator keeps its objects on a fresh ext4 filesystem of its own: on a long-used /tmp,
# creating a file costs ext4 a scan past recently freed inodes, a quarter of the emulator's CPU and
# the main source of run-to-run noise (the same for both sides, but not the same in every run).
# Prints each side's MiB/s and the ratio maxlofs/curl (target >= 0.9) per placement.
# Usage: [SIZE_MIB=1024] [FILES=1000] [SMALL_KIB=256] [ROUNDS=3] scripts/bench-upload.sh
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${SIZE_MIB:-1024}
files=${FILES:-1000}
small_kib=${SMALL_KIB:-256}
rounds=${ROUNDS:-3}
concurrency=4
command -v curl >/dev/null || apt-get install -y curl >/dev/null
cargo build --release --quiet --bin maxlofs
bin=$PWD/target/release/maxlofs
. scripts/bench-lib.sh
bench_work upload
now() { date +%s.%N; }
post() { # post CALL JSON: a content call of grant 1 with the demo key
  curl -fsS "$api/device/1/media_grant/1/$1" -H 'content-type: application/json' \
    -d "$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d["device_session_key"]="demo-device-key"; print(json.dumps(d))' "$2")"
}
rate() { # rate LABEL BYTES SECONDS
  python3 -c "print(f'$1: {$2/1048576/($3):.0f} MiB/s ({$3:.2f} s)')"
}

mkdir -p "$work/big" "$work/small"
head -c "$((size_mib << 20))" /dev/urandom >"$work/big/big.bin"
python3 -c "
import os
for i in range($files):
    open(os.path.join('$work/small', f'f{i:04d}.jpg'), 'wb').write(os.urandom($small_kib * 1024))"

# An emulator with an empty object store on a new filesystem (see above).
start_fresh_emulator() {
  stop_emulator
  drop_fs "$work/objects"
  fresh_fs "$work/objects" $((size_mib * 3 / 1024 + 2))
  service_args=(--objects "$work/objects")
  start_emulator
}

# One round of each: `took` is set to the seconds of the curl PUTs or of the mount, each against a
# fresh emulator (run in this shell, not in $(...): the emulator must stay this shell's child).
big_curl() {
  start_fresh_emulator
  post multipart "$(cat "$work/multipart.json")" >"$work/urls.json"
  python3 - "$work/urls.json" "$work/parts" >"$work/curl-big.cfg" <<'PY'
import json, sys
for part in json.load(open(sys.argv[1]))["signed_url_list"]:
    n = part["part_num"]
    print(f'upload-file = "{sys.argv[2]}/{n}"\nurl = "{part["url"]}"\noutput = "/dev/null"')
PY
  # The multipart_complete body is built before the clock starts, from the ETags S3 answers
  # (each part's MD5); after the clock, they are checked against those the PUTs returned.
  python3 - "$work/multipart.json" "$work/urls.json" "$work/part-etags.json" >"$work/complete.json" <<'PY'
import json, sys
spec, urls, etags = (json.load(open(a)) for a in sys.argv[1:4])
print(json.dumps({"device_session_key": "demo-device-key",
                  "file_size": spec["file_size"], "file_hash": spec["file_hash"],
                  "s3_bucket_id": "maxlo-emulator", "upload_id": urls["upload_id"],
                  "part_list": [{"part_num": p["part_num"], "etag": etags[str(p["part_num"])]} for p in spec["part_list"]]}))
PY
  local t0 t_puts t1
  t0=$(now)
  "${client_pin[@]}" nice -n 10 curl -sS --fail --no-progress-meter --parallel --parallel-max "$concurrency" \
    -K "$work/curl-big.cfg" -w '%{url} %header{etag}\n' >"$work/etags"
  t_puts=$(now)
  "${client_pin[@]}" nice -n 10 curl -fsS "$api/device/1/media_grant/1/multipart_complete" \
    -H 'content-type: application/json' -d @"$work/complete.json" >/dev/null
  t1=$(now)
  took=$(python3 -c "print($t1 - $t0)")
  echo "curl: PUTs took $(python3 -c "print(f'{$t_puts - $t0:.2f}')") s"
  # Each part's ETag, by the part number that ends its URL's path, as the body above assumed.
  python3 - "$work/etags" "$work/part-etags.json" <<'PY'
import json, sys
expected = json.load(open(sys.argv[2]))
for line in open(sys.argv[1]):
    url, etag = line.split(" ", 1)
    n = url.split("?")[0].rsplit("/", 1)[1]
    if etag.strip() != expected[n]:
        sys.exit(f"part {n}: ETag {etag.strip()} where {expected[n]} was expected")
PY
}
mount_once() { # mount_once FOLDER: seconds from the mount command to all sent
  start_fresh_emulator
  rm -rf "$work/state"
  local t0 t1
  t0=$(now)
  mount_maxlofs "$1" "$work/mnt" "$work/state" --settle-ms 0 --upload-concurrency "$concurrency"
  "$bin" status "$work/mnt" --wait --timeout 1200 >/dev/null
  t1=$(now)
  umount "$work/mnt"; wait "$mount_pid"
  took=$(python3 -c "print($t1 - $t0)")
}
small_curl() {
  start_fresh_emulator
  post upload "$(python3 -c "import json; d=json.load(open('$work/files.json')); print(json.dumps({'file_list': [{k: f[k] for k in ('file_hash','file_size')} for f in d['file_list']]}))")" >"$work/upload.json"
  python3 - "$work/files.json" "$work/upload.json" "$work/small" >"$work/curl-small.cfg" <<'PY'
import json, sys
names = {f["file_hash"]: f["name"] for f in json.load(open(sys.argv[1]))["file_list"]}
for item in json.load(open(sys.argv[2]))["upload_list"]:
    print(f'upload-file = "{sys.argv[3]}/{names[item["file_hash"]]}"\nurl = "{item["signed_opts"]["url"]}"\noutput = "/dev/null"')
PY
  local t0 t1
  t0=$(now)
  "${client_pin[@]}" nice -n 10 curl -sS --fail --no-progress-meter --parallel --parallel-max "$concurrency" -K "$work/curl-small.cfg"
  t1=$(now)
  took=$(python3 -c "print($t1 - $t0)")
}
best() { python3 -c "import sys; print(min(float(x) for x in sys.argv[1:]))" "$@"; }

# The parts and their hashes as maxlofs would send them; the part files are the curl inputs.
python3 - "$work/big/big.bin" "$work/parts" "$work/part-etags.json" >"$work/multipart.json" <<'PY'
import hashlib, json, os, sys
path, out, etags_out = sys.argv[1], sys.argv[2], sys.argv[3]
size = os.path.getsize(path)
part = 8 << 20
while -(-size // part) > 900:
    part *= 2
os.makedirs(out)
parts, digests, etags = [], b"", {}
with open(path, "rb") as f:
    n = 0
    while chunk := f.read(part):
        n += 1
        open(os.path.join(out, str(n)), "wb").write(chunk)
        d = hashlib.sha256(chunk).digest()
        digests += d
        parts.append({"part_num": n, "part_size": len(chunk), "part_hash": d.hex()})
        etags[n] = '"' + hashlib.md5(chunk).hexdigest() + '"'
json.dump(etags, open(etags_out, "w"))
print(json.dumps({"file_size": size, "file_hash": hashlib.sha256(digests).hexdigest(), "part_list": parts}))
PY
python3 - "$work/small" >"$work/files.json" <<'PY'
import hashlib, json, os, sys
d = sys.argv[1]
print(json.dumps({"file_list": [
    {"file_hash": hashlib.sha256(open(os.path.join(d, n), "rb").read()).hexdigest(),
     "file_size": os.path.getsize(os.path.join(d, n)), "name": n} for n in sorted(os.listdir(d))]}))
PY

# Interleaved, best of ROUNDS: the machine's other load moves single runs by 2x.
last_cpu=$(($(nproc) - 1))
[ "$last_cpu" -ge 1 ] || { echo "the own-cpu placement needs 2 CPUs" >&2; exit 2; }
place() { # place shared|own-cpu: sets the pins start_emulator, mount_maxlofs and curl use
  case $1 in
  shared) service_pin=() client_pin=() ;;
  own-cpu) service_pin=(taskset -c "$last_cpu") client_pin=(taskset -c "0-$((last_cpu - 1))") ;;
  esac
}
declare -A results
for round in $(seq "$rounds"); do
  for placement in shared own-cpu; do
    place "$placement"
    big_curl; results[$placement-curl-big]+=" $took"
    mount_once "$work/big"; results[$placement-mount-big]+=" $took"
    small_curl; results[$placement-curl-small]+=" $took"
    mount_once "$work/small"; results[$placement-mount-small]+=" $took"
    echo "round $round, $placement: big curl ${results[$placement-curl-big]##* } s, mount ${results[$placement-mount-big]##* } s; small curl ${results[$placement-curl-small]##* } s, mount ${results[$placement-mount-small]##* } s"
  done
done
big_bytes=$((size_mib << 20))
small_bytes=$((files * small_kib * 1024))
for placement in shared own-cpu; do
  # shellcheck disable=SC2086 # the lists are space-separated on purpose
  {
    cb=$(best ${results[$placement-curl-big]}); mb=$(best ${results[$placement-mount-big]})
    cs=$(best ${results[$placement-curl-small]}); ms=$(best ${results[$placement-mount-small]})
  }
  echo "== placement $placement: one file of $size_mib MiB (best of $rounds)"
  rate "curl -T, $concurrency parallel part PUTs + multipart_complete" "$big_bytes" "$cb"
  rate "maxlofs mount (hash + multipart + record)" "$big_bytes" "$mb"
  python3 -c "print(f'ratio maxlofs/curl: {$cb/$mb:.2f}')"
  echo "== placement $placement: $files files of $small_kib KiB (best of $rounds)"
  rate "curl -T, $concurrency parallel PUTs" "$small_bytes" "$cs"
  rate "maxlofs mount (hash, PUT, s3_object, create per file; upload asked for several at once)" "$small_bytes" "$ms"
  python3 -c "print(f'ratio maxlofs/curl: {$cs/$ms:.2f}')"
done

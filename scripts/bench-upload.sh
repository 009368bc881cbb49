#!/usr/bin/env bash
# Upload throughput against the emulator on loopback: the same bytes sent by `curl -T` to the
# same emulator's signed URLs (the baseline: PUTs only, URLs and part hashes fetched beforehand,
# not timed) and through a maxlofs mount (the files already in BACKING when the mount starts;
# timed from the mount command until `status --wait` says all is sent, so the mount's figure
# includes hashing every byte, the `upload`/`multipart`/`s3_object` calls and the records).
#  1. one file of SIZE_MIB (default 1024): multipart, 8 MiB parts;
#  2. FILES small files (default 1000) of SMALL_KIB (default 256): whole-object PUTs.
# Both sides send with the same concurrency (4, maxlofs's default --upload-concurrency).
# Prints each side's MiB/s and the ratio maxlofs/curl (target >= 0.9).
# Usage: scripts/bench-upload.sh
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${SIZE_MIB:-1024}
files=${FILES:-1000}
small_kib=${SMALL_KIB:-256}
concurrency=4
command -v curl >/dev/null || apt-get install -y curl >/dev/null
cargo build --release --quiet --bin maxlofs
bin=$PWD/target/release/maxlofs
work=$(mktemp -d "${BENCH_DIR:-/tmp}/maxlofs-bench-upload.XXXXXX")
cleanup() {
  for m in "$work"/mnt*; do mountpoint -q "$m" && umount "$m"; done 2>/dev/null || true
  [ -n "${emulator_pid:-}" ] && kill "$emulator_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
. scripts/bench-lib.sh
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

echo "== one file of $size_mib MiB"
start_emulator
# The parts and their hashes as maxlofs would send them; the part files are the curl inputs.
python3 - "$work/big/big.bin" "$work/parts" >"$work/multipart.json" <<'PY'
import hashlib, json, os, sys
path, out = sys.argv[1], sys.argv[2]
size = os.path.getsize(path)
part = 8 << 20
while -(-size // part) > 900:
    part *= 2
os.makedirs(out)
parts, digests = [], b""
with open(path, "rb") as f:
    n = 0
    while chunk := f.read(part):
        n += 1
        open(os.path.join(out, str(n)), "wb").write(chunk)
        d = hashlib.sha256(chunk).digest()
        digests += d
        parts.append({"part_num": n, "part_size": len(chunk), "part_hash": d.hex()})
print(json.dumps({"file_size": size, "file_hash": hashlib.sha256(digests).hexdigest(), "part_list": parts}))
PY
post multipart "$(cat "$work/multipart.json")" >"$work/urls.json"
python3 - "$work/urls.json" "$work/parts" >"$work/curl-big.cfg" <<'PY'
import json, sys
for part in json.load(open(sys.argv[1]))["signed_url_list"]:
    print(f'upload-file = "{sys.argv[2]}/{part["part_num"]}"\nurl = "{part["url"]}"\noutput = "/dev/null"')
PY
t0=$(now)
curl -fsS --parallel --parallel-max "$concurrency" -K "$work/curl-big.cfg"
t1=$(now)
curl_big=$(python3 -c "print($t1 - $t0)")
rate "curl -T, $concurrency parallel part PUTs" "$((size_mib << 20))" "$curl_big"
rm -rf "$work/parts"

start_emulator
t0=$(now)
mount_maxlofs "$work/big" "$work/mnt-big" "$work/state-big" --settle-ms 0
"$bin" status "$work/mnt-big" --wait --timeout 1200 >/dev/null
t1=$(now)
umount "$work/mnt-big"; wait "$mount_pid"
mount_big=$(python3 -c "print($t1 - $t0)")
rate "maxlofs mount (hash + multipart + record)" "$((size_mib << 20))" "$mount_big"
python3 -c "print(f'ratio maxlofs/curl, one {$size_mib} MiB file: {$curl_big/$mount_big:.2f}')"

echo "== $files files of $small_kib KiB"
start_emulator
python3 - "$work/small" >"$work/files.json" <<'PY'
import hashlib, json, os, sys
d = sys.argv[1]
print(json.dumps({"file_list": [
    {"file_hash": hashlib.sha256(open(os.path.join(d, n), "rb").read()).hexdigest(),
     "file_size": os.path.getsize(os.path.join(d, n)), "name": n} for n in sorted(os.listdir(d))]}))
PY
post upload "$(python3 -c "import json; d=json.load(open('$work/files.json')); print(json.dumps({'file_list': [{k: f[k] for k in ('file_hash','file_size')} for f in d['file_list']]}))")" >"$work/upload.json"
python3 - "$work/files.json" "$work/upload.json" "$work/small" >"$work/curl-small.cfg" <<'PY'
import json, sys
names = {f["file_hash"]: f["name"] for f in json.load(open(sys.argv[1]))["file_list"]}
for item in json.load(open(sys.argv[2]))["upload_list"]:
    print(f'upload-file = "{sys.argv[3]}/{names[item["file_hash"]]}"\nurl = "{item["signed_opts"]["url"]}"\noutput = "/dev/null"')
PY
t0=$(now)
curl -fsS --parallel --parallel-max "$concurrency" -K "$work/curl-small.cfg"
t1=$(now)
curl_small=$(python3 -c "print($t1 - $t0)")
small_bytes=$((files * small_kib * 1024))
rate "curl -T, $concurrency parallel PUTs" "$small_bytes" "$curl_small"

start_emulator
t0=$(now)
mount_maxlofs "$work/small" "$work/mnt-small" "$work/state-small" --settle-ms 0
"$bin" status "$work/mnt-small" --wait --timeout 1200 >/dev/null
t1=$(now)
umount "$work/mnt-small"; wait "$mount_pid"
mount_small=$(python3 -c "print($t1 - $t0)")
rate "maxlofs mount (hash + upload + PUT + s3_object + create, each file)" "$small_bytes" "$mount_small"
python3 -c "print(f'ratio maxlofs/curl, {$files} files: {$curl_small/$mount_small:.2f}')"

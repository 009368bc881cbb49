#!/usr/bin/env bash
# How long the emulator's multipart_complete takes, for a 256 MiB and a 4 GiB upload (SIZES_MIB).
# Each upload is real: `multipart` with the File Hashing parts (8 MiB for both sizes), every part
# PUT to its signed URL (zero bytes: quick to make, hashed by the emulator as it receives them),
# then one `multipart_complete`, the only call timed, then a check that the object is held with
# its size and that a Range across the first part boundary is served. Complete joins the parts
# without reading them again (docs/emulator.md, "multipart_complete"), so its time grows with the
# number of parts, not the bytes: both figures should be a few milliseconds.
# BIN=path times another maxlofs binary (an older one, say) on the same uploads.
# Usage: [SIZES_MIB="256 4096"] [BIN=target/release/maxlofs] scripts/bench-complete.sh
set -euo pipefail
cd "$(dirname "$0")/.."
sizes_mib=${SIZES_MIB:-256 4096}
command -v curl >/dev/null || apt-get install -y curl >/dev/null
if [ -z "${BIN:-}" ]; then
  cargo build --release --quiet --bin maxlofs
  bin=$PWD/target/release/maxlofs
else
  bin=$(realpath "$BIN")
fi
. scripts/bench-lib.sh
bench_work complete
service_args=(--objects "$work/objects")
start_emulator
key=demo-device-key
part_mib=8
head -c $((part_mib << 20)) /dev/zero >"$work/part"
part_hash=$(sha256sum "$work/part" | cut -d' ' -f1)

for size_mib in $sizes_mib; do
  parts=$((size_mib / part_mib))
  size=$((size_mib << 20))
  [ $((parts * part_mib)) = "$size_mib" ] || { echo "SIZES_MIB must be multiples of $part_mib" >&2; exit 2; }
  # The Maxlo hash of a file of equal parts: SHA-256 of the part digests, in order.
  file_hash=$(python3 -c "import hashlib,sys; print(hashlib.sha256(bytes.fromhex(sys.argv[1]) * int(sys.argv[2])).hexdigest())" "$part_hash" "$parts")
  python3 -c "
import json, sys
parts, size = int(sys.argv[3]), int(sys.argv[4])
print(json.dumps({'device_session_key': sys.argv[1], 'file_size': size, 'file_hash': sys.argv[2],
  'part_list': [{'part_num': n, 'part_size': size // parts, 'part_hash': sys.argv[5]} for n in range(1, parts + 1)]}))
" "$key" "$file_hash" "$parts" "$size" "$part_hash" >"$work/multipart.json"
  curl -fsS "$api/device/1/media_grant/1/multipart" -H 'content-type: application/json' \
    -d @"$work/multipart.json" >"$work/answer.json"
  upload_id=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['upload_id'])" "$work/answer.json")
  python3 -c "import json,sys; [print(u['url']) for u in json.load(open(sys.argv[1]))['signed_url_list']]" \
    "$work/answer.json" >"$work/urls"
  # Two PUTs at a time; each answer's ETag kept, in part order.
  rm -rf "$work/etags" && mkdir "$work/etags"
  nl -ba "$work/urls" | xargs -P 2 -L 1 sh -c \
    'curl -fsS -o /dev/null -D - -T "$1" "$3" | tr -d "\r" | sed -n "s/^[Ee][Tt][Aa][Gg]: //p" >"$0/$2"' \
    "$work/etags" "$work/part"
  python3 -c "
import json, os, sys
d, parts = sys.argv[5], int(sys.argv[6])
etags = [open(os.path.join(d, str(n))).read().strip() for n in range(1, parts + 1)]
assert all(etags), 'a part PUT answered no ETag'
print(json.dumps({'device_session_key': sys.argv[1], 'file_size': int(sys.argv[2]), 'file_hash': sys.argv[3],
  's3_bucket_id': 'maxlo-emulator', 'upload_id': sys.argv[4],
  'part_list': [{'part_num': n, 'etag': e} for n, e in enumerate(etags, 1)]}))
" "$key" "$size" "$file_hash" "$upload_id" "$work/etags" "$parts" >"$work/complete.json"

  started=$(now)
  status=$(curl -sS -o "$work/completed" -w '%{http_code}' "$api/device/1/media_grant/1/multipart_complete" \
    -H 'content-type: application/json' -d @"$work/complete.json")
  took=$(python3 -c "print(f'{$(now) - $started:.3f}')")
  [ "$status" = 201 ] || { echo "multipart_complete answered $status: $(cat "$work/completed")" >&2; exit 1; }

  held=$(curl -fsS "$api/_emulator/objects" | python3 -c "
import json, sys
print(next(o['file_size'] for o in json.load(sys.stdin)['object_list'] if o['file_hash'] == sys.argv[1]))" "$file_hash")
  [ "$held" = "$size" ] || { echo "held $held bytes, not $size" >&2; exit 1; }
  boundary=$((part_mib << 20))
  got=$(curl -fsS -H "range: bytes=$((boundary - 5))-$((boundary + 4))" "$api/_emulator/objects/$file_hash" | wc -c)
  [ "$got" = 10 ] || { echo "a Range across a part boundary gave $got bytes" >&2; exit 1; }
  echo "multipart_complete of $size_mib MiB ($parts parts): $took s"
  curl -fsS -X DELETE "$api/_emulator/objects/$file_hash" >/dev/null
done

#!/usr/bin/env bash
# What a failing service costs and how soon it is caught up with: PATHS new files (default 200)
# are written into a mount while the emulator fails 90 % of calls (--fail-rate 0.9); once they
# have all been tried (WARMUP seconds, default 5), the emulator's call counts are reset and read
# again WINDOW seconds later (default 30): the calls per second the waiting paths cost the service
# (target: at most 10). Then the fail rate is set to 0 (`POST /_emulator/fail-rate`) and the time
# until `status --wait` returns is the time from recovery until every path is sent (target: at
# most 20 s); the live records are counted to check it.
# MOUNT_BIN: the maxlofs that mounts (default: this tree's release build), to measure an older
# one against the same emulator, which is always this tree's (it has the fail-rate endpoint).
# Usage: [PATHS=200] [WINDOW=30] [WARMUP=5] [MOUNT_BIN=path] scripts/bench-backoff.sh
set -euo pipefail
cd "$(dirname "$0")/.."
paths=${PATHS:-200}
window=${WINDOW:-30}
warmup=${WARMUP:-5}
cargo build --release --quiet --bin maxlofs
bin=$PWD/target/release/maxlofs
mount_bin=${MOUNT_BIN:-$bin}
. scripts/bench-lib.sh
bench_work backoff

service_args=(--fail-rate 0.9)
start_emulator
emulator_bin=$bin bin=$mount_bin
mount_maxlofs "$work/backing" "$work/mnt" "$work/state"
bin=$emulator_bin
for i in $(seq "$paths"); do echo "file $i" >"$work/mnt/f$i"; done
sleep "$warmup"

calls() { curl -s "$api/_emulator/stats" | jq '[.calls[][]] | add // 0'; }
curl -s -X POST "$api/_emulator/stats/reset" >/dev/null
sleep "$window"
failing=$(calls)

curl -s "$api/_emulator/fail-rate" -H 'content-type: application/json' -d '{"fail_rate":0}' >/dev/null
recovered=$(now)
"$mount_bin" status --wait --timeout 300 "$work/mnt" >/dev/null
caught_up=$(echo "$(now) - $recovered" | bc -l)
live=$(curl -s "$api/_emulator/media_grant/1/media" | jq '[.media_list[] | select(.is_deleted | not)] | length')

printf 'failing: %d calls in %d s = %.1f calls/s (%d paths waiting)\n' \
  "$failing" "$window" "$(echo "$failing / $window" | bc -l)" "$paths"
printf 'recovered: every path sent %.1f s after the fail rate went to 0 (%d of %d live)\n' \
  "$caught_up" "$live" "$paths"
umount "$work/mnt"
wait "$mount_pid" || true

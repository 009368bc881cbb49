#!/usr/bin/env bash
# Times `maxlofs hash` against `sha256sum` on a 1 GiB file (multipart: parallel parts) and a
# 16 MiB file (single part: the same SHA-256 as sha256sum). Files are read from the page cache,
# so this measures hashing, not the disk.
#
# Usage: scripts/bench-hash.sh [RUNS]   (RUNS alternating runs per tool and file, default 7)
set -euo pipefail

runs=${1:-7}
# A 16 MiB hash takes milliseconds: time a batch of invocations to rise above timer and
# scheduling noise, and report the time per invocation.
small_batch=20

repo=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release --quiet --manifest-path "$repo/Cargo.toml"
maxlofs="$repo/target/release/maxlofs"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
head -c $((1024 * 1024 * 1024)) /dev/urandom >"$work/1GiB"
head -c $((16 * 1024 * 1024)) /dev/urandom >"$work/16MiB"
cat "$work/1GiB" "$work/16MiB" >/dev/null # into the page cache

# Both tools must agree where the Maxlo hash is a plain SHA-256.
if [[ $("$maxlofs" hash "$work/16MiB") != $(sha256sum "$work/16MiB") ]]; then
    echo "bench-hash: maxlofs and sha256sum disagree on a single-part file" >&2
    exit 1
fi

# Seconds per invocation of "$@", over a batch of $batch invocations.
time_batch() {
    local batch=$1 start end i
    shift
    start=$(date +%s%N)
    for ((i = 0; i < batch; i++)); do "$@" >/dev/null; done
    end=$(date +%s%N)
    awk -v ns=$((end - start)) -v n="$batch" 'BEGIN { printf "%.6f\n", ns / n / 1e9 }'
}

# Prints "best median" of a list of numbers.
best_median() {
    sort -g | awk '{ v[NR] = $1 } END {
        m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        printf "%.4f %.4f\n", v[1], m }'
}

bench() {
    local label=$1 file=$2 batch=$3 r
    local sha_times=() ours_times=()
    for ((r = 0; r < runs; r++)); do
        sha_times+=("$(time_batch "$batch" sha256sum "$file")")
        ours_times+=("$(time_batch "$batch" "$maxlofs" hash "$file")")
    done
    read -r sha_best sha_median < <(printf '%s\n' "${sha_times[@]}" | best_median)
    read -r ours_best ours_median < <(printf '%s\n' "${ours_times[@]}" | best_median)
    printf '%-6s %-16s best %8.4f s  median %8.4f s\n' "$label" sha256sum "$sha_best" "$sha_median"
    printf '%-6s %-16s best %8.4f s  median %8.4f s\n' "$label" "maxlofs hash" "$ours_best" "$ours_median"
    awk -v l="$label" -v ob="$ours_best" -v sb="$sha_best" -v om="$ours_median" -v sm="$sha_median" \
        'BEGIN { printf "%-6s maxlofs/sha256sum time ratio: best %.3f  median %.3f\n", l, ob / sb, om / sm }'
}

echo "$(nproc) cores; $runs alternating runs each; 16MiB times are per invocation (batches of $small_batch)"
bench 1GiB "$work/1GiB" 1
bench 16MiB "$work/16MiB" "$small_batch"

#!/usr/bin/env bash
# The long versions of the lose-nothing tests (docs/testing.md), then one summary: cases run,
# crash rounds, faults injected, records checked, anything lost (must be 0).
#
#   scripts/soak.sh                         # defaults below
#   PROPTEST_CASES=1000 MAXLOFS_CRASH_ROUNDS=100 scripts/soak.sh
#
# Every knob is an environment variable the tests read:
#   PROPTEST_CASES            model-based cases through a clean service        (default 300)
#   MAXLOFS_FAULT_CASES       ... under --fail-rate 0.3 --drop-rate 0.1 --latency-ms 50 (100)
#   MAXLOFS_CONCURRENT_CASES  ... with two writer threads at once               (100)
#   MAXLOFS_CRASH_ROUNDS      kill -9 rounds of the daemon                     (30)
#   MAXLOFS_SEED              fixes the crash tests' random choices (printed otherwise)
# Needs root and FUSE, like the tests (MAXLOFS_REQUIRE_FUSE=1 is set here).
set -uo pipefail
cd "$(dirname "$0")/.."

export MAXLOFS_REQUIRE_FUSE=1
export PROPTEST_CASES="${PROPTEST_CASES:-300}"
export MAXLOFS_FAULT_CASES="${MAXLOFS_FAULT_CASES:-100}"
export MAXLOFS_CONCURRENT_CASES="${MAXLOFS_CONCURRENT_CASES:-100}"
export MAXLOFS_CRASH_ROUNDS="${MAXLOFS_CRASH_ROUNDS:-30}"
TESTS=(prove_model prove_crash regressions prove_hostile prove_security)

log="$(mktemp -t maxlofs-soak.XXXXXX)"
started=$SECONDS
echo "soak: cases=$PROPTEST_CASES fault_cases=$MAXLOFS_FAULT_CASES" \
    "concurrent_cases=$MAXLOFS_CONCURRENT_CASES crash_rounds=$MAXLOFS_CRASH_ROUNDS; log: $log"
cargo build --tests --quiet || exit 1

failed=()
for test in "${TESTS[@]}"; do
    echo "== $test"
    out="$(mktemp -t maxlofs-soak-test.XXXXXX)"
    cargo test --quiet --test "$test" -- --nocapture >"$out" 2>&1
    code=$?
    cat "$out" >>"$log"
    # (SOAK lines may follow the progress dots of --quiet on the same line.)
    grep -oE 'SOAK test=.*|[a-z ]*: MAXLOFS_SEED=.*|^test result.*|^[a-z0-9_]+ --- FAILED$' "$out" |
        sed 's/^/   /'
    rm -f "$out"
    if [ "$code" -ne 0 ]; then
        failed+=("$test")
    fi
done

# One line per SOAK report: sum the fields.
summary="$(grep -oE 'SOAK test=.*' "$log" | awk '
    { for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[1] != "test") sum[kv[1]] += kv[2] } }
    END {
        printf "cases run:        %d\n", sum["cases"]
        printf "operations:       %d\n", sum["ops"]
        printf "crash rounds:     %d (kill -9 of the daemon, restarts of the service)\n", sum["crash_rounds"]
        printf "faults injected:  %d (503s: %d, dropped connections: %d)\n", sum["faults_503"] + sum["faults_dropped"], sum["faults_503"], sum["faults_dropped"]
        printf "records checked:  %d\n", sum["records_checked"]
        printf "lost:             %d\n", sum["lost"]
    }')"
echo
echo "== soak summary ($((SECONDS - started)) s)"
echo "$summary"
if [ "${#failed[@]}" -ne 0 ]; then
    echo "FAILED: ${failed[*]} (see $log)"
    exit 1
fi
if ! echo "$summary" | grep -qE '^lost: +0$'; then
    echo "FAILED: something was lost (see $log)"
    exit 1
fi
echo "OK: nothing lost"

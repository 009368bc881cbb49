#!/usr/bin/env bash
# Benchmarks maxlofs against its backing ext4 directory used directly, and against bindfs, side
# by side in one run, and prints a table with ratios to native (higher is better).
#
#   sudo scripts/bench-fs.sh            # SIZE_MIB=1024 FILES=10000 REPEAT=3 BENCH_DIR=/var/tmp/maxlofs-bench
#
# Workloads: sequential write of SIZE_MIB with fsync (dd conv=fsync), cold sequential read
# (page cache dropped first, when /proc/sys/vm/drop_caches is writable), and FILES x 4 KiB files
# created, stat'ed, renamed and unlinked by a small C program (so per-call overhead is the
# syscall's, not an interpreter's). Each figure is the best of REPEAT runs.
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE_MIB=${SIZE_MIB:-1024}
FILES=${FILES:-10000}
REPEAT=${REPEAT:-3}
WORK=${BENCH_DIR:-/var/tmp/maxlofs-bench}

command -v bindfs >/dev/null || apt-get install -y bindfs >/dev/null
cargo build --release --example passthrough_mount
MAXLOFS=target/release/examples/passthrough_mount

mkdir -p "$WORK"
cat >"$WORK/smallfiles.c" <<'EOF'
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

#define CHECK(call, what) if ((call) != 0) { perror(what); return 1; }

int main(int argc, char **argv) {
    const char *dir = argv[1];
    int n = atoi(argv[2]);
    char a[4096], b[4096], buf[4096];
    struct stat st;
    memset(buf, 'x', sizeof buf);
    CHECK(mkdir(dir, 0755), dir);
    double t = now();
    for (int i = 0; i < n; i++) {
        snprintf(a, sizeof a, "%s/f%d", dir, i);
        int fd = open(a, O_CREAT | O_WRONLY | O_TRUNC, 0644);
        if (fd < 0 || write(fd, buf, sizeof buf) != sizeof buf) { perror(a); return 1; }
        CHECK(close(fd), a);
    }
    printf("create %f\n", now() - t);
    t = now();
    for (int i = 0; i < n; i++) {
        snprintf(a, sizeof a, "%s/f%d", dir, i);
        CHECK(stat(a, &st), a);
    }
    printf("stat %f\n", now() - t);
    t = now();
    for (int i = 0; i < n; i++) {
        snprintf(a, sizeof a, "%s/f%d", dir, i);
        snprintf(b, sizeof b, "%s/g%d", dir, i);
        CHECK(rename(a, b), a);
    }
    printf("rename %f\n", now() - t);
    t = now();
    for (int i = 0; i < n; i++) {
        snprintf(b, sizeof b, "%s/g%d", dir, i);
        CHECK(unlink(b), b);
    }
    printf("unlink %f\n", now() - t);
    CHECK(rmdir(dir), dir);
    return 0;
}
EOF
cc -O2 -o "$WORK/smallfiles" "$WORK/smallfiles.c"

drop_caches() {
    sync
    echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || COLD="(warm: cannot drop caches)"
}

wait_mounted() {
    for _ in $(seq 100); do mountpoint -q "$1" && return 0; sleep 0.1; done
    echo "mount at $1 did not come up" >&2
    exit 1
}

MOUNT_PID=""
start() { # start TARGET -> sets DIR
    case $1 in
    native)
        DIR="$WORK/native"
        mkdir -p "$DIR"
        ;;
    maxlofs)
        mkdir -p "$WORK/maxlofs-backing" "$WORK/maxlofs-mnt"
        "$MAXLOFS" "$WORK/maxlofs-backing" "$WORK/maxlofs-mnt" &
        MOUNT_PID=$!
        DIR="$WORK/maxlofs-mnt"
        wait_mounted "$DIR"
        ;;
    bindfs)
        mkdir -p "$WORK/bindfs-backing" "$WORK/bindfs-mnt"
        bindfs "$WORK/bindfs-backing" "$WORK/bindfs-mnt"
        DIR="$WORK/bindfs-mnt"
        wait_mounted "$DIR"
        ;;
    esac
}

stop() {
    if [ "$1" != native ]; then
        fusermount3 -u "$DIR"
        if [ -n "$MOUNT_PID" ]; then wait "$MOUNT_PID"; MOUNT_PID=""; fi
    fi
}

trap 'for m in "$WORK"/*-mnt; do mountpoint -q "$m" && fusermount3 -u "$m"; done' EXIT

elapsed() { # elapsed CMD... -> seconds on stdout
    local t0 t1
    t0=$(date +%s.%N)
    "$@"
    t1=$(date +%s.%N)
    echo "$t1 - $t0" | bc -l
}

declare -A RESULT # RESULT[target,metric] = best rate
best() { # best KEY RATE: keep the maximum
    local old=${RESULT[$1]:-0}
    if (($(echo "$2 > $old" | bc -l))); then RESULT[$1]=$2; fi
}

COLD="(cold)"
TARGETS=(native maxlofs bindfs)
for round in $(seq "$REPEAT"); do
    for target in "${TARGETS[@]}"; do
        start "$target"
        echo "round $round: $target ($DIR)" >&2
        secs=$(elapsed dd if=/dev/zero of="$DIR/big" bs=1M count="$SIZE_MIB" conv=fsync status=none)
        best "$target,write" "$(echo "$SIZE_MIB / $secs" | bc -l)"
        drop_caches
        secs=$(elapsed dd if="$DIR/big" of=/dev/null bs=1M status=none)
        best "$target,read" "$(echo "$SIZE_MIB / $secs" | bc -l)"
        rm "$DIR/big"
        while read -r metric secs; do
            best "$target,$metric" "$(echo "$FILES / $secs" | bc -l)"
        done < <("$WORK/smallfiles" "$DIR/small" "$FILES")
        stop "$target"
    done
done

row() { # row LABEL METRIC UNIT
    local native=${RESULT[native,$2]}
    printf "%-30s %12.0f %12.0f %6.2fx %12.0f %6.2fx\n" "$1 ($3)" "$native" \
        "${RESULT[maxlofs,$2]}" "$(echo "${RESULT[maxlofs,$2]} / $native" | bc -l)" \
        "${RESULT[bindfs,$2]}" "$(echo "${RESULT[bindfs,$2]} / $native" | bc -l)"
}

echo
echo "maxlofs benchmark: $SIZE_MIB MiB sequential, $FILES x 4 KiB files, best of $REPEAT, $(uname -r)"
printf "%-30s %12s %12s %7s %12s %7s\n" "workload" "native" "maxlofs" "ratio" "bindfs" "ratio"
row "sequential write+fsync" write "MiB/s"
row "sequential read $COLD" read "MiB/s"
row "create 4 KiB files" create "files/s"
row "stat" stat "files/s"
row "rename" rename "files/s"
row "unlink" unlink "files/s"

#!/usr/bin/env bash
# The one-go benchmark of issue 6: the backing directory used directly ("native"), maxlofs (the
# real `maxlofs mount`, syncing to `maxlofs emulator` on loopback), bindfs and
# `rclone mount --vfs-cache-mode writes` (local to local), side by side in one run, with ratios
# to native (higher is better); then the catalog side of maxlofs through bench-sync.sh,
# bench-catalog.sh and bench-hash.sh. docs/performance.md has the targets and the latest table.
#
#   sudo scripts/bench.sh            # full run (about an hour on 2 cores)
#   sudo scripts/bench.sh --quick    # smaller sizes, for iteration (a few minutes)
#   sudo scripts/bench.sh --fs-only  # only the side-by-side filesystem table
#
# Environment: REPEAT (rounds, best of; default 3, quick 2), TARGETS (default
# "native maxlofs bindfs rclone"; "fsonly" adds maxlofs' passthrough without the sync engine,
# examples/passthrough_mount.rs), THREADS (maxlofs --threads), BENCH_DIR (default
# /var/tmp/maxlofs-bench; the source tarball is kept there between runs).
#
# Workloads, each in a fresh mount on a fresh ext4 filesystem per round and target, the targets
# interleaved per round:
#   write      SIZE_MIB sequential write + fsync (dd conv=fsync)
#   read cold  the same file read after dropping the page cache; read warm: read again
#   create/stat/rename/unlink  FILES x 4 KiB files, by a small C program (no interpreter cost)
#   tar x      extract an uncompressed tarball of ~/.cargo/registry/src (made once)
#   cp -r      copy the extracted tree to a sibling directory on the same mount
#   find+stat  `find | xargs stat` over both trees after dropping caches (cold metadata)
# Rates are units per second (MiB, files, or tree entries); each figure is the best of REPEAT.
# Between workloads maxlofs is left to finish its sync (`maxlofs status --wait`, not timed), so
# one workload's uploads do not slow the next; during a workload the sync engine runs as usual.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

quick=0 fs_only=0
for arg in "$@"; do
  case $arg in
  --quick) quick=1 ;;
  --fs-only) fs_only=1 ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d' >&2; exit 2 ;;
  esac
done
if [ $quick = 1 ]; then
  SIZE_MIB=${SIZE_MIB:-256} FILES=${FILES:-2000} REPEAT=${REPEAT:-2} TREE_FRACTION=${TREE_FRACTION:-10}
else
  SIZE_MIB=${SIZE_MIB:-1024} FILES=${FILES:-10000} REPEAT=${REPEAT:-3} TREE_FRACTION=${TREE_FRACTION:-1}
fi
TARGETS=${TARGETS:-native maxlofs bindfs rclone}
THREADS=${THREADS:-}
WORK=${BENCH_DIR:-/var/tmp/maxlofs-bench}

scripts/setup.sh
command -v rclone >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rclone >/dev/null
cargo build --release --quiet --bin maxlofs && cargo build --release --quiet -p maxlofs-fs --example passthrough_mount
bin=$repo/target/release/maxlofs
fsonly_bin=$repo/target/release/examples/passthrough_mount
mkdir -p "$WORK"
work=$(mktemp -d "$WORK/run.XXXXXX")
. scripts/bench-lib.sh

cleanup() {
  for m in "$work"/*-mnt "$work"/*-fs; do
    mountpoint -q "$m" 2>/dev/null && { fusermount3 -u "$m" 2>/dev/null || umount -l "$m"; }
  done
  [ -n "${emulator_pid:-}" ] && kill "$emulator_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

start_load=$(cut -d' ' -f1-3 /proc/loadavg)

# --- the source tree tarball, made once -----------------------------------------------------------
tarball=$WORK/src-1of$TREE_FRACTION.tar
if [ ! -f "$tarball" ]; then
  src=$(ls -d "$HOME"/.cargo/registry/src/*/ | head -1)
  (cd "$src" && ls | awk -v n="$TREE_FRACTION" 'NR % n == 0' | tar cf "$tarball.tmp" -T -)
  mv "$tarball.tmp" "$tarball"
fi
tree_entries=$(tar tf "$tarball" | wc -l)
tree_mib=$(($(stat -c %s "$tarball") / 1048576))

cc -O2 -o "$work/smallfiles" scripts/smallfiles.c

COLD=cold
drop_caches() {
  sync
  echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || COLD="warm: cannot drop caches"
}

threads_arg=()
[ -n "$THREADS" ] && threads_arg=(--threads "$THREADS")

fs_gib=$(((SIZE_MIB * 3 + tree_mib * 4) / 1024 + 2))

start() { # start TARGET ROUND -> sets DIR
  local back=$work/$1-fs/backing mnt=$work/$1-mnt
  fresh_fs "$work/$1-fs" "$fs_gib"
  mkdir -p "$back" "$mnt"
  case $1 in
  native) DIR=$back ;;
  maxlofs)
    start_emulator
    mount_maxlofs "$back" "$mnt" "$work/maxlofs-state$2" "${threads_arg[@]}"
    DIR=$mnt
    ;;
  fsonly)
    "$fsonly_bin" "$back" "$mnt" "${threads_arg[@]}" &
    mount_pid=$!
    DIR=$mnt
    wait_mounted "$DIR"
    ;;
  bindfs)
    bindfs "$back" "$mnt"
    DIR=$mnt
    wait_mounted "$DIR"
    ;;
  rclone)
    rclone mount "$back" "$mnt" --vfs-cache-mode writes --cache-dir "$work/rclone-cache" \
      --daemon --log-file "$work/rclone.log"
    DIR=$mnt
    wait_mounted "$DIR"
    ;;
  esac
}

# Lets maxlofs finish sending what the last workload changed (not timed).
settle() {
  if [ "$1" = maxlofs ]; then
    "$bin" status "$DIR" --wait --timeout 1800 >/dev/null
  fi
}

stop() {
  case $1 in
  native) ;;
  maxlofs | fsonly)
    umount "$DIR"
    wait "$mount_pid" || true
    ;;
  *) fusermount3 -u "$DIR" ;;
  esac
  drop_fs "$work/$1-fs"
  rm -rf "$work/rclone-cache"
}

elapsed() { # elapsed CMD... -> seconds on stdout
  local t0 t1
  t0=$(now)
  "$@"
  t1=$(now)
  echo "$t1 - $t0" | bc -l
}

declare -A RESULT # RESULT[target,metric] = best rate
best() {          # best KEY RATE: keep the maximum
  local old=${RESULT[$1]:-0}
  if (($(echo "$2 > $old" | bc -l))); then RESULT[$1]=$2; fi
}

read_file() { dd if="$1" of=/dev/null bs=1M status=none; }
extract() { mkdir "$1" && tar xf "$tarball" -C "$1"; }
find_stat() { find "$@" -print0 | xargs -0 stat >/dev/null; }

for round in $(seq "$REPEAT"); do
  for target in $TARGETS; do
    start "$target" "$round"
    echo "round $round: $target ($DIR), load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
    # Every writing run starts from the same state: nothing dirty left to flush from before (a
    # previous target's writes would otherwise be charged to, or spared from, this one's fsync).
    drop_caches
    secs=$(elapsed dd if=/dev/zero of="$DIR/big" bs=1M count="$SIZE_MIB" conv=fsync status=none)
    best "$target,write" "$(echo "$SIZE_MIB / $secs" | bc -l)"
    settle "$target"
    drop_caches
    secs=$(elapsed read_file "$DIR/big")
    best "$target,read" "$(echo "$SIZE_MIB / $secs" | bc -l)"
    secs=$(elapsed read_file "$DIR/big")
    best "$target,readwarm" "$(echo "$SIZE_MIB / $secs" | bc -l)"
    rm "$DIR/big"
    settle "$target"
    drop_caches
    while read -r metric secs; do
      best "$target,$metric" "$(echo "$FILES / $secs" | bc -l)"
    done < <("$work/smallfiles" "$DIR/small" "$FILES")
    settle "$target"
    drop_caches
    secs=$(elapsed extract "$DIR/tree")
    best "$target,tar" "$(echo "$tree_entries / $secs" | bc -l)"
    settle "$target"
    drop_caches
    secs=$(elapsed cp -r "$DIR/tree" "$DIR/tree2")
    best "$target,cp" "$(echo "$tree_entries / $secs" | bc -l)"
    settle "$target"
    drop_caches
    secs=$(elapsed find_stat "$DIR/tree" "$DIR/tree2")
    best "$target,find" "$(echo "2 * $tree_entries / $secs" | bc -l)"
    stop "$target"
  done
done
end_load=$(cut -d' ' -f1-3 /proc/loadavg)

# --- the table ----------------------------------------------------------------------------------
header="$(printf '%-28s' workload)"
for target in $TARGETS; do
  if [ "$target" = native ]; then
    header+=$(printf ' %10s' native)
  else
    header+=$(printf ' %10s %6s' "$target" ratio)
  fi
done
row() { # row LABEL METRIC
  local native=${RESULT[native,$2]:-0} line
  line=$(printf '%-28s' "$1")
  for target in $TARGETS; do
    local v=${RESULT[$target,$2]:-0}
    if [ "$target" = native ]; then
      line+=$(printf ' %10.0f' "$v")
    else
      line+=$(printf ' %10.0f %5.2fx' "$v" "$(echo "$v / $native" | bc -l)")
    fi
  done
  echo "$line"
}
echo
echo "== filesystem: $SIZE_MIB MiB sequential, $FILES x 4 KiB files, tree of $tree_entries entries" \
  "($tree_mib MiB), best of $REPEAT; $(uname -r), $(nproc) cores; $(date -u +%FT%TZ);" \
  "load average $start_load at start, $end_load at end"
echo "$header"
row "seq write+fsync (MiB/s)" write
row "seq read $COLD (MiB/s)" read
row "seq read warm (MiB/s)" readwarm
row "create 4 KiB (files/s)" create
row "stat (files/s)" stat
row "rename (files/s)" rename
row "unlink (files/s)" unlink
row "tar x (entries/s)" tar
row "cp -r (entries/s)" cp
row "find | xargs stat $COLD (/s)" find

[ $fs_only = 1 ] && exit 0

# --- maxlofs and its catalog --------------------------------------------------------------------
if [ $quick = 1 ]; then
  sync_files=200 catalog_files=500 indexed=${INDEXED:-100000} hash_runs=3
else
  sync_files=1000 catalog_files=2000 indexed=${INDEXED:-1000000} hash_runs=7
fi
echo
echo "== close to record (scripts/bench-sync.sh $sync_files), load $(cut -d' ' -f1-3 /proc/loadavg)"
scripts/bench-sync.sh "$sync_files"
echo
echo "== catalog (scripts/bench-catalog.sh $catalog_files $indexed), load $(cut -d' ' -f1-3 /proc/loadavg)"
scripts/bench-catalog.sh "$catalog_files" "$indexed"
echo
echo "== hashing (scripts/bench-hash.sh $hash_runs), load $(cut -d' ' -f1-3 /proc/loadavg)"
scripts/bench-hash.sh "$hash_runs"
echo
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"

#!/usr/bin/env bash
# pjdfstest (the POSIX conformance suite) through a real `maxlofs mount`, syncing to the
# emulator, on one transport. pjdfstest is not in the package registries this project may use, so
# build it from its sources first (github.com/pjd/pjdfstest: autoreconf -ifs && ./configure &&
# make pjdfstest) and point PJDFSTEST at that folder. Root only (pjdfstest changes owners).
#   sudo PJDFSTEST=/path/to/pjdfstest [TRANSPORT=auto|io-uring|dev-fuse] scripts/pjdfstest.sh
# For io-uring, the kernel's switch is turned on for the run and put back after.
set -euo pipefail
cd "$(dirname "$0")/.."
suite=${PJDFSTEST:?set PJDFSTEST to a built pjdfstest source folder}
transport=${TRANSPORT:-auto}
cargo build --release --quiet --bin maxlofs
bin=$PWD/target/release/maxlofs
. scripts/bench-lib.sh
bench_work pjdfstest
[ "$transport" != io-uring ] || uring_on_for_this_run
start_emulator
# pjdfstest acts as other users too, which a private mount refuses by design.
mount_maxlofs "$work/backing" "$work/mnt" "$work/state" --transport "$transport" --allow-other
"$bin" status --json "$work/mnt" | python3 -c 'import json,sys; print("transport:", json.load(sys.stdin)["transport"])'
# In a subshell, so that the cleanup's unmount does not find us inside the mount.
(cd "$work/mnt" && prove -r "$suite/tests") >"$work/prove.log" 2>&1 || { grep -E "^/|Failed tests" "$work/prove.log"; tail -3 "$work/prove.log"; exit 1; }
tail -3 "$work/prove.log"

#!/usr/bin/env bash
# Alces next to MooseFS 3 and a local folder, on this machine, in one run.
#
# Installs what is missing (fio, Debian's MooseFS packages, the build dependencies), builds
# Alces, starts a MooseFS cluster (1 master, 3 chunkservers, goal 2; see moosefs-up.sh) and an
# Alces cluster of the same shape (3 masters, 3 chunkservers, goal 2), runs fsbench.py on both
# mounts and on a plain local folder (the physical limit), prints one table with the ratios
# Alces/MooseFS and Alces/local, then the failover stall of an Alces client over repeated
# leader kills. Everything is stopped at the end, also on failure.
#
# With --mfs-fsync, MooseFS runs a second time with HDD_FSYNC_BEFORE_CLOSE = 1 (its
# chunkservers then sync a chunk before closing it, as Alces's always do) and the table gets
# a column for it.
#
# Usage: bench/run.sh [--quick] [--kills N] [--mfs-fsync] [WORKDIR]   (default WORKDIR: ./alces-bench)
# The JSON figures are kept in WORKDIR/results.jsonl; the clusters' data is removed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
QUICK=""; KILLS=12; MFS_FSYNC=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=--quick; shift ;;
    --kills) KILLS=$2; shift 2 ;;
    --mfs-fsync) MFS_FSYNC=1; shift ;;
    *) break ;;
  esac
done
WORK=${1:-alces-bench}
mkdir -p "$WORK"; WORK=$(cd "$WORK" && pwd)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/alces/target}"
BIN="$CARGO_TARGET_DIR/release"

./ops/scripts/install-deps.sh fio moosefs-master moosefs-chunkserver moosefs-client moosefs-metalogger moosefs-cli
cargo build --release --workspace --bins --benches

cleanup() {
  "$BIN/alces-cluster" down --dir "$WORK/alces" >/dev/null 2>&1 || true
  "$ROOT/bench/moosefs-down.sh" "$WORK/mfs" "$WORK/mfs-mnt" --netns >/dev/null 2>&1 || true
}
trap cleanup EXIT INT TERM
cleanup
rm -rf "$WORK/alces" "$WORK/mfs" "$WORK/local" "$WORK/results.jsonl"
mkdir -p "$WORK/local"

"$BIN/alces-cluster" up --dir "$WORK/alces" --masters 3 --chunkservers 3 --goal 2 --mount "$WORK/alces-mnt"
"$ROOT/bench/moosefs-up.sh" "$WORK/mfs" "$WORK/mfs-mnt" 3
mfssetgoal -r 2 "$WORK/mfs-mnt" >/dev/null

# One folder after the other: they share the disk and the two cores.
for target in "alces:$WORK/alces-mnt" "moosefs:$WORK/mfs-mnt" "local:$WORK/local"; do
  label=${target%%:*}; folder=${target#*:}
  echo "== $label ($folder)" >&2
  python3 "$ROOT/bench/fsbench.py" "$folder" --label "$label" $QUICK | tee -a "$WORK/results.jsonl"
done
"$BIN/alces-cluster" down --dir "$WORK/alces" >/dev/null
"$ROOT/bench/moosefs-down.sh" "$WORK/mfs" "$WORK/mfs-mnt" --netns >/dev/null
if [ -n "$MFS_FSYNC" ]; then
  rm -rf "$WORK/mfs"
  MFS_CHUNKSERVER_OPTIONS="HDD_FSYNC_BEFORE_CLOSE = 1" "$ROOT/bench/moosefs-up.sh" "$WORK/mfs" "$WORK/mfs-mnt" 3
  mfssetgoal -r 2 "$WORK/mfs-mnt" >/dev/null
  echo "== moosefs with HDD_FSYNC_BEFORE_CLOSE = 1 ($WORK/mfs-mnt)" >&2
  python3 "$ROOT/bench/fsbench.py" "$WORK/mfs-mnt" --label moosefs-fsync $QUICK | tee -a "$WORK/results.jsonl"
  "$ROOT/bench/moosefs-down.sh" "$WORK/mfs" "$WORK/mfs-mnt" --netns >/dev/null
fi
# The clusters' data (gigabytes) is not needed any more; the figures stay.
rm -rf "$WORK/alces" "$WORK/mfs" "$WORK/local"

python3 "$ROOT/bench/table.py" "$WORK/results.jsonl"
echo
echo "== failover: client stalls over $KILLS leader kills (Alces)"
ALCES_BENCH_KILLS=$KILLS cargo bench -p alces-client --bench failover
echo "MooseFS: a dead master stops every mount until an operator (or an external failover"
echo "script with a metalogger) brings a master back; there is no automatic figure to quote."

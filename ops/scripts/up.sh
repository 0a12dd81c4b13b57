#!/usr/bin/env bash
# Starts a local cluster on loopback and mounts it: installs missing system packages, builds
# every binary (release), then runs `alces-cluster up` with 3 masters and 3 chunkservers.
# Usage: ops/scripts/up.sh [DIR [MOUNTPOINT]]   (defaults: ./alces-local and ./alces-local/mnt)
# Stop it with: alces-cluster down --dir DIR
set -euo pipefail
cd "$(dirname "$0")/../.."
DIR=${1:-alces-local}
MNT=${2:-$DIR/mnt}
./ops/scripts/install-deps.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/alces/target}"
cargo build --release --workspace --bins
exec "$CARGO_TARGET_DIR/release/alces-cluster" up --dir "$DIR" --masters 3 --chunkservers 3 --mount "$MNT"

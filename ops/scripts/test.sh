#!/usr/bin/env bash
# Runs every test of the project: unit and integration tests of every crate (real processes,
# loopback TCP, RocksDB, FUSE mounts). Installs missing system packages first.
set -euo pipefail
cd "$(dirname "$0")/../.."
./ops/scripts/install-deps.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/alces/target}"
# One profile (release) for tests, binaries and benchmarks keeps a single warm build. The
# integration tests start the daemons of every crate, so all binaries are built first.
cargo build --release --workspace --bins
cargo test --release --workspace -- --test-threads="${ALCES_TEST_THREADS:-2}"

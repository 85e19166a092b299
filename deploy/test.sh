#!/usr/bin/env bash
# The whole test suite: installs missing packages, builds every binary, runs every test as root.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "test: run as root (tests use namespaces, cgroups, mounts)" >&2; exit 1; }
deploy/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/flotilla-target}"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -q -- -D warnings
cargo build --workspace --bins
cargo test --workspace --no-fail-fast -- --test-threads="${FLOTILLA_TEST_THREADS:-2}"

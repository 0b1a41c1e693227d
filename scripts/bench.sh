#!/usr/bin/env bash
# Builds the release binaries and runs the bench harness; the Markdown report goes to stdout.
# Extra arguments go to the harness (see `target/release/bench --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-services.sh
command -v pgbench >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq postgresql-contrib >/dev/null; }
cargo build --release --workspace --bins --quiet
SWITCHYARD_LOG=${SWITCHYARD_LOG:-error} exec target/release/bench "$@"

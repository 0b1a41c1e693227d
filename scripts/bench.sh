#!/usr/bin/env bash
# Builds the release binaries and runs the bench harness; the Markdown report goes to stdout.
# Extra arguments go to the harness (see `target/release/bench --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-services.sh
command -v pgbench >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq postgresql-contrib >/dev/null; }
cargo build --release --workspace --bins --quiet
# One runtime thread per process: the measured best on a 2-core box that also runs PostgreSQL and
# RabbitMQ (BENCHMARKS.md). Override with SWITCHYARD_RUNTIME_THREADS=0 for one thread per core.
export SWITCHYARD_RUNTIME_THREADS=${SWITCHYARD_RUNTIME_THREADS:-1}
SWITCHYARD_LOG=${SWITCHYARD_LOG:-error} exec target/release/bench "$@"

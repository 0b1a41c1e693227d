#!/usr/bin/env bash
# Runs every test against the real PostgreSQL and RabbitMQ. This is what .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/ensure-services.sh

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "[test] cargo-nextest not found; installing it" >&2
  cargo install --locked cargo-nextest
fi

# The end-to-end tests start the real binaries, so build them first.
cargo build --workspace --bins --locked
cargo nextest run --workspace --locked --no-fail-fast "$@"

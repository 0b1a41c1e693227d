#!/usr/bin/env bash
# Runs every test against the real PostgreSQL and RabbitMQ. This is what .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/ensure-services.sh

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "[test] cargo-nextest not found; installing it" >&2
  cargo install --locked cargo-nextest
fi

# Hygiene first: formatting and lints (warnings are errors).
# (Skipped, with a note, on a toolchain that lacks the components.)
if cargo fmt --version >/dev/null 2>&1; then
  cargo fmt --all -- --check
else
  echo "[test] rustfmt is not installed; skipping the format check" >&2
fi
if cargo clippy --version >/dev/null 2>&1; then
  cargo clippy --workspace --all-targets --locked -- -D warnings
else
  echo "[test] clippy is not installed; skipping lints" >&2
fi

# The end-to-end tests start the real binaries, so build them first.
cargo build --workspace --bins --locked

# Python tools from PyPI: the official Standard Webhooks verifier (an end-to-end test checks our
# signatures with it) and schemathesis.
SWITCHYARD_PY_VENV=$(scripts/py-tools.sh)
export SWITCHYARD_PY_VENV
# The console's browser test: Debian's Chromium and playwright-core from npm.
SWITCHYARD_NODE_DIR=$(scripts/browser-tools.sh)
export SWITCHYARD_NODE_DIR

# The restart tests stop the shared RabbitMQ and PostgreSQL, so they run alone, first, one at a
# time; then everything else.
cargo nextest run --workspace --locked -E 'binary(service_restarts)' "$@"
cargo nextest run --workspace --locked -E 'not binary(service_restarts)' "$@"
scripts/validate-deploy.sh  # static checks of the Dockerfile, compose.yaml, deploy/ and k8s/

# Property-based tests of the HTTP API against its OpenAPI document (schemathesis).
scripts/api-fuzz.sh

#!/usr/bin/env bash
# Property-based API tests with schemathesis: requests generated from /openapi.json against a real
# ingress (its own database and broker prefix) fail the run on any 5xx, or on any answer whose
# status, content type or body the document does not describe. scripts/test.sh calls it after the
# Rust tests; it expects the binaries built and PostgreSQL and RabbitMQ up.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=$(scripts/py-tools.sh)

bin=target/debug
suffix=$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')
db=sy_fuzz_$suffix
prefix=sy-fuzz-$suffix.
admin=fuzz-admin-$suffix-token
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base=http://127.0.0.1:$port
log=$(mktemp -t switchyard-fuzz-XXXXXX.log)

export SWITCHYARD_DATABASE_URL=postgres://postgres@127.0.0.1:5432/$db
export SWITCHYARD_AMQP_URL=${SWITCHYARD_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
export SWITCHYARD_AMQP_PREFIX=$prefix
export SWITCHYARD_ADMIN_TOKEN=$admin
export SWITCHYARD_MASTER_KEY=$(head -c 32 /dev/urandom | base64)
export SWITCHYARD_INGRESS_LISTEN=127.0.0.1:$port
export SWITCHYARD_LOG=${SWITCHYARD_LOG:-warn}
export SWITCHYARD_LOG_FORMAT=text
# No worker runs here, so a trigger that waits for its response would hold each request until its
# timeout (30 s by default, past schemathesis' 10 s): cap every wait.
export SWITCHYARD_MAX_WAIT=2s
# Likewise an event stream of a run that never ends: end each response after 2 s.
export SWITCHYARD_MAX_STREAM=2s

pg="postgres://postgres@127.0.0.1:5432/postgres"
psql "$pg" -qc "CREATE DATABASE $db"
ingress_pid=
cleanup() {
  [ -n "$ingress_pid" ] && kill "$ingress_pid" 2>/dev/null && wait "$ingress_pid" 2>/dev/null || true
  psql "$pg" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
  $bin/topology-delete --prefix "$prefix" || true
}
trap cleanup EXIT

$bin/switchyard-ingress migrate
$bin/switchyard-ingress serve >"$log" 2>&1 &
ingress_pid=$!
for _ in $(seq 1 100); do
  curl -fsS "$base/readyz" 2>/dev/null | grep -q '"ready"' && break
  sleep 0.2
done

# A tenant with an echo agent, and a key for the runs API.
auth=(-H "Authorization: Bearer $admin" -H 'Content-Type: application/json')
curl -fsS "${auth[@]}" "$base/manage/tenants" -d '{"id":"fuzz","name":"Fuzz"}' >/dev/null
curl -fsS "${auth[@]}" "$base/manage/tenants/fuzz/projects" -d '{"id":"p","name":"P"}' >/dev/null
curl -fsS "${auth[@]}" "$base/manage/tenants/fuzz/projects/p/agents" \
  -d '{"id":"echo","name":"Echo","kind":"echo"}' >/dev/null
key=$(curl -fsS "${auth[@]}" "$base/manage/tenants/fuzz/api-keys" \
  -d '{"name":"fuzz","scopes":["trigger","runs:read","manage"],"rateLimitPerMinute":1000000}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["key"])')

checks=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance
run() {
  "$VENV/bin/schemathesis" run "$base/openapi.json" --checks "$checks" \
    --max-examples "${FUZZ_EXAMPLES:-30}" --seed "${FUZZ_SEED:-4242}" --workers 2 \
    --warnings off "$@"
}
status=0
echo "[fuzz] the management API, as the admin" >&2
run -H "Authorization: Bearer $admin" --include-path-regex '^/manage/' || status=1
echo "[fuzz] everything, as a tenant's key" >&2
run -H "Authorization: Bearer $key" || status=1
if [ "$status" -ne 0 ]; then
  echo "[fuzz] failed; the ingress log follows" >&2
  tail -n 50 "$log" >&2
fi
rm -f "$log"
exit "$status"

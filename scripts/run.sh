#!/usr/bin/env bash
# Starts the whole Switchyard stack on this machine and shows one run end to end:
# PostgreSQL and RabbitMQ (started or installed when missing), migrations, the ingress, two workers,
# the notifier, and a local webhook inbox that verifies and prints every delivery.
# Stop everything with Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

PORT=${SWITCHYARD_PORT:-8080}
INBOX_PORT=${INBOX_PORT:-9090}
DB=${SWITCHYARD_DB_NAME:-switchyard}
export SWITCHYARD_DATABASE_URL=${SWITCHYARD_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/$DB}
export SWITCHYARD_AMQP_URL=${SWITCHYARD_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
export SWITCHYARD_AMQP_PREFIX=${SWITCHYARD_AMQP_PREFIX:-switchyard.}
# Local development values; set your own outside this script.
export SWITCHYARD_ADMIN_TOKEN=${SWITCHYARD_ADMIN_TOKEN:-dev-admin-token-change-me}
export SWITCHYARD_WEBHOOK_SECRET=${SWITCHYARD_WEBHOOK_SECRET:-whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw}
export SWITCHYARD_LOG=${SWITCHYARD_LOG:-info}
export SWITCHYARD_LOG_FORMAT=${SWITCHYARD_LOG_FORMAT:-text}
export SWITCHYARD_INGRESS_LISTEN=127.0.0.1:$PORT
# The inbox is on loopback, which the egress guard refuses unless allow-listed.
export SWITCHYARD_EGRESS_ALLOW=${SWITCHYARD_EGRESS_ALLOW:-127.0.0.0/8}

# The master key seals credentials; it is made once and kept in .run/, so restarts can read them.
mkdir -p .run
if [ -z "${SWITCHYARD_MASTER_KEY:-}" ]; then
  [ -s .run/master.key ] || head -c 32 /dev/urandom | base64 >.run/master.key
  export SWITCHYARD_MASTER_KEY=$(cat .run/master.key)
fi

scripts/ensure-services.sh
echo "[run] building" >&2
cargo build --workspace --bins --quiet
bin=target/debug

psql "postgres://postgres@127.0.0.1:5432/postgres" -qtAc "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1 \
  || psql "postgres://postgres@127.0.0.1:5432/postgres" -qc "CREATE DATABASE $DB"
$bin/switchyard-ingress migrate

logs=.run/logs
mkdir -p "$logs"
pids=()
cleanup() {
  trap - EXIT INT TERM
  echo "[run] stopping" >&2
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

$bin/webhook-inbox --listen "127.0.0.1:$INBOX_PORT" &
pids+=($!)
$bin/switchyard-ingress serve >"$logs/ingress.log" 2>&1 &
pids+=($!)
# The worker and the notifier serve /metrics, /healthz and /readyz on ports of their own.
OPS_PORT=${OPS_PORT:-9101}
SWITCHYARD_OPS_LISTEN="127.0.0.1:$OPS_PORT" \
SWITCHYARD_WORKER_ID=worker-1 $bin/switchyard-worker serve >"$logs/worker-1.log" 2>&1 &
pids+=($!)
SWITCHYARD_OPS_LISTEN="127.0.0.1:$((OPS_PORT + 1))" \
SWITCHYARD_WORKER_ID=worker-2 $bin/switchyard-worker serve >"$logs/worker-2.log" 2>&1 &
pids+=($!)
SWITCHYARD_OPS_LISTEN="127.0.0.1:$((OPS_PORT + 2))" \
$bin/switchyard-notifier serve >"$logs/notifier.log" 2>&1 &
pids+=($!)

for _ in $(seq 1 100); do
  if curl -fsS "http://127.0.0.1:$PORT/readyz" 2>/dev/null | grep -q '"ready"'; then break; fi
  sleep 0.2
done
curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null || { echo "[run] the ingress is not ready; see $logs" >&2; exit 1; }

# Seed a demo tenant with the admin token (idempotent): a project, an echo agent, and an API key,
# made anew on each start (the old one is revoked, so a tenant never runs out of keys).
api=http://127.0.0.1:$PORT
admin=(-H "Authorization: Bearer $SWITCHYARD_ADMIN_TOKEN" -H 'Content-Type: application/json')
# Its webhooks are signed with the inbox's secret, so that the inbox verifies them.
curl -sS -o /dev/null "${admin[@]}" "$api/manage/tenants" \
  -d "{\"id\":\"demo\",\"name\":\"Demo\",\"webhookSecret\":\"$SWITCHYARD_WEBHOOK_SECRET\"}"
curl -sS -o /dev/null "${admin[@]}" "$api/manage/tenants/demo/projects" -d '{"id":"demo","name":"Demo project"}'
curl -sS -o /dev/null "${admin[@]}" "$api/manage/tenants/demo/projects/demo/agents" \
  -d '{"id":"echo","name":"Echo","kind":"echo"}'
if [ -s .run/demo.key-id ]; then
  curl -sS -o /dev/null -X DELETE "${admin[@]}" "$api/manage/tenants/demo/api-keys/$(cat .run/demo.key-id)"
fi
created=$(curl -fsS "${admin[@]}" "$api/manage/tenants/demo/api-keys" \
  -d '{"name":"quickstart","scopes":["trigger","runs:read","manage"]}')
API_KEY=$(printf '%s' "$created" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["key"])')
printf '%s' "$created" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["id"])' >.run/demo.key-id
printf '%s\n' "$API_KEY" >.run/demo.key

demo="curl -sS http://127.0.0.1:$PORT/v1/runs \\
  -H 'Authorization: Bearer $API_KEY' -H 'Content-Type: application/json' \\
  -d '{\"agentId\":\"echo\",\"message\":\"Hello from Switchyard\",\"webhookUrl\":\"http://127.0.0.1:$INBOX_PORT/hook\",\"wait\":10}'"

echo
echo "Switchyard is up: ingress http://127.0.0.1:$PORT, 2 workers, notifier, inbox :$INBOX_PORT (logs in $logs)."
echo "Tenant 'demo' has an echo agent and an API key (saved in .run/demo.key): $API_KEY"
echo "API docs: http://127.0.0.1:$PORT/docs/  (admin token: \$SWITCHYARD_ADMIN_TOKEN)"
echo "Console: http://127.0.0.1:$PORT/console  (sign in with the key above)"
echo "Metrics: http://127.0.0.1:$PORT/metrics, workers :$OPS_PORT and :$((OPS_PORT + 1)), notifier :$((OPS_PORT + 2))"
echo "A first run, end to end: the completed run as curl shows it, and its webhook as the inbox verifies it (in either order):"
echo
bash -c "$demo"
echo
sleep 1
echo
echo "Paste this to run another:"
echo
echo "$demo"
echo
echo "Ctrl-C stops everything."
wait

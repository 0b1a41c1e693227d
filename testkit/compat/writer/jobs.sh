# Writer's documented lines put together: the asynchronous endpoint, then the job poll, with the
# Authorization header and the request body verbatim. Prints the job, then the job as polled.
set -e
job=$(curl -sS -X POST 'https://api.writer.com/v1/agents/{agent_id}/blueprints/{blueprint_id}/jobs' \
  -H 'Authorization: Bearer <your_api_key>' \
  -H 'Content-Type: application/json' \
  -d '{
  "inputs": {
    "user_id": "123",
    "action": "process_order"
  }
}')
echo "$job"
job_id=$(printf '%s' "$job" | python3 -c 'import json, sys; print(json.load(sys.stdin)["job_id"])')
for _ in $(seq 1 100); do
  polled=$(curl -sS 'https://api.writer.com/v1/agents/jobs/'"$job_id" \
    -H 'Authorization: Bearer <your_api_key>')
  case "$polled" in *'"status":"in_progress"'*) sleep 0.2 ;; *) break ;; esac
done
echo "$polled"

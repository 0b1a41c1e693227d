# Writer's seed (writer-api-trigger.md) has no code sample; this is its documented lines put
# together: the synchronous endpoint, the Authorization header and the request body, verbatim.
curl -sS -N -X POST 'https://api.writer.com/v1/agents/{agent_id}/blueprints/{blueprint_id}' \
  -H 'Authorization: Bearer <your_api_key>' \
  -H 'Content-Type: application/json' \
  -d '{
  "inputs": {
    "user_id": "123",
    "action": "process_order"
  }
}'

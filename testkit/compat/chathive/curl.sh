# ChatHive's own example, verbatim from its API trigger docs (the host, project, key and API key
# are replaced by the test).
curl -X POST "https://api.chathive.app/api/v1.0/project/:projectId/trigger/:key" \
  -H "Content-Type: application/json" \
  -H "x-api-key: YOUR_API_KEY" \
  -d '{ "key": "value" }'

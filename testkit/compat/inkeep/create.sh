# Inkeep's own `create` example, verbatim from its triggers management API docs (the page ran its
# line continuations together; they are put back). The test adds the key and replaces the ids.
curl -X POST "https://api.pilot.inkeep.com/manage/tenants/tenant_123/projects/project_456/agents/agent_789/triggers" \
  -H "Content-Type: application/json" \
  -d '{    "name": "string"  }'

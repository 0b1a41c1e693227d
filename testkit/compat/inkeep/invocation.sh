# Inkeep's own `invocation` example, verbatim from its triggers management API docs (the page ran its
# line continuations together; they are put back). The test adds the key and replaces the ids.
curl -X GET "https://api.pilot.inkeep.com/manage/tenants/tenant_123/projects/project_456/agents/agent_789/triggers/resource_789/invocations/string"

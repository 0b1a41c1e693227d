-- A tenant's runs, newest first (the agent-app runs API lists them, optionally by status).
CREATE INDEX runs_by_tenant ON runs (tenant_id, id DESC);

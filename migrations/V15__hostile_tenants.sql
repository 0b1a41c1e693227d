-- Bounds one tenant (or one key) may not pass.

-- The most webhook endpoints a tenant may hold; NULL means the deployment's default
-- (SWITCHYARD_MAX_WEBHOOK_ENDPOINTS).
ALTER TABLE tenants ADD COLUMN max_webhook_endpoints integer
    CHECK (max_webhook_endpoints BETWEEN 1 AND 1000);

-- An Idempotency-Key belongs to whoever sent it (an API key, or a trigger's inbound webhooks),
-- not to the whole tenant: one project's key can neither pre-claim another's keys nor read
-- another caller's run through a replay. Rows from before this migration keep principal ''.
ALTER TABLE idempotency_keys ADD COLUMN principal text NOT NULL DEFAULT '';
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_pkey;
ALTER TABLE idempotency_keys ADD PRIMARY KEY (tenant_id, principal, key);

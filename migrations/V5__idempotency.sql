-- Idempotency keys (`Idempotency-Key` on every create route) and the duplicate check of triggers
-- with `ignoreDuplicates`. Each row points at the run it started; an expired row can be taken over.

CREATE TABLE idempotency_keys (
    tenant_id     text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    key           text NOT NULL,
    -- SHA-256 of the route and the canonical body: the same key with another request is a 422.
    request_hash  bytea NOT NULL,
    run_id        uuid NOT NULL,
    expires_at    timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, key)
);

CREATE TABLE trigger_duplicates (
    tenant_id     text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    trigger_id    text NOT NULL,
    -- SHA-256 of the canonical JSON body.
    body_hash     bytea NOT NULL,
    run_id        uuid NOT NULL,
    expires_at    timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, trigger_id, body_hash)
);

CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);
CREATE INDEX trigger_duplicates_expiry ON trigger_duplicates (expires_at);

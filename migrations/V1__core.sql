-- Switchyard core schema. Every table that holds tenant data carries tenant_id,
-- and every query filters on it.

CREATE TABLE tenants (
    id          text PRIMARY KEY CHECK (id ~ '^[a-zA-Z0-9_.-]{1,255}$'),
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE projects (
    tenant_id   text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    id          text NOT NULL CHECK (id ~ '^[a-zA-Z0-9_.-]{1,255}$'),
    name        text NOT NULL,
    description text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);

-- An agent id is unique within its tenant, so `agentId` alone names it on the runs API.
CREATE TABLE agents (
    tenant_id     text NOT NULL,
    id            text NOT NULL CHECK (id ~ '^[a-zA-Z0-9_.-]{1,255}$'),
    project_id    text NOT NULL,
    name          text NOT NULL,
    kind          text NOT NULL CHECK (kind IN ('echo', 'openai', 'http')),
    config        jsonb NOT NULL DEFAULT '{}'::jsonb,
    max_attempts  integer NOT NULL DEFAULT 3 CHECK (max_attempts BETWEEN 1 AND 100),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, project_id) REFERENCES projects (tenant_id, id) ON DELETE CASCADE
);

CREATE TABLE runs (
    id                uuid PRIMARY KEY,
    tenant_id         text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    project_id        text NOT NULL,
    agent_id          text NOT NULL,
    status            text NOT NULL CHECK (status IN
                        ('queued', 'running', 'completed', 'failed', 'cancelled', 'timed_out', 'expired')),
    message           text,
    inputs            jsonb,
    metadata          jsonb NOT NULL DEFAULT '{}'::jsonb,
    webhook_url       text,
    result            jsonb,
    error_code        text,
    error_message     text,
    attempt           integer NOT NULL DEFAULT 0,
    max_attempts      integer NOT NULL,
    lease_owner       text,
    lease_expires_at  timestamptz,
    -- When the run was last handed to the broker (or would have been): the sweeper
    -- republishes queued runs whose enqueued_at is older than its threshold.
    enqueued_at       timestamptz NOT NULL DEFAULT now(),
    created_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    completed_at      timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (tenant_id, agent_id) REFERENCES agents (tenant_id, id)
);

-- Only the indexes the current queries need: every index is paid for on each of the three
-- writes a run takes. Listing runs by tenant adds its index with the endpoint that needs it.
CREATE INDEX runs_queued_sweep ON runs (enqueued_at) WHERE status = 'queued';
CREATE INDEX runs_running_lease ON runs (lease_expires_at) WHERE status = 'running';

CREATE TABLE run_events (
    run_id      uuid NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    seq         bigint NOT NULL,
    kind        text NOT NULL,
    data        jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, seq)
);

CREATE TABLE deliveries (
    id               uuid PRIMARY KEY,
    tenant_id        text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    run_id           uuid NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    event_type       text NOT NULL,
    url              text NOT NULL,
    -- The webhook-id header: stable across every attempt of this delivery.
    message_id       text NOT NULL,
    payload          jsonb NOT NULL,
    status           text NOT NULL CHECK (status IN ('pending', 'sending', 'delivered', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    lease_expires_at timestamptz,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (run_id, event_type, url)
);

CREATE INDEX deliveries_pending_sweep ON deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_sending_lease ON deliveries (lease_expires_at) WHERE status = 'sending';

CREATE TABLE delivery_attempts (
    delivery_id      uuid NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    tenant_id        text NOT NULL,
    attempt          integer NOT NULL,
    response_status  integer,
    response_body    text,
    error            text,
    latency_ms       integer NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (delivery_id, attempt)
);

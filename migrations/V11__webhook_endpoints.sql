-- Tenant webhook endpoints: each receives the events its filters select, signed with its own
-- secret (sealed with the master key, like credentials). A rotation keeps the previous secret
-- valid until `previous_secret_expires_at`; while it is, both signatures are sent.
CREATE TABLE webhook_endpoints (
    tenant_id                  text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    id                         text NOT NULL,
    url                        text NOT NULL,
    description                text,
    -- Event types delivered; '*' stands for every type.
    event_types                text[] NOT NULL,
    -- Only events of this project, when set.
    project_id                 text,
    enabled                    boolean NOT NULL DEFAULT true,
    disabled_at                timestamptz,
    disabled_reason            text,
    -- Send ids and a URL only, never the whole run.
    thin                       boolean NOT NULL DEFAULT false,
    -- Deliveries per second at most, across every notifier.
    rate_limit                 integer CHECK (rate_limit BETWEEN 1 AND 10000),
    -- Attempts in flight at once at most, across every notifier.
    max_concurrency            integer NOT NULL DEFAULT 10 CHECK (max_concurrency BETWEEN 1 AND 1000),
    -- The rate limit's state (GCRA): when the next delivery is due at the earliest.
    rate_tat                   timestamptz,
    secret                     bytea NOT NULL,
    previous_secret            bytea,
    previous_secret_expires_at timestamptz,
    -- Since when every attempt has failed (NULL after a success): the auto-disable window.
    failing_since              timestamptz,
    created_at                 timestamptz NOT NULL DEFAULT now(),
    updated_at                 timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);

CREATE INDEX webhook_endpoints_enabled ON webhook_endpoints (tenant_id) WHERE enabled;

-- What happened to an endpoint (`endpoint.disabled`), for the operator.
CREATE TABLE webhook_endpoint_events (
    id          uuid PRIMARY KEY,
    tenant_id   text NOT NULL,
    endpoint_id text NOT NULL,
    type        text NOT NULL,
    reason      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (tenant_id, endpoint_id) REFERENCES webhook_endpoints ON DELETE CASCADE
);

CREATE INDEX webhook_endpoint_events_by_endpoint
    ON webhook_endpoint_events (tenant_id, endpoint_id, created_at);

-- A delivery is of a run's event, of a dropped invocation, or of an endpoint's event: `subject`
-- names that thing, and an endpoint gets one delivery per (subject, event type). A delivery
-- without an endpoint goes to a run's own webhookUrl, one per (run, event type, url) as before.
ALTER TABLE deliveries ALTER COLUMN run_id DROP NOT NULL;
ALTER TABLE deliveries ADD COLUMN invocation_id uuid;
ALTER TABLE deliveries ADD COLUMN endpoint_id text;
ALTER TABLE deliveries ADD COLUMN subject text;
UPDATE deliveries SET subject = run_id::text;
ALTER TABLE deliveries ALTER COLUMN subject SET NOT NULL;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_endpoint_fkey
    FOREIGN KEY (tenant_id, endpoint_id) REFERENCES webhook_endpoints ON DELETE CASCADE;
ALTER TABLE deliveries DROP CONSTRAINT deliveries_run_id_event_type_url_key;
CREATE UNIQUE INDEX deliveries_direct ON deliveries (run_id, event_type, url) WHERE endpoint_id IS NULL;
CREATE UNIQUE INDEX deliveries_per_endpoint ON deliveries (tenant_id, endpoint_id, subject, event_type)
    WHERE endpoint_id IS NOT NULL;
-- The claim counts an endpoint's attempts in flight.
CREATE INDEX deliveries_sending_by_endpoint ON deliveries (tenant_id, endpoint_id)
    WHERE status = 'sending' AND endpoint_id IS NOT NULL;
-- The operator lists and recovers an endpoint's deliveries.
CREATE INDEX deliveries_by_endpoint ON deliveries (tenant_id, endpoint_id, created_at)
    WHERE endpoint_id IS NOT NULL;

-- A tenant's default signing secret, for deliveries to its runs' own webhookUrl (sealed like the
-- endpoints'). NULL: the deployment's SWITCHYARD_WEBHOOK_SECRET (tenants made before this).
ALTER TABLE tenants ADD COLUMN webhook_secret bytea;
ALTER TABLE tenants ADD COLUMN previous_webhook_secret bytea;
ALTER TABLE tenants ADD COLUMN previous_webhook_secret_expires_at timestamptz;

-- A delivery whose endpoint had as many attempts in flight as it allows is parked: it waits,
-- without a message, until an attempt to that endpoint ends and wakes it (or, should no wake-up
-- come, until its next_attempt_at passes and the sweeper republishes it).
ALTER TABLE deliveries ADD COLUMN parked_at timestamptz;
CREATE INDEX deliveries_parked ON deliveries (tenant_id, endpoint_id, id)
    WHERE status = 'pending' AND parked_at IS NOT NULL;

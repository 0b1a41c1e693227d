-- Trigger invocations. An accepted invocation is its run: the run row records the trigger, the
-- environment and the session, so accepting stays one INSERT. Invocations that did not become a
-- run (dropped by a filter or as a duplicate, rejected by the schema or a signature) are rows here.

ALTER TABLE runs ADD COLUMN trigger_id text;
ALTER TABLE runs ADD COLUMN environment text;
ALTER TABLE runs ADD COLUMN session_id text;
-- Placeholders of the trigger's messageTemplate that found nothing in the body (rendered empty).
ALTER TABLE runs ADD COLUMN missing_placeholders text[];

CREATE INDEX runs_by_trigger ON runs (tenant_id, trigger_id, created_at) WHERE trigger_id IS NOT NULL;

CREATE TABLE invocations (
    id               uuid PRIMARY KEY,
    tenant_id        text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    project_id       text NOT NULL,
    agent_id         text NOT NULL,
    trigger_id       text NOT NULL,
    outcome          text NOT NULL CHECK (outcome IN ('dropped', 'rejected')),
    reason           text NOT NULL,
    environment      text,
    session_id       text,
    request_payload  jsonb,
    -- For a duplicate: the run that the identical earlier body started.
    duplicate_of     uuid,
    created_at       timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX invocations_by_trigger ON invocations (tenant_id, trigger_id, created_at);

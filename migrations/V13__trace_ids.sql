-- The OpenTelemetry trace each run belongs to (32 hex digits), set when the ingress accepted it
-- while tracing was on; GET /v1/runs/{id} shows it as traceId.
ALTER TABLE runs ADD COLUMN trace_id text;
-- The accepting request's span, as a W3C traceparent: a run published again later (the next run
-- of a session or of a limited agent, a reaped run) is published in its own trace.
ALTER TABLE runs ADD COLUMN traceparent text;
-- For switchyard_deliveries_oldest_pending_seconds.
CREATE INDEX deliveries_pending_age ON deliveries (created_at) WHERE status = 'pending';

-- The OpenTelemetry trace each run belongs to (32 hex digits), set when the ingress accepted it
-- while tracing was on; GET /v1/runs/{id} shows it as traceId.
ALTER TABLE runs ADD COLUMN trace_id text;

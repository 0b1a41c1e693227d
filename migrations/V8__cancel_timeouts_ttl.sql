-- Cancel, timeouts and queue TTL.

-- Set when a cancel reaches a running run: the worker holding it stops it (told through the
-- control exchange, or by its next heartbeat), and a run handed back or reaped with it set ends
-- `cancelled` instead of going back to the queue.
ALTER TABLE runs ADD COLUMN cancel_requested_at timestamptz;

-- A run still queued at expires_at (`ttl` on create) never starts: it ends `expired`.
ALTER TABLE runs ADD COLUMN expires_at timestamptz;
CREATE INDEX runs_queued_expiry ON runs (expires_at) WHERE status = 'queued' AND expires_at IS NOT NULL;

-- How long one execution of a run may take before it ends `timed_out`.
ALTER TABLE agents ADD COLUMN timeout_seconds integer NOT NULL DEFAULT 900
    CHECK (timeout_seconds BETWEEN 1 AND 86400);

-- Debounce per trigger (issue 17, item 7): calls with the same key within a period become one run.
ALTER TABLE triggers ADD COLUMN debounce jsonb;

-- A trailing debounce's run waits out of line until `not_before`, when the maintenance loop puts
-- it in line (`runs::release_debounced`); until then later calls replace its body.
ALTER TABLE runs ADD COLUMN not_before timestamptz;
ALTER TABLE runs DROP CONSTRAINT runs_waiting_check;
ALTER TABLE runs ADD CONSTRAINT runs_waiting_check
    CHECK (waiting IN ('session', 'agent', 'tenant', 'key', 'debounce'));
CREATE INDEX runs_debounced ON runs (not_before) WHERE status = 'queued' AND waiting = 'debounce';

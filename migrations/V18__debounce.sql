-- Debounce per trigger (issue 17, item 7): calls with the same key within a period become one run.
ALTER TABLE triggers ADD COLUMN debounce jsonb;

-- A trailing debounce's run waits out of line until `not_before`, when the maintenance loop puts
-- it in line (`runs::release_debounced`); until then later calls replace its body.
ALTER TABLE runs ADD COLUMN not_before timestamptz;
ALTER TABLE runs DROP CONSTRAINT runs_waiting_check;
ALTER TABLE runs ADD CONSTRAINT runs_waiting_check
    CHECK (waiting IN ('session', 'agent', 'tenant', 'key', 'debounce'));
CREATE INDEX runs_debounced ON runs (not_before) WHERE status = 'queued' AND waiting = 'debounce';

-- The put-back of V16, which now leaves a debounced run out of line until its period ends, whoever
-- asks (the session's next run, a sweep): only `runs::release_debounced` releases it early enough.
CREATE OR REPLACE FUNCTION switchyard_ready(ids uuid[]) RETURNS TABLE (id uuid, traceparent text)
LANGUAGE sql AS $$
    -- Locked first, on what no pick changes: a pick that is sending one of them out of line
    -- holds it, and the lock returns the row as that pick committed it, mark included (a plain
    -- read would miss the mark, and the run would wait for the sweeper). Only then filtered.
    WITH locked AS (
        SELECT r.id, r.tenant_id, r.priority, r.waiting, r.not_before FROM runs r
        WHERE r.id = ANY (ids) AND r.status = 'queued'
        ORDER BY r.id FOR UPDATE),
    chosen AS (
        SELECT l.id, l.tenant_id,
               row_number() OVER (PARTITION BY l.tenant_id ORDER BY l.priority DESC, l.id) AS k
        FROM locked l WHERE l.waiting IS NOT NULL
          AND NOT (l.waiting = 'debounce' AND l.not_before > now())),
    counts AS (
        SELECT c.tenant_id, count(*) AS n, max(t.weight) AS weight
        FROM chosen c JOIN tenants t ON t.id = c.tenant_id GROUP BY c.tenant_id),
    head AS (SELECT switchyard_now_turn() AS v),
    turns AS (
        INSERT INTO tenant_turns AS tt (tenant_id, finish)
        SELECT c.tenant_id, h.v + c.n::float8 / c.weight FROM counts c CROSS JOIN head h
        ORDER BY c.tenant_id
        ON CONFLICT (tenant_id) DO UPDATE
            SET finish = greatest(tt.finish, (SELECT v FROM head))
                         + (SELECT c.n::float8 / c.weight FROM counts c WHERE c.tenant_id = tt.tenant_id)
        RETURNING tt.tenant_id, tt.finish)
    UPDATE runs r SET waiting = NULL, enqueued_at = now(),
           turn = tu.finish - (cn.n - c.k + 1)::float8 / cn.weight
    FROM chosen c JOIN counts cn ON cn.tenant_id = c.tenant_id JOIN turns tu ON tu.tenant_id = c.tenant_id
    WHERE r.id = c.id AND r.status = 'queued'
    RETURNING r.id, r.traceparent
$$;

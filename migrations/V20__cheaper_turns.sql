-- Cheaper scheduling state per accepted run (issue 18, item 3).
--
-- `switchyard_now_turn` was a SQL function with sub-selects: PostgreSQL does not inline it and
-- plans a non-inlined SQL function's statement on every call, once per accept statement. As
-- PL/pgSQL its statement's plan is kept for the session.
CREATE OR REPLACE FUNCTION switchyard_now_turn() RETURNS double precision
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN coalesce(
        (SELECT max(r.turn) FROM runs r WHERE r.status = 'running'),
        (SELECT l.turn FROM runs l WHERE l.status = 'queued' AND l.waiting IS NULL
         ORDER BY l.turn, l.id LIMIT 1),
        (SELECT max(f.finish) FROM tenant_turns f),
        0);
END
$$;

-- Every accept statement moves its tenant's `finish` (and a key's). With an index on the column,
-- no such update could be HOT: each left a dead row version and a new index entry behind, in a
-- table that every accept of the tenant reads. Without it, and with room left on each page, the
-- updates are HOT and their dead versions are pruned in place. `max(finish)` is only read when
-- nothing runs and nothing waits in line (an idle system), by a scan of one row per tenant.
DROP INDEX tenant_turns_by_finish;
ALTER TABLE tenant_turns SET (fillfactor = 50);
ALTER TABLE key_turns SET (fillfactor = 50);

-- Takes for many calls at once, in one statement (the ingress batches concurrent calls): element
-- `i` is a bucket (`names[i]`, a limit of `per_minute[i]`) of call `request[i]`, a call's buckets
-- being contiguous and in its own order. Calls are taken in order, each all or none, against the
-- buckets as the calls before it left them. One row per call, in order, with `refused` (the
-- 1-based index within the call of the first bucket that had no room, else 0), `wait_ms`,
-- `remaining` and `reset_ms`: calls the first bucket still admits at once, and milliseconds
-- until it is full. Every statement works on one bucket by its key, so plans are kept.
CREATE FUNCTION switchyard_take_many(request integer[], names text[], per_minute integer[])
RETURNS TABLE (req integer, refused integer, wait_ms bigint, remaining integer, reset_ms bigint)
LANGUAGE plpgsql AS $$
DECLARE
    at_ timestamptz := clock_timestamp();
    n integer := coalesce(array_length(names, 1), 0);
    keys text[];
    tats timestamptz[] := '{}';
    trial timestamptz[];
    bucket text;
    held timestamptz;
    i integer := 1;
    j integer;
    last_ integer;
    pos integer;
    step interval;
    window_ interval;
    next_ timestamptz;
BEGIN
    IF n = 0 THEN
        RETURN;
    END IF;
    -- Every bucket of the batch, created if missing and locked in name order.
    keys := (SELECT array_agg(DISTINCT x ORDER BY x) FROM unnest(names) AS x);
    FOREACH bucket IN ARRAY keys LOOP
        SELECT b.tat INTO held FROM rate_buckets b WHERE b.name = bucket FOR UPDATE;
        IF NOT FOUND THEN
            INSERT INTO rate_buckets (name, tat) VALUES (bucket, at_) ON CONFLICT (name) DO NOTHING;
            SELECT b.tat INTO held FROM rate_buckets b WHERE b.name = bucket FOR UPDATE;
        END IF;
        tats := tats || held;
    END LOOP;
    WHILE i <= n LOOP
        req := request[i];
        last_ := i;
        WHILE last_ < n AND request[last_ + 1] = req LOOP
            last_ := last_ + 1;
        END LOOP;
        refused := 0; wait_ms := 0; remaining := 0; reset_ms := 0;
        trial := tats;
        FOR j IN i .. last_ LOOP
            pos := array_position(keys, names[j]);
            step := make_interval(secs => 60.0 / greatest(per_minute[j], 1));
            window_ := step * greatest(per_minute[j], 1);
            next_ := greatest(trial[pos], at_) + step;
            IF next_ - at_ > window_ THEN
                refused := j - i + 1;
                wait_ms := ceil(extract(epoch FROM (next_ - at_ - window_)) * 1000);
                remaining := 0; reset_ms := 0;
                EXIT;
            END IF;
            trial[pos] := next_;
            IF j = i THEN
                remaining := floor(extract(epoch FROM (window_ - (next_ - at_)))
                                   / extract(epoch FROM step));
                reset_ms := ceil(extract(epoch FROM (next_ - at_)) * 1000);
            END IF;
        END LOOP;
        IF refused = 0 THEN
            tats := trial;
        END IF;
        RETURN NEXT;
        i := last_ + 1;
    END LOOP;
    FOR j IN 1 .. array_length(keys, 1) LOOP
        UPDATE rate_buckets b SET tat = tats[j] WHERE b.name = keys[j] AND b.tat IS DISTINCT FROM tats[j];
    END LOOP;
END
$$;

-- `switchyard_take` (one call), as ingress replicas older than this migration still call it: one
-- call of `switchyard_take_many`. Its V17 statements were set-based (`name = ANY (names)`, an
-- UPDATE joined to `unnest`), planned again on every call, and their generic plan scanned the
-- whole table.
CREATE OR REPLACE FUNCTION switchyard_take(names text[], per_minute integer[],
                                OUT refused integer, OUT wait_ms bigint,
                                OUT remaining integer, OUT reset_ms bigint)
LANGUAGE plpgsql AS $$
BEGIN
    SELECT t.refused, t.wait_ms, t.remaining, t.reset_ms INTO refused, wait_ms, remaining, reset_ms
    FROM switchyard_take_many(array_fill(1, ARRAY[coalesce(array_length(names, 1), 0)]),
                              names, per_minute) AS t;
    IF NOT FOUND THEN
        refused := 0; wait_ms := 0; remaining := 0; reset_ms := 0;
    END IF;
END
$$;

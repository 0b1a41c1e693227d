-- Rate limits shared by every ingress replica (issue 17, item 6).
--
-- One row per limited thing (an API key, a tenant, a trigger), holding the GCRA's theoretical
-- arrival time: the moment the bucket would be full again. A limit of N a minute emits one call
-- every 60/N s and admits a burst of N. The table is UNLOGGED: its writes skip the WAL, and a
-- crash of PostgreSQL empties it, which only hands every caller a full burst again.
CREATE UNLOGGED TABLE rate_buckets (
    name text PRIMARY KEY,
    tat  timestamptz NOT NULL
);

-- Takes one call from each of `names` (limits of `per_minute[i]` a minute, bursts of the same),
-- all or none. `refused` is 0 when every bucket had room, else the (1-based) index of the first
-- that had none, with `wait_ms` until it has. `remaining` and `reset_ms` describe the first
-- bucket after the take: calls it still admits at once, and milliseconds until it is full.
-- Rows are created and then locked in name order, so two takes never deadlock. PostgreSQL's clock
-- decides, so replicas with skewed clocks agree.
CREATE FUNCTION switchyard_take(names text[], per_minute integer[],
                                OUT refused integer, OUT wait_ms bigint,
                                OUT remaining integer, OUT reset_ms bigint)
LANGUAGE plpgsql AS $$
DECLARE
    at_ timestamptz := clock_timestamp();
    n integer := coalesce(array_length(names, 1), 0);
    tats timestamptz[] := '{}';
    i integer;
    held timestamptz;
    step interval;
    window_ interval;
    next_ timestamptz;
BEGIN
    refused := 0; wait_ms := 0; remaining := 0; reset_ms := 0;
    IF n = 0 THEN
        RETURN;
    END IF;
    INSERT INTO rate_buckets (name, tat)
    SELECT x, at_ FROM unnest(names) AS x ORDER BY x
    ON CONFLICT (name) DO NOTHING;
    PERFORM 1 FROM rate_buckets WHERE name = ANY (names) ORDER BY name FOR UPDATE;
    FOR i IN 1 .. n LOOP
        SELECT tat INTO held FROM rate_buckets WHERE name = names[i];
        step := make_interval(secs => 60.0 / greatest(per_minute[i], 1));
        window_ := step * greatest(per_minute[i], 1);
        next_ := greatest(held, at_) + step;
        IF next_ - at_ > window_ THEN
            refused := i;
            wait_ms := ceil(extract(epoch FROM (next_ - at_ - window_)) * 1000);
            RETURN;
        END IF;
        tats := tats || next_;
        IF i = 1 THEN
            remaining := floor(extract(epoch FROM (window_ - (next_ - at_)))
                               / extract(epoch FROM step));
            reset_ms := ceil(extract(epoch FROM (next_ - at_)) * 1000);
        END IF;
    END LOOP;
    UPDATE rate_buckets AS b SET tat = u.tat
    FROM unnest(names, tats) AS u (name, tat)
    WHERE b.name = u.name;
END
$$;

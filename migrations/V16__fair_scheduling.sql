-- Fair scheduling across tenants (ARCHITECTURE.md, "The scheduler").
--
-- Every queued run has a `turn`: its place in the line that workers start runs from. Turns are
-- handed out when a run is accepted, start-time fair queueing style: a tenant's runs are spaced
-- 1/weight apart, after the tenant's last turn or the head of the line, whichever is later. So a
-- tenant that floods the line spreads its runs far ahead, and a tenant that arrives later is
-- placed near the head, between them. A worker takes the run at the head; within the head's
-- tenant the run that starts is the tenant's best (priority, then acceptance order), which takes
-- the head's turn. Nothing of this lives outside these rows: a crash of a worker or the broker
-- loses no scheduling state.

-- Set by the admin: the tenant's share of the line (weight 2 starts twice the runs of weight 1
-- when both wait), the most runs it may have running, and the most it may have queued.
ALTER TABLE tenants ADD COLUMN weight integer NOT NULL DEFAULT 1 CHECK (weight BETWEEN 1 AND 100);
ALTER TABLE tenants ADD COLUMN max_running integer CHECK (max_running BETWEEN 1 AND 100000);
ALTER TABLE tenants ADD COLUMN max_queued integer CHECK (max_queued BETWEEN 1 AND 10000000);

-- The last turn handed to each tenant's runs (the "finish tag").
CREATE TABLE tenant_turns (
    tenant_id text PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    finish    double precision NOT NULL DEFAULT 0
);
CREATE INDEX tenant_turns_by_finish ON tenant_turns (finish);

-- 0 for a run recorded without one (by an ingress older than this migration, during a rolling
-- deploy): the front of the line, rather than never.
ALTER TABLE runs ADD COLUMN turn double precision NOT NULL DEFAULT 0;
-- Higher starts first within the tenant's share.
ALTER TABLE runs ADD COLUMN priority integer NOT NULL DEFAULT 0 CHECK (priority BETWEEN 0 AND 100);
-- NULL: in line. Otherwise what the queued run waits for, out of line, so that it holds up no
-- other run: its session's earlier run, a slot of its agent, its tenant's running quota, or room
-- under its concurrency key's cap.
-- Whoever frees that puts it back in line (with its turn) and publishes it.
ALTER TABLE runs ADD COLUMN waiting text CHECK (waiting IN ('session', 'agent', 'tenant', 'key'));

-- An agent's concurrency key: `sessionId`, or a JSON pointer into the run's inputs (`/inputs/…`,
-- a trigger's body) or metadata (`/metadata/…`), and the most runs of one key running at once.
ALTER TABLE agents ADD COLUMN concurrency_key text CHECK (length(concurrency_key) <= 256);
ALTER TABLE agents ADD COLUMN max_concurrency_per_key integer
    CHECK (max_concurrency_per_key BETWEEN 1 AND 1000);
-- The priority of the runs an agent or a trigger starts, when the caller gives none.
ALTER TABLE agents ADD COLUMN priority integer NOT NULL DEFAULT 0 CHECK (priority BETWEEN 0 AND 100);
ALTER TABLE triggers ADD COLUMN priority integer CHECK (priority BETWEEN 0 AND 100);
-- The run's key (at most 255 characters; a longer value is kept as its digest) and its cap, as
-- its agent named them when the run was accepted.
ALTER TABLE runs ADD COLUMN concurrency_key text;
ALTER TABLE runs ADD COLUMN key_cap integer;

-- A JSON pointer's path (`a/b~1c`, without the first slash) as `#>>` takes it.
CREATE FUNCTION switchyard_pointer_path(pointer text) RETURNS text[]
LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT coalesce(array_agg(replace(replace(p, '~1', '/'), '~0', '~') ORDER BY o), '{}')
    FROM unnest(string_to_array(pointer, '/')) WITH ORDINALITY AS u(p, o)
$$;

-- Runs accepted before this migration keep their order.
WITH ranked AS (
    SELECT id, row_number() OVER (PARTITION BY tenant_id ORDER BY id) AS n
    FROM runs WHERE status IN ('queued', 'running'))
UPDATE runs r SET turn = ranked.n FROM ranked WHERE r.id = ranked.id;
INSERT INTO tenant_turns (tenant_id, finish)
SELECT t.id, coalesce((SELECT max(r.turn) FROM runs r WHERE r.tenant_id = t.id), 0) FROM tenants t;

-- The line: the head is the first entry.
CREATE INDEX runs_in_line ON runs (turn, id) WHERE status = 'queued' AND waiting IS NULL;
-- A tenant's runs in line, best first.
CREATE INDEX runs_in_line_by_tenant ON runs (tenant_id, priority DESC, id)
    WHERE status = 'queued' AND waiting IS NULL;
-- A tenant's runs waiting out of line, best first (the next to put back).
CREATE INDEX runs_waiting_by_tenant ON runs (tenant_id, priority DESC, id)
    WHERE status = 'queued' AND waiting IS NOT NULL;
-- Runs waiting out of line, oldest look first (the sweeper of waits that are over).
CREATE INDEX runs_waiting_sweep ON runs (enqueued_at) WHERE status = 'queued' AND waiting IS NOT NULL;
-- The latest turn started: the line's virtual time.
CREATE INDEX runs_running_by_turn ON runs (turn) WHERE status = 'running';
-- A tenant's running runs, counted against its running quota.
CREATE INDEX runs_running_by_tenant ON runs (tenant_id) WHERE status = 'running';
-- A key's running runs, counted against its cap; a key's runs waiting for it, best first.
CREATE INDEX runs_running_by_key ON runs (tenant_id, agent_id, concurrency_key)
    WHERE status = 'running' AND concurrency_key IS NOT NULL;
CREATE INDEX runs_waiting_by_key ON runs (tenant_id, agent_id, concurrency_key, priority DESC, id)
    WHERE status = 'queued' AND waiting = 'key';
-- A limited agent's queued runs, best first.
DROP INDEX runs_queued_by_agent;
CREATE INDEX runs_queued_by_agent ON runs (tenant_id, agent_id, priority DESC, id) WHERE status = 'queued';

-- The line's virtual time, where a tenant with nothing waiting starts: the latest turn started
-- (the greatest turn running), else the head of the line, else the last turn handed out. Runs
-- start in turn order, so it moves forward as they start; turns handed out again to runs back
-- from a wait (`switchyard_ready`) never pull it back.
CREATE FUNCTION switchyard_now_turn() RETURNS double precision
LANGUAGE sql STABLE AS $$
    SELECT coalesce(
        (SELECT max(r.turn) FROM runs r WHERE r.status = 'running'),
        (SELECT l.turn FROM runs l WHERE l.status = 'queued' AND l.waiting IS NULL
         ORDER BY l.turn, l.id LIMIT 1),
        (SELECT max(f.finish) FROM tenant_turns f),
        0)
$$;

-- Puts back in line the runs among `ids` that wait out of line, each with a fresh turn of its
-- tenant's, as a new run of the tenant would get: a wait earns no credit, so a tenant whose
-- runs come back from waits (for its sessions, its slots, its quota) still gets only its share.
-- Returns the runs put back, to be published.
CREATE FUNCTION switchyard_ready(ids uuid[]) RETURNS TABLE (id uuid, traceparent text)
LANGUAGE sql AS $$
    -- Locked first, on what no pick changes: a pick that is sending one of them out of line
    -- holds it, and the lock returns the row as that pick committed it, mark included (a plain
    -- read would miss the mark, and the run would wait for the sweeper). Only then filtered.
    WITH locked AS (
        SELECT r.id, r.tenant_id, r.priority, r.waiting FROM runs r
        WHERE r.id = ANY (ids) AND r.status = 'queued'
        ORDER BY r.id FOR UPDATE),
    chosen AS (
        SELECT l.id, l.tenant_id,
               row_number() OVER (PARTITION BY l.tenant_id ORDER BY l.priority DESC, l.id) AS k
        FROM locked l WHERE l.waiting IS NOT NULL),
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

-- Picks up to `wanted` runs to start, in fair order, and locks them (the caller claims them in
-- the same transaction). Each step takes the head of the line, then its tenant's best run in
-- line; a run that cannot start now is taken out of line with what it waits for, and the step
-- goes on. A limited agent's slot is taken here. Never waits for a lock: a run another picker
-- holds is skipped, and an agent row or tenant quota another picker holds ends the pick early
-- (`cut_short`), so the caller hands its unused messages back rather than dropping them.
-- `passed`: runs this pick locked and left in line (a head whose tenant started another run, or
-- waited): another picker skipped them meanwhile, so the caller publishes them again.
CREATE FUNCTION switchyard_pick(wanted integer, OUT picked uuid[], OUT cut_short boolean,
                                OUT passed uuid[])
LANGUAGE plpgsql AS $$
DECLARE
    head record;
    best record;
    quota integer;
    running integer;
    steps integer := 0;
    tenants_picked text[] := '{}';
    keys_picked text[] := '{}';
    key_of text;
    heads uuid[] := '{}';
BEGIN
    picked := '{}';
    cut_short := false;
    passed := '{}';
    WHILE cardinality(picked) < wanted LOOP
        steps := steps + 1;
        IF steps > 2 * wanted + 32 THEN
            cut_short := true;
            EXIT;
        END IF;
        SELECT r.id, r.tenant_id, r.turn INTO head FROM runs r
        WHERE r.status = 'queued' AND r.waiting IS NULL AND r.id <> ALL (picked)
          AND (r.expires_at IS NULL OR r.expires_at > now())
        ORDER BY r.turn, r.id LIMIT 1 FOR UPDATE SKIP LOCKED;
        IF NOT FOUND THEN
            -- Runs in line that someone else holds (another pick, a put-back looking at them)
            -- may still need this turn: hand it back rather than spend it on nothing.
            IF EXISTS (SELECT 1 FROM runs r WHERE r.status = 'queued' AND r.waiting IS NULL
                         AND r.id <> ALL (picked) AND r.id <> ALL (heads)
                         AND (r.expires_at IS NULL OR r.expires_at > now())) THEN
                cut_short := true;
            END IF;
            EXIT;
        END IF;
        heads := heads || head.id;
        -- The head is locked by this transaction, so the tenant's best is at worst the head.
        SELECT r.id, r.turn, r.tenant_id, r.project_id, r.agent_id, r.session_id, r.priority,
               r.concurrency_key, r.key_cap
        INTO best FROM runs r
        WHERE r.tenant_id = head.tenant_id AND r.status = 'queued' AND r.waiting IS NULL
          AND r.id <> ALL (picked) AND (r.expires_at IS NULL OR r.expires_at > now())
        ORDER BY r.priority DESC, r.id LIMIT 1 FOR UPDATE SKIP LOCKED;
        IF NOT FOUND THEN
            cut_short := true;
            EXIT;
        END IF;

        -- The tenant's running quota: counted under a transaction lock of the tenant's, so
        -- pickers of one tenant see each other's claims. Past it, the tenant's runs leave the
        -- line (a bounded chunk per step); each run of the tenant that ends puts one back.
        SELECT t.max_running INTO quota FROM tenants t WHERE t.id = best.tenant_id;
        IF quota IS NOT NULL THEN
            IF NOT pg_try_advisory_xact_lock(16017, hashtext(best.tenant_id)) THEN
                cut_short := true;
                EXIT;
            END IF;
            SELECT count(*) INTO running FROM (
                SELECT 1 FROM runs x WHERE x.tenant_id = best.tenant_id AND x.status = 'running'
                LIMIT quota) c;
            running := running + coalesce(array_length(array_positions(tenants_picked, best.tenant_id), 1), 0);
            IF running >= quota THEN
                UPDATE runs SET waiting = 'tenant', enqueued_at = now() WHERE id IN (
                    SELECT x.id FROM runs x WHERE x.tenant_id = best.tenant_id
                      AND x.status = 'queued' AND x.waiting IS NULL AND x.id <> ALL (picked)
                    LIMIT 1000 FOR UPDATE SKIP LOCKED);
                CONTINUE;
            END IF;
        END IF;

        -- A session runs one run at a time, in acceptance order.
        IF best.session_id IS NOT NULL AND EXISTS (
            SELECT 1 FROM runs e WHERE e.tenant_id = best.tenant_id
              AND e.project_id = best.project_id AND e.session_id = best.session_id
              AND e.status IN ('queued', 'running') AND (e.status = 'running' OR e.id < best.id)) THEN
            UPDATE runs SET waiting = 'session', enqueued_at = now() WHERE id = best.id;
            CONTINUE;
        END IF;

        -- A concurrency key has at most its cap of runs running: counted under a transaction
        -- lock of the key's, like the tenant's quota.
        key_of := NULL;
        IF best.concurrency_key IS NOT NULL AND best.key_cap IS NOT NULL THEN
            key_of := best.tenant_id || '/' || best.agent_id || '/' || best.concurrency_key;
            IF NOT pg_try_advisory_xact_lock(16018, hashtext(key_of)) THEN
                cut_short := true;
                EXIT;
            END IF;
            SELECT count(*) INTO running FROM (
                SELECT 1 FROM runs x WHERE x.tenant_id = best.tenant_id AND x.agent_id = best.agent_id
                  AND x.concurrency_key = best.concurrency_key AND x.status = 'running'
                LIMIT best.key_cap) c;
            running := running + coalesce(array_length(array_positions(keys_picked, key_of), 1), 0);
            IF running >= best.key_cap THEN
                UPDATE runs SET waiting = 'key', enqueued_at = now() WHERE id = best.id;
                CONTINUE;
            END IF;
        END IF;

        -- A limited agent starts its best queued run (of those not waiting for something else)
        -- when it has a free slot, which the run takes now.
        IF EXISTS (SELECT 1 FROM agents a WHERE a.tenant_id = best.tenant_id
                     AND a.id = best.agent_id AND a.max_concurrency IS NOT NULL) THEN
            IF EXISTS (
                SELECT 1 FROM runs e WHERE e.tenant_id = best.tenant_id AND e.agent_id = best.agent_id
                  AND e.status = 'queued' AND e.id <> best.id AND e.id <> ALL (picked)
                  AND (e.waiting IS NULL OR e.waiting = 'agent')
                  AND (e.expires_at IS NULL OR e.expires_at > now())
                  AND (e.priority > best.priority OR (e.priority = best.priority AND e.id < best.id))) THEN
                UPDATE runs SET waiting = 'agent', enqueued_at = now() WHERE id = best.id;
                CONTINUE;
            END IF;
            PERFORM 1 FROM agents a WHERE a.tenant_id = best.tenant_id AND a.id = best.agent_id
            FOR NO KEY UPDATE SKIP LOCKED;
            IF NOT FOUND THEN
                cut_short := true;
                EXIT;
            END IF;
            UPDATE agents a SET running = a.running + 1
            WHERE a.tenant_id = best.tenant_id AND a.id = best.agent_id
              AND a.running < a.max_concurrency;
            IF NOT FOUND THEN
                UPDATE runs SET waiting = 'agent', enqueued_at = now() WHERE id = best.id;
                CONTINUE;
            END IF;
        END IF;

        -- The run starts on the head's turn; the head keeps the one the run had.
        IF best.id <> head.id THEN
            UPDATE runs SET turn = CASE WHEN id = head.id THEN best.turn ELSE head.turn END
            WHERE id IN (head.id, best.id);
        END IF;
        picked := picked || best.id;
        tenants_picked := tenants_picked || best.tenant_id;
        IF key_of IS NOT NULL THEN
            keys_picked := keys_picked || key_of;
        END IF;
    END LOOP;
    SELECT coalesce(array_agg(r.id), '{}') INTO passed FROM runs r
    WHERE r.id = ANY (heads) AND r.id <> ALL (picked) AND r.status = 'queued' AND r.waiting IS NULL;
END;
$$;

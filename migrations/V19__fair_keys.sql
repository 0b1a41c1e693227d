-- Fairness across concurrency keys within a tenant (issue 17, item 2).
--
-- Within a tenant's share, runs start by priority and then by `key_turn`: the tenant's turns are
-- handed out per concurrency key as they are per tenant, so a key that floods its agent spreads
-- its runs far down and another key's runs are placed between them (round robin by key). A
-- tenant's runs without a key are one more flow, whose next turn is a column of the tenant's
-- `tenant_turns` row, which the accept statement upserts anyway.
ALTER TABLE runs ADD COLUMN key_turn float8 NOT NULL DEFAULT 0;
UPDATE runs SET key_turn = turn WHERE status = 'queued';
ALTER TABLE tenant_turns ADD COLUMN plain_finish float8 NOT NULL DEFAULT 0;
UPDATE tenant_turns SET plain_finish = finish;

-- Each concurrency key's next turn.
CREATE TABLE key_turns (
    tenant_id text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    agent_id  text NOT NULL,
    key       text NOT NULL,
    finish    float8 NOT NULL,
    PRIMARY KEY (tenant_id, agent_id, key)
);

DROP INDEX runs_in_line_by_tenant;
-- A tenant's runs in line, best first: by priority, then by key turn.
CREATE INDEX runs_in_line_by_tenant ON runs (tenant_id, priority DESC, key_turn, id)
    WHERE status = 'queued' AND waiting IS NULL;

-- The pick of V16, whose tenant's best now orders by key turn after priority.
CREATE OR REPLACE FUNCTION switchyard_pick(wanted integer, OUT picked uuid[], OUT cut_short boolean,
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
        -- Best: by priority, then round robin across its concurrency keys (`key_turn`).
        SELECT r.id, r.turn, r.tenant_id, r.project_id, r.agent_id, r.session_id, r.priority,
               r.concurrency_key, r.key_cap
        INTO best FROM runs r
        WHERE r.tenant_id = head.tenant_id AND r.status = 'queued' AND r.waiting IS NULL
          AND r.id <> ALL (picked) AND (r.expires_at IS NULL OR r.expires_at > now())
        ORDER BY r.priority DESC, r.key_turn, r.id LIMIT 1 FOR UPDATE SKIP LOCKED;
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

-- A per-agent limit of concurrent runs, enforced across every worker. `running` counts the runs
-- of the agent that hold a slot: a claim takes one with a guarded UPDATE (`running <
-- max_concurrency`), and every move out of `running` gives it back in the same statement.
ALTER TABLE agents ADD COLUMN max_concurrency integer CHECK (max_concurrency BETWEEN 1 AND 1000);
ALTER TABLE agents ADD COLUMN running integer NOT NULL DEFAULT 0;

-- Whether the run took a slot of its agent when it was claimed.
ALTER TABLE runs ADD COLUMN holds_slot boolean NOT NULL DEFAULT false;

-- A limited agent's queued runs start in order: the first is the next.
CREATE INDEX runs_queued_by_agent ON runs (tenant_id, agent_id, id) WHERE status = 'queued';

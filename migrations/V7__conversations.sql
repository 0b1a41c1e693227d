-- Sessions. A run with a session_id belongs to the conversation of its tenant, project and
-- session: it sees the conversation's earlier messages, and the runs of one conversation execute
-- one at a time, in the order they were accepted.
--
-- The conversation row is the lock that serialises them: a worker claims a session run only by
-- setting active_run_id from NULL to the run (a guarded UPDATE, so two claims cannot both win),
-- and every transition out of `running` clears it again in the same statement.

CREATE TABLE conversations (
    id             uuid PRIMARY KEY,
    tenant_id      text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    project_id     text NOT NULL,
    session_id     text NOT NULL,
    -- The run of this conversation that is running now, if any.
    active_run_id  uuid,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, project_id, session_id)
);

CREATE TABLE messages (
    conversation_id  uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    seq              integer NOT NULL,
    tenant_id        text NOT NULL,
    run_id           uuid NOT NULL,
    role             text NOT NULL CHECK (role IN ('user', 'assistant')),
    content          text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (conversation_id, seq)
);

ALTER TABLE runs ADD COLUMN conversation_id uuid;

-- A session's live runs: the one running, and the queued ones in order (the next is the first).
CREATE INDEX runs_live_by_session ON runs (tenant_id, project_id, session_id, id)
    WHERE status IN ('queued', 'running') AND session_id IS NOT NULL;

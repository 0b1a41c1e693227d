-- Access control and the management API's resources: API keys, encrypted credentials and
-- triggers. Agents gain a description and a credential; runs outlive their agent.

ALTER TABLE tenants ADD COLUMN max_api_keys integer CHECK (max_api_keys BETWEEN 1 AND 1000);

ALTER TABLE agents ADD COLUMN description text;
ALTER TABLE agents ADD COLUMN credential_id text;
-- A trigger names its agent and its project; this lets one foreign key check both.
ALTER TABLE agents ADD CONSTRAINT agents_project_unique UNIQUE (tenant_id, project_id, id);

-- A run is history: deleting its agent must not delete or block it.
ALTER TABLE runs DROP CONSTRAINT runs_tenant_id_agent_id_fkey;

CREATE TABLE credentials (
    tenant_id   text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    id          text NOT NULL CHECK (id ~ '^[a-zA-Z0-9_.-]{1,255}$'),
    name        text NOT NULL,
    description text,
    kind        text NOT NULL CHECK (kind IN ('api_key', 'webhook_secret', 'signing_secret', 'generic')),
    -- XChaCha20-Poly1305 under the master key: a 24-byte nonce, then ciphertext and tag. The
    -- associated data binds it to (tenant_id, id), so a sealed value cannot be moved.
    sealed      bytea NOT NULL,
    key_version smallint NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, name)
);

-- No cascade: a credential in use cannot be deleted (409).
ALTER TABLE agents ADD CONSTRAINT agents_credential_fkey
    FOREIGN KEY (tenant_id, credential_id) REFERENCES credentials (tenant_id, id);

CREATE TABLE triggers (
    tenant_id            text NOT NULL,
    id                   text NOT NULL CHECK (id ~ '^[a-zA-Z0-9_.-]{1,255}$'),
    project_id           text NOT NULL,
    agent_id             text NOT NULL,
    name                 text NOT NULL CHECK (length(name) BETWEEN 1 AND 255),
    -- ChatHive's key: unique per project whatever its case (see triggers_key).
    key                  text NOT NULL CHECK (key ~ '^[a-zA-Z0-9_-]{1,255}$'),
    description          text,
    enabled              boolean NOT NULL DEFAULT true,
    input_schema         jsonb,
    message_template     text,
    output_transform     jsonb,
    filters              jsonb,
    authentication       jsonb,
    signature_verification jsonb,
    signing_secret_credential_id text,
    webhook_url          text,
    ignore_duplicates    boolean NOT NULL DEFAULT false,
    wait_for_response    boolean NOT NULL DEFAULT false,
    wait_timeout_seconds integer NOT NULL DEFAULT 30 CHECK (wait_timeout_seconds BETWEEN 1 AND 300),
    -- Bumped by every update: caches of compiled schemas key on (id, version).
    version              integer NOT NULL DEFAULT 1,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, project_id, agent_id)
        REFERENCES agents (tenant_id, project_id, id) ON DELETE CASCADE,
    CONSTRAINT triggers_credential_fkey
        FOREIGN KEY (tenant_id, signing_secret_credential_id) REFERENCES credentials (tenant_id, id)
);

CREATE UNIQUE INDEX triggers_key ON triggers (tenant_id, project_id, lower(key));
CREATE UNIQUE INDEX triggers_name ON triggers (tenant_id, project_id, name);
CREATE INDEX triggers_by_agent ON triggers (tenant_id, agent_id, created_at, id);

CREATE TABLE api_keys (
    id            uuid PRIMARY KEY,
    tenant_id     text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name          text NOT NULL CHECK (length(name) BETWEEN 1 AND 255),
    -- The first characters of the secret, to tell keys apart in a list.
    prefix        text NOT NULL,
    -- SHA-256 of the whole secret. The secret has 256 random bits, so a fast hash is enough.
    hash          bytea NOT NULL UNIQUE,
    scopes        text[] NOT NULL,
    -- NULL: every project of the tenant.
    project_ids   text[],
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    revoked_at    timestamptz
);

CREATE INDEX api_keys_by_tenant ON api_keys (tenant_id, created_at, id);

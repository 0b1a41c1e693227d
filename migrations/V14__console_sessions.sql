-- Sign-ins to the operator console: a random token in an HTTP-only cookie, found by its SHA-256.
-- The session acts as the API key it was opened with (by that key's digest), so revoking the key
-- ends the session too.
CREATE TABLE console_sessions (
    digest      bytea PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    key_hash    bytea NOT NULL,
    csrf_token  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX console_sessions_expiry ON console_sessions (expires_at);

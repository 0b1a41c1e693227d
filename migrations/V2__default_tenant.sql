-- The tenant that the static bearer token (SWITCHYARD_API_TOKEN) acts for, with a built-in
-- deterministic agent. Real tenants and API keys come with the management API.
INSERT INTO tenants (id, name) VALUES ('default', 'Default tenant') ON CONFLICT DO NOTHING;
INSERT INTO projects (tenant_id, id, name) VALUES ('default', 'default', 'Default project') ON CONFLICT DO NOTHING;
INSERT INTO agents (tenant_id, id, project_id, name, kind, config)
VALUES ('default', 'echo', 'default', 'Echo', 'echo', '{}'::jsonb) ON CONFLICT DO NOTHING;

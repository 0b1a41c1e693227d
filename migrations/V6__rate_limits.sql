-- Rate limits, requests per minute (NULL: the default). A key's own limit, else the server's
-- default per key; a tenant's and a trigger's limit cap all of their keys together.
ALTER TABLE api_keys ADD COLUMN rate_limit_per_minute integer CHECK (rate_limit_per_minute BETWEEN 1 AND 1000000);
ALTER TABLE tenants ADD COLUMN rate_limit_per_minute integer CHECK (rate_limit_per_minute BETWEEN 1 AND 1000000);
ALTER TABLE triggers ADD COLUMN rate_limit_per_minute integer CHECK (rate_limit_per_minute BETWEEN 1 AND 1000000);

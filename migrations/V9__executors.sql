-- What executors record on a run: token usage (the OpenAI-compatible executor), named outputs
-- (artifacts), and the model a run asked for instead of its agent's (`chatModelId`).
ALTER TABLE runs ADD COLUMN usage jsonb;
ALTER TABLE runs ADD COLUMN artifacts jsonb NOT NULL DEFAULT '[]'::jsonb;
ALTER TABLE runs ADD COLUMN chat_model_id text;

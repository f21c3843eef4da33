-- Which server process drives a queued or running task ("host:pid:start-ms").
-- Recovery takes over only tasks whose owner is gone, so two servers sharing
-- one store (two editors on one project) never re-run each other's work.
ALTER TABLE tasks ADD COLUMN owner TEXT;
CREATE INDEX tasks_owner ON tasks (owner) WHERE owner IS NOT NULL;

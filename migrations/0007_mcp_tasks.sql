-- Long work the MCP way (issue 16): a task-augmented tools/call makes the
-- dispatch task or workflow run it starts an MCP task. The work itself stays
-- in `tasks` / `runs`; this row keeps what the protocol adds: which tool was
-- called (its result is shaped by it), whose it is, and how long it is kept.
CREATE TABLE mcp_tasks (
    id          TEXT    NOT NULL PRIMARY KEY,  -- the task or run id
    tool        TEXT    NOT NULL,
    subject     TEXT,                          -- NULL: no authenticated caller
    created_at  INTEGER NOT NULL,
    ttl_ms      INTEGER,                       -- NULL: kept for ever
    poll_ms     INTEGER NOT NULL
) STRICT;
CREATE INDEX mcp_tasks_by_subject ON mcp_tasks (subject, created_at, id);
CREATE INDEX mcp_tasks_by_time ON mcp_tasks (created_at, id);

-- Agents that act (issue 15): each task knows the root of its delegation
-- tree; the turns of a tool loop are stored one by one, as deltas, before the
-- loop acts on them; a tree's limits and use are one row, charged in one
-- UPDATE whose WHERE clause is the limit (so concurrent children cannot
-- overspend, and the same statement holds on PostgreSQL).
ALTER TABLE tasks ADD COLUMN root_id TEXT;   -- NULL for a root task
CREATE INDEX tasks_root ON tasks (root_id, created_at, id) WHERE root_id IS NOT NULL;

CREATE TABLE turns (
    task_id    TEXT    NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    seq        INTEGER NOT NULL,
    answer     INTEGER NOT NULL,
    kind       TEXT    NOT NULL,
    at         INTEGER NOT NULL,
    data       TEXT    NOT NULL,   -- JSON: the whole TurnEvent
    PRIMARY KEY (task_id, seq)
) STRICT;

CREATE TABLE trees (
    root_id         TEXT    NOT NULL PRIMARY KEY,
    tasks           INTEGER NOT NULL,
    turns           INTEGER NOT NULL,
    spent_micros    INTEGER NOT NULL,
    reserved_micros INTEGER NOT NULL,
    max_depth       INTEGER NOT NULL,
    max_tasks       INTEGER NOT NULL,
    max_turns       INTEGER NOT NULL,
    max_secs        INTEGER,
    budget_micros   INTEGER,
    created_at      INTEGER NOT NULL
) STRICT;

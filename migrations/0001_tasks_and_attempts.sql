-- Tasks and the provider calls made for them.
--
-- Kept portable to PostgreSQL: timestamps are INTEGER milliseconds since the
-- Unix epoch, JSON is TEXT, enums are their stable snake_case names (see
-- src/task.rs). No CHECK constraints on the enum columns, because adding a
-- state later would mean rebuilding the table in SQLite; the store rejects
-- unknown names when it reads them instead.
--
-- STRICT makes SQLite enforce the declared column types, so a stray write
-- cannot put text where a counter belongs.
--
-- Never edit this file once released: sqlx records its checksum and refuses
-- to open a database whose applied migrations differ. Add a new file instead.

CREATE TABLE tasks (
    id            TEXT    NOT NULL PRIMARY KEY,
    agent         TEXT    NOT NULL,
    state         TEXT    NOT NULL,
    input         TEXT    NOT NULL,   -- JSON
    parent_id     TEXT,               -- no foreign key: a parent may be pruned before its children
    depth         INTEGER NOT NULL,
    subject       TEXT,
    created_at    INTEGER NOT NULL,
    started_at    INTEGER,
    finished_at   INTEGER,
    model         TEXT,
    attempts      INTEGER NOT NULL,
    input_tokens  INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cost_usd      REAL    NOT NULL,
    output        TEXT,
    reason        TEXT,
    error         TEXT,
    kb_path       TEXT,
    routing       TEXT,               -- JSON
    requeues      INTEGER NOT NULL
) STRICT;

-- Listing is newest first with keyset paging on (created_at, id); each filter
-- gets an index that also serves that order, so a filtered page reads only the
-- rows it returns.
CREATE INDEX tasks_created ON tasks (created_at, id);
CREATE INDEX tasks_state   ON tasks (state, created_at, id);
CREATE INDEX tasks_agent   ON tasks (agent, created_at, id);
CREATE INDEX tasks_parent  ON tasks (parent_id, created_at, id) WHERE parent_id IS NOT NULL;
CREATE INDEX tasks_subject ON tasks (subject, created_at, id) WHERE subject IS NOT NULL;

CREATE TABLE attempts (
    task_id          TEXT    NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    seq              INTEGER NOT NULL,
    kind             TEXT    NOT NULL,
    agent            TEXT    NOT NULL,
    provider         TEXT    NOT NULL,
    model            TEXT    NOT NULL,
    started_at       INTEGER NOT NULL,
    latency_ms       INTEGER NOT NULL,
    ok               INTEGER NOT NULL,   -- 0 or 1
    http_status      INTEGER,
    error            TEXT,
    input_tokens     INTEGER NOT NULL,
    output_tokens    INTEGER NOT NULL,
    cost_usd         REAL    NOT NULL,
    cost_source      TEXT    NOT NULL,
    verdict          TEXT,               -- JSON
    revision_message TEXT,
    PRIMARY KEY (task_id, seq)
) STRICT;

-- Usage reports filter attempts by time.
CREATE INDEX attempts_started ON attempts (started_at);

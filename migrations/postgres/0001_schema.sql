-- The whole schema on PostgreSQL: what the SQLite migrations 0001 to 0007 in
-- migrations/ add up to, in one file. Same tables, columns and indexes, so
-- that both backends map rows the same way (src/store/rows.rs):
--
-- - timestamps are BIGINT milliseconds since the Unix epoch, counters BIGINT
--   (the store refuses a u64 past 2^63-1 before writing), costs DOUBLE
--   PRECISION;
-- - JSON is TEXT, as on SQLite: jsonb would refuse `\u0000` in a string and
--   reorder keys, and nothing queries inside it;
-- - enums are their stable snake_case names (see src/task.rs), without CHECK
--   constraints: the store rejects unknown names when it reads them;
-- - attempts.ok is BOOLEAN;
-- - keys and the text columns listings sort or group on are COLLATE "C":
--   byte order, as SQLite compares, whatever the database's locale, so
--   pages and usage rows come out in the same order on both backends.
--
-- The owner index of SQLite's 0002 is not here: 0005 dropped it.
--
-- Never edit this file once released: sqlx records its checksum and refuses
-- to open a database whose applied migrations differ. Add a new file instead
-- (and its SQLite twin under migrations/).

CREATE TABLE tasks (
    id            TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    agent         TEXT COLLATE "C" NOT NULL,
    state         TEXT COLLATE "C" NOT NULL,
    input         TEXT             NOT NULL,   -- JSON
    parent_id     TEXT COLLATE "C",            -- no foreign key: a parent may go first
    depth         BIGINT           NOT NULL,
    subject       TEXT COLLATE "C",
    created_at    BIGINT           NOT NULL,
    started_at    BIGINT,
    finished_at   BIGINT,
    model         TEXT,
    attempts      BIGINT           NOT NULL,
    input_tokens  BIGINT           NOT NULL,
    output_tokens BIGINT           NOT NULL,
    cost_usd      DOUBLE PRECISION NOT NULL,
    output        TEXT,
    reason        TEXT,
    error         TEXT,
    kb_path       TEXT,
    routing       TEXT,                        -- JSON
    requeues      BIGINT           NOT NULL,
    owner         TEXT,                        -- its server process ("host:pid:start-ms")
    audit         TEXT,                        -- JSON
    root_id       TEXT COLLATE "C"             -- NULL for a task in no tree
);

-- Listing is newest first with keyset paging on (created_at, id); each filter
-- gets an index that also serves that order, so a filtered page reads only the
-- rows it returns.
CREATE INDEX tasks_created ON tasks (created_at, id);
CREATE INDEX tasks_state   ON tasks (state, created_at, id);
CREATE INDEX tasks_agent   ON tasks (agent, created_at, id);
CREATE INDEX tasks_parent  ON tasks (parent_id, created_at, id) WHERE parent_id IS NOT NULL;
CREATE INDEX tasks_subject ON tasks (subject, created_at, id) WHERE subject IS NOT NULL;
CREATE INDEX tasks_root    ON tasks (root_id, created_at, id) WHERE root_id IS NOT NULL;

CREATE TABLE attempts (
    task_id          TEXT COLLATE "C" NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    seq              BIGINT           NOT NULL,
    kind             TEXT COLLATE "C" NOT NULL,
    agent            TEXT COLLATE "C" NOT NULL,
    provider         TEXT COLLATE "C" NOT NULL,
    model            TEXT COLLATE "C" NOT NULL,
    started_at       BIGINT           NOT NULL,
    latency_ms       BIGINT           NOT NULL,
    ok               BOOLEAN          NOT NULL,
    http_status      BIGINT,
    error            TEXT,
    input_tokens     BIGINT           NOT NULL,
    output_tokens    BIGINT           NOT NULL,
    cost_usd         DOUBLE PRECISION NOT NULL,
    cost_source      TEXT             NOT NULL,
    verdict          TEXT,                     -- JSON
    revision_message TEXT,
    output           TEXT,
    PRIMARY KEY (task_id, seq)
);

-- Usage reports filter attempts by time.
CREATE INDEX attempts_started ON attempts (started_at);

-- Workflow runs: a run and the state of each of its steps, written step by
-- step so a run resumes after a crash without re-running finished steps.
CREATE TABLE runs (
    id          TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    name        TEXT,
    agent       TEXT,                          -- the workflow agent, when started from one
    state       TEXT COLLATE "C" NOT NULL,
    input       TEXT             NOT NULL,     -- JSON
    definition  TEXT             NOT NULL,     -- JSON
    subject     TEXT,
    owner       TEXT,
    created_at  BIGINT           NOT NULL,
    finished_at BIGINT,
    error       TEXT
);
CREATE INDEX runs_state ON runs (state, created_at);

CREATE TABLE run_steps (
    run_id      TEXT COLLATE "C" NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    step_id     TEXT COLLATE "C" NOT NULL,
    idx         BIGINT           NOT NULL,
    state       TEXT             NOT NULL,
    task_id     TEXT COLLATE "C",
    tries       BIGINT           NOT NULL,
    started_at  BIGINT,
    finished_at BIGINT,
    error       TEXT,
    output_path TEXT,
    PRIMARY KEY (run_id, step_id)
);

-- The turns of a tool loop, stored one by one, as deltas, before the loop
-- acts on them.
CREATE TABLE turns (
    task_id    TEXT COLLATE "C" NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    seq        BIGINT           NOT NULL,
    answer     BIGINT           NOT NULL,
    kind       TEXT             NOT NULL,
    at         BIGINT           NOT NULL,
    data       TEXT             NOT NULL,      -- JSON: the whole TurnEvent
    PRIMARY KEY (task_id, seq)
);

-- A delegation tree's limits and use, one row, charged in one UPDATE whose
-- WHERE clause is the limit: concurrent charges queue on the row lock and
-- each re-checks the limit against the row as the one before left it, so
-- they cannot overspend.
CREATE TABLE trees (
    root_id         TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    tasks           BIGINT NOT NULL,
    turns           BIGINT NOT NULL,
    spent_micros    BIGINT NOT NULL,
    reserved_micros BIGINT NOT NULL,
    max_depth       BIGINT NOT NULL,
    max_tasks       BIGINT NOT NULL,
    max_turns       BIGINT NOT NULL,
    max_secs        BIGINT,
    budget_micros   BIGINT,
    created_at      BIGINT NOT NULL
);

-- Long work the MCP way: a task-augmented tools/call makes the dispatch task
-- or workflow run it starts an MCP task. The work itself stays in `tasks` /
-- `runs`; this row keeps what the protocol adds.
CREATE TABLE mcp_tasks (
    id          TEXT COLLATE "C" NOT NULL PRIMARY KEY,  -- the task or run id
    tool        TEXT             NOT NULL,
    subject     TEXT COLLATE "C",                       -- NULL: no authenticated caller
    created_at  BIGINT           NOT NULL,
    ttl_ms      BIGINT,                                 -- NULL: kept for ever
    poll_ms     BIGINT           NOT NULL
);
CREATE INDEX mcp_tasks_by_subject ON mcp_tasks (subject, created_at, id);
CREATE INDEX mcp_tasks_by_time ON mcp_tasks (created_at, id);

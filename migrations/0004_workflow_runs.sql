-- Workflow runs (issue 5): a run and the state of each of its steps, written
-- step by step so a run resumes after a crash without re-running finished steps.
CREATE TABLE runs (
    id          TEXT    NOT NULL PRIMARY KEY,
    name        TEXT,
    agent       TEXT,               -- the workflow agent, when started from one
    state       TEXT    NOT NULL,
    input       TEXT    NOT NULL,   -- JSON
    definition  TEXT    NOT NULL,   -- JSON
    subject     TEXT,
    owner       TEXT,
    created_at  INTEGER NOT NULL,
    finished_at INTEGER,
    error       TEXT
) STRICT;
CREATE INDEX runs_state ON runs (state, created_at);

CREATE TABLE run_steps (
    run_id      TEXT    NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    step_id     TEXT    NOT NULL,
    idx         INTEGER NOT NULL,
    state       TEXT    NOT NULL,
    task_id     TEXT,
    tries       INTEGER NOT NULL,
    started_at  INTEGER,
    finished_at INTEGER,
    error       TEXT,
    output_path TEXT,
    PRIMARY KEY (run_id, step_id)
) STRICT;

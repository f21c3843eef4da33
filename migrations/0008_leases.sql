-- Work is claimed with a lease (issue 17). Each task carries the epoch of
-- its current claim: a claim adds one, and every write-back by a holder
-- requires the epoch it claimed, so a holder whose lease ran out (paused,
-- cut off) cannot commit over the one that took the task after it.
--
-- `instances` holds one row per process that drives tasks: its lease runs
-- until `lease_until` and the process renews it while it lives. A task whose
-- owner has no live lease is free for any instance to claim.
ALTER TABLE tasks ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
CREATE TABLE instances (
    holder      TEXT    NOT NULL PRIMARY KEY,  -- "host:pid:start-ms", as tasks.owner
    started_at  INTEGER NOT NULL,
    lease_until INTEGER NOT NULL               -- ms since the epoch, the store's clock
) STRICT;

-- Concurrency limits shared by every instance: `limit` slots per scope
-- ("global", "agent:NAME", "provider:NAME"), numbered 0 to limit - 1. A slot
-- is free when it has no holder, or its holder has no live lease (a dead
-- instance's slots come back with its lease).
CREATE TABLE slots (
    scope    TEXT    NOT NULL,
    n        INTEGER NOT NULL,
    holder   TEXT,                                 -- NULL: free
    taken_at INTEGER,
    PRIMARY KEY (scope, n)
) STRICT;

-- Request rates shared by every instance, per key (a subject, or a client
-- address): the generic cell rate algorithm keeps one number per key, the
-- theoretical arrival time of the next request (ms).
CREATE TABLE rates (
    key TEXT    NOT NULL PRIMARY KEY,
    tat INTEGER NOT NULL
) STRICT;

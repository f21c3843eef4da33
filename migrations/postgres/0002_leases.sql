-- Work is claimed with a lease: SQLite's migrations/0008_leases.sql, plus
-- the notification that wakes the other instances.
--
-- Each task carries the epoch of its current claim: a claim adds one, and
-- every write-back by a holder requires the epoch it claimed, so a holder
-- whose lease ran out (paused, cut off) cannot commit over the one that took
-- the task after it. `instances` holds one row per process that drives
-- tasks; its lease runs until `lease_until` (milliseconds on the database's
-- clock, so instances on hosts whose clocks differ agree on it).
ALTER TABLE tasks ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0;
CREATE TABLE instances (
    holder      TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    started_at  BIGINT NOT NULL,
    lease_until BIGINT NOT NULL
);

-- Concurrency limits shared by every instance: `limit` slots per scope
-- ("global", "agent:NAME", "provider:NAME"), numbered 0 to limit - 1. A slot
-- is free when it has no holder, or its holder has no live lease. A slot
-- given back is announced on channel `dispatch_slots` (payload: the scope).
CREATE TABLE slots (
    scope    TEXT COLLATE "C" NOT NULL,
    n        BIGINT NOT NULL,
    holder   TEXT COLLATE "C",
    taken_at BIGINT,
    PRIMARY KEY (scope, n)
);

-- Request rates shared by every instance, per key (a subject, or a client
-- address): the generic cell rate algorithm keeps one number per key, the
-- theoretical arrival time of the next request (ms, the database's clock).
CREATE TABLE rates (
    key TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    tat BIGINT NOT NULL
);

-- A task that ends, or is queued with no one driving it, is announced on
-- channel `dispatch_tasks` as "ID STATE": waiters on other instances wake,
-- an instance drops the work of a task cancelled elsewhere, and a free
-- task is claimed at once. Notifications only wake; everyone also polls, so
-- one lost (or a pooler that drops LISTEN) only adds latency.
CREATE FUNCTION dispatch_task_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('dispatch_tasks', NEW.id || ' ' || NEW.state);
    RETURN NULL;
END
$$;
CREATE TRIGGER tasks_notify AFTER INSERT OR UPDATE OF state, owner ON tasks
    FOR EACH ROW
    WHEN (NEW.state IN ('succeeded', 'failed', 'cancelled')
          OR (NEW.state = 'queued' AND NEW.owner IS NULL))
    EXECUTE FUNCTION dispatch_task_changed();

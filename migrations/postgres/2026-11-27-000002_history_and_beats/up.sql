-- Run history, the registry of live beats, and run requests.
--
-- `routine_runs`: one row per dispatch (and per due time skipped or
-- missed), written in the claim's own transaction; in-process runs are
-- updated when they start and end. Pruned by age and by count per routine.
CREATE TABLE IF NOT EXISTS routine_runs (
    id bigserial PRIMARY KEY,
    routine_id text NOT NULL,
    routine character varying(255) NOT NULL,
    task character varying(255) NOT NULL,
    -- The due time the run stands for (the request time for on-demand runs).
    due_at timestamp without time zone NOT NULL,
    dispatched_at timestamp without time zone NOT NULL,
    task_id character varying(64) NOT NULL,
    -- 'celery' (pushed to the broker) or 'local' (the beat's worker pool).
    target character varying(8) NOT NULL,
    on_demand boolean NOT NULL DEFAULT false,
    -- The beat that dispatched it (NULL: sent from the command line).
    beat_id character varying(36),
    -- published | queued | running | retrying | succeeded | failed |
    -- skipped | missed | abandoned | lost
    outcome character varying(16) NOT NULL,
    attempts integer,
    error text,
    started_at timestamp without time zone,
    finished_at timestamp without time zone
);
-- A routine's runs, newest first (`beat show`, `beat history NAME`, the
-- pruning by count).
CREATE INDEX IF NOT EXISTS routine_runs_routine_idx ON routine_runs (routine_id, id);
-- In-process runs not yet ended: the claim's no-overlap check across beats,
-- outcome updates, and marking a dead beat's runs lost read only these.
CREATE INDEX IF NOT EXISTS routine_runs_open_idx ON routine_runs (routine_id)
    WHERE outcome IN ('queued', 'running', 'retrying');

-- Every beat that has run on this database: a beat whose heartbeat is older
-- than `scheduler_dead_after` is dead, and its unfinished runs are lost.
CREATE TABLE IF NOT EXISTS beats (
    id character varying(36) PRIMARY KEY,
    host character varying(255) NOT NULL,
    pid integer NOT NULL,
    version character varying(32) NOT NULL,
    started_at timestamp without time zone NOT NULL,
    heartbeat_at timestamp without time zone NOT NULL,
    stopped_at timestamp without time zone,
    -- JSON array of the tasks it runs in-process.
    tasks text NOT NULL DEFAULT '[]',
    -- Whether it sends other tasks to Celery.
    broker boolean NOT NULL DEFAULT false
);

-- `beat send NAME` asks the beats to run a routine now: an edit like any
-- other, seen within the watch interval; the beat that plans it runs it
-- and clears the request.
ALTER TABLE routines ADD COLUMN IF NOT EXISTS run_requested_at timestamp without time zone;

DROP TRIGGER IF EXISTS routines_mark_requested ON routines;
CREATE TRIGGER routines_mark_requested
    BEFORE UPDATE OF run_requested_at ON routines
    FOR EACH ROW
    WHEN (NEW.run_requested_at IS NOT NULL
          AND NEW.run_requested_at IS DISTINCT FROM OLD.run_requested_at)
    EXECUTE FUNCTION routines_mark_edited();

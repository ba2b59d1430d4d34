-- The routines table of celery-sqlalchemy-kit, created only if the kit has
-- not created it already, then extended with the beat's own columns. Every
-- added column is nullable or defaulted, so the Python kit keeps working on
-- the same table.
CREATE TABLE IF NOT EXISTS routines (
    id uuid NOT NULL PRIMARY KEY,
    name character varying(50) NOT NULL,
    task character varying(50) NOT NULL,
    schedule json NOT NULL,
    last_run_at timestamp without time zone,
    total_run_count integer,
    active boolean NOT NULL,
    kwargs json,
    options json
);

-- Plain-SQL inserts need neither an id nor an active flag.
ALTER TABLE routines ALTER COLUMN id SET DEFAULT gen_random_uuid();
ALTER TABLE routines ALTER COLUMN active SET DEFAULT true;

-- When the routine is next due (naive UTC); NULL while inactive, invalid or
-- not yet planned.
ALTER TABLE routines ADD COLUMN IF NOT EXISTS next_run_at timestamp without time zone;
-- Set when a row is inserted or its schedule, active flag, task, kwargs or
-- options change: the beat validates the row and plans its next run.
ALTER TABLE routines ADD COLUMN IF NOT EXISTS needs_sync boolean NOT NULL DEFAULT true;
-- Why the beat does not run this routine (bad schedule, unknown task, ...).
ALTER TABLE routines ADD COLUMN IF NOT EXISTS last_error text;

-- The due scan and the earliest-due lookup read only this index.
CREATE INDEX IF NOT EXISTS routines_due_idx
    ON routines (next_run_at) WHERE active AND NOT needs_sync;
-- The edit scan.
CREATE INDEX IF NOT EXISTS routines_needs_sync_idx
    ON routines (id) WHERE needs_sync;
-- The periodic checks (rows that lost their plan, rows with errors) read
-- only these, however large the table.
CREATE INDEX IF NOT EXISTS routines_unplanned_idx ON routines (id)
    WHERE active AND next_run_at IS NULL AND last_error IS NULL AND NOT needs_sync;
CREATE INDEX IF NOT EXISTS routines_failed_idx ON routines (id)
    WHERE last_error IS NOT NULL AND NOT needs_sync;
-- The kit's own index on name (the key of the source-of-truth rules).
CREATE INDEX IF NOT EXISTS ix_routines_name ON routines (name);

-- Marks edited rows. A change of schedule or active also clears
-- next_run_at, so the beat plans afresh from last_run_at; other edits keep
-- the planned time (an edit of kwargs never moves or causes a run).
--
-- The triggers fire only for UPDATEs that set these columns (`UPDATE OF`),
-- and their functions run only when a value really changed (`WHEN`, checked
-- without entering PL/pgSQL). The beat's own updates set none of these
-- columns, so a claim of a thousand rows costs no trigger call at all.
CREATE OR REPLACE FUNCTION routines_mark_rescheduled() RETURNS trigger AS $$
BEGIN
    NEW.needs_sync := true;
    NEW.next_run_at := NULL;
    RETURN NEW;
END
$$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION routines_mark_edited() RETURNS trigger AS $$
BEGIN
    NEW.needs_sync := true;
    RETURN NEW;
END
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS routines_mark_rescheduled ON routines;
CREATE TRIGGER routines_mark_rescheduled
    BEFORE UPDATE OF schedule, active ON routines
    FOR EACH ROW
    WHEN (NEW.schedule::text IS DISTINCT FROM OLD.schedule::text
          OR NEW.active IS DISTINCT FROM OLD.active)
    EXECUTE FUNCTION routines_mark_rescheduled();

DROP TRIGGER IF EXISTS routines_mark_edited ON routines;
CREATE TRIGGER routines_mark_edited
    BEFORE UPDATE OF task, kwargs, options ON routines
    FOR EACH ROW
    WHEN (NEW.task IS DISTINCT FROM OLD.task
          OR NEW.kwargs::text IS DISTINCT FROM OLD.kwargs::text
          OR NEW.options::text IS DISTINCT FROM OLD.options::text)
    EXECUTE FUNCTION routines_mark_edited();

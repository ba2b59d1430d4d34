-- Gives the table back to celery-sqlalchemy-kit: drops only what the beat added.
DROP TRIGGER IF EXISTS routines_mark_edited ON routines;
DROP TRIGGER IF EXISTS routines_mark_rescheduled ON routines;
DROP FUNCTION IF EXISTS routines_mark_edited();
DROP FUNCTION IF EXISTS routines_mark_rescheduled();
DROP INDEX IF EXISTS routines_failed_idx;
DROP INDEX IF EXISTS routines_unplanned_idx;
DROP INDEX IF EXISTS routines_needs_sync_idx;
DROP INDEX IF EXISTS routines_due_idx;
ALTER TABLE routines DROP COLUMN IF EXISTS last_error;
ALTER TABLE routines DROP COLUMN IF EXISTS needs_sync;
ALTER TABLE routines DROP COLUMN IF EXISTS next_run_at;
ALTER TABLE routines ALTER COLUMN active DROP DEFAULT;
ALTER TABLE routines ALTER COLUMN id DROP DEFAULT;

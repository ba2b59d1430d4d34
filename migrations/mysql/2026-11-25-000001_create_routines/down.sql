-- Gives the table back to celery-sqlalchemy-kit: drops only what the beat added.
DROP TRIGGER IF EXISTS routines_mark_edited;
DROP INDEX routines_failed_idx ON routines;
DROP INDEX routines_needs_sync_idx ON routines;
DROP INDEX routines_due_idx ON routines;
ALTER TABLE routines DROP COLUMN last_error, DROP COLUMN needs_sync, DROP COLUMN next_run_at;

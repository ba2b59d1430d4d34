DROP TRIGGER IF EXISTS routines_mark_edited;
DROP TRIGGER IF EXISTS routines_mark_rescheduled;
DROP INDEX IF EXISTS routines_failed_idx;
DROP INDEX IF EXISTS routines_unplanned_idx;
DROP INDEX IF EXISTS routines_needs_sync_idx;
DROP INDEX IF EXISTS routines_due_idx;
ALTER TABLE routines DROP COLUMN last_error;
ALTER TABLE routines DROP COLUMN needs_sync;
ALTER TABLE routines DROP COLUMN next_run_at;

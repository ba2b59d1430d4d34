DROP TRIGGER IF EXISTS routines_mark_requested;
ALTER TABLE routines DROP COLUMN run_requested_at;
DROP TABLE IF EXISTS beats;
DROP TABLE IF EXISTS routine_runs;

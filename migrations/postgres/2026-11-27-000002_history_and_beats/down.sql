DROP TRIGGER IF EXISTS routines_mark_requested ON routines;
ALTER TABLE routines DROP COLUMN IF EXISTS run_requested_at;
DROP TABLE IF EXISTS beats;
DROP TABLE IF EXISTS routine_runs;

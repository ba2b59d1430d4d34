DROP INDEX IF EXISTS routines_name_unique_idx;
ALTER TABLE routines DROP COLUMN IF EXISTS name_unique;

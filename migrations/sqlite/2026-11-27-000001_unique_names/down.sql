DROP INDEX IF EXISTS routines_name_unique_idx;
ALTER TABLE routines DROP COLUMN name_unique;

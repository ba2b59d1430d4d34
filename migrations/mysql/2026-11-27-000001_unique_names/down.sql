DROP INDEX routines_name_unique_idx ON routines;
ALTER TABLE routines DROP COLUMN name_unique;

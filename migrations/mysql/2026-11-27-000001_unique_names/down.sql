CREATE INDEX ix_routines_name ON routines (name);
DROP INDEX routines_name_unique_idx ON routines;
ALTER TABLE routines DROP COLUMN name_unique;

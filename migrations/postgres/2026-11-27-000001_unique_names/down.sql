CREATE INDEX IF NOT EXISTS ix_routines_name ON routines (name);
DROP INDEX IF EXISTS routines_name_unique_idx;
ALTER TABLE routines DROP COLUMN IF EXISTS name_unique;

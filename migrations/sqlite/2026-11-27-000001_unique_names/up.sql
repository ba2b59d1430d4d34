-- See the PostgreSQL migration: one runnable row per name.
ALTER TABLE routines ADD COLUMN name_unique BOOLEAN DEFAULT 1;

UPDATE routines SET name_unique = NULL, needs_sync = 1, next_run_at = NULL
WHERE id IN (
    SELECT id FROM (
        SELECT id, row_number() OVER (
            PARTITION BY name ORDER BY total_run_count DESC NULLS LAST, id) AS n
        FROM routines)
    WHERE n > 1);

CREATE UNIQUE INDEX IF NOT EXISTS routines_name_unique_idx ON routines (name, name_unique);
-- It serves the kit's lookups by name (see the PostgreSQL migration).
DROP INDEX IF EXISTS ix_routines_name;

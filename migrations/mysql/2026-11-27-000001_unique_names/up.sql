-- See the PostgreSQL migration: one runnable row per name (MySQL, like
-- PostgreSQL, lets a unique index hold any number of NULLs).
SET @sql := IF((SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = DATABASE()
                AND table_name = 'routines' AND column_name = 'name_unique') = 0,
    'ALTER TABLE routines ADD COLUMN name_unique BOOL NULL DEFAULT 1', 'DO 0');
PREPARE stmt FROM @sql; EXECUTE stmt; DEALLOCATE PREPARE stmt;

-- DESC puts NULLs last on MySQL; the derived table lets the UPDATE read
-- the table it changes.
UPDATE routines SET name_unique = NULL, needs_sync = 1, next_run_at = NULL
WHERE id IN (
    SELECT id FROM (
        SELECT id, ROW_NUMBER() OVER (
            PARTITION BY name ORDER BY total_run_count DESC, id) AS n
        FROM routines) AS ranked
    WHERE n > 1);

SET @sql := IF((SELECT COUNT(*) FROM information_schema.statistics WHERE table_schema = DATABASE()
                AND table_name = 'routines' AND index_name = 'routines_name_unique_idx') = 0,
    'CREATE UNIQUE INDEX routines_name_unique_idx ON routines (name, name_unique)', 'DO 0');
PREPARE stmt FROM @sql; EXECUTE stmt; DEALLOCATE PREPARE stmt;

-- It serves the kit's lookups by name (see the PostgreSQL migration).
SET @sql := IF((SELECT COUNT(*) FROM information_schema.statistics WHERE table_schema = DATABASE()
                AND table_name = 'routines' AND index_name = 'ix_routines_name') > 0,
    'DROP INDEX ix_routines_name ON routines', 'DO 0');
PREPARE stmt FROM @sql; EXECUTE stmt; DEALLOCATE PREPARE stmt;

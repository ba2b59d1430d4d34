-- The routines table of celery-sqlalchemy-kit on MySQL/MariaDB: JSON as
-- JSON, the uuid as SQLAlchemy binds it on MySQL (32 hex digits, no dashes;
-- on a table the kit created on MariaDB 10.7+ the column may be the native
-- UUID type, which the beat reads and writes just as well), timestamps as
-- DATETIME in UTC. Created only if the kit has not created it already.
CREATE TABLE IF NOT EXISTS routines (
    id CHAR(32) NOT NULL DEFAULT (REPLACE(UUID(), '-', '')),
    name VARCHAR(50) NOT NULL,
    task VARCHAR(50) NOT NULL,
    schedule JSON NOT NULL,
    last_run_at DATETIME(6) NULL,
    total_run_count INTEGER NULL,
    active BOOL NOT NULL DEFAULT 1,
    kwargs JSON NULL,
    options JSON NULL,
    PRIMARY KEY (id)
);

-- The beat's own columns, added only where missing. MySQL 8 has no
-- ADD COLUMN IF NOT EXISTS, so each is a statement prepared from a check
-- of information_schema (the same on MariaDB).
SET @sql := IF((SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = DATABASE()
                AND table_name = 'routines' AND column_name = 'next_run_at') = 0,
    'ALTER TABLE routines ADD COLUMN next_run_at DATETIME(6) NULL', 'DO 0');
PREPARE stmt FROM @sql; EXECUTE stmt; DEALLOCATE PREPARE stmt;

SET @sql := IF((SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = DATABASE()
                AND table_name = 'routines' AND column_name = 'needs_sync') = 0,
    'ALTER TABLE routines ADD COLUMN needs_sync BOOL NOT NULL DEFAULT 1', 'DO 0');
PREPARE stmt FROM @sql; EXECUTE stmt; DEALLOCATE PREPARE stmt;

SET @sql := IF((SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = DATABASE()
                AND table_name = 'routines' AND column_name = 'last_error') = 0,
    'ALTER TABLE routines ADD COLUMN last_error TEXT NULL', 'DO 0');
PREPARE stmt FROM @sql; EXECUTE stmt; DEALLOCATE PREPARE stmt;

-- No partial indexes here: the flags lead the keys instead.
SET @sql := IF((SELECT COUNT(*) FROM information_schema.statistics WHERE table_schema = DATABASE()
                AND table_name = 'routines' AND index_name = 'routines_due_idx') = 0,
    'CREATE INDEX routines_due_idx ON routines (active, needs_sync, next_run_at)', 'DO 0');
PREPARE stmt FROM @sql; EXECUTE stmt; DEALLOCATE PREPARE stmt;

SET @sql := IF((SELECT COUNT(*) FROM information_schema.statistics WHERE table_schema = DATABASE()
                AND table_name = 'routines' AND index_name = 'routines_needs_sync_idx') = 0,
    'CREATE INDEX routines_needs_sync_idx ON routines (needs_sync)', 'DO 0');
PREPARE stmt FROM @sql; EXECUTE stmt; DEALLOCATE PREPARE stmt;

-- Rows with errors, looked at once per start.
SET @sql := IF((SELECT COUNT(*) FROM information_schema.statistics WHERE table_schema = DATABASE()
                AND table_name = 'routines' AND index_name = 'routines_failed_idx') = 0,
    'CREATE INDEX routines_failed_idx ON routines (last_error(1))', 'DO 0');
PREPARE stmt FROM @sql; EXECUTE stmt; DEALLOCATE PREPARE stmt;

-- The kit's own index on name.
SET @sql := IF((SELECT COUNT(*) FROM information_schema.statistics WHERE table_schema = DATABASE()
                AND table_name = 'routines' AND index_name = 'ix_routines_name') = 0,
    'CREATE INDEX ix_routines_name ON routines (name)', 'DO 0');
PREPARE stmt FROM @sql; EXECUTE stmt; DEALLOCATE PREPARE stmt;

-- See the PostgreSQL migration. MySQL has no column-specific or
-- conditional triggers, so the beat's own connections set @celery_beat and
-- the trigger skips its comparisons for them: the beat never writes these
-- columns, and a claim of a thousand rows costs a quarter less. JSON values
-- are compared as bytes (the default collation would call "MON" and "mon"
-- the same edit).
DROP TRIGGER IF EXISTS routines_mark_edited;
CREATE TRIGGER routines_mark_edited BEFORE UPDATE ON routines FOR EACH ROW
BEGIN
    IF @celery_beat IS NULL THEN
        IF NOT (CAST(NEW.schedule AS BINARY) <=> CAST(OLD.schedule AS BINARY))
           OR NOT (NEW.active <=> OLD.active) THEN
            SET NEW.needs_sync = 1, NEW.next_run_at = NULL;
        ELSEIF NOT (CAST(NEW.task AS BINARY) <=> CAST(OLD.task AS BINARY))
           OR NOT (CAST(NEW.kwargs AS BINARY) <=> CAST(OLD.kwargs AS BINARY))
           OR NOT (CAST(NEW.options AS BINARY) <=> CAST(OLD.options AS BINARY)) THEN
            SET NEW.needs_sync = 1;
        END IF;
    END IF;
END;

-- See the PostgreSQL migration: one running row per name, owned in
-- `routine_names`. The id column is whatever the routines table has (the
-- kit's CHAR(32), or MariaDB's UUID): its text is kept here.
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

CREATE TABLE IF NOT EXISTS routine_names (
    name VARCHAR(50) NOT NULL PRIMARY KEY,
    routine_id VARCHAR(36) NOT NULL,
    KEY routine_names_routine_idx (routine_id)
);
INSERT IGNORE INTO routine_names (name, routine_id)
SELECT name, CAST(id AS CHAR) FROM routines WHERE name_unique;

DROP TRIGGER IF EXISTS routines_own_name_insert;
CREATE TRIGGER routines_own_name_insert AFTER INSERT ON routines FOR EACH ROW
BEGIN
    IF NEW.name_unique THEN
        DELETE n FROM routine_names AS n LEFT JOIN routines AS r
            ON CAST(r.id AS CHAR) = n.routine_id AND r.name = n.name AND r.name_unique
            WHERE n.name = NEW.name AND r.id IS NULL;
        INSERT INTO routine_names (name, routine_id) VALUES (NEW.name, CAST(NEW.id AS CHAR));
    END IF;
END;

-- MySQL has no column-specific triggers: the beat's own writes (claims,
-- which never rename) skip the comparisons, as in the edit trigger.
DROP TRIGGER IF EXISTS routines_own_name_update;
CREATE TRIGGER routines_own_name_update AFTER UPDATE ON routines FOR EACH ROW
BEGIN
    IF @celery_beat IS NULL AND (NOT (NEW.id <=> OLD.id) OR NOT (NEW.name <=> OLD.name)
       OR NOT (NEW.name_unique <=> OLD.name_unique)) THEN
        DELETE FROM routine_names WHERE routine_id = CAST(OLD.id AS CHAR);
        IF NEW.name_unique THEN
            DELETE n FROM routine_names AS n LEFT JOIN routines AS r
                ON CAST(r.id AS CHAR) = n.routine_id AND r.name = n.name AND r.name_unique
                WHERE n.name = NEW.name AND r.id IS NULL;
            INSERT INTO routine_names (name, routine_id) VALUES (NEW.name, CAST(NEW.id AS CHAR));
        END IF;
    END IF;
END;

DROP TRIGGER IF EXISTS routines_own_name_delete;
CREATE TRIGGER routines_own_name_delete AFTER DELETE ON routines FOR EACH ROW
BEGIN
    DELETE FROM routine_names WHERE routine_id = CAST(OLD.id AS CHAR);
END;

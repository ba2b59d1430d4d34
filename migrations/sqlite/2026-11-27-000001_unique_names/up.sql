-- See the PostgreSQL migration: one running row per name, owned in
-- `routine_names`.
ALTER TABLE routines ADD COLUMN name_unique BOOLEAN DEFAULT 1;

UPDATE routines SET name_unique = NULL, needs_sync = 1, next_run_at = NULL
WHERE id IN (
    SELECT id FROM (
        SELECT id, row_number() OVER (
            PARTITION BY name ORDER BY total_run_count DESC NULLS LAST, id) AS n
        FROM routines)
    WHERE n > 1);

CREATE TABLE IF NOT EXISTS routine_names (
    name VARCHAR(50) NOT NULL PRIMARY KEY,
    routine_id TEXT NOT NULL
);
INSERT OR IGNORE INTO routine_names (name, routine_id)
SELECT name, id FROM routines WHERE name_unique;
CREATE INDEX IF NOT EXISTS routine_names_routine_idx ON routine_names (routine_id);

CREATE TRIGGER routines_own_name_insert AFTER INSERT ON routines
    FOR EACH ROW WHEN NEW.name_unique
BEGIN
    DELETE FROM routine_names WHERE name = NEW.name
        AND NOT EXISTS (SELECT 1 FROM routines AS r WHERE r.id = routine_names.routine_id
                        AND r.name = routine_names.name AND r.name_unique);
    INSERT INTO routine_names (name, routine_id) VALUES (NEW.name, NEW.id);
END;

CREATE TRIGGER routines_own_name_update AFTER UPDATE OF id, name, name_unique ON routines
    FOR EACH ROW
    WHEN NEW.id IS NOT OLD.id OR NEW.name IS NOT OLD.name OR NEW.name_unique IS NOT OLD.name_unique
BEGIN
    DELETE FROM routine_names WHERE routine_id = OLD.id;
    DELETE FROM routine_names WHERE NEW.name_unique AND name = NEW.name
        AND NOT EXISTS (SELECT 1 FROM routines AS r WHERE r.id = routine_names.routine_id
                        AND r.name = routine_names.name AND r.name_unique);
    INSERT INTO routine_names (name, routine_id)
        SELECT NEW.name, NEW.id WHERE NEW.name_unique;
END;

CREATE TRIGGER routines_own_name_delete AFTER DELETE ON routines
    FOR EACH ROW
BEGIN
    DELETE FROM routine_names WHERE routine_id = OLD.id;
END;

-- Back to the name triggers of the unique_names migration.
DROP TRIGGER IF EXISTS routines_after_insert;
DROP TRIGGER IF EXISTS routines_after_update;
DROP TRIGGER IF EXISTS routines_after_delete;

CREATE TRIGGER routines_own_name_insert AFTER INSERT ON routines FOR EACH ROW
BEGIN
    IF NEW.name_unique THEN
        DELETE n FROM routine_names AS n LEFT JOIN routines AS r
            ON CAST(r.id AS CHAR) = n.routine_id AND r.name = n.name AND r.name_unique
            WHERE n.name = NEW.name AND r.id IS NULL;
        INSERT INTO routine_names (name, routine_id) VALUES (NEW.name, CAST(NEW.id AS CHAR));
    END IF;
END;

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

CREATE TRIGGER routines_own_name_delete AFTER DELETE ON routines FOR EACH ROW
BEGIN
    DELETE FROM routine_names WHERE routine_id = CAST(OLD.id AS CHAR);
END;

DROP TABLE IF EXISTS routine_edits;

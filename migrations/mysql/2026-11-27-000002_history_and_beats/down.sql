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
ALTER TABLE routines DROP COLUMN run_requested_at;
DROP TABLE IF EXISTS beats;
DROP TABLE IF EXISTS routine_runs;

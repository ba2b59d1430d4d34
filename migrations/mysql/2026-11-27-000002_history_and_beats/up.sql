-- See the PostgreSQL migration: run history, live beats, run requests.
-- No partial indexes here: the open-runs index leads with the outcome.
CREATE TABLE IF NOT EXISTS routine_runs (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    routine_id VARCHAR(36) NOT NULL,
    routine VARCHAR(255) NOT NULL,
    task VARCHAR(255) NOT NULL,
    due_at DATETIME(6) NOT NULL,
    dispatched_at DATETIME(6) NOT NULL,
    task_id VARCHAR(64) NOT NULL,
    target VARCHAR(8) NOT NULL,
    on_demand BOOL NOT NULL DEFAULT 0,
    beat_id VARCHAR(36) NULL,
    outcome VARCHAR(16) NOT NULL,
    attempts INTEGER NULL,
    error TEXT NULL,
    started_at DATETIME(6) NULL,
    finished_at DATETIME(6) NULL,
    KEY routine_runs_routine_idx (routine_id, id),
    KEY routine_runs_open_idx (outcome, routine_id)
);

CREATE TABLE IF NOT EXISTS beats (
    id VARCHAR(36) NOT NULL PRIMARY KEY,
    host VARCHAR(255) NOT NULL,
    pid INTEGER NOT NULL,
    version VARCHAR(32) NOT NULL,
    started_at DATETIME(6) NOT NULL,
    heartbeat_at DATETIME(6) NOT NULL,
    stopped_at DATETIME(6) NULL,
    tasks TEXT NOT NULL,
    broker BOOL NOT NULL DEFAULT 0
);

SET @sql := IF((SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = DATABASE()
                AND table_name = 'routines' AND column_name = 'run_requested_at') = 0,
    'ALTER TABLE routines ADD COLUMN run_requested_at DATETIME(6) NULL', 'DO 0');
PREPARE stmt FROM @sql; EXECUTE stmt; DEALLOCATE PREPARE stmt;

-- The edit trigger, now also marking a run request (the beat's own writes,
-- which clear requests, skip it as before).
DROP TRIGGER IF EXISTS routines_mark_edited;
CREATE TRIGGER routines_mark_edited BEFORE UPDATE ON routines FOR EACH ROW
BEGIN
    IF @celery_beat IS NULL THEN
        IF NOT (CAST(NEW.schedule AS BINARY) <=> CAST(OLD.schedule AS BINARY))
           OR NOT (NEW.active <=> OLD.active) THEN
            SET NEW.needs_sync = 1, NEW.next_run_at = NULL;
        ELSEIF NOT (CAST(NEW.task AS BINARY) <=> CAST(OLD.task AS BINARY))
           OR NOT (CAST(NEW.kwargs AS BINARY) <=> CAST(OLD.kwargs AS BINARY))
           OR NOT (CAST(NEW.options AS BINARY) <=> CAST(OLD.options AS BINARY))
           OR (NEW.run_requested_at IS NOT NULL
               AND NOT (NEW.run_requested_at <=> OLD.run_requested_at)) THEN
            SET NEW.needs_sync = 1;
        END IF;
    END IF;
END;

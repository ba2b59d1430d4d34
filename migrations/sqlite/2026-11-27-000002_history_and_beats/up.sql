-- See the PostgreSQL migration: run history, live beats, run requests.
CREATE TABLE IF NOT EXISTS routine_runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    routine_id TEXT NOT NULL,
    routine VARCHAR(255) NOT NULL,
    task VARCHAR(255) NOT NULL,
    due_at TIMESTAMP NOT NULL,
    dispatched_at TIMESTAMP NOT NULL,
    task_id VARCHAR(64) NOT NULL,
    target VARCHAR(8) NOT NULL,
    on_demand BOOLEAN NOT NULL DEFAULT 0,
    beat_id VARCHAR(36),
    outcome VARCHAR(16) NOT NULL,
    attempts INTEGER,
    error TEXT,
    started_at TIMESTAMP,
    finished_at TIMESTAMP
);
CREATE INDEX IF NOT EXISTS routine_runs_routine_idx ON routine_runs (routine_id, id);
CREATE INDEX IF NOT EXISTS routine_runs_open_idx ON routine_runs (routine_id)
    WHERE outcome IN ('queued', 'running', 'retrying');

CREATE TABLE IF NOT EXISTS beats (
    id VARCHAR(36) NOT NULL PRIMARY KEY,
    host VARCHAR(255) NOT NULL,
    pid INTEGER NOT NULL,
    version VARCHAR(32) NOT NULL,
    started_at TIMESTAMP NOT NULL,
    heartbeat_at TIMESTAMP NOT NULL,
    stopped_at TIMESTAMP,
    tasks TEXT NOT NULL DEFAULT '[]',
    broker BOOLEAN NOT NULL DEFAULT 0
);

ALTER TABLE routines ADD COLUMN run_requested_at TIMESTAMP;

CREATE TRIGGER routines_mark_requested
    AFTER UPDATE OF run_requested_at ON routines
    FOR EACH ROW
    WHEN NEW.run_requested_at IS NOT NULL AND NEW.run_requested_at IS NOT OLD.run_requested_at
BEGIN
    UPDATE routines SET needs_sync = 1 WHERE id = NEW.id;
END;

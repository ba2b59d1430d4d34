-- The routines table of celery-sqlalchemy-kit (same columns; SQLite keeps
-- JSON as text and uuids as their 36-character text), then the beat's own
-- columns, added the same way as on a table the kit created.
CREATE TABLE IF NOT EXISTS routines (
    id TEXT NOT NULL PRIMARY KEY DEFAULT (
        lower(hex(randomblob(4))) || '-' || lower(hex(randomblob(2))) || '-4' ||
        substr(lower(hex(randomblob(2))), 2) || '-' ||
        substr('89ab', 1 + (abs(random()) % 4), 1) ||
        substr(lower(hex(randomblob(2))), 2) || '-' || lower(hex(randomblob(6)))
    ),
    name VARCHAR(50) NOT NULL,
    task VARCHAR(50) NOT NULL,
    schedule TEXT NOT NULL,
    last_run_at TIMESTAMP,
    total_run_count INTEGER,
    active BOOLEAN NOT NULL DEFAULT 1,
    kwargs TEXT,
    options TEXT
);

ALTER TABLE routines ADD COLUMN next_run_at TIMESTAMP;
ALTER TABLE routines ADD COLUMN needs_sync BOOLEAN NOT NULL DEFAULT 1;
ALTER TABLE routines ADD COLUMN last_error TEXT;

CREATE INDEX routines_due_idx ON routines (next_run_at) WHERE active AND NOT needs_sync;
CREATE INDEX routines_needs_sync_idx ON routines (id) WHERE needs_sync;
-- The periodic checks (rows that lost their plan, rows with errors) read
-- only these, however large the table.
CREATE INDEX IF NOT EXISTS routines_unplanned_idx ON routines (id)
    WHERE active AND next_run_at IS NULL AND last_error IS NULL AND NOT needs_sync;
CREATE INDEX IF NOT EXISTS routines_failed_idx ON routines (id)
    WHERE last_error IS NOT NULL AND NOT needs_sync;
CREATE INDEX IF NOT EXISTS ix_routines_name ON routines (name);

-- See the PostgreSQL migration: edits mark the row for the beat.
CREATE TRIGGER routines_mark_rescheduled
    AFTER UPDATE OF schedule, active ON routines
    FOR EACH ROW
    WHEN NEW.schedule IS NOT OLD.schedule OR NEW.active IS NOT OLD.active
BEGIN
    UPDATE routines SET needs_sync = 1, next_run_at = NULL WHERE id = NEW.id;
END;

CREATE TRIGGER routines_mark_edited
    AFTER UPDATE OF task, kwargs, options ON routines
    FOR EACH ROW
    WHEN NEW.task IS NOT OLD.task OR NEW.kwargs IS NOT OLD.kwargs
        OR NEW.options IS NOT OLD.options
BEGIN
    UPDATE routines SET needs_sync = 1 WHERE id = NEW.id;
END;

-- See the PostgreSQL migration: positional args, jittered dispatch and
-- backfilled runs. SQLite's ADD COLUMN has no IF NOT EXISTS; a migration
-- runs once.
ALTER TABLE routines ADD COLUMN args TEXT;
ALTER TABLE routines ADD COLUMN next_due_at TIMESTAMP;
ALTER TABLE routine_runs ADD COLUMN backfill BOOLEAN NOT NULL DEFAULT 0;

-- The edit and audit triggers, now with args.
DROP TRIGGER IF EXISTS routines_mark_edited;
DROP TRIGGER IF EXISTS routines_audit_insert;
DROP TRIGGER IF EXISTS routines_audit_update;
DROP TRIGGER IF EXISTS routines_audit_delete;

CREATE TRIGGER routines_mark_edited
    AFTER UPDATE OF task, kwargs, options, args ON routines
    FOR EACH ROW
    WHEN NEW.task IS NOT OLD.task OR NEW.kwargs IS NOT OLD.kwargs
        OR NEW.options IS NOT OLD.options OR NEW.args IS NOT OLD.args
BEGIN
    UPDATE routines SET needs_sync = 1 WHERE id = NEW.id;
END;

CREATE TRIGGER routines_audit_insert AFTER INSERT ON routines
BEGIN
    INSERT INTO routine_edits (routine_id, routine, edited_at, action, actor, via, application, changes)
    VALUES (NEW.id, NEW.name, strftime('%Y-%m-%d %H:%M:%f', 'now'), 'insert',
        (SELECT actor FROM routine_edit_actor LIMIT 1),
        COALESCE((SELECT via FROM routine_edit_actor LIMIT 1), 'sql'), NULL,
        json_patch(json_object(
            'name', json_object('new', NEW.name),
            'task', json_object('new', NEW.task),
            'schedule', json_object('new', CASE WHEN json_valid(NEW.schedule) THEN json(NEW.schedule) ELSE NEW.schedule END),
            'active', json_object('new', NEW.active),
            'kwargs', json_object('new', CASE WHEN json_valid(NEW.kwargs) THEN json(NEW.kwargs) ELSE NEW.kwargs END),
            'options', json_object('new', CASE WHEN json_valid(NEW.options) THEN json(NEW.options) ELSE NEW.options END)),
            CASE WHEN NEW.args IS NULL THEN '{}'
                 ELSE json_object('args', json_object('new', CASE WHEN json_valid(NEW.args) THEN json(NEW.args) ELSE NEW.args END)) END));
END;

CREATE TRIGGER routines_audit_update
    AFTER UPDATE OF id, name, task, schedule, active, kwargs, options, args ON routines
    FOR EACH ROW
    WHEN NEW.id IS NOT OLD.id OR NEW.name IS NOT OLD.name OR NEW.task IS NOT OLD.task
        OR NEW.schedule IS NOT OLD.schedule OR NEW.active IS NOT OLD.active
        OR NEW.kwargs IS NOT OLD.kwargs OR NEW.options IS NOT OLD.options
        OR NEW.args IS NOT OLD.args
BEGIN
    INSERT INTO routine_edits (routine_id, routine, edited_at, action, actor, via, application, changes)
    VALUES (NEW.id, NEW.name, strftime('%Y-%m-%d %H:%M:%f', 'now'), 'update',
        (SELECT actor FROM routine_edit_actor LIMIT 1),
        COALESCE((SELECT via FROM routine_edit_actor LIMIT 1), 'sql'), NULL,
        (SELECT json_group_object(c, json(v)) FROM (
            SELECT 'id' AS c, json_object('old', OLD.id, 'new', NEW.id) AS v
                WHERE NEW.id IS NOT OLD.id
            UNION ALL SELECT 'name', json_object('old', OLD.name, 'new', NEW.name)
                WHERE NEW.name IS NOT OLD.name
            UNION ALL SELECT 'task', json_object('old', OLD.task, 'new', NEW.task)
                WHERE NEW.task IS NOT OLD.task
            UNION ALL SELECT 'schedule', json_object(
                    'old', CASE WHEN json_valid(OLD.schedule) THEN json(OLD.schedule) ELSE OLD.schedule END,
                    'new', CASE WHEN json_valid(NEW.schedule) THEN json(NEW.schedule) ELSE NEW.schedule END)
                WHERE NEW.schedule IS NOT OLD.schedule
            UNION ALL SELECT 'active', json_object('old', OLD.active, 'new', NEW.active)
                WHERE NEW.active IS NOT OLD.active
            UNION ALL SELECT 'kwargs', json_object(
                    'old', CASE WHEN json_valid(OLD.kwargs) THEN json(OLD.kwargs) ELSE OLD.kwargs END,
                    'new', CASE WHEN json_valid(NEW.kwargs) THEN json(NEW.kwargs) ELSE NEW.kwargs END)
                WHERE NEW.kwargs IS NOT OLD.kwargs
            UNION ALL SELECT 'options', json_object(
                    'old', CASE WHEN json_valid(OLD.options) THEN json(OLD.options) ELSE OLD.options END,
                    'new', CASE WHEN json_valid(NEW.options) THEN json(NEW.options) ELSE NEW.options END)
                WHERE NEW.options IS NOT OLD.options
            UNION ALL SELECT 'args', json_object(
                    'old', CASE WHEN json_valid(OLD.args) THEN json(OLD.args) ELSE OLD.args END,
                    'new', CASE WHEN json_valid(NEW.args) THEN json(NEW.args) ELSE NEW.args END)
                WHERE NEW.args IS NOT OLD.args)));
END;

CREATE TRIGGER routines_audit_delete AFTER DELETE ON routines
BEGIN
    INSERT INTO routine_edits (routine_id, routine, edited_at, action, actor, via, application, changes)
    VALUES (OLD.id, OLD.name, strftime('%Y-%m-%d %H:%M:%f', 'now'), 'delete',
        (SELECT actor FROM routine_edit_actor LIMIT 1),
        COALESCE((SELECT via FROM routine_edit_actor LIMIT 1), 'sql'), NULL,
        json_patch(json_object(
            'name', json_object('old', OLD.name),
            'task', json_object('old', OLD.task),
            'schedule', json_object('old', CASE WHEN json_valid(OLD.schedule) THEN json(OLD.schedule) ELSE OLD.schedule END),
            'active', json_object('old', OLD.active),
            'kwargs', json_object('old', CASE WHEN json_valid(OLD.kwargs) THEN json(OLD.kwargs) ELSE OLD.kwargs END),
            'options', json_object('old', CASE WHEN json_valid(OLD.options) THEN json(OLD.options) ELSE OLD.options END)),
            CASE WHEN OLD.args IS NULL THEN '{}'
                 ELSE json_object('args', json_object('old', CASE WHEN json_valid(OLD.args) THEN json(OLD.args) ELSE OLD.args END)) END));
END;

-- See the PostgreSQL migration: the audit trail, written by the database.
--
-- Who: SQLite has no sessions or users, so the beat's own code says who
-- acts by writing one row into `routine_edit_actor` inside the transaction
-- of its edit, and deleting it before the commit (SQLite has one writer
-- at a time, so no other connection ever sees that row). An edit without
-- that row is plain SQL.
CREATE TABLE IF NOT EXISTS routine_edits (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    routine_id TEXT NOT NULL,
    routine VARCHAR(255) NOT NULL,
    edited_at TIMESTAMP NOT NULL,
    action VARCHAR(8) NOT NULL,
    actor VARCHAR(255),
    via VARCHAR(16) NOT NULL,
    application VARCHAR(255),
    changes TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS routine_edits_routine_idx ON routine_edits (routine_id, id);

CREATE TABLE IF NOT EXISTS routine_edit_actor (
    actor VARCHAR(255),
    via VARCHAR(16) NOT NULL
);

-- JSON columns are text here, and plain SQL may write text that is not
-- JSON: such a value is recorded as a JSON string.
CREATE TRIGGER routines_audit_insert AFTER INSERT ON routines
BEGIN
    INSERT INTO routine_edits (routine_id, routine, edited_at, action, actor, via, application, changes)
    VALUES (NEW.id, NEW.name, strftime('%Y-%m-%d %H:%M:%f', 'now'), 'insert',
        (SELECT actor FROM routine_edit_actor LIMIT 1),
        COALESCE((SELECT via FROM routine_edit_actor LIMIT 1), 'sql'), NULL,
        json_object(
            'name', json_object('new', NEW.name),
            'task', json_object('new', NEW.task),
            'schedule', json_object('new', CASE WHEN json_valid(NEW.schedule) THEN json(NEW.schedule) ELSE NEW.schedule END),
            'active', json_object('new', NEW.active),
            'kwargs', json_object('new', CASE WHEN json_valid(NEW.kwargs) THEN json(NEW.kwargs) ELSE NEW.kwargs END),
            'options', json_object('new', CASE WHEN json_valid(NEW.options) THEN json(NEW.options) ELSE NEW.options END)));
END;

CREATE TRIGGER routines_audit_update
    AFTER UPDATE OF id, name, task, schedule, active, kwargs, options ON routines
    FOR EACH ROW
    WHEN NEW.id IS NOT OLD.id OR NEW.name IS NOT OLD.name OR NEW.task IS NOT OLD.task
        OR NEW.schedule IS NOT OLD.schedule OR NEW.active IS NOT OLD.active
        OR NEW.kwargs IS NOT OLD.kwargs OR NEW.options IS NOT OLD.options
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
                WHERE NEW.options IS NOT OLD.options)));
END;

CREATE TRIGGER routines_audit_delete AFTER DELETE ON routines
BEGIN
    INSERT INTO routine_edits (routine_id, routine, edited_at, action, actor, via, application, changes)
    VALUES (OLD.id, OLD.name, strftime('%Y-%m-%d %H:%M:%f', 'now'), 'delete',
        (SELECT actor FROM routine_edit_actor LIMIT 1),
        COALESCE((SELECT via FROM routine_edit_actor LIMIT 1), 'sql'), NULL,
        json_object(
            'name', json_object('old', OLD.name),
            'task', json_object('old', OLD.task),
            'schedule', json_object('old', CASE WHEN json_valid(OLD.schedule) THEN json(OLD.schedule) ELSE OLD.schedule END),
            'active', json_object('old', OLD.active),
            'kwargs', json_object('old', CASE WHEN json_valid(OLD.kwargs) THEN json(OLD.kwargs) ELSE OLD.kwargs END),
            'options', json_object('old', CASE WHEN json_valid(OLD.options) THEN json(OLD.options) ELSE OLD.options END)));
END;

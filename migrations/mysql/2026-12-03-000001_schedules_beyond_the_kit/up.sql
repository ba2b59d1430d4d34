-- See the PostgreSQL migration: positional args, jittered dispatch and
-- backfilled runs. Columns are added only where missing (MySQL has no
-- ADD COLUMN IF NOT EXISTS; MariaDB has, MySQL 8 has not).
SET @sql := IF((SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = DATABASE()
                AND table_name = 'routines' AND column_name = 'args') = 0,
    'ALTER TABLE routines ADD COLUMN args JSON NULL', 'DO 0');
PREPARE stmt FROM @sql; EXECUTE stmt; DEALLOCATE PREPARE stmt;
SET @sql := IF((SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = DATABASE()
                AND table_name = 'routines' AND column_name = 'next_due_at') = 0,
    'ALTER TABLE routines ADD COLUMN next_due_at DATETIME(6) NULL', 'DO 0');
PREPARE stmt FROM @sql; EXECUTE stmt; DEALLOCATE PREPARE stmt;
SET @sql := IF((SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = DATABASE()
                AND table_name = 'routine_runs' AND column_name = 'backfill') = 0,
    'ALTER TABLE routine_runs ADD COLUMN backfill BOOLEAN NOT NULL DEFAULT 0', 'DO 0');
PREPARE stmt FROM @sql; EXECUTE stmt; DEALLOCATE PREPARE stmt;

-- The edit and audit triggers, now with args.
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
           OR NOT (CAST(NEW.args AS BINARY) <=> CAST(OLD.args AS BINARY))
           OR (NEW.run_requested_at IS NOT NULL
               AND NOT (NEW.run_requested_at <=> OLD.run_requested_at)) THEN
            SET NEW.needs_sync = 1;
        END IF;
    END IF;
END;


DROP TRIGGER IF EXISTS routines_own_name_insert;
DROP TRIGGER IF EXISTS routines_after_insert;
CREATE TRIGGER routines_after_insert AFTER INSERT ON routines FOR EACH ROW
BEGIN
    IF NEW.name_unique THEN
        DELETE n FROM routine_names AS n LEFT JOIN routines AS r
            ON CAST(r.id AS CHAR) = n.routine_id AND r.name = n.name AND r.name_unique
            WHERE n.name = NEW.name AND r.id IS NULL;
        INSERT INTO routine_names (name, routine_id) VALUES (NEW.name, CAST(NEW.id AS CHAR));
    END IF;
    INSERT INTO routine_edits (routine_id, routine, edited_at, action, actor, via, application, changes)
    VALUES (CAST(NEW.id AS CHAR), NEW.name, UTC_TIMESTAMP(6), 'insert',
        IF(@cdk_via IS NULL, LEFT(USER(), 255), @cdk_actor), COALESCE(@cdk_via, 'sql'), NULL,
        JSON_MERGE_PATCH(JSON_OBJECT(
            'name', JSON_OBJECT('new', NEW.name),
            'task', JSON_OBJECT('new', NEW.task),
            'schedule', JSON_OBJECT('new', JSON_EXTRACT(NEW.schedule, '$')),
            'active', JSON_OBJECT('new', NEW.active),
            'kwargs', JSON_OBJECT('new', JSON_EXTRACT(NEW.kwargs, '$')),
            'options', JSON_OBJECT('new', JSON_EXTRACT(NEW.options, '$'))),
            -- args only when set: the kit's rows have none.
            IF(NEW.args IS NULL, JSON_OBJECT(),
               JSON_OBJECT('args', JSON_OBJECT('new', JSON_EXTRACT(NEW.args, '$'))))));
END;

DROP TRIGGER IF EXISTS routines_own_name_update;
DROP TRIGGER IF EXISTS routines_after_update;
CREATE TRIGGER routines_after_update AFTER UPDATE ON routines FOR EACH ROW
BEGIN
    -- The beat's claims stop at this test, as they did before the audit.
    IF @celery_beat IS NULL THEN edited: BEGIN
        DECLARE changes LONGTEXT DEFAULT '{}';
        IF NOT (NEW.id <=> OLD.id) OR NOT (NEW.name <=> OLD.name)
           OR NOT (NEW.name_unique <=> OLD.name_unique) THEN
            DELETE FROM routine_names WHERE routine_id = CAST(OLD.id AS CHAR);
            IF NEW.name_unique THEN
                DELETE n FROM routine_names AS n LEFT JOIN routines AS r
                    ON CAST(r.id AS CHAR) = n.routine_id AND r.name = n.name AND r.name_unique
                    WHERE n.name = NEW.name AND r.id IS NULL;
                INSERT INTO routine_names (name, routine_id) VALUES (NEW.name, CAST(NEW.id AS CHAR));
            END IF;
        END IF;
        IF NOT (CAST(NEW.id AS BINARY) <=> CAST(OLD.id AS BINARY)) THEN
            SET changes = JSON_SET(changes, '$.id',
                JSON_OBJECT('old', CAST(OLD.id AS CHAR), 'new', CAST(NEW.id AS CHAR)));
        END IF;
        IF NOT (CAST(NEW.name AS BINARY) <=> CAST(OLD.name AS BINARY)) THEN
            SET changes = JSON_SET(changes, '$.name', JSON_OBJECT('old', OLD.name, 'new', NEW.name));
        END IF;
        IF NOT (CAST(NEW.task AS BINARY) <=> CAST(OLD.task AS BINARY)) THEN
            SET changes = JSON_SET(changes, '$.task', JSON_OBJECT('old', OLD.task, 'new', NEW.task));
        END IF;
        IF NOT (CAST(NEW.schedule AS BINARY) <=> CAST(OLD.schedule AS BINARY)) THEN
            SET changes = JSON_SET(changes, '$.schedule', JSON_OBJECT(
                'old', JSON_EXTRACT(OLD.schedule, '$'), 'new', JSON_EXTRACT(NEW.schedule, '$')));
        END IF;
        IF NOT (NEW.active <=> OLD.active) THEN
            SET changes = JSON_SET(changes, '$.active',
                JSON_OBJECT('old', OLD.active, 'new', NEW.active));
        END IF;
        IF NOT (CAST(NEW.kwargs AS BINARY) <=> CAST(OLD.kwargs AS BINARY)) THEN
            SET changes = JSON_SET(changes, '$.kwargs', JSON_OBJECT(
                'old', JSON_EXTRACT(OLD.kwargs, '$'), 'new', JSON_EXTRACT(NEW.kwargs, '$')));
        END IF;
        IF NOT (CAST(NEW.options AS BINARY) <=> CAST(OLD.options AS BINARY)) THEN
            SET changes = JSON_SET(changes, '$.options', JSON_OBJECT(
                'old', JSON_EXTRACT(OLD.options, '$'), 'new', JSON_EXTRACT(NEW.options, '$')));
        END IF;
        IF NOT (CAST(NEW.args AS BINARY) <=> CAST(OLD.args AS BINARY)) THEN
            SET changes = JSON_SET(changes, '$.args', JSON_OBJECT(
                'old', JSON_EXTRACT(OLD.args, '$'), 'new', JSON_EXTRACT(NEW.args, '$')));
        END IF;
        IF changes <> '{}' THEN
            INSERT INTO routine_edits
                (routine_id, routine, edited_at, action, actor, via, application, changes)
            VALUES (CAST(NEW.id AS CHAR), NEW.name, UTC_TIMESTAMP(6), 'update',
                IF(@cdk_via IS NULL, LEFT(USER(), 255), @cdk_actor), COALESCE(@cdk_via, 'sql'),
                NULL, changes);
        END IF;
    END edited; END IF;
END;

DROP TRIGGER IF EXISTS routines_own_name_delete;
DROP TRIGGER IF EXISTS routines_after_delete;
CREATE TRIGGER routines_after_delete AFTER DELETE ON routines FOR EACH ROW
BEGIN
    DELETE FROM routine_names WHERE routine_id = CAST(OLD.id AS CHAR);
    INSERT INTO routine_edits (routine_id, routine, edited_at, action, actor, via, application, changes)
    VALUES (CAST(OLD.id AS CHAR), OLD.name, UTC_TIMESTAMP(6), 'delete',
        IF(@cdk_via IS NULL, LEFT(USER(), 255), @cdk_actor), COALESCE(@cdk_via, 'sql'), NULL,
        JSON_MERGE_PATCH(JSON_OBJECT(
            'name', JSON_OBJECT('old', OLD.name),
            'task', JSON_OBJECT('old', OLD.task),
            'schedule', JSON_OBJECT('old', JSON_EXTRACT(OLD.schedule, '$')),
            'active', JSON_OBJECT('old', OLD.active),
            'kwargs', JSON_OBJECT('old', JSON_EXTRACT(OLD.kwargs, '$')),
            'options', JSON_OBJECT('old', JSON_EXTRACT(OLD.options, '$'))),
            -- args only when set: the kit's rows have none.
            IF(OLD.args IS NULL, JSON_OBJECT(),
               JSON_OBJECT('args', JSON_OBJECT('old', JSON_EXTRACT(OLD.args, '$'))))));
END;

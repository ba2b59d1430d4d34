-- The audit trail: one row for every insert, update and delete of a
-- routine, by whatever means (plain SQL, `beat` subcommands, the
-- dashboard, a beat syncing its declared routines), written by the
-- database itself so that nothing escapes it.
--
-- Who: the beat's own code says who acts (an operator's name, or a beat's
-- id) in two transaction-local settings, `celery_diesel_kit.actor` and
-- `celery_diesel_kit.via`; any other session is plain SQL, named by its
-- database user and `application_name`.
--
-- The beat's bookkeeping (last_run_at, total_run_count, next_run_at,
-- needs_sync, last_error, run_requested_at, name_unique) is not an edit:
-- the update trigger fires only for UPDATEs that set an audited column
-- (`UPDATE OF`), so a claim costs no trigger call at all.
CREATE TABLE IF NOT EXISTS routine_edits (
    id bigserial PRIMARY KEY,
    routine_id text NOT NULL,
    -- The routine's name after the edit (before it, for a delete).
    routine character varying(255) NOT NULL,
    edited_at timestamp without time zone NOT NULL,
    -- insert | update | delete
    action character varying(8) NOT NULL,
    -- An operator's name, a beat's id, or the database user.
    actor character varying(255),
    -- cli | dashboard | beat | library | sql
    via character varying(16) NOT NULL,
    -- Plain SQL: the session's application_name.
    application character varying(255),
    -- JSON: {"column": {"old": …, "new": …}}, the changed columns only
    -- (an insert has no "old", a delete no "new").
    changes text NOT NULL
);
-- A routine's edits, newest first (`beat log NAME`, the routine's page,
-- the pruning by count).
CREATE INDEX IF NOT EXISTS routine_edits_routine_idx ON routine_edits (routine_id, id);

CREATE OR REPLACE FUNCTION routines_audit() RETURNS trigger AS $$
DECLARE
    via text := NULLIF(current_setting('celery_diesel_kit.via', true), '');
    actor text := NULLIF(current_setting('celery_diesel_kit.actor', true), '');
    application text := NULL;
    changes jsonb := '{}';
    side text := CASE TG_OP WHEN 'INSERT' THEN 'new' ELSE 'old' END;
    row_ routines := CASE TG_OP WHEN 'DELETE' THEN OLD ELSE NEW END;
BEGIN
    IF via IS NULL THEN
        via := 'sql';
        actor := session_user;
        application := left(NULLIF(current_setting('application_name', true), ''), 255);
    END IF;
    IF TG_OP = 'UPDATE' THEN
        IF NEW.id IS DISTINCT FROM OLD.id THEN
            changes := changes || jsonb_build_object('id',
                jsonb_build_object('old', OLD.id, 'new', NEW.id));
        END IF;
        IF NEW.name IS DISTINCT FROM OLD.name THEN
            changes := changes || jsonb_build_object('name',
                jsonb_build_object('old', OLD.name, 'new', NEW.name));
        END IF;
        IF NEW.task IS DISTINCT FROM OLD.task THEN
            changes := changes || jsonb_build_object('task',
                jsonb_build_object('old', OLD.task, 'new', NEW.task));
        END IF;
        IF NEW.schedule::text IS DISTINCT FROM OLD.schedule::text THEN
            changes := changes || jsonb_build_object('schedule',
                jsonb_build_object('old', OLD.schedule, 'new', NEW.schedule));
        END IF;
        IF NEW.active IS DISTINCT FROM OLD.active THEN
            changes := changes || jsonb_build_object('active',
                jsonb_build_object('old', OLD.active, 'new', NEW.active));
        END IF;
        IF NEW.kwargs::text IS DISTINCT FROM OLD.kwargs::text THEN
            changes := changes || jsonb_build_object('kwargs',
                jsonb_build_object('old', OLD.kwargs, 'new', NEW.kwargs));
        END IF;
        IF NEW.options::text IS DISTINCT FROM OLD.options::text THEN
            changes := changes || jsonb_build_object('options',
                jsonb_build_object('old', OLD.options, 'new', NEW.options));
        END IF;
    ELSE
        changes := jsonb_build_object(
            'name', jsonb_build_object(side, row_.name),
            'task', jsonb_build_object(side, row_.task),
            'schedule', jsonb_build_object(side, row_.schedule),
            'active', jsonb_build_object(side, row_.active),
            'kwargs', jsonb_build_object(side, row_.kwargs),
            'options', jsonb_build_object(side, row_.options));
    END IF;
    INSERT INTO routine_edits
        (routine_id, routine, edited_at, action, actor, via, application, changes)
    VALUES (row_.id::text, row_.name, (clock_timestamp() AT TIME ZONE 'utc')::timestamp(6),
            lower(TG_OP), left(actor, 255), left(via, 16), application, changes::text);
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS routines_audit_insert ON routines;
CREATE TRIGGER routines_audit_insert AFTER INSERT ON routines
    FOR EACH ROW EXECUTE FUNCTION routines_audit();
DROP TRIGGER IF EXISTS routines_audit_update ON routines;
CREATE TRIGGER routines_audit_update
    AFTER UPDATE OF id, name, task, schedule, active, kwargs, options ON routines
    FOR EACH ROW
    WHEN (NEW.id IS DISTINCT FROM OLD.id OR NEW.name IS DISTINCT FROM OLD.name
          OR NEW.task IS DISTINCT FROM OLD.task
          OR NEW.schedule::text IS DISTINCT FROM OLD.schedule::text
          OR NEW.active IS DISTINCT FROM OLD.active
          OR NEW.kwargs::text IS DISTINCT FROM OLD.kwargs::text
          OR NEW.options::text IS DISTINCT FROM OLD.options::text)
    EXECUTE FUNCTION routines_audit();
DROP TRIGGER IF EXISTS routines_audit_delete ON routines;
CREATE TRIGGER routines_audit_delete AFTER DELETE ON routines
    FOR EACH ROW EXECUTE FUNCTION routines_audit();

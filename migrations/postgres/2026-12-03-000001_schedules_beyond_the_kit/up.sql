-- Schedules beyond the kit (docs/schedules.md): positional args, jittered
-- dispatch, and backfilled runs. Every added column is nullable or
-- defaulted, so the Python kit keeps working on the same table.

-- Positional args of the task (a JSON array; NULL: none), sent as Celery's
-- `send_task(args=...)` sends them. An edit of them is an edit like one of
-- kwargs: it marks the row, keeps its planned time, and is audited.
ALTER TABLE routines ADD COLUMN IF NOT EXISTS args json;
-- The due time of the next run when it is dispatched later than due (a
-- schedule's `jitter`): `next_run_at` is then the dispatch time. NULL:
-- `next_run_at` is the due time. Written with `next_run_at`, always.
ALTER TABLE routines ADD COLUMN IF NOT EXISTS next_due_at timestamp without time zone;
-- Runs dispatched by `beat backfill` for past due times.
ALTER TABLE routine_runs ADD COLUMN IF NOT EXISTS backfill boolean NOT NULL DEFAULT false;

DROP TRIGGER IF EXISTS routines_mark_edited ON routines;
CREATE TRIGGER routines_mark_edited
    BEFORE UPDATE OF task, kwargs, options, args ON routines
    FOR EACH ROW
    WHEN (NEW.task IS DISTINCT FROM OLD.task
          OR NEW.kwargs::text IS DISTINCT FROM OLD.kwargs::text
          OR NEW.options::text IS DISTINCT FROM OLD.options::text
          OR NEW.args::text IS DISTINCT FROM OLD.args::text)
    EXECUTE FUNCTION routines_mark_edited();

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
        IF NEW.args::text IS DISTINCT FROM OLD.args::text THEN
            changes := changes || jsonb_build_object('args',
                jsonb_build_object('old', OLD.args, 'new', NEW.args));
        END IF;
    ELSE
        changes := jsonb_build_object(
            'name', jsonb_build_object(side, row_.name),
            'task', jsonb_build_object(side, row_.task),
            'schedule', jsonb_build_object(side, row_.schedule),
            'active', jsonb_build_object(side, row_.active),
            'kwargs', jsonb_build_object(side, row_.kwargs),
            'options', jsonb_build_object(side, row_.options))
            || CASE WHEN row_.args IS NULL THEN '{}'::jsonb
                    ELSE jsonb_build_object('args', jsonb_build_object(side, row_.args)) END;
    END IF;
    INSERT INTO routine_edits
        (routine_id, routine, edited_at, action, actor, via, application, changes)
    VALUES (row_.id::text, row_.name, (clock_timestamp() AT TIME ZONE 'utc')::timestamp(6),
            lower(TG_OP), left(actor, 255), left(via, 16), application, changes::text);
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS routines_audit_update ON routines;
CREATE TRIGGER routines_audit_update
    AFTER UPDATE OF id, name, task, schedule, active, kwargs, options, args ON routines
    FOR EACH ROW
    WHEN (NEW.id IS DISTINCT FROM OLD.id OR NEW.name IS DISTINCT FROM OLD.name
          OR NEW.task IS DISTINCT FROM OLD.task
          OR NEW.schedule::text IS DISTINCT FROM OLD.schedule::text
          OR NEW.active IS DISTINCT FROM OLD.active
          OR NEW.kwargs::text IS DISTINCT FROM OLD.kwargs::text
          OR NEW.options::text IS DISTINCT FROM OLD.options::text
          OR NEW.args::text IS DISTINCT FROM OLD.args::text)
    EXECUTE FUNCTION routines_audit();

-- A routine's name is its key: the kit and the beat match declared
-- routines by name, and two beats starting together must not both insert
-- one. The kit's table does not make names unique, and may already hold
-- duplicates. `name_unique` is true on the row of each name that runs, and
-- NULL on any other row of the same name, which the beat reports (its
-- last_error) and never runs.
ALTER TABLE routines ADD COLUMN IF NOT EXISTS name_unique boolean DEFAULT true;

-- Names already shared: the row that has run most (then the lowest id)
-- keeps running.
UPDATE routines SET name_unique = NULL, needs_sync = true, next_run_at = NULL
WHERE id IN (
    SELECT id FROM (
        SELECT id, row_number() OVER (
            PARTITION BY name ORDER BY total_run_count DESC NULLS LAST, id) AS n
        FROM routines) AS ranked
    WHERE n > 1);

-- Who owns each name: the one row that runs under it. The primary key makes
-- names unique among such rows. It lives beside `routines` rather than as a
-- unique index on it, because a claim rewrites every row it fires (and so
-- every index entry of it: `next_run_at` is indexed, no update is HOT); a
-- unique index there cost a tenth of a burst's time (measured), while these
-- triggers run only when a row is inserted, renamed or deleted.
CREATE TABLE IF NOT EXISTS routine_names (
    name character varying(50) NOT NULL PRIMARY KEY,
    routine_id uuid NOT NULL
);
INSERT INTO routine_names (name, routine_id)
SELECT name, id FROM routines WHERE name_unique
ON CONFLICT DO NOTHING;
CREATE INDEX IF NOT EXISTS routine_names_routine_idx ON routine_names (routine_id);

-- A row that runs takes its name; a name whose owner is gone (deleted
-- without this trigger, say by TRUNCATE) is free again; a name that another
-- running row owns is refused (unique_violation on routine_names_pkey).
CREATE OR REPLACE FUNCTION routines_own_name() RETURNS trigger AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        DELETE FROM routine_names WHERE routine_id = OLD.id;
    END IF;
    IF TG_OP <> 'DELETE' AND NEW.name_unique THEN
        DELETE FROM routine_names AS n WHERE n.name = NEW.name
            AND NOT EXISTS (SELECT 1 FROM routines AS r
                            WHERE r.id = n.routine_id AND r.name = n.name AND r.name_unique);
        INSERT INTO routine_names (name, routine_id) VALUES (NEW.name, NEW.id);
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS routines_own_name_insert ON routines;
CREATE TRIGGER routines_own_name_insert AFTER INSERT ON routines
    FOR EACH ROW EXECUTE FUNCTION routines_own_name();
DROP TRIGGER IF EXISTS routines_own_name_update ON routines;
CREATE TRIGGER routines_own_name_update AFTER UPDATE OF id, name, name_unique ON routines
    FOR EACH ROW
    WHEN (NEW.id IS DISTINCT FROM OLD.id OR NEW.name IS DISTINCT FROM OLD.name
          OR NEW.name_unique IS DISTINCT FROM OLD.name_unique)
    EXECUTE FUNCTION routines_own_name();
DROP TRIGGER IF EXISTS routines_own_name_delete ON routines;
CREATE TRIGGER routines_own_name_delete AFTER DELETE ON routines
    FOR EACH ROW EXECUTE FUNCTION routines_own_name();

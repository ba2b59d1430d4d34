-- A routine's name is its key: the kit and the beat match declared
-- routines by name, and two beats starting together must not both insert
-- one. The kit's table does not make names unique, and may already hold
-- duplicates. `name_unique` is true on the row of each name that runs, and
-- NULL on any other row of the same name, which the beat reports (its
-- last_error) and never runs. NULLs are distinct in a unique index, so the
-- index allows one runnable row per name and any number of reported ones.
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

CREATE UNIQUE INDEX IF NOT EXISTS routines_name_unique_idx ON routines (name, name_unique);

-- It serves every lookup by name the kit's own index served, so that one
-- goes: a claim writes one index entry fewer per row (measured: the claim's
-- UPDATE of 1,000 rows costs as much as before the unique index came).
DROP INDEX IF EXISTS ix_routines_name;

DROP TRIGGER IF EXISTS routines_own_name_delete ON routines;
DROP TRIGGER IF EXISTS routines_own_name_update ON routines;
DROP TRIGGER IF EXISTS routines_own_name_insert ON routines;
DROP FUNCTION IF EXISTS routines_own_name();
DROP TABLE IF EXISTS routine_names;
ALTER TABLE routines DROP COLUMN IF EXISTS name_unique;

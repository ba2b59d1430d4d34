DROP TRIGGER IF EXISTS routines_own_name_delete;
DROP TRIGGER IF EXISTS routines_own_name_update;
DROP TRIGGER IF EXISTS routines_own_name_insert;
DROP TABLE IF EXISTS routine_names;
ALTER TABLE routines DROP COLUMN name_unique;

DROP TRIGGER IF EXISTS routines_audit_insert ON routines;
DROP TRIGGER IF EXISTS routines_audit_update ON routines;
DROP TRIGGER IF EXISTS routines_audit_delete ON routines;
DROP FUNCTION IF EXISTS routines_audit();
DROP TABLE IF EXISTS routine_edits;

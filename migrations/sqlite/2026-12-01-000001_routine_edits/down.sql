DROP TRIGGER IF EXISTS routines_audit_insert;
DROP TRIGGER IF EXISTS routines_audit_update;
DROP TRIGGER IF EXISTS routines_audit_delete;
DROP TABLE IF EXISTS routine_edit_actor;
DROP TABLE IF EXISTS routine_edits;

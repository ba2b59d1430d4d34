UPDATE routine_runs SET target = 'local' WHERE target IN ('in_process', 'none');
ALTER TABLE routine_runs ALTER COLUMN target TYPE character varying(8);

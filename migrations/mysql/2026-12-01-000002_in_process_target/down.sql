UPDATE routine_runs SET target = 'local' WHERE target IN ('in_process', 'none');
ALTER TABLE routine_runs MODIFY target VARCHAR(8) NOT NULL;

UPDATE routine_runs SET target = 'local' WHERE target IN ('in_process', 'none');

-- One name for where a run goes, in the history as in the metrics:
-- `in_process` (was `local`), `celery`, and `none` (a run on demand of a
-- routine that cannot run). SQLite does not bound a VARCHAR's length.
UPDATE routine_runs SET target = 'in_process' WHERE target = 'local';

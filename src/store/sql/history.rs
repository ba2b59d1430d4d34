//! The statements of the run history (`routine_runs`), the audit trail
//! (`routine_edits`) and the registry of beats (`beats`), in each dialect:
//! written out once per store, as [`HistorySql`].

use std::time::Duration;

/// Outcomes of a run that has not ended: an in-process run queued, running
/// or waiting for a retry.
const OPEN: &str = "('queued', 'running', 'retrying')";

/// Outcomes of a run that was dispatched (published, or handed to a
/// worker), whatever became of it: a due time with one of these has run,
/// for `beat backfill`. `skipped` and `missed` are the due times that did
/// not.
const DISPATCHED: &str = "('published', 'queued', 'running', 'retrying', 'succeeded', \
    'failed', 'abandoned', 'lost')";

/// What differs between dialects in the history statements.
pub(in crate::store) struct Dialect {
    /// The database's clock, as a naive UTC timestamp expression.
    now: &'static str,
    /// `now` less a number of milliseconds, the placeholder given as `{ms}`.
    now_less: &'static str,
    /// Placeholder style: `$1` (PostgreSQL) or `?`.
    numbered: bool,
    run_columns: &'static str,
    beat_columns: &'static str,
    /// Inserts runs (see `WriteTransaction::write_runs` for the binds).
    insert_runs: &'static str,
    /// The texts of a JSON array, as rows of one column; the placeholder
    /// given as `{p}`.
    json_texts: &'static str,
    /// Deletes the runs whose ids are in the JSON array `$1`.
    json_ids_delete: &'static str,
    /// Sets `run_requested_at` of the routine named `$1`.
    mark_requested: &'static str,
    edit_columns: &'static str,
    /// Deletes the edits whose ids are in the JSON array `$1`.
    json_ids_delete_edits: &'static str,
    /// The columns of a `RoutineRow` (`sql::PG_COLUMNS`, ...).
    routine_columns: &'static str,
    /// What makes a read lock the rows it reads: ` FOR UPDATE`, or
    /// nothing on SQLite (whose write transaction is already exclusive).
    for_update: &'static str,
}

/// One dialect's history statements, written out once.
pub(in crate::store) struct HistorySql {
    pub(in crate::store) insert_runs: &'static str,
    pub(in crate::store) busy: String,
    pub(in crate::store) json_ids_delete: &'static str,
    pub(in crate::store) mark_requested: &'static str,
    pub(in crate::store) update_run: String,
    pub(in crate::store) delete_run: String,
    pub(in crate::store) register: String,
    pub(in crate::store) heartbeat: String,
    pub(in crate::store) stopped: String,
    pub(in crate::store) end_own_runs: String,
    pub(in crate::store) forget_own_runs: String,
    pub(in crate::store) mark_lost: String,
    pub(in crate::store) aged_runs: String,
    pub(in crate::store) excess_runs: String,
    pub(in crate::store) prune_beats: String,
    pub(in crate::store) beats: String,
    pub(in crate::store) aged_edits: String,
    pub(in crate::store) edits_after: String,
    pub(in crate::store) excess_edits: String,
    pub(in crate::store) json_ids_delete_edits: &'static str,
    /// Reads and locks the routine of id `$1` (`beat backfill`).
    pub(in crate::store) lock_routine: String,
    /// The task ids of routine `$1`'s dispatched runs due from `$2` to `$3`.
    pub(in crate::store) dispatched_between: String,
    pub(in crate::store) dialect: Dialect,
}

impl HistorySql {
    fn new(dialect: Dialect) -> Self {
        HistorySql {
            insert_runs: dialect.insert_runs,
            busy: dialect.busy(),
            json_ids_delete: dialect.json_ids_delete,
            mark_requested: dialect.mark_requested,
            update_run: dialect.update_run(),
            delete_run: dialect.delete_run(),
            register: dialect.register(),
            heartbeat: dialect.heartbeat(),
            stopped: dialect.stopped(),
            end_own_runs: dialect.end_own_runs(),
            forget_own_runs: dialect.forget_own_runs(),
            mark_lost: dialect.mark_lost(),
            aged_runs: dialect.aged_runs(),
            excess_runs: dialect.excess_runs(),
            prune_beats: dialect.prune_beats(),
            beats: dialect.beats(),
            aged_edits: dialect.aged_edits(),
            edits_after: dialect.edits_after(),
            excess_edits: dialect.excess_edits(),
            json_ids_delete_edits: dialect.json_ids_delete_edits,
            lock_routine: dialect.lock_routine(),
            dispatched_between: dialect.dispatched_between(),
            dialect,
        }
    }
}

pub(in crate::store) fn postgres() -> HistorySql {
    HistorySql::new(Dialect {
        now: "(clock_timestamp() AT TIME ZONE 'utc')::timestamp(6)",
        now_less: "((clock_timestamp() AT TIME ZONE 'utc') - {ms} * interval '1 millisecond')",
        numbered: true,
        run_columns: "id, routine_id, routine::text AS routine, task::text AS task, \
            due_at::text AS due_at, dispatched_at::text AS dispatched_at, \
            task_id::text AS task_id, target::text AS target, on_demand, backfill, \
            beat_id::text AS beat_id, outcome::text AS outcome, attempts, error, \
            started_at::text AS started_at, finished_at::text AS finished_at",
        beat_columns: "id::text AS id, host::text AS host, pid, version::text AS version, \
            started_at::text AS started_at, heartbeat_at::text AS heartbeat_at, \
            stopped_at::text AS stopped_at, tasks, broker, \
            ((clock_timestamp() AT TIME ZONE 'utc')::timestamp(6))::text AS db_now",
        insert_runs: "INSERT INTO routine_runs (routine_id, routine, task, due_at, task_id, \
                target, on_demand, backfill, outcome, error, dispatched_at, beat_id) \
            SELECT v.*, $11::timestamp, $12 FROM unnest($1::text[], $2::text[], $3::text[], \
                $4::timestamp[], $5::text[], $6::text[], $7::bool[], $8::bool[], $9::text[], \
                $10::text[]) AS v",
        json_texts: "SELECT json_array_elements_text({p}::json)",
        json_ids_delete: "DELETE FROM routine_runs \
            WHERE id IN (SELECT json_array_elements_text($1::json)::bigint)",
        mark_requested: "UPDATE routines SET \
            run_requested_at = (clock_timestamp() AT TIME ZONE 'utc')::timestamp(6) \
            WHERE name = $1 AND name_unique",
        edit_columns: "id, routine_id, routine::text AS routine, edited_at::text AS edited_at, \
            action::text AS action, actor::text AS actor, via::text AS via, \
            application::text AS application, changes",
        json_ids_delete_edits: "DELETE FROM routine_edits \
            WHERE id IN (SELECT json_array_elements_text($1::json)::bigint)",
        routine_columns: super::PG_COLUMNS,
        for_update: " FOR UPDATE",
    })
}

pub(in crate::store) fn sqlite() -> HistorySql {
    HistorySql::new(Dialect {
        now: "strftime('%Y-%m-%d %H:%M:%f', 'now')",
        now_less: "strftime('%Y-%m-%d %H:%M:%f', 'now', '-' || ({ms} / 1000.0) || ' seconds')",
        numbered: false,
        run_columns: "id, routine_id, routine, task, CAST(due_at AS TEXT) AS due_at, \
            CAST(dispatched_at AS TEXT) AS dispatched_at, task_id, target, on_demand, backfill, beat_id, \
            outcome, attempts, error, CAST(started_at AS TEXT) AS started_at, \
            CAST(finished_at AS TEXT) AS finished_at",
        beat_columns: "id, host, pid, version, CAST(started_at AS TEXT) AS started_at, \
            CAST(heartbeat_at AS TEXT) AS heartbeat_at, CAST(stopped_at AS TEXT) AS stopped_at, \
            tasks, broker, strftime('%Y-%m-%d %H:%M:%f', 'now') AS db_now",
        insert_runs: "INSERT INTO routine_runs (routine_id, routine, task, due_at, task_id, \
                target, on_demand, backfill, outcome, error, dispatched_at, beat_id) \
            SELECT value ->> '$.r', value ->> '$.n', value ->> '$.t', value ->> '$.d', \
                value ->> '$.i', value ->> '$.g', value ->> '$.o', value ->> '$.b', value ->> '$.x', \
                value ->> '$.e', ?, ? FROM json_each(?)",
        json_texts: "SELECT value FROM json_each({p})",
        json_ids_delete: "DELETE FROM routine_runs WHERE id IN (SELECT value FROM json_each(?))",
        mark_requested: "UPDATE routines SET \
            run_requested_at = strftime('%Y-%m-%d %H:%M:%f', 'now') \
            WHERE name = ? AND name_unique",
        edit_columns: "id, routine_id, routine, CAST(edited_at AS TEXT) AS edited_at, action, \
            actor, via, application, changes",
        json_ids_delete_edits: "DELETE FROM routine_edits \
            WHERE id IN (SELECT value FROM json_each(?))",
        routine_columns: super::SQLITE_COLUMNS,
        for_update: "",
    })
}

#[cfg(feature = "mysql")]
pub(in crate::store) fn mysql() -> HistorySql {
    HistorySql::new(Dialect {
        now: "UTC_TIMESTAMP(6)",
        now_less: "(UTC_TIMESTAMP(6) - INTERVAL ({ms} * 1000) MICROSECOND)",
        numbered: false,
        run_columns: "id, routine_id, routine, task, CAST(due_at AS CHAR) AS due_at, \
            CAST(dispatched_at AS CHAR) AS dispatched_at, task_id, target, on_demand, backfill, beat_id, \
            outcome, attempts, error, CAST(started_at AS CHAR) AS started_at, \
            CAST(finished_at AS CHAR) AS finished_at",
        beat_columns: "id, host, pid, version, CAST(started_at AS CHAR) AS started_at, \
            CAST(heartbeat_at AS CHAR) AS heartbeat_at, CAST(stopped_at AS CHAR) AS stopped_at, \
            tasks, broker, CAST(UTC_TIMESTAMP(6) AS CHAR) AS db_now",
        insert_runs: "INSERT INTO routine_runs (routine_id, routine, task, due_at, task_id, \
                target, on_demand, backfill, outcome, error, dispatched_at, beat_id) \
            SELECT v.r, v.n, v.t, v.d, v.i, v.g, v.o, v.b, v.x, v.e, ?, ? \
            FROM JSON_TABLE(?, '$[*]' COLUMNS ( \
                r VARCHAR(36) PATH '$.r', n VARCHAR(255) PATH '$.n', t VARCHAR(255) PATH '$.t', \
                d VARCHAR(32) PATH '$.d', i VARCHAR(64) PATH '$.i', g VARCHAR(16) PATH '$.g', \
                o INT PATH '$.o', b INT PATH '$.b', x VARCHAR(16) PATH '$.x', \
                e TEXT PATH '$.e')) AS v",
        json_texts: "SELECT v FROM JSON_TABLE({p}, '$[*]' COLUMNS (v VARCHAR(255) PATH '$')) AS t",
        json_ids_delete: "DELETE r FROM routine_runs AS r \
            JOIN JSON_TABLE(?, '$[*]' COLUMNS (v BIGINT PATH '$')) AS t ON r.id = t.v",
        mark_requested: "UPDATE routines SET run_requested_at = UTC_TIMESTAMP(6) \
            WHERE name = ? AND name_unique = 1",
        edit_columns: "id, routine_id, routine, CAST(edited_at AS CHAR) AS edited_at, action, \
            actor, via, application, changes",
        json_ids_delete_edits: "DELETE e FROM routine_edits AS e \
            JOIN JSON_TABLE(?, '$[*]' COLUMNS (v BIGINT PATH '$')) AS t ON e.id = t.v",
        routine_columns: super::MYSQL_COLUMNS,
        for_update: " FOR UPDATE",
    })
}

impl Dialect {
    /// The `n`th placeholder (from 1).
    fn p(&self, n: usize) -> String {
        if self.numbered {
            format!("${n}")
        } else {
            "?".to_owned()
        }
    }

    /// `now - $n ms`.
    fn cutoff(&self, n: usize) -> String {
        self.now_less.replace("{ms}", &self.p(n))
    }

    fn json_texts(&self, n: usize) -> String {
        self.json_texts.replace("{p}", &self.p(n))
    }

    /// Routine ids (JSON array `$1`) with an in-process run still going on
    /// a live beat other than `$2`; a beat is live when it has not stopped
    /// and has heartbeated within `$3` ms.
    fn busy(&self) -> String {
        format!(
            "SELECT DISTINCT r.routine_id AS value FROM routine_runs AS r \
             JOIN beats AS b ON b.id = r.beat_id \
             WHERE r.outcome IN {OPEN} AND r.on_demand = {false_} \
               AND r.routine_id IN ({ids}) AND r.beat_id <> {beat} \
               AND b.stopped_at IS NULL AND b.heartbeat_at > {cutoff}",
            false_ = if self.numbered { "false" } else { "0" },
            ids = self.json_texts(1),
            beat = self.p(2),
            cutoff = self.cutoff(3),
        )
    }

    fn update_run(&self) -> String {
        format!(
            "UPDATE routine_runs SET outcome = {}, attempts = {}, error = {}, \
             started_at = COALESCE({}, started_at), finished_at = {} \
             WHERE routine_id = {} AND task_id = {} AND beat_id = {}",
            self.p(1),
            self.p(2),
            self.p(3),
            self.ts(4),
            self.ts(5),
            self.p(6),
            self.p(7),
            self.p(8)
        )
    }

    fn delete_run(&self) -> String {
        format!(
            "DELETE FROM routine_runs WHERE routine_id = {} AND task_id = {} AND beat_id = {}",
            self.p(1),
            self.p(2),
            self.p(3)
        )
    }

    /// A timestamp placeholder (text cast to a timestamp on PostgreSQL).
    fn ts(&self, n: usize) -> String {
        if self.numbered {
            format!("${n}::timestamp")
        } else {
            "?".to_owned()
        }
    }

    fn register(&self) -> String {
        format!(
            "INSERT INTO beats (id, host, pid, version, started_at, heartbeat_at, tasks, broker) \
             VALUES ({}, {}, {}, {}, {now}, {now}, {}, {})",
            self.p(1),
            self.p(2),
            self.p(3),
            self.p(4),
            self.p(5),
            self.p(6),
            now = self.now
        )
    }

    fn heartbeat(&self) -> String {
        format!(
            "UPDATE beats SET heartbeat_at = {} WHERE id = {}",
            self.now,
            self.p(1)
        )
    }

    fn stopped(&self) -> String {
        format!(
            "UPDATE beats SET heartbeat_at = {now}, stopped_at = {now} WHERE id = {}",
            self.p(1),
            now = self.now
        )
    }

    /// Ends the open runs of beat `$2` as `abandoned` at `$1`.
    fn end_own_runs(&self) -> String {
        format!(
            "UPDATE routine_runs SET outcome = 'abandoned', finished_at = {}, \
             error = 'the beat stopped before the run ended' \
             WHERE outcome IN {OPEN} AND beat_id = {}",
            self.ts(1),
            self.p(2)
        )
    }

    fn forget_own_runs(&self) -> String {
        format!(
            "DELETE FROM routine_runs WHERE outcome IN {OPEN} AND beat_id = {}",
            self.p(1)
        )
    }

    /// Ends as `lost` (at `$1`) the open runs of beats other than `$2` that
    /// stopped, or have not heartbeated for `$3` ms.
    fn mark_lost(&self) -> String {
        format!(
            "UPDATE routine_runs SET outcome = 'lost', finished_at = {}, \
             error = 'its beat died (no heartbeat) before the run ended' \
             WHERE outcome IN {OPEN} AND beat_id <> {} AND beat_id IN ( \
                 SELECT id FROM beats WHERE stopped_at IS NOT NULL OR heartbeat_at < {})",
            self.ts(1),
            self.p(2),
            self.cutoff(3)
        )
    }

    /// Of the `$1` oldest runs by id, those dispatched before `$2`.
    fn aged_runs(&self) -> String {
        self.aged(("routine_runs", "dispatched_at"), &self.ts(2))
    }

    /// Of the `$1` oldest rows of a table (its name and time column) by
    /// id, those whose time is before `bound`. Ids follow time, so the walk
    /// from the oldest id finds the aged rows without an index on the time
    /// (one less index for every claim to update); a short batch means the
    /// aged rows are gone.
    fn aged(&self, (table, time): (&str, &str), bound: &str) -> String {
        format!(
            "SELECT id FROM (SELECT id, {time} FROM {table} ORDER BY id LIMIT {}) AS oldest \
             WHERE {time} < {bound}",
            self.p(1)
        )
    }

    /// Ids of up to `$3` runs of the routines in JSON array `$1` beyond each
    /// one's newest `$2`.
    fn excess_runs(&self) -> String {
        format!(
            "SELECT id FROM (SELECT id, ROW_NUMBER() OVER ( \
                 PARTITION BY routine_id ORDER BY id DESC) AS n \
                 FROM routine_runs WHERE routine_id IN ({})) AS ranked \
             WHERE n > {} LIMIT {}",
            self.json_texts(1),
            self.p(2),
            self.p(3)
        )
    }

    fn prune_beats(&self) -> String {
        format!("DELETE FROM beats WHERE heartbeat_at < {}", self.cutoff(1))
    }

    fn beats(&self) -> String {
        format!(
            "SELECT {} FROM beats ORDER BY started_at DESC, id",
            self.beat_columns
        )
    }

    /// Runs newest first, of one routine (by id, by name), failed ones,
    /// dispatched since a time: the binds follow in that order, then the
    /// limit.
    pub(in crate::store) fn runs(
        &self,
        by_id: bool,
        by_name: bool,
        failed: bool,
        since: bool,
    ) -> String {
        let failed = failed.then_some("outcome IN ('failed', 'lost', 'abandoned')");
        self.newest(
            ("routine_runs", self.run_columns, "dispatched_at"),
            by_id,
            by_name,
            failed,
            since,
        )
    }

    /// The newest rows of a history table (its name, columns and time
    /// column), of one routine (by id, by name), meeting `only`, made since
    /// a time: the binds follow in that order, then the limit.
    fn newest(
        &self,
        (table, columns, time): (&str, &str, &str),
        by_id: bool,
        by_name: bool,
        only: Option<&str>,
        since: bool,
    ) -> String {
        let mut conditions = Vec::new();
        let mut n = 0;
        let mut next = || {
            n += 1;
            n
        };
        if by_id {
            conditions.push(format!("routine_id = {}", self.p(next())));
        }
        if by_name {
            conditions.push(format!("routine = {}", self.p(next())));
        }
        if let Some(only) = only {
            conditions.push(only.to_owned());
        }
        if since {
            conditions.push(format!("{time} >= {}", self.ts(next())));
        }
        let limit = self.p(next());
        let filter = match conditions.is_empty() {
            true => String::new(),
            false => format!("WHERE {}", conditions.join(" AND ")),
        };
        format!("SELECT {columns} FROM {table} {filter} ORDER BY id DESC LIMIT {limit}")
    }
}

impl Dialect {
    /// Reads the routine of id `$1`, locking its row until the transaction
    /// ends (`beat backfill`: two at once take turns, and a claim of the
    /// row skips it meanwhile).
    fn lock_routine(&self) -> String {
        let id = match self.numbered {
            true => "$1::uuid",
            false => "?",
        };
        format!(
            "SELECT {} FROM routines WHERE id = {id}{}",
            self.routine_columns, self.for_update
        )
    }

    /// The task ids of the runs of routine `$1` due from `$2` to `$3`
    /// (both included) that were dispatched (see [`DISPATCHED`]). Read by
    /// the routine's index (`routine_runs_routine_idx`).
    fn dispatched_between(&self) -> String {
        let task_id = match self.numbered {
            true => "task_id::text",
            false => "task_id",
        };
        format!(
            "SELECT {task_id} AS value FROM routine_runs \
             WHERE routine_id = {} AND due_at >= {} AND due_at <= {} AND outcome IN {DISPATCHED}",
            self.p(1),
            self.ts(2),
            self.ts(3)
        )
    }
}

impl Dialect {
    /// Of the `$1` oldest edits by id, those made more than `$2` ms ago by
    /// the database's clock, which wrote `edited_at` (as `aged_runs`).
    fn aged_edits(&self) -> String {
        self.aged(("routine_edits", "edited_at"), &self.cutoff(2))
    }

    /// The `$2` edits after number `$1`, oldest first: their numbers and
    /// routines.
    fn edits_after(&self) -> String {
        format!(
            "SELECT id, routine_id FROM routine_edits WHERE id > {} ORDER BY id LIMIT {}",
            self.p(1),
            self.p(2)
        )
    }

    /// Ids of the edits of the routines in JSON array `$1` beyond each
    /// one's newest `$2`.
    fn excess_edits(&self) -> String {
        format!(
            "SELECT id FROM (SELECT id, ROW_NUMBER() OVER ( \
                 PARTITION BY routine_id ORDER BY id DESC) AS n \
                 FROM routine_edits WHERE routine_id IN ({})) AS ranked \
             WHERE n > {}",
            self.json_texts(1),
            self.p(2)
        )
    }

    /// Edits newest first, of one routine (by id, by name), made since a
    /// time: the binds follow in that order, then the limit.
    pub(in crate::store) fn edits(&self, by_id: bool, by_name: bool, since: bool) -> String {
        self.newest(
            ("routine_edits", self.edit_columns, "edited_at"),
            by_id,
            by_name,
            None,
            since,
        )
    }
}

/// Milliseconds as the statements bind them.
pub(in crate::store) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

//! The `routines` table: every statement the beat issues, as one small
//! function each.
//!
//! The store knows rows, not schedules: the scheduler hands it closures that
//! decide each row's fate, and the store runs them inside the transaction
//! that holds the rows' locks. Concurrency safety comes from the database:
//! `FOR UPDATE SKIP LOCKED` on PostgreSQL and MySQL/MariaDB, `BEGIN
//! IMMEDIATE` on SQLite.
//!
//! What users may do with the table is public and small: read routines,
//! upsert one, enable or disable it, remove it. The scheduler's own
//! statements (plan, claim, the periodic checks) are the crate's.

mod models;
mod pool;
mod sql;
mod write;

use history::TextRow;
pub(crate) use history::{BeatInfo, RunUpdate};
pub use history::{BeatRow, RunFilter, RunRow};
use models::RawRow;
pub use models::RoutineRow;
pub(crate) use models::{NewRoutine, NewRun, Plan, LATEST_STORABLE};
pub use pool::Backend;

use crate::config::redact_url;
use crate::routine::Routine;
use chrono::{DateTime, Utc};
use diesel::connection::SimpleConnection;
use diesel::sql_types::{BigInt, Bool, Nullable, Text};
use diesel::{QueryableByName, RunQueryDsl};
use pool::Pools;
use sql::Sql;
use std::collections::HashSet;
use write::WriteTransaction;

/// A failure to talk to the database.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// `scheduler_db_uri` names no supported database.
    #[error("unsupported scheduler_db_uri {0}")]
    UnsupportedUrl(String),
    /// The database could not be reached at start.
    #[error("cannot connect to {url}: {reason}")]
    Connect {
        /// The URL, password masked.
        url: String,
        /// The driver's reason, password masked.
        reason: String,
    },
    /// No pooled connection became available (the database is down or
    /// overloaded).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A statement failed.
    #[error("{statement}: {source}")]
    Query {
        /// Which statement.
        statement: &'static str,
        /// Diesel's error.
        source: diesel::result::Error,
    },
    /// The schema could not be created or upgraded.
    #[error("migrating the routines table failed: {0}")]
    Migration(String),
    /// The tables lack what this version needs (not created, or created by
    /// an older version) and `create_table` is off.
    #[error("the tables are missing or older than this version ({0}); run `beat migrate` or `diesel migration run`, or set create_table = true")]
    NotMigrated(String),
}

impl StoreError {
    /// Whether the statement lost a race with another transaction (a
    /// deadlock, a serialization failure): nothing is wrong, and trying
    /// again at once will do. Not an outage.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            StoreError::Query {
                source:
                    diesel::result::Error::DatabaseError(
                        diesel::result::DatabaseErrorKind::SerializationFailure,
                        _,
                    ),
                ..
            } => true,
            // PostgreSQL's deadlock (40P01) has no kind of its own in Diesel.
            StoreError::Query {
                source: diesel::result::Error::DatabaseError(_, info),
                ..
            } => info.message().contains("deadlock detected"),
            _ => false,
        }
    }

    fn checkout(e: r2d2::Error) -> Self {
        StoreError::Unavailable(e.to_string())
    }

    fn query(statement: &'static str, source: diesel::result::Error) -> Self {
        StoreError::Query { statement, source }
    }
}

/// The outcome of a transaction whose rows were judged by a caller.
#[derive(Debug)]
enum TxError<E> {
    Db(diesel::result::Error),
    Caller(E),
}

impl<E> From<diesel::result::Error> for TxError<E> {
    fn from(e: diesel::result::Error) -> Self {
        TxError::Db(e)
    }
}

#[derive(QueryableByName)]
struct NameRow {
    #[diesel(sql_type = Text)]
    name: String,
}

#[derive(QueryableByName)]
struct TimeRow {
    #[diesel(sql_type = Nullable<Text>)]
    at: Option<String>,
}

/// Runs `$body` with `$conn` bound to a pooled connection of whichever
/// backend the store uses, and `$sql` to that backend's statements. The body
/// is compiled once per backend.
macro_rules! with_conn {
    ($store:expr, |$conn:ident, $sql:ident| $body:expr) => {
        match &$store.pools {
            Pools::Postgres(pool) => {
                let $conn = &mut *pool.get().map_err(StoreError::checkout)?;
                let $sql = &$store.sql;
                $body
            }
            Pools::Sqlite(pool) => {
                let $conn = &mut *pool.get().map_err(StoreError::checkout)?;
                let $sql = &$store.sql;
                $body
            }
            #[cfg(feature = "mysql")]
            Pools::Mysql(pool) => {
                let $conn = &mut *pool.get().map_err(StoreError::checkout)?;
                let $sql = &$store.sql;
                $body
            }
        }
    };
}

/// Inserts a row, unplanned (the beat plans it at its next look), on a
/// connection of any backend.
macro_rules! insert_row {
    ($conn:expr, $statement:expr, $row:expr) => {{
        let row: &NewRoutine = $row;
        diesel::sql_query($statement)
            .bind::<Text, _>(row.id.to_string())
            .bind::<Text, _>(&row.name)
            .bind::<Text, _>(&row.task)
            .bind::<Text, _>(&row.schedule)
            .bind::<Text, _>(&row.kwargs)
            .bind::<Text, _>(&row.options)
            .bind::<Bool, _>(row.active)
            .execute($conn)
    }};
}

mod history;

/// What a claim (or a plan) writes besides the rows' plans, and what it
/// hands back.
pub(crate) struct Claim<T> {
    pub(crate) plans: Vec<Plan>,
    /// Runs to record in the same transaction.
    pub(crate) runs: Vec<NewRun>,
    pub(crate) value: T,
}

/// The beat a store claims for: its runs are recorded under its id, and a
/// routine with an in-process run going on another live beat is busy.
#[derive(Debug, Clone)]
pub(crate) struct Claimant {
    pub(crate) beat_id: String,
    /// A beat silent for longer is dead.
    pub(crate) dead_after: std::time::Duration,
}

/// The `routines` table in one database.
pub struct RoutineStore {
    backend: Backend,
    pools: Pools,
    sql: Sql,
    history: sql::history::HistorySql,
    url: String,
    timeout: std::time::Duration,
    claimant: Option<Claimant>,
}

impl std::fmt::Debug for RoutineStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoutineStore")
            .field("url", &self.url)
            .finish()
    }
}

impl RoutineStore {
    /// Connects to `scheduler_db_uri` (nothing is created yet), with the
    /// default `scheduler_db_timeout`.
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        Self::open(url, crate::config::DEFAULT_DB_TIMEOUT)
    }

    /// Connects with every statement, lock wait and idle transaction of the
    /// beat's sessions bounded by `timeout` (`scheduler_db_timeout`).
    pub(crate) fn open(url: &str, timeout: std::time::Duration) -> Result<Self, StoreError> {
        Self::open_with(url, timeout, pool::Idle::One)
    }

    /// As [`Self::open`], for a short-lived process (a command): no
    /// connection is kept open, or opened, in the background.
    pub(crate) fn open_briefly(
        url: &str,
        timeout: std::time::Duration,
    ) -> Result<Self, StoreError> {
        Self::open_with(url, timeout, pool::Idle::None)
    }

    fn open_with(
        url: &str,
        timeout: std::time::Duration,
        idle: pool::Idle,
    ) -> Result<Self, StoreError> {
        let (backend, target) = pool::parse_url(url)?;
        let pools = pool::open(backend, &target, url, timeout, idle)?;
        let (sql, history) = match backend {
            Backend::Postgres => (sql::postgres(), sql::history::postgres()),
            Backend::Sqlite => (sql::sqlite(), sql::history::sqlite()),
            #[cfg(feature = "mysql")]
            Backend::Mysql => (sql::mysql(), sql::history::mysql()),
        };
        Ok(RoutineStore {
            backend,
            pools,
            sql,
            history,
            url: redact_url(url),
            timeout,
            claimant: None,
        })
    }

    /// This store claims for the beat `claimant`.
    pub(crate) fn claiming_for(mut self, claimant: Claimant) -> Self {
        self.claimant = Some(claimant);
        self
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The URL, password masked.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Creates `routines`, or adopts the kit's table, and upgrades it to the
    /// current schema.
    pub fn migrate(&self) -> Result<(), StoreError> {
        pool::migrate(&self.pools, self.timeout)
    }

    /// Checks that the table has the beat's columns (for `create_table = false`).
    pub fn check_schema(&self) -> Result<(), StoreError> {
        with_conn!(self, |conn, _sql| {
            conn.batch_execute(
                "SELECT next_run_at, needs_sync, last_error, name_unique, run_requested_at \
                 FROM routines WHERE 1 = 0; \
                 SELECT outcome, finished_at FROM routine_runs WHERE 1 = 0; \
                 SELECT heartbeat_at FROM beats WHERE 1 = 0",
            )
            .map_err(|e| StoreError::NotMigrated(e.to_string()))
        })
    }

    /// Every routine, ordered by name.
    pub fn routines(&self) -> Result<Vec<RoutineRow>, StoreError> {
        with_conn!(self, |conn, sql| {
            let rows: Vec<RawRow> = diesel::sql_query(&sql.all)
                .load(conn)
                .map_err(|e| StoreError::query("all", e))?;
            Ok(rows.into_iter().map(RoutineRow::from).collect())
        })
    }

    /// The routine called `name`, if any.
    pub fn routine(&self, name: &str) -> Result<Option<RoutineRow>, StoreError> {
        with_conn!(self, |conn, sql| {
            let rows: Vec<RawRow> = diesel::sql_query(&sql.by_name)
                .bind::<Text, _>(name)
                .load(conn)
                .map_err(|e| StoreError::query("by_name", e))?;
            Ok(rows.into_iter().next().map(RoutineRow::from))
        })
    }

    /// Up to `limit` routines after the one named `after` (name, id), in
    /// name and id order: a page of the table, read by its name index, so
    /// that listing a million routines never holds them all.
    pub fn routines_after(
        &self,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<RoutineRow>, StoreError> {
        let (name, id) = after.unwrap_or(("", ""));
        let id = match (self.backend, id) {
            (Backend::Postgres, "") => "00000000-0000-0000-0000-000000000000",
            (_, id) => id,
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        with_conn!(self, |conn, sql| {
            let query = diesel::sql_query(&sql.page).bind::<Text, _>(name);
            #[cfg(feature = "mysql")]
            let query = query.into_boxed();
            #[cfg(feature = "mysql")]
            let query = match self.backend {
                Backend::Mysql => query.bind::<Text, _>(name),
                _ => query,
            };
            let rows: Vec<RawRow> = query
                .bind::<Text, _>(id)
                .bind::<BigInt, _>(limit)
                .load(conn)
                .map_err(|e| StoreError::query("page", e))?;
            Ok(rows.into_iter().map(RoutineRow::from).collect())
        })
    }

    /// Inserts `row` unless its name is taken. Returns whether it was.
    pub(crate) fn insert_new(&self, row: &NewRoutine) -> Result<bool, StoreError> {
        let result = with_conn!(self, |conn, sql| {
            conn.as_operator(|conn| insert_row!(conn, sql.insert, row))
        });
        match result {
            Ok(_) => Ok(true),
            Err(diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::UniqueViolation,
                _,
            )) => Ok(false),
            Err(e) => Err(StoreError::query("insert", e)),
        }
    }

    /// Replaces the given columns of the routine called `name` (an edit the
    /// serving beats see within their watch interval). Returns whether it
    /// exists.
    pub(crate) fn edit(
        &self,
        name: &str,
        task: Option<&str>,
        schedule: Option<&str>,
        kwargs: Option<&str>,
        options: Option<&str>,
    ) -> Result<bool, StoreError> {
        with_conn!(self, |conn, sql| {
            conn.as_operator(|conn| {
                diesel::sql_query(sql.edit)
                    .bind::<Nullable<Text>, _>(task)
                    .bind::<Nullable<Text>, _>(schedule)
                    .bind::<Nullable<Text>, _>(kwargs)
                    .bind::<Nullable<Text>, _>(options)
                    .bind::<Text, _>(name)
                    .execute(conn)
            })
            .map(|n| n > 0)
            .map_err(|e| StoreError::query("edit", e))
        })
    }

    /// Writes `routine` to the table by its name: a new row if there is
    /// none, else the row's task, schedule, kwargs, options and active flag
    /// replaced. An edit like any other: serving beats plan it within their
    /// watch interval (a changed schedule takes its next run after
    /// `last_run_at`, so it never fires early). Returns whether a row was
    /// inserted.
    ///
    /// ```no_run
    /// use celery_diesel_kit::{Routine, RoutineStore, Schedule};
    /// use std::time::Duration;
    ///
    /// let store = RoutineStore::connect("sqlite://celery-beat.sqlite3")?;
    /// store.migrate()?;
    /// let every_minute = Schedule::every(Duration::from_secs(60))?;
    /// store.upsert(&Routine::new("cleanup", "tasks.cleanup", every_minute))?;
    /// store.set_active("cleanup", false)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn upsert(&self, routine: &Routine) -> Result<bool, StoreError> {
        let row = NewRoutine::from(routine);
        with_conn!(self, |conn, sql| {
            conn.as_operator(|conn| {
                conn.write_transaction(|conn| {
                    let updated = diesel::sql_query(sql.update_by_name)
                        .bind::<Text, _>(&row.task)
                        .bind::<Text, _>(&row.schedule)
                        .bind::<Text, _>(&row.kwargs)
                        .bind::<Text, _>(&row.options)
                        .bind::<Bool, _>(row.active)
                        .bind::<Text, _>(&row.name)
                        .execute(conn)?;
                    if updated > 0 {
                        return Ok(false);
                    }
                    insert_row!(conn, sql.insert, &row)?;
                    Ok(true)
                })
            })
            .map_err(|e| StoreError::query("upsert", e))
        })
    }

    /// Enables or disables the routine called `name` (an edit the serving
    /// beats see within their watch interval). Returns whether it exists.
    pub fn set_active(&self, name: &str, active: bool) -> Result<bool, StoreError> {
        with_conn!(self, |conn, sql| {
            conn.as_operator(|conn| {
                diesel::sql_query(sql.set_active)
                    .bind::<Bool, _>(active)
                    .bind::<Text, _>(name)
                    .execute(conn)
            })
            .map(|n| n > 0)
            .map_err(|e| StoreError::query("set_active", e))
        })
    }

    /// Deletes the routine called `name`. Returns whether it existed.
    pub fn remove(&self, name: &str) -> Result<bool, StoreError> {
        with_conn!(self, |conn, sql| {
            diesel::sql_query(sql.delete_by_name)
                .bind::<Text, _>(name)
                .execute(conn)
                .map(|n| n > 0)
                .map_err(|e| StoreError::query("remove", e))
        })
    }

    /// The kit's source-of-truth rules for declared routines, in one
    /// transaction that beats starting together take in turns: declared
    /// but missing → inserted; present → kept as the table has it; not
    /// declared → deleted. Returns the names inserted and the number
    /// deleted. With nothing declared, nothing is touched.
    pub(crate) fn sync_declared(
        &self,
        declared: &[Routine],
    ) -> Result<(Vec<String>, usize), StoreError> {
        if declared.is_empty() {
            return Ok((Vec::new(), 0));
        }
        let names: Vec<&str> = declared.iter().map(Routine::name).collect();
        let names_json = serde_json::Value::from(names).to_string();
        // In name order, so that concurrent inserts of the same names (the
        // kit's, or plain SQL's) cannot wait on each other in a circle.
        let mut rows: Vec<NewRoutine> = declared.iter().map(NewRoutine::from).collect();
        rows.sort_by(|a, b| a.name.cmp(&b.name));
        // Beats take turns here; someone else (the kit, plain SQL) may still
        // take a name between our look and our insert: look again, twice.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = with_conn!(self, |conn, sql| {
                conn.one_at_a_time(|conn| {
                    let existing: Vec<NameRow> = diesel::sql_query(&sql.existing_names)
                        .bind::<Text, _>(&names_json)
                        .load(conn)?;
                    let existing: std::collections::HashSet<String> =
                        existing.into_iter().map(|r| r.name).collect();
                    let mut inserted = Vec::new();
                    for row in rows.iter().filter(|r| !existing.contains(&r.name)) {
                        insert_row!(conn, sql.insert, row)?;
                        inserted.push(row.name.clone());
                    }
                    let deleted = diesel::sql_query(&sql.delete_undeclared)
                        .bind::<Text, _>(&names_json)
                        .execute(conn)?;
                    Ok((inserted, deleted))
                })
            });
            match result {
                Err(diesel::result::Error::DatabaseError(
                    diesel::result::DatabaseErrorKind::UniqueViolation,
                    _,
                )) if attempt < 3 => continue,
                other => return other.map_err(|e| StoreError::query("sync_declared", e)),
            }
        }
    }

    /// Marks rows with a recorded error for another look: code deployed
    /// since may have fixed them (a task now registered, say).
    pub(crate) fn recheck_failed(&self) -> Result<usize, StoreError> {
        with_conn!(self, |conn, sql| {
            diesel::sql_query(sql.recheck_failed)
                .execute(conn)
                .map_err(|e| StoreError::query("recheck_failed", e))
        })
    }

    /// Marks active rows whose next run vanished without an edit the
    /// triggers saw (e.g. `next_run_at` set to NULL by hand). This is the
    /// periodic full check; edits are found by [`Self::plan_edited`].
    pub(crate) fn recheck_unplanned(&self) -> Result<usize, StoreError> {
        with_conn!(self, |conn, sql| {
            diesel::sql_query(sql.recheck_unplanned)
                .execute(conn)
                .map_err(|e| StoreError::query("recheck_unplanned", e))
        })
    }

    /// Locks up to `limit` edited (or new) rows, has `plan` decide each
    /// one's next run or error, and writes the plans. Returns how many rows
    /// were planned. Rows another beat is planning are skipped.
    pub(crate) fn plan_edited<T, E>(
        &self,
        limit: usize,
        now: DateTime<Utc>,
        plan: impl FnOnce(Vec<RoutineRow>) -> Result<Claim<T>, E>,
    ) -> Result<(usize, T), E>
    where
        E: From<StoreError>,
    {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let beat_id = self.claimant.as_ref().map(|c| c.beat_id.as_str());
        let result = with_conn!(self, |conn, sql| {
            conn.write_transaction(|conn| {
                let rows: Vec<RawRow> = diesel::sql_query(&sql.lock_edited)
                    .bind::<BigInt, _>(limit)
                    .load(conn)?;
                let rows = rows.into_iter().map(RoutineRow::from).collect();
                let claim = plan(rows).map_err(TxError::Caller)?;
                if !claim.plans.is_empty() {
                    conn.write_planned(sql.write_planned, &claim.plans)?;
                }
                if !claim.runs.is_empty() {
                    conn.write_runs(self.history.insert_runs, &claim.runs, now, beat_id)?;
                }
                Ok((claim.plans.len(), claim.value))
            })
        });
        result.map_err(|e| match e {
            TxError::Db(e) => E::from(StoreError::query("plan_edited", e)),
            TxError::Caller(e) => e,
        })
    }

    /// Locks up to `limit` rows due at `now` (earliest first), has `fire`
    /// dispatch them and decide their next runs, and writes the outcome in
    /// the same transaction. If `fire` fails, nothing is written: the rows
    /// stay due and are claimed again later. With `tasks` (a JSON array of
    /// task names) only rows running those tasks are claimed. `fire` is
    /// also told which of the rows whose task `is_local` have a run going
    /// on another live beat; the runs it returns are recorded in the
    /// transaction. Returns `fire`'s value.
    pub(crate) fn claim_due<T, E>(
        &self,
        now: DateTime<Utc>,
        limit: usize,
        tasks: Option<&str>,
        is_local: impl Fn(&str) -> bool,
        fire: impl FnOnce(Vec<RoutineRow>, &HashSet<String>) -> Result<Claim<T>, E>,
    ) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let dispatched_at = now;
        let now = models::format_timestamp(now);
        let result = with_conn!(self, |conn, sql| {
            conn.write_transaction(|conn| {
                let rows: Vec<RawRow> = match tasks {
                    None => diesel::sql_query(&sql.lock_due)
                        .bind::<Text, _>(&now)
                        .bind::<BigInt, _>(limit)
                        .load(conn)?,
                    Some(tasks) => diesel::sql_query(&sql.lock_due_of_tasks)
                        .bind::<Text, _>(&now)
                        .bind::<Text, _>(tasks)
                        .bind::<BigInt, _>(limit)
                        .load(conn)?,
                };
                let rows: Vec<RoutineRow> = rows.into_iter().map(RoutineRow::from).collect();
                let busy = match &self.claimant {
                    Some(claimant) => {
                        let local: Vec<&str> = rows
                            .iter()
                            .filter(|r| is_local(&r.task))
                            .map(|r| r.id.as_str())
                            .collect();
                        if local.is_empty() {
                            HashSet::new()
                        } else {
                            let busy: Vec<TextRow> = diesel::sql_query(&self.history.busy)
                                .bind::<Text, _>(serde_json::Value::from(local).to_string())
                                .bind::<Text, _>(&claimant.beat_id)
                                .bind::<BigInt, _>(
                                    i64::try_from(claimant.dead_after.as_millis())
                                        .unwrap_or(i64::MAX),
                                )
                                .load(conn)?;
                            busy.into_iter().map(|r| r.value).collect()
                        }
                    }
                    None => HashSet::new(),
                };
                let claim = fire(rows, &busy).map_err(TxError::Caller)?;
                if !claim.plans.is_empty() {
                    conn.write_fired(sql.write_fired, &claim.plans)?;
                }
                if !claim.runs.is_empty() {
                    let beat_id = self.claimant.as_ref().map(|c| c.beat_id.as_str());
                    conn.write_runs(
                        self.history.insert_runs,
                        &claim.runs,
                        dispatched_at,
                        beat_id,
                    )?;
                }
                Ok(claim.value)
            })
        });
        result.map_err(|e| match e {
            TxError::Db(e) => E::from(StoreError::query("claim_due", e)),
            TxError::Caller(e) => e,
        })
    }

    /// The earliest next run of any schedulable routine; with `tasks` (a
    /// JSON array of task names), of the routines running those tasks.
    pub(crate) fn earliest_due(
        &self,
        tasks: Option<&str>,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        with_conn!(self, |conn, sql| {
            let rows: Vec<TimeRow> = match tasks {
                None => diesel::sql_query(sql.earliest_due).load(conn),
                Some(tasks) => diesel::sql_query(&sql.earliest_due_of_tasks)
                    .bind::<Text, _>(tasks)
                    .load(conn),
            }
            .map_err(|e| StoreError::query("earliest_due", e))?;
            // A value no time can be is nothing to wait for: one that sorts
            // before now ('-infinity', MySQL's zero date) is claimed, and
            // becomes its row's error, in the same pass.
            Ok(rows
                .into_iter()
                .next()
                .and_then(|r| r.at)
                .and_then(|text| models::parse_timestamp(&text))
                .map(|t| t.and_utc()))
        })
    }
}
